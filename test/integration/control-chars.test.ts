/**
 * Device names with control characters (thirty-third review, finding 2): Linux takes an interface name with an
 * ESC sequence, DEL or C1 controls in it (`ip link add $'x\x1b[2J' type veth ...`; dev_valid_name refuses only
 * '/', ':' and white space). Where the daemon writes such a name as text (its log lines and audit records on
 * stdout, the Prometheus text, its error messages), no raw control character may reach a terminal: the JSON
 * log escapes DEL and C1 as `\u007f`... as pino does C0, the Prometheus label values and the error messages
 * show them as the CLI does (`\e`, `\xNN`, src/shared/visible.ts). Before: the log carried DEL and C1 raw,
 * the /metrics text and the error message ESC, DEL and C1 raw, and a rule with such an ingress failed INTERNAL
 * (`ip -j` writes the name raw into its JSON, which JSON.parse refused). Real veths named so, a real daemon.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, sh, shQuiet, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7661;
/** A raw control character a terminal would act on (tab and newline aside). */
// eslint-disable-next-line no-control-regex -- the control characters are what is looked for
const RAW = /[\x00-\x08\x0b-\x1f\x7f-\x9f]/;
const where = (text: string) => {
  const i = text.search(RAW);
  return i < 0 ? 'none' : JSON.stringify(text.slice(Math.max(0, i - 80), i + 40));
};

describe('device names with control characters reach no output raw', kernelOnly(), () => {
  const lab = new Lab();
  let b1: Host;
  const esc = `x${lab.id}\x1b[2J`; // ESC [ 2 J: "clear the screen"
  const c1 = `x${lab.id}\x7f\u009b`; // DEL and CSI (C1, two bytes in UTF-8)
  const escPeer = `x${lab.id}ep`;
  const c1Peer = `x${lab.id}cp`;

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    lab.onDestroy(() => {
      shQuiet('ip', ['link', 'del', escPeer]);
      shQuiet('ip', ['link', 'del', c1Peer]);
    });
    for (const [name, peer] of [
      [esc, escPeer],
      [c1, c1Peer],
    ]) {
      sh('ip', ['link', 'add', name, 'type', 'veth', 'peer', 'name', peer]);
      sh('ip', ['link', 'set', name, 'up']);
      sh('ip', ['link', 'set', peer, 'up']);
      sh('ethtool', ['-K', peer, 'gro', 'on']); // the backend's side, as a container's eth0 would be
    }
    await lab.start(['--log-level', 'debug', '--prometheus', '127.0.0.1:0']);
  });
  after(() => lab.destroy());

  it('a rule on them: the log and /metrics name them with no raw control character', async () => {
    const rule = lab.rule(
      'ctl',
      PORT,
      [backendOf(b1), { ip: '198.18.70.2', mac: '02:00:00:00:70:02', interface: esc }],
      [lab.vm.hostIf, c1],
    );
    await lab.c.rules.createRule({ rule });
    await until(
      'ctl written',
      async () => (await lab.status('ctl')).state !== RuleState.RULE_STATE_UNSPECIFIED,
      10_000,
    );
    // The daemon said them: the attach to c1 (log), the backend on esc (its series in /metrics).
    const text = await (await fetch(`http://${lab.d!.prometheus}/metrics`)).text();
    await until('the log names c1, escaped', async () => lab.d!.output.includes(`x${lab.id}\\u007f\\u009b`), 10_000);
    assert.ok(text.includes(`xdpctl_backend_interface="x${lab.id}\\\\e[2J"`), 'the backend series, visible');
    assert.equal(where(text), 'none', '/metrics');
    assert.equal(where(lab.d!.output), 'none', 'the log');
    await lab.c.rules.deleteRule({ name: 'ctl' });
  });

  it('an error naming them: no raw control character, shown as the CLI shows them', async () => {
    // A link through a veth pair forwards in a loop: refused, naming both ends.
    await assert.rejects(
      lab.c.links.connect({ link: { a: esc, b: escPeer, direction: LinkDirection.LINK_DIRECTION_BOTH } }),
      (e: Error & { code?: Status; details?: string }) => {
        assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
        assert.ok(e.message.includes(`x${lab.id}\\e[2J`), e.message);
        assert.equal(where(e.message), 'none');
        return true;
      },
    );
    assert.equal(where(lab.d!.output), 'none', 'the log and the audit record');
  });

  it('one as an ingress: attached (before: INTERNAL, `ip -j` JSON with a raw ESC refused by JSON.parse)', async () => {
    await lab.c.rules.createRule({ rule: lab.rule('ing', PORT + 1, [backendOf(b1)], [esc]) });
    await until(
      'the log names the attach to esc',
      async () => lab.d!.output.includes(`"ifname":"x${lab.id}\\u001b[2J"`),
      10_000,
    );
    assert.equal(where(lab.d!.output), 'none', 'the log');
    await lab.c.rules.deleteRule({ name: 'ing' });
  });
});
