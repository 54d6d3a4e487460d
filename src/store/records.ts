// The shapes of stored records. Each carries schema_version so a later release can
// migrate old records on read (Repository's migrate hook).
import { z } from 'zod';
import { countedQuotaResources, quotaResources } from '../rpc/quota-dimensions.js';

const isoTime = z.iso.datetime();
const version1 = z.literal(1);
const resourceGlob = z.strictObject({ kind: z.string(), glob: z.string() });

export const apiKeyRecord = z.strictObject({
  schema_version: version1,
  id: z.string().min(1),
  /** The principal the key acts for; its rights cap the key's. */
  owner: z.string().min(1),
  description: z.string(),
  permissions: z.array(z.string()),
  resource_globs: z.array(resourceGlob),
  allowed_cidrs: z.array(z.string()),
  /** SHA-256 of the secret, hex. The secret itself is never stored. */
  secret_sha256: z.string().regex(/^[0-9a-f]{64}$/),
  created_at: isoTime,
  expires_at: isoTime.optional(),
  revoked_at: isoTime.optional(),
  /** The principal that created the key (an admin may create keys for others). */
  created_by: z.string().min(1),
  /** Set on a rotated-out key: the key that replaced it (the old one works until expires_at). */
  replaced_by: z.string().optional(),
  /** Set on a key made by rotation: the key it replaced. */
  rotated_from: z.string().optional(),
  last_used_at: isoTime.optional(),
  use_count: z.number().int().nonnegative(),
});
export type ApiKeyRecord = z.infer<typeof apiKeyRecord>;

/**
 * A user session (CreateUserSession): a certificate acting for a user proves with its token
 * that the user is logged in. Bound to the user and to that certificate.
 */
export const userSessionRecord = z.strictObject({
  schema_version: version1,
  id: z.string().min(1),
  /** The user, as "user:<name>". */
  user: z.string().startsWith('user:'),
  /** The certificate principal that created it; only that certificate may present it. */
  impersonated_by: z.string().min(1),
  /** SHA-256 of that certificate (DER), lowercase hex. */
  cert_fingerprint_sha256: z.string().regex(/^[0-9a-f]{64}$/),
  /** SHA-256 of the secret, hex. The secret itself is never stored. */
  secret_sha256: z.string().regex(/^[0-9a-f]{64}$/),
  created_at: isoTime,
  expires_at: isoTime,
  revoked_at: isoTime.optional(),
});
export type UserSessionRecord = z.infer<typeof userSessionRecord>;

export const principalRecord = z.strictObject({
  schema_version: version1,
  id: z.string().min(1),
  roles: z.array(z.string()),
  updated_at: isoTime,
});
export type PrincipalRecord = z.infer<typeof principalRecord>;

export const roleRecord = z.strictObject({
  schema_version: version1,
  name: z.string().min(1),
  description: z.string(),
  permissions: z.array(z.string()),
  deny_permissions: z.array(z.string()),
  /** Scope of the role's grants (Role.resourceGlobs); absent in records written before roles had one. */
  resource_globs: z.array(resourceGlob).default([]),
  updated_at: isoTime,
});
export type RoleRecord = z.infer<typeof roleRecord>;


export const quotaRecord = z.strictObject({
  schema_version: version1,
  principal: z.string().min(1),
  resource: z.enum(quotaResources),
  /** Absent: the configured default applies. */
  limit: z.number().int().nonnegative().optional(),
  /** No limit at all for this principal and resource. */
  unlimited: z.boolean().optional(),
  used: z.number().int().nonnegative(),
  updated_at: isoTime,
});
export type QuotaRecord = z.infer<typeof quotaRecord>;

export const nodeRecord = z.strictObject({
  schema_version: version1,
  id: z.string().min(1),
  hostname: z.string().min(1),
  ip: z.string(),
  rack: z.string(),
  zone: z.string(),
  version: z.string(),
  labels: z.record(z.string(), z.string()),
  registered_at: isoTime,
  updated_at: isoTime,
  last_heartbeat_at: isoTime.optional(),
  /** The last heartbeat's measurements, as reported. */
  health: z
    .strictObject({
      status: z.string(),
      cpu_load: z.number(),
      mem_used_pct: z.number(),
      disk_used_pct: z.number(),
      net_rtt_ms: z.number(),
      ceph_status: z.string(),
      memory_total_bytes: z.number().nonnegative(),
      memory_free_bytes: z.number().nonnegative(),
    })
    .optional(),
  /** Expiry of the liveness lease as of the last heartbeat (the liveness key itself says online or not). */
  lease_expires_at: isoTime.optional(),
});
export type NodeRecord = z.infer<typeof nodeRecord>;

export const operationStates = ['PENDING', 'RUNNING', 'SUCCEEDED', 'FAILED', 'CANCELLED'] as const;

export const operationRecord = z.strictObject({
  schema_version: version1,
  id: z.string().min(1),
  /** The OperationKind's name, e.g. SHUTDOWN_VM (src/operations/kinds.ts); a name this daemon does not know still loads. */
  kind: z.string().min(1),
  owner: z.string().min(1),
  target: z.string(),
  node: z.string(),
  state: z.enum(operationStates),
  progress_percent: z.number().min(0).max(100),
  stage: z.string(),
  /** Work measured in bytes (image imports): done so far, and the total when known. */
  progress_bytes: z.number().int().nonnegative().optional(),
  total_bytes: z.number().int().nonnegative().optional(),
  error: z.strictObject({ code: z.number().int(), message: z.string() }).optional(),
  /** `{ case, value }`: the Operation.result member and its message's protobuf JSON (src/operations/kinds.ts). */
  result: z.unknown().optional(),
  request_id: z.string().optional(),
  /** The launching call's trace id and, when a certificate acted for the owner, that certificate (their events name them). */
  trace_id: z.string().optional(),
  impersonated_by: z.string().optional(),
  cancel_requested: z.boolean(),
  /** What the kind's runner needs to start (or resume) the work; its kind's schema parses it. */
  params: z.unknown().optional(),
  /** Whether a restarted daemon resumes this operation instead of failing it. */
  resumable: z.boolean(),
  /** Steps the work claimed (OperationHandle.claim): done at most once, across restarts. */
  claimed_steps: z.array(z.string()).optional(),
  /** Quota taken for the work, given back if it fails or is cancelled. */
  quota: z.strictObject({ resource: z.enum(countedQuotaResources), amount: z.number().int().positive() }).optional(),
  created_at: isoTime,
  updated_at: isoTime,
  done_at: isoTime.optional(),
});
export type OperationRecord = z.infer<typeof operationRecord>;

/**
 * One persistent VM of a node, as that node's daemon last published it (nodes.self_register):
 * what FailoverVM needs to start the VM elsewhere once the node is gone.
 */
export const vmInventoryRecord = z.strictObject({
  schema_version: version1,
  node: z.string().min(1),
  name: z.string().min(1),
  uuid: z.string(),
  /** libvirt state when published ("running", "shutoff", ...). */
  state: z.string(),
  memory_bytes: z.number().int().nonnegative(),
  /** The persistent definition (`virsh dumpxml --inactive`). */
  xml: z.string().min(1).max(1_000_000),
  published_at: isoTime,
});
export type VmInventoryRecord = z.infer<typeof vmInventoryRecord>;

/** The principal that created a VM snapshot; libvirt's snapshot XML has no place for it. */
export const vmSnapshotOwnerRecord = z.strictObject({
  schema_version: version1,
  node: z.string().min(1),
  vm: z.string().min(1),
  snapshot: z.string().min(1),
  owner: z.string().min(1),
  created_at: isoTime,
});
export type VmSnapshotOwnerRecord = z.infer<typeof vmSnapshotOwnerRecord>;

/**
 * One image of a node's library (ImageService): the file `<images_dir>/sha256/<sha256>` on that
 * node. Id: [node hostname, digest]. Its names live in their own keys (imageAliasRecord), so that
 * claiming a name is one compare-and-create.
 */
export const imageRecord = z.strictObject({
  schema_version: version1,
  node: z.string().min(1),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  size_bytes: z.number().int().nonnegative(),
  format: z.string().min(1),
  virtual_size_bytes: z.number().int().nonnegative(),
  source: z.enum(['url', 'upload']),
  source_url: z.string(),
  /** The principal that imported it: its images_gb quota holds the image. */
  owner: z.string().min(1),
  /** GiB charged to the owner's images_gb, given back on delete. */
  quota_gb: z.number().int().nonnegative(),
  created_at: isoTime,
});
export type ImageRecord = z.infer<typeof imageRecord>;

/** A name of a library image. Id: [node hostname, name]. */
export const imageAliasRecord = z.strictObject({
  schema_version: version1,
  node: z.string().min(1),
  name: z.string().min(1),
  sha256: z.string().regex(/^[0-9a-f]{64}$/),
  updated_at: isoTime,
});
export type ImageAliasRecord = z.infer<typeof imageAliasRecord>;
