// The services that skip the API's chain (identity, audit, bounds, rate limit, RBAC); chain.ts
// selects what runs for them instead. Health must answer load balancers and systemd probes
// without a credential; reflection only describes the API. Both are limited per source address,
// and reflection requires an authenticated caller unless `server.reflection` says otherwise.
export const HEALTH_SERVICE = 'grpc.health.v1.Health';
export const REFLECTION_SERVICES: readonly string[] = ['grpc.reflection.v1.ServerReflection', 'grpc.reflection.v1alpha.ServerReflection'];
export const EXEMPT_SERVICES: readonly string[] = [HEALTH_SERVICE, ...REFLECTION_SERVICES];

export type ExemptKind = 'health' | 'reflection';

/** Which exempt service a method path belongs to, if any. */
export function exemptKind(path: string): ExemptKind | undefined {
  if (path.startsWith(`/${HEALTH_SERVICE}/`)) return 'health';
  if (REFLECTION_SERVICES.some((service) => path.startsWith(`/${service}/`))) return 'reflection';
  return undefined;
}

export function isExempt(path: string): boolean {
  return exemptKind(path) !== undefined;
}
