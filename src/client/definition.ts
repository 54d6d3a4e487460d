// The grpc-js method table of a generated service, for clients: request encoders and reply
// decoders only. (The server's adapter in src/rpc has its own: the client imports no server code.)
import { fromBinary, toBinary, type DescMessage, type DescService, type MessageShape } from '@bufbuild/protobuf';
import type { MethodDefinition, ServiceDefinition } from '@grpc/grpc-js';

function encoder(schema: DescMessage) {
  return (message: MessageShape<DescMessage>): Buffer => {
    const bytes = toBinary(schema, message);
    return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  };
}

export function clientDefinition(service: DescService): ServiceDefinition {
  const definition: Record<string, MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    definition[method.name] = {
      path: `/${service.typeName}/${method.name}`,
      requestStream: method.methodKind === 'client_streaming' || method.methodKind === 'bidi_streaming',
      responseStream: method.methodKind === 'server_streaming' || method.methodKind === 'bidi_streaming',
      requestSerialize: encoder(method.input) as (value: unknown) => Buffer,
      requestDeserialize: (bytes: Buffer) => fromBinary(method.input, bytes),
      responseSerialize: encoder(method.output) as (value: unknown) => Buffer,
      responseDeserialize: (bytes: Buffer) => fromBinary(method.output, bytes),
      originalName: method.localName,
    };
  }
  return definition;
}
