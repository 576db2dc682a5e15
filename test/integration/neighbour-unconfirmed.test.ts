/**
 * A neighbour entry whose MAC no ARP probe of ours has had answered is not evidence (docs/architecture.md, promises 1, 2 and 5),
 * with real namespaces, veths and datagrams:
 *  - a rule created while a wrong entry exists (another tool wrote it as REACHABLE): the MAC is written (nothing
 *    better is known) but the rule is DEGRADED, BackendsReceiving Unknown (BackendsUnverified), the
 *    xdpctl.datapath health NOT_SERVING, in the Create reply as in a read, until the probe settles (the wrong MAC
 *    fails, the broadcast request finds the host's). Before: ACTIVE, Ready True,
 *    BackendsReceiving True, SERVING while 0 of 50 were delivered;
 *  - a restart after a wrong entry was written while the daemon was stopped, under traffic: the start keeps the
 *    MAC the datapath forwards with, probes the entry's, and writes it only if it answers (it never does):
 *    every datagram delivered; the status never ACTIVE with the wrong MAC, nor "resolved" with it. Before:
 *    the start rewrote the datapath with the wrong MAC ("kernel entries differed from the
 *    stored state"), 162 of 600 lost, the rule ACTIVE meanwhile;
 *  - an entry that changes under a rule (another tool writes a new MAC nothing answers for, every second): each
 *    is written by a pass that re-applies the rule, and no read while that pass goes on says "resolved".
 *    Before, a read after the pass's write and before its judgement got the status as planned (ACTIVE,
 *    "MAC resolved from the neighbour table"): neighbour-conflict's duplicate-host case took such a read for
 *    an answer and failed when the duplicate came up before the real one had answered.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState, type RuleStatus } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, cond, Lab, NOWHERE } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;
const RESOLVED = 'MAC resolved from the neighbour table';

describe('neighbour entries no probe of ours answered: not evidence', kernelOnly(), () => {
  const lab = new Lab();
  const { status, health, listeners } = lab;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b1: Host, b2: Host, b3: Host;

  before(() => {
    ({ vm, b1, b2, b3 } = lab.addHosts({
      vm: '198.18.1.1/24',
      b1: '198.18.2.1/24',
      b2: '198.18.2.2/24',
      b3: '198.18.3.1/24',
    }));
  });
  after(() => lab.destroy());

  const start = async () => {
    ({ d, c } = await lab.start(['--log-level', 'info']));
  };
  const rule = (name: string, port: number, hosts: Host[]) =>
    lab.rule(
      name,
      port,
      hosts.map((h) => backendOf(h, '')),
    );
  /** Another tool writes `mac` into `h`'s neighbour entry as freshly confirmed (what an ARP spoofer does). */
  const writeEntry = (h: Host, mac: string) => lab.writeEntry(h, mac, 'reachable');
  /** The wrong entry removed if it is still there (a failed test), so that the kernel resolves the right one. */
  const dropWrong = lab.dropEntry;
  /** What a status claims about a backend on `wrong` that no answer showed ('' when nothing). */
  const overclaim = (s: RuleStatus, wrong: string) => {
    const on = s.backendStatus.filter((b) => b.mac === wrong);
    if (on.length === 0) return '';
    const out: string[] = [];
    if (s.state === RuleState.RULE_STATE_ACTIVE) out.push(`ACTIVE: ${s.message}`);
    if (cond(s, 'Ready').status === ConditionStatus.CONDITION_STATUS_TRUE) out.push('Ready True');
    const br = cond(s, 'BackendsReceiving');
    if (br.status === ConditionStatus.CONDITION_STATUS_TRUE) out.push(`BackendsReceiving True ${br.reason}`);
    for (const b of on) if (/resolved/.test(b.message)) out.push(`backend ${b.ip}: ${b.message}`);
    return out.join('; ');
  };

  it('a rule created over a wrong entry is DEGRADED, BackendsReceiving Unknown, until the probe settles', async () => {
    await start();
    const wrong = lab.mac('33');
    writeEntry(b3, wrong);
    const claims: string[] = [];
    let settledAt = 0;
    const t0 = Date.now();
    try {
      const created = (await c.rules.createRule({ rule: rule('w2', 7962, [b3]) })).rule!.status!;
      const read = await status('w2');
      for (const [what, s] of [
        ['the Create reply', created],
        ['a read right after', read],
      ] as const) {
        assert.equal(s.backendStatus[0].mac, wrong, `${what}: the entry's MAC is written (nothing better is known)`);
        assert.equal(s.state, RuleState.RULE_STATE_DEGRADED, `${what}: ${s.message}`);
        assert.match(s.message, /not confirmed yet/, what);
        assert.match(
          s.backendStatus[0].message,
          new RegExp(`^MAC ${wrong} from the neighbour table, not confirmed yet`),
        );
        const br = cond(s, 'BackendsReceiving');
        assert.deepEqual(
          [br.status, br.reason],
          [ConditionStatus.CONDITION_STATUS_UNKNOWN, 'BackendsUnverified'],
          what,
        );
        assert.equal(cond(s, 'Ready').status, ConditionStatus.CONDITION_STATUS_FALSE, what);
      }
      // The health follows the reconciler's pass (every second); the wrong MAC fails after ~3 s at the earliest.
      await until('health NOT_SERVING while unconfirmed', async () => (await health()) === NOT_SERVING, 2500);
      // An update while it is still unconfirmed replies what a read says.
      const updated = (
        await c.rules.updateRule({ rule: { ...rule('w2', 7962, [b3]), labels: { x: 'y' } }, expectedGeneration: 0n })
      ).rule!.status!;
      const read2 = await status('w2');
      if (read2.backendStatus[0].mac === wrong) {
        assert.equal(updated.state, read2.state, `Update reply ${updated.message} / read ${read2.message}`);
        assert.equal(cond(updated, 'BackendsReceiving').status, cond(read2, 'BackendsReceiving').status);
      }
      // Watched every 100 ms until the host's MAC answered: never ACTIVE (nor "resolved") with the wrong MAC.
      while (Date.now() - t0 < 15_000) {
        const s = await status('w2');
        const o = overclaim(s, wrong);
        if (o) claims.push(`${Date.now() - t0} ms: ${o}`);
        if (s.backendStatus[0].mac === b3.mac && s.backendStatus[0].message === RESOLVED) {
          settledAt = Date.now();
          break;
        }
        await sleep(100);
      }
    } finally {
      dropWrong(b3, wrong);
    }
    console.log(`# a rule created over a wrong REACHABLE entry: settled on the host's MAC after ${settledAt - t0} ms`);
    assert.deepEqual(claims, [], 'nothing claimed beyond what was observed');
    assert.ok(settledAt > 0, "the probe settled on the host's MAC");
    const s = await status('w2');
    assert.equal(s.state, RuleState.RULE_STATE_ACTIVE, s.message);
    assert.equal(cond(s, 'BackendsReceiving').status, ConditionStatus.CONDITION_STATUS_TRUE);
    await until('health SERVING', async () => (await health()) === SERVING, 5000);
    const { sent, got } = await lab.send(7962, [b3], 50, 10);
    assert.equal(got[0], sent, `delivered once confirmed: ${got[0]} of ${sent}`);
    await c.rules.deleteRule({ name: 'w2', expectedGeneration: 0n });
  });

  it('an entry that changes under a rule (the reconciler re-applies it): no read during that pass says "resolved"', async () => {
    // An address no host has on b3's link: no ARP request of ours for it is ever answered. Another tool writes
    // a new MAC into its entry every second; each change is written (nothing better is known) by a pass that
    // re-applies the rule, and the statuses are read back to back meanwhile. Before, a read that came while
    // that pass went on after its write (up to its judgement) got the status as planned: ACTIVE, "MAC resolved
    // from the neighbour table", for a MAC nothing answered for.
    if (!d) await start();
    const ip = '198.18.3.77';
    const wrongs = ['34', '35', '36', '37', '38', '39', '3a', '3b', '3c', '3d'].map((x) => lab.mac(x));
    await c.rules.createRule({ rule: lab.rule('nobody', 7963, [{ ip, mac: '', interface: b3.hostIf }]) });
    const claims: string[] = [];
    let reads = 0;
    let seenWritten = 0;
    try {
      for (const [i, wrong] of wrongs.entries()) {
        sh('ip', ['neigh', 'replace', ip, 'lladdr', wrong, 'dev', b3.hostIf, 'nud', 'reachable']);
        const t0 = Date.now();
        let written = false;
        while (Date.now() - t0 < 1000) {
          const s = await status('nobody');
          reads++;
          if (s.backendStatus[0]?.mac === wrong) written = true;
          for (const w of wrongs) {
            const o = overclaim(s, w);
            if (o) claims.push(`change ${i + 1}, ${Date.now() - t0} ms after it: ${o}`);
          }
        }
        if (written) seenWritten++;
      }
    } finally {
      shQuiet('ip', ['neigh', 'del', ip, 'dev', b3.hostIf]);
    }
    console.log(
      `# an entry changed ${wrongs.length} times under a rule: ${reads} reads, each change written (seen) ${seenWritten} times`,
    );
    assert.equal(
      seenWritten,
      wrongs.length,
      'each MAC written (nothing better is known): the passes re-applied the rule',
    );
    assert.deepEqual(claims.slice(0, 5), [], `no read said more than was observed (${claims.length} did)`);
    await c.rules.deleteRule({ name: 'nobody', expectedGeneration: 0n });
  });

  it('a restart over a wrong entry written while stopped keeps the forwarding MAC: nothing lost', async (t) => {
    const wrong = lab.mac('19');
    await c.rules.createRule({ rule: rule('web', 7961, [b1, b2]) });
    await until(
      'both backends answered, ACTIVE',
      async () => {
        const s = await status('web');
        return s.state === RuleState.RULE_STATE_ACTIVE && s.backendStatus.every((b) => b.message === RESOLVED);
      },
      10_000,
    );
    assert.deepEqual(
      (await status('web')).backendStatus.map((b) => b.mac),
      [b1.mac, b2.mac],
    );
    await d!.stop(); // no --cleanup-on-exit: the datapath keeps forwarding
    writeEntry(b1, wrong); // once, while the daemon is stopped
    const ls = [await UdpListener.start(b1.netns, b1.ip!, 7961), await UdpListener.start(b2.netns, b2.ip!, 7961)];
    listeners.push(...ls);
    const claims: string[] = [];
    const seen = new Set<string>();
    let settledAt = 0;
    let t0 = 0;
    let sent = 0;
    try {
      // 100 datagrams a second over 20 flows for 12 s; the daemon starts 1 s in.
      const sender = sendUdp(vm.netns, NOWHERE, 7961, 1200, { flows: 20, perTick: 1, tickMs: 10 });
      await sleep(1000);
      t0 = Date.now();
      await start();
      // Right after the start: b1 on the MAC the datapath forwarded with, over the wrong entry. Before that MAC
      // answered a request of this daemon's: said so, the rule DEGRADED (BackendsReceiving Unknown), the health
      // NOT_SERVING; once it answered (the first pass may have seen it already): kept as an answered MAC.
      // The health read between two status reads: a pass that ends between two reads may have seen the kept
      // MAC answer, so the health is judged against a status that holds on both sides of it.
      const [early, earlyHealth, after] = [await status('web'), await health(), await status('web')];
      const eb = early.backendStatus[0];
      seen.add(`${RuleState[early.state]} ${eb.mac}: ${eb.message}`);
      assert.equal(eb.mac, b1.mac);
      if (eb.message.startsWith(`MAC ${b1.mac} kept from the datapath, not confirmed yet`)) {
        assert.match(eb.message, new RegExp(`the neighbour entry holds ${wrong}`));
        assert.equal(early.state, RuleState.RULE_STATE_DEGRADED, early.message);
        assert.deepEqual(
          [cond(early, 'BackendsReceiving').status, cond(early, 'BackendsReceiving').reason],
          [ConditionStatus.CONDITION_STATUS_UNKNOWN, 'BackendsUnverified'],
        );
        if (after.backendStatus[0].message === eb.message) assert.equal(earlyHealth, NOT_SERVING);
      } else {
        assert.match(eb.message, new RegExp(`^MAC ${b1.mac} kept \\(it answered an ARP probe of ours\\)`));
      }
      while (Date.now() - t0 < 10_000) {
        const s = await status('web');
        const b = s.backendStatus[0];
        seen.add(`${RuleState[s.state]} ${b.mac}: ${b.message}`);
        const o = overclaim(s, wrong);
        if (o) claims.push(`${Date.now() - t0} ms: ${o}`);
        if (b.mac === b1.mac && b.message === RESOLVED && s.state === RuleState.RULE_STATE_ACTIVE) {
          settledAt ||= Date.now();
        }
        await sleep(100);
      }
      sent = (await sender.done).sent;
    } finally {
      dropWrong(b1, wrong);
    }
    await sleep(200);
    const got = await Promise.all(ls.map(async (l) => await l.stop()));
    t.diagnostic(
      `sent ${sent}: b1 ${got[0].unique}, b2 ${got[1].unique}; settled ${settledAt - t0} ms after the start; ` +
        `b1's statuses: ${[...seen].join(' | ')}`,
    );
    assert.equal(got[0].bad + got[1].bad, 0);
    assert.ok(got[0].unique > 0 && got[1].unique > 0, 'both backends received');
    const delivered = new Set([...got[0].seqs, ...got[1].seqs]).size;
    assert.equal(delivered, sent, `lost ${sent - delivered} of ${sent} (the daemon started 1 s in)`);
    assert.deepEqual(claims, [], 'never ACTIVE nor "resolved" with the wrong MAC');
    assert.ok(settledAt > 0, "b1 resolved with its host's MAC, ACTIVE");
    const out = d!.output;
    assert.doesNotMatch(out, /differed from the stored state/, 'the start rewrote nothing');
    assert.ok(!out.includes(`-> ${wrong}`), 'the wrong MAC never written');
    const who = `backend ${b1.ip!.replace(/\./g, '\\.')} on ${b1.hostIf}`;
    assert.match(out, new RegExp(`"msg":"${who}: its neighbour entry holds ${wrong}, which no ARP probe of ours`));
    // The kept MAC answered a request of ours (confirmed), then the entry came back to it.
    assert.match(
      out,
      new RegExp(`"msg":"${who}: ${b1.mac} \\(kept from the datapath\\) answered an ARP request of ours`),
    );
    await until('health SERVING', async () => (await health()) === SERVING, 5000);
  });
});
