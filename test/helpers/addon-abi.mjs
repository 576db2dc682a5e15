// Test-only failpoint, preloaded into a daemon under test with
// NODE_OPTIONS=--import=<this file>: while XDPCTL_TEST_ADDON_ABI is set, loading
// better-sqlite3's native addon fails the way Node fails it for an addon built
// for another Node ABI (ERR_DLOPEN_FAILED, "compiled against a different
// Node.js version"), as after a Node upgrade without `npm rebuild`. Nothing in
// the product knows about it.
const dlopen = process.dlopen;
if (process.env.XDPCTL_TEST_ADDON_ABI) {
  process.dlopen = function (module, filename, ...rest) {
    if (String(filename).endsWith('better_sqlite3.node')) {
      const e = new Error(
        `The module '${filename}'\nwas compiled against a different Node.js version using\n` +
          `NODE_MODULE_VERSION 1. This version of Node.js requires\nNODE_MODULE_VERSION ${process.versions.modules}.`,
      );
      e.code = 'ERR_DLOPEN_FAILED';
      throw e;
    }
    return dlopen.call(this, module, filename, ...rest);
  };
}
