/**
 * The gateway's durable record of confirmed instances: a JetStream key-value bucket (default
 * "gateway-instances") holding one {@link InstanceRecord} (proto/athenz/identity/v1/gateway_instances.proto)
 * per (instanceId, domain, service) that this provider confirmed to ZTS.
 *
 * - Every replica writes a record when it confirms an instance (register or refresh), with a
 *   per-message TTL (`Nats-TTL`, NATS 2.11+) covering the certificate lifetime it granted: once those
 *   certificates have expired nothing can be refreshed, so the record expires by itself and the
 *   bucket holds only instances whose certificates still matter.
 * - The revocation leader marks a record "gone" (compare-and-set on its revision) once it has
 *   evidence that the pod is gone, sends the DELETE to ZTS, then removes the record (compare-and-set
 *   again, so a confirmation written meanwhile is never lost). The mark is the durable work item: a
 *   new leader sends what the old one owed.
 *
 * Keys are `<instanceId>.<domain>.<service>` in lower case (ZTS lower-cases all three before it
 * stores its certificate record), valid NATS subject tokens by construction: the instance id is a
 * pod UID, domain and service are Athenz names ([a-zA-Z0-9_][a-zA-Z0-9_-]*, dot-separated).
 */
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { type InstanceRecord, InstanceRecordSchema } from "@k8s-athenz-identity/api/gateway_instances";
import { JetStreamApiCodes, JetStreamApiError, type JetStreamClient, jetstream } from "@nats-io/jetstream";
import { type KV, Kvm } from "@nats-io/kv";
import type { NatsConnection } from "@nats-io/transport-node";

export type { InstanceRecord };

/** What names an instance at ZTS (with the provider). */
export interface InstanceName {
  domain: string;
  service: string;
  instanceId: string;
}

const UID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const SIMPLE = /^[a-z0-9_][a-z0-9_-]*$/;

/** `<instanceId>.<domain>.<service>`, lower case. Throws a RangeError for a name that cannot be a key. */
export function recordKey(n: InstanceName): string {
  const id = n.instanceId.toLowerCase();
  const domain = n.domain.toLowerCase();
  const service = n.service.toLowerCase();
  if (!UID.test(id)) throw new RangeError("instance id is not a pod UID");
  if (!SIMPLE.test(service) || !domain.split(".").every((t) => SIMPLE.test(t))) throw new RangeError("not an Athenz domain and service");
  return `${id}.${domain}.${service}`;
}

/** The instance a key names, or undefined for a key this store did not write. */
export function parseRecordKey(key: string): InstanceName | undefined {
  const tokens = key.split(".");
  if (tokens.length < 3) return undefined;
  const [instanceId, ...rest] = tokens as [string, ...string[]];
  const service = rest.pop()!;
  const n = { instanceId, domain: rest.join("."), service };
  try {
    return recordKey(n) === key ? n : undefined;
  } catch {
    return undefined;
  }
}

/** A record as read from the bucket, with the revision a compare-and-set must name. */
export interface StoredRecord {
  key: string;
  record: InstanceRecord;
  revision: number;
}

/** What a confirmation writes. */
export interface Confirmed extends InstanceName {
  provider: string;
  namespace: string;
  podName: string;
}

export interface InstanceRecordStore {
  /** Writes the record of a confirmation, alive for `ttlMs`; resolves once JetStream has stored it. */
  put(c: Confirmed, ttlMs: number): Promise<void>;
  /** The current record, or undefined when there is none (never written, removed or expired). */
  get(key: string): Promise<StoredRecord | undefined>;
  /**
   * Marks the record gone unless it changed since it was read. Returns the marked record (its new
   * revision), or undefined when it changed (a newer confirmation: look again) or has expired.
   */
  markGone(s: StoredRecord, reason: "deleted" | "finished"): Promise<StoredRecord | undefined>;
  /** Removes the record unless it changed since it was read; false when it changed. */
  remove(s: StoredRecord): Promise<boolean>;
  /** Every key, or the keys of one instance id. */
  keys(instanceId?: string): Promise<string[]>;
}

export interface InstanceRecordStoreOptions {
  nc: NatsConnection;
  bucket: string;
  /** Replicas of the bucket's stream (1, 3 or 5); set at creation. */
  replicas: number;
  /** Deadline of one JetStream call. */
  timeoutMs: number;
  now?: () => number;
}

/** How long a removal's purge marker (and an expired record's delete marker) stays in the bucket. */
const MARKER_TTL_MS = 60_000;

/** Seconds for a `Nats-TTL` header: at least 1 (the server's minimum). */
const ttlHeader = (ms: number) => `${Math.max(1, Math.ceil(ms / 1000))}s`;

function isWrongLastSequence(err: unknown): boolean {
  return err instanceof JetStreamApiError && err.code === JetStreamApiCodes.StreamWrongLastSequence;
}

/**
 * Opens (creating when absent) the bucket, with per-message TTLs allowed (`markerTTL`), and returns
 * the store. Needs NATS 2.11 or later.
 */
export async function openInstanceRecordStore(o: InstanceRecordStoreOptions): Promise<InstanceRecordStore> {
  const now = o.now ?? Date.now;
  const js: JetStreamClient = jetstream(o.nc, { timeout: o.timeoutMs });
  const kv: KV = await new Kvm(js).create(o.bucket, {
    history: 1,
    replicas: o.replicas,
    markerTTL: MARKER_TTL_MS,
    description: "gateway: instances confirmed to ZTS, by <instanceId>.<domain>.<service>",
  });
  const subject = (key: string) => `$KV.${o.bucket}.${key}`;

  const write = async (key: string, record: InstanceRecord, ttlMs: number, revision?: number): Promise<number | undefined> => {
    try {
      const ack = await js.publish(subject(key), toBinary(InstanceRecordSchema, record), {
        ttl: ttlHeader(ttlMs),
        ...(revision !== undefined ? { expect: { lastSubjectSequence: revision } } : {}),
      });
      return ack.seq;
    } catch (err) {
      if (revision !== undefined && isWrongLastSequence(err)) return undefined;
      throw err;
    }
  };

  return {
    async put(c, ttlMs) {
      const key = recordKey(c);
      const at = now();
      const record = create(InstanceRecordSchema, {
        provider: c.provider,
        domain: c.domain.toLowerCase(),
        service: c.service.toLowerCase(),
        instanceId: c.instanceId.toLowerCase(),
        namespace: c.namespace,
        podName: c.podName,
        confirmedAt: timestampFromMs(at),
        expiresAt: timestampFromMs(at + ttlMs),
      });
      await write(key, record, ttlMs);
    },
    async get(key) {
      const e = await kv.get(key);
      if (e?.operation !== "PUT" || e.length === 0) return undefined;
      let record: InstanceRecord;
      try {
        record = fromBinary(InstanceRecordSchema, e.value);
      } catch {
        return undefined; // not a record this store wrote: nothing to revoke
      }
      if (record.instanceId === "" || recordKey(record) !== key) return undefined;
      // The server removes an expired message on its own schedule; past its lifetime it is gone for us.
      if (record.expiresAt && timestampDate(record.expiresAt).getTime() <= now()) return undefined;
      return { key, record, revision: e.revision };
    },
    async markGone(s, reason) {
      const left = s.record.expiresAt ? timestampDate(s.record.expiresAt).getTime() - now() : 0;
      if (left <= 0) return undefined;
      const record = create(InstanceRecordSchema, { ...s.record, goneAt: timestampFromMs(now()), goneReason: reason });
      const revision = await write(s.key, record, left, s.revision);
      return revision === undefined ? undefined : { key: s.key, record, revision };
    },
    async remove(s) {
      try {
        await kv.purge(s.key, { previousSeq: s.revision, ttl: ttlHeader(MARKER_TTL_MS) });
        return true;
      } catch (err) {
        if (isWrongLastSequence(err)) return false;
        throw err;
      }
    },
    async keys(instanceId) {
      const it = await kv.keys(instanceId === undefined ? ">" : `${instanceId.toLowerCase()}.>`);
      const out: string[] = [];
      for await (const k of it) out.push(k);
      return out;
    },
  };
}
