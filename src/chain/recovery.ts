// Step 2: a throw from any inner step or the handler's synchronous part becomes
// INTERNAL with a trace id instead of an uncaught exception that kills the daemon.
import { ServerInterceptingCall, type ServerInterceptor } from '@grpc/grpc-js';
import { toStatus } from '../server/errors.js';
import { callStateOf } from '../server/context.js';
import { newTraceId } from '../server/trace.js';

export function recovery(onPanic: (err: unknown, traceId: string, path: string) => void): ServerInterceptor {
  return (method, call) => {
    let traceId: string | undefined;
    const guard = (fn: () => void) => {
      try {
        fn();
      } catch (err) {
        const id = traceId ?? newTraceId();
        onPanic(err, id, method.path);
        call.sendStatus(toStatus(err, id));
      }
    };
    return new ServerInterceptingCall(call, {
      start: (next) =>
        next({
          onReceiveMetadata: (metadata, forward) => {
            traceId = callStateOf(metadata)?.traceId;
            guard(() => forward(metadata));
          },
          onReceiveMessage: (message, forward) => guard(() => forward(message)),
          onReceiveHalfClose: (forward) => guard(() => forward()),
        }),
    });
  };
}
