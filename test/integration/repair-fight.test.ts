/**
 * A repair another tool keeps undoing is a fight, and said as one (core/fights.ts, docs/architecture.md
 * "Repairs that do not hold"): with a running daemon on a native-mode ingress, a loop undoes a repair every
 * 0.5 s, 16 times:
 *  a) `ethtool -K eth0 gro off` on a backend's veth peer (native redirects into its veth need the peer's NAPI,
 *     which --fix-veth-peers gives back by switching GRO on);
 *  b) `ip link set dev X xdp off` on the ingress (the reconciler attaches our program again);
 *  c) the same on a cross-connected interface: both link directions carry the fight as their warning.
 * Within a few seconds of the loop's start one warning names the fight, the rule is DEGRADED naming it, the
 * `xdpctl.datapath` health is NOT_SERVING and GetStatus lists it; the repairs are not logged one per repair (at
 * most 3 repair lines, summaries included, for 16 undos); ~10 s after the loop stops one line says the fight
 * is over, the rule is ACTIVE and the health SERVING again. Before: every repair logged as settling things, the
 * rule ACTIVE and the health SERVING throughout.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, until } from '../helpers/env.js';
import { backendOf, esc, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

/** The loops: 16 undos, 0.5 s apart. */
const UNDOS = 16;
const loop = (cmd: string) => `for i in $(seq ${UNDOS}); do ${cmd} >/dev/null 2>&1; sleep 0.5; done`;

describe('a repair another tool keeps undoing is a fight, said once and summarised', kernelOnly(), () => {
  const lab = new Lab();
  const { status, health, count, rule } = lab;
  let c: Clients;
  let d: DaemonProcess;
  let vm: Host, b1: Host, b6: Host;
  const loops: ChildProcess[] = [];

  before(async () => {
    ({ vm, b1, b6 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b6: '198.18.2.6/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info', '--xdp-mode', 'native']));
  });
  lab.onDestroy(() => {
    for (const p of loops) if (p.exitCode === null) p.kill('SIGKILL');
  });
  after(() => lab.destroy());

  /** Runs `script` (in `netns` when given) in the background; resolves when it has ended. */
  const background = (script: string, netns?: string) => {
    const p = spawn(netns ? 'ip' : 'sh', netns ? ['netns', 'exec', netns, 'sh', '-c', script] : ['-c', script], {
      stdio: 'ignore',
    });
    loops.push(p);
    return new Promise<void>((resolve) => p.on('exit', () => resolve()));
  };
  /** How many lines of the daemon's log match `re` (its msg field). */
  const lines = (re: string) => count(new RegExp(`"msg":"${re}`));

  /**
   * Drives one loop and checks the fight: `subject` is how the daemon names what it repairs, `repairLine`
   * the start of each single repair's line.
   */
  async function fight(what: string, subject: string, repairLine: string, undo: () => Promise<void>) {
    const said = `${subject}: repaired \\d+ times in [0-9.]+ s: something keeps undoing it`;
    const over = `${subject}: no repair needed for 10 s: the fight is over after \\d+ repairs`;
    // (Counted from here: another case may have fought over the same subject before.)
    const before = {
      repairs: lines(repairLine),
      summaries: lines(`${subject}: repaired \\d+ more times`),
      said: lines(said),
      over: lines(over),
    };
    const started = Date.now();
    const done = undo();
    await until(
      async () =>
        `${what}: the fight said (meanwhile ${lines(repairLine) - before.repairs} repair lines, the rule ` +
        `${RuleState[(await status('fight')).state]}, health ${HealthCheckResponse_ServingStatus[await health()]})`,
      () => lines(said) === before.said + 1,
      8000,
    );
    const saidAfter = Date.now() - started;
    // The rule DEGRADED naming it, the datapath health NOT_SERVING, GetStatus listing it.
    await until(
      `${what}: the rule DEGRADED`,
      async () => (await status('fight')).state === RuleState.RULE_STATE_DEGRADED,
    );
    const st = await status('fight');
    assert.match(st.message, new RegExp(`${subject} keeps being undone`), `${what}: the rule's message names it`);
    assert.ok(
      st.warnings.some((w) => new RegExp(`^${subject} keeps being undone`).test(w)),
      `${what}: a warning names it`,
    );
    await until(`${what}: health NOT_SERVING`, async () => (await health()) === NOT_SERVING, 3000);
    const warnings = (await c.daemon.getStatus({})).datapath!.warnings;
    assert.ok(
      warnings.some((w) => new RegExp(`^${subject} keeps being undone`).test(w)),
      `${what}: GetStatus lists it (${warnings.join(' | ')})`,
    );
    await done;
    const stopped = Date.now();
    // Still a fight right after the loop: the rule stays DEGRADED until a window passes without a repair.
    assert.equal((await status('fight')).state, RuleState.RULE_STATE_DEGRADED, `${what}: still DEGRADED`);
    await until(`${what}: the fight over`, () => lines(over) === before.over + 1, 20_000);
    const overAfter = Date.now() - stopped;
    const end = d.output.split('\n').findLast((l) => new RegExp(`"msg":"${subject}: no repair needed`).test(l))!;
    const total = Number(/"repairs":(\d+)/.exec(end)![1]);
    await until(
      `${what}: the rule ACTIVE again`,
      async () => (await status('fight')).state === RuleState.RULE_STATE_ACTIVE,
    );
    await until(`${what}: health SERVING again`, async () => (await health()) === SERVING);
    assert.ok(!(await c.daemon.getStatus({})).datapath!.warnings.some((w) => w.includes(subject)), 'no longer listed');
    const repairs = lines(repairLine) - before.repairs;
    const summaries = lines(`${subject}: repaired \\d+ more times`) - before.summaries;
    console.log(
      `${what}: fight said ${saidAfter} ms after the loop began; ${total} repairs in the fight, ${repairs} repair ` +
        `lines + ${summaries} summaries; over ${overAfter} ms after the loop stopped`,
    );
    assert.ok(total >= 3, `${what}: at least 3 repairs made (${total})`);
    assert.ok(
      repairs + summaries <= 3,
      `${what}: at most 3 repair lines for ${UNDOS} undos (${repairs} + ${summaries})`,
    );
    assert.ok(overAfter >= 8000, `${what}: the fight lasts a window after the last undo (${overAfter} ms)`);
  }

  it("a veth peer's GRO switched off every 0.5 s: a fight, the rule DEGRADED, health NOT_SERVING, then normal", async () => {
    await c.rules.createRule({ rule: rule('fight', 7811, [backendOf(b1), backendOf(b6)]) });
    try {
      await until('ACTIVE', async () => (await status('fight')).state === RuleState.RULE_STATE_ACTIVE);
      await until('health SERVING', async () => (await health()) === SERVING);
      const subject = esc(`GRO on eth0 in netns ${b6.netns}, the veth peer of ${b6.hostIf}`);
      await fight(
        'GRO off loop',
        subject,
        esc(`GRO switched on on eth0 in netns ${b6.netns}, the veth peer of ${b6.hostIf}:`),
        () => background(loop('ethtool -K eth0 gro off'), b6.netns),
      );
      const r = await lab.send(7811, [b1, b6], 200, 50);
      assert.equal(r.total, r.sent, `all delivered after the fight (${r.got})`);
    } finally {
      await c.rules.deleteRule({ name: 'fight', expectedGeneration: 0n });
    }
  });

  it('a veth peer taken down, its GRO switched off and up again every 0.5 s (the same device): a fight, as without the down/up', async () => {
    await c.rules.createRule({ rule: rule('fight', 7814, [backendOf(b1), backendOf(b6)]) });
    try {
      await until('ACTIVE', async () => (await status('fight')).state === RuleState.RULE_STATE_ACTIVE);
      await until('health SERVING', async () => (await health()) === SERVING);
      await fight(
        'down, GRO off, up loop',
        esc(`GRO on eth0 in netns ${b6.netns}, the veth peer of ${b6.hostIf}`),
        esc(`GRO switched on on eth0 in netns ${b6.netns}, the veth peer of ${b6.hostIf}:`),
        () => background(loop('{ ip link set eth0 down; ethtool -K eth0 gro off; ip link set eth0 up; }'), b6.netns),
      );
      const r = await lab.send(7814, [b1, b6], 200, 50);
      assert.equal(r.total, r.sent, `all delivered after the fight (${r.got})`);
    } finally {
      await c.rules.deleteRule({ name: 'fight', expectedGeneration: 0n });
    }
  });

  it("one rule's per-port index entry (map rule_ports) rewritten by bpftool every 0.5 s: a fight, that rule DEGRADED naming it, then ACTIVE", async () => {
    const port = 7813;
    await c.rules.createRule({ rule: rule('fight', port, [backendOf(b1)]) });
    // A rule on another port: its entries are not fought, it stays ACTIVE.
    await c.rules.createRule({ rule: rule('bystander', 7815, [backendOf(b1)]) });
    try {
      await until('ACTIVE', async () => (await status('fight')).state === RuleState.RULE_STATE_ACTIVE);
      await until('health SERVING', async () => (await health()) === SERVING);
      const u32 = (n: number) => [n & 255, (n >> 8) & 255, (n >> 16) & 255, (n >>> 24) & 255].join(' ');
      // The entry zeroed: the datapath takes the port for one no rule uses, and passes its datagrams to the host.
      const update = `bpftool map update pinned ${d.pinRoot}/maps/rule_ports key ${u32(port)} value ${Array(16).fill(0).join(' ')}`;
      await fight(
        'rule_ports entry loop',
        esc(`the kernel entry port index (map rule_ports, port ${port})`),
        esc('kernel entries differed from the desired state: rewritten'),
        async () => {
          const done = background(loop(update));
          // Meanwhile the other rule is not named.
          await until(
            'the fight said',
            () => lines(esc(`the kernel entry port index (map rule_ports, port ${port}): repaired`)) > 0,
            8000,
          );
          const other = await status('bystander');
          assert.equal(other.state, RuleState.RULE_STATE_ACTIVE, `the other rule ACTIVE (${other.message})`);
          await done;
        },
      );
      const r = await lab.send(port, [b1], 100, 20);
      assert.equal(r.total, r.sent, `all delivered after the fight (${r.got})`);
    } finally {
      await c.rules.deleteRule({ name: 'bystander', expectedGeneration: 0n });
      await c.rules.deleteRule({ name: 'fight', expectedGeneration: 0n });
    }
  });

  it("one rule's match entry (map rule_match) deleted by bpftool every 0.25 s: its fight said, none over the per-port index nobody wrote", async () => {
    const port = 7816;
    await c.rules.createRule({ rule: rule('fight', port, [backendOf(b1)]) });
    try {
      await until('ACTIVE', async () => (await status('fight')).state === RuleState.RULE_STATE_ACTIVE);
      await until('health SERVING', async () => (await health()) === SERVING);
      const pin = `${d.pinRoot}/maps`;
      const dump = (map: string) =>
        JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', `${pin}/${map}`])) as { key: string[] }[];
      // The rule's entry: its destination port (network order) at bytes 4-5 of the key.
      const entry = dump('rule_match').find((e) => parseInt(e.key[4], 16) * 256 + parseInt(e.key[5], 16) === port)!;
      const from = d.output.length;
      const ports = () =>
        d
          .logLines<{ msg: string; repaired?: string[] }>(from)
          .flatMap((l) => [l.msg, ...(l.repaired ?? [])])
          .filter((t) => t.includes(`rule_ports, port ${port}`));
      const del = `bpftool map delete pinned ${pin}/rule_match key ${entry.key.join(' ')}`;
      await fight(
        'rule_match entry delete loop',
        esc(`the kernel entry rule fight: match entry (map rule_match: ingress ${vm.hostIf} ifindex `) +
          '\\d+' +
          esc(`, UDP port ${port}, any destination)`),
        esc('kernel entries differed from the desired state: rewritten'),
        async () => {
          await background(`for i in $(seq 40); do ${del} >/dev/null 2>&1; sleep 0.25; done`);
          // Before: each repair also said `port index (map rule_ports, port 7816): kernel {"any":2,...}` (the
          // repair's own +1), and that entry's fight was said too.
          assert.deepEqual(ports(), [], 'no line names the per-port index: nothing but this daemon wrote it');
        },
      );
      assert.deepEqual(ports(), [], 'no line names the per-port index');
      const r = await lab.send(port, [b1], 100, 20);
      assert.equal(r.total, r.sent, `all delivered after the fight (${r.got})`);
    } finally {
      await c.rules.deleteRule({ name: 'fight', expectedGeneration: 0n });
    }
  });

  it('our program detached from the ingress every 0.5 s: a fight, the rule DEGRADED, health NOT_SERVING, then normal', async () => {
    await c.rules.createRule({ rule: rule('fight', 7812, [backendOf(b1)]) });
    try {
      await until('ACTIVE', async () => (await status('fight')).state === RuleState.RULE_STATE_ACTIVE);
      await until('health SERVING', async () => (await health()) === SERVING);
      await fight(
        'xdp off loop',
        esc(`our XDP program on ${vm.hostIf}`),
        esc(`${vm.hostIf}: found no XDP program where ours ran`),
        () => background(loop(`ip link set dev ${vm.hostIf} xdp off`)),
      );
      const r = await lab.send(7812, [b1], 100, 20);
      assert.equal(r.total, r.sent, `all delivered after the fight (${r.got})`);
    } finally {
      await c.rules.deleteRule({ name: 'fight', expectedGeneration: 0n });
    }
  });

  it('a link whose ingress keeps losing our program: its directions warned naming the fight, health NOT_SERVING, then not', async () => {
    const l1 = lab.topo.addHost('l1', '198.18.40.1/24');
    const l2 = lab.topo.addHost('l2', '198.18.40.2/24');
    await c.links.connect({ link: { a: l1.hostIf, b: l2.hostIf, direction: 0 } });
    try {
      await until('health SERVING', async () => (await health()) === SERVING, 5000);
      const subject = esc(`our XDP program on ${l1.hostIf}`);
      const warned = async () =>
        (await lab.linkStatus(l1.hostIf)).warnings.filter((w) => new RegExp(`${subject} keeps being undone`).test(w));
      const done = background(loop(`ip link set dev ${l1.hostIf} xdp off`));
      await until('the link directions warned', async () => (await warned()).length === 2, 8000);
      assert.match(
        (await warned()).join('\n'),
        new RegExp(`^${esc(l1.hostIf)} -> ${esc(l2.hostIf)}: ${subject} keeps being undone`, 'm'),
      );
      await until('health NOT_SERVING', async () => (await health()) === NOT_SERVING, 3000);
      await done;
      await until('the warnings gone', async () => (await warned()).length === 0, 20_000);
      await until('health SERVING again', async () => (await health()) === SERVING);
      assert.equal(lab.topo.ping('l1', l2.ip!), true, 'l1 reaches l2 through the link');
    } finally {
      await c.links.disconnect({ a: l1.hostIf, b: l2.hostIf });
    }
  });
});
