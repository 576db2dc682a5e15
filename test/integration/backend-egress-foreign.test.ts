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
 * Real veths, namespaces, two real daemons and real datagrams.
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
  let b1: Host, x: Host;

  before(async () => {
    ({ b1, x } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', x: '198.18.3.1/24' }));
    await lab.start(['--log-level', 'info']);
    await lab.c.rules.createRule({ rule: lab.rule('web', PORT, [backendOf(b1)]) });
    await lab.untilActive('web');
  });
  after(() => lab.destroy());

  /**
   * The rule while `what` (a regexp source: "another XDP program (...) is attached to E", "E has a tc ingress
   * filter (...)") is on b1's egress: said, DEGRADED with `reason`, still receiving, one line.
   */
  async function saidWhileThere(what: string, reason: string, through = 'that program'): Promise<void> {
    const note =
      `${what}: what backend ${esc(b1.ip!)} sends back, its answers and ARP replies included, passes through ` +
      `${through} before this host, which may drop it or redirect it elsewhere: whether it arrives cannot be verified`;
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
    assert.doesNotMatch(JSON.stringify(s), /is attached to| has (a tc|an nftables)/);
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
});
