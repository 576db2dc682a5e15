/**
 * A rule's transitions are logged as a read serves its status: a rule whose ingress a link cross-connects
 * (frames taken before rules are matched) is served INACTIVE, and its log says so, never ACTIVE (before: the
 * log followed the rule's own judgement without the link: "rule bb is DEGRADED ... not confirmed yet", then
 * "rule bb is ACTIVE: forwarding to 1 backend(s)", while GetRule said INACTIVE "cross-connected by a link
 * before rules are matched" and Ready was never True). A link connected or disconnected under a rule changes
 * what is served, and that transition is logged once (before: not at all). Real daemon, veths, ARP, traffic.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { Protocol, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sleep } from '../helpers/env.js';
import { Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const PORT = 7999;
const STATE = ['', 'ACTIVE', 'DEGRADED', 'INACTIVE', 'FAILED'];

describe("a rule's logged transitions are the status it is served with", kernelOnly(), () => {
  const lab = new Lab();
  const { listeners } = lab;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b1: Host, x: Host;

  before(async () => {
    ({ vm, b1, x } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', x: '198.18.3.1/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info']));
  });
  after(() => lab.destroy());

  const rule: () => Rule = () => ({
    name: 'bb',
    match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [vm.hostIf],
    backends: [{ ip: b1.ip!, mac: '', interface: b1.hostIf }], // MAC from the neighbour table
    udpChecksum: 0,
    labels: {},
    generation: 0n,
  });
  /** The lines that log bb's transitions so far: "STATE|reason". */
  const logged = () =>
    d!
      .logLines<{ msg: string; rule?: string; state?: string; reason?: string }>()
      .filter((r) => r.rule === 'bb' && r.msg.startsWith('rule bb is '))
      .map((r) => `${r.state}|${r.reason}`);
  const served = async () => {
    const s = (await c.rules.getRule({ name: 'bb' })).rule!.status!;
    return {
      line: `${STATE[s.state]}|${s.message}`,
      ready: s.conditions.find((k) => k.type === 'Ready')!.status,
    };
  };
  /** Served statuses sampled every 100 ms for `ms`. */
  const sample = async (ms: number) => {
    const out: Awaited<ReturnType<typeof served>>[] = [];
    for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) out.push(await served());
    return out;
  };
  const until = async (what: string, f: () => Promise<boolean> | boolean, ms = 5000) => {
    for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) if (await f()) return;
    assert.fail(`${what}: not within ${ms} ms; logged ${JSON.stringify(logged())}`);
  };
  const delivered = async () => {
    const l = await UdpListener.start(b1.netns, b1.ip!, PORT);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, PORT, 20, { flows: 20 }).done;
    await sleep(200);
    return (await l.stop()).unique;
  };
  const connect = () =>
    c.links.connect({ link: { a: vm.hostIf, b: x.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH } });

  it('a rule made on an ingress a link cross-connects is logged as served: never ACTIVE', async () => {
    await connect();
    await c.rules.createRule({ rule: rule() });
    const seen = await sample(4000); // the backend's MAC resolved meanwhile (its own judgement goes to ACTIVE)
    const end = await served();
    assert.equal(end.line.split('|')[0], 'INACTIVE', end.line);
    assert.match(end.line, /cross-connected by a link before rules are matched/);
    assert.ok(
      seen.every((s) => s.line.startsWith('INACTIVE|') && s.ready !== ConditionStatus.CONDITION_STATUS_TRUE),
      `served: ${JSON.stringify([...new Set(seen.map((s) => s.line))])}`,
    );
    const lines = logged();
    assert.ok(
      lines.every((l) => l.startsWith('INACTIVE|')),
      `logged only what was served (INACTIVE): ${JSON.stringify(lines)}`,
    );
    // The last line says what is served now, and every line logged was served at some sample.
    if (lines.length) assert.equal(lines.at(-1), end.line);
    assert.equal(await delivered(), 0, 'nothing reaches the backend: the link takes the frames');
  });

  it('disconnecting and connecting the link under the rule logs each transition once, as served', async () => {
    const before = logged().length;
    await c.links.disconnect({ a: vm.hostIf, b: x.hostIf });
    await until('served ACTIVE', async () => (await served()).line.startsWith('ACTIVE|'));
    await until('its ACTIVE logged', () =>
      logged()
        .slice(before)
        .some((l) => l.startsWith('ACTIVE|')),
    );
    assert.equal(await delivered(), 20, 'forwarding once the link is gone');
    await connect();
    await until('served INACTIVE', async () => (await served()).line.startsWith('INACTIVE|'));
    const shadowed = (await served()).line;
    await until('the shadowed INACTIVE logged', () => logged().slice(before).includes(shadowed));
    await sleep(2500); // more passes: nothing logged again
    const after = logged().slice(before);
    assert.deepEqual(
      after.filter((l) => l === shadowed),
      [shadowed],
      `logged once: ${JSON.stringify(after)}`,
    );
    assert.equal(after.at(-1), (await served()).line, 'the last line is what is served');
    assert.equal(after.filter((l) => l.startsWith('ACTIVE|')).length, 1, JSON.stringify(after));
  });
});
