/**
 * Hand-built dependency answers for the gateway's tests: a consistent pod/token pair and fake
 * dependencies whose answers a test overrides one at a time.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import { type Pod, PodPhase, PodSchema, type VerifiedToken, VerifiedTokenSchema, type Violation } from "@k8s-athenz-identity/api/common";
import type { InspectAttributesRequest } from "@k8s-athenz-identity/api/csr_inspector";
import {
  type GetPodResponse,
  GetPodResponseSchema,
  type RegistryStatus,
  RegistryStatusSchema,
  type WaitForPodResponse,
  WaitForPodResponseSchema,
} from "@k8s-athenz-identity/api/pod_registry";
import { type VerifyTokenResponse, VerifyTokenResponseSchema } from "@k8s-athenz-identity/api/token_verifier";
import type { Confirmation } from "../src/decision.js";
import type { Dependencies } from "../src/dependencies.js";

export const PROVIDER = "k8s.cluster1.identityd";
export const UID_A = "0b0f5d4e-1111-4a2b-9c3d-000000000001";
export const UID_B = "0b0f5d4e-2222-4a2b-9c3d-000000000002";

export function basePolicy(over: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    provider: PROVIDER,
    san: { dnsSuffixes: ["cluster1.example.com"] },
    cert: { expiryMinutes: 1440, refresh: true },
    allowedZtsCns: ["zts.athenz.io"],
    podWaitMs: 200,
    ...over,
  };
}

export function podA(over: Omit<MessageInitShape<typeof PodSchema>, "$typeName"> = {}): Pod {
  return create(PodSchema, {
    uid: UID_A,
    namespace: "sports",
    name: "api-0",
    serviceAccountName: "api",
    podIps: ["10.1.2.3"],
    phase: PodPhase.RUNNING,
    nodeName: "node-1",
    ...over,
  });
}

export function tokenA(over: Omit<MessageInitShape<typeof VerifiedTokenSchema>, "$typeName"> = {}): VerifiedToken {
  return create(VerifiedTokenSchema, {
    namespace: "sports",
    serviceAccountName: "api",
    podName: "api-0",
    podUid: UID_A,
    issuer: "https://kubernetes.default.svc",
    audiences: ["athenz-identityd"],
    subject: "system:serviceaccount:sports:api",
    ...over,
  });
}

export function freshStatus(over: Omit<MessageInitShape<typeof RegistryStatusSchema>, "$typeName"> = {}): RegistryStatus {
  return create(RegistryStatusSchema, { synced: true, live: true, fresh: true, podCount: 1n, ...over });
}

export function confirmation(over: Partial<Confirmation> = {}, attributes: Record<string, string> = {}): Confirmation {
  return {
    provider: PROVIDER,
    domain: "sports",
    service: "api",
    attestationData: "header.payload.signature",
    attributes: {
      instanceId: UID_A,
      clientIP: "10.1.2.3",
      sanIP: "10.1.2.3",
      sanDNS: `api.sports.cluster1.example.com,${UID_A}.instanceid.athenz.cluster1.example.com`,
      sanURI: `spiffe://sports/sa/api,athenz://instanceid/${PROVIDER}/${UID_A}`,
      ...attributes,
    },
    ...over,
  };
}

export interface FakeDeps extends Dependencies {
  calls: { verifyToken: string[]; getPod: string[]; waitForPod: string[]; inspect: InspectAttributesRequest[] };
}

/** Fake dependencies: each answer is a function so a test can throw, delay or vary it. */
export function fakeDeps(
  o: {
    token?: (token: string, signal: AbortSignal) => Promise<VerifyTokenResponse>;
    pod?: (uid: string, signal: AbortSignal) => Promise<GetPodResponse>;
    wait?: (uid: string, signal: AbortSignal) => Promise<WaitForPodResponse>;
    inspect?: (req: InspectAttributesRequest, signal: AbortSignal) => Promise<Violation[]>;
  } = {},
): FakeDeps {
  const calls: FakeDeps["calls"] = { verifyToken: [], getPod: [], waitForPod: [], inspect: [] };
  return {
    calls,
    async verifyToken(token, signal) {
      calls.verifyToken.push(token);
      return o.token ? o.token(token, signal) : create(VerifyTokenResponseSchema, { token: tokenA(), verifiedBy: ["jwks"] });
    },
    async getPod(uid, signal) {
      calls.getPod.push(uid);
      return o.pod ? o.pod(uid, signal) : create(GetPodResponseSchema, { pod: uid === UID_A ? podA() : undefined, status: freshStatus() });
    },
    async waitForPod(uid, _timeoutMs, signal) {
      calls.waitForPod.push(uid);
      return o.wait ? o.wait(uid, signal) : create(WaitForPodResponseSchema, { status: freshStatus() });
    },
    async inspectAttributes(req, signal) {
      calls.inspect.push(req);
      return { $typeName: "athenz.identity.v1.InspectAttributesResponse", violations: o.inspect ? await o.inspect(req, signal) : [] };
    },
  };
}

export { timestampNow };
