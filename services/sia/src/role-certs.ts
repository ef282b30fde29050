/**
 * Role certificates: for every `<domain>:role.<role>` of TARGET_DOMAIN_ROLES, a CSR signed with the
 * identity key, sent to ZTS over mutual TLS with the identity certificate, and the answer written to
 * the role certificate file (and the identity key to the role key file when asked), as
 * AthenZ/k8s-athenz-sia v3.6.0 does (`pkg/certificate/identity.go` `GetX509RoleCert` and
 * `PrepareRoleCsrOptions`, `pkg/certificate/service.go` `writeFiles`):
 *
 * - subject: the role certificate subject of `pkg/config/derived-cert-subject.go` (default `OU=Athenz`)
 *   plus `CN=<domain>:role.<role>`, in Go's `pkix.Name.ToRDNSequence` order;
 * - SANs, in `third_party/util/crypto.go` `MarshalSANs` order: DNS `<service>.<identity domain with
 *   '.' -> '-'>.<DNS_SUFFIX>`, email `<identity domain>.<service>@<DNS_SUFFIX>` (the principal, which
 *   ZTS `X509RoleCertRequest.validateRolePrincipal` checks), IP `<POD_IP>` when set, URI
 *   `spiffe://<domain>/ra/<role>` (`pkg/util/athenz.go` `RoleSpiffeURI`);
 * - `expiryTime`: the identity certificate's remaining minutes + 5 (`DEFAULT_ROLE_CERT_EXPIRY_TIME_BUFFER_MINUTES`),
 *   so a role certificate never outlives the identity it was issued to by more than that.
 *
 * They are fetched in init mode with the identity, and in refresh/run mode again after every identity
 * refresh and at two thirds of their lifetime (or REFRESH_INTERVAL, if sooner). One role failing does
 * not hold back the others (k8s-athenz-sia fetches all or writes none); a failing role retries with the
 * shared backoff while its previous certificate stays on disk.
 */
import { createPrivateKey, createPublicKey, type KeyObject, webcrypto, X509Certificate } from "node:crypto";
import { ipToBytes } from "@k8s-athenz-identity/identity/ip";
import type { Logger } from "@k8s-athenz-identity/shared/logger";
import * as asn1js from "asn1js";
import * as pkijs from "pkijs";
import { Counter, Gauge, type Registry } from "prom-client";
import { toPem } from "./csr.js";
import { writeFileAtomic } from "./output-files.js";
import { createRefresher, type Refresher } from "./refresher.js";
import { type Clock, refreshDelay } from "./scheduler.js";
import { type DomainRole, generatePath, type RoleCertFeature, roleName } from "./token-config.js";
import type { ZtsTokenClient } from "./zts-token-client.js";

/** k8s-athenz-sia `DEFAULT_ROLE_CERT_EXPIRY_TIME_BUFFER_MINUTES`. */
export const ROLE_CERT_EXPIRY_BUFFER_MINUTES = 5;

/** One subject attribute: OID and value. */
export type SubjectAttribute = [oid: string, value: string];

/** k8s-athenz-sia's default role certificate subject without CERT_SUBJECT: `OU=Athenz` (`default.go`). */
export const DEFAULT_ROLE_SUBJECT: SubjectAttribute[] = [["2.5.4.11", "Athenz"]];

/** What a role CSR is built from. */
export interface RoleCsrInput {
  /** The identity's domain and service (the principal). */
  domain: string;
  service: string;
  /** The role asked for. */
  target: DomainRole;
  dnsSuffix: string;
  podIp: string | undefined;
  /** Subject attributes before the CN, in order. Default {@link DEFAULT_ROLE_SUBJECT}. */
  subject?: SubjectAttribute[];
}

const engine = new pkijs.CryptoEngine({
  name: "node-webcrypto",
  crypto: webcrypto as unknown as ConstructorParameters<typeof pkijs.CryptoEngine>[0]["crypto"],
});

/** The SANs of a role CSR (k8s-athenz-sia `PrepareRoleCsrOptions`). */
export function roleCsrSans(i: RoleCsrInput): { dns: string[]; emails: string[]; ips: string[]; uris: string[] } {
  return {
    dns: [`${i.service}.${i.domain.replaceAll(".", "-")}.${i.dnsSuffix}`],
    emails: [`${i.domain}.${i.service}@${i.dnsSuffix}`],
    ips: i.podIp ? [i.podIp] : [],
    uris: [`spiffe://${i.target.domain}/ra/${i.target.role}`],
  };
}

/** Go's asn1 marshals a string as PrintableString when it can, else UTF8String. */
function directoryString(value: string): asn1js.PrintableString | asn1js.Utf8String {
  return /^[A-Za-z0-9 '()+,\-./:=?]*$/.test(value) ? new asn1js.PrintableString({ value }) : new asn1js.Utf8String({ value });
}

/** WebCrypto keys for a PEM private key (RSA or EC P-256; PKCS#1, SEC1 or PKCS#8). */
async function signingKeys(key: KeyObject): Promise<{ privateKey: webcrypto.CryptoKey; publicKey: webcrypto.CryptoKey }> {
  const type = key.asymmetricKeyType;
  let algorithm: webcrypto.RsaHashedImportParams | webcrypto.EcKeyImportParams;
  if (type === "rsa") algorithm = { name: "RSASSA-PKCS1-v1_5", hash: "SHA-256" };
  else if (type === "ec" && key.asymmetricKeyDetails?.namedCurve === "prime256v1") algorithm = { name: "ECDSA", namedCurve: "P-256" };
  else
    throw new Error(
      `the identity key is ${type}${key.asymmetricKeyDetails?.namedCurve ? ` ${key.asymmetricKeyDetails.namedCurve}` : ""}: role CSRs need RSA or EC P-256`,
    );
  return {
    privateKey: key.toCryptoKey(algorithm, false, ["sign"]) as webcrypto.CryptoKey,
    publicKey: createPublicKey(key).toCryptoKey(algorithm, true, ["verify"]) as webcrypto.CryptoKey,
  };
}

/** Builds and signs the role CSR with the identity key (PEM). */
export async function createRoleCsr(keyPem: string, i: RoleCsrInput): Promise<string> {
  const keys = await signingKeys(createPrivateKey(keyPem));
  const csr = new pkijs.CertificationRequest();
  csr.version = 0;
  const attrs: SubjectAttribute[] = [...(i.subject ?? DEFAULT_ROLE_SUBJECT), ["2.5.4.3", roleName(i.target)]];
  // One RDN per attribute, as Go writes a single-valued pkix.Name.
  const rdns = attrs.map(
    ([type, value]) => new asn1js.Set({ value: [new pkijs.AttributeTypeAndValue({ type, value: directoryString(value) }).toSchema()] }),
  );
  csr.subject = pkijs.RelativeDistinguishedNames.fromBER(new asn1js.Sequence({ value: rdns }).toBER(false));
  await csr.subjectPublicKeyInfo.importKey(keys.publicKey, engine);
  const sans = roleCsrSans(i);
  const names = [
    ...sans.dns.map((value) => new pkijs.GeneralName({ type: 2, value })),
    ...sans.emails.map((value) => new pkijs.GeneralName({ type: 1, value })),
    ...sans.ips.map((value) => new pkijs.GeneralName({ type: 7, value: new asn1js.OctetString({ valueHex: ipToBytes(value).slice().buffer }) })),
    ...sans.uris.map((value) => new pkijs.GeneralName({ type: 6, value })),
  ];
  const extensions = new pkijs.Extensions({
    extensions: [new pkijs.Extension({ extnID: "2.5.29.17", critical: false, extnValue: new pkijs.GeneralNames({ names }).toSchema().toBER(false) })],
  });
  csr.attributes = [new pkijs.Attribute({ type: "1.2.840.113549.1.9.14", values: [extensions.toSchema()] })];
  await csr.sign(keys.privateKey, "SHA-256", engine);
  return toPem(csr.toSchema().toBER(false), "CERTIFICATE REQUEST");
}

/** `expiryTime` of a role certificate request: the identity's remaining whole minutes + 5. */
export function roleCertExpiryMinutes(identityNotAfter: number, now: number): number {
  return Math.trunc((identityNotAfter - now) / 60_000) + ROLE_CERT_EXPIRY_BUFFER_MINUTES;
}

/** The identity the role certificates are requested with. Secrets: never logged. */
export interface IdentitySnapshot {
  keyPem: string;
  certPem: string;
  notAfter: number;
}

/** A role certificate held. */
export interface HeldRoleCert {
  certPem: string;
  notBefore: number;
  notAfter: number;
  serialNumber: string;
  certFile: string;
}

export interface RoleCertManagerOptions {
  feature: RoleCertFeature;
  /** The identity's domain and service. */
  domain: string;
  service: string;
  dnsSuffix: string;
  podIp: string | undefined;
  subject?: SubjectAttribute[];
  identity: () => IdentitySnapshot | undefined;
  zts: ZtsTokenClient;
  clock: Clock;
  logger: Logger;
  registry: Registry;
  fileMode: number;
  /** REFRESH_INTERVAL: longest time between two requests for one role. */
  refreshIntervalMs: number;
  /** Backoff bounds (tests shorten them). */
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Called after every request for a role (tests await outcomes with it). */
  onResult?: (e: { role: string; ok: boolean; error?: Error }) => void;
}

export interface RoleCertManager {
  /** Fetches and writes every role certificate not held yet; throws the first failure (init mode). */
  fetchAll(): Promise<void>;
  /** Starts keeping them fresh (refresh and run modes); the first round runs at once. */
  start(): void;
  /** Fetch every role again now (after an identity refresh). */
  identityChanged(): void;
  stop(): Promise<void>;
  /** What is held, by `<domain>:role.<role>`. */
  readonly held: ReadonlyMap<string, HeldRoleCert>;
}

export function createRoleCertManager(o: RoleCertManagerOptions): RoleCertManager {
  const log = o.logger.child({ component: "role-certs" });
  const held = new Map<string, HeldRoleCert>();
  const expiry = new Gauge({
    name: "sia_role_certificate_expiry_timestamp_seconds",
    help: "notAfter of the role certificate held, by role of TARGET_DOMAIN_ROLES (Unix seconds)",
    labelNames: ["role"] as const,
    registers: [o.registry],
  });
  const attempts = new Counter({
    name: "sia_role_certificate_requests_total",
    help: "role certificate requests to ZTS by role of TARGET_DOMAIN_ROLES and outcome (success, denied, unavailable, rejected, local)",
    labelNames: ["role", "outcome"] as const,
    registers: [o.registry],
  });

  const fetchOne = async (target: DomainRole): Promise<HeldRoleCert> => {
    const name = roleName(target);
    const id = o.identity();
    if (!id) throw Object.assign(new Error(`role certificate ${name}: no identity certificate yet`), { kind: "local" });
    try {
      const csr = await createRoleCsr(id.keyPem, {
        domain: o.domain,
        service: o.service,
        target,
        dnsSuffix: o.dnsSuffix,
        podIp: o.podIp,
        subject: o.subject,
      });
      const certPem = await o.zts.postRoleCertificate({ csr, expiryTime: roleCertExpiryMinutes(id.notAfter, o.clock.now()) });
      const x = new X509Certificate(certPem);
      const certFile = generatePath(o.feature.cert.format, target.domain, target.role, o.feature.cert.delimiter);
      await writeFileAtomic(certFile, certPem, o.fileMode);
      if (o.feature.key) {
        await writeFileAtomic(generatePath(o.feature.key.format, target.domain, target.role, o.feature.key.delimiter), id.keyPem, o.fileMode);
      }
      const h: HeldRoleCert = {
        certPem,
        notBefore: Date.parse(x.validFrom),
        notAfter: Date.parse(x.validTo),
        serialNumber: x.serialNumber,
        certFile,
      };
      held.set(name, h);
      expiry.set({ role: name }, h.notAfter / 1000);
      attempts.inc({ role: name, outcome: "success" });
      log.info({ role: name, serialNumber: h.serialNumber, notAfter: new Date(h.notAfter).toISOString(), certFile }, "role certificate written");
      o.onResult?.({ role: name, ok: true });
      return h;
    } catch (err) {
      attempts.inc({ role: name, outcome: (err as { kind?: string }).kind ?? "local" });
      o.onResult?.({ role: name, ok: false, error: err as Error });
      throw err;
    }
  };

  let refresher: Refresher | undefined;

  return {
    held,
    async fetchAll() {
      // Only roles not held yet (so a retry asks only for what is still missing).
      for (const t of o.feature.targets) if (!held.has(roleName(t))) await fetchOne(t);
    },
    start() {
      refresher = createRefresher({
        clock: o.clock,
        initialBackoffMs: o.initialBackoffMs,
        maxBackoffMs: o.maxBackoffMs,
        onRetry: (key, error, delayMs, failures) => {
          const h = held.get(key);
          log.warn(
            { role: key, err: error, failures, retryInMs: delayMs, notAfter: h ? new Date(h.notAfter).toISOString() : undefined },
            "role certificate request failed; retrying",
          );
        },
      });
      for (const t of o.feature.targets) {
        refresher.add(
          roleName(t),
          async () => {
            const h = await fetchOne(t);
            return { ok: true, nextAt: o.clock.now() + refreshDelay(h, o.clock.now(), o.refreshIntervalMs, 0, Math.random) };
          },
          o.clock.now(),
        );
      }
    },
    identityChanged() {
      refresher?.triggerAll();
    },
    async stop() {
      await refresher?.stop();
    },
  };
}
