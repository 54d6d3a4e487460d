// Per-call state shared by the interceptor chain and the handler.
// Keyed by the call's Metadata object: grpc-js hands the same object from the
// interceptors to the handler, and no client can forge an object reference,
// so identity never travels in a header.
import type { Metadata } from '@grpc/grpc-js';
import type { CompiledPolicy } from './policy.js';
import type { Principal } from './principal.js';
import type { CountedResource } from './quota-dimensions.js';

export interface CallState {
  readonly traceId: string;
  /** performance.now() when grpc-js created the call (a double: no BigInt per call). */
  readonly startedAt: number;
  /** `/package.Service/Method` */
  readonly path: string;
  readonly peer: string;
  principal?: Principal;
  /** The principal's role names (a user's with its groups'), resolved by the identity and impersonation steps. */
  roles?: readonly string[];
  /** For a user acted for: the impersonating certificate's role names (its rights bound the user's). */
  impersonatorRoles?: readonly string[];
  /** Set by the RBAC step. */
  decision?: 'allow' | 'deny';
  /** The decoded request, kept for the audit record. */
  request?: unknown;
  /** Set when a step ended the call: nothing after it may run. */
  rejected?: boolean;
  /** What the audit step made of the request, kept for the call's second record. */
  audited?: AuditedRequest;
}

/** The request as audit records show it. */
export interface AuditedRequest {
  /** The object acted on, e.g. `pool:ci/vol1@snap`. */
  readonly object: string | undefined;
  /** The redacted request, at audit level `request` only. */
  readonly request: unknown;
}

// A property under a module-private symbol rather than a WeakMap entry (a WeakMap set
// costs ~1 µs per call): only code holding the symbol can read or write it, clients only
// send header strings, and Metadata.clone() does not copy it.
const CALL_STATE = Symbol('debvisor.callState');

interface WithCallState {
  [CALL_STATE]?: CallState;
}

export function attachCallState(metadata: Metadata, state: CallState): void {
  (metadata as WithCallState)[CALL_STATE] = state;
}

export function callStateOf(metadata: Metadata): CallState | undefined {
  return (metadata as WithCallState)[CALL_STATE];
}

/** What a handler sees of its call. */
export interface CallContext {
  readonly traceId: string;
  readonly principal: Principal | undefined;
  /** Absolute deadline, already capped by the server's maximum. */
  readonly deadline: Date;
  /** Aborted when the client cancels or the deadline passes. */
  readonly signal: AbortSignal;
  readonly peer: string;
  /** What the proto declares for this RPC, compiled at start-up (set by the adapter for every RPC that has a policy). */
  readonly policy?: CompiledPolicy;
  /** Quota this call consumed (from the proto option), for work that must give it back if it fails later. */
  readonly quota?: { readonly resource: CountedResource; readonly amount: number };
}
