/**
 * IP addresses and CIDRs, read one way for the whole product (gateway, csr-inspector, SIA) with
 * ipaddr.js. Every textual form an address can arrive in has one answer:
 *
 * | input                               | reads as        | why |
 * |-------------------------------------|-----------------|-----|
 * | `10.1.2.3`                          | `10.1.2.3`      | |
 * | `::ffff:10.1.2.3` (IPv4-mapped)     | `10.1.2.3`      | a dual-stack socket reports an IPv4 peer this way, and Java's `InetAddress` (ZTS) turns a 16-byte mapped IP SAN into the IPv4 address: it is the same host |
 * | `FD00::1`, `fd00:0:0:0:0:0:0:1`, `fd00:0000::0001` | `fd00::1` | RFC 5952 canonical form; ZTS sends the uncompressed form (`InetAddress.getHostAddress`) |
 * | `10.01.2.3` (leading zero)          | not an address  | parsers disagree: inet_aton and Go before 1.17 read `01` as octal, ipaddr.js as decimal, Node's `net.isIP` and Go 1.17+ refuse it. A value two readers read differently is no evidence for either address (the CVE-2021-29923 class), so it is refused, and a setting holding it stops start-up |
 * | `10.1.2`, `0x0a.1.2.3`, `167838211` | not an address  | shorthand forms, same reason |
 * | `fe80::1%eth0` (zone), `[::1]`, ` 10.1.2.3` | not an address | not an address on the wire |
 *
 * CIDRs: `10.0.0.0/8`, `fd00::/8`; a bare address means that one address (`/32` or `/128`), so
 * PROXY_CIDRS=10.0.0.1 names the proxy at 10.0.0.1. A prefix longer than the family allows, leading
 * zeros in the prefix or the address, and host bits set beyond the prefix are refused.
 */
import ipaddr from "ipaddr.js";

type Address = ipaddr.IPv4 | ipaddr.IPv6;

const FOUR_PART = /^(?:0|[1-9]\d{0,2})(?:\.(?:0|[1-9]\d{0,2})){3}$/;

function parseStrict(text: string): Address | undefined {
  if (text.length === 0 || text.length > 45) return undefined;
  if (FOUR_PART.test(text)) return ipaddr.IPv4.isValidFourPartDecimal(text) ? ipaddr.IPv4.parse(text) : undefined;
  if (!text.includes(":") || text.includes("%") || !ipaddr.IPv6.isValid(text)) return undefined;
  // An embedded IPv4 tail (`::ffff:10.1.2.3`) follows the IPv4 rule too.
  const tail = /(?:^|:)([^:]*\.[^:]*)$/.exec(text)?.[1];
  if (tail !== undefined && !FOUR_PART.test(tail)) return undefined;
  return ipaddr.IPv6.parse(text);
}

/** The address with an IPv4-mapped IPv6 address turned into its IPv4 address. */
function unmap(a: Address): Address {
  return a.kind() === "ipv6" && (a as ipaddr.IPv6).isIPv4MappedAddress() ? (a as ipaddr.IPv6).toIPv4Address() : a;
}

/**
 * The canonical text of an IP address (IPv4 dotted decimal; IPv6 RFC 5952: lower case, zeros
 * compressed; IPv4-mapped IPv6 as IPv4), or undefined when `text` is not exactly one address in a
 * form every reader agrees on (see the table above).
 */
export function normalizeIp(text: string): string | undefined {
  const a = parseStrict(text);
  return a === undefined ? undefined : unmap(a).toString();
}

/** Whether `text` is an IP address in a form every reader agrees on. */
export function isIp(text: string): boolean {
  return parseStrict(text) !== undefined;
}

/** The 4 or 16 bytes of an IP address (for an IP SAN), IPv4-mapped written as 4 bytes. Throws on anything else. */
export function ipToBytes(text: string): Uint8Array {
  const a = parseStrict(text);
  if (a === undefined) throw new Error(`not an IP address: ${JSON.stringify(text.slice(0, 64))}`);
  return Uint8Array.from(unmap(a).toByteArray());
}

/** The canonical text of the 4 or 16 bytes of an IP SAN, or undefined for another length. */
export function ipFromBytes(bytes: Uint8Array): string | undefined {
  if (bytes.length !== 4 && bytes.length !== 16) return undefined;
  return unmap(ipaddr.fromByteArray(Array.from(bytes))).toString();
}

/** A parsed CIDR. */
export interface Cidr {
  /** Canonical text, e.g. "10.0.0.0/8", "fd00::/8", "10.0.0.1/32". */
  readonly text: string;
  readonly family: "ipv4" | "ipv6";
}

/**
 * Parses a CIDR or a bare address (one address: /32 or /128). Returns the reason as a string when
 * it is not one, so a caller can name the setting.
 */
export function parseCidr(text: string): { kind: "cidr"; cidr: Cidr; range: [Address, number] } | { kind: "invalid"; reason: string } {
  const slash = text.indexOf("/");
  const addrText = slash < 0 ? text : text.slice(0, slash);
  const prefixText = slash < 0 ? undefined : text.slice(slash + 1);
  const a = parseStrict(addrText);
  if (a === undefined) return { kind: "invalid", reason: `${JSON.stringify(text.slice(0, 64))} is not a CIDR or an IP address` };
  const addr = unmap(a);
  const max = addr.kind() === "ipv4" ? 32 : 128;
  // A mapped address given with an IPv6 prefix: ::ffff:10.0.0.0/104 is 10.0.0.0/8.
  const shift = addr !== a ? 96 : 0;
  if (prefixText !== undefined && !/^(?:0|[1-9]\d{0,2})$/.test(prefixText)) {
    return { kind: "invalid", reason: `${JSON.stringify(text.slice(0, 64))}: the prefix length is not a number` };
  }
  const prefix = prefixText === undefined ? max : Number(prefixText) - shift;
  if (prefix < 0 || prefix > max) return { kind: "invalid", reason: `${JSON.stringify(text.slice(0, 64))}: prefix longer than /${max + shift}` };
  const network =
    addr.kind() === "ipv4" ? ipaddr.IPv4.networkAddressFromCIDR(`${addr}/${prefix}`) : ipaddr.IPv6.networkAddressFromCIDR(`${addr}/${prefix}`);
  if (network.toString() !== addr.toString()) {
    return { kind: "invalid", reason: `${JSON.stringify(text.slice(0, 64))} has host bits set (the network is ${network}/${prefix})` };
  }
  return { kind: "cidr", cidr: { text: `${addr}/${prefix}`, family: addr.kind() }, range: [addr, prefix] };
}

/** A set of CIDRs to test addresses against. */
export interface CidrSet {
  readonly cidrs: readonly Cidr[];
  /** Whether the address (any accepted textual form) lies in one of the CIDRs. False for a non-address. */
  contains(ip: string): boolean;
}

/** Parses CIDRs (or bare addresses) into a set. Throws an Error naming the first bad entry. */
export function createCidrSet(texts: readonly string[]): CidrSet {
  const ranges: Array<[Address, number]> = [];
  const cidrs: Cidr[] = [];
  for (const t of texts) {
    const p = parseCidr(t);
    if (p.kind === "invalid") throw new Error(p.reason);
    ranges.push(p.range);
    cidrs.push(p.cidr);
  }
  return {
    cidrs,
    contains(ip) {
      const a = parseStrict(ip);
      if (a === undefined) return false;
      const addr = unmap(a);
      return ranges.some(([net, prefix]) => net.kind() === addr.kind() && (addr as ipaddr.IPv4).match(net as ipaddr.IPv4, prefix));
    },
  };
}
