# syntax=docker/dockerfile:1
#
# Images of k8s-athenz-identity: one target per service and one for the SIA, all from one runtime stage.
#   docker build --target gateway        -t registry.example.com/athenz-identity/gateway:0.1.0 .
#   docker build --target token-verifier -t registry.example.com/athenz-identity/token-verifier:0.1.0 .
#   docker build --target pod-registry   -t registry.example.com/athenz-identity/pod-registry:0.1.0 .
#   docker build --target csr-inspector  -t registry.example.com/athenz-identity/csr-inspector:0.1.0 .
#   docker build --target sia            -t registry.example.com/athenz-identity/sia:0.1.0 .
#
# The services are TypeScript run through tsx (a production dependency), exactly as in development:
# `node --import tsx services/<name>/src/main.ts`. No Docker engine runs in CI; instead
# scripts/check-entrypoints.ts rebuilds /app from the COPY and RUN lines of the `deps` stage (with
# .dockerignore applied), then starts every target's ENTRYPOINT below and checks its /healthz.
# Keep the `deps` stage to plain COPY <repo paths> <dest> and RUN lines that script can replay.

ARG NODE_IMAGE=node:20.20.2-bookworm-slim

# ---- production dependencies and sources -----------------------------------------------------
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
ENV NODE_ENV=production
COPY package.json package-lock.json tsconfig.json ./
COPY packages/api/package.json packages/api/
COPY packages/identity/package.json packages/identity/
COPY packages/policy/package.json packages/policy/
COPY packages/shared/package.json packages/shared/
COPY services/admission/package.json services/admission/
COPY services/csr-inspector/package.json services/csr-inspector/
COPY services/gateway/package.json services/gateway/
COPY services/pod-registry/package.json services/pod-registry/
COPY services/sia/package.json services/sia/
COPY services/token-verifier/package.json services/token-verifier/
# --ignore-scripts: no install script runs at build time (esbuild, used by tsx, ships its binary as
# an optional platform package and needs none).
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund
COPY packages/api/src packages/api/src
COPY packages/identity/src packages/identity/src
COPY packages/policy/src packages/policy/src
COPY packages/shared/src packages/shared/src
COPY services/admission/src services/admission/src
COPY services/csr-inspector/src services/csr-inspector/src
COPY services/gateway/src services/gateway/src
COPY services/pod-registry/src services/pod-registry/src
COPY services/sia/src services/sia/src
COPY services/token-verifier/src services/token-verifier/src

# ---- runtime: no npm, files owned by root and read-only to the service user ---------------------
FROM ${NODE_IMAGE} AS runtime
RUN rm -rf /usr/local/lib/node_modules/npm /usr/local/lib/node_modules/corepack \
      /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack
WORKDIR /app
COPY --from=deps /app /app
ENV NODE_ENV=production
# tsx keeps its transform cache under $TMPDIR; the manifests mount an emptyDir there (read-only root).
ENV TMPDIR=/tmp
# The image's "node" user, numeric so Kubernetes can check runAsNonRoot.
USER 1000:1000

FROM runtime AS token-verifier
EXPOSE 8081 9081
ENTRYPOINT ["node", "--import", "tsx", "services/token-verifier/src/main.ts"]

FROM runtime AS pod-registry
EXPOSE 8082 9082
ENTRYPOINT ["node", "--import", "tsx", "services/pod-registry/src/main.ts"]

FROM runtime AS csr-inspector
EXPOSE 8083 9083
ENTRYPOINT ["node", "--import", "tsx", "services/csr-inspector/src/main.ts"]

FROM runtime AS sia
EXPOSE 9999
ENTRYPOINT ["node", "--import", "tsx", "services/sia/src/main.ts"]

FROM runtime AS admission
EXPOSE 8443 9085
ENTRYPOINT ["node", "--import", "tsx", "services/admission/src/main.ts"]

FROM runtime AS gateway
EXPOSE 8443 8084 9080 9084
ENTRYPOINT ["node", "--import", "tsx", "services/gateway/src/main.ts"]
