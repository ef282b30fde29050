/**
 * Ordering of Kubernetes resourceVersions.
 *
 * The API server documents resourceVersions as opaque strings, but every API server backed by etcd
 * hands out etcd revisions: decimal integers that grow with every write. We compare them as
 * unbounded integers when both are decimal (same result as `BigInt(a) < BigInt(b)`, without
 * allocating: strip leading zeros, then longer is larger, then lexicographic). When either one is
 * not decimal we cannot order them; we then treat a different value as newer, so that a cluster with
 * a non-etcd store still makes progress (ordering is then by arrival only).
 */

const DECIMAL = /^\d+$/;

function stripZeros(s: string): string {
  let i = 0;
  while (i < s.length - 1 && s.charCodeAt(i) === 48) i++;
  return i === 0 ? s : s.slice(i);
}

/** -1 when a < b, 0 when equal, 1 when a > b; NaN when the two cannot be ordered (and differ). */
export function compareResourceVersions(a: string, b: string): number {
  if (a === b) return 0;
  if (!DECIMAL.test(a) || !DECIMAL.test(b)) return Number.NaN;
  const x = stripZeros(a);
  const y = stripZeros(b);
  if (x.length !== y.length) return x.length < y.length ? -1 : 1;
  return x === y ? 0 : x < y ? -1 : 1;
}

/** Whether `incoming` must replace what we hold at `held` (strictly newer, or not orderable and different). */
export function isNewer(incoming: string, held: string): boolean {
  const c = compareResourceVersions(incoming, held);
  return Number.isNaN(c) || c > 0;
}

/** The larger of two resourceVersions (the second when they cannot be ordered). */
export function maxResourceVersion(a: string, b: string): string {
  return isNewer(b, a) ? b : a;
}
