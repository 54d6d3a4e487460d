// How debvisorctl picks its credentials (flags beat the environment) and the impersonation
// headers of --as, --as-group, --as-reason and --as-session; and that a repeated header
// reaches a real gRPC server as every value.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { create } from '@bufbuild/protobuf';
import { credentials, Server, ServerCredentials, type Metadata, type sendUnaryData, type ServerUnaryCall } from '@grpc/grpc-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { resolveConnection } from '../../src/cli/connection.js';
import { whoAmIRecord } from '../../src/cli/whoami.js';
import { createClient } from '../../src/client/client.js';
import { AccessService, PrincipalKind, WhoAmIResponseSchema } from '../../src/gen/debvisor/v1/access_pb.js';
import { createCa, issueCertificate } from '../../src/pki/index.js';
import { toServiceDefinition } from '../../src/rpc/adapter.js';
import { headerValues } from '../../src/rpc/impersonation-names.js';

let dir: string;
/** Real PEM files: credentials are built from them. */
let files: { ca: string; cert: string; key: string; otherCert: string; otherKey: string };

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'dv-ctl-connection-'));
  const ca = await createCa({ commonName: 'Test Root' });
  const panel = await issueCertificate({ ca, profile: 'client', commonName: 'web-panel' });
  const other = await issueCertificate({ ca, profile: 'client', commonName: 'other' });
  files = { ca: join(dir, 'ca.pem'), cert: join(dir, 'panel-cert.pem'), key: join(dir, 'panel-key.pem'), otherCert: join(dir, 'other-cert.pem'), otherKey: join(dir, 'other-key.pem') };
  writeFileSync(files.ca, ca.certPem);
  writeFileSync(files.cert, panel.certPem);
  writeFileSync(files.key, panel.keyPem);
  writeFileSync(files.otherCert, other.certPem);
  writeFileSync(files.otherKey, other.keyPem);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

const envCert = () => ({ DEBVISORCTL_CA: files.ca, DEBVISORCTL_CERT: files.cert, DEBVISORCTL_KEY: files.key });

describe('credentials: flags beat the environment', () => {
  it('--api-key is not joined by DEBVISORCTL_CERT/KEY from the environment (the certificate would decide)', () => {
    const connection = resolveConnection({ apiKey: 'dvk_id_secret' }, envCert());
    expect(connection.metadata).toEqual({ authorization: 'Bearer dvk_id_secret' });
    expect(connection.describe).toBe('127.0.0.1:7443 as API key');
  });

  it('--cert/--key are not joined by DEBVISORCTL_API_KEY (a secret sent for nothing)', () => {
    const connection = resolveConnection({ cert: files.otherCert, key: files.otherKey }, { ...envCert(), DEBVISORCTL_API_KEY: 'dvk_id_secret' });
    expect(connection.metadata).toEqual({});
    expect(connection.describe).toBe(`127.0.0.1:7443 as certificate ${files.otherCert}`);
  });

  it('both given explicitly: both are sent, as before', () => {
    const connection = resolveConnection({ cert: files.cert, key: files.key, apiKey: 'dvk_id_secret' }, { DEBVISORCTL_CA: files.ca });
    expect(connection.metadata).toEqual({ authorization: 'Bearer dvk_id_secret' });
    expect(connection.describe).toContain(`certificate ${files.cert}`);
  });

  it('without flags, the environment decides: its API key replaces the default certificate', () => {
    expect(resolveConnection({}, envCert()).describe).toBe(`127.0.0.1:7443 as certificate ${files.cert}`);
    const keyOnly = resolveConnection({}, { DEBVISORCTL_CA: files.ca, DEBVISORCTL_API_KEY: 'dvk_id_secret' });
    expect(keyOnly.describe).toBe('127.0.0.1:7443 as API key');
    expect(keyOnly.metadata).toEqual({ authorization: 'Bearer dvk_id_secret' });
  });
});

describe('--as: the impersonation headers', () => {
  it('sends impersonate-user, one impersonate-group per group, the reason and the session', () => {
    const connection = resolveConnection({ as: 'alice', asGroup: ['ops', 'dev'], asReason: 'ticket 42', asSession: 'dvs_token' }, envCert());
    expect(connection.metadata).toEqual({
      'impersonate-user': 'alice',
      'impersonate-group': ['ops', 'dev'],
      'impersonate-reason': 'ticket 42',
      'impersonate-session': 'dvs_token',
    });
    expect(connection.describe).toContain('for user:alice');
  });

  it('takes the session token from DEBVISORCTL_AS_SESSION (kept out of ps and shell history); the flag wins', () => {
    expect(resolveConnection({ as: 'alice', asGroup: [] }, { ...envCert(), DEBVISORCTL_AS_SESSION: 'from-env' }).metadata).toEqual({
      'impersonate-user': 'alice',
      'impersonate-session': 'from-env',
    });
    expect(resolveConnection({ as: 'alice', asSession: 'from-flag' }, { ...envCert(), DEBVISORCTL_AS_SESSION: 'from-env' }).metadata['impersonate-session']).toBe('from-flag');
    // Without --as the environment's token is not sent: every other command keeps working.
    expect(resolveConnection({ asGroup: [] }, { ...envCert(), DEBVISORCTL_AS_SESSION: 'from-env' }).metadata).toEqual({});
  });

  it('refuses --as with an API key, from the flag or the environment: API keys never impersonate', () => {
    expect(() => resolveConnection({ as: 'alice', apiKey: 'dvk_id_secret' }, envCert())).toThrow(/^--as needs a client certificate: API keys can never impersonate/);
    expect(() => resolveConnection({ as: 'alice' }, { DEBVISORCTL_CA: files.ca, DEBVISORCTL_API_KEY: 'dvk_id_secret' })).toThrow(/API keys can never impersonate/);
  });

  it('validates names with the daemon rule, naming the flag', () => {
    expect(() => resolveConnection({ as: 'Alice' }, envCert())).toThrow(/^--as: "Alice" is not a valid name/);
    expect(() => resolveConnection({ as: 'alice', asGroup: ['ops', 'group:ops'] }, envCert())).toThrow(/^--as-group: "group:ops" is not a valid name/);
    expect(() => resolveConnection({ as: 'alice', asGroup: Array.from({ length: 33 }, (_, i) => `g${i}`) }, envCert())).toThrow('--as-group: at most 32 groups, got 33');
    expect(() => resolveConnection({ as: 'alice', asReason: 'x'.repeat(257) }, envCert())).toThrow('--as-reason: must be at most 256 bytes');
    expect(() => resolveConnection({ asGroup: ['ops'] }, envCert())).toThrow('--as: required with --as-group');
    expect(() => resolveConnection({ asReason: 'why' }, envCert())).toThrow('--as: required with --as-reason');
  });
});

describe('repeated headers on the wire', () => {
  it('a group list reaches a gRPC server as every value (joined "a, b" by HTTP/2, split by headerValues)', async () => {
    const server = new Server();
    const seen: Metadata[] = [];
    server.addService(toServiceDefinition(AccessService), {
      WhoAmI: (call: ServerUnaryCall<unknown, unknown>, callback: sendUnaryData<unknown>) => {
        seen.push(call.metadata);
        callback(null, create(WhoAmIResponseSchema, {}));
      },
    });
    const port = await new Promise<number>((resolvePort, reject) =>
      server.bindAsync('127.0.0.1:0', ServerCredentials.createInsecure(), (err, bound) => (err ? reject(err) : resolvePort(bound))),
    );
    const client = createClient(AccessService, { address: `127.0.0.1:${port}`, credentials: credentials.createInsecure() });
    try {
      await client.whoAmI({}, { metadata: { 'impersonate-user': 'alice', 'impersonate-group': ['ops', 'dev'] }, timeoutMs: 10_000 });
    } finally {
      client.close();
      server.forceShutdown();
    }
    const metadata = seen[0]!;
    expect(metadata.get('impersonate-user')).toEqual(['alice']);
    expect(headerValues(metadata.get('impersonate-group').map(String))).toEqual(['ops', 'dev']);
  });
});

describe('whoami', () => {
  it('shows both identities of an impersonated call', () => {
    const me = create(WhoAmIResponseSchema, {
      principalId: 'user:alice',
      kind: PrincipalKind.USER,
      authMethod: 'mtls',
      roles: ['operator'],
      sourceAddress: '10.0.0.7:51514',
      impersonation: {
        impersonatedBy: 'spiffe://debvisor/panel/web-panel',
        impersonatorCertFingerprintSha256: 'ab'.repeat(32),
        groups: ['group:ops'],
        reason: 'panel request 42',
        sessionId: 'ses_1',
        impersonatorRoles: ['panel'],
      },
    });
    expect(whoAmIRecord(me)).toEqual({
      principal: 'user:alice',
      kind: 'user',
      'auth method': 'mtls',
      roles: 'operator',
      groups: 'group:ops',
      'impersonated by': 'spiffe://debvisor/panel/web-panel',
      'impersonator sha256': 'ab'.repeat(32),
      'impersonator roles': 'panel',
      reason: 'panel request 42',
      session: 'ses_1',
      'source address': '10.0.0.7:51514',
    });
  });

  it('shows no impersonation lines for a certificate acting as itself', () => {
    const me = create(WhoAmIResponseSchema, { principalId: 'web-panel', kind: PrincipalKind.CERTIFICATE, authMethod: 'mtls', sourceAddress: '10.0.0.7:1' });
    expect(Object.keys(whoAmIRecord(me))).toEqual(['principal', 'kind', 'auth method', 'source address']);
  });
});
