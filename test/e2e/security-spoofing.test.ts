// End-to-end security: every way of pretending to be someone else is refused
// UNAUTHENTICATED, and audited as AUTH_FAILED with a precise reason.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { status as Status } from '@grpc/grpc-js';
import { durationFromMs } from '@bufbuild/protobuf/wkt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AccessService, PrincipalKind } from '../../src/gen/debvisor/v1/access_pb.js';
import { ensureDevPki, type DevPkiPaths } from '../../src/pki/index.js';
import { adminPem, auditRecords, clientFor, rawClientFor, rawUnary, startDaemon, type ClientPem, type RunningDaemon } from '../support/daemon.js';
import { writeRefusedCertificates, type CertFixture, type RefusedCertificates } from '../support/pki-fixtures.js';
import {
  auditOf,
  auditRecord,
  grpcFrom,
  issueClientFor,
  metricSum,
  metricsText,
  rejection,
  traceIdOf,
  writeDevCrl,
} from '../support/security.js';

const ADMIN = 'spiffe://debvisor/admin/admin';
const WHOAMI = '/debvisor.v1.AccessService/WhoAmI';
const VIEWER = 'spiffe://debvisor/test/spoof-viewer';
const REVOKED = 'spiffe://debvisor/test/revoked';
const ROAMING = 'spiffe://debvisor/test/roaming';

let dir: string;
let pki: DevPkiPaths;
let daemon: RunningDaemon;
let refused: RefusedCertificates;
let viewer: ClientPem;
let revoked: ClientPem & { serial: string };
const clients: { close(): void }[] = [];

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'rpcd-spoof-'));
  // The PKI exists before the daemon, so its CRL can list a certificate of the same CA.
  pki = await ensureDevPki(join(dir, 'pki'));
  revoked = await issueClientFor(pki, REVOKED);
  const crl = await writeDevCrl(pki, [revoked.serial], join(dir, 'crl.pem'));
  [refused, viewer] = await Promise.all([writeRefusedCertificates(pki, dir), issueClientFor(pki, VIEWER)]);
  daemon = await startDaemon({ pkiDir: pki.dir, config: { auth: { crl_file: crl } } });
  const admin = await access();
  await admin.bindRole({ principal: VIEWER, roleName: 'viewer' }, { timeoutMs: 5000 });
  await admin.bindRole({ principal: REVOKED, roleName: 'admin' }, { timeoutMs: 5000 });
});

afterAll(async () => {
  for (const client of clients) client.close();
  await daemon.cleanup();
  await rm(dir, { recursive: true, force: true });
});

async function access(identity?: ClientPem | null) {
  const client = await clientFor(AccessService, daemon, identity);
  clients.push(client);
  return client;
}

function pem(fixture: CertFixture): ClientPem {
  return { cert: fixture.cert, key: fixture.key };
}

/** Calls WhoAmI, expects UNAUTHENTICATED with the generic message, and returns the audit reason. */
async function refusedReason(identity: ClientPem | null, metadata: Record<string, string> = {}): Promise<string> {
  const err = await rejection((await access(identity)).whoAmI({}, { timeoutMs: 5000, metadata }));
  expect(err.code).toBe(Status.UNAUTHENTICATED);
  // The client learns nothing about why.
  expect(err.details).toMatch(/^authentication required: present a client certificate issued by the DebVisor CA or an API key \(trace_id=/);
  const record = await auditOf(daemon, 'AUTH_FAILED', traceIdOf(err));
  expect(record).toMatchObject({ method: WHOAMI, decision: 'deny' });
  expect(record.source).toMatch(/127\.0\.0\.1/);
  return String(record.reason);
}

async function createKey(request: Parameters<Awaited<ReturnType<typeof access>>['createApiKey']>[0]): Promise<{ id: string; token: string }> {
  const created = await (await access()).createApiKey(request, { timeoutMs: 5000 });
  return { id: created.apiKey!.keyId, token: created.secret };
}

describe('certificates', () => {
  it('refuses a self-signed certificate naming the admin', async () => {
    const reason = await refusedReason(pem(refused.selfSignedAdmin));
    expect(reason).toMatch(/^no verified client certificate: the certificate \(CN=admin, URI:spiffe:\/\/debvisor\/admin\/admin, serial [0-9A-F]+\) failed TLS verification: DEPTH_ZERO_SELF_SIGNED_CERT/);
  });

  it('refuses a certificate from another CA naming the admin', async () => {
    const reason = await refusedReason(pem(refused.foreignClient));
    expect(reason).toMatch(/^no verified client certificate: the certificate \(CN=admin, URI:spiffe:\/\/debvisor\/admin\/admin, .*failed TLS verification: (UNABLE_TO_VERIFY_LEAF_SIGNATURE|UNABLE_TO_GET_ISSUER_CERT(_LOCALLY)?); and no API key$/);
  });

  it('refuses an expired dev-CA certificate', async () => {
    expect(await refusedReason(pem(refused.expired))).toMatch(/failed TLS verification: CERT_HAS_EXPIRED/);
  });

  it('refuses a dev-CA certificate without clientAuth', async () => {
    expect(await refusedReason(pem(refused.serverAuthOnly))).toMatch(/failed TLS verification: (UNSUPPORTED_CERTIFICATE_PURPOSE|INVALID_PURPOSE)/);
  });

  it('refuses a revoked certificate: TLS accepts it, the daemon checks the CRL', async () => {
    const reason = await refusedReason(revoked);
    const serial = revoked.serial.toUpperCase().replace(/^0+/, '');
    expect(reason).toBe(`client certificate serial ${serial} is revoked (CRL)`);
  });

  it('with no certificate, a client-sent identity header names nobody', async () => {
    const reason = await refusedReason(null, { 'x-debvisor-principal': ADMIN });
    expect(reason).toBe('no verified client certificate (none presented, or it failed TLS verification) and no API key');
  });

  it('with a low-privilege certificate, an identity header does not change the principal', async () => {
    const me = await (await access(viewer)).whoAmI({}, { timeoutMs: 5000, metadata: { 'x-debvisor-principal': ADMIN, 'x-debvisor-roles': 'admin' } });
    expect(me.principalId).toBe(VIEWER);
    expect(me.roles).toEqual(['viewer']);
    // And the admin-only call stays refused.
    const denied = await rejection((await access(viewer)).bindRole({ principal: VIEWER, roleName: 'admin' }, { timeoutMs: 5000, metadata: { 'x-debvisor-principal': ADMIN } }));
    expect(denied.code).toBe(Status.PERMISSION_DENIED);
  });
});

describe('API keys', () => {
  let valid: { id: string; token: string };
  let other: { id: string; token: string };

  beforeAll(async () => {
    valid = await createKey({ description: 'spoof test', permissions: ['vm:list'] });
    other = await createKey({ description: 'spoof test 2', permissions: ['vm:list'] });
  });

  it('a valid key works through both headers', async () => {
    const headers: Record<string, string>[] = [{ authorization: `Bearer ${valid.token}` }, { 'x-api-key': valid.token }];
    for (const metadata of headers) {
      const me = await (await access(null)).whoAmI({}, { timeoutMs: 5000, metadata });
      expect(me.kind).toBe(PrincipalKind.API_KEY);
      expect(me.apiKeyId).toBe(valid.id);
    }
  });

  it('refuses garbage and truncated keys as malformed', async () => {
    const garbage = ['dvk_garbage', 'dvk_', 'Bearer', valid.token.slice(0, -1), `${valid.token}x`, valid.token.replace('dvk_', 'dvx_'), 'x'.repeat(64)];
    for (const token of garbage) {
      expect(await refusedReason(null, { authorization: `Bearer ${token}` })).toBe('malformed API key');
      expect(await refusedReason(null, { 'x-api-key': token })).toBe('malformed API key');
    }
  });

  it('refuses a wrong secret, and another key id with a guessed secret', async () => {
    const secret = valid.token.slice(-43);
    const flipped = `${valid.token.slice(0, -1)}${valid.token.endsWith('A') ? 'B' : 'A'}`;
    expect(await refusedReason(null, { authorization: `Bearer ${flipped}` })).toBe(`wrong secret for API key ${valid.id}`);
    // The valid secret of one key under another key's id.
    expect(await refusedReason(null, { 'x-api-key': `dvk_${other.id}_${secret}` })).toBe(`wrong secret for API key ${other.id}`);
    // A guessed secret under a real id.
    expect(await refusedReason(null, { authorization: `Bearer dvk_${other.id}_${'A'.repeat(43)}` })).toBe(`wrong secret for API key ${other.id}`);
    // A well-formed token for an id that does not exist.
    expect(await refusedReason(null, { authorization: `Bearer dvk_${'0'.repeat(16)}_${secret}` })).toBe(`unknown API key id ${'0'.repeat(16)}`);
  });

  it('refuses an expired key', async () => {
    const short = await createKey({ description: 'short', permissions: ['vm:list'], ttl: durationFromMs(1000) });
    await (await access(null)).whoAmI({}, { timeoutMs: 5000, metadata: { authorization: `Bearer ${short.token}` } });
    await sleep(1200);
    expect(await refusedReason(null, { authorization: `Bearer ${short.token}` })).toBe(`API key ${short.id} expired`);
  });

  it('refuses a key used from outside its allowed networks', async () => {
    const fenced = await createKey({ description: 'fenced', permissions: ['vm:list'], allowedCidrs: ['10.0.0.0/8'] });
    expect(await refusedReason(null, { authorization: `Bearer ${fenced.token}` })).toMatch(
      new RegExp(`^API key ${fenced.id} used from (::ffff:)?127\\.0\\.0\\.1, outside its allowed networks$`),
    );
    const inside = await createKey({ description: 'loopback', permissions: ['vm:list'], allowedCidrs: ['127.0.0.0/8'] });
    expect((await (await access(null)).whoAmI({}, { timeoutMs: 5000, metadata: { authorization: `Bearer ${inside.token}` } })).apiKeyId).toBe(inside.id);
  });

  it('with a valid certificate and a garbage key, the certificate decides and nothing fails', async () => {
    const traceId = `both-credentials-${Date.now()}`;
    const result = await rawUnary(await rawClientFor(daemon, viewer), WHOAMI, Buffer.alloc(0), { authorization: 'Bearer dvk_garbage', 'x-request-id': traceId });
    expect(result.status.code).toBe(Status.OK);
    await auditOf(daemon, 'CALL', traceId);
    expect(auditRecords(daemon).filter((r) => r.trace_id === traceId).map((r) => r.type)).toEqual(['CALL']);
  });
});

describe('source tracking', () => {
  it('reports a principal calling from a new source address as SUSPICIOUS', async () => {
    const roaming = await issueClientFor(pki, ROAMING);
    await (await access()).bindRole({ principal: ROAMING, roleName: 'viewer' }, { timeoutMs: 5000 });
    await (await access(roaming)).whoAmI({}, { timeoutMs: 5000 });
    const { ca } = await adminPem(pki);
    // grpc-js cannot bind a client's source address: this call is hand-made HTTP/2 from 127.0.0.2.
    const result = await grpcFrom(daemon, '127.0.0.2', WHOAMI, { ca, cert: roaming.cert, key: roaming.key });
    expect(result.status).toBe(Status.OK);
    const record = await auditRecord(daemon, (r) => r.type === 'SUSPICIOUS' && String(r.reason).includes(ROAMING));
    expect(record.reason).toBe(`new source address 127.0.0.2 for ${ROAMING}`);
    expect(record.source).toMatch(/127\.0\.0\.2/);
    // Reported once, not on every call from it.
    await grpcFrom(daemon, '127.0.0.2', WHOAMI, { ca, cert: roaming.cert, key: roaming.key });
    await sleep(300);
    expect(auditRecords(daemon).filter((r) => r.type === 'SUSPICIOUS' && String(r.reason).includes(ROAMING))).toHaveLength(1);
  });

  it('counts authentication attempts in auth_attempts_total', async () => {
    const metrics = await metricsText(daemon);
    expect(metricSum(metrics, 'auth_attempts_total', { method: 'mtls', result: 'success' })).toBeGreaterThan(0);
    expect(metricSum(metrics, 'auth_attempts_total', { method: 'api_key', result: 'failure' })).toBeGreaterThanOrEqual(14);
    expect(metricSum(metrics, 'auth_attempts_total', { method: 'none', result: 'failure' })).toBeGreaterThanOrEqual(5);
  });
});
