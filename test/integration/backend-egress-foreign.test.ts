/**
 * An XDP program not ours on a rule's backend egress itself (twentieth review, LOW-9): another tool's program
 * (`ip link set dev X xdpgeneric obj ...`), or another xdpctld (its own pin root, state dir and listen address)
 * cross-connecting a link whose one end is that egress; and, in the same way, a tc filter or an nftables chain
 * (policy drop) on that egress's ingress, which see what XDP passed. XDP runs on what a device receives: what the daemon
 * redirects to the backend leaves through the egress past that program (20 of 20 arrive), but everything the
 * backend sends back arrives on the egress and is that program's first — dropped by the sink, or sent out of the
 * other end of the second daemon's link (counted arriving there). The rule said ACTIVE, AllReceiving; only
 * `xdpctl interfaces list` named the program. Now the rule is DEGRADED, its warnings and the backend's message
 * name the program (id, name, mode; another xdpctld's said so), BackendsReceiving Unknown (EgressForeignProgram),
 * the backend kept in its table, one log line when it appears and one when it goes; ACTIVE again once it is gone.
 * The egress's own interface row says the tc filters and nftables chains there in the rule's words (twenty-third
 * review, LOW-2: it named only an XDP program).
 *
 * What else takes what arrives on a backend egress (twenty-third review, LOW-3), tried with real packets: a
 * datagram the daemon redirects to the backend is transmitted into the veth, i.e. received by its peer in the
 * backend's namespace: nothing on the egress's own receive side sees it, and 20 of 20 arrive in every case below.
 * What the backend sends back arrives on the egress, and there:
 * - a macvlan (or macvtap) in passthru mode stacked on it takes every unicast frame (macvlan_handle_frame), the
 *   backend's answers and ARP replies included: counted arriving on the macvlan; a backend given without a MAC is
 *   never resolved (its ARP replies never reach the egress: 0 of 20 arrive). Said as LOW-9's cases are
 *   (EgressPassthruDevice), and named as why such a backend has no neighbour entry;
 * - a bridge it is a port of hands every frame to the bridge, which delivers what is for the host's MACs (the
 *   port's own included) up through itself: the daemon already reads a port's neighbours and ARP replies on its
 *   master, and a backend without a MAC resolves there. Not said;
 * - a macvlan in another mode (bridge here) takes only what is for its own MAC: the ARP replies for the egress's
 *   MAC still arrive on the egress (a backend without a MAC resolves). Not said. (ipvlan: this kernel has no
 *   module; it takes only what is for its own addresses, sharing the lower's MAC);
 * - `iptables -t raw -A PREROUTING -i E -j DROP` and an nftables ip raw prerouting chain dropping `iifname E` act
 *   on IPv4 that reached this host's IP stack, never on ARP, never on what is redirected: they are this host's own
 *   policy on the backend's answers, as its routes are; the backend without a MAC resolves. Not said.
 * (The backend's namespace's own rules are its own, not read.)
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, ROOT, sh, shQuiet, until } from '../helpers/env.js';
import { backendOf, cond, esc, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7661;

describe("an XDP program not ours on a backend's egress makes its rule DEGRADED", kernelOnly(), () => {
  const lab = new Lab();
  let b1: Host, x: Host, b2: Host, b3: Host, b4: Host;

  before(async () => {
    ({ b1, x, b2, b3, b4 } = lab.addHosts({
      vm: '198.18.1.1/24',
      b1: '198.18.2.1/24',
      x: '198.18.3.1/24',
      b2: '198.18.4.1/24',
      b3: '198.18.5.1/24',
      b4: '198.18.6.1/24',
    }));
    await lab.start(['--log-level', 'info']);
    await lab.c.rules.createRule({ rule: lab.rule('web', PORT, [backendOf(b1)]) });
    await lab.untilActive('web');
  });
  after(() => lab.destroy());

  /** The warnings of the interface row of `name` (InterfaceService.GetInterface). */
  const rowWarnings = async (name: string) => (await lab.c.interfaces.getInterface({ name })).interface!.warnings;

  /**
   * The rule while `what` (a regexp source: "another XDP program (...) is attached to E", "E has a tc ingress
   * filter (...)") is on b1's egress: said, DEGRADED with `reason`, still receiving, one line. What the egress has
   * itself (`what` starting "E has"), its interface row says too, in the same words (LOW-2). `goesTo`: what takes
   * everything b1 sends back (a passthru device), said so.
   */
  async function saidWhileThere(what: string, reason: string, through = 'that program', goesTo = ''): Promise<void> {
    const tail = goesTo
      ? `goes to ${goesTo}, not to ${b1.hostIf}: whether it arrives cannot be verified`
      : `passes through ${through} before this host, which may drop it or redirect it elsewhere: whether it arrives ` +
        'cannot be verified';
    const note = `${what}: what backend ${esc(b1.ip!)} sends back, its answers and ARP replies included, ${tail}`;
    await until(
      async () => {
        const s = await lab.status('web');
        return `the rule names what is on its backend egress; last ${RuleState[s.state]}: ${s.message}`;
      },
      async () => (await lab.status('web')).warnings.some((w) => new RegExp(`^${note}$`).test(w)),
      15_000,
    );
    const s = await lab.status('web');
    assert.equal(s.state, RuleState.RULE_STATE_DEGRADED, JSON.stringify(s));
    assert.match(s.message, new RegExp(note), s.message);
    assert.match(s.backendStatus[0].message, new RegExp(note), JSON.stringify(s.backendStatus[0]));
    assert.equal(s.backendStatus[0].active, true, 'kept in its table: what is redirected to it leaves past it');
    const br = cond(s, 'BackendsReceiving');
    assert.deepEqual([br.status, br.reason], [ConditionStatus.CONDITION_STATUS_UNKNOWN, reason]);
    assert.match(br.message, new RegExp(`^${esc(b1.ip!)}@${b1.hostIf}: ${note}$`), br.message);
    assert.equal(cond(s, 'Ready').status, ConditionStatus.CONDITION_STATUS_FALSE);
    // What is redirected to the backend still arrives: what runs on the egress's receive path never sees it.
    const r = await lab.send(PORT, [b1], 20, 4);
    assert.equal(r.got[0], 20, JSON.stringify(r));
    assert.equal(lab.count(new RegExp(`"msg":"rule web is DEGRADED: .*${note}`)), 1, lab.d!.output.slice(-4000));
    // The egress's own row: what it has itself, as the rule says it (an XDP program: its own warning, as before).
    const row = await rowWarnings(b1.hostIf);
    const own = new RegExp(`(^|, and )(${esc(b1.hostIf)} has .*)$`).exec(what)?.[2];
    const rowNote = `: what the backends behind it send back, their answers and ARP replies included, ${tail}`;
    if (own)
      assert.ok(
        row.some((w) => new RegExp(`^${own}${rowNote}$`).test(w)),
        JSON.stringify(row),
      );
    else assert.ok(!row.some((w) => w.includes('what the backends behind it send back')), JSON.stringify(row));
  }

  /** ACTIVE again once it is gone (`remove` done), the line saying so once. */
  async function activeOnceGone(remove: () => unknown): Promise<void> {
    const lines = lab.count(/"msg":"rule web is ACTIVE: /);
    await remove();
    await until(
      'the rule is ACTIVE again once it is gone',
      async () => (await lab.status('web')).state === RuleState.RULE_STATE_ACTIVE,
      15_000,
    );
    const s = await lab.status('web');
    assert.doesNotMatch(JSON.stringify(s), /is attached to| has (a tc|an nftables|\S+ \S+ stacked)/);
    const row = await rowWarnings(b1.hostIf);
    assert.ok(!row.some((w) => w.includes('what the backends behind it send back')), JSON.stringify(row));
    const br = cond(s, 'BackendsReceiving');
    assert.deepEqual([br.status, br.reason], [ConditionStatus.CONDITION_STATUS_TRUE, 'AllReceiving']);
    const r = await lab.send(PORT, [b1], 20, 4);
    assert.equal(r.got[0], 20, JSON.stringify(r));
    assert.equal(lab.count(/"msg":"rule web is ACTIVE: /), lines + 1, lab.d!.output.slice(-4000));
  }

  it("another tool's program (ip link set xdpgeneric): named, DEGRADED; ACTIVE once removed", async () => {
    const prog = ['obj', `${ROOT}build/bpf/baseline.bpf.o`, 'sec', 'xdp', 'program', 'base_sink'];
    sh('ip', ['link', 'set', 'dev', b1.hostIf, 'xdpgeneric', ...prog]);
    let detached = false;
    try {
      const id = JSON.parse(sh('ip', ['-j', 'link', 'show', 'dev', b1.hostIf]))[0].xdp.prog.id as number;
      await saidWhileThere(
        `another XDP program \\(id ${id}, name base_sink, generic mode\\) is attached to ${b1.hostIf}`,
        'EgressForeignProgram',
      );
      await activeOnceGone(() => {
        sh('ip', ['link', 'set', 'dev', b1.hostIf, 'xdpgeneric', 'off']);
        detached = true;
      });
    } finally {
      if (!detached) shQuiet('ip', ['link', 'set', 'dev', b1.hostIf, 'xdpgeneric', 'off']);
    }
  });

  it("another xdpctld cross-connecting the egress: named as that daemon's, DEGRADED; ACTIVE once disconnected", async () => {
    const other = await DaemonProcess.start(`${lab.id}o`, ['--log-level', 'info']);
    try {
      const c2 = other.clients();
      const rx = () => JSON.parse(sh('ip', ['-n', x.netns, '-j', '-s', 'link', 'show', 'eth0']))[0].stats64.rx.packets;
      await c2.links.connect({ link: { a: b1.hostIf, b: x.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH } });
      const id = JSON.parse(sh('ip', ['-j', 'link', 'show', 'dev', b1.hostIf]))[0].xdp.prog.id as number;
      await saidWhileThere(
        `another XDP program \\(id ${id}, name xdpctl_main, \\w+ mode: an xdpctl_main of another xdpctld: it uses ` +
          `maps that are not pinned under ${esc(lab.d!.pinRoot)}\\) is attached to ${b1.hostIf}`,
        'EgressForeignProgram',
      );
      // Where what the backend sends goes now: out of the other end of that link, into x.
      const before = rx();
      shQuiet('ip', ['netns', 'exec', b1.netns, 'ping', '-c', '3', '-i', '0.2', '-W', '1', '198.18.2.77']);
      await until('what b1 sends arrives in x', async () => rx() > before, 5_000);
      await activeOnceGone(() => c2.links.disconnect({ a: b1.hostIf, b: x.hostIf }));
    } finally {
      await other.destroy();
    }
  });

  // This kernel has u32 but not the gact action (no modules): the filter passes what it matches, but it is there.
  it("a tc filter on the egress's ingress: named, DEGRADED (EgressTcFilter); ACTIVE once removed", async () => {
    sh('tc', ['qdisc', 'add', 'dev', b1.hostIf, 'ingress']);
    let removed = false;
    try {
      sh('tc', ['filter', 'add', 'dev', b1.hostIf, 'ingress', 'protocol', 'ip', 'u32', 'match', 'u32', '0', '0']);
      await saidWhileThere(
        `${b1.hostIf} has a tc ingress filter \\(u32, pref 49152, protocol ip\\)`,
        'EgressTcFilter',
        'them',
      );
      await activeOnceGone(() => {
        sh('tc', ['qdisc', 'del', 'dev', b1.hostIf, 'ingress']);
        removed = true;
      });
    } finally {
      if (!removed) shQuiet('tc', ['qdisc', 'del', 'dev', b1.hostIf, 'ingress']);
    }
  });

  it("an nftables chain with policy drop on the egress's ingress: named, DEGRADED (EgressNftChain)", async () => {
    const t = `x${lab.id}egr`;
    sh('nft', ['add', 'table', 'netdev', t]);
    let removed = false;
    try {
      const hook = `{ type filter hook ingress device ${b1.hostIf} priority 0; policy drop; }`;
      sh('nft', ['add', 'chain', 'netdev', t, 'c', hook]);
      await saidWhileThere(
        `${b1.hostIf} has an nftables ingress chain netdev ${t} c \\(priority 0, policy drop, no rules\\)`,
        'EgressNftChain',
        'them',
      );
      await activeOnceGone(() => {
        sh('nft', ['delete', 'table', 'netdev', t]);
        removed = true;
      });
    } finally {
      if (!removed) shQuiet('nft', ['delete', 'table', 'netdev', t]);
    }
  });

  it('a macvlan in passthru mode on the egress: named, DEGRADED (EgressPassthruDevice); ACTIVE once removed', async () => {
    const mv = `m${lab.id}p1`;
    sh('ip', ['link', 'add', mv, 'link', b1.hostIf, 'type', 'macvlan', 'mode', 'passthru']);
    let removed = false;
    try {
      sh('ip', ['link', 'set', mv, 'up']);
      await saidWhileThere(
        `${b1.hostIf} has macvlan ${mv} stacked on it in passthru mode`,
        'EgressPassthruDevice',
        '',
        `macvlan ${mv}`,
      );
      // Where what b1 sends to this host goes now: to the macvlan (unicast to the egress's MAC).
      const rx = () => JSON.parse(sh('ip', ['-j', '-s', 'link', 'show', mv]))[0].stats64.rx.packets as number;
      const before = rx();
      sh('ip', ['-n', b1.netns, 'neigh', 'replace', '198.18.2.77', 'lladdr', b1.hostMac, 'dev', 'eth0']);
      shQuiet('ip', ['netns', 'exec', b1.netns, 'ping', '-c', '3', '-i', '0.2', '-W', '1', '198.18.2.77']);
      await until('what b1 sends to the egress arrives on the macvlan', async () => rx() >= before + 3, 5_000);
      await activeOnceGone(() => {
        sh('ip', ['link', 'del', mv]);
        removed = true;
      });
    } finally {
      if (!removed) shQuiet('ip', ['link', 'del', mv]);
      shQuiet('ip', ['-n', b1.netns, 'neigh', 'del', '198.18.2.77', 'dev', 'eth0']);
    }
  });

  it('a backend without a MAC behind a passthru macvlan: its ARP replies go there, said as why it has no entry', async () => {
    const mv = `m${lab.id}p4`;
    sh('ip', ['link', 'add', mv, 'link', b4.hostIf, 'type', 'macvlan', 'mode', 'passthru']);
    let removed = false;
    try {
      sh('ip', ['link', 'set', mv, 'up']);
      await lab.c.rules.createRule({ rule: lab.rule('nomac', PORT + 1, [backendOf(b4, '')]) });
      const why =
        `${b4.hostIf} has macvlan ${mv} stacked on it in passthru mode: every unicast frame arriving on ${b4.hostIf}, ` +
        `backend ${b4.ip}'s ARP replies and answers included, goes to macvlan ${mv}, not to ${b4.hostIf}`;
      await until(
        async () => `nomac names the macvlan; last ${JSON.stringify((await lab.status('nomac')).backendStatus)}`,
        async () => (await lab.status('nomac')).backendStatus[0].message.includes(why),
        15_000,
      );
      const s = await lab.status('nomac');
      assert.equal(s.state, RuleState.RULE_STATE_INACTIVE, JSON.stringify(s));
      assert.equal(s.backendStatus[0].active, false);
      assert.match(s.backendStatus[0].message, new RegExp(`^no neighbour entry for ${esc(b4.ip!)} on ${b4.hostIf}`));
      assert.ok(s.warnings.includes(why), JSON.stringify(s.warnings));
      // True: no MAC is known, nothing is sent to it.
      assert.equal((await lab.send(PORT + 1, [b4], 20, 4)).got[0], 0);
      sh('ip', ['link', 'del', mv]);
      removed = true;
      await lab.untilActive('nomac', 15_000);
      assert.doesNotMatch(JSON.stringify(await lab.status('nomac')), /stacked on it/);
      assert.equal((await lab.send(PORT + 1, [b4], 20, 4)).got[0], 20);
    } finally {
      if (!removed) shQuiet('ip', ['link', 'del', mv]);
      await lab.c.rules.deleteRule({ name: 'nomac' }).catch(() => undefined);
    }
  });

  // What does not take what the backend sends to this host (the file's opening comment says why): nothing said,
  // while a tc filter added beside them is (so a pass has looked at them), and ACTIVE again once it goes.
  it('a bridge master, a macvlan in bridge mode, iptables and nftables raw drops: not said (traffic arrives)', async () => {
    const br = `q${lab.id}br`;
    const mv = `m${lab.id}b3`;
    const t = `x${lab.id}raw`;
    const ipt = ['-t', 'raw', '-A', 'PREROUTING', '-i', b3.hostIf, '-j', 'DROP'];
    try {
      sh('ip', ['link', 'add', br, 'type', 'bridge']);
      sh('ip', ['link', 'set', br, 'up']);
      sh('ip', ['link', 'set', b2.hostIf, 'master', br]);
      sh('ip', ['link', 'add', mv, 'link', b3.hostIf, 'type', 'macvlan', 'mode', 'bridge']);
      sh('ip', ['link', 'set', mv, 'up']);
      sh('iptables', ipt);
      sh('nft', ['add', 'table', 'ip', t]);
      sh('nft', ['add', 'chain', 'ip', t, 'c', '{ type filter hook prerouting priority raw; }']);
      sh('nft', ['add', 'rule', 'ip', t, 'c', 'iifname', b3.hostIf, 'drop']);
      // Without MACs: their ARP replies must reach this host for them to be resolved.
      await lab.c.rules.createRule({ rule: lab.rule('quiet', PORT + 2, [backendOf(b2, ''), backendOf(b3, '')]) });
      await lab.untilActive('quiet', 15_000);
      const r = await lab.send(PORT + 2, [b2, b3], 40, 16);
      assert.equal(r.total, 40, JSON.stringify(r));
      assert.ok(r.got[0] > 0 && r.got[1] > 0, JSON.stringify(r));
      sh('tc', ['qdisc', 'add', 'dev', b3.hostIf, 'ingress']);
      sh('tc', ['filter', 'add', 'dev', b3.hostIf, 'ingress', 'protocol', 'ip', 'u32', 'match', 'u32', '0', '0']);
      await until(
        async () => `quiet names the tc filter; last ${(await lab.status('quiet')).message}`,
        async () => cond(await lab.status('quiet'), 'BackendsReceiving').reason === 'EgressTcFilter',
        15_000,
      );
      const s = await lab.status('quiet');
      const said = JSON.stringify([s.message, s.warnings, s.backendStatus]);
      assert.doesNotMatch(said, new RegExp(`${br}|${mv}|stacked|bridge|iptables|${t}`), said);
      assert.equal(s.warnings.length, 1, said);
      sh('tc', ['qdisc', 'del', 'dev', b3.hostIf, 'ingress']);
      await lab.untilActive('quiet', 15_000);
      const q = await lab.status('quiet');
      assert.deepEqual([q.warnings, q.backendStatus.map((b) => b.active)], [[], [true, true]], JSON.stringify(q));
      for (const h of [b2, b3]) assert.deepEqual(await rowWarnings(h.hostIf), [], h.hostIf);
    } finally {
      shQuiet('tc', ['qdisc', 'del', 'dev', b3.hostIf, 'ingress']);
      shQuiet('iptables', ['-t', 'raw', '-D', ...ipt.slice(3)]);
      shQuiet('nft', ['delete', 'table', 'ip', t]);
      shQuiet('ip', ['link', 'del', mv]);
      shQuiet('ip', ['link', 'del', br]);
      await lab.c.rules.deleteRule({ name: 'quiet' }).catch(() => undefined);
    }
  });
});
