// Step 4: one audit record per call. A mutating call's record is written and fsynced
// before anything else runs (blocking-strict): if that fails the call is refused
// UNAVAILABLE and nothing runs. Reads are logged when they finish, batched.
import { status as Status } from '@grpc/grpc-js';
import type { Message } from '@bufbuild/protobuf';
import type { Logger } from 'pino';
import { redactRequest } from '../audit/redact.js';
import type { AuditPrincipal } from '../audit/event.js';
import { AuditWriteError, type AuditLog } from '../audit/log.js';
import type { CompiledPolicy, PolicyIndex } from '../rpc/policy.js';
import type { AuditedRequest, CallState } from '../rpc/context.js';
import { RpcError } from '../rpc/errors.js';
import { auditPrincipal } from '../audit/principal.js';
import type { Step } from './step.js';

const CODE_NAMES = Object.fromEntries(Object.entries(Status).map(([name, code]) => [code, name])) as Record<number, string>;

export interface AuditDeps {
  readonly audit: AuditLog;
  readonly level: 'metadata' | 'request';
  readonly methods: PolicyIndex;
  readonly log: Logger;
}


/** The caller as its audit records name it (unset before identity ran, or when it refused). */
function principalOf(state: CallState): AuditPrincipal | undefined {
  return state.principal && auditPrincipal(state.principal, state.roles ?? [], state.impersonatorRoles);
}

const NOTHING_TO_DESCRIBE: AuditedRequest = Object.freeze({ object: undefined, request: undefined });

export function audit(deps: AuditDeps): Step {
  /** What the records of a call say about its request: worked out once (a mutation has two records). */
  const describe = (state: CallState, policy: CompiledPolicy, request: unknown): AuditedRequest => {
    if (state.audited) return state.audited;
    const object = policy.auditObjectOf(request as Message);
    const redacted = deps.level === 'request' ? redactRequest(policy.method.input, request as Message, deps.level) : undefined;
    // Most reads name no object and log no request: they share one answer instead of an object each.
    return (state.audited = object === undefined && redacted === undefined ? NOTHING_TO_DESCRIBE : { object, request: redacted });
  };

  const writeStarted = async (state: CallState, policy: CompiledPolicy, message: unknown): Promise<void> => {
    const { object, request } = describe(state, policy, message);
    try {
      // Built like the finishing record below; absent members are undefined.
      await deps.audit.writeDurable({
        type: 'CALL',
        trace_id: state.traceId,
        principal: principalOf(state),
        source: state.peer,
        method: state.path,
        request,
        object,
        details: { stage: 'started' },
      });
    } catch (err) {
      if (!(err instanceof AuditWriteError)) throw err;
      deps.log.error({ err: err.message, trace_id: state.traceId, method: state.path }, 'audit write failed; refusing mutating call');
      throw new RpcError('UNAVAILABLE', 'the audit log cannot be written, so this change was not made; retry later', { cause: err });
    }
  };

  return {
    // Not async: a read returns nothing, so the chain goes on synchronously (an async hook
    // costs every call a promise and a microtask hop); only a mutation waits for the disk.
    onMessage: (state, { path }, message) => {
      state.request = message;
      const policy = deps.methods.get(path);
      if (!policy?.mutates) return undefined;
      return writeStarted(state, policy, message);
    },
    onStatus: (status, state) => {
      if (!state) return;
      const policy = deps.methods.get(state.path);
      const described = policy && state.request !== undefined ? describe(state, policy, state.request) : undefined;
      // One literal with every member (no spreads, nothing added later): this runs once per
      // call. Absent members are undefined, which serializeEvent leaves out; it also fixes the key order.
      deps.audit.write({
        type: 'CALL',
        trace_id: state.traceId,
        principal: principalOf(state),
        source: state.peer,
        method: state.path,
        decision: state.decision,
        code: CODE_NAMES[status.code] ?? String(status.code),
        // Microsecond resolution: shorter to print (this is per call) and finer than any reader needs.
        duration_ms: Math.round((performance.now() - state.startedAt) * 1000) / 1000,
        request: described?.request,
        object: described?.object,
        reason: status.code === Status.OK ? undefined : status.details,
      });
    },
  };
}
