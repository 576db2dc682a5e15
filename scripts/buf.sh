#!/usr/bin/env bash
# Run buf, pinned here, from its per-platform npm package fetched into the cache (scripts/npm-fetch.sh,
# integrity checked). buf is a build tool: it is not a dependency, so neither `npm ci` in an image nor
# a user's install brings its ~90 MB binary. (The @bufbuild/buf wrapper package lists darwin/win32
# packages that our registry does not serve, which breaks npm ci.)
set -euo pipefail
BUF_VERSION=1.75.0
root=$(cd "$(dirname "$0")/.." && pwd)
case $(uname -m) in
  x86_64) arch=x64 ;;
  aarch64 | arm64) arch=aarch64 ;;
  *) echo "buf.sh: no buf package for $(uname -m)" >&2; exit 1 ;;
esac
dir=${XDPCTL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/xdpctl}/buf-v$BUF_VERSION-linux-$arch
bash "$root/scripts/npm-fetch.sh" "@bufbuild/buf-linux-$arch@$BUF_VERSION" "$dir"
exec "$dir/bin/buf" "$@"
