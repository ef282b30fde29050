/**
 * Native sidecar or the classic pair (SIA_SIDECAR). A native sidecar needs the SidecarContainers
 * feature in the API server AND in the kubelet of whatever node the pod lands on (beta and on by
 * default from 1.29; a 1.28 kubelet runs an init container with `restartPolicy: Always` as an
 * ordinary init container, which never ends: the pod would never start). Admission cannot know the
 * node, so `auto` reads the API server's version and uses the version skew policy (kubelets may be
 * up to three minor versions older than the API server, since 1.28): from 1.32 on every kubelet is
 * >= 1.29, so native is safe; below, classic, which works everywhere. An operator who knows the nodes
 * are >= 1.29 on a 1.29-1.31 control plane sets `native`.
 *
 * Sources: kubernetes/website "Sidecar Containers" and "Version Skew Policy"; KEP-753.
 */
import type { Logger } from "@k8s-athenz-identity/shared";
import { createBackoff, delay } from "@k8s-athenz-identity/shared/backoff";
import type { SidecarMode } from "./sia-pod.js";

/** The first API server minor version (1.x) whose kubelets are all >= 1.29 under the skew policy. */
export const NATIVE_FROM_MINOR = 32;

/** An API server's `/version` (`major`, `minor`; providers append `+` to the minor, e.g. "31+"). */
export interface ServerVersion {
  major: string;
  minor: string;
  gitVersion?: string;
}

/** The mode `auto` picks for an API server version, or undefined when the version cannot be read. */
export function sidecarModeFor(v: ServerVersion): SidecarMode | undefined {
  const major = /^(\d+)/.exec(v.major)?.[1];
  const minor = /^(\d+)/.exec(v.minor)?.[1];
  if (major === undefined || minor === undefined) return undefined;
  if (Number(major) > 1) return "native";
  return Number(minor) >= NATIVE_FROM_MINOR ? "native" : "classic";
}

/** The mode in force and where it came from (for /readyz and the logs). */
export interface SidecarModeState {
  mode(): SidecarMode;
  describe(): { mode: SidecarMode; source: string };
  close(): void;
}

export interface SidecarModeOptions {
  setting: "auto" | SidecarMode;
  /** GET /version of the API server (auto only). */
  serverVersion: () => Promise<ServerVersion>;
  logger: Logger;
  /** How long start-up waits for the first answer before going on with classic (default 5 s). */
  firstAnswerMs?: number;
  backoff?: { initialMs: number; maxMs: number };
}

/**
 * Resolves the mode. `native`/`classic`: as set. `auto`: waits up to `firstAnswerMs` for the API
 * server's version; without an answer, classic (works on every cluster) while it keeps asking with
 * the shared backoff. Never fails start-up: the webhook must answer whatever the API server says.
 */
export async function resolveSidecarMode(o: SidecarModeOptions): Promise<SidecarModeState> {
  if (o.setting !== "auto") {
    const fixed = o.setting;
    return { mode: () => fixed, describe: () => ({ mode: fixed, source: `SIA_SIDECAR=${fixed}` }), close: () => {} };
  }
  let mode: SidecarMode = "classic";
  let source = "SIA_SIDECAR=auto: API server version not known yet (classic works on every version)";
  const stop = new AbortController();
  const attempt = async (): Promise<boolean> => {
    try {
      const v = await o.serverVersion();
      const m = sidecarModeFor(v);
      if (!m) throw new Error(`unreadable version ${JSON.stringify(v).slice(0, 120)}`);
      mode = m;
      source = `SIA_SIDECAR=auto: API server ${v.gitVersion ?? `${v.major}.${v.minor}`} (native from 1.${NATIVE_FROM_MINOR})`;
      o.logger.info({ sidecar: mode, source }, "SIA sidecar mode chosen");
      return true;
    } catch (err) {
      o.logger.warn(
        { err: (err as Error).message, sidecar: mode },
        "cannot read the API server's version; injecting the classic SIA pair until it can",
      );
      return false;
    }
  };
  const first = attempt();
  const timer = new Promise<"timeout">((resolve) => setTimeout(resolve, o.firstAnswerMs ?? 5000, "timeout").unref());
  const answered = await Promise.race([first, timer]);
  if (answered !== true) {
    void (async () => {
      if (answered === "timeout" && (await first)) return;
      const backoff = createBackoff(o.backoff ?? { initialMs: 1000, maxMs: 60_000 });
      for (;;) {
        await delay(backoff.next(), stop.signal);
        if (stop.signal.aborted || (await attempt())) return;
      }
    })();
  }
  return { mode: () => mode, describe: () => ({ mode, source }), close: () => stop.abort() };
}
