/**
 * The in-process baseline of the gateway benches, as its own process: the real gateway (startGateway,
 * its ZTS port on mutual TLS) with its dependencies as plain function calls into the same verifier,
 * registry and inspector code (no RPC, no serialization). The shapes are judged against it.
 *
 * Env: the gateway's own settings (TLS_*, PORT, ADMIN_PORT, PROVIDER_SERVICE, ...), plus
 * TOKEN_ISSUER and JWKS_FILE (the token verifier, jwks mode) and KUBECONFIG (the pod registry).
 */
import { create } from "@bufbuild/protobuf";
import { InspectAttributesResponseSchema } from "@k8s-athenz-identity/api/csr_inspector";
import { GetPodResponseSchema, WaitForPodResponseSchema } from "@k8s-athenz-identity/api/pod_registry";
import { createLogDestination, createLogger, loadConfig } from "@k8s-athenz-identity/shared";
import { inspectAttributes } from "../services/csr-inspector/src/inspect-attributes.js";
import { gatewaySpec } from "../services/gateway/src/config.js";
import type { Dependencies } from "../services/gateway/src/dependencies.js";
import { startGateway } from "../services/gateway/src/service.js";
import { podRegistrySpec } from "../services/pod-registry/src/config.js";
import { toProtoStatus } from "../services/pod-registry/src/connect.js";
import { toProtoPod } from "../services/pod-registry/src/pod.js";
import { startPodRegistry } from "../services/pod-registry/src/service.js";
import { tokenVerifierSpec } from "../services/token-verifier/src/config.js";
import { toResponse } from "../services/token-verifier/src/connect.js";
import { startTokenVerifier } from "../services/token-verifier/src/service.js";

const quiet = createLogger({ service: "bench", level: "silent" });
const local = { HOST: "127.0.0.1", PORT: "0", ADMIN_PORT: "0", SHUTDOWN_TIMEOUT: "1s" };
const tv = await startTokenVerifier(
  loadConfig(tokenVerifierSpec, {
    env: { ...local, VERIFIER_MODE: "jwks", TOKEN_ISSUER: process.env.TOKEN_ISSUER ?? "", JWKS_FILE: process.env.JWKS_FILE ?? "" },
  }),
  { logger: quiet },
);
await tv.verifier.whenReady();
const pr = await startPodRegistry(loadConfig(podRegistrySpec, { env: { ...local, KUBECONFIG: process.env.KUBECONFIG ?? "" } }), { logger: quiet });
await pr.registry.synced;
const reg = pr.registry;
const dependencies: Dependencies = {
  verifyToken: async (token) => toResponse(await tv.verifier.verify(token)),
  getPod: async (uid) => {
    const p = reg.getByUid(uid);
    return create(GetPodResponseSchema, { pod: p ? toProtoPod(p) : undefined, status: toProtoStatus(reg.status()) });
  },
  waitForPod: async (uid, timeoutMs, signal) => {
    const r = await reg.waitForPod(uid, { timeoutMs, signal });
    return create(WaitForPodResponseSchema, { pod: r.pod ? toProtoPod(r.pod) : undefined, status: toProtoStatus(reg.status()) });
  },
  inspectAttributes: async (req) =>
    create(InspectAttributesResponseSchema, { violations: inspectAttributes(req.expected!, req.attributes, req.policy!) }),
};
// The same log destination as the product's processes (the runner's), so the audit log costs the same.
const config = loadConfig(gatewaySpec, { env: process.env });
const logger = createLogger({ service: "gateway", level: config.logLevel, destination: createLogDestination() });
const gw = await startGateway(config, { dependencies, logger });
process.on("SIGTERM", () => {
  void Promise.all([gw.close(), pr.close(), tv.close()]).then(() => process.exit(0));
});
