/**
 * `xdpctl` adds "the change may have been made all the same" only when xdpctld's answer was lost (the client's own
 * deadline, a dropped connection), not to a status xdpctld sent itself: its UNAVAILABLE "… the change is not made"
 * is definite (the nineteenth review: a frozen state disk's refusal, answered in 7.8 ms, was followed by "may have
 * been made all the same"). xdpctld marks such statuses (google.rpc.ErrorInfo reason XDPCTLD_ANSWERED); a real
 * gRPC server with the daemon's error middleware, and the real CLI.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { after, before, describe, it } from 'node:test';

import { ServerCredentials } from '@grpc/grpc-js';
import { createServer, ServerError, Status, type Server } from 'nice-grpc';

import { RuleServiceDefinition } from '../../src/gen/xdpctl/v1/rule.js';
import type { Logger } from '../../src/server/log.js';
import { errorMiddleware } from '../../src/server/services/status.js';
import { CLI, DAEMON_NODE_FLAGS, ROOT } from '../helpers/env.js';

const nop = () => undefined;
const log = { warn: nop, info: nop, error: nop, debug: nop, trace: nop, fatal: nop } as unknown as Logger;

function cli(server: string, args: string[]): Promise<{ code: number | null; stderr: string }> {
  return new Promise((resolve) => {
    const c = spawn(process.execPath, [...DAEMON_NODE_FLAGS, CLI, '--server', server, ...args], {
      cwd: ROOT,
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    c.stderr!.on('data', (d) => (stderr += d));
    c.once('exit', (code) => resolve({ code, stderr }));
  });
}

describe('xdpctl: "may have been made" only when the answer was lost', () => {
  let server: Server;
  let address = '';
  before(async () => {
    server = createServer().use(errorMiddleware(log));
    const unimplemented = Object.fromEntries(
      Object.keys(RuleServiceDefinition.methods).map((m) => [
        m,
        async () => {
          throw new ServerError(Status.UNIMPLEMENTED, m);
        },
      ]),
    );
    server.add(RuleServiceDefinition, {
      ...unimplemented,
      createRule: async () => {
        throw new ServerError(Status.UNAVAILABLE, "the state store's disk is not answering: the change is not made");
      },
      deleteRule: async (_req: unknown, { signal }: { signal: AbortSignal }) => {
        // Never answers: the client's own deadline ends the call.
        await new Promise((resolve) => signal.addEventListener('abort', resolve));
        throw new ServerError(Status.CANCELLED, 'gone');
      },
    } as never);
    const port = await server.listen('127.0.0.1:0', ServerCredentials.createInsecure());
    address = `127.0.0.1:${port}`;
  });
  after(async () => server.forceShutdown());

  it("xdpctld's own UNAVAILABLE: its message only", async () => {
    const r = await cli(address, [
      'rules',
      'create',
      'web',
      '--port',
      '7999',
      '--ingress',
      'eth0',
      '--backend',
      '10.0.0.2,02:00:00:00:00:02,eth1',
    ]);
    assert.equal(r.code, 10, r.stderr);
    assert.match(r.stderr, /the change is not made/);
    assert.doesNotMatch(r.stderr, /may have been made/, r.stderr);
  });

  it('no answer within --timeout: may have been made, and how to read it back', async () => {
    const r = await cli(address, ['--timeout', '500ms', 'rules', 'delete', 'web']);
    assert.equal(r.code, 11, r.stderr);
    assert.match(r.stderr, /may have been made all the same: .*\(read it back: xdpctl rules get web\)/, r.stderr);
  });
});
