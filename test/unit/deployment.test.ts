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

/**
 * The capabilities the daemon checks for at start (proven in test/integration/capabilities.test.ts), and
 * CAP_NET_RAW, optional but granted by the deployment files: without it no neighbour MAC is ever confirmed by
 * an ARP reply (dataplane/arp.ts).
 */
const CAPS = [...missingCapabilities(0n).map((m) => /^CAP_(\w+)/.exec(m)![1]), 'NET_RAW'];

function helpFlags(args: string[]): Set<string> {
  const r = spawnSync(process.execPath, [...args, '--help'], { cwd: ROOT, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  return new Set([...r.stdout.matchAll(/(?:^|\s|,)(--[a-z][a-z0-9-]*)/g)].map((m) => m[1]));
}
// The compiled programs, as the image and a package install run them (scripts/run-tests.mjs builds dist/).
const daemonFlags = helpFlags(['dist/server/main.js']);
const probeFlags = helpFlags(['dist/client/health-probe.js']);

/** The uid the image runs as (USER in the Dockerfile): every deployment file must agree. */
const IMAGE_UID = 10001;

/** OTLP's well-known ports and the protocol each carries (OpenTelemetry protocol exporter spec). */
function assertOtlpProtocol(env: Record<string, string>, where: string) {
  const endpoint = env.OTEL_EXPORTER_OTLP_ENDPOINT;
  if (!endpoint) return;
  const port = new URL(endpoint).port;
  const protocol = env.OTEL_EXPORTER_OTLP_PROTOCOL ?? 'http/protobuf'; // the SDK's default
  if (port === '4317') assert.equal(protocol, 'grpc', `${where}: port 4317 is OTLP/gRPC`);
  if (port === '4318') assert.notEqual(protocol, 'grpc', `${where}: port 4318 is OTLP/HTTP`);
}

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
  // The light probe (node:http2 only), not the CLI: probes run every few seconds on every node.
  assert.equal(argv[0], 'xdpctl-health', `${where}: the probe runs xdpctl-health`);
  const pkg = JSON.parse(read('package.json')) as { bin: Record<string, string> };
  assert.equal(pkg.bin['xdpctl-health'], 'dist/client/health-probe.js');
  for (const f of argv.filter((a) => a.startsWith('--'))) {
    assert.ok(probeFlags.has(f), `${where}: xdpctl-health has no flag ${f}`);
  }
  assert.equal(flagValue(argv, '--server'), 'unix:/run/xdpctl/xdpctl.sock', `${where}: probe through the socket`);
}

describe('deployment files', () => {
  it('docker-compose.yml: xdpctld on the host network with the documented capabilities, not privileged', () => {
    const [compose] = parse('docker-compose.yml');
    assert.deepEqual(Object.keys(compose.services).sort(), ['otel-collector', 'prometheus', 'xdpctld', 'xdpctld-init']);
    const d = compose.services.xdpctld;
    assert.equal(d.network_mode, 'host');
    assert.notEqual(d.privileged, true);
    // Not root: the image's uid; file capabilities need no-new-privileges off; bpf() allowed by seccomp.
    assert.equal(d.user, `${IMAGE_UID}:${IMAGE_UID}`);
    assert.ok(!(d.security_opt ?? []).some((o: string) => /no-new-privileges(:true)?$/.test(o)));
    assert.ok((d.security_opt ?? []).includes('seccomp=unconfined'), 'a seccomp profile that allows bpf()');
    assertOtlpProtocol(d.environment, 'compose xdpctld');
    // The init step owns the daemon's directories for it, and runs first.
    const init = compose.services['xdpctld-init'];
    assert.equal(d.depends_on['xdpctld-init'].condition, 'service_completed_successfully');
    const initCmd = (init.command as string[]).join(' ');
    for (const dir of ['/sys/fs/bpf/xdpctl', flagValue(d.command, '--state-dir')!, '/run/xdpctl']) {
      assert.ok(initCmd.includes(dir) && initCmd.includes(`chown -R ${IMAGE_UID}:${IMAGE_UID}`), `init owns ${dir}`);
    }
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
    // xdpctld-node: a copy of node with the daemon's file capabilities, run as the non-root USER.
    assert.deepEqual(JSON.parse(entry[1]), ['xdpctld-node', ...flags, '/opt/xdpctl/dist/server/main.js'], shebang);
    assert.match(df, /cp \/usr\/local\/bin\/node \/usr\/local\/bin\/xdpctld-node/);
    assert.match(df, /setcap cap_bpf,cap_net_admin,cap_perfmon,cap_net_raw\+ep \/usr\/local\/bin\/xdpctld-node/);
    assert.match(df, /find \/ -xdev -type f -perm \/6000 -exec chmod a-s/, 'no setuid files (file caps need NNP off)');
    assert.match(df, new RegExp(`^USER ${IMAGE_UID}:${IMAGE_UID}$`, 'm'));
    // No buf binary or dev dependency in the image; optional dependencies stay (koffi's native binary is
    // its optional platform package), and install scripts run (better-sqlite3 builds or fetches its addon).
    assert.match(df, /npm prune --omit=dev /);
    assert.doesNotMatch(df, /--omit=optional/, "koffi's binary is an optional dependency");
    assert.doesNotMatch(df, /--ignore-scripts/, "better-sqlite3's addon comes from its install script");
    const pkgJson = JSON.parse(read('package.json')) as Record<string, Record<string, string> | undefined>;
    for (const field of ['dependencies', 'optionalDependencies']) {
      assert.ok(
        !Object.keys(pkgJson[field] ?? {}).some((n) => n.startsWith('@bufbuild/buf')),
        `buf is not in ${field}`,
      );
    }
    assert.doesNotMatch(df, /tsx/);
    assert.ok(existsSync(`${ROOT}dist/server/main.js`) && existsSync(`${ROOT}dist/client/cli.js`));
    const hc = /^\s+CMD (\[.*\])$/m.exec(df.slice(df.indexOf('HEALTHCHECK')));
    assert.ok(hc, 'HEALTHCHECK CMD');
    assertHealthProbe(JSON.parse(hc[1]) as string[], 'Dockerfile HEALTHCHECK');
    const cmd = /^CMD (\[.*\])$/m.exec(df);
    assert.ok(cmd);
    assertDaemonArgs(JSON.parse(cmd[1]) as string[], 'Dockerfile CMD');
    const copied = [...df.matchAll(/^COPY --from=build (.+) \S+$/gm)].flatMap((m) =>
      m[1].split(/\s+/).map((src) => src.replace(/^\/src\//, '')),
    );
    for (const f of copied) assert.ok(existsSync(`${ROOT}${f}`) || f === 'node_modules', `COPY ${f}`);
    // Everything the package ships for running (the BPF objects, the descriptor) is in the image too.
    for (const f of (pkgJson.files as unknown as string[]).filter((x) => x.startsWith('build/'))) {
      assert.ok(copied.includes(f), `the image copies ${f}`);
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
    assert.equal(sc.runAsNonRoot, true);
    assert.equal(sc.runAsUser, IMAGE_UID);
    assert.equal(sc.allowPrivilegeEscalation, true, 'file capabilities need no_new_privs off');
    // The namespace declares the Pod Security level this pod needs (hostNetwork, hostPath, capabilities).
    const ns = docs.find((x) => x.kind === 'Namespace')!;
    assert.equal(ns.metadata.labels['pod-security.kubernetes.io/enforce'], 'privileged');
    assert.equal(pod.securityContext.seccompProfile.type, 'Unconfined', 'bpf() allowed');
    // An init container owns the directories for the non-root daemon.
    const init = pod.initContainers.find((x: { name: string }) => x.name === 'own-dirs');
    assert.ok(init, 'init container own-dirs');
    assert.deepEqual(init.securityContext.capabilities.add.sort(), ['CHOWN', 'FOWNER']);
    const initCmd = (init.command as string[]).join(' ');
    for (const dir of ['/sys/fs/bpf/xdpctl', flagValue(c.args, '--state-dir')!, '/run/xdpctl']) {
      assert.ok(initCmd.includes(dir) && initCmd.includes(`chown -R ${IMAGE_UID}:${IMAGE_UID}`), `init owns ${dir}`);
    }
    // OTLP: the protocol that the endpoint's port speaks.
    assertOtlpProtocol(
      Object.fromEntries((c.env as { name: string; value?: string }[]).map((e) => [e.name, e.value ?? ''])),
      'DaemonSet',
    );
    // Probes: the light probe; the startup probe's timeout covers a start under load (the default is 1 s).
    assert.ok(c.startupProbe.timeoutSeconds >= 5, 'startup probe timeout');
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
    // `kubectl exec ... xdpctl` runs as the image's user: it must be able to administer the daemon.
    assert.ok(
      auth.admin.some((g) => g.type === 'unix-uid' && g.uid === IMAGE_UID),
      `unix-uid:${IMAGE_UID} (the image's user) is admin`,
    );
    assert.equal(mountOf.get(authPath.slice(0, authPath.lastIndexOf('/'))), 'auth');

    // Memory: the limit covers the capacity the flags allow, by the measured table in docs/deployment.md
    // (limit >= 1.25 x the peak of a row with at least these rules and streams; the request covers the rules
    // at rest). Streams: --max-watch-streams per identity, times the identities that have a role (each grant
    // names one identity: no group or prefix grant, whose members could each open that many).
    const grants = [...auth.admin, ...auth.readOnly];
    for (const g of grants) {
      assert.ok(
        g.type === 'unix-uid' || g.type === 'x509-cn' || (g.type === 'spiffe' && !g.prefix),
        `auth grant ${JSON.stringify(g)} names one identity (the stream bound counts identities)`,
      );
    }
    const rules = Number(flagValue(c.args, '--max-rules') ?? daemonDefault('--max-rules'));
    const streams =
      Number(flagValue(c.args, '--max-watch-streams') ?? daemonDefault('--max-watch-streams')) * grants.length;
    const rows = memoryTable();
    const covering = rows.filter((r) => r.rules >= rules && r.streams >= streams);
    assert.ok(
      covering.length > 0,
      `docs/deployment.md "Memory" has no measured row for ${rules} rules and ${streams} streams: measure it with bench/memory-sizing.ts`,
    );
    const peakMb = Math.min(...covering.map((r) => r.peakMb));
    const limit = bytes(c.resources.limits.memory);
    assert.ok(
      limit >= 1.25 * peakMb * 1e6,
      `limits.memory ${c.resources.limits.memory} (${(limit / 1e6).toFixed(0)} MB) < 1.25 x ${peakMb} MB measured for ${rules} rules and ${streams} streams`,
    );
    const atRest = rows.filter((r) => r.rules >= rules && r.streams === 0);
    assert.ok(atRest.length > 0, `a measured row for ${rules} rules and no streams`);
    const request = bytes(c.resources.requests.memory);
    const restMb = Math.min(...atRest.map((r) => r.peakMb));
    assert.ok(request >= restMb * 1e6, `requests.memory ${c.resources.requests.memory} < ${restMb} MB at rest`);
  });
});

/** A flag's default in `xdpctld --help` ("(default: "4096")"). */
function daemonDefault(flag: string): string {
  const r = spawnSync(process.execPath, ['dist/server/main.js', '--help'], { cwd: ROOT, encoding: 'utf8' });
  const text = r.stdout.replace(/\s+/g, ' ');
  const m = new RegExp(`${flag} <n>.*?\\(default: "(\\d+)"\\)`).exec(text);
  assert.ok(m, `xdpctld --help gives ${flag}'s default`);
  return m[1];
}

/** Kubernetes memory quantities: Ki/Mi/Gi (powers of 1024), k/M/G (of 1000), or bytes. */
function bytes(q: string): number {
  const m = /^(\d+(?:\.\d+)?)(Ki|Mi|Gi|k|M|G)?$/.exec(String(q));
  assert.ok(m, `memory quantity ${q}`);
  const unit = { Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, k: 1e3, M: 1e6, G: 1e9 }[m[2] ?? ''] ?? 1;
  return Number(m[1]) * unit;
}

/** The measured rows of docs/deployment.md's Memory table: rules, streams, cgroup peak in MB. */
function memoryTable(): { rules: number; streams: number; peakMb: number }[] {
  const rows = [
    ...read('docs/deployment.md').matchAll(/^\s*\| (\d+) \| (\d+) \| [\d ]+ MB \| ([\d ]+) MB \| [\d ]+ MB \|$/gm),
  ];
  assert.ok(rows.length >= 3, `rows of the Memory table (${rows.length})`);
  return rows.map((m) => ({ rules: Number(m[1]), streams: Number(m[2]), peakMb: Number(m[3].replace(/ /g, '')) }));
}
