/**
 * The runner in this process, with its process surface injected: argv, environment, output, log
 * destination, signals and exit. The same runner in real child processes (each service's main and
 * identityd, SIGTERM while a dependency is unreachable) is tested in test/e2e/entrypoints.test.ts.
 */
import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { PassThrough } from "node:stream";
import { describe, it } from "node:test";
import { ConfigError, duration, logLevelSetting, port, str } from "./config.js";
import { type Program, runProgram, runService, type ServiceDescriptor, type ServiceHandle, type StartContext, shutdownDeadlineMs } from "./runner.js";

const spec = {
  port: port({ env: "PORT", flag: "port", description: "p", default: 1, perTarget: true }),
  name: str({ env: "NAME", flag: "name", description: "n", default: "x" }),
  shutdownTimeout: duration({ env: "SHUTDOWN_TIMEOUT", flag: "shutdown-timeout", description: "s", default: 10 }),
  logLevel: logLevelSetting(),
};

/** A service whose start and close a test scripts; it records what the runner did to it. */
function scripted(name: string, o: { start?: (ctx: StartContext) => Promise<ServiceHandle>; closeHangs?: boolean } = {}) {
  const seen = { started: 0, closed: 0, configs: [] as Record<string, unknown>[], signal: undefined as AbortSignal | undefined };
  const d: ServiceDescriptor<typeof spec> = {
    name,
    summary: `${name} summary`,
    spec,
    async start(config, ctx) {
      seen.started++;
      seen.configs.push(config);
      seen.signal = ctx.signal;
      if (o.start) return o.start(ctx);
      return {
        close: () => {
          seen.closed++;
          return o.closeHangs ? new Promise<void>(() => {}) : Promise.resolve();
        },
      };
    },
  };
  return { d, seen };
}

/** Runs a program with everything injected; `exited` resolves with the exit code. */
function harness(p: Program, argv: string[] = [], env: Record<string, string> = {}) {
  const signals = new EventEmitter();
  let stdout = "";
  let stderr = "";
  const logs = new PassThrough();
  const lines: Record<string, unknown>[] = [];
  let partial = "";
  logs.on("data", (c: Buffer) => {
    partial += c.toString();
    const parts = partial.split("\n");
    partial = parts.pop() ?? "";
    for (const l of parts) if (l) lines.push(JSON.parse(l) as Record<string, unknown>);
  });
  let exit!: (code: number) => void;
  const exited = new Promise<number>((r) => (exit = r));
  const running = runProgram(p, {
    argv,
    env,
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    logDestination: logs,
    signals: signals as unknown as Pick<NodeJS.Process, "on" | "off">,
    exit,
  });
  return {
    running,
    exited,
    signal: (name: "SIGTERM" | "SIGINT") => signals.emit(name),
    listeners: () => signals.listenerCount("SIGTERM") + signals.listenerCount("SIGINT"),
    out: () => stdout,
    err: () => stderr,
    lines,
  };
}

const one = (d: ServiceDescriptor<typeof spec>): Program => ({ name: d.name, summary: d.summary, targets: [d] });

describe("runService", () => {
  it("prints the settings for --help and exits 0 without starting", async () => {
    const { d, seen } = scripted("svc");
    const h = harness(one(d), ["--help"]);
    assert.equal(await h.exited, 0);
    assert.match(h.out(), /^svc: svc summary\n/);
    assert.match(h.out(), /--port\/PORT .* \(default: 1\)/);
    assert.equal(seen.started, 0);
  });

  it("exits 2 naming the setting when a value is bad, before starting anything", async () => {
    const { d, seen } = scripted("svc");
    const h = harness(one(d), [], { PORT: "http" });
    assert.equal(await h.exited, 2);
    assert.match(h.err(), /^svc: invalid setting --port\/PORT: must be an integer/);
    assert.equal(seen.started, 0);
  });

  it("exits 2 when start refuses a combination of settings, 1 with the error logged as { err } when start fails", async () => {
    const refusing = scripted("svc", {
      start: async () => {
        throw new ConfigError("--a/A", "needs --b/B");
      },
    });
    const h1 = harness(one(refusing.d));
    assert.equal(await h1.exited, 2);
    assert.match(h1.err(), /invalid setting --a\/A: needs --b\/B/);

    const failing = scripted("svc", {
      start: async () => {
        throw new Error("cannot listen", { cause: new Error("EADDRINUSE") });
      },
    });
    const h2 = harness(one(failing.d));
    assert.equal(await h2.exited, 1);
    const fatal = h2.lines.find((l) => l.msg === "start-up failed");
    const err = fatal?.err as { message: string; stack: string } | undefined;
    assert.equal(fatal?.service, "svc");
    assert.match(err?.message ?? "", /cannot listen: EADDRINUSE/);
    assert.match(err?.stack ?? "", /caused by: Error: EADDRINUSE/);
  });

  it("stops on SIGTERM: closes the service, exits 0 and removes its handlers", async () => {
    const { d, seen } = scripted("svc");
    const h = harness(one(d));
    await h.running;
    assert.equal(seen.started, 1);
    h.signal("SIGTERM");
    assert.equal(await h.exited, 0);
    assert.equal(seen.closed, 1);
    assert.equal(h.listeners(), 0);
    assert.ok(h.lines.some((l) => l.msg === "stopping" && l.signal === "SIGTERM"));
  });

  it("has its handlers in place while start runs: a signal aborts the start, and the exit follows", async () => {
    let begun!: () => void;
    const inStart = new Promise<void>((r) => (begun = r));
    const { d, seen } = scripted("svc", {
      start: (ctx) =>
        new Promise((_, reject) => {
          begun();
          ctx.signal.addEventListener("abort", () => reject(ctx.signal.reason));
        }),
    });
    const h = harness(one(d));
    await inStart;
    h.signal("SIGTERM");
    assert.equal(await h.exited, 0);
    assert.equal(seen.signal?.aborted, true);
  });

  it("exits 1 at the hard deadline when a start or a close never ends", async () => {
    const stuckStart = scripted("svc", { start: () => new Promise(() => {}) });
    const h1 = harness(one(stuckStart.d), [], { SHUTDOWN_TIMEOUT: "0ms" });
    h1.signal("SIGTERM");
    assert.equal(await h1.exited, 1);
    assert.ok(h1.lines.some((l) => l.msg === "shutdown deadline passed; exiting with work unfinished" && l.deadlineMs === 1000));

    const stuckClose = scripted("svc", { closeHangs: true });
    const h2 = harness(one(stuckClose.d), [], { SHUTDOWN_TIMEOUT: "0ms" });
    await h2.running;
    h2.signal("SIGINT");
    assert.equal(await h2.exited, 1);
    assert.equal(stuckClose.seen.closed, 1);
  });

  it("ends with a one-shot job: exit 0 when it is done, 1 when it fails", async () => {
    const done = scripted("job", { start: async () => ({ finished: Promise.resolve(), close: async () => {} }) });
    assert.equal(await harness(one(done.d)).exited, 0);
    const failed = scripted("job", { start: async () => ({ finished: Promise.reject(new Error("denied")), close: async () => {} }) });
    const h = harness(one(failed.d));
    assert.equal(await h.exited, 1);
    assert.match(String((h.lines.find((l) => l.msg === "job failed")?.err as { message?: string })?.message), /denied/);
  });

  it("runService runs one descriptor as its own program", async () => {
    const { d } = scripted("svc");
    let exit!: (code: number) => void;
    const exited = new Promise<number>((r) => (exit = r));
    let out = "";
    await runService(d, { argv: ["-h"], stdout: { write: (s: string) => (out += s) }, exit });
    assert.equal(await exited, 0);
    assert.match(out, /Usage: svc /);
  });
});

describe("runProgram with several targets", () => {
  const make = () => {
    const a = scripted("alpha");
    const b = scripted("beta");
    const c = scripted("gamma");
    return { a, b, c, program: { name: "multi", summary: "all in one", targets: [a.d, b.d, c.d], all: ["alpha", "beta"] } satisfies Program };
  };

  it("starts what --target=all names, in one process, each with its own settings and logger", async () => {
    const { a, b, c, program } = make();
    const h = harness(program, ["--alpha.port=11", "--name=shared"], { BETA__PORT: "12", LOG_LEVEL: "info" });
    await h.running;
    assert.deepEqual([a.seen.started, b.seen.started, c.seen.started], [1, 1, 0]);
    assert.deepEqual([a.seen.configs[0]?.port, b.seen.configs[0]?.port], [11, 12]);
    assert.deepEqual([a.seen.configs[0]?.name, b.seen.configs[0]?.name], ["shared", "shared"]);
    h.signal("SIGTERM");
    assert.equal(await h.exited, 0);
    assert.deepEqual([a.seen.closed, b.seen.closed], [1, 1]);
  });

  it("takes a comma list from --target or TARGET", async () => {
    const { a, b, c, program } = make();
    const h = harness(program, [], { TARGET: "gamma,beta" });
    await h.running;
    assert.deepEqual([a.seen.started, b.seen.started, c.seen.started], [0, 1, 1]);
    h.signal("SIGTERM");
    assert.equal(await h.exited, 0);
    // One target alone may take an unprefixed server setting.
    const alone = make();
    const h2 = harness(alone.program, ["--target", "alpha", "--port=7"]);
    await h2.running;
    assert.equal(alone.a.seen.configs[0]?.port, 7);
    h2.signal("SIGTERM");
    assert.equal(await h2.exited, 0);
  });

  it("refuses, with exit 2 and the setting named: an unknown target, a shared server setting, a flag no selected target reads", async () => {
    const cases: [string[], Record<string, string>, RegExp][] = [
      [["--target=alpha,delta"], {}, /--target\/TARGET: unknown target "delta"; targets: all, alpha, beta, gamma/],
      [[], { PORT: "80" }, /--port\/PORT \(alpha\): would be shared by the targets alpha, beta; give it per target/],
      [["--target=alpha", "--gamma.port=3"], {}, /--gamma\.port: is read only by gamma, which is not a selected target/],
      [["--nope"], {}, /--nope: unknown flag/],
    ];
    for (const [argv, env, re] of cases) {
      const { a, b, program } = make();
      const h = harness(program, argv, env);
      assert.equal(await h.exited, 2, argv.join(" "));
      assert.match(h.err(), re);
      assert.equal(a.seen.started + b.seen.started, 0);
    }
  });

  it("prints every target and the per-target forms for --help", async () => {
    const { program } = make();
    const h = harness(program, ["--help"]);
    assert.equal(await h.exited, 0);
    assert.match(h.out(), /Targets \(--target\/TARGET; default "all" = alpha,beta\):\n {2}alpha +alpha summary/);
    assert.match(h.out(), /gamma settings/);
    assert.match(h.out(), /per target: --beta\.port\/BETA__PORT/);
  });

  it("closes the targets that started when another one fails, and exits 1", async () => {
    const { a, program } = make();
    const failing = scripted("beta", {
      start: async () => {
        throw new Error("no");
      },
    });
    const h = harness({ ...program, targets: [a.d, failing.d] });
    assert.equal(await h.exited, 1);
    assert.equal(a.seen.closed, 1);
    assert.equal(h.lines.find((l) => l.msg === "start-up failed")?.service, "beta");
  });

  it("lets a target find the others of its process (colocated): their handles once started, nothing for the rest", async () => {
    const { a, b, c, program } = make();
    const seen: { beta?: ServiceHandle; gamma?: Promise<ServiceHandle> | undefined } = {};
    const handleOfBeta: ServiceHandle = { close: async () => {} };
    let releaseBeta!: () => void;
    const betaMayStart = new Promise<void>((r) => (releaseBeta = r));
    const alpha = scripted("alpha", {
      start: async (ctx) => {
        seen.gamma = ctx.colocated("gamma");
        const beta = ctx.colocated("beta");
        assert.ok(beta, "beta runs in this process");
        // alpha is not held up by beta: it waits only when it needs beta.
        releaseBeta();
        seen.beta = await beta;
        return { close: async () => {} };
      },
    });
    const beta = scripted("beta", {
      start: async () => {
        await betaMayStart;
        return handleOfBeta;
      },
    });
    const h = harness({ ...program, targets: [alpha.d, beta.d, c.d] });
    await h.running;
    assert.equal(seen.beta, handleOfBeta);
    assert.equal(seen.gamma, undefined, "gamma is not a selected target");
    assert.deepEqual([a.seen.started, b.seen.started], [0, 0]);
    h.signal("SIGTERM");
    assert.equal(await h.exited, 0);
  });

  it("derives the deadline from the largest SHUTDOWN_TIMEOUT plus a margin of 1 to 5 s", () => {
    assert.equal(shutdownDeadlineMs(0), 1_000);
    assert.equal(shutdownDeadlineMs(2_000), 4_000);
    assert.equal(shutdownDeadlineMs(10_000), 15_000);
  });
});
