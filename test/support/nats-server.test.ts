import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, test } from "node:test";
import { Kvm } from "@nats-io/kv";
import { connect } from "@nats-io/transport-node";
import { natsServerBin, startNatsServer } from "./nats-server.js";
import { tempDir } from "./tmp.js";

const scratch = tempDir("nats-server-test");
after(scratch.cleanup);

/** An executable shell script standing in for a broken nats-server. */
function fakeBinary(name: string, script: string): string {
  const path = join(scratch.dir, name);
  writeFileSync(path, `#!/bin/sh\n${script}\n`, { mode: 0o755 });
  return path;
}

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

test("without NATS_SERVER_BIN the error says how to get the pinned nats-server", () => {
  assert.throws(() => natsServerBin({}), /NATS_SERVER_BIN is not set.*scripts\/tools\/nats-server\.sh/s);
  assert.equal(natsServerBin({ NATS_SERVER_BIN: "/opt/nats-server" }), "/opt/nats-server");
});

test("a missing binary fails at once, naming it", async () => {
  const bin = join(scratch.dir, "no-such-nats-server");
  await assert.rejects(startNatsServer({ bin }), (err: Error) => {
    assert.match(err.message, /could not be started: spawn .* ENOENT/);
    assert.ok(err.message.includes(bin), err.message);
    return true;
  });
});

test("a binary that exits before it is ready fails with its output, naming it", async () => {
  const bin = fakeBinary("crashing-nats-server", 'echo "fatal: bad flag" >&2; exit 3');
  await assert.rejects(startNatsServer({ bin }), (err: Error) => {
    assert.ok(err.message.includes(`nats-server ${bin} exited (3) before it was ready`), err.message);
    assert.match(err.message, /fatal: bad flag/);
    return true;
  });
});

test("a binary that never gets ready is killed after the start timeout, naming it", async () => {
  const bin = fakeBinary("silent-nats-server", 'echo "starting"; exec sleep 600');
  await assert.rejects(startNatsServer({ bin, startTimeoutMs: 300 }), (err: Error) => {
    assert.ok(err.message.includes(`nats-server ${bin} not ready within 300 ms`), err.message);
    assert.match(err.message, /starting/);
    return true;
  });
});
