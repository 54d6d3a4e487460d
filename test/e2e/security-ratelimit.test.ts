// End-to-end rate limiting: over the limit a call is RESOURCE_EXHAUSTED with a
// retry-after trailer and a google.rpc.RetryInfo, counted and audited.
// (The limiter's accuracy is unit-tested in test/ratelimit.)
import { status as Status } from '@grpc/grpc-js';
import { fromBinary } from '@bufbuild/protobuf';
import { anyUnpack, durationMs } from '@bufbuild/protobuf/wkt';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { RetryInfoSchema } from '../../src/gen/google/rpc/error_details_pb.js';
import { StatusSchema } from '../../src/gen/google/rpc/status_pb.js';
import { rawClientFor, rawUnary, startDaemon, type RawUnaryResult, type RunningDaemon } from '../support/daemon.js';
import { auditOf, issueClientFor, metricSum, metricsText, traceIdOf } from '../support/security.js';

const ADMIN = 'spiffe://debvisor/admin/admin';
const WHOAMI = '/debvisor.v1.AccessService/WhoAmI';
const LIST_ROLES = '/debvisor.v1.AccessService/ListRoles';
const METRICS = [
  'rpc_requests_total',
  'rpc_request_duration_seconds',
  'auth_attempts_total',
  'authz_denials_total',
  'rate_limit_violations_total',
  'audit_write_failures_total',
  'grpc_server_handled_total',
  'grpc_server_handling_seconds',
];

let daemon: RunningDaemon;

beforeAll(async () => {
  daemon = await startDaemon({ config: { rate_limit: { per_role_per_minute: { admin: 30 }, default_per_minute: 30 } } });
});

afterAll(async () => {
  await daemon.cleanup();
});

it('a burst of WhoAmI calls is cut off with RESOURCE_EXHAUSTED, retry-after and RetryInfo', async () => {
  const before = metricSum(await metricsText(daemon), 'rate_limit_violations_total', { principal: ADMIN });
  const client = await rawClientFor(daemon);
  let exhausted: RawUnaryResult | undefined;
  let allowed = 0;
  try {
    for (let i = 0; i < 40 && !exhausted; i++) {
      const result = await rawUnary(client, WHOAMI, Buffer.alloc(0));
      if (result.status.code === Status.OK) allowed++;
      else if (result.status.code === Status.RESOURCE_EXHAUSTED) exhausted = result;
      else throw new Error(`unexpected ${result.status.code}: ${result.status.details}`);
    }
  } finally {
    client.close();
  }
  expect(exhausted, 'no call was refused in 40').toBeDefined();
  const status = exhausted!.status;
  // 30 per minute allows a burst of a tenth of that.
  expect(allowed).toBeGreaterThanOrEqual(1);
  expect(allowed).toBeLessThan(30);
  expect(status.details).toContain(`rate limit of 30 requests per minute exceeded for ${ADMIN}`);

  const retryAfter = status.metadata.get('retry-after')[0];
  expect(typeof retryAfter).toBe('string');
  expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
  expect(Number(retryAfter)).toBeLessThanOrEqual(2);

  const bin = status.metadata.get('grpc-status-details-bin')[0];
  expect(Buffer.isBuffer(bin)).toBe(true);
  const rpcStatus = fromBinary(StatusSchema, bin as Buffer);
  expect(rpcStatus.code).toBe(Status.RESOURCE_EXHAUSTED);
  const retryInfo = rpcStatus.details.map((any) => anyUnpack(any, RetryInfoSchema)).find((info) => info !== undefined);
  expect(retryInfo?.retryDelay).toBeDefined();
  const delayMs = durationMs(retryInfo!.retryDelay!);
  expect(delayMs).toBeGreaterThan(0);
  expect(delayMs).toBeLessThanOrEqual(2000);
  expect(Math.ceil(delayMs / 1000)).toBe(Number(retryAfter));

  const after = metricSum(await metricsText(daemon), 'rate_limit_violations_total', { principal: ADMIN });
  expect(after).toBe(before + 1);

  const record = await auditOf(daemon, 'CALL', traceIdOf(status));
  expect(record).toMatchObject({ method: WHOAMI, code: 'RESOURCE_EXHAUSTED', principal: { id: ADMIN } });
  expect(String(record.reason)).toContain('rate limit of 30 requests per minute exceeded');
});

it('exports every security metric after traffic', async () => {
  // An authentication failure and an authorization denial, so those counters have samples too.
  const anonymous = await rawClientFor(daemon, null);
  const nobody = await rawClientFor(daemon, await issueClientFor(daemon.pki, 'spiffe://debvisor/test/nobody'));
  try {
    expect((await rawUnary(anonymous, WHOAMI, Buffer.alloc(0))).status.code).toBe(Status.UNAUTHENTICATED);
    expect((await rawUnary(nobody, LIST_ROLES, Buffer.alloc(0))).status.code).toBe(Status.PERMISSION_DENIED);
  } finally {
    anonymous.close();
    nobody.close();
  }
  const text = await metricsText(daemon);
  for (const name of METRICS) {
    expect(text, name).toMatch(new RegExp(`^# TYPE ${name} `, 'm'));
  }
  expect(metricSum(text, 'auth_attempts_total', { method: 'none', result: 'failure' })).toBe(1);
  expect(metricSum(text, 'authz_denials_total', { principal: 'spiffe://debvisor/test/nobody', permission: 'access:role:list' })).toBe(1);
  expect(text).toMatch(/^audit_write_failures_total 0$/m);
  expect(metricSum(text, 'grpc_server_handled_total', { grpc_method: 'WhoAmI', grpc_code: 'RESOURCE_EXHAUSTED' })).toBeGreaterThanOrEqual(1);
  expect(metricSum(text, 'rpc_requests_total', { method: 'WhoAmI', status: 'OK' })).toBeGreaterThanOrEqual(1);
  expect(metricSum(text, 'grpc_server_handling_seconds_count', { grpc_method: 'WhoAmI' })).toBeGreaterThanOrEqual(2);
  expect(metricSum(text, 'rpc_request_duration_seconds_count', { method: 'WhoAmI' })).toBeGreaterThanOrEqual(2);
});
