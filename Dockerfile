# syntax=docker/dockerfile:1
#
# Images of k8s-athenz-identity: one target per service (the admission webhook included), one for the
# SIA, and identityd (the provider's services in one process, `--target=all` or a list).
#   docker build --target gateway        -t registry.example.com/athenz-identity/gateway:0.1.0 .
#   docker build --target token-verifier -t registry.example.com/athenz-identity/token-verifier:0.1.0 .
#   docker build --target pod-registry   -t registry.example.com/athenz-identity/pod-registry:0.1.0 .
#   docker build --target csr-inspector  -t registry.example.com/athenz-identity/csr-inspector:0.1.0 .
#   docker build --target sia            -t registry.example.com/athenz-identity/sia:0.1.0 .
#   docker build --target admission      -t registry.example.com/athenz-identity/admission:0.1.0 .
#   docker build --target identityd      -t registry.example.com/athenz-identity/identityd:0.1.0 .
#
# Each image holds Node and its own service's compiled output only, made by scripts/image-tree.sh: one
# esbuild bundle (our code and the third-party modules it uses), its source map, and dist/main.js,
# which turns source maps on and loads the bundle. No node_modules, no TypeScript, no npm. The SIA,
# which runs in every application pod, is smaller than every provider service's image.
#
# No Docker engine runs in CI; scripts/check-entrypoints.sh runs the same scripts/image-tree.sh, then
# starts each image stage's ENTRYPOINT below in its tree and checks /healthz and a clean SIGTERM. It
# reads from this file only the image stages: their one `COPY --from=build /out/<stage> /app`, WORKDIR,
# ENV and ENTRYPOINT. Keep the build in scripts/image-tree.sh, not in RUN lines here.

# The Node 24 LTS release the tests and CI run on (.ci/run); bookworm-slim: glibc, no compilers.
ARG NODE_IMAGE=node:24.22.3-bookworm-slim

# ---- build: the compiled trees, /out/<service> -----------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY . .
# --ignore-scripts: no install script runs at build time (esbuild ships its binary as an optional
# platform package and needs none). The lockfile pins every version.
RUN --mount=type=cache,target=/root/.npm npm ci --ignore-scripts --no-audit --no-fund
RUN bash scripts/image-tree.sh /out

# ---- runtime: Node only; no npm, files owned by root and read-only to the service user ------------
FROM ${NODE_IMAGE} AS runtime
RUN rm -rf /usr/local/lib/node_modules /usr/local/bin/npm /usr/local/bin/npx /usr/local/bin/corepack \
      /opt/yarn-* /usr/local/bin/yarn /usr/local/bin/yarnpkg
WORKDIR /app
ENV NODE_ENV=production
# The image's "node" user, numeric so Kubernetes can check runAsNonRoot.
USER 1000:1000

FROM runtime AS token-verifier
COPY --from=build /out/token-verifier /app
EXPOSE 8081 9081
ENTRYPOINT ["node", "dist/main.js"]

FROM runtime AS pod-registry
COPY --from=build /out/pod-registry /app
EXPOSE 8082 9082
ENTRYPOINT ["node", "dist/main.js"]

FROM runtime AS csr-inspector
COPY --from=build /out/csr-inspector /app
EXPOSE 8083 9083
ENTRYPOINT ["node", "dist/main.js"]

# The SIA runs in every application pod and runs JavaScript for milliseconds an hour. V8's lite mode
# (no optimizing compilers, feedback allocated lazily) takes about 8 MiB off its resident set, for
# about 16 ms more CPU before its first ZTS call (Node's code cache of its builtins does not apply
# under that V8 flag): bench/results/footprint.json, image_sia against image_v8_default_sia.
FROM runtime AS sia
COPY --from=build /out/sia /app
EXPOSE 9999
ENTRYPOINT ["node", "--lite-mode", "dist/main.js"]

FROM runtime AS admission
COPY --from=build /out/admission /app
EXPOSE 8443 9085
ENTRYPOINT ["node", "dist/main.js"]

# The operator CLI ships with the gateway: `kubectl exec deploy/gateway -- node dist/cli.js --help`.
FROM runtime AS gateway
COPY --from=build /out/gateway /app
EXPOSE 8443 8084 9080 9084
ENTRYPOINT ["node", "dist/main.js"]

FROM runtime AS identityd
COPY --from=build /out/identityd /app
EXPOSE 8443 8084 9080 9084 8081 9081 8082 9082 8083 9083
ENTRYPOINT ["node", "dist/main.js"]
