/**
 * Issue 11, kind "every path that (re)connects to something backs off whatever the other side
 * answers", for the pod registry, through its public behaviour: a registry pointed at a peer that
 * fails each request of one kind at once (list, watch, relist after 410 Gone, the Lease, NATS) must
 * send that peer a number of requests bounded by its backoff over a few seconds, not a loop.
 * Real time (the registry's loops sleep on timers); shipped defaults for every delay.
 */
import assert from "node:assert/strict";
import type { IncomingMessage } from "node:http";
import { after, describe, test } from "node:test";
import { KubeConfig } from "@kubernetes/client-node";
import { type FailingPeer, type Failure, HTTP_FAILURES, maxAttemptsWithin, startFailingPeer } from "../../../test/support/failing-peer.js";
import { startNatsServer } from "../../../test/support/nats-server.js";
import { createPodRegistry, type PodRegistry, type PodRegistryOptions } from "../src/registry.js";
import { quietLogger } from "./helpers.js";

/** How long each peer is watched. */
const WINDOW_MS = 3000;
/** kube-watcher.ts's default backoff. */
const WATCH_BACKOFF = { initialMs: 250, maxMs: 30_000 };

const kindOf = (req: IncomingMessage): string => {
  const url = req.url ?? "";
  if (url.includes("/leases")) return "lease";
  if (/[?&]watch=(true|1)/.test(url)) return "watch";
  return /\/pods\/[^/?]+/.test(url) ? "get" : "list";
};

function kubeConfigFor(url: string): KubeConfig {
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: "peer", server: url, skipTLSVerify: true }],
    users: [{ name: "peer", token: "registry-token" }],
    contexts: [{ name: "peer", cluster: "peer", user: "peer" }],
    currentContext: "peer",
  });
  return kc;
}

const emptyList = { status: 200, body: { kind: "PodList", apiVersion: "v1", metadata: { resourceVersion: "100" }, items: [] } };
const goneEvent = {
  status: 200,
  body: {
    type: "ERROR",
    object: { kind: "Status", apiVersion: "v1", status: "Failure", reason: "Expired", code: 410, message: "too old resource version" },
  },
};

const peers: FailingPeer[] = [];
const registries: PodRegistry[] = [];
after(async () => {
  await Promise.all(registries.map((r) => r.close()));
  await Promise.all(peers.map((p) => p.close()));
});

/** A standalone registry against a peer failing with `failure`; `answer` lets some kinds succeed. */
async function watchAgainst(failure: Failure, answer?: FailingPeer["answer"], over: Partial<PodRegistryOptions> = {}): Promise<FailingPeer> {
  const peer = await startFailingPeer({ failure, kindOf });
  peer.answer = answer;
  peers.push(peer);
  const r = createPodRegistry({
    kubeConfig: kubeConfigFor(peer.url),
    identity: "r1",
    namespaces: ["ns1"],
    staleAfterMs: 30_000,
    waitDefaultMs: 100,
    waitMaxMs: 100,
    apiFallback: true,
    logger: quietLogger(),
    ...over,
  });
  registries.push(r);
  await r.start();
  return peer;
}

const observe = () => new Promise((r) => setTimeout(r, WINDOW_MS));

describe("the pod registry backs off from a peer that fails every request at once", () => {
  const bound = maxAttemptsWithin(WINDOW_MS, WATCH_BACKOFF);

  test("list: whatever the API server answers", async () => {
    const started = await Promise.all(HTTP_FAILURES.map((f) => watchAgainst(f)));
    await observe();
    for (const [i, peer] of started.entries()) {
      const lists = peer.count("list") + peer.count("connection");
      assert.ok(lists >= 1 && lists <= bound, `${HTTP_FAILURES[i]}: ${lists} list requests in ${WINDOW_MS} ms (bound ${bound})`);
    }
  });

  test("watch: the list works, every watch fails", async () => {
    const listOnly: FailingPeer["answer"] = (req) => (kindOf(req) === "list" ? emptyList : undefined);
    const failures = HTTP_FAILURES.filter((f) => f !== "close");
    const started = await Promise.all(failures.map((f) => watchAgainst(f, listOnly)));
    await observe();
    for (const [i, peer] of started.entries()) {
      const attempts = peer.count("watch") + peer.count("list") - 1;
      assert.ok(attempts >= 1 && attempts <= bound, `${failures[i]}: ${attempts} watch/relist requests in ${WINDOW_MS} ms (bound ${bound})`);
    }
  });

  test("relist after 410 Gone: the list works, every watch answers 410 (as an HTTP status or an ERROR event)", async () => {
    const as410Status = await watchAgainst("410", (req) => (kindOf(req) === "list" ? emptyList : undefined));
    const as410Event = await watchAgainst("500", (req) => (kindOf(req) === "list" ? emptyList : goneEvent));
    await observe();
    for (const [name, peer] of [
      ["HTTP 410", as410Status],
      ["ERROR event 410", as410Event],
    ] as const) {
      const lists = peer.count("list");
      const watches = peer.count("watch");
      assert.ok(lists <= bound && watches <= bound, `${name}: ${lists} lists and ${watches} watches in ${WINDOW_MS} ms (bound ${bound} each)`);
    }
  });
});

describe("replicated: the Lease and NATS", () => {
  test("the Lease: every read and write fails at once, the elector retries at its retry period", async () => {
    const nats = await startNatsServer();
    try {
      const leaseDurationMs = 2000;
      const peers = await Promise.all(
        (["500", "429", "reset", "junk"] as const).map((f) =>
          watchAgainst(f, undefined, {
            replication: {
              servers: nats.url,
              bucket: `lease-${f}`,
              lease: { name: "pod-registry", namespace: "default", durationMs: leaseDurationMs },
            },
          }),
        ),
      );
      await observe();
      // client-go's default retry period is a quarter of the lease; lease.ts keeps that period.
      const retryBound = Math.floor(WINDOW_MS / (leaseDurationMs / 4)) + 2;
      for (const peer of peers) {
        const leases = peer.count("lease");
        assert.ok(leases >= 1 && leases <= retryBound, `${peer.failure}: ${leases} Lease requests in ${WINDOW_MS} ms (bound ${retryBound})`);
        assert.equal(peer.count("list") + peer.count("watch"), 0, "no leader, no watch");
      }
    } finally {
      await Promise.all(registries.splice(0).map((r) => r.close()));
      await nats.close();
    }
  });

  test("NATS: a server that closes every connection at once", async () => {
    const natsPeer = await startFailingPeer({ failure: "close" });
    peers.push(natsPeer);
    const api = await watchAgainst("500", undefined, {
      replication: {
        servers: `nats://127.0.0.1:${natsPeer.port}`,
        bucket: "pods",
        lease: { name: "pod-registry", namespace: "default", durationMs: 2000 },
      },
    });
    await observe();
    const connections = natsPeer.count("connection");
    // The NATS client reconnects every reconnectTimeWait (250 ms in registry.ts) plus up to 100 ms jitter.
    const reconnectBound = Math.floor(WINDOW_MS / 250) + 2;
    assert.ok(connections >= 1 && connections <= reconnectBound, `${connections} NATS connections in ${WINDOW_MS} ms (bound ${reconnectBound})`);
    assert.equal(api.count(), 0, "nothing is asked of the API server before NATS is usable");
    // A registry still connecting cannot be closed (it waits for the connection): give it a real server.
    await natsPeer.close();
    const real = await startNatsServer({ port: natsPeer.port });
    try {
      await Promise.all(registries.splice(0).map((r) => r.close()));
    } finally {
      await real.close();
    }
  });
});
