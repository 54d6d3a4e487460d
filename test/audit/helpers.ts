// Shared fixtures for the audit suites: temp dirs, events, a controllable clock.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AuditEventInput } from '../../src/audit/event.js';
import { AuditLog, type AuditLogOptions } from '../../src/audit/log.js';

export function tempDir(): { dir: string; cleanup: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'dv-audit-'));
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

export function event(i: number, overrides: Partial<AuditEventInput> = {}): AuditEventInput {
  return {
    trace_id: `trace-${i}`,
    type: 'CALL',
    principal: { id: 'alice', kind: 'certificate', roles: ['operator'], cert_fingerprint: 'ab'.repeat(32) },
    source: '10.0.0.7:51514',
    method: '/debvisor.v1.VmService/StartVm',
    decision: 'allow',
    code: 'OK',
    duration_ms: i % 17,
    request: { vmName: `web-${i}` },
    object: `vm/web-${i}`,
    ...overrides,
  };
}

/** A clock the test moves by hand. */
export class Clock {
  constructor(public date: Date) {}
  now = (): Date => this.date;
  set(iso: string): void {
    this.date = new Date(iso);
  }
}

export function openLog(dir: string, options: Partial<AuditLogOptions> = {}): Promise<AuditLog> {
  return AuditLog.open({ path: join(dir, 'rpc-audit.log'), hmacKeyFile: join(dir, 'audit-hmac.key'), ...options });
}

export function keyOf(dir: string): Buffer {
  return Buffer.from(readFileSync(join(dir, 'audit-hmac.key'), 'utf8').trim(), 'hex');
}

export function readLines(file: string): string[] {
  const text = readFileSync(file, 'utf8');
  if (text === '') return [];
  return text.endsWith('\n') ? text.slice(0, -1).split('\n') : text.split('\n');
}

export function writeLines(file: string, lines: string[]): void {
  writeFileSync(file, lines.map((line) => `${line}\n`).join(''));
}

export function parseLines(file: string): Array<Record<string, unknown> & { seq: number; hmac: string }> {
  return readLines(file).map((line) => JSON.parse(line) as Record<string, unknown> & { seq: number; hmac: string });
}
