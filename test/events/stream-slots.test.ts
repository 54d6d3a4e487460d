// The stream limits of WatchEvents: per principal and per daemon, each refusal naming its
// setting, every release giving its slot back once (a double release frees nothing more).
import { describe, expect, it } from 'vitest';
import { RpcError } from '../../src/rpc/errors.js';
import { StreamSlots } from '../../src/services/events.js';

const limits = { maxStreamsPerPrincipal: 2, maxStreams: 3 };

function refusal(take: () => unknown): RpcError {
  try {
    take();
  } catch (err) {
    if (err instanceof RpcError) return err;
    throw err;
  }
  throw new Error('expected a refusal');
}

describe('StreamSlots', () => {
  it('limits streams per principal and per daemon, and counts the open ones', () => {
    const open: number[] = [];
    const slots = new StreamSlots((n) => open.push(n));
    const a1 = slots.acquire('a', limits);
    slots.acquire('a', limits);
    expect(refusal(() => slots.acquire('a', limits))).toMatchObject({ code: 'RESOURCE_EXHAUSTED', message: expect.stringContaining('max_streams_per_principal is 2') as unknown });
    slots.acquire('b', limits);
    expect(refusal(() => slots.acquire('c', limits))).toMatchObject({ code: 'RESOURCE_EXHAUSTED', message: expect.stringContaining('events.max_streams is 3') as unknown });
    a1();
    a1();
    slots.acquire('c', limits);
    expect(refusal(() => slots.acquire('d', limits)).code).toBe('RESOURCE_EXHAUSTED');
    expect(open).toEqual([1, 2, 3, 2, 3]);
  });
});
