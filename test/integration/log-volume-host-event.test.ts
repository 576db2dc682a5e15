/**
 * One host event across many rules makes a bounded number of log lines (newcomer review, LOW: 3000 rules sharing one
 * backend egress and 5 carrier flaps of its peer made 6006 lines: the per-rule limit does not bound one event seen by
 * every rule). 500 rules (made at once with ApplyRules) share one backend; its peer's carrier goes down and up 3
 * times: the rules' state changes are said in a few lines naming how many rules and some of them, each rule's
 * status (GetRule) keeping its own detail; before, ~1000 lines (one per rule per change). A change that affects one
 * rule is still said in that rule's own line (reconciler, rules-*, ... expect it). `xdpctl status` says the rules not
 * ACTIVE for that one reason in one warning line (before: one line each, 100 alike), `--wide` naming every one.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { xdpctl, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const RULES = 500;
const FLAPS = 3;

describe('one host event across many rules: a bounded number of log lines', kernelOnly(), () => {
  const lab = new Lab();
  const { status } = lab;
  let d: DaemonProcess;
  let c: Clients;
  let be: Host;
  let solo: Host;

  before(async () => {
    ({ be, solo } = lab.addHosts({ vm: '198.18.1.1/24', be: '198.18.2.1/24', solo: '198.18.4.1/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info', '--max-rules', '1024']));
    const rules = Array.from({ length: RULES }, (_, i) => lab.rule(`many${i}`, 20_000 + i, [backendOf(be)]));
    rules.push(lab.rule('solo', 19_999, [backendOf(solo)]));
    await c.rules.applyRules({ rules, validateOnly: false });
    await until(
      'every rule ACTIVE',
      async () => (await status(`many${RULES - 1}`)).state === RuleState.RULE_STATE_ACTIVE,
      20_000,
    );
  });
  after(() => lab.destroy());

  const lines = () => d.output.split('\n').filter((l) => l.startsWith('{'));
  const allIn = async (state: RuleState) => {
    const { rules } = await c.rules.listRules({ pageSize: RULES + 10 });
    return rules.filter((r) => r.name.startsWith('many')).every((r) => r.status!.state === state);
  };

  it(`${FLAPS} carrier flaps of the peer of one egress of ${RULES} rules: a bounded number of lines`, async (t) => {
    const from = lines().length;
    for (let i = 0; i < FLAPS; i++) {
      sh('ip', ['-n', be.netns, 'link', 'set', 'eth0', 'down']);
      await until(
        'every rule not ACTIVE',
        async () => allIn(RuleState.RULE_STATE_INACTIVE) || allIn(RuleState.RULE_STATE_DEGRADED),
        20_000,
      );
      sh('ip', ['-n', be.netns, 'link', 'set', 'eth0', 'up']);
      await until('every rule ACTIVE again', async () => allIn(RuleState.RULE_STATE_ACTIVE), 20_000);
    }
    await until(
      'the last line said',
      () =>
        lines()
          .slice(from)
          .some((l) => /ACTIVE again|as desired again|rules are ACTIVE/.test(l)),
      5000,
    );
    const said = lines().slice(from);
    t.diagnostic(`${said.length} log lines for ${FLAPS} flaps across ${RULES} rules`);
    const perRule = said.filter((l) => /"msg":"rule many\d+ is /.test(l));
    assert.ok(perRule.length <= 10, `${perRule.length} per-rule lines:\n${perRule.slice(0, 5).join('\n')}`);
    assert.ok(said.length <= 20 * FLAPS, `${said.length} lines:\n${said.slice(0, 20).join('\n')}`);
    // The lines name how many rules and some of them.
    const bulk = said
      .map((l) => JSON.parse(l) as { msg: string; rules?: number; names?: string[] })
      .filter((l) => l.rules !== undefined);
    assert.ok(
      bulk.some((l) => l.rules === RULES && /^500 rules are (INACTIVE|DEGRADED): many\d+, /.test(l.msg)),
      JSON.stringify(bulk.slice(0, 2)),
    );
    // Each rule's own status keeps its detail.
    sh('ip', ['-n', be.netns, 'link', 'set', 'eth0', 'down']);
    try {
      await until('not ACTIVE', async () => (await status('many7')).state !== RuleState.RULE_STATE_ACTIVE, 20_000);
      assert.match((await status('many7')).message, new RegExp(be.hostIf));
    } finally {
      sh('ip', ['-n', be.netns, 'link', 'set', 'eth0', 'up']);
    }
    await until('every rule ACTIVE again', async () => allIn(RuleState.RULE_STATE_ACTIVE), 20_000);
  });

  it("one rule's egress: that rule's own line, as before", async () => {
    const from = lines().length;
    sh('ip', ['-n', solo.netns, 'link', 'set', 'eth0', 'down']);
    try {
      await until('solo not ACTIVE', async () => (await status('solo')).state !== RuleState.RULE_STATE_ACTIVE, 20_000);
      await until(
        'its line',
        () =>
          lines()
            .slice(from)
            .some((l) => /"msg":"rule solo is (INACTIVE|DEGRADED): /.test(l)),
        5000,
      );
    } finally {
      sh('ip', ['-n', solo.netns, 'link', 'set', 'eth0', 'up']);
    }
    await until('solo ACTIVE', async () => (await status('solo')).state === RuleState.RULE_STATE_ACTIVE, 20_000);
    await until(
      'its line',
      () =>
        lines()
          .slice(from)
          .some((l) => /"msg":"rule solo is ACTIVE: /.test(l)),
      5000,
    );
  });

  it('xdpctl status: the rules not ACTIVE for one reason in one warning line; --wide all; -o json every line', async () => {
    sh('ip', ['-n', be.netns, 'link', 'set', 'eth0', 'down']);
    try {
      await until(
        'every rule not ACTIVE, in GetStatus',
        async () =>
          (await c.daemon.getStatus({})).datapath!.warnings.filter((w) => /^rule many\d+ is INACTIVE: /.test(w))
            .length >= 99,
        20_000,
      );
      const warnings = (out: string) =>
        out
          .split('\n')
          .filter((l) => /^warning\b/.test(l))
          .map((l) => l.replace(/^warning:?\s+/, ''));
      const table = await xdpctl(d.unix, ['status']);
      assert.equal(table.code, 0, table.stderr);
      const lines = warnings(table.stdout);
      // Before: one line per rule ("rule many0 is INACTIVE: ...", "rule many1 is INACTIVE: ...", ... 100 of them).
      const perRule = lines.filter((l) => /^rule many\d+ is /.test(l));
      assert.equal(perRule.length, 0, `${lines.length} warning lines:\n${lines.slice(0, 8).join('\n')}`);
      const grouped = lines.filter((l) => / rules are INACTIVE: many\d+, /.test(l));
      assert.equal(grouped.length, 1, lines.join('\n'));
      assert.match(
        grouped[0],
        new RegExp(
          `^(?:at least )?(\\d+) rules are INACTIVE: many0, many1, many2, many3, many4 and \\d+ more \\(each: .*${be.hostIf}`,
        ),
      );
      // A count from a list the daemon cut (its first problems only) is said as a lower bound.
      assert.equal(
        grouped[0].startsWith('at least '),
        lines.some((l) => /^\d+ more problem\(s\) not listed here/.test(l)),
        lines.join('\n'),
      );
      assert.ok(lines.length <= 5, lines.join('\n'));
      const n = Number(/^(?:at least )?(\d+) rules/.exec(grouped[0])![1]);
      // --wide: every rule of the line named.
      const wide = await xdpctl(d.unix, ['status', '--wide']);
      assert.equal(wide.code, 0, wide.stderr);
      const w = warnings(wide.stdout).find((l) => / rules are INACTIVE: /.test(l))!;
      assert.equal(w.split(':')[1].split(',').length, n, w.slice(0, 200));
      // -o json: the daemon's lines, one per rule.
      const json = await xdpctl(d.unix, ['-o', 'json', 'status']);
      assert.equal(json.code, 0, json.stderr);
      const j = JSON.parse(json.stdout) as { datapath: { warnings: string[] } };
      assert.equal(j.datapath.warnings.filter((l) => /^rule many\d+ is INACTIVE: /.test(l)).length, n);
    } finally {
      sh('ip', ['-n', be.netns, 'link', 'set', 'eth0', 'up']);
    }
    await until('every rule ACTIVE again', async () => allIn(RuleState.RULE_STATE_ACTIVE), 20_000);
  });

  it('interfaces list: USED BY names 3 rules and how many more; --wide and -o json all of them', async () => {
    const json = await xdpctl(d.unix, ['-o', 'json', 'interfaces', 'list']);
    assert.equal(json.code, 0, json.stderr);
    const list = (JSON.parse(json.stdout) as { interfaces: { name: string; usedBy?: string[] }[] }).interfaces;
    const usedBy = list.find((i) => i.name === be.hostIf)!.usedBy!;
    assert.ok(usedBy.length >= RULES, `${usedBy.length} users in JSON`);
    const rowOf = (out: string) => out.split('\n').find((l) => l.startsWith(`${be.hostIf} `))!;
    const table = await xdpctl(d.unix, ['interfaces', 'list']);
    assert.equal(table.code, 0, table.stderr);
    const row = rowOf(table.stdout);
    assert.ok(row.includes(`${usedBy.slice(0, 3).join(',')} and ${usedBy.length - 3} more`), row);
    assert.ok(row.length < 300, `${row.length} characters`);
    const wide = await xdpctl(d.unix, ['interfaces', 'list', '--wide']);
    assert.equal(wide.code, 0, wide.stderr);
    assert.ok(rowOf(wide.stdout).includes(usedBy.join(',')), 'wide: every name');
  });
});
