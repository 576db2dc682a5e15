/**
 * Interface conditions state what each interface is used for and what is true of it (docs/architecture.md, per-object
 * conditions), with real namespaces, veths and datagrams: an ingress has ProgramAttached; a backend's
 * egress, where no program is meant, has no ProgramAttached False/NotAttached (was: always, as if something
 * were missing) but EgressReady: True while it is up with carrier, False naming why when its veth peer or
 * itself goes down (was: no condition on the interface, only the rule said so), True again when it is back;
 * and FramesFit (True here: its MTU is the ingress's; egress-interface-truth.test.ts has it False).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { type Clients } from '../helpers/daemon.js';
import { kernelOnly, sh, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
const { CONDITION_STATUS_TRUE: TRUE, CONDITION_STATUS_FALSE: FALSE } = ConditionStatus;
const FITS = [
  'FramesFit',
  TRUE,
  'MTUFits',
  'its MTU (and its veth peer MTU) is at least every ingress MTU sending to it',
];

describe('interface conditions: what each interface is used for', kernelOnly(), () => {
  const lab = new Lab();
  let c: Clients;
  let vm: Host, b1: Host;

  before(async () => {
    ({ vm, b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    ({ c } = await lab.start(['--log-level', 'info']));
  });
  after(() => lab.destroy());

  const conds = async (name: string) =>
    (await c.interfaces.getInterface({ name })).interface!.conditions.map((x) => [
      x.type,
      x.status,
      x.reason,
      x.message,
    ]);
  const delivered = async (n = 20): Promise<number> => (await lab.send(7987, [b1], n, 1)).got[0];

  it('an ingress has ProgramAttached; an egress has EgressReady, False while it is down', async () => {
    await c.rules.createRule({
      rule: lab.rule('web', 7987, [backendOf(b1)]),
    });
    assert.deepEqual(
      (await conds(vm.hostIf)).map((x) => x.slice(0, 3)),
      [['ProgramAttached', TRUE, 'Attached']],
    );
    assert.deepEqual(await conds(b1.hostIf), [
      ['EgressReady', TRUE, 'Up', 'up with carrier (egress of rule/web)'],
      FITS,
    ]);
    assert.equal(await delivered(), 20);

    // Its veth peer down: no carrier here.
    sh('ip', ['-n', b1.netns, 'link', 'set', 'eth0', 'down']);
    try {
      await until('EgressReady false', async () => (await conds(b1.hostIf))[0][1] === FALSE, 5000);
      assert.deepEqual(await conds(b1.hostIf), [
        [
          'EgressReady',
          FALSE,
          'EgressDown',
          `egress ${b1.hostIf} has no carrier (nothing at its other end: for a veth, its peer is down) (egress of rule/web)`,
        ],
        FITS,
      ]);
      assert.equal(await delivered(), 0, 'nothing goes out of it');
    } finally {
      sh('ip', ['-n', b1.netns, 'link', 'set', 'eth0', 'up']);
    }
    await until('EgressReady true again', async () => (await conds(b1.hostIf))[0][1] === TRUE, 5000);
    // Itself down.
    sh('ip', ['link', 'set', b1.hostIf, 'down']);
    try {
      await until('EgressReady false', async () => (await conds(b1.hostIf))[0][1] === FALSE, 5000);
      assert.deepEqual((await conds(b1.hostIf))[0].slice(0, 4), [
        'EgressReady',
        FALSE,
        'EgressDown',
        `egress ${b1.hostIf} is down (egress of rule/web)`,
      ]);
    } finally {
      sh('ip', ['link', 'set', b1.hostIf, 'up']);
    }
    await until('EgressReady true again', async () => (await conds(b1.hostIf))[0][1] === TRUE, 5000);
    await until('delivered again', async () => (await delivered()) === 20, 10_000);
    await c.rules.deleteRule({ name: 'web', expectedGeneration: 0n });
  });
});
