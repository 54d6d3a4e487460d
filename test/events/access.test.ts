// Access events from AccessAdmin on the real embedded store, and SECURITY_ALERT from the real
// audit log that records those changes: keys (created, revoked, rotated), roles and bindings, each
// once and only when something changed; the alert's reason scrubbed like the audit line, and a
// flood of SECURITY records bounded (identical reasons coalesced per second, a cap per second).
import pino from 'pino';
import { Registry } from 'prom-client';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessAdmin } from '../../src/access/admin.js';
import { AccessState } from '../../src/access/state.js';
import type { AuditLog } from '../../src/audit/log.js';
import { PermissionCatalogue } from '../../src/authz/catalogue.js';
import { configSchema, type Config } from '../../src/config/schema.js';
import { SecurityAlerts } from '../../src/events/security-alerts.js';
import { EventKind } from '../../src/gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { QuotaManager } from '../../src/quota/manager.js';
import type { CallContext } from '../../src/rpc/context.js';
import { methodIndex } from '../../src/rpc/policy.js';
import type { Principal } from '../../src/rpc/principal.js';
import { API_SERVICES } from '../../src/services/registry.js';
import { LeaseHolder } from '../../src/store/lease-holder.js';
import { createRepositories } from '../../src/store/repositories.js';
import type { Store } from '../../src/store/store.js';
import { openLog, tempDir } from '../audit/helpers.js';
import { RecordingSink } from '../support/recording-sink.js';
import { embeddedHarness, type StoreHarness } from '../support/store-harness.js';

const admin: Principal = { id: 'spiffe://debvisor/admin/admin', kind: 'certificate' };
const developer: Principal = { id: 'spiffe://debvisor/dev/dev', kind: 'certificate' };
const config: Config = configSchema.parse({ auth: { bootstrap_admins: [admin.id], default_bindings: { [developer.id]: ['developer'] } } });
const ctx = (traceId: string, principal = admin): CallContext => ({ traceId, principal, deadline: new Date(Date.now() + 60_000), signal: running.signal, peer: '10.0.0.9:5000' });
const running = new AbortController();
const dirs = tempDir();

let harness: StoreHarness;
let store: Store;
let lease: LeaseHolder;
let audit: AuditLog;
let admin_: AccessAdmin;
const sink = new RecordingSink();
const alerts = new RecordingSink();

beforeAll(async () => {
  harness = await embeddedHarness();
  store = await harness.open();
  const repos = createRepositories(store);
  const state = new AccessState(repos, config.auth, (err) => {
    throw err;
  });
  await state.start(running.signal);
  lease = new LeaseHolder(store, 15, pino({ level: 'silent' }));
  audit = await openLog(dirs.dir, { onSecurityRecord: new SecurityAlerts({ sink: alerts, node: 'node-a' }).record });
  const quotas = new QuotaManager(store, repos, () => config, () => lease.lease());
  admin_ = new AccessAdmin(repos, state, audit, () => config, quotas, PermissionCatalogue.of(methodIndex(API_SERVICES).values()), sink);
});

afterAll(async () => {
  running.abort();
  await audit.close();
  await lease.release();
  await store.close();
  await harness.cleanup();
  dirs.cleanup();
});

const keyRequest = { description: 'ci', permissions: ['storage:volume:list'], resourceGlobs: [], ttlMs: undefined, allowedCidrs: [], owner: 'ci-bot' };

describe('access events', () => {
  it('API keys: created, revoked once, rotation as created + revoked ("rotated"); nothing for a refused create', async () => {
    await expect(admin_.createApiKey(ctx('t-refused', developer), { ...keyRequest, owner: '', permissions: ['access:role:put'] })).rejects.toMatchObject({ code: 'PERMISSION_DENIED' });
    expect(sink.events).toEqual([]);

    const { record } = await admin_.createApiKey(ctx('t-create'), keyRequest);
    expect(sink.events).toMatchObject([
      {
        kind: EventKind.APIKEY_CREATED,
        resource: { kind: ResourceKind.API_KEY, name: record.id, owner: 'ci-bot' },
        actor: { principal: admin.id },
        traceId: 't-create',
        payload: { case: 'access', value: { change: 'created', principal: 'ci-bot' } },
      },
    ]);
    sink.clear();

    const { record: fresh } = await admin_.rotateApiKey(ctx('t-rotate'), record.id, 60_000);
    expect(sink.events).toMatchObject([
      { kind: EventKind.APIKEY_CREATED, resource: { name: fresh.id, owner: 'ci-bot' }, traceId: 't-rotate', payload: { value: { change: 'created' } } },
      { kind: EventKind.APIKEY_REVOKED, resource: { name: record.id, owner: 'ci-bot' }, traceId: 't-rotate', payload: { value: { change: 'rotated' } } },
    ]);
    sink.clear();

    await admin_.revokeApiKey(ctx('t-revoke'), fresh.id);
    await admin_.revokeApiKey(ctx('t-revoke-again'), fresh.id);
    expect(sink.events).toMatchObject([{ kind: EventKind.APIKEY_REVOKED, resource: { kind: ResourceKind.API_KEY, name: fresh.id, owner: 'ci-bot' }, traceId: 't-revoke', payload: { value: { change: 'revoked' } } }]);
    expect(sink.events).toHaveLength(1);
    sink.clear();
  });

  it('roles and bindings: created, changed, deleted with the bindings the delete removed; nothing when nothing changed', async () => {
    const role = { name: 'auditor', description: '', permissions: ['storage:volume:list'], denyPermissions: [], resourceGlobs: [] };
    await admin_.putRole(ctx('t-role'), role);
    await admin_.putRole(ctx('t-role-2'), { ...role, description: 'reads volumes' });
    await admin_.bindRole(ctx('t-bind'), 'ci-bot', 'auditor');
    await admin_.bindRole(ctx('t-bind-again'), 'ci-bot', 'auditor');
    await admin_.bindRole(ctx('t-bind-2'), 'ops-bot', 'auditor');
    await admin_.unbindRole(ctx('t-unbind'), 'ops-bot', 'auditor');
    await admin_.unbindRole(ctx('t-unbind-again'), 'ops-bot', 'auditor');
    await expect(admin_.putRole(ctx('t-builtin'), { ...role, name: 'admin' })).rejects.toMatchObject({ code: 'FAILED_PRECONDITION' });
    await admin_.deleteRole(ctx('t-delete'), 'auditor');
    const summary = sink.events.map((e) => [e.kind, e.resource?.kind, e.resource?.name, e.payload?.case === 'access' ? e.payload.value.change : '', e.traceId]);
    expect(summary).toEqual([
      [EventKind.ROLE_CHANGED, ResourceKind.ROLE, 'auditor', 'created', 't-role'],
      [EventKind.ROLE_CHANGED, ResourceKind.ROLE, 'auditor', 'changed', 't-role-2'],
      [EventKind.BINDING_CHANGED, ResourceKind.PRINCIPAL, 'ci-bot', 'created', 't-bind'],
      [EventKind.BINDING_CHANGED, ResourceKind.PRINCIPAL, 'ops-bot', 'created', 't-bind-2'],
      [EventKind.BINDING_CHANGED, ResourceKind.PRINCIPAL, 'ops-bot', 'deleted', 't-unbind'],
      [EventKind.ROLE_CHANGED, ResourceKind.ROLE, 'auditor', 'deleted', 't-delete'],
      [EventKind.BINDING_CHANGED, ResourceKind.PRINCIPAL, 'ci-bot', 'deleted', 't-delete'],
    ]);
    expect(sink.of(EventKind.BINDING_CHANGED)[0]).toMatchObject({ payload: { value: { principal: 'ci-bot', role: 'auditor' } } });
  });

  it('every SECURITY record the changes wrote is a SECURITY_ALERT with its reason, actor and trace id', () => {
    const reasons = alerts.events.map((e) => [e.traceId, e.payload?.case === 'security' ? e.payload.value.reason : '']);
    expect(reasons).toContainEqual(['t-create', 'api key created']);
    expect(reasons).toContainEqual(['t-rotate', 'api key rotated']);
    expect(reasons).toContainEqual(['t-delete', 'role deleted']);
    expect(alerts.events.find((e) => e.traceId === 't-create')).toMatchObject({ kind: EventKind.SECURITY_ALERT, actor: { principal: admin.id }, resource: { node: 'node-a' } });
  });
});

describe('SecurityAlerts bounds', () => {
  it('scrubs secrets, coalesces identical reasons within a second and caps distinct ones, counting what it held back', async () => {
    const registry = new Registry();
    const out = new RecordingSink();
    let now = 1_000_000;
    const bounded = new SecurityAlerts({ sink: out, node: 'n', registry, maxPerSecond: 5, now: () => now });
    bounded.record({ type: 'SECURITY', trace_id: 't0', reason: 'key dvk_abc123_SECRETSECRETSECRET presented from a blocked address' });
    expect(out.events).toHaveLength(1);
    expect(JSON.stringify(out.events[0]?.payload)).not.toContain('SECRETSECRETSECRET');
    for (let i = 0; i < 1000; i++) bounded.record({ type: 'SECURITY', trace_id: `t${i}`, reason: 'repeated failure' });
    for (let i = 0; i < 1000; i++) bounded.record({ type: 'SECURITY', trace_id: `d${i}`, reason: `distinct ${i}` });
    expect(out.events).toHaveLength(5);
    const counted = await registry.getSingleMetricAsString('debvisor_security_alerts_coalesced_total');
    expect(counted).toContain('why="duplicate"} 999');
    expect(counted).toContain('why="rate"} 997');
    now += 1000;
    bounded.record({ type: 'SECURITY', trace_id: 'next', reason: 'repeated failure' });
    expect(out.events.at(-1)).toMatchObject({ traceId: 'next' });
  });

  it('keeps the same reason about two objects in one second apart (two keys created are two alerts)', () => {
    const out = new RecordingSink();
    const bounded = new SecurityAlerts({ sink: out, node: 'n', now: () => 5_000_000 });
    bounded.record({ type: 'SECURITY', trace_id: 'k1', reason: 'api key created', object: 'api_key:one' });
    bounded.record({ type: 'SECURITY', trace_id: 'k2', reason: 'api key created', object: 'api_key:two' });
    bounded.record({ type: 'SECURITY', trace_id: 'k2-again', reason: 'api key created', object: 'api_key:two' });
    expect(out.events.map((e) => [e.traceId, e.resource?.name])).toEqual([
      ['k1', 'api_key:one'],
      ['k2', 'api_key:two'],
    ]);
  });
});
