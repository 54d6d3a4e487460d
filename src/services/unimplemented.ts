// Answers for services whose handlers have not landed yet: a clear UNIMPLEMENTED
// naming the area, instead of grpc-js's bare "method not implemented".
import type { DescService } from '@bufbuild/protobuf';
import { UnimplementedError } from '../rpc/errors.js';

const AREA: Record<string, string> = {
  'debvisor.v1.NodeService': 'Node management is',
  'debvisor.v1.VmService': 'VM operations are',
  'debvisor.v1.MigrationService': 'VM migration and failover are',
  'debvisor.v1.StorageService': 'Storage operations are',
  'debvisor.v1.AccessService': 'Access management is',
  'debvisor.v1.OperationService': 'Long-running operations are',
};

export function unimplementedHandlers(service: DescService, implemented: Record<string, unknown> = {}): Record<string, unknown> {
  const area = AREA[service.typeName] ?? `${service.name} is`;
  const handlers: Record<string, unknown> = { ...implemented };
  for (const method of service.methods) {
    if (method.localName in handlers) continue;
    const refuse = () => new UnimplementedError(`${area} not available in this build (${method.name})`);
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
