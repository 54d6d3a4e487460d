// grpc-js writes its own log lines to stderr, and some quote what a caller sent: a header
// value with a byte gRPC does not allow (a tab after `Bearer`, a trailing no-break space)
// is logged whole, token included, as "Failed to add metadata entry <key>: <value>. …".
// Through grpc-js's public setLogger, those lines go into the daemon's log instead, with
// every header value withheld and anything secret-shaped scrubbed (src/audit/redact.ts).
import { format } from 'node:util';
import { setLogger } from '@grpc/grpc-js';
import type { Logger } from 'pino';
import { REDACTED, scrubSecrets } from '../audit/redact.js';

// grpc-js metadata.js (Metadata.fromHttp2Headers and validate): the entry's value, and the
// validation error that repeats it.
const METADATA_ENTRY = /^(Failed to add metadata entry )([^:]{0,100})[^:]*: [\s\S]*$/;
const METADATA_VALUE = /Metadata string value "[\s\S]*" contains illegal characters/g;

/** A grpc-js log line without header values or secret-shaped text. */
export function redactGrpcLogLine(text: string): string {
  const entry = METADATA_ENTRY.exec(text);
  if (entry) {
    const key = JSON.stringify(entry[2] ?? '');
    return `${entry[1] ?? ''}${key}: value ${REDACTED} (it has characters gRPC does not allow; the entry was dropped)`;
  }
  return scrubSecrets(text.replace(METADATA_VALUE, `Metadata string value ${REDACTED} contains illegal characters`));
}

/** Routes grpc-js's log lines (process-wide) into `log`, redacted. */
export function routeGrpcLogs(log: Logger): void {
  const forward = (level: 'error' | 'info' | 'debug') => (message?: unknown, ...rest: unknown[]) => {
    log[level]({ component: 'grpc-js' }, redactGrpcLogLine(format(message, ...rest)));
  };
  setLogger({ error: forward('error'), info: forward('info'), debug: forward('debug') });
}
