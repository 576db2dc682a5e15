#!/usr/bin/env node
// UDP traffic for integration tests, run inside a namespace with nsenter.
//   listen <ip> <port>          prints READY, counts datagrams until SIGTERM/SIGINT and
//                               its socket is drained, then prints a JSON summary and exits
//   send <ip> <port> <count> [flows=1] [sportBase=40000] [perTick=10] [tickMs=10] [size=0]
//                               sends <count> datagrams (of at least <size> bytes) round-robin over <flows>
//                               source ports, <perTick> every <tickMs> (SIGUSR1 stops it early); prints JSON
// Payload: "xdpctl seq=<n> sport=<p> " + filler derived from seq, so the listener
// can tell a datagram arrived intact.
import dgram from 'node:dgram';
import { readFileSync } from 'node:fs';

const [mode, ip, portText, ...rest] = process.argv.slice(2);
const port = Number(portText);
const filler = (seq, length = 64) => Buffer.from(Array.from({ length }, (_, i) => (seq * 31 + i * 7) & 0xff));

function payload(seq, sport, size = 0) {
  const head = Buffer.from(`xdpctl seq=${seq} sport=${sport} `);
  return Buffer.concat([head, filler(seq, Math.max(64, size - head.length))]);
}

/** This namespace's UDP RcvbufErrors (/proc/net/snmp): datagrams that reached a socket whose buffer was full. */
function rcvbufErrors() {
  const lines = readFileSync('/proc/net/snmp', 'utf8')
    .split('\n')
    .filter((l) => l.startsWith('Udp: '));
  const names = lines[0].split(/\s+/);
  return Number(lines[1].split(/\s+/)[names.indexOf('RcvbufErrors')]);
}

if (mode === 'listen') {
  const overflowAtStart = rcvbufErrors();
  const sock = dgram.createSocket('udp4');
  const seqs = new Set();
  const bySport = {};
  let count = 0;
  let bad = 0;
  let dup = 0;
  sock.on('message', (msg, rinfo) => {
    count++;
    const m = /^xdpctl seq=(\d+) sport=(\d+) /.exec(msg.toString('latin1'));
    if (!m) return void bad++;
    const seq = Number(m[1]);
    const head = Buffer.byteLength(m[0]);
    if (!msg.subarray(head).equals(filler(seq, msg.length - head)) || Number(m[2]) !== rinfo.port) return void bad++;
    if (seqs.has(seq)) dup++;
    seqs.add(seq);
    bySport[rinfo.port] = (bySport[rinfo.port] ?? 0) + 1;
  });
  let last = Date.now();
  sock.on('message', () => (last = Date.now()));
  const finish = () => {
    process.stdout.write(
      JSON.stringify({
        count,
        unique: seqs.size,
        bad,
        dup,
        bySport,
        seqs: [...seqs].sort((a, b) => a - b),
        overflow: rcvbufErrors() - overflowAtStart,
      }) + '\n',
    );
    sock.close();
    process.exit(0);
  };
  // Stop only once the socket's queue is drained: on a loaded machine this process may lag behind the
  // sender, and datagrams the kernel delivered but we have not read yet must still count. Drained means
  // 200 ms without a datagram (the sender has stopped before we are told to stop), at most 10 s.
  const drainThenFinish = () => {
    const asked = Date.now();
    const check = () => (Date.now() - last >= 200 || Date.now() - asked > 10_000 ? finish() : setTimeout(check, 50));
    check();
  };
  process.on('SIGTERM', drainThenFinish);
  process.on('SIGINT', drainThenFinish);
  sock.bind(port, ip, () => process.stdout.write('READY\n'));
} else if (mode === 'send') {
  const [countText, flowsText = '1', baseText = '40000', perTickText = '10', tickText = '10', sizeText = '0'] = rest;
  const size = Number(sizeText);
  const count = Number(countText);
  const flows = Number(flowsText);
  const base = Number(baseText);
  const perTick = Number(perTickText);
  const tickMs = Number(tickText);
  const socks = await Promise.all(
    Array.from(
      { length: flows },
      (_, i) =>
        new Promise((resolve, reject) => {
          const s = dgram.createSocket('udp4');
          s.once('error', reject);
          s.bind(base + i, () => resolve(s));
        }),
    ),
  );
  let seq = 0;
  let errors = 0;
  let stopped = false; // SIGUSR1: stop early and report what was sent
  process.on('SIGUSR1', () => (stopped = true));
  const sendOne = () =>
    new Promise((resolve) => {
      const i = seq % flows;
      socks[i].send(payload(seq, base + i, size), port, ip, (err) => {
        if (err) errors++;
        resolve();
      });
      seq++;
    });
  while (seq < count && !stopped) {
    const start = Date.now();
    const batch = [];
    for (let k = 0; k < perTick && seq < count; k++) batch.push(sendOne());
    await Promise.all(batch);
    const wait = tickMs - (Date.now() - start);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  socks.forEach((s) => s.close());
  process.stdout.write(JSON.stringify({ sent: seq, errors }) + '\n');
} else {
  process.stderr.write('usage: udp-tool.mjs listen <ip> <port> | send <ip> <port> <count> [flows] [sportBase]\n');
  process.exit(2);
}
