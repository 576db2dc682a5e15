/**
 * The `yaml` package, loaded on its first use: a daemon that reads no YAML file (no --config, no
 * --auth-config) does not pay for it at start (about 50 ms of module loading measured with
 * `node --cpu-prof`). Synchronous (CommonJS require), so its callers stay synchronous.
 */
import { createRequire } from 'node:module';

import type * as Yaml from 'yaml';

let loaded: typeof Yaml | undefined;

/** The yaml module (parseDocument, isScalar, LineCounter, ...). */
export function yaml(): typeof Yaml {
  return (loaded ??= createRequire(import.meta.url)('yaml') as typeof Yaml);
}
