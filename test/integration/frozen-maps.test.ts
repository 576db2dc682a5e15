/**
 * A map another tool froze (`bpftool map freeze`: BPF_MAP_FREEZE, every write from user space refused with
 * EPERM until the map is replaced) after it changed an entry: the difference cannot be rewritten, and the
 * daemon says so (docs/architecture.md, "observe, don't assume"; a review found: an xc_links entry deleted and the map
 * frozen left the direction dead, ping 0/3, while health stayed SERVING, xdpctl_datapath_problems 0, and the
 * log said "links not re-applied" / EPERM without naming the freeze). Real daemon, real `bpftool` writes and
 * freeze on its pins, real pings through namespaces: the direction is not active and its warning names the
 * frozen map, the `xdpctl.datapath` health is NOT_SERVING and the problem metric counts it while it lasts,
 * logged once naming the freeze (read from the map fd's fdinfo, "frozen: 1").
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';
import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { Protocol } from '../../src/gen/xdpctl/v1/rule.js';
import { metric, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

/** bpftool's byte list of a number's little-endian u32. */
const u32 = (n: number) => [n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >>> 24) & 255].map(String);

describe('a map another tool froze: the difference is reported, not hidden', kernelOnly(), () => {
  const lab = new Lab();
  const { topo, health, count } = lab;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let h1: Host, h2: Host;

  before(async () => {
    ({ h1, h2 } = lab.addHosts({ h1: '198.18.6.1/24', h2: '198.18.6.2/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info', '--prometheus', '127.0.0.1:0']));
  });
  // The frozen map goes with the pins (a frozen map is freed like any other once nothing holds it).
  after(() => lab.destroy());

  it('an xc_links entry deleted and the map frozen: the direction dead, said so, NOT_SERVING naming the freeze', async () => {
    await c.links.connect({ link: { a: h1.hostIf, b: h2.hostIf, direction: 0 } });
    const link = () => lab.linkStatus(h1.hostIf);
    assert.equal(topo.ping('h1', h2.ip!), true, 'h1 reaches h2 through the link');
    await until('health SERVING', async () => (await health()) === SERVING, 5000);
    assert.equal(await metric(d!.prometheus!, 'xdpctl_datapath_problems', {}), 0);

    const pin = `${d!.pinRoot}/maps/xc_links`;
    const from = Number(sh('cat', [`/sys/class/net/${h1.hostIf}/ifindex`]));
    sh('bpftool', ['map', 'delete', 'pinned', pin, 'key', ...u32(from)]);
    sh('bpftool', ['map', 'freeze', 'pinned', pin]);

    await until('health NOT_SERVING', async () => (await health()) === NOT_SERVING, 5000);
    assert.equal(topo.ping('h1', h2.ip!, 3), false, 'what the status says: h1 -> h2 forwards nothing');
    const st = await link();
    assert.equal(st.aToBActive, false);
    assert.equal(st.bToAActive, true, 'the other direction is still in the devmap');
    const frozen =
      /map xc_links refuses writes: it is frozen \(fdinfo frozen: 1; another tool ran bpftool map freeze\)/;
    const warning = st.warnings.find((w) => w.startsWith(`${h1.hostIf} -> ${h2.hostIf}: not in the datapath`));
    assert.match(warning ?? '', frozen, `the warning names the freeze: ${st.warnings.join('; ')}`);
    const active = st.conditions.find((x) => x.type === 'Active')!;
    assert.equal(active.status, ConditionStatus.CONDITION_STATUS_FALSE);
    assert.match(active.message, frozen);
    assert.ok((await metric(d!.prometheus!, 'xdpctl_datapath_problems', {}))! >= 1, 'counted as a problem');
    assert.equal(count(/"msg":"links not re-applied: .*map xc_links refuses writes: it is frozen/), 1, 'logged once');

    // While it lasts (the daemon cannot unfreeze a map): still NOT_SERVING, not logged again.
    await sleep(2500);
    assert.equal(await health(), NOT_SERVING, 'still NOT_SERVING: still not rewritten');
    assert.equal((await link()).aToBActive, false);
    assert.equal(count(/"msg":"links not re-applied/), 1, 'still logged once');
  });

  it('a rule refused because src_allow is frozen: the reply names the freeze only (no capability guess), no undo failure', async () => {
    const h3 = topo.addHost('h3', '198.18.7.1/24');
    const h4 = topo.addHost('h4', '198.18.7.2/24');
    const srcAllow = `${d!.pinRoot}/maps/src_allow`;
    const entries = () => JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', srcAllow])) as unknown[];
    const before = entries();
    sh('bpftool', ['map', 'freeze', 'pinned', srcAllow]);
    const at = d!.output.length;
    const rule = {
      name: 'fz',
      match: { protocol: Protocol.PROTOCOL_UDP, port: 7985, destination: '', sourcePrefixes: [`${h3.ip}/32`] },
      ingressInterfaces: [h3.hostIf],
      backends: [{ ip: h4.ip!, mac: h4.mac, interface: h4.hostIf }],
      udpChecksum: 0,
      labels: {},
      generation: 0n,
    };
    await assert.rejects(c.rules.createRule({ rule }), (e: Error & { code?: Status }) => {
      assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
      assert.match(e.message, /map src_allow refuses writes: it is frozen \(fdinfo frozen: 1/);
      // The daemon runs as root and found the cause: no "lacks CAP_BPF" (before: appended to every EPERM).
      assert.doesNotMatch(e.message, /lacks CAP_|capabilit/i, e.message);
      return true;
    });
    const log = d!.output.slice(at);
    // The undo of the refused write deletes an entry that was never written: nothing failed (before: an
    // error-level "undo step failed" for it).
    assert.doesNotMatch(log, /undo step failed/, log);
    assert.deepEqual(entries(), before, 'src_allow as it was');
    assert.deepEqual(
      (await c.rules.listRules({ pageSize: 0, pageToken: '' })).rules.map((r) => r.name),
      [],
      'the rule was not made',
    );
  });
});
