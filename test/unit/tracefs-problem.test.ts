/**
 * The slot watcher's fallback names why the syscall tracepoints cannot be attached when tracefs shows it
 * (twenty-third review): before, only libbpf's "attach xdpctl_watch_bpf_enter: no such file or entry (ENOENT)".
 * tracefsProblem is given what stat says of each root's `events`.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { tracefsProblem } from '../../src/server/dataplane/slot-watch-probe.js';

const stats = (codes: Record<string, string | undefined>) => (path: string) => codes[path];

describe('tracefsProblem', () => {
  it('tracefs at either root: nothing to say', () => {
    assert.equal(tracefsProblem(stats({ '/sys/kernel/debug/tracing/events': 'ENOENT' })), undefined);
    assert.equal(tracefsProblem(stats({ '/sys/kernel/tracing/events': 'ENOENT' })), undefined);
  });

  it('no events under either root: not mounted', () => {
    assert.deepEqual(
      tracefsProblem(stats({ '/sys/kernel/tracing/events': 'ENOENT', '/sys/kernel/debug/tracing/events': 'ENOENT' })),
      {
        errno: 2,
        why: 'tracefs is not mounted at /sys/kernel/tracing (or /sys/kernel/debug/tracing): syscall tracepoints cannot be attached',
      },
    );
  });

  it('a root this process may not read is said so, not "not mounted"', () => {
    assert.deepEqual(
      tracefsProblem(stats({ '/sys/kernel/tracing/events': 'EACCES', '/sys/kernel/debug/tracing/events': 'ENOENT' })),
      {
        errno: 13,
        why: 'tracefs at /sys/kernel/tracing cannot be read by this process (EACCES): syscall tracepoints cannot be attached',
      },
    );
  });

  it('another failure of stat: left to the attach to say', () => {
    assert.equal(
      tracefsProblem(stats({ '/sys/kernel/tracing/events': 'EIO', '/sys/kernel/debug/tracing/events': 'ENOENT' })),
      undefined,
    );
  });
});
