/**
 * What the decision needs from the other services, as an interface so the decision can be tested
 * with hand-built answers and benchmarked in one process without RPC. {@link createConnectDependencies}
 * is the production implementation over the buf-generated Connect clients.
 */
import type { Client } from "@connectrpc/connect";
import type { CsrInspectorService, InspectAttributesRequest, InspectAttributesResponse } from "@k8s-athenz-identity/api/csr_inspector";
import type { GetPodResponse, GetStatusResponse, PodRegistryService, WaitForPodResponse } from "@k8s-athenz-identity/api/pod_registry";
import type { TokenVerifierService, VerifyTokenResponse } from "@k8s-athenz-identity/api/token_verifier";

export interface Dependencies {
  verifyToken(token: string, signal: AbortSignal): Promise<VerifyTokenResponse>;
  getPod(uid: string, signal: AbortSignal): Promise<GetPodResponse>;
  /** Waits up to `timeoutMs` for a pod the registry has not seen yet. */
  waitForPod(uid: string, timeoutMs: number, signal: AbortSignal, where?: { namespace: string; name: string }): Promise<WaitForPodResponse>;
  inspectAttributes(req: InspectAttributesRequest, signal: AbortSignal): Promise<InspectAttributesResponse>;
  /** The registry's freshness; for readiness and the CLI, not per decision. */
  registryStatus?(signal: AbortSignal): Promise<GetStatusResponse>;
}

export interface ConnectDependenciesOptions {
  tokenVerifier: Client<typeof TokenVerifierService>;
  podRegistry: Client<typeof PodRegistryService>;
  csrInspector: Client<typeof CsrInspectorService>;
}

/** Dependencies over Connect. Deadlines come from the signal (the decision's budget). */
export function createConnectDependencies(o: ConnectDependenciesOptions): Dependencies {
  return {
    verifyToken: (token, signal) => o.tokenVerifier.verifyToken({ token }, { signal }),
    getPod: (uid, signal) => o.podRegistry.getPod({ uid }, { signal }),
    waitForPod: (uid, timeoutMs, signal, where) =>
      o.podRegistry.waitForPod(
        { uid, timeout: { seconds: BigInt(Math.floor(timeoutMs / 1000)), nanos: (timeoutMs % 1000) * 1_000_000 }, ...where },
        // The RPC gets a little more than the wait itself, so the registry can answer "not found".
        { signal, timeoutMs: timeoutMs + 250 },
      ),
    inspectAttributes: (req, signal) => o.csrInspector.inspectAttributes(req, { signal }),
    registryStatus: (signal) => o.podRegistry.getStatus({}, { signal }),
  };
}
