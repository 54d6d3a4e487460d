// Paging of lists held in memory, the same way for every list RPC: page_size 0 means
// 100, at most 1000; the page token is opaque to clients and checked on the way in.
import { InvalidArgumentError } from './errors.js';

const DEFAULT_PAGE = 100;
const MAX_PAGE = 1000;

export interface PageRequest {
  readonly pageSize: number;
  readonly pageToken: string;
}

export interface Page<T> {
  readonly items: T[];
  /** Empty on the last page. */
  readonly nextPageToken: string;
}

function sizeOf(pageSize: number): number {
  if (pageSize < 0) throw new InvalidArgumentError('page_size', 'must not be negative');
  return Math.min(pageSize || DEFAULT_PAGE, MAX_PAGE);
}

function encode(value: string): string {
  return Buffer.from(value, 'utf8').toString('base64url');
}

function decode(token: string): string {
  const value = Buffer.from(token, 'base64url').toString('utf8');
  if (value.length === 0 || encode(value) !== token) throw new InvalidArgumentError('page_token', 'not a token from a previous response');
  return value;
}

/** Pages `items`, sorted by `keyOf`; the token is the last key of the previous page, so pages stay right when items come and go. */
export function pageByKey<T>(items: readonly T[], keyOf: (item: T) => string, request: PageRequest): Page<T> {
  const size = sizeOf(request.pageSize);
  const after = request.pageToken ? decode(request.pageToken) : undefined;
  const rest = after === undefined ? items : items.filter((item) => keyOf(item) > after);
  const slice = rest.slice(0, size);
  const last = slice[slice.length - 1];
  return { items: slice, nextPageToken: rest.length > size && last ? encode(keyOf(last)) : '' };
}

/** Pages `items` by position, for lists with no unique sort key. */
export function pageByOffset<T>(items: readonly T[], request: PageRequest): Page<T> {
  const size = sizeOf(request.pageSize);
  const start = request.pageToken ? Number(decode(request.pageToken)) : 0;
  if (!Number.isSafeInteger(start) || start < 0) throw new InvalidArgumentError('page_token', 'not a token from a previous response');
  return { items: items.slice(start, start + size), nextPageToken: start + size < items.length ? encode(String(start + size)) : '' };
}
