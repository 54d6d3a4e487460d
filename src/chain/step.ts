// The small shape every chain step is written in, so each step file holds only its
// own concern. It hides grpc-js's interceptor plumbing and turns any throw into a status.
import {
  ServerInterceptingCall,
  type Metadata,
  type ServerInterceptor,
  type ServerInterceptingCallInterface,
} from '@grpc/grpc-js';
import type { PartialStatusObject } from '@grpc/grpc-js/build/src/call-interface.js';
import { toStatus } from '../server/errors.js';
import { callStateOf, type CallState } from '../server/context.js';
import { newTraceId } from '../server/trace.js';

export interface StepCall {
  readonly path: string;
  readonly call: ServerInterceptingCallInterface;
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

/** Runs `work`; continues with `proceed` on success, or ends the call on a throw or rejection. */
function settle(work: () => void | Promise<void>, proceed: () => void, reject: (err: unknown) => void): void {
  let pending: void | Promise<void>;
  try {
    pending = work();
  } catch (err) {
    reject(err);
    return;
  }
  if (pending instanceof Promise) pending.then(proceed, reject);
  else proceed();
}

export function stepInterceptor(step: Step): ServerInterceptor {
  return (method, call) => {
    let state: CallState | undefined;
    let stepCall: StepCall | undefined;
    const reject = (err: unknown) => {
      // Later messages of a rejected call must not reach any step or the handler.
      if (state) state.rejected = true;
      call.sendStatus(toStatus(err, state?.traceId ?? newTraceId()));
    };
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, forward) => {
            state = callStateOf(metadata);
            const current = (stepCall = { path: method.path, call, metadata });
            const callState = state;
            const onRequest = step.onRequest;
            if (!onRequest || !callState) return forward(metadata);
            settle(() => onRequest(callState, current), () => forward(metadata), reject);
          },
          onReceiveMessage: (message, forward) => {
            const callState = state;
            if (callState?.rejected) return;
            const onMessage = step.onMessage;
            if (!onMessage || !callState || !stepCall) return forward(message);
            const current = stepCall;
            settle(
              () => onMessage(callState, current, message),
              () => {
                if (!callState.rejected) forward(message);
              },
              reject,
            );
          },
        }),
      sendStatus: (status, forward) => {
        if (step.onStatus) {
          try {
            step.onStatus(status, state);
          } catch {
            // An observer must never change the outcome of a call.
          }
        }
        forward(status);
      },
    });
  };
}
