// How lvm tool failures become typed errors. The texts are lvm2 2.03.16's (captured into
// test/backends/fixtures/lvm/). lvm exits 5 (ECMD_FAILED) for these; every rule names the code,
// because lvm prints warnings on stderr on success too ("WARNING: Activation disabled…").
import type { ClassifyRule } from '../exec.js';

/** "Can't create snapshot without using device-mapper kernel driver." (also thin pools and volumes). */
export const NO_DM_SNAPSHOT = /Can't create (snapshot|thin[^ ]*) without using device-mapper/i;

export const LVM_RULES: readonly ClassifyRule[] = [
  {
    kind: 'unsupported',
    code: 5,
    stderr: NO_DM_SNAPSHOT,
    message: 'LVM snapshots need the device-mapper kernel driver, which this host does not have',
  },
  {
    // Any other command that needs device-mapper (activation) on a kernel without it.
    kind: 'unsupported',
    code: 5,
    stderr: /without using device-mapper|Failure to communicate with kernel device-mapper driver/i,
    message: 'this LVM operation needs the device-mapper kernel driver, which this host does not have',
  },
  {
    // An origin with active snapshots (device-mapper hosts): 'Snapshot origin volumes can be resized only while
    // inactive: try lvchange -an.' / 'Snapshot origin volumes cannot be reduced in size yet.'
    kind: 'unsupported',
    code: 5,
    stderr: /Snapshot origin volumes can be resized only while inactive|Snapshot origin volumes cannot be reduced/i,
    message: 'LVM cannot resize a volume that has snapshots; delete its snapshots first',
  },
  {
    // 'Volume group "vg0" not found'
    kind: 'not_found',
    code: 5,
    stderr: /Volume group "[^"]*" not found/,
    message: 'the volume group does not exist',
  },
  {
    // lvs/lvremove/lvchange: 'Failed to find logical volume "vg/lv"'; lvextend/lvreduce: 'Logical volume lv not found in
    // volume group vg.'; lvcreate -s: 'Snapshot origin LV lv not found in Volume group vg.'
    kind: 'not_found',
    code: 5,
    stderr: /Failed to find logical volume|Logical volume \S+ not found in volume group|Snapshot origin LV \S+ not found/i,
    message: 'the logical volume does not exist',
  },
  {
    // 'Logical Volume "disk0" already exists in volume group "vg0"'
    kind: 'exists',
    code: 5,
    stderr: /already exists in volume group/i,
    message: 'a logical volume with that name already exists in the volume group',
  },
  {
    // 'Volume group "vg0" has insufficient free space (239 extents): 16384 required.'
    kind: 'no_space',
    code: 5,
    stderr: /insufficient free space|Insufficient suitable allocatable extents/i,
    message: 'the volume group has not enough free space',
  },
  {
    // 'Logical volume vg/lv contains a filesystem in use.', "Can't remove open logical volume"
    kind: 'busy',
    code: 5,
    stderr: /in use|open logical volume/i,
    message: 'the logical volume is in use',
  },
  {
    // Another lvm command holds the VG lock past lvm's wait.
    kind: 'busy',
    code: 5,
    stderr: /Giving up waiting for lock|Can't get lock/i,
    message: 'the volume group is busy; retry later',
  },
];

/** lvextend/lvreduce to the size the LV already has: 'New size (16 extents) matches existing size (16 extents).' */
export const SAME_SIZE = /matches existing size/i;
