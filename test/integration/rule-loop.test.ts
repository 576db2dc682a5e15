/**
 * A rule whose backend's redirected datagrams come back to an ingress of the same rule (eleventh newcomer
 * review, finding 14): backend egress la, a veth whose peer lb (in the daemon's namespace, holding
 * the backend's address: "send it to a local service") is the rule's ingress. Each datagram went lb -> XDP ->
 * la -> lb -> XDP ... until its TTL ran out: 63 matched and 63 redirected per datagram, the rule ACTIVE with no
 * warning, while links that loop are refused. Now CreateRule, UpdateRule and ApplyRules (validate_only
 * included) refuse it with FAILED_PRECONDITION naming backends[i].interface, also when the way back goes
 * through a link; a rule whose destination the rewritten datagram no longer matches is not a loop (accepted).
 * Real veths, a real daemon.
 *
 * Thirty-third review, finding 1: a loop across two rules (rule ra's backend on mc, whose peer md is rule rb's
 * ingress; rb's backend on ma, whose peer mb is ra's ingress) was accepted, both ACTIVE, and one datagram into
 * mb went around ra -> rb -> ra ... until its TTL ran out (counted ~32 times matched by each rule). Now the
 * change that closes a cycle of rules of any length is refused naming the backend and the other rules, also
 * when a link closes it; a chain that is no cycle, sources that no rule of the cycle shares, a destination the
 * rewritten datagram no longer meets: accepted.
 */
import assert from 'node:assert/strict';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { type Rule, RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { stopDaemon } from '../helpers/config-file.js';
import { kernelOnly, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, esc, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { rawUdpFrames } from '../helpers/udp.js';

const PORT = 7641;

describe('a rule whose backend leads back to its own ingress is refused', kernelOnly(), () => {
  const lab = new Lab();
  let b1: Host;
  const la = `x${lab.id}la`;
  const lb = `x${lab.id}lb`;
  const lc = `x${lab.id}lc`;
  const ld = `x${lab.id}ld`;
  const addr = `198.18.40.2`;
  let lbMac = '';

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    lab.onDestroy(() => {
      shQuiet('ip', ['link', 'del', la]);
      shQuiet('ip', ['link', 'del', lc]);
    });
    for (const [a, b] of [
      [la, lb],
      [lc, ld],
    ]) {
      sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
      sh('ip', ['link', 'set', a, 'up']);
      sh('ip', ['link', 'set', b, 'up']);
      sh('sysctl', ['-qw', `net.ipv4.conf.${a}.forwarding=0`]);
      sh('sysctl', ['-qw', `net.ipv4.conf.${b}.forwarding=0`]);
    }
    sh('ip', ['addr', 'add', `${addr}/24`, 'dev', lb]);
    lbMac = JSON.parse(sh('ip', ['-j', 'link', 'show', lb]))[0].address;
    await lab.start(['--log-level', 'info']);
  });
  after(() => lab.destroy());

  const local = () => ({ ip: addr, mac: lbMac, interface: la });
  const refused = (field: string, peer: string) => (e: Error & { code?: Status }) => {
    assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
    assert.match(
      e.message,
      new RegExp(
        `${field.replace(/[[\]]/g, '\\$&')}: its veth peer ${peer} is ingress of this rule: every redirected ` +
          'datagram would come back',
      ),
    );
    return true;
  };
  /**
   * Create `rule`: the error it is refused with; when it is accepted (the old code), fail saying what 5 frames sent
   * by `inject` into `into` are counted as (and the state when not ACTIVE), the rule removed.
   */
  const refusedOrCounted = async (rule: Rule, inject: () => void, into: string) => {
    try {
      await lab.c.rules.createRule({ rule });
    } catch (e) {
      return e as Error & { code?: Status };
    }
    const name = rule.name;
    const of = async () =>
      Number((await lab.c.counters.getCounters({})).counters!.rules.find((x) => x.rule === name)?.matchedPackets ?? 0n);
    let said = '';
    let grew = 0;
    try {
      await until(`${name} ACTIVE`, async () => (await lab.status(name)).state === RuleState.RULE_STATE_ACTIVE, 10_000);
    } catch {
      said = ` (not ACTIVE: ${(await lab.status(name)).message})`;
    } finally {
      const m0 = await of();
      inject();
      await sleep(1000);
      grew = (await of()) - m0;
      await lab.c.rules.deleteRule({ name });
    }
    return assert.fail(`created${said}; 5 frames into ${into} matched ${grew} times`);
  };
  const names = async () => (await lab.c.rules.listRules({ pageSize: 0, pageToken: '' })).rules.map((r) => r.name);

  it('CreateRule: refused naming rule.backends[0].interface; nothing created', async () => {
    await assert.rejects(
      lab.c.rules.createRule({ rule: lab.rule('lp', PORT, [local()], [lb]) }),
      refused('rule.backends[0].interface', lb),
    );
    assert.deepEqual(await names(), []);
  });

  it('ApplyRules (and its validate_only): refused naming rules[0].backends[1].interface', async () => {
    for (const validateOnly of [true, false]) {
      await assert.rejects(
        lab.c.rules.applyRules({
          rules: [lab.rule('lp', PORT, [backendOf(b1), local()], [lb])],
          validateOnly,
        }),
        refused('rules[0].backends[1].interface', lb),
      );
    }
    assert.deepEqual(await names(), []);
  });

  it('UpdateRule adding such a backend: refused, the rule unchanged', async () => {
    await lab.c.rules.createRule({ rule: lab.rule('up', PORT, [backendOf(b1)], [lb]) });
    await assert.rejects(
      lab.c.rules.updateRule({ rule: lab.rule('up', PORT, [backendOf(b1), local()], [lb]) }),
      refused('rule.backends[1].interface', lb),
    );
    const r = (await lab.c.rules.getRule({ name: 'up' })).rule!;
    assert.deepEqual(
      r.backends.map((b) => b.ip),
      [b1.ip],
    );
    await lab.c.rules.deleteRule({ name: 'up' });
  });

  it('the way back through a link (la -> lb, link lb -> lc, lc -> ld, ingress ld): refused, naming the path', async () => {
    await lab.c.links.connect({ link: { a: lb, b: lc, direction: LinkDirection.LINK_DIRECTION_BOTH } });
    try {
      await assert.rejects(lab.c.rules.createRule({ rule: lab.rule('lp', PORT, [local()], [ld]) }), (e: Error) => {
        assert.match(
          e.message,
          new RegExp(
            `rule\\.backends\\[0\\]\\.interface: its veth peer ${lb} leads through links back to ${ld} ` +
              `\\(${la} -> ${lb} -> ${lc} -> ${ld}\\), an ingress of this rule: every redirected datagram would come back`,
          ),
        );
        return true;
      });
    } finally {
      await lab.c.links.applyLinks({ links: [] });
    }
  });

  it('a destination the rewritten datagram does not match is no loop: accepted', async () => {
    const rule = lab.rule('dst', PORT, [local()], [lb]);
    rule.match!.destination = '198.18.9.9';
    await lab.c.rules.createRule({ rule });
    await until('dst ACTIVE', async () => (await lab.status('dst')).state === RuleState.RULE_STATE_ACTIVE, 10_000);
    await lab.c.rules.deleteRule({ name: 'dst' });
  });

  it('the way back through a bridge (ba -> bb, bb a port of bridge br, ingress br): refused naming the bridge', async () => {
    // Before: created ACTIVE, and 5 frames to the bridge's MAC were matched 315 times (63 each, until the TTL ran
    // out): the bridge hands a frame to its own MAC up, where its XDP program runs on it again.
    const [ba, bb, bc, bd, br] = ['ba', 'bb', 'bc', 'bd', 'br'].map((x) => `x${lab.id}${x}`);
    const brIp = '198.18.44.1';
    lab.onDestroy(() => [ba, bc, br].forEach((x) => shQuiet('ip', ['link', 'del', x])));
    sh('ip', ['link', 'add', br, 'type', 'bridge']);
    for (const [a, b] of [
      [ba, bb],
      [bc, bd],
    ]) {
      sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
      for (const x of [a, b]) sh('sysctl', ['-qw', `net.ipv4.conf.${x}.forwarding=0`]);
    }
    sh('ip', ['link', 'set', bb, 'master', br]);
    sh('ip', ['link', 'set', bc, 'master', br]);
    for (const x of [br, ba, bb, bc, bd]) sh('ip', ['link', 'set', x, 'up']);
    sh('sysctl', ['-qw', `net.ipv4.conf.${br}.forwarding=0`]);
    sh('ip', ['addr', 'add', `${brIp}/24`, 'dev', br]);
    const brMac = JSON.parse(sh('ip', ['-j', 'link', 'show', br]))[0].address;
    const bdMac = JSON.parse(sh('ip', ['-j', 'link', 'show', bd]))[0].address;
    const rule = lab.rule('brl', PORT, [{ ip: brIp, mac: brMac, interface: ba }], [br]);
    const err = await refusedOrCounted(
      rule,
      () => sh('python3', ['-c', rawUdpFrames(bd, bdMac, brMac, brIp, PORT, 5)]),
      br,
    );
    assert.equal(err.code, Status.FAILED_PRECONDITION, err.message);
    assert.match(
      err.message,
      new RegExp(
        `${esc('rule.backends[0].interface')}: its veth peer ${bb} is a port of bridge ${br}: a datagram no rule ` +
          `takes on the port goes up to ${br}, an ingress of this rule \\(${ba} -> ${bb} -> ${br}\\): every ` +
          'redirected datagram would come back',
      ),
    );
    assert.deepEqual(await names(), []);
  });

  it("the way back through a bridge's forward (fb's peer and the ingress fa's peer ports of one bridge): refused", async () => {
    // Before: created ACTIVE, and 5 frames to fa's MAC sent on the bridge were matched 315 times (63 each, until
    // the TTL ran out): what the rule redirects out of fb arrives on its peer fbp, a port of bridge fr, which
    // forwards it out of its port fap (a transmit on a veth is a receive on its peer): on fa again.
    const [fa, fap, fb, fbp, fr] = ['fa', 'fap', 'fb', 'fbp', 'fr'].map((x) => `x${lab.id}${x}`);
    const ip = '198.18.47.9';
    lab.onDestroy(() => [fa, fb, fr].forEach((x) => shQuiet('ip', ['link', 'del', x])));
    sh('ip', ['link', 'add', fr, 'type', 'bridge']);
    for (const [a, b] of [
      [fa, fap],
      [fb, fbp],
    ]) {
      sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
      for (const x of [a, b]) sh('sysctl', ['-qw', `net.ipv4.conf.${x}.forwarding=0`]);
      sh('ip', ['link', 'set', b, 'master', fr]);
    }
    for (const x of [fr, fa, fap, fb, fbp]) sh('ip', ['link', 'set', x, 'up']);
    sh('sysctl', ['-qw', `net.ipv4.conf.${fr}.forwarding=0`]);
    const faMac = JSON.parse(sh('ip', ['-j', 'link', 'show', fa]))[0].address;
    const rule = lab.rule('fwl', PORT, [{ ip, mac: faMac, interface: fb }], [fa]);
    let err: (Error & { code?: Status }) | undefined;
    try {
      await lab.c.rules.createRule({ rule });
    } catch (e) {
      err = e as Error;
    }
    if (!err) {
      // The old verdict: what 5 frames to fa's MAC sent on the bridge are counted as.
      const of = async () =>
        Number(
          (await lab.c.counters.getCounters({})).counters!.rules.find((x) => x.rule === 'fwl')?.matchedPackets ?? 0n,
        );
      let said = '';
      let grew = 0;
      try {
        await until('fwl ACTIVE', async () => (await lab.status('fwl')).state === RuleState.RULE_STATE_ACTIVE, 5_000);
      } catch {
        said = ` (not ACTIVE: ${(await lab.status('fwl')).message})`;
      }
      try {
        const m0 = await of();
        sh('python3', ['-c', rawUdpFrames(fr, '02:5e:00:47:00:09', faMac, ip, PORT, 5)]);
        await until('the frames counted', async () => (await of()) - m0 >= 5, 10_000).catch(() => {});
        await sleep(500);
        grew = (await of()) - m0;
      } finally {
        await lab.c.rules.deleteRule({ name: 'fwl' });
        shQuiet('ip', ['link', 'del', fr]);
      }
      assert.fail(`created${said}; 5 frames to ${fa}'s MAC sent on ${fr} matched ${grew} times`);
    }
    assert.equal(err.code, Status.FAILED_PRECONDITION, err.message);
    assert.match(
      err.message,
      new RegExp(
        `${esc('rule.backends[0].interface')}: its veth peer ${fbp} is a port of bridge ${fr}, which forwards ` +
          `frames out of its port ${fap}, whose veth peer is ${fa}: a datagram no rule takes on the port reaches ` +
          `${fa}, an ingress of this rule \\(${fb} -> ${fbp} -> ${fr} -> ${fap} -> ${fa}\\): every redirected ` +
          'datagram would come back',
      ),
    );
    assert.deepEqual(await names(), []);
  });

  it('the way back through a macvlan on the peer (va -> vb, macvlan mv on vb, ingress mv): refused naming it', async () => {
    // Before: created (DEGRADED only for its static MAC), and 5 frames to mv's MAC were matched 191 times (the 3 the
    // flow hash sent to mv 63 times each): a macvlan is an upper through
    // IFLA_LINK (not IFLA_MASTER), and a frame to its MAC received on its lower goes up to it, where its (generic)
    // XDP program runs on it again. Also through a bridge (a macvlan on a bridge whose port is the peer). (This
    // kernel has neither ipvlan nor 8021q: those kinds are judged in test/unit/rule-loops.test.ts.)
    const [va, vb, mv, vc, vd, br, mw] = ['va', 'vb', 'mv', 'vc', 'vd', 'vr', 'mw'].map((x) => `x${lab.id}${x}`);
    const mvIp = '198.18.46.1';
    const mvMac = '02:5e:00:46:00:01';
    lab.onDestroy(() => [va, vc, br].forEach((x) => shQuiet('ip', ['link', 'del', x])));
    for (const [a, b] of [
      [va, vb],
      [vc, vd],
    ]) {
      sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
      for (const x of [a, b]) sh('sysctl', ['-qw', `net.ipv4.conf.${x}.forwarding=0`]);
    }
    sh('ip', ['link', 'add', mv, 'link', vb, 'address', mvMac, 'type', 'macvlan', 'mode', 'bridge']);
    for (const x of [va, vb, mv]) sh('ip', ['link', 'set', x, 'up']);
    sh('sysctl', ['-qw', `net.ipv4.conf.${mv}.forwarding=0`]);
    const vaMac = JSON.parse(sh('ip', ['-j', 'link', 'show', va]))[0].address;
    const backend = { ip: mvIp, mac: mvMac, interface: va };
    const rule = lab.rule('mvl', PORT, [backendOf(b1), backend], [mv]);
    const err = await refusedOrCounted(
      rule,
      () => sh('python3', ['-c', rawUdpFrames(va, vaMac, mvMac, mvIp, PORT, 5)]),
      mv,
    );
    assert.equal(err.code, Status.FAILED_PRECONDITION, err.message);
    assert.match(
      err.message,
      new RegExp(
        `${esc('rule.backends[1].interface')}: its veth peer ${vb} is the lower device of macvlan ${mv} \\(mode ` +
          `bridge\\): a datagram no rule takes on ${vb} goes up to ${mv}, an ingress of this rule \\(${va} -> ${vb} -> ` +
          `${mv}\\): every redirected datagram would come back`,
      ),
    );
    assert.deepEqual(await names(), []);

    // Recursively: vd a port of bridge vr, macvlan mw on vr, ingress mw (validate_only: nothing applied).
    sh('ip', ['link', 'add', br, 'type', 'bridge']);
    sh('ip', ['link', 'set', vd, 'master', br]);
    sh('ip', ['link', 'add', mw, 'link', br, 'type', 'macvlan', 'mode', 'private']);
    for (const x of [br, vc, vd, mw]) sh('ip', ['link', 'set', x, 'up']);
    const through = lab.rule('mvl', PORT, [{ ip: mvIp, mac: mvMac, interface: vc }], [mw]);
    await assert.rejects(
      lab.c.rules.applyRules({ rules: [through], validateOnly: true }),
      (e: Error & { code?: Status }) => {
        assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
        assert.match(
          e.message,
          new RegExp(
            `${esc('rules[0].backends[0].interface')}: its veth peer ${vd} is a port of bridge ${br}, itself the lower ` +
              `device of macvlan ${mw} \\(mode private\\): .*\\(${vc} -> ${vd} -> ${br} -> ${mw}\\)`,
          ),
        );
        return true;
      },
    );
  });

  describe('through what a device other than a veth transmits (macvlan: a bridge port, an egress, a bridge-mode sibling)', () => {
    // Before (the walk followed only veth peers' transmit): each rule created, and 5 frames into its ingress were
    // matched 315 times (63 each, until the TTL ran out). Now refused naming the backend's interface and the way.
    const mac = (x: string) => JSON.parse(sh('ip', ['-j', 'link', 'show', x]))[0].address as string;
    const upAll = (...xs: string[]) => {
      for (const x of xs) {
        sh('ip', ['link', 'set', x, 'up']);
        sh('sysctl', ['-qw', `net.ipv4.conf.${x}.forwarding=0`]);
      }
    };
    const refusedAs = (err: Error & { code?: Status }, field: string, way: string) => {
      assert.equal(err.code, Status.FAILED_PRECONDITION, err.message);
      assert.match(
        err.message,
        new RegExp(`${esc(field)}: .*\\(${esc(way)}\\): every redirected datagram would come back`),
      );
    };

    it("a macvlan that is a port of the bridge the backend's peer is a port of: the bridge forwards out of it, out of its lower, to the ingress", async () => {
      const [e, ep, lo, lop, mv, br] = ['qe', 'qep', 'qlo', 'qlp', 'qmv', 'qbr'].map((x) => `x${lab.id}${x}`);
      const ip = '198.18.51.9';
      lab.onDestroy(() => [mv, e, lo, br].forEach((x) => shQuiet('ip', ['link', 'del', x])));
      sh('ip', ['link', 'add', br, 'type', 'bridge']);
      sh('ip', ['link', 'add', e, 'type', 'veth', 'peer', 'name', ep]);
      sh('ip', ['link', 'add', lo, 'type', 'veth', 'peer', 'name', lop]);
      sh('ip', ['link', 'add', mv, 'link', lo, 'type', 'macvlan', 'mode', 'bridge']);
      sh('ip', ['link', 'set', ep, 'master', br]);
      sh('ip', ['link', 'set', mv, 'master', br]);
      upAll(br, e, ep, lo, lop, mv);
      const rule = lab.rule('mbp', PORT, [{ ip, mac: mac(lop), interface: e }], [lop]);
      const err = await refusedOrCounted(
        rule,
        () => sh('python3', ['-c', rawUdpFrames(lo, mac(lo), mac(lop), ip, PORT, 5)]),
        lop,
      );
      refusedAs(err, 'rule.backends[0].interface', `${e} -> ${ep} -> ${br} -> ${mv} -> ${lo} -> ${lop}`);
      assert.match(
        err.message,
        new RegExp(
          `forwards frames out of its port ${mv}, a macvlan \\(mode bridge\\) that sends them out of its lower device ${lo}, whose veth peer is ${lop}`,
        ),
      );
      assert.deepEqual(await names(), []);
    });

    it('a backend egress that is a macvlan: sent out of its lower, a veth whose peer has the ingress (a macvlan) on it', async () => {
      // The ingress is a macvlan mi on the lower's peer (generic XDP: a native ingress cannot redirect into a
      // macvlan, which has no ndo_xdp_xmit, and is refused for that).
      const [lo, lop, mv, mi] = ['ulo', 'ulp', 'umv', 'umi'].map((x) => `x${lab.id}${x}`);
      const ip = '198.18.52.9';
      lab.onDestroy(() => [mv, mi, lo].forEach((x) => shQuiet('ip', ['link', 'del', x])));
      sh('ip', ['link', 'add', lo, 'type', 'veth', 'peer', 'name', lop]);
      sh('ip', ['link', 'add', mv, 'link', lo, 'type', 'macvlan', 'mode', 'vepa']);
      sh('ip', ['link', 'add', mi, 'link', lop, 'type', 'macvlan', 'mode', 'bridge']);
      upAll(lo, lop, mv, mi);
      const rule = lab.rule('meg', PORT, [backendOf(b1), { ip, mac: mac(mi), interface: mv }], [mi]);
      const err = await refusedOrCounted(
        rule,
        () => sh('python3', ['-c', rawUdpFrames(lo, mac(lo), mac(mi), ip, PORT, 5)]),
        mi,
      );
      refusedAs(err, 'rule.backends[1].interface', `${mv} -> ${lo} -> ${lop} -> ${mi}`);
      assert.match(
        err.message,
        new RegExp(
          `its egress ${mv} is a macvlan \\(mode vepa\\) that sends them out of its lower device ${lo}, whose veth ` +
            `peer is ${lop}, itself the lower device of macvlan ${mi} \\(mode bridge\\)`,
        ),
      );
      assert.deepEqual(await names(), []);
    });

    it('two bridge-mode macvlans on one lower: sent out of one, the other gets it (a receive on the lower); private: accepted', async () => {
      const [lo, lop, ma, mb] = ['wlo', 'wlp', 'wma', 'wmb'].map((x) => `x${lab.id}${x}`);
      const ip = '198.18.53.9';
      lab.onDestroy(() => [ma, mb, lo].forEach((x) => shQuiet('ip', ['link', 'del', x])));
      sh('ip', ['link', 'add', lo, 'type', 'veth', 'peer', 'name', lop]);
      sh('ip', ['link', 'add', ma, 'link', lo, 'type', 'macvlan', 'mode', 'bridge']);
      sh('ip', ['link', 'add', mb, 'link', lo, 'type', 'macvlan', 'mode', 'bridge']);
      upAll(lo, lop, ma, mb);
      const rule = lab.rule('msb', PORT, [{ ip, mac: mac(mb), interface: ma }], [mb]);
      const err = await refusedOrCounted(
        rule,
        () => sh('python3', ['-c', rawUdpFrames(lop, mac(lop), mac(mb), ip, PORT, 5)]),
        mb,
      );
      refusedAs(err, 'rule.backends[0].interface', `${ma} -> ${lo} -> ${mb}`);
      assert.match(
        err.message,
        new RegExp(
          `hands a frame to a macvlan in bridge mode on its lower device ${lo} as a receive on ${lo}, itself the lower device of macvlan ${mb}`,
        ),
      );
      // A private sibling takes nothing its bridge-mode neighbour sends (macvlan_queue_xmit): no loop, accepted.
      sh('ip', ['link', 'set', mb, 'type', 'macvlan', 'mode', 'private']);
      await lab.c.rules.applyRules({ rules: [rule], validateOnly: true });
      assert.deepEqual(await names(), []);
    });
  });

  it('the way back through a bridge in another network namespace (pa -> pb there, a port of brn with qb, whose peer qa is the ingress): refused', async () => {
    // Before: created, and 5 frames into qa were matched 315 times: the walk stopped at a veth peer in another
    // namespace, silently. Now that namespace's devices are read by its nsid (IFLA_TARGET_NETNSID): a bridge there
    // whose other port is a veth whose peer is here is followed back.
    const ns = `x${lab.id}nsl`;
    const [pa, pb, qa, qb, brn] = ['npa', 'npb', 'nqa', 'nqb', 'nbr'].map((x) => `x${lab.id}${x}`);
    const ip = '198.18.55.9';
    lab.onDestroy(() => {
      shQuiet('ip', ['netns', 'del', ns]);
      [pa, qa].forEach((x) => shQuiet('ip', ['link', 'del', x]));
    });
    sh('ip', ['netns', 'add', ns]);
    sh('ip', ['-n', ns, 'link', 'add', brn, 'type', 'bridge']);
    for (const [a, b] of [
      [pa, pb],
      [qa, qb],
    ]) {
      sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b, 'netns', ns]);
      sh('ip', ['-n', ns, 'link', 'set', b, 'master', brn]);
      sh('ip', ['-n', ns, 'link', 'set', b, 'up']);
      sh('ip', ['link', 'set', a, 'up']);
      sh('sysctl', ['-qw', `net.ipv4.conf.${a}.forwarding=0`]);
    }
    sh('ip', ['-n', ns, 'link', 'set', brn, 'up']);
    const qaMac = JSON.parse(sh('ip', ['-j', 'link', 'show', qa]))[0].address;
    const qbMac = JSON.parse(sh('ip', ['-n', ns, '-j', 'link', 'show', qb]))[0].address;
    const rule = lab.rule('nsl', PORT, [{ ip, mac: qaMac, interface: pa }], [qa]);
    const err = await refusedOrCounted(
      rule,
      () => sh('ip', ['netns', 'exec', ns, 'python3', '-c', rawUdpFrames(qb, qbMac, qaMac, ip, PORT, 5)]),
      qa,
    );
    assert.equal(err.code, Status.FAILED_PRECONDITION, err.message);
    assert.match(
      err.message,
      new RegExp(
        `${esc('rule.backends[0].interface')}: its egress ${pa}, whose veth peer ${pb} in netns ${ns} is a port of ` +
          `bridge ${brn} there, which forwards frames out of its port ${qb}, whose veth peer is ${qa}: a datagram no ` +
          `rule takes on the way reaches ${qa}, an ingress of this rule \\(${pa} -> ${pb} in netns ${ns} -> ${brn} -> ` +
          `${qb} -> ${qa}\\): every redirected datagram would come back`,
      ),
    );
    assert.deepEqual(await names(), []);
  });

  describe('a loop across rules', () => {
    // Pairs ma-mb, mc-md, me-mf: mb, md, mf are ingresses; a backend on ma (mc, me) sends to mb (md, mf).
    const [ma, mb, mc, md, me, mf] = ['ma', 'mb', 'mc', 'md', 'me', 'mf'].map((x) => `x${lab.id}${x}`);
    const ip = { mb: '198.18.41.2', md: '198.18.42.2', mf: '198.18.43.2' };
    const mac: Record<string, string> = {};

    before(() => {
      lab.onDestroy(() => [ma, mc, me].forEach((x) => shQuiet('ip', ['link', 'del', x])));
      for (const [a, b, addr] of [
        [ma, mb, ip.mb],
        [mc, md, ip.md],
        [me, mf, ip.mf],
      ]) {
        sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
        for (const x of [a, b]) {
          sh('ip', ['link', 'set', x, 'up']);
          sh('sysctl', ['-qw', `net.ipv4.conf.${x}.forwarding=0`]);
        }
        sh('ip', ['addr', 'add', `${addr}/24`, 'dev', b]);
      }
      for (const x of [ma, mb, md, mf]) mac[x] = JSON.parse(sh('ip', ['-j', 'link', 'show', x]))[0].address;
    });

    /** A backend at the far end of `egress` (its veth peer `peer`, holding `addr`). */
    const to = (egress: string, peer: string, addr: string) => ({ ip: addr, mac: mac[peer], interface: egress });
    const ra = () => lab.rule('ra', PORT, [to(mc, md, ip.md)], [mb]); // mb -> mc => md
    const rb = () => lab.rule('rb', PORT, [to(ma, mb, ip.mb)], [md]); // md -> ma => mb
    const clear = () => lab.c.rules.applyRules({ rules: [], validateOnly: false });
    const loopOf = (field: string, peer: string, via: string[], start: string) => (e: Error & { code?: Status }) => {
      assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
      assert.match(
        e.message,
        new RegExp(
          `${esc(field)}: its veth peer ${peer} is ingress of rule ${via[0]}, and the datagrams come back to this ` +
            `rule through rules? ${esc(via.join(', '))}: a loop of rules ${esc([start, ...via, start].join(' -> '))} ` +
            '\\(.*\\): every redirected datagram would come back and be redirected again until its TTL ran out',
        ),
      );
      return true;
    };
    const matched = async () => {
      const { counters } = await lab.c.counters.getCounters({});
      const of = (r: string) => Number(counters!.rules.find((x) => x.rule === r)?.matchedPackets ?? 0n);
      return { ra: of('ra'), rb: of('rb') };
    };
    /** Send `n` UDP datagrams (TTL 64) out of ma into mb, to rule ra's port. */
    const blast = (n: number) =>
      sh('python3', ['-c', rawUdpFrames(ma, mac[ma], mac[mb], ip.mb, PORT, n, '198.18.41.9')]);

    it('CreateRule closing a loop of two rules: refused naming rule.backends[0].interface and the other rule', async () => {
      try {
        await lab.c.rules.createRule({ rule: ra() });
        await until('ra ACTIVE', async () => (await lab.status('ra')).state === RuleState.RULE_STATE_ACTIVE, 10_000);
        await assert.rejects(
          lab.c.rules.createRule({ rule: rb() }),
          loopOf('rule.backends[0].interface', mb, ['ra'], 'rb'),
        );
        assert.deepEqual(await names(), ['ra']);
      } finally {
        // Whatever the verdict: 5 datagrams into mb are matched once each by ra, not around a loop (before: both
        // rules ACTIVE and each datagram counted ~32 times by each).
        const before = await matched();
        blast(5);
        await until('ra matched 5', async () => (await matched()).ra - before.ra >= 5, 10_000);
        await sleep(300); // a datagram going around a loop would be counted again meanwhile
        const now = await matched();
        await clear();
        assert.deepEqual({ ra: now.ra - before.ra, rb: now.rb - before.rb }, { ra: 5, rb: 0 });
      }
    });

    it('UpdateRule closing the loop: refused, the rule unchanged', async () => {
      try {
        await lab.c.rules.createRule({ rule: ra() });
        await lab.c.rules.createRule({ rule: lab.rule('rb', PORT, [backendOf(b1)], [md]) });
        await assert.rejects(
          lab.c.rules.updateRule({ rule: rb() }),
          loopOf('rule.backends[0].interface', mb, ['ra'], 'rb'),
        );
        const r = (await lab.c.rules.getRule({ name: 'rb' })).rule!;
        assert.deepEqual(
          r.backends.map((b) => b.ip),
          [b1.ip],
        );
      } finally {
        await clear();
      }
    });

    it('ApplyRules (and validate_only) with a loop of three rules: refused naming the backend and both others', async () => {
      const rc = lab.rule('rc', PORT, [to(ma, mb, ip.mb)], [mf]); // mf -> ma => mb
      const rb3 = lab.rule('rb', PORT, [backendOf(b1), to(me, mf, ip.mf)], [md]); // md -> me => mf
      for (const validateOnly of [true, false]) {
        await assert.rejects(
          lab.c.rules.applyRules({ rules: [ra(), rb3, rc], validateOnly }),
          loopOf('rules[0].backends[0].interface', md, ['rb', 'rc'], 'ra'),
        );
      }
      assert.deepEqual(await names(), []);
    });

    it('a link that closes the loop: Connect refused naming the link', async () => {
      // ra: mb -> mc => md; rb: md -> me => mf; a link mf -> ma would bring rb's datagrams to mb.
      try {
        await lab.c.rules.applyRules({
          rules: [ra(), lab.rule('rb', PORT, [to(me, mf, ip.mf)], [md])],
          validateOnly: false,
        });
        await assert.rejects(
          lab.c.links.connect({ link: { a: mf, b: ma, direction: LinkDirection.LINK_DIRECTION_A_TO_B } }),
          (e: Error & { code?: Status }) => {
            assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
            assert.match(
              e.message,
              new RegExp(`closes a loop of rule r[ab]'s backend .*a loop of rules r[ab] -> r[ab] -> r[ab]`),
            );
            return true;
          },
        );
        assert.deepEqual((await lab.c.links.listLinks({})).links, []);
      } finally {
        await lab.c.links.applyLinks({ links: [] });
        await clear();
      }
    });

    it('no cycle: a chain, sources no two rules share, a destination the rewrite leaves: accepted', async () => {
      const cases = {
        chain: [ra(), lab.rule('rb', PORT, [backendOf(b1)], [md])],
        sources: [ra(), rb()],
        destination: [ra(), rb()],
      };
      cases.sources[0].match!.sourcePrefixes = ['198.18.60.0/24'];
      cases.sources[1].match!.sourcePrefixes = ['198.18.61.0/24', '198.18.62.0/23'];
      cases.destination[1].match!.destination = '198.18.9.9';
      try {
        for (const [what, rules] of Object.entries(cases)) {
          await lab.c.rules.applyRules({ rules, validateOnly: false });
          await until(
            `${what}: both ACTIVE`,
            async () =>
              (await lab.status('ra')).state === RuleState.RULE_STATE_ACTIVE &&
              (await lab.status('rb')).state === RuleState.RULE_STATE_ACTIVE,
            10_000,
          );
        }
        // Sources that overlap (198.18.60.0/24 within 198.18.0.0/16) make the cycle again.
        const overlap = [ra(), rb()];
        overlap[0].match!.sourcePrefixes = ['198.18.60.0/24'];
        overlap[1].match!.sourcePrefixes = ['198.18.0.0/16'];
        await assert.rejects(
          lab.c.rules.applyRules({ rules: overlap, validateOnly: false }),
          loopOf('rules[0].backends[0].interface', md, ['rb'], 'ra'),
        );
      } finally {
        await clear();
      }
    });

    it('a config file with a loop of two rules: refused (PreconditionFailed) naming the backend', async () => {
      // Last: the gRPC daemon makes way for one in config-file mode (same pins and state dir, removed first).
      await stopDaemon(lab.d, lab.id);
      const dir = `/tmp/xdpctl-test-${lab.id}-loop`;
      lab.onDestroy(() => rmSync(dir, { recursive: true, force: true }));
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      const file = `${dir}/xdpctl.yaml`;
      const yaml = (name: string, ingress: string, b: { ip: string; mac: string; interface: string }) =>
        `  - name: ${name}\n    port: ${PORT}\n    ingress: [${ingress}]\n` +
        `    backends:\n      - {ip: ${b.ip}, mac: "${b.mac}", interface: ${b.interface}}\n`;
      writeFileSync(file, `rules:\n${yaml('ra', mb, to(mc, md, ip.md))}${yaml('rb', md, to(ma, mb, ip.mb))}`);
      await lab.start(['--config', file, '--log-level', 'info']);
      const status = async () => (await lab.c.daemon.getStatus({})).configFile!;
      await until(
        'the file refused',
        async () => (await status()).inForceCondition?.reason === 'PreconditionFailed',
        10_000,
      );
      const s = await status();
      assert.equal(s.inForce, false);
      assert.equal(s.inForceCondition?.reason, 'PreconditionFailed', s.inForceCondition?.message);
      assert.equal(s.problems[0].field, 'rules[0].backends[0].interface');
      assert.match(s.problems[0].description, /a loop of rules ra -> rb -> ra/);
      assert.deepEqual(await names(), []);
    });
  });
});
