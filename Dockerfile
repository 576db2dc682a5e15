# xdpctld image. Two stages: the build stage compiles the XDP object and the
# reflection descriptor (clang, libbpf headers, buf); the runtime stage holds
# Node, libbpf.so.1 (loaded through koffi), iproute2/ethtool (interface
# queries, the veth GRO fix-up) and the package. Run it with host networking,
# bpffs mounted and CAP_BPF + CAP_NET_ADMIN (see docker-compose.yml and
# deploy/kubernetes/xdpctld.yaml); it does not need --privileged.
FROM node:20-bookworm-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends clang llvm libbpf-dev gcc libc6-dev \
      && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund --ignore-scripts
COPY . .
RUN bash scripts/build-bpf.sh && mkdir -p build && bash scripts/buf.sh build -o build/descriptor.binpb \
      && npm prune --omit=dev --no-audit --no-fund

FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends libbpf1 iproute2 ethtool \
      && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/xdpctl
COPY --from=build /src/package.json /src/package-lock.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/bin ./bin
COPY --from=build /src/src ./src
COPY --from=build /src/build ./build
ENV PATH=/opt/xdpctl/bin:$PATH
# The probe talks to the Unix socket, which needs no TLS and no network.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s \
  CMD ["xdpctl", "--server", "unix:/run/xdpctl/xdpctl.sock", "--timeout", "3s", "health"]
ENTRYPOINT ["xdpctld"]
CMD ["--listen", "127.0.0.1:9091", "unix:/run/xdpctl/xdpctl.sock"]
