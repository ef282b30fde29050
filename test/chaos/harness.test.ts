/**
 * The chaos tier's own parts, checked before they judge the product: the answer checker's rules
 * and the pausable TCP proxy's partition (nothing passes while paused, nothing is lost on resume).
 */
import assert from "node:assert/strict";
import * as net from "node:net";
import { describe, it } from "node:test";
import { type Answer, judge, tally } from "./load.js";
import { startTcpProxy } from "./tcp-proxy.js";
import type { PodFacts, World } from "./world.js";

const T = 1_000_000;
function worldOf(pods: PodFacts[]): World {
  const map = new Map(pods.map((p) => [p.uid, p]));
  return { pods: map } as unknown as World;
}
const pod = (uid: string, o: Partial<PodFacts> = {}): PodFacts => ({ name: uid, uid, ip: "10.0.0.1", token: "", csrPem: "", presentAt: T, ...o });
const answer = (uid: string, status: Answer["status"], sentAt: number, answeredAt = sentAt + 50): Answer => ({
  uid,
  status,
  sentAt,
  answeredAt,
  detail: "",
});

describe("the answer checker", () => {
  const world = worldOf([
    pod("live"),
    pod("gone", { deleteStartedAt: T + 10_000, deletedAt: T + 10_100 }),
    pod("going", { deleteStartedAt: T + 20_000 }),
  ]);
  const grace = 5000;

  it("an allow is wrong only for a pod deleted longer than the grace before the request", () => {
    assert.equal(judge(answer("live", 200, T + 1000), world, grace), "ok");
    assert.equal(judge(answer("gone", 200, T + 9000), world, grace), "ok", "sent before the deletion");
    assert.equal(judge(answer("gone", 200, T + 12_000), world, grace), "late-allow", "inside the declared staleness");
    assert.equal(judge(answer("gone", 200, T + 15_101), world, grace), "wrong-allow");
  });

  it("a deny is wrong only for a pod present before the request and not being deleted until it was answered", () => {
    assert.equal(judge(answer("live", 403, T + 1000), world, grace), "wrong-deny");
    assert.equal(judge(answer("live", 403, T - 1), world, grace), "ok", "sent before the pod was present");
    assert.equal(judge(answer("gone", 403, T + 10_050), world, grace), "ok");
    assert.equal(judge(answer("going", 403, T + 19_990, T + 20_010), world, grace), "ok", "its deletion began before the answer");
    assert.equal(judge(answer("going", 403, T + 19_000, T + 19_500), world, grace), "wrong-deny");
  });

  it("a 504 is never wrong; anything else is a harness error", () => {
    assert.equal(judge(answer("gone", 504, T + 60_000), world, grace), "ok");
    assert.equal(judge(answer("live", 0, T + 1000), world, grace), "error");
    assert.equal(judge(answer("unknown", 200, T + 1000), world, grace), "error");
    const t = tally(
      [answer("live", 200, T + 1), answer("live", 403, T + 2), answer("gone", 200, T + 20_000), answer("live", 504, T + 3)],
      world,
      grace,
      T,
      T + 60_000,
    );
    assert.deepEqual([t[200], t[403], t[504], t.wrong, t.errors], [2, 1, 1, 2, 0]);
    assert.equal(t.details.length, 2);
  });
});

describe("the pausable TCP proxy", () => {
  it("holds every byte while paused, in both directions, and delivers them in order on resume", async () => {
    const echo = net.createServer((s) => s.pipe(s));
    await new Promise<void>((r) => echo.listen(0, "127.0.0.1", r));
    const proxy = await startTcpProxy({ target: { host: "127.0.0.1", port: (echo.address() as net.AddressInfo).port } });
    try {
      const client = net.connect(proxy.port, "127.0.0.1");
      await new Promise((r) => client.once("connect", r));
      const received: Buffer[] = [];
      client.on("data", (c: Buffer) => received.push(c));
      const until = async (text: string) => {
        while (Buffer.concat(received).toString() !== text) await new Promise((r) => client.once("data", r));
      };
      client.write("a");
      await until("a");
      proxy.pause();
      client.write("b");
      client.write("c");
      // Whatever is in flight settles; while paused nothing comes back.
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(Buffer.concat(received).toString(), "a");
      // New connections wait too, without reaching the target.
      const late = net.connect(proxy.port, "127.0.0.1");
      const lateData: Buffer[] = [];
      late.on("data", (c: Buffer) => lateData.push(c));
      late.write("x");
      await new Promise((r) => setTimeout(r, 200));
      assert.equal(lateData.length, 0);
      proxy.resume();
      await until("abc");
      while (Buffer.concat(lateData).toString() !== "x") await new Promise((r) => late.once("data", r));
      assert.ok(proxy.bytesFromTarget >= 4);
      client.destroy();
      late.destroy();
    } finally {
      await proxy.close();
      await new Promise((r) => echo.close(r));
    }
  });
});
