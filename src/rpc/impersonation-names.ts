// The impersonation headers and the names they carry: one rule for the daemon's identity
// step, `role bind user:<name>` and debvisorctl's --as flags (issue 21).
import { InvalidArgumentError } from './errors.js';

/** A user or group name: RFC 1123-like, at most 64 characters. */
export const USER_NAME = /^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$/;
export const MAX_GROUPS = 32;
export const MAX_REASON_BYTES = 256;

/** The permission a certificate needs to act for a user (on resource `user:<name>`; proto: AccessService's chain_permissions). */
export const IMPERSONATE_PERMISSION = 'access:impersonate';

export const IMPERSONATION_HEADERS = {
  user: 'impersonate-user',
  group: 'impersonate-group',
  reason: 'impersonate-reason',
  session: 'impersonate-session',
} as const;

export type ImpersonationHeader = (typeof IMPERSONATION_HEADERS)[keyof typeof IMPERSONATION_HEADERS];

/** Principal-id prefixes of impersonated identities; no certificate or key principal may use them. */
export const USER_PREFIX = 'user:';
export const GROUP_PREFIX = 'group:';

/** What an impersonating call claims, as read from its headers (or debvisorctl's flags). */
export interface ImpersonationClaim {
  readonly user?: string | undefined;
  /** Names without the `group:` prefix. */
  readonly groups: readonly string[];
  readonly reason?: string | undefined;
  readonly session?: string | undefined;
}

export interface ImpersonationProblem {
  readonly header: ImpersonationHeader;
  readonly problem: string;
}

// gRPC's ASCII-Value: what a non-binary header may carry at all.
const HEADER_TEXT = /^[\x20-\x7e]*$/;

/**
 * The values of a repeatable header, one per name: HTTP/2 peers join repeated fields into
 * one "a, b" value (Node does), and names never contain commas or spaces.
 */
export function headerValues(values: readonly string[]): string[] {
  return values.flatMap((value) => value.split(',')).map((value) => value.trim());
}

function nameProblem(name: string): string | undefined {
  if (USER_NAME.test(name)) return undefined;
  const shown = JSON.stringify(name.length > 80 ? `${name.slice(0, 80)}…` : name);
  return `${shown} is not a valid name: lower-case letters, digits, "." and "-", starting and ending with a letter or digit, at most 64 characters`;
}

/** The first header that is wrong, or undefined when the claim is well-formed. */
export function impersonationProblem(claim: ImpersonationClaim): ImpersonationProblem | undefined {
  const { user, group, reason, session } = IMPERSONATION_HEADERS;
  if (claim.user === undefined) {
    const stray = claim.groups.length > 0 ? group : claim.reason !== undefined ? reason : claim.session !== undefined ? session : undefined;
    return stray === undefined ? undefined : { header: user, problem: `required with ${stray}` };
  }
  const badUser = nameProblem(claim.user);
  if (badUser) return { header: user, problem: badUser };
  if (claim.groups.length > MAX_GROUPS) return { header: group, problem: `at most ${MAX_GROUPS} groups, got ${claim.groups.length}` };
  for (const name of claim.groups) {
    const badGroup = nameProblem(name);
    if (badGroup) return { header: group, problem: badGroup };
  }
  if (claim.reason !== undefined) {
    if (!HEADER_TEXT.test(claim.reason)) return { header: reason, problem: 'must be printable ASCII' };
    if (Buffer.byteLength(claim.reason) > MAX_REASON_BYTES) return { header: reason, problem: `must be at most ${MAX_REASON_BYTES} bytes` };
  }
  if (claim.session !== undefined && (claim.session === '' || !HEADER_TEXT.test(claim.session))) {
    return { header: session, problem: 'must be a non-empty printable ASCII token' };
  }
  return undefined;
}

/** `user:<name>` of a valid bare name (a request field naming a user); else INVALID_ARGUMENT naming `field`, never echoing the value. */
export function userPrincipalOf(name: string, field: string): string {
  if (!USER_NAME.test(name)) throw new InvalidArgumentError(field, 'must be a user name: lower-case letters, digits, "." and "-", starting and ending with a letter or digit, at most 64 characters');
  return USER_PREFIX + name;
}

/** `user:<name>` → 'user', `group:<name>` → 'group', anything else (certificate and key principals) → undefined. */
export function impersonatedKindOf(principalId: string): 'user' | 'group' | undefined {
  if (principalId.startsWith(USER_PREFIX)) return 'user';
  if (principalId.startsWith(GROUP_PREFIX)) return 'group';
  return undefined;
}

/** For a `user:`/`group:` principal id, what is wrong with its name; undefined for a valid one or another kind of id. */
export function impersonatedPrincipalProblem(principalId: string): string | undefined {
  const kind = impersonatedKindOf(principalId);
  if (kind === undefined) return undefined;
  return nameProblem(principalId.slice(kind === 'user' ? USER_PREFIX.length : GROUP_PREFIX.length));
}
