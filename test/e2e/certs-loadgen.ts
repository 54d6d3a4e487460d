// Load generator for test/e2e/certs-rotation.test.ts, run as a SEPARATE process
// (`node test/e2e/certs-loadgen.ts '<json options>'`, Node's type stripping): keeps
// `concurrency` WhoAmI calls in flight for `durationMs`, over `channels` client
// channels of which one is replaced by a brand-new connection every
// `rotateChannelMs` (so new TLS handshakes keep happening during the rotation).
// Prints one JSON line: { ok, failed, errors }.
import { readFileSync } from 'node:fs';
import grpc from '@grpc/grpc-js';

interface Options {
  address: string;
  caFile: string;
  certFile: string;
  keyFile: string;
  concurrency: number;
  durationMs: number;
  channels: number;
  rotateChannelMs: number;
}

const options = JSON.parse(process.argv[2] ?? '{}') as Options;
const WHOAMI = '/debvisor.v1.AccessService/WhoAmI';
const credentials = grpc.credentials.createSsl(readFileSync(options.caFile), readFileSync(options.keyFile), readFileSync(options.certFile));
// Own subchannel per client: a new client really opens a new connection.
const newClient = () => new grpc.Client(options.address, credentials, { 'grpc.use_local_subchannel_pool': 1 });

const clients = Array.from({ length: options.channels }, newClient);
let ok = 0;
let failed = 0;
const errors: string[] = [];
const deadline = Date.now() + options.durationMs;

function call(client: grpc.Client): Promise<void> {
  return new Promise((resolve) => {
    client.makeUnaryRequest<Buffer, Buffer>(
      WHOAMI,
      (value) => value,
      (value) => value,
      Buffer.alloc(0),
      new grpc.Metadata(),
      { deadline: Date.now() + 5000 },
      (err) => {
        if (err) {
          failed++;
          if (errors.length < 20) errors.push(`${grpc.status[err.code]}: ${err.details}`);
        } else {
          ok++;
        }
        resolve();
      },
    );
  });
}

async function worker(index: number): Promise<void> {
  let n = index;
  while (Date.now() < deadline) {
    const client = clients[n++ % clients.length];
    if (client) await call(client);
  }
}

let next = 0;
const rotation = setInterval(() => {
  const slot = next++ % clients.length;
  const old = clients[slot];
  clients[slot] = newClient();
  // Calls already started on the old client finish first (deadline 5 s).
  setTimeout(() => old?.close(), 6000).unref();
}, options.rotateChannelMs);

await Promise.all(Array.from({ length: options.concurrency }, (_, i) => worker(i)));
clearInterval(rotation);
for (const client of clients) client.close();
process.stdout.write(`${JSON.stringify({ ok, failed, errors })}\n`);
process.exit(0);
