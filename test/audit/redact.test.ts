// Redaction of audit requests: secret fields found through the generated descriptors,
// and secret-looking strings anywhere.
import { create, createFileRegistry, setExtension, type DescMessage } from '@bufbuild/protobuf';
import {
  FieldDescriptorProto_Label as Label,
  FieldDescriptorProto_Type as Type,
  FieldOptionsSchema,
  FileDescriptorProtoSchema,
  timestampFromDate,
} from '@bufbuild/protobuf/wkt';
import { describe, expect, it } from 'vitest';
import { redactRequest, scrubSecrets, scrubSecretsInJson } from '../../src/audit/redact.js';
import {
  ApiKeySchema,
  CreateApiKeyRequestSchema,
  CreateApiKeyResponseSchema,
  ListApiKeysResponseSchema,
  RotateApiKeyResponseSchema,
  file_debvisor_v1_access,
} from '../../src/gen/debvisor/v1/access_pb.js';
import { secret, file_debvisor_v1_options } from '../../src/gen/debvisor/v1/options_pb.js';

const TOKEN = 'dvk_k7f3a9_S3cr3tS3cr3tS3cr3tS3cr3t-x_y';
const PEM = '-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB3x\nAAAA==\n-----END EC PRIVATE KEY-----';

describe('scrubSecrets', () => {
  it('redacts API key tokens, keeping the public key id', () => {
    expect(scrubSecrets(`key ${TOKEN} used`)).toBe('key dvk_k7f3a9_[REDACTED] used');
    expect(scrubSecrets(`x=${TOKEN},y=dvk_ab-1_zz`)).toBe('x=dvk_k7f3a9_[REDACTED],y=dvk_ab-1_[REDACTED]');
  });

  it('redacts tokens in the daemon format (16 hex id, 43 base64url secret)', () => {
    const token = `dvk_0123456789abcdef_${'_-aZ09'.repeat(7)}x`;
    expect(scrubSecrets(`authorization ${token}.`)).toBe('authorization dvk_0123456789abcdef_[REDACTED].');
  });

  it('redacts PEM private key blocks, also unterminated ones', () => {
    const cert = '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----';
    expect(scrubSecrets(`a ${PEM} b ${cert}`)).toBe(`a [REDACTED PRIVATE KEY] b ${cert}`);
    expect(scrubSecrets('-----BEGIN PRIVATE KEY-----\nMIIEvQ')).toBe('[REDACTED PRIVATE KEY]');
    expect(scrubSecrets('-----BEGIN RSA PRIVATE KEY-----\nxx\n-----END RSA PRIVATE KEY-----\ntail')).toBe('[REDACTED PRIVATE KEY]\ntail');
  });

  it('redacts bearer credentials', () => {
    expect(scrubSecrets('authorization: Bearer abc.def-ghi_jkl==')).toBe('authorization: Bearer [REDACTED]');
    expect(scrubSecrets(`bearer ${TOKEN}`)).toBe('bearer [REDACTED]');
  });

  it('leaves ordinary text alone and is idempotent', () => {
    const text = 'vm web-1 created by alice (bearer of news); dvk_ alone';
    expect(scrubSecrets(text)).toBe(text);
    const once = scrubSecrets(`${TOKEN} ${PEM} Bearer x`);
    expect(scrubSecrets(once)).toBe(once);
  });

  it('keeps serialized JSON valid and structured', () => {
    const doc = { a: `Bearer ${TOKEN}`, b: PEM, c: '-----BEGIN PRIVATE KEY-----\nunterminated', d: 'after', e: [TOKEN] };
    const scrubbed = JSON.parse(scrubSecretsInJson(JSON.stringify(doc))) as Record<string, unknown>;
    expect(scrubbed).toEqual({ a: 'Bearer [REDACTED]', b: '[REDACTED PRIVATE KEY]', c: '[REDACTED PRIVATE KEY]', d: 'after', e: ['dvk_k7f3a9_[REDACTED]'] });
  });
});

describe('redactRequest with generated messages', () => {
  it('metadata level logs no request', () => {
    expect(redactRequest(CreateApiKeyResponseSchema, create(CreateApiKeyResponseSchema, { secret: TOKEN }), 'metadata')).toBeUndefined();
  });

  it('replaces the secret field of CreateApiKeyResponse and keeps the rest', () => {
    const message = create(CreateApiKeyResponseSchema, {
      secret: TOKEN,
      apiKey: { keyId: 'k7f3a9', owner: 'alice', permissions: ['vm:list'], createTime: timestampFromDate(new Date('2025-01-02T03:04:05Z')) },
    });
    expect(redactRequest(CreateApiKeyResponseSchema, message, 'request')).toEqual({
      apiKey: { keyId: 'k7f3a9', owner: 'alice', permissions: ['vm:list'], createTime: '2025-01-02T03:04:05Z' },
      secret: '[REDACTED]',
    });
  });

  it('redacts secrets nested beside other messages (RotateApiKeyResponse)', () => {
    const message = create(RotateApiKeyResponseSchema, { secret: 'whatever-format', apiKey: { keyId: 'new' }, oldApiKey: { keyId: 'old' } });
    expect(redactRequest(RotateApiKeyResponseSchema, message, 'request')).toEqual({ apiKey: { keyId: 'new' }, secret: '[REDACTED]', oldApiKey: { keyId: 'old' } });
  });

  it('scrubs secret-shaped strings in fields not marked secret, in repeated messages too', () => {
    const message = create(ListApiKeysResponseSchema, {
      apiKeys: [create(ApiKeySchema, { keyId: 'a', description: `oops ${TOKEN}` }), create(ApiKeySchema, { keyId: 'b', description: PEM })],
    });
    expect(redactRequest(ListApiKeysResponseSchema, message, 'request')).toEqual({
      apiKeys: [
        { keyId: 'a', description: 'oops dvk_k7f3a9_[REDACTED]' },
        { keyId: 'b', description: '[REDACTED PRIVATE KEY]' },
      ],
    });
    const request = create(CreateApiKeyRequestSchema, { description: 'Bearer abcdefgh1234', permissions: [TOKEN] });
    expect(redactRequest(CreateApiKeyRequestSchema, request, 'request')).toEqual({ description: 'Bearer [REDACTED]', permissions: ['dvk_k7f3a9_[REDACTED]'] });
  });
});

/**
 * The API has no secret field below the top level yet, so nested, repeated and map
 * cases use a descriptor built at test time with the real (debvisor.v1.secret) option,
 * embedding a generated message.
 */
function testSchemas(): { outer: DescMessage } {
  const secretOptions = create(FieldOptionsSchema);
  setExtension(secretOptions, secret, true);
  const file = create(FileDescriptorProtoSchema, {
    name: 'test/redact.proto',
    package: 'test.redact',
    syntax: 'proto3',
    dependency: ['debvisor/v1/options.proto', 'debvisor/v1/access.proto'],
    messageType: [
      {
        name: 'Credential',
        field: [
          { name: 'user', number: 1, type: Type.STRING, label: Label.OPTIONAL, jsonName: 'user' },
          { name: 'password', number: 2, type: Type.STRING, label: Label.OPTIONAL, jsonName: 'password', options: secretOptions },
        ],
      },
      {
        name: 'Outer',
        field: [
          { name: 'cred', number: 1, type: Type.MESSAGE, label: Label.OPTIONAL, typeName: '.test.redact.Credential', jsonName: 'cred' },
          { name: 'creds', number: 2, type: Type.MESSAGE, label: Label.REPEATED, typeName: '.test.redact.Credential', jsonName: 'creds' },
          { name: 'by_name', number: 3, type: Type.MESSAGE, label: Label.REPEATED, typeName: '.test.redact.Outer.ByNameEntry', jsonName: 'byName' },
          { name: 'tokens', number: 4, type: Type.STRING, label: Label.REPEATED, jsonName: 'tokens', options: secretOptions },
          { name: 'note', number: 5, type: Type.STRING, label: Label.OPTIONAL, jsonName: 'note' },
          { name: 'created', number: 6, type: Type.MESSAGE, label: Label.OPTIONAL, typeName: '.debvisor.v1.CreateApiKeyResponse', jsonName: 'created' },
          { name: 'child', number: 7, type: Type.MESSAGE, label: Label.OPTIONAL, typeName: '.test.redact.Outer', jsonName: 'child' },
        ],
        nestedType: [
          {
            name: 'ByNameEntry',
            options: { mapEntry: true },
            field: [
              { name: 'key', number: 1, type: Type.STRING, label: Label.OPTIONAL, jsonName: 'key' },
              { name: 'value', number: 2, type: Type.MESSAGE, label: Label.OPTIONAL, typeName: '.test.redact.Credential', jsonName: 'value' },
            ],
          },
        ],
      },
    ],
  });
  const registry = createFileRegistry(file, (name) =>
    name === 'debvisor/v1/options.proto' ? file_debvisor_v1_options : name === 'debvisor/v1/access.proto' ? file_debvisor_v1_access : undefined,
  );
  const outer = registry.getMessage('test.redact.Outer');
  if (!outer) throw new Error('test descriptor did not build');
  return { outer };
}

describe('redactRequest through nested, repeated and map fields', () => {
  const { outer } = testSchemas();

  it('redacts secret fields at every depth and scrubs the rest', () => {
    const message = create(outer, {
      cred: { user: 'alice', password: 'hunter2' },
      creds: [{ user: 'bob', password: 'pw-b' }, { user: 'carol' }],
      byName: { dave: { user: 'dave', password: 'pw-d' }, [TOKEN]: { user: 'x' } },
      tokens: ['t1', 't2'],
      note: `see ${TOKEN}`,
      created: { secret: 'inner-secret', apiKey: { keyId: 'k1' } },
      child: { cred: { user: 'eve', password: 'pw-e' }, child: { tokens: ['deep'] } },
    });
    expect(redactRequest(outer, message, 'request')).toEqual({
      cred: { user: 'alice', password: '[REDACTED]' },
      creds: [{ user: 'bob', password: '[REDACTED]' }, { user: 'carol' }],
      byName: { dave: { user: 'dave', password: '[REDACTED]' }, 'dvk_k7f3a9_[REDACTED]': { user: 'x' } },
      tokens: '[REDACTED]',
      note: 'see dvk_k7f3a9_[REDACTED]',
      created: { apiKey: { keyId: 'k1' }, secret: '[REDACTED]' },
      child: { cred: { user: 'eve', password: '[REDACTED]' }, child: { tokens: '[REDACTED]' } },
    });
  });

  it('never leaks a secret value into the output', () => {
    const message = create(outer, { creds: Array.from({ length: 5 }, (_, i) => ({ user: `u${i}`, password: `pw-${i}-SECRET` })) });
    expect(JSON.stringify(redactRequest(outer, message, 'request'))).not.toContain('SECRET');
  });
});
