// Parsers and error rules of the RBD backend against output captured from a real Ceph 16.2
// (the single-node cluster of scripts/ceph-test-start, rbd run with TZ=UTC).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { classify, type ExecResult } from '../../src/backends/exec.js';
import { progressParser } from '../../src/backends/progress.js';
import { ALREADY_PROTECTED, ALREADY_UNPROTECTED, NOT_A_CLONE, RBD_IMAGE_RULES, RBD_SNAPSHOT_RULES } from '../../src/backends/rbd/errors.js';
import {
  parseChildren,
  parseDu,
  parseImageMeta,
  parseInfo,
  parseLs,
  parseRbdTime,
  parseSnapLs,
  RbdParseError,
} from '../../src/backends/rbd/parse.js';
import { tagsFromMeta } from '../../src/backends/rbd/rbd.js';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'rbd');
const fixture = (name: string) => readFileSync(join(FIXTURES, name), 'utf8');

/** The exit code rbd gave for each captured stderr (rbd exits with the errno). */
const EXIT: Record<string, number> = {
  'rm-has-snapshots': 39,
  'snap-rm-protected': 16,
  'unprotect-has-children': 16,
  'info-not-found': 2,
  'pool-not-found': 2,
  'snap-rm-not-found': 2,
  'create-exists': 17,
  'snap-create-exists': 17,
  'clone-unprotected': 22,
  'flatten-not-clone': 22,
  'protect-already': 16,
  'unprotect-already': 22,
  'resize-shrink-refused': 22,
  unreachable: 110,
  'conf-missing': 1,
};

function captured(name: string): ExecResult {
  return { command: 'rbd', code: EXIT[name] ?? 1, signal: null, stdout: '', stderr: fixture(`${name}.stderr`), truncated: false, durationMs: 1 };
}

describe('rbd JSON parsers', () => {
  it('reads rbd info of an image: size, creation time (UTC), no parent', () => {
    expect(parseInfo(fixture('info.json'))).toEqual({
      name: 'img',
      sizeBytes: 209715200n,
      createTime: new Date('2026-11-22T09:36:59Z'),
      parent: undefined,
    });
  });

  it('reads the parent of a clone as pool/image@snap', () => {
    expect(parseInfo(fixture('info-clone.json'))).toMatchObject({ name: 'c2', sizeBytes: 104857600n, parent: 'rbd/img@s1' });
  });

  it('reads rbd ls', () => {
    expect(parseLs(fixture('ls.json'))).toEqual(['b1', 'b2', 'c1', 'c2', 'img']);
    expect(parseLs(fixture('ls-empty.json'))).toEqual([]);
  });

  it('reads rbd du rows for image heads and snapshots', () => {
    const pool = parseDu(fixture('du-pool.json'));
    expect(pool.find((r) => r.image === 'b2')).toEqual({ image: 'b2', snapshot: undefined, provisionedBytes: 1048577n, usedBytes: 0n });
    expect(pool.filter((r) => r.image === 'img').map((r) => r.snapshot)).toEqual(['s1', 's2', undefined]);
    expect(parseDu(fixture('du-image.json')).find((r) => r.snapshot === 's2')?.usedBytes).toBe(16777216n);
  });

  it('reads rbd snap ls: the protected flag is a string, the timestamp ctime text', () => {
    expect(parseSnapLs(fixture('snap-ls.json'))).toEqual([
      { id: 4, name: 's1', imageSizeBytes: 104857600n, protected: true, createTime: new Date('2026-11-22T09:37:00Z') },
      { id: 6, name: 's2', imageSizeBytes: 209715200n, protected: false, createTime: new Date('2026-11-22T09:40:36Z') },
    ]);
    expect(parseSnapLs(fixture('snap-ls-empty.json'))).toEqual([]);
  });

  it('reads rbd children as pool/image', () => {
    expect(parseChildren(fixture('children.json'))).toEqual(['rbd/c2']);
    expect(parseChildren(fixture('children-empty.json'))).toEqual([]);
    // Without @snap: the clones of all the image's snapshots.
    expect(parseChildren(fixture('children-image.json'))).toEqual(['rbd/c3', 'rbd/c4']);
    expect(parseChildren('[{"pool":"p","pool_namespace":"ns","image":"c"}]')).toEqual(['p/ns/c']);
  });

  it('reads image-meta, including the empty output of an image without metadata', () => {
    const meta = parseImageMeta(fixture('image-meta.json'));
    expect(meta['debvisor.owner']).toBe('alice');
    expect(tagsFromMeta(meta)).toEqual({ env: 'ci', x: '-dash' });
    expect(parseImageMeta(fixture('image-meta-empty.json'))).toEqual({});
    expect(tagsFromMeta({ 'debvisor.tag-empty.flag': '1', 'debvisor.owner': 'a', 'debvisor.snap.s.label': 'l', other: 'x' })).toEqual({ flag: '' });
  });

  it('keeps byte counts past 2^53 exact', () => {
    const info = parseInfo('{"name":"huge","size":18014398509481985,"create_timestamp":"Mon Jan  5 01:02:03 2026"}');
    expect(info.sizeBytes).toBe(18014398509481985n);
    expect(info.createTime).toEqual(new Date('2026-01-05T01:02:03Z'));
  });

  it('throws RbdParseError on output it does not understand', () => {
    expect(() => parseInfo('not json')).toThrow(RbdParseError);
    expect(() => parseInfo('{"name":"x"}')).toThrow(RbdParseError);
    expect(() => parseSnapLs('[{"id":1,"name":"s","size":1,"protected":"maybe"}]')).toThrow(RbdParseError);
  });

  it('gives no time rather than a wrong one for text it does not know', () => {
    expect(parseRbdTime('2026-11-22T09:36:59Z')).toBeUndefined();
    expect(parseRbdTime('Sun Foo 22 09:36:59 2026')).toBeUndefined();
    expect(parseRbdTime(undefined)).toBeUndefined();
  });
});

describe('rbd error rules', () => {
  const kindOf = (name: string, rules = RBD_IMAGE_RULES) => {
    const err = classify(captured(name), rules, 'rbd');
    return err ? { kind: err.kind, message: err.publicMessage } : undefined;
  };

  it('classifies state conflicts as busy, with a message saying what to do', () => {
    expect(kindOf('rm-has-snapshots')).toEqual({ kind: 'busy', message: 'the image has snapshots; delete them first' });
    expect(kindOf('snap-rm-protected', RBD_SNAPSHOT_RULES)).toEqual({ kind: 'busy', message: 'the snapshot is protected; unprotect it first' });
    expect(kindOf('unprotect-has-children', RBD_SNAPSHOT_RULES)).toEqual({ kind: 'busy', message: 'the snapshot has clones; flatten or delete them first' });
    expect(classify({ ...captured('info-not-found'), code: 16, stderr: 'rbd: error: image still has watchers\n' }, RBD_IMAGE_RULES)?.kind).toBe('busy');
  });

  it('tells a missing pool, image and snapshot apart', () => {
    expect(kindOf('pool-not-found')).toEqual({ kind: 'not_found', message: 'the Ceph pool does not exist' });
    expect(kindOf('info-not-found')).toEqual({ kind: 'not_found', message: 'the RBD image does not exist' });
    expect(kindOf('info-not-found', RBD_SNAPSHOT_RULES)?.message).toBe('the RBD image does not exist');
    expect(kindOf('snap-rm-not-found', RBD_SNAPSHOT_RULES)).toEqual({ kind: 'not_found', message: 'the RBD snapshot does not exist' });
  });

  it('classifies existing images and snapshots', () => {
    expect(kindOf('create-exists')?.kind).toBe('exists');
    expect(kindOf('snap-create-exists', RBD_SNAPSHOT_RULES)?.kind).toBe('exists');
  });

  it('classifies an unreachable cluster and a missing ceph.conf as unavailable', () => {
    expect(kindOf('unreachable')).toEqual({ kind: 'unavailable', message: 'the Ceph cluster is unreachable; retry later' });
    expect(kindOf('conf-missing')?.kind).toBe('unavailable');
  });

  it('refuses to clone an unprotected snapshot as a precondition, not an internal error', () => {
    expect(kindOf('clone-unprotected')?.kind).toBe('unsupported');
  });

  it('recognises the idempotent cases and leaves other failures as failed', () => {
    expect(ALREADY_PROTECTED.test(fixture('protect-already.stderr'))).toBe(true);
    expect(ALREADY_UNPROTECTED.test(fixture('unprotect-already.stderr'))).toBe(true);
    expect(NOT_A_CLONE.test(fixture('flatten-not-clone.stderr'))).toBe(true);
    expect(kindOf('resize-shrink-refused')?.kind).toBe('failed');
  });
});

describe('rbd progress on stderr', () => {
  for (const [name, last] of [
    ['flatten-progress', 100],
    ['rm-progress', 100],
  ] as const) {
    it(`reads ${name} into increasing percentages ending at ${last}`, () => {
      const seen: number[] = [];
      const feed = progressParser((p) => seen.push(p));
      const text = fixture(`${name}.stderr`);
      // In small chunks, as a pipe delivers them.
      for (let i = 0; i < text.length; i += 7) feed(text.slice(i, i + 7));
      expect(seen.length).toBeGreaterThan(3);
      expect(seen).toEqual([...seen].sort((a, b) => a - b));
      expect(seen.at(-1)).toBe(last);
    });
  }
});
