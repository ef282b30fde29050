#!/usr/bin/env -S node --import tsx
/** pod-registry: the cluster's pods in memory, for the gateway's checks. */
import { runService } from "@k8s-athenz-identity/shared/runner";
import { podRegistryService } from "./service.js";

await runService(podRegistryService);
