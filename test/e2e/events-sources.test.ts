// The daemon's own changes on a WatchEvents stream, end to end: one daemon with a real
// libvirtd (test driver), its real sources publishing into the journal. Each event names the
// caller and the trace id of the call's audit record; a change made with plain virsh names
// nobody; a viewer sees VMs and operations but no security alerts, and a key scoped to
// `vm=build-*` sees only those VMs.
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import type { ClientReadableStream } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { TypedClient } from '../../src/client/client.js';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { EventKind, EventService, type Event } from '../../src/gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { OperationState } from '../../src/gen/debvisor/v1/operation_pb.js';
import { VmService, VmState } from '../../src/gen/debvisor/v1/vm_pb.js';
import { auditRecords, clientFor, type RunningDaemon } from '../support/daemon.js';
import { grpcHealth } from '../support/health.js';
import { defineTestDomain, startLibvirt, VIRSH, type TestLibvirt } from '../support/libvirt.js';
import { issueClientFor } from '../support/security.js';
import { startTestingDaemon } from '../support/testing.js';

const run = promisify(execFile);
const T = { timeoutMs: 15_000 };
const WAIT = { timeout: 30_000, interval: 25 };
const ADMIN = 'spiffe://debvisor/admin/admin';
const VIEWER = 'spiffe://debvisor/ops/viewer';

/** A WatchEvents stream read in the background. */
class Feed {
  readonly events: Event[] = [];
  readonly open: Promise<void>;
  private readonly call: ClientReadableStream<Event>;

  constructor(client: TypedClient<(typeof EventService)['method']>, metadata: Record<string, string> = {}) {
    this.call = client.watchEvents({}, { metadata }) as unknown as ClientReadableStream<Event>;
    // Headers arrive once the stream's position is set: nothing published after is missed.
    this.open = new Promise((resolve, reject) => {
      this.call.once('metadata', () => resolve());
      this.call.once('error', reject);
    });
    this.call.on('data', (event: Event) => this.events.push(event));
    this.call.on('error', (err: Error) => (this.ended = `failed: ${err.message}`));
    this.call.on('end', () => (this.ended ??= 'ended by the server'));
  }

  /** How the stream stopped, if it did (for the failure message). */
  private ended: string | undefined;

  /** Waits for the first event matching `match`. */
  find(match: (event: Event) => boolean): Promise<Event> {
    return vi.waitFor(() => {
      const found = this.events.find(match);
      if (!found) {
        const seen = this.events.slice(-8).map((e) => `${EventKind[e.kind]} ${e.resource?.name ?? ''}`);
        throw new Error(`no such event yet (stream ${this.ended ?? 'open'}; ${this.events.length} events, the last: ${seen.join(', ')})`);
      }
      return found;
    }, WAIT);
  }

  close(): void {
    this.call.cancel();
  }
}

/** The trace id of the one OK call of `method` whose request (audit level `request`) contains `text`. */
function traceOfCall(daemon: RunningDaemon, method: string, text: string): Promise<string> {
  return vi.waitFor(() => {
    const found = auditRecords(daemon).filter((r) => r.type === 'CALL' && r.method === method && r.code === 'OK' && JSON.stringify(r.request ?? {}).includes(text));
    if (found.length !== 1) throw new Error(`${found.length} audit records of ${method} with ${text}`);
    return String(found[0]?.trace_id);
  }, WAIT);
}

let lv: TestLibvirt;
let daemon: RunningDaemon;
let admin: TypedClient<(typeof AccessService)['method']>;
let vms: TypedClient<(typeof VmService)['method']>;
let testing: TypedClient<(typeof TestingService)['method']>;
let adminFeed: Feed;
let viewerFeed: Feed;
let keyFeed: Feed;
const clients: { close(): void }[] = [];
const virsh = (...args: string[]) => run(VIRSH, ['-q', '-c', lv.uri, ...args], { env: { LC_ALL: 'C', PATH: '/usr/bin:/bin' } });

beforeAll(async () => {
  lv = await startLibvirt();
  await defineTestDomain(lv, 'build-1', '000000000001');
  await defineTestDomain(lv, 'web-1', '000000000002');
  daemon = await startTestingDaemon({
    env: { DEBVISOR_RPCD_LIBVIRT_URI: lv.uri },
    // Audit level `request`: the test finds each call's record (and trace id) by what it asked.
    config: { auth: { default_bindings: { [VIEWER]: ['viewer'] } }, events: { batch_ms: 20 }, audit: { level: 'request' } },
  });
  await vi.waitFor(async () => expect(await grpcHealth(daemon, VmService.typeName)).toBe('SERVING'), WAIT);
  admin = await clientFor(AccessService, daemon);
  vms = await clientFor(VmService, daemon);
  testing = await clientFor(TestingService, daemon);
  const viewer = await issueClientFor(daemon.pki, VIEWER);
  const { secret } = await admin.createApiKey({ description: 'build watcher', permissions: ['event:watch', 'vm:get'], resourceGlobs: [{ kind: ResourceKind.VM, glob: 'build-*' }] }, T);
  const adminEvents = await clientFor(EventService, daemon);
  const viewerEvents = await clientFor(EventService, daemon, viewer);
  const keyEvents = await clientFor(EventService, daemon, null);
  clients.push(admin, vms, testing, adminEvents, viewerEvents, keyEvents);
  adminFeed = new Feed(adminEvents);
  viewerFeed = new Feed(viewerEvents);
  keyFeed = new Feed(keyEvents, { authorization: `Bearer ${secret}` });
  await Promise.all([adminFeed.open, viewerFeed.open, keyFeed.open]);
}, 120_000);

afterAll(async () => {
  for (const feed of [adminFeed, viewerFeed, keyFeed]) (feed as Feed | undefined)?.close();
  for (const client of clients) client.close();
  await (daemon as RunningDaemon | undefined)?.cleanup();
  await (lv as TestLibvirt | undefined)?.stop();
});

describe("the daemon's changes on WatchEvents", () => {
  it('StartVm: VM_STATE_CHANGED names the caller and the call’s trace id; plain virsh names nobody', async () => {
    await vms.startVm({ vmName: 'build-1' }, T);
    const traceId = await traceOfCall(daemon, '/debvisor.v1.VmService/StartVm', 'build-1');
    const started = await adminFeed.find((e) => e.kind === EventKind.VM_STATE_CHANGED && e.resource?.name === 'build-1' && e.payload.case === 'vmState' && e.payload.value.state === VmState.RUNNING);
    expect(started.actor?.principal).toBe(ADMIN);
    expect(started.traceId).toBe(traceId);
    expect(started.resource?.kind).toBe(ResourceKind.VM);

    await virsh('destroy', 'build-1');
    const stopped = await adminFeed.find((e) => e.kind === EventKind.VM_STATE_CHANGED && e.resource?.name === 'build-1' && e.payload.case === 'vmState' && e.payload.value.state === VmState.SHUT_OFF);
    expect(stopped.actor?.principal ?? '').toBe('');
    expect(stopped.traceId).toBe('');
  });

  it('a key scoped to vm=build-* sees build-1 and never web-1; the viewer sees both', async () => {
    await virsh('start', 'web-1');
    await virsh('start', 'build-1');
    const isStart = (name: string) => (e: Event) => e.kind === EventKind.VM_STATE_CHANGED && e.resource?.name === name && e.payload.case === 'vmState' && e.payload.value.state === VmState.RUNNING;
    await keyFeed.find(isStart('build-1'));
    await viewerFeed.find(isStart('web-1'));
    // web-1 started first, so the key's stream had its chance to carry it.
    expect(keyFeed.events.map((e) => e.resource?.name)).not.toContain('web-1');
  });

  it('CreateApiKey: APIKEY_CREATED and a SECURITY_ALERT with the call’s trace id; the viewer sees neither alert', async () => {
    const { secret, apiKey } = await admin.createApiKey({ description: 'events test', permissions: ['vm:list'] }, T);
    const keyId = apiKey?.keyId ?? '';
    const traceId = await traceOfCall(daemon, '/debvisor.v1.AccessService/CreateApiKey', 'events test');
    const keyEvent = await adminFeed.find((e) => e.kind === EventKind.APIKEY_CREATED && e.resource?.name === keyId);
    expect(keyEvent.traceId).toBe(traceId);
    expect(keyEvent.actor?.principal).toBe(ADMIN);
    expect(keyEvent.resource?.owner).toBe(ADMIN);
    const alert = await adminFeed.find((e) => e.kind === EventKind.SECURITY_ALERT && e.traceId === traceId);
    expect(alert.payload.case === 'security' && alert.payload.value.reason).toBe('api key created');
    expect(JSON.stringify(alert, (_key, value: unknown) => (typeof value === 'bigint' ? String(value) : value))).not.toContain(secret);
    // The viewer lists keys (its own only) and holds no access:audit:read: neither event is the viewer's.
    const marker = await testing.startTestOperation({ duration: durationFromMs(10), steps: 1 }, T);
    await viewerFeed.find((e) => e.kind === EventKind.OPERATION_FINISHED && e.resource?.name === marker.operation?.id);
    expect(viewerFeed.events.filter((e) => e.kind === EventKind.SECURITY_ALERT || e.kind === EventKind.APIKEY_CREATED)).toEqual([]);
  });

  it('an operation: OPERATION_UPDATED while it runs, then exactly one OPERATION_FINISHED', async () => {
    const id = (await testing.startTestOperation({ duration: durationFromMs(50), steps: 2, latch: 'events-op' }, T)).operation?.id ?? '';
    const traceId = await traceOfCall(daemon, '/debvisor.testing.v1.TestingService/StartTestOperation', 'events-op');
    const running = await adminFeed.find((e) => e.kind === EventKind.OPERATION_UPDATED && e.resource?.name === id && e.payload.case === 'operation' && e.payload.value.state === OperationState.RUNNING);
    expect(running.traceId).toBe(traceId);
    expect(running.resource?.owner).toBe(ADMIN);
    await testing.openTestLatch({ latch: 'events-op' }, T);
    const finished = await adminFeed.find((e) => e.kind === EventKind.OPERATION_FINISHED && e.resource?.name === id);
    expect(finished.payload.case === 'operation' && finished.payload.value.state).toBe(OperationState.SUCCEEDED);
    // Anything after it on the stream would be a second FINISHED: wait for a later event to be sure none came.
    const marker = await testing.startTestOperation({ duration: durationFromMs(10), steps: 1 }, T);
    await adminFeed.find((e) => e.kind === EventKind.OPERATION_FINISHED && e.resource?.name === marker.operation?.id);
    expect(adminFeed.events.filter((e) => e.kind === EventKind.OPERATION_FINISHED && e.resource?.name === id)).toHaveLength(1);
  });
});
