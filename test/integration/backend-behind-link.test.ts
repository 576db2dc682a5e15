/**
 * A link from a rule's backend egress cuts the backend off: every frame arriving on that interface, its ARP
 * replies and answers to clients included, is redirected into the link before rules are matched (tenth
 * review, finding 2: `links connect <backend egress> <free veth>` was accepted without a word, then the rule
 * blamed the neighbour table, "no neighbour entry", and the backend got 0 of 300). Refused both ways, naming
 * the rule, the backend and the link; nothing applied: a link from a backend's egress (Connect, ApplyLinks),
 * and a backend on an interface a link forwards from (CreateRule). A one-way link INTO a backend's egress
 * does not touch what the backend sends: accepted. Real veths, a real daemon, real datagrams.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, ROOT, sh, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7621;

describe("a link from a rule's backend egress is refused, and a backend behind a link", kernelOnly(), () => {
  const lab = new Lab();
  let c: Clients;
  let b1: Host, b2: Host, xc: Host, x: Host, y: Host;

  before(async () => {
    ({ b1, b2, xc } = lab.addHosts({
      vm: '198.18.1.1/24',
      b1: '198.18.2.1/24',
      b2: '198.18.3.1/24',
      xc: '198.18.4.1/24',
    }));
    ({ x, y } = lab.addHosts({ x: '198.18.8.1/24', y: '198.18.8.2/24' }));
    ({ c } = await lab.start(['--log-level', 'info']));
    await c.rules.createRule({ rule: lab.rule('web', PORT, [backendOf(b1), backendOf(b2)]) });
    await lab.untilActive('web');
  });
  after(() => {
    lab.destroy();
    removeIproute2BpffsDirs();
  });

  const refused = (field: string, iface: string, backend: Host, to: string) => (e: Error & { code?: Status }) => {
    assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
    assert.match(
      e.message,
      new RegExp(
        `${field.replace(/[[\]]/g, '\\$&')}: ${iface} is the egress of rule web's backend ${backend.ip!.replace(/\./g, '\\.')} ` +
          `and the ingress of a link to ${to}: .*ARP replies and answers included.*none to this host`,
      ),
    );
    return true;
  };

  it('Connect and ApplyLinks of a link from a backend egress: refused, nothing applied, the backend keeps its share', async () => {
    await assert.rejects(
      c.links.connect({ link: { a: b2.hostIf, b: xc.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH } }),
      refused('link', b2.hostIf, b2, xc.hostIf),
    );
    await assert.rejects(
      c.links.applyLinks({ links: [{ a: xc.hostIf, b: b1.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH }] }),
      refused('links[0]', b1.hostIf, b1, xc.hostIf),
    );
    assert.deepEqual((await c.links.listLinks({})).links, [], 'no link');
    const r = await lab.send(PORT, [b1, b2], 200, 40);
    assert.equal(r.total, 200, JSON.stringify(r));
    assert.ok(r.got[0] > 0 && r.got[1] > 0, JSON.stringify(r.got));
    assert.equal((await lab.status('web')).state, RuleState.RULE_STATE_ACTIVE);
  });

  it("a one-way link into a backend's egress is accepted (what the backend sends is not redirected)", async () => {
    await c.links.connect({ link: { a: xc.hostIf, b: b2.hostIf, direction: LinkDirection.LINK_DIRECTION_A_TO_B } });
    assert.equal((await c.links.listLinks({})).links.length, 1);
    await c.links.applyLinks({ links: [] });
  });

  it('CreateRule with a backend on an interface a link forwards from: refused naming the backend field', async () => {
    await c.links.connect({ link: { a: x.hostIf, b: y.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH } });
    await assert.rejects(
      c.rules.createRule({ rule: { ...lab.rule('behind', PORT + 1, [backendOf(x)]) } }),
      (e: Error & { code?: Status }) => {
        assert.equal(e.code, Status.FAILED_PRECONDITION, e.message);
        assert.match(
          e.message,
          new RegExp(`rule\\.backends\\[0\\]\\.interface: ${x.hostIf} is the egress of rule behind's backend`),
        );
        return true;
      },
    );
    assert.deepEqual(
      (await c.rules.listRules({ pageSize: 0, pageToken: '' })).rules.map((r) => r.name),
      ['web'],
      'nothing created',
    );
    await c.links.applyLinks({ links: [] });
  });

  it("another XDP program on a backend's egress is named by the backend it may cut off (not only the neighbour table)", async () => {
    // What another tool or another xdpctld's link does to a backend's egress: every frame arriving from the
    // backend, its ARP replies included, is that program's first. Here it drops them all (baseline's sink).
    sh('ip', ['neigh', 'flush', 'dev', b2.hostIf]);
    sh('ip', [
      '-force',
      'link',
      'set',
      'dev',
      b2.hostIf,
      'xdpdrv',
      'obj',
      `${ROOT}build/bpf/baseline.bpf.o`,
      'sec',
      'xdp',
      'program',
      'base_sink',
    ]);
    try {
      const prog = JSON.parse(sh('ip', ['-j', 'link', 'show', 'dev', b2.hostIf]))[0].xdp.prog.id as number;
      await c.rules.createRule({ rule: lab.rule('dropped', PORT + 2, [backendOf(b2, '')]) });
      const named = new RegExp(
        `another XDP program \\(id ${prog}, name base_sink, native mode\\) is attached to ${b2.hostIf}: what arrives on it, ` +
          `backend ${b2.ip!.replace(/\./g, '\\.')}'s ARP replies and answers included, passes through that program`,
      );
      await until(
        'the backend names the program on its egress',
        async () => named.test((await lab.status('dropped')).backendStatus[0]?.message ?? ''),
        15_000,
      );
      const s = await lab.status('dropped');
      assert.equal(s.backendStatus[0].active, false, JSON.stringify(s.backendStatus[0]));
      assert.match(s.backendStatus[0].message, /^no neighbour entry for /, 'the verdict is still the neighbour table');
      assert.ok(
        s.warnings.some((w) => named.test(w)),
        JSON.stringify(s.warnings),
      );
      assert.notEqual(s.state, RuleState.RULE_STATE_ACTIVE);
    } finally {
      sh('ip', ['link', 'set', 'dev', b2.hostIf, 'xdpdrv', 'off']);
    }
    // Gone: the backend answers, is resolved, and nothing names a program any more.
    await until(
      'dropped ACTIVE once the program is gone',
      async () => (await lab.status('dropped')).state === RuleState.RULE_STATE_ACTIVE,
      15_000,
    );
    const s = await lab.status('dropped');
    assert.doesNotMatch(JSON.stringify(s), /another XDP program/);
    const r = await lab.send(PORT + 2, [b2], 50, 10);
    assert.equal(r.got[0], 50, JSON.stringify(r));
    await c.rules.deleteRule({ name: 'dropped', expectedGeneration: 0n });
  });
});
