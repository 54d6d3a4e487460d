// `debvisorctl pki` end to end, through the built CLI: a new CA, a server and two
// client certificates, a real daemon on them with auth.crl_file, then a revocation
// that the daemon enforces after SIGHUP.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { status } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { createClient, tlsCredentials } from '../../src/client/client.js';
import { CTL } from '../support/ctl.js';
import { CLIENT_OPTIONS, auditRecords, daemonEnv, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { serialOfFile, servedSerial } from './certs-support.js';

const run = promisify(execFile);
const ADMIN = 'spiffe://debvisor/admin/admin';
const PANEL = 'spiffe://debvisor/panel/web-panel';

async function ctl(...args: string[]): Promise<string> {
  const { stdout } = await run(process.execPath, [CTL, 'pki', ...args], { env: daemonEnv() });
  return stdout;
}

describe('debvisorctl pki round trip', () => {
  let dir: string;
  let ca: string;
  let daemon: RunningDaemon;

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'certs-pki-'));
    ca = join(dir, 'rpc');
    expect(await ctl('init-ca', '--dir', ca, '--cn', 'Round Trip CA')).toContain('created CA');
    await ctl('issue', 'server', '--cn', 'localhost', '--san', 'DNS:localhost', '--san', 'IP:127.0.0.1', '--days', '90', '--dir', ca);
    await ctl('issue', 'client', '--cn', 'admin', '--san', `URI:${ADMIN}`, '--name', 'admin', '--dir', ca);
    await ctl('issue', 'client', '--cn', 'web-panel', '--san', `URI:${PANEL}`, '--name', 'web-panel', '--dir', ca);
    daemon = await startDaemon({
      config: {
        tls: { ca_file: join(ca, 'ca-cert.pem'), cert_file: join(ca, 'server-cert.pem'), key_file: join(ca, 'server-key.pem') },
        auth: { crl_file: join(ca, 'crl.pem'), default_bindings: { [PANEL]: ['viewer'] } },
      },
    });
  });
  afterAll(async () => {
    await daemon.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  async function whoAmI(name: string): Promise<{ principal?: string; code?: number; details?: string }> {
    const client = createClient(AccessService, {
      address: daemon.grpcAddress,
      credentials: tlsCredentials({
        ca: await readFile(join(ca, 'ca-cert.pem')),
        cert: await readFile(join(ca, `${name}-cert.pem`)),
        key: await readFile(join(ca, `${name}-key.pem`)),
      }),
      options: CLIENT_OPTIONS,
    });
    try {
      return { principal: (await client.whoAmI({}, { timeoutMs: 5000 })).principalId };
    } catch (err) {
      const e = err as { code?: number; details?: string };
      return { ...(e.code !== undefined && { code: e.code }), ...(e.details !== undefined && { details: e.details }) };
    } finally {
      client.close();
    }
  }

  it('serves the issued server certificate and accepts the issued client certificates', async () => {
    expect(await servedSerial(daemon.grpcAddress, await readFile(join(ca, 'ca-cert.pem')))).toBe(await serialOfFile(join(ca, 'server-cert.pem')));
    expect(await whoAmI('admin')).toEqual({ principal: ADMIN });
    expect(await whoAmI('web-panel')).toEqual({ principal: PANEL });
  });

  it('pki status reads the daemon config and lists its certificates', async () => {
    const out = await ctl('status', '--config', daemon.configFile, '--dir', ca);
    expect(out).toMatch(/CN=Round Trip CA/);
    expect(out).toMatch(/server[\s\S]*DNS:localhost/);
    expect(out).toMatch(/web-panel/);
    expect(out).toMatch(/all 4 certificates ok/);
  });

  it('a revoked client certificate is refused after SIGHUP; others keep working', async () => {
    const serial = await serialOfFile(join(ca, 'web-panel-cert.pem'));
    expect(await ctl('revoke', '--cert-file', join(ca, 'web-panel-cert.pem'), '--reason', 'keyCompromise', '--dir', ca)).toContain(`revoked ${serial}`);
    expect(await ctl('crl', '--dir', ca)).toMatch(new RegExp(`${serial}.*keyCompromise`));

    // Not before the reload: the CRL is read at start and on SIGHUP.
    expect(await whoAmI('web-panel')).toEqual({ principal: PANEL });
    const seen = daemon.logRecords().length;
    daemon.process.kill('SIGHUP');
    await vi.waitFor(() => expect(daemon.logRecords().slice(seen).some((r) => r.msg === 'reloaded configuration, certificates and CRL')).toBe(true));

    const refused = await whoAmI('web-panel');
    expect(refused.code).toBe(status.UNAUTHENTICATED);
    // The caller learns nothing specific; the audit log has the reason.
    await vi.waitFor(() => expect(JSON.stringify(auditRecords(daemon).filter((r) => r.type === 'AUTH_FAILED'))).toContain(`serial ${serial} is revoked`));
    expect(await whoAmI('admin')).toEqual({ principal: ADMIN });
  });
});
