// The small shape every chain step is written in, so each step file holds only its
// own concern, and the one grpc-js interceptor that runs them all (chain.ts lists them).
//
// The steps share one interceptor instead of one each: every grpc-js interceptor layer
// costs a ServerInterceptingCall, a listener and their closures per call. The order and
// semantics are those of one interceptor per step, outermost first:
//   - headers: observe, then each step's onRequest in order;
//   - request message: each step's onMessage in order, then the handler;
//   - final status: each step's onStatus in reverse order, then observe (always last).
// A step that throws or rejects ends the call: no later step and no handler runs, and the
// status it produced is seen by the steps before it and by observe, not by itself or
// later ones (as if it had been sent from its own layer). A throw from the handler's
// synchronous part (recovery) is seen by observe only. Exempt calls run no step.
import {
  ServerInterceptingCall,
  type Metadata,
  type ServerInterceptor,
  type ServerInterceptingCallInterface,
} from '@grpc/grpc-js';
import type { PartialStatusObject } from '@grpc/grpc-js/build/src/call-interface.js';
import { toStatus } from '../server/errors.js';
import type { CallState } from '../server/context.js';
import { newTraceId } from '../server/trace.js';
import { connectionOf, type Connection } from './peer.js';

export interface StepCall {
  readonly path: string;
  readonly call: ServerInterceptingCallInterface;
  /** The call's connection: address and verified client certificate, worked out once per connection. */
  readonly connection: Connection;
  readonly metadata: Metadata;
}

export interface Step {
  /** Runs when the request headers arrive. Throw (or reject) to end the call with that error's status. */
  readonly onRequest?: (state: CallState, call: StepCall) => void | Promise<void>;
  /** Runs when the (decoded) request message arrives, before the handler. Throw or reject to end the call. */
  readonly onMessage?: (state: CallState, call: StepCall, message: unknown) => void | Promise<void>;
  /** Sees the final status on its way out. */
  readonly onStatus?: (status: PartialStatusObject, state: CallState | undefined) => void;
}

/** One call as the outermost step (observe.ts) sees it. */
export interface ObservedCall {
  /** The request headers arrived: creates the call's state and attaches it to `metadata`. */
  begin(metadata: Metadata): CallState;
  /** Every final status passes here last; returns the status to send. */
  end(status: PartialStatusObject): PartialStatusObject;
}

export interface ChainSpec {
  /** Step 1: called when grpc-js creates the call, before its headers arrive. */
  readonly observe: (path: string, requestStream: boolean, responseStream: boolean, connection: Connection) => ObservedCall;
  /** Step 2: the status for a throw from the handler's synchronous part. */
  readonly recover: (err: unknown, traceId: string, path: string) => PartialStatusObject;
  /** Steps 3 onwards, outermost first. */
  readonly steps: readonly Step[];
  /** Paths that run none of `steps`. */
  readonly exempt: (path: string) => boolean;
}

const NO_STEPS: readonly Step[] = [];

/** The per-call part of the chain. A class, so a call costs one object rather than a closure per event. */
class ChainCall {
  state: CallState | undefined;
  /** Set with the headers; from then on this object is also the steps' StepCall (no extra object per call). */
  metadata: Metadata | undefined;
  message: unknown;
  forwardMetadata: ((metadata: Metadata) => void) | undefined;
  forwardMessage: ((message: unknown) => void) | undefined;

  constructor(
    readonly path: string,
    readonly call: ServerInterceptingCallInterface,
    readonly connection: Connection,
    readonly steps: readonly Step[],
    readonly observed: ObservedCall,
    readonly recover: ChainSpec['recover'],
  ) {}

  onReceiveMetadata(metadata: Metadata, forward: (metadata: Metadata) => void): void {
    const state = (this.state = this.observed.begin(metadata));
    this.metadata = metadata;
    this.forwardMetadata = forward;
    if (this.steps.length === 0) {
      this.guard(forward, metadata);
      return;
    }
    this.runFrom('request', 0, state);
  }

  /**
   * Runs one phase's hooks (onRequest on the headers, onMessage on the request) from
   * step `index` on, in order; an async hook resumes the loop when it settles. Then the
   * headers or the message go on to the handler.
   */
  runFrom(phase: 'request' | 'message', index: number, state: CallState): void {
    const steps = this.steps;
    const stepCall = this as StepCall;
    for (; index < steps.length; index++) {
      // Later messages of a rejected call must not reach any step or the handler.
      if (phase === 'message' && state.rejected) return;
      const step = steps[index];
      if (!step) continue;
      let pending: void | Promise<void>;
      try {
        if (phase === 'request') {
          if (!step.onRequest) continue;
          pending = step.onRequest(state, stepCall);
        } else {
          if (!step.onMessage) continue;
          pending = step.onMessage(state, stepCall, this.message);
        }
      } catch (err) {
        this.reject(err, index);
        return;
      }
      if (pending instanceof Promise) {
        const at = index;
        pending.then(
          () => this.runFrom(phase, at + 1, state),
          (err: unknown) => this.reject(err, at),
        );
        return;
      }
    }
    if (phase === 'request') this.guard(this.forwardMetadata as (metadata: Metadata) => void, this.metadata as Metadata);
    else if (!state.rejected) this.guard(this.forwardMessage as (message: unknown) => void, this.message);
  }

  onReceiveMessage(message: unknown, forward: (message: unknown) => void): void {
    const state = this.state;
    if (state?.rejected) return;
    this.message = message;
    this.forwardMessage = forward;
    if (this.steps.length === 0 || !state || !this.metadata) {
      this.guard(forward, message);
      return;
    }
    this.runFrom('message', 0, state);
  }


  /** Step 2: a throw from the handler's synchronous part becomes a status seen by observe only. */
  guard<T>(forward: (value: T) => void, value: T): void {
    try {
      forward(value);
    } catch (err) {
      const status = this.recover(err, this.state?.traceId ?? newTraceId(), this.path);
      this.call.sendStatus(this.observed.end(status));
    }
  }

  /** Step `index` refused the call: the steps before it and observe see the status. */
  reject(err: unknown, index: number): void {
    const state = this.state;
    if (state) state.rejected = true;
    const status = toStatus(err, state?.traceId ?? newTraceId());
    this.statusThrough(status, index);
    this.call.sendStatus(this.observed.end(status));
  }

  /** onStatus of steps[0 .. end-1], innermost first. An observer must never change the outcome. */
  statusThrough(status: PartialStatusObject, end: number): void {
    const steps = this.steps;
    for (let index = end - 1; index >= 0; index--) {
      const onStatus = steps[index]?.onStatus;
      if (!onStatus) continue;
      try {
        onStatus(status, this.state);
      } catch {
        // An observer must never change the outcome of a call.
      }
    }
  }
}

/** The whole chain as one grpc-js interceptor. */
export function chainInterceptor(spec: ChainSpec): ServerInterceptor {
  // Decided once per method path (only registered methods reach interceptors, so this stays small).
  const stepsByPath = new Map<string, readonly Step[]>();
  return (method, call) => {
    let steps = stepsByPath.get(method.path);
    if (steps === undefined) {
      steps = spec.exempt(method.path) ? NO_STEPS : spec.steps;
      stepsByPath.set(method.path, steps);
    }
    const connection = connectionOf(call);
    const chainCall = new ChainCall(
      method.path,
      call,
      connection,
      steps,
      spec.observe(method.path, method.requestStream, method.responseStream, connection),
      spec.recover,
    );
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, forward) => chainCall.onReceiveMetadata(metadata, forward),
          onReceiveMessage: (message, forward) => chainCall.onReceiveMessage(message, forward),
          onReceiveHalfClose: (forward) => chainCall.guard(forward, undefined),
        }),
      sendStatus: (status, forward) => {
        chainCall.statusThrough(status, chainCall.steps.length);
        forward(chainCall.observed.end(status));
      },
    });
  };
}
