// Status messages are bounded whatever an error echoes, so a huge request value can never
// push a status past the client's metadata limit; INVALID_ARGUMENT carries google.rpc.BadRequest.
import { status as Status } from '@grpc/grpc-js';
import { fromBinary } from '@bufbuild/protobuf';
import { anyUnpack } from '@bufbuild/protobuf/wkt';
import { describe, expect, it } from 'vitest';
import { BadRequestSchema } from '../../src/gen/google/rpc/error_details_pb.js';
import { StatusSchema } from '../../src/gen/google/rpc/status_pb.js';
import { InvalidArgumentError, MAX_STATUS_MESSAGE_CHARS, RpcError, toStatus } from '../../src/rpc/errors.js';

function statusDetails(status: ReturnType<typeof toStatus>) {
  const [bin] = status.metadata.get('grpc-status-details-bin');
  return bin === undefined ? undefined : fromBinary(StatusSchema, bin as Buffer);
}

describe('toStatus', () => {
  it('cuts a long message to a marked prefix and keeps the trace id', () => {
    const status = toStatus(new RpcError('NOT_FOUND', `operation ${'x'.repeat(65_536)} not found`), 'trace-1');
    expect(status.code).toBe(Status.NOT_FOUND);
    expect(status.details.length).toBeLessThan(1024);
    expect(status.details.startsWith('operation xxx')).toBe(true);
    expect(status.details).toMatch(/… \[\d+ more characters\] \(trace_id=trace-1\)$/);
  });

  it('leaves a message within the bound as it is', () => {
    const message = 'm'.repeat(MAX_STATUS_MESSAGE_CHARS);
    expect(toStatus(new RpcError('INVALID_ARGUMENT', message), 't').details).toBe(`${message} (trace_id=t)`);
  });
});

describe('INVALID_ARGUMENT details', () => {
  it('carries google.rpc.BadRequest with the field path and the problem; the message text is unchanged', () => {
    const status = toStatus(new InvalidArgumentError('spec.disks[2].size_bytes', 'must be a multiple of 512'), 'trace-2');
    expect(status.code).toBe(Status.INVALID_ARGUMENT);
    expect(status.details).toBe('spec.disks[2].size_bytes: must be a multiple of 512 (trace_id=trace-2)');
    const decoded = statusDetails(status)!;
    expect(decoded.code).toBe(Status.INVALID_ARGUMENT);
    expect(decoded.message).toBe(status.details);
    expect(decoded.details).toHaveLength(1);
    const badRequest = anyUnpack(decoded.details[0]!, BadRequestSchema)!;
    expect(badRequest.fieldViolations.map((v) => ({ field: v.field, description: v.description }))).toEqual([
      { field: 'spec.disks[2].size_bytes', description: 'must be a multiple of 512' },
    ]);
  });

  it('bounds a violation that echoes a huge value, like the message', () => {
    const status = toStatus(new InvalidArgumentError('name', `"${'n'.repeat(100_000)}" is not a valid name`), 't');
    const badRequest = anyUnpack(statusDetails(status)!.details[0]!, BadRequestSchema)!;
    expect(badRequest.fieldViolations[0]!.description.length).toBeLessThan(1024);
    expect((status.metadata.get('grpc-status-details-bin')[0] as Buffer).length).toBeLessThan(4096);
  });

  it('an INVALID_ARGUMENT without a field carries no details', () => {
    expect(statusDetails(toStatus(new RpcError('INVALID_ARGUMENT', 'bad'), 't'))).toBeUndefined();
  });
});
