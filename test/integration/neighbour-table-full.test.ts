/**
 * The kernel's neighbour table full (gc_thresh3 reached by entries of an interface no rule uses): the entries of
 * the backends are evicted and cannot be made again ("No buffer space available"), while the backends answer
 * every ARP request of ours. Before: the daemon took the missing entries for "flushed or expired", its rule
 * DEGRADED "MAC kept from the datapath, not confirmed yet" (or, once an entry failed, the backend out: "no
 * neighbour entry"), saying nothing of the table. Now the kernel's refusal (ENOBUFS, table_fulls rising) is
 * heard: the MACs that answer ours keep the backends in, the rule ACTIVE, each backend's status naming the full
 * table, and the traffic goes where it went before, datagram for datagram.
 *
 * Everything runs in namespaces this test makes: the daemon (nsenter --net), its ingress and egresses, the
 * sender, two backends, and the entries that fill the table (on a veth pair of the daemon's namespace, gone with
 * it). The kernel has ONE neighbour table per family for all namespaces, though: its entry count and
 * gc_thresh1..3 are the host's (a namespace other than the first has no net.ipv4.neigh.default.gc_thresh*
 * at all), so no threshold is lowered here (that would change the host's), and while this test holds the table
 * full (15-25 s) no namespace on the host can make a new neighbour entry, and the host's entries older than
 * 5 s may be evicted. It therefore runs by itself (scripts/run-tests.mjs BY_ITSELF). The backends' own entries
 * for the daemon's addresses are made permanent (kept from eviction): a backend on the same kernel needs one to
 * answer ARP at all (net/ipv4/arp.c answers only with a neighbour entry for the asker), which a backend on
 * another machine has in its own table.
 */
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, RuleState, UdpChecksumMode, type RuleStatus } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, shQuiet, sleep, until } from '../helpers/env.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const FILL = new URL('../helpers/neigh-fill.py', import.meta.url).pathname;
const PORT = 7431;

/** The host's IPv4 neighbour table counters (`ip -s ntable show name arp_cache`). */
function ntable(): { entries: number; thresh3: number; fulls: number } {
  const t = sh('ip', ['-s', 'ntable', 'show', 'name', 'arp_cache']);
  return {
    entries: Number(/entries (\d+)/.exec(t)?.[1]),
    thresh3: Number(/thresh3 (\d+)/.exec(t)?.[1]),
    fulls: Number(/table_fulls (\d+)/.exec(t)?.[1]),
  };
}

describe("the kernel's neighbour table full (gc_thresh3)", kernelOnly(), () => {
  const id = runId();
  const n = 64 + (parseInt(id.slice(0, 2), 16) % 64);
  const ns = (r: string) => `xdpt-${id}-${r}`;
  const D = ns('d');
  const S = ns('s');
  const B = [ns('b1'), ns('b2')];
  const bip = [`10.${n}.2.2`, `10.${n}.3.2`];
  const ipd = (...a: string[]) => sh('ip', ['-n', D, ...a]);
  const mac = (netns: string, dev: string) => JSON.parse(sh('ip', ['-n', netns, '-j', 'link', 'show', dev]))[0].address;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let filler: ChildProcess | undefined;
  const rounds: { round: number; ok: number; enobufs: number; other: number }[] = [];
  const listeners: UdpListener[] = [];
  const status = async () => (await c.rules.getRule({ name: 'web' })).rule!.status! as RuleStatus;
  const entry = (i: number) => ipd('neigh', 'show', bip[i], 'dev', `b${i + 1}`).trim();

  /** `count` entries on fl (no rule's), made fresh every 2 s (test/helpers/neigh-fill.py); resolves after its first round. */
  const fill = async (count: number) => {
    const child = spawn('nsenter', [`--net=/run/netns/${D}`, 'python3', FILL, 'fl', String(count), '2000'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    filler = child;
    let buf = '';
    await new Promise<void>((resolve, reject) => {
      child.stdout!.on('data', (x) => {
        buf += x;
        const lines = buf.split('\n');
        buf = lines.pop()!;
        for (const l of lines) rounds.push(JSON.parse(l));
        if (rounds.length) resolve();
      });
      child.on('exit', (code) => reject(new Error(`neigh-fill exited ${code}`)));
    });
  };
  /** Rounds of the filler after the `from`th: the next one to end. */
  const nextRound = async (from: number) => {
    while (rounds.length <= from) await sleep(20);
    return rounds[from];
  };

  /** Datagrams over 60 flows, received per backend. */
  const send = async () => {
    const ls = await Promise.all(B.map((b, i) => UdpListener.start(b, bip[i], PORT)));
    listeners.push(...ls);
    const { sent } = await sendUdp(S, NOWHERE, PORT, 300, { flows: 60 }).done;
    await sleep(300);
    const got = await Promise.all(ls.map(async (l) => (await l.stop()).unique));
    return { sent, got };
  };

  before(() => {
    for (const x of [D, S, ...B]) sh('ip', ['netns', 'add', x]);
    ipd('link', 'set', 'lo', 'up');
    // Sender -> ingress "in" of the daemon's namespace.
    ipd('link', 'add', 'in', 'type', 'veth', 'peer', 'name', 'eth0', 'netns', S);
    ipd('link', 'set', 'in', 'up');
    sh('ip', ['-n', S, 'link', 'set', 'eth0', 'up']);
    sh('ip', ['-n', S, 'addr', 'add', '198.18.1.1/24', 'dev', 'eth0']);
    sh('ip', ['-n', S, 'neigh', 'replace', '198.18.1.254', 'lladdr', mac(D, 'in'), 'dev', 'eth0', 'nud', 'permanent']);
    sh('ip', ['-n', S, 'route', 'replace', 'default', 'via', '198.18.1.254', 'dev', 'eth0', 'onlink']);
    // Egresses b1, b2 -> backends.
    B.forEach((b, i) => {
      const eg = `b${i + 1}`;
      ipd('link', 'add', eg, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', b);
      ipd('link', 'set', eg, 'up');
      ipd('addr', 'add', `10.${n}.${i + 2}.1/24`, 'dev', eg);
      sh('ip', ['-n', b, 'link', 'set', 'lo', 'up']);
      sh('ip', ['-n', b, 'link', 'set', 'eth0', 'up']);
      sh('ip', ['-n', b, 'addr', 'add', `${bip[i]}/24`, 'dev', 'eth0']);
      // See the header: what a backend host of its own has in its own table.
      sh('ip', [
        '-n',
        b,
        'neigh',
        'replace',
        `10.${n}.${i + 2}.1`,
        'lladdr',
        mac(D, eg),
        'dev',
        'eth0',
        'nud',
        'permanent',
      ]);
    });
    // The interface whose entries fill the table (its peer up, so that it has a carrier: an ordinary LAN port).
    ipd('link', 'add', 'fl', 'type', 'veth', 'peer', 'name', 'flp');
    ipd('link', 'set', 'fl', 'up');
    ipd('link', 'set', 'flp', 'up');
    ipd('addr', 'add', '100.64.255.1/16', 'dev', 'fl');
  });

  after(async () => {
    filler?.kill();
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    // The daemon's namespace takes every filling entry with it.
    for (const x of [D, S, ...B]) shQuiet('ip', ['netns', 'del', x]);
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  it('keeps the backends that answer ARP, names the full table, and the traffic goes where it went', async () => {
    d = await DaemonProcess.start(id, ['--log-level', 'info'], {}, ['nsenter', `--net=/run/netns/${D}`, '--']);
    c = d.clients(d.unix);
    await c.rules.createRule({
      rule: {
        name: 'web',
        match: { protocol: Protocol.PROTOCOL_UDP, port: PORT, destination: '', sourcePrefixes: [] },
        ingressInterfaces: ['in'],
        backends: [
          { ip: bip[0], mac: '', interface: 'b1', weight: 2 },
          { ip: bip[1], mac: '', interface: 'b2', weight: 1 },
        ],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: {},
        generation: 0n,
      },
    });
    let s = await status();
    await until(
      () => `${s.state} ${s.message} ${s.backendStatus.map((b) => b.message).join(' | ')}`,
      async () =>
        (s = await status()).state === RuleState.RULE_STATE_ACTIVE &&
        s.backendStatus.every((b) => b.message === 'MAC resolved from the neighbour table'),
      15_000,
    );
    const baseline = await send();
    console.log(`# before: ${JSON.stringify(baseline)}; ${JSON.stringify(ntable())}`);
    assert.equal(baseline.got[0] + baseline.got[1], baseline.sent);
    assert.ok(baseline.got[0] > 0 && baseline.got[1] > 0, 'both backends receive');

    // Fill: gc_thresh3 entries and more (the host's other entries count too), all fresh; made fresh again every
    // 2 s (forced GC evicts only entries older than 5 s); then the backends' entries go, as an eviction takes them.
    const t3 = ntable().thresh3;
    // A host whose table is made far larger than the kernel's default (1024) would need as many entries here.
    assert.ok(t3 <= 65536, `gc_thresh3 ${t3}: too many entries to fill in a test`);
    const fulls0 = ntable().fulls;
    const count = t3 + 64;
    await fill(count);
    // Each followed by a round at once, so that the room it leaves is taken by the filler.
    for (let i = 0; i < 2; i++) {
      const r = rounds.length;
      filler!.stdin!.write(`del ${bip[i]} b${i + 1}\n`);
      await nextRound(r);
    }
    const first = rounds[rounds.length - 1];
    const refused = spawnSync(
      'ip',
      ['-n', D, 'neigh', 'add', `10.${n}.2.77`, 'dev', 'b1', 'lladdr', '02:00:00:00:00:77', 'nud', 'reachable'],
      { encoding: 'utf8' },
    );
    const full = ntable();
    console.log(
      `# filled: ${count} entries asked (${JSON.stringify(first)}); the backends' ` +
        `entries '${entry(0)}', '${entry(1)}'; a new entry: '${refused.stderr.trim()}'; ${JSON.stringify(full)} (table_fulls +${full.fulls - fulls0})`,
    );
    assert.match(refused.stderr, /No buffer space available/, 'premise: the kernel can make no new entry');

    // 5 s of the full table: the backends never out, the rule never lowered; the status names the table.
    const t0 = Date.now();
    let samples = 0;
    let out = 0;
    let lowered = 0;
    let named = 0;
    let kernelHeld = 0;
    const seen = new Set<string>();
    while (Date.now() - t0 < 5000) {
      s = await status();
      samples++;
      if (s.backendStatus.some((b) => !b.active)) out++;
      if (s.state !== RuleState.RULE_STATE_ACTIVE) lowered++;
      if (s.backendStatus.every((b) => /neighbour table full: \d+ entries, gc_thresh3 \d+/.test(b.message))) named++;
      if (/lladdr/.test(entry(0)) || /lladdr/.test(entry(1))) kernelHeld++;
      for (const b of s.backendStatus) seen.add(`${s.state} ${b.active} ${b.message}`);
      await sleep(200);
    }
    const during = await send();
    const still = ntable();
    console.log(
      `# full: ${samples} samples, out ${out}, rule not ACTIVE ${lowered}, table named ${named}, a backend's ` +
        `kernel entry held ${kernelHeld}; sent ${during.sent}, got ${JSON.stringify(during.got)}; ` +
        `${JSON.stringify(still)}\n# ${[...seen].join('\n# ')}`,
    );
    assert.ok(still.fulls > fulls0, 'premise: the kernel counted its table full');
    assert.equal(out, 0, `no backend taken out: ${[...seen].join(' / ')}`);
    assert.equal(lowered, 0, `the rule stayed ACTIVE: ${[...seen].join(' / ')}`);
    assert.ok(named >= samples / 2, `the status names the full table (${named} of ${samples})`);
    const last = await status();
    for (const b of last.backendStatus) {
      assert.match(
        b.message,
        new RegExp(`neighbour table full: \\d+ entries, gc_thresh3 ${t3} \\(net\\.ipv4\\.neigh\\.default\\.gc_thresh3`),
      );
      assert.match(b.message, /cannot hold an entry for 10\.\d+\.\d\.2 on b\d: MAC from our own ARP answer/);
    }
    assert.deepEqual(during.got, baseline.got, 'the same flows went to the same backends (weights kept)');
    assert.equal(during.got[0] + during.got[1], during.sent);

    // A backend that stops answering ARP (ARP off on its side) while the table is full: out, on that evidence,
    // its status naming the table; the other kept.
    sh('ip', ['-n', B[0], 'link', 'set', 'eth0', 'arp', 'off']);
    const t1 = Date.now();
    await until(
      () => `${s.state} ${s.backendStatus.map((b) => `${b.active} ${b.message}`).join(' | ')}`,
      async () => (s = await status()).backendStatus[0]?.active === false,
      25_000,
    );
    console.log(`# b1 silent: out after ${Date.now() - t1} ms: ${s.backendStatus[0].message}`);
    assert.match(
      s.backendStatus[0].message,
      /neighbour table full: .*cannot hold an entry for \S+ on b1, and no ARP request of ours has been answered since/,
    );
    assert.equal(s.backendStatus[1].active, true, s.backendStatus[1].message);
    assert.match(s.backendStatus[1].message, /neighbour table full: .*MAC from our own ARP answer/);
    const silent = await send();
    console.log(`# b1 silent: sent ${silent.sent}, got ${JSON.stringify(silent.got)}`);
    assert.deepEqual(silent.got, [0, silent.sent], "b1's flows moved to b2");
    sh('ip', ['-n', B[0], 'link', 'set', 'eth0', 'arp', 'on']);

    // The table emptied (the filling interface deleted): the kernel's entries again.
    filler?.kill();
    filler = undefined;
    ipd('link', 'del', 'fl');
    await until(
      () => `${s.state} ${s.backendStatus.map((b) => b.message).join(' | ')}`,
      async () =>
        (s = await status()).state === RuleState.RULE_STATE_ACTIVE &&
        s.backendStatus.every((b) => b.message === 'MAC resolved from the neighbour table'),
      20_000,
    );
  });
});
