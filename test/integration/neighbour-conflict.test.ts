/**
 * Two MACs answering ARP for one backend address (an address conflict, RFC 5227) and a neighbour entry set by
 * hand over a MAC that answered, with real namespaces, veths, ARP replies and datagrams (docs/architecture.md,
 * "Neighbours"; a review's findings):
 *  - a duplicate host: a second namespace on the backend's link (a macvlan on its veth) with the same address,
 *    which comes up announcing itself (a gratuitous ARP, arp_notify) and answers ARP like any Linux host. Before,
 *    its MAC answered a probe of ours and was written ("MAC resolved", ACTIVE, nothing about the conflict): 403
 *    of 480 datagrams went to the duplicate. Now the MAC that answered first stays in the datapath, both MACs
 *    are logged once, the rule is DEGRADED (BackendsReceiving Unknown, AddressConflict) while both answer; when
 *    the first host gives up the address, the duplicate (the only one answering) is written;
 *  - a spoofer (a packet socket in the backend's namespace) answering every ARP request for the address with
 *    its own MAC and sending unsolicited replies every 0.1 s: before, b1 got 64 of 300; now all, DEGRADED with
 *    the conflict named while it runs, ACTIVE again once it stops;
 *  - a wrong PERMANENT entry (`ip neigh replace ... nud permanent`) over a MAC that answered: before, written at
 *    once (39 of 250 delivered) and "cannot be verified" though the daemon can ask; now its MAC is asked like
 *    any other, never written while it does not answer and the kept MAC does (250 of 250), and the status
 *    says which MAC is kept and why.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { backendOf, esc, Lab, NOWHERE } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';
const RESOLVED = 'MAC resolved from the neighbour table';

/**
 * A spoofer on eth0 of its namespace (argv: ip mac our_mac seconds): answers every ARP request for `ip` with
 * `mac`, sends an unsolicited ARP reply from `mac` to `our_mac` every 0.1 s, and counts the IPv4 frames sent to
 * `mac`; prints READY, then {"replies": N, "unsolicited": N, "toSpoofer": N} when done (or on SIGTERM).
 */
const SPOOFER = `
import socket, struct, sys, time, select, signal, json
ip, mac, ours, secs = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
mb = bytes(int(x, 16) for x in mac.split(':'))
ob = bytes(int(x, 16) for x in ours.split(':'))
ib = socket.inet_aton(ip)
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(('eth0', 0))
n = {'replies': 0, 'unsolicited': 0, 'toSpoofer': 0}
def done(*_):
    print(json.dumps(n), flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, done)
def reply(dst, tip):
    return dst + mb + b'\\x08\\x06' + struct.pack('!HHBBH', 1, 0x0800, 6, 4, 2) + mb + ib + dst + tip
print('READY', flush=True)
end = time.time() + secs
nxt = 0
while time.time() < end:
    if time.time() >= nxt:
        s.send(reply(ob, b'\\0\\0\\0\\0'))
        n['unsolicited'] += 1
        nxt = time.time() + 0.1
    r, _, _ = select.select([s], [], [], 0.02)
    if not r:
        continue
    f, a = s.recvfrom(2048)
    if a[2] == socket.PACKET_OUTGOING or len(f) < 42:
        continue
    if f[12:14] == b'\\x08\\x00' and f[0:6] == mb:
        n['toSpoofer'] += 1
    elif f[12:14] == b'\\x08\\x06' and f[20:22] == b'\\0\\x01' and f[38:42] == ib:
        s.send(reply(f[22:28], f[28:32]))
        n['replies'] += 1
done()
`;

describe('two MACs answering for one backend address; an entry set by hand over an answered MAC', kernelOnly(), () => {
  const lab = new Lab();
  const { status, listeners } = lab;
  const dupNetns = `xdpt-${lab.id}-dup`;
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host, b2: Host, b3: Host;
  const procs: ChildProcess[] = [];

  before(async () => {
    ({ vm, b1, b2, b3 } = lab.addHosts({
      vm: '198.18.1.1/24',
      b1: '198.18.2.1/24',
      b2: '198.18.2.2/24',
      b3: '198.18.2.3/24',
    }));
    ({ d, c } = await lab.start(['--log-level', 'info']));
  });
  lab.onDestroy(() => {
    for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
    shQuiet('ip', ['netns', 'del', dupNetns]);
  });
  after(() => lab.destroy());

  const rule = (name: string, port: number, b: Host) => lab.rule(name, port, [backendOf(b, '')]);
  const lines = (log: string, re: RegExp) => log.split('\n').filter((l) => re.test(l)).length;
  async function resolvedRule(name: string, port: number, b: Host) {
    await c.rules.createRule({ rule: rule(name, port, b) });
    await until(
      'resolved by an answer',
      async () => (await status(name)).backendStatus[0]?.message === RESOLVED,
      10_000,
    );
    assert.equal((await status(name)).backendStatus[0].mac, b.mac);
  }
  /** The states, MACs and messages seen every 100 ms while `during` runs. */
  async function watch(name: string, ms: number) {
    const seen: {
      t: number;
      state: RuleState;
      mac: string;
      message: string;
      receiving?: ConditionStatus;
      reason?: string;
    }[] = [];
    const t0 = Date.now();
    while (Date.now() - t0 < ms) {
      const st = await status(name);
      const br = st.conditions.find((x) => x.type === 'BackendsReceiving');
      seen.push({
        t: Date.now() - t0,
        state: st.state,
        mac: st.backendStatus[0]?.mac ?? '',
        message: st.backendStatus[0]?.message ?? '',
        receiving: br?.status,
        reason: br?.reason,
      });
      await sleep(100);
    }
    return seen;
  }

  it('a duplicate host with the same address: the first MAC kept, the conflict said, the rule DEGRADED while both answer', async () => {
    await resolvedRule('dup', 7961, b1);
    const from = d.output.length;
    // The duplicate: a second host on b1's link (a macvlan on b1's eth0, in its own namespace) with b1's address.
    sh('ip', ['netns', 'add', dupNetns]);
    sh('ip', ['-n', b1.netns, 'link', 'add', 'dup', 'link', 'eth0', 'type', 'macvlan', 'mode', 'bridge']);
    sh('ip', ['-n', b1.netns, 'link', 'set', 'dup', 'netns', dupNetns]);
    sh('ip', ['-n', dupNetns, 'addr', 'add', `${b1.ip}/24`, 'dev', 'dup']);
    sh('ip', ['netns', 'exec', dupNetns, 'sysctl', '-qw', 'net.ipv4.conf.dup.arp_notify=1']);
    const dupMac = JSON.parse(sh('ip', ['-n', dupNetns, '-j', 'link', 'show', 'dup']))[0].address as string;
    const ls = [await UdpListener.start(b1.netns, b1.ip!, 7961), await UdpListener.start(dupNetns, b1.ip!, 7961)];
    listeners.push(...ls);
    const tx = sendUdp(vm.netns, NOWHERE, 7961, 600, { flows: 10, perTick: 1, tickMs: 10 });
    await sleep(500);
    // It comes up announcing itself (a gratuitous ARP), as a host does.
    sh('ip', ['-n', dupNetns, 'link', 'set', 'dup', 'up']);
    const seen = await watch('dup', 5400);
    const { sent } = await tx.done;
    await sleep(150);
    const [got1, gotDup] = await Promise.all(ls.map(async (l) => (await l.stop()).unique));
    const tail = seen.filter((s) => s.t >= 3000);
    console.log(
      `# a duplicate host: b1 got ${got1}, the duplicate ${gotDup} of ${sent}; last status: ` +
        `${RuleState[seen.at(-1)!.state]} ${seen.at(-1)!.mac}: ${seen.at(-1)!.message}`,
    );
    const log = d.output.slice(from);
    assert.equal(gotDup, 0, `nothing to the duplicate: ${gotDup} of ${sent}`);
    assert.equal(got1, sent, `everything to the MAC that answered first: ${got1} of ${sent}`);
    assert.deepEqual(
      seen.filter((s) => s.mac !== b1.mac),
      [],
      'the duplicate never written',
    );
    assert.deepEqual(
      tail.filter(
        (s) =>
          s.state !== RuleState.RULE_STATE_DEGRADED ||
          s.receiving !== ConditionStatus.CONDITION_STATUS_UNKNOWN ||
          s.reason !== 'AddressConflict',
      ),
      [],
      'DEGRADED, BackendsReceiving Unknown (AddressConflict) while both answer',
    );
    assert.match(
      tail.at(-1)!.message,
      new RegExp(
        `address conflict: .*${esc(b1.mac)}.*${esc(dupMac)}|address conflict: .*${esc(dupMac)}.*${esc(b1.mac)}`,
      ),
    );
    assert.doesNotMatch(tail.at(-1)!.message, /resolved/);
    const who = `backend ${esc(b1.ip!)} on ${b1.hostIf}`;
    assert.equal(
      lines(
        log,
        new RegExp(
          `"msg":"${who}: two MACs answer ARP for its address, (${esc(b1.mac)} and ${esc(dupMac)}|${esc(dupMac)} and ${esc(b1.mac)})`,
        ),
      ),
      1,
      'the conflict logged once, naming both MACs',
    );
    assert.equal(lines(log, /has a new MAC/), 0, 'nothing rewritten');
    assert.equal(lines(log, new RegExp(`${esc(dupMac)} answered an ARP probe of ours after \\d+ ms: written`)), 0);

    // b1 gives up the address (the duplicate stays): the only MAC that answers is written, the rule ACTIVE.
    const t0 = Date.now();
    sh('ip', ['-n', b1.netns, 'addr', 'del', `${b1.ip}/24`, 'dev', 'eth0']);
    await until(
      'the duplicate, alone now, written and resolved',
      async () => {
        const st = await status('dup');
        return (
          st.backendStatus[0]?.mac === dupMac &&
          st.backendStatus[0].message === RESOLVED &&
          st.state === RuleState.RULE_STATE_ACTIVE
        );
      },
      15_000,
    );
    console.log(`# the first host gone: the duplicate written and ACTIVE after ${Date.now() - t0} ms`);
    const l2 = await UdpListener.start(dupNetns, b1.ip!, 7961);
    listeners.push(l2);
    const r2 = await sendUdp(vm.netns, NOWHERE, 7961, 50, { flows: 10 }).done;
    await sleep(150);
    assert.equal((await l2.stop()).unique, r2.sent, 'the remaining host receives');
    const log2 = d.output.slice(from);
    assert.equal(
      lines(log2, new RegExp(`"msg":"${who}: only ${esc(dupMac)} answers ARP for its address again`)),
      1,
      'the end logged once',
    );
    await c.rules.deleteRule({ name: 'dup', expectedGeneration: 0n });
    shQuiet('ip', ['netns', 'del', dupNetns]);
    sh('ip', ['-n', b1.netns, 'addr', 'add', `${b1.ip}/24`, 'dev', 'eth0']);
    shQuiet('ip', ['neigh', 'del', b1.ip!, 'dev', b1.hostIf]);
  });

  it('a spoofer answering every request and sending unsolicited replies every 0.1 s: the answered MAC kept, the conflict said', async () => {
    await resolvedRule('spoof', 7962, b2);
    const spoofMac = lab.mac('5f');
    const from = d.output.length;
    const l = await UdpListener.start(b2.netns, b2.ip!, 7962);
    listeners.push(l);
    const sp = spawn('ip', ['netns', 'exec', b2.netns, 'python3', '-c', SPOOFER, b2.ip!, spoofMac, b2.hostMac, '4']);
    procs.push(sp);
    let out = '';
    sp.stdout.on('data', (x) => (out += x));
    sp.stderr.on('data', (x) => (out += x));
    const exited = new Promise<void>((resolve) => sp.on('exit', () => resolve()));
    await until('spoofer ready', async () => out.includes('READY'), 5000);
    const tx = sendUdp(vm.netns, NOWHERE, 7962, 500, { flows: 10, perTick: 1, tickMs: 10 });
    const seen = await watch('spoof', 4000);
    await exited;
    const { sent } = await tx.done;
    await sleep(150);
    const got = (await l.stop()).unique;
    const n = JSON.parse(out.slice(out.indexOf('READY') + 5).trim()) as Record<string, number>;
    console.log(
      `# a spoofer (${n.replies} replies to requests, ${n.unsolicited} unsolicited, ${n.toSpoofer} frames to its MAC): ` +
        `b2 got ${got} of ${sent}; last status ${RuleState[seen.at(-1)!.state]}: ${seen.at(-1)!.message}`,
    );
    assert.equal(got, sent, `everything to the host that answered first: ${got} of ${sent}`);
    assert.equal(n.toSpoofer, 0, 'nothing to the spoofer');
    assert.deepEqual(
      seen.filter((s) => s.mac !== b2.mac),
      [],
      'the spoofer MAC never written',
    );
    assert.ok(n.replies > 0, 'the spoofer answered requests');
    const conflicted = seen.filter((s) => s.t >= 2000);
    assert.deepEqual(
      conflicted.filter(
        (s) =>
          s.state !== RuleState.RULE_STATE_DEGRADED || s.reason !== 'AddressConflict' || !s.message.includes(spoofMac),
      ),
      [],
      'DEGRADED, the conflict named, while the spoofer runs',
    );
    const log = d.output.slice(from);
    const who = `backend ${esc(b2.ip!)} on ${b2.hostIf}`;
    assert.equal(lines(log, new RegExp(`"msg":"${who}: two MACs answer ARP for its address`)), 1, 'logged once');
    // It stopped: only b2 answers; ACTIVE and resolved again.
    await until(
      'resolved again',
      async () => {
        const st = await status('spoof');
        return (
          st.state === RuleState.RULE_STATE_ACTIVE &&
          st.backendStatus[0]?.message === RESOLVED &&
          st.backendStatus[0].mac === b2.mac
        );
      },
      15_000,
    );
    assert.equal(
      lines(d.output.slice(from), new RegExp(`"msg":"${who}: only ${esc(b2.mac)} answers ARP for its address again`)),
      1,
    );
    await c.rules.deleteRule({ name: 'spoof', expectedGeneration: 0n });
  });

  it('a wrong PERMANENT entry over a MAC that answered: asked, never written while it does not answer and the kept MAC does', async () => {
    await resolvedRule('perm', 7963, b3);
    const wrong = lab.mac('6e');
    const from = d.output.length;
    const received = await lab.stream(b3, 7963, 5);
    await sleep(500);
    let seen: Awaited<ReturnType<typeof watch>>;
    try {
      lab.writeEntry(b3, wrong, 'permanent');
      seen = await watch('perm', 4400);
    } finally {
      shQuiet('ip', ['neigh', 'del', b3.ip!, 'dev', b3.hostIf]);
    }
    const { sent, got } = await received();
    console.log(
      `# a wrong PERMANENT entry over an answered MAC: ${got} of ${sent} delivered; last: ${seen.at(-1)!.message}`,
    );
    assert.equal(got, sent, `the answered MAC kept: ${got} of ${sent}`);
    assert.deepEqual(
      seen.filter((s) => s.mac !== b3.mac || s.state !== RuleState.RULE_STATE_ACTIVE),
      [],
      'kept, ACTIVE',
    );
    assert.ok(
      seen.some((s) =>
        new RegExp(
          `^MAC ${esc(b3.mac)} kept \\(it answered an ARP probe of ours\\): the neighbour entry now holds ${esc(wrong)} \\(set by hand: PERMANENT\\), which no probe of ours has had answered`,
        ).test(s.message),
      ),
      [...new Set(seen.map((s) => s.message))].join(' | '),
    );
    assert.equal(
      seen.filter((s) => /cannot be verified/.test(s.message)).length,
      0,
      'not "cannot be verified": it was asked',
    );
    const log = d.output.slice(from);
    const who = `backend ${esc(b3.ip!)} on ${b3.hostIf}`;
    assert.equal(
      lines(log, new RegExp(`"msg":"${who}: its neighbour entry changed from ${esc(b3.mac)} to ${esc(wrong)}`)),
      1,
    );
    assert.equal(lines(log, /has a new MAC/), 0, 'nothing rewritten');
    await c.rules.deleteRule({ name: 'perm', expectedGeneration: 0n });
  });
});
