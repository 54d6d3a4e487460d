// Reads each RPC's policy from its proto method option: the API is the one
// place that says what an RPC needs.
import { getOption, hasOption, type DescMethod, type DescService } from '@bufbuild/protobuf';
import { rpc_policy, type RpcPolicy } from '../gen/debvisor/v1/options_pb.js';
import { methodPath } from './adapter.js';
import { resourcePathsOf } from '../authz/decide.js';

export function policyOf(method: DescMethod): RpcPolicy | undefined {
  if (!hasOption(method, rpc_policy)) return undefined;
  const policy = getOption(method, rpc_policy);
  return policy.permission === '' ? undefined : policy;
}

export interface MethodEntry {
  readonly method: DescMethod;
  readonly policy: RpcPolicy;
}

/**
 * Method and policy by path, for the chain's per-call lookups. Unannotated methods are
 * absent, so the RBAC step denies them. A policy naming a request field that does not
 * exist fails here, at start-up, rather than on a call.
 */
export function methodIndex(services: readonly DescService[]): Map<string, MethodEntry> {
  const index = new Map<string, MethodEntry>();
  for (const service of services) {
    for (const method of service.methods) {
      const policy = policyOf(method);
      if (!policy) continue;
      resourcePathsOf(method);
      index.set(methodPath(method), { method, policy });
    }
  }
  return index;
}
