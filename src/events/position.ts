// Where an event sits in the journal, and the opaque resume token that names it. An event is
// the `index`-th of the batch record the store wrote at `revision`; batches are immutable, so
// (revision, index) orders every event of the cluster once and for all.

export interface Position {
  /** The store revision of the batch record. */
  readonly revision: number;
  /** The event's index within its batch; END: past every event of that revision. */
  readonly index: number;
}

/** The index of a position just past a whole revision (a heartbeat's, a fresh stream's). */
export const END = Number.POSITIVE_INFINITY;

/** True if `a` comes strictly after `b`. */
export function after(a: Position, b: Position): boolean {
  return a.revision > b.revision || (a.revision === b.revision && a.index > b.index);
}

const TOKEN_PREFIX = 'e1.';

/** The resume token of a position: opaque to clients, stable across daemons of one store. */
export function encodeToken(position: Position): string {
  const text = position.index === END ? `${position.revision}` : `${position.revision}.${position.index}`;
  return TOKEN_PREFIX + Buffer.from(text, 'utf8').toString('base64url');
}

/** The position a resume token names, or undefined for a malformed token. */
export function decodeToken(token: string): Position | undefined {
  if (!token.startsWith(TOKEN_PREFIX) || token.length > 64) return undefined;
  const text = Buffer.from(token.slice(TOKEN_PREFIX.length), 'base64url').toString('utf8');
  const match = /^(\d{1,15})(?:\.(\d{1,9}))?$/.exec(text);
  if (!match) return undefined;
  const revision = Number(match[1]);
  return { revision, index: match[2] === undefined ? END : Number(match[2]) };
}
