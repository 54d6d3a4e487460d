// The BARE baseline of the chain benchmark (bench/chain.ts), run as its own process:
//   node bench/bare-server.ts '{"caFile":…,"certFile":…,"keyFile":…}'   (after building dist/; node's
//   own type stripping, no tsx)
// A grpc-js server with the daemon's own TLS (src/pki/identity.ts: the dev PKI server
// pair, the CA, client certificates requested but not required), the daemon's own
// grpc-js server options (defaults of src/config/schema.ts), and the project's own
// protobuf-es adapter (src/rpc/adapter.ts) serving TestingService.Echo with the
// daemon's own handler (src/services/testing.ts). No interceptors, no store, no audit, no
// metrics: what remains is grpc-js + TLS + HTTP/2 + protobuf + the adapter + the handler.
// Prints {"port":N} on stdout once bound; exits on SIGTERM.
import { Server } from '@grpc/grpc-js';
import type * as Schema from '../src/config/schema.js';
import type * as TestingPb from '../src/gen/debvisor/testing/v1/testing_pb.js';
import type * as Adapter from '../src/rpc/adapter.js';
import type * as Tls from '../src/pki/identity.js';
import type * as Testing from '../src/services/testing.js';
import type * as Unimplemented from '../src/services/unimplemented.js';
import type * as Options from '../src/daemon/options.js';

// The daemon runs the compiled dist/ (bench/chain.ts builds it first), so the baseline runs
// the very same compiled modules: through tsx they would be transpiled on the fly, with
// esbuild's helpers (__name) on every call, and the comparison would favour the daemon.
const fromDist = (module: string) => import(new URL(`../dist/${module}`, import.meta.url).href);
const { configSchema } = (await fromDist('config/schema.js')) as typeof Schema;
const { TestingService } = (await fromDist('gen/debvisor/testing/v1/testing_pb.js')) as typeof TestingPb;
const { toImplementation, toServiceDefinition } = (await fromDist('rpc/adapter.js')) as typeof Adapter;
const { IdentityProvider, loadIdentity, serverCredentials } = (await fromDist('pki/identity.js')) as typeof Tls;
const { echo } = (await fromDist('services/testing.js')) as typeof Testing;
const { unimplementedHandlers } = (await fromDist('services/unimplemented.js')) as typeof Unimplemented;
const { grpcOptions } = (await fromDist('daemon/options.js')) as typeof Options;
type TlsFiles = Tls.TlsFiles;

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
