// The BARE baseline of the chain benchmark (bench/chain.ts), run as its own process:
//   tsx bench/bare-server.ts '{"caFile":…,"certFile":…,"keyFile":…}'
// A grpc-js server with the daemon's own TLS (src/server/tls.ts: the dev PKI server
// pair, the CA, client certificates requested but not required), the daemon's own
// grpc-js server options (defaults of src/config/schema.ts), and the project's own
// protobuf-es adapter (src/server/adapter.ts) serving TestingService.Echo with the
// daemon's own handler (src/services/testing.ts). No interceptors, no store, no audit, no
// metrics: what remains is grpc-js + TLS + HTTP/2 + protobuf + the adapter + the handler.
// Prints {"port":N} on stdout once bound; exits on SIGTERM.
import { Server } from '@grpc/grpc-js';
import { configSchema } from '../src/config/schema.js';
import { TestingService } from '../src/gen/debvisor/testing/v1/testing_pb.js';
import { toImplementation, toServiceDefinition } from '../src/server/adapter.js';
import { IdentityProvider, loadIdentity, serverCredentials, type TlsFiles } from '../src/server/tls.js';
import { echo } from '../src/services/testing.js';
import { unimplementedHandlers } from '../src/services/unimplemented.js';
import { grpcOptions } from '../src/server/options.js';

const files = JSON.parse(process.argv[2] ?? '{}') as TlsFiles;
const defaults = configSchema.parse({}).server;

// The same options Daemon.start passes, at their defaults.
const server = new Server(grpcOptions(defaults));

const handlers = unimplementedHandlers(TestingService, { echo });
server.addService(
  toServiceDefinition(TestingService),
  toImplementation(TestingService, handlers as never, {
    maxDeadlineMs: defaults.max_deadline_seconds * 1000,
    onInternalError: (err) => {
      console.error('internal error', err);
    },
  }),
);

const provider = new IdentityProvider(loadIdentity(files));
server.bindAsync('127.0.0.1:0', serverCredentials(provider), (err, port) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
  process.stdout.write(`${JSON.stringify({ port })}\n`);
});

process.once('SIGTERM', () => {
  server.forceShutdown();
  process.exit(0);
});
