import assert from "node:assert/strict";
import { test } from "node:test";
import { ConfigError, loadConfig } from "@k8s-athenz-identity/shared";
import { podRegistrySpec } from "../src/config.js";
import { startPodRegistry } from "../src/service.js";
import { quietLogger } from "./helpers.js";

test("a wait default above the maximum is a bad setting, named, and nothing starts", async () => {
  const config = loadConfig(podRegistrySpec, { env: { HOST: "127.0.0.1", PORT: "0", ADMIN_PORT: "0", WAIT_DEFAULT: "5s", WAIT_MAX: "1s" } });
  await assert.rejects(
    startPodRegistry(config, { logger: quietLogger() }),
    (e: unknown) => e instanceof ConfigError && /--wait-default\/WAIT_DEFAULT: 5000ms exceeds --wait-max\/WAIT_MAX \(1000ms\)/.test(e.message),
  );
});
