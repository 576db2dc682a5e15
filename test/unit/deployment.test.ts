/**
 * The deployment files (Dockerfile, docker-compose.yml, the collector and
 * Prometheus configs, the Kubernetes DaemonSet) stay true to the daemon:
 * every flag they pass exists in `xdpctld --help` / `xdpctl --help`, the
 * wiring between the services points at addresses that are really served,
 * and the privileges are the documented ones. The Docker engine is not on
 * CI machines, so the compose file is validated by parsing it (and also by
 * `docker compose config` where that command exists).
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import YAML from 'yaml';

import { missingCapabilities } from '../../src/server/auth/capabilities.js';
import { parseAuthConfig, parseUserDb } from '../../src/server/auth/policy.js';

const ROOT = new URL('../../', import.meta.url).pathname;
const read = (p: string) => readFileSync(`${ROOT}${p}`, 'utf8');
/** Strict YAML: duplicate keys and syntax errors fail the test. */
const parse = (p: string) => {
  const docs = YAML.parseAllDocuments(read(p), { uniqueKeys: true });
  for (const d of docs) assert.deepEqual(d.errors, [], `${p}: ${d.errors.join('; ')}`);
  return docs.map((d) => d.toJS() as Record<string, any>); // eslint-disable-line @typescript-eslint/no-explicit-any
};

/** The capabilities the daemon checks for at start (proven in test/integration/capabilities.test.ts). */
const CAPS = missingCapabilities(0n).map((m) => /^CAP_(\w+)/.exec(m)![1]);

function helpFlags(args: string[]): Set<string> {
  const r = spawnSync(process.execPath, [...args, '--help'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return new Set([...r.stdout.matchAll(/(?:^|\s|,)(--[a-z][a-z0-9-]*)/g)].map((m) => m[1]));
}
// The compiled programs, as the image and a package install run them (scripts/run-tests.mjs builds dist/).
const daemonFlags = helpFlags(['dist/server/main.js']);
const cliFlags = helpFlags(['dist/client/cli.js']);
const cliHealthFlags = helpFlags(['dist/client/cli.js', 'health']);

/** The value after a flag in an argv. */
const flagValue = (argv: string[], flag: string) => {
  const i = argv.indexOf(flag);
  return i < 0 ? undefined : argv[i + 1];
};

function assertDaemonArgs(argv: string[], where: string) {
  const flags = argv.filter((a) => a.startsWith('--'));
  assert.ok(flags.length > 0, `${where}: no flags`);
  for (const f of flags) assert.ok(daemonFlags.has(f), `${where}: xdpctld has no flag ${f}`);
}

function assertHealthProbe(argv: string[], where: string) {
  assert.equal(argv[0], 'xdpctl', `${where}: the probe runs the CLI`);
  assert.ok(argv.includes('health'), `${where}: the probe runs "xdpctl health"`);
  for (const f of argv.filter((a) => a.startsWith('--'))) {
    assert.ok(cliFlags.has(f) || cliHealthFlags.has(f), `${where}: xdpctl has no flag ${f}`);
  }
  assert.equal(flagValue(argv, '--server'), 'unix:/run/xdpctl/xdpctl.sock', `${where}: probe through the socket`);
}

describe('deployment files', () => {
  it('docker-compose.yml: xdpctld on the host network with the documented capabilities, not privileged', () => {
    const [compose] = parse('docker-compose.yml');
    assert.deepEqual(Object.keys(compose.services).sort(), ['otel-collector', 'prometheus', 'xdpctld']);
    const d = compose.services.xdpctld;
    assert.equal(d.network_mode, 'host');
    assert.notEqual(d.privileged, true);
    assert.deepEqual(d.cap_drop, ['ALL']);
    assert.deepEqual([...d.cap_add].sort(), [...CAPS].sort());
    assertDaemonArgs(d.command, 'compose xdpctld.command');
    const mounts = (d.volumes as (string | { source: string; target: string })[]).map((v) =>
      typeof v === 'string' ? v.split(':')[1] : v.target,
    );
    assert.ok(mounts.includes('/sys/fs/bpf'), 'bpffs mounted');
    assert.ok(mounts.includes(flagValue(d.command, '--state-dir')!), 'the state directory is a volume');
    const sock = (d.command as string[]).find((a) => a.startsWith('unix:'))!;
    assert.ok(
      mounts.some((m) => sock.slice(5).startsWith(`${m}/`)),
      'the socket directory is shared with the host',
    );
    assertHealthProbe(d.healthcheck.test.slice(1), 'compose healthcheck');
    // Every listener stays on loopback (TCP without TLS is only allowed there).
    for (const a of (d.command as string[]).filter((x) => /^\d+\.\d+\.\d+\.\d+:\d+$/.test(x))) {
      assert.match(a, /^127\./, `listener ${a} is loopback`);
    }
  });

  it('compose wiring: the daemon exports to the collector, Prometheus scrapes what is served', () => {
    const [compose] = parse('docker-compose.yml');
    const [otel] = parse('deploy/otel-collector.yaml');
    const [prom] = parse('deploy/prometheus.yml');
    const d = compose.services.xdpctld;
    // Mounted config files exist.
    for (const svc of ['otel-collector', 'prometheus']) {
      for (const v of compose.services[svc].volumes as string[]) {
        const src = v.split(':')[0];
        assert.ok(existsSync(`${ROOT}${src}`), `${svc} mounts ${src}, which exists`);
      }
    }
    // OTLP endpoint -> a collector receiver of the same protocol.
    const endpoint = new URL(d.environment.OTEL_EXPORTER_OTLP_ENDPOINT as string);
    const protocol = d.environment.OTEL_EXPORTER_OTLP_PROTOCOL === 'grpc' ? 'grpc' : 'http';
    assert.equal(otel.receivers.otlp.protocols[protocol].endpoint, endpoint.host);
    // Every pipeline uses defined receivers, processors and exporters.
    for (const [name, p] of Object.entries(otel.service.pipelines) as [string, Record<string, string[]>][]) {
      for (const kind of ['receivers', 'processors', 'exporters']) {
        for (const c of p[kind] ?? []) assert.ok(c in otel[kind], `pipeline ${name}: ${kind} ${c} is defined`);
      }
    }
    // Prometheus scrapes the daemon's --prometheus address and the collector's exporter.
    const targets = (prom.scrape_configs as { static_configs: { targets: string[] }[] }[]).flatMap((s) =>
      s.static_configs.flatMap((c) => c.targets),
    );
    assert.ok(targets.includes(flagValue(d.command, '--prometheus')!), 'Prometheus scrapes xdpctld');
    assert.ok(targets.includes(otel.exporters.prometheus.endpoint), 'Prometheus scrapes the collector');
  });

  it('docker compose config accepts the file (where the compose plugin exists)', (t) => {
    const probe = spawnSync('docker', ['compose', 'version'], { encoding: 'utf8' });
    if (probe.status !== 0) {
      t.diagnostic('docker compose is not installed here: validated by parsing only (tests above)');
      return;
    }
    const r = spawnSync('docker', ['compose', '-f', `${ROOT}docker-compose.yml`, 'config', '-q'], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
  });

  it('Dockerfile: builds the datapath, runs xdpctld, probes health through the socket', () => {
    const df = read('Dockerfile');
    assert.match(df, /bash scripts\/build-bpf\.sh/);
    assert.match(df, /scripts\/buf\.sh build -o build\/descriptor\.binpb/);
    // Compiled JavaScript on the official Node image of the pinned version (.node-version).
    const pin = read('.node-version').trim();
    const froms = [...df.matchAll(/^FROM (\S+)/gm)].map((m) => m[1]);
    assert.ok(froms.length > 0 && froms.every((f) => f === `node:${pin}-bookworm-slim`), `FROM node:${pin}: ${froms}`);
    const entry = /^ENTRYPOINT (\[.*\])$/m.exec(df);
    assert.ok(entry, 'ENTRYPOINT');
    const shebang = read('src/server/main.ts').split('\n')[0];
    const flags = shebang.split(/\s+/).filter((w) => w.startsWith('--'));
    assert.deepEqual(JSON.parse(entry[1]), ['node', ...flags, '/opt/xdpctl/dist/server/main.js'], shebang);
    assert.doesNotMatch(df, /tsx/);
    assert.ok(existsSync(`${ROOT}dist/server/main.js`) && existsSync(`${ROOT}dist/client/cli.js`));
    const hc = /^\s+CMD (\[.*\])$/m.exec(df.slice(df.indexOf('HEALTHCHECK')));
    assert.ok(hc, 'HEALTHCHECK CMD');
    assertHealthProbe(JSON.parse(hc[1]) as string[], 'Dockerfile HEALTHCHECK');
    const cmd = /^CMD (\[.*\])$/m.exec(df);
    assert.ok(cmd);
    assertDaemonArgs(JSON.parse(cmd[1]) as string[], 'Dockerfile CMD');
    for (const m of df.matchAll(/^COPY --from=build \/src\/(\S+)/gm)) {
      assert.ok(existsSync(`${ROOT}${m[1]}`) || m[1] === 'node_modules', `COPY ${m[1]}`);
    }
  });

  it('Kubernetes: one daemon per node, mesh certificates, probes and privileges', () => {
    const docs = parse('deploy/kubernetes/xdpctld.yaml');
    const ds = docs.find((d) => d.kind === 'DaemonSet')!;
    assert.ok(ds, 'a DaemonSet');
    const pod = ds.spec.template.spec;
    assert.equal(pod.hostNetwork, true);
    assert.equal(
      ds.spec.selector.matchLabels['app.kubernetes.io/name'],
      ds.spec.template.metadata.labels['app.kubernetes.io/name'],
    );
    const [c] = pod.containers;
    assertDaemonArgs(c.args, 'DaemonSet args');
    const sc = c.securityContext;
    assert.equal(sc.privileged, false);
    assert.deepEqual(sc.capabilities.drop, ['ALL']);
    assert.deepEqual([...sc.capabilities.add].sort(), [...CAPS].sort());
    for (const p of ['startupProbe', 'livenessProbe', 'readinessProbe']) assertHealthProbe(c[p].exec.command, p);
    assert.deepEqual(c.readinessProbe.exec.command.slice(-2), ['--service', 'xdpctl.datapath']);
    // Every mount has a volume; TLS files come from the mesh-issued volume.
    const volumes = new Map((pod.volumes as { name: string }[]).map((v) => [v.name, v]));
    const mountOf = new Map<string, string>();
    for (const m of c.volumeMounts as { name: string; mountPath: string }[]) {
      assert.ok(volumes.has(m.name), `volume ${m.name}`);
      mountOf.set(m.mountPath, m.name);
    }
    assert.equal(mountOf.get('/sys/fs/bpf'), 'bpffs');
    assert.equal(mountOf.get(flagValue(c.args, '--state-dir')!), 'state');
    for (const f of ['--tls-cert', '--tls-key', '--tls-client-ca']) {
      const file = flagValue(c.args, f)!;
      const dir = file.slice(0, file.lastIndexOf('/'));
      const vol = volumes.get(mountOf.get(dir)!) as { csi?: { driver: string } };
      assert.equal(vol?.csi?.driver, 'spiffe.csi.cert-manager.io', `${f} comes from the SPIFFE CSI volume`);
    }
    // The env vars referenced with $(VAR) are defined before use.
    const env = c.env as { name: string; value?: string }[];
    env.forEach((e, i) => {
      for (const ref of (e.value ?? '').matchAll(/\$\((\w+)\)/g)) {
        assert.ok(
          env.slice(0, i).some((x) => x.name === ref[1]),
          `${e.name} uses $(${ref[1]}) defined before it`,
        );
      }
    });
    for (const a of c.args as string[]) {
      for (const ref of a.matchAll(/\$\((\w+)\)/g))
        assert.ok(
          env.some((x) => x.name === ref[1]),
          `arg uses $(${ref[1]})`,
        );
    }
    // The auth file the daemon reads is the ConfigMap's key.
    const authPath = flagValue(c.args, '--auth-config')!;
    const cm = docs.find((d) => d.kind === 'ConfigMap')!;
    const key = authPath.slice(authPath.lastIndexOf('/') + 1);
    assert.ok(typeof cm.data[key] === 'string', `ConfigMap has ${key}`);
    const auth = parseAuthConfig(
      cm.data[key] as string,
      key,
      parseUserDb('root:x:0:0::/root:/bin/sh\n', 'root:x:0:\n'),
    );
    assert.ok(auth.admin.length > 0 && auth.readOnly.length > 0, 'the ConfigMap grants both roles');
    assert.ok(
      auth.admin.some((g) => g.type === 'spiffe'),
      'admins are mesh identities (SPIFFE IDs)',
    );
    assert.equal(mountOf.get(authPath.slice(0, authPath.lastIndexOf('/'))), 'auth');
  });
});
