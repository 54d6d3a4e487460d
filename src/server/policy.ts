// Reads each RPC's policy from its proto method option: the API is the one
// place that says what an RPC needs.
import { getOption, hasOption, type DescMethod, type DescService } from '@bufbuild/protobuf';
import { rpc_policy, type RpcPolicy } from '../gen/debvisor/v1/options_pb.js';
import { methodPath } from './adapter.js';
import { resourcePathsOf } from '../authz/decide.js';

/** The method's policy; undefined (refused to every caller) unless it declares a permission or `any_authenticated`. */
export function policyOf(method: DescMethod): RpcPolicy | undefined {
  if (!hasOption(method, rpc_policy)) return undefined;
  const policy = getOption(method, rpc_policy);
  return policy.permission === '' && !policy.anyAuthenticated ? undefined : policy;
}

/** A policy that says two things at once fails at start-up instead of meaning one of them. */
function checkPolicy(method: DescMethod, policy: RpcPolicy): void {
  const where = `${method.parent.typeName}.${method.name}`;
  if (policy.anyAuthenticated && policy.permission !== '') throw new Error(`${where}: any_authenticated RPCs declare no permission`);
  if (policy.anyAuthenticated && policy.ownerScoped) throw new Error(`${where}: owner_scoped needs a permission`);
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
      checkPolicy(method, policy);
      resourcePathsOf(method);
      index.set(methodPath(method), { method, policy });
    }
  }
  return index;
}
