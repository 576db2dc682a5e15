/**
 * Signals a real xdpctld gets (src/server/signals.ts; README "Signals"):
 *  - every terminating signal an operator or the system sends (SIGTERM, SIGINT, SIGQUIT, SIGALRM, ...):
 *    logged, the orderly stop, and with --cleanup-on-exit our program detached, GRO switched back off on a
 *    backend's veth peer, tx VLAN offload back on on an ingress's peer, the pins and the socket removed,
 *    exit 0; no child process left;
 *  - SIGHUP: logged, the --config file read again (a new text applied, a broken one refused with the last
 *    good configuration kept) and the TLS files too (a rotation taken at once, not at the next 60 s poll);
 *    the daemon serving all along;
 *  - SIGUSR2: logged, ignored, still serving; SIGUSR1, SIGPIPE, SIGXFSZ: still serving, SIGUSR1 opens no
 *    inspector;
 *  - SIGKILL: every child process of the daemon (its `ip monitor`) gone within 2 s.
 * Before: only SIGTERM and SIGINT were handled; the others ended the daemon by their default action with no
 * log line and no cleanup (SIGHUP too, even under nohup), SIGUSR1 opened Node's inspector on port 9229, and
 * the `ip monitor` child of a killed daemon was left running under PID 1.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { Protocol, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, sleep, until, within } from '../helpers/env.js';
import { makePki, servedCnAt } from '../helpers/pki.js';
import { Topology, type Host } from '../helpers/topology.js';

/** Every signal xdpctld stops on (signals.ts SIGNAL_ACTIONS 'stop'; SIGPOLL is SIGIO on Linux). */
const STOP_SIGNALS: NodeJS.Signals[] = [
  'SIGTERM',
  'SIGINT',
  'SIGQUIT',
  'SIGALRM',
  'SIGVTALRM',
  'SIGXCPU',
  'SIGPWR',
  'SIGIO',
  'SIGSTKFLT',
];

/** A process by pid and start time (a pid is given out again). */
interface Proc {
  pid: number;
  start: string;
  cmd: string;
}

/** /proc/PID/stat's fields after the command name: [state, ppid, ..., starttime at 19]. */
function statOf(pid: number): string[] | undefined {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** Every descendant of `pid` now. */
function descendants(pid: number): Proc[] {
  const all = readdirSync('/proc')
    .filter((e) => /^\d+$/.test(e))
    .map((e) => ({ pid: Number(e), f: statOf(Number(e)) }))
    .filter((p) => p.f !== undefined);
  const out: Proc[] = [];
  const parents = new Set([pid]);
  for (let grew = true; grew;) {
    grew = false;
    for (const p of all) {
      if (parents.has(Number(p.f![1])) && !parents.has(p.pid)) {
        parents.add(p.pid);
        let cmd = '';
        try {
          cmd = readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').split('\0').join(' ').trim();
        } catch {
          // gone meanwhile
        }
        out.push({ pid: p.pid, start: p.f![19], cmd });
        grew = true;
      }
    }
  }
  return out;
}

/** Still running (not gone, not a zombie, not another process with its pid). */
const running = (p: Proc) => {
  const f = statOf(p.pid);
  return f !== undefined && f[19] === p.start && f[0] !== 'Z';
};

describe('daemon signals', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const daemons: DaemonProcess[] = [];
  const dir = mkdtempSync('/tmp/xdpctl-test-signals-');
  let vm: Host, b1: Host;

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
  });
  after(async () => {
    for (const d of daemons) await d.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const start = async (extra: string[]) => {
    const d = await DaemonProcess.start(id, ['--log-level', 'info', ...extra]);
    daemons.push(d);
    return d;
  };
  const exited = (d: DaemonProcess) =>
    d.child.exitCode !== null || d.child.signalCode !== null
      ? Promise.resolve()
      : new Promise<void>((r) => d.child.once('exit', () => r()));
  const feature = (h: Host, name: string) =>
    new RegExp(`^${name}: (\\w+)`, 'm').exec(sh('ip', ['netns', 'exec', h.netns, 'ethtool', '-k', 'eth0']))![1];
  const xdpOf = (ifname: string) => JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp;
  const lines = (d: DaemonProcess, msg: RegExp) =>
    d.output
      .split('\n')
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown> & { msg: string }];
        } catch {
          return []; // not a log line, or one still being written
        }
      })
      .filter((l) => typeof l.msg === 'string' && msg.test(l.msg));
  const serving = async (d: DaemonProcess) => {
    assert.equal(d.child.exitCode, null, `exited: ${d.output.slice(-2000)}`);
    assert.equal(d.child.signalCode, null, `killed: ${d.output.slice(-2000)}`);
    const c = d.clients(d.unix); // plaintext on every daemon here (the TCP listener may serve TLS)
    assert.equal((await c.health.check({ service: '' })).status, 1 /* SERVING */);
    return c;
  };
  const rule: Rule = {
    name: 'web',
    match: { protocol: Protocol.PROTOCOL_UDP, port: 7985, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [],
    backends: [],
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
    labels: {},
    generation: 0n,
  };

  for (const signal of STOP_SIGNALS) {
    it(`${signal}: logged, the orderly stop, --cleanup-on-exit puts the host back, no child left`, async () => {
      assert.equal(feature(b1, 'generic-receive-offload'), 'off', "a new veth's default");
      assert.equal(feature(vm, 'tx-vlan-offload'), 'on', "a new veth's default");
      const d = await start(['--cleanup-on-exit', '--xdp-mode', 'native']);
      try {
        await d.clients().rules.createRule({
          rule: {
            ...rule,
            ingressInterfaces: [vm.hostIf],
            backends: [{ ip: b1.ip!, mac: b1.mac, interface: b1.hostIf, weight: 1 }],
          },
        });
        assert.ok(xdpOf(vm.hostIf), 'attached');
        assert.equal(feature(b1, 'generic-receive-offload'), 'on', 'switched on by the daemon');
        assert.equal(feature(vm, 'tx-vlan-offload'), 'off', 'turned off by the daemon');
        const children = descendants(d.child.pid!);
        assert.ok(
          children.some((p) => /\bip monitor label link neigh route$/.test(p.cmd)),
          JSON.stringify(children),
        );
        d.child.kill(signal);
        const code = await within(
          exited(d).then(() => d.child.exitCode),
          20_000,
          'still running after 20 s',
        );
        assert.equal(code, 0, `exit ${code} signal ${d.child.signalCode}: ${d.output.slice(-3000)}`);
        assert.equal(lines(d, new RegExp(`^${signal} received: shutting down$`)).length, 1, d.output.slice(-3000));
        assert.equal(lines(d, /^cleanup: host restored$/).length, 1, d.output.slice(-3000));
        assert.equal(lines(d, /^stopped$/).length, 1, d.output.slice(-3000));
        assert.equal(xdpOf(vm.hostIf), undefined, 'our program detached');
        assert.equal(existsSync(d.pinRoot), false, 'pins removed');
        assert.equal(existsSync(d.unix.slice('unix:'.length)), false, 'socket removed');
        assert.equal(feature(b1, 'generic-receive-offload'), 'off', 'GRO switched back off');
        assert.equal(feature(vm, 'tx-vlan-offload'), 'on', 'tx-vlan-offload back on');
        assert.deepEqual(children.filter(running), [], 'no child process left');
      } finally {
        // A failed case leaves the host as the next one expects it.
        await d.destroy();
        sh('ip', ['link', 'set', 'dev', vm.hostIf, 'xdp', 'off']);
        sh('ip', ['netns', 'exec', b1.netns, 'ethtool', '-K', 'eth0', 'gro', 'off']);
        sh('ip', ['netns', 'exec', vm.netns, 'ethtool', '-K', 'eth0', 'txvlan', 'on']);
      }
    });
  }

  it('SIGHUP reads the --config file again and goes on serving; SIGUSR1, SIGUSR2, SIGPIPE, SIGXFSZ are ignored', async () => {
    const file = `${dir}/links.yaml`;
    const sha = (text: string) => createHash('sha256').update(text).digest('hex');
    const entry = (name: string, port: number) =>
      `  - name: ${name}\n    port: ${port}\n    ingress: [${vm.hostIf}]\n    backends:\n` +
      `      - {ip: ${b1.ip}, mac: "${b1.mac}", interface: ${b1.hostIf}}\n`;
    const one = `rules:\n${entry('web', 7986)}`;
    writeFileSync(file, one);
    const d = await start(['--config', file, '--xdp-mode', 'generic']);
    const c = await serving(d);
    const reloads = () => lines(d, /^SIGHUP: reload done; still serving$/);

    // Unchanged: read again, still in force.
    d.child.kill('SIGHUP');
    await until('no reload line', () => !(reloads().length < 1), 10_000);
    assert.equal(lines(d, /^SIGHUP received: reading the configuration again; still serving$/).length, 1);
    let done = reloads()[0] as unknown as { config: { inForce: boolean; appliedSha256: string }; tls: string };
    assert.equal(done.config.inForce, true, JSON.stringify(done));
    assert.equal(done.config.appliedSha256, sha(one));
    assert.match(done.tls, /^no TLS/);
    await serving(d);

    // A new text: applied by the reload (or by the watch just before it): in force when the reload says so.
    const two = one + entry('dns', 7987);
    writeFileSync(file, two);
    d.child.kill('SIGHUP');
    await until('no second reload line', () => !(reloads().length < 2), 10_000);
    done = reloads()[1] as unknown as typeof done;
    assert.equal(done.config.inForce, true, JSON.stringify(done));
    assert.equal(done.config.appliedSha256, sha(two));
    const names = (await c.rules.listRules({})).rules.map((r) => r.name).sort();
    assert.deepEqual(names, ['dns', 'web']);

    // A broken text: refused, the last good configuration keeps running, still serving.
    writeFileSync(file, 'rules: [\n');
    d.child.kill('SIGHUP');
    await until('no third reload line', () => !(reloads().length < 3), 10_000);
    const refused = reloads()[2] as unknown as { config: { inForce: boolean; reason: string; appliedSha256: string } };
    assert.equal(refused.config.inForce, false, JSON.stringify(refused));
    assert.equal(refused.config.reason, 'InvalidYaml');
    assert.equal(refused.config.appliedSha256, sha(two), 'the last good text is what runs');
    assert.equal((await c.rules.listRules({})).rules.length, 2);

    // Signals with no meaning for xdpctld: SIGUSR2 logged, nothing else; SIGPIPE and SIGXFSZ Node ignores.
    for (const s of ['SIGUSR1', 'SIGUSR2', 'SIGPIPE', 'SIGXFSZ'] as const) {
      d.child.kill(s);
      await sleep(500);
      await serving(d);
      // SIGUSR1: Node drops it under --disable-sigusr1 (the daemon's shebang flags), before any listener.
      if (s === 'SIGUSR2') {
        assert.equal(
          lines(d, new RegExp(`^${s} received: .*; ignored, still serving$`)).length,
          1,
          d.output.slice(-2000),
        );
      }
    }
    assert.doesNotMatch(d.output, /Debugger listening/, 'SIGUSR1 opened no inspector');
    const listening = sh('ss', ['-Hltnp']);
    assert.doesNotMatch(listening, new RegExp(`:9229 .*pid=${d.child.pid},`), 'nothing on the inspector port');
    await serving(d);
    assert.equal(await d.stop('SIGTERM'), 0);
  });

  it('SIGHUP reads the TLS files again at once (not at the next 60 s poll)', async () => {
    makePki(dir, {
      server: ['server', 'IP:127.0.0.1,DNS:localhost'],
      rotated: ['rotated', 'IP:127.0.0.1,DNS:localhost'],
    });
    copyFileSync(`${dir}/server.pem`, `${dir}/tls.pem`);
    copyFileSync(`${dir}/server.key`, `${dir}/tls.key`);
    const d = await start(['--tls-cert', `${dir}/tls.pem`, '--tls-key', `${dir}/tls.key`]);
    const servedCn = () => servedCnAt(d.tcp, `${dir}/ca.pem`);
    assert.equal(await servedCn(), 'server');
    copyFileSync(`${dir}/rotated.key`, `${dir}/tls.key`);
    copyFileSync(`${dir}/rotated.pem`, `${dir}/tls.pem`);
    d.child.kill('SIGHUP');
    await until('no reload line', () => !(lines(d, /^SIGHUP: reload done; still serving$/).length < 1), 10_000);
    const done = lines(d, /^SIGHUP: reload done; still serving$/)[0] as unknown as {
      tls: { state: string; rotations: number };
      config: string;
    };
    assert.deepEqual(done.tls, { state: 'in use', rotations: 1 }, JSON.stringify(done));
    assert.match(done.config, /^no --config file/);
    assert.equal(await servedCn(), 'rotated');
    await serving(d);
    assert.equal(await d.stop('SIGTERM'), 0);
  });

  it('SIGKILL: no child process of the daemon is left after 2 s', async () => {
    // In a network namespace of its own, where nothing changes: its `ip monitor` gets no event to write, so
    // nothing but the kernel can end it (an event elsewhere on a busy host made a leaked one die by EPIPE).
    const quiet = topo.addHost('q');
    const d = await DaemonProcess.start(id, ['--log-level', 'info'], {}, [
      'nsenter',
      `--net=/run/netns/${quiet.netns}`,
    ]);
    daemons.push(d);
    const children = descendants(d.child.pid!);
    assert.ok(
      children.some((p) => /\bip monitor label link neigh route$/.test(p.cmd)),
      JSON.stringify(children),
    );
    d.child.kill('SIGKILL');
    await exited(d);
    const t0 = Date.now();
    while (children.some(running) && Date.now() - t0 < 2000) await sleep(50);
    assert.deepEqual(children.filter(running), [], `left after ${Date.now() - t0} ms`);
  });
});
