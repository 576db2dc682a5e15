/**
 * A condition's lastTransitionTime is when the daemon observed the transition, with a real daemon, real
 * interfaces and a restart (docs/architecture.md: "a status states only what was observed"). A reviewer saw every
 * transition time equal to the first read after the change, and after a restart equal to the daemon's
 * start. Here:
 *  - a rule's Ready condition carries the time of its CreateRule, not of a read 1.5 s later;
 *  - its only backend's egress goes down and nobody reads for 3 s: Ready False carries the time the
 *    reconciler saw it (within a pass of the fault), not the read's;
 *  - the daemon restarts with the egress still down: Ready is still False and its time is unset (unknown:
 *    it held since before this start), not the restart time;
 *  - the egress comes back: Ready True carries the time of the pass that saw it.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ConditionStatus, type Condition } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

/** How long after a host change the reconciler may see it (a pass a second, and one at each rtnetlink event). */
const PASS_MS = 2000;

describe('condition transition times are observation times, also across a restart', kernelOnly(), () => {
  const lab = new Lab();
  const { topo } = lab;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let vm: Host, b1: Host;

  before(async () => {
    ({ vm, b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }, { routeVm: false }));
    ({ d, c } = await lab.start(['--log-level', 'info']));
  });
  after(() => lab.destroy());

  const ready = async (): Promise<{ state: RuleState; cond: Condition; at: number }> => {
    const st = await lab.status('web');
    return { state: st.state, cond: st.conditions.find((x) => x.type === 'Ready')!, at: Date.now() };
  };
  const within = (t: Date | undefined, lo: number, hi: number, what: string) => {
    assert.ok(t, `${what}: a transition time`);
    assert.ok(
      t.getTime() >= lo - 5 && t.getTime() <= hi,
      `${what}: ${t.toISOString()} not within ${new Date(lo).toISOString()} .. ${new Date(hi).toISOString()}`,
    );
  };

  it('the write, the pass that saw a fault, unknown after a restart, the pass that saw the recovery', async () => {
    const t0 = Date.now();
    await c.rules.createRule({
      rule: lab.rule('web', 7997, [backendOf(b1)]),
    });
    const t1 = Date.now();
    await sleep(1500);
    let r = await ready();
    assert.equal(r.cond.status, ConditionStatus.CONDITION_STATUS_TRUE, r.cond.message);
    within(r.cond.lastTransitionTime, t0, t1, 'Ready True: the CreateRule');

    // The fault, and no read for 3 s.
    const tDown = Date.now();
    sh('ip', ['link', 'set', b1.hostIf, 'down']);
    await sleep(3000);
    r = await ready();
    assert.equal(r.cond.status, ConditionStatus.CONDITION_STATUS_FALSE, r.cond.message);
    within(r.cond.lastTransitionTime, tDown, tDown + PASS_MS, 'Ready False: the pass that saw the egress down');
    assert.ok(r.at - r.cond.lastTransitionTime!.getTime() >= 1000, 'not the time of the read');
    const again = await ready();
    assert.deepEqual(again.cond.lastTransitionTime, r.cond.lastTransitionTime, 'stable across reads');

    // A restart with the egress still down: the status held since before the start, for a time it cannot know.
    assert.equal(await d!.stop('SIGTERM'), 0);
    ({ d, c } = await lab.start(['--log-level', 'info']));
    await until('web not ACTIVE after the restart', async () => (await ready()).state !== RuleState.RULE_STATE_ACTIVE);
    await sleep(1500); // the first passes after the start have run
    r = await ready();
    assert.equal(r.cond.status, ConditionStatus.CONDITION_STATUS_FALSE, r.cond.message);
    assert.equal(r.cond.lastTransitionTime, undefined, 'unknown, not the restart time');

    // The recovery, observed by a pass of this daemon.
    const tUp = Date.now();
    sh('ip', ['link', 'set', b1.hostIf, 'up']);
    await sleep(3000);
    r = await ready();
    assert.equal(r.cond.status, ConditionStatus.CONDITION_STATUS_TRUE, r.cond.message);
    within(r.cond.lastTransitionTime, tUp, tUp + PASS_MS, 'Ready True again: the pass that saw the egress up');
    await c.rules.deleteRule({ name: 'web', expectedGeneration: 0n });
  });

  it('every condition of a link, of its interfaces and of a rule written by this daemon has a transition time', async () => {
    // A review saw links' Active and FramesFit, and their interfaces' ProgramAttached, without one.
    const xa = topo.addHost('xa', '198.18.9.1/24');
    const xb = topo.addHost('xb', '198.18.9.2/24');
    const t0 = Date.now();
    await c.links.connect({ link: { a: xa.hostIf, b: xb.hostIf } });
    await c.rules.createRule({
      rule: lab.rule('web2', 7996, [backendOf(b1)]),
    });
    const t1 = Date.now();
    await sleep(2500); // passes have run
    const observedConditions = async () => {
      const link = (await c.links.listLinks({})).links.find((l) => l.a === xa.hostIf)!;
      const all: [string, Condition][] = [
        ...link.status!.conditions.map((x): [string, Condition] => [`link ${x.type}`, x]),
        ...(await c.rules.getRule({ name: 'web2' })).rule!.status!.conditions.map((x): [string, Condition] => [
          `rule ${x.type}`,
          x,
        ]),
      ];
      for (const name of [xa.hostIf, xb.hostIf, vm.hostIf, b1.hostIf]) {
        const i = (await c.interfaces.getInterface({ name })).interface!;
        all.push(...i.conditions.map((x): [string, Condition] => [`interface ${name} ${x.type}`, x]));
      }
      return all;
    };
    const seen = await observedConditions();
    assert.ok(seen.length >= 8, `conditions seen: ${seen.map(([w]) => w).join(', ')}`);
    // The writes' time, or (an interface only used as an egress) the first pass after them.
    for (const [what, cond] of seen) within(cond.lastTransitionTime, t0, t1 + PASS_MS, what);

    // A restart with nothing changed: every one of them held since before the start, for a time this
    // daemon cannot know (unset), none at the restart time.
    assert.equal(await d!.stop('SIGTERM'), 0);
    ({ d, c } = await lab.start(['--log-level', 'info']));
    await sleep(2500);
    const after = await observedConditions();
    assert.deepEqual(
      after.filter(([, x]) => x.lastTransitionTime !== undefined).map(([w, x]) => `${w} ${x.status} ${x.reason}`),
      [],
      'no transition time after a restart that changed nothing',
    );
    assert.deepEqual(
      after.map(([w, x]) => `${w} ${x.status}`),
      seen.map(([w, x]) => `${w} ${x.status}`),
      'the same statuses',
    );
    await c.links.disconnect({ a: xa.hostIf, b: xb.hostIf });
    await c.rules.deleteRule({ name: 'web2', expectedGeneration: 0n });
  });
});
