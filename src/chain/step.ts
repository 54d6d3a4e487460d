// The small shape every chain step is written in, so each step file holds only its
// own concern, and the one grpc-js interceptor that runs them all (chain.ts lists them).
//
// The steps share one interceptor instead of one each, and that interceptor is one object
// per call (ChainCall) that is both the call grpc-js's handler side drives and the listener
// of the call beneath it: grpc-js's generic ServerInterceptingCall would cost a responder,
// two listeners and a closure per event on every call. ChainCall keeps its ordering rules:
// a message waits while the headers' steps run, the half-close while either's do, and
// nothing is delivered after a cancel. The order and semantics are those of one
// interceptor per step, outermost first:
//   - headers: observe, then each step's onRequest in order;
//   - request message: each step's onMessage in order, then the handler;
//   - final status: each step's onStatus in reverse order, then observe (always last).
// A step that throws or rejects ends the call: no later step and no handler runs, and the
// status it produced is seen by the steps before it and by observe, not by itself or
// later ones (as if it had been sent from its own layer). A throw from the handler's
// synchronous part (recovery) is seen by observe only. Exempt calls run only their own steps.
import { status as Status, type Metadata, type ServerInterceptingCall, type ServerInterceptor, type ServerInterceptingCallInterface } from '@grpc/grpc-js';
import type { PartialStatusObject } from '@grpc/grpc-js/build/src/call-interface.js';
import type { InterceptingServerListener } from '@grpc/grpc-js/build/src/server-interceptors.js';
import { undecodableError } from '../rpc/adapter.js';
import { toStatus } from '../rpc/errors.js';
import type { CallState } from '../rpc/context.js';
import { newTraceId } from '../rpc/trace.js';
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
  /** The client cancelled the call (end may or may not follow). */
  cancelled?(): void;
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
  /** What an exempt path runs instead (default: nothing). */
  readonly exemptSteps?: (path: string) => readonly Step[];
}

const NO_STEPS: readonly Step[] = [];

/** What ChainCall hands on to the handler side. */
const METADATA = 0;
const MESSAGE = 1;
const HALF_CLOSE = 2;
type HandlerEvent = typeof METADATA | typeof MESSAGE | typeof HALF_CLOSE;

/**
 * One call through the chain: the call grpc-js's handler side sees (it forwards to `call`,
 * the call grpc-js made for the stream) and the listener of `call`. It is also the steps'
 * StepCall. A class, so a call costs one object rather than a closure per event.
 */
class ChainCall implements ServerInterceptingCallInterface, InterceptingServerListener, StepCall {
  state: CallState | undefined;
  /** Set with the headers. */
  metadata!: Metadata;
  message: unknown;
  /** The handler side's listener, from start(). */
  private listener: InterceptingServerListener | undefined;
  private cancelled = false;
  /** A final status went out (a step's refusal, the handler's status, or recovery's): nothing more is sent. */
  private finished = false;
  /** The headers' steps are running: a message and the half-close wait. */
  private headersInSteps = false;
  /** A message's steps are running: the half-close waits. */
  private messageInSteps = false;
  private hasQueuedMessage = false;
  private queuedMessage: unknown;
  private hasQueuedHalfClose = false;

  constructor(
    readonly path: string,
    readonly call: ServerInterceptingCallInterface,
    readonly connection: Connection,
    readonly steps: readonly Step[],
    readonly observed: ObservedCall,
    readonly recover: ChainSpec['recover'],
  ) {}

  // The call, as grpc-js's handler side drives it.

  start(listener: InterceptingServerListener): void {
    this.listener = listener;
    this.call.start(this);
  }

  sendMetadata(metadata: Metadata): void {
    this.call.sendMetadata(metadata);
  }

  sendMessage(message: unknown, callback: () => void): void {
    // A stream refused mid-way (a step refused a later message) may still have the handler
    // answering earlier ones: a write after the status would break the stream before its trailers.
    if (this.finished) {
      callback();
      return;
    }
    this.call.sendMessage(message, callback);
  }

  sendStatus(status: PartialStatusObject): void {
    if (this.finished) return;
    this.finished = true;
    this.statusThrough(status, this.steps.length);
    this.call.sendStatus(this.observed.end(status));
  }

  startRead(): void {
    this.call.startRead();
  }

  getPeer(): string {
    return this.connection.peer;
  }

  getDeadline(): ReturnType<ServerInterceptingCallInterface['getDeadline']> {
    return this.call.getDeadline();
  }

  getHost(): string {
    return this.call.getHost();
  }

  getAuthContext(): ReturnType<ServerInterceptingCallInterface['getAuthContext']> {
    return this.call.getAuthContext();
  }

  getConnectionInfo(): ReturnType<ServerInterceptingCallInterface['getConnectionInfo']> {
    return this.call.getConnectionInfo();
  }

  getMetricsRecorder(): ReturnType<ServerInterceptingCallInterface['getMetricsRecorder']> {
    return this.call.getMetricsRecorder();
  }

  // The listener, as the call beneath drives it.

  onReceiveMetadata(metadata: Metadata): void {
    if (this.cancelled) return;
    const state = (this.state = this.observed.begin(metadata));
    this.metadata = metadata;
    this.headersInSteps = true;
    this.runFrom('request', 0, state);
  }

  onReceiveMessage(message: unknown): void {
    if (this.cancelled || this.state?.rejected) return;
    if (this.headersInSteps) {
      this.queuedMessage = message;
      this.hasQueuedMessage = true;
      return;
    }
    // The headers always come first, so the state exists (their steps set it up).
    const state = this.state as CallState;
    // Bytes that did not decode are the client's fault: no step reads fields of a placeholder.
    const undecodable = undecodableError(message);
    if (undecodable) {
      this.reject(undecodable, this.steps.length);
      return;
    }
    this.message = message;
    this.messageInSteps = true;
    this.runFrom('message', 0, state);
  }

  onReceiveHalfClose(): void {
    if (this.cancelled || this.state?.rejected) return;
    if (this.headersInSteps || this.messageInSteps) {
      this.hasQueuedHalfClose = true;
      return;
    }
    this.deliver(HALF_CLOSE);
  }

  onCancel(): void {
    this.cancelled = true;
    this.observed.cancelled?.();
    this.listener?.onCancel();
  }

  /**
   * Runs one phase's hooks (onRequest on the headers, onMessage on the request) from
   * step `index` on, in order; an async hook resumes the loop when it settles. Then the
   * headers or the message go on to the handler.
   */
  private runFrom(phase: 'request' | 'message', index: number, state: CallState): void {
    const steps = this.steps;
    for (; index < steps.length; index++) {
      if (this.cancelled || state.rejected) return;
      const step = steps[index];
      if (!step) continue;
      let pending: void | Promise<void>;
      try {
        if (phase === 'request') {
          if (!step.onRequest) continue;
          pending = step.onRequest(state, this);
        } else {
          if (!step.onMessage) continue;
          pending = step.onMessage(state, this, this.message);
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
    if (this.cancelled || state.rejected) return;
    if (phase === 'request') this.deliverMetadata();
    else this.deliverMessage();
  }

  private deliverMetadata(): void {
    this.headersInSteps = false;
    this.deliver(METADATA);
    this.deliverQueued();
  }

  private deliverMessage(): void {
    this.messageInSteps = false;
    this.deliver(MESSAGE);
    this.deliverQueued();
  }

  /** What arrived while steps ran, in order: the message (which then takes its own turn), else the half-close. */
  private deliverQueued(): void {
    if (this.hasQueuedMessage) {
      const message = this.queuedMessage;
      this.hasQueuedMessage = false;
      this.queuedMessage = undefined;
      this.onReceiveMessage(message);
    } else if (this.hasQueuedHalfClose) {
      this.hasQueuedHalfClose = false;
      this.onReceiveHalfClose();
    }
  }

  /**
   * Hands one event to the handler side. Step 2: a throw from the handler's synchronous
   * part becomes a status seen by observe only. (An event code, not a closure per event.)
   */
  private deliver(event: HandlerEvent): void {
    const listener = this.listener;
    try {
      if (event === METADATA) listener?.onReceiveMetadata(this.metadata);
      else if (event === MESSAGE) listener?.onReceiveMessage(this.message);
      else listener?.onReceiveHalfClose();
    } catch (err) {
      const status = this.recover(err, this.state?.traceId ?? newTraceId(), this.path);
      if (this.finished) return;
      this.finished = true;
      this.call.sendStatus(this.observed.end(status));
    }
  }

  /**
   * Step `index` refused the call: the steps before it and observe see the status. A throw
   * that is no domain error goes through recovery, which logs its cause with the trace id.
   */
  private reject(err: unknown, index: number): void {
    const state = this.state;
    if (state) state.rejected = true;
    this.headersInSteps = false;
    this.messageInSteps = false;
    const traceId = state?.traceId ?? newTraceId();
    let status: PartialStatusObject = toStatus(err, traceId);
    if (status.code === Status.INTERNAL) status = this.recover(err, traceId, this.path);
    if (this.finished) return;
    this.finished = true;
    this.statusThrough(status, index);
    this.call.sendStatus(this.observed.end(status));
  }

  /** onStatus of steps[0 .. end-1], innermost first. An observer must never change the outcome. */
  private statusThrough(status: PartialStatusObject, end: number): void {
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
      steps = spec.exempt(method.path) ? (spec.exemptSteps?.(method.path) ?? NO_STEPS) : spec.steps;
      stepsByPath.set(method.path, steps);
    }
    const connection = connectionOf(call);
    // grpc-js's ServerInterceptor type names its generic ServerInterceptingCall class, but
    // grpc-js only drives the returned call through ServerInterceptingCallInterface, all of
    // which ChainCall implements; extending that class would cost every call its
    // constructor's fields and responder object, none of which ChainCall uses.
    return new ChainCall(method.path, call, connection, steps, spec.observe(method.path, method.requestStream, method.responseStream, connection), spec.recover) as unknown as ServerInterceptingCall;
  };
}
