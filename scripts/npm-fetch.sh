#!/usr/bin/env bash
# npm-fetch.sh <package@version> <dir>: unpack a package from the npm registry into <dir> (its
# `package/` contents), once. The tarball's sha512 must equal the integrity the registry's metadata
# gives for that version; nothing is unpacked otherwise. Safe to run concurrently (flock), and <dir>
# appears whole or not at all (unpacked beside it, then renamed). Used for the pinned Node
# (scripts/node-runtime.sh) and buf (scripts/buf.sh), which are tools, not dependencies.
set -euo pipefail
spec=$1 dest=$2
[[ -e $dest/package.json ]] && exit 0
parent=$(dirname "$dest")
mkdir -p "$parent"
exec 9>"$parent/.lock"
flock 9
[[ -e $dest/package.json ]] && exit 0
command -v npm >/dev/null 2>&1 || { echo "npm-fetch: need npm (any version) to fetch $spec" >&2; exit 1; }
tmp=$(mktemp -d "$parent/.fetch.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
echo "npm-fetch: $spec from the npm registry" >&2
want=$(npm view "$spec" dist.integrity)
file=$(cd "$tmp" && npm pack "$spec" --silent --loglevel=error | tail -1)
got="sha512-$(openssl dgst -sha512 -binary "$tmp/$file" | base64 -w0)"
if [[ -z $want || $got != "$want" ]]; then
  echo "npm-fetch: $spec: integrity mismatch (registry ${want:-none}, tarball $got)" >&2
  exit 1
fi
tar -xzf "$tmp/$file" -C "$tmp"
rm -rf "$dest"
mv "$tmp/package" "$dest"
