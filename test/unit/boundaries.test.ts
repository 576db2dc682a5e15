/**
 * The lint config holds the architecture's dependency direction
 * (docs/architecture.md, under the diagram): each rule is shown to reject a violating import at the
 * place it guards, and to accept the allowed direction, so a config edit that
 * drops a boundary fails here.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ESLint } from 'eslint';

const root = new URL('../..', import.meta.url).pathname;
const eslint = new ESLint({ cwd: root });

/** Messages of no-restricted-imports for `code` as if it were the file `filePath`. */
async function restricted(filePath: string, code: string): Promise<string[]> {
  const [r] = await eslint.lintText(code, { filePath: `${root}${filePath}` });
  return r.messages.filter((m) => m.ruleId === 'no-restricted-imports').map((m) => m.message);
}

describe('lint: dependency boundaries', () => {
  const cases: [string, string, RegExp][] = [
    ['src/server/core/x.ts', "import type { MatchKey } from '../dataplane/codec.js';", /core\/ owns its ports/],
    ['src/server/core/x.ts', "import { KernelError } from '../dataplane/errors.js';", /core\/ owns its ports/],
    ['src/server/core/x.ts', "import { toServerError } from '../services/status.js';", /core\/ owns its ports/],
    ['src/server/core/x.ts', "import koffi from 'koffi';", /koffi/],
    ['src/server/core/x.ts', "import { Status } from 'nice-grpc';", /gRPC/],
    ['src/server/services/x.ts', "import { peerCred } from '../dataplane/peer-cred.js';", /services\/ call the core/],
    ['src/server/services/x.ts', "import { GlobalStat } from '../dataplane/codec.js';", /services\/ call the core/],
    ['src/server/services/x.ts', "import koffi from 'koffi';", /koffi/],
    [
      'src/server/dataplane/x.ts',
      "import { toServerError } from '../services/status.js';",
      /imports nothing from services/,
    ],
    ['src/client/x.ts', "import { Controller } from '../server/core/controller.js';", /client imports nothing/],
  ];
  for (const [file, code, why] of cases) {
    it(`rejects in ${file}: ${code}`, async () => {
      const msgs = await restricted(file, `${code}\nexport {};\n`);
      assert.equal(msgs.length, 1, `expected one no-restricted-imports error, got ${JSON.stringify(msgs)}`);
      assert.match(msgs[0], why);
    });
  }
  const allowed: [string, string][] = [
    ['src/server/dataplane/x.ts', "import type { Dataplane } from '../core/dataplane.js';"],
    ['src/server/services/x.ts', "import { CoreError } from '../core/errors.js';"],
    ['src/server/x.ts', "import { KernelDataplane } from './dataplane/adapter.js';"],
  ];
  for (const [file, code] of allowed) {
    it(`accepts in ${file}: ${code}`, async () => {
      assert.deepEqual(await restricted(file, `${code}\nexport {};\n`), []);
    });
  }
});
