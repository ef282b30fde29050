/**
 * Real X.509 material for tests, made by the `openssl` command line (the same tool operators use),
 * so TLS in tests is real TLS.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";

export interface Pem {
  certFile: string;
  keyFile: string;
  certPem: string;
  keyPem: string;
}

export type KeyType = "rsa" | "ec";

function openssl(args: string[], cwd: string): void {
  execFileSync("openssl", args, { cwd, stdio: ["ignore", "ignore", "pipe"] });
}

function newKey(file: string, type: KeyType, cwd: string): void {
  if (type === "rsa") openssl(["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", file], cwd);
  else openssl(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", file], cwd);
}

function read(dir: string, name: string): Pem {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  return { certFile, keyFile, certPem: readFileSync(certFile, "utf8"), keyPem: readFileSync(keyFile, "utf8") };
}

/** A self-signed CA. */
export function createCa(dir: string, name: string, cn = `${name} test CA`, type: KeyType = "ec"): Pem {
  mkdirSync(dir, { recursive: true });
  newKey(`${name}.key`, type, dir);
  openssl(
    [
      "req",
      "-x509",
      "-new",
      "-key",
      `${name}.key`,
      "-out",
      `${name}.crt`,
      "-days",
      "2",
      "-subj",
      `/CN=${cn}`,
      "-addext",
      "basicConstraints=critical,CA:TRUE",
      "-addext",
      "keyUsage=critical,keyCertSign,cRLSign",
    ],
    dir,
  );
  return read(dir, name);
}

export interface IssueOptions {
  cn: string;
  dns?: string[];
  ips?: string[];
  /** "server", "client" or both (default). */
  usage?: "server" | "client" | "both";
  type?: KeyType;
  days?: number;
}

/** A leaf certificate signed by `ca`. */
export function issueCert(dir: string, name: string, ca: Pem, o: IssueOptions): Pem {
  mkdirSync(dir, { recursive: true });
  newKey(`${name}.key`, o.type ?? "ec", dir);
  const san = [...(o.dns ?? []).map((d) => `DNS:${d}`), ...(o.ips ?? []).map((i) => `IP:${i}`)];
  const eku = { server: "serverAuth", client: "clientAuth", both: "serverAuth,clientAuth" }[o.usage ?? "both"];
  const ext = [`basicConstraints=critical,CA:FALSE`, `extendedKeyUsage=${eku}`, `keyUsage=critical,digitalSignature,keyEncipherment`];
  if (san.length) ext.push(`subjectAltName=${san.join(",")}`);
  writeFileSync(join(dir, `${name}.ext`), `${ext.join("\n")}\n`);
  openssl(["req", "-new", "-key", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${o.cn}`], dir);
  openssl(
    [
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      ca.certFile,
      "-CAkey",
      ca.keyFile,
      "-CAcreateserial",
      "-out",
      `${name}.crt`,
      "-days",
      String(o.days ?? 1),
      "-extfile",
      `${name}.ext`,
    ],
    dir,
  );
  return read(dir, name);
}
