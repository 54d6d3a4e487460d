// The typed repositories the services use, all on one store.
import { LAYOUT } from './layout.js';
import { apiKeyRecord, imageAliasRecord, imageRecord, nodeRecord, operationRecord, principalRecord, quotaRecord, roleRecord, userSessionRecord, vmInventoryRecord, vmSnapshotOwnerRecord } from './records.js';
import { Repository } from './repository.js';
import type { Store } from './store.js';

export function createRepositories(store: Store) {
  return {
    apiKeys: new Repository(store, LAYOUT.apiKeys, apiKeyRecord),
    userSessions: new Repository(store, LAYOUT.userSessions, userSessionRecord),
    principals: new Repository(store, LAYOUT.principals, principalRecord),
    roles: new Repository(store, LAYOUT.roles, roleRecord),
    /** Id: [principal, resource]. */
    quotas: new Repository(store, LAYOUT.quotas, quotaRecord),
    nodes: new Repository(store, LAYOUT.nodes, nodeRecord),
    operations: new Repository(store, LAYOUT.operations, operationRecord),
    /** Id: [node hostname, VM name]. */
    vmInventory: new Repository(store, LAYOUT.vmInventory, vmInventoryRecord),
    /** Id: [node hostname, VM name, snapshot name]. */
    vmSnapshotOwners: new Repository(store, LAYOUT.vmSnapshotOwners, vmSnapshotOwnerRecord),
    /** Id: [node hostname, sha256]. */
    images: new Repository(store, LAYOUT.images, imageRecord),
    /** Id: [node hostname, alias]. */
    imageAliases: new Repository(store, LAYOUT.imageAliases, imageAliasRecord),
  };
}

export type Repositories = ReturnType<typeof createRepositories>;
