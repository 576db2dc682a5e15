/**
 * The xdpctl command line end to end: the real compiled CLI (dist/client/cli.js, run through its shebang), spawned
 * as a child process, against a real xdpctld on a namespace topology.
 * Checks output formats, one-line errors and the exit codes derived from
 * gRPC statuses (usage 2, INVALID_ARGUMENT 3, NOT_FOUND 4, ABORTED 7,
 * UNAVAILABLE 10), both transports and the XDPCTL_SERVER variable.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { CLI, kernelOnly, OBJECT, runId } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp } from '../helpers/udp.js';

const BIN = CLI;

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Run the CLI; env adds to (or, with undefined, removes from) the environment. */
function xdpctl(args: string[], env: Record<string, string | undefined> = {}, input?: string): Promise<Result> {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, args, { env: { ...process.env, ...env }, stdio: ['pipe', 'pipe', 'pipe'] });
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
    child.stdin.end(input ?? '');
  });
}

/** A failure: the expected exit code, exactly one line on stderr, no stack trace. */
function assertFails(r: Result, code: number, pattern?: RegExp): string {
  assert.equal(r.code, code, `exit code (stderr: ${r.stderr}, stdout: ${r.stdout})`);
  assert.doesNotMatch(r.stderr, /^\s+at /m, 'no stack trace');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  assert.equal(lines.length, 1, `one line on stderr: ${JSON.stringify(r.stderr)}`);
  assert.match(lines[0], /^xdpctl: /);
  if (pattern) assert.match(lines[0], pattern);
  return lines[0];
}

function assertOk(r: Result): string {
  assert.equal(r.code, 0, `exit code (stderr: ${r.stderr})`);
  return r.stdout;
}

describe('xdpctl command line', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  let d: DaemonProcess;
  let vm: Host, b1: Host, h1: Host, h2: Host;
  let dir = '';
  /** xdpctl against this test's daemon (over TCP, through XDPCTL_SERVER). */
  const cli = (...args: string[]) => xdpctl(args, { XDPCTL_SERVER: d.tcp });

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), `xdpctl-cli-${id}-`));
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    h1 = topo.addHost('h1', '198.18.0.1/24');
    h2 = topo.addHost('h2', '198.18.0.2/24');
    topo.routeToXdp('vm');
    d = await DaemonProcess.start(id);
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('rules add takes the old one-liner and confirms in one line', async () => {
    const out = assertOk(
      await cli(
        'rules',
        'add',
        'web',
        '--port',
        '7999',
        '--source',
        '192.168.122.10',
        '--backend',
        `${b1.ip},${b1.mac},${b1.hostIf}`,
        '--ingress',
        vm.hostIf,
      ),
    );
    assert.equal(out.trim(), 'rule web created (generation 1)');
  });

  it('rules list prints a table, and JSON with enum names', async () => {
    const table = assertOk(await cli('rules', 'list')).split('\n');
    assert.match(table[0], /^NAME\s+PORT\s+DESTINATION\s+SOURCES\s+INGRESS\s+BACKENDS\s+STATE\s+GEN$/);
    const row = table.find((l) => l.startsWith('web '));
    assert.ok(row, `a row for web in:\n${table.join('\n')}`);
    for (const cell of ['7999', '192.168.122.10', vm.hostIf, `${b1.ip}@${b1.hostIf}*1`, 'ACTIVE']) {
      assert.ok(row.includes(cell), `${cell} in ${row}`);
    }

    // The global option before or after the subcommand.
    for (const args of [
      ['-o', 'json', 'rules', 'list'],
      ['rules', 'list', '-o', 'json'],
    ]) {
      const json = JSON.parse(assertOk(await cli(...args))) as {
        rules: { name: string; match: { port: number }; status: { state: string } }[];
      };
      const web = json.rules.find((r) => r.name === 'web');
      assert.ok(web);
      assert.equal(web.match.port, 7999);
      assert.equal(web.status.state, 'RULE_STATE_ACTIVE');
    }
    const yaml = assertOk(await cli('-o', 'yaml', 'rules', 'get', 'web'));
    assert.match(yaml, /state: RULE_STATE_ACTIVE/);
  });

  it("rules get shows the rule's counters and each backend's, as GetCounters counts them", async () => {
    // web accepts only 192.168.122.10: datagrams from vm reach its port and are filtered by source. The
    // source filter is part of the match (counters.proto): they are counted filtered, not matched.
    const { sent } = await sendUdp(vm.netns, '198.18.9.9', 7999, 5).done;
    assert.equal(sent, 5);
    const out = assertOk(await cli('rules', 'get', 'web'));
    assert.match(out, /^matched:\s+0 packets, 0 B$/m);
    assert.match(out, /^redirected:\s+0 packets, 0 B$/m);
    assert.match(out, /^filtered:\s+5 packets/m);
    assert.match(
      out,
      /^BACKEND\s+IP\s+MAC\s+INTERFACE\s+WEIGHT\s+ACTIVE\s+PACKETS\s+BYTES\s+REDIRECT ERRORS\s+MESSAGE$/m,
    );
    assert.match(
      out,
      new RegExp(`^0\\s+${b1.ip!.replace(/\./g, '\\.')}\\s+\\S+\\s+${b1.hostIf}\\s+1\\s+yes\\s+0\\s+0 B\\s+0`, 'm'),
    );
    assert.match(out, /^redirect errors:\s+0 packets/m);
    const json = JSON.parse(assertOk(await cli('-o', 'json', 'rules', 'get', 'web'))) as {
      rule: { name: string };
      counters: { rules: { rule: string; matchedPackets: unknown; filteredPackets: unknown }[]; backends: unknown[] };
    };
    assert.equal(json.rule.name, 'web');
    assert.equal(String(json.counters.rules[0].matchedPackets ?? 0), '0', 'zero (proto3 JSON omits it)');
    assert.equal(String(json.counters.rules[0].filteredPackets), '5');
    assert.equal(json.counters.backends.length, 1);
  });

  it('rules get of an unknown rule: exit 4, one line', async () => {
    assertFails(await cli('rules', 'get', 'nope'), 4, /rule "nope" does not exist/);
  });

  it('an invalid rule: exit 3 naming every bad field', async () => {
    const line = assertFails(
      await cli(
        'rules',
        'add',
        'bad',
        '--port',
        '0',
        '--backend',
        `${b1.ip},02:42:ac:11:00,${b1.hostIf}`,
        '--ingress',
        vm.hostIf,
      ),
      3,
    );
    assert.match(line, /rule\.match\.port: /);
    assert.match(line, /rule\.backends\[0\]\.mac: /);
    assert.match(line, /; /, 'violations joined by "; "');
  });

  it('an unknown interface: exit 4 naming it', async () => {
    assertFails(
      await cli('rules', 'add', 'ghost', '--port', '7000', '--backend', `${b1.ip},,nosuchif0`, '--ingress', vm.hostIf),
      4,
      /rule\.backends\[0\]\.interface: interface "nosuchif0" does not exist/,
    );
  });

  it('bad flags are usage errors: exit 2, one line', async () => {
    assertFails(await cli('rules', 'add', 'x', '--port'), 2, /--port/);
    assertFails(await cli('rules', 'list', '--bogus'), 2, /unknown option '--bogus'/);
    assertFails(
      await cli('rules', 'add', 'x', '--port', '1', '--ingress', vm.hostIf, '--backend', '1.2.3.4,eth0'),
      2,
      /--backend/,
    );
    assertFails(await cli('rules', 'add', 'x', '--port', 'http', '--ingress', vm.hostIf), 2, /--port/);
    assertFails(await cli('--timeout', 'soon', 'status'), 2, /--timeout/);
    assertFails(await cli('-o', 'xml', 'status'), 2, /--output/);
    assertFails(await cli('rules', 'frob'), 2, /unknown command 'frob'/);
  });

  it('an unreachable server: exit 10, says so plainly', async () => {
    assertFails(
      await cli('--server', '127.0.0.1:1', 'rules', 'list'),
      10,
      /^xdpctl: cannot reach xdpctld at 127\.0\.0\.1:1 \(connection refused\); is it running\? \(--server, XDPCTL_SERVER\)$/,
    );
    assertFails(await cli('status', '--server', `unix:${dir}/none.sock`), 10, /cannot reach xdpctld .*no such socket/);
  });

  it('rules update replaces given fields; a stale --generation is exit 7', async () => {
    assert.match(
      assertOk(await cli('rules', 'update', 'web', '--label', 'owner=cli')),
      /rule web updated \(generation 2\)/,
    );
    assertFails(
      await cli('rules', 'update', 'web', '--port', '7998', '--generation', '1'),
      7,
      /changed since you read it/,
    );
    const rule = JSON.parse(assertOk(await cli('-o', 'json', 'rules', 'get', 'web'))) as {
      rule: { match: { port: number; sourcePrefixes: string[] }; labels: Record<string, string>; generation: number };
    };
    assert.equal(rule.rule.match.port, 7999, 'the stale update changed nothing');
    assert.deepEqual(rule.rule.match.sourcePrefixes, ['192.168.122.10'], 'fields not given are kept');
    assert.deepEqual(rule.rule.labels, { owner: 'cli' });
    assert.equal(rule.rule.generation, '2', 'uint64 as a JSON string (proto3 JSON)');
  });

  it('data with control characters is printed visibly (ESC as \\e), never raw to the terminal; JSON keeps it exact', async () => {
    // A twelfth-review finding: a label value with ESC sequences (clear the screen, move up, erase the line)
    // was written raw by rules get: on a terminal it rewrote what the operator saw.
    const value = 'a\x1b[2J\x1b[1A\x1b[2Kb\rc\x9bd';
    assertOk(
      await cli(
        'rules',
        'add',
        'esc',
        '--port',
        '7990',
        '--backend',
        `${b1.ip},${b1.mac},${b1.hostIf}`,
        '--ingress',
        vm.hostIf,
        '--label',
        `team=${value}`,
      ),
    );
    try {
      const out = assertOk(await cli('rules', 'get', 'esc'));
      // eslint-disable-next-line no-control-regex -- the control characters are what is looked for
      assert.doesNotMatch(out, /[\x00-\x08\x0b-\x1f\x7f-\x9f]/, 'no control character but newline and tab');
      assert.match(out, /team=a\\e\[2J\\e\[1A\\e\[2Kb\\x0dc\\x9bd/);
      const json = JSON.parse(assertOk(await cli('-o', 'json', 'rules', 'get', 'esc'))) as {
        rule: { labels: Record<string, string> };
      };
      assert.equal(json.rule.labels.team, value, 'JSON carries the value exactly (escaped by JSON itself)');
    } finally {
      await cli('rules', 'delete', 'esc');
    }
  });

  it('rules apply -f --dry-run prints the changes and applies nothing', async () => {
    const file = join(dir, 'config.yaml');
    writeFileSync(
      file,
      [
        'links:',
        `  ${h1.hostIf}: ${h2.hostIf}`,
        'rules:',
        '  - name: web',
        '    port: 7999',
        `    ingress: [${vm.hostIf}]`,
        `    backends: [{ip: ${b1.ip}, mac: "${b1.mac}", interface: ${b1.hostIf}}]`,
        '  - name: dns',
        '    port: 53',
        `    ingress: [${vm.hostIf}]`,
        `    backends: [{ip: ${b1.ip}, mac: "${b1.mac}", interface: ${b1.hostIf}}]`,
        '',
      ].join('\n'),
    );
    const out = assertOk(await cli('rules', 'apply', '-f', file, '--dry-run'));
    assert.match(out, /^NAME\s+ACTION$/m);
    assert.match(out, /^dns\s+create$/m);
    assert.match(out, /^web\s+update$/m);
    assert.match(out, /dry run, nothing applied/);
    const names = (JSON.parse(assertOk(await cli('-o', 'json', 'rules', 'list'))) as { rules: { name: string }[] })
      .rules;
    assert.deepEqual(
      names.map((r) => r.name),
      ['web'],
    );

    const links = assertOk(await cli('links', 'apply', '-f', file, '--dry-run'));
    assert.match(links, new RegExp(`^${h1.hostIf}\\s+${h2.hostIf}\\s+create$`, 'm'));

    const bad = join(dir, 'bad.yaml');
    writeFileSync(bad, 'rules:\n  - name: x\n    prot: 7999\n');
    assertFails(await cli('rules', 'apply', '-f', bad), 3, /rules\[0\]\.prot: unknown key; rules\[0\]\.port: /);
    assertFails(await cli('rules', 'apply', '-f', join(dir, 'missing.yaml')), 1, /cannot read/);
  });

  it('two rules with the same match: in one file exit 3 naming both; against a stored rule exit 6 naming both', async () => {
    const file = join(dir, 'twins.yaml');
    const rule = (name: string, sources: string) =>
      [
        `  - name: ${name}`,
        '    port: 7999',
        `    sources: [${sources}]`,
        `    ingress: [${vm.hostIf}]`,
        `    backends: [{ip: ${b1.ip}, mac: "${b1.mac}", interface: ${b1.hostIf}}]`,
      ].join('\n');
    writeFileSync(file, `rules:\n${rule('web', '192.168.122.10')}\n${rule('web2', '192.168.122.10/32')}\n`);
    const same = `xdpctl: rules[1].match: rule "web2" has the same match as rules[0] ("web"): UDP port 7999 on ${vm.hostIf}`;
    assert.equal(assertFails(await cli('rules', 'apply', '-f', file), 3), same);
    assert.equal(assertFails(await cli('rules', 'apply', '-f', file, '--dry-run'), 3), same);
    writeFileSync(file, `rules:\n${rule('web', '192.168.122.10')}\n${rule('web2', '10.0.0.0/8')}\n`);
    assert.equal(
      assertFails(await cli('rules', 'apply', '-f', file), 3),
      `xdpctl: rules[1].match: rule "web2" has the same protocol, port and destination as rules[0] ("web"): UDP port 7999 on ${vm.hostIf} ` +
        '(source prefixes do not tell two rules apart: one rule per protocol, port, destination and ingress)',
    );
    // A new rule against the stored "web": a conflict with state.
    assert.equal(
      assertFails(
        await cli(
          'rules',
          'add',
          'web3',
          '--port',
          '7999',
          '--backend',
          `${b1.ip},,${b1.hostIf}`,
          '--ingress',
          vm.hostIf,
        ),
        6,
      ),
      `xdpctl: rule.match: rule "web3" and rule "web" both match UDP port 7999 on ${vm.hostIf}`,
    );
    const names = (JSON.parse(assertOk(await cli('-o', 'json', 'rules', 'list'))) as { rules: { name: string }[] })
      .rules;
    assert.deepEqual(
      names.map((r) => r.name),
      ['web'],
    );
  });

  it('rules list -o yaml (and -o json) is accepted by rules apply -f: list, edit, apply', async () => {
    for (const format of ['yaml', 'json']) {
      const file = join(dir, `listed.${format}`);
      writeFileSync(file, assertOk(await cli('-o', format, 'rules', 'list')));
      const same = assertOk(await cli('rules', 'apply', '-f', file));
      assert.match(same, /^web\s+unchanged$/m, same);
      assert.match(same, /applied: 0 created, 0 updated, 0 deleted, 1 unchanged/);
    }
    const file = join(dir, 'listed.yaml');
    const edited = assertOk(await cli('-o', 'yaml', 'rules', 'list')).replace('port: 7999', 'port: 7997');
    assert.match(edited, /port: 7997/);
    writeFileSync(file, edited);
    assert.match(assertOk(await cli('rules', 'apply', '-f', file)), /^web\s+update$/m);
    assert.match(assertOk(await cli('rules', 'get', 'web')), /^port:\s+7997\/udp$/m);
    writeFileSync(file, edited.replace('port: 7997', 'port: 7999'));
    assert.match(assertOk(await cli('rules', 'apply', '-f', file)), /^web\s+update$/m);
  });

  it('links connect, then links list -o json', async () => {
    assert.match(assertOk(await cli('links', 'connect', h1.hostIf, h2.hostIf)), /connected/);
    const json = JSON.parse(assertOk(await cli('links', 'list', '-o', 'json'))) as {
      links: { a: string; b: string; direction: string; status: { aToBActive?: boolean; bToAActive?: boolean } }[];
    };
    assert.equal(json.links.length, 1);
    assert.deepEqual([json.links[0].a, json.links[0].b].sort(), [h1.hostIf, h2.hostIf].sort());
    assert.equal(json.links[0].direction, 'LINK_DIRECTION_BOTH');
    assert.equal(json.links[0].status.aToBActive, true);
    assert.equal(json.links[0].status.bToAActive, true);
    const table = assertOk(await cli('links', 'list'));
    assert.match(table, new RegExp(`^${json.links[0].a}\\s+${json.links[0].b}\\s+both\\s+yes\\s+yes`, 'm'));
  });

  it('interfaces list shows the native attachment', async () => {
    const out = assertOk(await cli('interfaces', 'list'));
    assert.match(out, /^NAME\s+IFINDEX\s+REQUESTED\s+EFFECTIVE\s+PROGRAM\s+USED BY\s+WARNINGS$/m);
    assert.match(out, new RegExp(`^${vm.hostIf}\\s+\\d+\\s+\\S+\\s+NATIVE\\s+\\d+\\s+rule/web`, 'm'));
    // An egress only (web's backend): no program is requested there, no mode said (twenty-second review, LOW-3:
    // it showed the daemon's mode next to EFFECTIVE NONE).
    assert.match(out, new RegExp(`^${b1.hostIf}\\s+\\d+\\s+-\\s+NONE\\s+-\\s+rule/web/egress`, 'm'));
    const json = JSON.parse(assertOk(await cli('interfaces', 'get', b1.hostIf, '-o', 'json'))) as {
      interface: { requestedMode?: string };
    };
    assert.equal(json.interface.requestedMode ?? 'XDP_MODE_UNSPECIFIED', 'XDP_MODE_UNSPECIFIED');
  });

  // Twenty-second review, LOW-2: both said "not managed by xdpctld".
  it('interfaces get: no such device and a device no rule or link uses are said apart (exit 4)', async () => {
    assertFails(await cli('interfaces', 'get', 'nosuchif0'), 4, /interface "nosuchif0" does not exist/);
    assertFails(
      await cli('interfaces', 'get', 'lo'),
      4,
      /interface "lo" exists but is not managed by xdpctld \(no rule or link uses it\)/,
    );
  });

  it('watch | head -1: the closed pipe ends xdpctl with exit 0 and nothing on stderr (EPIPE)', async () => {
    const r = await new Promise<Result>((resolve) => {
      const child = spawn(
        'bash',
        [
          '-c',
          `"$0" watch --interval 100ms -o json 2>"$1" | head -1; echo "exit=\${PIPESTATUS[0]}"`,
          BIN,
          join(dir, 'epipe.err'),
        ],
        { env: { ...process.env, XDPCTL_SERVER: d.tcp }, stdio: ['ignore', 'pipe', 'pipe'] },
      );
      let stdout = '';
      child.stdout.on('data', (x) => (stdout += x));
      child.on('close', (code) => resolve({ code, stdout, stderr: readFileSync(join(dir, 'epipe.err'), 'utf8') }));
    });
    const [first, status] = r.stdout.trim().split('\n');
    assert.ok((JSON.parse(first) as { counters?: unknown }).counters, first);
    assert.equal(status, 'exit=0', `xdpctl's own exit status (stderr: ${r.stderr})`);
    assert.equal(r.stderr, '', 'no stack trace, no message');
  });

  it('watch --count 2 -o json prints two NDJSON lines', async () => {
    const out = assertOk(await cli('watch', 'rules', '--count', '2', '--interval', '200ms', '-o', 'json'));
    const lines = out.split('\n').filter((l) => l !== '');
    assert.equal(lines.length, 2);
    for (const l of lines) {
      const msg = JSON.parse(l) as { counters: { rules: { rule: string }[]; links?: unknown } };
      assert.ok(msg.counters.rules.some((r) => r.rule === 'web'));
      assert.equal(msg.counters.links, undefined, 'only rule counters');
    }
  });

  it('watch --rule of a rule that does not exist says so and exits 4 when it never appears; a bad name is exit 3', async () => {
    // Before: empty samples, nothing said, exit 0.
    const r = await cli('watch', 'rules', '--rule', 'web', '--rule', 'nonexist', '--count', '2', '--interval', '100ms');
    assert.equal(r.code, 4, `exit code (stderr: ${r.stderr})`);
    const lines = r.stdout.split('\n').filter((l) => l !== '');
    assert.equal(lines.length, 2, 'the samples are printed all the same');
    for (const l of lines) {
      const msg = JSON.parse(l) as { counters: { rules: { rule: string }[] } };
      assert.deepEqual(
        msg.counters.rules.map((x) => x.rule),
        ['web'],
      );
    }
    assert.deepEqual(
      r.stderr.split('\n').filter((l) => l !== ''),
      [
        'xdpctl: rule "nonexist" does not exist (yet): watching for it',
        'xdpctl: no rule named "nonexist" appeared in any of the 2 samples watched',
      ],
    );
    // Every rule named exists: as before.
    assertOk(await cli('watch', 'rules', '--rule', 'web', '--count', '1', '--interval', '100ms'));
    // A name no rule can have: refused naming the field, nothing watched.
    const bad = await cli('watch', 'rules', '--rule', 'Bad Name!', '--count', '1');
    assertFails(bad, 3, /^xdpctl: filter\.rules\[0\]: must be 1-63 lowercase letters/);
    assert.equal(bad.stdout, '');
    const longIf = await cli('watch', 'links', '--interface', 'this-is-way-too-long-name', '--count', '1');
    assertFails(longIf, 3, /^xdpctl: filter\.interfaces\[0\]: is not a valid interface name/);
  });

  it('status reports SERVING', async () => {
    const out = assertOk(await cli('status'));
    assert.match(out, /^health:\s+SERVING$/m);
    assert.match(out, /^serving:\s+yes$/m);
    assert.match(out, /^program id:\s+\d+$/m);
  });

  it('status shows what the datapath cannot do: a daemon without its tracepoint object says failed redirects are not counted', async () => {
    // The XDP object alone in a directory (as a package that did not ship xdpctl-trace.bpf.o).
    const dir = mkdtempSync(join(tmpdir(), 'xdpctl-test-obj-'));
    writeFileSync(join(dir, 'xdpctl.bpf.o'), readFileSync(OBJECT));
    const w = await DaemonProcess.start(`${id}w`, ['--bpf-object', join(dir, 'xdpctl.bpf.o')]);
    try {
      // The start-up warning is logged before the "ready" line that supervisors wait for.
      const warned = w.output.indexOf('tracepoint programs not attached');
      assert.ok(warned >= 0 && warned < w.output.indexOf('"msg":"ready"'), w.output);
      const out = assertOk(await xdpctl(['status'], { XDPCTL_SERVER: w.unix }));
      assert.match(out, /^warning:\s+failed redirects are not counted: .*xdpctl-trace\.bpf\.o/m, out);
      assert.doesNotMatch(assertOk(await cli('status')), /^warning:/m, 'the full install has no warning');
    } finally {
      await w.destroy();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('health exits 0 when SERVING and non-zero otherwise (probe use)', async () => {
    assert.equal(assertOk(await cli('health')).trim(), 'SERVING');
    assert.equal(assertOk(await cli('health', '--service', 'xdpctl.datapath')).trim(), 'SERVING');
    const unknown = await cli('health', '--service', 'nosuch');
    assert.equal(assertFails(unknown, 10), 'xdpctl: health of "nosuch" is SERVICE_UNKNOWN');
    assert.equal(unknown.stdout.trim(), 'SERVICE_UNKNOWN');
    assertFails(await cli('--server', '127.0.0.1:1', 'health'), 10, /cannot reach xdpctld/);
  });

  it('works over the Unix socket, with --server or XDPCTL_SERVER', async () => {
    assert.match(
      assertOk(await xdpctl(['--server', d.unix, 'rules', 'list'], { XDPCTL_SERVER: undefined })),
      /^web\s/m,
    );
    const out = assertOk(await xdpctl(['status'], { XDPCTL_SERVER: d.unix }));
    assert.match(out, new RegExp(`^server:\\s+${d.unix}$`, 'm'));
    assert.match(out, /^health:\s+SERVING$/m);
  });

  it('completion bash|zsh print a script', async () => {
    const bash = assertOk(await cli('completion', 'bash'));
    assert.match(bash, /complete -F _xdpctl xdpctl/);
    assert.match(bash, /"rules add"\) COMPREPLY=.*--backend/);
    assert.match(assertOk(await cli('completion', 'zsh')), /compdef _xdpctl xdpctl/);
  });

  it('rules delete: a stale --generation is exit 7, then it is gone', async () => {
    assertFails(await cli('rules', 'delete', 'web', '--generation', '1'), 7);
    assert.equal(assertOk(await cli('rules', 'delete', 'web')).trim(), 'rule web deleted');
    assertFails(await cli('rules', 'get', 'web'), 4);
  });

  it('empty lists: nothing on stdout and "no <noun>" on stderr for a table, [] in JSON and YAML', async () => {
    assert.equal(
      assertOk(await cli('links', 'disconnect', h1.hostIf, h2.hostIf)).trim(),
      `link ${h1.hostIf} ${h2.hostIf} disconnected`,
    );
    for (const [noun, key] of [
      ['rules', 'rules'],
      ['links', 'links'],
      ['interfaces', 'interfaces'],
    ]) {
      const table = await cli(noun, 'list');
      assert.equal(assertOk(table), '', `${noun} list: no header without rows`);
      assert.equal(table.stderr, `no ${noun}\n`, `${noun} list: says the list is empty`);
      assert.equal(assertOk(await cli('-o', 'json', noun, 'list')), `{\n  "${key}": []\n}\n`);
      assert.equal(assertOk(await cli('-o', 'yaml', noun, 'list')), `${key}: []\n`);
    }
  });
});
