// The store's key layout, in one place. Every key lives under /debvisor/.
//
//   /debvisor/rpc/apikeys/<key id>                 API key records (hash of the secret only)
//   /debvisor/rpc/sessions/<session id>           user sessions (hash of the secret only)
//   /debvisor/rpc/principals/<principal id>        a principal's role bindings
//   /debvisor/rpc/roles/<role name>                custom roles (built-ins live in code)
//   /debvisor/rpc/quotas/<principal>/<resource>    quota limit and usage
//   /debvisor/nodes/<hostname>                     registered hypervisor nodes (id, inventory, last heartbeat)
//   /debvisor/liveness/nodes/<hostname>            a node's liveness key, on a lease of 3 heartbeat intervals:
//                                                  present = online; the lease expiring deletes it = offline
//   /debvisor/liveness/transitions/<hostname>      the node's last ONLINE/OFFLINE event claimed (src/nodes/transitions.ts)
//   /debvisor/vms/<hostname>/<vm name>             a node's persistent VMs (definition XML, state), published by
//                                                  that node's daemon with each self heartbeat; no lease, so it
//                                                  outlives the node: FailoverVM reads it once the node is gone
//   /debvisor/vm-snapshots/<hostname>/<vm>/<snap>  who created a VM snapshot (libvirt keeps no owner), so its
//                                                  quota unit goes back to that principal on delete
//   /debvisor/images/<hostname>/<sha256>           a node's library images (ImageService; the file is
//                                                  <images_dir>/sha256/<sha256> on that node)
//   /debvisor/image-aliases/<hostname>/<name>      an image name → digest on that node
//   /debvisor/operations/<operation id>            long-running operations
//   /debvisor/rpc/slots/<principal>/<operation id> concurrent-operation slots (on a daemon lease)
//   /debvisor/rpc/idempotency/<principal>/<request id>  request_id → operation id
//   /debvisor/rpc/replies/<principal>/<method>/<request id>  kept reply of a mutating call (a day, on a lease)
//   /debvisor/events/batches/<hostname>/<ms>-<nonce>-<seq>  a batch of events one node published (src/events/journal.ts)
//   /debvisor/events/floor                        the newest pruned batch's revision: older resume tokens are expired
//
// Each id part is one URI-encoded segment, so a principal such as
// spiffe://debvisor/admin/admin stays inside its own key.
export const LAYOUT = {
  apiKeys: '/debvisor/rpc/apikeys/',
  userSessions: '/debvisor/rpc/sessions/',
  principals: '/debvisor/rpc/principals/',
  roles: '/debvisor/rpc/roles/',
  quotas: '/debvisor/rpc/quotas/',
  nodes: '/debvisor/nodes/',
  nodeLiveness: '/debvisor/liveness/nodes/',
  nodeTransitions: '/debvisor/liveness/transitions/',
  vmInventory: '/debvisor/vms/',
  vmSnapshotOwners: '/debvisor/vm-snapshots/',
  operations: '/debvisor/operations/',
  images: '/debvisor/images/',
  imageAliases: '/debvisor/image-aliases/',
  slots: '/debvisor/rpc/slots/',
  idempotency: '/debvisor/rpc/idempotency/',
  replies: '/debvisor/rpc/replies/',
  events: '/debvisor/events/',
} as const;

/** Encodes one id part as a key segment; empty or oversized parts are refused. */
export function segment(value: string): string {
  if (value.length === 0 || value.length > 512) throw new Error(`invalid key segment of length ${value.length}`);
  return encodeURIComponent(value);
}
