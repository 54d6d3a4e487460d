// A credential header with one byte gRPC does not allow (a tab after `Bearer`, a trailing
// no-break space, ...) must not put the token into the daemon's stdout or stderr: grpc-js
// logs such header values whole unless the daemon routes its log (src/observability/grpc-logging.ts).
// The headers are sent over a hand-made TLS + HTTP/2 connection, since a grpc-js client
// refuses to send them.
import { readFile } from 'node:fs/promises';
import { status as Status } from '@grpc/grpc-js';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { clientFor, startDaemon, type RunningDaemon } from '../support/daemon.js';
import { grpcFrom } from '../support/security.js';

const WHOAMI = '/debvisor.v1.AccessService/WhoAmI';
const SLOW = 180_000;

let daemon: RunningDaemon;
let ca: Buffer;

beforeAll(async () => {
  daemon = await startDaemon({ readyTimeoutMs: 150_000 });
  ca = await readFile(daemon.pki.caCert);
}, SLOW);

afterAll(async () => {
  await daemon.cleanup();
});

/** Each header shape, with the token (a valid one) in it. */
function malformed(token: string): Record<string, string>[] {
  return [
    { authorization: `Bearer\t${token}` },
    { authorization: `Bearer ${token}\u00a0` },
    { authorization: `Bearer ${token}\u00ff` },
    { 'x-api-key': `${token}\u00a0` },
    { 'x-api-key': `\t${token}` },
    { 'x-other-header': `${token}\u00a0` },
  ];
}

it('no token from a malformed credential header reaches stdout or stderr', async () => {
  const admin = await clientFor(AccessService, daemon);
  let token: string;
  try {
    token = (await admin.createApiKey({ description: 'leak probe', permissions: ['vm:list'] }, { timeoutMs: 10_000 })).secret;
  } finally {
    admin.close();
  }
  const secret = token.slice(-43);
  const cases = malformed(token);
  for (const headers of cases) {
    const result = await grpcFrom(daemon, '127.0.0.1', WHOAMI, { ca }, headers);
    // The header is dropped, so the call arrives without credentials.
    expect(result.status, JSON.stringify(Object.keys(headers))).toBe(Status.UNAUTHENTICATED);
  }
  // grpc-js logged each dropped entry; the daemon's log has the line, without the value.
  const dropped = () => daemon.logRecords().filter((r) => r.component === 'grpc-js' && String(r.msg).startsWith('Failed to add metadata entry'));
  const line = (header: string) => `Failed to add metadata entry "${header}": value [REDACTED] (it has characters gRPC does not allow; the entry was dropped)`;
  await expect.poll(() => dropped().map((r) => r.msg), { timeout: 60_000 }).toEqual(expect.arrayContaining([line('authorization'), line('x-api-key'), line('x-other-header')]));

  for (const stream of [daemon.stdout(), daemon.stderr()]) {
    expect(stream).not.toContain(secret);
    expect(stream).not.toContain(token.slice(0, 24));
  }
  const audit = await readFile(`${daemon.dir}/audit/rpc-audit.log`, 'utf8');
  expect(audit).not.toContain(secret);
}, SLOW);
