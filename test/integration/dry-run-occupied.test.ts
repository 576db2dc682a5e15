/**
 * A dry run (validate_only: `xdpctl ... --dry-run`) refuses what the change would be refused for, as far as the
 * host shows it before anything is written (proto: "with validate_only ... another XDP program on an ingress is
 * FAILED_PRECONDITION naming links[i], as without it"). Eleventh review, finding 2: with another XDP program on
 * the ingress, `links apply --dry-run` said "1 to create" (exit 0) and ApplyRules validate_only CREATE, while
 * the change itself was refused (EBUSY). Real veths, a real foreign program, a real daemon.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { ChangeAction } from '../../src/gen/xdpctl/v1/common.js';
import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { xdpctl, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, ROOT, sh } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7641;

describe('a dry run refuses an ingress another XDP program occupies, as the change would', kernelOnly(), () => {
  const lab = new Lab();
  let c: Clients;
  let d: DaemonProcess;
  let a: Host, b: Host, be: Host;
  let prog = 0;

  before(async () => {
    ({ vm: a, b, be } = lab.addHosts({ vm: '198.18.1.1/24', b: '198.18.2.1/24', be: '198.18.3.1/24' }));
    ({ c, d } = await lab.start(['--log-level', 'info']));
    sh('ip', [
      '-force',
      'link',
      'set',
      'dev',
      a.hostIf,
      'xdpdrv',
      'obj',
      `${ROOT}build/bpf/baseline.bpf.o`,
      'sec',
      'xdp',
    ]);
    prog = JSON.parse(sh('ip', ['-j', 'link', 'show', 'dev', a.hostIf]))[0].xdp.prog.id as number;
  });
  after(() => {
    try {
      sh('ip', ['link', 'set', 'dev', a.hostIf, 'xdpdrv', 'off']);
    } catch {
      // gone with the lab
    }
    lab.destroy();
    removeIproute2BpffsDirs();
  });

  const refused = (field: string) => (e: Error & { code?: Status }) => {
    assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
    assert.match(
      e.message,
      new RegExp(
        `${field.replace(/[[\].]/g, '\\$&')}: attach xdp to ${a.hostIf}: another XDP program \\(id ${prog}, native mode\\) is attached`,
      ),
    );
    return true;
  };

  it('ApplyLinks and ApplyRules with validate_only: FAILED_PRECONDITION naming the field, as the change itself', async () => {
    const links = [{ a: a.hostIf, b: b.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH }];
    await assert.rejects(c.links.applyLinks({ links, validateOnly: true }), refused('links[0]'));
    await assert.rejects(c.links.applyLinks({ links, validateOnly: false }), (e: Error & { code?: Status }) => {
      assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
      assert.match(e.message, new RegExp(`attach xdp to ${a.hostIf}: another XDP program \\(id ${prog}`));
      return true;
    });
    const rule = { ...lab.rule('dry', PORT, [backendOf(be)]), ingressInterfaces: [a.hostIf] };
    await assert.rejects(
      c.rules.applyRules({ rules: [rule], validateOnly: true }),
      refused('rules[0].ingress_interfaces'),
    );
    // The CLI's dry run: a refusal (exit 6), not "1 to create" with exit 0.
    const file = join(mkdtempSync(join(tmpdir(), 'xdpctl-test-dry-')), 'links.yaml');
    writeFileSync(file, `links:\n  ${a.hostIf}: ${b.hostIf}\n`);
    const r = await xdpctl(d.tcp, ['links', 'apply', '-f', file, '--dry-run']);
    rmSync(dirname(file), { recursive: true, force: true });
    assert.equal(r.code, 6, JSON.stringify(r));
    assert.match(r.stderr, new RegExp(`another XDP program \\(id ${prog}, native mode\\) is attached`));
    assert.deepEqual((await c.links.listLinks({})).links, [], 'nothing applied');
    assert.deepEqual((await c.rules.listRules({ pageSize: 0, pageToken: '' })).rules, [], 'nothing applied');
  });

  it('once the other program is gone, the same dry run says what would be created', async () => {
    sh('ip', ['link', 'set', 'dev', a.hostIf, 'xdpdrv', 'off']);
    const links = [{ a: a.hostIf, b: b.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH }];
    const r = await c.links.applyLinks({ links, validateOnly: true });
    assert.deepEqual(
      r.changes.map((x) => x.action),
      [ChangeAction.CHANGE_ACTION_CREATE],
    );
  });
});
