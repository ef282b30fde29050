/**
 * The CLI's credential for the gateway's API: a bearer token minted for the API's audience
 * (default athenz-identity-gateway), which the gateway checks with TokenReview and authorizes with
 * SubjectAccessReview (api-auth.ts).
 *
 * Two ways, in this order:
 * - `--token-file <path>`: a token someone minted already, e.g. `kubectl create token operator -n
 *   athenz-identity --audience athenz-identity-gateway > t`, or a projected token of a pod that runs
 *   the CLI (serviceAccountToken with that audience).
 * - `--service-account <namespace>/<name>`: the CLI calls the TokenRequest API itself
 *   (`POST /api/v1/namespaces/<namespace>/serviceaccounts/<name>/token`, what `kubectl create
 *   token --audience` does) with whatever credentials the kubeconfig has: client certificates and
 *   exec plugins carry no bearer token that could be sent, and a bearer token in a kubeconfig is a
 *   credential for the API server that must never be sent to another server. The kubeconfig's user
 *   needs `create` on `serviceaccounts/token` for that service account; the service account needs
 *   the ClusterRole `athenz-identity-operator` (k8s/rbac.yaml). The token lives 10 minutes (the API
 *   server's minimum) and is never written anywhere.
 */
import { readFileSync } from "node:fs";
import { loadKubeConfig } from "@k8s-athenz-identity/shared/kube";
import { CoreV1Api } from "@kubernetes/client-node";

export const TOKEN_LIFETIME_SECONDS = 600;

export class TokenError extends Error {
  override readonly name = "TokenError";
}

export interface ApiTokenOptions {
  tokenFile?: string | undefined;
  /** `<namespace>/<name>` */
  serviceAccount?: string | undefined;
  audience: string;
  /** The kubeconfig file; default client-node's order (KUBECONFIG, ~/.kube/config, in-cluster). */
  kubeconfig?: string | undefined;
}

const K8S_NAME = /^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/;

/** The token to send, or undefined when no way to get one was given (the call goes out without). Throws {@link TokenError}. */
export async function apiToken(o: ApiTokenOptions): Promise<string | undefined> {
  if (o.tokenFile) {
    let text: string;
    try {
      text = readFileSync(o.tokenFile, "utf8").trim();
    } catch (err) {
      throw new TokenError(`cannot read the token file ${o.tokenFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    if (!/^\S+$/.test(text)) throw new TokenError(`the token file ${o.tokenFile} holds no token`);
    return text;
  }
  if (!o.serviceAccount) return undefined;
  const [namespace, name, ...rest] = o.serviceAccount.split("/");
  if (!namespace || !name || rest.length > 0 || !K8S_NAME.test(namespace) || !K8S_NAME.test(name))
    throw new TokenError(`--service-account must be <namespace>/<name>, got ${JSON.stringify(o.serviceAccount)}`);
  let api: CoreV1Api;
  try {
    api = loadKubeConfig(o.kubeconfig).makeApiClient(CoreV1Api);
  } catch (err) {
    throw new TokenError(`cannot load the kubeconfig: ${(err as Error).message}`);
  }
  try {
    const res = await api.createNamespacedServiceAccountToken({
      namespace,
      name,
      body: { spec: { audiences: [o.audience], expirationSeconds: TOKEN_LIFETIME_SECONDS } },
    });
    const token = res.status?.token;
    if (!token) throw new TokenError("the TokenRequest answer holds no token");
    return token;
  } catch (err) {
    if (err instanceof TokenError) throw err;
    const code = (err as { code?: unknown }).code;
    if (code === 401) throw new TokenError("the API server did not accept the kubeconfig's credentials (401)");
    if (code === 403)
      throw new TokenError(
        `the kubeconfig's user may not create a token for serviceaccount ${namespace}/${name} (RBAC: create on serviceaccounts/token)`,
      );
    if (code === 404) throw new TokenError(`no serviceaccount ${namespace}/${name}`);
    throw new TokenError(`TokenRequest for ${namespace}/${name} failed: ${(err as Error).message.slice(0, 200)}`);
  }
}
