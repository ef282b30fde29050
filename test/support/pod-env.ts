/**
 * The environment a kubelet gives one container of a stored pod: `env` values, `valueFrom.fieldRef`
 * from the downward API (the fields the kubelet supports for env: k8s.io/kubernetes
 * pkg/apis/core/validation validEnvDownwardAPIFieldPathExpressions, those a pod here uses), and
 * `envFrom` ConfigMaps. Used to run the SIA with exactly the environment an injected pod spec says.
 */

export interface PodLike {
  metadata?: { namespace?: string; name?: string; uid?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: { serviceAccountName?: string; nodeName?: string };
  status?: { podIP?: string; podIPs?: Array<{ ip: string }>; hostIP?: string };
}

export interface ContainerEnvLike {
  name: string;
  env?: Array<{ name: string; value?: string; valueFrom?: { fieldRef?: { fieldPath: string } } }>;
  envFrom?: Array<{ configMapRef?: { name: string; optional?: boolean }; prefix?: string }>;
}

function field(pod: PodLike, path: string): string {
  switch (path) {
    case "metadata.namespace":
      return pod.metadata?.namespace ?? "";
    case "metadata.name":
      return pod.metadata?.name ?? "";
    case "metadata.uid":
      return pod.metadata?.uid ?? "";
    case "spec.serviceAccountName":
      return pod.spec?.serviceAccountName ?? "";
    case "spec.nodeName":
      return pod.spec?.nodeName ?? "";
    case "status.podIP":
      return pod.status?.podIP ?? "";
    case "status.podIPs":
      return (pod.status?.podIPs ?? []).map((p) => p.ip).join(",");
    case "status.hostIP":
      return pod.status?.hostIP ?? "";
  }
  const label = /^metadata\.(labels|annotations)\['([^']+)'\]$/.exec(path);
  if (label) return pod.metadata?.[label[1] as "labels" | "annotations"]?.[label[2]!] ?? "";
  throw new Error(`downward API field ${path} is not supported here`);
}

/** The container's environment; a missing non-optional ConfigMap is an error, as for the kubelet. */
export function containerEnv(
  pod: PodLike,
  c: ContainerEnvLike,
  configMaps: Readonly<Record<string, Readonly<Record<string, string>>>>,
): Record<string, string> {
  const env: Record<string, string> = {};
  for (const from of c.envFrom ?? []) {
    const name = from.configMapRef?.name;
    if (name === undefined) throw new Error(`${c.name}: only configMapRef envFrom is supported here`);
    const data = configMaps[name];
    if (!data) {
      if (from.configMapRef?.optional) continue;
      throw new Error(`${c.name}: ConfigMap ${name} not found (the kubelet reports CreateContainerConfigError)`);
    }
    for (const [k, v] of Object.entries(data)) env[`${from.prefix ?? ""}${k}`] = v;
  }
  for (const e of c.env ?? []) {
    if (e.value !== undefined) env[e.name] = e.value;
    else if (e.valueFrom?.fieldRef) env[e.name] = field(pod, e.valueFrom.fieldRef.fieldPath);
    else if (e.valueFrom) throw new Error(`${c.name}: env ${e.name}: only fieldRef is supported here`);
    else env[e.name] = "";
  }
  return env;
}
