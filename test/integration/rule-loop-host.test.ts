/**
 * A forwarding loop the HOST makes after the rules were accepted (thirty-fourth review, HIGH): rule ra (ingresses
 * vm's veth and mb) sends to b1 out of b1's veth E; rule rb (ingress md) sends out of ma, whose peer mb is ra's
 * ingress: a chain, no loop, both accepted. Then the host renames veths (E away, mz -> E: E's peer is now md,
 * rb's ingress), or moves b1's eth0 into the daemon's namespace as md: ra -> E -> md -> rb -> ma -> mb -> ra ...
 * Before: nothing noticed it (rules ACTIVE, no "loop" in log, status or health) and 5 datagrams were counted
 * ~160 times by ra and ~155 by rb. Now the reconciler runs the change-time loop check on the host as it is: the
 * backends that close the loop are taken out of their tables (both rules INACTIVE naming the loop), one warning
 * is logged, xdpctl.datapath is NOT_SERVING and GetStatus says it; when the host changes back the backends
 * return (ACTIVE, 5/5 delivered) and the recovery is logged once. Real veths, a real daemon, real datagrams.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { deleteLinks, hostLoopBridge } from '../helpers/loop-layouts.js';
import { type Host } from '../helpers/topology.js';
import { rawUdpFrames, sendUdp } from '../helpers/udp.js';

const PORT = 7643;
const { NOT_SERVING } = HealthCheckResponse_ServingStatus;

describe('a forwarding loop the host makes after the rules were accepted', kernelOnly(), () => {
  const lab = new Lab();
  let vm: Host;
  let b1: Host;
  const [ma, mb, mz, md, eo] = ['ma', 'mb', 'mz', 'md', 'eo'].map((x) => `x${lab.id}${x}`);
  const rbIp = '198.18.41.2';
  const mac: Record<string, string> = {};

  const up = (x: string) => {
    sh('ip', ['link', 'set', x, 'up']);
    sh('sysctl', ['-qw', `net.ipv4.conf.${x}.forwarding=0`]);
  };
  /** The pair mz-md, md holding b1's MAC (a frame to ra's backend is taken by md once E leads there). */
  const pairMd = () => {
    sh('ip', ['link', 'add', mz, 'type', 'veth', 'peer', 'name', md, 'address', b1.mac]);
    up(mz);
    up(md);
  };

  before(async () => {
    ({ vm, b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    lab.onDestroy(() => [ma, mz, md, eo].forEach((x) => shQuiet('ip', ['link', 'del', x])));
    sh('ip', ['link', 'add', ma, 'type', 'veth', 'peer', 'name', mb]);
    up(ma);
    up(mb);
    sh('ip', ['addr', 'add', `${rbIp}/24`, 'dev', mb]);
    mac[mb] = JSON.parse(sh('ip', ['-j', 'link', 'show', mb]))[0].address;
    pairMd();
    await lab.start(['--log-level', 'info']);
    // ra: vm's veth and mb -> b1 (out of E); rb: md -> mb's address out of ma (mb is ra's ingress): a chain.
    await lab.c.rules.createRule({ rule: lab.rule('ra', PORT, [backendOf(b1)], [vm.hostIf, mb]) });
    await lab.c.rules.createRule({
      rule: lab.rule('rb', PORT, [{ ip: rbIp, mac: mac[mb], interface: ma }], [md]),
    });
    await bothActive('at start');
  });
  after(() => lab.destroy());

  const bothActive = (what: string) =>
    until(
      `${what}: ra and rb ACTIVE`,
      async () =>
        (await lab.status('ra')).state === RuleState.RULE_STATE_ACTIVE &&
        (await lab.status('rb')).state === RuleState.RULE_STATE_ACTIVE,
      20_000,
    );
  const matched = async () => {
    const { counters } = await lab.c.counters.getCounters({});
    const of = (r: string) => Number(counters!.rules.find((x) => x.rule === r)?.matchedPackets ?? 0n);
    return { ra: of('ra'), rb: of('rb') };
  };
  const loopLine = /forwarding loop made by the host: rules r[ab] -> r[ab] -> r[ab] through .*until the host no longer/;
  const goneLine =
    /forwarding loop of rules r[ab] -> r[ab] -> r[ab] through .* is gone \(the host or the rules changed\)/;
  const linesSince = (from: number, re: RegExp) =>
    lab
      .d!.output.slice(from)
      .split('\n')
      .filter((l) => re.test(l)).length;

  /** Five datagrams from vm into ra's ingress: each counted once by ra (dropped: no backend), none around a loop. */
  const fiveAroundNoLoop = async () => {
    const before = await matched();
    await sendUdp(vm.netns, '198.18.9.9', PORT, 5).done;
    await until('ra matched 5', async () => (await matched()).ra - before.ra >= 5, 10_000);
    await sleep(300); // a datagram going around a loop would be counted again meanwhile
    const now = await matched();
    const grew = { ra: now.ra - before.ra, rb: now.rb - before.rb };
    assert.ok(grew.ra + grew.rb <= 10, `matched grew by ${JSON.stringify(grew)} for 5 datagrams (a loop)`);
    return grew;
  };

  /** The loop said: both rules INACTIVE naming it, health NOT_SERVING, GetStatus's warnings. */
  const loopSaid = async () => {
    const named = (start: string, other: string) =>
      new RegExp(`in a forwarding loop the host made, of rules ${start} -> ${other} -> ${start} through `);
    await until(
      'ra and rb INACTIVE naming the loop',
      async () => {
        const [a, b] = [await lab.status('ra'), await lab.status('rb')];
        return (
          a.state === RuleState.RULE_STATE_INACTIVE &&
          named('ra', 'rb').test(a.message) &&
          b.state === RuleState.RULE_STATE_INACTIVE &&
          named('rb', 'ra').test(b.message)
        );
      },
      20_000,
    );
    const a = await lab.status('ra');
    assert.match(a.backendStatus[0].message, /backend taken out of the table until it can receive/);
    assert.match(a.message, new RegExp(`through ${b1.hostIf} -> ${md} \\[rule rb\\], ${ma} -> ${mb} \\[rule ra\\]`));
    await until('xdpctl.datapath NOT_SERVING', async () => (await lab.health()) === NOT_SERVING, 10_000);
    const warnings = (await lab.c.daemon.getStatus({})).datapath!.warnings;
    assert.ok(
      warnings.some((w) => /^forwarding loop made by the host: rules r[ab] -> r[ab] -> r[ab] through /.test(w)),
      warnings.join('\n'),
    );
  };

  /** Back: both ACTIVE, 5/5 to b1, the recovery logged once. */
  const recovered = async (from: number) => {
    await bothActive('after the host changed back');
    const r = await lab.send(PORT, [b1], 5, 1);
    assert.deepEqual(r.got, [5], 'delivered to b1');
    await until('the recovery logged', async () => linesSince(from, goneLine) >= 1, 10_000);
    assert.equal(linesSince(from, goneLine), 1, 'the recovery logged once');
  };

  /**
   * The loop of ra and rb the host made since `from` (an offset in the daemon's output): said, 5 datagrams counted
   * once each, one warning; then `back` changes the host back: recovered, still one warning.
   */
  const loopSaidThenBack = async (from: number, back: () => void) => {
    await loopSaid();
    const grew = await fiveAroundNoLoop();
    assert.deepEqual(grew, { ra: 5, rb: 0 });
    assert.equal(linesSince(from, loopLine), 1, 'one warning for the loop');
    const mark = lab.d!.output.length;
    back();
    await recovered(mark);
    assert.equal(linesSince(from, loopLine), 1, 'still one warning for the loop');
  };

  /**
   * Rule `name` (one backend, created by the caller) ACTIVE; then `make` changes the host so that the backend's
   * datagrams come back to its ingress: INACTIVE naming the loop (`named`; until then, what 5 frames sent by
   * `inject` are counted as), 5 frames matched once each, one warning; `undo` changes it back: ACTIVE again.
   */
  const selfLoopByHost = async (
    name: string,
    o: { named: RegExp; make: () => void; undo: () => void; inject: () => void; into: string; settled?: RuleState },
  ) => {
    const settled = o.settled ?? RuleState.RULE_STATE_ACTIVE;
    const state = async () => (await lab.status(name)).state;
    const said = async (what: string) => {
      const r = await lab.status(name);
      return `${what}: ${name} ${RuleState[r.state]}: ${r.message} [${r.backendStatus.map((b) => b.message).join('; ')}]`;
    };
    await until(
      () => said(`${name} ${RuleState[settled]}`),
      async () => (await state()) === settled,
      20_000,
    );
    const ruleMatched = async () =>
      Number((await lab.c.counters.getCounters({})).counters!.rules.find((x) => x.rule === name)?.matchedPackets ?? 0n);
    const from = lab.d!.output.length;
    o.make();
    try {
      await until(
        async () => {
          // Not within the time (the old code): what 5 frames are counted as meanwhile.
          const m0 = await ruleMatched();
          o.inject();
          await sleep(1000);
          return `${name} INACTIVE naming the loop: ${await said(name)}; 5 frames into ${o.into} matched ${(await ruleMatched()) - m0} times`;
        },
        async () => {
          const r = await lab.status(name);
          return r.state === RuleState.RULE_STATE_INACTIVE && o.named.test(r.message);
        },
        20_000,
      );
      const m0 = await ruleMatched();
      o.inject();
      await until(`${name} matched 5`, async () => (await ruleMatched()) - m0 >= 5, 10_000);
      await sleep(300); // a frame going around a loop would be counted again meanwhile
      assert.equal((await ruleMatched()) - m0, 5, `5 frames into ${o.into} matched once each`);
      const warned = new RegExp(
        `forwarding loop made by the host: rules ${name} -> ${name} through .*until the host no longer`,
      );
      assert.equal(linesSince(from, warned), 1, 'one warning for the loop');
    } finally {
      o.undo();
    }
    await until(
      () => said(`${name} ${RuleState[settled]} again`),
      async () => (await state()) === settled,
      20_000,
    );
    await lab.c.rules.deleteRule({ name });
  };

  it('a rename makes the loop (E away, mz renamed E): taken out, said once; renamed back: recovered', async () => {
    const r0 = await lab.send(PORT, [b1], 5, 1);
    assert.deepEqual(r0.got, [5], 'before: delivered to b1');
    const from = lab.d!.output.length;
    const rename = (a: string, b: string) => {
      sh('ip', ['link', 'set', a, 'down']);
      sh('ip', ['link', 'set', a, 'name', b]);
      up(b);
    };
    rename(b1.hostIf, eo);
    rename(mz, b1.hostIf); // E's peer is md now: ra -> E -> md (rb) -> ma -> mb (ra)
    let back = false;
    try {
      await loopSaidThenBack(from, () => {
        rename(b1.hostIf, mz);
        rename(eo, b1.hostIf);
        back = true;
      });
    } finally {
      if (!back) {
        shQuiet('ip', ['link', 'set', b1.hostIf, 'name', mz]);
        shQuiet('ip', ['link', 'set', eo, 'name', b1.hostIf]);
        for (const x of [mz, b1.hostIf]) shQuiet('ip', ['link', 'set', x, 'up']);
      }
    }
  });

  it("a veth peer moved (b1's eth0 into this namespace as md): taken out, said once; moved back: recovered", async () => {
    await bothActive('before');
    const from = lab.d!.output.length;
    shQuiet('ip', ['link', 'del', mz]); // rb's ingress md goes with it (rb waits for it)
    sh('ip', ['-n', b1.netns, 'link', 'set', 'eth0', 'netns', String(process.pid), 'name', md]);
    up(md); // E's peer is md, rb's ingress again: ra -> E -> md (rb) -> ma -> mb (ra)
    let back = false;
    try {
      await loopSaidThenBack(from, () => {
        sh('ip', ['link', 'set', md, 'netns', b1.netns, 'name', 'eth0']);
        sh('ip', ['-n', b1.netns, 'addr', 'add', `${b1.ip}/24`, 'dev', 'eth0']);
        sh('ip', ['-n', b1.netns, 'link', 'set', 'eth0', 'up']);
        pairMd();
        back = true;
      });
    } finally {
      if (!back) {
        shQuiet('ip', ['link', 'set', md, 'netns', b1.netns, 'name', 'eth0']);
        shQuiet('ip', ['-n', b1.netns, 'addr', 'add', `${b1.ip}/24`, 'dev', 'eth0']);
        shQuiet('ip', ['-n', b1.netns, 'link', 'set', 'eth0', 'up']);
      }
    }
  });

  it('a port enslaved to the ingress bridge makes the loop: rc INACTIVE naming it; out of the bridge: recovered', async () => {
    // rc: ingress bridge br -> br's address out of ga, whose peer gb is no ingress: accepted. Then gb is made a
    // port of br: what rc sends to br's MAC comes up on br again. Before: rc stayed ACTIVE and 5 frames into br
    // were counted 315 times. gc-gd is a port pair to inject frames into br.
    const brIp = '198.18.45.1';
    // gb holds br's MAC (set on both): rc's backend is gb's own MAC before gb joins br, and br's after.
    const brMac = '02:5e:00:45:00:01';
    const { ga, gb, gd, br, made } = hostLoopBridge(lab.id, brMac);
    lab.onDestroy(() => deleteLinks(made));
    sh('ip', ['addr', 'add', `${brIp}/24`, 'dev', br]);
    const gdMac = JSON.parse(sh('ip', ['-j', 'link', 'show', gd]))[0].address;
    await lab.c.rules.createRule({ rule: lab.rule('rc', PORT, [{ ip: brIp, mac: brMac, interface: ga }], [br]) });
    await selfLoopByHost('rc', {
      named: new RegExp(
        `in a forwarding loop the host made, of rules rc -> rc through ${ga} -> ${gb} -> ${br} \\[rule rc\\]`,
      ),
      make: () => sh('ip', ['link', 'set', gb, 'master', br]), // ga -> gb -> br (rc)
      undo: () => shQuiet('ip', ['link', 'set', gb, 'nomaster']),
      inject: () => sh('python3', ['-c', rawUdpFrames(gd, gdMac, brMac, brIp, PORT, 5)]),
      into: 'the bridge',
    });
  });

  it("a macvlan made on the backend's veth peer after the rule, the rule's ingress: rm INACTIVE naming it; removed: recovered", async () => {
    // rm: ingress macvlan mv (on hd, holding mvIp) -> mvIp out of ha, whose peer hb holds mv's MAC: accepted. Then mv is
    // made again on hb (passthru: every frame hb receives goes up to mv): what rm sends out of ha comes up on mv.
    // Before: rm stayed ACTIVE and frames into mv went around until their TTL ran out (a macvlan is an upper through
    // IFLA_LINK, which the check did not follow).
    const [ha, hb, hc, hd, mv] = ['ha', 'hb', 'hc', 'hd', 'hm'].map((x) => `x${lab.id}${x}`);
    const mvIp = '198.18.47.1';
    const mvMac = '02:5e:00:47:00:01';
    lab.onDestroy(() => [mv, ha, hc].forEach((x) => shQuiet('ip', ['link', 'del', x])));
    sh('ip', ['link', 'add', ha, 'type', 'veth', 'peer', 'name', hb, 'address', mvMac]);
    sh('ip', ['link', 'add', hc, 'type', 'veth', 'peer', 'name', hd]);
    const macvlanOn = (lower: string, mode: string) => {
      shQuiet('ip', ['link', 'del', mv]);
      sh('ip', ['link', 'add', mv, 'link', lower, 'address', mvMac, 'type', 'macvlan', 'mode', mode]);
      up(mv);
      sh('ip', ['addr', 'add', `${mvIp}/24`, 'dev', mv]);
    };
    for (const x of [ha, hb, hc, hd]) up(x);
    macvlanOn(hd, 'bridge');
    const haMac = JSON.parse(sh('ip', ['-j', 'link', 'show', ha]))[0].address;
    await lab.c.rules.createRule({ rule: lab.rule('rm', PORT, [{ ip: mvIp, mac: mvMac, interface: ha }], [mv]) });
    await selfLoopByHost('rm', {
      named: new RegExp(
        `in a forwarding loop the host made, of rules rm -> rm through ${ha} -> ${hb} -> ${mv} \\[rule rm\\]`,
      ),
      make: () => macvlanOn(hb, 'passthru'), // ha -> hb -> mv (rm)
      undo: () => macvlanOn(hd, 'bridge'),
      inject: () => sh('python3', ['-c', rawUdpFrames(ha, haMac, mvMac, mvIp, PORT, 5)]),
      into: mv,
    });
  });

  it("the ingress's veth peer made a port of the bridge the backend's peer is a port of: rf INACTIVE naming the bridge's forward; out: recovered", async () => {
    // rf: ingress fa -> an address out of fb with fa's MAC, fb's peer fbp a port of bridge fr (which floods it: no
    // other port): accepted (its static MAC nothing confirms: DEGRADED). Then fa's peer fap is made a port of fr:
    // what rf sends out of fb is forwarded out of fap, a receive on fa again. Before: rf stayed DEGRADED and 5
    // frames into fa were matched 315 times (what a bridge forwards out of a port was taken to leave the host: a
    // transmit on a veth is a receive on its peer, where the program runs).
    const [fa, fap, fb, fbp, fr] = ['fa', 'fap', 'fb', 'fbp', 'fr'].map((x) => `x${lab.id}${x}`);
    const ip = '198.18.48.9';
    lab.onDestroy(() => [fa, fb, fr].forEach((x) => shQuiet('ip', ['link', 'del', x])));
    sh('ip', ['link', 'add', fr, 'type', 'bridge']);
    sh('ip', ['link', 'add', fa, 'type', 'veth', 'peer', 'name', fap]);
    sh('ip', ['link', 'add', fb, 'type', 'veth', 'peer', 'name', fbp]);
    sh('ip', ['link', 'set', fbp, 'master', fr]);
    for (const x of [fr, fa, fap, fb, fbp]) up(x);
    const faMac = JSON.parse(sh('ip', ['-j', 'link', 'show', fa]))[0].address;
    await lab.c.rules.createRule({ rule: lab.rule('rf', PORT, [{ ip, mac: faMac, interface: fb }], [fa]) });
    try {
      await selfLoopByHost('rf', {
        named: new RegExp(
          `in a forwarding loop the host made, of rules rf -> rf through ${fb} -> ${fbp} -> ${fr} -> ${fap} -> ${fa} ` +
            '\\[rule rf\\]',
        ),
        make: () => sh('ip', ['link', 'set', fap, 'master', fr]), // fb -> fbp -> fr -> fap -> fa (rf)
        undo: () => shQuiet('ip', ['link', 'set', fap, 'nomaster']),
        inject: () => sh('python3', ['-c', rawUdpFrames(fap, '02:5e:00:48:00:09', faMac, ip, PORT, 5)]),
        into: fa,
        // Its static MAC nothing confirms: no host holds its address.
        settled: RuleState.RULE_STATE_DEGRADED,
      });
    } finally {
      shQuiet('ip', ['link', 'del', fr]);
    }
  });

  it("a macvlan beside the backend's macvlan egress switched to bridge mode, the rule's ingress: ms INACTIVE naming it; private again: recovered", async () => {
    // ms: ingress macvlan mb (private) -> an address with mb's MAC out of macvlan ma (bridge), both on veth lo:
    // accepted (a private macvlan takes nothing its neighbours send: macvlan_queue_xmit). Then mb is switched to
    // bridge mode: what ms sends out of ma is handed to the lower lo as a receive, and up to mb. Before: ms stayed
    // DEGRADED and 5 frames into mb were matched 315 times (the walk followed only what a veth transmits).
    const [lo, lop, ma, mb] = ['slo', 'slp', 'sma', 'smb'].map((x) => `x${lab.id}${x}`);
    const ip = '198.18.54.9';
    lab.onDestroy(() => [ma, mb, lo].forEach((x) => shQuiet('ip', ['link', 'del', x])));
    sh('ip', ['link', 'add', lo, 'type', 'veth', 'peer', 'name', lop]);
    sh('ip', ['link', 'add', ma, 'link', lo, 'type', 'macvlan', 'mode', 'bridge']);
    sh('ip', ['link', 'add', mb, 'link', lo, 'type', 'macvlan', 'mode', 'private']);
    for (const x of [lo, lop, ma, mb]) up(x);
    const mac = (x: string) => JSON.parse(sh('ip', ['-j', 'link', 'show', x]))[0].address as string;
    await lab.c.rules.createRule({ rule: lab.rule('ms', PORT, [{ ip, mac: mac(mb), interface: ma }], [mb]) });
    await selfLoopByHost('ms', {
      named: new RegExp(
        `in a forwarding loop the host made, of rules ms -> ms through ${ma} -> ${lo} -> ${mb} \\[rule ms\\]`,
      ),
      make: () => sh('ip', ['link', 'set', mb, 'type', 'macvlan', 'mode', 'bridge']), // ma -> lo -> mb (ms)
      undo: () => shQuiet('ip', ['link', 'set', mb, 'type', 'macvlan', 'mode', 'private']),
      inject: () => sh('python3', ['-c', rawUdpFrames(lop, mac(lop), mac(mb), ip, PORT, 5)]),
      into: mb,
      // Its static MAC nothing confirms: no host holds its address.
      settled: RuleState.RULE_STATE_DEGRADED,
    });
  });

  it('a veth peer in another namespace, a port of a bridge there: cannot be told (from the create reply on) while a port leads on there; a port leading back makes the loop: nu INACTIVE naming it', async () => {
    // nu: ingress qa -> an address with qa's MAC out of pa, whose peer pb is a port of bridge brn in netns ns, whose
    // other port rb leads to rc (a veth pair inside ns): where rc's frames go is not followed: said as "cannot be
    // told" in nu's warnings, a link's out of pa too, and GetStatus's. Then qa's peer qb is made a port of brn:
    // what nu sends out of pa comes back to qa. Before: nothing was said (the walk stopped at pb silently), nu
    // stayed DEGRADED, and 5 frames into qa were matched 315 times.
    const ns = `x${lab.id}nsh`;
    const [pa, pb, qa, qb, rb, rc, brn, la, lb] = ['hpa', 'hpb', 'hqa', 'hqb', 'hrb', 'hrc', 'hbr', 'hla', 'hlb'].map(
      (x) => `x${lab.id}${x}`,
    );
    const ip = '198.18.56.9';
    lab.onDestroy(() => {
      shQuiet('ip', ['netns', 'del', ns]);
      [pa, qa, la].forEach((x) => shQuiet('ip', ['link', 'del', x]));
    });
    sh('ip', ['netns', 'add', ns]);
    const inNs = (...args: string[]) => sh('ip', ['-n', ns, ...args]);
    inNs('link', 'add', brn, 'type', 'bridge');
    inNs('link', 'add', rb, 'type', 'veth', 'peer', 'name', rc);
    inNs('link', 'set', rb, 'master', brn);
    for (const [a, b] of [
      [pa, pb],
      [qa, qb],
    ]) {
      sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b, 'netns', ns]);
      inNs('link', 'set', b, 'up');
      up(a);
    }
    sh('ip', ['link', 'add', la, 'type', 'veth', 'peer', 'name', lb]);
    up(la);
    up(lb);
    inNs('link', 'set', pb, 'master', brn);
    for (const x of [brn, rb, rc]) inNs('link', 'set', x, 'up');
    const qaMac = JSON.parse(sh('ip', ['-j', 'link', 'show', qa]))[0].address;
    const qbMac = JSON.parse(sh('ip', ['-n', ns, '-j', 'link', 'show', qb]))[0].address;
    const created = await lab.c.rules.createRule({
      rule: lab.rule('nu', PORT, [{ ip, mac: qaMac, interface: pa }], [qa]),
    });
    await lab.c.links.connect({ link: { a: la, b: pa, direction: LinkDirection.LINK_DIRECTION_A_TO_B } });
    try {
      // Where rb's frames go (its peer rc, there) is not followed: said as such, not as "elsewhere".
      const untold = `${pa}'s veth peer ${pb} in netns ${ns} is a port of bridge ${brn} there, where it forwards frames out of its port\\(s\\) veth ${rb}: xdpctld does not follow frames in another network namespace`;
      const ruleSays = new RegExp(
        `^backend ${ip} on ${pa}: whether its redirected datagrams come back to an ingress of a rule \\(a forwarding loop\\) cannot be told: ${untold}`,
      );
      // The change's reply says it as a read after it does (before: only the reads from the next pass on).
      const replied = created.rule!.status!.warnings;
      assert.ok(
        replied.some((w) => ruleSays.test(w)),
        `CreateRule's reply: ${replied.join(' | ')}`,
      );
      await until(
        async () => `nu's warnings say it cannot be told: ${(await lab.status('nu')).warnings.join(' | ')}`,
        async () => (await lab.status('nu')).warnings.some((w) => ruleSays.test(w)),
        20_000,
      );
      const linkSays = new RegExp(
        `^${la} -> ${pa}: whether the frames it forwards come back \\(a forwarding loop\\) cannot be told: ${untold}`,
      );
      await until(
        async () => `the link's warnings say it cannot be told: ${(await lab.linkStatus(la)).warnings.join(' | ')}`,
        async () => (await lab.linkStatus(la)).warnings.some((w) => linkSays.test(w)),
        20_000,
      );
      const warnings = (await lab.c.daemon.getStatus({})).datapath!.warnings;
      assert.ok(
        warnings.some((w) => w.startsWith(`rule nu: backend ${ip} on ${pa}: `) && w.includes('cannot be told')),
        warnings.join('\n'),
      );
      assert.ok(
        warnings.some((w) => w.startsWith(`link ${la} <-> ${pa}: `) && w.includes('cannot be told')),
        warnings.join('\n'),
      );
    } finally {
      await lab.c.links.disconnect({ a: la, b: pa });
    }
    await selfLoopByHost('nu', {
      named: new RegExp(
        `in a forwarding loop the host made, of rules nu -> nu through ${pa} -> ${pb} in netns ${ns} -> ${brn} -> ${qb} -> ${qa} \\[rule nu\\]`,
      ),
      make: () => inNs('link', 'set', qb, 'master', brn), // pa -> pb -> brn -> qb -> qa (nu)
      undo: () => shQuiet('ip', ['-n', ns, 'link', 'set', qb, 'nomaster']),
      inject: () => sh('ip', ['netns', 'exec', ns, 'python3', '-c', rawUdpFrames(qb, qbMac, qaMac, ip, PORT, 5)]),
      into: qa,
      // Its static MAC nothing confirms: no host holds its address.
      settled: RuleState.RULE_STATE_DEGRADED,
    });
  });
});

describe(
  "a loop through a bridge in another namespace and a macvlan moved there: said from the change's reply on",
  kernelOnly(),
  () => {
    // nm: ingress lb -> out of pa, whose peer pb is a port of bridge brn in netns ns; brn's other port is macvlan mv
    // (mode bridge), made on la here and moved there: what brn forwards out of mv goes out of la, a receive on lb,
    // nm's ingress again: a loop through two namespaces that the walk cannot follow (it does not follow frames in
    // another namespace). Before: the ApplyRules and CreateRule replies said nothing of it (only the reads from the
    // next pass on did), and what they said called mv a port that "leads elsewhere", which is not what was read.
    const lab = new Lab();
    after(() => lab.destroy());

    it('ApplyRules and CreateRule replies say it cannot be told, naming the macvlan port as what it is', async () => {
      const ns = `x${lab.id}nsm`;
      const [pa, pb, la, lb, mv, brn] = ['mpa', 'mpb', 'mla', 'mlb', 'mmv', 'mbr'].map((x) => `x${lab.id}${x}`);
      lab.onDestroy(() => {
        shQuiet('ip', ['netns', 'del', ns]);
        [pa, la].forEach((x) => shQuiet('ip', ['link', 'del', x]));
      });
      const here = (x: string) => {
        sh('ip', ['link', 'set', x, 'up']);
        sh('sysctl', ['-qw', `net.ipv4.conf.${x}.forwarding=0`]);
      };
      const inNs = (...args: string[]) => sh('ip', ['-n', ns, ...args]);
      sh('ip', ['netns', 'add', ns]);
      inNs('link', 'add', brn, 'type', 'bridge');
      sh('ip', ['link', 'add', pa, 'type', 'veth', 'peer', 'name', pb, 'netns', ns]);
      sh('ip', ['link', 'add', la, 'type', 'veth', 'peer', 'name', lb]);
      sh('ip', ['link', 'add', mv, 'link', la, 'type', 'macvlan', 'mode', 'bridge']);
      sh('ip', ['link', 'set', mv, 'netns', ns]);
      for (const x of [pb, mv]) inNs('link', 'set', x, 'master', brn);
      for (const x of [brn, pb, mv]) inNs('link', 'set', x, 'up');
      [pa, la, lb].forEach(here);
      const lbMac = JSON.parse(sh('ip', ['-j', 'link', 'show', lb]))[0].address;
      const ip = '198.18.57.9';
      await lab.start(['--log-level', 'info']);
      const says = new RegExp(
        `^backend ${ip} on ${pa}: whether its redirected datagrams come back to an ingress of a rule \\(a forwarding ` +
          `loop\\) cannot be told: ${pa}'s veth peer ${pb} in netns ${ns} is a port of bridge ${brn} there, where it ` +
          `forwards frames out of its port\\(s\\) macvlan ${mv} \\(mode bridge, on a lower device in another network ` +
          `namespace\\): xdpctld does not follow frames in another network namespace`,
      );
      const backend = { ip, mac: lbMac, interface: pa };
      const applied = await lab.c.rules.applyRules({
        rules: [lab.rule('nm', PORT, [backend], [lb])],
        validateOnly: false,
      });
      const nm = applied.rules.find((r) => r.name === 'nm');
      assert.ok(
        nm?.status?.warnings.some((w) => says.test(w)),
        `ApplyRules's reply: ${nm?.status?.warnings.join(' | ')}`,
      );
      const created = await lab.c.rules.createRule({ rule: lab.rule('nn', PORT + 1, [backend], [lb]) });
      assert.ok(
        created.rule!.status!.warnings.some((w) => says.test(w)),
        `CreateRule's reply: ${created.rule!.status!.warnings.join(' | ')}`,
      );
      // A read says the same, GetStatus's datapath warnings too.
      for (const name of ['nm', 'nn'])
        assert.ok(
          (await lab.status(name)).warnings.some((w) => says.test(w)),
          name,
        );
      const all = (await lab.c.daemon.getStatus({})).datapath!.warnings;
      assert.ok(
        all.some((w) => w.startsWith(`rule nn: backend ${ip} on ${pa}: `) && w.includes('cannot be told')),
        all.join('\n'),
      );
      // Deleted: nothing is said of it any more.
      await lab.c.rules.deleteRule({ name: 'nn' });
      const left = (await lab.c.daemon.getStatus({})).datapath!.warnings;
      assert.ok(!left.some((w) => w.startsWith('rule nn:')), left.join('\n'));
    });
  },
);
