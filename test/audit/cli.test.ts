// `debvisorctl audit verify`, run in-process through a commander program.
import { createHmac } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Command, Option } from 'commander';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { registerAuditCommands } from '../../src/cli/audit.js';
import { setOutputFormat } from '../../src/cli/output.js';
import type { AuditPrincipal } from '../../src/audit/types.js';
import { Clock, event, openLog, readLines, tempDir, writeLines } from './helpers.js';

class Exit extends Error {
  constructor(readonly code: number) {
    super(`exit ${code}`);
  }
}

async function run(...args: string[]): Promise<{ code: number; out: string; err: string }> {
  let out = '';
  let err = '';
  // The global -o of debvisorctl, which `audit list` reads.
  const program = new Command('debvisorctl').addOption(new Option('-o, --output <format>').default('text'));
  registerAuditCommands(program, {
    out: (text) => (out += text),
    err: (text) => (err += text),
    exit: (code) => {
      throw new Exit(code);
    },
  });
  try {
    await program.parseAsync(['audit', ...args], { from: 'user' });
  } catch (caught) {
    if (caught instanceof Exit) return { code: caught.code, out, err };
    throw caught;
  }
  throw new Error('the command did not exit');
}

let dir: string;
let cleanup: () => void;
let log: string;
let keyFile: string;

beforeAll(async () => {
  ({ dir, cleanup } = tempDir());
  log = join(dir, 'rpc-audit.log');
  keyFile = join(dir, 'audit-hmac.key');
  const clock = new Clock(new Date(2025, 3, 1, 9));
  const writer = await openLog(dir, { now: clock.now });
  for (let i = 1; i <= 30; i++) {
    if (i === 11) clock.set('2025-04-02T09:00:00');
    if (i === 21) clock.set('2025-04-03T09:00:00');
    await writer.writeDurable(event(i));
  }
  await writer.close();
});

afterAll(() => cleanup());

describe('audit verify', () => {
  it('verifies the rotated files and the current one in order: exit 0', async () => {
    const result = await run('verify', '--key-file', keyFile, '--log', log);
    // 30 events and the link records that start the two later files.
    expect(result).toEqual({ code: 0, out: 'OK: 32 entries (seq 1–32) in 3 files\n', err: '' });
  });

  it('verifies explicit files, noting a mid-chain start', async () => {
    const result = await run('verify', '--key-file', keyFile, join(dir, 'rpc-audit-2025-04-02.log'), log);
    expect(result.code).toBe(0);
    expect(result.out).toContain('OK: 22 entries (seq 11–32) in 2 files');
    expect(result.out).toContain('starts mid-way at seq 11, at a link record (rotation, previously rpc-audit-2025-04-01.log)');
  });

  it('exits 1 on an empty log: an emptied or abandoned file is not "OK: 0 entries"', async () => {
    const empty = join(dir, 'empty.log');
    writeFileSync(empty, '');
    const result = await run('verify', '--key-file', keyFile, empty);
    expect(result.code).toBe(1);
    expect(result.out).toMatch(/^EMPTY: empty: no audit entries in /);
    expect((await run('verify', '--key-file', keyFile, '--log', empty)).code).toBe(1);
  });

  it('exits 1 on a chain that starts mid-way without a link record (its start cut off); --legacy accepts it', async () => {
    const cut = join(dir, 'cut.log');
    // The second file without its link record: it now starts at the batch of seq 12.
    writeLines(cut, readLines(join(dir, 'rpc-audit-2025-04-02.log')).slice(1));
    const result = await run('verify', '--key-file', keyFile, cut);
    expect(result.code).toBe(1);
    expect(result.out).toContain(`TAMPERED: ${cut}:1: unlinked: the chain starts mid-way at seq 12 without a link record`);
    const legacy = await run('verify', '--legacy', '--key-file', keyFile, cut);
    expect(legacy.code).toBe(0);
    expect(legacy.out).toContain('starts mid-way at seq 12 without a link record (accepted with --legacy)');
  });

  it('exits 1 on a first entry in the one-MAC-per-entry format of earlier releases; --legacy accepts it', async () => {
    const key = Buffer.from(readFileSync(keyFile, 'utf8').trim(), 'hex');
    const canonical = '{"time":"2025-04-01T09:00:00.000Z","trace_id":"old-1","type":"CALL","seq":1}';
    const old = join(dir, 'legacy.log');
    writeFileSync(old, `${canonical.slice(0, -1)},"hmac":"${createHmac('sha256', key).update(`\n${canonical}`).digest('hex')}"}\n`);
    const result = await run('verify', '--key-file', keyFile, old);
    expect(result.code).toBe(1);
    expect(result.out).toContain(`UNVERIFIED: ${old}:1: legacy: `);
    expect(await run('verify', '--legacy', '--key-file', keyFile, old)).toMatchObject({ code: 0, out: expect.stringContaining('OK: 1 entries') as unknown });
  });

  it('reports tampering with file and line: exit 1', async () => {
    const copy = join(dir, 'copy.log');
    copyFileSync(log, copy);
    const lines = readLines(copy);
    lines[4] = lines[4]!.replace('"alice"', '"mallory"');
    writeLines(copy, lines);
    const result = await run('verify', '--key-file', keyFile, copy);
    expect(result.code).toBe(1);
    expect(result.out).toMatch(new RegExp(`^TAMPERED: ${copy}:5: modified: `));
  });

  it('exits 2 on usage and I/O errors', async () => {
    expect((await run('verify', '--key-file', join(dir, 'missing.key'), '--log', log)).code).toBe(2);
    expect((await run('verify', '--key-file', keyFile, join(dir, 'nope.log'))).code).toBe(2);
    expect((await run('verify', '--key-file', keyFile, '--log', join(dir, 'other.log'))).code).toBe(2);
    expect((await run('verify', '--bogus')).code).toBe(2);
    const badKey = join(dir, 'bad.key');
    writeFileSync(badKey, 'zz', { mode: 0o600 });
    const result = await run('verify', '--key-file', badKey, '--log', log);
    expect(result.code).toBe(2);
    expect(result.err).toContain('64 hex digits');
  });

  it('verifies with a wrong key as tampered', async () => {
    const otherKey = join(dir, 'other.key');
    writeFileSync(otherKey, `${'cd'.repeat(32)}\n`, { mode: 0o600 });
    expect((await run('verify', '--key-file', otherKey, '--log', log)).code).toBe(1);
    expect(readFileSync(keyFile, 'utf8')).not.toContain('cd'.repeat(32));
  });
});

describe('audit list', () => {
  const PANEL = 'spiffe://debvisor/panel/web-panel';
  const CI_PANEL = 'spiffe://debvisor/panel/ci-panel';
  const asUser = (user: string, by: string, extra: Partial<AuditPrincipal> = {}): AuditPrincipal => ({
    id: `user:${user}`,
    kind: 'user',
    roles: ['operator'],
    groups: ['group:ops'],
    impersonated_by: { id: by, cert_fingerprint: 'cd'.repeat(32), roles: ['panel'] },
    ...extra,
  });
  let listDir: string;
  let cleanupList: () => void;
  let listLog: string;

  beforeAll(async () => {
    ({ dir: listDir, cleanup: cleanupList } = tempDir());
    listLog = join(listDir, 'rpc-audit.log');
    const writer = await openLog(listDir, { now: new Clock(new Date(2025, 3, 1, 9)).now });
    // 1: the panel as itself; 2, 3: the panel for alice and bob; 4: the CI panel for alice; 5: a certificate named like no one.
    await writer.writeDurable(event(1, { principal: { id: PANEL, kind: 'certificate', roles: ['panel'], cert_fingerprint: 'cd'.repeat(32) } }));
    await writer.writeDurable(event(2, { principal: asUser('alice', PANEL, { impersonation_reason: 'panel request 42', session_id: 'ses_1' }) }));
    await writer.writeDurable(event(3, { principal: asUser('bob', PANEL), type: 'AUTHZ_DENIED', decision: 'deny', code: 'PERMISSION_DENIED' }));
    await writer.writeDurable(event(4, { principal: asUser('alice', CI_PANEL) }));
    await writer.writeDurable(event(5));
    await writer.close();
  });

  afterAll(() => cleanupList());

  const traces = (out: string) => out.trim().split('\n').filter(Boolean).map((line) => (JSON.parse(line) as { trace_id: string }).trace_id);
  const list = async (...args: string[]) => {
    const result = await run('list', '--log', listLog, ...args);
    expect(result.err).toBe('');
    expect(result.code).toBe(0);
    return result;
  };

  it('--principal matches the user of an impersonated call and the certificate acting for it', async () => {
    expect(traces((await list('--principal', 'user:alice', '-o', 'json')).out)).toEqual(['trace-2', 'trace-4']);
    expect(traces((await list('--principal', PANEL, '-o', 'json')).out)).toEqual(['trace-1', 'trace-2', 'trace-3']);
    expect(traces((await list('--principal', 'alice', '-o', 'json')).out)).toEqual(['trace-5']);
  });

  it('--impersonated-by matches the impersonator only', async () => {
    expect(traces((await list('--impersonated-by', PANEL, '-o', 'json')).out)).toEqual(['trace-2', 'trace-3']);
    expect(traces((await list('--impersonated-by', CI_PANEL, '--principal', 'user:alice', '-o', 'json')).out)).toEqual(['trace-4']);
    expect(traces((await list('--impersonated-by', 'user:alice', '-o', 'json')).out)).toEqual([]);
  });

  it('keeps the impersonation members in JSON, and filters by type and --limit', async () => {
    const [entry] = (await list('--principal', 'user:alice', '--limit', '1', '-o', 'json')).out.trim().split('\n').map((line) => JSON.parse(line) as { principal: AuditPrincipal });
    expect(entry!.principal).toMatchObject({ id: 'user:alice', impersonated_by: { id: CI_PANEL, cert_fingerprint: 'cd'.repeat(32) } });
    expect(traces((await list('--type', 'authz_denied', '-o', 'json')).out)).toEqual(['trace-3']);
    expect(traces((await list('--limit', '2', '-o', 'json')).out)).toEqual(['trace-4', 'trace-5']);
  });

  it('shows the impersonator in the table (whole cells with -o wide; within 80 columns by default)', async () => {
    const narrow = (await list('--principal', PANEL)).out;
    for (const line of narrow.trimEnd().split('\n')) expect(Array.from(line).length).toBeLessThanOrEqual(80);
    await setOutputFormat('wide');
    const { out } = await list('--principal', PANEL).finally(() => setOutputFormat('text'));
    const rows = out.split('\n').filter((line) => line.includes('StartVm'));
    expect(rows).toHaveLength(3);
    expect(out).toContain('impersonated by');
    expect(rows[1]).toMatch(/user:alice.*spiffe:\/\/debvisor\/panel\/web-panel/);
    expect(rows[0]).toMatch(new RegExp(`${PANEL.replaceAll('/', '\\/')}\\s*│\\s*-\\s*│`));
    expect((await list('--principal', 'nobody')).out).toBe('(none)\n');
  });

  it('exits 2 on usage and I/O errors', async () => {
    expect((await run('list', '--log', join(listDir, 'other.log'))).code).toBe(2);
    expect((await run('list', join(listDir, 'missing.log'))).code).toBe(2);
    expect((await run('list', '--log', listLog, '--type', 'nonsense')).code).toBe(2);
  });
});
