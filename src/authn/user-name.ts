// Users a certificate acts for (impersonation): `user:<name>`, a namespace no certificate or
// API key principal can take.
import { InvalidArgumentError } from '../rpc/errors.js';
import { USER_NAME, USER_PREFIX } from '../rpc/impersonation-names.js';

export const USER_PRINCIPAL_PREFIX = USER_PREFIX;

export function isValidUserName(name: string): boolean {
  return USER_NAME.test(name);
}

/** `user:<name>` of a valid bare name; else INVALID_ARGUMENT naming `field` (never echoing the value). */
export function userPrincipalOf(name: string, field: string): string {
  if (!USER_NAME.test(name)) throw new InvalidArgumentError(field, 'must be a user name: lowercase letters, digits, . and -, starting and ending with a letter or digit, at most 64 characters');
  return USER_PRINCIPAL_PREFIX + name;
}
