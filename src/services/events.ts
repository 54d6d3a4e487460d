// EventService.WatchEvents: each stream reads the journal's ring by its own cursor, keeping
// the events its caller asked for and may see. Nothing is queued per stream: a stream whose
// write is held back (the client does not read) is cut with RESYNC_REQUIRED once more than
// `stream_buffer` events arrived meanwhile, or once pruning passed its cursor.
import type { MessageInitShape } from '@bufbuild/protobuf';
import { timestampFromMs } from '@bufbuild/protobuf/wkt';
import { isValidResourceGlob, globMatches } from '../authz/globs.js';
import { EventKind, type Event, type EventSchema, type EventService } from '../gen/debvisor/v1/event_pb.js';
import type { EventJournal } from '../events/journal.js';
import { decodeToken, encodeToken, type Position } from '../events/position.js';
import { CONTROL_KINDS, type Allows, type EventVisibility } from '../events/visibility.js';
import type { HandlersOf } from '../rpc/adapter.js';
import type { CallContext } from '../rpc/context.js';
import { InvalidArgumentError, RpcError, UnauthenticatedError } from '../rpc/errors.js';

export interface EventStreamSettings {
  readonly heartbeatMs: number;
  readonly streamBuffer: number;
  readonly maxStreamsPerPrincipal: number;
  readonly maxStreams: number;
}

export interface EventServiceDeps {
  readonly journal: EventJournal;
  readonly visibility: EventVisibility;
  readonly allows: Allows;
  /** Why the stream's credentials no longer hold (a revoked key, an ended session); checked as it goes. */
  readonly credentialsProblem: (principal: NonNullable<CallContext['principal']>, nowMs: number) => string | undefined;
  readonly settings: () => EventStreamSettings;
  /** Told the number of open streams whenever it changes (a gauge). */
  readonly onStreams?: (open: number) => void;
}

const MAX_GLOBS = 64;
/** Events read from the ring at a time (a stream yields them one by one). */
const PAGE = 256;

/** Open streams, per principal and in all; a refused stream names the limit it hit. */
export class StreamSlots {
  private readonly byPrincipal = new Map<string, number>();
  private total = 0;

  constructor(private readonly onStreams: (open: number) => void = () => undefined) {}

  acquire(principal: string, limits: Pick<EventStreamSettings, 'maxStreams' | 'maxStreamsPerPrincipal'>): () => void {
    const mine = this.byPrincipal.get(principal) ?? 0;
    if (mine >= limits.maxStreamsPerPrincipal) {
      throw new RpcError('RESOURCE_EXHAUSTED', `too many event streams: events.max_streams_per_principal is ${limits.maxStreamsPerPrincipal}; close one first`);
    }
    if (this.total >= limits.maxStreams) throw new RpcError('RESOURCE_EXHAUSTED', `too many event streams on this daemon: events.max_streams is ${limits.maxStreams}`);
    this.byPrincipal.set(principal, mine + 1);
    this.onStreams(++this.total);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const left = (this.byPrincipal.get(principal) ?? 1) - 1;
      if (left === 0) this.byPrincipal.delete(principal);
      else this.byPrincipal.set(principal, left);
      this.onStreams(--this.total);
    };
  }
}

type Outgoing = MessageInitShape<typeof EventSchema> | Event;

function control(kind: EventKind, position: Position, reason?: string): Outgoing {
  return { kind, resumeToken: encodeToken(position), time: timestampFromMs(Date.now()), ...(reason ? { payload: { case: 'resync', value: { reason } } } : {}) };
}

function requestFilter(kinds: readonly EventKind[], globs: readonly string[]): (event: Event) => boolean {
  for (const kind of kinds) {
    if (kind === EventKind.UNSPECIFIED || !(kind in EventKind)) throw new InvalidArgumentError('kinds', `unknown event kind ${kind}`);
  }
  if (globs.length > MAX_GLOBS) throw new InvalidArgumentError('resource_globs', `at most ${MAX_GLOBS} globs`);
  const bad = globs.find((glob) => !isValidResourceGlob(glob));
  if (bad !== undefined) throw new InvalidArgumentError('resource_globs', `"${bad.slice(0, 64)}" is not a resource glob (letters, digits, ._-/@: and the wildcards * and ?)`);
  const wanted = new Set(kinds);
  return (event) => (wanted.size === 0 || wanted.has(event.kind)) && (globs.length === 0 || globs.some((glob) => globMatches(glob, event.resource?.name ?? '')));
}

export function eventHandlers(deps: EventServiceDeps): HandlersOf<typeof EventService> {
  const slots = new StreamSlots(deps.onStreams);
  const { journal } = deps;

  async function* watch(principal: NonNullable<CallContext['principal']>, wanted: (event: Event) => boolean, token: Position | undefined, ctx: CallContext): AsyncGenerator<Outgoing> {
    const settings = deps.settings();
    const release = slots.acquire(principal.id, settings);
    // One listener and one heartbeat timer for the stream's life, not one per wait: a change
    // wakes every stream of the daemon at once.
    let wake: (() => void) | undefined;
    const poke = () => {
      const resolve = wake;
      wake = undefined;
      resolve?.();
    };
    // An object, not a let: TypeScript does not see the timer's callback change it.
    const heartbeat = { fired: false };
    const onTimer = () => {
      heartbeat.fired = true;
      poke();
    };
    let timer = setTimeout(onTimer, settings.heartbeatMs);
    const unsubscribe = journal.onChange(poke);
    ctx.signal.addEventListener('abort', poke, { once: true });
    const next = async () => {
      if (!ctx.signal.aborted) await new Promise<void>((resolve) => (wake = resolve));
      if (ctx.signal.aborted) throw ctx.signal.reason as Error;
    };
    try {
      while (!journal.isReady) {
        if (journal.closed) throw new RpcError('UNAVAILABLE', 'the daemon is shutting down');
        await next();
      }
      let cursor = token ?? journal.headPosition();
      let sentAny = false;
      let lastSentMs = Date.now();
      for (;;) {
        if (journal.closed) throw new RpcError('UNAVAILABLE', 'the daemon is shutting down; watch again with your last resume token');
        const problem = deps.credentialsProblem(principal, Date.now());
        if (problem !== undefined) throw new UnauthenticatedError(`${problem}; the stream ends`);
        const page = journal.read(cursor, PAGE);
        if (page === 'expired') {
          yield control(EventKind.RESYNC_REQUIRED, cursor, sentAny || !token ? 'too_slow' : 'token_expired');
          return;
        }
        for (const { event, position } of page.events) {
          cursor = position;
          if (!wanted(event) || !deps.visibility.visible(deps.allows, principal, event)) continue;
          // A write waits only while grpc-js holds as much as it will for this stream (the client
          // is not reading): more than the buffer of events arriving meanwhile is falling behind.
          const publishedBefore = journal.published;
          yield event;
          sentAny = true;
          lastSentMs = Date.now();
          if (journal.published - publishedBefore > settings.streamBuffer) {
            yield control(EventKind.RESYNC_REQUIRED, cursor, 'too_slow');
            return;
          }
        }
        cursor = page.cursor;
        if (page.events.length === PAGE) continue;
        const idleMs = settings.heartbeatMs - (Date.now() - lastSentMs);
        if (idleMs <= 0) {
          yield control(EventKind.HEARTBEAT, cursor);
          lastSentMs = Date.now();
          continue;
        }
        // The timer was set for a due time no later than this one (events only postpone it).
        if (heartbeat.fired) {
          heartbeat.fired = false;
          timer = setTimeout(onTimer, idleMs);
        }
        await next();
      }
    } finally {
      clearTimeout(timer);
      unsubscribe();
      ctx.signal.removeEventListener('abort', poke);
      release();
    }
  }

  return {
    watchEvents: (request, ctx) => {
      const principal = ctx.principal;
      if (!principal) throw new UnauthenticatedError('no principal on call');
      const wanted = requestFilter(request.kinds, request.resourceGlobs);
      const token = request.resumeToken === '' ? undefined : decodeToken(request.resumeToken);
      if (request.resumeToken !== '' && !token) throw new InvalidArgumentError('resume_token', 'not a resume token of this service (pass an Event.resume_token unchanged)');
      return watch(principal, (event) => CONTROL_KINDS.has(event.kind) || wanted(event), token, ctx);
    },
  };
}
