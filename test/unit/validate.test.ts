/**
 * Field validation (core/validate.ts) on values that are well formed but
 * cannot work: a backend MAC that is broadcast, multicast (group) or all
 * zero; a backend or match address that is no unicast host (RFC 1812 5.3.7);
 * a bad label, named by its key. Each is INVALID_ARGUMENT naming the exact
 * field, whatever else the rule holds. The gRPC, HTTP/JSON and config-file
 * paths all call this (their integration tests show the same fields there).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import type { RuleSpec } from '../../src/server/core/model.js';
import { AUDIT_OUTCOME, reportChanges, type OutcomeBox } from '../../src/server/services/audit-outcome.js';
import { validateLink, validateRule } from '../../src/server/core/validate.js';

function rule(over: Partial<RuleSpec> = {}): RuleSpec {
  return {
    name: 'web',
    protocol: 'udp',
    port: 7999,
    destination: '',
    sourcePrefixes: [],
    ingressInterfaces: ['eth0'],
    backends: [
      { ip: '10.0.0.1', mac: '02:00:00:00:00:01', interface: 'veth1', weight: 1 },
      { ip: '10.0.0.2', mac: '', interface: 'veth1', weight: 1 },
      { ip: '10.0.0.3', mac: '02:00:00:00:00:03', interface: 'veth1', weight: 1 },
    ],
    udpChecksum: 'update',
    labels: {},
    ...over,
  };
}

const fields = (r: RuleSpec, prefix = 'rule') => validateRule(r, prefix).map((v) => v.field);

function withBackend2(b: Partial<RuleSpec['backends'][number]>): RuleSpec {
  const r = rule();
  r.backends[2] = { ...r.backends[2], ...b };
  return r;
}

describe('validation of values that are well formed but cannot work', () => {
  it('accepts unicast MACs, an empty MAC (resolved from the neighbour table) and locally administered ones', () => {
    assert.deepEqual(fields(rule()), []);
    for (const mac of ['02:42:ac:11:00:02', '00:00:00:00:00:01', 'fe:ff:ff:ff:ff:ff', 'AA-BB-CC-DD-EE-FF']) {
      assert.deepEqual(fields(withBackend2({ mac })), [], mac);
    }
  });

  it('refuses a broadcast, multicast or all-zero backend MAC, naming rule.backends[2].mac', () => {
    for (const mac of [
      'ff:ff:ff:ff:ff:ff',
      'FF-FF-FF-FF-FF-FF',
      '01:00:5e:00:00:fb', // IPv4 multicast (RFC 1112 6.4)
      '33:33:00:00:00:01', // IPv6 multicast (RFC 2464 7)
      '01:80:c2:00:00:00', // IEEE 802.1D bridge group address
      '03:00:00:00:00:00',
      '00:00:00:00:00:00',
    ]) {
      const v = validateRule(withBackend2({ mac }), 'rule');
      assert.deepEqual(
        v.map((x) => x.field),
        ['rule.backends[2].mac'],
        mac,
      );
      assert.match(v[0].description, /broadcast|multicast|all-zero/, mac);
    }
    // The config file's path names it the same way, under rules[i].
    assert.deepEqual(fields(withBackend2({ mac: 'ff:ff:ff:ff:ff:ff' }), 'rules[4]'), ['rules[4].backends[2].mac']);
  });

  it('refuses backend and match addresses that are no unicast host (RFC 1812 5.3.7)', () => {
    for (const ip of [
      '0.0.0.0',
      '0.1.2.3',
      '127.0.0.1',
      '224.0.0.251',
      '239.255.255.250',
      '240.0.0.1',
      '255.255.255.255',
    ]) {
      assert.deepEqual(fields(withBackend2({ ip })), ['rule.backends[2].ip'], ip);
      assert.deepEqual(fields(rule({ destination: ip })), ['rule.match.destination'], ip);
    }
    for (const ip of ['1.0.0.1', '126.255.255.255', '128.0.0.1', '223.255.255.254', '10.0.0.255']) {
      assert.deepEqual(fields(withBackend2({ ip })), [], ip);
      assert.deepEqual(fields(rule({ destination: ip })), [], ip);
    }
  });

  it('names the offending label by its key', () => {
    assert.deepEqual(fields(rule({ labels: { owner: 'me', 'Bad Key': 'v'.repeat(257) } })), ['rule.labels["Bad Key"]']);
    assert.deepEqual(fields(rule({ labels: { '': 'v' } })), ['rule.labels[""]']);
    assert.deepEqual(fields(rule({ labels: { ['k'.repeat(257)]: 'v' } })), [
      `rule.labels["${'k'.repeat(64)}…(257 chars)"]`,
    ]);
    // Every bad entry is named (up to 8), not only the first.
    assert.deepEqual(fields(rule({ labels: { a: 'x'.repeat(300), b: 'ok', c: 'y'.repeat(300) } })), [
      'rule.labels["a"]',
      'rule.labels["c"]',
    ]);
    const many = Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, 'v'.repeat(300)]));
    assert.equal(fields(rule({ labels: many })).filter((f) => f.startsWith('rule.labels[')).length, 8);
    // Quotes in a key stay unambiguous (JSON string escaping).
    assert.deepEqual(fields(rule({ labels: { 'a"b': 'v'.repeat(257) } })), ['rule.labels["a\\"b"]']);
  });
});

describe('a link of an interface to itself (twenty-second review, MED-1)', () => {
  it('is refused naming link.b (links[i].b in a set); two interfaces are accepted', () => {
    assert.deepEqual(validateLink({ a: 'eth0', b: 'eth0', direction: 'both' }, 'link'), [
      { field: 'link.b', description: 'must differ from link.a (eth0): a link joins two interfaces' },
    ]);
    assert.deepEqual(
      validateLink({ a: 'eth0', b: 'eth0', direction: 'a-to-b' }, 'links[3]').map((v) => v.field),
      ['links[3].b'],
    );
    assert.deepEqual(validateLink({ a: 'eth0', b: 'tap0', direction: 'both' }, 'link'), []);
  });
});

describe('what an ApplyRules or ApplyLinks changed, for its audit record (twenty-second review, MED-2)', () => {
  it('groups the changed names by action; unchanged ones are left out, repaired ones named as such', () => {
    const box: OutcomeBox = {};
    reportChanges({ [AUDIT_OUTCOME]: box }, 'rules', [
      { name: 'web', action: 'unchanged' },
      { name: 'web2', action: 'create' },
      { name: 'web3', action: 'unchanged', repaired: true },
      { name: 'w7', action: 'delete' },
      { name: 'w8', action: 'update' },
    ]);
    assert.deepEqual(box.changed, {
      kind: 'rules',
      changes: { create: ['web2'], repaired: ['web3'], delete: ['w7'], update: ['w8'] },
    });
    reportChanges({}, 'links', [{ name: 'a-b', action: 'delete' }]); // no box (a unit test's handler): nothing
  });
});
