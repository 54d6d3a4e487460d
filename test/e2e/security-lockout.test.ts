// End-to-end brute-force blocks: failures are counted per source address and per API key
// id; a block refuses API-key and anonymous calls only, never a verified client
// certificate (new connection or one already open). Blocks show in ListBlocks and the
// metrics, and `debvisorctl access unblock` lifts them.
// The default limits (5 per address, 3 per key id) are used; only the window and the block
// are made long, so a slow machine cannot let a block lapse mid-test.
import { readFile } from 'node:fs/promises';
import { status as Status } from '@grpc/grpc-js';
import { timestampMs } from '@bufbuild/protobuf/wkt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService, BlockKind } from '../../src/gen/debvisor/v1/access_pb.js';
import { adminPem, clientFor, startDaemon, type PemFiles, type RunningDaemon } from '../support/daemon.js';
import { ctlOn } from '../support/ctl.js';
import { auditOf, auditRecord, grpcFrom, metricSum, metricsText, rejection, traceIdOf } from '../support/security.js';

const ADMIN = 'spiffe://debvisor/admin/admin';
const WHOAMI = '/debvisor.v1.AccessService/WhoAmI';
const T = { timeoutMs: 10_000 };
// Generous: every step waits on a real daemon and a CLI process on a loaded machine.
const SLOW = 180_000;
const ADDRESS_LIMIT = 5;
const KEY_LIMIT = 3;

let daemon: RunningDaemon;
let pem: PemFiles;
let ca: Buffer;
const clients: { close(): void }[] = [];
const secrets: string[] = [];

beforeAll(async () => {
  daemon = await startDaemon({
    config: { auth: { max_failures_per_minute: ADDRESS_LIMIT, max_key_failures_per_minute: KEY_LIMIT, failure_window_seconds: 3600, block_minutes: 60 } },
    readyTimeoutMs: 150_000,
  });
  pem = await adminPem(daemon.pki);
  ca = await readFile(daemon.pki.caCert);
}, 180_000);

afterAll(async () => {
  for (const client of clients) client.close();
  await daemon.cleanup();
});

async function access(identity?: null) {
  const client = await clientFor(AccessService, daemon, identity);
  clients.push(client);
  return client;
}

async function newKey(description: string): Promise<{ keyId: string; token: string }> {
  const admin = await access();
  const created = await admin.createApiKey({ description, permissions: ['vm:list'] }, T);
  secrets.push(created.secret);
  return { keyId: created.apiKey!.keyId, token: created.secret };
}

/** WhoAmI from `address` with an API key (or none): the gRPC status. */
async function keyCall(address: string, token?: string): Promise<{ status: number; message: string }> {
  return grpcFrom(daemon, address, WHOAMI, { ca }, token === undefined ? {} : { authorization: `Bearer ${token}` });
}

/** WhoAmI from `address` with the admin certificate. */
function adminCall(address: string) {
  return grpcFrom(daemon, address, WHOAMI, pem);
}

async function listBlocks() {
  return (await (await access()).listBlocks({}, T)).blocks;
}

function wrongSecretOf(token: string): string {
  const last = token.endsWith('A') ? 'B' : 'A';
  return `${token.slice(0, -1)}${last}`;
}

describe('a verified certificate is never blocked', () => {
  it('anonymous failures block 127.0.0.1, yet the admin over mTLS still works, on an open connection and a new one', async () => {
    const open = await access();
    expect((await open.whoAmI({}, T)).principalId).toBe(ADMIN);
    const anonymous = await access(null);
    for (let i = 0; i <= ADDRESS_LIMIT; i++) {
      expect((await rejection(anonymous.whoAmI({}, T))).code).toBe(Status.UNAUTHENTICATED);
    }
    const blocked = await rejection(anonymous.whoAmI({}, T));
    expect((await auditOf(daemon, 'AUTH_FAILED', traceIdOf(blocked))).reason).toBe('source address is blocked');
    expect((await listBlocks()).map((b) => [b.kind, b.subject])).toContainEqual([BlockKind.ADDRESS, '127.0.0.1']);

    // The connection opened before the block, and a fresh one.
    expect((await open.whoAmI({}, T)).principalId).toBe(ADMIN);
    expect((await (await access()).whoAmI({}, T)).principalId).toBe(ADMIN);
    // debvisorctl (mTLS) from the blocked address lifts the block.
    const unblock = await ctlOn(daemon, 'access', 'unblock', '127.0.0.1');
    expect(unblock.stderr).toBe('');
    expect(unblock.code).toBe(0);
    expect(unblock.stdout).toBe('unblocked 127.0.0.1\n');
    expect((await listBlocks()).map((b) => b.subject)).not.toContain('127.0.0.1');
    // Anonymous calls are back to plain failures, not blocks.
    const after = await rejection(anonymous.whoAmI({}, T));
    expect((await auditOf(daemon, 'AUTH_FAILED', traceIdOf(after))).reason).not.toBe('source address is blocked');
  }, SLOW);
});

describe('garbage keys and anonymous calls block the address', () => {
  const FLOODER = '127.0.0.7';

  it('blocks API-key calls from the address, even a valid key, but not the admin certificate; unblock lifts it', async () => {
    const { token } = await newKey('flood victim');
    expect((await keyCall(FLOODER, token)).status).toBe(Status.OK);
    const blocksBefore = metricSum(await metricsText(daemon), 'auth_blocks_total', { kind: 'address' });
    for (let i = 0; i < ADDRESS_LIMIT; i++) {
      const garbage = i % 2 === 0 ? 'dvk_not-a-key' : `dvk_${'0'.repeat(16)}_${'x'.repeat(43)}`;
      expect((await keyCall(FLOODER, garbage)).status).toBe(Status.UNAUTHENTICATED);
    }
    // Five failures are allowed; the sixth blocks.
    expect((await keyCall(FLOODER, token)).status).toBe(Status.OK);
    expect((await keyCall(FLOODER)).status).toBe(Status.UNAUTHENTICATED);
    expect((await keyCall(FLOODER, token)).status).toBe(Status.UNAUTHENTICATED);
    const suspicious = await auditRecord(daemon, (r) => r.type === 'SUSPICIOUS' && r.reason === `too many authentication failures from ${FLOODER}; blocked`);
    expect(suspicious.source).toContain(FLOODER);

    // The certificate from the same address is not blocked; the key from another address is not either.
    expect((await adminCall(FLOODER)).status).toBe(Status.OK);
    expect((await keyCall('127.0.0.8', token)).status).toBe(Status.OK);

    const block = (await listBlocks()).find((b) => b.subject === FLOODER);
    expect(block).toMatchObject({ kind: BlockKind.ADDRESS, failures: ADDRESS_LIMIT + 1 });
    // Lasting the configured hour.
    expect(timestampMs(block!.expireTime!) - timestampMs(block!.createTime!)).toBe(3_600_000);
    const metrics = await metricsText(daemon);
    expect(metricSum(metrics, 'auth_blocks_active', { kind: 'address' })).toBeGreaterThanOrEqual(1);
    expect(metricSum(metrics, 'auth_blocks_total', { kind: 'address' })).toBe(blocksBefore + 1);

    const listed = await ctlOn(daemon, '-o', 'wide', 'access', 'blocks');
    expect(listed.code).toBe(0);
    expect(listed.stdout).toMatch(new RegExp(`address[\\s│]+${FLOODER.replaceAll('.', '\\.')}[\\s│]+6 `));

    const unblock = await ctlOn(daemon, 'access', 'unblock', FLOODER);
    expect(unblock.code).toBe(0);
    const security = await auditRecord(daemon, (r) => r.type === 'SECURITY' && r.object === FLOODER);
    expect(security).toMatchObject({ reason: `authentication block on ${FLOODER} lifted`, principal: { id: ADMIN } });
    expect((await keyCall(FLOODER, token)).status).toBe(Status.OK);
    expect(metricSum(await metricsText(daemon), 'auth_blocks_active', { kind: 'address' })).toBe(0);
  }, SLOW);
});

describe('a known key id with wrong secrets is blocked before the address', () => {
  const GUESSER = '127.0.0.9';

  it('blocks the key id everywhere, leaves the address and other keys alone; unblock lifts it', async () => {
    const target = await newKey('guessed');
    const other = await newKey('bystander');
    const keyBlocksBefore = metricSum(await metricsText(daemon), 'auth_blocks_total', { kind: 'key' });
    for (let i = 0; i <= KEY_LIMIT; i++) {
      expect((await keyCall(GUESSER, wrongSecretOf(target.token))).status).toBe(Status.UNAUTHENTICATED);
    }
    await auditRecord(daemon, (r) => r.type === 'SUSPICIOUS' && r.reason === `too many authentication failures for API key ${target.keyId} (from ${GUESSER}); blocked`);
    // The right secret is refused now, from any address.
    expect((await keyCall(GUESSER, target.token)).status).toBe(Status.UNAUTHENTICATED);
    expect((await keyCall('127.0.0.10', target.token)).status).toBe(Status.UNAUTHENTICATED);
    // The address (4 failures of 5 allowed) is not blocked: another key works from it.
    expect((await keyCall(GUESSER, other.token)).status).toBe(Status.OK);
    const blocks = await listBlocks();
    expect(blocks.map((b) => [b.kind, b.subject])).toContainEqual([BlockKind.API_KEY, target.keyId]);
    expect(blocks.map((b) => b.subject)).not.toContain(GUESSER);
    // Refusals of a blocked key do not count against the address.
    for (let i = 0; i < ADDRESS_LIMIT; i++) expect((await keyCall(GUESSER, wrongSecretOf(target.token))).status).toBe(Status.UNAUTHENTICATED);
    expect((await keyCall(GUESSER, other.token)).status).toBe(Status.OK);

    const metrics = await metricsText(daemon);
    expect(metricSum(metrics, 'auth_blocks_active', { kind: 'key' })).toBe(1);
    expect(metricSum(metrics, 'auth_blocks_total', { kind: 'key' })).toBe(keyBlocksBefore + 1);

    const unblock = await ctlOn(daemon, 'access', 'unblock', target.keyId);
    expect(unblock.code).toBe(0);
    expect(unblock.stdout).toBe(`unblocked ${target.keyId}\n`);
    expect((await keyCall(GUESSER, target.token)).status).toBe(Status.OK);
    expect(metricSum(await metricsText(daemon), 'auth_blocks_active', { kind: 'key' })).toBe(0);
  }, SLOW);

  it('unblock refuses what is neither an address nor a key id, and is admin-only', async () => {
    const bad = await ctlOn(daemon, 'access', 'unblock', 'not-an-address');
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toContain('subject');
    const { token } = await newKey('whoami only');
    const denied = await grpcFrom(daemon, '127.0.0.11', '/debvisor.v1.AccessService/Unblock', { ca }, { authorization: `Bearer ${token}` });
    expect(denied.status).toBe(Status.PERMISSION_DENIED);
  }, SLOW);
});

it('no secret the suite created is in the daemon output or the audit log', async () => {
  const audit = await readFile(`${daemon.dir}/audit/rpc-audit.log`, 'utf8');
  for (const secret of secrets) {
    const secretPart = secret.slice(-43);
    expect(daemon.logs()).not.toContain(secretPart);
    expect(audit).not.toContain(secretPart);
  }
}, SLOW);
