#!/usr/bin/env bash
# Run buf from its per-platform npm package. (The @bufbuild/buf wrapper lists
# darwin/win32 packages that our registry does not serve, which breaks npm ci.)
root=$(cd "$(dirname "$0")/.." && pwd)
case $(uname -m) in
  x86_64) arch=x64 ;;
  aarch64 | arm64) arch=aarch64 ;;
  *) echo "buf.sh: no buf package for $(uname -m)" >&2; exit 1 ;;
esac
exec "$root/node_modules/@bufbuild/buf-linux-$arch/bin/buf" "$@"
