#!/usr/bin/env -S node --import tsx
/** csr-inspector: checks requested SANs, CN and key of a pod's certificate request. */
import { runService } from "@k8s-athenz-identity/shared/runner";
import { csrInspectorService } from "./service.js";

await runService(csrInspectorService);
