/**
 * A static MAC that answers ARP for its backend's address while another MAC does too (a newcomer review): Linux
 * answers ARP on every interface for any address of its own (the default arp_ignore=0), so a host with two
 * interfaces on one link answers a request for its address from both. Here b1's namespace has its address on
 * eth0 and a second interface on the same link (a macvlan, mv0, up, no address): a broadcast request is answered
 * by both MACs, the kernel's entry takes the first (eth0's), and a frame to either MAC is delivered. Before, a
 * backend given with mv0's MAC was "static MAC contradicted" by the entry alone (its flows moved away: 0 of 300
 * delivered, the rule INACTIVE) though mv0 answered every request of ours and received every frame sent to it.
 * Now the static MAC is asked itself before a contradiction is said: both answering is the documented address
 * conflict (docs/architecture.md, "Two MACs answering for one address"): the static MAC kept in the table (every
 * datagram delivered to it), the rule DEGRADED (BackendsReceiving Unknown, AddressConflict), both MACs named with
 * where each was seen, logged once. A static MAC that nobody has, behind the same two answering interfaces, is
 * still "contradicted" (asked, never answered) and out of the table.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { cond, esc, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

/**
 * Who answers ARP for `ip` on our interface `ifc` (argv: ifc ip sender_ip): one broadcast request, the sender
 * MACs of the replies read for 0.5 s, printed one a line (the ARP sender MAC and the Ethernet source).
 */
const WHO_ANSWERS = `
import socket, struct, sys, time, select
ifc, ip, sip = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind((ifc, 0))
me = s.getsockname()[4]
s.send(b'\\xff' * 6 + me + b'\\x08\\x06' + struct.pack('!HHBBH', 1, 0x0800, 6, 4, 1) + me + socket.inet_aton(sip) + b'\\0' * 6 + socket.inet_aton(ip))
end = time.time() + 0.5
while time.time() < end:
    if not select.select([s], [], [], 0.05)[0]:
        continue
    d = s.recv(2048)
    if d[20:22] == b'\\0\\x02' and d[28:32] == socket.inet_aton(ip):
        print(d[22:28].hex(':'), d[6:12].hex(':'))
`;

describe(
  'a static MAC that answers ARP while another MAC does too: an address conflict, not "contradicted"',
  kernelOnly(),
  () => {
    const lab = new Lab();
    const { status, count } = lab;
    let d: DaemonProcess;
    let c: Clients;
    let b1: Host;
    let mv: string;

    before(async () => {
      ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
      // b1's second interface on its link: a macvlan on eth0, up, without an address of its own.
      sh('ip', ['-n', b1.netns, 'link', 'add', 'mv0', 'link', 'eth0', 'type', 'macvlan', 'mode', 'bridge']);
      sh('ip', ['-n', b1.netns, 'link', 'set', 'mv0', 'up']);
      mv = JSON.parse(sh('ip', ['-n', b1.netns, '-j', 'link', 'show', 'mv0']))[0].address as string;
      ({ d, c } = await lab.start(['--log-level', 'info']));
    });
    after(() => lab.destroy());

    /** The MACs that answer a broadcast ARP request for b1's address on our side of its veth (sorted). */
    const whoAnswers = () =>
      sh('python3', ['-c', WHO_ANSWERS, b1.hostIf, b1.ip!, '198.18.2.254'])
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((l) => l.split(' ')[0])
        .sort();

    it('both MACs answer; the static one (mv0) is kept, every datagram delivered to it, the conflict said', async (t) => {
      const answers = whoAnswers();
      t.diagnostic(`a broadcast request for ${b1.ip} on ${b1.hostIf} answered by ${answers.join(', ')}`);
      assert.deepEqual(answers, [b1.mac, mv].sort(), 'both interfaces of b1 answer (arp_ignore=0)');
      const from = d.output.length;
      await c.rules.createRule({ rule: lab.rule('two', 7971, [{ ip: b1.ip!, mac: mv, interface: b1.hostIf }]) });
      const conflict = new RegExp(
        `^address conflict: ${esc(b1.ip!)} answers ARP on ${esc(b1.hostIf)} with ${esc(mv)} \\(the static MAC: ` +
          `.*\\) and ${esc(b1.mac)} \\(`,
      );
      const t0 = Date.now();
      // Judged (whichever way), not "not confirmed yet" any more.
      await until(
        async () => `judged: ${JSON.stringify((await status('two')).backendStatus[0])}`,
        async () =>
          /^(address conflict|static MAC contradicted): /.test((await status('two')).backendStatus[0]?.message ?? ''),
        10_000,
      );
      t.diagnostic(
        `judged ${Date.now() - t0} ms after the rule was created: ${(await status('two')).backendStatus[0].message}`,
      );
      // 300 datagrams over 3 s while the status is read every 100 ms.
      const received = await lab.stream(b1, 7971, 3);
      const seen: { state: RuleState; active: boolean; message: string; reason?: string; rs?: ConditionStatus }[] = [];
      const w0 = Date.now();
      while (Date.now() - w0 < 3000) {
        const st = await status('two');
        const br = cond(st, 'BackendsReceiving');
        seen.push({
          state: st.state,
          active: st.backendStatus[0].active,
          message: st.backendStatus[0].message,
          reason: br?.reason,
          rs: br?.status,
        });
        await sleep(100);
      }
      const { sent, got } = await received();
      t.diagnostic(`${got} of ${sent} delivered to the static MAC's host; last: ${RuleState[seen.at(-1)!.state]}`);
      assert.equal(got, sent, `every datagram delivered to ${mv}: ${got} of ${sent}`);
      assert.deepEqual(
        seen.filter(
          (s) =>
            !s.active ||
            s.state !== RuleState.RULE_STATE_DEGRADED ||
            s.rs !== ConditionStatus.CONDITION_STATUS_UNKNOWN ||
            s.reason !== 'AddressConflict' ||
            !conflict.test(s.message),
        ),
        [],
        'in the table, DEGRADED, BackendsReceiving Unknown (AddressConflict), the conflict said, at every read',
      );
      const st = await status('two');
      assert.match(st.message, new RegExp(`1 in an address conflict \\(${esc(b1.ip!)}@${esc(b1.hostIf)}: `));
      assert.equal(lab.count(/static MAC contradicted/), 0, 'never said contradicted');
      assert.equal(
        d.output
          .slice(from)
          .split('\n')
          .filter((l) => new RegExp(`"msg":"backend ${esc(b1.ip!)} on ${esc(b1.hostIf)}: address conflict: `).test(l))
          .length,
        1,
        'logged once',
      );
      // mv0 goes down: only eth0 answers, and a frame to mv0's MAC is dropped (another MAC than eth0's): the
      // conflict is over, contradicted now.
      sh('ip', ['-n', b1.netns, 'link', 'set', 'mv0', 'down']);
      try {
        const t1 = Date.now();
        await until(
          async () => `contradicted: ${JSON.stringify((await status('two')).backendStatus[0])}`,
          async () => /^static MAC contradicted: /.test((await status('two')).backendStatus[0]?.message ?? ''),
          10_000,
        );
        t.diagnostic(`mv0 down: contradicted ${Date.now() - t1} ms later`);
        const s2 = await status('two');
        assert.equal(s2.backendStatus[0].active, false, 'out of the table');
        assert.match(s2.backendStatus[0].message, new RegExp(`${esc(mv)} asked by ARP requests of ours: no answer`));
        assert.equal(
          lab.count(
            new RegExp(`"msg":"backend ${esc(b1.ip!)} on ${esc(b1.hostIf)}: static MAC contradicted: .*${esc(mv)}`),
          ),
          1,
          'logged once',
        );
      } finally {
        sh('ip', ['-n', b1.netns, 'link', 'set', 'mv0', 'up']);
      }
      await c.rules.deleteRule({ name: 'two', expectedGeneration: 0n });
    });

    it('a static MAC nobody has, behind the same two answering interfaces: still contradicted, out of the table', async (t) => {
      const nobody = lab.mac('99');
      const reply = (
        await c.rules.createRule({ rule: lab.rule('none', 7972, [{ ip: b1.ip!, mac: nobody, interface: b1.hostIf }]) })
      ).rule!.status!;
      t.diagnostic(`the reply: ${RuleState[reply.state]} ${JSON.stringify(reply.backendStatus[0])}`);
      const t0 = Date.now();
      await until(
        async () => `contradicted: ${JSON.stringify((await status('none')).backendStatus[0])}`,
        async () => /^static MAC contradicted: /.test((await status('none')).backendStatus[0]?.message ?? ''),
        10_000,
      );
      t.diagnostic(`contradicted ${Date.now() - t0} ms after the rule was created`);
      const st = await status('none');
      assert.equal(st.backendStatus[0].active, false, 'out of the table');
      assert.equal(st.state, RuleState.RULE_STATE_INACTIVE, st.message);
      assert.match(
        st.backendStatus[0].message,
        new RegExp(`answers ARP .* from (${esc(b1.mac)}|${esc(mv)}).*not from the static ${esc(nobody)}`),
      );
      assert.doesNotMatch(st.backendStatus[0].message, /address conflict/);
      assert.ok(count(new RegExp(`static MAC contradicted: .*${esc(nobody)}`)) >= 1);
      await c.rules.deleteRule({ name: 'none', expectedGeneration: 0n });
    });
  },
);
