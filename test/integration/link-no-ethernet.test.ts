/**
 * A link end without an Ethernet address (lo here; a tun or WireGuard device alike: MAC all zeros) is
 * refused as a backend's egress is: INVALID_ARGUMENT naming link.a / link.b (links[i].a / links[i].b in
 * ApplyLinks), the same over gRPC, HTTP/JSON and in config-file mode (there: logged, the last good
 * configuration keeps running). Nothing is applied.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { ClientError, Status } from 'nice-grpc';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

const NO_ETHERNET = /interface "lo" has no Ethernet address \(its MAC is 00:00:00:00:00:00\)/;

describe('links: an end without an Ethernet address is refused', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const file = `/tmp/xdpctl-test-${id}c.yaml`;
  const httpSock = `/tmp/xdpctl-test-${id}-http.sock`;
  let h1: Host, h2: Host, h3: Host;
  const daemons: DaemonProcess[] = [];

  before(() => {
    h1 = topo.addHost('h1');
    h2 = topo.addHost('h2');
    h3 = topo.addHost('h3');
  });
  after(async () => {
    for (const d of daemons) await d.destroy();
    topo.destroy();
    rmSync(file, { force: true });
    rmSync(httpSock, { force: true });
    for (const x of [id, `${id}c`]) XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${x}`);
  });

  it('gRPC Connect and ApplyLinks, and HTTP/JSON, name the end', async () => {
    const d = await DaemonProcess.start(id, ['--http-listen', `unix:${httpSock}`]);
    daemons.push(d);
    const c = d.clients();
    const refused = async (call: Promise<unknown>, field: string) => {
      const e = await call.then(
        () => assert.fail(`${field}: accepted`),
        (x: unknown) => x,
      );
      assert.ok(e instanceof ClientError, String(e));
      assert.equal(e.code, Status.INVALID_ARGUMENT, e.details);
      assert.ok(e.details.startsWith(`${field}: `), e.details);
      assert.match(e.details, NO_ETHERNET);
    };
    await refused(c.links.connect({ link: { a: 'lo', b: h1.hostIf } }), 'link.a');
    await refused(c.links.connect({ link: { a: h1.hostIf, b: 'lo' } }), 'link.b');
    for (const validateOnly of [true, false]) {
      await refused(
        c.links.applyLinks({
          links: [
            { a: h1.hostIf, b: h2.hostIf },
            { a: h3.hostIf, b: 'lo' },
          ],
          validateOnly,
        }),
        'links[1].b',
      );
    }
    assert.deepEqual((await c.links.listLinks({})).links, [], 'nothing applied');

    const r = spawnSync(
      'curl',
      [
        '-sS',
        '--unix-socket',
        httpSock,
        '--json',
        JSON.stringify({ link: { a: h1.hostIf, b: 'lo' } }),
        'http://localhost/xdpctl.v1.LinkService/Connect',
      ],
      { encoding: 'utf8', timeout: 15_000 },
    );
    const body = JSON.parse(r.stdout) as {
      code: string;
      message: string;
      details?: { type: string; debug?: { fieldViolations?: { field: string }[] } }[];
    };
    assert.equal(body.code, 'invalid_argument', r.stdout);
    assert.match(body.message, /^link\.b: /);
    assert.match(body.message, NO_ETHERNET);
    const fields = (body.details ?? []).flatMap((x) => x.debug?.fieldViolations ?? []).map((v) => v.field);
    assert.deepEqual(fields, ['link.b']);
    assert.deepEqual((await c.links.listLinks({})).links, [], 'nothing applied');
  });

  it('config-file mode: logged with the field, the last good configuration keeps running', async () => {
    writeFileSync(file, `links:\n  ${h1.hostIf}: ${h2.hostIf}\n`);
    const d = await DaemonProcess.start(`${id}c`, ['--config', file, '--log-level', 'info']);
    daemons.push(d);
    const c = d.clients();
    const pairs = async () => (await c.links.listLinks({})).links.map((l) => `${l.a}-${l.b}`);
    assert.deepEqual(await pairs(), [`${h1.hostIf}-${h2.hostIf}`]);
    const from = d.output.length;
    writeFileSync(file, `links:\n  ${h1.hostIf}: ${h2.hostIf}\n  ${h3.hostIf}: lo\n`);
    const end = Date.now() + 10_000;
    while (!/last good configuration keeps running/.test(d.output.slice(from)) && Date.now() < end) await sleep(100);
    const line = d.output
      .slice(from)
      .split('\n')
      .find((l) => l.includes('last good configuration keeps running'));
    assert.ok(line, d.output.slice(from));
    assert.match(line, /links\[1\]\.b: interface \\"lo\\" has no Ethernet address/);
    assert.deepEqual(await pairs(), [`${h1.hostIf}-${h2.hostIf}`], 'the last good configuration');
  });
});
