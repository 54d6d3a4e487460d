/**
 * A certificate acting for a user (the impersonation step): who acts, and what the call
 * claims about the user. The user's rights are intersected with `by`'s.
 */
export interface Delegation {
  /** The certificate principal acting for the user. */
  readonly by: Principal;
  /** The user's groups, as `group:<name>`, sorted and unique. */
  readonly groups: readonly string[];
  /** The impersonate-reason header, if any. */
  readonly reason?: string;
  /** The user session the call presented, if any. */
  readonly sessionId?: string;
}

/** Who is calling, as established by an authenticator in the identity step. */
export interface Principal {
  /** spiffe URI, DNS name or CN (certificates); the owning principal (API keys); `user:<name>` (users). */
  readonly id: string;
  readonly kind: 'certificate' | 'api_key' | 'user';
  readonly certificate?: {
    /** SHA-256 of the DER certificate, lowercase hex without colons (as audit records and WhoAmI show it). */
    readonly fingerprintSha256: string;
    readonly serialNumber: string;
    readonly notAfter: Date;
  };
  /** Set when an API key authenticated the call: the key's own restrictions. */
  readonly apiKey?: {
    readonly id: string;
    readonly permissions: readonly string[];
    readonly resourceGlobs: readonly { readonly kind: string; readonly glob: string }[];
  };
  /** Set when a certificate acts for this user (kind `user`). */
  readonly delegation?: Delegation;
}
