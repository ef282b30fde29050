import assert from "node:assert/strict";
import { test } from "node:test";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { startNatsServer } from "./nats-server.js";

test("a real nats-server starts on a free port, keeps JetStream data across a restart, and stops", async () => {
  const ns = await startNatsServer();
  try {
    const nc = await connect({ servers: ns.url, maxReconnectAttempts: -1, reconnectTimeWait: 100 });
    const kv = await new Kvm(nc).create("t", { history: 1 });
    await kv.put("k", "v1");
    const reconnected = (async () => {
      for await (const s of nc.status()) if (s.type === "reconnect") return;
    })();
    await ns.restart();
    await reconnected;
    assert.equal((await kv.get("k"))?.string(), "v1");
    await nc.close();
  } finally {
    await ns.close();
  }
  assert.equal(ns.running, false);
});
