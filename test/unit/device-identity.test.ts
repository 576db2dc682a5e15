/**
 * Facts kept per interface name are the device's (core/device-identity.ts): a name that names another device
 * now (two egresses renamed the other's way, under a running daemon or while it was stopped) never inherits
 * what was observed on the old one: no MAC held "answered before", none "kept from the datapath", no "new MAC"
 * of the egress. Modelled maps and a neighbour table whose ARP answers are kept by device (ifindex), as the
 * adapter keeps them (egress-swap.test.ts does it with real veths and datagrams).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import { captureLog, type LogLine as Line } from '../helpers/log-capture.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

const A = '02:aa:00:00:00:01'; // the host behind b0 (ifindex 4)
const B = '02:bb:00:00:00:02'; // the host behind b1 (ifindex 5)

/** Neighbour entries by name (as the kernel's table reads after the names), ARP answers by device. */
class Devices extends ModelDataplane {
  /** "ip#ifindex" -> the MAC that answered a request of ours there. */
  readonly answered = new Map<string, string>();
  private dev(iface: string) {
    return this.ifs.get(iface)?.ifindex;
  }
  override neighbourAnswered(ip: string, iface: string): string | undefined {
    return this.answered.get(`${ip}#${this.dev(iface)}`);
  }
  override neighbourAnswerAge(ip: string, iface: string, mac: string): number | undefined {
    return this.neighbourAnswered(ip, iface) === mac ? 0 : undefined;
  }
  override verifyNeighbour(): boolean {
    return false;
  }
  override askNeighbour(): boolean {
    return false;
  }
  override probeNeighbour(): void {}
  override neighbourHandSet(): string | undefined {
    return undefined;
  }
  /** No entry at all (flushed, or none on this device): missing, not failed. */
  override neighbourMissing(ip: string, iface: string): boolean {
    return !this.neighbours.has(`${ip}@${iface}`);
  }
  /** `ip link set b0 name t; ip link set b1 name b0; ip link set t name b1`: the devices keep ifindex and MAC. */
  swap(): void {
    const b0 = this.ifs.get('b0')!;
    const b1 = this.ifs.get('b1')!;
    this.ifs.set('b0', { ...b1, name: 'b0' });
    this.ifs.set('b1', { ...b0, name: 'b1' });
  }
}

const rule = (backends: [string, string][]): Parameters<Controller['createRule']>[0] => ({
  name: 'r',
  protocol: 'udp',
  port: 5000,
  destination: '',
  sourcePrefixes: [],
  ingressInterfaces: ['in0'],
  backends: backends.map(([ip, iface]) => ({ ip, mac: '', interface: iface, weight: 1 })),
  udpChecksum: 'update',
  labels: {},
});
const hex = (mac: string) => mac.replace(/:/g, '');

/** Rule r: 10.0.0.1 behind both egresses (each host has it) and 10.0.0.2 behind b0 only; all answered. */
async function setup() {
  const dp = new Devices();
  const lines: Line[] = [];
  const clock = { t: 1_000_000 };
  const c = new Controller(dp, { mode: 'generic', fixVethPeers: false, log: captureLog(lines), now: () => clock.t });
  assert.deepEqual([dp.ifs.get('b0')!.ifindex, dp.ifs.get('b1')!.ifindex], [4, 5]);
  dp.neighbours.set('10.0.0.1@b0', A);
  dp.neighbours.set('10.0.0.1@b1', B);
  dp.neighbours.set('10.0.0.2@b0', A);
  for (const [k, v] of [
    ['10.0.0.1#4', A],
    ['10.0.0.1#5', B],
    ['10.0.0.2#4', A],
  ])
    dp.answered.set(k, v);
  await c.createRule(
    rule([
      ['10.0.0.1', 'b0'],
      ['10.0.0.1', 'b1'],
      ['10.0.0.2', 'b0'],
    ]),
  );
  await c.resync();
  const backends = () =>
    c.getRule('r').status.backends.map((b) => `${b.ip}@${b.interface} ${b.mac || '-'} ${b.receiving}`);
  assert.deepEqual(backends(), [`10.0.0.1@b0 ${A} true`, `10.0.0.1@b1 ${B} true`, `10.0.0.2@b0 ${A} true`]);
  /** The datapath's backend entries: "ifindex dmac". */
  const kernel = () =>
    [...(dp.model.maps.backends as unknown as { entries_: Map<unknown, Buffer> }).entries_.values()]
      .map((v) => `${v.readUInt32LE(12)} ${v.subarray(0, 6).toString('hex')}`)
      .filter((e) => !e.startsWith('0 '))
      .sort();
  return { dp, c, lines, clock, backends, kernel };
}

describe('facts kept per name belong to the device the name had', () => {
  it('names swapped under a running daemon: nothing held or kept from the other device', async () => {
    const { dp, c, lines, backends, kernel } = await setup();
    const from = lines.length;
    dp.swap();
    // What the kernel's table reads after the renames: each name's entries are its new device's.
    dp.neighbours.set('10.0.0.1@b0', B);
    dp.neighbours.set('10.0.0.1@b1', A);
    dp.neighbours.delete('10.0.0.2@b0'); // nobody has 10.0.0.2 behind b1's old device
    dp.neighbours.set('10.0.0.2@b1', A);
    // B has not answered a request of ours on device 5 since (it did before, under the name b1): first the
    // case where nothing answered there yet.
    dp.answered.delete('10.0.0.1#5');
    await c.resync();
    const said = lines.slice(from).map((l) => l.msg);
    assert.deepEqual(
      said.filter((m) => /kept|has a new MAC, /.test(m)),
      [],
      'no MAC held "answered before", kept from the datapath, or said to be the egress\'s new MAC',
    );
    assert.ok(said.some((m) => m.startsWith('b0 names another device now (ifindex 4 -> 5)')));
    assert.deepEqual(backends(), [`10.0.0.1@b0 ${B} true`, `10.0.0.1@b1 ${A} true`, `10.0.0.2@b0 - false`]);
    // B is written at once, as any first MAC of a backend, and said not to be confirmed until it answers.
    assert.match(c.getRule('r').status.backends[0].message, /not confirmed yet/);
    assert.equal(c.getRule('r').status.backends[1].message, 'MAC resolved from the neighbour table');
    assert.deepEqual(kernel(), [`4 ${hex(A)}`, `5 ${hex(B)}`], "each device forwarded to with its own host's MAC");
    dp.answered.set('10.0.0.1#5', B);
    await c.resync();
    assert.equal(c.getRule('r').status.backends[0].message, 'MAC resolved from the neighbour table');
  });

  it('names swapped while the daemon was stopped: the start keeps no MAC of the other device', async () => {
    const { dp, c, clock } = await setup();
    const stored = c.storedState();
    const dp2 = ModelDataplane.adopt(dp, new Devices());
    dp2.swap();
    dp2.neighbours.set('10.0.0.1@b0', B); // its host's MAC, not answered to this process yet
    dp2.neighbours.set('10.0.0.1@b1', A);
    // No entry for 10.0.0.2 on either name now: b0's is device 5's, where nobody has it.
    dp2.neighbours.delete('10.0.0.2@b0');
    const lines: Line[] = [];
    const c2 = new Controller(dp2, {
      mode: 'generic',
      fixVethPeers: false,
      log: captureLog(lines),
      now: () => clock.t,
    });
    await c2.restore(stored);
    const got = c2.getRule('r').status.backends.map((b) => `${b.ip}@${b.interface} ${b.mac || '-'} ${b.receiving}`);
    assert.deepEqual(got, [`10.0.0.1@b0 ${B} true`, `10.0.0.1@b1 ${A} true`, `10.0.0.2@b0 - false`]);
    assert.deepEqual(
      lines.map((l) => l.msg).filter((m) => /kept/.test(m)),
      [],
      'nothing kept from datapath entries of the other device',
    );
  });
});
