/**
 * The declared maximum size of every input a rule can read. The cost estimator (cost.ts) prices an
 * expression with these sizes, and the activation (activation.ts) refuses an input larger than its
 * declared size, so the estimate is an upper bound of the work any evaluation can do.
 *
 * Sources of the bounds: Kubernetes' own limits where they exist (a name is <= 253 characters, a
 * label value <= 63, a label key <= 317 with its prefix: apimachinery validation), the gateway's
 * (64 request attributes, copper-argos.ts), and ours elsewhere (annotation values, attribute values).
 */

/** What the estimator knows about a value: its kind and, for strings and collections, its maximum size. */
export type Size =
  | { t: "scalar" }
  | { t: "string"; max: number }
  | { t: "list"; max: number; elem: Size }
  | { t: "map"; max: number; key: Size; value: Size }
  | { t: "object"; fields: Readonly<Record<string, Size>> };

export const scalar: Size = { t: "scalar" };
export const str = (max: number): Size => ({ t: "string", max });
const list = (max: number, elem: Size): Size => ({ t: "list", max, elem });
const map = (max: number, key: Size, value: Size): Size => ({ t: "map", max, key, value });

/** The bounds, named, so the activation checks exactly what the estimator assumed. */
export const MAX = {
  name: 253,
  namespace: 63,
  uid: 64,
  domain: 253,
  service: 63,
  operation: 16,
  phase: 16,
  ip: 45,
  attributes: 64,
  attributeKey: 128,
  attributeValue: 4096,
  labels: 64,
  labelKey: 317,
  labelValue: 63,
  annotations: 32,
  annotationValue: 4096,
  podIPs: 4,
  audiences: 8,
  audience: 256,
  issuer: 1024,
  subject: 512,
  credentialId: 256,
} as const;

/** The variables rules see, with their declared sizes. */
export const ROOTS: Readonly<Record<string, Size>> = {
  request: {
    t: "object",
    fields: {
      operation: str(MAX.operation),
      domain: str(MAX.domain),
      service: str(MAX.service),
      attributes: map(MAX.attributes, str(MAX.attributeKey), str(MAX.attributeValue)),
    },
  },
  token: {
    t: "object",
    fields: {
      namespace: str(MAX.namespace),
      serviceAccountName: str(MAX.name),
      serviceAccountUid: str(MAX.uid),
      podName: str(MAX.name),
      podUid: str(MAX.uid),
      nodeName: str(MAX.name),
      nodeUid: str(MAX.uid),
      issuer: str(MAX.issuer),
      audiences: list(MAX.audiences, str(MAX.audience)),
      subject: str(MAX.subject),
      credentialId: str(MAX.credentialId),
      issuedAt: scalar,
      expiresAt: scalar,
      notBefore: scalar,
    },
  },
  pod: {
    t: "object",
    fields: {
      name: str(MAX.name),
      namespace: str(MAX.namespace),
      uid: str(MAX.uid),
      serviceAccountName: str(MAX.name),
      labels: map(MAX.labels, str(MAX.labelKey), str(MAX.labelValue)),
      annotations: map(MAX.annotations, str(MAX.labelKey), str(MAX.annotationValue)),
      nodeName: str(MAX.name),
      phase: str(MAX.phase),
      podIPs: list(MAX.podIPs, str(MAX.ip)),
      hostIP: str(MAX.ip),
      creationTimestamp: scalar,
    },
  },
  namespaceObject: {
    t: "object",
    fields: { name: str(MAX.namespace), labels: map(MAX.labels, str(MAX.labelKey), str(MAX.labelValue)) },
  },
  now: scalar,
};
