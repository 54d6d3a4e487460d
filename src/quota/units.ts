// Quota units of the *_gb dimensions (storage, memory, images): GiB, rounded up. Used where they
// are charged: the quota guard (for a proto quota option), the storage manager and the VM and image services.
export const GIB = 1024n ** 3n;

export function gibOf(bytes: bigint): number {
  return Number((bytes + GIB - 1n) / GIB);
}

/** Whether a quota dimension counts GiB (its amount fields hold bytes). */
export function isCountedInGib(resource: string): boolean {
  return resource.endsWith('_gb');
}
