# xdpctld image, on the official Node image of the version in .node-version (keep them equal; a unit
# test checks). Two stages: the build stage compiles the XDP object, the reflection descriptor (buf,
# fetched by scripts/buf.sh; a tool, not a dependency) and the TypeScript (tsc -> dist/), then keeps only
# production dependencies; the runtime stage holds Node, libbpf.so.1 (loaded through koffi),
# iproute2/ethtool (interface queries, the veth GRO fix-up) and what running needs: dist/, the BPF
# object, the descriptor and node_modules. It runs `node dist/server/main.js` (no TypeScript loader) with
# the V8 flags of that file's shebang (a unit test keeps them equal).
# Run it with host networking, bpffs mounted and CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON (see
# docker-compose.yml and deploy/kubernetes/xdpctld.yaml); it does not need --privileged.
FROM node:24.22.3-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang llvm libbpf-dev gcc libc6-dev openssl \
      && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY . .
RUN bash scripts/build-bpf.sh && mkdir -p build && bash scripts/buf.sh build -o build/descriptor.binpb \
      && npx tsc -b tsconfig.build.json && chmod +x dist/server/main.js dist/client/cli.js \
      && npm prune --omit=dev --no-audit --no-fund

FROM node:24.22.3-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libbpf1 iproute2 ethtool \
      && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/xdpctl
COPY --from=build /src/package.json /src/package-lock.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/build/bpf/xdpctl.bpf.o ./build/bpf/xdpctl.bpf.o
COPY --from=build /src/build/descriptor.binpb ./build/descriptor.binpb
RUN ln -s /opt/xdpctl/dist/client/cli.js /usr/local/bin/xdpctl \
      && ln -s /opt/xdpctl/dist/server/main.js /usr/local/bin/xdpctld
# The probe talks to the Unix socket, which needs no TLS and no network.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s \
  CMD ["xdpctl", "--server", "unix:/run/xdpctl/xdpctl.sock", "--timeout", "3s", "health"]
ENTRYPOINT ["node", "--max-semi-space-size=2", "/opt/xdpctl/dist/server/main.js"]
CMD ["--listen", "127.0.0.1:9091", "unix:/run/xdpctl/xdpctl.sock"]
