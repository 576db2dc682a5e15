#!/usr/bin/env python3
"""Another tool writing xdpctld's Maglev tables (map rule_ring: an mmapable BPF array of u32 backend ids, 1031
per rule slot) through the pinned map, as a review did: BPF_OBJ_GET on the pin, mmap of the array, stores.

  ring-writer.py PIN slots                  -> JSON {slot: [distinct ids]} of the slots holding any non-zero id
  ring-writer.py PIN set SLOT FROM TO       -> every entry of SLOT holding FROM set to TO; prints how many
  ring-writer.py PIN loop SLOT FROM TO N S  -> the same N times, S seconds apart; prints the total
"""
import ctypes
import json
import mmap
import os
import struct
import sys
import time

RING = 1031
BPF_OBJ_GET = 7
BPF_OBJ_GET_INFO_BY_FD = 15
SYS_BPF = 321  # x86_64

libc = ctypes.CDLL(None, use_errno=True)


def bpf(cmd, attr):
    buf = ctypes.create_string_buffer(attr, 128)
    r = libc.syscall(SYS_BPF, cmd, buf, len(buf))
    if r < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return r, buf


def open_pin(path):
    p = ctypes.create_string_buffer(path.encode())
    fd, _ = bpf(BPF_OBJ_GET, struct.pack('QII', ctypes.addressof(p), 0, 0))
    return fd


def max_entries(fd):
    info = ctypes.create_string_buffer(88)
    bpf(BPF_OBJ_GET_INFO_BY_FD, struct.pack('IIQ', fd, len(info), ctypes.addressof(info)))
    # struct bpf_map_info: type, id, key_size, value_size, max_entries, ...
    return struct.unpack_from('IIIII', info.raw)[4]


def ring(pin):
    fd = open_pin(pin)
    n = max_entries(fd)
    # An array's elements are rounded up to 8 bytes in its mmap.
    size = (n * 8 + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
    m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    os.close(fd)
    return m, n


def rewrite(m, slot, old, new):
    done = 0
    for s in range(RING):
        at = (slot * RING + s) * 8
        if struct.unpack_from('<I', m, at)[0] == old:
            struct.pack_into('<I', m, at, new)
            done += 1
    return done


def main():
    pin, op = sys.argv[1], sys.argv[2]
    m, n = ring(pin)
    if op == 'slots':
        out = {}
        zero = bytes(RING * 8)
        u32 = memoryview(m).cast('I')
        for slot in range(n // RING):
            if m[slot * RING * 8:(slot + 1) * RING * 8] == zero:
                continue
            ids = set(u32[slot * RING * 2:(slot + 1) * RING * 2:2])
            ids.discard(0)
            if ids:
                out[slot] = sorted(ids)
        print(json.dumps(out))
    elif op == 'set':
        print(rewrite(m, int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])))
    elif op == 'loop':
        slot, old, new, times, every = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6]), float(sys.argv[7])
        total = 0
        for _ in range(times):
            total += rewrite(m, slot, old, new)
            time.sleep(every)
        print(total)
    else:
        raise SystemExit(f'unknown operation {op}')


main()
