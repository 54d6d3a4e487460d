// Tables within 80 columns (src/cli/output.ts): the widest columns give way first, cut cells
// end in "…", -o wide shows everything; small columns (ids, states) keep their width.
import { describe, expect, it } from 'vitest';
import { ellipsize, fitColumns, formatTable, TABLE_WIDTH } from '../../src/cli/output.js';
import { duration } from '../../src/cli/command.js';

const widthOf = (text: string) => Math.max(...text.trimEnd().split('\n').map((line) => Array.from(line).length));

describe('tables', () => {
  const head = ['id', 'owner', 'permissions', 'state', 'description'];
  const rows = [
    ['dvk_01HZX3', 'spiffe://debvisor/ci/runner-with-a-long-name', 'storage:snapshot:create\nstorage:volume:list', 'active (rotated)', 'nightly backups of the build pool, see the runbook for the retention'],
    ['dvk_01HZX4', 'admin', 'vm:*', 'revoked', ''],
  ];

  it('fit 80 columns by default, cutting the widest cells with an ellipsis', () => {
    const text = formatTable(head, rows);
    expect(widthOf(text)).toBeLessThanOrEqual(TABLE_WIDTH);
    expect(text).toContain('dvk_01HZX3');
    expect(text).toContain('…');
    // Every line of a multi-line cell is cut on its own.
    expect(text.split('\n').filter((line) => /│ sto\S*… /.test(line)).length).toBe(2);
  });

  it('show every character with no limit (-o wide)', () => {
    const text = formatTable(head, rows, Infinity);
    expect(text).toContain('nightly backups of the build pool, see the runbook for the retention');
    expect(text).toContain('spiffe://debvisor/ci/runner-with-a-long-name');
    expect(text).not.toContain('…');
  });

  it('never cut identifiers; cut times only after free text', () => {
    const text = formatTable(['id', 'owner', 'created'], [['7f3c2d52-dbdf-450d-98bf-8fe713e40be7', 'x'.repeat(60), '2026-12-07T21:29:04Z']]);
    expect(text).toContain('7f3c2d52-dbdf-450d-98bf-8fe713e40be7');
    expect(text).toContain('2026-12-07T21:29:04Z');
    expect(widthOf(text)).toBeLessThanOrEqual(TABLE_WIDTH);
    const crowded = formatTable(['id', 'a', 'b', 'c', 'created'], [['7f3c2d52-dbdf-450d-98bf-8fe713e40be7', 'x'.repeat(30), 'y'.repeat(30), 'z'.repeat(30), '2026-12-07T21:29:04Z']]);
    expect(crowded).toMatch(/2026-12-07\S*…/);
    expect(widthOf(crowded)).toBeLessThanOrEqual(TABLE_WIDTH);
  });

  it('leave a narrow table alone, and say (none) without rows', () => {
    expect(formatTable(['name', 'state'], [['vm1', 'running']])).not.toContain('…');
    expect(formatTable(['name'], [])).toBe('(none)\n');
  });

  it('escape what the server sends before measuring it', () => {
    const text = formatTable(['name'], [['evil\u001b[2Jname']]);
    expect(text).not.toContain('\u001b');
  });
});

describe('fitColumns and ellipsize', () => {
  it('shrink the widest column first, never below the minimum', () => {
    // 3 columns: overhead 10; 10 + 20 + 60 + 10 = 100 → 20 over.
    expect(fitColumns([10, 20, 60], [8, 8, 8], 80)).toEqual([10, 20, 40]);
    expect(fitColumns([50, 50], [8, 8], 80)).toEqual([36, 37]);
    expect(fitColumns([40, 40, 40], [40, 40, 40], 80)).toEqual([40, 40, 40]);
  });

  it('cut by code point', () => {
    expect(ellipsize('abcdefgh', 5)).toBe('abcd…');
    expect(ellipsize('ab', 5)).toBe('ab');
    expect(ellipsize('😀😀😀😀😀😀', 3)).toBe('😀😀…');
  });
});

describe('durations', () => {
  it('take 1y as 365 days (the daemon allows 365 at most), and the usual units', () => {
    expect(duration('1y')).toBe(365 * 86_400_000);
    expect(duration('2 years')).toBe(730 * 86_400_000);
    expect(duration('90d')).toBe(90 * 86_400_000);
    expect(duration('12h')).toBe(12 * 3_600_000);
    expect(() => duration('soon')).toThrow(/expected a duration such as 1y/);
    expect(() => duration('0s')).toThrow();
  });
});

describe('small fixes', () => {
  it('operation target: KIND:NAME once, never "unspecified"', async () => {
    const { targetText } = await import('../../src/cli/operation.js');
    const { ResourceKind } = await import('../../src/gen/debvisor/v1/options_pb.js');
    expect(targetText({ target: 'vm:web-1', targetKind: ResourceKind.UNSPECIFIED })).toBe('vm:web-1');
    expect(targetText({ target: 'vm:web-1', targetKind: ResourceKind.VM })).toBe('vm:web-1');
    expect(targetText({ target: 'web-1', targetKind: ResourceKind.VM })).toBe('vm:web-1');
    expect(targetText({ target: 'test', targetKind: ResourceKind.UNSPECIFIED })).toBe('test');
  });

  it('rotated keys: the OLD key (the one a replacement names) is "active (rotated)", the new one "active"', async () => {
    const { create } = await import('@bufbuild/protobuf');
    const { ApiKeySchema } = await import('../../src/gen/debvisor/v1/access_pb.js');
    const { keyState, rotatedKeyIds } = await import('../../src/cli/access.js');
    const old = create(ApiKeySchema, { keyId: 'dvk_old' });
    const replacement = create(ApiKeySchema, { keyId: 'dvk_new', rotatedFrom: 'dvk_old' });
    const rotated = rotatedKeyIds([old, replacement]);
    expect(keyState(old, rotated)).toBe('active (rotated)');
    expect(keyState(replacement, rotated)).toBe('active');
  });
});
