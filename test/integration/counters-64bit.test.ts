/**
 * 64-bit counters are exact end to end. A byte counter passes 2^53 after
 * about 8 days at 100 Gbit/s; a double cannot hold such values exactly.
 * The test writes per-CPU values summing to 2^53 + 1 (packets) and 2^64 - 1
 * (bytes, the largest uint64) into the real pinned maps of a running daemon,
 * then reads them through the TS client (bigint), the Python client (proto3
 * JSON strings, exact) and the CLI (printed digit for digit).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { zeroBackendStats, zeroRuleStats } from '../../src/server/core/dataplane.js';
import { openPinnedMap, type BpfMap } from '../../src/server/dataplane/bpf-map.js';
import { backendStats, ruleStats, u32, type BackendStats, type RuleStats } from '../../src/server/dataplane/codec.js';
import { possibleCpus } from '../../src/server/dataplane/libbpf.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { CLI, kernelOnly, runId, sleep } from '../helpers/env.js';
import { runPythonClient } from '../helpers/python-client.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp } from '../helpers/udp.js';

const P53_1 = 2n ** 53n + 1n; // 9007199254740993: the first integer a double cannot hold
const U64_MAX = 2n ** 64n - 1n; // 18446744073709551615

/** Values for each CPU that sum to `total` (split over two CPUs when there are two). */
function spread<T>(make: (share: (total: bigint, half: bigint) => bigint) => T): T[] {
  if (possibleCpus() < 2) return [make((total) => total)];
  return [make((total, half) => half), make((total, half) => total - half)];
}

describe('64-bit counters end to end', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess;
  let c: Clients;
  let vm: Host, b1: Host;
  const maps: BpfMap<number, unknown>[] = [];
  let rs: BpfMap<number, RuleStats>;
  let bs: BpfMap<number, BackendStats>;
  let ruleId: number | undefined;
  let backendId: number | undefined;

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    topo.routeToXdp('vm');
    d = await DaemonProcess.start(`c64${id}`);
    c = d.clients();
  });
  after(async () => {
    maps.forEach((m) => m.close());
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-c64${id}`);
  });

  it('a per-CPU sum of 2^53+1 packets and 2^64-1 bytes is exact in the API, the Python client and the CLI', async () => {
    await c.rules.createRule({
      rule: {
        name: 'big',
        match: { port: 7999 },
        ingressInterfaces: [vm.hostIf],
        backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf }],
      },
    });
    // One real datagram marks the rule's and the backend's counter entries.
    await sendUdp(vm.netns, '198.18.9.9', 7999, 1).done;
    let got = 0n;
    for (let i = 0; i < 100 && got !== 1n; i++) {
      const { counters } = await c.counters.getCounters({ filter: { rules: ['big'] } });
      got = counters!.rules[0]?.redirectedPackets ?? 0n;
      if (got !== 1n) await sleep(50);
    }
    assert.equal(got, 1n, 'the datagram was redirected and counted');

    const pins = `${d.pinRoot}/maps`;
    rs = openPinnedMap(`${pins}/rule_stats`, u32, ruleStats);
    bs = openPinnedMap(`${pins}/backend_stats`, u32, backendStats);
    maps.push(rs as BpfMap<number, unknown>, bs as BpfMap<number, unknown>);
    const sum = <V extends Record<string, bigint>>(per: V[], k: keyof V) => per.reduce((n, v) => n + v[k], 0n);
    ruleId = rs.entriesPerCpu().find(([, per]) => sum(per, 'redirected') === 1n)?.[0];
    backendId = bs.entriesPerCpu().find(([, per]) => sum(per, 'packets') === 1n)?.[0];
    assert.ok(ruleId !== undefined && backendId !== undefined, 'the counter entries of the datagram');

    rs.putPerCpu(
      ruleId!,
      spread<RuleStats>((share) => ({
        matched: share(P53_1, 2n ** 53n),
        matchedBytes: share(U64_MAX, 2n ** 63n),
        redirected: share(P53_1, 2n ** 53n),
        redirectedBytes: share(U64_MAX, 2n ** 63n),
        filtered: 0n,
        noBackend: 0n,
        redirectErrors: 0n,
      })),
    );
    bs.putPerCpu(
      backendId!,
      spread<BackendStats>((share) => ({
        packets: share(P53_1, 2n ** 53n),
        bytes: share(U64_MAX, 2n ** 63n),
        redirectErrors: 0n,
      })),
    );

    // Unary reads share a snapshot read within the hub's tick: wait until one shows the new values.
    for (let i = 0; i < 50; i++) {
      const { counters } = await c.counters.getCounters({ filter: { rules: ['big'] } });
      if (counters!.rules[0].matchedPackets !== 1n) break;
      await sleep(100);
    }
    // The generated TypeScript client: bigint.
    const { counters } = await c.counters.getCounters({ filter: { rules: ['big'] } });
    assert.equal(counters!.rules[0].matchedPackets, P53_1);
    assert.equal(counters!.rules[0].redirectedPackets, P53_1);
    assert.equal(counters!.rules[0].matchedBytes, U64_MAX);
    assert.equal(counters!.backends[0].packets, P53_1);
    assert.equal(counters!.backends[0].bytes, U64_MAX);
    for await (const m of c.counters.watchCounters({ filter: { rules: ['big'] } })) {
      assert.equal(m.counters!.rules[0].redirectedPackets, P53_1);
      assert.equal(m.counters!.backends[0].bytes, U64_MAX);
      break;
    }

    // gRPC's C core with protobuf's JSON mapping: uint64 as exact decimal strings.
    const py = await runPythonClient(d.unix, [
      { op: 'unary', method: 'xdpctl.v1.CounterService/GetCounters', request: { filter: { rules: ['big'] } } },
    ]);
    const pc = (
      py.results[0].response as { counters: { rules: Record<string, string>[]; backends: Record<string, string>[] } }
    ).counters;
    assert.equal(pc.rules[0].matchedPackets, '9007199254740993');
    assert.equal(pc.rules[0].redirectedBytes, '18446744073709551615');
    assert.equal(pc.backends[0].packets, '9007199254740993');

    // The CLI prints them digit for digit, in every format.
    const cli = (...args: string[]) =>
      spawnSync(CLI, ['--server', d.unix, ...args], { encoding: 'utf8', timeout: 30_000 });
    const get = cli('rules', 'get', 'big');
    assert.equal(get.status, 0, get.stderr);
    assert.match(get.stdout, /^matched:\s+9007199254740993 packets, 16\.0 EiB$/m);
    assert.match(get.stdout, /^redirected:\s+9007199254740993 packets/m);
    assert.match(get.stdout, new RegExp(`^0\\s+${b1.ip!.replace(/\./g, '\\.')}\\s.*\\s9007199254740993\\s`, 'm'));
    const json = cli('-o', 'json', 'rules', 'get', 'big');
    assert.equal(json.status, 0, json.stderr);
    assert.match(json.stdout, /"matchedPackets": "9007199254740993"/);
    assert.match(json.stdout, /"bytes": "18446744073709551615"/);
    const watch = cli('watch', 'backends', '--count', '1', '-o', 'json');
    assert.equal(watch.status, 0, watch.stderr);
    assert.match(watch.stdout, /"packets":"9007199254740993","bytes":"18446744073709551615"/);
  });

  it('a per-CPU sum of 2^64 or more wraps modulo 2^64 (as a u64 counter and SNMP Counter64 do), never INTERNAL', async (t) => {
    if (possibleCpus() < 2) return t.skip('one possible CPU: no per-CPU sum can pass 2^64 - 1');
    assert.ok(ruleId !== undefined && backendId !== undefined, 'the first test found the entries');
    // CPU 0 at the top of its range, CPU 1 a little more: 2^64 + 4 -> 4; 2^63 + 2^63 -> 0.
    const per = <V>(a: V, b: V) => [a, b, ...Array<V>(possibleCpus() - 2).fill(b)];
    rs.putPerCpu(
      ruleId,
      per<RuleStats>(
        {
          ...zeroRuleStats(),
          matched: U64_MAX,
          matchedBytes: 2n ** 63n,
          redirected: 7n,
          redirectedBytes: U64_MAX,
          filtered: 2n ** 63n,
        },
        {
          ...zeroRuleStats(),
          matched: 5n,
          matchedBytes: 2n ** 63n,
          redirected: 1n,
          redirectedBytes: 1n,
          filtered: 2n ** 63n + 3n,
        },
      ).map((v, i) => (i < 2 ? v : zeroRuleStats())),
    );
    bs.putPerCpu(
      backendId,
      per<BackendStats>(
        { packets: U64_MAX, bytes: U64_MAX, redirectErrors: 0n },
        { packets: 2n, bytes: 10n, redirectErrors: 0n },
      ).map((v, i) => (i < 2 ? v : zeroBackendStats())),
    );
    let rule;
    for (let i = 0; i < 50; i++) {
      const { counters } = await c.counters.getCounters({ filter: { rules: ['big'] } });
      rule = counters!.rules[0];
      if (rule.matchedPackets === 4n) break;
      await sleep(100);
    }
    assert.equal(rule!.matchedPackets, 4n, '2^64 - 1 + 5');
    assert.equal(rule!.matchedBytes, 0n, '2^63 + 2^63');
    assert.equal(rule!.redirectedPackets, 8n);
    assert.equal(rule!.redirectedBytes, 0n, '2^64 - 1 + 1');
    assert.equal(rule!.filteredPackets, 3n);
    const { counters } = await c.counters.getCounters({ filter: { rules: ['big'] } });
    assert.equal(counters!.backends[0].packets, 1n);
    assert.equal(counters!.backends[0].bytes, 9n);
    for await (const m of c.counters.watchCounters({ filter: { rules: ['big'] } })) {
      assert.equal(m.counters!.rules[0].matchedPackets, 4n);
      break;
    }
    const py = await runPythonClient(d.unix, [
      { op: 'unary', method: 'xdpctl.v1.CounterService/GetCounters', request: { filter: { rules: ['big'] } } },
    ]);
    assert.ok(py.results[0].ok, JSON.stringify(py.results[0]));
    const get = spawnSync(CLI, ['--server', d.unix, 'rules', 'get', 'big'], { encoding: 'utf8', timeout: 30_000 });
    assert.equal(get.status, 0, get.stderr);
    assert.match(get.stdout, /^matched:\s+4 packets/m);
  });
});
