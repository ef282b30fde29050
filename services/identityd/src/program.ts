/**
 * identityd: the identity provider's services as one program, any set of them in one process
 * (`--target=all`, the default, or a comma list such as `--target=gateway,csr-inspector`), the way
 * Grafana Loki and Mimir run as one binary with many roles. Each target is started by the same
 * `start<Name>` as its own executable, so the split deployment and the all-in-one deployment run
 * the same code. The SIA is not a target: it runs in every application pod, not in the provider.
 *
 * Co-located targets talk in process: the gateway calls a token-verifier, pod-registry or
 * csr-inspector running in the same process through that service's in-process Connect transport
 * (packages/shared/src/in-process.ts: the same routes and interceptors as its port, same contract,
 * no serialization, no network hop, no *_URL setting needed). A dependency that is not a selected target is reached
 * through its *_URL setting, whose default names the split deployment's Service
 * (http://token-verifier:8081, ...). The co-located services keep their own ports (the operator
 * CLI and their probes and metrics use them).
 */

import { admissionService } from "@k8s-athenz-identity/admission/service";
import { csrInspectorService } from "@k8s-athenz-identity/csr-inspector/service";
import { gatewayService } from "@k8s-athenz-identity/gateway/service";
import { podRegistryService } from "@k8s-athenz-identity/pod-registry/service";
import type { Program } from "@k8s-athenz-identity/shared/runner";
import { tokenVerifierService } from "@k8s-athenz-identity/token-verifier/service";

export const identityd: Program = {
  name: "identityd",
  summary: "the Athenz Copper Argos identity provider for Kubernetes (gateway, token-verifier, pod-registry, csr-inspector)",
  targets: [gatewayService, tokenVerifierService, podRegistryService, csrInspectorService, admissionService],
  // The admission webhook needs a serving certificate for the API server: named when wanted
  // (`--target=all,admission`), so `all` keeps starting without one.
  all: ["gateway", "token-verifier", "pod-registry", "csr-inspector"],
};
