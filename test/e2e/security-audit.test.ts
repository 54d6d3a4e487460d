// End-to-end audit: the daemon's log verifies with `debvisorctl audit verify` and
// tampering is found; a log that cannot be written blocks changes but not reads;
// no API key secret ever reaches the audit log or the daemon's output.
import { execFile } from 'node:child_process';
import { copyFileSync, readdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { status as Status } from '@grpc/grpc-js';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { Command } from 'commander';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { registerAuditCommands } from '../../src/cli/audit.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { VmService } from '../../src/gen/debvisor/v1/vm_pb.js';
import { CTL } from '../support/ctl.js';
import { REPO_ROOT, auditRecords, clientFor, daemonEnv, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { auditRecord, issueClientFor, metricSum, metricsText, rejection } from '../support/security.js';

const T = { timeoutMs: 5000 };

interface CliRun {
  readonly code: number;
  readonly out: string;
}

let ctlHasAudit: boolean | undefined;

/** `debvisorctl audit verify …`: the built binary if it has the command, else the same module in-process. */
async function auditVerify(...args: string[]): Promise<CliRun> {
  ctlHasAudit ??= (await runCtl(['--help'])).out.includes('audit');
  if (ctlHasAudit) return runCtl(['audit', 'verify', ...args]);
  return auditVerifyInProcess(args);
}

function runCtl(args: string[]): Promise<CliRun> {
  return new Promise((resolveRun) => {
    execFile(process.execPath, [CTL, ...args], { cwd: REPO_ROOT, env: daemonEnv(), timeout: 15_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof err.code === 'number' ? err.code : -1) : 0;
      resolveRun({ code, out: stdout + stderr });
    });
  });
}

async function auditVerifyInProcess(args: string[]): Promise<CliRun> {
  class Exit extends Error {
    constructor(readonly code: number) {
      super(`exit ${code}`);
    }
  }
  let out = '';
  const program = new Command('debvisorctl');
  registerAuditCommands(program, {
    out: (text) => (out += text),
    err: (text) => (out += text),
    exit: (code) => {
      throw new Exit(code);
    },
  });
  try {
    await program.parseAsync(['audit', 'verify', ...args], { from: 'user' });
  } catch (caught) {
    if (caught instanceof Exit) return { code: caught.code, out };
    throw caught;
  }
  throw new Error('audit verify did not exit');
}

describe('tamper evidence', () => {
  let daemon: RunningDaemon;
  let work: string;

  beforeAll(async () => {
    daemon = await startDaemon();
    work = await mkdtemp(join(tmpdir(), 'rpcd-audit-copies-'));
    const admin = await clientFor(AccessService, daemon);
    for (let i = 0; i < 3; i++) {
      const key = await admin.createApiKey({ description: `k${i}`, permissions: ['vm:list'] }, T);
      await admin.revokeApiKey({ keyId: key.apiKey!.keyId }, T);
    }
    await admin.whoAmI({}, T);
    admin.close();
    await auditRecord(daemon, (r) => r.type === 'CALL' && r.method === '/debvisor.v1.AccessService/WhoAmI');
  });

  afterAll(async () => {
    await daemon.cleanup();
    await rm(work, { recursive: true, force: true });
  });

  const keyFile = () => join(daemon.dir, 'audit', 'hmac.key');
  const logFile = () => join(daemon.dir, 'audit', 'rpc-audit.log');

  /** A copy of the daemon's log with `edit` applied to its lines. */
  function tampered(name: string, edit: (lines: string[]) => void): string {
    const lines = readFileSync(logFile(), 'utf8').split('\n').filter((l) => l !== '');
    expect(lines.length).toBeGreaterThanOrEqual(8);
    edit(lines);
    const file = join(work, name);
    writeFileSync(file, `${lines.join('\n')}\n`);
    return file;
  }

  it('the live log verifies: exit 0', async () => {
    const result = await auditVerify('--key-file', keyFile(), '--log', logFile());
    expect(result.out).toMatch(/^OK: \d+ entries \(seq 1–\d+\) in 1 file/);
    expect(result.code).toBe(0);
    // So does an untouched copy.
    copyFileSync(logFile(), join(work, 'copy.log'));
    expect((await auditVerify('--key-file', keyFile(), join(work, 'copy.log'))).code).toBe(0);
  });

  it('a modified line: exit 1 naming that line', async () => {
    const file = tampered('modified.log', (lines) => {
      lines[3] = lines[3]!.replace('"type":"', '"type":"X');
    });
    const result = await auditVerify('--key-file', keyFile(), file);
    expect(result.code).toBe(1);
    // The batch's MAC authenticates a digest per entry, so the changed entry itself is named.
    expect(result.out).toContain(`TAMPERED: ${file}:4: modified: entry does not match its digest in the batch seal`);
  });

  it('a deleted line: exit 1 naming where it is missing', async () => {
    const file = tampered('deleted.log', (lines) => {
      lines.splice(3, 1);
    });
    const result = await auditVerify('--key-file', keyFile(), file);
    expect(result.code).toBe(1);
    expect(result.out).toContain(`TAMPERED: ${file}:4: deleted: entry seq 4 is missing before this line`);
  });

  it('two swapped lines: exit 1 naming the first', async () => {
    const file = tampered('swapped.log', (lines) => {
      [lines[3], lines[4]] = [lines[4]!, lines[3]!];
    });
    const result = await auditVerify('--key-file', keyFile(), file);
    expect(result.code).toBe(1);
    expect(result.out).toContain(`TAMPERED: ${file}:4: reordered`);
  });

  it('reports whether debvisorctl itself has `audit verify`', () => {
    // Informational: in-process fallback when the binary lacks the command.
    console.log(`debvisorctl audit verify: ${ctlHasAudit === true ? 'built binary' : 'in-process (command not registered in dist/cli/debvisorctl.js)'}`);
    expect(ctlHasAudit).toBeDefined();
  });
});

describe('an audit log that cannot be written', () => {
  let daemon: RunningDaemon;
  let work: string;

  beforeAll(async () => {
    work = await mkdtemp(join(tmpdir(), 'rpcd-audit-full-'));
    await mkdir(join(work, 'log'));
    const path = join(work, 'log', 'rpc-audit.log');
    symlinkSync('/dev/full', path);
    daemon = await startDaemon({ config: { audit: { path, hmac_key_file: join(work, 'keys', 'hmac.key') } } });
  });

  afterAll(async () => {
    await daemon.cleanup();
    await rm(work, { recursive: true, force: true });
  });

  it('blocks mutating calls (UNAVAILABLE, nothing done) but not reads', async () => {
    const admin = await clientFor(AccessService, daemon);
    try {
      expect((await admin.whoAmI({}, T)).principalId).toBe(daemon.pki.adminPrincipal);
      const err = await rejection(admin.createApiKey({ description: 'must not exist', permissions: ['vm:list'] }, T));
      expect(err.code).toBe(Status.UNAVAILABLE);
      expect(err.details).toContain('the audit log cannot be written, so this change was not made');
      const bind = await rejection(admin.bindRole({ principal: 'spiffe://debvisor/test/x', roleName: 'viewer' }, T));
      expect(bind.code).toBe(Status.UNAVAILABLE);
      expect((await admin.listApiKeys({ includeInactive: true }, T)).apiKeys).toEqual([]);
      expect((await admin.whoAmI({}, T)).roles).toEqual(['admin']);
      // Give the buffered read records their flush attempt.
      await sleep(300);
      expect(metricSum(await metricsText(daemon), 'audit_write_failures_total')).toBeGreaterThan(0);
      expect(daemon.logs()).toContain('audit write failed; refusing mutating call');
    } finally {
      admin.close();
    }
  });
});

describe('secrets never reach the audit log or the daemon output', () => {
  let daemon: RunningDaemon;

  beforeAll(async () => {
    daemon = await startDaemon({
      config: { audit: { level: 'request' }, log: { level: 'debug' }, rate_limit: { per_role_per_minute: { admin: 100_000, operator: 100_000 } } },
    });
  });

  afterAll(async () => {
    await daemon.cleanup();
  });

  it('creating, rotating and using keys at audit level request leaks no secret', async () => {
    const admin = await clientFor(AccessService, daemon);
    const anonymous = await clientFor(AccessService, daemon, null);
    const vms = await clientFor(VmService, daemon, null);
    const operatorId = 'spiffe://debvisor/test/secrets-operator';
    const operator = await clientFor(AccessService, daemon, await issueClientFor(daemon.pki, operatorId));
    const tokens: string[] = [];
    try {
      await admin.bindRole({ principal: operatorId, roleName: 'operator' }, T);
      for (let i = 0; i < 3; i++) {
        const created = await (i === 0 ? admin : operator).createApiKey(
          // A careless description quoting an earlier secret must be scrubbed too.
          { description: i === 2 ? `replaces ${tokens[0]}` : `key ${i}`, permissions: ['vm:get', 'vm:list'], ttl: durationFromMs(3_600_000) },
          T,
        );
        tokens.push(created.secret);
      }
      for (const token of [...tokens]) {
        await anonymous.whoAmI({}, { ...T, metadata: { authorization: `Bearer ${token}` } });
        await rejection(vms.listVms({}, { ...T, metadata: { 'x-api-key': token } }));
      }
      for (const token of tokens.slice(1)) {
        const keyId = token.slice(4, 20);
        const rotated = await operator.rotateApiKey({ keyId, overlap: durationFromMs(60_000) }, T);
        tokens.push(rotated.secret);
        await anonymous.whoAmI({}, { ...T, metadata: { authorization: `Bearer ${rotated.secret}` } });
      }
      // Failed attempts that carry real secret material: one key's secret under another's id.
      const mixed = `dvk_${tokens[1]!.slice(4, 20)}_${tokens[2]!.slice(-43)}`;
      expect((await rejection(anonymous.whoAmI({}, { ...T, metadata: { authorization: `Bearer ${mixed}` } }))).code).toBe(Status.UNAUTHENTICATED);
      // And a revocation, whose request names only the key id.
      await operator.revokeApiKey({ keyId: tokens[3]!.slice(4, 20) }, T);
      expect(tokens).toHaveLength(5);
    } finally {
      for (const client of [admin, anonymous, vms, operator]) client.close();
    }
    // Everything is on disk once the last call's record is.
    await auditRecord(daemon, (r) => r.type === 'SECURITY' && r.reason === 'api key revoked');
    await sleep(200);

    const records = auditRecords(daemon);
    expect(records.some((r) => r.request !== undefined)).toBe(true); // the level really is `request`
    // The careless description was logged, with the secret scrubbed out of it.
    expect(records.some((r) => JSON.stringify(r.request ?? null).includes(`replaces ${tokens[0]!.slice(0, 21)}`))).toBe(true);
    const auditText = readdirSync(join(daemon.dir, 'audit'))
      .filter((name) => name.endsWith('.log'))
      .map((name) => readFileSync(join(daemon.dir, 'audit', name), 'utf8'))
      .join('\n');
    const output = daemon.logs();
    expect(output).toContain('rpc finished'); // debug access logs were on
    const leaks: string[] = [];
    for (const token of tokens) {
      for (const needle of [token, token.slice(-43)]) {
        if (auditText.includes(needle)) leaks.push(`audit log: ${needle.slice(0, 24)}…`);
        if (output.includes(needle)) leaks.push(`daemon output: ${needle.slice(0, 24)}…`);
      }
    }
    expect(leaks).toEqual([]);
  });

  it('at audit level request, each request field is capped at 4 KiB with a marker', async () => {
    const admin = await clientFor(AccessService, daemon);
    const description = `long-${'é'.repeat(100_000)}`;
    try {
      // Refused (over its declared 2 KiB), yet audited: a mutation's request is recorded before anything else reads it.
      const err = await rejection(admin.createApiKey({ description, permissions: ['vm:list'] }, T));
      expect(err.code).toBe(Status.INVALID_ARGUMENT);
      expect(err.details).toMatch(/^description: must be at most 2048 bytes/);
    } finally {
      admin.close();
    }
    const record = await auditRecord(daemon, (r) => JSON.stringify(r.request ?? null).includes('long-éé'));
    const logged = (record.request as { description: string }).description;
    expect(Buffer.byteLength(logged)).toBeLessThanOrEqual(4096);
    expect(logged).toMatch(/^long-é+…\[truncated \d+ bytes\]$/);
    expect(description.startsWith(logged.replace(/…\[truncated \d+ bytes\]$/, ''))).toBe(true);
  });
});

/** The lines of an audit file, parsed. */
function recordsOf(file: string): Record<string, unknown>[] {
  return readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as Record<string, unknown>);
}

const WAIT = { timeout: 20_000, interval: 50 };

describe('the audit log cannot be flooded', () => {
  let daemon: RunningDaemon;

  beforeAll(async () => {
    daemon = await startDaemon({ config: { audit: { unauthenticated_records_per_source: 5, unauthenticated_interval_seconds: 1 } } });
  });

  afterAll(async () => {
    await daemon.cleanup();
  });

  it('a principal with no roles naming a 1 MB resource: refused as INVALID_ARGUMENT naming the field, its record bounded', async () => {
    const nobody = await clientFor(VmService, daemon, await issueClientFor(daemon.pki, 'spiffe://debvisor/test/no-roles'));
    const huge = `vm-${'x'.repeat(1_000_000)}`;
    try {
      const err = await rejection(nobody.getVm({ vmName: huge }, T));
      expect(err.code).toBe(Status.INVALID_ARGUMENT);
      expect(err.details).toMatch(/^vm_name: must be at most 256 bytes/);
    } finally {
      nobody.close();
    }
    const call = await auditRecord(daemon, (r) => r.type === 'CALL' && r.code === 'INVALID_ARGUMENT' && r.method === '/debvisor.v1.VmService/GetVm');
    expect(call.object).toMatch(/^vm:vm-x+…\[truncated \d+ bytes\]$/);
    expect(Buffer.byteLength(call.object as string)).toBeLessThanOrEqual(256);
    expect(Buffer.byteLength(JSON.stringify(call))).toBeLessThan(4096);
    // The whole file, not just the records found: no line anywhere near the request's size.
    const longest = Math.max(...readFileSync(join(daemon.dir, 'audit', 'rpc-audit.log'), 'utf8').split('\n').map((line) => line.length));
    expect(longest).toBeLessThan(8192);
  });

  it('unauthenticated calls from one address: bounded records, a summary record with the count, and a metric', async () => {
    const anonymous = await clientFor(AccessService, daemon, null);
    const calls = 60;
    const started = Date.now();
    try {
      for (let i = 0; i < calls; i++) expect((await rejection(anonymous.whoAmI({}, T))).code).toBe(Status.UNAUTHENTICATED);
    } finally {
      anonymous.close();
    }
    const elapsedIntervals = Math.ceil((Date.now() - started) / 1000) + 1;
    // The summaries of every interval the flood spanned, once the last one has ended.
    const summaries = await vi.waitFor(() => {
      const found = auditRecords(daemon).filter((r) => r.type === 'SUSPICIOUS' && r.source === '127.0.0.1');
      const dropped = found.reduce((sum, r) => sum + (r.details as { dropped_records: number }).dropped_records, 0);
      const kept = auditRecords(daemon).filter((r) => r.type === 'AUTH_FAILED' || (r.type === 'CALL' && r.principal === undefined)).length;
      // Each refused call makes one AUTH_FAILED record: every one is written or counted.
      expect(kept + dropped).toBe(calls);
      return { found, dropped, kept };
    }, WAIT);
    expect(summaries.kept).toBeLessThanOrEqual(5 * (elapsedIntervals + 1));
    expect(summaries.dropped).toBeGreaterThan(0);
    expect(summaries.found[0]!.reason).toMatch(/^\d+ audit records of unauthenticated calls from 127\.0\.0\.1 were not written: over 5 per 1 s/);
    expect(metricSum(await metricsText(daemon), 'audit_records_dropped_total')).toBe(summaries.dropped);
    expect((await auditVerify('--key-file', join(daemon.dir, 'audit', 'hmac.key'), '--log', join(daemon.dir, 'audit', 'rpc-audit.log'))).code).toBe(0);
  });
});

describe('an audit filesystem below its reserve', () => {
  let daemon: RunningDaemon;

  beforeAll(async () => {
    // A floor above the free space of any disk here: the daemon starts below it.
    daemon = await startDaemon({ config: { audit: { reserve_free_bytes: 2 ** 52 } } });
  });

  afterAll(async () => {
    await daemon.cleanup();
  });

  it('says so in a SECURITY event and the metrics, and still audits reads', async () => {
    const event = await auditRecord(daemon, (r) => r.type === 'SECURITY' && String(r.reason).startsWith('audit filesystem low on space'));
    expect(event.details).toMatchObject({ reserve_bytes: 2 ** 52 });
    const metrics = await metricsText(daemon);
    expect(metricSum(metrics, 'audit_low_space')).toBe(1);
    expect(metricSum(metrics, 'audit_free_bytes')).toBeGreaterThan(0);
    const admin = await clientFor(AccessService, daemon);
    try {
      await admin.whoAmI({}, T);
      const created = await admin.createApiKey({ description: 'still works', permissions: ['vm:list'] }, T);
      expect(created.secret).not.toBe('');
      await auditRecord(daemon, (r) => r.type === 'CALL' && r.method === '/debvisor.v1.AccessService/WhoAmI' && r.code === 'OK');
    } finally {
      admin.close();
    }
    expect(daemon.logs()).toContain('audit filesystem low on space');
  });
});

describe('rotation by another program', () => {
  let daemon: RunningDaemon;
  const audit = () => join(daemon.dir, 'audit');
  const current = () => join(audit(), 'rpc-audit.log');
  const key = () => join(audit(), 'hmac.key');

  beforeAll(async () => {
    daemon = await startDaemon();
  });

  afterAll(async () => {
    await daemon.cleanup();
  });

  it('mv as logrotate does: the daemon reopens the path, records a SECURITY event, and the chain verifies across both files', async () => {
    const admin = await clientFor(AccessService, daemon);
    try {
      await admin.createApiKey({ description: 'before', permissions: ['vm:list'] }, T);
      await admin.whoAmI({}, T);
      await auditRecord(daemon, (r) => r.method === '/debvisor.v1.AccessService/WhoAmI');
      const inode = statSync(current()).ino;
      renameSync(current(), `${current()}.1`);
      // A mutation checks the file before its durable write: its records land in the new file.
      await admin.createApiKey({ description: 'after', permissions: ['vm:list'] }, T);
      await vi.waitFor(() => expect(statSync(current()).ino).not.toBe(inode), WAIT);
      const link = await auditRecord(daemon, (r) => r.type === 'SECURITY' && (r.details as Record<string, unknown> | undefined)?.audit_chain !== undefined);
      expect(link.details).toMatchObject({ audit_chain: { cause: 'renamed', previous_file: 'rpc-audit.log.1' } });
      expect(recordsOf(current())[0]).toEqual(link);
      await auditRecord(daemon, (r) => r.type === 'CALL' && r.method === '/debvisor.v1.AccessService/CreateApiKey' && r.code === 'OK');
      expect(recordsOf(`${current()}.1`).some((r) => r.type === 'CALL' && r.method === '/debvisor.v1.AccessService/CreateApiKey' && r.code === 'OK')).toBe(true);
    } finally {
      admin.close();
    }
    expect(metricSum(await metricsText(daemon), 'audit_file_reopens_total')).toBe(1);
    expect(daemon.logs()).toContain('was renamed by another program (now rpc-audit.log.1)');
    const both = await auditVerify('--key-file', key(), `${current()}.1`, current());
    expect(both.out).toMatch(/^OK: \d+ entries \(seq 1–\d+\) in 2 files/);
    expect(both.code).toBe(0);
    // The current file alone starts at its link record: accepted, and said.
    const alone = await auditVerify('--key-file', key(), '--log', current());
    expect(alone.out).toContain('at a link record (renamed, previously rpc-audit.log.1)');
    expect(alone.code).toBe(0);
  });

  it('rm: the daemon notices within a second even when idle, starts a new file from a link record, and it verifies', async () => {
    const before = recordsOf(current()).length;
    expect(before).toBeGreaterThan(0);
    rmSync(current());
    const link = await vi.waitFor(() => {
      const first = recordsOf(current())[0];
      expect(first).toMatchObject({ type: 'SECURITY', details: { audit_chain: { cause: 'removed' } } });
      return first!;
    }, WAIT);
    expect(String(link.reason)).toContain('was removed by another program and reopened');
    const result = await auditVerify('--key-file', key(), '--log', current());
    expect(result.out).toContain('at a link record (removed)');
    expect(result.code).toBe(0);
  });

  it('audit verify exits non-zero on an empty log, and on a chain cut at its start', async () => {
    const work = await mkdtemp(join(tmpdir(), 'rpcd-audit-verify-'));
    try {
      const empty = join(work, 'rpc-audit.log');
      writeFileSync(empty, '');
      const result = await auditVerify('--key-file', key(), '--log', empty);
      expect(result.out).toMatch(/^EMPTY: /);
      expect(result.code).toBe(1);
      // The renamed file without its first batch: it starts mid-way with no link record.
      const lines = readFileSync(`${current()}.1`, 'utf8').split('\n').filter((line) => line !== '');
      const secondBatch = lines.findIndex((line, index) => index > 0 && line.includes('"prev":"'));
      expect(secondBatch).toBeGreaterThan(0);
      const cut = join(work, 'cut.log');
      writeFileSync(cut, `${lines.slice(secondBatch).join('\n')}\n`);
      const cutResult = await auditVerify('--key-file', key(), cut);
      expect(cutResult.out).toContain('unlinked: the chain starts mid-way');
      expect(cutResult.code).toBe(1);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
});
