/** Who is calling, as established by an authenticator in the identity step. */
export interface Principal {
  /** spiffe URI, DNS name or CN (certificates); the owning principal (API keys). */
  readonly id: string;
  readonly kind: 'certificate' | 'api_key';
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
}
