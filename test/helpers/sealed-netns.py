"""A network namespace that only sockets keep: no name, no bind mount, no process in it, no open namespace
file (what xdpctld cannot enter: src/server/dataplane/netns-find.ts). Used by test/helpers/lab.ts
(Lab.addSealedHost). Modes:

  hold                       make the namespace, keep one UDP socket made in it, go back to the namespace
                             it was started in; prints "READY <fd>" (the socket's fd) and sleeps until killed
  run PID FD CMD...          run CMD inside the namespace of socket FD of process PID (pidfd_getfd, then
                             SIOCGSKNS: the socket's namespace), as nsenter would
  move PID FD IFNAME         move device IFNAME of this namespace into it (ip link set ... netns FILE)
  listen PID FD IP PORT      bind a UDP socket to IP:PORT in it and receive from outside it (this process is
                             never in it); prints READY, then on SIGTERM a JSON summary as udp-tool.mjs does
  sizes PID FD IP PORT N     the same socket; prints READY, then the size of each datagram received until N
                             have come or 1.5 s pass without one (as udp.ts datagramSizes' receiver)
"""
import ctypes
import fcntl
import json
import os
import re
import select
import signal
import socket
import sys
import time

CLONE_NEWNET = 0x40000000
SIOCGSKNS = 0x894C
SYS_PIDFD_GETFD = 438  # x86-64 and arm64 alike
libc = ctypes.CDLL(None, use_errno=True)


def check(rc, what):
    if rc < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return rc


def ns_fd(pid, fd):
    """A file of the namespace socket `fd` of process `pid` was made in."""
    pidfd = os.pidfd_open(pid)
    try:
        sock = check(libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0), "pidfd_getfd")
    finally:
        os.close(pidfd)
    try:
        return check(fcntl.ioctl(sock, SIOCGSKNS), "SIOCGSKNS")
    finally:
        os.close(sock)


def enter(nsfd):
    check(libc.setns(nsfd, CLONE_NEWNET), "setns")


mode = sys.argv[1]
if mode == "hold":
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    check(libc.unshare(CLONE_NEWNET), "unshare")
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    enter(home)
    os.close(home)
    print(f"READY {s.fileno()}", flush=True)
    while True:
        signal.pause()
elif mode == "run":
    nsfd = ns_fd(int(sys.argv[2]), int(sys.argv[3]))
    enter(nsfd)
    os.close(nsfd)
    os.execvp(sys.argv[4], sys.argv[4:])
elif mode == "move":
    nsfd = ns_fd(int(sys.argv[2]), int(sys.argv[3]))
    os.set_inheritable(nsfd, True)
    os.execvp("ip", ["ip", "link", "set", "dev", sys.argv[4], "netns", f"/proc/self/fd/{nsfd}"])
elif mode in ("listen", "sizes"):
    ip, port = sys.argv[4], int(sys.argv[5])
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    nsfd = ns_fd(int(sys.argv[2]), int(sys.argv[3]))
    enter(nsfd)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.bind((ip, port))
    enter(home)
    os.close(home)
    os.close(nsfd)
    if mode == "sizes":
        s.settimeout(1.5)
        print("READY", flush=True)
        try:
            for _ in range(int(sys.argv[6])):
                print(len(s.recv(65535)), flush=True)
        except socket.timeout:
            pass
        sys.exit(0)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    seqs, by_sport, count, bad, dup = set(), {}, 0, 0, 0
    print("READY", flush=True)
    last = time.monotonic()
    while True:
        if stop and time.monotonic() - last > 0.1:
            break
        try:
            r, _, _ = select.select([s], [], [], 0.05)
        except InterruptedError:
            continue
        if not r:
            continue
        msg, (_, sport) = s.recvfrom(65535)
        last = time.monotonic()
        count += 1
        m = re.match(rb"xdpctl seq=(\d+) sport=(\d+) ", msg)
        if not m or int(m.group(2)) != sport:
            bad += 1
            continue
        seq = int(m.group(1))
        if seq in seqs:
            dup += 1
        seqs.add(seq)
        by_sport[str(sport)] = by_sport.get(str(sport), 0) + 1
    summary = {"count": count, "unique": len(seqs), "bad": bad, "dup": dup, "bySport": by_sport,
               "seqs": sorted(seqs), "overflow": 0}
    sys.stdout.write(json.dumps(summary))
    sys.stdout.flush()
else:
    sys.exit(f"unknown mode {mode}")
