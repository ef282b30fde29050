/** Connect routes of TokenVerifierService: transport mapping only, the decisions are in verifier.ts. */
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { ConnectRouter } from "@connectrpc/connect";
import { type VerifiedToken, VerifiedTokenSchema } from "@k8s-athenz-identity/api/common";
import { TokenVerifierService, type VerifyTokenResponse, VerifyTokenResponseSchema } from "@k8s-athenz-identity/api/token_verifier";
import type { TokenVerifier, VerifiedIdentity, VerifyResult } from "./verifier.js";

/** The `VerifiedToken` message of an identity. */
export function toVerifiedToken(id: VerifiedIdentity): VerifiedToken {
  return create(VerifiedTokenSchema, {
    namespace: id.namespace,
    serviceAccountName: id.serviceAccountName,
    serviceAccountUid: id.serviceAccountUid,
    podName: id.podName,
    podUid: id.podUid,
    nodeName: id.nodeName ?? "",
    nodeUid: id.nodeUid ?? "",
    issuer: id.issuer,
    audiences: id.audiences,
    issuedAt: timestampFromDate(id.issuedAt),
    expiresAt: timestampFromDate(id.expiresAt),
    notBefore: id.notBefore ? timestampFromDate(id.notBefore) : undefined,
    credentialId: id.credentialId ?? "",
    subject: id.subject,
  });
}

export function toResponse(result: VerifyResult): VerifyTokenResponse {
  if (result.kind === "invalid") return create(VerifyTokenResponseSchema, { violations: result.violations });
  return create(VerifyTokenResponseSchema, { token: toVerifiedToken(result.identity), verifiedBy: result.verifiedBy, cached: result.cached });
}

/** Registers TokenVerifierService. DomainErrors thrown by the verifier become Connect errors in the server's error interceptor. */
export function tokenVerifierRoutes(verifier: TokenVerifier): (router: ConnectRouter) => void {
  return (router) => {
    router.service(TokenVerifierService, {
      async verifyToken(req) {
        return toResponse(await verifier.verify(req.token));
      },
    });
  };
}
