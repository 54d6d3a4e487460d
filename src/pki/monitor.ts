// The certificate monitor: keeps the daemon's own TLS identity fresh.
//
// - Checks the served certificate at start-up and every check_interval_seconds, and
//   renews it once 2/3 of its lifetime has passed or fewer than renew_before_days are
//   left (whichever first), a little early by a per-certificate jitter.
// - Renews in one of three modes: local-ca (sign a fresh key with the CA key),
//   command (run an argv, no shell) or external (someone else replaces the files).
// - Watches the three files (fs.watch on their directories, plus a stat poll as the
//   fallback) and publishes a replaced pair within about a second.
// - Publishes only a changed pair that validates: key matches certificate, chain
//   verifies against the CA bundle, dates valid, required SANs present. A torn write
//   (certificate before key) is waited out; a pair that stays invalid is refused, the
//   old pair keeps serving, and the failure is logged, counted and audited as SECURITY.
import { createHash, X509Certificate } from 'node:crypto';
import { execFile } from 'node:child_process';
import { readFileSync, statSync, watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';
import { promisify } from 'node:util';
import type { Logger } from 'pino';
import { Counter, Gauge, type Registry } from 'prom-client';
import type { Config } from '../config/schema.js';
import { chainProblem, TrustBundle } from './trust.js';
import { childEnvironment } from '../backends/exec.js';
import { describeCertificate, formatSans, issuerForKey, parseSanList, renewCertificate, splitPemCertificates, writeLeafFiles } from './index.js';
import { loadIdentity, TlsConfigError, type IdentityProvider, type LoadedIdentity, type TlsFiles } from './identity.js';

const run = promisify(execFile);
const DAY_MS = 86_400_000;
/** Quiet time after a file event before the files are read. */
const DEBOUNCE_MS = 100;
/**
 * Re-reads of a changed but invalid pair before it counts as a failure: a renewal
 * tool writing the certificate and then the key is given ~4 s to finish.
 */
const SETTLE_DELAYS_MS = [250, 500, 1000, 2000];
/** First retry after a failed renewal; doubles up to the check interval. */
const RETRY_BASE_MS = 10_000;
/** Never re-check sooner than this (a renewal falling due "now" in a loop). */
const MIN_CHECK_DELAY_MS = 200;
/** What the renewal command sees of the daemon's environment: enough to find and run its tools, no more. */
const RENEWAL_COMMAND_ENV = ['PATH', 'HOME', 'LANG', 'LC_ALL', 'TZ', 'TMPDIR'];

/** setTimeout's limit. */
const MAX_TIMER_MS = 2 ** 31 - 1;

export type TlsSettings = Config['tls'];
export type RenewalPolicy = Pick<TlsSettings['renewal'], 'renew_at_lifetime_fraction' | 'renew_before_days' | 'jitter_fraction'>;
export type PublishSource = 'renewal' | 'file-change' | 'sighup';

export interface SecurityEvent {
  reason: string;
  details: Record<string, unknown>;
}

export interface CertMonitorOptions {
  /** The live TLS settings (SIGHUP swaps them). */
  settings: () => TlsSettings;
  provider: IdentityProvider;
  log: Logger;
  /** The daemon's prom registry: tls_certificate_expiry_seconds and tls_certificate_renewals_total go there. */
  registry: Registry;
  /** Called after a new pair is published (the daemon swaps the client trust bundle). */
  onPublished?: (identity: LoadedIdentity, source: PublishSource) => void;
  /** Renewal failures and refused pairs: the daemon audits them as SECURITY. */
  onSecurityEvent?: (event: SecurityEvent) => void;
  now?: () => number;
}

export function tlsFilesOf(tls: TlsSettings): TlsFiles {
  return { caFile: tls.ca_file, certFile: tls.cert_file, keyFile: tls.key_file };
}

/**
 * When a certificate should be renewed (ms since the epoch): the earlier of
 * notBefore + fraction × lifetime and notAfter − renew_before_days, moved earlier by
 * up to jitter_fraction of the time to that point. The jitter comes from the serial,
 * so it is fixed per certificate (a re-check never re-rolls it) yet differs per host.
 */
export function renewalDueAt(leaf: { notBefore: number; notAfter: number; serialNumber: string }, policy: RenewalPolicy): number {
  const lifetime = leaf.notAfter - leaf.notBefore;
  const byFraction = leaf.notBefore + policy.renew_at_lifetime_fraction * lifetime;
  const byDays = leaf.notAfter - policy.renew_before_days * DAY_MS;
  const due = Math.min(byFraction, byDays);
  const spread = Math.max(0, due - leaf.notBefore) * policy.jitter_fraction;
  const unit = createHash('sha256').update(leaf.serialNumber.toUpperCase()).digest().readUInt32BE(0) / 0x1_0000_0000;
  return due - spread * unit;
}

function leafTimes(leaf: X509Certificate): { notBefore: number; notAfter: number; serialNumber: string } {
  return { notBefore: leaf.validFromDate.getTime(), notAfter: leaf.validToDate.getTime(), serialNumber: leaf.serialNumber };
}

/**
 * loadIdentity (readable, key matches, dates valid, CA bundle usable) plus the checks a
 * replacement must pass: the chain verifies and the required SANs are present.
 * `required` are canonical SAN strings (see formatSans).
 */
export function validateIdentity(tls: TlsSettings, required: readonly string[], now = Date.now()): LoadedIdentity {
  const identity = loadIdentity(tlsFilesOf(tls), now);
  const chainFile = tls.renewal.chain_ca_file || tls.ca_file;
  let roots: TrustBundle;
  try {
    roots = chainFile === tls.ca_file ? identity.trust : TrustBundle.fromPem(readFileSync(chainFile));
  } catch (err) {
    throw new TlsConfigError(`chain CA bundle ${chainFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  // Intermediates may follow the leaf in cert_file; self-signed extras are ignored so
  // the file cannot vouch for itself.
  const intermediates = splitPemCertificates(identity.cert.toString())
    .slice(1)
    .map((pem) => new X509Certificate(pem))
    .filter((cert) => cert.ca && !(cert.checkIssued(cert) && cert.verify(cert.publicKey)));
  const problem = chainProblem(identity.leaf, new TrustBundle([...roots.authorities, ...intermediates]), now);
  if (problem) throw new TlsConfigError(`server certificate ${tls.cert_file}: ${problem} (${chainFile})`);
  if (required.length > 0) {
    const have = new Set(describeCertificate(identity.cert).sanStrings);
    const missing = required.filter((san) => !have.has(san));
    if (missing.length > 0) throw new TlsConfigError(`server certificate ${tls.cert_file} lacks required SAN(s) ${missing.join(', ')}`);
  }
  return identity;
}

/**
 * The identity to start with. In local-ca and command modes a missing, expired or
 * mismatched pair (e.g. after a long shutdown or a crash between key and cert
 * writes) is renewed once before giving up.
 */
export async function initialIdentity(tls: TlsSettings, log: Logger): Promise<LoadedIdentity> {
  checkRenewalSettings(tls);
  try {
    return validateIdentity(tls, configuredSans(tls));
  } catch (err) {
    if (!(err instanceof TlsConfigError) || tls.renewal.mode === 'external') throw err;
    log.warn({ problem: err.message, mode: tls.renewal.mode }, 'TLS identity unusable at start-up; renewing it first');
    try {
      await renewFiles(tls, undefined);
    } catch (renewErr) {
      throw new TlsConfigError(`${err.message}; renewal (${tls.renewal.mode}) failed too: ${(renewErr as Error).message}`);
    }
    return validateIdentity(tls, configuredSans(tls));
  }
}

export function checkRenewalSettings(tls: TlsSettings): void {
  if (tls.renewal.mode === 'command' && tls.renewal.command.length === 0) {
    throw new TlsConfigError('tls.renewal.mode is "command" but tls.renewal.command is empty');
  }
}

function configuredSans(tls: TlsSettings): string[] {
  return formatSans(parseSanList(tls.renewal.required_sans));
}

/** Makes new files: local-ca signs a fresh key; command runs the argv. */
async function renewFiles(tls: TlsSettings, currentCert: Buffer | undefined): Promise<string> {
  const renewal = tls.renewal;
  if (renewal.mode === 'local-ca') {
    const [bundle, keyPem, certPem] = await Promise.all([
      readFile(tls.ca_file, 'utf8'),
      readFile(renewal.ca_key_file, 'utf8'),
      currentCert ? Promise.resolve(currentCert.toString()) : readFile(tls.cert_file, 'utf8'),
    ]);
    const caCert = issuerForKey(bundle, keyPem);
    if (!caCert) throw new Error(`${renewal.ca_key_file} is not the key of any CA in ${tls.ca_file}`);
    const { pair, next } = await renewCertificate({ ca: { certPem: caCert, keyPem }, certPem, validityDays: renewal.validity_days });
    await writeLeafFiles(tls.cert_file, tls.key_file, pair);
    return `issued serial ${next.serialNumber}`;
  }
  if (renewal.mode === 'command') {
    const [file, ...args] = renewal.command;
    if (file === undefined) throw new Error('tls.renewal.command is empty');
    try {
      await run(file, args, {
        timeout: renewal.command_timeout_seconds * 1000,
        killSignal: 'SIGKILL',
        maxBuffer: 1024 * 1024,
        env: childEnvironment(RENEWAL_COMMAND_ENV, { DEBVISOR_TLS_CERT_FILE: tls.cert_file, DEBVISOR_TLS_KEY_FILE: tls.key_file, DEBVISOR_TLS_CA_FILE: tls.ca_file }),
      });
    } catch (err) {
      const e = err as NodeJS.ErrnoException & { stderr?: string; killed?: boolean; code?: number | string };
      const tail = (e.stderr ?? '').trim().split('\n').slice(-3).join(' | ');
      throw new Error(`renewal command ${file} failed (${e.killed ? 'timed out' : `exit ${String(e.code)}`})${tail ? `: ${tail}` : ''}`, { cause: err });
    }
    return `ran ${file}`;
  }
  throw new Error('external mode: the certificate is renewed by another tool');
}

type FileSignature = string;

export class CertMonitor {
  private readonly settings: () => TlsSettings;
  private readonly provider: IdentityProvider;
  private readonly log: Logger;
  private readonly onPublished: (identity: LoadedIdentity, source: PublishSource) => void;
  private readonly onSecurityEvent: (event: SecurityEvent) => void;
  private readonly now: () => number;
  private readonly expiry: Gauge<'cert'>;
  private readonly renewals: Counter<'result'>;

  private stopped = true;
  private checkTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private debounceTimer: NodeJS.Timeout | undefined;
  private settleTimer: NodeJS.Timeout | undefined;
  private watchers = new Map<string, FSWatcher>();
  /** Serialises renewals, file loads and SIGHUP publishes. */
  private queue: Promise<void> = Promise.resolve();
  private renewing = false;
  private renewalFailures = 0;
  private settleAttempt = 0;
  private lastSignature: FileSignature = '';
  private failedSignature: FileSignature | undefined;
  private warnedExternalDue: string | undefined;

  constructor(options: CertMonitorOptions) {
    this.settings = options.settings;
    this.provider = options.provider;
    this.log = options.log;
    this.onPublished = options.onPublished ?? (() => undefined);
    this.onSecurityEvent = options.onSecurityEvent ?? (() => undefined);
    this.now = options.now ?? Date.now;
    const provider = this.provider;
    const now = this.now;
    this.expiry = new Gauge({
      name: 'tls_certificate_expiry_seconds',
      help: 'Seconds until the served certificate (cert="server") or the first-expiring CA of the bundle (cert="ca") expires.',
      labelNames: ['cert'] as const,
      registers: [options.registry],
      collect() {
        const identity = provider.identity;
        this.set({ cert: 'server' }, (identity.leaf.validToDate.getTime() - now()) / 1000);
        const ca = Math.min(...identity.trust.authorities.map((cert) => cert.validToDate.getTime()));
        this.set({ cert: 'ca' }, (ca - now()) / 1000);
      },
    });
    this.renewals = new Counter({
      name: 'tls_certificate_renewals_total',
      help: 'New server certificates published (result="success") and renewals or replaced files refused (result="failure").',
      labelNames: ['result'] as const,
      registers: [options.registry],
    });
    this.renewals.inc({ result: 'success' }, 0);
    this.renewals.inc({ result: 'failure' }, 0);
  }

  /** Starts watching and runs the start-up check (in the background). */
  start(): void {
    this.stopped = false;
    this.lastSignature = this.signature();
    this.rewatch();
    this.schedulePoll();
    this.scheduleCheck(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    for (const timer of [this.checkTimer, this.pollTimer, this.debounceTimer, this.settleTimer]) clearTimeout(timer);
    for (const watcher of this.watchers.values()) watcher.close();
    this.watchers.clear();
    await this.queue;
  }

  /** After SIGHUP: paths or thresholds may have changed. */
  reloaded(): void {
    if (this.stopped) return;
    this.lastSignature = this.signature();
    this.failedSignature = undefined;
    this.rewatch();
    this.schedulePoll();
    this.scheduleCheck(0);
  }

  /** Validates the files of `tls` as a replacement for the served pair (SIGHUP uses this). */
  validate(tls: TlsSettings = this.settings()): LoadedIdentity {
    checkRenewalSettings(tls);
    return validateIdentity(tls, this.requiredSans(tls), this.now());
  }

  /** Publishes a validated identity if it differs from the served one. */
  publish(identity: LoadedIdentity, source: PublishSource): boolean {
    const previous = this.provider.identity.leaf;
    if (!this.provider.publish(identity)) return false;
    this.renewals.inc({ result: 'success' });
    this.failedSignature = undefined;
    this.onPublished(identity, source);
    this.log.info(
      {
        source,
        serial: identity.leaf.serialNumber,
        previous_serial: previous.serialNumber,
        not_after: identity.leaf.validToDate.toISOString(),
      },
      'published new TLS certificate',
    );
    return true;
  }

  private requiredSans(tls: TlsSettings): string[] {
    const configured = configuredSans(tls);
    return configured.length > 0 ? configured : describeCertificate(this.provider.identity.cert).sanStrings;
  }

  private enqueue(task: () => Promise<void> | void): Promise<void> {
    const next = this.queue.then(task).catch((err: unknown) => this.log.error({ err }, 'certificate monitor task failed'));
    this.queue = next;
    return next;
  }

  // ---- expiry checks and renewal ------------------------------------------------

  private scheduleCheck(delayMs: number): void {
    clearTimeout(this.checkTimer);
    if (this.stopped) return;
    this.checkTimer = setTimeout(() => void this.enqueue(() => this.check()), Math.min(Math.max(delayMs, 0), MAX_TIMER_MS));
    this.checkTimer.unref();
  }

  private async check(): Promise<void> {
    if (this.stopped) return;
    const tls = this.settings();
    const intervalMs = tls.renewal.check_interval_seconds * 1000;
    const leaf = this.provider.identity.leaf;
    const dueAt = renewalDueAt(leafTimes(leaf), tls.renewal);
    const now = this.now();
    if (now < dueAt) {
      this.log.debug({ serial: leaf.serialNumber, renew_at: new Date(dueAt).toISOString() }, 'TLS certificate not yet due for renewal');
      this.scheduleCheck(Math.max(MIN_CHECK_DELAY_MS, Math.min(intervalMs, dueAt - now)));
      return;
    }
    if (tls.renewal.mode === 'external') {
      if (this.warnedExternalDue !== leaf.serialNumber) {
        this.warnedExternalDue = leaf.serialNumber;
        this.log.warn(
          { serial: leaf.serialNumber, not_after: leaf.validToDate.toISOString() },
          'TLS certificate is due for renewal; waiting for the external tool to replace the files (tls.renewal.mode external)',
        );
      }
      this.scheduleCheck(intervalMs);
      return;
    }
    await this.renew(tls, leaf, intervalMs);
  }

  private async renew(tls: TlsSettings, leaf: X509Certificate, intervalMs: number): Promise<void> {
    const started = this.now();
    this.log.info({ mode: tls.renewal.mode, serial: leaf.serialNumber, not_after: leaf.validToDate.toISOString() }, 'renewing TLS certificate');
    this.renewing = true;
    let outcome: string;
    try {
      outcome = await renewFiles(tls, this.provider.identity.cert);
      const identity = this.validate(tls);
      if (!this.publish(identity, 'renewal')) throw new Error('renewal left the certificate files unchanged');
      this.lastSignature = this.signature();
    } catch (err) {
      this.renewing = false;
      this.renewalFailures++;
      const retryMs = Math.min(intervalMs, RETRY_BASE_MS * 2 ** (this.renewalFailures - 1));
      this.fail('TLS certificate renewal failed; keeping the current certificate', err, {
        mode: tls.renewal.mode,
        serial: leaf.serialNumber,
        not_after: leaf.validToDate.toISOString(),
        attempt: this.renewalFailures,
        retry_in_seconds: Math.round(retryMs / 1000),
      });
      this.scheduleCheck(retryMs);
      return;
    }
    this.renewing = false;
    this.renewalFailures = 0;
    const next = this.provider.identity.leaf;
    this.onSecurityEvent({
      reason: 'TLS certificate renewed',
      details: { mode: tls.renewal.mode, outcome, serial: next.serialNumber, previous_serial: leaf.serialNumber, not_after: next.validToDate.toISOString(), ms: this.now() - started },
    });
    const nextDue = renewalDueAt(leafTimes(next), tls.renewal);
    if (nextDue <= this.now()) {
      // Renewing again at once would loop: the new certificate is too short-lived for the thresholds.
      this.log.warn(
        { serial: next.serialNumber, not_after: next.validToDate.toISOString() },
        'the renewed TLS certificate is already due for renewal (lifetime shorter than the thresholds); next attempt after check_interval_seconds',
      );
      this.scheduleCheck(intervalMs);
    } else {
      this.scheduleCheck(Math.max(MIN_CHECK_DELAY_MS, Math.min(intervalMs, nextDue - this.now())));
    }
  }

  private fail(message: string, err: unknown, details: Record<string, unknown>): void {
    const problem = err instanceof Error ? err.message : String(err);
    this.renewals.inc({ result: 'failure' });
    this.log.error({ ...details, problem }, message);
    this.onSecurityEvent({ reason: message, details: { ...details, problem } });
  }

  // ---- watching the files -------------------------------------------------------

  private files(): string[] {
    const tls = this.settings();
    return [tls.cert_file, tls.key_file, tls.ca_file, ...(tls.renewal.chain_ca_file ? [tls.renewal.chain_ca_file] : [])].map((file) => resolve(file));
  }

  /** Identity of the files' current contents, cheaply: inode, size and times. */
  private signature(): FileSignature {
    return this.files()
      .map((file) => {
        try {
          const st = statSync(file);
          return `${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
        } catch {
          return 'missing';
        }
      })
      .join('|');
  }

  /**
   * Watches the directories, not the files: replacing a file by rename (as every
   * careful tool does) gives it a new inode, which a file watch would lose.
   */
  private rewatch(): void {
    const files = this.files();
    const names = new Map<string, Set<string>>();
    for (const file of files) {
      const dir = dirname(file);
      const set = names.get(dir) ?? new Set<string>();
      set.add(basename(file));
      names.set(dir, set);
    }
    for (const [dir, watcher] of this.watchers) {
      if (!names.has(dir)) {
        watcher.close();
        this.watchers.delete(dir);
      }
    }
    for (const [dir, wanted] of names) {
      this.watchers.get(dir)?.close();
      try {
        const watcher = watch(dir, { persistent: false }, (_event, filename) => {
          if (filename === null || wanted.has(filename)) this.filesTouched();
        });
        watcher.on('error', (err) => {
          this.log.warn({ dir, err: err.message }, 'certificate directory watch failed; relying on the stat poll');
          watcher.close();
          this.watchers.delete(dir);
        });
        this.watchers.set(dir, watcher);
      } catch (err) {
        this.log.warn({ dir, err: (err as Error).message }, 'cannot watch certificate directory; relying on the stat poll');
      }
    }
  }

  private schedulePoll(): void {
    clearTimeout(this.pollTimer);
    if (this.stopped) return;
    this.pollTimer = setTimeout(() => {
      if (this.signature() !== this.lastSignature) this.filesTouched();
      this.schedulePoll();
    }, this.settings().renewal.file_poll_interval_ms);
    this.pollTimer.unref();
  }

  private filesTouched(): void {
    if (this.stopped) return;
    clearTimeout(this.debounceTimer);
    this.debounceTimer = setTimeout(() => {
      const signature = this.signature();
      if (signature === this.lastSignature || this.renewing) return;
      this.lastSignature = signature;
      clearTimeout(this.settleTimer);
      this.settleAttempt = 0;
      void this.enqueue(() => this.loadChangedFiles(signature));
    }, DEBOUNCE_MS);
    this.debounceTimer.unref();
  }

  private loadChangedFiles(signature: FileSignature): void {
    if (this.stopped || this.renewing || signature !== this.lastSignature) return; // superseded by a newer change
    const tls = this.settings();
    let identity: LoadedIdentity;
    try {
      identity = this.validate(tls);
    } catch (err) {
      const delay = SETTLE_DELAYS_MS[this.settleAttempt];
      if (delay !== undefined) {
        // Probably a rotation in progress (certificate written, key not yet): wait for it.
        this.settleAttempt++;
        this.log.debug({ problem: (err as Error).message, retry_ms: delay }, 'certificate files changed but are not a valid pair yet; waiting');
        clearTimeout(this.settleTimer);
        this.settleTimer = setTimeout(() => void this.enqueue(() => this.loadChangedFiles(signature)), delay);
        this.settleTimer.unref();
        return;
      }
      if (this.failedSignature !== signature) {
        this.failedSignature = signature;
        this.fail('replaced TLS certificate files refused; keeping the current certificate', err, {
          cert_file: tls.cert_file,
          key_file: tls.key_file,
          serial: this.provider.identity.leaf.serialNumber,
        });
      }
      return;
    }
    if (this.publish(identity, 'file-change')) {
      this.onSecurityEvent({
        reason: 'TLS certificate replaced on disk and reloaded',
        details: { serial: identity.leaf.serialNumber, not_after: identity.leaf.validToDate.toISOString() },
      });
      this.scheduleCheck(0);
    }
  }

  /** Publishes `identity` (already validated) from SIGHUP, in order with the monitor's own work. */
  async publishFromReload(identity: LoadedIdentity): Promise<boolean> {
    let published = false;
    await this.enqueue(() => {
      published = this.publish(identity, 'sighup');
      this.lastSignature = this.signature();
    });
    return published;
  }
}
