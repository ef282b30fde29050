/**
 * Token verifier throughput: jwks mode for RS256 and ES256 next to a bare `crypto.verify` of the same
 * token with the same key (issue 14: >= 0.4 of it) and next to bare `jose.jwtVerify` (issue 2:
 * >= 0.8 of it), in the same run (short adjacent slices, median pair ratio, so machine noise hits
 * both alike), and TokenReview cache hit vs miss against the stand-in API server on loopback (TLS).
 */
import { createPublicKey, verify as cryptoVerify } from "node:crypto";
import { jwtVerify } from "jose";
import { createTokenVerifier } from "../services/token-verifier/src/verifier.js";
import { createSigningKey, mintBoundToken, startOidcServer } from "../test/support/jwt.js";
import { tempDir } from "../test/support/tmp.js";
import { startTokenReviewStandIn, writeKubeconfig } from "../test/support/tokenreview-stand-in.js";
import { type Figure, opsPerSecond, percentile, recordFigures } from "./lib.js";

const PAIRS = 40;
const SLICE_MS = 150;
const figures: Figure[] = [];

/**
 * Runs `a` and `b` in pairs of short adjacent slices (which one goes first alternates) and returns
 * each one's overall rate plus the median of the per-pair rate ratios b/a. On a shared, loaded
 * machine the median pair ratio is robust to bursts of load from other processes.
 */
async function interleaved(a: () => Promise<unknown>, b: () => Promise<unknown>): Promise<{ a: number; b: number; ratio: number }> {
  const slice = async (fn: () => Promise<unknown>) => {
    const t0 = performance.now();
    let n = 0;
    while (performance.now() - t0 < SLICE_MS) {
      for (let i = 0; i < 10; i++) await fn();
      n += 10;
    }
    return { n, ms: performance.now() - t0 };
  };
  for (let i = 0; i < 200; i++) {
    await a();
    await b();
  }
  const tot = { an: 0, ams: 0, bn: 0, bms: 0 };
  const ratios: number[] = [];
  for (let pair = 0; pair < PAIRS; pair++) {
    let ra: Awaited<ReturnType<typeof slice>>;
    let rb: Awaited<ReturnType<typeof slice>>;
    if (pair % 2 === 0) {
      ra = await slice(a);
      rb = await slice(b);
    } else {
      rb = await slice(b);
      ra = await slice(a);
    }
    tot.an += ra.n;
    tot.ams += ra.ms;
    tot.bn += rb.n;
    tot.bms += rb.ms;
    ratios.push(rb.n / rb.ms / (ra.n / ra.ms));
  }
  return { a: (tot.an / tot.ams) * 1000, b: (tot.bn / tot.bms) * 1000, ratio: percentile(ratios, 50) };
}

const [rsa, ec] = await Promise.all([createSigningKey("RS256"), createSigningKey("ES256")]);
const oidc = await startOidcServer({ keys: [rsa, ec] });
const verifier = createTokenVerifier({ mode: "jwks", issuer: oidc.issuer, warmUp: false });

for (const key of [rsa, ec]) {
  const token = await mintBoundToken(key, { issuer: oidc.issuer });
  const check = await verifier.verify(token);
  if (check.kind !== "valid") throw new Error(`bench token refused: ${JSON.stringify(check)}`);
  const bareOptions = { issuer: oidc.issuer, audience: "athenz-identityd", algorithms: [key.alg] };
  await jwtVerify(token, key.publicKey, bareOptions);
  // The floor: the signature check alone, synchronous, key imported once, signing input prepared once.
  const cut = token.lastIndexOf(".");
  const signingInput = Buffer.from(token.slice(0, cut));
  const signature = Buffer.from(token.slice(cut + 1), "base64url");
  const keyObject = createPublicKey(key.publicPem);
  const verifyKey = key.alg === "ES256" ? { key: keyObject, dsaEncoding: "ieee-p1363" as const } : keyObject;
  const bareCrypto = async () => {
    if (!cryptoVerify("sha256", signingInput, verifyKey, signature)) throw new Error("bare crypto.verify failed");
  };
  await bareCrypto();
  const vsCrypto = await interleaved(bareCrypto, () => verifier.verify(token));
  figures.push(
    {
      name: `bare crypto.verify ${key.alg}`,
      value: vsCrypto.a,
      unit: "ops/s",
      target: "report",
      note: "node:crypto verify of the same token's signature with the same key (KeyObject), nothing else",
    },
    {
      name: `token-verifier jwks ${key.alg} / bare crypto.verify ratio`,
      value: vsCrypto.ratio,
      unit: "ratio",
      target: ">= 0.4",
      met: vsCrypto.ratio >= 0.4,
      note: `median of ${PAIRS} adjacent slice pairs; overall rates give ${(vsCrypto.b / vsCrypto.a).toFixed(3)} (verify ${vsCrypto.b.toFixed(0)}/s); issue 14`,
    },
  );
  const {
    a: bare,
    b: ours,
    ratio,
  } = await interleaved(
    () => jwtVerify(token, key.publicKey, bareOptions),
    () => verifier.verify(token),
  );
  figures.push(
    {
      name: `token-verifier jwks ${key.alg} verify`,
      value: ours,
      unit: "ops/s",
      target: "report",
      note: "createTokenVerifier().verify, domain layer, one token reused",
    },
    {
      name: `bare jose.jwtVerify ${key.alg}`,
      value: bare,
      unit: "ops/s",
      target: "report",
      note: "same key (CryptoKey), issuer+audience+algorithms options",
    },
    {
      name: `token-verifier jwks ${key.alg} / bare jose ratio`,
      value: ratio,
      unit: "ratio",
      target: ">= 0.8",
      met: ratio >= 0.8,
      note: `median of ${PAIRS} adjacent slice pairs; overall rates give ${(ours / bare).toFixed(3)}`,
    },
  );
}
await verifier.close();
await oidc.close();

// TokenReview: cache hit vs miss against the stand-in (real TLS on loopback; client-node opens a new
// connection per call, as it does against a real API server).
const issuer = "https://kubernetes.default.svc.cluster.local";
const tmp = tempDir("token-verifier-bench");
const api = await startTokenReviewStandIn({ issuer, keys: [rsa] });
const kubeconfigPath = writeKubeconfig(tmp.dir, api);
const token = await mintBoundToken(rsa, { issuer });
const cachedVerifier = createTokenVerifier({ mode: "tokenreview", kubeconfigPath, warmUp: false });
const uncachedVerifier = createTokenVerifier({ mode: "tokenreview", kubeconfigPath, warmUp: false, reviewCacheSize: 0 });

async function latencies(fn: () => Promise<unknown>, n: number): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    await fn();
    out.push(performance.now() - t0);
  }
  return out;
}
for (let i = 0; i < 20; i++) await uncachedVerifier.verify(token); // warm-up
const miss = await latencies(() => uncachedVerifier.verify(token), 200);
await cachedVerifier.verify(token);
const hit = await latencies(() => cachedVerifier.verify(token), 5_000);
const hitOps = await opsPerSecond(() => cachedVerifier.verify(token), 1_500, 200);
const callsBefore = api.calls.tokenReview;
await cachedVerifier.verify(token);
if (api.calls.tokenReview !== callsBefore) throw new Error("cache hit made an API call");
figures.push(
  {
    name: "tokenreview cache miss latency p50",
    value: percentile(miss, 50),
    unit: "ms",
    target: "report",
    note: "API call to the stand-in over TLS on loopback",
  },
  { name: "tokenreview cache miss latency p99", value: percentile(miss, 99), unit: "ms", target: "report" },
  { name: "tokenreview cache hit latency p50", value: percentile(hit, 50), unit: "ms", target: "report", note: "includes local claim checks" },
  { name: "tokenreview cache hit latency p99", value: percentile(hit, 99), unit: "ms", target: "report" },
  { name: "tokenreview cache hit verify", value: hitOps, unit: "ops/s", target: "report" },
  { name: "tokenreview cache hit/miss speed-up (p50)", value: percentile(miss, 50) / percentile(hit, 50), unit: "x", target: "report" },
);
await cachedVerifier.close();
await uncachedVerifier.close();
await api.close();
tmp.cleanup();

recordFigures("verifiers", 2, figures);
