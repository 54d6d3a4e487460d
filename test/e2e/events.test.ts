// EventService.WatchEvents against real daemons over mTLS: scoping by key globs and roles,
// request validation, heartbeats, the per-principal stream limit, a slow consumer cut off
// with bounded memory, an expired token, the CLI feed; and on a shared etcd, delivery from
// one daemon to another within 1 s, resume across a daemon restart with no gap or repeat, and
// streams ended with UNAVAILABLE when their daemon stops.
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { status as Status, type ClientReadableStream, type ServiceError } from '@grpc/grpc-js';
import type { MessageInitShape } from '@bufbuild/protobuf';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { TypedClient } from '../../src/client/client.js';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { AccessService } from '../../src/gen/debvisor/v1/access_pb.js';
import { EventKind, EventService, type Event, type EventSchema, type WatchEventsRequestSchema } from '../../src/gen/debvisor/v1/event_pb.js';
import { ResourceKind } from '../../src/gen/debvisor/v1/options_pb.js';
import { VmState } from '../../src/gen/debvisor/v1/vm_pb.js';
import { ensureDevPki } from '../../src/pki/index.js';
import { ctlProcess } from '../support/ctl.js';
import { clientFor, type ClientPem, type RunningDaemon } from '../support/daemon.js';
import { startEtcd, type EtcdCluster } from '../support/etcd.js';
import { issueClientFor, reloadDaemon, writeDevCrl } from '../support/security.js';
import { startTestingDaemon } from '../support/testing.js';

const WAIT = { timeout: 30_000, interval: 25 };
const T = { timeoutMs: 15_000 };

type NewEvent = MessageInitShape<typeof EventSchema>;
type Request = MessageInitShape<typeof WatchEventsRequestSchema>;
const vmEvent = (name: string, node = 'n1'): NewEvent => ({
  kind: EventKind.VM_STATE_CHANGED,
  resource: { kind: ResourceKind.VM, node, name },
  actor: { principal: 'spiffe://debvisor/test/publisher' },
  payload: { case: 'vmState', value: { state: VmState.RUNNING, previousState: VmState.SHUT_OFF, detail: 'Started Booted' } },
});
const nodeEvent = (name: string): NewEvent => ({ kind: EventKind.NODE_ONLINE, resource: { kind: ResourceKind.NODE, name } });

/** A WatchEvents call read in the background: what came, and how it ended. */
class Feed {
  readonly events: Event[] = [];
  ended: { code: number; details: string } | undefined;
  readonly open: Promise<void>;
  readonly call: ClientReadableStream<Event>;

  constructor(client: TypedClient<(typeof EventService)['method']>, request: Request, metadata: Record<string, string> = {}) {
    this.call = client.watchEvents(request, { metadata }) as unknown as ClientReadableStream<Event>;
    // The daemon sends its headers once the stream's position is set: from then on nothing published is missed.
    this.open = new Promise((resolve, reject) => {
      this.call.once('metadata', () => resolve());
      this.call.once('error', reject);
    });
    this.open.catch(() => undefined);
    this.call.on('data', (event: Event) => this.events.push(event));
    this.call.on('error', (err: ServiceError) => (this.ended = { code: err.code, details: err.details }));
    this.call.on('end', () => (this.ended ??= { code: Status.OK, details: '' }));
  }

  names(kind?: EventKind): string[] {
    return this.events.filter((e) => kind === undefined || e.kind === kind).map((e) => e.resource?.name ?? '');
  }

  cancel(): void {
    // A paused stream would hold its final status behind the unread messages.
    this.call.resume();
    this.call.cancel();
  }
}

async function publish(testing: TypedClient<(typeof TestingService)['method']>, events: NewEvent[], repeat = 1): Promise<void> {
  await testing.publishTestEvents({ events, repeat }, T);
}

function rssBytes(pid: number): number {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(match?.[1] ?? 0) * 1024;
}

describe('WatchEvents on one daemon', () => {
  let daemon: RunningDaemon;
  let events: TypedClient<(typeof EventService)['method']>;
  let testing: TypedClient<(typeof TestingService)['method']>;
  let admin: TypedClient<(typeof AccessService)['method']>;
  const feeds: Feed[] = [];
  const watch = (client: TypedClient<(typeof EventService)['method']>, request: Request = {}, metadata: Record<string, string> = {}) => {
    const feed = new Feed(client, request, metadata);
    feeds.push(feed);
    return feed;
  };

  beforeAll(async () => {
    daemon = await startTestingDaemon({
      config: {
        // A short window (pruned after 0.3 s beyond 50 events) so expiry and cut-offs happen within a test.
        events: { batch_ms: 20, heartbeat_seconds: 1, max_streams_per_principal: 4, stream_buffer: 50, retain_events: 50, retain_seconds: 0.3 },
        rate_limit: { per_role_per_minute: { admin: 1_000_000 }, default_per_minute: 1_000_000, global_per_minute: 10_000_000 },
      },
    });
    events = await clientFor(EventService, daemon);
    testing = await clientFor(TestingService, daemon);
    admin = await clientFor(AccessService, daemon);
  });

  // Streams of one test must not count against the next one's per-principal limit.
  afterEach(async () => {
    const open = feeds.splice(0);
    for (const feed of open) feed.cancel();
    await vi.waitFor(() => expect(open.every((feed) => feed.ended !== undefined)).toBe(true), WAIT);
  });

  afterAll(async () => {
    events.close();
    testing.close();
    admin.close();
    await daemon.cleanup();
  });

  it('refuses a malformed request naming the field', async () => {
    const cases: [Request, string][] = [
      [{ resumeToken: 'garbage' }, 'resume_token'],
      [{ resourceGlobs: ['bad glob!'] }, 'resource_globs'],
      [{ kinds: [EventKind.UNSPECIFIED] }, 'kinds'],
    ];
    for (const [request, field] of cases) {
      const feed = watch(events, request);
      await vi.waitFor(() => expect(feed.ended).toBeDefined(), WAIT);
      expect(feed.ended?.code).toBe(Status.INVALID_ARGUMENT);
      expect(feed.ended?.details).toContain(field);
    }
  });

  it('delivers what the caller asked for and may see: key globs, role permissions, kinds and globs', async () => {
    const { secret } = await admin.createApiKey({ description: 'build events', permissions: ['event:watch', 'vm:get'], resourceGlobs: [{ kind: ResourceKind.VM, glob: 'build-*' }] }, T);
    const anonymous = await clientFor(EventService, daemon, null);
    const monitorPem: ClientPem = await issueClientFor(daemon.pki, 'spiffe://debvisor/events/monitor');
    await admin.bindRole({ principal: 'spiffe://debvisor/events/monitor', roleName: 'monitor' }, T);
    const asMonitor = await clientFor(EventService, daemon, monitorPem);
    try {
      const all = watch(events);
      const keyed = watch(anonymous, {}, { authorization: `Bearer ${secret}` });
      const monitor = watch(asMonitor);
      const filtered = watch(events, { kinds: [EventKind.VM_STATE_CHANGED], resourceGlobs: ['web-*'] });
      await Promise.all([all.open, keyed.open, monitor.open, filtered.open]);
      await publish(testing, [vmEvent('build-1'), vmEvent('prod-1'), vmEvent('web-1'), nodeEvent('n1'), vmEvent('build-end')]);
      await vi.waitFor(() => {
        expect(all.names()).toEqual(['build-1', 'prod-1', 'web-1', 'n1', 'build-end']);
        expect(keyed.names()).toEqual(['build-1', 'build-end']);
        expect(monitor.names()).toEqual(['n1']);
        expect(filtered.names()).toEqual(['web-1']);
      }, WAIT);
      const first = all.events[0];
      expect(first?.resumeToken).not.toBe('');
      expect(first?.time).toBeDefined();
      expect(first?.actor?.principal).toBe('spiffe://debvisor/test/publisher');
      expect(first?.payload.case).toBe('vmState');
      // Events were stamped once: every stream shows the same token for the same event.
      expect(keyed.events[0]?.resumeToken).toBe(first?.resumeToken);
    } finally {
      anonymous.close();
      asMonitor.close();
    }
  });

  it('ends the stream of an API key once the key is revoked (UNAUTHENTICATED), before any later event', async () => {
    const { secret, apiKey } = await admin.createApiKey({ description: 'revoked watcher', permissions: ['event:watch', 'vm:get'] }, T);
    const anonymous = await clientFor(EventService, daemon, null);
    try {
      const keyed = watch(anonymous, {}, { authorization: `Bearer ${secret}` });
      await keyed.open;
      await publish(testing, [vmEvent('before-revoke')]);
      await vi.waitFor(() => expect(keyed.names()).toContain('before-revoke'), WAIT);
      await admin.revokeApiKey({ keyId: apiKey?.keyId ?? '' }, T);
      await publish(testing, [vmEvent('after-revoke')]);
      await vi.waitFor(() => expect(keyed.ended?.code).toBe(Status.UNAUTHENTICATED), WAIT);
      expect(keyed.names()).not.toContain('after-revoke');
    } finally {
      anonymous.close();
    }
  });

  it('sends heartbeats carrying the current resume token on an idle stream', async () => {
    const feed = watch(events, { kinds: [EventKind.SECURITY_ALERT] });
    await vi.waitFor(() => expect(feed.events.filter((e) => e.kind === EventKind.HEARTBEAT).length).toBeGreaterThanOrEqual(2), WAIT);
    expect(feed.events.every((e) => e.kind === EventKind.HEARTBEAT && e.resumeToken.startsWith('e1.'))).toBe(true);
    feed.cancel();
  });

  it('limits the streams of one principal, and frees a slot when a stream is cancelled', async () => {
    const pem = await issueClientFor(daemon.pki, 'spiffe://debvisor/events/limited');
    await admin.bindRole({ principal: 'spiffe://debvisor/events/limited', roleName: 'viewer' }, T);
    const client = await clientFor(EventService, daemon, pem);
    try {
      const four = [watch(client), watch(client), watch(client), watch(client)];
      await Promise.all(four.map((feed) => feed.open));
      const fifth = watch(client);
      await vi.waitFor(() => expect(fifth.ended).toBeDefined(), WAIT);
      expect(fifth.ended?.code).toBe(Status.RESOURCE_EXHAUSTED);
      expect(fifth.ended?.details).toContain('events.max_streams_per_principal is 4');
      four[0]?.cancel();
      // The cancelled stream's slot comes back: a new stream is served (it gets heartbeats).
      await vi.waitFor(async () => {
        const again = watch(client);
        await vi.waitFor(() => expect(again.events.length > 0 || again.ended !== undefined).toBe(true), WAIT);
        expect(again.ended).toBeUndefined();
      }, WAIT);
    } finally {
      client.close();
    }
  });

  it('answers an expired token with one RESYNC_REQUIRED (token_expired) and ends the stream', async () => {
    const first = watch(events, { kinds: [EventKind.VM_STATE_CHANGED], resourceGlobs: ['old-*'] });
    await first.open;
    await publish(testing, [vmEvent('old-1')]);
    await vi.waitFor(() => expect(first.names()).toEqual(['old-1']), WAIT);
    first.cancel();
    const token = first.events[0]?.resumeToken ?? '';
    // More than the window, in batches further apart than its 0.3 s: the batch of old-1 is pruned.
    const resumed = await vi.waitFor(async () => {
      await publish(testing, [vmEvent('filler')], 60);
      const feed = watch(events, { resumeToken: token });
      await vi.waitFor(() => expect(feed.ended).toBeDefined(), { timeout: 5000, interval: 25 });
      expect(feed.events.map((e) => e.kind)).toEqual([EventKind.RESYNC_REQUIRED]);
      return feed;
    }, WAIT);
    const resync = resumed.events[0];
    expect(resync?.payload.case === 'resync' && resync.payload.value.reason).toBe('token_expired');
    expect(resumed.ended?.code).toBe(Status.OK);
  });

  it('cuts off a consumer that stops reading with RESYNC_REQUIRED (too_slow), its memory bounded', async () => {
    const slow = watch(events, { kinds: [EventKind.VM_STATE_CHANGED] });
    await slow.open;
    slow.call.pause();
    const detail = 'x'.repeat(200);
    const big: NewEvent = { kind: EventKind.VM_STATE_CHANGED, resource: { kind: ResourceKind.VM, node: 'n1', name: 'flood' }, payload: { case: 'vmState', value: { state: VmState.RUNNING, previousState: VmState.PAUSED, detail } } };
    const flood = async () => {
      for (let i = 0; i < 10; i++) await publish(testing, [big], 1000);
      return rssBytes(daemon.pid);
    };
    // Bounded: after a first flood (the heap's warm-up), three more of 10,000 events of ~300 bytes
    // each go by the paused stream and the daemon's memory does not grow with them.
    const warm = await flood();
    const rounds = [await flood(), await flood(), await flood()];
    expect(Math.max(...rounds) - warm, `RSS after each flood: ${[warm, ...rounds].map((b) => Math.round(b / 2 ** 20)).join(', ')} MiB`).toBeLessThan(48 * 2 ** 20);
    slow.call.resume();
    await vi.waitFor(() => expect(slow.ended).toBeDefined(), WAIT);
    const last = slow.events[slow.events.length - 1];
    expect(last?.kind).toBe(EventKind.RESYNC_REQUIRED);
    expect(last?.payload.case === 'resync' && last.payload.value.reason).toBe('too_slow');
    expect(slow.events.length).toBeLessThan(10_000);
  });

  it('debvisorctl events prints a live feed in lines and JSON lines, and exits 3 on RESYNC_REQUIRED', async () => {
    const lines = ctlProcess(daemon, 'events', '--kind', 'vm_state_changed', '--resource', 'cli-*', '--timeout', '20');
    const json = ctlProcess(daemon, '-o', 'json', 'events', '--kind', 'vm_state_changed', '--resource', 'cli-*', '--timeout', '20');
    // Until both have their stream open, a published event may come before it: publish until both print one.
    await vi.waitFor(async () => {
      await publish(testing, [vmEvent('cli-vm')]);
      expect(lines.stdout()).toContain('vm_state_changed vm n1/cli-vm by spiffe://debvisor/test/publisher: running (was shut_off) Started Booted');
      expect(json.stdout()).toContain('"name":"cli-vm"');
    }, { timeout: 60_000, interval: 500 });
    const parsed = JSON.parse(json.stdout().split('\n').find((line) => line.includes('cli-vm')) ?? '{}') as { kind?: string; resumeToken?: string };
    expect(parsed.kind).toBe('EVENT_KIND_VM_STATE_CHANGED');
    const help = await ctlProcess(daemon, 'events', '--help').done;
    expect(help.stdout).toContain('--resume <token>');
    expect(help.stdout).toContain('RESYNC_REQUIRED');
    // An expired token: the feed says so and exits 5 (3 is "daemon unreachable").
    await publish(testing, [vmEvent('filler')], 60);
    const expired = await vi.waitFor(async () => {
      await publish(testing, [vmEvent('filler')], 60);
      const run = await ctlProcess(daemon, 'events', '--resume', parsed.resumeToken ?? '', '--timeout', '30').done;
      expect(run.code).toBe(5);
      return run;
    }, WAIT);
    expect(expired.stderr).toContain('RESYNC_REQUIRED (token_expired)');
    // At --timeout the feeds end quietly.
    expect((await lines.done).code).toBe(0);
    expect((await json.done).code).toBe(0);
  });
});

describe('WatchEvents and certificate revocation', () => {
  let dir: string;
  let daemon: RunningDaemon;
  const WATCHER = 'spiffe://debvisor/test/watcher';

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rpcd-events-crl-'));
    const pki = await ensureDevPki(join(dir, 'pki'));
    const crlFile = await writeDevCrl(pki, [], join(dir, 'crl.pem'));
    daemon = await startTestingDaemon({ pkiDir: pki.dir, config: { auth: { crl_file: crlFile }, events: { batch_ms: 20 } } });
  });

  afterAll(async () => {
    await daemon.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it('ends the stream of a certificate once a reloaded CRL revokes it (UNAUTHENTICATED), before any later event', async () => {
    const pki = await ensureDevPki(join(dir, 'pki'));
    const watcher = await issueClientFor(pki, WATCHER);
    const admin = await clientFor(AccessService, daemon);
    const testing = await clientFor(TestingService, daemon);
    const asWatcher = await clientFor(EventService, daemon, watcher);
    try {
      await admin.bindRole({ principal: WATCHER, roleName: 'viewer' }, T);
      const feed = new Feed(asWatcher, {});
      await feed.open;
      await publish(testing, [vmEvent('before-crl')]);
      await vi.waitFor(() => expect(feed.names()).toContain('before-crl'), WAIT);
      await writeDevCrl(pki, [watcher.serial], join(dir, 'crl.pem'));
      expect((await reloadDaemon(daemon)).msg).toBe('reloaded configuration, certificates and CRL');
      await publish(testing, [vmEvent('after-crl')]);
      await vi.waitFor(() => expect(feed.ended?.code).toBe(Status.UNAUTHENTICATED), WAIT);
      expect(feed.names()).not.toContain('after-crl');
    } finally {
      admin.close();
      testing.close();
      asWatcher.close();
    }
  });
});

describe('WatchEvents on two daemons sharing etcd', () => {
  let etcd: EtcdCluster;
  let pkiDir: string;
  let a: RunningDaemon;
  let b: RunningDaemon;
  const configOf = (node: string) => ({
    node: { name: node },
    store: { backend: 'etcd', etcd: { endpoints: etcd.endpoints } },
    events: { batch_ms: 20 },
  });

  beforeAll(async () => {
    etcd = await startEtcd();
    pkiDir = await mkdtemp(join(tmpdir(), 'rpcd-events-pki-'));
    await ensureDevPki(pkiDir);
    [a, b] = await Promise.all([startTestingDaemon({ pkiDir, config: configOf('node-a') }), startTestingDaemon({ pkiDir, config: configOf('node-b') })]);
  });

  afterAll(async () => {
    await Promise.all([a.cleanup(), b.cleanup()]);
    await etcd.stop();
    await rm(pkiDir, { recursive: true, force: true });
  });

  it("delivers one daemon's events to the other's streams within 1 s", async () => {
    const onB = await clientFor(EventService, b);
    const testingA = await clientFor(TestingService, a);
    try {
      const feed = new Feed(onB, { resourceGlobs: ['cluster-*'] });
      await feed.open;
      const latencies: number[] = [];
      for (let i = 0; i < 5; i++) {
        const sent = Date.now();
        await publish(testingA, [vmEvent(`cluster-${i}`, 'node-a')]);
        await vi.waitFor(() => expect(feed.names()).toContain(`cluster-${i}`), WAIT);
        latencies.push(Date.now() - sent);
      }
      expect(Math.max(...latencies)).toBeLessThan(1000);
      feed.cancel();
    } finally {
      onB.close();
      testingA.close();
    }
  });

  it('resumes across a daemon restart with every later event, none lost or repeated', async () => {
    let onA = await clientFor(EventService, a);
    const testingA = await clientFor(TestingService, a);
    const testingB = await clientFor(TestingService, b);
    const expected = Array.from({ length: 10 }, (_, i) => `resume-${i}`);
    try {
      const feed = new Feed(onA, { resourceGlobs: ['resume-*'] });
      await feed.open;
      await publish(testingA, expected.slice(0, 6).map((name) => vmEvent(name, 'node-a')));
      await vi.waitFor(() => expect(feed.names()).toEqual(expected.slice(0, 6)), WAIT);
      const token = feed.events[2]?.resumeToken ?? '';
      // A stream still open when the daemon stops ends at once with UNAVAILABLE (resume with the last token).
      const stopping = Date.now();
      await a.cleanup();
      expect(feed.ended?.code).toBe(Status.UNAVAILABLE);
      expect(Date.now() - stopping).toBeLessThan(5000);
      onA.close();
      // While A is down, B's node goes on publishing.
      await publish(testingB, expected.slice(6).map((name) => vmEvent(name, 'node-b')));
      a = await startTestingDaemon({ pkiDir, config: configOf('node-a') });
      onA = await clientFor(EventService, a);
      const resumed = new Feed(onA, { resourceGlobs: ['resume-*'], resumeToken: token });
      await vi.waitFor(() => expect(resumed.names()).toEqual(expected.slice(3)), WAIT);
      // And it goes on live, without repeating anything.
      await publish(testingB, [vmEvent('resume-live', 'node-b')]);
      await vi.waitFor(() => expect(resumed.names()).toEqual([...expected.slice(3), 'resume-live']), WAIT);
      resumed.cancel();
    } finally {
      onA.close();
      testingA.close();
      testingB.close();
    }
  });
});
