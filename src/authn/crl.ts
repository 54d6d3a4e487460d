// Certificate revocation lists: the serials a CA has revoked. A CRL is believed only
// when its signature verifies against the trust bundle, it is current (nextUpdate plus
// a grace has not passed) and it is not older than the one loaded (CRL number).
//
// What "reject" means:
// - At start, a CRL that is unsigned, expired or without nextUpdate stops the start.
// - At reload (SIGHUP), such a CRL, or one whose number is lower than the loaded one's
//   (a rollback that would un-revoke certificates), refuses the reload as a whole; the
//   last good CRL stays in force, and /readyz and crl_rejected_total say what was refused.
// - When the loaded CRL itself passes nextUpdate + grace, certificate authentication
//   fails closed: every client certificate is refused (API keys still work) and the
//   daemon reports NOT_SERVING, until a current CRL is loaded. Keeping the old list would
//   silently accept, forever, whatever the CA revoked since; that is what nextUpdate is
//   for (RFC 5280 §5.1.2.5). Recovery on the host: `debvisorctl pki crl --update`, reload.
import { readFileSync } from 'node:fs';
import { Counter, Gauge, type Registry } from 'prom-client';
import { parseCrl, verifyCrl } from '../pki/index.js';
import type { TrustBundle } from '../pki/trust.js';

export type CrlRejection = 'unreadable' | 'signature' | 'no_next_update' | 'expired' | 'rollback';

export class CrlRejectedError extends Error {
  constructor(
    readonly reason: CrlRejection,
    message: string,
  ) {
    super(message);
    this.name = 'CrlRejectedError';
  }
}

export interface LoadedCrl {
  readonly file: string;
  readonly issuer: string;
  readonly number: bigint | undefined;
  readonly nextUpdate: Date;
  /** Serials as normalizeSerialHex spells them, the same form x509.ts compares against. */
  readonly revoked: ReadonlySet<string>;
}

/** Reads `file` and checks its signature against `trust` (not yet its freshness: see Revocation.admit). */
export async function readCrl(file: string, trust: TrustBundle): Promise<LoadedCrl> {
  let pem: string;
  let info;
  try {
    pem = readFileSync(file, 'utf8');
    info = parseCrl(pem);
  } catch (err) {
    const why = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
    throw new CrlRejectedError('unreadable', `CRL ${file} cannot be read: ${why}`);
  }
  let verified = false;
  for (const ca of trust.authorities) {
    if (await verifyCrl(pem, ca.toString())) {
      verified = true;
      break;
    }
  }
  if (!verified) throw new CrlRejectedError('signature', `CRL ${file} is not signed by a CA in the trust bundle`);
  if (!info.nextUpdate) throw new CrlRejectedError('no_next_update', `CRL ${file} has no nextUpdate, so nobody can tell when it stops being current`);
  return { file, issuer: info.issuer, number: info.crlNumber, nextUpdate: info.nextUpdate, revoked: new Set(info.entries.map((entry) => entry.serialNumber)) };
}

/** Asked per call by CertificateAuthenticator: why a verified certificate must still be refused. */
export interface RevocationCheck {
  refusal(serial: string, now: number): string | undefined;
}

export interface RevocationOptions {
  readonly registry: Registry;
  /** Called when the loaded CRL becomes stale (a reason) or current again (undefined). */
  readonly onStale: (reason: string | undefined) => void;
  /** Called with what the last refused CRL was (undefined once a CRL is accepted). */
  readonly onRejected: (reason: string | undefined) => void;
}

// setTimeout's largest delay; a later deadline is re-armed when this one fires.
const MAX_TIMER_MS = 2 ** 31 - 1;

/** The daemon's CRL in force, its freshness, and the metrics about both. */
export class Revocation implements RevocationCheck {
  private current: { crl: LoadedCrl; staleAfter: number } | undefined;
  private timer: NodeJS.Timeout | undefined;
  private stale: string | undefined;
  private readonly rejected: Counter<'reason'>;

  constructor(private readonly options: RevocationOptions) {
    // prom-client calls collect() with the metric as `this`.
    const inForce = () => this.current;
    new Gauge({
      name: 'crl_next_update_timestamp_seconds',
      help: 'nextUpdate of the CRL in force (unix seconds); 0 without a CRL',
      registers: [options.registry],
      collect() {
        this.reset();
        const current = inForce();
        if (current) this.set(current.crl.nextUpdate.getTime() / 1000);
      },
    });
    new Gauge({
      name: 'crl_number',
      help: 'CRL number of the CRL in force; 0 without a CRL or number',
      registers: [options.registry],
      collect() {
        this.reset();
        const number = inForce()?.crl.number;
        if (number !== undefined) this.set(Number(number));
      },
    });
    new Gauge({
      name: 'crl_stale',
      help: '1 while the CRL in force is past nextUpdate plus auth.crl_grace_seconds: client certificates are refused',
      registers: [options.registry],
      collect() {
        const current = inForce();
        this.set(current && Date.now() > current.staleAfter ? 1 : 0);
      },
    });
    this.rejected = new Counter({
      name: 'crl_rejected_total',
      help: 'CRLs refused at start or reload, by reason (unreadable, signature, no_next_update, expired, rollback)',
      labelNames: ['reason'],
      registers: [options.registry],
    });
  }

  get loaded(): LoadedCrl | undefined {
    return this.current?.crl;
  }

  /** Reads and judges `file`; throws CrlRejectedError (counted and reported) if it must not replace the loaded one. */
  async admit(file: string, trust: TrustBundle, graceMs: number, now = Date.now()): Promise<LoadedCrl> {
    try {
      const candidate = await readCrl(file, trust);
      if (now > candidate.nextUpdate.getTime() + graceMs) {
        throw new CrlRejectedError(
          'expired',
          `CRL ${file} expired: nextUpdate ${candidate.nextUpdate.toISOString()} plus a grace of ${graceMs / 1000} s has passed; issue a current one (debvisorctl pki crl --update)`,
        );
      }
      const loaded = this.current?.crl;
      // Numbers are per issuer: a CA rollover starts a new sequence.
      if (loaded?.number !== undefined && loaded.issuer === candidate.issuer) {
        if (candidate.number === undefined || candidate.number < loaded.number) {
          throw new CrlRejectedError(
            'rollback',
            `CRL ${file} has CRL number ${candidate.number ?? 'none'}, lower than the loaded ${loaded.number}: an older CRL would un-revoke certificates; keeping the loaded one`,
          );
        }
      }
      return candidate;
    } catch (err) {
      if (err instanceof CrlRejectedError) {
        this.rejected.inc({ reason: err.reason });
        this.options.onRejected(err.message);
      }
      throw err;
    }
  }

  /** Puts an admitted CRL (or none) in force. */
  install(crl: LoadedCrl | undefined, graceMs: number): void {
    this.current = crl && { crl, staleAfter: crl.nextUpdate.getTime() + graceMs };
    this.options.onRejected(undefined);
    this.evaluate();
  }

  refusal(serial: string, now: number): string | undefined {
    const current = this.current;
    if (!current) return undefined;
    if (now > current.staleAfter) return this.staleReason(current.crl);
    if (current.crl.revoked.has(serial)) return `client certificate serial ${serial} is revoked (CRL)`;
    return undefined;
  }

  stop(): void {
    clearTimeout(this.timer);
  }

  private staleReason(crl: LoadedCrl): string {
    return `CRL ${crl.file} is stale (nextUpdate ${crl.nextUpdate.toISOString()} plus grace has passed): client certificates are refused until a current CRL is loaded`;
  }

  /** Publishes staleness now and arms a timer for the moment it changes. */
  private evaluate(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
    const current = this.current;
    const reason = current && Date.now() > current.staleAfter ? this.staleReason(current.crl) : undefined;
    if (reason !== this.stale) {
      this.stale = reason;
      this.options.onStale(reason);
    }
    if (current && reason === undefined) {
      this.timer = setTimeout(() => this.evaluate(), Math.min(current.staleAfter - Date.now() + 1, MAX_TIMER_MS));
      this.timer.unref();
    }
  }
}
