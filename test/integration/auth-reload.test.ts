/**
 * SIGHUP reads --auth-config again (a review's finding: SIGHUP read the --config file and the TLS files, but
 * a changed auth file took a restart; the reload line said "readAtStartOnly: --auth-config"). With a real
 * daemon and a real client (unix-uid:0 over loopback TCP, told by the kernel): root is admin, the file is
 * rewritten to make root read-only, SIGHUP, and a change is PERMISSION_DENIED while reads still work; a
 * broken file (bad YAML, an unknown user, a FIFO at the path) is refused on SIGHUP with an error naming each
 * problem, and the roles in force stay; the file making root admin again restores the change.
 */
import assert from 'node:assert/strict';
import { mkdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { ClientError, Status } from 'nice-grpc';

import { XdpDatapath } from '../../src/server/dataplane/datapath.js';
import { DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, removeIproute2BpffsDirs, runId, sh, until } from '../helpers/env.js';

describe('SIGHUP reads --auth-config again', kernelOnly(), () => {
  const id = runId();
  const dir = `/tmp/xdpctl-test-${id}-auth`;
  const file = `${dir}/auth.yaml`;
  let d: DaemonProcess | undefined;

  before(() => mkdirSync(dir, { recursive: true, mode: 0o700 }));
  after(async () => {
    await d?.destroy();
    XdpDatapath.unpinAll(`/sys/fs/bpf/xdpctl-test-${id}`);
    rmSync(`/tmp/xdpctl-test-${id}-state`, { recursive: true, force: true });
    rmSync(dir, { recursive: true, force: true });
    removeIproute2BpffsDirs();
  });

  const put = (text: string) => {
    writeFileSync(`${file}.tmp`, text);
    renameSync(`${file}.tmp`, file);
  };
  const lines = (msg: RegExp) =>
    d!.output
      .split('\n')
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown> & { msg: string }];
        } catch {
          return [];
        }
      })
      .filter((l) => typeof l.msg === 'string' && msg.test(l.msg));
  let reloads = 0;
  /** SIGHUP, and the reload line's `auth`. */
  const hup = async () => {
    d!.child.kill('SIGHUP');
    reloads++;
    await until('the reload line', () => lines(/^SIGHUP: reload done; still serving$/).length >= reloads, 10_000);
    return lines(/^SIGHUP: reload done; still serving$/)[reloads - 1];
  };
  /** A change root makes (deleting a rule that does not exist): NOT_FOUND when allowed, else the code. */
  const change = async () => {
    try {
      await d!.clients().rules.deleteRule({ name: 'nosuch' });
      return Status.OK;
    } catch (e) {
      return (e as ClientError).code;
    }
  };

  it('applies a changed file, refuses a broken one keeping the roles in force', async () => {
    put('admin: [unix-uid:0]\nreadOnly: []\n');
    d = await DaemonProcess.start(id, ['--log-level', 'info', '--auth-config', file, '--xdp-mode', 'generic']);
    assert.equal(await change(), Status.NOT_FOUND, 'root is admin');

    put('admin: [unix-uid:4242]\nreadOnly: [unix-uid:0]\n');
    let r = await hup();
    assert.deepEqual(r.auth, { file, roles: 'in force: 1 admin, 1 read-only grant(s)' }, JSON.stringify(r));
    assert.equal(r.readAtStartOnly, 'the command line');
    assert.equal(await change(), Status.PERMISSION_DENIED, 'root is read-only now');
    assert.deepEqual((await d.clients().rules.listRules({})).rules, [], 'reads still allowed');

    const broken: [string, () => void, RegExp][] = [
      ['bad YAML', () => put('admin: [unix-uid:0\n'), /./],
      ['an unknown user', () => put(`admin: [unix-user:nosuch${id}]\n`), new RegExp(`nosuch${id}`)],
      [
        'a FIFO',
        () => {
          rmSync(file);
          sh('mkfifo', [file]);
        },
        /is a FIFO \(named pipe\), not a regular file/,
      ],
    ];
    for (const [name, make, why] of broken) {
      make();
      r = await hup();
      const a = r.auth as { file: string; refused: string[]; kept: string };
      assert.equal(a.file, file, name);
      assert.ok(
        a.refused.some((p) => why.test(p)),
        `${name}: ${JSON.stringify(a)}`,
      );
      assert.equal(a.kept, 'the roles in force stay (1 admin, 1 read-only grant(s))', name);
      assert.equal(lines(new RegExp(`^--auth-config .* refused on reload`)).length >= 1, true, name);
      assert.equal(await change(), Status.PERMISSION_DENIED, `${name}: the roles in force stay`);
    }
    rmSync(file, { force: true });

    put('admin: [unix-uid:0]\n');
    r = await hup();
    assert.deepEqual(r.auth, { file, roles: 'in force: 1 admin, 0 read-only grant(s)' });
    assert.equal(await change(), Status.NOT_FOUND, 'root is admin again');
    assert.equal(await d.stop(), 0);
  });
});
