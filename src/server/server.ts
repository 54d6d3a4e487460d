// Assembles the daemon: TLS identity, the interceptor chain, the services,
// health, reflection and the HTTP side; and takes it down gracefully.
import { once } from 'node:events';
import { Server, type ServerOptions } from '@grpc/grpc-js';
import { HealthImplementation } from 'grpc-health-check';
import type { DescService } from '@bufbuild/protobuf';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import { CertificateAuthenticator } from '../authn/x509.js';
import { buildChain } from '../chain/chain.js';
import { Metrics } from '../observability/metrics.js';
import { createHttpServer, splitHostPort } from '../observability/http.js';
import { API_SERVICES } from '../services/registry.js';
import { accessHandlers } from '../services/access.js';
import { unimplementedHandlers } from '../services/unimplemented.js';
import { toImplementation, toServiceDefinition, type AdapterOptions } from './adapter.js';
import { Readiness } from './readiness.js';
import { reflectionService } from './reflection.js';
import { IdentityProvider, loadIdentity, serverCredentials, type TlsFiles } from './tls.js';
import { openStore } from '../store/open.js';
import { monitorStore } from '../store/monitor.js';
import { startCompactor } from '../store/compactor.js';

function grpcOptions(server: Config['server']): ServerOptions {
  return {
    'grpc.max_receive_message_length': server.max_request_bytes,
    'grpc.max_send_message_length': server.max_response_bytes,
    'grpc.max_concurrent_streams': server.max_concurrent_streams,
    'grpc.keepalive_time_ms': server.keepalive_time_seconds * 1000,
    'grpc.keepalive_timeout_ms': server.keepalive_timeout_seconds * 1000,
    // Bounds how long a connection keeps an old TLS handshake after a certificate rotation.
    'grpc.max_connection_age_ms': server.max_connection_age_seconds * 1000,
    'grpc.max_connection_age_grace_ms': server.max_connection_age_grace_seconds * 1000,
  };
}

function implementedHandlers(service: DescService): Record<string, unknown> {
  switch (service.typeName) {
    case 'debvisor.v1.AccessService':
      return accessHandlers();
    default:
      return {};
  }
}

export class Daemon {
  private constructor(
    private readonly config: Config,
    private readonly log: Logger,
    private readonly grpc: Server,
    private readonly provider: IdentityProvider,
    private readonly certificates: CertificateAuthenticator,
    /** Everything acquired at start, released in reverse order at stop. */
    private readonly resources: AsyncDisposableStack,
    readonly readiness: Readiness,
    readonly grpcPort: number,
    readonly httpPort: number,
  ) {}

  static async start(config: Config, log: Logger): Promise<Daemon> {
    const resources = new AsyncDisposableStack();
    try {
      // Loaded before binding: grpc-js drops every connection until it has an identity.
      const identity = loadIdentity(tlsFilesOf(config));
      const provider = new IdentityProvider(identity);
      const certificates = new CertificateAuthenticator(identity.trust);
      const metrics = new Metrics();
      const health = new HealthImplementation();
      const readiness = new Readiness(['tls', 'store'], health, API_SERVICES.map((service) => service.typeName));

      // An unreachable etcd does not stop the start: the daemon comes up NOT_SERVING and follows the store.
      const store = await openStore(config.store, (err) => log.error({ err }, 'store background task failed'));
      resources.defer(() => store.close());
      const storeMonitor = monitorStore(store, config.store.probe_interval_ms, (reachable, err) => {
        readiness.set('store', reachable);
        if (reachable) log.info({ backend: store.backend }, 'store reachable');
        else log.warn({ backend: store.backend, err: err instanceof Error ? err.message : String(err) }, 'store unreachable; reporting NOT_SERVING');
      });
      resources.defer(() => storeMonitor.stop());
      if (store.backend === 'etcd') {
        const compactor = startCompactor(store, config.store.compaction_interval_seconds * 1000, config.store.retain_revisions, (err) =>
          log.warn({ err }, 'etcd compaction failed'),
        );
        resources.defer(() => compactor.stop());
      }

      const grpc = new Server({ ...grpcOptions(config.server), interceptors: buildChain({ metrics, log, certificates }) });
      const adapterOptions: AdapterOptions = {
        maxDeadlineMs: config.server.max_deadline_seconds * 1000,
        onInternalError: (err, traceId, path) => log.error({ err, trace_id: traceId, method: path }, 'internal error in handler'),
      };
      for (const service of API_SERVICES) {
        const handlers = unimplementedHandlers(service, implementedHandlers(service));
        grpc.addService(toServiceDefinition(service), toImplementation(service, handlers as never, adapterOptions));
      }
      health.addToServer(grpc);
      reflectionService(API_SERVICES).addToServer(grpc);
      const grpcPort = await new Promise<number>((resolve, reject) => {
        grpc.bindAsync(config.server.listen, serverCredentials(provider), (err, port) => (err ? reject(err) : resolve(port)));
      });
      // Only reached on a failed start; a normal stop drains first (see stop()).
      resources.defer(() => grpc.forceShutdown());

      const http = createHttpServer(metrics, readiness);
      const { host, port } = splitHostPort(config.http.listen);
      http.listen(port, host);
      await once(http, 'listening');
      resources.defer(
        () =>
          new Promise<void>((resolve) => {
            http.closeAllConnections();
            http.close(() => resolve());
          }),
      );
      const address = http.address();
      const httpPort = typeof address === 'object' && address ? address.port : port;

      readiness.set('tls', true);
      return new Daemon(config, log, grpc, provider, certificates, resources, readiness, grpcPort, httpPort);
    } catch (err) {
      await resources.disposeAsync();
      throw err;
    }
  }

  /** Re-reads the TLS files; a bad set is refused and the old one keeps serving. */
  reloadTls(): boolean {
    const next = loadIdentity(tlsFilesOf(this.config));
    const changed = this.provider.publish(next);
    if (changed) this.certificates.setTrust(next.trust);
    return changed;
  }

  /**
   * Stops accepting calls, lets in-flight calls finish within the grace period,
   * then cancels whatever is left.
   */
  async stop(graceMs = this.config.server.shutdown_grace_seconds * 1000): Promise<{ forced: boolean }> {
    this.readiness.drain();
    const drained = new Promise<boolean>((resolve) => this.grpc.tryShutdown(() => resolve(true)));
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), graceMs);
    });
    const clean = await Promise.race([drained, expired]);
    clearTimeout(timer);
    if (!clean) this.log.warn({ grace_ms: graceMs }, 'grace period over; cancelling remaining calls');
    await this.resources.disposeAsync();
    return { forced: !clean };
  }
}

function tlsFilesOf(config: Config): TlsFiles {
  return { caFile: config.tls.ca_file, certFile: config.tls.cert_file, keyFile: config.tls.key_file };
}
