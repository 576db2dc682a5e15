/**
 * Interface renames under a running daemon (a fault found: "renaming an interface
 * logs 'interfaces missing' every second forever"). Rules and links name
 * interfaces: a renamed interface is missing under its old name, and the
 * device under its new name is not ours to manage. So, with traffic flowing:
 *  - a rule's only ingress renamed: the rule is INACTIVE (ProgramAttached
 *    False, InterfaceMissing), health NOT_SERVING, our program leaves the
 *    renamed device (nothing attached that ListInterfaces does not show), and
 *    each of these is logged once, not every second;
 *  - a backend's egress renamed: the backend leaves the rule's table (its
 *    flows move to the others), the rule is DEGRADED, logged once;
 *  - renamed back (same device, same ifindex): everything as before, the
 *    recovery logged once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until as pollUntil } from '../helpers/env.js';
import { backendOf, cond, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

describe('interface renames: a renamed interface is missing under its old name, reported once', kernelOnly(), () => {
  const lab = new Lab();
  const { health, count } = lab;
  let c: Clients;
  let vm: Host, b1: Host, b2: Host;

  before(async () => {
    ({ vm, b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.2.2/24' }));
    ({ c } = await lab.start(['--log-level', 'info']));
    await c.rules.createRule({ rule: rule('web', 7901) });
  });
  // A renamed veth would escape the hosts' removal: put the names back first.
  lab.onDestroy(() => {
    for (const h of [vm, b1, b2]) if (h) rename(`${h.hostIf}r`, h.hostIf, true);
  });
  after(() => lab.destroy());

  function rule(name: string, port: number): Rule {
    return lab.rule(name, port, [backendOf(b1), backendOf(b2)]);
  }
  /** `ip link set dev FROM name TO` (a rename takes the device down; it is brought up again). */
  function rename(from: string, to: string, quiet = false) {
    try {
      sh('ip', ['link', 'set', 'dev', from, 'down']);
      sh('ip', ['link', 'set', 'dev', from, 'name', to]);
      sh('ip', ['link', 'set', 'dev', to, 'up']);
    } catch (e) {
      if (!quiet) throw e;
    }
  }
  const send = (port: number, n = 200, flows = 50) => lab.send(port, [b1, b2], n, flows);
  /** The shared poll (helpers/env.ts), with this file's longer default. */
  const until = (what: string, ok: () => Promise<boolean> | boolean, ms = 5000) => pollUntil(what, ok, ms);
  const status = () => lab.status('web');
  const xdpOn = (ifname: string) => JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp !== undefined;

  it("a rule's ingress renamed and renamed back", async () => {
    let r = await send(7901);
    assert.equal(r.total, r.sent, `all delivered at first (${r.got})`);
    const renamed = `${vm.hostIf}r`;
    rename(vm.hostIf, renamed);
    // A rename needs the device down first: a pass may see that moment (ingress down, also INACTIVE) before the
    // rename; the status then moves on to "does not exist".
    await until(
      'web INACTIVE: its ingress missing',
      async () =>
        (await status()).state === RuleState.RULE_STATE_INACTIVE && /does not exist/.test((await status()).message),
    );
    const st = await status();
    assert.match(st.message, new RegExp(`interface ${vm.hostIf} does not exist`));
    assert.deepEqual(
      [cond(st, 'ProgramAttached').status, cond(st, 'ProgramAttached').reason],
      [ConditionStatus.CONDITION_STATUS_FALSE, 'InterfaceMissing'],
    );
    const i = (await c.interfaces.getInterface({ name: vm.hostIf })).interface!;
    assert.equal(i.conditions[0]?.reason, 'InterfaceMissing');
    assert.equal(await health(), NOT_SERVING);
    await until('our program off the renamed device', () => !xdpOn(renamed), 3000);
    assert.ok(
      !(await c.interfaces.listInterfaces({})).interfaces.some((x) => x.name === renamed),
      'the renamed device is not listed',
    );
    r = await send(7901);
    assert.equal(r.total, 0, `the status says INACTIVE: nothing is redirected (${r.got})`);
    await sleep(2500); // passes every second: no more lines
    assert.equal(count(new RegExp(`"msg":"${vm.hostIf} was renamed to ${renamed}`)), 1, 'the rename logged once');
    // Each transition once: to "does not exist" exactly once; the moment between (the device down before the
    // rename), if a pass saw it, once; then nothing more while nothing changes.
    assert.equal(count(/"msg":"rule web is INACTIVE: .*does not exist/), 1, 'the rule transition logged once');
    const down = count(/"msg":"rule web is INACTIVE: .*is down/);
    assert.ok(down <= 1, `the moment between, at most once (${down})`);
    assert.equal(count(/"msg":"rule web is INACTIVE/), 1 + down, 'nothing else');
    const healthLines = count(/"msg":"datapath not as desired"/);
    assert.ok(healthLines >= 1 && healthLines <= 1 + down, `the health transition logged once (${healthLines})`);
    await sleep(1500);
    assert.equal(count(/"msg":"rule web is INACTIVE/), 1 + down, 'not every second');
    assert.equal(count(/"msg":"datapath not as desired"/), healthLines, 'not every second');

    rename(renamed, vm.hostIf);
    await until('web ACTIVE', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE);
    assert.ok(xdpOn(vm.hostIf), 'our program is back');
    r = await send(7901);
    assert.equal(r.total, r.sent, `all delivered again (${r.got})`);
    await until('health SERVING', async () => (await health()) === SERVING);
    await sleep(1500);
    assert.equal(count(/"msg":"rule web is ACTIVE/), 1, 'the recovery logged once');
    assert.equal(count(/"msg":"datapath as desired again"/), 1);
  });

  it("a backend's egress renamed and renamed back", async () => {
    const renamed = `${b2.hostIf}r`;
    // Independent of the test before: if it failed half-way, its ingress is still renamed.
    rename(`${vm.hostIf}r`, vm.hostIf, true);
    await until('web ACTIVE at the start', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE);
    const lines = count(/"msg":"datapath not as desired"/);
    // This case's rule transitions: the lines logged from here on (the case before logged its own; a pass that
    // saw its recovery half-way may have logged a DEGRADED line of its own then).
    const from = lab.d!.output.length;
    const since = (re: RegExp) =>
      lab
        .d!.output.slice(from)
        .split('\n')
        .filter((l) => re.test(l));
    const degraded = () => since(/"msg":"rule web is DEGRADED/);
    rename(b2.hostIf, renamed);
    // A rename needs the device down first: a pass may see that moment (egress down) before the rename.
    await until(
      'web DEGRADED: b2 missing',
      async () =>
        (await status()).state === RuleState.RULE_STATE_DEGRADED &&
        /does not exist/.test((await status()).backendStatus[1]?.message ?? ''),
    );
    const st = await status();
    assert.deepEqual(
      st.backendStatus.map((b) => b.active),
      [true, false],
    );
    assert.match(st.backendStatus[1].message, new RegExp(`egress ${b2.hostIf} does not exist`));
    assert.equal(cond(st, 'BackendsReceiving').status, ConditionStatus.CONDITION_STATUS_FALSE);
    assert.equal(await health(), NOT_SERVING);
    let r = await send(7901);
    assert.equal(r.total, r.sent, `every flow moved to b1 (${r.got})`);
    assert.equal(r.got[1], 0);
    // Each transition once, not every second: to "does not exist" exactly once; the passes that may have seen
    // the moment between (the device down before the rename) report that state once each, and after that
    // nothing more is logged while nothing changes.
    await sleep(1200);
    assert.equal(since(/"msg":"rule web is DEGRADED: .*does not exist/).length, 1, 'logged once');
    const down = since(/"msg":"rule web is DEGRADED: .*is down/).length;
    assert.ok(down <= 1, `the moment between, at most once (${down})`);
    assert.equal(degraded().length, 1 + down, `nothing else: ${degraded().join('\n')}`);
    const healthLines = count(/"msg":"datapath not as desired"/);
    assert.ok(healthLines > lines, 'the health transition logged');
    await sleep(2500); // passes every second: no more lines
    assert.equal(degraded().length, 1 + down, `not every second: ${degraded().join('\n')}`);
    assert.equal(count(/"msg":"datapath not as desired"/), healthLines, 'not every second');

    rename(renamed, b2.hostIf);
    await until('web ACTIVE', async () => (await status()).state === RuleState.RULE_STATE_ACTIVE);
    r = await send(7901);
    assert.equal(r.total, r.sent, `all delivered (${r.got})`);
    assert.ok(r.got[1] > 0, 'b2 gets flows again');
    await until('health SERVING', async () => (await health()) === SERVING);
    assert.equal(count(/"msg":"rule web is ACTIVE/), 2, 'the recovery logged once');
    // The same device came back (same ifindex): said as observed (missing at the last write, there now), not "a
    // new ifindex".
    assert.equal(count(/has a new ifindex/), 0, 'no new ifindex claimed');
    assert.equal(
      count(
        new RegExp(
          `"changes":\\{"web":"interface ${b2.hostIf} appeared \\(ifindex \\d+; missing when the rule was last written\\)`,
        ),
      ),
      1,
      'said to be there again',
    );
  });
});
