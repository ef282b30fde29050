/**
 * Chaos bench (issue 11): the chaos tier's faults with their figures, on the real kube-apiserver +
 * etcd, a 3-server NATS JetStream cluster (bucket replicated 3 ways), three pod-registry replicas,
 * token-verifier, csr-inspector and the gateway as processes, under a steady stream of
 * confirmations from the ZTS stand-in (test/chaos/*). For each fault: seconds until it was noticed,
 * seconds to recover after healing, answers 200 / 403 / 504 meanwhile, wrong answers and pods lost
 * or resurrected (targets 0). Then the paged list of 10k pods (a new leader's list, clean and
 * across an API server restart) and a churn of 100k pods through create/delete with the bucket's
 * size and a replica's re-sync after it.
 *
 * CHAOS_PAGED_LIST_PODS (default 10000), CHAOS_CHURN_PODS (default 100000) and CHAOS_CHURN_BATCH
 * (default 1000) size the runs; the figures name the sizes used.
 */
import { availableParallelism, loadavg } from "node:os";
import { Kvm } from "@nats-io/kv";
import { tally } from "../test/chaos/load.js";
import { compareSets } from "../test/chaos/registries.js";
import { startChaosRun } from "../test/chaos/run.js";
import {
  apiServerRestartDuringPagedList,
  type FaultResult,
  freezeFaults,
  GRACE_MS,
  leaderKillDuringBurst,
  natsFaults,
  partitionServingReplica,
  rewatch410,
} from "../test/chaos/scenarios.js";
import { BUCKET } from "../test/chaos/stack.js";
import { NAMESPACE, NODE, SERVICE_ACCOUNT } from "../test/chaos/world.js";
import { type Figure, recordFigures } from "./lib.js";

const PAGED = Number(process.env.CHAOS_PAGED_LIST_PODS ?? 10_000);
const CHURN = Number(process.env.CHAOS_CHURN_PODS ?? 100_000);
const BATCH = Number(process.env.CHAOS_CHURN_BATCH ?? 1000);
const figures: Figure[] = [];
const load0 = loadavg()
  .map((x) => x.toFixed(2))
  .join("/");
const log = (m: string) => console.error(`[chaos ${new Date().toISOString().slice(11, 19)}] ${m}`);
const k = (n: number) => (n >= 1000 ? `${Math.round(n / 1000)}k` : String(n));

function faultFigures(r: FaultResult): Figure[] {
  const note = `noticed by: ${r.detectedBy}${r.problems.length ? `; problems: ${r.problems.slice(0, 3).join(" | ").slice(0, 400)}` : ""}`;
  return [
    {
      name: `${r.name}: seconds until detected`,
      value: r.detectedS ?? -1,
      unit: "s",
      target: "report",
      note: r.detectedS === null ? "never noticed" : note,
    },
    {
      name: `${r.name}: seconds to recover`,
      value: r.recoveredS ?? -1,
      unit: "s",
      target: "report",
      note: r.recoveredS === null ? "not recovered within 90 s" : undefined,
    },
    { name: `${r.name}: answers 200`, value: r.answers[200], unit: "answers", target: "report" },
    { name: `${r.name}: answers 403`, value: r.answers[403], unit: "answers", target: "report" },
    {
      name: `${r.name}: answers 504`,
      value: r.answers[504],
      unit: "answers",
      target: "report",
      note: `${r.lateAllows} allows within ${GRACE_MS / 1000} s of a deletion`,
    },
    { name: `${r.name}: wrong answers`, value: r.wrong + r.answers.errors, unit: "answers", target: "== 0", met: r.wrong + r.answers.errors === 0 },
    { name: `${r.name}: pods lost or resurrected`, value: r.lost + r.resurrected, unit: "pods", target: "== 0", met: r.lost + r.resurrected === 0 },
  ];
}

const run = await startChaosRun({ log });
try {
  const paged = apiServerRestartDuringPagedList(PAGED);
  for (const spec of [...natsFaults(), ...freezeFaults(), leaderKillDuringBurst(), rewatch410(), partitionServingReplica(), paged]) {
    figures.push(...faultFigures(await run.fault(spec)));
  }
  const lf = paged.listFigures;
  figures.push(
    { name: `paged list of ${k(PAGED)} pods: creating them through the API server`, value: lf.createS ?? -1, unit: "s", target: "report" },
    {
      name: `paged list of ${k(PAGED)} pods: leader's relist after 410 Gone`,
      value: lf.cleanRelistS ?? -1,
      unit: "s",
      target: "report",
      note: "pages of 500, undisturbed: from cutting its watch to a pod created then being on every replica",
    },
    {
      name: `paged list of ${k(PAGED)} pods: list attempts across the kube-apiserver crash`,
      value: lf.lists ?? -1,
      unit: "lists",
      target: "report",
      note: `the crash came ${lf.bytesAtCrash ?? "?"} bytes into the list answer; recovery time is the fault's`,
    },
  );

  // ---- churn: CHURN pods created and deleted in rolling batches, under the same load ----------
  const { state } = run.stack;
  await run.churn.pause();
  const churnFrom = Date.now();
  log(`-- churn of ${CHURN} pods in batches of ${BATCH}`);
  let created = 0;
  for (let b = 0; created < CHURN; b++) {
    const n = Math.min(BATCH, CHURN - created);
    let next = 0;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (next < n) {
          const i = next++;
          for (let attempt = 0; ; attempt++) {
            try {
              await state.core.createNamespacedPod({
                namespace: NAMESPACE,
                body: {
                  metadata: { name: `churn-${b}-${i}`, labels: { "chaos-churn": String(b) } },
                  spec: { serviceAccountName: SERVICE_ACCOUNT, nodeName: NODE, containers: [{ name: "app", image: "registry.invalid/app:test" }] },
                },
              });
              break;
            } catch (err) {
              if (attempt >= 5) throw err;
              await new Promise((r) => setTimeout(r, 200 * (attempt + 1)));
            }
          }
        }
      }),
    );
    created += n;
    if (b > 0) await state.core.deleteCollectionNamespacedPod({ namespace: NAMESPACE, labelSelector: `chaos-churn=${b - 1}`, gracePeriodSeconds: 0 });
    if (b % 10 === 0) log(`   ${created} created (${Math.round(created / ((Date.now() - churnFrom) / 1000))}/s)`);
  }
  await state.core.deleteCollectionNamespacedPod({ namespace: NAMESPACE, labelSelector: "chaos-churn", gracePeriodSeconds: 0 });
  const churnS = (Date.now() - churnFrom) / 1000;
  // Every replica settles on the API server's pods.
  const truth = await run.world.truth();
  let diff = { lost: 0, resurrected: 0 };
  const settleFrom = Date.now();
  for (;;) {
    diff = { lost: 0, resurrected: 0 };
    for (const id of run.replicas.ids) {
      const d = compareSets(await run.replicas.podSet(id, 30_000), truth);
      diff.lost += d.lost.length;
      diff.resurrected += d.resurrected.length;
    }
    if ((diff.lost === 0 && diff.resurrected === 0) || Date.now() - settleFrom > 120_000) break;
    await new Promise((r) => setTimeout(r, 1000));
  }
  const t = tally(run.load.answers, run.world, GRACE_MS, churnFrom, Date.now());
  const status = await (await new Kvm(run.stack.natsClient).open(BUCKET)).status();
  // A replica restarted after the churn syncs from NATS: its time to fresh.
  const r2 = run.stack.registries.r2;
  await r2.stop();
  const restartFrom = Date.now();
  await r2.start();
  await r2.waitReady(120_000);
  const resyncS = (Date.now() - restartFrom) / 1000;
  figures.push(
    {
      name: `churn of ${k(CHURN)} pods through create/delete: duration`,
      value: churnS,
      unit: "s",
      target: "report",
      note: `${Math.round((2 * CHURN) / churnS)} API writes/s incl. deletes; batches of ${BATCH}`,
    },
    { name: `churn of ${k(CHURN)} pods: answers 200`, value: t[200], unit: "answers", target: "report" },
    { name: `churn of ${k(CHURN)} pods: answers 403`, value: t[403], unit: "answers", target: "report" },
    { name: `churn of ${k(CHURN)} pods: answers 504`, value: t[504], unit: "answers", target: "report" },
    {
      name: `churn of ${k(CHURN)} pods: wrong answers`,
      value: t.wrong + t.errors,
      unit: "answers",
      target: "== 0",
      met: t.wrong + t.errors === 0,
      note: t.details.length ? t.details.slice(0, 3).join(" | ").slice(0, 400) : undefined,
    },
    {
      name: `churn of ${k(CHURN)} pods: pods lost or resurrected`,
      value: diff.lost + diff.resurrected,
      unit: "pods",
      target: "== 0",
      met: diff.lost + diff.resurrected === 0,
    },
    {
      name: `churn of ${k(CHURN)} pods: bucket entries after it`,
      value: status.values,
      unit: "entries",
      target: "report",
      note: `${truth.size} pods live; the rest are tombstones / purge markers (heartbeat included)`,
    },
    {
      name: `churn of ${k(CHURN)} pods: replica restart to fresh after it`,
      value: resyncS,
      unit: "s",
      target: "report",
      note: "process start + sync from NATS",
    },
  );
} finally {
  const all = run.tallyAll();
  figures.push({
    name: "whole run: wrong answers",
    value: all.wrong + all.errors,
    unit: "answers",
    target: "== 0",
    met: all.wrong + all.errors === 0,
    note: `${all[200]} x 200, ${all[403]} x 403, ${all[504]} x 504, ${all.errors} harness errors; load avg ${load0} at start, ${availableParallelism()} cores`,
  });
  for (const d of all.details) log(`   ! ${d}`);
  await run.close();
  recordFigures("chaos", 11, figures);
}
