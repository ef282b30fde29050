/**
 * InspectCsr: parse, then policy (key, signature algorithm), then the self-signature (only for keys
 * and algorithms the policy allows, so a huge or exotic key never costs a verification), then the
 * subject and SANs against the same rules InspectAttributes applies. Every violation is reported.
 */
import { create } from "@bufbuild/protobuf";
import type { Violation } from "@k8s-athenz-identity/api/common";
import { type CsrSummary, CsrSummarySchema } from "@k8s-athenz-identity/api/csr_inspector";
import { checkSans, compileSanRules, type ExpectedIdentityInput, type SanPolicyInput, type SanRules, show } from "@k8s-athenz-identity/identity/san";
import { ViolationCode, violation } from "@k8s-athenz-identity/shared";
import { type ParsedCsr, parseCsrPem } from "./csr-parse.js";
import { verifyCsrSignature } from "./csr-verify.js";
import { checkKey, checkSignatureAlgorithm, signatureAlgorithmName } from "./policy.js";

/** Options of {@link inspectCsr} that are not per request. */
export interface CsrInspectOptions {
  /** Largest PEM accepted, in characters. Default 16 KiB. */
  maxPemLength?: number;
  /** Accept RSASSA-PSS signatures (SHA-256/384/512). Default false. */
  allowRsaPss?: boolean;
}

/** What InspectCsr found: every violation, and the summary when the CSR could be parsed. */
export interface CsrInspection {
  violations: Violation[];
  csr: CsrSummary | undefined;
}

/** The summary of a parsed CSR. */
export function summarizeCsr(csr: ParsedCsr): CsrSummary {
  return create(CsrSummarySchema, {
    commonName: csr.commonNames[0] ?? "",
    organizationalUnits: csr.organizationalUnits,
    dnsNames: csr.dnsNames,
    ipAddresses: csr.ipAddresses,
    uris: csr.uris,
    keyAlgorithm: csr.key?.algorithm ?? "",
    keyBits: csr.key?.bits ?? 0,
    keyCurve: csr.key?.curve ?? "",
    signatureAlgorithm: signatureAlgorithmName(csr.signatureAlgorithmOid),
  });
}

/** Checks a parsed CSR against precompiled rules. */
export async function inspectParsedCsr(csr: ParsedCsr, rules: SanRules, opts: CsrInspectOptions = {}): Promise<Violation[]> {
  const out: Violation[] = [];
  const keyViolation = checkKey(csr.key);
  const algViolation = checkSignatureAlgorithm({ oid: csr.signatureAlgorithmOid, pssHashOid: csr.pssHashOid }, csr.key, {
    allowRsaPss: opts.allowRsaPss ?? false,
  });
  if (keyViolation) out.push(keyViolation);
  if (algViolation) out.push(algViolation);
  if (!keyViolation && !algViolation && !(await verifyCsrSignature(csr))) {
    out.push(violation(ViolationCode.CsrSignature, "the CSR's self-signature does not verify", "csr.signature"));
  }

  const expectedCn = rules.commonName;
  if (csr.commonNames.length !== 1) {
    out.push(violation(ViolationCode.CsrCommonName, `the subject must have exactly one CN, it has ${csr.commonNames.length}`, "csr.subject.cn"));
  } else if (csr.commonNames[0]!.toLowerCase() !== expectedCn) {
    out.push(violation(ViolationCode.CsrCommonName, `CN ${show(csr.commonNames[0]!)} is not ${show(expectedCn)}`, "csr.subject.cn"));
  }
  const provider = rules.expected.provider.toLowerCase();
  for (const ou of csr.organizationalUnits) {
    if (ou.toLowerCase() !== provider) {
      out.push(
        violation(ViolationCode.CsrOrganizationalUnit, `OU ${show(ou)} is not the provider ${show(rules.expected.provider)}`, "csr.subject.ou"),
      );
    }
  }
  for (const oid of csr.nonStringSubjectAttributes) {
    out.push(violation(ViolationCode.CsrMalformed, `subject attribute ${oid} is not a string`, "csr.subject"));
  }

  checkSans({ dns: csr.dnsNames, ips: csr.ipAddresses, uris: csr.uris }, rules, { dns: "csr.san.dns", ips: "csr.san.ip", uris: "csr.san.uri" }, out);
  for (const kind of csr.otherNames) {
    out.push(violation(ViolationCode.SanNotAllowed, `SAN of kind ${kind} is not allowed`, "csr.san"));
  }
  return out;
}

/**
 * Parses and checks a PEM CSR for `expected` under `policy`. Throws DomainError(InvalidArgument)
 * only when `expected` or `policy` are invalid; a bad CSR is a violation.
 */
export async function inspectCsr(
  expected: ExpectedIdentityInput,
  csrPem: string,
  policy: SanPolicyInput,
  opts: CsrInspectOptions = {},
): Promise<CsrInspection> {
  const rules = compileSanRules(expected, policy);
  const parsed = parseCsrPem(csrPem, opts.maxPemLength === undefined ? {} : { maxPemLength: opts.maxPemLength });
  if (parsed.kind === "invalid") return { violations: [parsed.violation], csr: undefined };
  return { violations: await inspectParsedCsr(parsed.csr, rules, opts), csr: summarizeCsr(parsed.csr) };
}
