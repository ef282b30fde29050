#!/usr/bin/env -S node --import tsx
import { runMain } from "@k8s-athenz-identity/shared";
import { podRegistrySpec } from "./config.js";
import { startPodRegistryServer } from "./server.js";

await runMain({
  name: "pod-registry",
  summary: "in-memory cache of the cluster's pods (one API watch, replicated through NATS)",
  spec: podRegistrySpec,
  start: (config, logger) => startPodRegistryServer(config, logger),
});
