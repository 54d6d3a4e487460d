// debvisorctl operation list|get|wait|cancel over OperationService, and the shared
// "wait for an operation" used by vm shutdown --wait and snapshot prune.
import type { Command } from 'commander';
import { status as Status, type ServiceError } from '@grpc/grpc-js';
import { createClient } from '../client/client.js';
import {
  OperationKind,
  OperationSchema,
  OperationService,
  OperationState,
  ListOperationsResponseSchema,
  type Operation,
} from '../gen/debvisor/v1/operation_pb.js';
import { ResourceKind } from '../gen/debvisor/v1/options_pb.js';
import type { ResolvedConnection } from './connection.js';
import { enumName, enumParser, when, withService, type GlobalFlags } from './command.js';
import { EXIT } from './exit-codes.js';
import { printJson, printRecord, printTable } from './output.js';

/** Exit status of the waiting commands: 0 succeeded, 1 failed or cancelled (or an RPC error), 4 still running at the timeout. */
export const WAIT_EXIT = { SUCCEEDED: EXIT.OK, FAILED: EXIT.FAILED, TIMED_OUT: EXIT.TIMEOUT } as const;

/** Default wait when --timeout is not given: long operations (prune, shutdown) take minutes. */
const DEFAULT_WAIT_SECONDS = 300;

const TERMINAL = new Set([OperationState.SUCCEEDED, OperationState.FAILED, OperationState.CANCELLED]);

function progressBar(operation: Operation, width = 30): string {
  const filled = Math.round((Math.min(100, operation.progressPercent) / 100) * width);
  return `[${'#'.repeat(filled)}${' '.repeat(width - filled)}]`;
}

function progressLine(operation: Operation): string {
  const stage = operation.stage ? ` ${operation.stage}` : '';
  return `${enumName(OperationState, operation.state)} ${operation.progressPercent}%${stage}\n`;
}

function resultRecord(operation: Operation): Record<string, string> {
  const result = operation.result;
  switch (result.case) {
    case 'shutdown':
      return { vm: result.value.vmName, forced: String(result.value.forced) };
    case 'prunePlan':
      return {
        'dry run': String(result.value.dryRun),
        kept: result.value.kept.join(', ') || '(none)',
        deleted: result.value.deleted.join(', ') || '(none)',
      };
    case 'migration':
      return { vm: result.value.vmName, from: result.value.sourceNode, to: result.value.targetNode };
    case 'provisionedVolume':
    case 'clonedVolume':
      return { volume: `${result.value.pool}/${result.value.name}` };
    case 'importedImage':
      return { image: `sha256:${result.value.sha256}`, aliases: result.value.aliases.join(', ') || '(none)', format: result.value.format };
    default:
      return {};
  }
}

/**
 * The operation's target as KIND:NAME, e.g. vm:web-1. Targets usually carry their kind already
 * (and target_kind may be unset): the kind is prefixed only when it is known and missing.
 */
export function targetText(operation: Pick<Operation, 'target' | 'targetKind'>): string {
  if (/^[a-z_]+:/.test(operation.target) || operation.targetKind === ResourceKind.UNSPECIFIED) return operation.target;
  return `${enumName(ResourceKind, operation.targetKind)}:${operation.target}`;
}

export function operationRecord(operation: Operation): Record<string, string> {
  return {
    id: operation.id,
    kind: enumName(OperationKind, operation.kind),
    state: enumName(OperationState, operation.state),
    progress: `${operation.progressPercent}%`,
    ...(operation.stage ? { stage: operation.stage } : {}),
    target: targetText(operation),
    owner: operation.owner,
    ...(operation.node ? { node: operation.node } : {}),
    ...(operation.cancelRequested ? { 'cancel requested': 'yes' } : {}),
    created: when(operation.createTime),
    updated: when(operation.updateTime),
    ...(operation.doneTime ? { done: when(operation.doneTime) } : {}),
    ...(operation.error ? { error: `${operation.error.message} (code ${operation.error.code})` } : {}),
    ...resultRecord(operation),
  };
}

function printOperation(operation: Operation, flags: GlobalFlags): void {
  if (flags.output === 'json') printJson(OperationSchema, operation);
  else printRecord(operationRecord(operation));
}

/** How long a waiting command waits: the global --timeout if given, else DEFAULT_WAIT_SECONDS. */
export function waitSeconds(call: { readonly flags: GlobalFlags; readonly timeoutGiven: boolean }): number {
  return call.timeoutGiven ? Number(call.flags.timeout) : DEFAULT_WAIT_SECONDS;
}

/** What a waiting command knows of its invocation (a withService call has it all). */
export interface WaitingCall {
  readonly connection: ResolvedConnection;
  readonly flags: GlobalFlags;
  readonly timeoutGiven: boolean;
}

/**
 * Follows the operation an RPC answered with (`what` names it if the answer has none) with
 * WatchOperation until it is terminal or `seconds` pass (default: waitSeconds), printing a
 * progress line per change (to stderr with -o json, so stdout stays one JSON document), then
 * prints the last state and exits with WAIT_EXIT.
 */
export async function waitAndExit(call: WaitingCall, operation: Operation | undefined, what: string, seconds = waitSeconds(call), options: { progressBar?: boolean } = {}): Promise<never> {
  if (!operation) throw new Error(`the daemon returned no ${what}`);
  const { connection, flags } = call;
  const operations = createClient(OperationService, connection);
  // On a terminal (text output) a bar redrawn in place on stderr; elsewhere one line per change.
  const bar = options.progressBar === true && process.stderr.isTTY && flags.output === 'text';
  const progress = bar
    ? (text: string) => process.stderr.write(`\r${progressBar(last)} ${text.trim()}\x1b[K${TERMINAL.has(last.state) ? '\n' : ''}`)
    : (text: string) => (flags.output === 'json' ? process.stderr : process.stdout).write(text);
  let last = operation;
  let timedOut = false;
  try {
    if (!TERMINAL.has(last.state)) {
      const stream = operations.watchOperation({ operationId: operation.id }, { metadata: connection.metadata, timeoutMs: seconds * 1000 });
      let lastLine = '';
      for await (const change of stream) {
        if (!change.operation) continue;
        last = change.operation;
        const line = progressLine(last);
        if (line !== lastLine) progress(line);
        lastLine = line;
        if (TERMINAL.has(last.state)) break;
      }
    }
  } catch (err) {
    if ((err as Partial<ServiceError>).code !== Status.DEADLINE_EXCEEDED) throw err;
    timedOut = true;
  } finally {
    operations.close();
  }
  printOperation(last, flags);
  if (timedOut || !TERMINAL.has(last.state)) {
    process.stderr.write(`debvisorctl: operation ${last.id} is still ${enumName(OperationState, last.state)} after ${seconds}s\n`);
    process.exit(WAIT_EXIT.TIMED_OUT);
  }
  process.exit(last.state === OperationState.SUCCEEDED ? WAIT_EXIT.SUCCEEDED : WAIT_EXIT.FAILED);
}

export const WAIT_HELP =
  `\nThe global --timeout sets how long to wait (default ${DEFAULT_WAIT_SECONDS}s); progress lines are printed as the\n` +
  'operation changes (to stderr with -o json).\n' +
  'Exit status: 0 succeeded, 1 failed, cancelled or error, 4 still running at the timeout (3: daemon unreachable).';

export function registerOperationCommands(program: Command): void {
  const withOperations = withService(program, OperationService);
  const operation = program.command('operation').description('long-running operations (migrations, provisioning, pruning, waiting shutdowns)');

  operation
    .command('list')
    .description('list operations visible to you, newest first')
    .option('--state <state>', 'only operations in this state (pending, running, succeeded, failed, cancelled)', enumParser(OperationState))
    .option('--kind <kind>', 'only operations of this kind, e.g. prune_snapshots', enumParser(OperationKind))
    .option('--owner <principal>', 'only operations started by this principal')
    .action(
      withOperations(async ({ client, options, flags }, opts: { state?: OperationState; kind?: OperationKind; owner?: string }) => {
        const response = await client.listOperations(
          { pageSize: 1000, state: opts.state ?? OperationState.UNSPECIFIED, kind: opts.kind ?? OperationKind.UNSPECIFIED, owner: opts.owner ?? '' },
          options,
        );
        if (flags.output === 'json') {
          printJson(ListOperationsResponseSchema, response);
          return;
        }
        printTable(
          ['id', 'kind', 'state', 'progress', 'target', 'owner', 'created'],
          response.operations.map((op) => [op.id, enumName(OperationKind, op.kind), enumName(OperationState, op.state), `${op.progressPercent}%`, targetText(op), op.owner, when(op.createTime)]),
        );
      }),
    );

  operation
    .command('get')
    .description('show one operation')
    .argument('<id>', 'operation id')
    .action(
      withOperations(async ({ client, options, flags }, id: string) => {
        const response = await client.getOperation({ operationId: id }, options);
        if (response.operation) printOperation(response.operation, flags);
      }),
    );

  operation
    .command('wait')
    .description('wait until an operation finishes, showing its progress')
    .argument('<id>', 'operation id')
    .addHelpText('after', WAIT_HELP)
    .action(
      withOperations(async (call, id: string) => {
        const response = await call.client.getOperation({ operationId: id }, call.options);
        await waitAndExit(call, response.operation, `operation for ${id}`);
      }),
    );

  operation
    .command('cancel')
    .description('request cancellation; the operation stops once its current stage can stop safely')
    .argument('<id>', 'operation id')
    .action(
      withOperations(async ({ client, options, flags }, id: string) => {
        const response = await client.cancelOperation({ operationId: id }, options);
        if (response.operation) printOperation(response.operation, flags);
      }),
    );
}
