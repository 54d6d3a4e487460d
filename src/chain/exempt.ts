// The only services that skip identity, audit, rate limit and RBAC.
// Health must answer load balancers and systemd probes; reflection only describes the API.
export const EXEMPT_SERVICES: readonly string[] = [
  'grpc.health.v1.Health',
  'grpc.reflection.v1.ServerReflection',
  'grpc.reflection.v1alpha.ServerReflection',
];

const exemptPrefixes = EXEMPT_SERVICES.map((service) => `/${service}/`);

export function isExempt(path: string): boolean {
  return exemptPrefixes.some((prefix) => path.startsWith(prefix));
}
