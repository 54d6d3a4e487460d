// Assembles the daemon: TLS identity, the interceptor chain, the services,
// health, reflection and the HTTP side; and takes it down gracefully.
import { once } from 'node:events';
import { Server, ServerCredentials } from '@grpc/grpc-js';
import { grpcOptions } from './options.js';
import { HealthImplementation } from 'grpc-health-check';
import type { Logger } from 'pino';
import type { Config } from '../config/schema.js';
import { parseCephMonitor } from '../config/ceph-monitor.js';
import { CertificateAuthenticator } from '../authn/x509.js';
import { buildChain } from '../chain/chain.js';
import { SecurityAlerts } from '../events/security-alerts.js';
import { NodeTransitions } from '../nodes/transitions.js';
import { Metrics } from '../observability/metrics.js';
import { createHttpServer, splitHostPort } from '../observability/http.js';
import { API_SERVICES } from '../services/registry.js';
import { accessHandlers } from '../services/access.js';
import { sessionHandlers } from '../services/access-sessions.js';
import { UserSessions } from '../access/sessions.js';
import { VERSION } from '../version.js';
import { blockHandlers } from '../services/access-blocks.js';
import { backupHandlers } from '../services/store-backup.js';
import { AccessService } from '../gen/debvisor/v1/access_pb.js';
import { AccessAdmin } from '../access/admin.js';
import { AccessState } from '../access/state.js';
import { DEFAULT_FLOOD_LIMITS } from '../audit/flood.js';
import { AuditLog } from '../audit/log.js';
import { ApiKeyAuthenticator } from '../authn/apikey.js';
import { UserSessionAuthenticator } from '../authn/user-session.js';
import { Revocation } from '../authn/crl.js';
import { SourceGuard } from '../authn/source-guard.js';
import { createRepositories } from '../store/repositories.js';
import { methodIndex, type PolicyIndex } from '../rpc/policy.js';
import { PermissionCatalogue } from '../authz/catalogue.js';
import { methodPath } from '../rpc/policy.js';
import type { DescService } from '@bufbuild/protobuf';
import { OperationService } from '../gen/debvisor/v1/operation_pb.js';
import { TestingService } from '../gen/debvisor/testing/v1/testing_pb.js';
import { operationHandlers } from '../services/operations.js';
import { registerShutdownOperationKind, vmHandlers } from '../services/vm.js';
import { VmService } from '../gen/debvisor/v1/vm_pb.js';
import { StorageService } from '../gen/debvisor/v1/storage_pb.js';
import { registerStorageOperationKinds, storageHandlers } from '../services/storage.js';
import { ImageService } from '../gen/debvisor/v1/image_pb.js';
import { imageHandlers, registerImageOperationKinds } from '../services/image.js';
import { createImageLibrary } from '../images/setup.js';
import { validateImageUrl } from '../images/fetch.js';
import { libvirtAttachments } from '../storage/attachments.js';
import { createStorage } from '../storage/setup.js';
import { VmProvisioning } from '../vms/provisioning.js';
import { CloudInitSeeds } from '../vms/cloud-init.js';
import { VmUpdates } from '../vms/update.js';
import { registerVmProvisioningKinds, vmProvisioningHandlers } from '../services/vm-provisioning.js';
import { NodeService } from '../gen/debvisor/v1/node_pb.js';
import { nodeHandlers } from '../services/node.js';
import { NodeRegistry } from '../nodes/registry.js';
import { startSelfRegistration } from '../nodes/self.js';
import { MigrationService } from '../gen/debvisor/v1/migration_pb.js';
import { migrationHandlers, registerMigrationOperationKinds } from '../services/migration.js';
import { NodeConnections } from '../migration/connections.js';
import { VmInventory } from '../migration/inventory.js';
import { Libvirt } from '../backends/libvirt/virsh.js';
import { HostNetworks } from '../backends/libvirt/networks.js';
import { VmSnapshotOwners } from '../vms/snapshot-owners.js';
import { VmLiveInventory } from '../vms/inventory.js';
import { registerTestOperationKind, TestLatches, testingHandlers } from '../services/testing.js';
import { OperationManager } from '../operations/manager.js';
import { QuotaManager } from '../quota/manager.js';
import { withQuota } from '../quota/guard.js';
import { withIdempotency } from '../operations/idempotency.js';
import type { Store } from '../store/store.js';
import { RecordCache } from '../store/cache.js';
import { LeaseHolder } from '../store/lease-holder.js';
import { createExecutor } from '../backends/exec.js';
import { newTraceId } from '../rpc/trace.js';
import { ConfigError } from '../config/load.js';
import { unimplementedHandlers } from '../services/unimplemented.js';
import { toImplementation, toServiceDefinition, type AdapterOptions } from '../rpc/adapter.js';
import { Readiness } from '../observability/readiness.js';
import { reflectionService } from './reflection.js';
import { IdentityProvider } from '../pki/identity.js';
import { ConnectionListener } from './connections.js';
import { CertMonitor, initialIdentity } from '../pki/monitor.js';
import { openStore } from '../store/open.js';
import { monitorStore } from '../store/monitor.js';
import { startCompactor } from '../store/compactor.js';
import { eventServiceHandlers, openJournal } from './events.js';
import type { EventJournal } from '../events/journal.js';
import { EventService } from '../gen/debvisor/v1/event_pb.js';


export interface StartOptions {
  /** Registers debvisor.testing.v1.TestingService (tests only). */
  readonly enableTestService?: boolean;
}

/**
 * What the proto declares around every handler: a retried request_id gets the first
 * reply, and a declared quota is consumed before the handler runs (retries consume nothing).
 */
function withDeclaredPolicies(service: DescService, handlers: Record<string, unknown>, methods: PolicyIndex, quotas: QuotaManager, store: Store, log: Logger): Record<string, unknown> {
  const wrapped = { ...handlers };
  for (const method of service.methods) {
    const policy = methods.get(methodPath(method));
    const handler = wrapped[method.localName];
    if (policy && typeof handler === 'function') {
      wrapped[method.localName] = withIdempotency(store, policy, withQuota(quotas, policy, handler as Parameters<typeof withQuota>[2]), { log });
    }
  }
  return wrapped;
}

export class Daemon {
  private constructor(
    /** The current config; SIGHUP swaps it, and everything reading settings() sees the new one. */
    private readonly live: { config: Config },
    private readonly log: Logger,
    private readonly grpc: Server,
    private readonly provider: IdentityProvider,
    private readonly certificates: CertificateAuthenticator,
    private readonly revocation: Revocation,
    private readonly access: AccessState,
    private readonly audit: AuditLog,
    private readonly certMonitor: CertMonitor,
    private readonly listener: ConnectionListener,
    /** Everything acquired at start, released in reverse order at stop. */
    private readonly resources: AsyncDisposableStack,
    readonly readiness: Readiness,
    readonly grpcPort: number,
    readonly httpPort: number,
    private readonly events: EventJournal,
  ) {}

  static async start(config: Config, log: Logger, options: StartOptions = {}): Promise<Daemon> {
    const live = { config };
    const settings = () => live.config;
    const resources = new AsyncDisposableStack();
    const stopping = new AbortController();
    resources.defer(() => stopping.abort());
    try {
      // Loaded before binding: grpc-js drops every connection until it has an identity.
      const identity = await initialIdentity(config.tls, log);
      const provider = new IdentityProvider(identity);
      const metrics = new Metrics();
      const health = new HealthImplementation();
      // libvirt gates VmService alone: a host whose libvirtd is down still serves everything else.
      const readiness = new Readiness(['tls', 'store', 'access', 'libvirt'], health, API_SERVICES.map((service) => service.typeName), metrics.registry, {
        serviceComponents: { [VmService.typeName]: ['libvirt'] },
      });
      const revocation = new Revocation({
        registry: metrics.registry,
        onStale: (reason) => {
          readiness.set('crl', reason === undefined, reason);
          if (reason !== undefined) log.error({ problem: reason }, 'CRL is stale; refusing every client certificate');
        },
        onRejected: (reason) => readiness.note('crl', reason && `refused: ${reason}`),
      });
      resources.defer(() => revocation.stop());
      const graceMs = config.auth.crl_grace_seconds * 1000;
      revocation.install(config.auth.crl_file ? await revocation.admit(config.auth.crl_file, identity.trust, graceMs) : undefined, graceMs);
      const certificates = new CertificateAuthenticator(identity.trust, revocation);

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

      // Every source publishes into the journal; it follows the store into each daemon's streams.
      const events = openJournal(store, config.node.name, settings, log);
      resources.defer(() => events.stop());
      const audit = await AuditLog.open({
        path: config.audit.path,
        hmacKeyFile: config.audit.hmac_key_file,
        retainFiles: config.audit.retain_files,
        onWriteFailure: (err) => {
          metrics.auditWriteFailures.inc(err.events);
          log.error({ err: err.message }, 'audit write failed');
        },
        onWarning: (message, err) => log.warn({ err }, message),
        reserveBytes: config.audit.reserve_free_bytes,
        floodLimits: {
          recordsPerSource: config.audit.unauthenticated_records_per_source,
          intervalMs: config.audit.unauthenticated_interval_seconds * 1000,
          maxSources: DEFAULT_FLOOD_LIMITS.maxSources,
        },
        onDropped: (count) => metrics.auditRecordsDropped.inc(count),
        onFreeSpace: (free, low) => {
          metrics.auditFreeBytes.set(free);
          metrics.auditLowSpace.set(low ? 1 : 0);
        },
        onReopen: () => metrics.auditReopens.inc(),
        onSecurityRecord: new SecurityAlerts({ sink: events, node: config.node.name, registry: metrics.registry }).record,
      });
      resources.defer(() => audit.close());
      const certMonitor = new CertMonitor({
        settings: () => live.config.tls,
        provider,
        log,
        registry: metrics.registry,
        onPublished: (published) => certificates.setTrust(published.trust),
        onSecurityEvent: (event) => audit.write({ type: 'SECURITY', trace_id: newTraceId(), reason: event.reason, details: event.details }),
      });
      resources.defer(() => certMonitor.stop());

      const repos = createRepositories(store);
      const onAccessProblem = (err: unknown) => log.warn({ err: err instanceof Error ? err.message : String(err) }, 'access state: store problem, resyncing');
      const access = new AccessState(repos, config.auth, onAccessProblem);
      const daemonLease = new LeaseHolder(store, config.operations.slot_lease_seconds, log);
      resources.defer(() => daemonLease.release());
      const quotas = new QuotaManager(store, repos, settings, () => daemonLease.lease(), events);
      const operationsCache = new RecordCache(repos.operations, onAccessProblem);
      const operations = new OperationManager(repos, operationsCache, quotas, config.node.name, log, () => settings().operations.retention_hours * 3_600_000, events);
      resources.defer(() => operations.stop());
      // Until keys, bindings and operations are loaded, only bootstrap admins would be recognised: stay NOT_SERVING.
      void Promise.all([access.start(stopping.signal), operationsCache.start(stopping.signal)])
        .then(() => operations.recover())
        .then(() => warnUnknownConfigRoles(access, log))
        .then(() => readiness.set('access', true))
        .catch((err: unknown) => log.error({ err }, 'could not load access state and operations'));
      const apiKeys = new ApiKeyAuthenticator(access.apiKeys, repos.apiKeys, onAccessProblem);
      resources.defer(() => apiKeys.close());
      const userSessions = new UserSessionAuthenticator(access.userSessions);
      const guard = new SourceGuard({
        maxFailures: config.auth.max_failures_per_minute,
        maxKeyFailures: config.auth.max_key_failures_per_minute,
        windowMs: config.auth.failure_window_seconds * 1000,
        blockMs: config.auth.block_minutes * 60_000,
        registry: metrics.registry,
      });

      // The test service exists only when asked for twice: a flag and an environment variable.
      const services = options.enableTestService ? [...API_SERVICES, TestingService] : API_SERVICES;
      const methods = methodIndex(services);
      // The listener is ours (caps and timeouts, connections.ts); grpc-js gets secured sockets.
      // The chain reports calls to it, and it is made from the server the chain goes into.
      const late: { listener?: ConnectionListener } = {};
      const calls = {
        callStarted: (peer: string) => late.listener?.callStarted(peer),
        callEnded: (peer: string, authenticated: boolean) => late.listener?.callEnded(peer, authenticated),
      };
      const grpc = new Server({
        ...grpcOptions(config.server),
        interceptors: buildChain({
          metrics,
          log,
          identity: { certificates, apiKeys, guard, audit, metrics, log, roleNamesOf: (principal) => access.roleNamesOf(principal) },
          impersonation: {
            settings: () => settings().auth.impersonation,
            roleNamesOf: (principal) => access.roleNamesOf(principal),
            roleNamesOfPrincipal: (principal) => access.roleNamesOfPrincipal(principal),
            roles: (names) => access.roles(names),
            isBootstrapAdmin: (id) => access.isBootstrapAdmin(id),
            verifySession: (token, expect, nowMs) => userSessions.verify(token, expect, nowMs),
            audit,
            metrics,
            sessionlessMethods: new Set([methodPath(AccessService.method.createUserSession)]),
          },
          audit: { audit, level: config.audit.level, methods, log },
          bounds: { methods },
          rateLimit: {
            methods,
            metrics,
            settings: () => settings().rate_limit,
          },
          rbac: { methods, roles: (names) => access.roles(names), isBootstrapAdmin: (id) => access.isBootstrapAdmin(id), audit, metrics },
          exempt: { metrics, reflection: config.server.reflection, perMinute: () => settings().rate_limit.anonymous_per_source_per_minute,
            onRefused: (peer) => late.listener?.sourceLimited(peer),
          },
          calls,
        }),
      });
      const adapterOptions: AdapterOptions = {
        maxDeadlineMs: config.server.max_deadline_seconds * 1000,
        onInternalError: (err, traceId, path) => log.error({ err, trace_id: traceId, method: path }, 'internal error in handler'),
        policies: methods,
      };
      const admin = new AccessAdmin(repos, access, audit, settings, quotas, PermissionCatalogue.of(methods.values()), events);
      const libvirt = new Libvirt({
        uri: config.libvirt.uri,
        virshPath: config.libvirt.virsh_path,
        maxConcurrent: config.libvirt.max_concurrent,
        defaultTimeoutMs: config.libvirt.command_timeout_seconds * 1000,
        registry: metrics.registry,
      });
      const liveInventory = new VmLiveInventory({
        libvirt,
        node: () => config.node.name,
        log,
        registry: metrics.registry,
        settings: () => {
          const inventory = settings().libvirt.inventory;
          return {
            resyncIntervalMs: inventory.resync_interval_seconds * 1000,
            maxStalenessMs: inventory.max_staleness_seconds * 1000,
            attributionWindowMs: inventory.attribution_window_seconds * 1000,
            subscriptionBackoffMaxMs: inventory.subscription_backoff_max_seconds * 1000,
          };
        },
        events,
        onHealth: (healthy, detail) => readiness.set('libvirt', healthy, detail),
      });
      liveInventory.start();
      resources.defer(() => liveInventory.stop());
      registerShutdownOperationKind(operations, libvirt);
      const snapshotOwners = new VmSnapshotOwners(repos, libvirt, () => config.node.name);
      quotas.registerUsageSource(['snapshots'], async (principal, options) => ({ snapshots: await snapshotOwners.countOwnedBy(principal, options) }));
      const storage = createStorage(config, settings, quotas, metrics.registry, libvirtAttachments(libvirt), events);
      const images = createImageLibrary({ config, settings, repos, quotas, inspector: storage.imageTool(), registry: metrics.registry, log });
      registerStorageOperationKinds(operations, storage, images);
      registerImageOperationKinds(operations, images);
      const vmDefaults = () => {
        const d = settings().libvirt.vm_defaults;
        const rbdId = settings().rbd.id;
        return {
          domainType: d.domain_type,
          machineType: d.machine_type,
          cpuMode: d.cpu_mode,
          rbdAuth: d.rbd_secret_uuid ? { username: rbdId || 'admin', secretUuid: d.rbd_secret_uuid } : undefined,
          // Validated by the config schema: every entry parses.
          rbdMonitors: d.rbd_monitors.flatMap((text) => parseCephMonitor(text) ?? []),
        };
      };
      if (config.rbd.ceph_conf !== '' && config.rbd.ceph_conf !== '/etc/ceph/ceph.conf' && config.libvirt.vm_defaults.rbd_monitors.length === 0) {
        log.warn({ ceph_conf: config.rbd.ceph_conf }, 'libvirt.vm_defaults.rbd_monitors is empty: QEMU finds the monitors of RBD disks in /etc/ceph/ceph.conf, not in rbd.ceph_conf');
      }
      // This node's libvirt networks and host bridges: ListNetworks, and the check of a new VM's NICs.
      const hostNetworks = new HostNetworks({ libvirt });
      // CreateVm validates interfaces against what ListNetworks shows (kind "libvirt" is a network).
      const vmNetworks = async (o: { signal?: AbortSignal }) => (await hostNetworks.list(o)).map((n) => ({ name: n.name, kind: n.kind === 'libvirt' ? ('network' as const) : ('bridge' as const) }));
      const seeds = new CloudInitSeeds({
        dir: config.vms.cloud_init_dir,
        genisoimagePath: config.vms.genisoimage_path,
        readableByAll: config.vms.cloud_init_readable_by_all,
        registry: metrics.registry,
      });
      const provisioning = new VmProvisioning({
        libvirt,
        inventory: liveInventory,
        storage,
        quotas,
        allows: (principal, permission, resources) => access.allows(principal, permission, resources),
        networks: vmNetworks,
        seeds,
        defaults: vmDefaults,
        images,
      });
      registerVmProvisioningKinds(operations, provisioning);
      // Other nodes' VMs as their heartbeats published them (on a shared etcd; none on the embedded store).
      quotas.registerUsageSource(['vms', 'vcpus', 'memory_gb'], async (principal) => {
        const published = (await repos.vmInventory.all()).map((record) => record.value);
        return provisioning.countOwnedBy(principal, config.node.name, published);
      });
      const nodes = new NodeRegistry(store, repos, () => settings().nodes.heartbeat_interval_seconds);
      void new NodeTransitions(store, repos, events, log).run(stopping.signal).catch((err: unknown) => log.error({ err }, 'node transitions stopped; NODE_ONLINE/NODE_OFFLINE are not published'));
      const inventory = new VmInventory(repos.vmInventory);
      const migration = {
        nodes,
        inventory,
        operations,
        log,
        connections: new NodeConnections(libvirt, config.node.name, () => settings().migration.target_uri_template),
        settings: () => ({ progressPollMs: settings().migration.progress_poll_ms, timeoutMs: settings().migration.timeout_seconds * 1000 }),
      };
      registerMigrationOperationKinds(operations, migration);
      const implemented: Record<string, Record<string, unknown>> = {
        [AccessService.typeName]: accessHandlers(
          admin,
          access,
          blockHandlers({ guard, audit, roleNamesOf: (principal) => access.roleNamesOf(principal) }),
          backupHandlers(store, `debvisor-rpcd ${VERSION} on ${config.node.name}`),
          sessionHandlers(new UserSessions(repos, access, audit, settings)),
        ),
        [OperationService.typeName]: operationHandlers(operations, access),
        [VmService.typeName]: vmHandlers({
          libvirt,
          inventory: liveInventory,
          operations,
          quotas,
          snapshotOwners,
          node: () => config.node.name,
          provisioning: vmProvisioningHandlers({ provisioning, updates: new VmUpdates({ libvirt, inventory: liveInventory, storage, quotas, allows: (principal, permission, resources) => access.allows(principal, permission, resources), networks: vmNetworks, provisioning }), operations, libvirt, storage }),
        }),
        [StorageService.typeName]: storageHandlers({ storage, operations, images }),
        [ImageService.typeName]: imageHandlers({
          library: images,
          operations,
          validateUrl: (url, field) => void validateImageUrl(url, field),
          allowedFormats: () => settings().images.allowed_formats,
        }),
        [NodeService.typeName]: nodeHandlers(nodes, hostNetworks),
        [MigrationService.typeName]: migrationHandlers(migration),
        [EventService.typeName]: eventServiceHandlers(events, settings, methods, access, revocation, metrics.registry),
      };
      if (config.nodes.self_register) {
        // Each heartbeat also publishes this node's VM definitions: FailoverVM's source once this node is gone.
        const stopSelf = startSelfRegistration(nodes, config.node.name, log, (hostname) => inventory.publish(hostname, liveInventory));
        resources.defer(stopSelf);
      }
      if (options.enableTestService) {
        log.warn('test service enabled: this daemon accepts debvisor.testing.v1 calls; never do this in production');
        const testing = createExecutor({ backend: 'testing', binaries: { sleep: '/bin/sleep' }, envAllowList: ['PATH'], maxConcurrent: 16, defaultTimeoutMs: 600_000, maxOutputBytes: 65_536, killGraceMs: 2000, registry: metrics.registry });
        const latches = new TestLatches();
        registerTestOperationKind(operations, (seconds, signal) => testing.run('sleep', [String(seconds)], { signal }), latches);
        implemented[TestingService.typeName] = testingHandlers(operations, quotas, store, latches, events);
      }
      // An RPC that declares an operation kind with no runner would fail every call it starts: refuse to start instead.
      for (const policy of methods.values()) {
        if (policy.operationKind !== undefined && !operations.has(policy.operationKind)) throw new Error(`${policy.path}: no runner is registered for its operation_kind`);
      }
      for (const service of services) {
        const handlers = withDeclaredPolicies(service, unimplementedHandlers(service, implemented[service.typeName]), methods, quotas, store, log);
        grpc.addService(toServiceDefinition(service), toImplementation(service, handlers as never, adapterOptions));
      }
      health.addToServer(grpc);
      if (config.server.reflection !== 'off') reflectionService(services).addToServer(grpc);
      // TLS is done by the listener, so grpc-js's side of the injected connections is plain HTTP/2.
      const grpcAddress = splitHostPort(config.server.listen);
      const listener = (late.listener = new ConnectionListener({
        host: grpcAddress.host,
        port: grpcAddress.port,
        provider,
        newInjector: () => grpc.createConnectionInjector(ServerCredentials.createInsecure()),
        handshakeTimeoutMs: config.server.handshake_timeout_seconds * 1000,
        limits: () => ({
          maxConnections: settings().server.max_connections,
          maxConnectionsPerSource: settings().server.max_connections_per_source,
          firstCallTimeoutMs: settings().server.first_call_timeout_seconds * 1000,
          maxConnectionAgeMs: settings().server.max_connection_age_seconds * 1000,
          maxConnectionAgeGraceMs: settings().server.max_connection_age_grace_seconds * 1000,
        }),
        registry: metrics.registry,
        log,
      }));
      // Disposed in reverse: the listener stops accepting, grpc-js closes its sessions, then what is left goes.
      resources.defer(() => listener.destroyAll());
      resources.defer(() => grpc.forceShutdown());
      resources.defer(() => listener.close());
      const grpcPort = await listener.listen();

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

      certMonitor.start();
      readiness.set('tls', true);
      return new Daemon(live, log, grpc, provider, certificates, revocation, access, audit, certMonitor, listener, resources, readiness, grpcPort, httpPort, events);
    } catch (err) {
      await resources.disposeAsync();
      throw err;
    }
  }

  /**
   * SIGHUP (systemctl reload): re-reads the config, the TLS files, the CA bundle and the
   * CRL. Anything invalid is refused as a whole and the running settings stay; the
   * process never dies on HUP. Settings that need a restart are reported.
   */
  async reload(readConfig: () => Config): Promise<void> {
    const traceId = newTraceId();
    try {
      const next = readConfig();
      const identity = this.certMonitor.validate(next.tls);
      const graceMs = next.auth.crl_grace_seconds * 1000;
      const crl = next.auth.crl_file ? await this.revocation.admit(next.auth.crl_file, identity.trust, graceMs) : undefined;
      const current = this.live.config;
      const needsRestart = [
        ...(next.server.listen !== current.server.listen ? ['server.listen'] : []),
        ...(next.server.reflection !== current.server.reflection ? ['server.reflection'] : []),
        ...(next.server.handshake_timeout_seconds !== current.server.handshake_timeout_seconds ? ['server.handshake_timeout_seconds'] : []),
        ...(next.http.listen !== current.http.listen ? ['http.listen'] : []),
        ...(JSON.stringify(next.store) !== JSON.stringify(current.store) ? ['store'] : []),
        ...(JSON.stringify(next.audit) !== JSON.stringify(current.audit) ? ['audit'] : []),
      ];
      await this.certMonitor.publishFromReload(identity);
      this.revocation.install(crl, graceMs);
      this.live.config = next;
      this.certMonitor.reloaded();
      this.access.reconfigure(next.auth);
      warnUnknownConfigRoles(this.access, this.log);
      this.log.level = next.log.level;
      if (needsRestart.length > 0) this.log.warn({ settings: needsRestart }, 'changed settings take effect only after a restart');
      this.log.info({ trace_id: traceId }, 'reloaded configuration, certificates and CRL');
      this.audit.write({ type: 'SECURITY', trace_id: traceId, reason: 'configuration reloaded (SIGHUP)', ...(needsRestart.length ? { details: { needs_restart: needsRestart } } : {}) });
    } catch (err) {
      const message = err instanceof ConfigError ? err.problems.join('; ') : err instanceof Error ? err.message : String(err);
      this.log.error({ trace_id: traceId, problem: message }, 'reload refused; keeping the running configuration and certificates');
      this.audit.write({ type: 'SECURITY', trace_id: traceId, reason: 'reload refused', details: { problem: message } });
    }
  }

  /**
   * Stops accepting calls, lets in-flight calls finish within the grace period,
   * then cancels whatever is left.
   */
  async stop(graceMs = this.live.config.server.shutdown_grace_seconds * 1000): Promise<{ forced: boolean }> {
    this.readiness.drain();
    // Event streams never finish by themselves: end them (UNAVAILABLE, resume with the last token) before the drain waits for calls.
    this.events.endStreams();
    // The listener owns the connections (grpc-js's tryShutdown does not wait for injected ones).
    const clean = await this.listener.drain(graceMs);
    this.grpc.tryShutdown(() => undefined);
    if (!clean) this.log.warn({ grace_ms: graceMs }, 'grace period over; cancelling remaining calls');
    await this.resources.disposeAsync();
    return { forced: !clean };
  }
}

/** A config binding to a role that does not exist grants nothing; custom roles may come later, so warn rather than refuse. */
function warnUnknownConfigRoles(access: AccessState, log: Logger): void {
  for (const binding of access.configBindingsToUnknownRoles()) {
    log.warn(
      { principal: binding.principal, role: binding.role, closest_role: access.closestRoleName(binding.role) },
      `auth.default_bindings: role "${binding.role}" does not exist; this binding grants nothing until it does`,
    );
  }
}
