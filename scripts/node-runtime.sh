#!/usr/bin/env bash
# The Node this project runs on. Prints nothing when the system's `node` satisfies package.json's
# engines (>= the version there); otherwise prints the install prefix (bin/node, include/node) of the
# version pinned in .node-version, fetched once into a cache from the npm registry: the package
# node-linux-<arch> ships the official binary and headers. The tarball's sha512 is checked against the
# integrity the registry's metadata gives for that version before anything is unpacked.
#   XDPCTL_PINNED_NODE=1   use the pinned version even when the system's would do
#   XDPCTL_CACHE=<dir>     where to keep it (default ${XDG_CACHE_HOME:-~/.cache}/xdpctl)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pin=$(tr -d ' v\n' <"$root/.node-version")
min=$(sed -n 's/^ *"node": *">=\([0-9.]*\)".*/\1/p' "$root/package.json" | head -1)
[[ -n $pin && -n $min ]] || { echo "node-runtime: no pin in .node-version or no engines.node >= in package.json" >&2; exit 1; }

# version_ge A B: A >= B (dotted numbers).
version_ge() { [[ $(printf '%s\n%s\n' "$1" "$2" | sort -V | head -1) == "$2" ]]; }

if [[ -z ${XDPCTL_PINNED_NODE:-} ]] && command -v node >/dev/null 2>&1; then
  have=$(node -p process.versions.node 2>/dev/null || echo 0)
  if version_ge "$have" "$min"; then exit 0; fi
fi

case $(uname -m) in
  x86_64) arch=x64 ;;
  aarch64 | arm64) arch=arm64 ;;
  *) echo "node-runtime: no node-linux package for $(uname -m)" >&2; exit 1 ;;
esac
cache=${XDPCTL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xdpctl}
prefix=$cache/node-v$pin-linux-$arch
if [[ -x $prefix/bin/node && -f $prefix/include/node/node_version.h ]]; then
  echo "$prefix"
  exit 0
fi

echo "node-runtime: system node ${have:-none} is older than $min; using Node $pin" >&2
bash "$root/scripts/npm-fetch.sh" "node-linux-$arch@$pin" "$prefix"
[[ $("$prefix/bin/node" -p process.versions.node) == "$pin" ]] || {
  echo "node-runtime: $prefix/bin/node does not run here or is not $pin" >&2
  exit 1
}
echo "$prefix"
