/**
 * What the registry shows of its health beyond GetStatus: the /readyz detail and the Prometheus
 * metrics. Staleness and its cause are visible in all three (issue 11), from the same
 * {@link RegistryStatusInfo} and {@link RegistryStats}.
 */
import { RegistryRole, StaleReason } from "@k8s-athenz-identity/api/pod_registry";
import { Counter, Gauge, type Registry } from "prom-client";
import type { PodRegistry, RegistryStatusInfo } from "./registry.js";

/** "WATCH_SILENT" -> "watch-silent"; null when fresh. */
export function staleReasonName(r: StaleReason | undefined): string | null {
  if (r === undefined || r === StaleReason.UNSPECIFIED) return null;
  return (StaleReason[r] ?? String(r)).toLowerCase().replaceAll("_", "-");
}

const roleName = (r: RegistryRole) => (RegistryRole[r] ?? "unspecified").toLowerCase();

/** The /readyz body's detail: freshness, its cause, the role, the leader and epoch followed. */
export function readinessDetail(s: RegistryStatusInfo): Record<string, unknown> {
  return {
    synced: s.synced,
    live: s.live,
    fresh: s.fresh,
    staleReason: staleReasonName(s.staleReason),
    pods: s.podCount,
    lastEventAgeMs: s.lastEventAgeMs ?? null,
    role: roleName(s.role),
    leader: s.leader || null,
    epoch: s.epoch,
  };
}

/** A counter that follows a monotonic value read at scrape time. */
function followCounter(registry: Registry, name: string, help: string, label: string | undefined, read: () => Record<string, number>) {
  const last = new Map<string, number>();
  new Counter({
    name,
    help,
    labelNames: label ? [label] : [],
    registers: [registry],
    collect() {
      for (const [k, v] of Object.entries(read())) {
        const d = v - (last.get(k) ?? 0);
        if (d > 0) {
          if (label) this.inc({ [label]: k }, d);
          else this.inc(d);
        }
        last.set(k, v);
      }
    },
  });
}

/** Registers the registry's staleness, watch, probe, fence and Lease metrics on `registry`. */
export function registerRegistryMetrics(metrics: Registry, registry: PodRegistry): void {
  new Gauge({
    name: "pod_registry_stale",
    help: "1 for the reason the cache is not fresh now (none set when fresh)",
    labelNames: ["reason"],
    registers: [metrics],
    collect() {
      this.reset();
      const r = staleReasonName(registry.status().staleReason);
      if (r) this.set({ reason: r }, 1);
    },
  });
  new Gauge({
    name: "pod_registry_leader_epoch",
    help: "the leader epoch in force in the bucket (replicated)",
    registers: [metrics],
    collect() {
      this.set(registry.status().epoch);
    },
  });
  new Gauge({
    name: "pod_registry_publish_pending",
    help: "pod values queued or in flight to the bucket (the leader)",
    registers: [metrics],
    collect() {
      this.set(registry.stats().publishPending);
    },
  });
  const w = () => registry.stats().watch;
  followCounter(metrics, "pod_registry_watch_requests_total", "API watch requests sent", undefined, () => ({ "": w().watches }));
  followCounter(
    metrics,
    "pod_registry_watch_silent_drops_total",
    "API watches dropped for staying silent past timeoutSeconds plus a margin",
    undefined,
    () => ({
      "": w().silentDrops,
    }),
  );
  followCounter(metrics, "pod_registry_watch_failures_total", "failed list pages, watch starts and broken watch streams", undefined, () => ({
    "": w().failures,
  }));
  followCounter(
    metrics,
    "pod_registry_lists_total",
    "full lists of the API server (first, after 410 Gone, after a failed resume)",
    undefined,
    () => ({
      "": w().lists,
    }),
  );
  followCounter(metrics, "pod_registry_watch_gone_total", "410 Gone answers to a watch", undefined, () => ({ "": w().gone }));
  followCounter(metrics, "pod_registry_probes_total", "limit=1 probes of the API server, by result", "result", () => {
    const s = w();
    return { ok: s.probesOk, behind: s.probesBehind, failed: s.probesFailed };
  });
  followCounter(metrics, "pod_registry_bucket_values_rejected_total", "bucket values skipped, by reason", "reason", () => {
    const b = registry.stats().bucket;
    return { malformed: b?.malformed ?? 0, fenced: b?.fenced ?? 0 };
  });
  followCounter(metrics, "pod_registry_bucket_watch_restarts_total", "NATS bucket watches re-created (after an error or silence)", undefined, () => ({
    "": registry.stats().bucket?.restarts ?? 0,
  }));
  followCounter(
    metrics,
    "pod_registry_bucket_resyncs_total",
    "full replays of the bucket after a watch gap longer than the tombstone TTL (deletions may have been missed)",
    undefined,
    () => ({ "": registry.stats().bucket?.resyncs ?? 0 }),
  );
  followCounter(metrics, "pod_registry_published_total", "pod values this replica stored in the bucket as leader", undefined, () => ({
    "": registry.stats().published,
  }));
  followCounter(metrics, "pod_registry_lease_events_total", "Lease election events, by kind", "event", () => {
    const l = registry.stats().lease;
    return { acquired: l?.acquired ?? 0, stepped_down: l?.steppedDown ?? 0, failed: l?.failures ?? 0 };
  });
}
