/**
 * A rule whose backend's redirected datagrams come back to an ingress of the same rule (eleventh newcomer
 * review, finding 14): backend egress la, a veth whose peer lb (in the daemon's namespace, holding
 * the backend's address: "send it to a local service") is the rule's ingress. Each datagram went lb -> XDP ->
 * la -> lb -> XDP ... until its TTL ran out: 63 matched and 63 redirected per datagram, the rule ACTIVE with no
 * warning, while links that loop are refused. Now CreateRule, UpdateRule and ApplyRules (validate_only
 * included) refuse it with FAILED_PRECONDITION naming backends[i].interface, also when the way back goes
 * through a link; a rule whose destination the rewritten datagram no longer matches is not a loop (accepted).
 * Real veths, a real daemon.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, sh, shQuiet, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7641;

describe('a rule whose backend leads back to its own ingress is refused', kernelOnly(), () => {
  const lab = new Lab();
  let b1: Host;
  const la = `x${lab.id}la`;
  const lb = `x${lab.id}lb`;
  const lc = `x${lab.id}lc`;
  const ld = `x${lab.id}ld`;
  const addr = `198.18.40.2`;
  let lbMac = '';

  before(async () => {
    ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    lab.onDestroy(() => {
      shQuiet('ip', ['link', 'del', la]);
      shQuiet('ip', ['link', 'del', lc]);
    });
    for (const [a, b] of [
      [la, lb],
      [lc, ld],
    ]) {
      sh('ip', ['link', 'add', a, 'type', 'veth', 'peer', 'name', b]);
      sh('ip', ['link', 'set', a, 'up']);
      sh('ip', ['link', 'set', b, 'up']);
      sh('sysctl', ['-qw', `net.ipv4.conf.${a}.forwarding=0`]);
      sh('sysctl', ['-qw', `net.ipv4.conf.${b}.forwarding=0`]);
    }
    sh('ip', ['addr', 'add', `${addr}/24`, 'dev', lb]);
    lbMac = JSON.parse(sh('ip', ['-j', 'link', 'show', lb]))[0].address;
    await lab.start(['--log-level', 'info']);
  });
  after(() => lab.destroy());

  const local = () => ({ ip: addr, mac: lbMac, interface: la });
  const refused = (field: string, peer: string) => (e: Error & { code?: Status }) => {
    assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
    assert.match(
      e.message,
      new RegExp(
        `${field.replace(/[[\]]/g, '\\$&')}: its veth peer ${peer} is ingress of this rule: every redirected ` +
          'datagram would come back',
      ),
    );
    return true;
  };
  const names = async () => (await lab.c.rules.listRules({ pageSize: 0, pageToken: '' })).rules.map((r) => r.name);

  it('CreateRule: refused naming rule.backends[0].interface; nothing created', async () => {
    await assert.rejects(
      lab.c.rules.createRule({ rule: lab.rule('lp', PORT, [local()], [lb]) }),
      refused('rule.backends[0].interface', lb),
    );
    assert.deepEqual(await names(), []);
  });

  it('ApplyRules (and its validate_only): refused naming rules[0].backends[1].interface', async () => {
    for (const validateOnly of [true, false]) {
      await assert.rejects(
        lab.c.rules.applyRules({
          rules: [lab.rule('lp', PORT, [backendOf(b1), local()], [lb])],
          validateOnly,
        }),
        refused('rules[0].backends[1].interface', lb),
      );
    }
    assert.deepEqual(await names(), []);
  });

  it('UpdateRule adding such a backend: refused, the rule unchanged', async () => {
    await lab.c.rules.createRule({ rule: lab.rule('up', PORT, [backendOf(b1)], [lb]) });
    await assert.rejects(
      lab.c.rules.updateRule({ rule: lab.rule('up', PORT, [backendOf(b1), local()], [lb]) }),
      refused('rule.backends[1].interface', lb),
    );
    const r = (await lab.c.rules.getRule({ name: 'up' })).rule!;
    assert.deepEqual(
      r.backends.map((b) => b.ip),
      [b1.ip],
    );
    await lab.c.rules.deleteRule({ name: 'up' });
  });

  it('the way back through a link (la -> lb, link lb -> lc, lc -> ld, ingress ld): refused, naming the path', async () => {
    await lab.c.links.connect({ link: { a: lb, b: lc, direction: LinkDirection.LINK_DIRECTION_BOTH } });
    try {
      await assert.rejects(lab.c.rules.createRule({ rule: lab.rule('lp', PORT, [local()], [ld]) }), (e: Error) => {
        assert.match(
          e.message,
          new RegExp(
            `rule\\.backends\\[0\\]\\.interface: its veth peer ${lb} leads through links back to ${ld} ` +
              `\\(${la} -> ${lb} -> ${lc} -> ${ld}\\), an ingress of this rule: every redirected datagram would come back`,
          ),
        );
        return true;
      });
    } finally {
      await lab.c.links.applyLinks({ links: [] });
    }
  });

  it('a destination the rewritten datagram does not match is no loop: accepted', async () => {
    const rule = lab.rule('dst', PORT, [local()], [lb]);
    rule.match!.destination = '198.18.9.9';
    await lab.c.rules.createRule({ rule });
    await until('dst ACTIVE', async () => (await lab.status('dst')).state === RuleState.RULE_STATE_ACTIVE, 10_000);
    await lab.c.rules.deleteRule({ name: 'dst' });
  });
});
