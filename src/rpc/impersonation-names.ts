// What an impersonated call may claim about its user: the header names and the rules their
// values follow, shared by the daemon (src/chain/impersonation.ts) and the CLI.
import { UNSAFE_TEXT } from './text.js';

export const IMPERSONATION_HEADERS = {
  user: 'impersonate-user',
  group: 'impersonate-group',
  reason: 'impersonate-reason',
  session: 'impersonate-session',
} as const;

/** A user or group name: RFC 1123-like (lower-case letters, digits, `.` and `-`, alphanumeric at both ends), at most 64 characters. */
export const USER_NAME = /^[a-z0-9]([a-z0-9.-]{0,62}[a-z0-9])?$/;
export const MAX_GROUPS = 32;
export const MAX_REASON_BYTES = 256;

/** The first problem with a claim, naming its header; undefined when it is valid. */
export function impersonationProblem(claim: { readonly user: string; readonly groups: readonly string[]; readonly reason?: string | undefined }): { header: string; message: string } | undefined {
  const nameRule = 'lower-case letters, digits, "." and "-", starting and ending with a letter or digit, at most 64 characters';
  if (!USER_NAME.test(claim.user)) return { header: IMPERSONATION_HEADERS.user, message: `must be a user name: ${nameRule}` };
  if (claim.groups.length > MAX_GROUPS) return { header: IMPERSONATION_HEADERS.group, message: `at most ${MAX_GROUPS} groups` };
  if (claim.groups.some((group) => !USER_NAME.test(group))) return { header: IMPERSONATION_HEADERS.group, message: `each must be a group name: ${nameRule}` };
  const reason = claim.reason;
  if (reason !== undefined && (Buffer.byteLength(reason, 'utf8') > MAX_REASON_BYTES || UNSAFE_TEXT.test(reason))) {
    return { header: IMPERSONATION_HEADERS.reason, message: `must be at most ${MAX_REASON_BYTES} bytes of printable text` };
  }
  return undefined;
}
