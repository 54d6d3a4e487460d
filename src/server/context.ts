// Per-call state shared by the interceptor chain and the handler.
// Keyed by the call's Metadata object: grpc-js hands the same object from the
// interceptors to the handler, and no client can forge an object reference,
// so identity never travels in a header.
import type { Metadata } from '@grpc/grpc-js';
import type { Principal } from '../authn/principal.js';

export interface CallState {
  readonly traceId: string;
  readonly startedAt: bigint;
  /** `/package.Service/Method` */
  readonly path: string;
  readonly peer: string;
  principal?: Principal;
  /** The principal's role names, resolved by the RBAC step. */
  roles?: readonly string[];
  /** Set by the RBAC step. */
  decision?: 'allow' | 'deny';
  /** The decoded request, kept for the audit record. */
  request?: unknown;
  /** Set when a step ended the call: nothing after it may run. */
  rejected?: boolean;
}

const states = new WeakMap<Metadata, CallState>();

export function attachCallState(metadata: Metadata, state: CallState): void {
  states.set(metadata, state);
}

export function callStateOf(metadata: Metadata): CallState | undefined {
  return states.get(metadata);
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
  /** Quota this call consumed (from the proto option), for work that must give it back if it fails later. */
  readonly quota?: { readonly resource: 'snapshots' | 'storage_gb'; readonly amount: number };
}
