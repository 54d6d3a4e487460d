// Server reflection (grpc.reflection.v1 and v1alpha) that serves the descriptors protoc
// produced, custom options included, so `grpcurl describe` shows each RPC's
// (debvisor.v1.rpc_policy). @grpc/reflection re-encodes descriptors through protobufjs and
// drops unknown options; here the bytes come from the generated code's embedded descriptors.
import { clone, create, fromBinary, toBinary, type DescEnum, type DescFile, type DescMessage, type DescService, type MessageInitShape } from '@bufbuild/protobuf';
import { FileDescriptorProtoSchema, type DescriptorProto } from '@bufbuild/protobuf/wkt';
import type { Server, ServerDuplexStream, ServiceDefinition } from '@grpc/grpc-js';
import { Health } from '../gen/grpc/health/v1/health_pb.js';
import {
  ServerReflection,
  ServerReflectionRequestSchema,
  ServerReflectionResponseSchema,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from '../gen/grpc/reflection/v1/reflection_pb.js';
import { InvalidArgumentError, toStatus } from '../rpc/errors.js';
import { newTraceId } from '../rpc/trace.js';
import { REFLECTION_SERVICES } from '../chain/exempt.js';

/** google.rpc.Code NOT_FOUND, as reflection's error_response carries it. */
const NOT_FOUND = 5;

/** Every file the given ones import, directly or not, each once, dependencies first. */
export function withDependencies(files: Iterable<DescFile>): DescFile[] {
  const seen = new Map<string, DescFile>();
  const visit = (file: DescFile) => {
    if (seen.has(file.proto.name)) return;
    for (const dependency of file.dependencies) visit(dependency);
    seen.set(file.proto.name, file);
  };
  for (const file of files) visit(file);
  return [...seen.values()];
}

/**
 * The FileDescriptorProto as protoc handed it to protoc-gen-es, less source info: the
 * embedded copy drops json_name where it is the default, and protoc always sets it.
 */
export function descriptorBytes(file: DescFile): Uint8Array {
  const proto = clone(FileDescriptorProtoSchema, file.proto);
  const restore = (messages: DescriptorProto[], descs: readonly DescMessage[]) => {
    for (const message of messages) {
      const desc = descs.find((d) => d.name === message.name);
      if (!desc) continue;
      for (const field of message.field) {
        const jsonName = desc.fields.find((f) => f.number === field.number)?.jsonName;
        if (jsonName !== undefined) field.jsonName = jsonName;
      }
      restore(message.nestedType, desc.nestedMessages);
    }
  };
  restore(proto.messageType, file.messages);
  return toBinary(FileDescriptorProtoSchema, proto);
}

interface Index {
  readonly services: readonly string[];
  readonly byFilename: ReadonlyMap<string, DescFile>;
  readonly bySymbol: ReadonlyMap<string, DescFile>;
  /** extendee type name → extension number → the file declaring it */
  readonly extensions: ReadonlyMap<string, ReadonlyMap<number, DescFile>>;
  readonly bytes: ReadonlyMap<DescFile, Uint8Array>;
}

function buildIndex(services: readonly DescService[]): Index {
  const listed = [...services, Health, ServerReflection];
  const files = withDependencies(listed.map((service) => service.file));
  const bySymbol = new Map<string, DescFile>();
  const extensions = new Map<string, Map<number, DescFile>>();
  const bytes = new Map<DescFile, Uint8Array>();
  for (const file of files) {
    bytes.set(file, descriptorBytes(file));
    // Every fully qualified name a client may ask for, as protoc scopes them: fields and oneofs
    // inside their message, enum values beside their enum.
    const visitEnum = (enumeration: DescEnum, scope: string) => {
      bySymbol.set(enumeration.typeName, file);
      for (const value of enumeration.values) bySymbol.set(`${scope}${value.name}`, file);
    };
    const visitMessage = (message: DescMessage) => {
      bySymbol.set(message.typeName, file);
      for (const field of message.fields) bySymbol.set(`${message.typeName}.${field.name}`, file);
      for (const oneof of message.oneofs) bySymbol.set(`${message.typeName}.${oneof.name}`, file);
      for (const nested of message.nestedMessages) visitMessage(nested);
      for (const nested of message.nestedEnums) visitEnum(nested, `${message.typeName}.`);
      for (const extension of message.nestedExtensions) bySymbol.set(extension.typeName, file);
    };
    for (const message of file.messages) visitMessage(message);
    for (const enumeration of file.enums) visitEnum(enumeration, file.proto.package ? `${file.proto.package}.` : '');
    for (const service of file.services) {
      bySymbol.set(service.typeName, file);
      for (const method of service.methods) bySymbol.set(`${service.typeName}.${method.name}`, file);
    }
    const allExtensions = [...file.extensions, ...file.messages.flatMap(function nested(m: DescMessage): DescFile['extensions'] {
      return [...m.nestedExtensions, ...m.nestedMessages.flatMap(nested)];
    })];
    for (const extension of allExtensions) {
      bySymbol.set(extension.typeName, file);
      const numbers = extensions.get(extension.extendee.typeName) ?? new Map<number, DescFile>();
      numbers.set(extension.number, file);
      extensions.set(extension.extendee.typeName, numbers);
    }
  }
  return {
    services: listed.map((service) => service.typeName),
    byFilename: new Map(files.map((file) => [file.proto.name, file])),
    bySymbol,
    extensions,
    bytes,
  };
}

type MessageResponse = MessageInitShape<typeof ServerReflectionResponseSchema>['messageResponse'];

/** A file and everything it imports, as reflection answers a file request. */
function fileResponse(index: Index, file: DescFile | undefined, what: string): MessageResponse {
  if (!file) return { case: 'errorResponse', value: { errorCode: NOT_FOUND, errorMessage: `${what} not found` } };
  const fileDescriptorProto = withDependencies([file]).reverse().map((f) => index.bytes.get(f) ?? descriptorBytes(f));
  return { case: 'fileDescriptorResponse', value: { fileDescriptorProto } };
}

/** The answer to one reflection request; unknown names get an error_response, as the protocol says. */
function answer(index: Index, request: ServerReflectionRequest): ServerReflectionResponse {
  const message = request.messageRequest;
  let messageResponse: MessageResponse;
  switch (message.case) {
    case 'listServices':
      messageResponse = { case: 'listServicesResponse', value: { service: index.services.map((name) => ({ name })) } };
      break;
    case 'fileByFilename':
      messageResponse = fileResponse(index, index.byFilename.get(message.value), `file ${JSON.stringify(message.value.slice(0, 200))}`);
      break;
    case 'fileContainingSymbol':
      messageResponse = fileResponse(index, index.bySymbol.get(message.value), `symbol ${JSON.stringify(message.value.slice(0, 200))}`);
      break;
    case 'fileContainingExtension': {
      const { containingType, extensionNumber } = message.value;
      messageResponse = fileResponse(index, index.extensions.get(containingType)?.get(extensionNumber), `extension ${extensionNumber} of ${JSON.stringify(containingType.slice(0, 200))}`);
      break;
    }
    case 'allExtensionNumbersOfType': {
      const numbers = index.extensions.get(message.value);
      messageResponse = numbers || index.bySymbol.has(message.value)
        ? { case: 'allExtensionNumbersResponse', value: { baseTypeName: message.value, extensionNumber: [...(numbers?.keys() ?? [])] } }
        : { case: 'errorResponse', value: { errorCode: NOT_FOUND, errorMessage: `type ${JSON.stringify(message.value.slice(0, 200))} not found` } };
      break;
    }
    default:
      messageResponse = { case: 'errorResponse', value: { errorCode: 3, errorMessage: 'the request names no known reflection request' } };
  }
  return create(ServerReflectionResponseSchema, { validHost: request.host, originalRequest: request, messageResponse });
}

/** v1 and v1alpha share their messages field for field; only the service name differs. */
function definition(serviceName: string): ServiceDefinition {
  return {
    ServerReflectionInfo: {
      path: `/${serviceName}/ServerReflectionInfo`,
      requestStream: true,
      responseStream: true,
      requestSerialize: (request: ServerReflectionRequest) => Buffer.from(toBinary(ServerReflectionRequestSchema, request)),
      // Decoded in the handler, so bad bytes end the stream with INVALID_ARGUMENT rather than grpc-js's INTERNAL.
      requestDeserialize: (bytes: Buffer) => bytes,
      responseSerialize: (response: ServerReflectionResponse) => Buffer.from(toBinary(ServerReflectionResponseSchema, response)),
      responseDeserialize: (bytes: Buffer) => fromBinary(ServerReflectionResponseSchema, bytes),
      originalName: 'serverReflectionInfo',
    },
  };
}

export interface Reflection {
  addToServer(server: Server): void;
}

export function reflectionService(services: readonly DescService[]): Reflection {
  const index = buildIndex(services);
  const handle = (call: ServerDuplexStream<Buffer, ServerReflectionResponse>) => {
    call.on('data', (bytes: Buffer) => {
      let request: ServerReflectionRequest;
      try {
        request = fromBinary(ServerReflectionRequestSchema, bytes);
      } catch (err) {
        const status = toStatus(new InvalidArgumentError('request', `not a valid ServerReflectionRequest (${String(err).slice(0, 200)})`), newTraceId());
        call.emit('error', Object.assign(new Error(status.details), status));
        return;
      }
      call.write(answer(index, request));
    });
    call.on('end', () => call.end());
  };
  return {
    addToServer(server) {
      for (const name of REFLECTION_SERVICES) server.addService(definition(name), { ServerReflectionInfo: handle });
    },
  };
}
