// Server reflection built from the generated descriptors, so grpcurl can list
// and describe every service without .proto files.
import { toBinary, type DescFile, type DescService } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema } from '@bufbuild/protobuf/wkt';
import { ReflectionService } from '@grpc/reflection';
import { loadSync } from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';

type PackageDefinition = ConstructorParameters<typeof ReflectionService>[0];

function withDependencies(files: Iterable<DescFile>): DescFile[] {
  const seen = new Map<string, DescFile>();
  const visit = (file: DescFile) => {
    if (seen.has(file.name)) return;
    for (const dependency of file.dependencies) visit(dependency);
    seen.set(file.name, file);
  };
  for (const file of files) visit(file);
  return [...seen.values()];
}

export function reflectionService(services: readonly DescService[]): ReflectionService {
  const fileDescriptorProtos = withDependencies(services.map((service) => service.file)).map((file) =>
    Buffer.from(toBinary(FileDescriptorProtoSchema, file.proto)),
  );
  const definition: PackageDefinition = {
    ...loadSync(healthProtoPath),
    'debvisor.v1': { format: 'Protocol Buffer 3 FileDescriptorProto', fileDescriptorProtos } as unknown as PackageDefinition[string],
  };
  return new ReflectionService(definition);
}
