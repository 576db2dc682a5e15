/**
 * A host state that passes is a wait, not a refusal; a refusal for what the host is, re-evaluated with the
 * checks the apply runs (observe, don't assume: a refusal lasts as long as its reason). Real daemons, real
 * namespaces, veths and pings.
 *
 * 1. Config-file mode, a link into a veth whose peer is down (boot order, a container restarting): before,
 *    the file was refused (PreconditionFailed "... its peer eth0 in netns N is down") and never looked at
 *    again when the peer came up (18 s later: still refused, the link absent, nothing logged), while a
 *    running link whose peer goes down is kept and marked not forwarding. Now the file is in force at once,
 *    the direction "not forwarding" (no carrier: its peer is down, health xdpctl.datapath NOT_SERVING) and
 *    forwarding within a couple of seconds of the peer coming up (GRO switched on by the reconciler).
 * 2. Config-file mode with --no-fix-veth-peers, a link into a veth whose peer is up without NAPI (GRO off):
 *    refused (a state the daemon is told not to repair); `ethtool -K eth0 gro on` in the peer's namespace
 *    makes the file apply within a couple of seconds, logged once (before: the re-check ran only the file's
 *    validation, which never changes with the peer's GRO, so the file stayed refused until edited).
 * 3. The API: `xdpctl links connect A B` with B's peer down is accepted (exit 0, the warning saying why it
 *    does not forward), as
 *    `rules add` with a backend behind such a veth is (INACTIVE); before: refused, exit 6.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus as Serving } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import type { ConfigFileStatus } from '../../src/gen/xdpctl/v1/daemon.js';
import type { LinkStatus } from '../../src/gen/xdpctl/v1/link.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { CLI, kernelOnly, removeIproute2BpffsDirs, runId, sh, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

/** Two pairs of hosts: x <-> y (the good file), p <-> q (the link added). */
function lab(id: string) {
  const topo = new Topology(id);
  const dir = `/tmp/xdpctl-test-${id}-pd`;
  let d: DaemonProcess | undefined;
  const h = {} as Record<'x' | 'y' | 'p' | 'q', Host>;
  return {
    topo,
    dir,
    file: `${dir}/xdpctl.yaml`,
    h,
    get d() {
      return d!;
    },
    set d(v: DaemonProcess) {
      d = v;
    },
    setup() {
      h.x = topo.addHost('x', '198.18.44.1/24');
      h.y = topo.addHost('y', '198.18.44.2/24');
      h.p = topo.addHost('p', '198.18.45.1/24');
      h.q = topo.addHost('q', '198.18.45.2/24');
      mkdirSync(dir, { recursive: true, mode: 0o700 });
    },
    async teardown() {
      await d?.destroy();
      topo.destroy();
      rmSync(dir, { recursive: true, force: true });
      XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
      rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
      removeIproute2BpffsDirs();
    },
    inNs(role: 'x' | 'y' | 'p' | 'q', cmd: string) {
      sh('ip', ['netns', 'exec', h[role].netns, 'sh', '-c', cmd]);
    },
    async status(): Promise<ConfigFileStatus> {
      return (await d!.clients().daemon.getStatus({})).configFile!;
    },
    async health(service: string) {
      return (await d!.clients().health.check({ service })).status;
    },
    async link(a: string): Promise<LinkStatus | undefined> {
      return (await d!.clients().links.listLinks({ pageSize: 0, pageToken: '' })).links.find((l) => l.a === a)?.status;
    },
    count(re: RegExp) {
      return d!.output.split('\n').filter((l) => re.test(l)).length;
    },
  };
}

describe('config-file mode: a link into a veth whose peer is down waits for it', kernelOnly(), () => {
  const id = runId();
  const L = lab(id);
  before(() => L.setup());
  after(() => L.teardown());

  it('the file is in force at once, the direction not forwarding; the peer up: forwarding within 3 s', async (t) => {
    const { x, y, p, q } = L.h;
    writeFileSync(L.file, `links:\n  ${x.hostIf}: ${y.hostIf}\n`);
    L.d = await DaemonProcess.start(id, ['--config', L.file, '--log-level', 'info']);
    assert.equal((await L.status()).inForce, true);
    assert.equal(L.topo.ping('x', y.ip!), true, 'the good file forwards');

    L.inNs('q', 'ip link set eth0 down'); // the peer not up yet (boot order, a container restarting)
    writeFileSync(L.file, `links:\n  ${x.hostIf}: ${y.hostIf}\n  ${p.hostIf}: ${q.hostIf}\n`);
    await until(
      async () => `in force: ${JSON.stringify(await L.status())}`,
      async () => (await L.status()).inForce && (await L.link(p.hostIf)) !== undefined,
      3000,
    );
    assert.equal(L.count(/"msg":"config applied"/), 2, 'the new file logged applied once');
    assert.equal(L.count(/"msg":"config [^"]* not applied/), 0, 'never refused');
    assert.equal(await L.health('xdpctl.config'), Serving.SERVING);
    // What the host is: q has no carrier (its peer down), so p -> q cannot transmit and q receives nothing.
    await until(
      async () => `p -> q not forwarding, saying why: ${JSON.stringify(await L.link(p.hostIf))}`,
      async () => {
        const s = (await L.link(p.hostIf))!;
        return (
          !s.aToBActive &&
          !s.bToAActive &&
          s.warnings.some((w) => w.includes(`egress ${q.hostIf} has no carrier`)) &&
          s.warnings.some((w) => w.includes(`ingress ${q.hostIf} has no carrier`))
        );
      },
      3000,
    );
    await until(
      'xdpctl.datapath NOT_SERVING: a link not forwarding',
      async () => (await L.health('xdpctl.datapath')) === Serving.NOT_SERVING,
      3000,
    );
    assert.equal(L.topo.ping('x', y.ip!), true, 'x <-> y forwards meanwhile');

    L.inNs('q', 'ip link set eth0 up');
    const up = Date.now();
    await until('ping p -> q across the link', () => L.topo.ping('p', q.ip!, 1), 3000);
    const took = Date.now() - up;
    const s = (await L.link(p.hostIf))!;
    assert.deepEqual([s.aToBActive, s.bToAActive], [true, true], s.warnings.join('; '));
    await until('xdpctl.datapath SERVING', async () => (await L.health('xdpctl.datapath')) === Serving.SERVING, 3000);
    assert.equal(await L.health('xdpctl.config'), Serving.SERVING);
    assert.equal((await L.status()).inForce, true);
    assert.equal(L.topo.ping('x', y.ip!), true, 'x <-> y still forwards');
    t.diagnostic(`ping p -> q answered ${took} ms after the peer came up`);
    assert.ok(took < 3000, `forwarding ${took} ms after the peer came up`);
  });
});

describe(
  'config-file mode: a refusal for a veth peer without NAPI, re-evaluated as the peer changes',
  kernelOnly(),
  () => {
    const id = runId();
    const L = lab(id);
    before(() => L.setup());
    after(() => L.teardown());

    it('--no-fix-veth-peers, the peer without GRO: refused; GRO switched on there: in force within 3 s, pinging', async (t) => {
      const { x, y, p, q } = L.h;
      // The daemon repairs nothing: every peer that takes redirects has GRO on, except q's.
      for (const r of ['x', 'y', 'p'] as const) L.inNs(r, 'ethtool -K eth0 gro on');
      L.inNs('q', 'ethtool -K eth0 gro off');
      writeFileSync(L.file, `links:\n  ${x.hostIf}: ${y.hostIf}\n`);
      L.d = await DaemonProcess.start(id, ['--config', L.file, '--log-level', 'info', '--no-fix-veth-peers']);
      assert.equal((await L.status()).inForce, true);
      assert.equal(L.topo.ping('x', y.ip!), true, 'the good file forwards');

      writeFileSync(L.file, `links:\n  ${x.hostIf}: ${y.hostIf}\n  ${p.hostIf}: ${q.hostIf}\n`);
      await until('refused', async () => !(await L.status()).inForce, 3000);
      let st = await L.status();
      assert.equal(st.inForceCondition?.reason, 'PreconditionFailed', st.inForceCondition?.message);
      assert.match(st.problems[0].description, new RegExp(`its peer eth0 in netns ${q.netns} has neither`));
      assert.equal(await L.health('xdpctl.config'), Serving.NOT_SERVING);
      assert.equal(await L.link(p.hostIf), undefined, 'nothing of the refused file written');

      L.inNs('q', 'ethtool -K eth0 gro on'); // switched on while the peer is up: it has NAPI now
      const on = Date.now();
      await until(
        async () => `in force: ${JSON.stringify(await L.status())}`,
        async () => (await L.status()).inForce,
        3000,
      );
      const took = Date.now() - on;
      t.diagnostic(`in force ${took} ms after GRO was switched on`);
      st = await L.status();
      assert.equal(st.inForceCondition?.reason, 'Applied');
      assert.equal(await L.health('xdpctl.config'), Serving.SERVING);
      await until('ping p -> q across the link', () => L.topo.ping('p', q.ip!, 1), 3000);
      assert.equal(L.topo.ping('x', y.ip!), true, 'x <-> y still forwards');
      assert.equal(L.count(/"msg":"config [^"]* not applied: .*has neither/), 1, 'the refusal logged once');
      assert.equal(L.count(/"msg":"config applied"/), 2, 'the file logged applied once, when it applied');
      assert.ok(took < 3000, `in force ${took} ms after GRO was switched on`);
    });
  },
);

describe('the API: a link into a veth whose peer is down is accepted, as a rule is', kernelOnly(), () => {
  const id = runId();
  const L = lab(id);
  before(() => L.setup());
  after(() => L.teardown());

  it('xdpctl links connect: exit 0, the direction not forwarding; the peer up: pinging within 3 s', async () => {
    const { p, q } = L.h;
    L.d = await DaemonProcess.start(id, ['--log-level', 'info']);
    L.inNs('q', 'ip link set eth0 down');
    const cli = spawnSync(CLI, ['links', 'connect', p.hostIf, q.hostIf], {
      env: { ...process.env, XDPCTL_SERVER: L.d.unix },
      encoding: 'utf8',
    });
    assert.equal(cli.status, 0, `${cli.stdout}${cli.stderr}`);
    assert.match(cli.stdout, new RegExp(`connected \\(.*egress ${q.hostIf} has no carrier`));
    const s = (await L.link(p.hostIf))!;
    assert.deepEqual([s.aToBActive, s.bToAActive], [false, false], s.warnings.join('; '));
    assert.ok(
      s.warnings.some((w) => w.includes(`egress ${q.hostIf} has no carrier`)),
      s.warnings.join('; '),
    );

    L.inNs('q', 'ip link set eth0 up');
    await until('ping p -> q across the link', () => L.topo.ping('p', q.ip!, 1), 3000);
    await until(
      async () => `forwarding: ${JSON.stringify(await L.link(p.hostIf))}`,
      async () => {
        const x = (await L.link(p.hostIf))!;
        return x.aToBActive && x.bToAActive;
      },
      3000,
    );
  });
});
