/** CsrInspectorService routes: transport only; the checks live in inspect-*.ts. */
import type { ConnectRouter } from "@connectrpc/connect";
import type { SanPolicy } from "@k8s-athenz-identity/api/common";
import { CsrInspectorService } from "@k8s-athenz-identity/api/csr_inspector";
import { MAX_ATTRIBUTE_VALUE_LENGTH } from "@k8s-athenz-identity/identity/san";
import { DomainError, ErrorCode } from "@k8s-athenz-identity/shared";
import { inspectAttributes } from "./inspect-attributes.js";
import { type CsrInspectOptions, inspectCsr } from "./inspect-csr.js";

/** Options of {@link csrInspectorRoutes}. */
export interface CsrInspectorRoutesOptions {
  /** Applied when a request carries no policy. */
  defaultPolicy: SanPolicy;
  /** CSR limits and algorithm options. */
  csr?: CsrInspectOptions;
}

/** Most attributes one request may carry; ZTS sends about ten. */
export const MAX_ATTRIBUTES = 64;

/** Registers CsrInspectorService on a router. */
export function csrInspectorRoutes(opts: CsrInspectorRoutesOptions): (router: ConnectRouter) => void {
  return (router) => {
    router.service(CsrInspectorService, {
      inspectAttributes(req) {
        if (!req.expected) throw new DomainError(ErrorCode.InvalidArgument, "expected is required");
        const entries = Object.entries(req.attributes);
        if (entries.length > MAX_ATTRIBUTES) throw new DomainError(ErrorCode.InvalidArgument, `more than ${MAX_ATTRIBUTES} attributes`);
        // An oversized value of an attribute we do not inspect is still refused: nothing unbounded passes.
        for (const [k, v] of entries) {
          if (k.length > 64 || v.length > MAX_ATTRIBUTE_VALUE_LENGTH * 4) throw new DomainError(ErrorCode.InvalidArgument, "attribute too large");
        }
        return { violations: inspectAttributes(req.expected, req.attributes, req.policy ?? opts.defaultPolicy) };
      },
      async inspectCsr(req) {
        if (!req.expected) throw new DomainError(ErrorCode.InvalidArgument, "expected is required");
        return inspectCsr(req.expected, req.csrPem, req.policy ?? opts.defaultPolicy, opts.csr);
      },
    });
  };
}
