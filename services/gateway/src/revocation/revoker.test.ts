import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { InstanceRecordSchema } from "@k8s-athenz-identity/api/gateway_instances";
import { createLogger } from "@k8s-athenz-identity/shared";
import { CheckOutcome, type DecisionEngine, type DecisionResult, Operation, Outcome } from "../decision.js";
import type { PodEvent, PodLookup, PodSource } from "./pods.js";
import { type InstanceRecordStore, parseRecordKey, recordKey, type StoredRecord } from "./records.js";
import { type Revocation, withInstanceRecords } from "./revocation.js";
import { createRevoker, type RevocationEvent } from "./revoker.js";
import type { DeleteAnswer, ZtsInstanceClient } from "./zts-client.js";

const PROVIDER = "k8s.c1.identityd";
const uid = (n: number) => `00000000-0000-4000-8000-${String(n).padStart(12, "0")}`;
const logger = createLogger({ service: "test", level: "silent" });

/** The bucket in memory, with revisions and compare-and-set as JetStream has them. */
function memoryStore() {
  const data = new Map<string, StoredRecord>();
  let rev = 0;
  const store: InstanceRecordStore & { data: typeof data; casFailures: number } = {
    data,
    casFailures: 0,
    async put(c, ttlMs) {
      const key = recordKey(c);
      const at = Date.now();
      data.set(key, {
        key,
        revision: ++rev,
        record: create(InstanceRecordSchema, { ...c, confirmedAt: timestampFromMs(at), expiresAt: timestampFromMs(at + ttlMs) }),
      });
    },
    async get(key) {
      return data.get(key);
    },
    async markGone(s, reason) {
      const cur = data.get(s.key);
      if (!cur || cur.revision !== s.revision) {
        store.casFailures++;
        return undefined;
      }
      const next = {
        key: s.key,
        revision: ++rev,
        record: create(InstanceRecordSchema, { ...s.record, goneAt: timestampFromMs(Date.now()), goneReason: reason }),
      };
      data.set(s.key, next);
      return next;
    },
    async remove(s) {
      const cur = data.get(s.key);
      if (!cur || cur.revision !== s.revision) return false;
      data.delete(s.key);
      return true;
    },
    async keys(id) {
      return [...data.keys()].filter((k) => id === undefined || k.startsWith(`${id}.`));
    },
  };
  return store;
}

/** A registry: a feed the test pushes events into, and lookups answered from `pods`. */
function fakeRegistry() {
  const pods = new Map<string, { finished: boolean }>();
  let fresh = true;
  let push: ((e: PodEvent) => void) | undefined;
  const backlog: PodEvent[] = [];
  const source: PodSource & { emit(e: PodEvent): void; pods: typeof pods; setFresh(v: boolean): void; lookups: number } = {
    pods,
    lookups: 0,
    setFresh: (v) => {
      fresh = v;
    },
    emit(e) {
      if (push) push(e);
      else backlog.push(e);
    },
    async *watch(signal) {
      const queue: PodEvent[] = [...backlog.splice(0)];
      let wake: (() => void) | undefined;
      push = (e) => {
        queue.push(e);
        wake?.();
      };
      for (const [u, p] of pods) yield { type: "snapshot", uid: u, finished: p.finished };
      yield { type: "synced" };
      while (!signal.aborted) {
        const e = queue.shift();
        if (e) yield e;
        else
          await new Promise<void>((r) => {
            wake = r;
            signal.addEventListener("abort", () => r(), { once: true });
          });
      }
    },
    async lookup(u): Promise<PodLookup> {
      source.lookups++;
      const p = pods.get(u);
      return { ...(p ? { pod: { uid: u, finished: p.finished } } : {}), fresh };
    },
  };
  return source;
}

function fakeZts(answer: (n: number) => DeleteAnswer = () => ({ result: "ok", status: 204, message: "" })) {
  const calls: Array<{ provider: string; instanceId: string }> = [];
  const zts: ZtsInstanceClient & { calls: typeof calls } = {
    calls,
    async deleteInstance(provider, n) {
      calls.push({ provider, instanceId: n.instanceId });
      return answer(calls.length);
    },
    close() {},
  };
  return zts;
}

function harness(o: { graceMs?: number; zts?: ReturnType<typeof fakeZts> } = {}) {
  const store = memoryStore();
  const pods = fakeRegistry();
  const zts = o.zts ?? fakeZts();
  const events: RevocationEvent[] = [];
  const results: string[] = [];
  let waiters: Array<() => void> = [];
  const revoker = createRevoker({
    store,
    pods,
    zts,
    logger,
    graceMs: o.graceMs ?? 0,
    reconcileIntervalMs: 60_000,
    deleteSpacingMs: 1,
    backoff: { initialMs: 5, maxMs: 20 },
    recheckMs: 20,
    onDelete: (r) => results.push(r),
    onEvent: (e) => {
      events.push(e);
      const ws = waiters;
      waiters = [];
      for (const w of ws) w();
    },
  });
  const abort = new AbortController();
  let done: Promise<void> | undefined;
  return {
    store,
    pods,
    zts,
    events,
    results,
    start() {
      done = revoker.run(abort.signal);
    },
    async stop() {
      abort.abort();
      await done;
    },
    async until(pred: () => boolean) {
      while (!pred()) await new Promise<void>((r) => waiters.push(r));
    },
    record: (n: number) =>
      store.put({ provider: PROVIDER, domain: "Sports", service: "API", instanceId: uid(n), namespace: "sports", podName: `p${n}` }, 3_600_000),
    key: (n: number) => `${uid(n)}.sports.api`,
  };
}

describe("revoker (one leadership term)", () => {
  it("keys: <uid>.<domain>.<service> in lower case, parsed back; anything else is no key of ours", () => {
    const k = recordKey({ instanceId: uid(1).toUpperCase(), domain: "Home.Sports", service: "API" });
    assert.equal(k, `${uid(1)}.home.sports.api`);
    assert.deepEqual(parseRecordKey(k), { instanceId: uid(1), domain: "home.sports", service: "api" });
    for (const bad of ["x.y.z", `${uid(1)}.api`, `${uid(1)}..api`, "_heartbeat"]) assert.equal(parseRecordKey(bad), undefined, bad);
    assert.throws(() => recordKey({ instanceId: "not-a-uid", domain: "a", service: "b" }), RangeError);
    assert.throws(() => recordKey({ instanceId: uid(1), domain: "a b", service: "b" }), RangeError);
  });

  it("a pod deleted on the feed: marked gone, one DELETE as its provider, record removed; a live pod untouched", async () => {
    const h = harness();
    await h.record(1);
    await h.record(2);
    h.pods.pods.set(uid(1), { finished: false });
    h.pods.pods.set(uid(2), { finished: false });
    h.start();
    await h.until(() => h.events.some((e) => e.type === "synced"));
    h.pods.pods.delete(uid(1));
    h.pods.emit({ type: "deleted", uid: uid(1) });
    await h.until(() => h.events.some((e) => e.type === "removed"));
    await h.stop();
    assert.deepEqual(h.zts.calls, [{ provider: PROVIDER, instanceId: uid(1) }]);
    assert.deepEqual([...h.store.data.keys()], [h.key(2)]);
    assert.deepEqual(h.results, ["ok"]);
    assert.deepEqual(
      h.events.filter((e) => e.type === "gone"),
      [{ type: "gone", key: h.key(1), reason: "deleted" }],
    );
  });

  it("a finished pod (Succeeded or Failed) is gone although the registry still holds it", async () => {
    const h = harness();
    await h.record(3);
    h.pods.pods.set(uid(3), { finished: false });
    h.start();
    await h.until(() => h.events.some((e) => e.type === "synced"));
    h.pods.pods.set(uid(3), { finished: true });
    h.pods.emit({ type: "upserted", uid: uid(3), finished: true });
    await h.until(() => h.events.some((e) => e.type === "removed"));
    await h.stop();
    assert.deepEqual(
      h.events.filter((e) => e.type === "gone"),
      [{ type: "gone", key: h.key(3), reason: "finished" }],
    );
  });

  it("no evidence, no DELETE: while the registry is not fresh an absent pod is only checked again", async () => {
    const h = harness();
    await h.record(4);
    h.pods.setFresh(false);
    h.start();
    // Absent from the snapshot: a candidate, looked up, and the answer is not fresh, again and again.
    await h.until(() => h.events.filter((e) => e.type === "deferred" && e.why === "not fresh").length >= 3);
    assert.deepEqual(h.zts.calls, []);
    assert.equal(h.store.data.get(h.key(4))?.record.goneAt, undefined, "not even marked");
    h.pods.setFresh(true);
    await h.until(() => h.events.some((e) => e.type === "removed"));
    await h.stop();
    assert.equal(h.zts.calls.length, 1);
  });

  it("a pod merely absent from the registry is marked gone only after the grace period from its confirmation; one deleted on the feed (a DELETED event) at once, without waiting for it", async () => {
    // The grace is long next to what the steps before the DELETED event take even on a loaded machine,
    // so the order below is the revoker's, not the scheduler's; no upper bound on elapsed time is asserted.
    const graceMs = 2000;
    const h = harness({ graceMs });
    await h.record(5); // absent from the registry: a pod confirmed through the API server, say
    await h.record(6);
    h.pods.pods.set(uid(6), { finished: false });
    h.start();
    await h.until(() => h.events.some((e) => e.type === "synced"));
    h.pods.pods.delete(uid(6));
    h.pods.emit({ type: "deleted", uid: uid(6) });
    await h.until(() => h.events.some((e) => e.type === "gone" && e.key === h.key(6)));
    const grace5 = h.events.find((e) => e.type === "deferred" && e.key === h.key(5) && e.why === "grace");
    assert.ok(grace5?.type === "deferred", "the absent pod was deferred for the grace period");
    assert.ok(!h.events.some((e) => e.type === "gone" && e.key === h.key(5)), "the absent pod is not gone yet when the deleted one is");
    assert.ok(!h.events.some((e) => e.type === "deferred" && e.key === h.key(6) && e.why === "grace"), "the DELETED pod never waited for the grace");
    await h.until(() => h.events.some((e) => e.type === "gone" && e.key === h.key(5)));
    const gone5At = Date.now();
    await h.stop();
    assert.ok(gone5At >= grace5.at, `absent only: gone at ${gone5At}, not before its grace ended (${grace5.at})`);
  });

  it("retries while ZTS fails, counting each failure, and sends once it answers", async () => {
    const zts = fakeZts((n) => (n <= 3 ? { result: "error", status: 503, message: "down" } : { result: "ok", status: 204, message: "" }));
    const h = harness({ zts });
    await h.record(7);
    h.start();
    await h.until(() => h.events.some((e) => e.type === "removed"));
    await h.stop();
    assert.deepEqual(h.results, ["error", "error", "error", "ok"]);
    assert.equal(h.store.data.size, 0);
  });

  it("a record rewritten under the gone mark is read again, never lost", async () => {
    const h = harness();
    await h.record(8);
    const markGone = h.store.markGone.bind(h.store);
    let first = true;
    h.store.markGone = async (s, reason) => {
      if (first) {
        first = false;
        await h.record(8); // a confirmation lands between the read and the mark
      }
      return markGone(s, reason);
    };
    h.start();
    await h.until(() => h.events.some((e) => e.type === "removed"));
    await h.stop();
    assert.equal(h.store.casFailures, 1);
    assert.equal(h.zts.calls.length, 1);
    assert.equal(h.store.data.size, 0);
  });

  it("a gone mark left by a previous leader is sent without asking the registry again", async () => {
    const h = harness();
    await h.record(9);
    const s = h.store.data.get(h.key(9))!;
    await h.store.markGone(s, "deleted");
    // The registry is not fresh now: without the recorded evidence nothing could be sent.
    h.pods.setFresh(false);
    const lookups = h.pods.lookups;
    h.start();
    await h.until(() => h.events.some((e) => e.type === "removed"));
    await h.stop();
    assert.equal(h.pods.lookups, lookups);
    assert.equal(h.zts.calls.length, 1);
  });

  it("ends with the term: nothing is sent after the signal", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const zts = fakeZts();
    const slow: typeof zts = {
      ...zts,
      calls: zts.calls,
      deleteInstance: async (p, n, signal) => {
        zts.calls.push({ provider: p, instanceId: n.instanceId });
        await Promise.race([gate, new Promise((r) => signal.addEventListener("abort", r, { once: true }))]);
        return { result: "error", status: 0, message: "aborted" };
      },
    };
    const h = harness({ zts: slow });
    await h.record(10);
    await h.record(11);
    h.start();
    await h.until(() => zts.calls.length === 1);
    await h.stop();
    release();
    assert.equal(zts.calls.length, 1, "the next leader sends the rest");
    assert.deepEqual(h.results, [], "an aborted call is not counted");
    assert.equal(h.store.data.size, 2, "both records stay for the next leader");
  });
});

describe("instance records at confirmation", () => {
  const allow: DecisionResult = {
    outcome: Outcome.ALLOW,
    violations: [],
    checks: [],
    subject: { namespace: "sports", pod: "p1" },
    latencyMs: 1,
    confirmation: { provider: PROVIDER, domain: "sports", service: "api", attributes: { certExpiryTime: "60" } },
  };
  const engine: DecisionEngine = { decide: async () => allow };
  const confirmation = { provider: PROVIDER, domain: "sports", service: "api", attestationData: "t", attributes: { instanceId: uid(1) } };
  const revocation = (fail: boolean, seen: unknown[] = []): Revocation => ({
    async record(c, minutes) {
      seen.push({ ...c, minutes });
      if (fail) throw new Error("JetStream not reachable");
    },
    isLeader: false,
    subscribe: () => () => {},
    close: async () => {},
  });

  it("records an allowed instance, with the lifetime granted to ZTS, before answering", async () => {
    const seen: unknown[] = [];
    const r = await withInstanceRecords(engine, revocation(false, seen), logger).decide(Operation.REGISTER, confirmation);
    assert.equal(r.outcome, Outcome.ALLOW);
    assert.deepEqual(seen, [
      { provider: PROVIDER, domain: "sports", service: "api", instanceId: uid(1), namespace: "sports", podName: "p1", minutes: 60 },
    ]);
  });

  it("a register that cannot be recorded is a 504 (retry); a refresh is answered anyway", async () => {
    const reg = await withInstanceRecords(engine, revocation(true), logger).decide(Operation.REGISTER, confirmation);
    assert.equal(reg.outcome, Outcome.RETRY);
    assert.equal(reg.confirmation, undefined);
    assert.match(reg.retryReason ?? "", /^record: /);
    assert.equal(reg.checks.at(-1)?.outcome, CheckOutcome.ERROR);
    const ref = await withInstanceRecords(engine, revocation(true), logger).decide(Operation.REFRESH, confirmation);
    assert.equal(ref.outcome, Outcome.ALLOW);
  });

  it("records nothing for a deny or a retry", async () => {
    const seen: unknown[] = [];
    for (const outcome of [Outcome.DENY, Outcome.RETRY] as const) {
      const e: DecisionEngine = { decide: async () => ({ ...allow, outcome, confirmation: undefined }) };
      await withInstanceRecords(e, revocation(false, seen), logger).decide(Operation.REGISTER, confirmation);
    }
    assert.deepEqual(seen, []);
  });
});
