/**
 * gRPC server reflection (grpc.reflection.v1 and its deprecated twin
 * grpc.reflection.v1alpha, identical on the wire) for a nice-grpc server, so
 * that grpcurl and other generic clients can list, describe and call every
 * method without the .proto files.
 *
 * Descriptors come from the FileDescriptorSet that `buf build` writes
 * (build/descriptor.binpb, with imports and source info, hence comments).
 * Like grpc-go, every file answer carries the requested file first and then
 * all of its transitive dependencies, so one response is self-contained.
 *
 *   const r = createReflection(readFileSync('build/descriptor.binpb'), names);
 *   server.add(r.v1.definition, r.v1.implementation);
 *   server.add(r.v1alpha.definition, r.v1alpha.implementation);
 */
import { fromBinary, toBinary } from '@bufbuild/protobuf';
import {
  FileDescriptorProtoSchema,
  FileDescriptorSetSchema,
  type DescriptorProto,
  type EnumDescriptorProto,
  type FieldDescriptorProto,
  type FileDescriptorProto,
} from '@bufbuild/protobuf/wkt';
import { Status } from 'nice-grpc-common';

import {
  ServerReflectionDefinition as V1Definition,
  type ServerReflectionRequest as V1Request,
  type ServerReflectionResponse as V1Response,
  type ServerReflectionServiceImplementation as V1Implementation,
} from '../gen/grpc/reflection/v1/reflection.js';
import {
  ServerReflectionDefinition as V1alphaDefinition,
  type ServerReflectionRequest as V1alphaRequest,
  type ServerReflectionServiceImplementation as V1alphaImplementation,
} from '../gen/grpc/reflection/v1alpha/reflection.js';

export interface Reflection {
  v1: { definition: typeof V1Definition; implementation: V1Implementation };
  v1alpha: { definition: typeof V1alphaDefinition; implementation: V1alphaImplementation };
}

/** The parts of a reflection response that do not echo the request. */
type Answer = V1Response['messageResponse'];

/** What is computed once from the descriptor set. */
interface Index {
  /** File name -> serialized FileDescriptorProto. */
  bytes: Map<string, Uint8Array>;
  /** File name -> direct imports. */
  deps: Map<string, string[]>;
  /** Fully-qualified symbol (no leading dot) -> file name. */
  symbols: Map<string, string>;
  /** Extendee (no leading dot) -> extension number -> file name. */
  extensions: Map<string, Map<number, string>>;
  /** Fully-qualified message names (extendable types). */
  messages: Set<string>;
  /** Fully-qualified service names. */
  services: Set<string>;
}

/**
 * Builds both reflection services over `descriptorSet` (a serialized
 * google.protobuf.FileDescriptorSet). `serviceNames` is what list_services
 * answers, in order (include the reflection and health services themselves).
 * Every listed service must be described by the set, so that a client that
 * lists and then describes each one (`grpcurl describe`) never meets "symbol
 * not found". Throws if the set does not decode, a file imports one missing
 * from it, or a listed service is not in it.
 */
export function createReflection(descriptorSet: Uint8Array, serviceNames: string[]): Reflection {
  const index = buildIndex(descriptorSet);
  const undescribed = serviceNames.filter((name) => !index.services.has(name));
  if (undescribed.length) {
    throw new Error(`reflection: services listed but not in the descriptor set: ${undescribed.join(', ')}`);
  }
  const services = serviceNames.map((name) => ({ name }));
  const answer = (request: V1Request): Answer => respond(index, services, request);

  async function* serve(requests: AsyncIterable<V1Request>): AsyncGenerator<V1Response, void> {
    for await (const request of requests) {
      yield { validHost: request.host, originalRequest: request, messageResponse: answer(request) };
    }
  }

  return {
    v1: {
      definition: V1Definition,
      implementation: { serverReflectionInfo: (requests) => serve(requests) },
    },
    v1alpha: {
      definition: V1alphaDefinition,
      // v1alpha messages have exactly the v1 shapes (same fields and numbers).
      implementation: { serverReflectionInfo: (requests: AsyncIterable<V1alphaRequest>) => serve(requests) },
    },
  };
}

function respond(index: Index, services: { name: string }[], request: V1Request): Answer {
  const req = request.messageRequest;
  switch (req?.$case) {
    case 'listServices':
      return { $case: 'listServicesResponse', value: { service: services } };
    case 'fileByFilename':
      return index.bytes.has(req.value)
        ? files(index, req.value)
        : error(Status.NOT_FOUND, `file not found: ${req.value}`);
    case 'fileContainingSymbol': {
      const file = index.symbols.get(stripDot(req.value));
      return file ? files(index, file) : error(Status.NOT_FOUND, `symbol not found: ${req.value}`);
    }
    case 'fileContainingExtension': {
      const type = stripDot(req.value.containingType);
      const file = index.extensions.get(type)?.get(req.value.extensionNumber);
      return file
        ? files(index, file)
        : error(Status.NOT_FOUND, `extension ${req.value.extensionNumber} of ${req.value.containingType} not found`);
    }
    case 'allExtensionNumbersOfType': {
      const type = stripDot(req.value);
      if (!index.messages.has(type)) return error(Status.NOT_FOUND, `message type not found: ${req.value}`);
      const numbers = [...(index.extensions.get(type)?.keys() ?? [])].sort((a, b) => a - b);
      return { $case: 'allExtensionNumbersResponse', value: { baseTypeName: type, extensionNumber: numbers } };
    }
    default:
      return error(Status.UNIMPLEMENTED, 'unsupported or missing message_request');
  }
}

function error(code: Status, message: string): Answer {
  return { $case: 'errorResponse', value: { errorCode: code, errorMessage: message } };
}

/** `name` first, then its transitive imports (each once), as grpc-go does. */
function files(index: Index, name: string): Answer {
  const order: string[] = [];
  const seen = new Set<string>();
  const queue = [name];
  while (queue.length) {
    const file = queue.shift()!;
    if (seen.has(file)) continue;
    seen.add(file);
    order.push(file);
    queue.push(...(index.deps.get(file) ?? []));
  }
  return {
    $case: 'fileDescriptorResponse',
    value: { fileDescriptorProto: order.map((f) => index.bytes.get(f)!) },
  };
}

function stripDot(name: string): string {
  return name.startsWith('.') ? name.slice(1) : name;
}

function buildIndex(descriptorSet: Uint8Array): Index {
  const set = fromBinary(FileDescriptorSetSchema, descriptorSet);
  const index: Index = {
    bytes: new Map(),
    deps: new Map(),
    symbols: new Map(),
    extensions: new Map(),
    messages: new Set(),
    services: new Set(),
  };
  for (const file of set.file) {
    if (index.bytes.has(file.name)) throw new Error(`reflection: duplicate file ${file.name} in descriptor set`);
    index.bytes.set(file.name, toBinary(FileDescriptorProtoSchema, file));
    index.deps.set(file.name, file.dependency);
    indexFile(index, file);
  }
  for (const [name, deps] of index.deps) {
    for (const dep of deps) {
      if (!index.bytes.has(dep)) throw new Error(`reflection: ${name} imports ${dep}, missing from descriptor set`);
    }
  }
  return index;
}

function indexFile(index: Index, file: FileDescriptorProto): void {
  const add = (symbol: string) => {
    // First definition wins; protoc rejects real duplicates anyway.
    if (!index.symbols.has(symbol)) index.symbols.set(symbol, file.name);
  };
  const scope = (parent: string, name: string) => (parent ? `${parent}.${name}` : name);
  const addExtension = (ext: FieldDescriptorProto, parent: string) => {
    add(scope(parent, ext.name));
    const extendee = stripDot(ext.extendee);
    let numbers = index.extensions.get(extendee);
    if (!numbers) index.extensions.set(extendee, (numbers = new Map()));
    numbers.set(ext.number, file.name);
  };
  const addEnum = (e: EnumDescriptorProto, parent: string) => {
    const name = scope(parent, e.name);
    add(name);
    for (const v of e.value) {
      add(scope(parent, v.name)); // protobuf scoping: values are siblings of their enum
      add(`${name}.${v.name}`); // what people type
    }
  };
  const addMessage = (m: DescriptorProto, parent: string) => {
    const name = scope(parent, m.name);
    add(name);
    index.messages.add(name);
    for (const f of m.field) add(`${name}.${f.name}`);
    for (const o of m.oneofDecl) add(`${name}.${o.name}`);
    for (const nested of m.nestedType) addMessage(nested, name);
    for (const e of m.enumType) addEnum(e, name);
    for (const ext of m.extension) addExtension(ext, name);
  };

  const pkg = file.package;
  for (const m of file.messageType) addMessage(m, pkg);
  for (const e of file.enumType) addEnum(e, pkg);
  for (const ext of file.extension) addExtension(ext, pkg);
  for (const s of file.service) {
    const name = scope(pkg, s.name);
    add(name);
    index.services.add(name);
    for (const method of s.method) add(`${name}.${method.name}`);
  }
}
