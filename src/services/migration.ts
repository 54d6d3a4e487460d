// MigrationService: PrepareMigration (checks only), MigrateVM and FailoverVM (operations).
// The work lives in src/migration/; this maps requests and answers.
import type { MigrationService } from '../gen/debvisor/v1/migration_pb.js';
import type { NodeRegistry } from '../nodes/registry.js';
import type { OperationManager } from '../operations/manager.js';
import type { HandlersOf } from '../rpc/adapter.js';
import { InvalidArgumentError, RpcError } from '../rpc/errors.js';
import { checkMigration, migrationRequest } from '../migration/checks.js';
import type { NodeConnections } from '../migration/connections.js';
import { FAILOVER_VM, planFailover, runFailover, type FailoverDeps } from '../migration/failover.js';
import { MIGRATE_VM, runMigration, type MigrateDeps } from '../migration/migrate.js';
import { operationMessage } from './operations.js';

/** Largest --bandwidth accepted (MiB/s): 1 TiB/s is beyond any link, and keeps the value an int32 for libvirt. */
const MAX_BANDWIDTH_MIB_S = 1024 * 1024;

export interface MigrationHandlerDeps extends MigrateDeps, FailoverDeps {
  readonly operations: OperationManager;
  readonly nodes: NodeRegistry;
  readonly connections: NodeConnections;
}

export function registerMigrationOperationKinds(operations: OperationManager, deps: MigrateDeps & FailoverDeps): void {
  operations.register(MIGRATE_VM, { run: (op) => runMigration(op, deps) });
  operations.register(FAILOVER_VM, { run: (op) => runFailover(op, deps) });
}

export function migrationHandlers(deps: MigrationHandlerDeps): HandlersOf<typeof MigrationService> {
  const { operations, nodes, connections } = deps;
  return {
    prepareMigration: async (request, ctx) => {
      const checked = await checkMigration(migrationRequest(request, connections.localNode), nodes, connections, ctx.signal);
      return { ...checked, requiredMemoryBytes: BigInt(checked.requiredMemoryBytes), targetFreeMemoryBytes: BigInt(checked.targetFreeMemoryBytes) };
    },

    migrateVM: async (request, ctx) => {
      const target = migrationRequest(request, connections.localNode);
      if (request.allowDowntime) throw new InvalidArgumentError('allow_downtime', 'offline migration is not supported; only live migration is');
      if (request.bandwidthMibS > MAX_BANDWIDTH_MIB_S) throw new InvalidArgumentError('bandwidth_mib_s', `must be at most ${MAX_BANDWIDTH_MIB_S}`);
      // Refuse up front what the migration would only fail on.
      const checked = await checkMigration(target, nodes, connections, ctx.signal);
      if (!checked.allowed) throw new RpcError('FAILED_PRECONDITION', `cannot migrate VM ${JSON.stringify(target.vmName)}: ${checked.reasons.join('; ')}`);
      const record = await operations.launch(ctx, MIGRATE_VM, {
        target: `vm:${target.vmName}`,
        params: { vmName: target.vmName, sourceNode: target.sourceNode, targetNode: target.targetNode, compressed: request.compressed, bandwidthMiBs: request.bandwidthMibS },
        ...(request.requestId ? { requestId: request.requestId } : {}),
      });
      return { operation: operationMessage(record) };
    },

    failoverVM: async (request, ctx) => {
      const params = await planFailover(request, deps);
      const record = await operations.launch(ctx, FAILOVER_VM, {
        target: `vm:${params.vmName}`,
        params,
        ...(request.requestId ? { requestId: request.requestId } : {}),
      });
      return { operation: operationMessage(record) };
    },
  };
}
