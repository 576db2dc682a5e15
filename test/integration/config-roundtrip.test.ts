/**
 * One parser for every YAML file (a review's finding): README says `xdpctld --config` takes the
 * same YAML as `xdpctl rules apply`, and that apply takes what `rules list -o yaml` prints. Before, the
 * daemon refused such a file (`rules[0].match: unknown key`) while the CLI took it through a second, loose
 * reader. Here the real CLI lists a real daemon's rules and links as YAML and JSON; the file goes back
 * through `rules apply` / `links apply` (nothing changes) and into a fresh daemon's `--config` (the same
 * rules and links, forwarding real UDP and pings). A broken file is refused by both with the same words
 * naming the same field.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { LinkDirection } from '../../src/gen/xdpctl/v1/link.js';
import { UdpChecksumMode, type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { CLI, kernelOnly, runId, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const PORT = 7413;
const NOWHERE = '198.18.9.9';

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

function xdpctl(server: string, args: string[]): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(CLI, ['--server', server, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** A rule's specification (what a file can say), without the output-only fields. */
const spec = (r: Rule) => ({
  name: r.name,
  match: r.match,
  ingressInterfaces: r.ingressInterfaces,
  backends: r.backends,
  udpChecksum: r.udpChecksum,
  labels: r.labels,
});

describe('one parser: rules list -o yaml -> file -> rules apply and xdpctld --config', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const dir = `/tmp/xdpctl-test-${id}-rt`;
  let d: DaemonProcess | undefined;
  let vm: Host, b1: Host, b2: Host, x: Host, y: Host;
  const listeners: UdpListener[] = [];

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    b2 = topo.addHost('b2', '198.18.3.1/24');
    x = topo.addHost('x', '198.18.7.1/24');
    y = topo.addHost('y', '198.18.7.2/24');
    topo.routeToXdp('vm');
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    topo.destroy();
    rmSync(dir, { recursive: true, force: true });
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
  });

  async function delivered(to: Host, n: number): Promise<number> {
    const l = await UdpListener.start(to.netns, to.ip!, PORT);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, PORT, n).done;
    await sleep(200);
    return (await l.stop()).unique;
  }
  const lines = (re: RegExp) => d!.output.split('\n').filter((l) => re.test(l));
  async function until(what: string, ok: () => boolean | Promise<boolean>, ms = 5000) {
    for (const end = Date.now() + ms; Date.now() < end; await sleep(100)) if (await ok()) return;
    assert.fail(`not within ${ms} ms: ${what}`);
  }

  it('a listed file goes back through apply unchanged and into --config as the same rules and links', async () => {
    d = await DaemonProcess.start(id, ['--log-level', 'info', '--cleanup-on-exit']);
    const c = d.clients();
    // Every field a file can carry: a destination, source prefixes, labels, the zero checksum, weights
    // (one 0: drained), a backend whose MAC comes from the neighbour table.
    await c.rules.createRule({
      rule: {
        name: 'web',
        match: { port: PORT, destination: '', sourcePrefixes: ['198.18.1.0/24'] },
        ingressInterfaces: [vm.hostIf],
        backends: [
          { ip: b1.ip!, mac: b1.mac!, interface: b1.hostIf, weight: 3 },
          { ip: b2.ip!, mac: '', interface: b2.hostIf, weight: 0 },
        ],
        udpChecksum: UdpChecksumMode.UDP_CHECKSUM_MODE_ZERO,
        labels: { team: 'edge', 'app.kubernetes.io/name': 'web' },
      },
    });
    await c.links.connect({ link: { a: x.hostIf, b: y.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH } });
    const before = (await c.rules.listRules({})).rules.map(spec);

    for (const format of ['yaml', 'json']) {
      const rules = await xdpctl(d.tcp, ['-o', format, 'rules', 'list']);
      const links = await xdpctl(d.tcp, ['-o', format, 'links', 'list']);
      assert.equal(rules.code, 0, rules.stderr);
      assert.equal(links.code, 0, links.stderr);
      assert.match(rules.stdout, /match/, 'the API form');
      const file = `${dir}/listed.${format}`;
      // One file with both sections: YAML documents of one mapping each, joined; JSON as one object.
      writeFileSync(
        file,
        format === 'yaml'
          ? rules.stdout + links.stdout
          : JSON.stringify({ ...JSON.parse(rules.stdout), ...JSON.parse(links.stdout) }),
      );
      const ra = await xdpctl(d.tcp, ['-o', 'json', 'rules', 'apply', '-f', file]);
      assert.equal(ra.code, 0, `rules apply -f ${format}: ${ra.stderr}`);
      assert.deepEqual(
        (JSON.parse(ra.stdout) as { changes: { name: string; action: string }[] }).changes.map((x) => x.action),
        ['CHANGE_ACTION_UNCHANGED'],
        `rules apply of the listed ${format}: nothing to change`,
      );
      const la = await xdpctl(d.tcp, ['-o', 'json', 'links', 'apply', '-f', file]);
      assert.equal(la.code, 0, `links apply -f ${format}: ${la.stderr}`);
      assert.deepEqual(
        (JSON.parse(la.stdout) as { changes: { action: string }[] }).changes.map((x) => x.action),
        ['CHANGE_ACTION_UNCHANGED'],
        `links apply of the listed ${format}: nothing to change`,
      );
    }

    // A broken file: the CLI refuses it (before any call) with the words the daemon's --config logs below.
    const broken = `${dir}/broken.yaml`;
    const listed = (await xdpctl(d.tcp, ['-o', 'yaml', 'rules', 'list'])).stdout;
    const listedLinks = (await xdpctl(d.tcp, ['-o', 'yaml', 'links', 'list'])).stdout;
    writeFileSync(broken, listed.replace(/( +)port: \d+/, '$1port: seven\n$1colour: red'));
    const refused = await xdpctl(d.tcp, ['rules', 'apply', '-f', broken]);
    assert.equal(refused.code, 3, `exit code of an invalid file (stderr: ${refused.stderr})`);
    const cliWords = refused.stderr.trim().replace(/^xdpctl: /, '');
    assert.equal(
      cliWords,
      `${broken}: rules[0].match.colour: unknown key; rules[0].match.port: is required (a number)`,
      'the CLI names both fields',
    );
    // A value the daemon's validation refuses (a port out of range): the server's field path.
    const outOfRange = `${dir}/range.yaml`;
    writeFileSync(outOfRange, listed.replace(/port: \d+/, 'port: 70000'));
    const range = await xdpctl(d.tcp, ['rules', 'apply', '-f', outOfRange]);
    assert.equal(range.code, 3, range.stderr);
    assert.match(range.stderr, /rules\[0\]\.match\.port: must be between 1 and 65535/);

    // The listed YAML as a fresh daemon's --config: the same rules and links, forwarding.
    assert.equal(await d.stop(), 0, 'the first daemon stops and removes its datapath');
    await d.destroy();
    d = undefined;
    const config = `${dir}/config.yaml`;
    writeFileSync(config, listed + listedLinks);
    d = await DaemonProcess.start(id, ['--config', config, '--log-level', 'info']);
    const c2 = d.clients();
    assert.deepEqual(
      (await c2.rules.listRules({})).rules.map(spec),
      before,
      `the same rules from --config: ${d.output}`,
    );
    const ls = (await c2.links.listLinks({})).links;
    assert.deepEqual(
      ls.map((l) => [l.a, l.b, l.direction]),
      [[x.hostIf, y.hostIf, LinkDirection.LINK_DIRECTION_BOTH]],
      'the same link from --config',
    );
    assert.equal(lines(/"msg":"config applied"/).length, 1, 'applied once');
    assert.equal(await delivered(b1, 20), 20, 'the rule forwards to the weighted backend');
    assert.equal(topo.ping('x', y.ip!), true, 'the link forwards');

    // The same broken files in --config: refused with the same words, the last good configuration kept.
    writeFileSync(config, readFileSync(broken, 'utf8'));
    await until('the broken file is refused', () => lines(/invalid config/).length > 0);
    assert.match(
      lines(/invalid config/)[0],
      new RegExp(
        `invalid config ${config}: rules\\[0\\]\\.match\\.colour: unknown key; rules\\[0\\]\\.match\\.port: is required \\(a number\\)`,
      ),
    );
    writeFileSync(config, readFileSync(outOfRange, 'utf8') + listedLinks);
    await until('the out-of-range file is refused', () => lines(/not applied: /).length > 0);
    assert.match(lines(/not applied: /)[0], /rules\[0\]\.match\.port: must be between 1 and 65535/);
    assert.equal(await delivered(b1, 20), 20, 'the last good configuration still forwards');
  });
});
