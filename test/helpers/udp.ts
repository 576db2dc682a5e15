/** Drive test/helpers/udp-tool.mjs inside namespaces; datagramSizes: which sizes of datagram get through. */
import { spawn, type ChildProcess } from 'node:child_process';

import { sh, until } from './env.js';

const TOOL = new URL('./udp-tool.mjs', import.meta.url).pathname;
const SEALED = new URL('./sealed-netns.py', import.meta.url).pathname;

export interface ListenSummary {
  count: number;
  unique: number;
  bad: number;
  dup: number;
  bySport: Record<string, number>;
  seqs: number[];
  /**
   * Datagrams the kernel delivered to the listener's namespace but dropped
   * because the listener's socket buffer was full (UDP RcvbufErrors there,
   * while it listened): the datapath delivered them; a starved listener
   * did not read them in time (a loaded machine).
   */
  overflow: number;
}

/** A UDP listener in a namespace; stop() returns what it received. */
export class UdpListener {
  private constructor(
    private readonly child: ChildProcess,
    private readonly out: Promise<string>,
  ) {}

  /**
   * `netns`: a named namespace, or a path to one (/proc/PID/ns/net: an unnamed namespace), or "sealed:PID:FD" (a
   * namespace only a socket keeps, lab.ts addSealedHost: received there by a process outside it).
   */
  static async start(netns: string, ip: string, port: number): Promise<UdpListener> {
    const ns = netns.startsWith('/') ? netns : `/run/netns/${netns}`;
    const sealed = /^sealed:(\d+):(\d+)$/.exec(netns);
    const child = sealed
      ? spawn('python3', [SEALED, 'listen', sealed[1], sealed[2], ip, String(port)], {
          stdio: ['ignore', 'pipe', 'pipe'],
        })
      : spawn('nsenter', [`--net=${ns}`, process.execPath, TOOL, 'listen', ip, String(port)], {
          stdio: ['ignore', 'pipe', 'pipe'],
        });
    let buf = '';
    let err = '';
    child.stderr!.on('data', (d) => (err += d));
    const out = new Promise<string>((resolve, reject) => {
      child.on('exit', (code) => (code === 0 ? resolve(buf) : reject(new Error(`listener exited ${code}: ${err}`))));
    });
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (d) => {
        buf += d;
        if (buf.includes('READY\n')) resolve();
      });
      child.on('exit', () => reject(new Error(`listener in ${netns} failed: ${err}`)));
    });
    return new UdpListener(child, out);
  }

  async stop(): Promise<ListenSummary> {
    this.child.kill('SIGTERM');
    const text = await this.out;
    return JSON.parse(text.slice(text.indexOf('READY\n') + 6)) as ListenSummary;
  }

  /** Kill without reading (cleanup). */
  kill(): void {
    if (this.child.exitCode === null) this.child.kill('SIGKILL');
  }
}

/** Send datagrams from a namespace; resolves when all are sent. */
export function sendUdp(
  netns: string,
  ip: string,
  port: number,
  count: number,
  opts: { flows?: number; sportBase?: number; perTick?: number; tickMs?: number; size?: number } = {},
): { done: Promise<{ sent: number; errors: number }>; child: ChildProcess; stop: () => void } {
  const args = [
    TOOL,
    'send',
    ip,
    String(port),
    String(count),
    String(opts.flows ?? 1),
    String(opts.sportBase ?? 40000),
    String(opts.perTick ?? 10),
    String(opts.tickMs ?? 10),
    String(opts.size ?? 0),
  ];
  const child = spawn('nsenter', [`--net=/run/netns/${netns}`, process.execPath, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const done = new Promise<{ sent: number; errors: number }>((resolve, reject) => {
    child.on('exit', (code) =>
      code === 0 ? resolve(JSON.parse(out)) : reject(new Error(`sender exited ${code}: ${err}`)),
    );
  });
  // Stop early (SIGUSR1): `done` then reports how many were really sent.
  const stop = () => void child.kill('SIGUSR1');
  return { done, child, stop };
}

/**
 * Prints READY, then the size of each UDP datagram received on (ip, port) until `expected` have come or 1.5 s
 * pass without one (the others were dropped). argv: ip port expected.
 */
const SIZES_RECEIVER = `
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
s.settimeout(1.5)
print('READY', flush=True)
try:
    for _ in range(int(sys.argv[3])):
        print(len(s.recv(65535)), flush=True)
except socket.timeout:
    pass
`;

/**
 * One UDP datagram of each payload size in `sizes`, sent in that order from the named namespace `from` to
 * (`dst`, `port`); returns the sizes received on (`ip`, `port`) in the namespace that `enter` (nsenter's
 * arguments, e.g. ['--net=/run/netns/NAME'] or ['-t', PID, '-n'], or ['sealed:PID:FD']) names, in arrival order. It returns as soon
 * as every one has arrived, else 1.5 s after the last that did (was: always 1.5 s after the last).
 */
export async function datagramSizes(
  from: string,
  dst: string,
  enter: string[],
  ip: string,
  port: number,
  sizes: number[],
): Promise<number[]> {
  // ["sealed:PID:FD"]: a namespace only a socket keeps (lab.ts addSealedHost), received there from outside it.
  const sealed = /^sealed:(\d+):(\d+)$/.exec(enter[0] ?? '');
  const recv = sealed
    ? spawn('python3', [SEALED, 'sizes', sealed[1], sealed[2], ip, String(port), String(sizes.length)], {
        stdio: ['ignore', 'pipe', 'inherit'],
      })
    : spawn('nsenter', [...enter, 'python3', '-c', SIZES_RECEIVER, ip, String(port), String(sizes.length)], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
  let out = '';
  recv.stdout!.on('data', (x) => (out += x));
  const exited = new Promise((r) => recv.once('exit', r));
  await until('receiver ready', () => out.includes('READY'));
  const send = sizes.map((n) => `s.sendto(b'x' * ${n}, ('${dst}', ${port}))`).join('; ');
  sh('ip', ['netns', 'exec', from, 'python3', '-c', `import socket; s = socket.socket(2, 2); ${send}`]);
  await exited;
  return out
    .split('\n')
    .filter((l) => /^\d+$/.test(l))
    .map(Number);
}

/**
 * A python3 program sending `n` UDP datagrams (TTL 64, from `srcIp`, source ports 40000 + i) out of `dev` to
 * `dstIp`:`port` at `dstMac`, as raw frames (no route, no neighbour entry needed). With `gapMs`, one every
 * `gapMs` ms, each printed (its number, a line) once sent: a stream to stop with SIGTERM, the lines counting
 * what was sent.
 */
export const rawUdpFrames = (
  dev: string,
  srcMac: string,
  dstMac: string,
  dstIp: string,
  port: number,
  n: number,
  srcIp = '198.18.44.9',
  gapMs?: number,
) => `
import socket, struct, time
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return ~s & 0xffff
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
s.bind(('${dev}', 0))
m = lambda x: bytes(int(y, 16) for y in x.split(':'))
for seq in range(${n}):
    udp = struct.pack('!HHHH', 40000 + seq, ${port}, 8 + 16, 0) + bytes(16)
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(udp), seq, 0x4000, 64, 17, 0,
                    socket.inet_aton('${srcIp}'), socket.inet_aton('${dstIp}'))
    h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
    s.send(m('${dstMac}') + m('${srcMac}') + b'\\x08\\x00' + h + udp)
${
  gapMs === undefined
    ? ''
    : `    print(seq, flush=True)
    time.sleep(${gapMs / 1000})
`
}`;
