#!/usr/bin/python3
"""Opens many TCP connections that never send anything (a local denial-of-service attempt) and reports
when the server closed each one. Usage: flood.py PORT COUNT HOLD_SECONDS SOURCES
(connections go to 127.0.0.1:PORT: the first quarter from 127.0.0.1, then from 127.0.0.1 ... 127.0.0.SOURCES in
turn). Prints one JSON line."""
import json
import socket
import sys
import time

port, count, hold, sources = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
socks, failed = [], 0
start = time.monotonic()
for i in range(count):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind((f"127.0.0.{1 if i < count // 4 else 1 + i % sources}", 0))
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    except OSError:
        failed += 1
        s.close()
closed = {}
while time.monotonic() - start < hold and len(closed) < len(socks):
    for i, s in enumerate(socks):
        if i in closed:
            continue
        try:
            if s.recv(65536) == b"":
                closed[i] = time.monotonic() - start
        except BlockingIOError:
            pass
        except OSError:
            closed[i] = time.monotonic() - start
    time.sleep(0.05)
at = sorted(closed.values())
print(json.dumps({"opened": len(socks), "failed": failed, "closed": len(at), "open_at_end": len(socks) - len(at),
                  "closed_within_1s": sum(1 for t in at if t < 1.0)}))
for s in socks:
    s.close()
