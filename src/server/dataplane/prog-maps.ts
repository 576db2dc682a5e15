/**
 * The ids of the maps an XDP program uses, read natively: bpf_prog_info's `map_ids` is a user pointer
 * (struct bpf_prog_info, include/uapi/linux/bpf.h: `nr_map_ids` u32 at offset 52, `map_ids` u64 at 56),
 * filled by BPF_OBJ_GET_INFO_BY_FD into memory koffi allocates. No bpftool (the container image has none)
 * and no capability beyond holding the program's fd.
 */
import koffi from 'koffi';

import { check, lib } from './libbpf.js';

const INFO_SIZE = 256;
const NR_MAP_IDS = 52;
const MAP_IDS = 56;

/** The ids of the maps the program behind `fd` uses (`what` names it in an error). */
export function programMapIds(fd: number, what: string): number[] {
  const buf = Buffer.alloc(INFO_SIZE);
  check(`get info of program ${what}`, lib.bpf_obj_get_info_by_fd(fd, buf, [INFO_SIZE]) as number);
  const n = buf.readUInt32LE(NR_MAP_IDS);
  if (n === 0) return [];
  const ids = koffi.alloc('uint32_t', n);
  try {
    buf.fill(0);
    buf.writeUInt32LE(n, NR_MAP_IDS);
    buf.writeBigUInt64LE(BigInt(koffi.address(ids)), MAP_IDS);
    check(`get map ids of program ${what}`, lib.bpf_obj_get_info_by_fd(fd, buf, [INFO_SIZE]) as number);
    const got = Math.min(n, buf.readUInt32LE(NR_MAP_IDS));
    return [...(koffi.decode(ids, 'uint32_t', got) as Uint32Array)];
  } finally {
    koffi.free(ids);
  }
}
