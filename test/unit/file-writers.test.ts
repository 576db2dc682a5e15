/**
 * file-writers.ts: whether a process holds a file open for writing, asked of the kernel (a read lease) and of
 * /proc, with real processes holding a real file: opened for appending, read-write, read-only, and mapped
 * writable after its descriptor was closed (only the kernel sees that one).
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';

import { procWriters, writersOf } from '../../src/server/dataplane/file-writers.js';

const dir = mkdtempSync(join(tmpdir(), 'xdpctl-writers-'));
const file = join(dir, 'links.yaml');
writeFileSync(file, 'links: {}\n');

/** A python process that runs `code` on the file (as `f`, `p`), prints R and sleeps until killed. */
async function holder(code: string): Promise<ChildProcess> {
  const child = spawn(
    'python3',
    ['-c', `import sys, time\np = sys.argv[1]\n${code}\nprint('R', flush=True)\ntime.sleep(60)`, file],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  await new Promise<void>((resolve, reject) => {
    child.stdout!.on('data', (d) => String(d).includes('R') && resolve());
    child.on('exit', (c) => reject(new Error(`holder exited ${c}`)));
  });
  return child;
}

/** The kernel's answer (`lease`: writersOf, which asks it first), or /proc's alone (procWriters). */
async function ask(lease: boolean) {
  const fh = await open(file, 'r');
  try {
    if (lease) return await writersOf(fh);
    const st = await fh.stat({ bigint: true });
    const { writers } = await procWriters(st.dev, st.ino);
    return { open: writers.length > 0, writers, how: '/proc', limits: '' };
  } finally {
    await fh.close();
  }
}

describe('writersOf: who holds a file open for writing', () => {
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('nobody: the kernel and /proc say none', async () => {
    const k = await ask(true);
    assert.deepEqual([k.open, k.how, k.writers], [false, 'lease', []]);
    const p = await ask(false);
    assert.deepEqual([p.open, p.how, p.writers], [false, '/proc', []]);
  });

  for (const [what, code, writes] of [
    ['opened for appending', "f = open(p, 'a')", true],
    ['opened read-write', "f = open(p, 'r+')", true],
    ['opened read-only', "f = open(p, 'r')", false],
  ] as const) {
    it(`${what}: ${writes ? 'a writer, named' : 'not a writer'}`, async () => {
      const child = await holder(code);
      try {
        for (const lease of [true, false]) {
          const w = await ask(lease);
          assert.equal(w.open, writes, `${what}, ${lease ? 'lease' : '/proc'}`);
          assert.deepEqual(w.writers, writes ? [{ pid: child.pid, command: 'python3' }] : []);
          assert.equal(w.how, lease ? 'lease' : '/proc');
        }
      } finally {
        child.kill('SIGKILL');
      }
      const w = await new Promise((r) => child.once('exit', r)).then(() => ask(true));
      assert.equal(w.open, false, 'once it exited: none');
    });
  }

  it('mapped writable, its descriptor closed: the kernel sees a writer that /proc cannot name', async () => {
    // libc's mmap itself: Python's mmap module keeps a duplicate of the descriptor.
    const child = await holder(
      [
        'import ctypes, os',
        'libc = ctypes.CDLL(None)',
        'libc.mmap.restype = ctypes.c_void_p',
        'libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]',
        'fd = os.open(p, os.O_RDWR)',
        'assert libc.mmap(None, 4096, 3, 1, fd, 0) not in (None, ctypes.c_void_p(-1).value)',
        'os.close(fd)',
      ].join('\n'),
    );
    try {
      const k = await ask(true);
      assert.equal(k.open, true, 'the lease is refused');
      assert.deepEqual(k.writers, []);
      assert.match(k.limits, /writable shared mapping/);
      const p = await ask(false);
      assert.equal(p.open, false, '/proc sees no descriptor');
    } finally {
      child.kill('SIGKILL');
    }
  });
});
