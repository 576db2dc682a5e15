/**
 * An interface's alternative name (`ip link property add dev X altname Y`, which the kernel resolves to X) is
 * not another interface (a review found: `rules add --ingress Y` accepted, ListInterfaces showed X and Y with
 * one ifindex, and deleting the rule on Y detached our program from X under 8 other rules: 26 datagrams lost,
 * then "detached by someone else: re-attached"; renaming X then flapped the program every ~2 s). Real
 * daemon, veths, altnames, datagrams:
 *  - a rule or link given an altname names the device: the reply says so (the altname and the device's name),
 *    the rule or link is stored, listed and counted under the device's name, ListInterfaces lists the device
 *    once and never the altname;
 *  - deleting the rule given the altname leaves our program on the device for the other rule: every datagram
 *    of a stream across the delete arrives, nothing detached or re-attached;
 *  - the device renamed (its altname stays): both rules' interface is missing, our program leaves the renamed
 *    device once, no re-attach, no flap; renamed back, everything as before;
 *  - a link given altnames: stored under the device names, Disconnect by the altnames removes it;
 *  - a link of a device to itself (one name twice, or a name and its altname) is refused naming link.b.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { ChangeAction } from '../../src/gen/xdpctl/v1/common.js';
import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, esc, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

describe('an alternative name of an interface is the same interface', kernelOnly(), () => {
  const lab = new Lab();
  const { count } = lab;
  let c: Clients;
  let vm: Host, b1: Host, h1: Host, h2: Host;
  const alt = (h: Host) => `${h.hostIf}-alt`;
  const ifindexOf = (name: string) => Number(sh('cat', [`/sys/class/net/${name}/ifindex`]).trim());
  const xdpOn = (ifname: string) => JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp !== undefined;

  before(async () => {
    ({ vm, b1, h1, h2 } = lab.addHosts({
      vm: '198.18.1.1/24',
      b1: '198.18.2.1/24',
      h1: '198.18.6.1/24',
      h2: '198.18.6.2/24',
    }));
    for (const h of [vm, b1, h1, h2]) sh('ip', ['link', 'property', 'add', 'dev', h.hostIf, 'altname', alt(h)]);
    ({ c } = await lab.start(['--log-level', 'info']));
  });
  // A renamed veth would escape the hosts' removal: its name put back first.
  lab.onDestroy(() => {
    shQuiet('ip', ['link', 'set', 'dev', `${vm.hostIf}X`, 'name', vm.hostIf]);
  });
  after(() => lab.destroy());

  it('a rule given altnames names the devices: said in the reply, stored and listed under the device names', async () => {
    await c.rules.createRule({ rule: lab.rule('web', 7831, [backendOf(b1)]) });
    const r = (
      await c.rules.createRule({
        rule: lab.rule('al', 7832, [backendOf(b1, b1.mac, alt(b1))], [alt(vm)]),
      })
    ).rule!;
    assert.deepEqual(r.ingressInterfaces, [vm.hostIf], 'stored under the device name');
    assert.equal(r.backends[0].interface, b1.hostIf);
    assert.deepEqual(r.status!.warnings.slice(0, 2), [
      `rule.ingress_interfaces[0]: interface ${alt(vm)} is an alternative name of ${vm.hostIf} (ifindex ${ifindexOf(vm.hostIf)}): ${vm.hostIf} is stored`,
      `rule.backends[0].interface: interface ${alt(b1)} is an alternative name of ${b1.hostIf} (ifindex ${ifindexOf(b1.hostIf)}): ${b1.hostIf} is stored`,
    ]);
    assert.equal(r.status!.state, RuleState.RULE_STATE_ACTIVE);
    const got = (await c.rules.getRule({ name: 'al' })).rule!;
    assert.ok(!got.status!.warnings.some((w) => w.includes('alternative name')), 'said in that reply only');
    const names = (await c.interfaces.listInterfaces({})).interfaces.map((i) => i.name).sort();
    assert.deepEqual(names, [vm.hostIf, b1.hostIf].sort(), 'each device once, never its altname');
    // The same rule sent again by the altnames is the rule as stored: unchanged.
    const again = await c.rules.applyRules({
      rules: [
        lab.rule('web', 7831, [backendOf(b1)]),
        lab.rule('al', 7832, [backendOf(b1, b1.mac, alt(b1))], [alt(vm)]),
      ],
      validateOnly: false,
    });
    assert.deepEqual(
      again.changes.map((x) => [x.name, x.action]),
      [
        ['al', ChangeAction.CHANGE_ACTION_UNCHANGED],
        ['web', ChangeAction.CHANGE_ACTION_UNCHANGED],
      ],
    );
    const applied = again.rules.find((x) => x.name === 'al')!;
    assert.match(applied.status!.warnings[0], new RegExp(`interface ${esc(alt(vm))} is an alternative name of`));
  });

  it('deleting the rule given the altname keeps our program on the device for the other rule: no datagram lost', async () => {
    const at = lab.d!.output.length;
    const done = await lab.stream(b1, 7831, 3);
    await sleep(800);
    await c.rules.deleteRule({ name: 'al' });
    const r = await done();
    assert.equal(r.got, r.sent, `web received every datagram across the delete (${r.got} of ${r.sent})`);
    assert.ok(xdpOn(vm.hostIf), 'our program is still on the device');
    await sleep(1500);
    const out = lab.d!.output.slice(at);
    assert.doesNotMatch(out, /"msg":"detached"/, 'nothing detached');
    assert.doesNotMatch(out, /re-attached/, 'nothing re-attached');
  });

  it('the device renamed (its altname stays): missing under its name, our program leaves it once, no flap; renamed back: as before', async () => {
    await c.rules.createRule({ rule: lab.rule('al', 7832, [backendOf(b1)], [alt(vm)]) });
    const at = lab.d!.output.length;
    const renamed = `${vm.hostIf}X`;
    sh('ip', ['link', 'set', 'dev', vm.hostIf, 'down']);
    sh('ip', ['link', 'set', 'dev', vm.hostIf, 'name', renamed]);
    sh('ip', ['link', 'set', 'dev', renamed, 'up']);
    await until('our program off the renamed device', () => !xdpOn(renamed), 4000);
    await sleep(5000); // passes every second: a flap would re-attach it within ~2 s
    assert.ok(!xdpOn(renamed), 'still off');
    const out = lab.d!.output.slice(at);
    assert.equal(out.split('\n').filter((l) => /"msg":"attached"/.test(l)).length, 0, 'never re-attached');
    assert.equal(out.split('\n').filter((l) => /re-attached/.test(l)).length, 0);
    assert.equal(out.split('\n').filter((l) => /"msg":"detached"/.test(l)).length, 1, 'detached once');
    for (const name of ['web', 'al']) {
      const st = await lab.status(name);
      assert.equal(st.state, RuleState.RULE_STATE_INACTIVE, name);
      assert.match(st.message, new RegExp(`interface ${vm.hostIf} does not exist`), name);
    }

    sh('ip', ['link', 'set', 'dev', renamed, 'down']);
    sh('ip', ['link', 'set', 'dev', renamed, 'name', vm.hostIf]);
    sh('ip', ['link', 'set', 'dev', vm.hostIf, 'up']);
    await until('web and al ACTIVE', async () => {
      const s = await Promise.all(['web', 'al'].map((n) => lab.status(n)));
      return s.every((x) => x.state === RuleState.RULE_STATE_ACTIVE);
    });
    assert.ok(xdpOn(vm.hostIf));
    const w = await lab.send(7831, [b1], 100, 10);
    const a = await lab.send(7832, [b1], 100, 10);
    assert.deepEqual([w.total, a.total], [100, 100]);
    assert.equal(count(/interface .* is an alternative name of .* not a device's name/), 0);
  });

  it('a link given altnames: stored under the device names; Disconnect by the altnames removes it', async () => {
    const l = (await c.links.connect({ link: { a: alt(h1), b: alt(h2) } })).link!;
    assert.deepEqual([l.a, l.b], [h1.hostIf, h2.hostIf]);
    assert.deepEqual(l.status!.warnings.slice(0, 2), [
      `link.a: interface ${alt(h1)} is an alternative name of ${h1.hostIf} (ifindex ${ifindexOf(h1.hostIf)}): ${h1.hostIf} is stored`,
      `link.b: interface ${alt(h2)} is an alternative name of ${h2.hostIf} (ifindex ${ifindexOf(h2.hostIf)}): ${h2.hostIf} is stored`,
    ]);
    assert.equal(lab.topo.ping('h1', h2.ip!), true);
    const names = (await c.interfaces.listInterfaces({})).interfaces.map((i) => i.name);
    assert.ok(!names.some((n) => n.endsWith('-alt')), `no altname listed: ${names.join(', ')}`);
    await c.links.disconnect({ a: alt(h1), b: alt(h2) });
    assert.deepEqual((await c.links.listLinks({})).links, []);
    await until('our program off h1 and h2', () => !xdpOn(h1.hostIf) && !xdpOn(h2.hostIf), 4000);
  });

  // A review found `links connect X X`, and `--one-way X Y` with Y an altname of X, accepted ("connected"):
  // every frame X took in went back out of it (pings to the host on X 100 % lost), listed as both directions.
  it('a link of a device to itself is refused naming link.b, by its name or an altname; nothing applied', async () => {
    const refused = async (call: Promise<unknown>, re: RegExp) =>
      assert.rejects(call, (e: { code: number; details: string }) => {
        assert.equal(e.code, Status.INVALID_ARGUMENT, e.details);
        assert.match(e.details, re);
        return true;
      });
    const mustDiffer = (f: string) => new RegExp(`^${esc(f)}\\.b: must differ from ${esc(f)}\\.a`);
    await refused(c.links.connect({ link: { a: h1.hostIf, b: h1.hostIf } }), mustDiffer('link'));
    await refused(
      c.links.connect({ link: { a: h1.hostIf, b: alt(h1), direction: LinkDirection.LINK_DIRECTION_A_TO_B } }),
      new RegExp(`^link\\.b: must differ from link\\.a: ${esc(h1.hostIf)} and ${esc(alt(h1))} name one device`),
    );
    await refused(
      c.links.applyLinks({ links: [{ a: alt(h2), b: h2.hostIf, direction: 0 }], validateOnly: false }),
      new RegExp(
        `^links\\[0\\]\\.b: must differ from links\\[0\\]\\.a: ${esc(alt(h2))} and ${esc(h2.hostIf)} name one device`,
      ),
    );
    await refused(
      c.links.applyLinks({ links: [{ a: h2.hostIf, b: h2.hostIf, direction: 0 }], validateOnly: true }),
      mustDiffer('links[0]'),
    );
    assert.deepEqual((await c.links.listLinks({})).links, [], 'nothing applied');
    assert.ok(!xdpOn(h1.hostIf) && !xdpOn(h2.hostIf), 'no program attached');
    assert.equal(lab.topo.ping('h1', h2.ip!), false, 'h1 and h2 are not linked');
  });
});
