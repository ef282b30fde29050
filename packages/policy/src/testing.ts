/**
 * Builders for tests and benches: policy objects as an operator writes them, and a decision's
 * inputs as the gateway has them. Not used by the product.
 */
import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type Pod, PodPhase, PodSchema, type VerifiedToken, VerifiedTokenSchema } from "@k8s-athenz-identity/api/common";
import type { AdmissionPolicyInput, PolicyInput } from "./activation.js";
import { API_VERSION, CLUSTER_KIND, NAMESPACED_KIND } from "./model.js";
import type { PolicyDefaults } from "./snapshot.js";

let rv = 100;

/** A ClusterIdentityPolicy object as the API server returns it. */
export function clusterPolicy(name: string, spec: Record<string, unknown>, meta: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    apiVersion: API_VERSION,
    kind: CLUSTER_KIND,
    metadata: { name, uid: `uid-${name}`, resourceVersion: String(++rv), generation: 1, ...meta },
    spec,
  };
}

/** An IdentityPolicy object as the API server returns it. */
export function namespacedPolicy(
  namespace: string,
  name: string,
  spec: Record<string, unknown>,
  meta: Record<string, unknown> = {},
): Record<string, unknown> {
  return {
    apiVersion: API_VERSION,
    kind: NAMESPACED_KIND,
    metadata: { name, namespace, uid: `uid-${namespace}-${name}`, resourceVersion: String(++rv), generation: 1, ...meta },
    spec,
  };
}

export const DEFAULTS: PolicyDefaults = {
  expiryMinutes: 1440,
  refresh: true,
  clientIpRule: "pod-or-node",
  proxyCidrs: [],
  extraDnsNames: {},
};

export interface InputOptions {
  namespace?: string;
  pod?: string;
  serviceAccount?: string;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  namespaceLabels?: Record<string, string> | undefined;
  operation?: "register" | "refresh";
  domain?: string;
  service?: string;
  attributes?: Record<string, string>;
  /** Token issued this many seconds before `now`. */
  tokenAgeS?: number;
  now?: Date;
}

/** A decision's inputs for a pod `namespace/pod` running as `serviceAccount`. */
export function policyInput(o: InputOptions = {}): PolicyInput {
  const namespace = o.namespace ?? "team-a";
  const name = o.pod ?? "web-1";
  const sa = o.serviceAccount ?? "api";
  const now = o.now ?? new Date("2026-11-30T12:00:00Z");
  const uid = "0b0e2c9e-7c4e-4e8e-9a57-5c1d7d3f0a11";
  const token: VerifiedToken = create(VerifiedTokenSchema, {
    namespace,
    serviceAccountName: sa,
    serviceAccountUid: "5f0c2f0e-0000-4000-8000-000000000001",
    podName: name,
    podUid: uid,
    nodeName: "node-1",
    issuer: "https://kubernetes.default.svc",
    audiences: ["athenz-identityd"],
    issuedAt: timestampFromMs(now.getTime() - (o.tokenAgeS ?? 60) * 1000),
    expiresAt: timestampFromMs(now.getTime() + 3_000_000),
    subject: `system:serviceaccount:${namespace}:${sa}`,
  });
  const pod: Pod = create(PodSchema, {
    uid,
    namespace,
    name,
    serviceAccountName: sa,
    podIps: ["10.1.2.3"],
    hostIp: "192.168.0.10",
    nodeName: "node-1",
    phase: PodPhase.RUNNING,
    creationTimestamp: timestampFromMs(now.getTime() - 3_600_000),
    labels: o.labels ?? { app: "web" },
    annotations: o.annotations ?? {},
  });
  return {
    operation: o.operation ?? "register",
    domain: o.domain ?? namespace,
    service: o.service ?? sa,
    attributes: o.attributes ?? { instanceId: uid, clientIP: "10.1.2.3", sanDNS: `${sa}.${namespace}.cluster1.example.com` },
    token,
    pod,
    namespaceLabels: "namespaceLabels" in o ? o.namespaceLabels : { "kubernetes.io/metadata.name": namespace },
    now,
  };
}

/** What admission knows of the same pod as {@link policyInput} (the pod's name unless `generateName`). */
export function admissionInput(o: InputOptions & { generateName?: boolean } = {}): AdmissionPolicyInput {
  const full = policyInput(o);
  return {
    namespace: full.pod.namespace,
    namespaceLabels: full.namespaceLabels,
    podName: o.generateName ? undefined : full.pod.name,
    serviceAccountName: full.pod.serviceAccountName,
    labels: full.pod.labels,
    annotations: full.pod.annotations,
    domain: full.domain,
    service: full.service,
    now: full.now,
  };
}
