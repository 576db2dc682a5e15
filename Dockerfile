FROM node:20-bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends clang llvm libbpf-dev libbpf1 bpftool \
      iproute2 ethtool iputils-ping util-linux gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/xdpctl
COPY . .
RUN npm ci --no-audit --no-fund && bash scripts/build-bpf.sh && bash scripts/buf.sh build -o build/descriptor.binpb
ENTRYPOINT ["bin/xdpctld"]
