// Reading a call's request headers through Metadata's public methods only: get() is one
// Map lookup (an empty array for an absent header); the names need getMap(), which copies
// the first value of each header, so it is only for what must see every name.
import type { Metadata, MetadataValue } from '@grpc/grpc-js';

/** The first value of header `name` (lower case), if it was sent. */
export function firstHeader(metadata: Metadata, name: string): MetadataValue | undefined {
  const values = metadata.get(name);
  return values.length > 0 ? values[0] : undefined;
}

/** The names (lower case) of every header the call carries. */
export function headerNames(metadata: Metadata): string[] {
  return Object.keys(metadata.getMap());
}
