#!/usr/bin/env -S node --import tsx
/** identityd: the identity provider's services in one process (see program.ts). */
import { runProgram } from "@k8s-athenz-identity/shared/runner";
import { identityd } from "./program.js";

await runProgram(identityd);
