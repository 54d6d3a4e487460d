// Rotation under load: a separate process keeps 50 WhoAmI calls in flight for 10 s
// while the daemon's certificate monitor renews its short-lived certificate twice
// (local-ca mode) and an external replace + SIGHUP swaps it once more. Not one call
// may fail, and new TLS handshakes must present every new serial.
import { spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { writeLeafFiles, type DevPkiPaths } from '../../src/pki/index.js';
import { REPO_ROOT, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { NO_RATE_LIMITS, SECOND, pkiWithServer, publishedCertificates, serialOfFile, serialOfPem, servedSerial, serverPair, tlsFor, waitForServedSerial } from './certs-support.js';

const LOAD_MS = 10 * SECOND;
/** Issued certificates live 14 s and are renewed when fewer than 9 s are left: every ~5 s. */
const VALIDITY_S = 14;
const RENEW_BEFORE_S = 9;

interface LoadResult {
  ok: number;
  failed: number;
  errors: string[];
}

function runLoad(options: Record<string, unknown>): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [join(REPO_ROOT, 'test/e2e/certs-loadgen.ts'), JSON.stringify(options)], {
      cwd: REPO_ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NODE_NO_WARNINGS: '1' },
    });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (out += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (err += text));
    child.once('error', reject);
    child.once('close', (code) => {
      if (code !== 0) return reject(new Error(`load generator exited ${code}: ${err}`));
      try {
        resolve(JSON.parse(out.trim().split('\n').at(-1) ?? '') as LoadResult);
      } catch {
        reject(new Error(`load generator output: ${out}\n${err}`));
      }
    });
  });
}

describe('certificate rotation under load', () => {
  let dir: string;
  let daemon: RunningDaemon | undefined;

  afterAll(async () => {
    await daemon?.cleanup();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('renews twice (monitor) and once (external replace + SIGHUP) with 0 failed calls; new handshakes see each new serial', { timeout: 60_000 }, async () => {
    dir = await mkdtemp(join(tmpdir(), 'certs-rotation-'));
    // Starts on a certificate that falls due about 3 s from now.
    const pki: DevPkiPaths = await pkiWithServer(dir, (p) => serverPair(p, { notAfter: new Date(Date.now() + 12 * SECOND) }));
    const initialSerial = await serialOfFile(pki.serverCert);
    daemon = await startDaemon({
      config: {
        tls: tlsFor(pki, {
          mode: 'local-ca',
          ca_key_file: pki.caKey,
          validity_days: VALIDITY_S / 86_400,
          renew_before_days: RENEW_BEFORE_S / 86_400,
          renew_at_lifetime_fraction: 1,
          jitter_fraction: 0,
        }),
        // Connections are recycled (GOAWAY) during the test as well.
        // (The grace covers the longest call: max_deadline_seconds.)
        server: { max_connection_age_seconds: 2, max_connection_age_grace_seconds: 10, max_deadline_seconds: 10 },
        rate_limit: NO_RATE_LIMITS,
        audit: { level: 'metadata' },
      },
    });
    const ca = await readFile(pki.caCert);
    const running = daemon;

    // Probe what new handshakes get, every 100 ms, for the whole run.
    const seen = new Set<string>();
    const probeErrors: string[] = [];
    const probe = { on: true };
    const prober = (async () => {
      while (probe.on) {
        try {
          seen.add(await servedSerial(running.grpcAddress, ca, 5000));
        } catch (err) {
          probeErrors.push((err as Error).message);
        }
        await sleep(100);
      }
    })();

    const load = runLoad({
      address: running.grpcAddress,
      caFile: pki.caCert,
      certFile: pki.adminCert,
      keyFile: pki.adminKey,
      concurrency: 50,
      durationMs: LOAD_MS,
      channels: 4,
      rotateChannelMs: 500,
    });

    // Wait for two monitor renewals, then replace the pair externally and SIGHUP.
    const deadline = Date.now() + LOAD_MS - 1500;
    while (publishedCertificates(running).filter((p) => p.source === 'renewal').length < 2 && Date.now() < deadline) await sleep(100);
    // The second renewed pair reaches new handshakes within a second (before it is replaced).
    const second = publishedCertificates(running).filter((p) => p.source === 'renewal')[1];
    if (second) {
      await waitForServedSerial(running.grpcAddress, ca, second.serial, 1000);
      seen.add(second.serial);
    }
    const external = await serverPair(pki, { validityDays: 1 });
    await writeLeafFiles(pki.serverCert, pki.serverKey, external);
    running.process.kill('SIGHUP');
    const externalSerial = serialOfPem(external.certPem);

    const result = await load;
    // New handshakes present the replaced pair within a second of the SIGHUP.
    await waitForServedSerial(running.grpcAddress, ca, externalSerial, 1000);
    await sleep(200);
    probe.on = false;
    await prober;

    const published = publishedCertificates(running);
    console.info(`rotation under load: ${result.ok} calls ok, ${result.failed} failed; published ${JSON.stringify(published)}; ${seen.size} serials seen by new handshakes; probe errors ${JSON.stringify(probeErrors)}; load errors ${JSON.stringify(result.errors)}`);
    const renewals = published.filter((p) => p.source === 'renewal');
    expect(renewals.length, JSON.stringify(published)).toBeGreaterThanOrEqual(2);
    expect(published.at(-1)?.serial).toBe(externalSerial);
    expect(['sighup', 'file-change']).toContain(published.at(-1)?.source);
    expect(running.logRecords().some((r) => r.msg === 'reloaded configuration, certificates and CRL')).toBe(true);

    expect(result.errors).toEqual([]);
    expect(result.failed).toBe(0);
    expect(result.ok).toBeGreaterThan(1000);

    expect(probeErrors).toEqual([]);
    expect(seen.has(initialSerial) || renewals.length > 0).toBe(true);
    for (const { serial } of published) expect([...seen], `serial ${serial} never presented to a new handshake`).toContain(serial);
    expect(await servedSerial(running.grpcAddress, ca)).toBe(externalSerial);
    expect(running.alive()).toBe(true);
  });
});
