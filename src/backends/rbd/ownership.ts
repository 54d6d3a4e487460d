// Who owns what in an RBD pool, in ONE host process (RecomputeQuota). Owners live in each image's
// image-meta, and the rbd CLI reads image-meta one image per process (`rbd image-meta list`): a
// recount through it costs a process per image and per snapshot, and holds the rbd slots that
// long. librbd reads them all in one process instead: python3-rbd, which Debian's ceph-common
// (the package that ships rbd) depends on. The script comes on stdin (`python3 -I -`: isolated,
// no PYTHON* variables, no user site) and takes the pool and connection settings as argv.
// It prints rbd's own error texts, so RBD_IMAGE_RULES classify its failures like rbd's.
import type { ClassifyRule } from '../exec.js';

export const OWNERSHIP_SCRIPT = String.raw`
import json, sys
try:
    import rados, rbd
except ImportError as err:
    sys.stderr.write("python3-rbd is missing: %s\n" % err)
    sys.exit(95)
conf, client_id, keyring, timeout, pool, owner_key, snap_prefix = sys.argv[1:8]
options = {"client_mount_timeout": timeout, "rados_mon_op_timeout": timeout, "rados_osd_op_timeout": timeout}
if keyring:
    options["keyring"] = keyring
try:
    cluster = rados.Rados(conffile=conf, rados_id=client_id or None, conf=options)
    cluster.connect(timeout=int(timeout))
except rados.Error as err:
    sys.stderr.write("rbd: couldn't connect to the cluster! %s\n" % err)
    sys.exit(110)
try:
    ioctx = cluster.open_ioctx(pool)
except rados.Error as err:
    sys.stderr.write("rbd: error opening pool '%s': %s\n" % (pool, err))
    sys.exit(getattr(err, "errno", None) or 1)
images = []
for name in rbd.RBD().list(ioctx):
    try:
        with rbd.Image(ioctx, name, read_only=True) as image:
            meta = dict(image.metadata_list())
            snaps = [s["name"] for s in image.list_snaps() if s.get("namespace", 0) == rbd.RBD_SNAP_NAMESPACE_TYPE_USER]
            images.append({
                "name": name,
                "size": image.size(),
                "owner": meta.get(owner_key, ""),
                "snapshot_owners": [meta.get(snap_prefix + s + ".owner", "") for s in snaps],
            })
    except rbd.ImageNotFound:
        pass  # removed since the listing: no longer there
ioctx.close()
cluster.shutdown()
json.dump(images, sys.stdout)
`;

/** The script's exit code when python3-rbd is not installed. */
export const MISSING_LIBRBD: ClassifyRule = {
  kind: 'unsupported',
  code: 95,
  message: 'python3-rbd (a dependency of ceph-common) is missing: RBD usage cannot be recounted',
};
