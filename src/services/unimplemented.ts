// Answers for services whose handlers have not landed yet: a clear UNIMPLEMENTED
// naming the area, instead of grpc-js's bare "method not implemented".
import type { DescService } from '@bufbuild/protobuf';
import { UnimplementedError } from '../server/errors.js';

const AREA: Record<string, string> = {
  'debvisor.v1.NodeService': 'Node management',
  'debvisor.v1.VmService': 'VM operations',
  'debvisor.v1.MigrationService': 'VM migration and failover',
  'debvisor.v1.StorageService': 'Storage operations',
  'debvisor.v1.AccessService': 'Access management',
  'debvisor.v1.OperationService': 'Long-running operations',
};

export function unimplementedHandlers(service: DescService, implemented: Record<string, unknown> = {}): Record<string, unknown> {
  const area = AREA[service.typeName] ?? service.name;
  const handlers: Record<string, unknown> = { ...implemented };
  for (const method of service.methods) {
    if (method.localName in handlers) continue;
    const refuse = () => new UnimplementedError(`${area} are not available in this build (${method.name})`);
    handlers[method.localName] =
      method.methodKind === 'server_streaming'
        ? () => ({
            [Symbol.asyncIterator]: () => {
              throw refuse();
            },
          })
        : () => Promise.reject(refuse());
  }
  return handlers;
}
