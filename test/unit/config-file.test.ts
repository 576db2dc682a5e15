import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ConfigError, isEmptyConfig, parseConfig } from '../../src/shared/config-file.js';

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
