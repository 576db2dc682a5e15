/**
 * The client's own grpc.health.v1 Check definition (src/client/health.ts) is wire-compatible with the
 * daemon's (nice-grpc-server-health): same path, and each side decodes what the other encodes.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { HealthDefinition } from 'nice-grpc-server-health';

import { HealthCheckDefinition, ServingStatus } from '../../src/client/health.js';

describe('client health definition', () => {
  const ours = HealthCheckDefinition.methods.check;
  const theirs = HealthDefinition.methods.check;

  it('names the same method', () => {
    assert.equal(HealthCheckDefinition.fullName, HealthDefinition.fullName);
    assert.equal(ours.name, theirs.name);
    assert.equal(ours.requestStream, theirs.requestStream);
    assert.equal(ours.responseStream, theirs.responseStream);
  });

  it('requests and responses round-trip between the two', () => {
    for (const service of ['', 'xdpctl.datapath', 'x'.repeat(300)]) {
      const bytes = ours.requestType.encode({ service }).finish();
      assert.deepEqual(theirs.requestType.decode(bytes), { service });
      assert.deepEqual(ours.requestType.decode(theirs.requestType.encode({ service }).finish()), { service });
    }
    for (const status of [0, 1, 2, 3]) {
      const bytes = theirs.responseType.encode({ status }).finish();
      assert.deepEqual(ours.responseType.decode(bytes), { status });
      assert.equal(theirs.responseType.decode(ours.responseType.encode({ status }).finish()).status, status);
    }
    assert.equal(ServingStatus.SERVING, 1);
  });
});
