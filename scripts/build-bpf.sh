#!/usr/bin/env bash
# Build the XDP objects into build/bpf/ when older than their source, a header in bpf/ or this script.
# -O2 is required by the verifier-friendly code clang emits; -g adds the BTF
# that libbpf needs for BTF-defined maps and that the layout test reads.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build/bpf
multiarch=$(gcc -dumpmachine 2>/dev/null || dpkg-architecture -qDEB_HOST_MULTIARCH)
CFLAGS=(-O2 -g -Wall -Werror -target bpf "-I/usr/include/$multiarch" -Ibpf)

build() { # build <source> <output> [extra flags...]
  local src=$1 out=$2
  shift 2
  local stale=0 dep
  for dep in "$src" bpf/*.h "$0"; do [[ $dep -nt $out ]] && stale=1; done
  if [[ ! -f $out || $stale == 1 ]]; then
    clang "${CFLAGS[@]}" "$@" -c "$src" -o "$out"
    echo "build-bpf: $out"
  fi
}
# The datapath for BPF ISA v3 (32-bit ALU and jumps, kernel >= 5.1): clang's
# default (v1) does its 32-bit arithmetic (flow hash, checksums) in 64-bit
# registers with masks after each step; v3 alone took a warm UDP rule hit
# from 66-74 to 65-66 ns in test runs (BENCHMARKS.md, 2026-12-06).
XDP_ISA=(-mcpu=v3)
build bpf/xdpctl.bpf.c build/bpf/xdpctl.bpf.o "${XDP_ISA[@]}"
# The same program with a different instruction stream: tests and benchmarks
# use it to exercise a hitless program upgrade with the maps reused.
build bpf/xdpctl.bpf.c build/bpf/xdpctl-next.bpf.o "${XDP_ISA[@]}" -DXDPCTL_BUILD_MARK=2
# Minimal programs: baselines for benchmarks, a foreign program for tests.
build bpf/baseline.bpf.c build/bpf/baseline.bpf.o
# A tc program for tests: pushes a VLAN tag the way a VLAN device does (test/integration/vlan.test.ts).
build bpf/test-vlan.bpf.c build/bpf/test-vlan.bpf.o
# A tc program for tests that drops every frame, as another tool's filter may (backend-peer-tc.test.ts).
build bpf/test-tc-drop.bpf.c build/bpf/test-tc-drop.bpf.o
# Tracepoint programs that count redirects the kernel dropped after XDP (loaded with the datapath).
build bpf/xdpctl-trace.bpf.c build/bpf/xdpctl-trace.bpf.o
# Syscall tracepoint programs that tell the slot watcher of writes into rule_cfg, rule_ring and backends
# (src/server/dataplane/slot-watch-probe.ts; loaded by the daemon with its first rule, never pinned).
build bpf/xdpctl-watch.bpf.c build/bpf/xdpctl-watch.bpf.o "${XDP_ISA[@]}"
