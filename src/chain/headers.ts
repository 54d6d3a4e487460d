// Reading a call's request headers without copying them. grpc-js keeps them in one Map
// per call (Metadata.internalRepr, protected in its typings); getMap() would build an
// object of every header on every call, and get() a new array for each absent one.
import type { Metadata, MetadataValue } from '@grpc/grpc-js';

export type HeaderMap = ReadonlyMap<string, readonly MetadataValue[]>;

/** The call's headers by lower-case name: grpc-js's own map, or a copy should its internals ever change. */
export function headerMap(metadata: Metadata): HeaderMap {
  const own = (metadata as unknown as { readonly internalRepr?: unknown }).internalRepr;
  if (own instanceof Map) return own as HeaderMap;
  return new Map(Object.entries(metadata.getMap()).map(([name, value]) => [name, [value]]));
}

/** The first value of header `name` (lower case), if it was sent. */
export function firstHeader(headers: HeaderMap, name: string): MetadataValue | undefined {
  return headers.get(name)?.[0];
}
