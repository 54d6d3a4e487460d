// The small shape every chain step is written in, so each step file holds only its
// own concern, and the one grpc-js interceptor that runs them all (chain.ts lists them).
//
// The steps share one interceptor instead of one each: per call, one grpc-js
// ServerInterceptingCall over a responder and a listener built with grpc-js's public
// ResponderBuilder and ServerListenerBuilder from the hooks of one ChainCall. ChainCall keeps its
// ordering rules: a message waits while the headers' steps run, the half-close while
// either's do, and nothing is delivered after a cancel. The order and semantics are those
// of one interceptor per step, outermost first:
//   - headers: observe, then each step's onRequest in order;
//   - request message: each step's onMessage in order, then the handler;
//   - final status: each step's onStatus in reverse order, then observe (always last).
// A step that throws or rejects ends the call: no later step and no handler runs, and the
// status it produced is seen by the steps before it and by observe, not by itself or
// later ones (as if it had been sent from its own layer). A throw from the handler's
// synchronous part (recovery) is seen by observe only. Exactly one final status leaves a
// call; a handler's writes after it are dropped. A step limited by a selector runs only
// for the methods it selects (decided once per method path).
//
// observe (1) and recovery (2) are the chain's two wrappers rather than steps: observe
// makes the call's state before any step and sees every status after all of them, and
// recovery wraps the handler, which no step does.
import { ResponderBuilder, ServerInterceptingCall, ServerListenerBuilder, status as Status, type Metadata, type ServerInterceptor, type ServerInterceptingCallInterface, type ServerListener } from '@grpc/grpc-js';
import { undecodableError } from '../rpc/adapter.js';
import { toStatus } from '../rpc/errors.js';
import type { CallState } from '../rpc/context.js';
import { newTraceId } from '../rpc/trace.js';
import { connectionOf, type Connection } from './peer.js';

/** A status on its way out (code and details; trailers optional), as grpc-js's sendStatus takes it. */
export type PartialStatusObject = Parameters<ServerInterceptingCallInterface['sendStatus']>[0];

export interface StepCall {
  readonly path: string;
  /** The call beneath the chain, as grpc-js made it for the stream. */
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
  /** The method paths the step runs for (asked once per path); every method when absent. */
  readonly methods?: (path: string) => boolean;
}

/** `step`, run only for the method paths `match` selects (and that it selected already, if limited). */
export function selector(match: (path: string) => boolean, step: Step): Step {
  const own = step.methods;
  return { ...step, methods: own ? (path) => own(path) && match(path) : match };
}

/** One call as the outermost wrapper (observe.ts) sees it. */
export interface ObservedCall {
  /** The request headers arrived: creates the call's state and attaches it to `metadata`. */
  begin(metadata: Metadata): CallState;
  /** Every final status passes here last; returns the status to send. */
  end(status: PartialStatusObject): PartialStatusObject;
  /** The client cancelled the call (end may or may not follow). */
  cancelled?(): void;
}

export interface ChainSpec {
  /** Wrapper 1: called when grpc-js creates the call, before its headers arrive. */
  readonly observe: (path: string, requestStream: boolean, responseStream: boolean, connection: Connection) => ObservedCall;
  /** Wrapper 2: the status for a throw from the handler's synchronous part. */
  readonly recover: (err: unknown, traceId: string, path: string) => PartialStatusObject;
  /** Steps 3 onwards, outermost first; each runs for the methods its selector allows. */
  readonly steps: readonly Step[];
}

const REQUEST = 0;
const MESSAGE = 1;
type Phase = typeof REQUEST | typeof MESSAGE;

/**
 * One call through the chain: the hooks of its ServerInterceptingCall's responder and
 * listener, and the steps' StepCall. The hooks are arrow fields (grpc-js calls them
 * detached from their object).
 */
class ChainCall implements StepCall {
  state: CallState | undefined;
  /** Set with the headers. */
  metadata!: Metadata;
  message: unknown;
  private cancelled = false;
  /** A final status went out (a step's refusal, the handler's status, or recovery's): nothing more is sent. */
  private finished = false;
  /** The headers' steps are running: a message and the half-close wait. */
  private headersInSteps = false;
  /** A message's steps are running: the half-close waits. */
  private messageInSteps = false;
  /** What passes the headers, the message and the half-close on to the handler (grpc-js's `next`). */
  private nextMetadata: ((metadata: Metadata) => void) | undefined;
  private nextMessage: ((message: unknown) => void) | undefined;
  /** A message that arrived while the headers' steps ran, with its `next`. */
  private queuedMessage: unknown;
  private queuedNext: ((message: unknown) => void) | undefined;
  /**
   * Client streams (a request stream answered once, UploadImage): the steps read the first message
   * only (its header: the target, the audit object, the bounds of its strings); the later messages
   * (chunks) go on unread, in order, once it has. Bidirectional streams run the steps on every message.
   */
  private firstMessageArrived = false;
  private readonly laterMessages: { message: unknown; next: (message: unknown) => void }[] = [];
  /** The half-close's `next`, when it arrived while steps ran. */
  private queuedHalfClose: (() => void) | undefined;

  constructor(
    readonly path: string,
    readonly call: ServerInterceptingCallInterface,
    readonly connection: Connection,
    readonly steps: readonly Step[],
    readonly observed: ObservedCall,
    readonly recover: ChainSpec['recover'],
    /** A client stream: the steps read its first message only. */
    private readonly stepsOnFirstMessageOnly = false,
  ) {}

  // The responder: what the handler side sends.

  readonly start = (next: (listener?: ServerListener) => void): void => {
    next(
      new ServerListenerBuilder()
        .withOnReceiveMetadata(this.onReceiveMetadata)
        .withOnReceiveMessage(this.onReceiveMessage)
        .withOnReceiveHalfClose(this.onReceiveHalfClose)
        .withOnCancel(this.onCancel)
        .build(),
    );
  };

  readonly sendMessage = (message: unknown, next: (message: unknown) => void): void => {
    // A stream refused mid-way (a step refused a later message) may still have the handler
    // answering earlier ones: a write after the status would break the stream before its
    // trailers. Its callback is dropped with it, as grpc-js drops a write on an ended call;
    // the handler learns of the end from the cancel that follows the status.
    if (!this.finished) next(message);
  };

  readonly sendStatus = (status: PartialStatusObject, next: (status: PartialStatusObject) => void): void => {
    const final = this.finish(status, this.steps.length);
    if (final) next(final);
  };

  // The listener: what the call beneath receives.

  readonly onReceiveMetadata = (metadata: Metadata, next: (metadata: Metadata) => void): void => {
    if (this.cancelled) return;
    const state = (this.state = this.observed.begin(metadata));
    this.metadata = metadata;
    this.nextMetadata = next;
    this.headersInSteps = true;
    this.runFrom(REQUEST, 0, state);
  };

  readonly onReceiveMessage = (message: unknown, next: (message: unknown) => void): void => {
    if (this.cancelled || this.state?.rejected) return;
    if (this.firstMessageArrived && this.stepsOnFirstMessageOnly) {
      this.laterMessages.push({ message, next });
      this.passLaterMessages();
      return;
    }
    this.firstMessageArrived = true;
    if (this.headersInSteps) {
      this.queuedMessage = message;
      this.queuedNext = next;
      return;
    }
    this.takeFirstMessage(message, next);
  };

  /** Passes the later messages of a client stream on, once the first has gone through the steps. */
  private passLaterMessages(): void {
    if (this.headersInSteps || this.messageInSteps || this.queuedNext) return;
    for (let later = this.laterMessages.shift(); later; later = this.laterMessages.shift()) {
      if (this.cancelled || this.state?.rejected) return;
      this.pass(later.next, later.message);
    }
  }

  private takeFirstMessage(message: unknown, next: (message: unknown) => void): void {
    // The headers always come first, so the state exists (their steps set it up).
    const state = this.state as CallState;
    // Bytes that did not decode are the client's fault: no step reads fields of a placeholder.
    const undecodable = undecodableError(message);
    if (undecodable) {
      this.reject(undecodable, this.steps.length);
      return;
    }
    this.message = message;
    this.nextMessage = next;
    this.messageInSteps = true;
    this.runFrom(MESSAGE, 0, state);
  }

  readonly onReceiveHalfClose = (next: () => void): void => {
    if (this.cancelled || this.state?.rejected) return;
    // grpc-js holds a half-close only while a `next` of ours is outstanding, and it would
    // release it with the headers even though a message is still ahead of it here.
    if (this.headersInSteps || this.messageInSteps || this.queuedNext || this.laterMessages.length > 0) {
      this.queuedHalfClose = next;
      return;
    }
    this.pass(next, undefined);
  };

  readonly onCancel = (): void => {
    // grpc-js delivers nothing more and tells the handler side itself.
    this.cancelled = true;
    this.observed.cancelled?.();
  };

  /**
   * Runs one phase's hooks (onRequest on the headers, onMessage on the request) from
   * step `index` on, in order; an async hook resumes the loop when it settles. Then the
   * headers or the message go on to the handler.
   */
  private runFrom(phase: Phase, index: number, state: CallState): void {
    const steps = this.steps;
    for (; index < steps.length; index++) {
      if (this.cancelled || state.rejected) return;
      const step = steps[index];
      if (!step) continue;
      let pending: void | Promise<void>;
      try {
        if (phase === REQUEST) {
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
    if (phase === REQUEST) {
      this.headersInSteps = false;
      this.pass(this.nextMetadata as (metadata: Metadata) => void, this.metadata);
    } else {
      this.messageInSteps = false;
      this.pass(this.nextMessage as (message: unknown) => void, this.message);
    }
    this.passQueued();
  }

  /** What arrived while steps ran, in order: the message (which then takes its own turn), else the half-close. */
  private passQueued(): void {
    const next = this.queuedNext;
    if (next) {
      const message = this.queuedMessage;
      this.queuedNext = undefined;
      this.queuedMessage = undefined;
      this.takeFirstMessage(message, next);
      return;
    }
    this.passLaterMessages();
    const halfClose = this.queuedHalfClose;
    if (halfClose) {
      this.queuedHalfClose = undefined;
      this.onReceiveHalfClose(halfClose);
    }
  }

  /**
   * Hands one event on to the handler side. Wrapper 2: a throw from the handler's
   * synchronous part becomes a status seen by observe only.
   */
  private pass<T>(next: (value: T) => void, value: T): void {
    try {
      next(value);
    } catch (err) {
      const final = this.finish(this.recover(err, this.state?.traceId ?? newTraceId(), this.path), 0);
      if (final) this.call.sendStatus(final);
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
    // Straight to the call beneath: this status was never the handler's to send.
    const final = this.finish(status, index);
    if (final) this.call.sendStatus(final);
  }

  /**
   * The one final status: onStatus of steps[0 .. through-1], innermost first, then observe's
   * end, which gives the status to send. Undefined once a status went out.
   */
  private finish(status: PartialStatusObject, through: number): PartialStatusObject | undefined {
    if (this.finished) return undefined;
    this.finished = true;
    const steps = this.steps;
    for (let index = through - 1; index >= 0; index--) {
      const onStatus = steps[index]?.onStatus;
      if (!onStatus) continue;
      try {
        onStatus(status, this.state);
      } catch {
        // An observer must never change the outcome of a call.
      }
    }
    return this.observed.end(status);
  }
}

/** The whole chain as one grpc-js interceptor. */
export function chainInterceptor(spec: ChainSpec): ServerInterceptor {
  // Decided once per method path (only registered methods reach interceptors, so this stays small).
  const stepsByPath = new Map<string, readonly Step[]>();
  return (method, call) => {
    const path = method.path;
    let steps = stepsByPath.get(path);
    if (steps === undefined) {
      steps = spec.steps.filter((step) => step.methods === undefined || step.methods(path));
      stepsByPath.set(path, steps);
    }
    const connection = connectionOf(call);
    const chainCall = new ChainCall(
      path,
      call,
      connection,
      steps,
      spec.observe(path, method.requestStream, method.responseStream, connection),
      spec.recover,
      method.requestStream && !method.responseStream,
    );
    const responder = new ResponderBuilder().withStart(chainCall.start).withSendMessage(chainCall.sendMessage).withSendStatus(chainCall.sendStatus).build();
    return new ServerInterceptingCall(call, responder);
  };
}
