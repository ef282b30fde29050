#!/usr/bin/env -S node --import tsx
/** admission: the provider's admission webhooks (validation of the identity policy objects). */
import { runService } from "@k8s-athenz-identity/shared/runner";
import { admissionService } from "./service.js";

await runService(admissionService);
