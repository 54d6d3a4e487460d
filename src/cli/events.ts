// debvisorctl events: a live feed of EventService.WatchEvents, one line (or JSON object) per
// event. The daemon ends every call at its max deadline and on restart: the feed reconnects
// with its last resume token, so nothing is lost or printed twice.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Command } from 'commander';
import { toJson } from '@bufbuild/protobuf';
import { timestampDate } from '@bufbuild/protobuf/wkt';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { EventKind, EventSchema, EventService, type Event } from '../gen/debvisor/v1/event_pb.js';
import { OperationState } from '../gen/debvisor/v1/operation_pb.js';
import { ResourceKind } from '../gen/debvisor/v1/options_pb.js';
import { VmState } from '../gen/debvisor/v1/vm_pb.js';
import { escapeUnsafe, escapeUnsafeJson } from '../rpc/text.js';
import { collect, enumName, enumParser, withService } from './command.js';

/** Exit status when the daemon answers RESYNC_REQUIRED: events were lost, re-list. */
export const RESYNC_EXIT = 5;
/** The daemon ended the call but the feed can go on from its last token. */
const RECONNECT = new Set<number>([Status.DEADLINE_EXCEEDED, Status.UNAVAILABLE]);
const RECONNECT_DELAY_MS = 1000;

function payloadText(event: Event): string {
  const { payload } = event;
  switch (payload.case) {
    case 'vmState':
      return `${enumName(VmState, payload.value.state)} (was ${enumName(VmState, payload.value.previousState)})${payload.value.detail ? ` ${payload.value.detail}` : ''}`;
    case 'vm':
      return `${enumName(VmState, payload.value.state)} ${payload.value.vcpus} vcpu`;
    case 'vmSnapshot':
      return `${payload.value.change} ${payload.value.snapshotName}`;
    case 'operation':
      return `${enumName(OperationState, payload.value.state)} ${payload.value.progressPercent}%${payload.value.message ? ` ${payload.value.message}` : ''}${payload.value.errorCode ? ` ${payload.value.errorCode}` : ''}`;
    case 'node':
      return `${payload.value.ip} ${payload.value.version}`.trim();
    case 'volume':
      return `${payload.value.backend} ${payload.value.sizeBytes} bytes`;
    case 'volumeSnapshot':
      return `${payload.value.volume}@${payload.value.snapshot}`;
    case 'access':
      return [payload.value.change, payload.value.principal, payload.value.role].filter((part) => part !== '').join(' ');
    case 'quota':
      return `${payload.value.dimension}: ${payload.value.used} used + ${payload.value.requested} requested > ${payload.value.limit}`;
    case 'security':
      return payload.value.reason;
    case 'resync':
      return payload.value.reason;
    default:
      return '';
  }
}

/** One readable line: time, kind, resource, actor, short payload. */
export function eventLine(event: Event): string {
  const time = event.time ? timestampDate(event.time).toISOString() : '-';
  const resource = event.resource;
  const where = resource ? `${enumName(ResourceKind, resource.kind)} ${resource.node ? `${resource.node}/` : ''}${resource.name}` : '-';
  const actor = event.actor?.principal ? ` by ${event.actor.principal}${event.actor.impersonatedBy ? ` (via ${event.actor.impersonatedBy})` : ''}` : '';
  const payload = payloadText(event);
  return escapeUnsafe(`${time} ${enumName(EventKind, event.kind)} ${where}${actor}${payload ? `: ${payload}` : ''}`);
}

const parseKind = enumParser(EventKind);

export function registerEventCommands(program: Command): void {
  program
    .command('events')
    .description('follow the live event feed (VM, operation, node, storage and access changes you may see)')
    .option('--kind <kind>', 'only events of this kind, e.g. vm_state_changed (repeatable)', (value: string, previous: EventKind[] | undefined) => [...(previous ?? []), parseKind(value)])
    .option('--resource <glob>', 'only events about resources whose name matches ("*" and "?"; repeatable)', collect)
    .option('--resume <token>', 'continue after the event with this resume token (from -o json)')
    .addHelpText(
      'after',
      '\nPrints one line per event (with -o json, one JSON object per line, heartbeats included, each\n' +
        'with its resume_token). Runs until interrupted, or for --timeout seconds if given; it\n' +
        'reconnects by itself, from its last resume token, when the daemon ends the call.\n' +
        'Exit status: 0 at --timeout, 1 on an error, 3 daemon unreachable, 5 when the daemon answers RESYNC_REQUIRED\n' +
        '(events were lost: the token was too old or the feed too slow; re-list, then run again\n' +
        'without --resume).',
    )
    .action(
      withService(program, EventService)(async ({ client, options, flags, timeoutGiven }, opts: { kind?: EventKind[]; resource?: string[]; resume?: string }) => {
        const endMs = timeoutGiven ? Date.now() + Number(flags.timeout) * 1000 : Number.POSITIVE_INFINITY;
        let token = opts.resume ?? '';
        for (;;) {
          try {
            const left = endMs - Date.now();
            const stream = client.watchEvents(
              { kinds: opts.kind ?? [], resourceGlobs: opts.resource ?? [], resumeToken: token },
              { metadata: options.metadata, ...(Number.isFinite(left) ? { timeoutMs: Math.max(1, left) } : {}) },
            );
            for await (const event of stream) {
              token = event.resumeToken || token;
              if (flags.output === 'json') process.stdout.write(`${escapeUnsafeJson(JSON.stringify(toJson(EventSchema, event)))}\n`);
              else if (event.kind !== EventKind.HEARTBEAT) process.stdout.write(`${eventLine(event)}\n`);
              if (event.kind === EventKind.RESYNC_REQUIRED) {
                const reason = event.payload.case === 'resync' ? event.payload.value.reason : 'unknown';
                process.stderr.write(`debvisorctl: RESYNC_REQUIRED (${reason}): events were lost; re-list what you follow, then run again without --resume\n`);
                process.exit(RESYNC_EXIT);
              }
            }
          } catch (err) {
            const code = (err as Partial<ServiceError>).code;
            if (Date.now() >= endMs && code === Status.DEADLINE_EXCEEDED) return;
            if (code === undefined || !RECONNECT.has(code)) throw err;
            if (code === Status.UNAVAILABLE) await sleep(RECONNECT_DELAY_MS);
          }
        }
      }),
    );
}
