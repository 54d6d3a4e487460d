// MigrateVM's work, run as an operation on the source node's daemon:
//   virsh migrate (peer to peer, tunnelled) ─┬─ domjobinfo every poll → operation progress
//                                            └─ cancel → domjobabort (virsh is killed only if the job ignores it)
//   success → verify the VM runs (persistent) on the target
//   failure → roll back: make sure the VM runs on the source (resume or start it there), and say so.
import { setTimeout as sleep } from 'node:timers/promises';
import type { Logger } from 'pino';
import { ExecError } from '../backends/exec.js';
import { STATE_TEXT } from '../backends/libvirt/errors.js';
import type { DomainJobInfo, Libvirt } from '../backends/libvirt/virsh.js';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { z } from 'zod';
import { OperationKind } from '../gen/debvisor/v1/operation_pb.js';
import { defineOperationKind, type ResultOf } from '../operations/kinds.js';
import type { OperationHandle } from '../operations/manager.js';
import { RpcError } from '../rpc/errors.js';
import type { NodeConnections } from './connections.js';

/** After domjobabort, virsh gets this long to report the aborted job before it is killed. */
const ABORT_GRACE_MS = 30_000;
const ABORT_RETRY_MS = 200;
/** Progress share of the memory copy; the rest is the hand-over and the verification. */
const COPY_SHARE = 95;

/** MigrateVM: its params, and the MigrationResult it gives. */
export const MIGRATE_VM = defineOperationKind(
  OperationKind.MIGRATE_VM,
  z.object({ vmName: z.string(), sourceNode: z.string(), targetNode: z.string(), compressed: z.boolean(), bandwidthMiBs: z.number() }),
  'migration',
);
export type MigrateParams = z.infer<typeof MIGRATE_VM.params>;

export interface MigrateDeps {
  readonly connections: NodeConnections;
  readonly log: Logger;
  readonly settings: () => { readonly progressPollMs: number; readonly timeoutMs: number };
}


function stageOf(info: DomainJobInfo): string {
  if (info.dataTotalBytes === undefined) return 'migrating: preparing the target';
  const mib = (n: number | undefined) => ((n ?? 0) / 1024 / 1024).toFixed(1);
  return `migrating: ${mib(info.dataProcessedBytes)} MiB sent, ${mib(info.dataRemainingBytes)} of ${mib(info.dataTotalBytes)} MiB remaining`;
}

/** The failure with what the rollback did, keeping the typed cause (and so its status code). */
function withRollbackReport(err: unknown, what: string, report: string): Error {
  if (err instanceof ExecError) {
    return new ExecError({ kind: err.kind, backend: err.backend, command: err.command, args: err.args, exitCode: err.exitCode, stderr: err.stderr, publicMessage: `${what}: ${err.publicMessage ?? 'virsh migrate failed'}; ${report}`, cause: err });
  }
  if (err instanceof RpcError) return new RpcError(err.code, `${what}: ${err.message}; ${report}`, { cause: err });
  return new RpcError('INTERNAL', `${what}; ${report}`, { cause: err });
}

/**
 * Makes sure the VM runs on `libvirt` after a failed migration. Returns a sentence for the report;
 * never throws (the original failure is what the operation reports).
 */
export async function ensureRunning(libvirt: Libvirt, vmName: string, node: string): Promise<{ running: boolean; report: string }> {
  try {
    const state = await libvirt.state(vmName);
    if (state === 'running') return { running: true, report: `the VM is still running on ${node}` };
    if (state === 'paused') {
      await libvirt.resume(vmName);
      return { running: true, report: `the VM was paused on ${node} and has been resumed` };
    }
    if (state === 'shutoff' || state === 'crashed') {
      await libvirt.start(vmName);
      return { running: true, report: `the VM was ${STATE_TEXT[state]} on ${node} and has been started again there` };
    }
    return { running: false, report: `the VM is ${STATE_TEXT[state]} on ${node}; check it` };
  } catch (err) {
    if (err instanceof ExecError && err.kind === 'not_found') return { running: false, report: `the VM is no longer defined on ${node}` };
    return { running: false, report: `rollback could not make sure the VM runs on ${node} (${err instanceof Error ? err.message : String(err)})` };
  }
}

export async function runMigration(op: OperationHandle<MigrateParams>, deps: MigrateDeps): Promise<ResultOf<'migration'>> {
  const params = op.params;
  const { vmName, sourceNode, targetNode } = params;
  const source = deps.connections.localLibvirt;
  const target = deps.connections.of(targetNode);
  const { progressPollMs, timeoutMs } = deps.settings();
  const what = `migration of VM ${JSON.stringify(vmName)} from ${sourceNode} to ${targetNode} failed`;
  op.progress(0, 'migrating: starting');

  // Cancel aborts the JOB, so libvirt and QEMU unwind it cleanly and the VM keeps running on the
  // source; killing virsh is the last resort if the job does not end.
  const cancelled = () => op.signal.aborted;
  const killVirsh = new AbortController();
  let killTimer: NodeJS.Timeout | undefined;
  // Objects and functions, not locals: the poll loop and the handlers change them behind TS's back.
  const job = { finished: false };
  const isFinished = () => job.finished;
  const onCancel = () => {
    op.progress(0, 'cancelling: aborting the migration job');
    killTimer = setTimeout(() => killVirsh.abort(new RpcError('CANCELLED', 'migration cancelled')), ABORT_GRACE_MS);
    // A cancel right after the start can come before libvirt has created the job ("no job is
    // active"): keep asking until an abort is accepted or virsh migrate has returned.
    void (async () => {
      while (!isFinished()) {
        try {
          await source.jobAbort(vmName);
          return;
        } catch (err) {
          deps.log.debug({ err, vm: vmName }, 'domjobabort refused; retrying');
          await sleep(ABORT_RETRY_MS);
        }
      }
    })();
  };
  if (cancelled()) throw new RpcError('CANCELLED', 'operation cancelled');
  op.signal.addEventListener('abort', onCancel, { once: true });

  let transferredBytes = 0;
  const poll = (async () => {
    while (!job.finished) {
      await sleep(progressPollMs);
      if (isFinished()) return;
      try {
        const info = await source.jobInfo(vmName);
        if (info.type === 'None' || info.type === '' || cancelled()) continue;
        transferredBytes = Math.max(transferredBytes, info.dataProcessedBytes ?? 0);
        op.progress(((info.percent ?? 0) * COPY_SHARE) / 100, stageOf(info));
      } catch {
        // The domain leaves the source at the end: a failed poll is not a failed migration.
      }
    }
  })();

  let failure: unknown;
  try {
    await source.migrate(vmName, target.uri, { compressed: params.compressed, bandwidthMiBs: params.bandwidthMiBs, signal: killVirsh.signal, timeoutMs });
  } catch (err) {
    failure = err;
  } finally {
    job.finished = true;
    clearTimeout(killTimer);
    op.signal.removeEventListener('abort', onCancel);
    await poll;
  }

  if (failure !== undefined) {
    // libvirt may report a failure for a migration that did complete (e.g. the confirm step lost its
    // connection): if the VM left the source and runs on the target, it has moved.
    const rollback = await ensureRunning(source, vmName, sourceNode);
    const landed = rollback.running ? false : (await target.state(vmName).catch(() => 'nostate')) === 'running';
    if (!landed) {
      deps.log.warn({ err: failure, vm: vmName, target: targetNode, rollback: rollback.report }, 'migration failed; rolled back');
      if (cancelled()) throw new RpcError('CANCELLED', `migration cancelled; ${rollback.report}`);
      throw withRollbackReport(failure, what, rollback.report);
    }
  }

  // Verification does not honour cancel: once the VM has moved, the truthful answer is success.
  op.progress(COPY_SHARE + 2, 'verifying on the target');
  const moved = await target.getDomain(vmName).catch((err: unknown) => {
    throw withRollbackReport(err, `VM ${JSON.stringify(vmName)}: libvirt reported the migration to ${targetNode} complete, but the target cannot be read`, 'check both nodes');
  });
  if (moved.state !== 'running' || !moved.persistent) {
    const rollback = await ensureRunning(source, vmName, sourceNode);
    throw new RpcError('INTERNAL', `VM ${JSON.stringify(vmName)} is ${STATE_TEXT[moved.state]}${moved.persistent ? '' : ' and not persistent'} on ${targetNode} after the migration; ${rollback.report}`);
  }
  const completed = await target.jobInfo(vmName, { completed: true }).catch(() => undefined);
  const downtimeMs = Number.parseFloat(completed?.fields['Total downtime'] ?? '');
  transferredBytes = Math.max(transferredBytes, completed?.dataProcessedBytes ?? 0);
  return {
    case: 'migration',
    value: {
      vmName,
      sourceNode,
      targetNode,
      ...(Number.isFinite(downtimeMs) ? { downtime: durationFromMs(Math.round(downtimeMs)) } : {}),
      transferredBytes: BigInt(transferredBytes),
    },
  };
}
