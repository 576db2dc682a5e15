import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { create, createFileRegistry, fromBinary, type DescMessage, type FileRegistry } from '@bufbuild/protobuf';
import {
  FileDescriptorSetSchema,
  FileDescriptorProtoSchema,
  type DescriptorProto,
  type FileDescriptorProto,
  FieldDescriptorProto_Type,
} from '@bufbuild/protobuf/wkt';
import { createChannel, createClient, createServer, type Channel, type Server } from 'nice-grpc';

import {
  ServerReflectionDefinition as V1Definition,
  type ServerReflectionRequest,
  type ServerReflectionResponse,
} from '../../src/gen/grpc/reflection/v1/reflection.js';
import { ServerReflectionDefinition as V1alphaDefinition } from '../../src/gen/grpc/reflection/v1alpha/reflection.js';
import { createReflection } from '../../src/server/reflection.js';

const DESCRIPTOR = fileURLToPath(new URL('../../build/descriptor.binpb', import.meta.url));

const XDPCTL_SERVICES = [
  'xdpctl.v1.RuleService',
  'xdpctl.v1.LinkService',
  'xdpctl.v1.InterfaceService',
  'xdpctl.v1.CounterService',
  'xdpctl.v1.DaemonService',
];
const SERVICES = [
  ...XDPCTL_SERVICES,
  'grpc.health.v1.Health',
  'grpc.reflection.v1.ServerReflection',
  'grpc.reflection.v1alpha.ServerReflection',
];

const NOT_FOUND = 5;
const UNIMPLEMENTED = 12;

type Request = Partial<ServerReflectionRequest>;
/** One reflection stream: sends `requests`, half-closes, collects the answers. */
type Ask = (requests: Request[]) => Promise<ServerReflectionResponse[]>;

let server: Server | undefined;
let channel: Channel | undefined;
const asks: Record<'v1' | 'v1alpha', Ask> = {} as never;

before(async () => {
  if (!existsSync(DESCRIPTOR)) {
    throw new Error(`${DESCRIPTOR} is missing: run \`npm run generate\` (buf build) or \`npm run setup\` first`);
  }
  const reflection = createReflection(readFileSync(DESCRIPTOR), SERVICES);
  server = createServer();
  server.add(reflection.v1.definition, reflection.v1.implementation);
  server.add(reflection.v1alpha.definition, reflection.v1alpha.implementation);
  const port = await server.listen('127.0.0.1:0');
  channel = createChannel(`127.0.0.1:${port}`);

  const v1 = createClient(V1Definition, channel);
  const v1alpha = createClient(V1alphaDefinition, channel);
  const collect = async (responses: AsyncIterable<ServerReflectionResponse>) => {
    const out: ServerReflectionResponse[] = [];
    for await (const response of responses) out.push(response);
    return out;
  };
  async function* stream(requests: Request[]) {
    yield* requests;
  }
  asks.v1 = (requests) => collect(v1.serverReflectionInfo(stream(requests)));
  // v1alpha messages have the v1 shapes.
  asks.v1alpha = (requests) => collect(v1alpha.serverReflectionInfo(stream(requests)));
});

after(async () => {
  channel?.close();
  await server?.shutdown();
});

/** The file descriptors of a file_descriptor_response, decoded, in order. */
function fileProtos(response: ServerReflectionResponse): FileDescriptorProto[] {
  const r = response.messageResponse;
  assert.equal(r?.$case, 'fileDescriptorResponse', JSON.stringify(r));
  return r.value.fileDescriptorProto.map((bytes) => fromBinary(FileDescriptorProtoSchema, bytes));
}

/**
 * A registry over the answer: every import must be resolved by the answer
 * itself. Files go in dependency order (createFileRegistry(file, resolve)
 * mis-orders a dependency shared by two imports, e.g. timestamp.proto
 * imported by rule.proto and common.proto).
 */
function registryOf(files: FileDescriptorProto[]): FileRegistry {
  const byName = new Map(files.map((f) => [f.name, f]));
  assert.equal(byName.size, files.length, 'each file is sent once');
  const ordered: FileDescriptorProto[] = [];
  const done = new Set<string>();
  const visit = (f: FileDescriptorProto) => {
    if (done.has(f.name)) return;
    done.add(f.name);
    for (const d of f.dependency) {
      const dep = byName.get(d);
      assert.ok(dep, `${d}, imported by ${f.name}, is in the answer`);
      visit(dep);
    }
    ordered.push(f);
  };
  files.forEach(visit);
  return createFileRegistry(create(FileDescriptorSetSchema, { file: ordered }));
}

/** Every message and enum declared in `files` (incl. nested and map entries), by full name. */
function declaredTypes(files: FileDescriptorProto[]): Map<string, DescriptorProto | 'enum'> {
  const types = new Map<string, DescriptorProto | 'enum'>();
  const addMessage = (m: DescriptorProto, scope: string) => {
    const name = `${scope}.${m.name}`;
    types.set(name, m);
    for (const n of m.nestedType) addMessage(n, name);
    for (const e of m.enumType) types.set(`${name}.${e.name}`, 'enum');
  };
  for (const f of files) {
    const scope = f.package ? `.${f.package}` : '';
    for (const m of f.messageType) addMessage(m, scope);
    for (const e of f.enumType) types.set(`${scope}.${e.name}`, 'enum');
  }
  return types;
}

/** Walks `root` and every message it reaches (registry view), asserting each field type resolves. */
function walkRegistry(registry: FileRegistry, root: DescMessage, seen: Set<string>): void {
  if (seen.has(root.typeName)) return;
  seen.add(root.typeName);
  assert.equal(registry.getMessage(root.typeName), root, root.typeName);
  for (const field of root.fields) {
    const where = `${root.typeName}.${field.name}`;
    if (field.fieldKind === 'message' || (field.fieldKind === 'list' && field.listKind === 'message')) {
      walkRegistry(registry, field.message, seen);
    } else if (field.fieldKind === 'map' && field.mapKind === 'message') {
      walkRegistry(registry, field.message, seen);
    } else if (field.fieldKind === 'enum' || (field.fieldKind === 'list' && field.listKind === 'enum')) {
      assert.ok(registry.getEnum(field.enum.typeName), where);
    } else if (field.fieldKind === 'map' && field.mapKind === 'enum') {
      assert.ok(registry.getEnum(field.enum.typeName), where);
    }
  }
}

/** The same walk on the raw protos: every type_name (map entries included) is declared in the answer. */
function walkRaw(types: Map<string, DescriptorProto | 'enum'>, typeName: string, seen: Set<string>): void {
  if (seen.has(typeName)) return;
  seen.add(typeName);
  const message = types.get(typeName);
  assert.ok(message && message !== 'enum', `message ${typeName} resolves`);
  for (const field of message.field) {
    if (field.type === FieldDescriptorProto_Type.MESSAGE) walkRaw(types, field.typeName, seen);
    if (field.type === FieldDescriptorProto_Type.ENUM) {
      assert.equal(types.get(field.typeName), 'enum', `enum ${field.typeName} (${typeName}.${field.name}) resolves`);
    }
  }
}

for (const version of ['v1', 'v1alpha'] as const) {
  describe(`server reflection ${version}`, () => {
    const ask = async (request: Request) => {
      const responses = await asks[version]([request]);
      assert.equal(responses.length, 1);
      return responses[0];
    };

    it('lists the services it was given', async () => {
      const response = await ask({ host: '', messageRequest: { $case: 'listServices', value: '' } });
      const r = response.messageResponse;
      assert.equal(r?.$case, 'listServicesResponse');
      assert.deepEqual(
        r.value.service.map((s) => s.name),
        SERVICES,
      );
    });

    for (const service of SERVICES) {
      it(`describes ${service} completely from file_containing_symbol`, async () => {
        const response = await ask({ host: '', messageRequest: { $case: 'fileContainingSymbol', value: service } });
        const files = fileProtos(response);
        const registry = registryOf(files);
        const desc = registry.getService(service);
        assert.ok(desc, `${service} in the answer`);
        assert.equal(files[0].name, desc.file.proto.name, 'the defining file comes first');
        assert.ok(desc.methods.length > 0);

        const types = declaredTypes(files);
        const seenRegistry = new Set<string>();
        const seenRaw = new Set<string>();
        for (const method of desc.methods) {
          walkRegistry(registry, method.input, seenRegistry);
          walkRegistry(registry, method.output, seenRegistry);
          walkRaw(types, `.${method.input.typeName}`, seenRaw);
          walkRaw(types, `.${method.output.typeName}`, seenRaw);
        }
      });
    }

    it('covers well-known types and map entries', async () => {
      const responses = await asks[version](
        ['xdpctl.v1.RuleService', 'xdpctl.v1.CounterService', 'xdpctl.v1.DaemonService'].map((value) => ({
          host: '',
          messageRequest: { $case: 'fileContainingSymbol', value },
        })),
      );
      assert.equal(responses.length, 3, 'one answer per request on one stream');
      const types = new Map<string, DescriptorProto | 'enum'>();
      for (const response of responses) for (const [k, v] of declaredTypes(fileProtos(response))) types.set(k, v);
      for (const name of ['.google.protobuf.Timestamp', '.google.protobuf.Duration', '.xdpctl.v1.Rule.LabelsEntry']) {
        assert.ok(types.has(name), name);
      }
      const entry = types.get('.xdpctl.v1.Rule.LabelsEntry');
      assert.ok(entry && entry !== 'enum' && entry.options?.mapEntry, 'Rule.LabelsEntry is a map entry');
    });

    it('answers file_by_filename with the file and its imports', async () => {
      const request: Request = {
        host: 'example',
        messageRequest: { $case: 'fileByFilename', value: 'xdpctl/v1/rule.proto' },
      };
      const response = await ask(request);
      assert.equal(response.validHost, 'example');
      assert.deepEqual(response.originalRequest?.messageRequest, request.messageRequest);
      const files = fileProtos(response);
      assert.equal(files[0].name, 'xdpctl/v1/rule.proto');
      assert.deepEqual(files.map((f) => f.name).sort(), [
        'google/protobuf/timestamp.proto',
        'xdpctl/v1/common.proto',
        'xdpctl/v1/rule.proto',
      ]);
      assert.ok(registryOf(files).getMessage('xdpctl.v1.Rule'));
      assert.ok(files[0].sourceCodeInfo?.location.length, 'comments (source info) are kept');
    });

    it('finds nested symbols: methods, nested messages, fields, enums, enum values', async () => {
      const cases: [string, string][] = [
        ['xdpctl.v1.RuleService.CreateRule', 'xdpctl/v1/rule.proto'],
        ['xdpctl.v1.Rule.LabelsEntry', 'xdpctl/v1/rule.proto'],
        ['.xdpctl.v1.Rule', 'xdpctl/v1/rule.proto'],
        ['xdpctl.v1.Rule.labels', 'xdpctl/v1/rule.proto'],
        ['xdpctl.v1.XdpMode', 'xdpctl/v1/interface.proto'],
        ['xdpctl.v1.XDP_MODE_UNSPECIFIED', 'xdpctl/v1/interface.proto'],
        ['xdpctl.v1.ChangeAction.CHANGE_ACTION_UNSPECIFIED', 'xdpctl/v1/common.proto'],
        ['google.protobuf.Duration', 'google/protobuf/duration.proto'],
        [`grpc.reflection.${version}.ServerReflection`, `grpc/reflection/${version}/reflection.proto`],
      ];
      const responses = await asks[version](
        cases.map(([value]) => ({ host: '', messageRequest: { $case: 'fileContainingSymbol', value } })),
      );
      assert.deepEqual(
        responses.map((r) => fileProtos(r)[0].name),
        cases.map(([, file]) => file),
      );
    });

    it('answers NOT_FOUND for unknown symbols, files and extensions', async () => {
      const responses = await asks[version]([
        { host: '', messageRequest: { $case: 'fileContainingSymbol', value: 'xdpctl.v1.NoSuchThing' } },
        { host: '', messageRequest: { $case: 'fileByFilename', value: 'nope.proto' } },
        {
          host: '',
          messageRequest: {
            $case: 'fileContainingExtension',
            value: { containingType: 'xdpctl.v1.Rule', extensionNumber: 1000 },
          },
        },
        { host: '', messageRequest: { $case: 'allExtensionNumbersOfType', value: 'xdpctl.v1.NoSuchThing' } },
      ]);
      assert.equal(responses.length, 4);
      for (const response of responses) {
        const r = response.messageResponse;
        assert.equal(r?.$case, 'errorResponse', JSON.stringify(r));
        assert.equal(r.value.errorCode, NOT_FOUND);
        assert.ok(r.value.errorMessage);
      }
    });

    it('lists no extension numbers for a known message', async () => {
      const response = await ask({
        host: '',
        messageRequest: { $case: 'allExtensionNumbersOfType', value: 'xdpctl.v1.Rule' },
      });
      assert.deepEqual(response.messageResponse, {
        $case: 'allExtensionNumbersResponse',
        value: { baseTypeName: 'xdpctl.v1.Rule', extensionNumber: [] },
      });
    });

    it('refuses to list a service the descriptor set does not describe', () => {
      assert.throws(
        () => createReflection(readFileSync(DESCRIPTOR), [...SERVICES, 'grpc.health.v2.Nope']),
        /services listed but not in the descriptor set: grpc\.health\.v2\.Nope/,
      );
    });

    it('answers UNIMPLEMENTED to an empty request', async () => {
      const response = await ask({ host: '' });
      const r = response.messageResponse;
      assert.equal(r?.$case, 'errorResponse');
      assert.equal(r.value.errorCode, UNIMPLEMENTED);
    });
  });
}
