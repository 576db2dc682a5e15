#!/usr/bin/env python3
"""Keep the kernel's IPv4 neighbour table full from the namespace it runs in (test/integration/neighbour-table-full).

argv: DEV COUNT PERIOD_MS. Every PERIOD_MS it writes COUNT entries 100.64.X.Y on DEV (nud reachable), each with
the other of two MACs than the round before: a changed MAC makes the entry fresh (neigh->updated), and forced GC
evicts only entries older than 5 s, so the ones it made stay while the others of the table are evicted. One
RTM_NEWNEIGH each over one netlink socket (`ip -batch` exits at the first refused entry, -force or not). A line
"del IP DEV" on stdin deletes that entry; the entries the kernel refused are asked again every 50 ms (at once
after a delete), so that the room any eviction leaves is taken by ours. After each round it prints {"round",
"ok", "enobufs", "other", "topups"} (the kernel's answers to that round's entries; entries made between rounds),
after a delete {"deleted", "taken", "missing"}.
"""
import json
import os
import select
import signal
import socket
import struct
import sys
import time

AF_INET = 2
RTM_NEWNEIGH, RTM_DELNEIGH = 28, 29
NLM_F_REQUEST, NLM_F_ACK, NLM_F_REPLACE, NLM_F_CREATE = 1, 4, 0x100, 0x400
NLMSG_ERROR = 2
NDA_DST, NDA_LLADDR = 1, 2
NUD_REACHABLE = 2
ENOBUFS = 105

dev, count, period = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) / 1000
ifindex = socket.if_nametoindex(dev)
nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
nl.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
nl.bind((0, 0))
seq = 0
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def attr(t, payload):
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + b"\0" * ((4 - n % 4) % 4)


def request(kind, flags, ifx, ip, mac=None):
    global seq
    seq += 1
    body = struct.pack("=BBHiHBB", AF_INET, 0, 0, ifx, NUD_REACHABLE if mac else 0, 0, 0)
    body += attr(NDA_DST, socket.inet_aton(ip))
    if mac:
        body += attr(NDA_LLADDR, mac)
    nl.send(struct.pack("=IHHII", 16 + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags, seq, 0) + body)


def answers(expected):
    """The errno of each of `expected` acknowledgements (0: done)."""
    out = []
    while len(out) < expected:
        data = nl.recv(1 << 20)
        i = 0
        while i + 16 <= len(data):
            n, t = struct.unpack_from("=IH", data, i)
            if t == NLMSG_ERROR:
                out.append(-struct.unpack_from("=i", data, i + 16)[0])
            i += (n + 3) & ~3
    return out


def write(indexes, r):
    """Write the entries of `indexes` (MAC of round r); returns (ok, enobufs, other) and the refused indexes."""
    ok = enobufs = other = 0
    refused = []
    indexes = list(indexes)
    for start in range(0, len(indexes), 64):
        batch = indexes[start:start + 64]
        for i in batch:
            request(RTM_NEWNEIGH, NLM_F_CREATE | NLM_F_REPLACE, ifindex, f"100.64.{i >> 8}.{i & 255}",
                    bytes([2, 0xDD + (r & 1), 0, 0, i >> 8, i & 255]))
        for i, e in zip(batch, answers(len(batch))):
            if e == 0:
                ok += 1
            elif e == ENOBUFS:
                enobufs += 1
                refused.append(i)
            else:
                other += 1
    return (ok, enobufs, other), refused


r = 0
(ok, enobufs, other), missing = write(range(count), r)
print(json.dumps({"round": r, "ok": ok, "enobufs": enobufs, "other": other}), flush=True)
next_at = time.monotonic() + period
topups = 0
while True:
    # Between the rounds, the entries refused are asked again every 50 ms: whatever room the kernel makes
    # (evicting an entry older than 5 s, anyone's) is taken by ours at once.
    ready, _, _ = select.select([sys.stdin], [], [], max(0, min(0.05, next_at - time.monotonic())))
    deleted = False
    if ready:
        line = sys.stdin.readline()
        if not line:
            sys.exit(0)
        words = line.split()
        if len(words) == 3 and words[0] == "del":
            request(RTM_DELNEIGH, 0, socket.if_nametoindex(words[2]), words[1])
            answers(1)
            deleted = True
    if time.monotonic() >= next_at:
        r += 1
        (ok, enobufs, other), missing = write(range(count), r)
        print(json.dumps({"round": r, "ok": ok, "enobufs": enobufs, "other": other, "topups": topups}), flush=True)
        next_at = time.monotonic() + period
    elif missing:
        (ok, _, _), missing = write(missing, r)
        topups += ok
        if deleted:
            print(json.dumps({"round": r, "deleted": words[1], "taken": ok, "missing": len(missing)}), flush=True)
    elif deleted:
        print(json.dumps({"round": r, "deleted": words[1], "taken": 0, "missing": 0}), flush=True)
