/**
 * The bucket as k8s/ ships it: three nats-servers in one JetStream cluster and the bucket
 * replicated three ways (NATS_BUCKET_REPLICAS=3). Per-message TTLs and the pipelined writer must
 * work on a clustered stream, and losing one server of three must not stop the feed.
 */
import assert from "node:assert/strict";
import { type ChildProcess, spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, test } from "node:test";
import { RegistryRole } from "@k8s-athenz-identity/api/pod_registry";
import { Kvm } from "@nats-io/kv";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { type FakeKubeApi, startFakeKubeApi } from "../../../test/support/fake-kube-api.js";
import { natsServerBin } from "../../../test/support/nats-server.js";
import { freePort } from "../../../test/support/ports.js";
import { createPodRegistry, type PodRegistry } from "../src/registry.js";
import { eventually, eventuallyAsync, quietLogger, until } from "./helpers.js";

interface Member {
  name: string;
  proc: ChildProcess;
  log: string;
}

/** Three nats-servers routed into one JetStream cluster on loopback. */
async function startCluster(): Promise<{ urls: string[]; members: Member[]; close(): Promise<void> }> {
  const dir = mkdtempSync(join(tmpdir(), "nats-cluster-"));
  const clientPorts = await Promise.all([0, 1, 2].map(() => freePort()));
  const routePorts = await Promise.all([0, 1, 2].map(() => freePort()));
  const routes = routePorts.map((p) => `nats://127.0.0.1:${p}`).join(",");
  // Every member knows the meta leader ("Self is new ..." on the leader, "new ...: <name>" elsewhere):
  // checked on every line a member prints, not polled.
  const elected = (m: Member) => /JetStream cluster (new )?metadata leader/.test(m.log);
  let onLog = () => {};
  const members = [0, 1, 2].map((i): Member => {
    const m: Member = { name: `n${i}`, log: "", proc: undefined as unknown as ChildProcess };
    m.proc = spawn(
      natsServerBin(),
      [
        ["-a", "127.0.0.1", "-p", String(clientPorts[i])],
        ["-js", "-sd", join(dir, `n${i}`), "-n", `n${i}`],
        ["--cluster_name", "pods", "--cluster", `nats://127.0.0.1:${routePorts[i]}`, "--routes", routes],
      ].flat(),
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const onData = (d: Buffer) => {
      m.log = (m.log + d.toString()).slice(-64_000);
      onLog();
    };
    m.proc.stdout!.on("data", onData);
    m.proc.stderr!.on("data", onData);
    return m;
  });
  const close = async () => {
    await Promise.all(
      members.map(
        (m) =>
          new Promise<void>((r) => {
            if (m.proc.exitCode !== null || m.proc.signalCode !== null) return r();
            m.proc.once("exit", () => r());
            m.proc.kill("SIGTERM");
          }),
      ),
    );
    rmSync(dir, { recursive: true, force: true });
  };
  const ready = await new Promise<string | undefined>((resolve) => {
    const timer = setTimeout(() => resolve("no JetStream meta leader within 60 s"), 60_000);
    const done = (failure?: string) => {
      clearTimeout(timer);
      onLog = () => {};
      resolve(failure);
    };
    for (const m of members) m.proc.once("exit", (code, signal) => done(`${m.name} exited (${code ?? signal}) before a meta leader`));
    onLog = () => {
      if (members.every(elected)) done();
    };
    onLog();
  });
  if (ready !== undefined) {
    await close();
    throw new Error(`${ready}:\n${members.map((m) => m.log.slice(-1500)).join("\n---\n")}`);
  }
  return {
    urls: clientPorts.map((p) => `nats://127.0.0.1:${p}`),
    members,
    close,
  };
}

let api: FakeKubeApi;
let cluster: Awaited<ReturnType<typeof startCluster>>;
let admin: NatsConnection;
before(async () => {
  [api, cluster] = await Promise.all([startFakeKubeApi(), startCluster()]);
  admin = await connect({ servers: cluster.urls });
});
after(async () => {
  await admin?.close();
  await Promise.all([api?.close(), cluster?.close()]);
});

function replica(id: string, ns: string, replicas: number): PodRegistry {
  return createPodRegistry({
    kubeConfig: api.kubeConfig(),
    namespaces: [ns],
    replication: {
      servers: cluster.urls,
      bucket: "pods-r3",
      bucketReplicas: replicas,
      lease: { name: "pods-r3", namespace: "kube-system", durationMs: 2000, retryPeriodMs: 200 },
      heartbeatIntervalMs: 200,
      tombstoneTtlMs: 1000,
    },
    identity: id,
    staleAfterMs: 3000,
    waitDefaultMs: 200,
    waitMaxMs: 1000,
    apiFallback: false,
    logger: quietLogger(),
    watchBackoff: { initialMs: 20, maxMs: 200 },
  });
}

test("on a three-server JetStream cluster the bucket is replicated three ways, tombstones expire, and losing one server keeps the feed going", {
  timeout: 180_000,
}, async () => {
  const ns = "r3";
  // A bucket an older, single-server setup created (R1): raised to three copies on open.
  await new Kvm(admin).create("pods-r3", { history: 1 });
  const rs = [replica("r3-a", ns, 3), replica("r3-b", ns, 3)];
  try {
    await Promise.all(rs.map((r) => r.start()));
    await Promise.all(rs.map((r) => r.synced));
    const kv = await new Kvm(admin).open("pods-r3");
    const cfg = (await kv.status()).streamInfo.config;
    assert.deepEqual([cfg.num_replicas, cfg.allow_msg_ttl], [3, true]);

    // The pipelined writer on a clustered stream: 2,000 creates and 1,000 deletes.
    const uids = Array.from({ length: 2000 }, () => api.createPod({ namespace: ns }).metadata.uid);
    for (const u of uids.slice(0, 1000)) api.deletePod(u);
    const live = uids.slice(1000);
    await until(rs, () => rs.every((r) => r.cache.size === 1000 && live.every((u) => r.getByUid(u))), "1,000 live pods everywhere", 30_000);
    // Tombstones (1 s TTL) and their markers expire on the clustered stream as well.
    await eventuallyAsync(async () => (await kv.status()).values <= 1000 + 2, "only the live pods left", 20_000);

    // Lose one server (SIGKILL): two of three keep the quorum, the feed goes on.
    const leader = rs.find((r) => r.role === RegistryRole.LEADER)!;
    assert.ok(leader);
    cluster.members[0]!.proc.kill("SIGKILL");
    const p = api.createPod({ namespace: ns });
    api.deletePod(live[0]!);
    await until(rs, () => rs.every((r) => r.getByUid(p.metadata.uid) && !r.getByUid(live[0]!)), "changes after losing a server", 30_000);
    await eventually(() => rs.every((r) => r.status().fresh), "fresh with two of three servers", 15_000);
  } finally {
    await Promise.all(rs.map((r) => r.close()));
  }
});
