/**
 * Config-file mode, the xdp-xconnect demo's sequence: a first file connects
 * h1-h2, a second h1-h3, a third h2-h3; a bad file (unknown interface, then
 * broken YAML) keeps the third running. Editors that save by rename and
 * half-written files are handled. Pings prove every step.
 */
import assert from 'node:assert/strict';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { Status } from 'nice-grpc';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess, type Clients } from '../helpers/daemon.js';
import { kernelOnly, runId, sleep } from '../helpers/env.js';
import { Topology, type Host } from '../helpers/topology.js';

describe('config-file mode (xdp-xconnect workflow)', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const file = `/tmp/xdpctl-test-${id}.yaml`;
  let d: DaemonProcess | undefined;
  let c: Clients;
  let h1: Host, h2: Host, h3: Host;

  before(async () => {
    h1 = topo.addHost('h1', '198.18.0.1/24');
    h2 = topo.addHost('h2', '198.18.0.2/24');
    h3 = topo.addHost('h3', '198.18.0.3/24');
  });
  after(async () => {
    await d?.destroy();
    topo.destroy();
    rmSync(file, { force: true });
    rmSync(`${file}.tmp`, { force: true });
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
  });

  const links = async () => (await c.links.listLinks({})).links.map((l) => [l.a, l.b].sort().join('-')).sort();
  async function until(want: string[]) {
    for (let i = 0; i < 50; i++) {
      if (JSON.stringify(await links()) === JSON.stringify(want)) return;
      await sleep(100);
    }
    assert.deepEqual(await links(), want, 'the daemon did not apply the file');
  }
  const pair = (a: Host, b: Host) => [a.hostIf, b.hostIf].sort().join('-');
  /** Save like an editor: write a temporary file, rename it over. */
  const saveByRename = (text: string) => {
    writeFileSync(`${file}.tmp`, text);
    renameSync(`${file}.tmp`, file);
  };

  it('follows the file through three versions and keeps the last good one', async () => {
    writeFileSync(file, `links:\n  ${h1.hostIf}: ${h2.hostIf}\n`);
    d = await DaemonProcess.start(id, ['--config', file]);
    c = d.clients();
    await until([pair(h1, h2)]);
    assert.equal(topo.ping('h1', h2.ip!), true, 'step 1: h1 -> h2');

    saveByRename(`links:\n  ${h1.hostIf}: ${h3.hostIf}\n`);
    await until([pair(h1, h3)]);
    assert.equal(topo.ping('h1', h3.ip!), true, 'step 2: h1 -> h3');
    assert.equal(topo.ping('h1', h2.ip!, 1), false, 'step 2: not h2');

    // Written in place, in two halves: the first half is not valid YAML.
    writeFileSync(file, `links:\n  ${h2.hostIf}: [`);
    await sleep(50);
    writeFileSync(file, `links:\n  ${h2.hostIf}: ${h3.hostIf}\n`);
    await until([pair(h2, h3)]);
    assert.equal(topo.ping('h2', h3.ip!), true, 'step 3: h2 -> h3');
    assert.equal(topo.ping('h1', h3.ip!, 1), false, 'step 3: not h1');
    assert.doesNotMatch(d.output, /invalid config/, 'the half-written file caused no error');

    saveByRename(`links:\n  ${h1.hostIf}: nosuchif0\n`);
    await sleep(1200);
    assert.match(d.output, /interface \\?"nosuchif0\\?" does not exist; the last good configuration keeps running/);
    saveByRename(`links: {${h1.hostIf}: \n`);
    await sleep(1200);
    assert.match(d.output, /invalid config .*; the last good configuration keeps running/);
    assert.deepEqual(await links(), [pair(h2, h3)]);
    assert.equal(topo.ping('h2', h3.ip!), true, 'bad files: h2 -> h3 still');

    // While a file owns the state, the API refuses changes.
    await assert.rejects(c.links.disconnect({ a: h2.hostIf, b: h3.hostIf }), (e: { code: number; details: string }) => {
      assert.equal(e.code, Status.FAILED_PRECONDITION);
      assert.match(e.details, /owned by the config file/);
      return true;
    });
  });
});
