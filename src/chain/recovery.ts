// Wrapper 2: a throw from the handler's synchronous part becomes INTERNAL with a trace id
// instead of an uncaught exception that kills the daemon (step.ts catches it; the inner
// steps turn their own throws into statuses). The status is seen by observe only.
import { toStatus } from '../rpc/errors.js';
import type { PartialStatusObject } from './step.js';

export function recovery(onPanic: (err: unknown, traceId: string, path: string) => void) {
  return (err: unknown, traceId: string, path: string): PartialStatusObject => {
    onPanic(err, traceId, path);
    return toStatus(err, traceId);
  };
}
