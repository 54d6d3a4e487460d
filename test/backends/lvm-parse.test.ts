// LVM backend pieces that need no VG: lvs JSON parsing and error classification on output captured
// from the real lvm2 2.03 tools (test/backends/fixtures/lvm/, see capture.ts there; snapshot rows
// come from real snapshot metadata here and from a real `lvcreate -s` in a device-mapper guest),
// the snapshot argv this kernel cannot run,
// and the LVM tag encoding (property-tested round trip of hostile strings).
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { status as Status } from '@grpc/grpc-js';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { classify, type ExecError, type ExecResult } from '../../src/backends/exec.js';
import { LVM_RULES } from '../../src/backends/lvm/errors.js';
import { cowBytes, sizeArg, snapshotArgs } from '../../src/backends/lvm/lvm.js';
import { isSnapshot, isVolume, parseLvsReport, parseLvTime, toSnapshotInfo, toVolumeInfo } from '../../src/backends/lvm/report.js';
import { decodeTags, decodeTagText, encodeTags, encodeTagText, userTag } from '../../src/backends/lvm/tags.js';
import { InvalidArgumentError, toStatus } from '../../src/rpc/errors.js';

const fixture = (name: string) => readFileSync(join(import.meta.dirname, 'fixtures', 'lvm', name), 'utf8');

/** A failed lvm command as the exec layer reports it (lvm exits 5 for all of these). */
function failed(stderrFile: string, code = 5): ExecResult {
  return { command: 'lvm', code, signal: null, stdout: '', stderr: fixture(stderrFile), truncated: false, durationMs: 1 };
}

describe('lvs JSON', () => {
  it('parses an empty VG', () => {
    expect(parseLvsReport(fixture('lvs-empty.json'))).toEqual([]);
  });

  it('parses volumes with owner and hostile user tags; foreign tags are ignored', () => {
    const rows = parseLvsReport(fixture('lvs-volumes.json'));
    expect(rows.map((r) => r.lv_name)).toEqual(['disk0', 'plain']);
    expect(rows.every(isVolume)).toBe(true);
    const disk0 = toVolumeInfo(rows[0]!);
    expect(disk0).toMatchObject({ backend: 'lvm', pool: 'vg0', name: 'disk0', sizeBytes: 67108864n, usedBytes: 67108864n, owner: 'user:alice@example.com' });
    expect(disk0.tags).toEqual({ env: 'ci', 'a=b,c': 'x y#z%€', ['__proto__']: '"quoted"\\' });
    expect(Object.getPrototypeOf(disk0.tags)).toBe(Object.prototype);
    expect(disk0.createTime).toBeInstanceOf(Date);
    const plain = toVolumeInfo(rows[1]!);
    expect(plain).toMatchObject({ name: 'plain', owner: '', tags: {}, sizeBytes: 8388608n });
  });

  it('tells snapshot rows from volumes and reads origin, label, owner and time', () => {
    const rows = parseLvsReport(fixture('lvs-snapshots.json'));
    expect(rows.filter(isVolume).map((r) => r.lv_name)).toEqual(['disk0', 'plain']);
    const snaps = rows.filter(isSnapshot);
    expect(snaps.map((r) => [r.lv_name, r.origin, r.lv_attr.charAt(0)])).toEqual([
      ['disk0-snap1', 'disk0', 's'],
      ['disk0-snap2', 'disk0', 's'],
    ]);
    expect(toSnapshotInfo(snaps[0]!)).toEqual({
      pool: 'vg0',
      volume: 'disk0',
      name: 'disk0-snap1',
      label: 'before upgrade',
      createTime: new Date('2026-01-02T03:04:05Z'),
      // Never activated: lvs reports no snap_percent, so the used size is unknown.
      sizeBytes: 0n,
      protected: false,
      clones: [],
      owner: 'user:bob',
    });
    expect(toSnapshotInfo(snaps[1]!)).toMatchObject({ label: '', owner: 'user:bob' });
    // The origin keeps its tags and stays a volume ('o' attr).
    expect(toVolumeInfo(rows[0]!).owner).toBe('user:alice@example.com');
  });

  it('reads an active snapshot made by the real lvcreate -s in a device-mapper guest', () => {
    const rows = parseLvsReport(fixture('lvs-snapshots-active.json'));
    expect(rows.map((r) => [r.lv_name, r.lv_attr, isVolume(r), isSnapshot(r)])).toEqual([
      ['disk0', 'owi-a-s---', true, false],
      ['disk0-snap1', 'swi-a-s---', false, true],
    ]);
    expect(toSnapshotInfo(rows[1]!)).toMatchObject({ volume: 'disk0', name: 'disk0-snap1', label: 'before upgrade', owner: 'user:bob', sizeBytes: 0n });
    expect(toVolumeInfo(rows[0]!)).toMatchObject({ owner: 'user:alice', sizeBytes: 32n * 1024n * 1024n });
  });

  it('computes used bytes from snap_percent (active snapshot) and data_percent (thin volume)', () => {
    const [row] = parseLvsReport(fixture('lvs-snapshots.json')).filter(isSnapshot);
    expect(toSnapshotInfo({ ...row!, snap_percent: '25.00' }).sizeBytes).toBe(16777216n / 4n);
    const [vol] = parseLvsReport(fixture('lvs-volumes.json'));
    expect(toVolumeInfo({ ...vol!, lv_attr: 'Vwi-a-tz--', data_percent: '12.50' }).usedBytes).toBe(67108864n / 8n);
    expect(toVolumeInfo({ ...vol!, lv_attr: 'Vwi---tz--', data_percent: '' }).usedBytes).toBe(0n);
  });

  it('refuses output that is not an lvs report', () => {
    for (const bad of ['', 'not json', '{}', '{"report":[{"lv":[{"lv_name":"x"}]}]}', '{"report":[{"lv":{}}]}', '{"report":[{"lv":[null]}]}']) {
      expect(() => parseLvsReport(bad)).toThrow(expect.objectContaining({ name: 'ExecError', kind: 'failed' }));
    }
    const [vol] = parseLvsReport(fixture('lvs-volumes.json'));
    const err = (() => {
      try {
        toVolumeInfo({ ...vol!, lv_size: '64m' });
      } catch (e) {
        return e as ExecError;
      }
      throw new Error('expected a throw');
    })();
    expect(err).toMatchObject({ name: 'ExecError', kind: 'failed' });
    expect(err.stderr).toMatch(/byte count/);
  });

  it('parses lv_time with its offset', () => {
    expect(parseLvTime('2026-11-22 09:35:40 +0000')).toEqual(new Date('2026-11-22T09:35:40Z'));
    expect(parseLvTime('2026-11-22 10:35:40 +0100')).toEqual(new Date('2026-11-22T09:35:40Z'));
    expect(parseLvTime('')).toBeUndefined();
    expect(parseLvTime('yesterday')).toBeUndefined();
  });
});

describe('lvm stderr classification', () => {
  const cases: [string, string, number, string][] = [
    ['lvs-not-found.stderr', 'not_found', Status.NOT_FOUND, 'the logical volume does not exist'],
    ['lvextend-not-found.stderr', 'not_found', Status.NOT_FOUND, 'the logical volume does not exist'],
    ['lvcreate-snapshot-no-origin.stderr', 'not_found', Status.NOT_FOUND, 'the logical volume does not exist'],
    ['lvs-vg-not-found.stderr', 'not_found', Status.NOT_FOUND, 'the volume group does not exist'],
    ['lvcreate-exists.stderr', 'exists', Status.ALREADY_EXISTS, 'a logical volume with that name already exists in the volume group'],
    ['lvcreate-no-space.stderr', 'no_space', Status.RESOURCE_EXHAUSTED, 'the volume group has not enough free space'],
    ['lvextend-origin-with-snapshot.stderr', 'unsupported', Status.FAILED_PRECONDITION, 'LVM cannot resize a volume that has snapshots; delete its snapshots first'],
    ['lvreduce-origin-with-snapshot.stderr', 'unsupported', Status.FAILED_PRECONDITION, 'LVM cannot resize a volume that has snapshots; delete its snapshots first'],
    [
      'lvcreate-snapshot-no-dm.stderr',
      'unsupported',
      Status.FAILED_PRECONDITION,
      'LVM snapshots need the device-mapper kernel driver, which this host does not have',
    ],
  ];
  it.each(cases)('%s → %s', (file, kind, code, message) => {
    const err = classify(failed(file), LVM_RULES, 'lvm');
    expect(err).toMatchObject({ kind, publicMessage: message });
    const status = toStatus(err, 't');
    expect(status.code).toBe(code);
    expect(status.details).toBe(`${message} (trace_id=t)`);
  });

  it('ignores warnings on success and leaves unknown failures generic', () => {
    expect(classify({ ...failed('lvcreate-no-space.stderr'), code: 0 }, LVM_RULES, 'lvm')).toBeUndefined();
    expect(classify({ ...failed('lvcreate-snapshot-no-dm.stderr'), code: 0 }, LVM_RULES, 'lvm')).toBeUndefined();
    const other = classify({ ...failed('lvs-empty.json'), stderr: '  Something odd happened.' }, LVM_RULES, 'lvm');
    expect(other).toMatchObject({ kind: 'failed' });
    expect(toStatus(other, 't').code).toBe(Status.INTERNAL);
  });
});

describe('lvm argv', () => {
  it('builds the snapshot lvcreate this kernel cannot run, with an explicit COW size', () => {
    expect(snapshotArgs('vg0', 'disk0', 'snap1', cowBytes(64n * 1024n * 1024n, 100), encodeTags({ owner: 'user:bob', label: 'before upgrade' }))).toEqual([
      'lvcreate',
      '--yes',
      '-s',
      '-n',
      'snap1',
      '-L',
      `${64 * 1024 * 1024 + 1024 * 1024}b`,
      '--addtag',
      'debvisor.owner=user:bob',
      '--addtag',
      'debvisor.label=before#20upgrade',
      'vg0/disk0',
    ]);
    // A percentage below 100 plus the exception-table margin.
    expect(cowBytes(6400n, 25)).toBe(1600n + 100n);
  });

  it('sizes in whole sectors with the byte unit', () => {
    expect(sizeArg(1n)).toBe('512b');
    expect(sizeArg(512n)).toBe('512b');
    expect(sizeArg(67108864n)).toBe('67108864b');
    expect(sizeArg(2n ** 50n + 1n)).toBe(`${2n ** 50n + 512n}b`);
    expect(() => sizeArg(0n)).toThrow(InvalidArgumentError);
    expect(() => sizeArg(-1n)).toThrow(InvalidArgumentError);
  });
});

describe('LVM tag encoding', () => {
  const LVM_TAG = /^[A-Za-z0-9_+.\-/=!:&#]+$/;

  it('round-trips any well-formed string using only characters LVM allows', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 20 }), fc.string({ unit: 'binary', maxLength: 20 }), (a, b) => {
        for (const text of [a, b]) {
          const encoded = encodeTagText(text, 'f');
          expect(encoded === '' || LVM_TAG.test(encoded)).toBe(true);
          expect(encoded).not.toMatch(/[=,%@ ]/);
          expect(decodeTagText(encoded)).toBe(text);
        }
      }),
      { numRuns: 100 },
    );
  });

  it('round-trips owner, label and user tags through the lv_tags column', () => {
    fc.assert(
      fc.property(
        fc.string({ minLength: 1, maxLength: 20 }),
        fc.string({ maxLength: 20 }),
        fc.dictionary(fc.string({ minLength: 1, maxLength: 12 }), fc.string({ maxLength: 12 }), { maxKeys: 5 }),
        (owner, label, tags) => {
          const lvTags = encodeTags({ owner, label, tags });
          for (const t of lvTags) expect(t).toMatch(LVM_TAG);
          // lvs joins tags with ',' in its own order.
          const decoded = decodeTags([...lvTags].sort().join(','));
          expect(decoded.owner).toBe(owner);
          expect(decoded.label).toBe(label);
          expect(decoded.tags).toEqual(tags);
        },
      ),
    );
  });

  it('keeps hostile keys as plain keys and refuses what it cannot encode', () => {
    const decoded = decodeTags(encodeTags({ tags: { ['__proto__']: 'x', constructor: 'y' } }).join(','));
    expect(Object.keys(decoded.tags).sort()).toEqual(['__proto__', 'constructor']);
    expect(({} as Record<string, unknown>).x).toBeUndefined();
  });

  it('refuses empty keys, lone surrogates and oversize tags', () => {
    expect(() => userTag('', 'v')).toThrow(InvalidArgumentError);
    expect(() => encodeTags({ owner: 'a\uD800b' })).toThrow(/valid Unicode/);
    expect(() => encodeTags({ tags: { k: '€'.repeat(400) } })).toThrow(/too long/);
    expect(() => encodeTags({ tags: Object.fromEntries(Array.from({ length: 33 }, (_, i) => [`k${i}`, ''])) })).toThrow(/at most 32/);
  });

  it('ignores foreign and malformed tags', () => {
    expect(decodeTags('backup_daily,debvisor.tag.noequals,debvisor.tag.k=#ZZ,debvisor.tag.#FF=v,debvisor.owner=#C3')).toEqual({ owner: '', label: '', tags: {} });
  });
});
