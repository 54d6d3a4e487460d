// Reflection serves, for every file, the bytes protoc/buf compile from proto/ (source info
// aside): custom options such as (debvisor.v1.rpc_policy) and json names included.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, FileDescriptorSetSchema, type FileDescriptorProto } from '@bufbuild/protobuf/wkt';
import { describe, expect, it } from 'vitest';
import { descriptorBytes, withDependencies } from '../../src/daemon/reflection.js';
import { API_SERVICES } from '../../src/services/registry.js';
import { Health } from '../../src/gen/grpc/health/v1/health_pb.js';
import { ServerReflection } from '../../src/gen/grpc/reflection/v1/reflection_pb.js';
import { TestingService } from '../../src/gen/debvisor/testing/v1/testing_pb.js';

/** buf's image marks each file with its own extension (buf.alpha.image.v1.ImageFileExtension, field 8042). */
const BUF_IMAGE_EXTENSION = 8042;

function bufImage(): Map<string, FileDescriptorProto> {
  const dir = mkdtempSync(join(tmpdir(), 'rpcd-image-'));
  try {
    const image = join(dir, 'image.binpb');
    execFileSync('npx', ['buf', 'build', '-o', image, '--exclude-source-info'], { stdio: 'pipe' });
    const set = fromBinary(FileDescriptorSetSchema, readFileSync(image));
    for (const file of set.file) file.$unknown = file.$unknown?.filter((field) => field.no !== BUF_IMAGE_EXTENSION);
    return new Map(set.file.map((file) => [file.name, file]));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

describe('reflection descriptors', () => {
  it('are byte for byte what buf builds from proto/', () => {
    const image = bufImage();
    const files = withDependencies([...API_SERVICES, TestingService, Health, ServerReflection].map((service) => service.file));
    const ours = files.filter((file) => !file.proto.name.startsWith('google/protobuf/'));
    expect(ours.map((file) => file.proto.name)).toEqual(expect.arrayContaining(['debvisor/v1/options.proto', 'debvisor/v1/vm.proto', 'grpc/health/v1/health.proto']));
    for (const file of ours) {
      const built = image.get(file.proto.name);
      expect(built, file.proto.name).toBeDefined();
      expect(Buffer.from(descriptorBytes(file)).equals(Buffer.from(toBinary(FileDescriptorProtoSchema, built!))), file.proto.name).toBe(true);
    }
    // Well-known types are the runtime library's copies; buf bundles its own descriptor.proto
    // release, so only the ones that did not change between releases compare equal.
    for (const name of ['google/protobuf/duration.proto', 'google/protobuf/timestamp.proto']) {
      const file = files.find((f) => f.proto.name === name)!;
      expect(Buffer.from(descriptorBytes(file)).equals(Buffer.from(toBinary(FileDescriptorProtoSchema, image.get(name)!))), name).toBe(true);
    }
  });
});
