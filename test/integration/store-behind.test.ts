/**
 * A restart on an older state store of the same pin root (a previous --state-dir, a rolled-back volume) is
 * refused: the store counts its commits (meta `generation`), each commit writes that count into the pins
 * (<pinRoot>/store_generation), and a start whose store is behind the pins names both generations, the rules
 * the kernel holds that the store lacks and the flags to go on, and changes nothing (before: the start took
 * the old store as the truth and removed the rules it did not know: "orphans: 2" at info, no names, traffic
 * to them 0). --reset-datapath takes the old store as the truth; the store the pins were written from is then
 * behind them and refused in turn. Real daemons, two state dirs on one pin root, pins and traffic.
 */
import assert from 'node:assert/strict';
import { cpSync, readFileSync, rmSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import Database from 'better-sqlite3';

import { type Rule } from '../../src/gen/xdpctl/v1/rule.js';
import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, runId, sh, sleep } from '../helpers/env.js';
import { apiUdpRule, backendOf } from '../helpers/lab.js';
import { Topology, type Host } from '../helpers/topology.js';
import { sendUdp, UdpListener } from '../helpers/udp.js';

const NOWHERE = '198.18.9.9';

describe('a restart on a state store older than the datapath', kernelOnly(), () => {
  const id = runId();
  const topo = new Topology(id);
  const pinRoot = `/sys/fs/bpf/xdpctl-test-${id}`;
  const stateDir = `/tmp/xdpctl-test-${id}-state`;
  const oldDir = `/tmp/xdpctl-test-${id}-old`;
  let d: DaemonProcess | undefined;
  let vm: Host, b1: Host;
  const listeners: UdpListener[] = [];

  before(() => {
    vm = topo.addHost('vm', '198.18.1.1/24');
    b1 = topo.addHost('b1', '198.18.2.1/24');
    topo.routeToXdp('vm');
  });
  after(async () => {
    listeners.forEach((l) => l.kill());
    await d?.destroy();
    topo.destroy();
    XdpDatapath.unpinAll(pinRoot);
    for (const x of [stateDir, oldDir]) rmSync(x, { recursive: true, force: true });
  });

  const rule = (name: string, port: number): Rule => apiUdpRule(name, port, [vm.hostIf], [backendOf(b1)]);
  /** Datagrams delivered of 20 sent to `port`. */
  const probe = async (port: number) => {
    const l = await UdpListener.start(b1.netns, b1.ip!, port);
    listeners.push(l);
    await sendUdp(vm.netns, NOWHERE, port, 20, { flows: 20 }).done;
    await sleep(200);
    return (await l.stop()).unique;
  };
  /** The generation a store records (meta), read with SQLite itself. */
  const storeGeneration = (dir: string) => {
    const db = new Database(`${dir}/state.db`, { readonly: true });
    try {
      const row = db.prepare("SELECT value FROM meta WHERE key = 'generation'").get() as { value: string } | undefined;
      return Number(row?.value ?? 0);
    } finally {
      db.close();
    }
  };
  /** The generation the pins record, read with bpftool (a u64, little-endian). */
  const pinGeneration = () => {
    const dump = JSON.parse(sh('bpftool', ['-j', 'map', 'dump', 'pinned', `${pinRoot}/store_generation`])) as {
      value: string[];
    }[];
    return Number(Buffer.from(dump[0].value.map((b) => parseInt(b, 16))).readBigUInt64LE(0));
  };
  const refusal = async (dir: string) => {
    const err = await DaemonProcess.start(id, ['--log-level', 'info', '--state-dir', dir]).then(
      (x) => {
        d = x;
        return undefined;
      },
      (e: Error) => e.message,
    );
    assert.ok(err, `a start on ${dir} is refused`);
    if (process.env.S30_PEEK) console.error(err);
    return err;
  };
  const records = (out: string) =>
    out
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { msg: string; level: number });

  it('refuses a store behind the pins, naming both generations and the rules it lacks; nothing changes', async () => {
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    await d.clients().rules.createRule({ rule: rule('web', 7811) });
    assert.equal(await d.stop(), 0);
    cpSync(stateDir, oldDir, { recursive: true }); // the store as it was with one rule
    rmSync(`${oldDir}/xdpctld.lock`, { force: true });
    d = await DaemonProcess.start(id, ['--log-level', 'info']);
    await d.clients().rules.createRule({ rule: rule('gb', 7812) });
    await d.clients().rules.createRule({ rule: rule('nb', 7813) });
    assert.equal(await probe(7812), 20, 'gb forwards');
    assert.equal(await d.stop(), 0);
    const oldGen = storeGeneration(oldDir);
    const newGen = storeGeneration(stateDir);
    const pinned = pinGeneration();
    assert.ok(oldGen >= 1 && newGen >= oldGen + 2, `generations: old store ${oldGen}, newer store ${newGen}`);
    assert.equal(pinned, newGen, 'the pins record the generation of the store they were last written from');

    const err = await refusal(oldDir);
    assert.match(err, /is older than the pinned datapath/);
    assert.match(
      err,
      new RegExp(`the store is at generation ${oldGen}, the datapath was last written from generation ${newGen}`),
    );
    const ifindex = Number(readFileSync(`/sys/class/net/${vm.hostIf}/ifindex`, 'utf8'));
    assert.match(err, /the kernel holds 2 rule\(s\) the store lacks/);
    assert.ok(err.includes(`udp port 7812 on ${vm.hostIf} (ifindex ${ifindex}), any destination`), err);
    assert.ok(err.includes(`udp port 7813 on ${vm.hostIf} (ifindex ${ifindex}), any destination`), err);
    assert.match(err, /--reset-datapath to take this store as the truth/);
    assert.match(err, /Start with the --state-dir this datapath was last written from/);
    assert.doesNotMatch(err, /"msg":"serving"/, 'refused before it served');
    // Nothing changed: every rule still forwards, the pins and the old store keep their generations.
    assert.equal(await probe(7812), 20, 'gb still forwards after the refusal');
    assert.equal(await probe(7813), 20, 'nb still forwards after the refusal');
    assert.equal(pinGeneration(), newGen);
    assert.equal(storeGeneration(oldDir), oldGen);
  });

  it('--reset-datapath takes the old store as the truth; the newer store is then behind and refused', async () => {
    const before = pinGeneration();
    d = await DaemonProcess.start(id, ['--log-level', 'info', '--state-dir', oldDir, '--reset-datapath']);
    const warned = records(d.output).filter((r) => r.msg.includes('is older than the pinned datapath'));
    assert.equal(warned.length, 1, `the reset says what it clears: ${d.output}`);
    assert.match(warned[0].msg, /--reset-datapath: clearing them/);
    assert.equal(await probe(7812), 0, 'gb, which the old store lacks, was removed');
    assert.equal(await probe(7811), 20, "the old store's web forwards");
    const taken = storeGeneration(oldDir);
    assert.ok(taken > before, `the old store continues above the pins: ${taken} > ${before}`);
    assert.equal(await d.stop(), 0);
    assert.equal(pinGeneration(), storeGeneration(oldDir));

    const err = await refusal(stateDir);
    assert.match(err, /is older than the pinned datapath/);
    assert.match(
      err,
      /the store has 2 rule\(s\) the datapath does not forward \(gb; nb\): deleted after this store was written/,
    );
    assert.equal(await probe(7811), 20, 'web still forwards after the refusal');

    // The store the pins were written from starts, and removes nothing.
    d = await DaemonProcess.start(id, ['--log-level', 'info', '--state-dir', oldDir]);
    assert.deepEqual(
      records(d.output).filter((r) => r.level >= 50),
      [],
      'no error at a start on the store the pins were written from',
    );
    assert.equal(await probe(7811), 20, 'web forwards');
  });
});
