// Stored times (ISO 8601 strings in store records) as protobuf Timestamps, for every service's mapping.
import { timestampFromDate, type Timestamp } from '@bufbuild/protobuf/wkt';

/** The Timestamp of an ISO 8601 time; undefined for an unset one. */
export function timestampOfIso(iso: string | undefined): Timestamp | undefined {
  return iso === undefined ? undefined : timestampFromDate(new Date(iso));
}
