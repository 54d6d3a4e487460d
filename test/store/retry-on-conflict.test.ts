import { describe, expect, it } from 'vitest';
import { ConflictError } from '../../src/store/errors.js';
import { retryOnConflict } from '../../src/store/repository.js';

describe('retryOnConflict', () => {
  it('runs the read-modify-write again after a concurrent change', async () => {
    let calls = 0;
    const result = await retryOnConflict(() => {
      calls++;
      return calls < 3 ? Promise.reject(new ConflictError('changed concurrently')) : Promise.resolve('written');
    });
    expect(result).toBe('written');
    expect(calls).toBe(3);
  });

  it('passes any other error through at once', async () => {
    let calls = 0;
    await expect(
      retryOnConflict(() => {
        calls++;
        return Promise.reject(new Error('store down'));
      }),
    ).rejects.toThrow('store down');
    expect(calls).toBe(1);
  });

  it('gives up after the given number of attempts with the conflict', async () => {
    let calls = 0;
    await expect(
      retryOnConflict(() => {
        calls++;
        return Promise.reject(new ConflictError('busy key'));
      }, 4),
    ).rejects.toBeInstanceOf(ConflictError);
    expect(calls).toBe(4);
  });
});
