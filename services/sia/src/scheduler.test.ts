import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { type AttemptResult, type Clock, createRefreshLoop, DEFAULT_RETRY_POLICY, refreshDelay, retryDelay, type Validity } from "./scheduler.js";

/** A clock whose time only moves when the test says so. */
function fakeClock(start = 1_000_000) {
  let now = start;
  let seq = 0;
  const timers = new Map<number, { at: number; fn: () => void }>();
  const clock: Clock = {
    now: () => now,
    setTimeout: (fn, ms) => {
      const id = ++seq;
      timers.set(id, { at: now + ms, fn });
      return id;
    },
    clearTimeout: (h) => void timers.delete(h as number),
  };
  /** Runs timers due within `ms`, in order, letting promises settle between them. */
  const advance = async (ms: number) => {
    const end = now + ms;
    for (;;) {
      await new Promise((r) => setImmediate(r));
      const next = [...timers.entries()].filter(([, t]) => t.at <= end).sort((a, b) => a[1].at - b[1].at)[0];
      if (!next) break;
      timers.delete(next[0]);
      now = next[1].at;
      next[1].fn();
    }
    now = end;
    await new Promise((r) => setImmediate(r));
  };
  return { clock, advance, pending: () => timers.size };
}

const HOUR = 3_600_000;
const noJitter = () => 0;

describe("refresh timing", () => {
  it("refreshes at two thirds of the lifetime, or earlier at REFRESH_INTERVAL, plus jitter", () => {
    const cert = { notBefore: 0, notAfter: 3 * HOUR };
    assert.equal(refreshDelay(cert, 0, 24 * HOUR, 0, noJitter), 2 * HOUR);
    assert.equal(refreshDelay(cert, HOUR, 24 * HOUR, 0, noJitter), HOUR);
    assert.equal(refreshDelay(cert, 0, 30 * 60_000, 0, noJitter), 30 * 60_000);
    assert.equal(
      refreshDelay(cert, 0, 24 * HOUR, 10_000, () => 0.5),
      2 * HOUR + 5_000,
    );
    assert.equal(refreshDelay(cert, 2.5 * HOUR, 24 * HOUR, 0, noJitter), 0, "overdue: now");
  });

  it("backs off exponentially, faster after 504 than after a deny, capped by the remaining lifetime", () => {
    const p = DEFAULT_RETRY_POLICY;
    const full = () => 1; // upper end of the jitter
    const u = [1, 2, 3, 4].map((n) => retryDelay(n, "unavailable", 0, undefined, p, full));
    assert.deepEqual(u, [1_000, 2_000, 4_000, 8_000]);
    assert.ok(retryDelay(1, "denied", 0, undefined, p, full) >= 30 * retryDelay(1, "unavailable", 0, undefined, p, full));
    assert.equal(retryDelay(40, "denied", 0, undefined, p, full), p.maxBackoffMs);
    // 4 minutes left: never wait more than a quarter of it.
    const cert: Validity = { notBefore: -HOUR, notAfter: 4 * 60_000 };
    assert.equal(retryDelay(10, "denied", 0, cert, p, full), 60_000);
    assert.equal(retryDelay(10, "unavailable", 4 * 60_000 - 2_000, cert, p, full), p.minDelayMs);
    assert.equal(retryDelay(10, "denied", 4 * 60_000 - 2_000, cert, p, full), p.deniedBaseMs / 2);
    assert.ok(retryDelay(1, "unavailable", 0, undefined, p, () => 0) >= 500, "equal jitter keeps half the backoff");
  });
});

describe("refresh loop", () => {
  it("retries after failures without letting a valid certificate lapse, then returns to the normal schedule", async () => {
    const { clock, advance } = fakeClock(0);
    let cert: Validity = { notBefore: 0, notAfter: 30 * 60_000 };
    const script: AttemptResult["kind"][] = ["failed", "failed", "failed", "ok"];
    const attempts: number[] = [];
    const expired: Validity[] = [];
    const loop = createRefreshLoop({
      clock,
      random: () => 1,
      refreshIntervalMs: 24 * HOUR,
      jitterMs: 0,
      current: () => cert,
      attempt: async () => {
        attempts.push(clock.now());
        if (script.shift() === "ok") {
          cert = { notBefore: clock.now(), notAfter: clock.now() + 30 * 60_000 };
          return { kind: "ok", cert };
        }
        return { kind: "failed", failure: "unavailable", error: new Error("504") };
      },
      onExpired: (c) => expired.push(c),
    });
    loop.start();
    await advance(20 * 60_000 - 1);
    assert.equal(attempts.length, 0, "nothing before two thirds");
    await advance(1);
    assert.deepEqual(attempts, [20 * 60_000]);
    await advance(10_000);
    assert.deepEqual(
      attempts.map((t) => t - 20 * 60_000),
      [0, 1_000, 3_000, 7_000],
    );
    assert.equal(loop.failures, 0);
    const tOk = 20 * 60_000 + 7_000;
    await advance(tOk + 20 * 60_000 - clock.now() - 1);
    assert.equal(attempts.length, 4);
    await advance(1);
    assert.equal(attempts[4], tOk + 20 * 60_000, "next refresh at two thirds of the new certificate");
    assert.deepEqual(expired, []);
    await loop.stop();
  });

  it("reports an expiry loudly once, and keeps retrying slowly when denied", async () => {
    const { clock, advance } = fakeClock(0);
    const cert: Validity = { notBefore: 0, notAfter: 6 * 60_000 };
    let calls = 0;
    const expired: Validity[] = [];
    const loop = createRefreshLoop({
      clock,
      random: () => 1,
      refreshIntervalMs: 24 * HOUR,
      jitterMs: 0,
      current: () => cert,
      attempt: async () => {
        calls++;
        return { kind: "failed", failure: "denied", error: new Error("403") };
      },
      onExpired: (c) => expired.push(c),
    });
    loop.start();
    await advance(6 * 60_000);
    assert.equal(expired.length, 1);
    const atExpiry = calls;
    assert.ok(atExpiry >= 3 && atExpiry <= 12, `a handful of attempts before expiry, got ${atExpiry}`);
    await advance(HOUR);
    assert.ok(calls - atExpiry <= 10, `no hammering after a deny: ${calls - atExpiry} calls in an hour`);
    assert.equal(expired.length, 1, "reported once");
    await loop.stop();
  });

  it("attempts at once when there is no certificate, and stops cleanly", async () => {
    const { clock, advance, pending } = fakeClock(0);
    let calls = 0;
    const loop = createRefreshLoop({
      clock,
      refreshIntervalMs: HOUR,
      jitterMs: 0,
      current: () => undefined,
      attempt: async () => {
        calls++;
        return { kind: "failed", failure: "unavailable", error: new Error("down") };
      },
      onExpired: () => assert.fail("no certificate, no expiry"),
    });
    loop.start();
    await advance(0);
    assert.equal(calls, 1);
    await loop.stop();
    assert.equal(pending(), 0);
    await advance(HOUR);
    assert.equal(calls, 1);
  });
});
