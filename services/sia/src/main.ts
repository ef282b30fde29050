#!/usr/bin/env -S node --import tsx
/** sia: the Athenz service identity agent of an application pod (see service.ts for the modes). */
import { runService } from "@k8s-athenz-identity/shared/runner";
import { siaService } from "./service.js";

await runService(siaService);
