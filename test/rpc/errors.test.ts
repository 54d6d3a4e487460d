// Status messages are bounded whatever an error echoes, so a huge request value can never
// push a status past the client's metadata limit.
import { status as Status } from '@grpc/grpc-js';
import { describe, expect, it } from 'vitest';
import { MAX_STATUS_MESSAGE_CHARS, RpcError, toStatus } from '../../src/rpc/errors.js';

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
