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
  /** Sees the final status on its way out. */
  readonly onStatus?: (status: PartialStatusObject, state: CallState | undefined) => void;
}

export function stepInterceptor(step: Step): ServerInterceptor {
  return (method, call) => {
    let state: CallState | undefined;
    const reject = (err: unknown) => call.sendStatus(toStatus(err, state?.traceId ?? newTraceId()));
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, forward) => {
            state = callStateOf(metadata);
            if (!step.onRequest || !state) return forward(metadata);
            const callState = state;
            let pending: void | Promise<void>;
            try {
              pending = step.onRequest(callState, { path: method.path, call, metadata });
            } catch (err) {
              return reject(err);
            }
            if (pending instanceof Promise) pending.then(() => forward(metadata), reject);
            else forward(metadata);
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
