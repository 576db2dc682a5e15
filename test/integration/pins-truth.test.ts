/**
 * The pins and the state store say which datapath is whose (docs/architecture.md: "a start never removes a datapath
 * that was forwarding"; "nothing attached that ListInterfaces does not show"; the reconciler re-pins).
 * Real daemons, veths and traffic:
 *  - `--no-state` over a pin root whose maps hold rules is refused like a missing store (it would start
 *    empty and wipe them, leaving our program on the ingress unlisted); a wrong but existing
 *    `--state-dir` (another daemon's store: it records the pin root it belongs to) is refused too; the
 *    datapath keeps forwarding through both refusals; `--reset-datapath` clears and detaches;
 *  - the tracepoint links pinned under PIN/links (they count redirects the kernel drops while no daemon
 *    runs) are put back when removed under the running daemon, alone or with the whole pin root, so a
 *    restart's counters say what the kernel did meanwhile.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { after, afterEach, describe, it } from 'node:test';

import { Protocol, RuleState, UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, sleep, until } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';
const TRACE_LINKS = ['xdpctl_redirect_err', 'xdpctl_devmap_xmit', 'xdpctl_napi_poll'];

describe('pins and state store: whose datapath, put back', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const daemons: DaemonProcess[] = [];
  const listeners: UdpListener[] = [];
  let d: DaemonProcess | undefined;
  let c: Clients;

  const start = async (tag: string, args: string[]) => {
    d = await DaemonProcess.start(`${id}${tag}`, ['--log-level', 'info', ...args]);
    daemons.push(d);
    c = d.clients();
    return d;
  };
  /** A start that must be refused: its output. */
  const refused = async (tag: string, args: string[]) => {
    const e = await DaemonProcess.start(`${id}${tag}`, ['--log-level', 'info', ...args]).then(
      (x) => {
        daemons.push(x);
        return assert.fail(`started: ${x.output}`);
      },
      (err: Error) => err,
    );
    assert.match(e.message, /^xdpctld exited 1: /);
    return e.message;
  };
  /** The latest first: an earlier daemon's destroy() unpins a pin root a later one may still run on. */
  const destroyAll = async () => {
    for (const x of daemons.splice(0).reverse()) await x.destroy().catch(() => undefined);
  };
  afterEach(destroyAll);
  after(async () => {
    listeners.forEach((l) => l.kill());
    await destroyAll();
    topo.destroy();
    for (const tag of ['a', 'y', 'b', 'm']) {
      XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}${tag}`);
      rmSync(`/tmp/xdpctl-test-${id}${tag}-state`, { recursive: true, force: true });
    }
    rmSync(`/tmp/xdpctl-test-${id}m-empty`, { recursive: true, force: true });
  });

  const rule = (name: string, port: number, ingress: string, to: Host): Rule => ({
    name,
    match: { protocol: Protocol.PROTOCOL_UDP, port, destination: '', sourcePrefixes: [] },
    ingressInterfaces: [ingress],
    backends: [{ ip: to.ip!, mac: to.mac, interface: to.hostIf, weight: 1 }],
    udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
    labels: {},
    generation: 0n,
  });
  /** Send `n` datagrams from `from` to `port`; how many `to` received. */
  async function delivered(from: Host, to: Host, port: number, n = 50) {
    const l = await UdpListener.start(to.netns, to.ip!, port);
    listeners.push(l);
    await sendUdp(from.netns, NOWHERE, port, n, { flows: 10 }).done;
    await sleep(200);
    return (await l.stop()).unique;
  }
  const progOn = (ifname: string) =>
    (JSON.parse(sh('ip', ['-j', '-d', 'link', 'show', ifname]))[0].xdp as { prog?: { id: number } } | undefined)?.prog
      ?.id;

  it("--no-state or another daemon's --state-dir over pins that hold rules: refused, the datapath untouched; --reset-datapath clears and detaches", async () => {
    const vm = topo.addHost('avm', '198.18.1.1/24');
    const b1 = topo.addHost('ab1', '198.18.2.1/24');
    topo.routeToXdp(vm.role);
    const port = 7601;
    await start('a', ['--xdp-mode', 'generic']);
    await c.rules.createRule({ rule: rule('web', port, vm.hostIf, b1) });
    assert.equal(await delivered(vm, b1, port), 50, 'forwards at first');
    const prog = progOn(vm.hostIf);
    assert.ok(prog, 'our program on the ingress');
    const pinRoot = d!.pinRoot;
    await d!.stop();

    // --no-state on the same pin root: would start empty and wipe the rule.
    let msg = await refused('a', ['--xdp-mode', 'generic', '--no-state']);
    assert.match(
      msg,
      new RegExp(
        `--no-state: this daemon starts with no rule and no link, but the pinned datapath under ${pinRoot} still ` +
          'forwards 1 rule match entry and 0 link directions: refusing to start and wipe them\\. Start with the ' +
          '--state-dir this datapath belongs to .*--reset-datapath',
      ),
    );
    assert.equal(await delivered(vm, b1, port), 50, 'still forwards after the refused --no-state start');
    assert.equal(progOn(vm.hostIf), prog, 'the same program on the ingress');

    // Another daemon's store (existing, empty): it belongs to that daemon's pin root.
    const other = await start('y', ['--xdp-mode', 'generic']);
    const otherState = other.stateDir;
    const otherPins = other.pinRoot;
    await other.stop();
    msg = await refused('a', ['--xdp-mode', 'generic', '--state-dir', otherState]);
    assert.match(
      msg,
      new RegExp(
        `the state store ${otherState}/state\\.db belongs to the datapath under ${otherPins}, not ${pinRoot}, but ` +
          `the pinned datapath under ${pinRoot} still forwards 1 rule match entry .*refusing to start and wipe them`,
      ),
    );
    assert.equal(await delivered(vm, b1, port), 50, 'still forwards after the refused start on a wrong --state-dir');
    assert.equal(progOn(vm.hostIf), prog, 'the same program on the ingress');

    // Its own store: adopted, forwarding.
    await start('a', ['--xdp-mode', 'generic']);
    assert.equal((await c.rules.getRule({ name: 'web' })).rule!.status!.state, RuleState.RULE_STATE_ACTIVE);
    assert.equal(await delivered(vm, b1, port), 50, 'forwards with its own store');
    await d!.stop();

    // The explicit choice: --no-state --reset-datapath clears the maps and detaches the program.
    await start('a', ['--xdp-mode', 'generic', '--no-state', '--reset-datapath']);
    assert.match(
      d!.output,
      /--no-state: this daemon starts with no rule and no link, .*--reset-datapath: clearing them/,
    );
    assert.equal((await c.rules.listRules({})).rules.length, 0);
    assert.equal(progOn(vm.hostIf), undefined, 'nothing attached that ListInterfaces does not show');
    assert.deepEqual((await c.interfaces.listInterfaces({})).interfaces, []);
  });

  it("a --max-rules other than the pins' does not bypass the guard: --no-state and an empty --state-dir are refused before the kernel is touched; its own store migrates; --reset-datapath clears", async () => {
    const vm = topo.addHost('mvm', '198.18.4.1/24');
    const b1 = topo.addHost('mb1', '198.18.5.1/24');
    topo.routeToXdp(vm.role);
    const port = 7602;
    await start('m', ['--xdp-mode', 'generic']); // --max-rules 16 (the helper's)
    await c.rules.createRule({ rule: rule('web', port, vm.hostIf, b1) });
    assert.equal(await delivered(vm, b1, port), 50, 'forwards at first');
    const prog = progOn(vm.hostIf);
    const pinRoot = d!.pinRoot;
    await d!.stop();
    /** What the kernel and bpffs hold for this datapath: every pin, the maps' ids, the ingress's program. */
    const kernel = () => ({
      pins: sh('find', [pinRoot]).split('\n').sort(),
      maps: sh('bpftool', ['-j', 'map', 'show', 'pinned', `${pinRoot}/maps/rule_match`]),
      entries: sh('bpftool', ['-j', 'map', 'dump', 'pinned', `${pinRoot}/maps/rule_match`]),
      prog: progOn(vm.hostIf),
    });
    const before = kernel();
    assert.match(before.maps, /"max_entries":128\b/, "the pins hold 16 rules' match entries (4 each), two generations");

    // A larger --max-rules with --no-state: it would migrate to new, empty maps and detach the program.
    let msg = await refused('m', ['--xdp-mode', 'generic', '--max-rules', '64', '--no-state', '--log-level', 'debug']);
    assert.match(
      msg,
      new RegExp(
        `--no-state: this daemon starts with no rule and no link, but the pinned datapath under ${pinRoot} still ` +
          'forwards 1 rule match entry and 0 link directions: refusing to start and wipe them',
      ),
    );
    assert.doesNotMatch(msg, /migrating|detaching|libbpf/, 'refused before any map was made or program loaded');
    assert.deepEqual(kernel(), before, 'pins, map ids, entries and the attached program unchanged');
    assert.equal(await delivered(vm, b1, port), 50, 'still forwards after the refused --no-state start');

    // A larger --max-rules with an empty, existing state directory (a wrong --state-dir).
    const empty = `/tmp/xdpctl-test-${id}m-empty`;
    mkdirSync(empty, { mode: 0o700 });
    msg = await refused('m', ['--xdp-mode', 'generic', '--max-rules', '64', '--state-dir', empty]);
    assert.match(
      msg,
      new RegExp(
        `the state store ${empty}/state\\.db does not exist, but the pinned datapath under ${pinRoot} still ` +
          'forwards 1 rule match entry and 0 link directions: refusing to start and wipe them',
      ),
    );
    assert.deepEqual(readdirSync(empty), [], 'the refused start left nothing in the state directory');
    assert.deepEqual(kernel(), before, 'pins, map ids, entries and the attached program unchanged');
    assert.equal(await delivered(vm, b1, port), 50, 'still forwards after the refused start on an empty store');

    // Its own store with the larger --max-rules: the supported migration, the rule forwarding throughout.
    await start('m', ['--xdp-mode', 'generic', '--max-rules', '64']);
    assert.match(d!.output, /migrating to new maps/);
    assert.equal((await c.rules.getRule({ name: 'web' })).rule!.status!.state, RuleState.RULE_STATE_ACTIVE);
    assert.equal(await delivered(vm, b1, port), 50, 'forwards after the migration');
    assert.notEqual(progOn(vm.hostIf), prog, 'the new program (new maps) on the ingress');
    await d!.stop();

    // The explicit choice, with yet another --max-rules: cleared, the program detached.
    await start('m', ['--xdp-mode', 'generic', '--max-rules', '32', '--no-state', '--reset-datapath']);
    assert.match(d!.output, /still forwards 1 rule match entry .*--reset-datapath: clearing them/);
    assert.equal((await c.rules.listRules({})).rules.length, 0);
    await until('nothing attached that ListInterfaces does not show', () => progOn(vm.hostIf) === undefined);
    assert.equal(await delivered(vm, b1, port, 10), 0, 'cleared: nothing forwarded');
  });

  it('the tracepoint links are put back when PIN/links or the whole pin root is removed: a restart counts what the kernel dropped meanwhile', async () => {
    const vm = topo.addHost('bvm', '198.18.1.1/24');
    const b1 = topo.addHost('bb1', '198.18.2.1/24');
    topo.routeToXdp(vm.role);
    const port = 7602;
    const args = ['--xdp-mode', 'native'];
    await start('b', args);
    const pinRoot = d!.pinRoot;
    await c.rules.createRule({ rule: rule('web', port, vm.hostIf, b1) });
    assert.equal(await delivered(vm, b1, port), 50, 'forwards at first');
    const linksBack = () => TRACE_LINKS.every((n) => existsSync(`${pinRoot}/links/${n}`));
    assert.ok(linksBack(), 'the three tracepoint links pinned');

    rmSync(`${pinRoot}/links`, { recursive: true });
    await until('the tracepoint links pinned again', linksBack, 5000);
    const repinLine = /"repinned":\[[^\]]*links\/xdpctl_redirect_err.*re-pinned 3 /;
    await until('the re-pin logged', () => repinLine.test(d!.output), 3000);

    rmSync(pinRoot, { recursive: true });
    await until(
      'the whole pin root put back, links included',
      () => existsSync(`${pinRoot}/maps/rule_match`) && linksBack(),
      5000,
    );
    assert.equal(await delivered(vm, b1, port), 50, 'still forwards');

    const backend = async () => (await c.counters.getCounters({})).counters!.backends[0];
    const before = await backend();
    await d!.stop();
    // While no daemon runs, the backend's veth peer loses NAPI: the kernel drops every frame redirected to it.
    topo.exec(b1.role, 'ethtool', ['-K', 'eth0', 'gro', 'off']);
    const sent = 50;
    assert.equal(await delivered(vm, b1, port, sent), 0, 'none delivered while the peer has no NAPI');
    await start('b', args);
    const now = await backend();
    assert.equal(
      now.redirectErrorPackets - before.redirectErrorPackets,
      BigInt(sent),
      `the ${sent} frames the kernel dropped while no daemon ran are counted as redirect errors`,
    );
    assert.equal(now.packets - before.packets, 0n, 'and not as redirected');
  });
});
