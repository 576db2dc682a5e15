/**
 * What the reconciler says when it writes a rule a start could not write (its only ingress missing then; a rule
 * with an ingress and a backend egress there is written at start without the missing part, as a pass writes it): what the
 * start found and what is there now, never "the host changed ... X is back" for interfaces that never went away
 * (was: every interface of such a rule was "back (ifindex N)", since the start recorded none of them). And at
 * run time an interface missing at a rule's last write "appeared": the daemon says it was missing then and is
 * there now, nothing it did not see. Over modelled maps (test/helpers/model-dataplane.ts);
 * test/integration/log-truth.test.ts proves the start case against the kernel.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { Controller } from '../../src/server/core/controller.js';
import type { RuleSpec } from '../../src/server/core/model.js';
import { captureLog, type LogLine as Line } from '../helpers/log-capture.js';
import { ModelDataplane } from '../helpers/model-dataplane.js';

const rule: RuleSpec = {
  name: 'web',
  protocol: 'udp',
  port: 5000,
  destination: '',
  sourcePrefixes: [],
  ingressInterfaces: ['in0'],
  backends: [
    { ip: '10.0.0.1', mac: '02:00:00:00:01:01', interface: 'b0', weight: 1 },
    { ip: '10.0.0.2', mac: '02:00:00:00:01:02', interface: 'b1', weight: 1 },
  ],
  udpChecksum: 'update',
  labels: {},
};

const START = 'rules waiting since the start for missing interfaces: written with the interfaces there now';
const HOST = 'the host changed: re-applying rules';

describe('resync: a rule a start could not write', () => {
  // The backends' hosts: each veth peer has its static MAC (confirmed; one nothing confirms is DEGRADED).
  const peers = (m: ModelDataplane) => {
    m.vethPeers.set('b0', { name: 'b0p', mac: '02:00:00:00:01:01', takesOthers: false });
    m.vethPeers.set('b1', { name: 'b1p', mac: '02:00:00:00:01:02', takesOthers: false });
  };
  /** A rule `web` written, the daemon stopped, `gone` deleted meanwhile, a new controller started over it. */
  const restart = async (gone: string) => {
    const dp = new ModelDataplane();
    peers(dp);
    const c = new Controller(dp, { mode: 'generic', fixVethPeers: false });
    await c.createRule(rule);
    const stored = c.storedState();
    const ifindex = (n: string) => dp.ifs.get(n)!.ifindex;
    const was = dp.ifs.get(gone)!;
    const dp2 = ModelDataplane.adopt(dp);
    peers(dp2);
    dp2.ifs.delete(gone);
    const lines: Line[] = [];
    const c2 = new Controller(dp2, { mode: 'generic', fixVethPeers: false, log: captureLog(lines) });
    await c2.restore(stored);
    return { dp2, c2, lines, ifindex, was };
  };

  it('a backend egress missing: written at start without it (DEGRADED), not waiting; it "appeared" later', async () => {
    const { dp2, c2, lines, was } = await restart('b1');
    // Judged at start as a pass judges it (twenty-second review, HIGH-1: it waited, INACTIVE, its match entries
    // removed until the first pass, although b0 and in0 were there all along).
    assert.equal(c2.getRule('web').status.state, 'degraded', c2.getRule('web').status.message);
    assert.match(c2.getRule('web').status.message, /10\.0\.0\.2@b1: egress b1 does not exist/);
    assert.ok(
      lines.some((l) =>
        /^restored: 1 of 1 rule .*; 1 rule written without its missing interfaces \(web: b1 missing\)$/.test(l.msg),
      ),
      JSON.stringify(lines),
    );
    await c2.resync();
    assert.deepEqual(
      lines.filter((l) => l.msg === START || l.msg === HOST),
      [],
      'written at start: nothing to write since',
    );
    assert.equal(c2.getRule('web').status.state, 'degraded');
    assert.deepEqual(
      lines.filter((l) => l.level === 'error'),
      [],
    );

    // b1 made again: missing at the rule's last write, there now. Said so, once.
    lines.length = 0;
    dp2.ifs.set('b1', { ...was, ifindex: 77 });
    await c2.resync();
    await c2.resync();
    const host = lines.filter((l) => l.msg === HOST);
    assert.equal(host.length, 1, JSON.stringify(lines));
    assert.deepEqual(host[0].fields.changes, {
      web: 'interface b1 appeared (ifindex 77; missing when the rule was last written)',
    });
    assert.deepEqual(
      lines.filter((l) => l.msg === START),
      [],
      'never waiting since the start',
    );
    assert.equal(c2.getRule('web').status.state, 'active');
  });

  it('its only ingress missing: waits, and is written with what the start found, not as interfaces that are "back"', async () => {
    const { dp2, c2, lines, ifindex, was } = await restart('in0');
    await c2.resync();
    const said = lines.filter((l) => l.msg === START);
    assert.equal(said.length, 1, JSON.stringify(lines));
    assert.deepEqual(said[0].fields.changes, {
      web:
        'waiting since the start for in0 (missing at start): written with the interfaces there now: b0 (ifindex ' +
        `${ifindex('b0')}), b1 (ifindex ${ifindex('b1')}) as found at start; in0 still missing`,
    });
    assert.deepEqual(
      lines.filter((l) => l.msg === HOST),
      [],
      'nothing changed on the host since the start',
    );
    assert.ok(!JSON.stringify(lines).includes('is back'), JSON.stringify(lines));
    assert.deepEqual(
      lines.filter((l) => l.level === 'error'),
      [],
    );

    // in0 made again: missing at the rule's last write, there now. Said so, once.
    lines.length = 0;
    dp2.ifs.set('in0', { ...was, ifindex: 77 });
    await c2.resync();
    await c2.resync();
    const host = lines.filter((l) => l.msg === HOST);
    assert.equal(host.length, 1, JSON.stringify(lines));
    assert.deepEqual(host[0].fields.changes, {
      web: 'interface in0 appeared (ifindex 77; missing when the rule was last written)',
    });
    assert.deepEqual(
      lines.filter((l) => l.msg === START),
      [],
      'written once at start: not again',
    );
    assert.equal(c2.getRule('web').status.state, 'active');
  });
});
