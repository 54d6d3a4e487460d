// The bounds step: a resource name over 256 bytes, or any other request string over 4 KiB, is
// INVALID_ARGUMENT naming the field path, nested and repeated fields included.
import { create } from '@bufbuild/protobuf';
import { describe, expect, it } from 'vitest';
import { bounds } from '../../src/chain/bounds.js';
import { AccessService, CreateApiKeyRequestSchema } from '../../src/gen/debvisor/v1/access_pb.js';
import { CreateSnapshotRequestSchema, StorageService } from '../../src/gen/debvisor/v1/storage_pb.js';
import { methodIndex } from '../../src/rpc/policy.js';
import type { CallState } from '../../src/rpc/context.js';
import type { StepCall } from '../../src/chain/step.js';

const step = bounds({ methods: methodIndex([AccessService, StorageService]) });
const state = {} as CallState;
const check = (path: string, message: unknown) => () => step.onMessage?.(state, { path } as StepCall, message);

describe('bounds step', () => {
  const snapshot = '/debvisor.v1.StorageService/CreateSnapshot';
  const key = '/debvisor.v1.AccessService/CreateApiKey';

  it('caps a nested resource name at 256 bytes (UTF-8, not characters)', () => {
    expect(check(snapshot, create(CreateSnapshotRequestSchema, { dataset: { pool: 'p'.repeat(256) } }))).not.toThrow();
    expect(check(snapshot, create(CreateSnapshotRequestSchema, { dataset: { pool: 'é'.repeat(129) } }))).toThrow(/^dataset\.pool: must be at most 256 bytes$/);
  });

  it('caps other strings at 4 KiB, each element of a repeated field on its own', () => {
    expect(check(snapshot, create(CreateSnapshotRequestSchema, { label: 'l'.repeat(4096) }))).not.toThrow();
    expect(check(snapshot, create(CreateSnapshotRequestSchema, { label: 'l'.repeat(4097) }))).toThrow(/^label: /);
    const permissions = ['vm:list', 'vm:get', 'vm:start', 'x'.repeat(5000)];
    expect(check(key, create(CreateApiKeyRequestSchema, { permissions }))).toThrow(/^permissions\[3\]: must be at most 4096 bytes$/);
  });
});
