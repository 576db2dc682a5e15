/**
 * The bins' first import: on a Node older than package.json's `engines.node` they stop here, before any
 * other module is evaluated (ES modules run in import order), with a message that names the Node they need
 * and how to get it — instead of a native addon built for the project's Node failing to load
 * (ERR_DLOPEN_FAILED, "compiled against a different Node.js version") or some later, stranger error.
 *
 * Which bin is running is read from package.json's `bin` (the entry whose file is process.argv[1]), so
 * xdpctld, xdpctl and xdpctl-health, from a checkout, the package or the light client, all say their name.
 */
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** "a.b.c" >= "x.y.z", numerically per part. */
export function versionAtLeast(have: string, want: string): boolean {
  const a = have.split('.').map(Number);
  const b = want.split('.').map(Number);
  for (let i = 0; i < Math.max(a.length, b.length); i++) {
    if ((a[i] ?? 0) !== (b[i] ?? 0)) return (a[i] ?? 0) > (b[i] ?? 0);
  }
  return true;
}

/** The minimum of an `engines.node` of the form ">=a.b.c" (the only form package.json uses). */
export function engineMinimum(engines: string): string {
  const m = /^\s*>=\s*v?(\d+(?:\.\d+){0,2})\s*$/.exec(engines);
  if (!m) throw new Error(`engines.node "${engines}" is not of the form ">=a.b.c"`);
  return m[1];
}

/**
 * The message for a Node older than `engines`, or undefined when `have` satisfies it.
 * `withNode`: the path of scripts/with-node where the bin runs from a checkout.
 */
export function tooOldMessage(
  bin: string,
  have: string,
  engines: string,
  execPath: string,
  withNode?: { script: string; argv1: string },
): string | undefined {
  const min = engineMinimum(engines);
  if (versionAtLeast(have, min)) return undefined;
  const how = withNode
    ? `Run it on the project's pinned Node through ${withNode.script} (\`${withNode.script} ${withNode.argv1} ...\`), ` +
      `or put Node ${min} or later first on PATH.`
    : `Install Node ${min} or later and run it with that.`;
  return `${bin}: needs Node ${min} or later (package.json "engines": "${engines}"); this is Node ${have} (${execPath}). ${how}\n`;
}

interface PackageJson {
  engines?: { node?: string };
  bin?: Record<string, string>;
}

/**
 * Stop the process when it runs on a Node older than the package's engines.node: exit 3 for
 * xdpctl-health (its "could not run": 1 and 2 mean an answer other than SERVING and no answer), else 1
 * (xdpctl's "local error"; xdpctld's failure to start).
 */
export function requireSupportedNode(): void {
  const pkgPath = fileURLToPath(new URL('../../package.json', import.meta.url));
  let pkg: PackageJson;
  try {
    pkg = JSON.parse(readFileSync(pkgPath, 'utf8')) as PackageJson;
  } catch {
    return; // no package.json beside dist/: nothing to check against
  }
  const engines = pkg.engines?.node;
  if (!engines) return;
  const root = dirname(pkgPath);
  const script = process.argv[1] ? safeRealpath(process.argv[1]) : '';
  const entry = Object.entries(pkg.bin ?? {}).find(([, file]) => safeRealpath(resolve(root, file)) === script);
  const bin = entry?.[0] ?? basename(script || process.execPath);
  // The checkout's scripts/with-node (the light client's package.json sits two levels below it).
  const withNode = [resolve(root, 'scripts/with-node'), resolve(root, '../../scripts/with-node')].find((p) =>
    existsSync(p),
  );
  const msg = tooOldMessage(
    bin,
    process.versions.node,
    engines,
    process.execPath,
    withNode ? { script: withNode, argv1: process.argv[1] ?? '' } : undefined,
  );
  if (msg) {
    process.stderr.write(msg);
    process.exit(bin === 'xdpctl-health' ? 3 : 1);
  }
}

function safeRealpath(p: string): string {
  try {
    return realpathSync(p);
  } catch {
    return p;
  }
}
