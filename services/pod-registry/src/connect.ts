/**
 * Connect routes of PodRegistryService over a {@link PodRegistry}. Validation and mapping only.
 */
import { create } from "@bufbuild/protobuf";
import { durationFromMs } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter, HandlerContext } from "@connectrpc/connect";
import {
  FindPodResponseSchema,
  GetPodResponseSchema,
  GetStatusResponseSchema,
  PodRegistryService,
  type RegistryStatus,
  RegistryStatusSchema,
  StaleReason,
  WaitForPodResponseSchema,
  WatchEventType,
  type WatchPodsResponse,
  WatchPodsResponseSchema,
} from "@k8s-athenz-identity/api/pod_registry";
import { DomainError, ErrorCode } from "@k8s-athenz-identity/shared";
import type { CacheEvent } from "./cache.js";
import { LIMITS, toProtoPod } from "./pod.js";
import type { PodRegistry, RegistryStatusInfo } from "./registry.js";

export interface PodRegistryRoutesOptions {
  registry: PodRegistry;
  /** Changes a WatchPods stream may have queued before it is ended as too slow. Default 10,000. */
  maxWatchBacklog?: number;
}

export function toProtoStatus(s: RegistryStatusInfo): RegistryStatus {
  return create(RegistryStatusSchema, {
    synced: s.synced,
    live: s.live,
    fresh: s.fresh,
    podCount: BigInt(s.podCount),
    lastEventAge: s.lastEventAgeMs !== undefined ? durationFromMs(s.lastEventAgeMs) : undefined,
    role: s.role,
    leader: s.leader,
    epoch: BigInt(s.epoch),
    staleReason: s.staleReason ?? StaleReason.UNSPECIFIED,
  });
}

function check(value: string, max: number, field: string, required = true): string {
  if (required && value === "") throw new DomainError(ErrorCode.InvalidArgument, `${field} is required`);
  if (value.length > max) throw new DomainError(ErrorCode.InvalidArgument, `${field} is longer than ${max} characters`);
  return value;
}

function durationMs(d: { seconds: bigint; nanos: number } | undefined): number {
  if (!d) return 0;
  if (d.seconds < 0n || d.nanos < 0) throw new DomainError(ErrorCode.InvalidArgument, "timeout must not be negative");
  // Large values are capped by the registry; avoid overflow first.
  const s = d.seconds > 86_400n ? 86_400 : Number(d.seconds);
  return s * 1000 + Math.floor(d.nanos / 1e6);
}

/** Registers PodRegistryService. */
export function podRegistryRoutes(opts: PodRegistryRoutesOptions) {
  const { registry } = opts;
  const maxBacklog = opts.maxWatchBacklog ?? 10_000;
  return (router: ConnectRouter) => {
    router.service(PodRegistryService, {
      getPod(req) {
        const uid = check(req.uid, LIMITS.uid, "uid");
        const p = registry.getByUid(uid);
        return create(GetPodResponseSchema, { pod: p ? toProtoPod(p) : undefined, status: toProtoStatus(registry.status()) });
      },
      findPod(req) {
        const ns = check(req.namespace, LIMITS.namespace, "namespace");
        const name = check(req.name, LIMITS.name, "name");
        const p = registry.findByName(ns, name);
        return create(FindPodResponseSchema, { pod: p ? toProtoPod(p) : undefined, status: toProtoStatus(registry.status()) });
      },
      async waitForPod(req, ctx: HandlerContext) {
        const uid = check(req.uid, LIMITS.uid, "uid");
        const namespace = check(req.namespace, LIMITS.namespace, "namespace", false);
        const name = check(req.name, LIMITS.name, "name", false);
        const r = await registry.waitForPod(uid, {
          timeoutMs: durationMs(req.timeout),
          signal: ctx.signal,
          ...(namespace && name ? { namespace, name } : {}),
        });
        return create(WaitForPodResponseSchema, {
          pod: r.pod ? toProtoPod(r.pod) : undefined,
          status: toProtoStatus(registry.status()),
          fromApiServer: r.fromApiServer,
        });
      },
      getStatus() {
        return create(GetStatusResponseSchema, { status: toProtoStatus(registry.status()) });
      },
      async *watchPods(req, ctx: HandlerContext): AsyncGenerator<WatchPodsResponse> {
        const ns = check(req.namespace, LIMITS.namespace, "namespace", false);
        // Subscribe before the snapshot so no change falls between the two; a change seen twice is
        // harmless (the client applies by UID and resourceVersion).
        const queue: CacheEvent[] = [];
        let wake: (() => void) | undefined;
        let overflow = false;
        const unsubscribe = registry.subscribe((e) => {
          if (ns !== "" && e.pod.namespace !== ns) return;
          if (queue.length >= maxBacklog) overflow = true;
          else queue.push(e);
          wake?.();
        });
        const onAbort = () => wake?.();
        ctx.signal.addEventListener("abort", onAbort);
        try {
          for (const p of registry.cache.pods(ns)) {
            if (ctx.signal.aborted) return;
            yield create(WatchPodsResponseSchema, { type: WatchEventType.SNAPSHOT, pod: toProtoPod(p) });
          }
          yield create(WatchPodsResponseSchema, { type: WatchEventType.SYNCED });
          while (!ctx.signal.aborted) {
            if (overflow) throw new DomainError(ErrorCode.Unavailable, "watcher too slow; reconnect to get a new snapshot");
            const e = queue.shift();
            if (!e) {
              await new Promise<void>((r) => (wake = r));
              wake = undefined;
              continue;
            }
            yield create(WatchPodsResponseSchema, {
              type: e.type === "upserted" ? WatchEventType.UPSERTED : WatchEventType.DELETED,
              pod: toProtoPod(e.pod),
            });
          }
        } finally {
          unsubscribe();
          ctx.signal.removeEventListener("abort", onAbort);
        }
      },
    });
  };
}
