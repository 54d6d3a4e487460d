// Storage request validation: image paths under the images directory (absolute, "..",
// symlinks leading out), tags, sizes, and times carried by snapshot names.
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveImagePath } from '../../src/storage/images.js';
import { encodeTags } from '../../src/backends/lvm/tags.js';
import { MAX_USER_TAGS } from '../../src/backends/storage-backend.js';
import { gibOf } from '../../src/quota/units.js';
import { timeFromName, validateSize, validateTags } from '../../src/storage/names.js';

const dir = mkdtempSync(join(tmpdir(), 'debvisor-images-'));
const images = join(dir, 'images');
mkdirSync(join(images, 'sub'), { recursive: true });
writeFileSync(join(images, 'disk.raw'), 'x');
writeFileSync(join(images, 'sub', 'nested.qcow2'), 'x');
writeFileSync(join(dir, 'secret'), 'x');
symlinkSync(join(dir, 'secret'), join(images, 'escape'));
symlinkSync('disk.raw', join(images, 'alias.raw'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function refusal(path: string): Promise<string> {
  try {
    await resolveImagePath(images, path);
  } catch (err) {
    expect((err as { code?: string }).code).toBe('INVALID_ARGUMENT');
    return (err as Error).message;
  }
  throw new Error(`${path} was accepted`);
}

describe('image paths', () => {
  it('resolves files inside the images directory, through symlinks that stay inside', async () => {
    expect(await resolveImagePath(images, 'disk.raw')).toBe(join(images, 'disk.raw'));
    expect(await resolveImagePath(images, 'sub/nested.qcow2')).toBe(join(images, 'sub', 'nested.qcow2'));
    expect(await resolveImagePath(images, 'alias.raw')).toBe(join(images, 'disk.raw'));
  });

  it('refuses absolute paths, "..", protocol prefixes, symlinks out, directories and missing files, naming image_path', async () => {
    expect(await refusal('/etc/passwd')).toMatch(/^image_path: .*absolute/);
    expect(await refusal('../secret')).toMatch(/^image_path: .*'\.\.'/);
    expect(await refusal('sub/../../secret')).toMatch(/^image_path: .*'\.\.'/);
    expect(await refusal('escape')).toMatch(/^image_path: .*outside the images directory/);
    expect(await refusal('rbd:pool/image')).toMatch(/^image_path: .*protocol/);
    expect(await refusal('sub')).toMatch(/^image_path: .*not a regular file/);
    expect(await refusal('missing.raw')).toMatch(/^image_path: no such image/);
    expect(await refusal('')).toMatch(/^image_path: required/);
    expect(await refusal('a\nb')).toMatch(/^image_path: .*control/);
  });
});

describe('storage request fields', () => {
  it('validates tags and sizes, naming the field', () => {
    expect(validateTags({ team: 'ci', 'build.id': '42/a=b' })).toEqual({ team: 'ci', 'build.id': '42/a=b' });
    expect(() => validateTags({ 'debvisor.owner': 'x' })).toThrow(/^tags\[debvisor.owner\]: .*reserved/);
    expect(() => validateTags({ 'bad key': 'x' })).toThrow(/^tags: keys/);
    expect(() => validateTags({ k: 'sp ace' })).toThrow(/^tags\[k\]: values/);
    // One limit for the API and the LVM backend (MAX_USER_TAGS): the API takes no more than LVM stores.
    const tags = (n: number) => Object.fromEntries(Array.from({ length: n }, (_, i) => [`k${i}`, 'v']));
    expect(Object.keys(validateTags(tags(MAX_USER_TAGS)))).toHaveLength(MAX_USER_TAGS);
    expect(() => validateTags(tags(MAX_USER_TAGS + 1))).toThrow(`tags: at most ${MAX_USER_TAGS} tags`);
    expect(() => encodeTags({ tags: tags(MAX_USER_TAGS + 1) })).toThrow(`at most ${MAX_USER_TAGS} tags`);
    expect(() => validateSize(0n, 'size_bytes')).toThrow(/^size_bytes: must be greater than 0/);
    expect(() => validateSize(2n ** 63n, 'new_size_bytes')).toThrow(/^new_size_bytes: must be at most/);
    expect(gibOf(1n)).toBe(1);
    expect(gibOf(1024n ** 3n)).toBe(1);
    expect(gibOf(1024n ** 3n + 1n)).toBe(2);
  });

  it('reads the time a snapshot name carries, and nothing from names without a valid one', () => {
    expect(timeFromName('daily-2026-01-15')).toEqual(new Date('2026-01-15T00:00:00Z'));
    expect(timeFromName('backup-20260115T0300Z')).toEqual(new Date('2026-01-15T03:00:00Z'));
    expect(timeFromName('snap-2026-01-15T03-04-05Z')).toEqual(new Date('2026-01-15T03:04:05Z'));
    expect(timeFromName('20251231_235959')).toEqual(new Date('2025-12-31T23:59:59Z'));
    expect(timeFromName('pre-test')).toBeUndefined();
    expect(timeFromName('build-12345')).toBeUndefined();
    expect(timeFromName('x-2026-02-31')).toBeUndefined();
    expect(timeFromName('x-2026-13-01')).toBeUndefined();
  });
});
