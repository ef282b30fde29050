/**
 * athenz-identity: a small operator CLI on the buf-generated Connect clients (its executable is cli.ts).
 *   explain <file.json> [--refresh]   why would this InstanceConfirmation be allowed or denied?
 *   registry-status                   is the pod registry synced and live?
 *   pod <uid> | pod <namespace>/<name>  what does the registry know about a pod?
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { toJson } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { CheckOutcome, ExplainInstanceResponseSchema, IdentityProviderService, Operation, Outcome } from "@k8s-athenz-identity/api/identity_provider";
import { FindPodResponseSchema, GetPodResponseSchema, GetStatusResponseSchema, PodRegistryService } from "@k8s-athenz-identity/api/pod_registry";
import { API_GROUP, API_RESOURCE, DEFAULT_API_AUDIENCE } from "./api-auth.js";
import { apiToken, TOKEN_LIFETIME_SECONDS, TokenError } from "./api-token.js";
import { runAthenzSetup } from "./athenz-setup.js";
import { parseConfirmation } from "./copper-argos.js";

export const USAGE = `athenz-identity: operator CLI for the k8s Athenz identity provider

Usage:
  athenz-identity explain <file.json> [--refresh]   run every check on an InstanceConfirmation (JSON as ZTS sends it)
  athenz-identity registry-status                   show the pod registry's freshness
  athenz-identity pod <uid>                         look a pod up by UID
  athenz-identity pod <namespace>/<name>            look a pod up by namespace and name
  athenz-identity athenz-setup [...]                print the zms-cli commands that register this provider (--help)

Flags:
  --gateway-url <url>        gateway Connect API (env GATEWAY_API_URL, default http://127.0.0.1:8084)
  --service-account <ns>/<name>  explain as this ServiceAccount: the CLI asks the API server for a token
                             (TokenRequest, as kubectl create token --audience) with your kubeconfig's
                             credentials (env GATEWAY_API_SERVICE_ACCOUNT), e.g. athenz-identity/operator
  --token-file <path>        or send the token in this file (env GATEWAY_API_TOKEN_FILE)
  --audience <aud>           audience of that token (env GATEWAY_API_AUDIENCE, default ${DEFAULT_API_AUDIENCE})
  --kubeconfig <path>        kubeconfig for the TokenRequest (env KUBECONFIG, then ~/.kube/config, in-cluster)
  --pod-registry-url <url>   pod-registry Connect API (env POD_REGISTRY_URL, default http://127.0.0.1:8082)
  --timeout <ms>             per-call deadline (default 10000)
  --json                     print the raw answer as JSON
  -h, --help                 this help

Exit status: 0 allowed/found, 1 denied/not found/retry, 2 usage error, 3 call failed.

The gateway's API accepts only a token minted for its audience, of a user allowed the verb explain on
${API_RESOURCE}.${API_GROUP} (k8s/rbac.yaml: ClusterRole athenz-identity-operator, bound to the
ServiceAccount athenz-identity/operator). A ${TOKEN_LIFETIME_SECONDS / 60}-minute token is minted per run and never stored.
`;

class UsageError extends Error {}

interface Parsed {
  command: string;
  args: string[];
  flags: Map<string, string>;
}

/** Flags by `node:util` `parseArgs`; positionals are the command and its arguments. */
function parseCliArgs(argv: readonly string[]): Parsed {
  let parsed: { values: Record<string, string | boolean | undefined>; positionals: string[] };
  try {
    parsed = parseArgs({
      args: [...argv],
      options: {
        "gateway-url": { type: "string" },
        "pod-registry-url": { type: "string" },
        "service-account": { type: "string" },
        "token-file": { type: "string" },
        audience: { type: "string" },
        kubeconfig: { type: "string" },
        timeout: { type: "string" },
        refresh: { type: "boolean" },
        json: { type: "boolean" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: true,
    });
  } catch (e) {
    const flag = /'(-{1,2}[^' ]+)/.exec((e as Error).message)?.[1] ?? "";
    const code = (e as { code?: string }).code;
    if (code === "ERR_PARSE_ARGS_UNKNOWN_OPTION") throw new UsageError(`unknown flag ${flag}`);
    if (code === "ERR_PARSE_ARGS_INVALID_OPTION_VALUE") throw new UsageError(`${flag} needs a value`);
    throw new UsageError((e as Error).message);
  }
  const flags = new Map<string, string>();
  for (const [k, v] of Object.entries(parsed.values)) {
    if (v === undefined || v === false) continue;
    if (v === "") throw new UsageError(`--${k} needs a value`);
    flags.set(k, String(v));
  }
  return { command: parsed.positionals[0] ?? "", args: parsed.positionals.slice(1), flags };
}

export interface CliIo {
  out: (s: string) => void;
  err: (s: string) => void;
  env: Record<string, string | undefined>;
}

/** Runs the CLI and returns the exit status. */
export async function runCli(argv: readonly string[], io: CliIo): Promise<number> {
  // Its own flags (the gateway's settings, no service URL): see athenz-setup.ts.
  if (argv[0] === "athenz-setup") return runAthenzSetup(argv.slice(1), io);
  let p: Parsed;
  try {
    p = parseCliArgs(argv);
  } catch (e) {
    io.err(`athenz-identity: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (p.flags.has("help") || p.command === "" || p.command === "help") {
    io.out(USAGE);
    return p.command === "" && !p.flags.has("help") ? 2 : 0;
  }
  const timeout = Number(p.flags.get("timeout") ?? "10000");
  if (!Number.isInteger(timeout) || timeout <= 0) {
    io.err("athenz-identity: --timeout must be a positive number of milliseconds\n");
    return 2;
  }
  const transport = (url: string, interceptors: Interceptor[] = []) => {
    if (!/^https?:\/\/\S+$/.test(url)) throw new UsageError(`not a URL: ${url}`);
    return createConnectTransport({ baseUrl: url, httpVersion: "2", defaultTimeoutMs: timeout, interceptors });
  };
  const tokenOptions = {
    tokenFile: p.flags.get("token-file") ?? io.env.GATEWAY_API_TOKEN_FILE,
    serviceAccount: p.flags.get("service-account") ?? io.env.GATEWAY_API_SERVICE_ACCOUNT,
    audience: p.flags.get("audience") ?? io.env.GATEWAY_API_AUDIENCE ?? DEFAULT_API_AUDIENCE,
    kubeconfig: p.flags.get("kubeconfig") ?? io.env.KUBECONFIG,
  };
  /** The gateway transport, with the bearer token when the flags say how to get one. */
  const gatewayTransport = async (url: string) => {
    const token = await apiToken(tokenOptions);
    const bearer: Interceptor = (next) => (req) => {
      req.header.set("authorization", `Bearer ${token}`);
      return next(req);
    };
    return { transport: transport(url, token ? [bearer] : []), authenticated: token !== undefined };
  };
  const gatewayUrl = p.flags.get("gateway-url") ?? io.env.GATEWAY_API_URL ?? "http://127.0.0.1:8084";
  const registryUrl = p.flags.get("pod-registry-url") ?? io.env.POD_REGISTRY_URL ?? "http://127.0.0.1:8082";
  const asJson = p.flags.has("json");

  try {
    switch (p.command) {
      case "explain": {
        if (p.args.length !== 1) throw new UsageError("explain needs exactly one file: explain <file.json> [--refresh]");
        let body: Buffer;
        try {
          body = readFileSync(p.args[0]!);
        } catch (e) {
          throw new UsageError(`cannot read ${p.args[0]}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
        }
        let confirmation: ReturnType<typeof parseConfirmation>;
        try {
          confirmation = parseConfirmation(body);
        } catch (e) {
          throw new UsageError(`${p.args[0]} is not an InstanceConfirmation: ${(e as Error).message}`);
        }
        const gw = await gatewayTransport(gatewayUrl);
        const client = createClient(IdentityProviderService, gw.transport);
        let res: Awaited<ReturnType<typeof client.explainInstance>>;
        try {
          res = await client.explainInstance({ confirmation, operation: p.flags.has("refresh") ? Operation.REFRESH : Operation.REGISTER });
        } catch (e) {
          const ce = ConnectError.from(e);
          if (ce.code === Code.Unauthenticated && !gw.authenticated)
            throw new ConnectError(`${ce.rawMessage}; pass --service-account <namespace>/<name> or --token-file <path>`, ce.code);
          if (ce.code === Code.PermissionDenied)
            throw new ConnectError(`${ce.rawMessage} (grant the ClusterRole athenz-identity-operator, k8s/rbac.yaml)`, ce.code);
          throw e;
        }
        if (asJson) io.out(`${JSON.stringify(toJson(ExplainInstanceResponseSchema, res), null, 2)}\n`);
        else {
          const outcome = res.decision?.outcome ?? Outcome.UNSPECIFIED;
          io.out(`decision: ${Outcome[outcome]}\n`);
          for (const c of res.checks) {
            const ms = c.latency ? Number(c.latency.seconds) * 1000 + c.latency.nanos / 1e6 : 0;
            io.out(`  ${CheckOutcome[c.outcome].padEnd(7)} ${c.name.padEnd(9)} ${ms ? `${ms.toFixed(1)}ms ` : ""}${c.detail}\n`);
            for (const v of c.violations) io.out(`            ${v.code}: ${v.message}${v.field ? ` (${v.field})` : ""}\n`);
          }
          // The identity policy objects that applied (with their versions) and each rule's outcome.
          for (const r of res.policy?.rules ?? []) {
            const ref = r.policy;
            const name = `${ref?.kind} ${ref?.namespace ? `${ref.namespace}/` : ""}${ref?.name}@${ref?.resourceVersion}`;
            io.out(`  rule    ${CheckOutcome[r.outcome].padEnd(7)} ${name} ${r.rule}${r.message ? `: ${r.message}` : ""}\n`);
          }
          if (res.decision?.confirmation) io.out(`  attributes: ${JSON.stringify(res.decision.confirmation.attributes)}\n`);
        }
        return res.decision?.outcome === Outcome.ALLOW ? 0 : 1;
      }
      case "registry-status": {
        if (p.args.length !== 0) throw new UsageError("registry-status takes no arguments");
        const res = await createClient(PodRegistryService, transport(registryUrl)).getStatus({});
        io.out(`${JSON.stringify(toJson(GetStatusResponseSchema, res), null, 2)}\n`);
        return res.status?.fresh ? 0 : 1;
      }
      case "pod": {
        if (p.args.length !== 1) throw new UsageError("pod needs one argument: pod <uid> or pod <namespace>/<name>");
        const arg = p.args[0]!;
        const client = createClient(PodRegistryService, transport(registryUrl));
        const slash = arg.indexOf("/");
        if (slash > 0) {
          const res = await client.findPod({ namespace: arg.slice(0, slash), name: arg.slice(slash + 1) });
          io.out(`${JSON.stringify(toJson(FindPodResponseSchema, res), null, 2)}\n`);
          return res.pod ? 0 : 1;
        }
        const res = await client.getPod({ uid: arg });
        io.out(`${JSON.stringify(toJson(GetPodResponseSchema, res), null, 2)}\n`);
        return res.pod ? 0 : 1;
      }
      default:
        throw new UsageError(`unknown command ${JSON.stringify(p.command)}`);
    }
  } catch (e) {
    if (e instanceof UsageError) {
      io.err(`athenz-identity: ${e.message}\n\n${USAGE}`);
      return 2;
    }
    if (e instanceof TokenError) {
      io.err(`athenz-identity: no token for the gateway's API: ${e.message}\n`);
      return 3;
    }
    const ce = ConnectError.from(e);
    io.err(`athenz-identity: call failed: ${ce.message}\n`);
    return 3;
  }
}
