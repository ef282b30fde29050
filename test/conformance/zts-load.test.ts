/**
 * The ZTS-pattern load driver (test/conformance/java ZtsLoadDriver, behind test/conformance/zts-load.ts)
 * against the real gateway (startGateway, mutual TLS, dependencies answered in process): the calls
 * are Athenz's own InstanceHttpProvider's, each on a new connection; with resumption on, Java's client
 * session cache resumes the gateway's sessions (counted on the gateway's side, tls_handshakes_total),
 * with resumption off every handshake is full; the latencies, outcomes and CPU figures it prints are
 * the ones the benches record; and a ZTS identity the gateway does not allow is refused on every call,
 * resumed sessions included.
 */
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { createLogger, loadConfig } from "@k8s-athenz-identity/shared";
import { gatewaySpec } from "../../services/gateway/src/config.js";
import { type RunningGateway, startGateway } from "../../services/gateway/src/service.js";
import { confirmation, fakeDeps, PROVIDER } from "../../services/gateway/test/fixtures.js";
import { ZTS_CN } from "../e2e/stack.js";
import { createCa, issueCert } from "../support/pki.js";
import { tempDir } from "../support/tmp.js";
import { makeZtsStores, type ZtsStores } from "./provider-client.js";
import { runZtsLoad } from "./zts-load.js";

describe("ZtsLoadDriver against the gateway", { timeout: 180_000 }, () => {
  const { dir, cleanup } = tempDir("zts-load");
  let gw: RunningGateway;
  let allowed: ZtsStores;
  let notAllowed: ZtsStores;
  const bodiesFile = join(dir, "bodies.json");

  before(async () => {
    const ca = createCa(dir, "athenz");
    const server = issueCert(dir, "gateway", ca, { cn: PROVIDER, usage: "server" });
    allowed = makeZtsStores(join(dir), issueCert(dir, "zts", ca, { cn: ZTS_CN, usage: "client" }), ca);
    const otherDir = join(dir, "other");
    notAllowed = makeZtsStores(otherDir, issueCert(otherDir, "pod", ca, { cn: "sports.api", usage: "client" }), ca);
    writeFileSync(bodiesFile, JSON.stringify([confirmation()]));
    gw = await startGateway(
      loadConfig(gatewaySpec, {
        env: {
          HOST: "127.0.0.1",
          PORT: "0",
          ADMIN_PORT: "0",
          API_PORT: "0",
          API_ADMIN_PORT: "0",
          TLS_CERT_FILE: server.certFile,
          TLS_KEY_FILE: server.keyFile,
          TLS_CLIENT_CA_FILE: ca.certFile,
          PROVIDER_SERVICE: PROVIDER,
          ALLOWED_ZTS_CNS: ZTS_CN,
          DNS_SUFFIXES: "cluster1.example.com",
        },
      }),
      { logger: createLogger({ service: "gateway", level: "silent" }), dependencies: fakeDeps() },
    );
  });
  after(async () => {
    await gw?.close();
    cleanup();
  });

  /** Full and resumed handshakes the gateway has counted. */
  const handshakes = async () => {
    const m = await gw.registry.metrics();
    const n = (resumed: string) => Number(new RegExp(`tls_handshakes_total\\{resumed="${resumed}"[^}]*\\} (\\d+)`).exec(m)?.[1] ?? 0);
    return { full: n("false"), resumed: n("true") };
  };

  it("calls at the offered rate with resumed sessions, then with a full handshake per call, and reports what it measured", async () => {
    const counts: Array<{ full: number; resumed: number }> = [];
    let start = { full: 0, resumed: 0 };
    const pending: Promise<void>[] = [];
    const results = await runZtsLoad({
      provider: PROVIDER,
      endpoint: gw.zts.url,
      stores: allowed,
      bodiesFile,
      warmupMs: 2000,
      warmupThreads: 2,
      pids: [process.pid],
      phases: [
        { name: "resumed", rate: 20, threads: 32, settleMs: 500, durationMs: 2000, resumption: "on" },
        { name: "full", rate: 0, threads: 2, settleMs: 500, durationMs: 2000, resumption: "off" },
      ],
      onPhaseStart: () => {
        pending.push(
          handshakes().then((h) => {
            start = h;
          }),
        );
      },
      onPhaseEnd: () => {
        const s = start;
        pending.push(handshakes().then((h) => void counts.push({ full: h.full - s.full, resumed: h.resumed - s.resumed })));
      },
    });
    await Promise.all(pending);
    const [resumed, full] = results as [(typeof results)[0], (typeof results)[0]];
    assert.equal(resumed.mode, "open-loop");
    // A loaded machine may leave calls unscheduled (dropped, reported apart); every call made succeeds.
    assert.ok(resumed.calls + resumed.outcomes.dropped >= 40, `at 20/s for 2 s: ${JSON.stringify(resumed.outcomes)}`);
    assert.ok(resumed.calls > 0);
    assert.deepEqual({ ...resumed.outcomes, dropped: 0 }, { allow: resumed.calls, forbidden: 0, "gateway-timeout": 0, error: 0, dropped: 0 });
    assert.ok(resumed.p50Ms > 0 && resumed.p99Ms >= resumed.p50Ms, `latencies ${resumed.p50Ms} / ${resumed.p99Ms}`);
    assert.ok(resumed.providerCpuMsTotal > 0 && resumed.driverCpuMs > 0, "CPU figures of both sides");
    assert.ok(counts[0]!.resumed > 0, `Java's session cache resumed sessions: ${JSON.stringify(counts[0])}`);
    assert.equal(full.mode, "saturation");
    assert.equal(full.outcomes.allow, full.calls);
    assert.equal(counts[1]!.resumed, 0, `no session resumed with resumption off: ${JSON.stringify(counts[1])}`);
    assert.ok(counts[1]!.full >= full.calls, `a full handshake per call: ${JSON.stringify(counts[1])}`);
  });

  it("gets every call refused when its ZTS identity is not allowed, resumed sessions included", async () => {
    const before = await handshakes();
    const [r] = await runZtsLoad({
      provider: PROVIDER,
      endpoint: gw.zts.url,
      stores: notAllowed,
      bodiesFile,
      warmupMs: 0,
      phases: [{ name: "refused", rate: 20, threads: 4, settleMs: 0, durationMs: 1500, resumption: "on" }],
    });
    const after = await handshakes();
    assert.ok(r!.calls > 0);
    assert.deepEqual({ ...r!.outcomes, dropped: 0 }, { allow: 0, forbidden: r!.calls, "gateway-timeout": 0, error: 0, dropped: 0 });
    assert.ok(after.resumed - before.resumed > 0, "the refused client's sessions were resumed too");
  });
});
