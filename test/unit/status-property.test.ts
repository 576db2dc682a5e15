/**
 * Errors sent back stay small whatever the request made them echo: the
 * message and google.rpc details travel in HTTP/2 trailers, and trailers
 * over the client's header limit never arrive (the call hangs until its
 * deadline; seen with a 1000-rule ApplyRules and with megabyte names).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import fc from 'fast-check';
import { Status } from 'nice-grpc';

import { CoreError } from '../../src/server/core/errors.js';
import { ERROR_LIMITS, toServerError } from '../../src/server/services/status.js';
import { BadRequest } from '../../src/gen/google/rpc/error_details.js';
import { Status as RpcStatus } from '../../src/gen/google/rpc/status.js';

const text = fc.oneof(
  fc.string({ maxLength: 40 }),
  fc.string({ unit: 'grapheme', maxLength: 300 }),
  fc
    .tuple(fc.string({ minLength: 1, maxLength: 3 }), fc.integer({ min: 1, max: 1 << 20 }))
    .map(([s, n]) => s.repeat(n)),
);

describe('error statuses are bounded (property-based)', () => {
  it('bounds message and details, and keeps small violation lists whole', () => {
    fc.assert(
      fc.property(
        fc.array(
          fc.record({ field: text, description: text }).map((v) => ({ ...v })),
          { minLength: 1, maxLength: 2000 },
        ),
        fc.constantFrom<'invalid' | 'precondition' | 'not-found'>('invalid', 'precondition', 'not-found'),
        (violations, kind) => {
          const err =
            kind === 'invalid'
              ? CoreError.invalid(violations)
              : new CoreError(kind, violations[0].description, violations);
          const { error, details } = toServerError(err);
          assert.ok(error.details.length <= ERROR_LIMITS.message + 120, `message ${error.details.length} chars`);
          assert.ok(
            !details || details.length <= ERROR_LIMITS.detailsBytes + 2 * ERROR_LIMITS.message + 256,
            `details ${details?.length} bytes`,
          );
          if (kind !== 'invalid') return;
          assert.equal(error.code, Status.INVALID_ARGUMENT);
          const sent = BadRequest.decode(RpcStatus.decode(details!).details[0].value).fieldViolations;
          const small = violations.every(
            (v) => v.field.length <= ERROR_LIMITS.field && v.description.length <= ERROR_LIMITS.description,
          );
          const total = violations.reduce(
            (n, v) => n + Buffer.byteLength(v.field) + Buffer.byteLength(v.description) + 12,
            0,
          );
          if (small && total <= ERROR_LIMITS.detailsBytes)
            assert.deepEqual(sent, violations, 'every violation, as it was');
          else {
            assert.ok(sent.length <= violations.length);
            sent.forEach((v, i) =>
              assert.ok(violations[i].field.startsWith(v.field.replace(/…\(\d+ chars\)$/, '')), 'in order, shortened'),
            );
            if (sent.length < violations.length) assert.match(error.details, /more omitted\]$/);
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it("keeps the whole error within gRPC's C-core 8 KiB metadata limit, whatever the message's characters", () => {
    const violations = Array.from({ length: 2000 }, (_, i) => ({
      field: `rules[${i}].name`,
      description: '😀'.repeat(200),
    }));
    for (const text of ['😀'.repeat(5000), 'é'.repeat(5000), '%'.repeat(5000), 'a b'.repeat(5000)]) {
      const { error, details } = toServerError(new CoreError('invalid', text, violations));
      // grpc-message percent-encodes bytes outside 0x20-0x7e and '%'; the details travel in base64.
      const message = [...Buffer.from(error.details)].reduce(
        (n, b) => n + (b >= 0x20 && b <= 0x7e && b !== 0x25 ? 1 : 3),
        0,
      );
      const total = message + Math.ceil(details!.length / 3) * 4;
      assert.ok(total < 7 * 1024, `${text.slice(0, 4)}: message ${message} + details ${details!.length} (base64)`);
    }
  });

  it('never cuts a surrogate pair', () => {
    const err = new CoreError('not-found', `${'a'.repeat(ERROR_LIMITS.message - 1)}😀 tail`);
    const m = toServerError(err).error.details;
    assert.doesNotMatch(m, /[\ud800-\udbff](?![\udc00-\udfff])/);
  });
});
