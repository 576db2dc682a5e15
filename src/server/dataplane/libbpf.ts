/**
 * The raw binding to the system's libbpf.so.1 (and the few libc calls we
 * need), through koffi. This file declares C signatures and nothing else;
 * callers turn every negative return into a KernelError through {@link check}.
 * Only src/server/dataplane/ may import this module (and koffi).
 *
 * Conventions seen with libbpf 1.1 (docs/kernel-notes.md, koffi and libbpf): calls
 * return 0 or -errno and set errno; pointer-returning calls give NULL and set
 * errno; koffi returns pointers as opaque objects and NULL as null.
 */
import koffi, { type TypeObject } from 'koffi';

import { KernelError } from './errors.js';

const bpf = koffi.load('libbpf.so.1');
const libc = koffi.load('libc.so.6');

const bpfObject = koffi.opaque('bpf_object');
const bpfProgram = koffi.opaque('bpf_program');
const bpfMap = koffi.opaque('bpf_map');
const bpfLink = koffi.opaque('bpf_link');
void bpfObject;
void bpfProgram;
void bpfLink;
void bpfMap;

/** struct bpf_object_open_opts, truncated after pin_root_path (sz tells libbpf). */
export const ObjectOpenOpts = koffi.struct('bpf_object_open_opts', {
  sz: 'size_t',
  object_name: 'const char *',
  relaxed_maps: 'bool',
  pin_root_path: 'const char *',
});

/** struct bpf_test_run_opts (libbpf 1.1). */
export const TestRunOpts = koffi.struct('bpf_test_run_opts', {
  sz: 'size_t',
  data_in: 'void *',
  data_out: 'void *',
  data_size_in: 'uint32_t',
  data_size_out: 'uint32_t',
  ctx_in: 'void *',
  ctx_out: 'void *',
  ctx_size_in: 'uint32_t',
  ctx_size_out: 'uint32_t',
  retval: 'uint32_t',
  repeat: 'int',
  duration: 'uint32_t',
  flags: 'uint32_t',
  cpu: 'uint32_t',
  batch_size: 'uint32_t',
});

/** struct bpf_prog_query_opts (libbpf 1.1: up to prog_attach_flags). */
export const ProgQueryOpts = koffi.struct('bpf_prog_query_opts', {
  sz: 'size_t',
  query_flags: 'uint32_t',
  attach_flags: 'uint32_t',
  prog_ids: 'void *',
  prog_cnt: 'uint32_t',
  prog_attach_flags: 'void *',
});

/** struct bpf_xdp_query_opts. */
export const XdpQueryOpts = koffi.struct('bpf_xdp_query_opts', {
  sz: 'size_t',
  prog_id: 'uint32_t',
  drv_prog_id: 'uint32_t',
  hw_prog_id: 'uint32_t',
  skb_prog_id: 'uint32_t',
  attach_mode: 'uint8_t',
});

/** struct bpf_xdp_attach_opts. */
export const XdpAttachOpts = koffi.struct('bpf_xdp_attach_opts', {
  sz: 'size_t',
  old_prog_fd: 'int',
});

/** struct bpf_map_batch_opts. */
export const MapBatchOpts = koffi.struct('bpf_map_batch_opts', {
  sz: 'size_t',
  elem_flags: 'uint64_t',
  flags: 'uint64_t',
});

const PrintFn = koffi.proto('int libbpf_print_fn(int level, const char *fmt, void *ap)');

/* eslint-disable @typescript-eslint/no-explicit-any -- koffi functions are untyped */
type Fn = (...args: any[]) => any;
/* eslint-enable @typescript-eslint/no-explicit-any */

/** The libbpf and libc functions we call. Opaque handles are `unknown`. */
export const lib = {
  // objects, programs, maps
  bpf_object__open_file: bpf.func(
    'bpf_object *bpf_object__open_file(const char *path, const bpf_object_open_opts *opts)',
  ) as Fn,
  bpf_object__load: bpf.func('int bpf_object__load(bpf_object *obj)') as Fn,
  bpf_object__close: bpf.func('void bpf_object__close(bpf_object *obj)') as Fn,
  bpf_object__find_program_by_name: bpf.func(
    'bpf_program *bpf_object__find_program_by_name(bpf_object *obj, const char *name)',
  ) as Fn,
  bpf_object__find_map_by_name: bpf.func(
    'bpf_map *bpf_object__find_map_by_name(bpf_object *obj, const char *name)',
  ) as Fn,
  bpf_object__next_map: bpf.func('bpf_map *bpf_object__next_map(bpf_object *obj, bpf_map *map)') as Fn,
  bpf_program__fd: bpf.func('int bpf_program__fd(bpf_program *prog)') as Fn,
  bpf_program__set_autoload: bpf.func('int bpf_program__set_autoload(bpf_program *prog, bool autoload)') as Fn,
  libbpf_version_string: bpf.func('const char *libbpf_version_string(void)') as Fn,
  bpf_program__attach: bpf.func('bpf_link *bpf_program__attach(bpf_program *prog)') as Fn,
  bpf_link__pin: bpf.func('int bpf_link__pin(bpf_link *link, const char *path)') as Fn,
  bpf_link__destroy: bpf.func('int bpf_link__destroy(bpf_link *link)') as Fn,
  bpf_link__fd: bpf.func('int bpf_link__fd(const bpf_link *link)') as Fn,
  bpf_map__fd: bpf.func('int bpf_map__fd(bpf_map *map)') as Fn,
  bpf_map__name: bpf.func('const char *bpf_map__name(bpf_map *map)') as Fn,
  bpf_map__type: bpf.func('int bpf_map__type(bpf_map *map)') as Fn,
  bpf_map__key_size: bpf.func('uint32_t bpf_map__key_size(bpf_map *map)') as Fn,
  bpf_map__value_size: bpf.func('uint32_t bpf_map__value_size(bpf_map *map)') as Fn,
  bpf_map__max_entries: bpf.func('uint32_t bpf_map__max_entries(bpf_map *map)') as Fn,
  bpf_map__map_flags: bpf.func('uint32_t bpf_map__map_flags(bpf_map *map)') as Fn,
  bpf_map__set_max_entries: bpf.func('int bpf_map__set_max_entries(bpf_map *map, uint32_t n)') as Fn,
  bpf_map__reuse_fd: bpf.func('int bpf_map__reuse_fd(bpf_map *map, int fd)') as Fn,
  bpf_map__is_pinned: bpf.func('bool bpf_map__is_pinned(bpf_map *map)') as Fn,
  bpf_map__pin_path: bpf.func('const char *bpf_map__pin_path(bpf_map *map)') as Fn,
  // low-level map operations on fds
  bpf_map_update_elem: bpf.func(
    'int bpf_map_update_elem(int fd, const void *key, const void *value, uint64_t flags)',
  ) as Fn,
  bpf_map_lookup_elem: bpf.func('int bpf_map_lookup_elem(int fd, const void *key, _Out_ void *value)') as Fn,
  bpf_map_delete_elem: bpf.func('int bpf_map_delete_elem(int fd, const void *key)') as Fn,
  bpf_map_get_next_key: bpf.func('int bpf_map_get_next_key(int fd, const void *key, _Out_ void *next_key)') as Fn,
  bpf_map_update_batch: bpf.func(
    'int bpf_map_update_batch(int fd, const void *keys, const void *values, _Inout_ uint32_t *count, const bpf_map_batch_opts *opts)',
  ) as Fn,
  bpf_map_delete_batch: bpf.func(
    'int bpf_map_delete_batch(int fd, const void *keys, _Inout_ uint32_t *count, const bpf_map_batch_opts *opts)',
  ) as Fn,
  bpf_map_lookup_batch: bpf.func(
    'int bpf_map_lookup_batch(int fd, void *in_batch, _Out_ void *out_batch, _Out_ void *keys, _Out_ void *values, _Inout_ uint32_t *count, const bpf_map_batch_opts *opts)',
  ) as Fn,
  bpf_map_create: bpf.func(
    'int bpf_map_create(int map_type, const char *map_name, uint32_t key_size, uint32_t value_size, uint32_t max_entries, const void *opts)',
  ) as Fn,
  // objects by fd / id / pin
  bpf_obj_pin: bpf.func('int bpf_obj_pin(int fd, const char *path)') as Fn,
  bpf_obj_get: bpf.func('int bpf_obj_get(const char *path)') as Fn,
  bpf_obj_get_info_by_fd: bpf.func(
    'int bpf_obj_get_info_by_fd(int fd, _Inout_ void *info, _Inout_ uint32_t *info_len)',
  ) as Fn,
  bpf_prog_get_fd_by_id: bpf.func('int bpf_prog_get_fd_by_id(uint32_t id)') as Fn,
  // XDP
  bpf_xdp_attach: bpf.func(
    'int bpf_xdp_attach(int ifindex, int prog_fd, uint32_t flags, const bpf_xdp_attach_opts *opts)',
  ) as Fn,
  bpf_xdp_detach: bpf.func('int bpf_xdp_detach(int ifindex, uint32_t flags, const bpf_xdp_attach_opts *opts)') as Fn,
  bpf_xdp_query: bpf.func('int bpf_xdp_query(int ifindex, int flags, _Inout_ bpf_xdp_query_opts *opts)') as Fn,
  // tc (tcx programs of a device: BPF_TCX_INGRESS/EGRESS, target = ifindex)
  bpf_prog_query_opts: bpf.func(
    'int bpf_prog_query_opts(int target, uint32_t type, _Inout_ bpf_prog_query_opts *opts)',
  ) as Fn,
  bpf_prog_test_run_opts: bpf.func('int bpf_prog_test_run_opts(int prog_fd, _Inout_ bpf_test_run_opts *opts)') as Fn,
  // misc
  libbpf_num_possible_cpus: bpf.func('int libbpf_num_possible_cpus(void)') as Fn,
  libbpf_set_print: bpf.func('void *libbpf_set_print(libbpf_print_fn *fn)') as Fn,
  // libc
  vsnprintf: libc.func('int vsnprintf(_Out_ uint8_t *buf, size_t n, const char *fmt, void *ap)') as Fn,
  if_nametoindex: libc.func('unsigned int if_nametoindex(const char *name)') as Fn,
  if_indextoname: libc.func('char *if_indextoname(unsigned int ifindex, _Out_ uint8_t *buf)') as Fn,
  close: libc.func('int close(int fd)') as Fn,
  // fcntl(fd, F_DUPFD_CLOEXEC, 'int', 0): a descriptor of the same map for another thread (slot-watch.ts)
  fcntl: libc.func('int fcntl(int fd, int cmd, ...)') as Fn,
  // BPF_F_MMAPABLE array maps (the kernel maps the array's pages; MAP_FAILED is (void *)-1)
  mmap: libc.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off)') as Fn,
  munmap: libc.func('int munmap(void *addr, size_t len)') as Fn,
  setns: libc.func('int setns(int fd, int nstype)') as Fn,
};

/** The size of a koffi struct type. */
export const sizeOf = (t: TypeObject): number => koffi.sizeof(t);

/** The thread's errno after the last call. */
export function lastErrno(): number {
  return koffi.errno();
}

/** Clear errno before a call whose failure is reported only through errno. */
export function clearErrno(): void {
  koffi.errno(0);
}

/**
 * Turn a libbpf return into a value or a KernelError. libbpf 1.x returns
 * -errno; some calls return -1 and leave the cause in errno.
 */
export function check(op: string, ret: number, log?: readonly string[]): number {
  if (ret >= 0) return ret;
  const errno = ret === -1 ? koffi.errno() || 1 : -ret;
  throw new KernelError(op, errno, log);
}

/** A NULL-returning call failed: build the error from errno. */
export function nullError(op: string, log?: readonly string[]): KernelError {
  return new KernelError(op, koffi.errno() || 22, log);
}

/**
 * bpf_object__open_file(path) with no pin root (maps pinned by name are not pinned: the caller pins what it
 * keeps) and strict map definitions: the opened object, or a KernelError naming `open PATH` with libbpf's
 * `log` lines.
 */
export function openObjectFile(path: string, log?: readonly string[]): unknown {
  clearErrno();
  const obj = lib.bpf_object__open_file(path, {
    sz: sizeOf(ObjectOpenOpts),
    object_name: null,
    relaxed_maps: false,
    pin_root_path: null,
  });
  if (!obj) throw nullError(`open ${path}`, log);
  return obj;
}

// ---- libbpf log capture -------------------------------------------------

/** libbpf's log levels. */
export const LIBBPF_WARN = 0;
export const LIBBPF_INFO = 1;
export const LIBBPF_DEBUG = 2;

type PrintSink = (level: number, line: string) => void;
const sinks = new Set<PrintSink>();
let printInstalled = false;
const printBuf = Buffer.alloc(8192);

/**
 * Route libbpf's log (including the verifier log on a failed load) to a sink
 * for as long as the returned function is not called. libbpf has one global
 * print callback; we install it once and fan out.
 */
export function captureLibbpfLog(sink: PrintSink): () => void {
  if (!printInstalled) {
    const cb = koffi.register((level: number, fmt: string, ap: unknown) => {
      const n = lib.vsnprintf(printBuf, printBuf.length, fmt, ap) as number;
      const text = printBuf.subarray(0, Math.max(0, Math.min(n, printBuf.length - 1))).toString();
      for (const line of text.split('\n')) {
        if (line.trim() === '') continue;
        for (const s of sinks) s(level, line);
      }
      return 0;
    }, koffi.pointer(PrintFn));
    lib.libbpf_set_print(cb);
    printInstalled = true;
  }
  sinks.add(sink);
  return () => sinks.delete(sink);
}

let cpus = 0;
/** Number of possible CPUs: the multiplier of per-CPU map values. */
export function possibleCpus(): number {
  if (cpus === 0) cpus = check('count possible cpus', lib.libbpf_num_possible_cpus() as number);
  return cpus;
}

/**
 * Map `len` bytes of a BPF_F_MMAPABLE array map from byte `offset` (a
 * multiple of the page size), shared and writable, run `fn` over them and
 * unmap, even when `fn` throws. The memory is only valid inside `fn`: it
 * points at the kernel's pages, which the XDP program reads concurrently
 * (4-byte stores are atomic on every architecture the kernel maps this on).
 * The mapping is transient on purpose: a mapped page counts in the process's
 * RSS, and the rings of 10 000 rules are 80 MB.
 */
export function withMappedMap<T>(
  fd: number,
  offset: number,
  len: number,
  fn: (mem: ArrayBuffer) => T,
  what: string,
): T {
  const PROT_READ_WRITE = 3;
  const MAP_SHARED = 1;
  const addr: unknown = lib.mmap(null, len, PROT_READ_WRITE, MAP_SHARED, fd, offset);
  if (addr === null || koffi.address(addr) === MAP_FAILED) {
    throw new KernelError(`map ${what} into memory`, koffi.errno() || 22);
  }
  try {
    return fn(koffi.view(addr, len));
  } finally {
    lib.munmap(addr, len);
  }
}

const MAP_FAILED = 0xffffffffffffffffn;

/** A mapping kept open ({@link mapPages}); valid until {@link unmapPages}. */
export interface Mapping {
  addr: unknown;
  len: number;
  mem: ArrayBuffer;
}

/** Map `len` bytes of a BPF_F_MMAPABLE array map from byte `offset` and keep them mapped. */
export function mapPages(fd: number, offset: number, len: number, what: string): Mapping {
  const addr: unknown = lib.mmap(null, len, 3 /* PROT_READ|PROT_WRITE */, 1 /* MAP_SHARED */, fd, offset);
  if (addr === null || koffi.address(addr) === MAP_FAILED) {
    throw new KernelError(`map ${what} into memory`, koffi.errno() || 22);
  }
  return { addr, len, mem: koffi.view(addr, len) };
}

/** Unmap a {@link mapPages} mapping (its memory must not be used after). */
export function unmapPages(m: Mapping): void {
  lib.munmap(m.addr, m.len);
}

/** The page size mappings are aligned to. */
export const PAGE_SIZE = 4096;

/** Close a file descriptor returned by the kernel. */
export function closeFd(fd: number): void {
  if (fd >= 0) lib.close(fd);
}
