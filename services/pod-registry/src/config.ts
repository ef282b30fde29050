import { kubeconfigSetting } from "@k8s-athenz-identity/shared/kube";
/** pod-registry settings: one typed, validated object from flags and environment. */

import { hostname } from "node:os";
import { bool, type ConfigOf, duration, int, list, optionalStr, serverSettings, str } from "@k8s-athenz-identity/shared";

const K8S_NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

export const podRegistrySpec = {
  ...serverSettings({ port: 8082, adminPort: 9082 }),
  kubeconfig: kubeconfigSetting(),
  namespaces: list({
    env: "NAMESPACE",
    flag: "namespace",
    description: "namespaces to watch, comma-separated; empty: the whole cluster",
    default: [],
    item: K8S_NAME,
  }),
  labelSelector: optionalStr({ env: "LABEL_SELECTOR", flag: "label-selector", description: "only pods matching this label selector" }),
  natsUrl: str({
    env: "NATS_URL",
    flag: "nats-url",
    description: "NATS server URL(s), comma-separated; empty: standalone (each replica watches the API server)",
    default: "",
  }),
  natsBucket: str({
    env: "NATS_BUCKET",
    flag: "nats-bucket",
    description: "JetStream key-value bucket for pods",
    default: "pod-registry",
    pattern: /^[A-Za-z0-9_-]{1,64}$/,
  }),
  natsBucketReplicas: int({
    env: "NATS_BUCKET_REPLICAS",
    flag: "nats-bucket-replicas",
    description:
      "copies of the bucket on the JetStream cluster: 1 for a single server, 3 (or 5) for a cluster; raised on an existing bucket, never lowered",
    default: 1,
    min: 1,
    max: 5,
  }),
  tombstoneTtl: duration({
    env: "TOMBSTONE_TTL",
    flag: "tombstone-ttl",
    description: "how long a deleted pod's tombstone stays in the bucket (a NATS per-message TTL) and in memory, rejecting late updates of it",
    default: 10 * 60_000,
    minMs: 1000,
    maxMs: 24 * 3600_000,
  }),
  leaseName: str({
    env: "LEASE_NAME",
    flag: "lease-name",
    description: "coordination.k8s.io Lease electing the watcher",
    default: "pod-registry",
    pattern: K8S_NAME,
  }),
  leaseNamespace: str({
    env: "LEASE_NAMESPACE",
    flag: "lease-namespace",
    description: "namespace of the Lease",
    default: "default",
    pattern: K8S_NAME,
  }),
  leaseDuration: duration({
    env: "LEASE_DURATION",
    flag: "lease-duration",
    description: "Lease duration (a crashed leader is replaced within it)",
    default: 15_000,
    minMs: 1000,
    maxMs: 300_000,
  }),
  podName: str({ env: "POD_NAME", flag: "pod-name", description: "this replica's name, the Lease holder identity", default: hostname() }),
  staleAfter: duration({
    env: "STALE_AFTER",
    flag: "stale-after",
    description:
      "the feed counts as broken when its last proof of liveness (an event, bookmark, list or probe of the API server, relayed by the leader's heartbeats) is older than this; the watch timeout is half of it and probes run every third of it",
    default: 30_000,
    minMs: 500,
  }),
  waitDefault: duration({
    env: "WAIT_DEFAULT",
    flag: "wait-default",
    description: "WaitForPod's wait when the caller gives none",
    default: 2000,
    minMs: 0,
    maxMs: 60_000,
  }),
  waitMax: duration({ env: "WAIT_MAX", flag: "wait-max", description: "cap on WaitForPod's wait", default: 10_000, minMs: 0, maxMs: 60_000 }),
  labelAllowList: list({ env: "LABEL_ALLOWLIST", flag: "label-allowlist", description: "label keys kept in the cache", default: [] }),
  annotationAllowList: list({
    env: "ANNOTATION_ALLOWLIST",
    flag: "annotation-allowlist",
    description: "annotation keys kept in the cache",
    default: [],
  }),
  apiFallback: bool({
    env: "API_FALLBACK",
    flag: "api-fallback",
    description:
      "after a fruitless wait, ask the API server once for the pod the caller's verified token names (a lagging feed is not evidence that a pod does not exist)",
    default: true,
  }),
  maxWatchBacklog: int({
    env: "MAX_WATCH_BACKLOG",
    flag: "max-watch-backlog",
    description: "changes a WatchPods stream may queue before it is ended",
    default: 10_000,
    min: 100,
  }),
};

export type PodRegistryConfig = ConfigOf<typeof podRegistrySpec>;
