// The chain driver (src/chain/step.ts) on a real grpc-js server: steps run in order on the
// way in and in reverse on the way out, a message waits for the headers' (async) steps, a
// refusing step stops everything after it, every final status passes the steps and observe,
// and a step limited by a selector runs only for the methods it selects.
import { Metadata as GrpcMetadata, Server, ServerCredentials, credentials, makeGenericClientConstructor, status as Status, type ClientDuplexStream, type Metadata, type ServerDuplexStream,
  type ServerReadableStream,
  type ClientWritableStream, type ServiceDefinition, type ServiceError } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { chainInterceptor, selector, type PartialStatusObject, type Step } from '../../src/chain/step.js';
import { attachCallState, type CallState } from '../../src/rpc/context.js';
import { RpcError } from '../../src/rpc/errors.js';

const identity = (value: Buffer) => value;
const definition: ServiceDefinition = {
  echo: { path: '/test.Chain/Echo', requestStream: false, responseStream: false, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity },
  chat: { path: '/test.Chain/Chat', requestStream: true, responseStream: true, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity },
  upload: { path: '/test.Chain/Upload', requestStream: true, responseStream: false, requestSerialize: identity, requestDeserialize: identity, responseSerialize: identity, responseDeserialize: identity },
};

const events: string[] = [];
let handlerThrows = false;
/** The paths step C's selector was asked about, each time it was asked. */
const selectorAsked: string[] = [];
const onlyChat = (path: string) => {
  selectorAsked.push(path);
  return path === '/test.Chain/Chat';
};

const step = (name: string, hooks: { request?: 'async' | 'refuse'; message?: 'async' | 'refuse' }): Step => ({
  onRequest: (_state, call) => {
    if (hooks.request === 'refuse' || call.metadata.get('refuse')[0] === `${name}.request`) throw new RpcError('PERMISSION_DENIED', `${name} refused`);
    if (hooks.request !== 'async') {
      events.push(`${name}.request`);
      return undefined;
    }
    return new Promise((resolve) => setTimeout(resolve, 30)).then(() => {
      events.push(`${name}.request`);
    });
  },
  onMessage: (_state, call, message) => {
    if (String(message) === `${name}.stop`) throw new RpcError('RESOURCE_EXHAUSTED', `${name} refused a later message`);
    if (call.metadata.get('refuse')[0] === `${name}.message`) throw new RpcError('PERMISSION_DENIED', `${name} refused`);
    if (call.metadata.get('bug')[0] === `${name}.message`) throw new TypeError(`${name} bug`);
    events.push(`${name}.message:${String(message)}`);
  },
  onStatus: (status: PartialStatusObject) => {
    events.push(`${name}.status:${status.code}`);
  },
});

let server: Server;
let client: InstanceType<ReturnType<typeof makeGenericClientConstructor>>;

beforeAll(async () => {
  server = new Server({
    interceptors: [
      chainInterceptor({
        observe: (path, _requestStream, _responseStream, connection) => ({
          begin: (metadata: Metadata) => {
            const state: CallState = { traceId: 'trace-0001', startedAt: performance.now(), path, peer: connection.peer };
            attachCallState(metadata, state);
            return state;
          },
          end: (status) => {
            events.push(`observe.end:${status.code}`);
            return status;
          },
        }),
        recover: (err, traceId) => {
          events.push(`recover:${traceId}:${err instanceof Error ? err.message : String(err)}`);
          return { code: Status.INTERNAL, details: `recovered: ${err instanceof Error ? err.message : String(err)}` };
        },
        steps: [step('A', { request: 'async' }), step('B', {}), selector(onlyChat, step('C', {}))],
      }),
    ],
  });
  server.addService(definition, {
    echo: (call: { request: Buffer }, callback: (err: Error | null, value?: Buffer) => void) => {
      events.push(`handler:${call.request.toString()}`);
      if (handlerThrows) throw new Error('handler bug');
      callback(null, call.request);
    },
    // Answers each message a turn later, as a handler doing work would: some answers come after a refusal.
    // Joins what it received, in order.
    upload: (stream: ServerReadableStream<Buffer, Buffer>, callback: (err: Error | null, value?: Buffer) => void) => {
      const parts: string[] = [];
      stream.on('data', (message: Buffer) => parts.push(message.toString()));
      stream.on('end', () => {
        events.push(`handler:${parts.join(',')}`);
        callback(null, Buffer.from(parts.join(',')));
      });
    },
    chat: (stream: ServerDuplexStream<Buffer, Buffer>) => {
      stream.on('data', (message: Buffer) => stream.write(message));
      stream.on('error', () => undefined);
      stream.on('end', () => stream.end());
    },
  });
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolve(bound)));
  });
  const Client = makeGenericClientConstructor(definition, 'Chain');
  client = new Client(`127.0.0.1:${port}`, credentials.createInsecure());
});

afterAll(() => {
  client.close();
  server.forceShutdown();
});

function call(text: string, metadata: Record<string, string> = {}): Promise<{ value?: Buffer; err?: ServiceError }> {
  events.length = 0;
  return new Promise((resolve) => {
    const md = new GrpcMetadata();
    for (const [key, value] of Object.entries(metadata)) md.set(key, value);
    (client as unknown as { echo: (r: Buffer, m: Metadata, cb: (err: ServiceError | null, v?: Buffer) => void) => void }).echo(Buffer.from(text), md, (err, value) =>
      resolve(err ? { err } : { value }),
    );
  });
}

describe('chain driver', () => {
  it('runs the headers steps (waiting for an async one) before any message step, then the handler; statuses in reverse', async () => {
    const { value } = await call('hi');
    expect(value?.toString()).toBe('hi');
    expect(events).toEqual(['A.request', 'B.request', 'A.message:hi', 'B.message:hi', 'handler:hi', 'B.status:0', 'A.status:0', 'observe.end:0']);
  });

  it('a step that refuses stops every later step and the handler; only the steps before it see the status', async () => {
    const { err } = await call('x', { refuse: 'B.message' });
    expect(err?.code).toBe(Status.PERMISSION_DENIED);
    expect(events).toEqual(['A.request', 'B.request', 'A.message:x', 'A.status:7', 'observe.end:7']);
    const early = await call('y', { refuse: 'B.request' });
    expect(early.err?.code).toBe(Status.PERMISSION_DENIED);
    expect(events).toEqual(['A.request', 'A.status:7', 'observe.end:7']);
  });

  it('a step that throws something other than a domain error goes through recovery (logged with its trace id) as INTERNAL', async () => {
    const { err } = await call('z', { bug: 'B.message' });
    expect(err?.code).toBe(Status.INTERNAL);
    expect(events).toEqual(['A.request', 'B.request', 'A.message:z', 'recover:trace-0001:B bug', 'A.status:13', 'observe.end:13']);
  });

  it('a throw from a grpc-js handler (grpc-js answers UNKNOWN) still passes every step and observe on its way out', async () => {
    handlerThrows = true;
    try {
      const { err } = await call('boom');
      expect(err?.code).toBe(Status.UNKNOWN);
      expect(events).toEqual(['A.request', 'B.request', 'A.message:boom', 'B.message:boom', 'handler:boom', 'B.status:2', 'A.status:2', 'observe.end:2']);
    } finally {
      handlerThrows = false;
    }
  });

  it('a stream refused mid-way ends with the refusal, although the handler still answers earlier messages', async () => {
    events.length = 0;
    const stream = (client as unknown as { chat: () => ClientDuplexStream<Buffer, Buffer> }).chat();
    const answers: string[] = [];
    stream.on('data', (message: Buffer) => answers.push(message.toString()));
    const ended = new Promise<ServiceError | undefined>((resolve) => {
      stream.on('error', (err: ServiceError) => resolve(err));
      stream.on('status', (status: { code: number }) => {
        if (status.code === (Status.OK as number)) resolve(undefined);
      });
    });
    for (const text of ['one', 'two', 'three', 'B.stop']) stream.write(Buffer.from(text));
    for (let i = 0; i < 100; i++) stream.write(Buffer.from('more'));
    const err = await ended;
    expect(err?.code).toBe(Status.RESOURCE_EXHAUSTED);
    expect(err?.details).toContain('B refused a later message');
    // One final status, seen once by the steps before B and by observe.
    expect(events.filter((event) => event === 'observe.end:8')).toEqual(['observe.end:8']);
    expect(events.filter((event) => event.startsWith('observe.end'))).toHaveLength(1);
    expect(answers.every((answer) => ['one', 'two', 'three', 'more'].includes(answer))).toBe(true);
  });
});

describe('client streams', () => {
  it('run the steps on the first message only; the later ones reach the handler unread, in order, with the half-close after them', async () => {
    events.length = 0;
    const answer = new Promise<string>((resolve, reject) => {
      const stream = (client as unknown as { upload: (cb: (err: ServiceError | null, value?: Buffer) => void) => ClientWritableStream<Buffer> }).upload((err, value) =>
        err ? reject(err) : resolve(value?.toString() ?? ''),
      );
      // Written at once: most arrive while the first is still in step A's async request hook.
      for (const text of ['header', 'B.stop', ...Array.from({ length: 50 }, (_, i) => `chunk${i}`)]) stream.write(Buffer.from(text));
      stream.end();
    });
    const chunks = Array.from({ length: 50 }, (_, i) => `chunk${i}`);
    expect(await answer).toBe(['header', 'B.stop', ...chunks].join(','));
    // "B.stop" would refuse the call had a step read it.
    expect(events.filter((event) => event.includes('.message:'))).toEqual(['A.message:header', 'B.message:header']);
    expect(events.at(-1)).toBe('observe.end:0');
  });
});

describe('selector', () => {
  it('runs a step only for the methods it selects, asking once per method path', async () => {
    await call('one');
    await call('two');
    expect(events).toEqual(['A.request', 'B.request', 'A.message:two', 'B.message:two', 'handler:two', 'B.status:0', 'A.status:0', 'observe.end:0']);
    events.length = 0;
    const stream = (client as unknown as { chat: () => ClientDuplexStream<Buffer, Buffer> }).chat();
    stream.on('data', () => undefined);
    const ended = new Promise<void>((resolve) => stream.on('status', () => resolve()));
    stream.write(Buffer.from('hello'));
    stream.end();
    await ended;
    expect(events).toEqual(['A.request', 'B.request', 'C.request', 'A.message:hello', 'B.message:hello', 'C.message:hello', 'C.status:0', 'B.status:0', 'A.status:0', 'observe.end:0']);
    expect(selectorAsked.filter((path) => path === '/test.Chain/Echo')).toHaveLength(1);
    expect(selectorAsked.filter((path) => path === '/test.Chain/Chat')).toHaveLength(1);
  });

  it('narrows a step already limited: both selectors must select the method', () => {
    const hooks: Step = { onStatus: () => undefined };
    const both = selector((path) => path.startsWith('/a.'), selector((path) => path.endsWith('/Get'), hooks));
    expect(both.onStatus).toBe(hooks.onStatus);
    expect(both.methods?.('/a.S/Get')).toBe(true);
    expect(both.methods?.('/a.S/Put')).toBe(false);
    expect(both.methods?.('/b.S/Get')).toBe(false);
    expect(hooks.methods).toBeUndefined();
  });
});
