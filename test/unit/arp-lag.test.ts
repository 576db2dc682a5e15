/**
 * dataplane/arp.ts ArpProber on a loaded machine, with a fake socket and clock: a question is called silent
 * only after a window the daemon watched (its loop not lagging past the window, no frame dropped for its
 * socket); an answer queued during a stall is read before any deadline and dated by its arrival; a request
 * that could not be sent is "cannot tell". Before: a stall longer than the window after the last request made
 * it silent at the first tick after the stall, whatever the host did meanwhile.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  ArpProber,
  type ArpAnswer,
  type ArpIo,
  type ArpQuestion,
  type ArpUnknown,
} from '../../src/server/dataplane/arp.js';

const OWN = '02:00:00:00:00:01';
const HOST = '02:00:00:00:00:02';
const mac = (m: string) => Buffer.from(m.split(':').map((x) => parseInt(x, 16)));

/** A socket whose frames, drops and send results the test sets. */
class FakeIo implements ArpIo {
  queue: { frame: Buffer; from: Buffer; at: number }[] = [];
  sent = 0;
  failSends = false;
  pendingDrops = 0;
  private lastAt?: number;
  open() {
    return 7;
  }
  send() {
    if (this.failSends) return -105; // ENOBUFS
    this.sent++;
    return 0;
  }
  recv(_fd: number, buf: Buffer, from: Buffer) {
    const f = this.queue.shift();
    if (!f) return -11; // EAGAIN
    f.frame.copy(buf);
    f.from.copy(from);
    this.lastAt = f.at;
    return f.frame.length;
  }
  stamp() {
    return this.lastAt;
  }
  drops() {
    const d = this.pendingDrops;
    this.pendingDrops = 0;
    return d;
  }
  close() {}
  /** The host's reply to our request for 10.0.0.2 (from 10.0.0.1), arrived at `at`. */
  reply(at: number) {
    const p = Buffer.alloc(28);
    p.writeUInt16BE(1, 0);
    p.writeUInt16BE(0x0800, 2);
    p[4] = 6;
    p[5] = 4;
    p.writeUInt16BE(2, 6);
    mac(HOST).copy(p, 8);
    Buffer.from([10, 0, 0, 2]).copy(p, 14);
    mac(OWN).copy(p, 18);
    Buffer.from([10, 0, 0, 1]).copy(p, 24);
    const from = Buffer.alloc(20);
    from.writeInt32LE(3, 4); // ifindex
    from[10] = 0; // PACKET_HOST
    from[11] = 6;
    mac(HOST).copy(from, 12);
    this.queue.push({ frame: p, from, at });
  }
}

function setup() {
  let now = 1_000_000;
  const io = new FakeIo();
  const out = { answers: [] as ArpAnswer[], silent: [] as ArpQuestion[], unknown: [] as ArpUnknown[] };
  const p = new ArpProber(
    (a) => out.answers.push(a),
    (q) => out.silent.push(q),
    () => now,
    undefined,
    (u) => out.unknown.push(u),
    io,
  );
  const q: ArpQuestion = { ip: '10.0.0.2', iface: 'eth9', ifindex: 3, mac: HOST, sender: '10.0.0.1' };
  assert.equal(p.ask(q, OWN), true);
  /** Advance the clock by `ms` in ticks of `step` ms (a loop that runs), then one tick. */
  const run = (ms: number, step = 10) => {
    for (let t = 0; t < ms; t += step) {
      now += step;
      p.tick();
    }
  };
  /** The loop stopped for `ms`, then one tick. */
  const stall = (ms: number) => {
    now += ms;
    p.tick();
  };
  return { p, io, out, run, stall, at: () => now };
}

describe('ARP requests on a loaded machine (the daemon lags)', () => {
  it('a host that answers nothing is silent after windows the loop watched', () => {
    const { p, io, out, run } = setup();
    run(700);
    assert.equal(io.sent, 3);
    assert.equal(out.silent.length, 1);
    assert.equal(out.unknown.length, 0);
    p.close();
  });

  it('a stall longer than the window after the last request: asked again, not silent', () => {
    const { p, io, out, run, stall } = setup();
    run(400); // requests 1-3 sent
    assert.equal(io.sent, 3);
    stall(1000);
    assert.equal(out.silent.length, 0, 'not silent at the first tick after the stall');
    assert.equal(io.sent, 4, 'asked again, with a window of its own');
    run(250); // a watched window, no answer: silent now
    assert.equal(out.silent.length, 1);
    p.close();
  });

  it('an answer that arrived during the stall is read before any deadline, dated by its arrival', () => {
    const { p, io, out, run, stall, at } = setup();
    run(400);
    const arrived = at() + 50;
    io.reply(arrived);
    stall(1500);
    assert.equal(out.silent.length, 0);
    assert.equal(out.answers.length, 1);
    assert.equal(out.answers[0].at, arrived, 'the kernel receive time, not the read time');
    p.close();
  });

  it('frames dropped for the socket in the window: cannot tell, asked again', () => {
    const { p, io, out, run } = setup();
    run(400);
    io.pendingDrops = 12;
    run(200);
    assert.equal(out.silent.length, 0, 'the answer may have been dropped');
    assert.equal(io.sent, 4);
    p.close();
  });

  it('a loop that lags past every window: cannot tell, never silent', () => {
    const { p, out, stall } = setup();
    for (let i = 0; i < 12; i++) stall(1000);
    assert.equal(out.silent.length, 0);
    assert.equal(out.unknown.length, 1);
    assert.match(out.unknown[0].why, /event loop lagged \d+ ms \(window 200 ms\)/);
    p.close();
  });

  it('a request that could not be sent is no silence', () => {
    const { p, io, out, run } = setup();
    io.failSends = true;
    run(300);
    assert.equal(out.silent.length, 0);
    assert.equal(out.unknown.length, 1);
    assert.match(out.unknown[0].why, /could not be sent .*ENOBUFS/);
    p.close();
  });
});
