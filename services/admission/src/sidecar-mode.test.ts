import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createLogger } from "@k8s-athenz-identity/shared/logger";
import { resolveSidecarMode, type ServerVersion, sidecarModeFor } from "./sidecar-mode.js";

const logger = createLogger({ service: "admission", level: "silent" });

describe("native sidecar or the classic pair", () => {
  it("auto: native from API server 1.32 (every kubelet >= 1.29 by the skew policy), classic below; providers' '+' suffixes read", () => {
    assert.equal(sidecarModeFor({ major: "1", minor: "28" }), "classic");
    assert.equal(sidecarModeFor({ major: "1", minor: "31+" }), "classic");
    assert.equal(sidecarModeFor({ major: "1", minor: "32" }), "native");
    assert.equal(sidecarModeFor({ major: "1", minor: "36" }), "native");
    assert.equal(sidecarModeFor({ major: "2", minor: "0" }), "native");
    assert.equal(sidecarModeFor({ major: "", minor: "" }), undefined);
  });

  it("native and classic are taken as set, without asking the API server", async () => {
    const never = () => Promise.reject(new Error("not asked"));
    for (const setting of ["native", "classic"] as const) {
      const s = await resolveSidecarMode({ setting, serverVersion: never, logger });
      assert.deepEqual(s.describe(), { mode: setting, source: `SIA_SIDECAR=${setting}` });
      s.close();
    }
  });

  it("auto: classic while the version cannot be read, then the version's mode once it can; start-up never fails", async () => {
    let calls = 0;
    let answered!: () => void;
    const done = new Promise<void>((r) => (answered = r));
    const serverVersion = async (): Promise<ServerVersion> => {
      if (++calls < 3) throw new Error("connect ECONNREFUSED");
      answered();
      return { major: "1", minor: "36", gitVersion: "v1.36.3" };
    };
    const s = await resolveSidecarMode({ setting: "auto", serverVersion, logger, backoff: { initialMs: 1, maxMs: 2 } });
    try {
      assert.equal(s.mode(), "classic");
      assert.match(s.describe().source, /not known yet/);
      await done;
      await new Promise((r) => setImmediate(r));
      assert.equal(s.mode(), "native");
      assert.match(s.describe().source, /API server v1\.36\.3/);
      assert.equal(calls, 3);
    } finally {
      s.close();
    }
  });

  it("auto: an answer within the first wait decides before the first pod", async () => {
    const s = await resolveSidecarMode({ setting: "auto", serverVersion: async () => ({ major: "1", minor: "30" }), logger });
    assert.equal(s.mode(), "classic");
    assert.match(s.describe().source, /API server 1\.30 \(native from 1\.32\)/);
    s.close();
  });
});
