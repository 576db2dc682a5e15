#!/usr/bin/env bash
# prepack of the light client (packages/client): compiles src/client/ (and what it imports) with the
# repository's TypeScript into packages/client/dist/, after removing compiled files whose source is gone.
# The compiler is a dev dependency of the repository root, so the root must be set up first.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x node_modules/.bin/tsc ]]; then
  echo "packages/client: no TypeScript compiler at $(pwd)/node_modules/.bin/tsc: the light client is compiled" \
    "by the repository's; run \`npm run setup\` (or \`npm ci\`) at $(pwd) first, then pack again" >&2
  exit 1
fi
scripts/with-node tsc -p tsconfig.client.json
scripts/with-node node scripts/clean-dist.mjs packages/client/dist src
chmod +x packages/client/dist/client/cli.js packages/client/dist/client/health-probe.js
