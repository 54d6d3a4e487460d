// Reads each RPC's policy from its proto method option: the API is the one
// place that says what an RPC needs.
import { getOption, hasOption, type DescMethod, type DescService } from '@bufbuild/protobuf';
import { rpc_policy, type RpcPolicy } from '../gen/debvisor/v1/options_pb.js';
import { methodPath } from './adapter.js';

export function policyOf(method: DescMethod): RpcPolicy | undefined {
  if (!hasOption(method, rpc_policy)) return undefined;
  const policy = getOption(method, rpc_policy);
  return policy.permission === '' ? undefined : policy;
}

/** Policy by method path, for the chain's per-call lookups. Unannotated methods are absent (denied). */
export function policyIndex(services: readonly DescService[]): Map<string, RpcPolicy> {
  const index = new Map<string, RpcPolicy>();
  for (const service of services) {
    for (const method of service.methods) {
      const policy = policyOf(method);
      if (policy) index.set(methodPath(method), policy);
    }
  }
  return index;
}
