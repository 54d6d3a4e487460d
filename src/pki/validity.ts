const DAY_MS = 24 * 60 * 60 * 1000;

/**
 * Backdating for notBefore. Why: a peer whose clock is a little behind ours
 * would otherwise reject a freshly issued cert as "not yet valid".
 */
export const CLOCK_SKEW_MS = 5 * 60 * 1000;

export interface ValidityInput {
  validityDays: number;
  notBefore?: Date | undefined;
  notAfter?: Date | undefined;
  now?: Date | undefined;
}

export interface Validity {
  notBefore: Date;
  notAfter: Date;
}

/** Resolve the validity window; explicit notBefore/notAfter always win. */
export function resolveValidity(input: ValidityInput): Validity {
  if (!Number.isFinite(input.validityDays) || input.validityDays <= 0) {
    throw new Error(`validityDays must be a positive number, got ${input.validityDays}`);
  }
  const now = input.now ?? new Date();
  const notBefore = input.notBefore ?? new Date(now.getTime() - CLOCK_SKEW_MS);
  const notAfter = input.notAfter ?? new Date(now.getTime() + input.validityDays * DAY_MS);
  if (notAfter.getTime() <= notBefore.getTime()) {
    throw new Error(`notAfter (${notAfter.toISOString()}) must be after notBefore (${notBefore.toISOString()})`);
  }
  // X.509 Time cannot express these; fail here rather than with an ASN.1 error.
  if (notBefore.getUTCFullYear() < 1950 || notAfter.getUTCFullYear() > 9999) {
    throw new Error('validity window outside the range X.509 can encode');
  }
  return { notBefore, notAfter };
}

export const daysToMs = (days: number): number => days * DAY_MS;
