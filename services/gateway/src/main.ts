#!/usr/bin/env -S node --import tsx
/** gateway: the Athenz Copper Argos provider endpoint ZTS calls, and the IdentityProviderService API. */
import { runMain } from "@k8s-athenz-identity/shared/main";
import { gatewaySpec } from "./config.js";
import { startGateway } from "./server.js";

await runMain({
  name: "gateway",
  summary: "Athenz Copper Argos identity provider endpoint for Kubernetes pods (ZTS calls it over mutual TLS)",
  spec: gatewaySpec,
  start: (config, logger) => startGateway(config, logger),
});
