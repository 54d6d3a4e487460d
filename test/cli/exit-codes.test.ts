// debvisorctl's exit status from real gRPC failures (src/cli/exit-codes.ts): a real grpc-js
// client against a port nobody listens on (3), a server that never answers (4), a server
// refusing with and without being the daemon (1); usage errors (2). And errors in JSON mode.
import { CredentialFileError } from '../../src/client/credentials.js';
import { createServer } from 'node:net';
import { create } from '@bufbuild/protobuf';
import { credentials, Metadata, Server, ServerCredentials, status as Status, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EXIT, exitCodeOf, UsageError } from '../../src/cli/exit-codes.js';
import { errorDocument } from '../../src/cli/output.js';
import { createClient } from '../../src/client/client.js';
import { AccessService, WhoAmIResponseSchema } from '../../src/gen/debvisor/v1/access_pb.js';
import { toServiceDefinition } from '../../src/rpc/adapter.js';
import { TRACE_ID_KEY } from '../../src/rpc/errors.js';

let server: Server;
let port: number;
/** What WhoAmI does, per test. */
let behaviour: (callback: sendUnaryData<unknown>) => void;

beforeAll(async () => {
  server = new Server();
  server.addService(toServiceDefinition(AccessService), {
    WhoAmI: (_call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => behaviour(callback),
  });
  port = await new Promise<number>((resolve, reject) => server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound))));
});

afterAll(() => server.forceShutdown());

async function callError(address: string, timeoutMs = 10_000): Promise<unknown> {
  const client = createClient(AccessService, { address, credentials: credentials.createInsecure() });
  try {
    await client.whoAmI({}, { timeoutMs });
    return undefined;
  } catch (err) {
    return err;
  } finally {
    client.close();
  }
}

function daemonTrailers(): Metadata {
  const metadata = new Metadata();
  metadata.set(TRACE_ID_KEY, 'abc123');
  return metadata;
}

/** A port that was free a moment ago and is closed now: connecting is refused. */
async function closedPort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const address = probe.address();
  await new Promise((resolve) => probe.close(resolve));
  if (address === null || typeof address === 'string') throw new Error('no port');
  return address.port;
}

describe('exit status of a failed call', () => {
  it('3 when no connection can be made (grpc-js UNAVAILABLE, no daemon trailer)', async () => {
    const err = await callError(`127.0.0.1:${await closedPort()}`);
    expect(err).toMatchObject({ code: Status.UNAVAILABLE });
    expect(exitCodeOf(err)).toBe(EXIT.UNREACHABLE);
  });

  it('4 when the deadline passes (the server holds the call)', async () => {
    behaviour = () => undefined;
    const err = await callError(`127.0.0.1:${port}`, 300);
    expect(err).toMatchObject({ code: Status.DEADLINE_EXCEEDED });
    expect(exitCodeOf(err)).toBe(EXIT.TIMEOUT);
  });

  it('1 when the server refuses, UNAVAILABLE from the daemon included (a backend it cannot ask)', async () => {
    behaviour = (callback) => callback({ code: Status.NOT_FOUND, details: 'no such vm (trace_id=abc123)', metadata: daemonTrailers() });
    const notFound = await callError(`127.0.0.1:${port}`);
    expect(exitCodeOf(notFound)).toBe(EXIT.FAILED);
    expect(errorDocument(notFound)).toEqual({ error: { code: 'NOT_FOUND', message: 'no such vm (trace_id=abc123)', exitCode: 1 } });
    behaviour = (callback) => callback({ code: Status.UNAVAILABLE, details: 'cannot tell whether a VM uses it', metadata: daemonTrailers() });
    expect(exitCodeOf(await callError(`127.0.0.1:${port}`))).toBe(EXIT.FAILED);
    behaviour = (callback) => callback(null, create(WhoAmIResponseSchema, {}));
    expect(await callError(`127.0.0.1:${port}`)).toBeUndefined();
  });

  it('2 for a usage error, 1 for any other local failure', () => {
    expect(exitCodeOf(new UsageError('--force needs --wait'))).toBe(EXIT.USAGE);
    expect(exitCodeOf(new CredentialFileError('API key file /k is readable by others: chmod 600 it'))).toBe(EXIT.USAGE);
    expect(errorDocument(new UsageError('--force needs --wait'))).toEqual({ error: { code: 'USAGE', message: '--force needs --wait', exitCode: 2 } });
    expect(exitCodeOf(new Error('the daemon returned no volume'))).toBe(EXIT.FAILED);
  });
});
