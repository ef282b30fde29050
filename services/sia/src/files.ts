/**
 * Writes the key, certificate and CA bundle so that an application never sees a half-written file
 * or a key from one generation with a certificate from another.
 *
 * Layout (the Kubernetes AtomicWriter pattern, as in projected volumes), in the directory of
 * CERT_FILE:
 * ```
 *   ..sia-<generation>/key.pem   (0600)  cert.pem  ca.pem    one directory per certificate, never modified
 *   ..sia-data -> ..sia-<generation>                          switched with one rename(2)
 *   service.key.pem  -> ..sia-data/key.pem                    KEY_FILE, CERT_FILE, CA_CERT_FILE: stable
 *   service.cert.pem -> ..sia-data/cert.pem                   symlinks, created once
 *   ca.cert.pem      -> ..sia-data/ca.pem
 * ```
 * A generation is written and fsynced completely before `..sia-data` is switched, so every path an
 * application opens resolves to a complete file. Key and certificate change together with one
 * rename. An application that opens KEY_FILE and then CERT_FILE can in theory straddle a switch; to
 * read a consistent pair it can resolve `..sia-data` once (realpath) and read both from there, or
 * check that the key matches the certificate and read again. The previous generation is kept until
 * the next switch, so a path resolved just before a switch stays readable.
 */
import { randomBytes } from "node:crypto";
import { mkdir, open, readdir, readFile, readlink, rename, rm, symlink, unlink } from "node:fs/promises";
import { basename, dirname, join, relative, resolve } from "node:path";

export interface Credentials {
  /** The private key (PEM). A secret: never log it. */
  keyPem: string;
  certPem: string;
  /** The CA chain from ZTS (`x509CertificateSigner`); may be empty. */
  caPem: string;
}

export interface CredentialStoreOptions {
  /** KEY_FILE: the stable path of the key. */
  keyFile: string;
  /** CERT_FILE: the stable path of the certificate; its directory holds the generations. */
  certFile: string;
  /** CA_CERT_FILE: the stable path of the CA bundle. */
  caCertFile: string;
  /** Called after a generation is written and before it is switched in (tests simulate a crash here). */
  beforeSwitch?: (generationDir: string) => Promise<void> | void;
}

export interface CredentialStore {
  /** Writes a new generation and switches to it. */
  write(c: Credentials): Promise<void>;
  /** The current key and certificate, or undefined when there are none (or they cannot be read). */
  read(): Promise<{ keyPem: string; certPem: string } | undefined>;
  /** The directory holding the generations and the `..sia-data` link. */
  readonly dataDir: string;
}

const DATA_LINK = "..sia-data";
const GEN_PREFIX = "..sia-";

async function writeSynced(path: string, data: string, mode: number): Promise<void> {
  const fh = await open(path, "wx", mode);
  try {
    await fh.writeFile(data);
    await fh.chmod(mode); // the umask must not widen or narrow it
    await fh.sync();
  } finally {
    await fh.close();
  }
}

async function syncDir(dir: string): Promise<void> {
  const fh = await open(dir, "r");
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** Points `linkPath` at `target` atomically (a temporary symlink renamed over it). */
async function replaceSymlink(target: string, linkPath: string): Promise<void> {
  const tmp = join(dirname(linkPath), `.${basename(linkPath)}.tmp-${randomBytes(6).toString("hex")}`);
  await symlink(target, tmp);
  try {
    await rename(tmp, linkPath);
  } catch (err) {
    await unlink(tmp).catch(() => undefined);
    throw err;
  }
}

export function createCredentialStore(opts: CredentialStoreOptions): CredentialStore {
  const dataDir = dirname(resolve(opts.certFile));
  const dataLink = join(dataDir, DATA_LINK);
  const stable: Array<[string, string]> = [
    [resolve(opts.keyFile), "key.pem"],
    [resolve(opts.certFile), "cert.pem"],
    [resolve(opts.caCertFile), "ca.pem"],
  ];

  /** Makes the stable path a symlink into `..sia-data` unless it already is one. */
  const ensureStableLink = async (path: string, file: string) => {
    const target = dirname(path) === dataDir ? join(DATA_LINK, file) : join(dataLink, file);
    const current = await readlink(path).catch(() => undefined);
    if (current === target) return;
    await mkdir(dirname(path), { recursive: true });
    await replaceSymlink(target, path);
  };

  return {
    dataDir,
    async write(c) {
      await mkdir(dataDir, { recursive: true });
      const previous = await readlink(dataLink).catch(() => undefined);
      const gen = `${GEN_PREFIX}${new Date().toISOString().replace(/[:.]/g, "-")}-${randomBytes(4).toString("hex")}`;
      const genDir = join(dataDir, gen);
      await mkdir(genDir, { mode: 0o755 });
      await writeSynced(join(genDir, "key.pem"), c.keyPem, 0o600);
      await writeSynced(join(genDir, "cert.pem"), c.certPem, 0o644);
      await writeSynced(join(genDir, "ca.pem"), c.caPem, 0o644);
      await syncDir(genDir);
      await opts.beforeSwitch?.(genDir);
      await replaceSymlink(gen, dataLink);
      for (const [path, file] of stable) await ensureStableLink(path, file);
      await syncDir(dataDir);
      // Keep the new and the previous generation; remove older ones (and leftovers of a crash).
      for (const name of await readdir(dataDir)) {
        if (name.startsWith(GEN_PREFIX) && name !== DATA_LINK && name !== gen && name !== previous) {
          await rm(join(dataDir, name), { recursive: true, force: true });
        }
      }
    },
    async read() {
      try {
        // Read both through the resolved generation, so they are one pair.
        const gen = await readlink(dataLink);
        const dir = resolve(dataDir, gen);
        const [keyPem, certPem] = await Promise.all([readFile(join(dir, "key.pem"), "utf8"), readFile(join(dir, "cert.pem"), "utf8")]);
        return { keyPem, certPem };
      } catch {
        // No generation of ours: a certificate written by another SIA at the stable paths.
        try {
          const [keyPem, certPem] = await Promise.all([readFile(opts.keyFile, "utf8"), readFile(opts.certFile, "utf8")]);
          return { keyPem, certPem };
        } catch {
          return undefined;
        }
      }
    },
  };
}

/** For a test or an application: the generation directory `..sia-data` currently points at. */
export async function currentGeneration(dataDir: string): Promise<string> {
  return relative(dataDir, resolve(dataDir, await readlink(join(dataDir, DATA_LINK))));
}
