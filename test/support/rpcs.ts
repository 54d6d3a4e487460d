// Every RPC of the API with what its policy option declares: the rows of the RBAC tables.
import { compilePolicy, methodPath } from '../../src/rpc/policy.js';
import { API_SERVICES } from '../../src/services/registry.js';

export interface Rpc {
  readonly path: string;
  readonly permission: string;
  /** Declared open to every authenticated caller (WhoAmI): no permission. */
  readonly anyAuthenticated: boolean;
  readonly streaming: boolean;
}

export const RPCS: readonly Rpc[] = API_SERVICES.flatMap((service) =>
  service.methods.map((method) => {
    const policy = compilePolicy(method);
    if (!policy) throw new Error(`${methodPath(method)} has no rpc_policy`);
    return { path: methodPath(method), permission: policy.permission, anyAuthenticated: policy.anyAuthenticated, streaming: method.methodKind === 'server_streaming' };
  }),
);
