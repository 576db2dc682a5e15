/**
 * The CLI's interface table says when the daemon cut an interface's used_by (used_by_omitted): a review
 * found a cut list printed as if it were whole. `rules apply` / `links apply` name what they created or
 * updated that is not forwarding (a review found they printed "create" rows only).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import {
  appliedLinkNotes,
  appliedRuleNotes,
  INTERFACE_HEAD,
  interfaceRow,
  linkNote,
  renderTable,
  ruleDetails,
  usedByCell,
  groupWarnings,
} from '../../src/client/cli/output.js';
import { ChangeAction } from '../../src/gen/xdpctl/v1/common.js';
import { Counters } from '../../src/gen/xdpctl/v1/counters.js';
import { ManagedInterface } from '../../src/gen/xdpctl/v1/interface.js';
import { Link, LinkChange, LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { Rule, RuleState } from '../../src/gen/xdpctl/v1/rule.js';

describe('CLI output: interfaces', () => {
  it('used_by cut by the daemon ends with "+N more"; a whole one does not', () => {
    assert.equal(
      usedByCell({ usedBy: ['rule/a/ingress', 'rule/b/egress'], usedByOmitted: 0 }),
      'rule/a/ingress,rule/b/egress',
    );
    assert.equal(usedByCell({ usedBy: ['rule/a/ingress'], usedByOmitted: 19_999 }), 'rule/a/ingress +19999 more');
    assert.equal(usedByCell({ usedBy: [], usedByOmitted: 3 }), '+3 more');
    assert.equal(usedByCell({ usedBy: [], usedByOmitted: 0 }), '-');
  });

  it('a long used_by: the first 3 and "and N more" (the daemon\'s cut counted in); --wide: every name', () => {
    const usedBy = Array.from({ length: 3000 }, (_, i) => `rule/r${i}/egress`);
    assert.equal(
      usedByCell({ usedBy, usedByOmitted: 0 }),
      'rule/r0/egress,rule/r1/egress,rule/r2/egress and 2997 more',
    );
    assert.equal(
      usedByCell({ usedBy, usedByOmitted: 5 }),
      'rule/r0/egress,rule/r1/egress,rule/r2/egress and 3002 more',
    );
    assert.equal(usedByCell({ usedBy, usedByOmitted: 0 }, true), usedBy.join(','));
    assert.equal(usedByCell({ usedBy: usedBy.slice(0, 3), usedByOmitted: 0 }), usedBy.slice(0, 3).join(','));
  });

  it('the table (interfaces list / get) shows the count', () => {
    const i = ManagedInterface.fromPartial({
      name: 'eth0',
      present: true,
      ifindex: 2,
      usedBy: ['rule/web/ingress'],
      usedByOmitted: 4000,
    });
    const text = renderTable(INTERFACE_HEAD, [interfaceRow(i)]);
    assert.match(text, /rule\/web\/ingress \+4000 more/);
  });
});

describe('CLI output: rules get', () => {
  it('shows the packets the kernel dropped after the redirect, for the rule and each backend', () => {
    const r = Rule.fromPartial({
      name: 'web',
      match: { port: 7999 },
      ingressInterfaces: ['in0'],
      backends: [
        { ip: '10.0.0.1', mac: '02:00:00:00:00:01', interface: 'b1' },
        { ip: '10.0.0.2', mac: '02:00:00:00:00:02', interface: 'b2' },
      ],
    });
    const c = Counters.fromPartial({
      rules: [{ rule: 'web', matchedPackets: 1350n, redirectedPackets: 1238n, redirectErrorPackets: 112n }],
      backends: [
        { rule: 'web', ip: '10.0.0.1', interface: 'b1', packets: 515n, redirectErrorPackets: 112n },
        { rule: 'web', ip: '10.0.0.2', interface: 'b2', packets: 723n, redirectErrorPackets: 0n },
      ],
    });
    const text = ruleDetails(r, c);
    assert.match(text, /^redirect errors:\s+112 packets \(dropped by the kernel after the redirect\)$/m);
    assert.match(text, /REDIRECT ERRORS/);
    assert.match(text, /^0\s+10\.0\.0\.1\s.*\s515\s+\S+ B\s+112(\s|$)/m);
    assert.match(text, /^1\s+10\.0\.0\.2\s.*\s723\s+\S+ B\s+0(\s|$)/m);
  });
});

describe('CLI output: rules apply / links apply name what they created or updated that is not forwarding', () => {
  const rule = (name: string, state: RuleState, message = '') => Rule.fromPartial({ name, status: { state, message } });
  const { CHANGE_ACTION_CREATE: CREATE, CHANGE_ACTION_UPDATE: UPDATE, CHANGE_ACTION_UNCHANGED: SAME } = ChangeAction;

  it('a rule created or updated and not ACTIVE is named with its state, as rules add prints it; others are not', () => {
    const res = {
      changes: [
        { name: 'a', action: CREATE, repaired: [] },
        { name: 'b', action: UPDATE, repaired: [] },
        { name: 'c', action: CREATE, repaired: [] },
        { name: 'd', action: SAME, repaired: [] },
      ],
      rules: [
        rule('a', RuleState.RULE_STATE_INACTIVE, 'not receiving on any ingress interface: ingress x is down'),
        rule('b', RuleState.RULE_STATE_DEGRADED, 'frames larger than 1004 bytes are dropped'),
        rule('c', RuleState.RULE_STATE_ACTIVE),
        rule('d', RuleState.RULE_STATE_INACTIVE, 'unchanged: not named'),
      ],
      rulesOmitted: false,
      applied: true,
    };
    assert.deepEqual(appliedRuleNotes(res), [
      'rule a created, state INACTIVE: not receiving on any ingress interface: ingress x is down',
      'rule b updated, state DEGRADED: frames larger than 1004 bytes are dropped',
    ]);
    assert.deepEqual(appliedRuleNotes({ ...res, applied: false, rules: [] }), [], 'a dry run: nothing written');
    assert.match(appliedRuleNotes({ ...res, rules: [], rulesOmitted: true }).join('\n'), /left out the rules' states/);
  });

  it('a link created or updated with a direction not forwarding or a warning is named, as links connect prints it', () => {
    const link = (
      a: string,
      b: string,
      ab: boolean,
      ba: boolean,
      warnings: string[],
      direction = LinkDirection.LINK_DIRECTION_BOTH,
    ) => Link.fromPartial({ a, b, direction, status: { aToBActive: ab, bToAActive: ba, warnings } });
    const res = {
      changes: [
        LinkChange.fromPartial({ a: 'x', b: 'y', action: CREATE }),
        LinkChange.fromPartial({ a: 'p', b: 'q', action: UPDATE }),
        LinkChange.fromPartial({ a: 'm', b: 'n', action: CREATE }),
        LinkChange.fromPartial({ a: 'o', b: 'r', action: CREATE }),
      ],
      links: [
        link('m', 'n', true, false, [], LinkDirection.LINK_DIRECTION_A_TO_B),
        link('p', 'q', true, true, [
          'p -> q: egress q has MTU 1000, p 1500: frames whose IP packet exceeds 1004 bytes are dropped',
        ]),
        link('r', 'o', true, false, []),
        link('x', 'y', false, false, ['ingress x is down: it receives nothing']),
      ],
      linksOmitted: false,
      applied: true,
    };
    assert.deepEqual(appliedLinkNotes(res), [
      'link x <-> y created (warning: ingress x is down: it receives nothing)',
      'link p <-> q updated (warning: p -> q: egress q has MTU 1000, p 1500: frames whose IP packet exceeds 1004 bytes are dropped)',
      'link r <-> o created (not forwarding o -> r)',
    ]);
    assert.equal(linkNote(res.links[0]), '', 'a one-way link forwarding its one direction: nothing to say');
    assert.deepEqual(appliedLinkNotes({ ...res, applied: false, links: [] }), [], 'a dry run: nothing written');
    assert.match(appliedLinkNotes({ ...res, links: [], linksOmitted: true }).join('\n'), /left out the links' states/);
  });
});

describe('xdpctl status: warnings of many rules for one reason said together', () => {
  const down = 'no backend can take traffic (all drained or unable to receive: 10.0.0.2@v1: egress v1 is down)';
  const rules = (n: number, state = 'INACTIVE', why = down, from = 0) =>
    Array.from({ length: n }, (_, i) => `rule r${from + i} is ${state}: ${why}`);
  const host = 'failed redirects are not counted: tracepoints not attached';

  it('up to 5 rules of one reason: one line each, as the daemon sent them', () => {
    const w = [host, ...rules(5)];
    assert.deepEqual(groupWarnings(w), w);
  });

  it('more: one line at the place of the first, naming 5 and how many more; --wide every one; others in place', () => {
    const w = [host, ...rules(100), 'rule odd is DEGRADED: MTU', ...rules(7, 'DEGRADED', 'MTU', 200), 'tail'];
    assert.deepEqual(groupWarnings(w), [
      host,
      `100 rules are INACTIVE: r0, r1, r2, r3, r4 and 95 more (each: ${down})`,
      '8 rules are DEGRADED: odd, r200, r201, r202, r203 and 3 more (each: MTU)',
      'tail',
    ]);
    const wide = groupWarnings(w, true);
    assert.equal(
      wide[1],
      `100 rules are INACTIVE: ${rules(100)
        .map((_, i) => `r${i}`)
        .join(', ')} (each: ${down})`,
    );
    // Another reason is another line; the daemon's last line about what it left out stays as it is.
    const two = groupWarnings([...rules(6), ...rules(6, 'INACTIVE', 'egress v2 is down', 10), '88 more problem(s)']);
    assert.deepEqual(two, [
      `6 rules are INACTIVE: r0, r1, r2, r3, r4 and 1 more (each: ${down})`,
      '6 rules are INACTIVE: r10, r11, r12, r13, r14 and 1 more (each: egress v2 is down)',
      '88 more problem(s)',
    ]);
  });

  it('when the daemon listed only its first problems, a count is a lower bound: "at least"', () => {
    // The nineteenth review: 3 001 rules INACTIVE printed "100 rules are INACTIVE: … and 95 more" (the daemon's cap).
    const cut =
      "2901 more problem(s) not listed here (rules not ACTIVE: each rule's status says why, xdpctl rules list)";
    assert.deepEqual(groupWarnings([...rules(100), cut]), [
      `at least 100 rules are INACTIVE: r0, r1, r2, r3, r4 and 95 more (each: ${down})`,
      cut,
    ]);
  });
});
