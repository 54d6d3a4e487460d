// A key made through a key is no wider than it: glob containment, network containment,
// expiry, checked as properties against the matchers RBAC and authentication use.
import { BlockList } from 'node:net';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { denyChange } from '../../src/authz/decide.js';
import { globMatches, globWithin } from '../../src/authz/globs.js';
import { permissionMatches } from '../../src/authz/permission.js';
import { cidrWithin, wideningsOf, type KeyBounds } from '../../src/authz/narrowing.js';

const CHARS = ['a', 'b', 'c', '-', '.', '/', '1', '@', ':'];
const literal = fc.constantFrom(...CHARS);
const token = fc.oneof({ weight: 4, arbitrary: literal }, { weight: 1, arbitrary: fc.constant('*') }, { weight: 1, arbitrary: fc.constant('?') });
const glob = fc.array(token, { minLength: 1, maxLength: 8 }).map((t) => t.join(''));

/** A name the glob matches: each `*` replaced by 0–3 characters, each `?` by one (never `/`). */
function instance(g: string): fc.Arbitrary<string> {
  const noSlash = fc.constantFrom(...CHARS.filter((c) => c !== '/'));
  const parts = Array.from(g, (c) => c).map((c) => (c === '*' ? fc.array(noSlash, { maxLength: 3 }).map((a) => a.join('')) : c === '?' ? noSlash : fc.constant(c)));
  return fc.tuple(...parts).map((p) => p.join(''));
}

/** A glob `inner` generalised: some literals become `?`, some runs without `/` become `*`. */
const generalised = (inner: string) =>
  fc.array(fc.integer({ min: 0, max: 3 }), { minLength: inner.length, maxLength: inner.length }).map((choices) => {
    let out = '';
    for (let i = 0; i < inner.length; i++) {
      const c = inner[i]!;
      const choice = choices[i]!;
      if (c !== '/' && choice === 1 && c !== '*') out += '?';
      else if (c !== '/' && choice === 2) out += out.endsWith('*') ? '' : '*';
      else out += c;
    }
    return out;
  });

describe('globWithin', () => {
  it.each([
    ['ci-1*', 'ci-*', true],
    ['ci-?', 'ci-*', true],
    ['ci-1', 'ci-*', true],
    ['ci-*', 'ci-*', true],
    ['*', 'ci-*', false],
    ['c*', 'ci-*', false],
    ['ci-*/x', 'ci-*', false],
    ['ci-1/x', 'ci-*', false], // `*` never stands for `/`
    ['ci-*', 'ci-?', false],
    ['ci-?', 'ci-??', false],
    ['a*b*c', 'a*c', true],
    ['x', '*', true],
    ['a/b', '*', false],
    ['a/b', '*/*', true],
  ])('%s within %s → %s', (inner, outer, expected) => {
    expect(globWithin(inner, outer)).toBe(expected);
  });

  it('is sound: every name the inner glob matches, the outer glob matches', () => {
    const cases = glob.chain((inner) => fc.tuple(fc.constant(inner), fc.oneof(generalised(inner), glob), instance(inner)));
    let contained = 0;
    fc.assert(
      fc.property(cases, ([inner, outer, name]) => {
        if (!globWithin(inner, outer) || name === '') return true;
        contained++;
        return globMatches(outer, name);
      }),
      { numRuns: 5000 },
    );
    expect(contained).toBeGreaterThan(1000);
  });

  it('finds the generalisations it is built for, and is reflexive', () => {
    fc.assert(fc.property(glob.chain((inner) => fc.tuple(fc.constant(inner), generalised(inner))), ([inner, outer]) => globWithin(inner, outer) && globWithin(inner, inner)));
  });

  it('for a glob without wildcards (a name), "within" is exactly "matched by"', () => {
    const name = fc.array(literal, { minLength: 1, maxLength: 8 }).map((t) => t.join(''));
    fc.assert(fc.property(name, glob, (n, g) => globWithin(n, g) === globMatches(g, n)), { numRuns: 2000 });
  });

  it('no name with a `/` matches a glob without one, and no empty name matches', () => {
    const noSlash = glob.filter((g) => !g.includes('/'));
    fc.assert(
      fc.property(noSlash.chain((g) => fc.tuple(fc.constant(g), instance(g), fc.nat())), ([g, name, at]) => {
        const cut = at % (name.length + 1);
        return !globMatches(g, '') && !globMatches(g, `${name.slice(0, cut)}/${name.slice(cut)}`);
      }),
    );
  });
});

describe('cidrWithin', () => {
  const octet = fc.integer({ min: 0, max: 255 });
  const ipv4 = fc.tuple(octet, octet, octet, octet).map((o) => o.join('.'));
  const cidr4 = fc.tuple(ipv4, fc.integer({ min: 0, max: 32 })).map(([a, p]) => `${a}/${p}`);

  it.each([
    ['127.0.0.1/32', '127.0.0.0/8', true],
    ['127.5.0.0/16', '127.0.0.0/8', true],
    ['127.0.0.0/8', '127.0.0.0/8', true],
    ['0.0.0.0/0', '127.0.0.0/8', false],
    ['10.0.0.0/8', '127.0.0.0/8', false],
    ['127.0.0.0/7', '127.0.0.0/8', false],
    ['::1/128', '127.0.0.0/8', false],
    ['::ffff:127.0.0.1/128', '127.0.0.0/8', false],
    ['fd00::1/64', 'fd00::/8', true],
    ['fd00::/7', 'fd00::/8', false],
  ])('%s within %s → %s', (inner, outer, expected) => {
    expect(cidrWithin(inner, outer)).toBe(expected);
  });

  it('is sound: every address of the inner network is in the outer one', () => {
    fc.assert(
      fc.property(cidr4, cidr4, ipv4, (inner, outer, address) => {
        if (!cidrWithin(inner, outer)) return;
        const [ia = '', ip = ''] = inner.split('/');
        const [oa = '', op = ''] = outer.split('/');
        const innerList = new BlockList();
        innerList.addSubnet(ia, Number(ip), 'ipv4');
        const outerList = new BlockList();
        outerList.addSubnet(oa, Number(op), 'ipv4');
        if (innerList.check(address, 'ipv4')) expect(outerList.check(address, 'ipv4')).toBe(true);
        expect(outerList.check(ia, 'ipv4')).toBe(true);
      }),
      { numRuns: 2000 },
    );
  });
});

describe('wideningsOf', () => {
  const hour = 3_600_000;
  const holder: KeyBounds = { resourceGlobs: [{ kind: 'pool', glob: 'ci-*' }], allowedCidrs: ['127.0.0.0/8'], expiresAtMs: 10 * hour };

  it('accepts a key within the holder in every dimension', () => {
    expect(wideningsOf(holder, { resourceGlobs: [{ kind: 'pool', glob: 'ci-1*' }], allowedCidrs: ['127.0.0.1/32'], expiresAtMs: 9 * hour })).toEqual([]);
    expect(wideningsOf(holder, holder)).toEqual([]);
  });

  it('refuses each dimension that is wider', () => {
    const fields = (requested: KeyBounds) => wideningsOf(holder, requested).map((w) => w.field);
    expect(fields({ resourceGlobs: [], allowedCidrs: [], expiresAtMs: undefined })).toEqual(['resource_globs', 'allowed_cidrs', 'ttl']);
    expect(fields({ ...holder, resourceGlobs: [{ kind: 'pool', glob: '*' }] })).toEqual(['resource_globs']);
    expect(fields({ ...holder, resourceGlobs: [{ kind: 'pool', glob: 'ci-1' }, { kind: 'vm', glob: 'ci-1' }] })).toEqual(['resource_globs']);
    expect(fields({ ...holder, allowedCidrs: ['0.0.0.0/0'] })).toEqual(['allowed_cidrs']);
    expect(fields({ ...holder, expiresAtMs: 10 * hour + 1 })).toEqual(['ttl']);
  });

  it('operations: a holder without operation globs reaches its own operations, so may hand a narrower glob on; one with them must pass them on', () => {
    expect(wideningsOf(holder, { ...holder, resourceGlobs: [{ kind: 'pool', glob: 'ci-1' }, { kind: 'operation', glob: 'op-*' }] })).toEqual([]);
    const scoped: KeyBounds = { ...holder, resourceGlobs: [...holder.resourceGlobs, { kind: 'operation', glob: 'op-*' }] };
    expect(wideningsOf(scoped, holder).map((w) => w.reason)).toEqual(['a operation glob is required, within pool=ci-*, operation=op-*']);
  });

  it('an unrestricted holder bounds nothing but expiry', () => {
    const open: KeyBounds = { resourceGlobs: [], allowedCidrs: [], expiresAtMs: undefined };
    expect(wideningsOf(open, { resourceGlobs: [], allowedCidrs: [], expiresAtMs: undefined })).toEqual([]);
  });
});

describe('denyChange (what a role write lifts and imposes)', () => {
  const segment = fc.constantFrom('vm', 'storage', 'start', 'destroy', 'snapshot', '*');
  const pattern = fc.array(segment, { minLength: 1, maxLength: 3 }).map((s) => s.join(':'));
  const concrete = fc.array(fc.constantFrom('vm', 'storage', 'start', 'destroy', 'snapshot'), { minLength: 1, maxLength: 4 }).map((s) => s.join(':'));
  const deniedBy = (denies: readonly string[], p: string) => denies.some((d) => permissionMatches(d, p));

  it('every permission no longer denied is under a lifted pattern; every newly denied one under an imposed one', () => {
    fc.assert(
      fc.property(fc.array(pattern, { maxLength: 4 }), fc.array(pattern, { maxLength: 4 }), fc.array(concrete, { minLength: 1, maxLength: 10 }), (before, after, permissions) => {
        const { lifted, imposed } = denyChange(before, after);
        for (const p of permissions) {
          if (deniedBy(before, p) && !deniedBy(after, p)) expect(deniedBy(lifted, p)).toBe(true);
          if (deniedBy(after, p) && !deniedBy(before, p)) expect(deniedBy(imposed, p)).toBe(true);
        }
      }),
      { numRuns: 3000 },
    );
  });

  it('keeping a deny lifts nothing; dropping or narrowing one lifts it', () => {
    expect(denyChange(['vm:destroy'], ['vm:destroy'])).toEqual({ lifted: [], imposed: [] });
    expect(denyChange(['vm:destroy'], ['vm:*'])).toEqual({ lifted: [], imposed: ['vm:*'] });
    expect(denyChange(['vm:*'], ['vm:destroy'])).toEqual({ lifted: ['vm:*'], imposed: [] });
    expect(denyChange(['vm:destroy', 'vm:reboot'], [])).toEqual({ lifted: ['vm:destroy', 'vm:reboot'], imposed: [] });
  });
});
