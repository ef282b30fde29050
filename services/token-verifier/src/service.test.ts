import assert from "node:assert/strict";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { ConfigError, loadConfig } from "@k8s-athenz-identity/shared/config";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { tempDir } from "../../../test/support/tmp.js";
import { tokenVerifierSpec } from "./config.js";
import { startTokenVerifier } from "./service.js";

describe("token-verifier settings checked at start", () => {
  const tmp = tempDir("token-verifier-settings");
  after(tmp.cleanup);

  it("refuses combinations and files that cannot work, naming the setting", async () => {
    const base = { HOST: "127.0.0.1", PORT: "0", ADMIN_PORT: "0", TOKEN_ISSUER: "https://kubernetes.default.svc" };
    const cases: [Record<string, string>, RegExp][] = [
      [{ ...base, TOKEN_ISSUER: "" }, /--issuer\/TOKEN_ISSUER: is required in mode both/],
      [{ ...base, JWKS_URL: "https://x/jwks", JWKS_FILE: "/k" }, /JWKS_URL and --jwks-file\/JWKS_FILE: set one, not both/],
      [{ ...base, VERIFIER_MODE: "jwks", JWKS_FILE: join(tmp.dir, "missing.json") }, /--jwks-file\/JWKS_FILE: cannot read .*ENOENT/],
      [{ ...base, VERIFIER_MODE: "tokenreview", KUBECONFIG: join(tmp.dir, "missing-kubeconfig") }, /--kubeconfig\/KUBECONFIG: cannot load/],
    ];
    for (const [env, re] of cases) {
      await assert.rejects(
        startTokenVerifier(loadConfig(tokenVerifierSpec, { env }), { logger: createLogger({ service: "token-verifier", level: "silent" }) }),
        (e: unknown) => e instanceof ConfigError && re.test(e.message),
        JSON.stringify(env),
      );
    }
  });
});
