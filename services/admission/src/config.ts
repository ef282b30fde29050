/** The admission server's settings: the shared server settings (TLS is required: the API server calls https only). */
import { bool, type ConfigOf, serverSettings } from "@k8s-athenz-identity/shared";

export const admissionSpec = {
  ...serverSettings({ port: 8085, adminPort: 9085 }),
  allowInsecureHttp: bool({
    env: "ALLOW_INSECURE_HTTP",
    flag: "allow-insecure-http",
    description: "DEVELOPMENT ONLY: serve plain HTTP (the API server only calls https webhooks; for tests that post AdmissionReviews themselves)",
    default: false,
  }),
};

export type AdmissionConfig = ConfigOf<typeof admissionSpec>;
