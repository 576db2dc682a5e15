/**
 * A plain BPF object (no pinning, no adoption): open, load, find programs and
 * maps. Used for the baseline programs of the benchmarks and for tests; the
 * product's datapath is XdpDatapath.
 */
import { constants } from 'node:os';

import { KernelError } from './errors.js';
import { check, lib, openObjectFile, sizeOf, TestRunOpts } from './libbpf.js';

export class BpfObject {
  private obj: unknown;

  private constructor(
    obj: unknown,
    readonly path: string,
  ) {
    this.obj = obj;
  }

  static load(path: string): BpfObject {
    const obj = openObjectFile(path);
    const r = lib.bpf_object__load(obj) as number;
    if (r < 0) {
      lib.bpf_object__close(obj);
      check(`load ${path}`, r);
    }
    return new BpfObject(obj, path);
  }

  progFd(name: string): number {
    const p = lib.bpf_object__find_program_by_name(this.obj, name);
    if (!p) throw new KernelError(`find program ${name}`, 2, [], `not in ${this.path}`);
    return check(`open program ${name}`, lib.bpf_program__fd(p) as number);
  }

  mapFd(name: string): number {
    const m = lib.bpf_object__find_map_by_name(this.obj, name);
    if (!m) throw new KernelError(`find map ${name}`, 2, [], `not in ${this.path}`);
    return check(`open map ${name}`, lib.bpf_map__fd(m) as number);
  }

  /** Set a u32 -> u32 map entry (e.g. a devmap slot). */
  putU32(mapName: string, key: number, value: number): void {
    const k = Buffer.alloc(4);
    const v = Buffer.alloc(4);
    k.writeUInt32LE(key);
    v.writeUInt32LE(value);
    check(`update map ${mapName}`, lib.bpf_map_update_elem(this.mapFd(mapName), k, v, 0) as number);
  }

  close(): void {
    if (this.obj) lib.bpf_object__close(this.obj);
    this.obj = null;
  }
}

/** BPF_PROG_TEST_RUN flag: transmit redirected frames for real. */
export const BPF_F_TEST_XDP_LIVE_FRAMES = 2;

/**
 * Whether this kernel runs XDP programs on live frames (BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES,
 * kernel >= 5.18): `undefined` when it does, else the kernel's answer to one live run of `progFd` (an XDP program
 * that passes, on the loopback device) as text, e.g. "BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES:
 * operation not permitted (EPERM)". Some kernels refuse it to every caller, root included (seen on
 * 6.18.44 builds): the benchmarks that need it say so instead of measuring.
 */
export function liveFramesRefusal(progFd: number): string | undefined {
  try {
    testRunTimed(progFd, new Uint8Array(64), 1, 1, true);
    return undefined;
  } catch (e) {
    const why = e instanceof Error ? e.message.replace(/^test-run xdp program: /, '') : String(e);
    return `BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES: ${why}`;
  }
}

/**
 * Run a program `repeat` times on a frame; returns the kernel's average ns per
 * run (and the wall time). With live frames, redirected packets really leave.
 */
export function testRunTimed(
  progFd: number,
  frame: Uint8Array,
  ingressIfindex: number,
  repeat: number,
  live = false,
): { nsPerRun: number; wallNs: number; action: number; data: Buffer } {
  const ctx = Buffer.alloc(24);
  ctx.writeUInt32LE(frame.length, 4);
  ctx.writeUInt32LE(ingressIfindex, 12);
  const out = live ? null : Buffer.alloc(frame.length + 256);
  const opts = {
    sz: sizeOf(TestRunOpts),
    data_in: Buffer.from(frame),
    data_out: out,
    data_size_in: frame.length,
    data_size_out: out ? out.length : 0,
    ctx_in: ctx,
    ctx_out: null,
    ctx_size_in: ctx.length,
    ctx_size_out: 0,
    retval: 0,
    repeat,
    duration: 0,
    flags: live ? BPF_F_TEST_XDP_LIVE_FRAMES : 0,
    cpu: 0,
    batch_size: 0,
  };
  let t0 = process.hrtime.bigint();
  let rc = lib.bpf_prog_test_run_opts(progFd, opts) as number;
  // A repeated run stops with -EINTR when a signal is pending (kernel bpf_test_timer_continue(); e.g.
  // SIGCHLD from a child process that exited): nothing was wrong with the program, run it again
  // (docs/kernel-notes.md, trap 9).
  for (let retry = 0; rc === -constants.errno.EINTR && retry < 5; retry++) {
    t0 = process.hrtime.bigint();
    rc = lib.bpf_prog_test_run_opts(progFd, opts) as number;
  }
  check('test-run xdp program', rc);
  const wallNs = Number(process.hrtime.bigint() - t0);
  return {
    nsPerRun: opts.duration,
    wallNs,
    action: opts.retval,
    data: out ? out.subarray(0, opts.data_size_out) : Buffer.alloc(0),
  };
}
