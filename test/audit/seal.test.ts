// sealBatch lays a batch out in one buffer sized up front: whatever the events and seq
// numbers, every byte must fit, and each line must parse back to its event plus its
// chain members, with the seal's digests and MAC over exactly those bytes.
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { batchMac, chainKey, entryDigest, EventBuffer, parseLine, sealBatch, sealCapacity } from '../../src/audit/chain.js';

const key = chainKey(Buffer.alloc(32, 7));

describe('sealBatch', () => {
  it('fits and round-trips any events, seq numbers and links', () => {
    const events = fc.array(fc.dictionary(fc.string({ unit: 'binary' }), fc.string({ unit: 'binary' }), { maxKeys: 4 }), { minLength: 1, maxLength: 40 });
    const prev = fc.constantFrom('', 'ab'.repeat(32));
    const firstSeq = fc.oneof(fc.integer({ min: 1, max: 1000 }), fc.constant(Number.MAX_SAFE_INTEGER - 50));
    fc.assert(
      fc.property(events, prev, firstSeq, fc.boolean(), (objects, prevHmac, seq, lead) => {
        const buffer = new EventBuffer();
        for (const object of objects) buffer.push(JSON.stringify(object));
        const { data, hmac } = sealBatch(key, prevHmac, buffer, seq, lead ? '\n' : '');
        const text = data.toString('utf8');
        expect(text.endsWith('}\n')).toBe(true);
        const lines = text.split('\n').slice(lead ? 1 : 0, -1);
        expect(lines).toHaveLength(objects.length);
        const parsed = lines.map((line) => parseLine(line));
        let digests = '';
        parsed.forEach((line, i) => {
          expect(line?.seq).toBe(seq + i);
          const event = { ...line!.entry };
          expect(event.prev).toBe(i === 0 ? prevHmac : undefined);
          delete event.seq;
          delete event.prev;
          expect(event).toEqual(objects[i]);
          digests += entryDigest(line!.canonical);
        });
        expect(parsed.at(-1)?.digests).toBe(digests);
        expect(parsed.at(-1)?.hmac).toBe(hmac);
        expect(batchMac(key, digests)).toBe(hmac);
      }),
      { numRuns: 300 },
    );
  });

  it('writes every seq number in full, across each power of ten', () => {
    for (let power = 10; power <= 1e15; power *= 10) {
      const buffer = new EventBuffer();
      for (let i = 0; i < 3; i++) buffer.push(i === 1 ? '{}' : '{"a":1}');
      // Three entries across the power of ten (power - 2, power - 1, power); the middle one has no members of its own, so no comma.
      const lines = sealBatch(key, '', buffer, power - 2).data.toString('utf8').split('\n').slice(0, -1);
      expect(lines.map((line) => parseLine(line)?.seq)).toEqual([power - 2, power - 1, power]);
      expect(lines[1]).toBe(`{"seq":${power - 1}}`);
    }
  });

  it('lays a batch out in a scratch buffer that is large enough, with the same bytes, and in a new one otherwise', () => {
    const buffer = new EventBuffer();
    for (let i = 0; i < 5; i++) buffer.push(JSON.stringify({ i, text: 'é'.repeat(i * 10) }));
    const plain = sealBatch(key, 'ab'.repeat(32), buffer, 7, '\n');
    const scratch = Buffer.alloc(sealCapacity('ab'.repeat(32), buffer, '\n'), 0xff);
    const reused = sealBatch(key, 'ab'.repeat(32), buffer, 7, '\n', scratch);
    expect(reused.data.buffer).toBe(scratch.buffer);
    expect(reused.data).toEqual(plain.data);
    expect(reused.hmac).toBe(plain.hmac);
    const small = Buffer.alloc(16);
    expect(sealBatch(key, '', buffer, 1, '', small).data.buffer).not.toBe(small.buffer);
  });

  it('grows for events larger than its buffer and is reusable after clear()', () => {
    const buffer = new EventBuffer();
    const big = JSON.stringify({ text: 'é'.repeat(100_000) });
    buffer.push(big);
    buffer.push('{"a":1}');
    expect(buffer.count).toBe(2);
    expect(sealBatch(key, '', buffer, 1).data.toString('utf8')).toContain('{"a":1,"seq":2,"digests":');
    buffer.clear();
    buffer.push('{"b":2}');
    expect(sealBatch(key, '', buffer, 3).data.toString('utf8').startsWith('{"b":2,"seq":3,"prev":"",')).toBe(true);
  });
});
