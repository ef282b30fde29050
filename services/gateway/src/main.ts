#!/usr/bin/env -S node --import tsx
/** gateway: the Athenz Copper Argos provider endpoint ZTS calls, and the IdentityProviderService API. */
import { runService } from "@k8s-athenz-identity/shared/runner";
import { gatewayService } from "./service.js";

await runService(gatewayService);
