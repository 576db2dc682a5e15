/**
 * Slow clients: 20 WatchCounters streams at the fastest interval whose client
 * never reads (HTTP/2 clients that stop granting flow-control window) get one
 * window each and nothing more, and the daemon does not queue snapshots for
 * them: each snapshot is ~60 kB, so queueing would add ~110 MB of RSS in the
 * measured 10 s. (A residual growth of ~40 kB/s per blocked stream remains,
 * not explained yet: see the security report.) The HTTP/2 window holds what was sent; nice-grpc waits for
 * 'drain'; the counter hub keeps only the latest snapshot per watcher. A
 * reading watcher meanwhile keeps getting every snapshot.
 */
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { readFileSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { WatchCountersRequest } from '../../src/gen/xdpctl/v1/counters.js';
import { Protocol, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

const STREAMS = 20;

const rssKb = (pid: number) => Number(readFileSync(`/proc/${pid}/status`, 'utf8').match(/^VmRSS:\s+(\d+)/m)![1]);

describe('watch streams and slow clients', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess | undefined;
  let vm: Host, b: Host;
  const sessions: http2.ClientHttp2Session[] = [];

  before(async () => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b = topo.addHost('b', '198.18.2.1/24');
    d = await DaemonProcess.start(id, [
      '--xdp-mode',
      'generic',
      '--max-rules',
      '64',
      '--max-watch-streams',
      String(STREAMS + 1),
    ]);
  });
  after(async () => {
    sessions.forEach((s) => s.destroy());
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
  });

  it('a client that does not read gets one flow-control window; snapshots are not queued for it', async () => {
    // 16 rules x 64 backends: every snapshot lists 1024 backends (~60 kB encoded).
    const rules: Rule[] = Array.from({ length: 16 }, (_, r) => ({
      name: `r${r}`,
      match: { protocol: Protocol.PROTOCOL_UDP, port: 7000 + r, destination: '', sourcePrefixes: [] },
      ingressInterfaces: [vm.hostIf],
      backends: Array.from({ length: 64 }, (_, i) => ({
        ip: `198.18.${10 + r}.${i + 1}`,
        mac: b.mac,
        interface: b.hostIf,
      })),
      udpChecksum: 0,
      labels: {},
      generation: 0,
    }));
    const c = d!.clients();
    await c.rules.applyRules({ rules, validateOnly: false });

    const body = WatchCountersRequest.encode({ interval: { seconds: 0, nanos: 100_000_000 } }).finish();
    const frame = Buffer.concat([Buffer.from([0, 0, 0, 0, body.length]), body]);
    const reqs: http2.ClientHttp2Stream[] = [];
    for (let i = 0; i < STREAMS; i++) {
      const s = http2.connect(`http://${d!.tcp}`);
      sessions.push(s);
      const req = s.request({
        ':method': 'POST',
        ':path': '/xdpctl.v1.CounterService/WatchCounters',
        'content-type': 'application/grpc',
        te: 'trailers',
      });
      req.end(frame);
      // Never consumed: once its small buffer is full the client grants no more window.
      req.pause();
      reqs.push(req);
    }

    // A reading watcher alongside: it must keep getting snapshots all along.
    const ac = new AbortController();
    let reads = 0;
    let size = 0;
    const reader = (async () => {
      for await (const m of c.counters.watchCounters(
        { interval: { seconds: 0, nanos: 100_000_000 } },
        { signal: ac.signal },
      )) {
        reads++;
        size = JSON.stringify(m).length;
      }
    })().catch(() => undefined);

    await sleep(3000); // the windows fill
    const pid = d!.child.pid!;
    const rss0 = rssKb(pid);
    const buffered0 = reqs.map((r) => r.readableLength);
    const reads0 = reads;
    await sleep(10_000);
    const rss1 = rssKb(pid);
    const buffered1 = reqs.map((r) => r.readableLength);
    const reads1 = reads;
    // All 20 streams are live on the daemon: with the reader, they use the identity's whole budget.
    const more = c.counters.watchCounters({})[Symbol.asyncIterator]();
    const extra = await more.next().then(
      () => 'opened',
      (e: Error) => e.message,
    );
    ac.abort();
    await reader;

    const grewMb = (rss1 - rss0) / 1024;
    const snapshotKb = (await c.counters.getCounters({})).counters!.backends.length * 0.055;
    const unboundedMb = (STREAMS * 10 * 10 * snapshotKb) / 1024;
    console.log(
      `daemon RSS ${(rss0 / 1024).toFixed(1)} -> ${(rss1 / 1024).toFixed(1)} MB over 10 s with ${STREAMS} ` +
        `non-reading watchers (unbounded queueing: ~${unboundedMb.toFixed(0)} MB); buffered per stream ` +
        `${Math.min(...buffered1)}-${Math.max(...buffered1)} B, window left ${reqs[0].state.localWindowSize} B; ` +
        `reader got ${reads1 - reads0} snapshots (~${size} B as JSON)`,
    );
    assert.ok(unboundedMb > 80, `the test would see unbounded growth (${unboundedMb} MB)`);
    assert.ok(grewMb < unboundedMb / 3, `RSS grew ${grewMb.toFixed(1)} MB`);
    assert.match(extra, /RESOURCE_EXHAUSTED.*already has 21 watch streams open/);
    for (const [i, b0] of buffered0.entries()) {
      assert.ok(b0 > 0, `stream ${i} received its first snapshot(s)`);
      assert.equal(buffered1[i], b0, `stream ${i} received nothing more while not reading`);
    }
    assert.ok(reads1 - reads0 >= 60, `the reading watcher got ${reads1 - reads0} snapshots in 10 s`);
  });
});
