// How requests name library images: digests and aliases, refused with the field named.
import { describe, expect, it } from 'vitest';
import { parseImageRef, validateAlias, validateSha256 } from '../../src/images/names.js';
import { RpcError } from '../../src/rpc/errors.js';

const HEX = 'ab'.repeat(32);

function problem(run: () => unknown): string {
  try {
    run();
  } catch (err) {
    if (err instanceof RpcError && err.code === 'INVALID_ARGUMENT') return err.message;
    throw err;
  }
  throw new Error('accepted');
}

describe('image names', () => {
  it('takes a SHA-256 in either case and returns it lowercase', () => {
    expect(validateSha256(HEX.toUpperCase(), 'sha256')).toBe(HEX);
    for (const bad of ['', 'ab', HEX + 'a', 'g'.repeat(64), ` ${HEX.slice(1)}`]) expect(problem(() => validateSha256(bad, 'sha256'))).toMatch(/^sha256: /);
  });

  it('takes aliases of name characters only, never one that looks like an option, a path or a digest', () => {
    for (const good of ['debian-12', 'ubuntu_24.04', 'a', 'x+y', 'A'.repeat(127)]) expect(validateAlias(good, 'name')).toBe(good);
    for (const bad of ['', '-rf', '.hidden', 'a/b', 'a..b', 'sha256:' + HEX, 'A'.repeat(128), 'tab\there', 'é', '*']) {
      expect(problem(() => validateAlias(bad, 'name'))).toMatch(/^name: /);
    }
  });

  it('reads "sha256:<hex>" as a digest and anything else as an alias', () => {
    expect(parseImageRef(`sha256:${HEX.toUpperCase()}`, 'image')).toEqual({ kind: 'digest', sha256: HEX });
    expect(parseImageRef('debian-12', 'image')).toEqual({ kind: 'alias', name: 'debian-12' });
    for (const bad of ['', 'sha256:', 'sha256:xyz', '../etc']) expect(problem(() => parseImageRef(bad, 'image'))).toMatch(/^image: /);
  });
});
