// The bounds step: every string of a request (nested, repeated and map ones too) has the byte
// bound its proto field declares (`(debvisor.v1.max_bytes)`, else 256), a resource name at
// most 256; more is INVALID_ARGUMENT naming the field path and never quoting the value.
import { create, ScalarType, setExtension, type DescField, type DescMessage } from '@bufbuild/protobuf';
import { FieldOptionsSchema } from '@bufbuild/protobuf/wkt';
import { max_bytes } from '../../src/gen/debvisor/v1/options_pb.js';
import { describe, expect, it } from 'vitest';
import { bounds, declaredMaxBytes, DEFAULT_MAX_BYTES, MAX_DECLARED_BYTES, MAX_RESOURCE_NAME_BYTES } from '../../src/chain/bounds.js';
import { AccessService, CreateApiKeyRequestSchema } from '../../src/gen/debvisor/v1/access_pb.js';
import { NodeService, RegisterNodeRequestSchema } from '../../src/gen/debvisor/v1/node_pb.js';
import { CreateSnapshotRequestSchema, ProvisionVolumeRequestSchema, StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { compilePolicy, methodIndex } from '../../src/rpc/policy.js';
import { API_SERVICES } from '../../src/services/registry.js';
import type { CallState } from '../../src/rpc/context.js';
import type { StepCall } from '../../src/chain/step.js';

const step = bounds({ methods: methodIndex([AccessService, StorageService, NodeService]) });
const state = {} as CallState;
const check = (path: string, message: unknown) => () => step.onMessage?.(state, { path } as StepCall, message);

/** Every string-holding field reachable from `message`, with its dotted path (each type once per path). */
function stringFields(message: DescMessage, prefix = '', seen: readonly DescMessage[] = []): { path: string; field: DescField }[] {
  if (seen.includes(message)) return [];
  return message.fields.flatMap((field) => {
    const path = `${prefix}${field.name}`;
    const own = field.scalar === ScalarType.STRING || (field.fieldKind === 'map' && field.mapKey === ScalarType.STRING) ? [{ path, field }] : [];
    const nested = field.message ? stringFields(field.message, `${path}.`, [...seen, message]) : [];
    return [...own, ...nested];
  });
}

describe('declared string bounds (from the descriptors)', () => {
  const methods = API_SERVICES.flatMap((service) => service.methods);

  it('every string field of every request, nested, repeated and map ones included, has a bound of at most 4 KiB', () => {
    const seen: string[] = [];
    for (const method of methods) {
      const targets = new Set((compilePolicy(method)?.targets ?? []).map((target) => target.fields[target.fields.length - 1]));
      for (const { path, field } of stringFields(method.input)) {
        const max = declaredMaxBytes(field);
        seen.push(`${method.name}.${path}`);
        expect(max, `${method.name}.${path}`).toBeGreaterThan(0);
        expect(max, `${method.name}.${path}`).toBeLessThanOrEqual(MAX_DECLARED_BYTES);
        if (targets.has(field)) expect(max, `${method.name}.${path} names a resource`).toBeLessThanOrEqual(MAX_RESOURCE_NAME_BYTES);
      }
    }
    // The walk reaches nested, repeated and map fields.
    expect(seen).toEqual(expect.arrayContaining(['CreateSnapshot.dataset.pool', 'CreateApiKey.resource_globs.glob', 'CreateApiKey.permissions', 'RegisterNode.labels', 'CreateVolume.tags']));
  });

  it('declares room for what fields legitimately hold: descriptions, image paths, page tokens, node labels', () => {
    const field = (schema: DescMessage, name: string) => schema.fields.find((f) => f.name === name) as DescField;
    expect(declaredMaxBytes(field(CreateApiKeyRequestSchema, 'description'))).toBe(2048);
    expect(declaredMaxBytes(field(ProvisionVolumeRequestSchema, 'image_path'))).toBe(4096);
    expect(declaredMaxBytes(field(RegisterNodeRequestSchema, 'labels'))).toBe(1024);
    expect(declaredMaxBytes(field(CreateApiKeyRequestSchema, 'owner'))).toBe(DEFAULT_MAX_BYTES);
  });
});

describe('bounds step', () => {
  const snapshot = '/debvisor.v1.StorageService/CreateSnapshot';
  const key = '/debvisor.v1.AccessService/CreateApiKey';
  const register = '/debvisor.v1.NodeService/RegisterNode';
  const provision = '/debvisor.v1.StorageService/ProvisionVolume';

  it('caps a nested resource name at 256 bytes (UTF-8, not characters)', () => {
    expect(check(snapshot, create(CreateSnapshotRequestSchema, { dataset: { pool: 'p'.repeat(256) } }))).not.toThrow();
    expect(check(snapshot, create(CreateSnapshotRequestSchema, { dataset: { pool: 'é'.repeat(129) } }))).toThrow(/^dataset\.pool: must be at most 256 bytes$/);
  });

  it('caps a field without a declaration at 256 bytes, one with a declaration at what it declares', () => {
    expect(check(key, create(CreateApiKeyRequestSchema, { owner: 'o'.repeat(257) }))).toThrow(/^owner: must be at most 256 bytes$/);
    expect(check(snapshot, create(CreateSnapshotRequestSchema, { label: 'l'.repeat(1024) }))).not.toThrow();
    expect(check(snapshot, create(CreateSnapshotRequestSchema, { label: 'l'.repeat(1025) }))).toThrow(/^label: must be at most 1024 bytes$/);
    expect(check(provision, create(ProvisionVolumeRequestSchema, { imagePath: 'i'.repeat(4096) }))).not.toThrow();
    expect(check(provision, create(ProvisionVolumeRequestSchema, { imagePath: 'i'.repeat(4097) }))).toThrow(/^image_path: /);
  });

  it('checks each element of a repeated field, and repeated messages field by field', () => {
    const permissions = ['vm:list', 'vm:get', 'vm:start', 'x'.repeat(5000)];
    expect(check(key, create(CreateApiKeyRequestSchema, { permissions }))).toThrow(/^permissions\[3\]: must be at most 256 bytes$/);
    const resourceGlobs = [{ glob: 'ok-*' }, { glob: 'g'.repeat(300) }];
    expect(check(key, create(CreateApiKeyRequestSchema, { resourceGlobs }))).toThrow(/^resource_globs\[1\]\.glob: must be at most 256 bytes$/);
  });

  it('checks every key and value of a map, naming the field and never quoting a long key', () => {
    expect(check(register, create(RegisterNodeRequestSchema, { labels: { rack: 'v'.repeat(1024) } }))).not.toThrow();
    expect(check(register, create(RegisterNodeRequestSchema, { labels: { rack: 'v'.repeat(1025) } }))).toThrow(/^labels\["rack"\]: must be at most 1024 bytes$/);
    expect(check(register, create(RegisterNodeRequestSchema, { labels: { ['k'.repeat(1025)]: 'v' } }))).toThrow(/^labels: each key must be at most 1024 bytes$/);
    expect(check(register, create(RegisterNodeRequestSchema, { labels: { ['\u001b'.repeat(70)]: 'v'.repeat(2000) } }))).toThrow(/^labels\[…\]: must be at most 1024 bytes$/);
  });

  it('refuses at start-up a declaration above what a field may hold', () => {
    const declaring = (bytes: number): DescField => {
      const real = CreateApiKeyRequestSchema.fields.find((f) => f.name === 'owner') as DescField;
      const options = create(FieldOptionsSchema);
      setExtension(options, max_bytes, bytes);
      return { ...real, proto: { ...real.proto, options } };
    };
    expect(declaredMaxBytes(declaring(4096))).toBe(4096);
    expect(() => declaredMaxBytes(declaring(4097))).toThrow(/owner: max_bytes must be 1\.\.4096, not 4097/);
    const target = declaring(257);
    expect(() => declaredMaxBytes(target, new Set([target]))).toThrow(/max_bytes must be 1\.\.256/);
  });
});
