// Storage quota units: GiB, rounded up. Used where storage is charged: the quota guard
// (for a proto quota option) and the storage manager.
export const GIB = 1024n ** 3n;

export function gibOf(bytes: bigint): number {
  return Number((bytes + GIB - 1n) / GIB);
}
