// Name validators: an injection corpus every validator must refuse (INVALID_ARGUMENT naming
// the field), the per-kind rules, and proof through the exec spy that a caller which
// validates first never spawns a process for a bad name.
import { status as Status } from '@grpc/grpc-js';
import { Registry } from 'prom-client';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { createExecutor, spawnCount, type Executor, type SpawnEvent } from '../../src/backends/exec.js';
import {
  validateHostname,
  validateImageName,
  validateIpAddress,
  validateLvName,
  validatePoolName,
  validateSnapshotName,
  validateText,
  validateVgName,
  validateVmName,
} from '../../src/backends/validate.js';
import { InvalidArgumentError, toStatus } from '../../src/rpc/errors.js';

type Validator = (value: unknown, field: string) => string;

const VALIDATORS: Record<string, Validator> = {
  validateVgName,
  validateLvName,
  validatePoolName,
  validateImageName,
  validateSnapshotName,
  validateVmName,
  validateHostname,
  validateIpAddress,
};

const INJECTION_CORPUS: Record<string, string> = {
  'leading dash option': '-rf',
  'double-dash option': '--help',
  'command separator': 'a;b',
  'command substitution': '$(id)',
  backticks: '`id`',
  'path traversal': '../x',
  'embedded traversal': 'a/../b',
  'dot dot alone': '..',
  slash: 'pool/image',
  'rbd snapshot separator': 'image@snap',
  'NUL byte': 'a\0b',
  newline: 'a\nb',
  'carriage return': 'a\rb',
  tab: 'a\tb',
  space: 'a b',
  pipe: 'a|b',
  redirect: 'a>b',
  ampersand: 'a&b',
  glob: 'a*',
  quote: "a'b",
  'dollar variable': '$HOME',
  'qemu option separator': 'img:conf=/etc/passwd',
  '10,000 characters': 'a'.repeat(10_000),
  empty: '',
  'Cyrillic look-alike (tеst)': 't\u0435st',
  'fullwidth hyphen': 'a\uff0db',
  'zero-width space': 'ab\u200bc',
  'right-to-left override': 'a\u202eb',
  'non-breaking space': 'a\u00a0b',
  'DEL character': 'a\x7fb',
};

describe('validators refuse the injection corpus', () => {
  for (const [validatorName, validate] of Object.entries(VALIDATORS)) {
    for (const [label, value] of Object.entries(INJECTION_CORPUS)) {
      it(`${validatorName} refuses ${label}`, () => {
        const field = `spec.${validatorName}`;
        let caught: unknown;
        try {
          validate(value, field);
        } catch (err) {
          caught = err;
        }
        expect(caught).toBeInstanceOf(InvalidArgumentError);
        const err = caught as InvalidArgumentError;
        expect(err.field).toBe(field);
        expect(err.message.startsWith(`${field}: `)).toBe(true);
        // The message never echoes the value (it may be huge or carry control characters).
        if (value.length > 3) expect(err.message).not.toContain(value);
        const st = toStatus(err, 'trace-1');
        expect(st.code).toBe(Status.INVALID_ARGUMENT);
        expect(st.details).toContain(field);
      });
    }
  }

  it('refuses non-strings', () => {
    for (const validate of Object.values(VALIDATORS)) {
      for (const value of [undefined, null, 42, ['a'], { toString: () => 'a' }]) {
        expect(() => validate(value, 'x')).toThrow(InvalidArgumentError);
      }
    }
  });
});

describe('per-kind rules', () => {
  const accepts = (validate: Validator, values: string[]) => {
    for (const v of values) expect(validate(v, 'f')).toBe(v);
  };
  const refuses = (validate: Validator, values: string[], reason?: RegExp) => {
    for (const v of values) {
      expect(() => validate(v, 'f'), JSON.stringify(v)).toThrow(InvalidArgumentError);
      if (reason) expect(() => validate(v, 'f')).toThrow(reason);
    }
  };

  it('LVM names: a-z A-Z 0-9 + _ . -, no leading -, not . or .., at most 127', () => {
    accepts(validateVgName, ['vg0', 'debvisor_vg', 'VG-1.a+b', 'a'.repeat(127)]);
    accepts(validateLvName, ['lv0', 'vm-101-disk-0', 'data+1', 'my.snapshot', 'x_snapshot']);
    refuses(validateVgName, ['.', '..', 'a'.repeat(128), 'vg:1', 'vg/lv', 'vg#1']);
  });

  it('LV names: no reserved snapshot/pvmove prefixes or internal sub-volume suffixes', () => {
    refuses(validateLvName, ['snapshot', 'snapshot1', 'pvmove', 'pvmove0'], /reserved by LVM/);
    refuses(validateLvName, ['data_tmeta', 'x_tdata', 'lv_rimage_0', 'a_cmeta', 'a_mlog', 'a_pmspare', 'a_vorigin'], /reserved by LVM/);
  });

  it('Ceph pool and image names: no /, @, :, whitespace or +', () => {
    accepts(validatePoolName, ['rbd', 'ceph-pool.1', 'pool_a']);
    accepts(validateImageName, ['vm-101-disk-0', 'template.base_v2']);
    refuses(validatePoolName, ['a/b', 'a@b', 'a:b', 'a b', 'a+b', '.']);
    refuses(validateImageName, ['a/b', 'a@b', 'a:b', 'a b', 'a+b', 'a,b']);
  });

  it('snapshot names', () => {
    accepts(validateSnapshotName, ['auto-20240101T000000Z', 'before_upgrade', 'v1.2']);
    refuses(validateSnapshotName, ['a@b', 'snap:1', 'a/b', 'a b', 'a'.repeat(128)]);
  });

  it('VM names', () => {
    accepts(validateVmName, ['web01', 'test', 'vm-101', 'db.prod+replica_1']);
    refuses(validateVmName, ['a/b', 'my vm', 'a"b', 'a<b>', '.']);
  });

  it('host names follow RFC 1123', () => {
    accepts(validateHostname, ['node1', 'node-1.example.com', '3com.net', 'a', `${'a'.repeat(63)}.example`, 'NODE.Example.ORG']);
    refuses(validateHostname, [
      'node_1', // underscore
      'a-', // trailing hyphen in a label
      'a.-b', // leading hyphen in a label
      'a..b', // empty label
      '.a',
      'a.',
      `${'a'.repeat(64)}.example`, // label over 63
      `${'abcdefghi.'.repeat(25)}abcd`, // 254 characters
      '1.2.3.4', // dotted-decimal form
      'node1.123',
    ]);
  });

  it('IP addresses', () => {
    accepts(validateIpAddress, ['10.0.0.1', '192.168.122.1', '::1', 'fd00::1', '2001:db8::8a2e:370:7334', '::ffff:10.0.0.1']);
    refuses(validateIpAddress, ['1.2.3.4.5', '256.1.1.1', '01.2.3.4', 'fe80::1%eth0', '[::1]', '10.0.0.0/8', 'localhost', '1.2.3.4 ']);
  });
});

describe('a caller that validates first never spawns for a bad name', () => {
  // A miniature backend handler: validate every name, then run the tool.
  async function describeVolume(exec: Executor, pool: string, image: string): Promise<string> {
    const p = validatePoolName(pool, 'pool');
    const i = validateImageName(image, 'image');
    const result = exec.check(await exec.run('echo', [`${p}/${i}`]));
    return result.stdout.trim();
  }

  it('refuses every corpus entry, in either field, without a spawn', async () => {
    const spawns: SpawnEvent[] = [];
    const exec = createExecutor({
      backend: 'test',
      binaries: { echo: '/bin/echo' },
      envAllowList: [],
      maxConcurrent: 2,
      defaultTimeoutMs: 5000,
      maxOutputBytes: 4096,
      killGraceMs: 100,
      registry: new Registry(),
      onSpawn: (e) => spawns.push(e),
    });
    const before = spawnCount();
    for (const value of Object.values(INJECTION_CORPUS)) {
      await expect(describeVolume(exec, value, 'disk0')).rejects.toMatchObject({ name: 'InvalidArgumentError', field: 'pool' });
      await expect(describeVolume(exec, 'rbd', value)).rejects.toMatchObject({ name: 'InvalidArgumentError', field: 'image' });
    }
    expect(spawns).toEqual([]);
    expect(exec.stats.spawned).toBe(0);
    expect(spawnCount()).toBe(before);

    // The spy does see a valid call.
    await expect(describeVolume(exec, 'rbd', 'disk0')).resolves.toBe('rbd/disk0');
    expect(spawns).toEqual([{ backend: 'test', command: 'echo', path: '/bin/echo', args: ['rbd/disk0'] }]);
    expect(spawnCount()).toBe(before + 1);
  });
});

describe('validateText (descriptions, labels, owners)', () => {
  const forbidden = ['\u0000', '\u001b', '\t', '\n', '\u007f', '\u0085', '\u009b', '\u2028', '\u2029', '\u202e', '\u2066', '\u200f', '\ud800'];
  const refusal = (value: string) => {
    try {
      validateText(value, 'spec.description', 1024);
      return undefined;
    } catch (err) {
      return err;
    }
  };

  it('accepts printable text in any script, emoji included', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 100 }), (text) => {
        fc.pre(!/[\p{Cc}\p{Zl}\p{Zp}\p{Cs}\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/u.test(text));
        expect(validateText(text, 'spec.description', 1024)).toBe(text);
      }),
    );
  });

  it('refuses a forbidden character anywhere in the text, naming the field, never echoing the value', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 50 }), fc.constantFrom(...forbidden), fc.string({ maxLength: 50 }), (before, bad, after) => {
        const err = refusal(before + bad + after);
        expect(err).toBeInstanceOf(InvalidArgumentError);
        const status = toStatus(err, 't');
        expect(status.code).toBe(Status.INVALID_ARGUMENT);
        expect(status.details).toContain('spec.description');
        expect(status.details).not.toContain(bad);
      }),
    );
  });

  it('refuses text over its limit', () => {
    expect(refusal('x'.repeat(1025))).toBeInstanceOf(InvalidArgumentError);
    expect(refusal('x'.repeat(1024))).toBeUndefined();
  });
});
