// End-to-end: a refused request's grpc-status-details-bin trailer, decoded with the generated
// google.rpc types as any client would.
import { fromBinary } from '@bufbuild/protobuf';
import { anyUnpack } from '@bufbuild/protobuf/wkt';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { BadRequestSchema } from '../../src/gen/google/rpc/error_details_pb.js';
import { StatusSchema } from '../../src/gen/google/rpc/status_pb.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';

let daemon: RunningDaemon;

beforeAll(async () => {
  daemon = await startDaemon();
});

afterAll(async () => {
  await daemon.cleanup();
});

describe('INVALID_ARGUMENT', () => {
  it('carries google.rpc.BadRequest naming the field, and keeps its message text', async () => {
    const access = await clientFor(AccessService, daemon);
    try {
      const refused = (await access.setQuota({ principal: 'spiffe://debvisor/admin/admin', limit: 1n }, { timeoutMs: 10_000 }).then(
        () => expect.fail('an unspecified resource was accepted'),
        (err: unknown) => err,
      )) as ServiceError;
      expect(refused.code).toBe(Status.INVALID_ARGUMENT);
      expect(refused.details).toMatch(/^resource: must name a quota resource \(trace_id=[^)]+\)$/);
      const [bin] = refused.metadata.get('grpc-status-details-bin');
      const status = fromBinary(StatusSchema, bin as Buffer);
      expect(status.code).toBe(Status.INVALID_ARGUMENT);
      expect(status.message).toBe(refused.details);
      const badRequest = anyUnpack(status.details[0]!, BadRequestSchema);
      expect(badRequest?.fieldViolations.map(({ field, description }) => ({ field, description }))).toEqual([
        { field: 'resource', description: 'must name a quota resource' },
      ]);
    } finally {
      access.close();
    }
  });
});
