#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, run by `npm test` (pretest)
# and `npm start` (prestart). Quick when nothing is missing:
#   1. Debian packages the datapath and the tests need (as root; else says what is missing);
#   2. bpffs mounted at /sys/fs/bpf (mode 0700), and tracefs at /sys/kernel/tracing where the kernel has it
#      but nothing mounted it (a test counts the daemon's forks with a tracefs instance of its own);
#   3. a Node that package.json's engines accept: the system's, else the version in .node-version
#      fetched from the npm registry (scripts/node-runtime.sh); everything below runs on it;
#   4. npm ci when node_modules is missing, was installed from another package-lock.json, or for another
#      Node version or ABI (native addons such as better-sqlite3 are built for one);
#   5. the BPF objects built when older than their sources, the reflection descriptor, and the
#      TypeScript compiled to dist/ (tsc -b: incremental, quick when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
need() { # need <package> <file-or-command>...
  local pkg=$1
  shift
  for probe in "$@"; do
    if [[ $probe == /* ]]; then [[ -e $probe ]] && return 0; else command -v "$probe" >/dev/null 2>&1 && return 0; fi
  done
  missing+=("$pkg")
}
need clang clang
need llvm llvm-strip llvm-objdump
need libbpf-dev /usr/include/bpf/bpf_helpers.h
need libbpf1 /usr/lib/x86_64-linux-gnu/libbpf.so.1 /usr/lib/aarch64-linux-gnu/libbpf.so.1 /usr/lib64/libbpf.so.1
need bpftool bpftool /usr/sbin/bpftool
need iproute2 ip
need ethtool ethtool /usr/sbin/ethtool /sbin/ethtool
need iputils-ping ping
need util-linux nsenter
need gcc gcc # for the multiarch include directory
need nftables nft /usr/sbin/nft # the Linux-stack baseline in npm run bench (DNAT); backend-peer-nft's chains
need iptables iptables /usr/sbin/iptables
need libcap2-bin capsh /usr/sbin/capsh # least-privilege tests run the daemon with a reduced capability set
need sqlite3 sqlite3 # inspect the state store (docs/state-store.md)
# The independent client (test/clients/reflection_client.py): gRPC's C core and protobuf, for Debian's python3.
need python3-grpcio /usr/lib/python3/dist-packages/grpc/__init__.py
need python3-protobuf /usr/lib/python3/dist-packages/google/protobuf/__init__.py
need curl curl # the HTTP/JSON listener's test drives it with curl
# The wall-clock step test moves one daemon's CLOCK_REALTIME (LD_PRELOAD), never the host's.
need faketime /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 /usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1

if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing Debian packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Mode 0700 (systemd's default): only root may create pins. Where a bpffs is
# already mounted open to everyone (1777), xdpctld's own check of its pin root
# (owned by it, 0700) is what protects it; setup does not change a host's mount.
if [[ $(id -u) -eq 0 ]] && ! mountpoint -q /sys/fs/bpf; then
  mount -t bpf -o mode=0700 bpf /sys/fs/bpf
  echo "setup: mounted bpffs at /sys/fs/bpf (mode 0700)"
fi
# tracefs, as systemd mounts it at boot (mode 0700, root's): some machines boot without it (seen on a 6.18.44
# VM, 2026-12-06). The daemon does not need it; test/integration/reconciler-forks.test.ts reads sched_process_fork
# events through an instance of its own there.
if [[ $(id -u) -eq 0 && -d /sys/kernel/tracing ]] && ! mountpoint -q /sys/kernel/tracing &&
  grep -qw tracefs /proc/filesystems; then
  mount -t tracefs -o mode=0700 tracefs /sys/kernel/tracing
  echo "setup: mounted tracefs at /sys/kernel/tracing (mode 0700)"
fi

prefix=$(bash scripts/node-runtime.sh)
if [[ -n $prefix ]]; then
  export PATH="$prefix/bin:$PATH" npm_config_nodedir="$prefix"
fi
# The stamp names the Node, its ABI and the lock file's content (not its mtime: `npm install
# --package-lock-only` rewrites node_modules/.package-lock.json without installing anything).
stamp="node $(node -p 'process.version + " abi " + process.versions.modules + " " + process.arch') lock $(sha256sum package-lock.json | cut -c1-16)"
if [[ ! -f node_modules/.package-lock.json || $(cat node_modules/.xdpctl-node 2>/dev/null) != "$stamp" ]]; then
  echo "setup: npm ci ($stamp)"
  npm ci --no-audit --no-fund --loglevel=error
  echo "$stamp" >node_modules/.xdpctl-node
fi

bash scripts/build-bpf.sh

# The FileDescriptorSet that gRPC reflection serves (buf build, imports included).
if [[ ! -f build/descriptor.binpb ]] || [[ -n $(find proto buf.yaml -newer build/descriptor.binpb -print -quit) ]]; then
  mkdir -p build
  bash scripts/buf.sh build -o build/descriptor.binpb
  echo "setup: build/descriptor.binpb"
fi

# The compiled JavaScript that the daemon, the CLI and the client run from.
npx tsc -b tsconfig.build.json
chmod +x dist/server/main.js dist/client/cli.js dist/client/health-probe.js
