// The certificate monitor in the real daemon: torn and corrupt rotations, renewal
// thresholds at start-up, the command mode (with generate-rpc-certificates.sh) and a
// bad config on SIGHUP.
import { execFile } from 'node:child_process';
import { readFile, writeFile, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { stringify } from 'yaml';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { issueCertificate, writeFileAtomic, writeLeafFiles } from '../../src/pki/index.js';
import { REPO_ROOT, auditRecords, baseConfig, clientFor, deepMerge, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { reloadDaemon } from '../support/security.js';
import {
  DAY_MS,
  NO_RATE_LIMITS,
  SECOND,
  caOf,
  describeCertificate,
  metricValue,
  pkiWithServer,
  publishedCertificates,
  serialOfFile,
  serialOfPem,
  servedSerial,
  serverPair,
  tlsFor,
  waitForServedSerial,
} from './certs-support.js';

const run = promisify(execFile);
const SCRIPT = join(REPO_ROOT, 'scripts', 'generate-rpc-certificates.sh');
const ADMIN = 'spiffe://debvisor/admin/admin';

/** Keeps handshaking and calling WhoAmI until stopped; collects every failure. */
function keepBusy(daemon: RunningDaemon, ca: Buffer): { stop: () => Promise<{ handshakes: number; calls: number; errors: string[] }> } {
  const state = { running: true };
  const errors: string[] = [];
  let handshakes = 0;
  let calls = 0;
  const probes = (async () => {
    while (state.running) {
      await servedSerial(daemon.grpcAddress, ca).then(
        () => handshakes++,
        (err: unknown) => errors.push(`handshake: ${(err as Error).message}`),
      );
      await sleep(25);
    }
  })();
  const caller = (async () => {
    const client = await clientFor(AccessService, daemon);
    try {
      while (state.running) {
        await client.whoAmI({}, { timeoutMs: 5000 }).then(
          () => calls++,
          (err: unknown) => errors.push(`call: ${(err as Error).message}`),
        );
        await sleep(10);
      }
    } finally {
      client.close();
    }
  })();
  return {
    stop: async () => {
      state.running = false;
      await Promise.all([probes, caller]);
      return { handshakes, calls, errors };
    },
  };
}

describe('replaced certificate files (external mode)', () => {
  let daemon: RunningDaemon;
  let ca: Buffer;

  beforeAll(async () => {
    daemon = await startDaemon({ config: { rate_limit: NO_RATE_LIMITS } });
    ca = await readFile(daemon.pki.caCert);
  });
  afterAll(async () => {
    await daemon.cleanup();
  });

  it('torn rotation: the certificate is written 800 ms before its key; nothing fails and the pair is published once both are there', async () => {
    const before = await serialOfFile(daemon.pki.serverCert);
    const next = await serverPair(daemon.pki, { validityDays: 30 });
    const busy = keepBusy(daemon, ca);
    await sleep(200);

    await writeFileAtomic(daemon.pki.serverCert, next.certPem, 0o644);
    await sleep(800);
    // Only the old pair is served while the new certificate has no matching key.
    expect(await servedSerial(daemon.grpcAddress, ca)).toBe(before);
    await writeFileAtomic(daemon.pki.serverKey, next.keyPem, 0o600);
    const tookMs = await waitForServedSerial(daemon.grpcAddress, ca, serialOfPem(next.certPem), 1000);
    await sleep(200);
    const { handshakes, calls, errors } = await busy.stop();

    expect(errors).toEqual([]);
    expect(handshakes).toBeGreaterThan(10);
    expect(calls).toBeGreaterThan(10);
    expect(tookMs).toBeLessThan(1000);
    expect(await metricValue(daemon, 'tls_certificate_renewals_total', { result: 'failure' })).toBe(0);
    expect(await metricValue(daemon, 'tls_certificate_renewals_total', { result: 'success' })).toBe(1);
    expect(publishedCertificates(daemon)).toEqual([{ serial: serialOfPem(next.certPem), source: 'file-change' }]);
    const expiry = await metricValue(daemon, 'tls_certificate_expiry_seconds', { cert: 'server' });
    expect(expiry! / 86_400).toBeCloseTo(30, 0);
  });

  it('corrupt rotation: an invalid certificate, a key mismatch and a missing SAN are refused, audited and counted; the old pair keeps serving', { timeout: 40_000 }, async () => {
    const served = await servedSerial(daemon.grpcAddress, ca);
    const failures = async () => (await metricValue(daemon, 'tls_certificate_renewals_total', { result: 'failure' })) ?? 0;
    const refusals = () => auditRecords(daemon).filter((r) => r.type === 'SECURITY' && String(r.reason).startsWith('replaced TLS certificate files refused'));
    const busy = keepBusy(daemon, ca);
    const start = await failures();

    // 1. Not a certificate at all.
    await writeFileAtomic(daemon.pki.serverCert, '-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n', 0o644);
    await vi.waitFor(async () => expect(await failures()).toBe(start + 1), { timeout: 8000, interval: 200 });
    expect(await servedSerial(daemon.grpcAddress, ca)).toBe(served);

    // 2. A valid certificate with somebody else's key.
    const next = await serverPair(daemon.pki, { validityDays: 30 });
    const other = await serverPair(daemon.pki, { validityDays: 30 });
    await writeLeafFiles(daemon.pki.serverCert, daemon.pki.serverKey, { certPem: next.certPem, keyPem: other.keyPem });
    await vi.waitFor(async () => expect(await failures()).toBe(start + 2), { timeout: 8000, interval: 200 });
    expect(await servedSerial(daemon.grpcAddress, ca)).toBe(served);

    // 3. A matching pair from our CA that no longer covers IP:127.0.0.1.
    const narrow = await issueCertificate({ ca: await caOf(daemon.pki), profile: 'server', commonName: 'localhost', dnsNames: ['localhost'] });
    await writeLeafFiles(daemon.pki.serverCert, daemon.pki.serverKey, narrow);
    await vi.waitFor(async () => expect(await failures()).toBe(start + 3), { timeout: 8000, interval: 200 });
    expect(await servedSerial(daemon.grpcAddress, ca)).toBe(served);

    const { errors } = await busy.stop();
    expect(errors).toEqual([]);
    await vi.waitFor(() => expect(refusals()).toHaveLength(3), { timeout: 3000 });
    const problems = refusals().map((r) => String((r.details as Record<string, unknown>).problem));
    expect(problems[0]).toMatch(/server certificate/);
    expect(problems[1]).toMatch(/does not match/);
    expect(problems[2]).toMatch(/lacks required SAN\(s\) IP:127\.0\.0\.1/);
    expect(daemon.logRecords().filter((r) => r.msg === 'replaced TLS certificate files refused; keeping the current certificate')).toHaveLength(3);

    // A good pair afterwards is picked up as usual.
    await writeLeafFiles(daemon.pki.serverCert, daemon.pki.serverKey, next);
    await waitForServedSerial(daemon.grpcAddress, ca, serialOfPem(next.certPem), 1500);
    expect(daemon.alive()).toBe(true);
  });
});

describe('renewal thresholds and modes at start-up', () => {
  const daemons: RunningDaemon[] = [];
  const dirs: string[] = [];
  afterEach(async () => {
    await Promise.all(daemons.splice(0).map((d) => d.cleanup()));
    await Promise.all(dirs.splice(0).map((d) => rm(d, { recursive: true, force: true })));
  });
  const tempDir = async () => {
    const dir = await mkdtemp(join(tmpdir(), 'certs-monitor-'));
    dirs.push(dir);
    return dir;
  };

  it('local-ca: a certificate with 10 days left is renewed at start-up; a fresh one is not', async () => {
    const now = Date.now();
    const expiring = await pkiWithServer(await tempDir(), (p) => serverPair(p, { notBefore: new Date(now - 80 * DAY_MS), notAfter: new Date(now + 10 * DAY_MS) }));
    const fresh = await pkiWithServer(await tempDir());
    const renewal = (pki: typeof fresh) => ({ mode: 'local-ca', ca_key_file: pki.caKey, validity_days: 90 });
    // Read before the daemons start: the renewal at start-up rewrites the file.
    const expiringSerial = await serialOfFile(expiring.serverCert);
    const freshSerial = await serialOfFile(fresh.serverCert);
    const [old, young] = await Promise.all([
      startDaemon({ config: { tls: tlsFor(expiring, renewal(expiring)) } }),
      startDaemon({ config: { tls: tlsFor(fresh, renewal(fresh)) } }),
    ]);
    daemons.push(old, young);

    await vi.waitFor(() => expect(publishedCertificates(old)).toHaveLength(1), { timeout: 5000 });
    const [renewed] = publishedCertificates(old);
    expect(renewed!.source).toBe('renewal');
    expect(renewed!.serial).not.toBe(expiringSerial);
    expect(await serialOfFile(expiring.serverCert)).toBe(renewed!.serial);
    const info = describeCertificate(await readFile(expiring.serverCert));
    expect(info.sanStrings).toEqual(['DNS:localhost', 'IP:127.0.0.1']);
    expect((info.notAfter.getTime() - Date.now()) / DAY_MS).toBeCloseTo(90, 0);
    expect(await servedSerial(old.grpcAddress, await readFile(expiring.caCert))).toBe(renewed!.serial);
    await vi.waitFor(() => expect(auditRecords(old).some((r) => r.type === 'SECURITY' && r.reason === 'TLS certificate renewed')).toBe(true));
    expect(await metricValue(old, 'tls_certificate_renewals_total', { result: 'success' })).toBe(1);

    await sleep(1000);
    expect(publishedCertificates(young)).toEqual([]);
    expect(young.logRecords().some((r) => r.msg === 'renewing TLS certificate')).toBe(false);
    expect(await serialOfFile(fresh.serverCert)).toBe(freshSerial);
    expect(await servedSerial(young.grpcAddress, await readFile(fresh.caCert))).toBe(freshSerial);
  });

  it('command: generate-rpc-certificates.sh renews a due certificate; a failing command keeps the old one, counted and audited', async () => {
    const dir = await tempDir();
    const certs = join(dir, 'rpc');
    await run(SCRIPT, [certs, '20']); // 20 days: due under the 30-day rule
    const before = await serialOfFile(join(certs, 'server-cert.pem'));
    const tls = (command: string[]) => ({
      ca_file: join(certs, 'ca-cert.pem'),
      cert_file: join(certs, 'server-cert.pem'),
      key_file: join(certs, 'server-key.pem'),
      renewal: { mode: 'command', command },
    });
    const caPem = await readFile(join(certs, 'ca-cert.pem'));

    // The command also records the environment it got: the daemon's own secrets must not be in it.
    const seen = join(dir, 'command-env');
    const failing = await startDaemon({
      config: { tls: tls(['/bin/sh', '-c', `env > ${seen}; echo "no CA key here" >&2; exit 3`]) },
      env: { DEBVISOR_TEST_UNRELATED_SECRET: 'do-not-pass-on' },
    });
    daemons.push(failing);
    await vi.waitFor(async () => expect(await metricValue(failing, 'tls_certificate_renewals_total', { result: 'failure' })).toBe(1), { timeout: 5000 });
    const commandEnv = await readFile(seen, 'utf8');
    expect(commandEnv).not.toContain('do-not-pass-on');
    expect(commandEnv).toContain(`DEBVISOR_TLS_CERT_FILE=${join(certs, 'server-cert.pem')}`);
    expect(commandEnv).toMatch(/^PATH=/m);
    expect(await servedSerial(failing.grpcAddress, caPem)).toBe(before);
    await vi.waitFor(() => {
      const audit = auditRecords(failing).find((r) => r.type === 'SECURITY' && r.reason === 'TLS certificate renewal failed; keeping the current certificate');
      expect(String((audit?.details as Record<string, unknown> | undefined)?.problem)).toMatch(/exit 3.*no CA key here/);
    });
    await failing.cleanup();

    const working = await startDaemon({ config: { tls: tls([SCRIPT, '--renew', 'server', certs, '90']) } });
    daemons.push(working);
    await vi.waitFor(() => expect(publishedCertificates(working)).toHaveLength(1), { timeout: 10_000 });
    const after = await serialOfFile(join(certs, 'server-cert.pem'));
    expect(after).not.toBe(before);
    expect(publishedCertificates(working)[0]).toEqual({ serial: after, source: 'renewal' });
    expect(await servedSerial(working.grpcAddress, caPem)).toBe(after);
    // The CA was reused: the renewed certificate verifies against the unchanged bundle.
    expect(await readFile(join(certs, 'ca-cert.pem'))).toEqual(caPem);
  });
});

describe('SIGHUP with a bad configuration', () => {
  let daemon: RunningDaemon;
  beforeAll(async () => {
    daemon = await startDaemon();
  });
  afterAll(async () => {
    await daemon.cleanup();
  });

  const hup = () => reloadDaemon(daemon);

  it('keeps the old config and certificates, stays up and keeps serving; a good config is then applied', async () => {
    const original = await readFile(daemon.configFile, 'utf8');
    const ca = await readFile(daemon.pki.caCert);
    const served = await servedSerial(daemon.grpcAddress, ca);
    const base = deepMerge(baseConfig(daemon.pki, daemon.grpcPort, daemon.httpPort, daemon.dir), {});

    // A wrongly typed value.
    await writeFile(daemon.configFile, stringify(deepMerge(base, { server: { max_request_bytes: 'big' }, log: { level: 'debug' } })));
    const bad = await hup();
    expect(bad.msg).toMatch(/reload refused/);
    expect(String(bad.problem)).toContain('server.max_request_bytes');

    // A certificate path that does not exist.
    await writeFile(daemon.configFile, stringify(deepMerge(base, { tls: { cert_file: join(daemon.dir, 'nope.pem') }, log: { level: 'debug' } })));
    const missing = await hup();
    expect(missing.msg).toMatch(/reload refused/);
    expect(String(missing.problem)).toContain('nope.pem');

    // Unparsable YAML.
    await writeFile(daemon.configFile, 'server: [unclosed\n');
    expect((await hup()).msg).toMatch(/reload refused/);

    expect(daemon.alive()).toBe(true);
    expect(await servedSerial(daemon.grpcAddress, ca)).toBe(served);
    const client = await clientFor(AccessService, daemon);
    try {
      expect((await client.whoAmI({}, { timeoutMs: 5000 })).principalId).toBe(ADMIN);
    } finally {
      client.close();
    }
    // log.level stayed at info: no debug lines were written after the refused reloads.
    expect(daemon.logRecords().some((r) => r.level === 20)).toBe(false);
    await vi.waitFor(() => expect(auditRecords(daemon).filter((r) => r.type === 'SECURITY' && r.reason === 'reload refused')).toHaveLength(3));

    // Back to a valid file: applied.
    await writeFile(daemon.configFile, original);
    expect((await hup()).msg).toBe('reloaded configuration, certificates and CRL');
    await sleep(SECOND / 10);
    expect(daemon.alive()).toBe(true);
  });
});
