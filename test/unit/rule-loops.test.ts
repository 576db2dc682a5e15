/**
 * core/rule-loops.ts findHostLoops, the reconciler's use of the change-time loop check: which backends close a
 * cycle of rules on a host given as veth peers and links, and the words the statuses and the log say it in.
 * Pure: no kernel (test/integration/rule-loop-host.test.ts drives it against real veths).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { RuleSpec } from '../../src/server/core/model.js';
import {
  changeLoopText,
  findHostLoops,
  hostLoopProblem,
  loopRule,
  type LoopGraph,
  type LoopRule,
  loopUnknownText,
  RuleLoops,
  upperReceives,
} from '../../src/server/core/rule-loops.js';
import type { RuleStatus } from '../../src/server/core/model.js';
import { loopUnknownStatus } from '../../src/server/core/rule-status.js';
import type { UpperLink } from '../../src/server/core/dataplane.js';

const rule = (name: string, ingress: string[], backends: [ip: string, iface: string][], sources: string[] = []) =>
  loopRule(name, {
    name,
    port: 7000,
    destination: '',
    sourcePrefixes: sources,
    ingressInterfaces: ingress,
    backends: backends.map(([ip, iface]) => ({ ip, mac: '', interface: iface, weight: 1 })),
    labels: {},
    udpChecksum: 'update',
  } as unknown as RuleSpec);

/** A graph of `rules` over veth pairs `pairs` (both ways) and link directions `links`. */
function graph(rules: LoopRule[], pairs: [string, string][], links: [string, string][] = []): LoopGraph {
  const peer = new Map<string, string>();
  for (const [a, b] of pairs) peer.set(a, b).set(b, a);
  const byKey = new Map<string, LoopRule>();
  for (const r of rules) for (const i of r.spec.ingressInterfaces) byKey.set(`${i}|${r.spec.port}|`, r);
  const linkTo = new Map(links);
  return { peerOf: (n) => peer.get(n), linkTo, inForce: linkTo, ruleAt: (k) => byKey.get(k) };
}
const startsOf = (rules: LoopRule[]) => rules.flatMap((r) => r.spec.backends.map((b) => [r, b] as const));

describe('loops the host makes (rule-loops findHostLoops)', () => {
  it('two rules around each other: both backends, one loop, named by rules and interfaces', () => {
    const ra = rule('ra', ['vm', 'mb'], [['10.0.2.1', 'e']]);
    const rb = rule('rb', ['md'], [['10.0.41.2', 'ma']]);
    const f = findHostLoops(
      graph(
        [ra, rb],
        [
          ['e', 'md'],
          ['ma', 'mb'],
        ],
      ),
      startsOf([ra, rb]),
    );
    assert.deepEqual([...f.backends.keys()], ['ra|10.0.2.1@e', 'rb|10.0.41.2@ma']);
    assert.match(
      f.backends.get('ra|10.0.2.1@e')!,
      /^in a forwarding loop the host made, of rules ra -> rb -> ra through e -> md \[rule rb\], ma -> mb \[rule ra\]: every redirected datagram would come back/,
    );
    assert.match(f.backends.get('rb|10.0.41.2@ma')!, /of rules rb -> ra -> rb through ma -> mb \[rule ra\], e -> md/);
    assert.equal(f.loops.size, 1);
    assert.match(
      hostLoopProblem([...f.loops.values()][0]),
      /^forwarding loop made by the host: rules ra -> rb -> ra .*\(rule ra's backend 10\.0\.2\.1 on e, rule rb's backend 10\.0\.41\.2 on ma\)$/,
    );
  });

  it('a chain is no loop; a backend leading into a loop it is not on stays; disjoint sources make none', () => {
    const ra = rule('ra', ['mb'], [['10.0.2.1', 'e']]); // e -> md: rb
    const rb = rule('rb', ['md'], [['10.0.9.9', 'b1']]); // b1's peer elsewhere
    assert.equal(findHostLoops(graph([ra, rb], [['e', 'md']]), startsOf([ra, rb])).backends.size, 0);
    // rc loops on itself (f -> fp, its ingress); ra's backend leads into rc but ra is not on that loop.
    const rc2 = rule('rc', ['md', 'fp'], [['10.0.3.3', 'f']]);
    const f = findHostLoops(
      graph(
        [ra, rc2],
        [
          ['e', 'md'],
          ['f', 'fp'],
        ],
      ),
      startsOf([ra, rc2]),
    );
    assert.deepEqual([...f.backends.keys()], ['rc|10.0.3.3@f']);
    assert.match(f.backends.get('rc|10.0.3.3@f')!, /of rules rc -> rc through f -> fp \[rule rc\]/);
    const sa = rule('ra', ['mb'], [['10.0.2.1', 'e']], ['198.18.60.0/24']);
    const sb = rule('rb', ['md'], [['10.0.41.2', 'ma']], ['198.18.61.0/24']);
    const pairs: [string, string][] = [
      ['e', 'md'],
      ['ma', 'mb'],
    ];
    assert.equal(findHostLoops(graph([sa, sb], pairs), startsOf([sa, sb])).backends.size, 0);
  });

  it('through a link direction: followed as the datapath does, named on the way', () => {
    const ra = rule('ra', ['mb'], [['10.0.2.1', 'e']]);
    // e's peer p is a link ingress to q; q's peer is mb, ra's ingress.
    const f = findHostLoops(
      graph(
        [ra],
        [
          ['e', 'p'],
          ['q', 'mb'],
        ],
        [['p', 'q']],
      ),
      startsOf([ra]),
    );
    assert.match(f.backends.get('ra|10.0.2.1@e')!, /of rules ra -> ra through e -> p -> q -> mb \[rule ra\]/);
  });

  it('names the host gave are made visible', () => {
    const ra = rule('ra', ['m\x1bb'], [['10.0.2.1', 'e']]);
    const f = findHostLoops(graph([ra], [['e', 'm\x1bb']]), startsOf([ra]));
    assert.match(f.backends.get('ra|10.0.2.1@e')!, /through e -> m\\eb \[rule ra\]/);
  });
});

describe('loops through a bridge, a bond, a team (a veth peer that is a port: its master)', () => {
  /** `graph` with masters: port -> [master, kind]. */
  const withMasters = (g: LoopGraph, masters: Record<string, [string, string]>): LoopGraph => ({
    ...g,
    masterOf: (n) => (masters[n] ? { name: masters[n][0], kind: masters[n][1] } : undefined),
  });

  it('a peer that is a port of the ingress bridge: the loop, said with the bridge', () => {
    const r = rule('brl', ['br'], [['10.77.9.1', 'la']]);
    const g = withMasters(graph([r], [['la', 'lb']]), { lb: ['br', 'bridge'] });
    const c = new RuleLoops(g).cycleFrom(r, r.spec.backends[0]);
    assert.ok(c);
    assert.deepEqual(c.steps[0].path, ['la', 'lb', 'br']);
    assert.equal(
      changeLoopText(c.steps, 'brl'),
      'its veth peer lb is a port of bridge br: a datagram no rule takes on the port goes up to br, an ingress of ' +
        'this rule (la -> lb -> br)',
    );
    const f = findHostLoops(g, startsOf([r]));
    assert.match(f.backends.get('brl|10.77.9.1@la')!, /of rules brl -> brl through la -> lb -> br \[rule brl\]/);
  });

  it('no master, or a master that is no bridge, bond or team (a vrf): no loop', () => {
    const r = rule('brl', ['br'], [['10.77.9.1', 'la']]);
    assert.equal(new RuleLoops(graph([r], [['la', 'lb']])).cycleFrom(r, r.spec.backends[0]), undefined);
    const vrf = withMasters(graph([r], [['la', 'lb']]), { lb: ['br', 'vrf'] });
    assert.equal(new RuleLoops(vrf).cycleFrom(r, r.spec.backends[0]), undefined);
  });

  it('a bond port, the bond a port of the bridge: followed up both', () => {
    const r = rule('brl', ['br'], [['10.77.9.1', 'la']]);
    const g = withMasters(graph([r], [['la', 'lb']]), { lb: ['bo', 'bond'], bo: ['br', 'bridge'] });
    const c = new RuleLoops(g).cycleFrom(r, r.spec.backends[0]);
    assert.deepEqual(c?.steps[0].path, ['la', 'lb', 'bo', 'br']);
    assert.match(
      changeLoopText(c.steps, 'brl'),
      /^its veth peer lb is a port of bond bo, itself a port of bridge br: /,
    );
  });

  it('a rule on the port that takes the datagram first: it never goes up to the bridge (no loop)', () => {
    const r = rule('brl', ['br'], [['10.77.9.1', 'la']]);
    const port = rule('port', ['lb'], [['10.0.2.1', 'e']]);
    const g = withMasters(graph([r, port], [['la', 'lb']]), { lb: ['br', 'bridge'] });
    assert.equal(new RuleLoops(g).cycleFrom(r, r.spec.backends[0]), undefined);
    // ... unless its sources leave some: those go up.
    const some = rule('port', ['lb'], [['10.0.2.1', 'e']], ['10.1.0.0/16']);
    const g2 = withMasters(graph([r, some], [['la', 'lb']]), { lb: ['br', 'bridge'] });
    assert.ok(new RuleLoops(g2).cycleFrom(r, r.spec.backends[0]));
  });

  it('a master loop (a device its own master, as a bad read could say) ends', () => {
    const r = rule('brl', ['x'], [['10.77.9.1', 'la']]);
    const g = withMasters(graph([r], [['la', 'lb']]), { lb: ['br', 'bridge'], br: ['lb', 'bridge'] });
    assert.equal(new RuleLoops(g).cycleFrom(r, r.spec.backends[0]), undefined);
  });
});

describe('loops through devices stacked on a veth peer (macvlan, ipvlan, vlan: Dataplane.upperLinks)', () => {
  /** `graph` with upper devices: lower -> its uppers. */
  const withUppers = (g: LoopGraph, ups: Record<string, UpperLink[]>): LoopGraph => ({
    ...g,
    uppersOf: (n) => ups[n] ?? [],
  });
  const stacked = (name: string, kind: string, more: Partial<UpperLink> = {}): UpperLink => ({
    name,
    kind,
    via: 'stacked',
    ...more,
  });

  it('a macvlan on the peer, in every mode, is an ingress of the rule: the loop, said with the macvlan', () => {
    const r = rule('mvl', ['mv'], [['10.77.9.1', 'la']]);
    for (const mode of ['bridge', 'vepa', 'private', 'passthru', 'source']) {
      const g = withUppers(graph([r], [['la', 'lb']]), { lb: [stacked('mv', 'macvlan', { mode })] });
      const c = new RuleLoops(g).cycleFrom(r, r.spec.backends[0]);
      assert.deepEqual(c?.steps[0].path, ['la', 'lb', 'mv'], mode);
      assert.equal(
        changeLoopText(c.steps, 'mvl'),
        `its veth peer lb is the lower device of macvlan mv (mode ${mode}): a datagram no rule takes on lb goes ` +
          'up to mv, an ingress of this rule (la -> lb -> mv)',
      );
    }
    const f = findHostLoops(
      withUppers(graph([r], [['la', 'lb']]), { lb: [stacked('mv', 'macvtap', { mode: 'bridge' })] }),
      startsOf([r]),
    );
    assert.match(f.backends.get('mvl|10.77.9.1@la')!, /of rules mvl -> mvl through la -> lb -> mv \[rule mvl\]/);
  });

  it('recursively: a macvlan on a bridge whose port is the peer; one of two macvlans; ipvlan l2/l3 but not l3s', () => {
    const r = rule('mvl', ['mv2'], [['10.77.9.1', 'la']]);
    const g = withUppers(graph([r], [['la', 'lb']]), {
      lb: [{ name: 'br', kind: 'bridge', via: 'master', vlanFiltering: false }],
      br: [stacked('mv1', 'macvlan', { mode: 'bridge' }), stacked('mv2', 'macvlan', { mode: 'private' })],
    });
    const c = new RuleLoops(g).cycleFrom(r, r.spec.backends[0]);
    assert.deepEqual(c?.steps[0].path, ['la', 'lb', 'br', 'mv2']);
    assert.match(
      changeLoopText(c.steps, 'mvl'),
      /^its veth peer lb is a port of bridge br, itself the lower device of macvlan mv2 \(mode private\): a datagram no rule takes on the port goes up to mv2/,
    );
    const iv = rule('ivl', ['iv'], [['10.77.9.1', 'la']]);
    for (const [mode, loops] of [
      ['l2', true],
      ['l3', true],
      ['l3s', false],
    ] as const) {
      const gi = withUppers(graph([iv], [['la', 'lb']]), { lb: [stacked('iv', 'ipvlan', { mode })] });
      assert.equal(new RuleLoops(gi).cycleFrom(iv, iv.spec.backends[0]) !== undefined, loops, mode);
    }
  });

  it('a vlan gets only tagged frames: not on the peer (what a rule redirects is untagged), on a vlan-filtering bridge yes', () => {
    const r = rule('vl', ['lb.10'], [['10.77.9.1', 'la']]);
    const onPeer = withUppers(graph([r], [['la', 'lb']]), { lb: [stacked('lb.10', 'vlan', { vlan: '802.1Q 10' })] });
    assert.equal(new RuleLoops(onPeer).cycleFrom(r, r.spec.backends[0]), undefined);
    assert.deepEqual(new RuleLoops(onPeer).cannotTell(r, r.spec.backends[0]), []);
    const rb = rule('vl', ['br.10'], [['10.77.9.1', 'la']]);
    const bridge = (vlanFiltering: boolean) =>
      withUppers(graph([rb], [['la', 'lb']]), {
        lb: [{ name: 'br', kind: 'bridge', via: 'master', vlanFiltering }],
        br: [stacked('br.10', 'vlan', { vlan: '802.1Q 10' })],
      });
    assert.equal(new RuleLoops(bridge(false)).cycleFrom(rb, rb.spec.backends[0]), undefined);
    assert.deepEqual(new RuleLoops(bridge(true)).cycleFrom(rb, rb.spec.backends[0])?.steps[0].path, [
      'la',
      'lb',
      'br',
      'br.10',
    ]);
  });

  it('an upper whose receive path is not known: no loop claimed, cannot be told, said', () => {
    const r = rule('u', ['x'], [['10.77.9.1', 'la']]);
    const g = withUppers(graph([r], [['la', 'lb']]), {
      lb: [{ name: 'ovs', kind: 'openvswitch', via: 'master' }],
    });
    const loops = new RuleLoops(g);
    assert.equal(loops.cycleFrom(r, r.spec.backends[0]), undefined);
    assert.deepEqual(loops.cannotTell(r, r.spec.backends[0]), [
      'lb is a port of openvswitch ovs: a kind of master whose receive path xdpctld does not follow',
    ]);
    const f = findHostLoops(g, startsOf([r]));
    assert.equal(f.backends.size, 0);
    assert.equal(
      f.unknown.get('u|10.77.9.1@la'),
      'backend 10.77.9.1 on la: whether its redirected datagrams come back to an ingress of a rule (a forwarding ' +
        'loop) cannot be told: lb is a port of openvswitch ovs: a kind of master whose receive path xdpctld does not follow',
    );
    // A known kind that does not receive (a tunnel through it, an ipvlan in l3s): nothing to say.
    const quiet = withUppers(graph([r], [['la', 'lb']]), {
      lb: [stacked('t', 'gretap'), stacked('i', 'ipvlan', { mode: 'l3s' })],
    });
    assert.deepEqual(new RuleLoops(quiet).cannotTell(r, r.spec.backends[0]), []);
  });

  it('upperReceives: what each kind takes of what its lower receives', () => {
    assert.deepEqual(upperReceives({ name: 'b', kind: 'bond', via: 'master' }, false), {
      receives: true,
      tagged: false,
    });
    assert.deepEqual(upperReceives({ name: 'v', kind: 'vrf', via: 'master' }, false), { receives: false });
    assert.deepEqual(upperReceives(stacked('v', 'vlan'), true), { receives: true, tagged: false });
    assert.ok('unknown' in upperReceives(stacked('m', 'macsec'), false));
    assert.ok('unknown' in upperReceives(stacked('i', 'ipvlan'), false)); // mode not read
    assert.ok('unknown' in upperReceives(stacked('w', 'wireguard'), false));
  });
});

describe('loops through what a bridge forwards (its other ports whose veth peers are ingresses: receiveTree)', () => {
  /** `graph` with bridges: bridge -> its ports (each port's master the bridge). */
  const withBridges = (g: LoopGraph, bridges: Record<string, string[]>): LoopGraph => ({
    ...g,
    uppersOf: (n) =>
      Object.entries(bridges)
        .filter(([, ports]) => ports.includes(n))
        .map(([br]) => ({ name: br, kind: 'bridge', via: 'master' as const })),
    portsOf: (br) => bridges[br] ?? [],
  });

  it("the ingress's peer and the backend's peer ports of one bridge: the loop, said with the bridge's forward", () => {
    const r = rule('loop', ['va'], [['10.9.9.9', 'vb']]);
    const g = withBridges(
      graph(
        [r],
        [
          ['va', 'vap'],
          ['vb', 'vbp'],
        ],
      ),
      { br9: ['vap', 'vbp'] },
    );
    const c = new RuleLoops(g).cycleFrom(r, r.spec.backends[0]);
    assert.deepEqual(c?.steps[0].path, ['vb', 'vbp', 'br9', 'vap', 'va']);
    assert.equal(
      changeLoopText(c.steps, 'loop'),
      'its veth peer vbp is a port of bridge br9, which forwards frames out of its port vap, whose veth peer is ' +
        'va: a datagram no rule takes on the port reaches va, an ingress of this rule (vb -> vbp -> br9 -> vap -> va)',
    );
    const f = findHostLoops(g, startsOf([r]));
    assert.match(f.backends.get('loop|10.9.9.9@vb')!, /through vb -> vbp -> br9 -> vap -> va \[rule loop\]/);
  });

  it('no forward without the ports read (a fake), to a port that is no veth, or from a port whose peer is elsewhere', () => {
    const r = rule('loop', ['va'], [['10.9.9.9', 'vb']]);
    const g = withBridges(
      graph(
        [r],
        [
          ['va', 'vap'],
          ['vb', 'vbp'],
        ],
      ),
      { br9: ['vap', 'vbp'] },
    );
    assert.equal(new RuleLoops({ ...g, portsOf: undefined }).cycleFrom(r, r.spec.backends[0]), undefined);
    const eth = withBridges(graph([r], [['vb', 'vbp']]), { br9: ['eth0', 'vbp'] });
    assert.equal(new RuleLoops(eth).cycleFrom(r, r.spec.backends[0]), undefined);
    const away = withBridges(graph([r], [['va', 'vap']]), { br9: ['vap', 'vbp'] });
    assert.equal(new RuleLoops(away).cycleFrom(r, r.spec.backends[0]), undefined);
  });

  it('recursively: bridge to bridge through a veth pair, and through a link direction on a forwarded-to peer', () => {
    const r = rule('loop', ['va'], [['10.9.9.9', 'vb']]);
    const g = withBridges(
      graph(
        [r],
        [
          ['va', 'vap'],
          ['vb', 'vbp'],
          ['x1', 'x2'],
        ],
      ),
      {
        b1: ['vbp', 'x1'],
        b2: ['x2', 'vap'],
      },
    );
    assert.deepEqual(new RuleLoops(g).cycleFrom(r, r.spec.backends[0])?.steps[0].path, [
      'vb',
      'vbp',
      'b1',
      'x1',
      'x2',
      'b2',
      'vap',
      'va',
    ]);
    // b1 forwards out of y, whose peer yp is a link's ingress to z, whose peer zp is a port of b2.
    const viaLink = withBridges(
      graph(
        [r],
        [
          ['va', 'vap'],
          ['vb', 'vbp'],
          ['y', 'yp'],
          ['z', 'zp'],
        ],
        [['yp', 'z']],
      ),
      {
        b1: ['vbp', 'y'],
        b2: ['zp', 'vap'],
      },
    );
    const c = new RuleLoops(viaLink).cycleFrom(r, r.spec.backends[0]);
    assert.deepEqual(c?.steps[0].path, ['vb', 'vbp', 'b1', 'y', 'yp', 'z', 'zp', 'b2', 'vap', 'va']);
    // As a change of that link: the link is named.
    const before = { ...viaLink, inForce: new Map<string, string>() };
    assert.equal(new RuleLoops(before).cycleFrom(r, r.spec.backends[0])?.newLink, 'yp');
  });
});

describe('a backend whose way back cannot be told, in its rule status (rule-status loopUnknownStatus)', () => {
  it("said in the rule's warnings, the state unchanged; other rules' backends untouched", () => {
    const s = {
      state: 'active',
      message: 'forwarding to 1 backend(s)',
      backends: [],
      warnings: [],
    } as unknown as RuleStatus;
    const b = { ip: '10.77.9.1', interface: 'la' };
    const why = loopUnknownText(b, [
      'lb is a port of openvswitch ovs: a kind of master whose receive path xdpctld does not follow',
    ]);
    const said = loopUnknownStatus(s, { name: 'u', backends: [b] }, new Map([['u|10.77.9.1@la', why]]));
    assert.equal(said.state, 'active');
    assert.deepEqual(said.warnings, [why]);
    assert.equal(loopUnknownStatus(s, { name: 'other', backends: [b] }, new Map([['u|10.77.9.1@la', why]])), s);
  });
});

describe('what transmitting on a device makes appear where (receiveTree transmit: macvlan, ipvlan, vlan, bond, a peer elsewhere)', () => {
  /** A device of a fake host: its kind, mode, lower (stacked on), master, veth peer here, or peer elsewhere. */
  interface Dev {
    kind?: string;
    mode?: string;
    lower?: string;
    master?: string;
    peer?: string;
    away?: { where: string; leadsOn?: string };
  }
  /** A LoopGraph of `rules` over a host of `devs` (veth peers both ways), as the adapter would read it. */
  const host = (rules: LoopRule[], devs: Record<string, Dev>, links: [string, string][] = []): LoopGraph => {
    const byKey = new Map<string, LoopRule>();
    for (const r of rules) for (const i of r.spec.ingressInterfaces) byKey.set(`${i}|${r.spec.port}|`, r);
    const d = (n: string) => devs[n];
    const linkTo = new Map(links);
    return {
      peerOf: (n) => d(n)?.peer,
      peerAway: (n) => d(n)?.away,
      deviceOf: (n) =>
        d(n) && {
          ...(d(n).kind !== undefined ? { kind: d(n).kind } : {}),
          ...(d(n).mode !== undefined ? { mode: d(n).mode } : {}),
          ...(d(n).lower !== undefined ? { lower: d(n).lower } : {}),
        },
      uppersOf: (n) => [
        ...(d(n)?.master ? [{ name: d(n).master!, kind: d(d(n).master!)?.kind, via: 'master' as const }] : []),
        ...Object.entries(devs)
          .filter(([, x]) => x.lower === n)
          .map(([name, x]) => ({
            name,
            via: 'stacked' as const,
            ...(x.kind ? { kind: x.kind } : {}),
            ...(x.mode ? { mode: x.mode } : {}),
          })),
      ],
      portsOf: (m) =>
        Object.entries(devs)
          .filter(([, x]) => x.master === m)
          .map(([name]) => name),
      linkTo,
      inForce: linkTo,
      ruleAt: (k) => byKey.get(k),
    };
  };
  const veth = (a: string, b: string, more: Record<string, Dev> = {}): Record<string, Dev> => ({
    [a]: { kind: 'veth', peer: b, ...more[a] },
    [b]: { kind: 'veth', peer: a, ...more[b] },
  });

  it('a macvlan that is a bridge port: what the bridge forwards to it leaves through its lower, a veth whose peer is the ingress', () => {
    // Review case 1: backend egress e (peer ep, a port of br), macvlan mv (on veth lo, peer lop) a port of br, ingress lop.
    const r = rule('m1', ['lop'], [['10.1.1.1', 'e']]);
    const g = host([r], {
      ...veth('e', 'ep', { ep: { master: 'br' } }),
      ...veth('lo', 'lop'),
      br: { kind: 'bridge' },
      mv: { kind: 'macvlan', mode: 'bridge', lower: 'lo', master: 'br' },
    });
    const c = new RuleLoops(g).cycleFrom(r, r.spec.backends[0]);
    assert.deepEqual(c?.steps[0].path, ['e', 'ep', 'br', 'mv', 'lo', 'lop']);
    assert.equal(
      changeLoopText(c.steps, 'm1'),
      'its veth peer ep is a port of bridge br, which forwards frames out of its port mv, a macvlan (mode bridge) ' +
        'that sends them out of its lower device lo, whose veth peer is lop: a datagram no rule takes on the port ' +
        'reaches lop, an ingress of this rule (e -> ep -> br -> mv -> lo -> lop)',
    );
  });

  it('a backend egress that is a macvlan (every mode): sent out of its lower, whose veth peer is the ingress', () => {
    const r = rule('m2', ['lop'], [['10.1.1.1', 'mv']]);
    for (const mode of ['bridge', 'vepa', 'private', 'passthru', 'source']) {
      const g = host([r], { ...veth('lo', 'lop'), mv: { kind: 'macvlan', mode, lower: 'lo' } });
      const c = new RuleLoops(g).cycleFrom(r, r.spec.backends[0]);
      assert.deepEqual(c?.steps[0].path, ['mv', 'lo', 'lop'], mode);
      assert.equal(
        changeLoopText(c.steps, 'm2'),
        `its egress mv is a macvlan (mode ${mode}) that sends them out of its lower device lo, whose veth peer is ` +
          'lop: a datagram no rule takes on the way reaches lop, an ingress of this rule (mv -> lo -> lop)',
      );
    }
    // The lower's peer leads nowhere: no loop, nothing unknown.
    const none = host([r], {
      ...veth('lo', 'lx'),
      lop: { kind: 'veth' },
      mv: { kind: 'macvlan', mode: 'bridge', lower: 'lo' },
    });
    const e = new RuleLoops(none).explore(r, r.spec.backends[0]);
    assert.equal(e.cycle, undefined);
    assert.deepEqual([...e.unknown], []);
  });

  it('two macvlans on one lower: a bridge-mode sibling gets the frame (a receive on the lower, then up); private, vepa, passthru do not', () => {
    const r = rule('m3', ['mb'], [['10.1.1.1', 'ma']]);
    for (const [a, b, loops] of [
      ['bridge', 'bridge', true],
      ['bridge', 'private', false],
      ['bridge', 'vepa', false],
      ['private', 'bridge', false],
      ['vepa', 'bridge', false],
      ['vepa', 'vepa', false],
    ] as const) {
      const g = host([r], {
        lo: { kind: 'veth' }, // its peer elsewhere, leading nowhere there
        ma: { kind: 'macvlan', mode: a, lower: 'lo' },
        mb: { kind: 'macvlan', mode: b, lower: 'lo' },
      });
      const c = new RuleLoops(g).cycleFrom(r, r.spec.backends[0]);
      assert.equal(c !== undefined, loops, `${a} -> ${b}`);
      if (!c) continue;
      assert.deepEqual(c.steps[0].path, ['ma', 'lo', 'mb']);
      assert.equal(
        changeLoopText(c.steps, 'm3'),
        'its egress ma is a macvlan (mode bridge) that hands a frame to a macvlan in bridge mode on its lower device ' +
          'lo as a receive on lo, itself the lower device of macvlan mb (mode bridge): a datagram no rule takes on the ' +
          'way reaches mb, an ingress of this rule (ma -> lo -> mb)',
      );
    }
    // Host-made (the reconciler): found the same way.
    const g = host([r], {
      lo: { kind: 'veth' },
      ma: { kind: 'macvlan', mode: 'bridge', lower: 'lo' },
      mb: { kind: 'macvlan', mode: 'bridge', lower: 'lo' },
    });
    assert.match(findHostLoops(g, startsOf([r])).backends.get('m3|10.1.1.1@ma')!, /through ma -> lo -> mb \[rule m3\]/);
  });

  it('ipvlan: a sibling by address (every mode), the lower in l2; vlan: tagged on the lower (no rule there), untagged on a vlan above its peer', () => {
    const r = rule('i1', ['ib'], [['10.1.1.1', 'ia']]);
    for (const mode of ['l2', 'l3', 'l3s']) {
      const g = host([r], {
        lo: { kind: 'veth' },
        ia: { kind: 'ipvlan', mode, lower: 'lo' },
        ib: { kind: 'ipvlan', mode: 'l3s', lower: 'lo' },
      });
      assert.deepEqual(new RuleLoops(g).cycleFrom(r, r.spec.backends[0])?.steps[0].path, ['ia', 'ib'], mode);
    }
    const onLower = rule('i2', ['lo'], [['10.1.1.1', 'ia']]);
    for (const [mode, loops] of [
      ['l2', true],
      ['l3', false],
    ] as const) {
      const g = host([onLower], { lo: { kind: 'veth' }, ia: { kind: 'ipvlan', mode, lower: 'lo' } });
      assert.equal(new RuleLoops(g).cycleFrom(onLower, onLower.spec.backends[0]) !== undefined, loops, mode);
    }
    // ipvlan out of its lower, a veth whose peer is the ingress.
    const out = rule('i3', ['lop'], [['10.1.1.1', 'ia']]);
    const gi = host([out], { ...veth('lo', 'lop'), ia: { kind: 'ipvlan', mode: 'l3', lower: 'lo' } });
    assert.deepEqual(new RuleLoops(gi).cycleFrom(out, out.spec.backends[0])?.steps[0].path, ['ia', 'lo', 'lop']);
    // vlan: the peer gets it tagged (a rule there does not match it), a vlan on the peer untagged (a rule there does).
    const devs = { ...veth('lo', 'lop'), v: { kind: 'vlan', lower: 'lo' }, 'lop.5': { kind: 'vlan', lower: 'lop' } };
    const onPeer = rule('v1', ['lop'], [['10.1.1.1', 'v']]);
    assert.equal(new RuleLoops(host([onPeer], devs)).cycleFrom(onPeer, onPeer.spec.backends[0]), undefined);
    const onVlan = rule('v2', ['lop.5'], [['10.1.1.1', 'v']]);
    assert.deepEqual(new RuleLoops(host([onVlan], devs)).cycleFrom(onVlan, onVlan.spec.backends[0])?.steps[0].path, [
      'v',
      'lo',
      'lop',
      'lop.5',
    ]);
  });

  it('a bond egress: out of each slave; a kind not followed and a peer elsewhere that leads on: cannot be told, no loop', () => {
    const r = rule('b1', ['s2p'], [['10.1.1.1', 'bo']]);
    const g = host([r], {
      bo: { kind: 'bond' },
      ...veth('s1', 's1p', { s1: { master: 'bo' } }),
      ...veth('s2', 's2p', { s2: { master: 'bo' } }),
    });
    assert.deepEqual(new RuleLoops(g).cycleFrom(r, r.spec.backends[0])?.steps[0].path, ['bo', 's2', 's2p']);
    const u = rule(
      'u1',
      ['x'],
      [
        ['10.1.1.1', 'gre1'],
        ['10.1.1.2', 'ev'],
        ['10.1.1.3', 'ok'],
      ],
    );
    const gu = host([u], {
      gre1: { kind: 'gretap' },
      ev: { kind: 'veth', away: { where: 'eth0 in netns blue', leadsOn: 'is a port of bridge br0 there' } },
      ok: { kind: 'veth', away: { where: 'eth0 in netns red' } },
    });
    const loops = new RuleLoops(gu);
    assert.deepEqual(loops.cannotTell(u, u.spec.backends[0]), [
      'gre1 is a gretap: what it transmits goes where xdpctld does not follow',
    ]);
    assert.deepEqual(loops.cannotTell(u, u.spec.backends[1]), [
      "ev's veth peer eth0 in netns blue is a port of bridge br0 there: xdpctld does not follow frames in another network namespace",
    ]);
    assert.deepEqual(loops.cannotTell(u, u.spec.backends[2]), [], 'a peer there that leads nowhere: the walk ends');
    const f = findHostLoops(gu, startsOf([u]));
    assert.equal(f.backends.size, 0);
    assert.match(
      f.unknown.get('u1|10.1.1.2@ev')!,
      /backend 10\.1\.1\.2 on ev: .*cannot be told: ev's veth peer eth0 in netns blue/,
    );
  });
});
