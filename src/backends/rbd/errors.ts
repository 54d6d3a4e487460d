// How rbd failures become typed errors. rbd exits with the errno of the failure (2 ENOENT,
// 16 EBUSY, 17 EEXIST, 22 EINVAL, 39 ENOTEMPTY, 110 ETIMEDOUT) and says why on stderr;
// the texts are Ceph 16.2's, captured into test/backends/fixtures/rbd/.
import type { ClassifyRule } from '../exec.js';

/** What a not-found failure is about when rbd's text does not say (a `snap rm` of a missing snapshot just says ENOENT). */
export type RbdObject = 'image' | 'snapshot';

const UNAVAILABLE: ClassifyRule = {
  // No monitor answered within client_mount_timeout ("monclient(hunting): authenticate timed out after N",
  // "rbd: couldn't connect to the cluster!", "(110) Connection timed out"), or the conf file is missing.
  kind: 'unavailable',
  stderr: /couldn't connect to the cluster|error connecting to the cluster|authenticate timed out|unable to open config file|\(110\) Connection timed out|Connection refused/i,
  message: 'the Ceph cluster is unreachable; retry later',
};

/** Failures that are about the request's state, not a missing object: ahead of the errno rules. */
const STATE_RULES: readonly ClassifyRule[] = [
  {
    // rbd rm: "rbd: image has snapshots - these must be deleted with 'rbd snap purge' before the image can be removed." (39)
    kind: 'busy',
    stderr: /image has snapshots/i,
    message: 'the image has snapshots; delete them first',
  },
  {
    // rbd rm of an open image: "rbd: error: image still has watchers" (16)
    kind: 'busy',
    stderr: /still has watchers|image is in use/i,
    message: 'the image is in use (open by a VM or another client); retry after closing it',
  },
  {
    // rbd snap rm: "rbd: snapshot 's1' is protected from removal." / "librbd::Operations: snapshot is protected" (16)
    kind: 'busy',
    stderr: /is protected from removal|snapshot is protected/i,
    message: 'the snapshot is protected; unprotect it first',
  },
  {
    // rbd snap unprotect: "librbd::SnapshotUnprotectRequest: cannot unprotect: at least 1 child(ren) [id] in pool 'rbd'" (16)
    kind: 'busy',
    stderr: /cannot unprotect|child\(ren\)|has children/i,
    message: 'the snapshot has clones; flatten or delete them first',
  },
  {
    // rbd clone of an unprotected snapshot (clone v1): "CloneRequest: … validate_parent: parent snapshot must be protected" (22)
    kind: 'unsupported',
    stderr: /parent snapshot must be protected/i,
    message: 'the snapshot must be protected before it can be cloned',
  },
  {
    kind: 'no_space',
    stderr: /\(28\) No space left on device|\(122\) Disk quota exceeded/i,
    message: 'the Ceph pool is full or over its quota',
  },
];

const POOL_NOT_FOUND: ClassifyRule = {
  // "rbd: error opening pool 'nopool': (2) No such file or directory"
  kind: 'not_found',
  stderr: /error opening pool/i,
  message: 'the Ceph pool does not exist',
};

const IMAGE_NOT_FOUND: ClassifyRule = {
  // "rbd: error opening image nope: (2) No such file or directory", "rbd: delete error: (2) …", "rbd: clone error: (2) …"
  kind: 'not_found',
  code: 2,
  message: 'the RBD image does not exist',
};

const SNAPSHOT_NOT_FOUND: ClassifyRule = {
  // "rbd: failed to remove snapshot: (2) …", "rbd: protecting snap failed: (2) …", "rbd: snapshot does not exist." (children)
  kind: 'not_found',
  code: 2,
  message: 'the RBD snapshot does not exist',
};

const EXISTS: ClassifyRule = {
  // "rbd: create error: (17) File exists", "rbd: failed to create snapshot: (17) File exists"
  kind: 'exists',
  code: 17,
  message: 'an RBD image or snapshot with that name already exists',
};

function rules(target: RbdObject): readonly ClassifyRule[] {
  const notFound: ClassifyRule[] =
    target === 'snapshot'
      ? // The image is missing when rbd could not open it; anything else ENOENT is about the snapshot.
        [POOL_NOT_FOUND, { ...IMAGE_NOT_FOUND, stderr: /error opening image/i }, SNAPSHOT_NOT_FOUND]
      : [POOL_NOT_FOUND, IMAGE_NOT_FOUND];
  return [UNAVAILABLE, ...STATE_RULES, ...notFound, EXISTS];
}

/** Rules for commands on an image (create, info, resize, rm, clone, flatten, image-meta, du). */
export const RBD_IMAGE_RULES = rules('image');
/** Rules for commands on a snapshot (snap create/rm/protect/unprotect, children). */
export const RBD_SNAPSHOT_RULES = rules('snapshot');

/** `rbd snap protect` of a protected snapshot (16): protecting is idempotent here. */
export const ALREADY_PROTECTED = /snap is already protected/i;
/** `rbd snap unprotect` of an unprotected snapshot (22): so is unprotecting. */
export const ALREADY_UNPROTECTED = /snap is already unprotected/i;
/** `rbd flatten` of an image that is not (or no longer) a clone (22): flattening is idempotent. */
export const NOT_A_CLONE = /image has no parent/i;
