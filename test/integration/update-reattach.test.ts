/**
 * A rule change looks at the kernel, not at what it attached last (a fault found: "`ip link set dev IN xdp off`
 * ... never repaired (even a rule update skips the attach)"). The background reconciler is off here
 * (resyncMs 0: no timer, no rtnetlink trigger), so only the update itself can see that our program is gone:
 * it attaches it again, says so in the log, and traffic flows again. Real datagrams before and after.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, before, describe, it } from 'node:test';

import { createChannel, createClient, type Channel } from 'nice-grpc';
import { pino } from 'pino';

import { capacityForRules, Daemon, DEFAULTS } from '../../src/server/daemon.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import {
  Protocol,
  RuleServiceDefinition,
  RuleState,
  UdpChecksumMode,
  type Rule,
} from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, runId, sh, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const PORT = 7311;
const NOWHERE = '198.18.9.9';

describe('a rule update re-attaches a program someone detached', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  const lines: { level: number; msg: string; ifname?: string }[] = [];
  let daemon: Daemon | undefined;
  let channel: Channel | undefined;
  let vm: Host, b1: Host;

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    topo.routeToXdp('vm');
    const sink = new Writable({
      write(chunk, _enc, done) {
        for (const l of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(l));
        done();
      },
    });
    daemon = await Daemon.start({
      listen: [`unix:/tmp/xdpctl-test-${id}.sock`],
      pinRoot,
      objectPath: DEFAULTS.objectPath,
      descriptorPath: DEFAULTS.descriptorPath,
      mode: 'native',
      fixVethPeers: true,
      cleanupOnExit: true,
      capacity: capacityForRules(16),
      log: pino({ level: 'info' }, sink),
      resyncMs: 0,
    });
    channel = createChannel(`unix:///tmp/xdpctl-test-${id}.sock`);
  });
  after(async () => {
    channel?.close();
    await daemon?.stop();
    topo.destroy();
    XdpDatapath.unpinAll(pinRoot);
  });

  const xdpOf = (ifname: string) => JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp;
  async function delivered(n: number): Promise<number> {
    const l = await UdpListener.start(b1.netns, b1.ip!, PORT);
    try {
      await sendUdp(vm.netns, NOWHERE, PORT, n).done;
      await sleep(200);
    } catch (e) {
      await l.stop();
      throw e;
    }
    return (await l.stop()).unique;
  }

  it('attaches it again at the next UpdateRule, logs it once, and traffic flows', async () => {
    const rules = createClient(RuleServiceDefinition, channel!);
    const rule: Rule = {
      name: 'web',
      match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
      ingressInterfaces: [vm.hostIf],
      backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
      udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_UNSPECIFIED,
      labels: {},
      generation: 0n,
    };
    const created = (await rules.createRule({ rule })).rule!;
    assert.equal(await delivered(20), 20, 'the rule forwards');

    sh('ip', ['link', 'set', 'dev', vm.hostIf, 'xdp', 'off']);
    assert.equal(xdpOf(vm.hostIf), undefined, 'our program is gone');
    assert.equal(await delivered(20), 0, 'and nothing is forwarded');

    const updated = (
      await rules.updateRule({ rule: { ...rule, labels: { team: 'a' }, generation: created.generation } })
    ).rule!;
    assert.equal(xdpOf(vm.hostIf)?.mode, 1, 'the update attached our program again, natively');
    assert.equal(updated.status!.state, RuleState.RULE_STATE_ACTIVE, updated.status!.message);
    assert.equal(await delivered(20), 20, 'the rule forwards again');
    const said = lines.filter(
      (l) =>
        l.msg ===
        `${vm.hostIf}: found no XDP program where ours ran in native mode (detached, not by this daemon): ours ` +
          're-attached in native mode',
    );
    assert.equal(said.length, 1, 'logged once');
    assert.equal(said[0].level, 40, 'as a warning');

    // A second update finds it there: nothing attached again, nothing logged.
    const attachedLines = lines.filter((l) => l.msg === 'attached').length;
    await rules.updateRule({ rule: { ...rule, labels: { team: 'b' }, generation: updated.generation } });
    assert.equal(lines.filter((l) => l.msg === 'attached').length, attachedLines, 'no attach when ours is there');
    assert.equal(
      lines.filter((l) => l.msg.startsWith(`${vm.hostIf}: found no XDP program`)).length,
      1,
      'and no second line',
    );
  });
});
