import assert from "node:assert/strict";
import { lstatSync, readdirSync, readFileSync, readlinkSync, realpathSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { tempDir } from "../../../test/support/tmp.js";
import { createCredentialStore, currentGeneration } from "./files.js";

const pair = (n: number) => ({ keyPem: `KEY ${n}\n`.repeat(200), certPem: `CERT ${n}\n`.repeat(200), caPem: `CA ${n}\n` });

describe("credential files", () => {
  const tmp = tempDir("sia-files");
  after(() => tmp.cleanup());

  it("writes key 0600, certificate and CA behind stable paths, and switches key and certificate together", async () => {
    const dir = join(tmp.dir, "a");
    const paths = { keyFile: join(dir, "service.key.pem"), certFile: join(dir, "service.cert.pem"), caCertFile: join(dir, "ca.cert.pem") };
    const store = createCredentialStore(paths);
    await store.write(pair(1));
    assert.equal(readFileSync(paths.keyFile, "utf8"), pair(1).keyPem);
    assert.equal(readFileSync(paths.certFile, "utf8"), pair(1).certPem);
    assert.equal(readFileSync(paths.caCertFile, "utf8"), pair(1).caPem);
    assert.equal(statSync(paths.keyFile).mode & 0o777, 0o600);
    assert.ok(lstatSync(paths.keyFile).isSymbolicLink());
    assert.equal(readlinkSync(paths.keyFile), "..sia-data/key.pem");
    const gen1 = await currentGeneration(dir);
    for (let n = 2; n <= 4; n++) await store.write(pair(n));
    assert.equal(readFileSync(paths.keyFile, "utf8"), pair(4).keyPem);
    assert.equal(readFileSync(paths.certFile, "utf8"), pair(4).certPem);
    assert.deepEqual(await store.read(), { keyPem: pair(4).keyPem, certPem: pair(4).certPem });
    const gens = readdirSync(dir).filter((n) => n.startsWith("..sia-") && n !== "..sia-data");
    assert.equal(gens.length, 2, "the current and the previous generation are kept");
    assert.ok(!gens.includes(gen1));
  });

  it("never shows a partial write: a crash before the switch leaves the previous pair in place", async () => {
    const dir = join(tmp.dir, "b");
    const paths = { keyFile: join(dir, "k.pem"), certFile: join(dir, "c.pem"), caCertFile: join(dir, "ca.pem") };
    await createCredentialStore(paths).write(pair(1));
    const crashing = createCredentialStore({ ...paths, beforeSwitch: () => Promise.reject(new Error("crash")) });
    await assert.rejects(crashing.write(pair(2)), /crash/);
    assert.equal(readFileSync(paths.keyFile, "utf8"), pair(1).keyPem);
    assert.equal(readFileSync(paths.certFile, "utf8"), pair(1).certPem);
    // The next successful write cleans the abandoned generation up.
    await createCredentialStore(paths).write(pair(3));
    assert.equal(readdirSync(dir).filter((n) => n.startsWith("..sia-") && n !== "..sia-data").length, 2);
  });

  it("a reader resolving the generation once always gets a matching, complete pair during rewrites", async () => {
    const dir = join(tmp.dir, "c");
    const paths = { keyFile: join(dir, "k.pem"), certFile: join(dir, "c.pem"), caCertFile: join(dir, "ca.pem") };
    const store = createCredentialStore(paths);
    await store.write(pair(0));
    let writing = true;
    let reads = 0;
    const reader = (async () => {
      while (writing) {
        const gen = realpathSync(join(dir, "..sia-data"));
        const key = readFileSync(join(gen, "key.pem"), "utf8");
        const cert = readFileSync(join(gen, "cert.pem"), "utf8");
        const n = Number(/KEY (\d+)/.exec(key)?.[1]);
        assert.equal(key, pair(n).keyPem, "complete key");
        assert.equal(cert, pair(n).certPem, "certificate of the same generation");
        const viaStable = readFileSync(paths.certFile, "utf8");
        assert.equal(viaStable, pair(Number(/CERT (\d+)/.exec(viaStable)?.[1])).certPem, "the stable path shows a complete certificate");
        reads++;
        await new Promise((r) => setImmediate(r));
      }
    })();
    for (let n = 1; n <= 30; n++) await store.write(pair(n));
    writing = false;
    await reader;
    assert.ok(reads > 5);
  });

  it("replaces a plain file left at KEY_FILE by another agent with the stable link", async () => {
    const dir = join(tmp.dir, "d");
    const paths = { keyFile: join(dir, "k.pem"), certFile: join(dir, "c.pem"), caCertFile: join(dir, "ca.pem") };
    await createCredentialStore(paths).write(pair(1));
    writeFileSync(join(dir, "plain"), "x");
    const other = { ...paths, keyFile: join(dir, "plain") };
    await createCredentialStore(other).write(pair(2));
    assert.ok(lstatSync(join(dir, "plain")).isSymbolicLink());
    assert.equal(readFileSync(join(dir, "plain"), "utf8"), pair(2).keyPem);
  });
});
