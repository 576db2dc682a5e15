#!/usr/bin/env python3
"""A tap device's reader, as a VM's qemu is: `tap-reader.py NAME IP MAC` creates the tap NAME (IFF_TAP |
IFF_NO_PI, /dev/net/tun), holds its file descriptor and reads every frame from it: it answers ARP requests
for IP from MAC (the backend behind the tap answers ARP as a host does), counts the UDP datagrams it reads,
and drops the rest. Prints "READY" once the tap exists, then "UDP N" on each SIGUSR1. SIGSTOP it to model a
reader that stops reading (the kernel's queue to it fills, the tap's tx_dropped rises); the tap goes with it
when it exits (not persistent)."""
import fcntl
import os
import select
import signal
import socket
import struct
import sys

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000

name, ip, mac = sys.argv[1], sys.argv[2], sys.argv[3]
own_mac = bytes.fromhex(mac.replace(':', ''))
own_ip = socket.inet_aton(ip)
fd = os.open('/dev/net/tun', os.O_RDWR)
fcntl.ioctl(fd, TUNSETIFF, struct.pack('16sH', name.encode(), IFF_TAP | IFF_NO_PI))
udp = 0


def report(*_):
    sys.stdout.write(f'UDP {udp}\n')
    sys.stdout.flush()


signal.signal(signal.SIGUSR1, report)
sys.stdout.write('READY\n')
sys.stdout.flush()
while True:
    try:
        select.select([fd], [], [])
        frame = os.read(fd, 65536)
    except InterruptedError:
        continue
    if len(frame) < 14:
        continue
    ethertype = struct.unpack('!H', frame[12:14])[0]
    if ethertype == 0x0800 and len(frame) >= 34 and frame[23] == 17:
        udp += 1
    elif ethertype == 0x0806 and len(frame) >= 42:
        op = struct.unpack('!H', frame[20:22])[0]
        sha, spa, tpa = frame[22:28], frame[28:32], frame[38:42]
        if op == 1 and tpa == own_ip:
            reply = sha + own_mac + b'\x08\x06' + struct.pack('!HHBBH', 1, 0x0800, 6, 4, 2)
            reply += own_mac + own_ip + sha + spa
            os.write(fd, reply)
