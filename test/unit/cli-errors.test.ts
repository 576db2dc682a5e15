/**
 * The CLI says why the daemon refused a request's size, and what to do (a review's `rules apply -f` of 700
 * large rules printed only grpc-js's "Received message larger than max (14491122 vs 4194304)").
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { ClientError, Status } from 'nice-grpc';

import { describeClientError, EXIT } from '../../src/client/cli/errors.js';

describe('CLI errors', () => {
  it('a request over the daemon size limit names both sizes and --max-message-bytes', () => {
    const e = new ClientError(
      '/xdpctl.v1.RuleService/ApplyRules',
      Status.RESOURCE_EXHAUSTED,
      'Received message larger than max (14491122 vs 4194304)',
    );
    const d = describeClientError(e, 'unix:/run/xdpctl/xdpctl.sock', undefined);
    assert.equal(d.exitCode, EXIT.EXHAUSTED);
    assert.equal(
      d.message,
      "the request is 13.8 MiB, over xdpctld's limit of 4.0 MiB (its --max-message-bytes): raise that limit, or send the change in parts (rules create/update/delete)",
    );
  });
  it('other RESOURCE_EXHAUSTED errors (a full table) keep the daemon message', () => {
    const e = new ClientError('/x', Status.RESOURCE_EXHAUSTED, 'backend table full: the change needs 128, 0 free');
    assert.equal(describeClientError(e, 's', undefined).message, 'backend table full: the change needs 128, 0 free');
  });
});
