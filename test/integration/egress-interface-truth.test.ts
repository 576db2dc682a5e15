/**
 * An egress interface says what its rules' backend judgements found about it (docs/architecture.md, promise 2: per-object
 * conditions on interfaces carry the same facts as the rule), with real namespaces, veths and datagrams,
 * the ingress in native mode. A review saw r18b2 `EgressReady True "up with carrier"`, no
 * warning, in three cases where the rule said its backend cannot receive or the frames do not fit: a veth
 * peer without NAPI in an unnamed namespace (no ndo_xdp_xmit), a peer whose GRO went off while down (the
 * kernel dropped every redirected frame), an egress MTU of 1000 behind an ingress of 1500. Now the
 * interface's EgressReady (False, or Unknown while it cannot be verified) and FramesFit carry the rule's own
 * texts, and its warnings say them; back to True when the rule's judgement is.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients } from '../helpers/daemon.js';
import { kernelOnly, sh, until } from '../helpers/env.js';
import { backendOf, cond as ruleCond, Lab, type UnnamedHost } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
const {
  CONDITION_STATUS_TRUE: TRUE,
  CONDITION_STATUS_FALSE: FALSE,
  CONDITION_STATUS_UNKNOWN: UNKNOWN,
} = ConditionStatus;
const OUT = ': backend taken out of the table until it can receive';

describe('an egress interface carries its rules’ judgement of it', kernelOnly(), () => {
  const lab = new Lab();
  const hostIf = `x${lab.id}eg`;
  const ip2 = '198.18.2.2';
  const mac2 = lab.mac('02');
  let b2: UnnamedHost;
  let c: Clients;
  let vm: Host, b1: Host;

  before(async () => {
    ({ vm, b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
    // b2: a namespace with no name that only a socket keeps (nothing xdpctld could enter it by), its veth peer
    // up with GRO switched on while up (NAPI: the kernel announces ndo-xmit for the host side).
    b2 = await lab.addSealedHost(hostIf, `${ip2}/24`, mac2);
    ({ c } = await lab.start(['--log-level', 'info', '--xdp-mode', 'native']));
  });
  after(() => lab.destroy());

  const inNs = (cmd: string) => b2.sh(cmd);
  /** Send `n` datagrams of `size` bytes over 50 flows from vm: what b1 and b2 received. */
  const send = (n = 200, size = 0) => lab.send(7993, [b1, b2], n, 50, { size });
  const rule = () => lab.status('web');
  const iface = async (name: string) => (await c.interfaces.getInterface({ name })).interface!;
  /** The interface's condition of a type, as [status, reason, message]. */
  const ifCond = async (name: string, type: string) => {
    const x = (await iface(name)).conditions.find((k) => k.type === type);
    return x && [x.status, x.reason, x.message];
  };

  it('a veth peer without NAPI, then one that drops every redirected frame: EgressReady False as the rule says', async (t) => {
    await c.rules.createRule({
      rule: lab.rule('web', 7993, [backendOf(b1), { ip: ip2, mac: mac2, interface: hostIf }]),
    });
    // The kernel announces ndo-xmit (the peer's GRO is on), which the daemon cannot check (the peer is in a
    // namespace it cannot enter): the rule says b2 cannot be verified; so does the interface (Unknown).
    await verifiedByTraffic(t);

    // (a) GRO off at the peer: no NAPI there, the kernel reports no ndo_xdp_xmit. The rule takes b2 out,
    // naming why; its egress says the same (was: True "up with carrier", no warning).
    inNs('ethtool -K eth0 gro off');
    await until('b2 out: no ndo_xdp_xmit', async () => (await rule()).backendStatus[1]?.active === false, 5000);
    let st = await rule();
    assert.equal(st.state, RuleState.RULE_STATE_DEGRADED, st.message);
    assert.ok(st.backendStatus[1].message.endsWith(OUT), st.backendStatus[1].message);
    let why = st.backendStatus[1].message.slice(0, -OUT.length);
    assert.match(why, /no ndo_xdp_xmit/);
    assert.deepEqual(await ifCond(hostIf, 'EgressReady'), [
      FALSE,
      'EgressCannotTransmit',
      `${why} (rule/web) (egress of rule/web)`,
    ]);
    assert.deepEqual((await iface(hostIf)).warnings, [`${why} (rule/web) (egress of rule/web)`]);
    assert.deepEqual(await ifCond(b1.hostIf, 'EgressReady'), [TRUE, 'Up', 'up with carrier (egress of rule/web)']);
    assert.deepEqual((await iface(b1.hostIf)).warnings, []);
    let r = await send();
    assert.equal(r.total, r.sent, `every flow goes to b1 (${r.got})`);

    // GRO on again while up: back in the table, judged by traffic again.
    inNs('ethtool -K eth0 gro on');
    await until('b2 back', async () => (await rule()).backendStatus[1]?.active === true, 5000);
    await verifiedByTraffic(t);

    // (b) GRO off while the peer is down: the kernel keeps announcing ndo-xmit, and drops every frame
    // redirected into it. The rule takes b2 out naming the observation; its egress says the same.
    inNs('ip link set eth0 down && ethtool -K eth0 gro off && ip link set eth0 up');
    await until('not verified any more', async () =>
      /cannot be verified/.test((await rule()).backendStatus[1]?.message ?? ''),
    );
    r = await send();
    assert.ok(r.got[1] === 0 && r.total < r.sent, `premise: b2's flows are dropped (${r.got} of ${r.sent})`);
    t.diagnostic(`before the daemon saw it: ${r.total} of ${r.sent} delivered (${r.got})`);
    await until('b2 taken out', async () => (await rule()).backendStatus[1]?.active === false);
    st = await rule();
    why = st.backendStatus[1].message.slice(0, -OUT.length);
    assert.match(why, new RegExp(`^the kernel dropped all of the last \\d+ frames redirected to ${hostIf}`));
    assert.deepEqual(await ifCond(hostIf, 'EgressReady'), [
      FALSE,
      'EgressCannotTransmit',
      `${why} (rule/web) (egress of rule/web)`,
    ]);
    assert.deepEqual((await iface(hostIf)).warnings, [`${why} (rule/web) (egress of rule/web)`]);
    await c.rules.deleteRule({ name: 'web', expectedGeneration: 0n });
  });

  /**
   * While b2 cannot be verified, its egress is EgressReady Unknown with the rule's reason (unless frames the
   * namespace sent itself verified it first); traffic verifies it: the rule ACTIVE, EgressReady True.
   */
  async function verifiedByTraffic(t: { diagnostic: (s: string) => void }) {
    const st = await rule();
    if (/cannot be verified/.test(st.backendStatus[1].message)) {
      assert.equal(ruleCond(st, 'BackendsReceiving').status, UNKNOWN);
      const unverified = st.backendStatus[1].message.slice('cannot be verified: '.length);
      assert.deepEqual(await ifCond(hostIf, 'EgressReady'), [
        UNKNOWN,
        'EgressUnverified',
        `up with carrier; cannot be verified: ${unverified} (rule/web) (egress of rule/web)`,
      ]);
      assert.equal((await iface(hostIf)).warnings.length, 1);
    } else t.diagnostic(`b2 verified before the first read: ${st.backendStatus[1].message}`);
    const r = await send();
    assert.equal(r.total, r.sent, `all delivered (${r.got})`);
    assert.ok(r.got[1] > 0, `b2 has flows (${r.got})`);
    await until('verified by traffic', async () => (await rule()).state === RuleState.RULE_STATE_ACTIVE);
    await until('EgressReady True', async () => (await ifCond(hostIf, 'EgressReady'))?.[0] === TRUE);
    assert.deepEqual((await iface(hostIf)).warnings, []);
  }

  it('an egress MTU below the ingress’s: the interface’s FramesFit False with the rule’s text', async () => {
    await c.rules.createRule({
      rule: lab.rule('web', 7993, [backendOf(b1)]),
    });
    assert.deepEqual((await ifCond(b1.hostIf, 'FramesFit'))?.slice(0, 2), [TRUE, 'MTUFits']);
    sh('ip', ['link', 'set', b1.hostIf, 'mtu', '1000']);
    try {
      await until('the rule: FramesFit False', async () => ruleCond(await rule(), 'FramesFit').status === FALSE);
      const st = await rule();
      const text = ruleCond(st, 'FramesFit').message;
      assert.ok(text.startsWith(`backend ${b1.ip}: egress ${b1.hostIf} has MTU 1000, ingress ${vm.hostIf} 1500`), text);
      const fits = `${text.slice(`backend ${b1.ip}: `.length)} (rule/web)`;
      // Was: EgressReady True "up with carrier" and nothing else, no warning.
      assert.deepEqual(await ifCond(b1.hostIf, 'FramesFit'), [FALSE, 'EgressMTUTooSmall', fits]);
      assert.deepEqual(await ifCond(b1.hostIf, 'EgressReady'), [TRUE, 'Up', 'up with carrier (egress of rule/web)']);
      assert.deepEqual((await iface(b1.hostIf)).warnings, [fits]);
      // What it says is so: 1400-byte datagrams are dropped, 500-byte ones pass.
      assert.equal((await send(50, 1400)).got[0], 0, 'no 1400-byte datagram passes');
      assert.equal((await send(50, 500)).got[0], 50, 'every 500-byte datagram passes');
    } finally {
      sh('ip', ['link', 'set', b1.hostIf, 'mtu', '1500']);
    }
    await until('FramesFit True again', async () => (await ifCond(b1.hostIf, 'FramesFit'))?.[0] === TRUE);
    assert.deepEqual((await iface(b1.hostIf)).warnings, []);
    assert.equal((await send(50, 1400)).got[0], 50, 'every 1400-byte datagram passes');
    await c.rules.deleteRule({ name: 'web', expectedGeneration: 0n });
  });
});
