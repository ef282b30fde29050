#!/usr/bin/env -S node --import tsx
/** token-verifier: verifies bound Kubernetes service-account tokens for the identity provider. */
import { runService } from "@k8s-athenz-identity/shared/runner";
import { tokenVerifierService } from "./service.js";

await runService(tokenVerifierService);
