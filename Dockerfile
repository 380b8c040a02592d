# syntax=docker/dockerfile:1
# kube-drac: one image, every role. `docker run IMAGE pop3|smtp|operator [--config FILE]`.
# Without a Docker engine, `npm run image` (src/local/image.ts) builds this same file with buildah on
# base images assembled from the Debian archive and the npm registry's `node` package.

ARG NODE_IMAGE=node:24-bookworm
ARG RUNTIME_IMAGE=node:24-bookworm-slim

# 1. Compile TypeScript to dist/ with the dev dependencies (tsc).
FROM ${NODE_IMAGE} AS build
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src/ src/
RUN npm run build

# 2. Production dependencies only, in a stage of their own so no dev file reaches the image.
FROM ${NODE_IMAGE} AS deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund \
 && npm cache clean --force

# 3. The runtime: Node and the app, no compilers, no npm, no shell tools beyond the base's (none in
#    the image `npm run image` builds).
FROM ${RUNTIME_IMAGE}
LABEL org.opencontainers.image.title="kube-drac" \
      org.opencontainers.image.description="POP-before-SMTP relay authorization (DRAC) as a Kubernetes operator" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/kube-drac/kube-drac"
# npm, npx, corepack and yarn are not needed to run: remove them where the base has them (less to
# patch, less to exploit). Exec form, with node itself: the runtime base may have no shell and no rm.
RUN ["node", "-e", "\
const fs = require('node:fs'); \
const yarns = fs.existsSync('/opt') ? fs.readdirSync('/opt').filter((f) => f.startsWith('yarn')).map((f) => '/opt/' + f) : []; \
for (const p of ['/usr/local/lib/node_modules/npm', '/usr/local/lib/node_modules/corepack', '/usr/local/bin/npm', '/usr/local/bin/npx', \
                 '/usr/local/bin/corepack', '/usr/local/bin/yarn', '/usr/local/bin/yarnpkg', ...yarns]) fs.rmSync(p, { recursive: true, force: true });"]
WORKDIR /app
ENV NODE_ENV=production
COPY --from=deps /app/node_modules/ node_modules/
COPY --from=build /src/dist/ dist/
COPY package.json ./
COPY crds/ crds/
# The image's `node` user (uid 1000, matching the chart's runAsUser); never root.
USER 1000:1000
# pop3 1110, pop3s 1995, smtp 2525, smtps 2465, metrics/health 9090; the bridge (when enabled):
# socketmap 9400, policy 9401, DRAC RPC 9402 (+udp), auth-policy 9403, whoson 9876 (+udp), portmapper 1111 (+udp).
EXPOSE 1110 1995 2525 2465 9090 9400 9401 9402 9402/udp 9403 9876 9876/udp 1111 1111/udp
# node itself, not the `#!/usr/bin/env node` script: the runtime base may have no /usr/bin/env.
ENTRYPOINT ["node", "/app/dist/cli.js"]
CMD ["help"]
