import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { createBackoff, delay } from "./backoff.js";

describe("createBackoff", () => {
  it("doubles up to the cap, always keeping at least half of each step (equal jitter)", () => {
    const b = createBackoff({ initialMs: 100, maxMs: 1000 });
    const steps = [100, 200, 400, 800, 1000, 1000, 1000];
    for (let round = 0; round < 50; round++) {
      for (const d of steps) {
        const got = b.next();
        assert.ok(got >= d / 2 && got < d, `delay ${got} outside [${d / 2}, ${d})`);
      }
      b.reset();
    }
  });

  it("spreads delays (jitter), so replicas restarted together do not retry together", () => {
    const seen = new Set<number>();
    for (let i = 0; i < 20; i++) seen.add(createBackoff({ initialMs: 1000, maxMs: 1000 }).next());
    assert.ok(seen.size > 10, `only ${seen.size} distinct delays in 20`);
  });

  it("refuses a range that would spin or never wait", () => {
    assert.throws(() => createBackoff({ initialMs: 0, maxMs: 10 }), RangeError);
    assert.throws(() => createBackoff({ initialMs: 10, maxMs: 5 }), RangeError);
  });
});

describe("delay", () => {
  it("ends early, without throwing, when aborted", async () => {
    const ac = new AbortController();
    const p = delay(60_000, ac.signal);
    ac.abort();
    await p;
  });
});
