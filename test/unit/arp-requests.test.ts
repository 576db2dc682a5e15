/**
 * ARP requests of our own (dataplane/arp.ts, adapter.ts askNeighbour): their sender IP, what a status says
 * when none can be sent, and the errno named when the socket is refused.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, it } from 'node:test';

import { arpSenderIp, arpSendFailure } from '../../src/server/dataplane/adapter.js';
import { errnoName } from '../../src/server/dataplane/errors.js';
import { arpRequest } from '../../src/server/dataplane/arp.js';
import { judgeRule, type RuleObservation } from '../../src/server/core/rule-status.js';
import type { RuleStatus } from '../../src/server/core/model.js';

const v4 = (address: string, netmask: string) => ({ address, netmask, family: 'IPv4' });

describe('the sender IP of our ARP requests (as the kernel picks it)', () => {
  it("is the egress's own address in the backend's subnet, else its first, 0.0.0.0 only without any", () => {
    const addrs = [v4('192.0.2.7', '255.255.255.0'), v4('10.1.3.1', '255.255.255.0'), v4('10.1.4.1', '255.255.255.0')];
    assert.equal(arpSenderIp('10.1.3.250', addrs), '10.1.3.1');
    assert.equal(arpSenderIp('10.1.4.9', addrs), '10.1.4.1');
    assert.equal(arpSenderIp('172.16.0.5', addrs), '192.0.2.7');
    assert.equal(
      arpSenderIp('10.1.3.250', [{ address: 'fe80::1', netmask: 'ffff:ffff:ffff:ffff::', family: 'IPv6' }]),
      '0.0.0.0',
    );
    assert.equal(arpSenderIp('10.1.3.250', undefined), '0.0.0.0');
    assert.equal(arpSenderIp('10.200.0.1', [v4('10.128.0.1', '255.128.0.0')]), '10.128.0.1', 'a mask with the top bit');
  });

  it('is written into the request (RFC 826 layout)', () => {
    const own = Buffer.from([2, 0, 0, 0, 0, 1]);
    const p = arpRequest(own, Buffer.from([10, 1, 3, 1]), Buffer.from([10, 1, 3, 250]));
    assert.equal(p.readUInt16BE(6), 1, 'a request');
    assert.deepEqual([...p.subarray(8, 14)], [...own]);
    assert.deepEqual([...p.subarray(14, 18)], [10, 1, 3, 1], 'sender IP');
    assert.deepEqual([...p.subarray(24, 28)], [10, 1, 3, 250], 'target IP');
  });
});

describe('a status when no ARP request of ours can be sent', () => {
  const written = (): RuleStatus => ({
    state: 'active',
    message: 'forwarding to 1 backend(s)',
    backends: [
      { ip: '10.1.3.250', interface: 'eg0', mac: '02:00:00:00:00:09', resolved: true, receiving: true, message: 'x' },
    ],
    warnings: [],
  });
  const rule = { ingressInterfaces: ['in0'], backends: [{ ip: '10.1.3.250', interface: 'eg0', mac: '', weight: 1 }] };
  const observe = (arpUnavailable?: string): RuleObservation => ({
    ingressProblems: new Map(),
    ingressDown: new Map(),
    unverifiedEgress: new Map(),
    unverifiedMacs: new Map(),
    unanswered: new Map([['10.1.3.250@eg0', '02:00:00:00:00:09']]),
    holds: new Map(),
    handSet: new Map(),
    ingressSettings: new Map(),
    arpUnavailable,
  });

  it('says it cannot be confirmed and why, never "probing it"', () => {
    const k = { status: written() };
    judgeRule(k, rule, observe('no CAP_NET_RAW to send ARP requests'));
    assert.equal(k.status.state, 'degraded', k.status.message);
    const all = [k.status.message, ...k.status.backends.map((b) => b.message)];
    for (const m of all) {
      assert.doesNotMatch(m, /probing it/, m);
      assert.match(m, /cannot be confirmed: no CAP_NET_RAW to send ARP requests/, m);
    }
  });

  it('says "probing it" when requests can be sent', () => {
    const k = { status: written() };
    judgeRule(k, rule, observe());
    assert.match(k.status.backends[0].message, /probing it/);
  });
});

describe("a packet socket refused (no CAP_NET_RAW: the kernel's own EPERM from socket(2))", () => {
  it('names EPERM and says the requests cannot be sent', () => {
    const here = fileURLToPath(new URL('.', import.meta.url));
    const src = `${here}../../dist/server/dataplane/arp.js`; // built by run-tests.mjs
    const code =
      `const { ArpProber } = await import(${JSON.stringify(src)});` +
      'const p = new ArpProber(() => {}, () => {});' +
      "const sent = p.ask({ ip: '10.1.3.250', iface: 'lo', ifindex: 1, mac: '' }, '02:00:00:00:00:01');" +
      'p.close(); console.log(JSON.stringify({ sent, denied: p.denied, err: p.lastError }));';
    let out: string;
    try {
      out = execFileSync(
        'setpriv',
        [
          '--inh-caps=-net_raw',
          '--bounding-set=-net_raw',
          '--ambient-caps=-net_raw',
          process.execPath,
          '--input-type=module',
          '-e',
          code,
        ],
        { encoding: 'utf8' },
      );
    } catch (e) {
      throw new Error(`setpriv: ${(e as { stderr?: string }).stderr ?? e}`);
    }
    const r = JSON.parse(out.trim().split('\n').pop()!);
    assert.deepEqual([r.sent, r.denied], [false, true], out);
    assert.match(r.err, /^open a packet socket for ARP: errno 1 \(EPERM\)$/);
  });
});

describe('a refused ARP request of ours, as the log says it (eleventh review, finding 13)', () => {
  const err = (errno: number) =>
    `send an ARP request for 10.31.3.2 on ifindex 37344: errno ${errno} (${errnoName(errno)})`;
  it("an interface's own state (down, gone, queue full) is said of that interface, at info", () => {
    // Before: "ARP requests of our own cannot be sent: ... (ENETDOWN)" at warn, for one egress set down.
    assert.deepEqual(arpSendFailure(err(100), '10.31.3.2', 'r31hb2'), {
      level: 'info',
      local: true,
      text: 'ARP request for 10.31.3.2 on r31hb2 not sent: the interface is down (ENETDOWN)',
    });
    assert.equal(
      arpSendFailure(err(19), '10.31.3.2', 'r31hb2').text,
      'ARP request for 10.31.3.2 on r31hb2 not sent: the interface is gone (ENODEV)',
    );
    assert.equal(
      arpSendFailure(err(105), '10.31.3.2', 'r31hb2').text,
      'ARP request for 10.31.3.2 on r31hb2 not sent: its queue is full (ENOBUFS)',
    );
  });
  it("the socket's refusal is said as ARP requests failing everywhere, at warn", () => {
    assert.deepEqual(arpSendFailure(err(1), '10.31.3.2', 'r31hb2'), {
      level: 'warn',
      local: false,
      text: `ARP requests of our own cannot be sent: ${err(1)}`,
    });
  });
});
