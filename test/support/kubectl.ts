/** kubectl of the cluster tier (test/cluster/setup.sh builds it), for tests and the local stack. */
import { spawn } from "node:child_process";
import { clusterBinaries } from "./kube-cluster.js";

export interface KubectlRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** kubectl with a kubeconfig and optional stdin; never throws on a failing command (the exit code is part of the answer). */
export function kubectl(kubeconfig: string, args: string[], input?: string): Promise<KubectlRun> {
  return new Promise((resolve, reject) => {
    const child = spawn(clusterBinaries().kubectl, ["--kubeconfig", kubeconfig, ...args], { stdio: ["pipe", "pipe", "pipe"] });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (c: string) => (stdout += c));
    child.stderr.setEncoding("utf8").on("data", (c: string) => (stderr += c));
    child.once("error", reject);
    child.once("close", (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end(input ?? "");
  });
}

/** kubectl that must succeed: resolves with stdout and stderr, rejects with kubectl's stderr. */
export async function kubectlOk(kubeconfig: string, args: string[], input?: string): Promise<KubectlRun> {
  const r = await kubectl(kubeconfig, args, input);
  if (r.code !== 0) throw new Error(`kubectl ${args.join(" ")} failed (${r.code}): ${r.stderr.trim()}`);
  return r;
}
