import { ConnectError, type Interceptor } from "@connectrpc/connect";
import { codeToString } from "@connectrpc/connect/protocol-connect";
import { Counter, collectDefaultMetrics, Histogram, Registry } from "prom-client";

/** The metrics registry type, so a service that only passes registries around needs no prom-client of its own. */
export type { Registry };

/**
 * One registry per service instance (not prom-client's global one), so several services can run in
 * one test process without their metrics colliding.
 */
export function createMetricsRegistry(service: string, opts: { defaultMetrics?: boolean } = {}): Registry {
  const registry = new Registry();
  registry.setDefaultLabels({ service });
  if (opts.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });
  return registry;
}

/** Seconds buckets suited to sub-millisecond to multi-second RPCs. */
export const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** Server interceptor recording every RPC's count and latency by method and Connect code. */
export function rpcMetricsInterceptor(registry: Registry): Interceptor {
  const requests = new Counter({
    name: "rpc_server_requests_total",
    help: "Connect RPCs handled, by method and code",
    labelNames: ["method", "code"] as const,
    registers: [registry],
  });
  const latency = new Histogram({
    name: "rpc_server_duration_seconds",
    help: "Connect RPC handling time",
    labelNames: ["method"] as const,
    buckets: LATENCY_BUCKETS,
    registers: [registry],
  });
  return (next) => async (req) => {
    const method = `${req.service.typeName}/${req.method.name}`;
    const end = latency.startTimer({ method });
    try {
      const res = await next(req);
      requests.inc({ method, code: "ok" });
      return res;
    } catch (err) {
      requests.inc({ method, code: codeToString(ConnectError.from(err).code) });
      throw err;
    } finally {
      end();
    }
  };
}
