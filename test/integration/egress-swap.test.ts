/**
 * Two backend egresses whose names are swapped under a running daemon (`ip link set A name T; B name A; T name
 * B`, the devices up throughout, as the kernel allows): what the daemon knows of a backend's egress (the MAC its
 * host answered from, whether it answered, a MAC held in the datapath, a static MAC's verdict) was observed on
 * a DEVICE; a name that now names the other device must not inherit it (a review's finding: a MAC "kept from the
 * datapath" belonged to the other device). With real namespaces, veths and datagrams:
 *  - b1 (behind A) and b2 (behind B) both have 198.18.2.1 (with different MACs), and each has an address of its
 *    own (.11 on b1, .12 on b2) and one for a static-MAC backend (.21, .22);
 *  - rule `same`: 198.18.2.1,,A and 198.18.2.1,,B. After the swap A is b2's device: its backend forwards to b2's
 *    MAC, the one b2 answered on that device; B's to b1's. Every datagram is delivered (was: the MAC answered
 *    on the OTHER device kept in the datapath as "answered before", frames to b2 with b1's MAC, dropped);
 *  - rule `own`: .11,,A and .12,,B. After the swap nobody answers for .11 on the device now named A: the backend
 *    gets no traffic and no MAC is claimed (was: b1's MAC "kept from the datapath" on b2's device);
 *  - rule `static`: .21,M1,A and .22,M2,B, confirmed before the swap. After it each static MAC is judged afresh
 *    on its new device, whose veth peer (the other host's eth0, read in that host's namespace) has the other
 *    MAC: contradicted, both out of the table (was: the old device's verdict stood, silently; then, before the
 *    peer was read in its namespace, "cannot be verified");
 *  - throughout, every backend entry of the datapath forwards to the MAC of the host behind ITS egress ifindex
 *    (sampled every 25 ms), and the log never says a MAC answered, or was kept, on a device where it did not.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { openPinnedMap } from '../../src/server/dataplane/bpf-map.js';
import { backendEntry, u32 } from '../../src/server/dataplane/codec.js';
import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, esc, Lab, NOWHERE } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const SHARED = '198.18.2.1';
const RESOLVED = 'MAC resolved from the neighbour table';
const macText = (b: Uint8Array) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join(':');
const ifindexOf = (name: string) => JSON.parse(sh('ip', ['-j', 'link', 'show', name]))[0].ifindex as number;

describe('two backend egresses whose names are swapped under a running daemon', kernelOnly(), () => {
  const lab = new Lab();
  const { status, listeners } = lab;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b1: Host, b2: Host;
  const tmp = `x${lab.id}sw`;

  before(async () => {
    ({ vm, b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: `${SHARED}/24`, b2: `${SHARED}/24` }));
    for (const [h, own] of [
      [b1, ['198.18.2.11', '198.18.2.21']],
      [b2, ['198.18.2.12', '198.18.2.22']],
    ] as const)
      for (const a of own) sh('ip', ['-n', h.netns, 'addr', 'add', `${a}/24`, 'dev', 'eth0']);
    assert.notEqual(b1.mac, b2.mac);
    ({ d, c } = await lab.start(['--log-level', 'info']));
  });
  lab.onDestroy(() => shQuiet('ip', ['link', 'del', tmp]));
  after(() => lab.destroy());

  const rule = (name: string, port: number, backends: [string, string, string][]): Rule =>
    lab.rule(
      name,
      port,
      backends.map(([ip, mac, iface]) => ({ ip, mac, interface: iface })),
    );
  /** 50 datagrams over 10 flows to rule `static`: how many its hosts received (.21 on b1, .22 on b2). */
  async function sendStatic(): Promise<{ sent: number; got: number[] }> {
    const ls = [
      await UdpListener.start(b1.netns, '198.18.2.21', 7963),
      await UdpListener.start(b2.netns, '198.18.2.22', 7963),
    ];
    listeners.push(...ls);
    const { sent } = await sendUdp(vm.netns, NOWHERE, 7963, 50, { flows: 10 }).done;
    await sleep(150);
    return { sent, got: await Promise.all(ls.map(async (l) => (await l.stop()).unique)) };
  }

  /** The datapath's backend entries in use of the MAC-less backends: [ifindex, dmac] (static MACs are as given). */
  function kernelBackends(): [number, string][] {
    const m = openPinnedMap(`${d!.pinRoot}/maps/backends`, u32, backendEntry);
    try {
      return [...m.entries()]
        .filter(([, e]) => e.ifindex !== 0 && !['198.18.2.21', '198.18.2.22'].includes(e.addr.join('.')))
        .map(([, e]) => [e.ifindex, macText(e.dmac)]);
    } finally {
      m.close();
    }
  }

  it('each backend forwards to the MAC its own host answered on its own device; nothing claims one it did not see there', async () => {
    const A = b1.hostIf;
    const B = b2.hostIf;
    const idxA = ifindexOf(A);
    const idxB = ifindexOf(B);
    /** The MAC of the host behind each device (by ifindex: the devices keep theirs through the renames). */
    const hostBehind = new Map([
      [idxA, b1.mac],
      [idxB, b2.mac],
    ]);
    await c.rules.createRule({
      rule: rule('same', 7961, [
        [SHARED, '', A],
        [SHARED, '', B],
      ]),
    });
    await c.rules.createRule({
      rule: rule('own', 7962, [
        ['198.18.2.11', '', A],
        ['198.18.2.12', '', B],
      ]),
    });
    await c.rules.createRule({
      rule: rule('static', 7963, [
        ['198.18.2.21', b1.mac, A],
        ['198.18.2.22', b2.mac, B],
      ]),
    });
    // Resolved and answered on the wire before the swap (each MAC-less backend "MAC resolved": an answer of
    // its host's on its device); the static MACs past their grace with nothing said against them.
    await until(
      'every MAC-less backend resolved by an answer',
      async () => {
        for (const n of ['same', 'own']) {
          const st = await status(n);
          if (st.backendStatus.some((b) => b.message !== RESOLVED)) return false;
        }
        return true;
      },
      15_000,
    );
    const before = {
      same: (await status('same')).backendStatus.map((b) => `${b.ip}@${b.interface} ${b.mac}`),
      own: (await status('own')).backendStatus.map((b) => `${b.ip}@${b.interface} ${b.mac}`),
    };
    assert.deepEqual(before.same, [`${SHARED}@${A} ${b1.mac}`, `${SHARED}@${B} ${b2.mac}`]);
    assert.deepEqual(before.own, [`198.18.2.11@${A} ${b1.mac}`, `198.18.2.12@${B} ${b2.mac}`]);
    await until(
      'the static MACs confirmed (nothing said against them past the grace)',
      async () => {
        const st = await status('static');
        return st.backendStatus.every((b) => b.active && b.message === '');
      },
      15_000,
    );
    await sleep(3500);
    assert.deepEqual(
      (await status('static')).backendStatus.map((b) => [b.active, b.message]),
      [
        [true, ''],
        [true, ''],
      ],
      'both static MACs confirmed before the swap',
    );
    const static0 = await status('static');
    assert.equal(static0.state, RuleState.RULE_STATE_ACTIVE, static0.message);
    const s0 = await sendStatic();
    assert.equal(s0.got[0] + s0.got[1], s0.sent, `rule static before the swap: ${s0.got} of ${s0.sent} delivered`);

    const l1 = await UdpListener.start(b1.netns, SHARED, 7961);
    const l2 = await UdpListener.start(b2.netns, SHARED, 7961);
    listeners.push(l1, l2);
    const from = d!.output.length;
    // 100 datagrams a second over 20 flows (spread over both backends) for 6 s; the swap 1 s in.
    const tx = sendUdp(vm.netns, NOWHERE, 7961, 600, { flows: 20, perTick: 1, tickMs: 10 });
    const wrong: string[] = [];
    const sample = () => {
      for (const [ifindex, mac] of kernelBackends()) {
        const want = hostBehind.get(ifindex);
        if (want !== undefined && mac !== want)
          wrong.push(`ifindex ${ifindex} (host MAC ${want}) forwarded to with ${mac}`);
      }
    };
    const t0 = Date.now();
    while (Date.now() - t0 < 1000) {
      sample();
      await sleep(25);
    }
    sh('ip', ['link', 'set', A, 'name', tmp]);
    sh('ip', ['link', 'set', B, 'name', A]);
    sh('ip', ['link', 'set', tmp, 'name', B]);
    assert.equal(ifindexOf(A), idxB, 'A names b2 now');
    assert.equal(ifindexOf(B), idxA, 'B names b1 now');
    const swapped = Date.now();
    /**
     * Every status read after the swap naming a MAC on a backend whose device's host does not have it, with when
     * (ms after the swap). A read before the daemon's first pass after the renames says what it last observed
     * (the datapath then still forwards by the old ifindexes, to the right hosts); the reconciler runs a pass on
     * each rtnetlink link event, and at least once a second.
     */
    const claims: [number, string][] = [];
    const hostOf = (iface: string) => (iface === A ? b2.mac : b1.mac);
    while (Date.now() - swapped < 4500) {
      sample();
      for (const n of ['same', 'own']) {
        for (const b of (await status(n)).backendStatus) {
          if (b.mac && b.mac !== hostOf(b.interface) && (b.active || /kept/.test(b.message)))
            claims.push([Date.now() - swapped, `rule ${n} ${b.ip}@${b.interface} ${b.mac}: ${b.message}`]);
        }
      }
      await sleep(25);
    }
    const { sent } = await tx.done;
    await sleep(200);
    const got = [(await l1.stop()).unique, (await l2.stop()).unique];
    const log = d!.output.slice(from);
    const same = (await status('same')).backendStatus;
    const own = await status('own');
    const staticNow = await status('static');
    const stat = staticNow.backendStatus;
    console.log(
      `# after the swap: same: ${same.map((b) => `${b.ip}@${b.interface} -> ${b.mac} (${b.message})`).join('; ')}\n` +
        `# own: ${own.state} ${own.backendStatus.map((b) => `${b.ip}@${b.interface} active=${b.active} ${b.mac || '-'} (${b.message})`).join('; ')}\n` +
        `# static: ${stat.map((b) => `${b.ip}@${b.interface} active=${b.active} (${b.message})`).join('; ')}\n` +
        `# delivered ${got[0]} (b1) + ${got[1]} (b2) = ${got[0] + got[1]} of ${sent}; ${wrong.length} datapath ` +
        `samples with another device's MAC; ${claims.length} status reads claiming one (the last ` +
        `${claims.length ? claims[claims.length - 1][0] : '-'} ms after the swap)\n` +
        log
          .split('\n')
          .filter((x) => /"msg"/.test(x) && /backend|new MAC|another device|host changed/.test(x))
          .map((x) => `#   ${JSON.parse(x).msg}`)
          .slice(0, 30)
          .join('\n'),
    );
    // The datapath: each entry forwards to the MAC of the host behind its own egress ifindex, throughout.
    assert.deepEqual([...new Set(wrong)], [], "no backend entry forwards to another device's host MAC");
    assert.deepEqual(
      claims.filter(([ms]) => ms >= 1000).slice(0, 5),
      [],
      'from the pass after the swap on, no status claims a MAC its device did not show',
    );
    // The log: no MAC answered (or kept) for a backend on a device where it did not answer.
    for (const [iface, other] of [
      [A, b1.mac],
      [B, b2.mac],
    ]) {
      const on = new RegExp(`backend [0-9.]+ on ${esc(iface)}: [^"]*${esc(other)}[^"]*(kept|answered)`);
      assert.doesNotMatch(log, on, `no MAC of the other device's host kept or answered on ${iface}`);
    }
    assert.doesNotMatch(log, /kept from the datapath/, 'no MAC kept from a datapath entry of another device');
    assert.doesNotMatch(log, /has a new MAC, /, 'neither egress changed its own MAC: none is said to have');
    // Rule `same`: each backend forwards to the MAC its device's host answered from; every datagram delivered.
    assert.deepEqual(
      same.map((b) => [b.interface, b.mac, b.active, b.message]),
      [
        [A, b2.mac, true, RESOLVED],
        [B, b1.mac, true, RESOLVED],
      ],
    );
    assert.equal(got[0] + got[1], sent, `every datagram delivered: ${got[0] + got[1]} of ${sent}`);
    // Rule `own`: nobody answers for .11 on b2's device nor for .12 on b1's: no MAC, out of the table.
    assert.deepEqual(
      own.backendStatus.map((b) => [b.mac, b.active]),
      [
        ['', false],
        ['', false],
      ],
    );
    // Rule `static`: each static MAC judged afresh on its new device, whose veth peer (the other host's eth0) has
    // the other MAC: contradicted, out of the table (the old device's verdict does not stand).
    assert.deepEqual(
      stat.map((b) => [b.interface, b.active]),
      [
        [A, false],
        [B, false],
      ],
    );
    for (const [b, peerMac, staticMac] of [
      [stat[0], b2.mac, b1.mac],
      [stat[1], b1.mac, b2.mac],
    ] as const)
      assert.match(
        b.message,
        new RegExp(
          `^static MAC contradicted: the veth peer eth0 of ${esc(b.interface)} has MAC ${peerMac}, not the static ${staticMac}`,
        ),
        `${b.ip}@${b.interface}: ${b.message}`,
      );
    // No backend can take traffic: INACTIVE (proto RuleState), in the same read (a review saw ACTIVE,
    // BackendsReceiving True and health SERVING here while 0 of 50 were delivered).
    assert.equal(staticNow.state, RuleState.RULE_STATE_INACTIVE, staticNow.message);
    assert.match(
      staticNow.message,
      /no backend can take traffic .*198\.18\.2\.21@\S+: static MAC contradicted.*198\.18\.2\.22@\S+: static MAC contradicted/,
    );
    const br = staticNow.conditions.find((x) => x.type === 'BackendsReceiving')!;
    assert.deepEqual([br.status, br.reason], [ConditionStatus.CONDITION_STATUS_FALSE, 'BackendsNotReceiving']);
    assert.equal(
      (await c.health.check({ service: 'xdpctl.datapath' })).status,
      HealthCheckResponse_ServingStatus.NOT_SERVING,
    );
    const s1 = await sendStatic();
    console.log(`# rule static: ${s0.got} of ${s0.sent} delivered before the swap, ${s1.got} of ${s1.sent} after`);
    assert.equal(s1.got[0] + s1.got[1], 0, `what the status says no backend takes: ${s1.got} of ${s1.sent} delivered`);
  });
});

/**
 * The ingress side of the same kind: two ingress names swapped under a running daemon. Rules name interfaces, so
 * each rule now applies to the device its ingress name names (the match entries rewritten with the new ifindexes,
 * as before); neither ingress is said to have changed its own MAC (before: `X has a new MAC, M1 -> M2` for each,
 * the other device's MAC), and each name is said to name another device now.
 */
describe('two ingress names swapped under a running daemon', kernelOnly(), () => {
  const lab = new Lab();
  let d: DaemonProcess | undefined;
  let c: Clients;
  let v1: Host, v2: Host, b: Host;
  const tmp = `x${lab.id}sw`;

  before(async () => {
    ({ v1, v2, b } = lab.addHosts({ v1: '198.18.1.1/24', v2: '198.18.1.2/24', b: '198.18.2.1/24' }));
    lab.topo.routeToXdp('v1');
    lab.topo.routeToXdp('v2');
    ({ d, c } = await lab.start(['--log-level', 'info']));
  });
  lab.onDestroy(() => shQuiet('ip', ['link', 'del', tmp]));
  after(() => lab.destroy());

  const rule = (name: string, port: number, ingress: string): Rule => lab.rule(name, port, [backendOf(b)], [ingress]);
  /** 30 datagrams from `from` to `port`: how many reached the backend. */
  async function delivered(from: Host, port: number): Promise<number> {
    const l = await UdpListener.start(b.netns, b.ip!, port);
    try {
      await sendUdp(from.netns, NOWHERE, port, 30, { flows: 5, perTick: 1, tickMs: 10 }).done;
      await sleep(200);
    } catch (e) {
      l.kill();
      throw e;
    }
    return (await l.stop()).unique;
  }
  const matrix = async () => [
    await delivered(v1, 7971),
    await delivered(v2, 7971),
    await delivered(v1, 7972),
    await delivered(v2, 7972),
  ];

  it('each rule applies to the device its ingress name names; no ingress is said to have a new MAC', async () => {
    const I1 = v1.hostIf;
    const I2 = v2.hostIf;
    await c.rules.createRule({ rule: rule('r1', 7971, I1) });
    await c.rules.createRule({ rule: rule('r2', 7972, I2) });
    assert.deepEqual(await matrix(), [30, 0, 0, 30], 'before: r1 takes v1 (on I1), r2 takes v2 (on I2)');
    const from = d!.output.length;
    const idx1 = ifindexOf(I1);
    const idx2 = ifindexOf(I2);
    sh('ip', ['link', 'set', I1, 'name', tmp]);
    sh('ip', ['link', 'set', I2, 'name', I1]);
    sh('ip', ['link', 'set', tmp, 'name', I2]);
    await until('both ingress names seen on their new devices', async () => {
      const ifs = (await c.interfaces.listInterfaces({})).interfaces;
      return ifs.find((i) => i.name === I1)?.ifindex === idx2 && ifs.find((i) => i.name === I2)?.ifindex === idx1;
    });
    await sleep(500);
    const after = await matrix();
    const log = d!.output.slice(from);
    console.log(
      `# ingress names swapped: delivered v1->r1 ${after[0]}, v2->r1 ${after[1]}, v1->r2 ${after[2]}, v2->r2 ${after[3]} ` +
        '(of 30 each)\n' +
        log
          .split('\n')
          .filter((x) => /"msg"/.test(x))
          .map((x) => `#   ${JSON.parse(x).msg}`)
          .join('\n'),
    );
    assert.deepEqual(after, [0, 30, 30, 0], 'after: r1 takes v2 (its device is named I1 now), r2 takes v1');
    for (const n of ['r1', 'r2'])
      assert.equal((await c.rules.getRule({ name: n })).rule!.status!.state, RuleState.RULE_STATE_ACTIVE, n);
    assert.doesNotMatch(log, /has a new MAC/, 'neither device changed its MAC');
    assert.match(log, new RegExp(`${esc(I1)} names another device now \\(ifindex ${idx1} -> ${idx2}\\)`));
    assert.match(log, new RegExp(`${esc(I2)} names another device now \\(ifindex ${idx2} -> ${idx1}\\)`));
  });
});
