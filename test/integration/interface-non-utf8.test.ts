/**
 * Interface names that are not UTF-8 (newcomer review, LOW): Linux names are bytes (`ip link add $'x\xff1' ...`), a
 * request's names UTF-8 strings, so no client can give such a name exactly. What a client can give is the name as it
 * was shown to it: escaped (`x\xff1`, as the daemon shows it), decoded with U+FFFD (a UTF-8 decoder's reading of
 * `ip -j` or /sys/class/net) or as Latin-1 (`xÿ1`). A rule or link given one of those is refused FAILED_PRECONDITION
 * naming the device (its ifindex, its name escaped), saying its name is not UTF-8 and how to rename it; before:
 * NOT_FOUND "interface ... does not exist". A device carrying our program renamed to such a name: our program leaves it
 * (detached by its ifindex), the log names it escaped; before: the detach looked the name up by its U+FFFD text and
 * failed ENODEV, our program stayed on a device nothing listed. Real veths named with a 0xff byte.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, sh, shQuiet, until } from '../helpers/env.js';
import { backendOf, esc, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7671;

describe('interface names that are not UTF-8', kernelOnly(), () => {
  const lab = new Lab();
  let b1: Host;
  /** `x<id>` 0xff `a` (printf's octal form for the shell), and the peer. */
  const bad = `x${lab.id}\\377a`;
  const peer = `x${lab.id}pa`;
  /** A veth our program goes on, renamed to `x<id>` 0xff `r` later. */
  const ren = `x${lab.id}r`;
  const renBad = `x${lab.id}\\377r`;
  const renPeer = `x${lab.id}rp`;
  const ip = (cmd: string) => sh('sh', ['-c', cmd]);
  let ifindex = 0;

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    lab.onDestroy(() => {
      // Deleting a veth deletes its peer: by the peer's (UTF-8) name, whatever the other end is called now.
      shQuiet('ip', ['link', 'del', peer]);
      shQuiet('ip', ['link', 'del', renPeer]);
    });
    ip(`ip link add "$(printf '${bad}')" type veth peer name ${peer} && ip link set ${peer} up`);
    ip(`ip link set "$(printf '${bad}')" up`);
    ip(`ip link add ${ren} type veth peer name ${renPeer} && ip link set ${ren} up && ip link set ${renPeer} up`);
    ifindex = Number(readFileSync(`/sys/class/net/${peer}/iflink`, 'utf8')); // its peer's: the device named so
    assert.ok(ifindex > 0);
    await lab.start(['--log-level', 'info']);
  });
  after(() => lab.destroy());

  const shown = `x${lab.id}\\xffa`;
  const refused = (e: Error & { code?: Status }) => {
    assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
    assert.match(
      e.message,
      new RegExp(
        `names no device: it can only mean the device with ifindex ${ifindex}, named ${esc(shown)}, a name that is ` +
          `not UTF-8 .*rename that device to a UTF-8 name to use it: ip link set dev "\\$\\(printf '${esc(bad)}'\\)" name NEWNAME`,
      ),
    );
    assert.doesNotMatch(e.message, /does not exist/);
    return true;
  };

  for (const [how, name] of [
    ['escaped (as shown)', `x${lab.id}\\xffa`],
    ['decoded with U+FFFD', `x${lab.id}\ufffda`],
    ['decoded as Latin-1', `x${lab.id}\u00ffa`],
  ] as const) {
    it(`a rule's ingress given ${how}: FAILED_PRECONDITION naming the device and why, not "does not exist"`, async () => {
      await assert.rejects(lab.c.rules.createRule({ rule: lab.rule('nu', PORT, [backendOf(b1)], [name]) }), refused);
    });
  }

  it("a backend's interface and a link's end given so: the same", async () => {
    const rule = lab.rule('nub', PORT, [{ ...backendOf(b1), interface: `x${lab.id}\ufffda` }]);
    await assert.rejects(lab.c.rules.createRule({ rule }), (e: Error & { code?: Status }) => {
      assert.match(e.message, /^.*rule\.backends\[0\]\.interface: /);
      return refused(e);
    });
    await assert.rejects(
      lab.c.links.connect({ link: { a: lab.vm.hostIf, b: shown, direction: LinkDirection.LINK_DIRECTION_A_TO_B } }),
      refused,
    );
    assert.equal((await lab.c.rules.listRules({})).rules.length, 0, 'nothing applied');
  });

  it('a device with our program renamed to such a name: our program leaves it, the log names it escaped', async () => {
    await lab.c.rules.createRule({ rule: lab.rule('ren', PORT + 1, [backendOf(b1)], [ren]) });
    await until(
      'ren attached',
      async () => (await lab.status('ren')).state !== RuleState.RULE_STATE_UNSPECIFIED,
      10_000,
    );
    const renIndex = Number(readFileSync(`/sys/class/net/${ren}/ifindex`, 'utf8'));
    const progOn = () =>
      (JSON.parse(sh('ip', ['-j', 'link', 'show'])) as { ifindex: number; xdp?: unknown }[]).find(
        (l) => l.ifindex === renIndex,
      )?.xdp !== undefined;
    await until('our program on the veth', async () => progOn(), 10_000);
    ip(`ip link set ${ren} name "$(printf '${renBad}')"`);
    const line = `${ren} was renamed to x${lab.id}\\\\xffr: our XDP program is detached from it`;
    await until(
      () =>
        `the log says "${line}": ${lab
          .d!.output.split('\n')
          .filter((l) => l.includes('renamed'))
          .join('\n')}`,
      async () => lab.d!.output.includes(line),
      15_000,
    );
    assert.equal(progOn(), false, 'our program is not on the renamed device');
    assert.doesNotMatch(lab.d!.output, /\ufffd/, 'no name said with U+FFFD');
    const listed = (await lab.c.interfaces.listInterfaces({})).interfaces.map((i) => i.name);
    assert.ok(!listed.some((n) => n.includes('\ufffd')), JSON.stringify(listed));
    await lab.c.rules.deleteRule({ name: 'ren' });
  });
});
