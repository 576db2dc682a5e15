import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import YAML from 'yaml';

import { LinkDirection, ListLinksResponse } from '../../src/gen/xdpctl/v1/link.js';
import { ListRulesResponse, RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { ConfigError, isEmptyConfig, parseConfig, type RuleSpec } from '../../src/shared/config-file.js';
import { linkSpecToProto, ruleSpecToProto } from '../../src/shared/proto-convert.js';

describe('config file parsing', () => {
  it('accepts the xdp-xconnect format as is', () => {
    assert.deepEqual(parseConfig('links:\n  eth0: tap0\n  eth1: tap1\n'), {
      links: [
        { a: 'eth0', b: 'tap0', direction: 'both' },
        { a: 'eth1', b: 'tap1', direction: 'both' },
      ],
      rules: [],
      sections: { links: true, rules: false },
    });
  });

  it('stores a MAC in the canonical form the API echoes (lower case, colons)', () => {
    const c = parseConfig(
      'rules:\n  - name: web\n    port: 7999\n    ingress: [eth0]\n    backends:\n' +
        '      - {ip: 172.17.0.2, mac: "02-42-AC-11-00-02", interface: veth25}\n' +
        '      - {ip: 172.17.0.3, mac: "not a mac", interface: veth25}\n',
    );
    assert.equal(c.rules[0].backends[0].mac, '02:42:ac:11:00:02');
    assert.equal(c.rules[0].backends[1].mac, 'not a mac', 'left for validation to name');
  });

  it('reads rules with defaults', () => {
    const c = parseConfig(`
rules:
  - name: web
    port: 7999
    sources: 192.168.122.10
    ingress: [eth0]
    backends:
      - {ip: 172.17.0.2, mac: "02:42:ac:11:00:02", interface: veth25}
links:
  - {a: eth0, b: tap0, direction: a-to-b}
`);
    assert.equal(c.rules[0].sourcePrefixes[0], '192.168.122.10');
    assert.equal(c.rules[0].backends[0].weight, 1);
    assert.equal(c.rules[0].udpChecksum, 'update');
    assert.equal(c.links[0].direction, 'a-to-b');
  });

  it('reports every problem with its path', () => {
    assert.throws(
      () => parseConfig('rules:\n  - name: web\n    port: "x"\n    backends: [{ip: 1.2.3.4, iface: eth0}]\nextra: 1\n'),
      (e: unknown) => {
        assert.ok(e instanceof ConfigError);
        assert.deepEqual(e.problems.map((p) => p.field).sort(), [
          'extra',
          'rules[0].backends[0].iface',
          'rules[0].backends[0].interface',
          'rules[0].port',
        ]);
        return true;
      },
    );
  });

  it('quotes a key that is not plain in a field path (blanks, control characters, quotes), so the path is printable', () => {
    const field = (text: string) => {
      try {
        parseConfig(text);
      } catch (e) {
        assert.ok(e instanceof ConfigError);
        return e.problems.map((p) => p.field);
      }
      assert.fail(`${JSON.stringify(text)} was accepted`);
    };
    // "?\r" was found by the property test: the key is a bare carriage return.
    assert.deepEqual(field('?\r'), ['"\\r"']);
    assert.deepEqual(field('" x": 1'), ['" x"']);
    assert.deepEqual(field('"a\\u2028b": 1'), ['"a\\u2028b"']);
    assert.deepEqual(field('? \n'), ['""']);
    assert.deepEqual(field('links:\n  "e\\tth0": 1\n'), ['links."e\\tth0"']);
    assert.deepEqual(field('weird-key: 1'), ['weird-key']);
  });

  it('flags YAML syntax errors (half-written files) as such', () => {
    assert.throws(
      () => parseConfig('links:\n  eth0: [tap0\n'),
      (e: unknown) => e instanceof ConfigError && e.syntax,
    );
    assert.throws(() => parseConfig('links:\n  eth0: tap0\n  eth0: tap1\n'), ConfigError);
  });

  it('refuses a key without a value (a file still being written), but takes links: {} and rules: [] as empty', () => {
    for (const [text, field] of [
      ['links:\n', 'links'],
      ['links: null\n', 'links'],
      ['links: ~\n', 'links'],
      ['rules:\n', 'rules'],
      ['links: {eth0: tap0}\nrules:\n', 'rules'],
    ]) {
      assert.throws(
        () => parseConfig(text),
        (e: unknown) =>
          e instanceof ConfigError &&
          e.problems.some((v) => v.field === field && /has no value .*removes every/.test(v.description)),
        JSON.stringify(text),
      );
    }
    assert.deepEqual(parseConfig('links: {}\n'), { links: [], rules: [], sections: { links: true, rules: false } });
    assert.deepEqual(parseConfig('rules: []\n'), { links: [], rules: [], sections: { links: false, rules: true } });
  });
});

describe('the API form (what rules list / links list print with -o yaml or -o json)', () => {
  const web: RuleSpec = {
    name: 'web',
    protocol: 'udp',
    port: 7999,
    destination: '10.0.0.1',
    sourcePrefixes: ['192.168.122.0/24'],
    ingressInterfaces: ['eth0', 'eth1'],
    backends: [
      { ip: '172.17.0.2', mac: '02:42:ac:11:00:02', interface: 'veth25', weight: 3 },
      { ip: '172.17.0.3', mac: '', interface: 'veth26', weight: 0 },
    ],
    udpChecksum: 'zero',
    labels: { team: 'edge' },
  };
  /** What `rules list -o FORMAT` prints for these rules (output-only fields included). */
  const listed = (rules: RuleSpec[], format: 'yaml' | 'json') => {
    const json = ListRulesResponse.toJSON({
      rules: rules.map((r) => ({
        ...ruleSpecToProto(r),
        generation: 7n,
        createTime: new Date(0),
        updateTime: new Date(1000),
        status: {
          state: RuleState.RULE_STATE_ACTIVE,
          message: 'forwarding',
          backendStatus: [],
          warnings: [],
          conditions: [],
        },
      })),
      nextPageToken: '',
    }) as object;
    return format === 'yaml' ? YAML.stringify(json) : JSON.stringify(json, null, 2);
  };

  it('reads what rules list prints back to the same rules, in YAML and JSON', () => {
    const minimal: RuleSpec = {
      ...web,
      name: 'min',
      destination: '',
      sourcePrefixes: [],
      udpChecksum: 'update',
      labels: {},
    };
    for (const format of ['yaml', 'json'] as const) {
      const text = listed([web, minimal], format);
      assert.match(text, /match/);
      const cfg = parseConfig(text);
      assert.deepEqual(cfg.rules, [web, minimal], format);
      assert.deepEqual(cfg.sections, { links: false, rules: true });
    }
  });

  it('reads what links list prints back to the same links', () => {
    const text = YAML.stringify(
      ListLinksResponse.toJSON({
        links: [
          { ...linkSpecToProto({ a: 'eth0', b: 'tap0', direction: 'both' }), status: undefined },
          { a: 'eth1', b: 'tap1', direction: LinkDirection.LINK_DIRECTION_A_TO_B },
        ].map((l) => ({ ...l, status: { aToBActive: true, bToAActive: false, warnings: [], conditions: [] } })),
        nextPageToken: '',
      }),
    );
    assert.deepEqual(parseConfig(text).links, [
      { a: 'eth0', b: 'tap0', direction: 'both' },
      { a: 'eth1', b: 'tap1', direction: 'a-to-b' },
    ]);
  });

  it('accepts the proto field names too, and numbers for enums and a port in a string (proto3 JSON)', () => {
    const cfg = parseConfig(
      'rules:\n  - name: x\n    match: {port: "53", protocol: 1, source_prefixes: [10.0.0.0/8]}\n' +
        '    ingress_interfaces: [eth0]\n    udp_checksum: 2\n    backends: [{ip: 10.1.0.1, interface: eth1}]\n',
    );
    assert.equal(cfg.rules[0].port, 53);
    assert.deepEqual(cfg.rules[0].sourcePrefixes, ['10.0.0.0/8']);
    assert.deepEqual(cfg.rules[0].ingressInterfaces, ['eth0']);
    assert.equal(cfg.rules[0].udpChecksum, 'zero');
    assert.equal(cfg.rules[0].backends[0].weight, 1);
  });

  it('names every bad field of the API form by its path in the file', () => {
    const text =
      'rules:\n  - name: x\n    match: {port: seven, protocol: PROTOCOL_TCP, sourcePrefixes: 10.0.0.0/8, extra: 1}\n' +
      '    ingressInterfaces: eth0\n    udpChecksum: UDP_CHECKSUM_MODE_SOMETIMES\n    generation: "3"\n    colour: red\n' +
      '    backends: [{ip: 10.1.0.1, interface: eth1, weight: heavy, port: 1}]\n' +
      '  - {name: y, match: 7999, backends: []}\n' +
      'links:\n  - {a: eth0, b: tap0, direction: LINK_DIRECTION_SIDEWAYS, speed: 10}\n';
    assert.throws(
      () => parseConfig(text),
      (e: unknown) => {
        assert.ok(e instanceof ConfigError);
        assert.deepEqual(e.problems.map((p) => p.field).sort(), [
          'links[0].direction',
          'links[0].speed',
          'rules[0].backends[0].port',
          'rules[0].backends[0].weight',
          'rules[0].colour',
          'rules[0].ingressInterfaces',
          'rules[0].match.extra',
          'rules[0].match.port',
          'rules[0].match.protocol',
          'rules[0].match.sourcePrefixes',
          'rules[0].udpChecksum',
          'rules[1].match',
          'rules[1].match.port',
        ]);
        return true;
      },
    );
  });

  it('refuses a key given under both of its names', () => {
    assert.throws(
      () =>
        parseConfig(
          'rules:\n  - {name: x, match: {port: 1}, ingressInterfaces: [a], ingress_interfaces: [b], backends: []}\n',
        ),
      (e: unknown) =>
        e instanceof ConfigError &&
        e.problems.some((p) => p.field === 'rules[0].ingress_interfaces' && /twice/.test(p.description)),
    );
  });
});

describe('isEmptyConfig', () => {
  it('is true only for a file that holds no configuration at all', () => {
    for (const t of ['', '\n', '   \n\t\n', '# links: {eth0: tap0}\n', '---\n', '---\n# c\n...\n', '~\n', 'null\n']) {
      assert.equal(isEmptyConfig(t), true, JSON.stringify(t));
    }
    for (const t of ['links: {}\n', 'rules: []\n', 'links:\n', '{}\n', 'links: {eth0: tap0}\n', 'links: [\n', '0\n']) {
      assert.equal(isEmptyConfig(t), false, JSON.stringify(t));
    }
  });
});
