// Test-only failpoint, preloaded into a daemon under test with
// NODE_OPTIONS=--import=<this file>: while the file named by XDPCTL_TEST_VANISH
// exists, each time the daemon looks up the interface XDPCTL_TEST_VANISH_DEV
// (KernelDataplane.lookupInterface: a reconciler pass does it once per pass,
// before it reads anything else of that interface) and finds it, the interface
// is renamed away to XDPCTL_TEST_VANISH_AWAY for real (`ip link set dev DEV
// name AWAY`) before the lookup returns: everything the pass does with the
// interface after that read (its link state, its neighbour entries, its veth
// peer, its redirect checks) meets it gone, as when someone renames it at that
// moment. The next lookup renames it back first (also once the trigger file is
// gone), so every pass finds it present and then loses it. Each time it was
// made to vanish a line is appended to XDPCTL_TEST_VANISH_COUNT. Without
// XDPCTL_TEST_VANISH nothing is hooked; nothing in the product knows about it.
import { execFileSync } from 'node:child_process';
import { appendFileSync, existsSync } from 'node:fs';
import { registerHooks } from 'node:module';

const trigger = process.env.XDPCTL_TEST_VANISH;
const dev = process.env.XDPCTL_TEST_VANISH_DEV;
const away = process.env.XDPCTL_TEST_VANISH_AWAY;
const count = process.env.XDPCTL_TEST_VANISH_COUNT;
if (trigger) {
  if (!dev || !away || !count) throw new Error('XDPCTL_TEST_VANISH needs XDPCTL_TEST_VANISH_DEV, _AWAY and _COUNT');
  const hook = Symbol.for('xdpctl.test.egress-vanish');
  let renamed = false;
  const rename = (from, to) => execFileSync('ip', ['link', 'set', 'dev', from, 'name', to], { stdio: 'ignore' });
  globalThis[hook] = (KernelDataplane) => {
    const lookup = KernelDataplane.prototype.lookupInterface;
    if (typeof lookup !== 'function') throw new Error('egress-vanish: KernelDataplane has no lookupInterface');
    KernelDataplane.prototype.lookupInterface = function (name) {
      if (name !== dev) return lookup.call(this, name);
      if (renamed) {
        rename(away, dev);
        renamed = false;
      }
      const found = lookup.call(this, name);
      if (found && existsSync(trigger)) {
        rename(dev, away);
        renamed = true;
        appendFileSync(count, 'vanished\n');
      }
      return found;
    };
  };
  // The daemon's module that defines KernelDataplane hands the class to the hook above once it is defined.
  registerHooks({
    load(url, context, nextLoad) {
      const loaded = nextLoad(url, context);
      if (!url.endsWith('/dist/server/dataplane/adapter.js')) return loaded;
      const source = String(loaded.source);
      if (!/^export class KernelDataplane\b/m.test(source)) {
        throw new Error(`egress-vanish: no KernelDataplane class in ${url}`);
      }
      return {
        ...loaded,
        source: `${source}\nglobalThis[Symbol.for('xdpctl.test.egress-vanish')](KernelDataplane);\n`,
      };
    },
  });
}
