/**
 * A restart must not write back into the kernel what the last run kept out (seventeenth review, MED): the reconciler
 * takes out of a rule's table a backend that closes a forwarding loop the host made (rule-loops.ts) or whose static
 * MAC the host contradicts (static-mac.ts), and the directions of a link the host made into a loop out of the
 * devmap. Before: a restart adopted the rule in place from a plan that knew neither (they are judged by the
 * reconciler's passes), found the table without that backend, wrote it back ("kernel entries differed ...
 * rewritten") and only the first pass took it out again: the loop forwarded again meanwhile (342 frames matched
 * 1 830 times), 21 datagrams went to the contradicted MAC, and the looped link was written back (432 broadcast
 * frames received 731 601 times). Now a start judges loops and static MACs before it writes anything (restore.ts):
 * what was out stays out across the restart, nothing is said rewritten, and the rule or link still says why. The daemon is stopped with SIGTERM, without --cleanup-on-exit (the datapath stays), and
 * started again on the same pins and state, with frames sent all the while. Real veths, a bridge, real frames.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { deleteLinks, hostLoopBridge, hostLoopLink } from '../helpers/loop-layouts.js';
import { type Host } from '../helpers/topology.js';
import { rawUdpFrames, sendUdp } from '../helpers/udp.js';

const PORT = 7651;

describe('a restart keeps out what the last run kept out', kernelOnly(), () => {
  const lab = new Lab();
  let b1: Host, b2: Host;

  before(async () => {
    ({ b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.2.2/24' }));
    await lab.start(['--log-level', 'info']);
  });
  after(() => lab.destroy());

  const said = async (name: string) => {
    const r = await lab.status(name);
    return `${name} ${RuleState[r.state]}: ${r.message} [${r.backendStatus.map((b) => b.message).join('; ')}]`;
  };
  const counters = async (name: string) => (await lab.c.counters.getCounters({ filter: { rules: [name] } })).counters!;
  const matched = async (name: string) => Number((await counters(name)).rules[0]?.matchedPackets ?? 0n);
  /** Lines the daemon logged since `from` saying kernel entries (rules or links) differed and were rewritten. */
  const rewrittenLines = (from: number) =>
    lab
      .d!.output.slice(from)
      .split('\n')
      .filter((l) => /differ(ed)? from the (stored|desired) state/.test(l));

  /**
   * SIGTERM (the datapath stays: no --cleanup-on-exit), then the same daemon started again on the same pins and
   * state: it becomes lab.d, whose output holds the new daemon's lines only.
   */
  const restart = async () => {
    lab.d!.closeClients();
    assert.equal(await lab.d!.stop('SIGTERM'), 0, 'stopped cleanly');
    await lab.start(['--log-level', 'info']);
  };

  /** `frame` (a rawUdpFrames program with a gap) run all the while `during` runs, then stopped: how many it sent. */
  const sendingDuring = async (frame: string, during: () => Promise<void>): Promise<number> => {
    const sender = spawn('python3', ['-c', frame], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    sender.stdout!.on('data', (x) => (out += x));
    const exited = new Promise((r) => sender.once('exit', r));
    try {
      await until('the sender sends', () => out.includes('\n'), 10_000);
      await during();
    } finally {
      sender.kill('SIGTERM');
      await exited;
    }
    return out.split('\n').filter((l) => /^\d+$/.test(l)).length;
  };

  it('a backend closing a loop the host made stays out across a restart: each frame matched once, nothing rewritten', async (t) => {
    // rc: ingress bridge br -> br's address out of ga, whose peer gb holds br's MAC and is no ingress: accepted.
    // Then gb is made a port of br: what rc sends to br's MAC comes up on br again (rule-loop-host.test.ts).
    const brIp = '198.18.45.1';
    const brMac = '02:5e:00:45:00:01';
    const { ga, gb, gd, br, made } = hostLoopBridge(lab.id, brMac);
    lab.onDestroy(() => deleteLinks(made));
    sh('ip', ['addr', 'add', `${brIp}/24`, 'dev', br]);
    const gdMac = JSON.parse(sh('ip', ['-j', 'link', 'show', gd]))[0].address;
    await lab.c.rules.createRule({ rule: lab.rule('rc', PORT, [{ ip: brIp, mac: brMac, interface: ga }], [br]) });
    await lab.untilActive('rc', 20_000);
    const loopNamed = new RegExp(
      `in a forwarding loop the host made, of rules rc -> rc through ${ga} -> ${gb} -> ${br} \\[rule rc\\]`,
    );
    sh('ip', ['link', 'set', gb, 'master', br]); // the host makes the loop: ga -> gb -> br (rc)
    try {
      await until(
        () => said('rc'),
        async () => {
          const r = await lab.status('rc');
          return r.state === RuleState.RULE_STATE_INACTIVE && loopNamed.test(r.message);
        },
        20_000,
      );
      // Taken out: 5 frames into br matched once each.
      let m0 = await matched('rc');
      sh('python3', ['-c', rawUdpFrames(gd, gdMac, brMac, brIp, PORT, 5)]);
      await until('rc matched 5', async () => (await matched('rc')) - m0 >= 5, 10_000);
      await sleep(300); // a frame going around a loop would be counted again meanwhile
      assert.equal((await matched('rc')) - m0, 5, 'before the restart: 5 frames matched once each');

      // Frames into br all the while (one every 10 ms), across the stop and the start.
      m0 = await matched('rc');
      const sent = await sendingDuring(rawUdpFrames(gd, gdMac, brMac, brIp, PORT, 20_000, undefined, 10), async () => {
        await restart();
        // The new daemon's first passes (and the kernel check) run while frames come in.
        await until(
          () => said('rc'),
          async () => {
            const r = await lab.status('rc');
            return r.state === RuleState.RULE_STATE_INACTIVE && loopNamed.test(r.message);
          },
          20_000,
        );
        await sleep(2500);
      });
      await until('every frame sent counted', async () => (await matched('rc')) - m0 >= sent, 10_000);
      await sleep(300);
      const got = (await matched('rc')) - m0;
      t.diagnostic(`${sent} frames sent into br across the restart, matched ${got} times`);
      t.diagnostic(`the start's "rewritten" lines: ${rewrittenLines(0).join('\n') || 'none'}`);
      assert.ok(sent > 100, `frames were sent across the restart (${sent})`);
      assert.equal(got, sent, `across the restart: ${sent} frames matched once each (matched ${got} times: a loop)`);
      // The start said nothing rewritten: the kernel held what the start wants (the backend out).
      assert.deepEqual(rewrittenLines(0), [], 'no kernel entry said rewritten at the start');
      const r = await lab.status('rc');
      assert.equal(r.state, RuleState.RULE_STATE_INACTIVE);
      assert.match(r.backendStatus[0].message, /backend taken out of the table until it can receive/);
      // The new daemon said the loop once, and nothing said it gone.
      // (Its warning; the problems line of the start's first pass names it too.)
      assert.equal(
        lab.count(/"msg":"forwarding loop made by the host: rules rc -> rc through /),
        1,
        'the loop said once',
      );
      assert.equal(lab.count(/"msg":"forwarding loop of rules rc -> rc .* is gone/), 0, 'never said gone');
    } finally {
      shQuiet('ip', ['link', 'set', gb, 'nomaster']);
    }
    await lab.untilActive('rc', 20_000);
    await lab.c.rules.deleteRule({ name: 'rc' });
  });

  it('a backend whose static MAC the host contradicts stays out across a restart: 0 frames to that MAC', async (t) => {
    const old = b2.mac;
    const other = lab.mac('98');
    await lab.c.rules.createRule({ rule: lab.rule('web', PORT + 1, [backendOf(b1), backendOf(b2)]) });
    await until(
      () => said('web'),
      async () => {
        const st = await lab.status('web');
        return st.state === RuleState.RULE_STATE_ACTIVE && st.backendStatus.every((b) => b.message === '');
      },
      20_000,
    );
    const toB2 = async () => (await counters('web')).backends.find((b) => b.ip === b2.ip)?.packets ?? 0n;
    const contradicted = new RegExp(
      `^static MAC contradicted: the veth peer eth0 of ${b2.hostIf} has MAC ${other}, not the static ${old}`,
    );
    const outNamed = async () => {
      const st = await lab.status('web');
      return (
        st.state === RuleState.RULE_STATE_DEGRADED &&
        st.backendStatus[1]?.active === false &&
        contradicted.test(st.backendStatus[1].message)
      );
    };
    lab.topo.exec('b2', 'ip', ['link', 'set', 'eth0', 'address', other]); // the host contradicts b2's static MAC
    try {
      await until(() => said('web'), outNamed, 30_000);
      // Out: 200 datagrams over 50 flows, none redirected to b2.
      let n0 = await toB2();
      await sendUdp(lab.vm.netns, '198.18.9.9', PORT + 1, 200, { flows: 50 }).done;
      await sleep(300);
      assert.equal(await toB2(), n0, 'before the restart: nothing redirected to b2');

      // Datagrams over 50 flows all the while (one every 10 ms), across the stop and the start.
      n0 = await toB2();
      const tx = sendUdp(lab.vm.netns, '198.18.9.9', PORT + 1, 20_000, { flows: 50, perTick: 1, tickMs: 10 });
      let sent = 0;
      try {
        await sleep(300);
        await restart();
        await until(() => said('web'), outNamed, 20_000);
        await sleep(2500);
      } finally {
        tx.stop();
        sent = (await tx.done).sent;
      }
      await sleep(300);
      const got = (await toB2()) - n0;
      t.diagnostic(`${sent} datagrams sent across the restart, ${got} redirected to b2's contradicted MAC`);
      t.diagnostic(`the start's "rewritten" lines: ${rewrittenLines(0).join('\n') || 'none'}`);
      assert.ok(sent > 100, `datagrams were sent across the restart (${sent})`);
      assert.equal(got, 0n, `across the restart: no frame redirected to the contradicted MAC (${got} were)`);
      assert.deepEqual(rewrittenLines(0), [], 'no kernel entry said rewritten at the start');
      assert.equal(
        lab.count(new RegExp(`"msg":"backend ${b2.ip} on ${b2.hostIf}: static MAC contradicted: .*${other}.*${old}`)),
        1,
        'the contradiction said once by the new daemon',
      );
    } finally {
      lab.topo.exec('b2', 'ip', ['link', 'set', 'eth0', 'address', old]);
    }
    await lab.untilActive('web', 30_000);
    await lab.c.rules.deleteRule({ name: 'web' });
  });

  it('a link the host made into a loop stays out of the devmap across a restart: each frame received once', async (t) => {
    // connect sa sb while only sa's veth peer is a port of br; then sb's peer joins br: every broadcast frame would
    // go round sa -> sb -> sbp -> br -> sap -> sa for ever (link-loop-host.test.ts). Their own devices send
    // nothing of their own (IPv6 off on them): the frames counted are the test's.
    const [sa, sap, sb, sbp, br] = ['sa', 'sap', 'sb', 'sbp', 'lb'].map((x) => `x${lab.id}${x}`);
    const made = hostLoopLink(sa, sap, sb, sbp, br);
    lab.onDestroy(() => deleteLinks(made));
    const link = async () => (await lab.c.links.listLinks({})).links.find((l) => l.a === sa)!;
    const rx = () => Number(sh('cat', [`/sys/class/net/${sa}/statistics/rx_packets`]));
    const frames = (n: number, gapMs?: number) =>
      rawUdpFrames(sap, '02:5e:00:49:00:0b', 'ff:ff:ff:ff:ff:ff', '198.18.49.11', 9, n, undefined, gapMs);
    const outNamed = async () => {
      const l = await link();
      return (
        !l.status?.aToBActive &&
        !l.status?.bToAActive &&
        l.status!.warnings.some((w) => w.includes('in a forwarding loop the host made'))
      );
    };
    try {
      await lab.c.links.connect({ link: { a: sa, b: sb, direction: LinkDirection.LINK_DIRECTION_BOTH } });
      await until('the link forwarding both ways', async () => {
        const l = await link();
        return !!l.status?.aToBActive && !!l.status?.bToAActive;
      });
      sh('ip', ['link', 'set', sbp, 'master', br]); // the host closes the loop
      await until('the link not forwarding, naming the loop', outNamed, 15_000);
      let r0 = rx();
      sh('python3', ['-c', frames(1)]);
      await sleep(1000);
      assert.ok(rx() - r0 < 10, `before the restart: one broadcast frame into ${sa}, ${rx() - r0} received`);

      // A broadcast frame into sa every 10 ms, across the stop and the start.
      r0 = rx();
      const sent = await sendingDuring(frames(20_000, 10), async () => {
        await restart();
        await until('the link not forwarding, naming the loop, after the restart', outNamed, 20_000);
        await sleep(2500);
      });
      await sleep(500);
      const got = rx() - r0;
      t.diagnostic(`${sent} broadcast frames into ${sa} across the restart, ${got} received by ${sa}`);
      t.diagnostic(`the start's "rewritten" lines: ${rewrittenLines(0).join('\n') || 'none'}`);
      assert.ok(sent > 100, `frames were sent across the restart (${sent})`);
      assert.ok(got <= sent + 10, `across the restart: ${sent} frames, ${got} received by ${sa} (a loop)`);
      assert.deepEqual(rewrittenLines(0), [], 'no kernel entry said rewritten at the start');
      assert.equal(
        lab.count(new RegExp(`"msg":"forwarding loop made by the host: link ${sa} <-> ${sb}: `)),
        1,
        'the loop said once by the new daemon',
      );
      assert.equal(lab.count(new RegExp(`forwarding loop of link ${sa} <-> ${sb} is gone`)), 0, 'never said gone');
    } finally {
      shQuiet('ip', ['link', 'del', br]); // first: a loop left would starve the machine
    }
    await lab.c.links.disconnect({ a: sa, b: sb });
  });
});
