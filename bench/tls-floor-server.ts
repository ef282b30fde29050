/**
 * The floor of the ZTS endpoint: a bare Node HTTPS server doing mutual TLS and nothing else. It
 * reads the request body and answers a fixed InstanceConfirmation (so Athenz's Java client parses
 * it as a success), with the same TLS settings as the product's ZTS port (TLS 1.2 minimum, client
 * certificate required and verified, session tickets with a random key, 300 s session lifetime).
 * What the product adds on top of this server's CPU per request is what the product costs.
 *
 * Run as its own process by the benches: env TLS_CERT_FILE, TLS_KEY_FILE, TLS_CLIENT_CA_FILE, PORT,
 * ADMIN_PORT (GET /handshakes -> {"full": n, "resumed": n}, GET /readyz -> 200). Full handshakes are
 * measured by clients that offer no session, as for the product.
 */
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import * as http from "node:http";
import * as https from "node:https";
import type { TLSSocket } from "node:tls";

const env = (name: string): string => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is required`);
  return v;
};
const answer = JSON.stringify({
  provider: process.env.PROVIDER_SERVICE ?? "k8s.cluster1.identityd",
  domain: "sports",
  service: "api",
  attributes: { certExpiryTime: "1440", certRefresh: "true" },
});
const counts = { full: 0, resumed: 0 };
const server = https.createServer(
  {
    cert: readFileSync(env("TLS_CERT_FILE")),
    key: readFileSync(env("TLS_KEY_FILE")),
    ca: readFileSync(env("TLS_CLIENT_CA_FILE")),
    requestCert: true,
    rejectUnauthorized: true,
    minVersion: "TLSv1.2",
    sessionTimeout: 300,
    ticketKeys: randomBytes(48),
  },
  (req, res) => {
    req.on("data", () => {});
    req.on("end", () => {
      res.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(answer) });
      res.end(answer);
    });
  },
);
server.on("secureConnection", (s: TLSSocket) => (s.isSessionReused() ? counts.resumed++ : counts.full++));
const admin = http.createServer((req, res) => {
  if (req.url === "/handshakes") res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(counts));
  else if (req.url === "/readyz") res.writeHead(200).end("ok");
  else res.writeHead(404).end();
});
server.listen(Number(env("PORT")), "127.0.0.1");
admin.listen(Number(env("ADMIN_PORT")), "127.0.0.1");
process.on("SIGTERM", () => {
  server.close();
  admin.close();
  server.closeAllConnections();
  process.exit(0);
});
