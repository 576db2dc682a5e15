# xdpctld image, on the official Node image of the version in .node-version (keep them equal; a unit
# test checks). Two stages: the build stage compiles the XDP object, the reflection descriptor (buf,
# fetched by scripts/buf.sh; a tool, not a dependency, so no buf binary reaches the image) and the
# TypeScript (tsc -> dist/), then keeps only production dependencies (no dev). Install scripts run: the
# native addons must be built or fetched (better-sqlite3's binary; koffi's comes in its platform package,
# an optional dependency, so optional ones are kept). The runtime stage holds Node, libbpf.so.1 (loaded
# through koffi), iproute2/ethtool (interface queries, the veth GRO fix-up) and what running needs: dist/,
# the BPF objects (the XDP program and the tracepoint programs), the descriptor and node_modules.
#
# It runs `node dist/server/main.js` (no TypeScript loader) with the V8 flags of that file's shebang (a
# unit test keeps them equal), as uid 10001, not root: a copy of the Node binary, xdpctld-node, carries
# the file capabilities CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON and CAP_NET_RAW (ARP requests of its own, read
# back off the wire: docs/deployment.md) (and ethtool CAP_NET_ADMIN, for the veth
# GRO fix-up), which the container must also have in its bounding set (cap_add). File capabilities only
# apply when no_new_privs is off, so the image has no setuid or setgid file left. The health probe,
# xdpctl-health, runs on the plain node binary with no capabilities. See docs/deployment.md for the
# directories the daemon must own, and for the seccomp profile (bpf() must be allowed).
FROM node:24.22.3-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang llvm libbpf-dev gcc g++ make python3 libc6-dev openssl \
      && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY . .
RUN bash scripts/build-bpf.sh && mkdir -p build && bash scripts/buf.sh build -o build/descriptor.binpb \
      && npx tsc -b tsconfig.build.json \
      && chmod +x dist/server/main.js dist/client/cli.js dist/client/health-probe.js \
      && npm prune --omit=dev --no-audit --no-fund

FROM node:24.22.3-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libbpf1 iproute2 ethtool libcap2-bin \
      && cp /usr/local/bin/node /usr/local/bin/xdpctld-node \
      && setcap cap_bpf,cap_net_admin,cap_perfmon,cap_net_raw+ep /usr/local/bin/xdpctld-node \
      && setcap cap_net_admin+ep "$(command -v ethtool)" \
      && apt-get purge -y libcap2-bin && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
      && find / -xdev -type f -perm /6000 -exec chmod a-s {} + \
      && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin xdpctld
WORKDIR /opt/xdpctl
COPY --from=build /src/package.json /src/package-lock.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY --from=build /src/build/bpf/xdpctl.bpf.o /src/build/bpf/xdpctl-trace.bpf.o /src/build/bpf/xdpctl-watch.bpf.o ./build/bpf/
COPY --from=build /src/build/descriptor.binpb ./build/descriptor.binpb
RUN ln -s /opt/xdpctl/dist/client/cli.js /usr/local/bin/xdpctl \
      && ln -s /opt/xdpctl/dist/client/health-probe.js /usr/local/bin/xdpctl-health
USER 10001:10001
# The probe talks to the Unix socket (no TLS, no network) and loads only node:http2 (~0.04 s, ~57 MB).
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s \
  CMD ["xdpctl-health", "--server", "unix:/run/xdpctl/xdpctl.sock", "--timeout", "3s"]
ENTRYPOINT ["xdpctld-node", "--max-semi-space-size=2", "--disable-sigusr1", "/opt/xdpctl/dist/server/main.js"]
CMD ["--listen", "127.0.0.1:9091", "unix:/run/xdpctl/xdpctl.sock"]
