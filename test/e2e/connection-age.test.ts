// Connections the daemon closes for their age: calls in flight finish. The listener sends GOAWAY at
// max_connection_age_seconds (logged) and force-closes the connection max_connection_age_grace_seconds
// later; a call still running then is reset (C-core clients: `UNKNOWN: Stream removed`, the
// unexplained drops of issue 19, when grpc-js did this with a 60 s grace). Calls are capped at
// max_deadline_seconds, so a grace that covers it lets every call end on its own; the config refuses
// a shorter one.
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';
import { ensureDevPki } from '../../src/pki/index.js';
import { baseConfig, clientFor, deepMerge, runMain, type RunningDaemon } from '../support/daemon.js';
import { NO_RATE_LIMITS, type Client } from '../support/storage.js';
import { startTestingDaemon } from '../support/testing.js';

const HELD = 12;

let daemon: RunningDaemon;
let testing: Client<typeof TestingService>;

async function openConnections(): Promise<number> {
  const text = await (await fetch(`http://${daemon.httpAddress}/metrics`)).text();
  return Number(/^rpc_connections_open (\d+)$/m.exec(text)?.[1] ?? Number.NaN);
}

beforeAll(async () => {
  daemon = await startTestingDaemon({
    config: { ...NO_RATE_LIMITS, server: { max_connection_age_seconds: 1, max_deadline_seconds: 60, max_connection_age_grace_seconds: 60 } },
  });
  testing = await clientFor(TestingService, daemon);
});

afterAll(async () => {
  (testing as Client<typeof TestingService> | undefined)?.close();
  await (daemon as RunningDaemon | undefined)?.cleanup();
});

describe('a connection closed for its age', () => {
  it('lets the calls in flight on it finish with their replies, while new calls go to a new connection', async () => {
    const held = Array.from({ length: HELD }, (_, i) => testing.holdTestMutation({ latch: 'aged', requestId: `aged-${i}` }, { timeoutMs: 55_000 }));
    // Past its age the connection gets GOAWAY: the channel's next call opens a second connection
    // while the first stays open for the held calls.
    const deadline = Date.now() + 45_000;
    while ((await openConnections()) < 2) {
      if (Date.now() > deadline) throw new Error('the daemon never sent GOAWAY for the aged connection');
      await testing.echo({ text: 'new connection?' }, { timeoutMs: 10_000 });
      await sleep(100);
    }
    // Every held call is still waiting on the old connection; the latch ends them all with a reply.
    const { released } = await testing.openTestLatch({ latch: 'aged' }, { timeoutMs: 10_000 });
    expect(released).toBe(HELD);
    const replies = await Promise.allSettled(held);
    expect(replies.map((r) => (r.status === 'fulfilled' ? 'OK' : String((r.reason as { code?: number; details?: string }).details)))).toEqual(Array(HELD).fill('OK'));
    // The daemon says why it closed the connection; nothing was cut off at the end of the grace.
    const aged = daemon.logRecords().filter((r) => String(r.msg).startsWith('connection reached server.max_connection_age_seconds'));
    expect(aged.length).toBeGreaterThan(0);
    expect(aged[0]).toMatchObject({ level: 'info', grace_seconds: 60 });
    expect(daemon.logRecords().filter((r) => String(r.msg).startsWith('calls still running after'))).toEqual([]);
  });
});

describe('max_connection_age_grace_seconds', () => {
  let dir = '';
  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'rpcd-e2e-age-'));
  });
  afterAll(async () => {
    await rm(dir, { recursive: true, force: true });
  });

  it('is refused when shorter than max_deadline_seconds, naming the key', async () => {
    const pki = await ensureDevPki(join(dir, 'pki'));
    const file = join(dir, 'short-grace.yaml');
    await writeFile(file, stringify(deepMerge(baseConfig(pki, 7443, 9464), { server: { max_deadline_seconds: 300, max_connection_age_grace_seconds: 60 } })), { mode: 0o600 });
    const result = await runMain(['--config', file, '--check-config']);
    expect(result.code).toBe(2);
    expect(result.stderr).toContain('server.max_connection_age_grace_seconds');
    expect(result.stderr).toContain('max_deadline_seconds');
  });
});
