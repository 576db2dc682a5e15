/**
 * gRPC server reflection with the descriptor set decoded on first use: the services are registered at
 * start (their definitions are small generated code), while reading and indexing the FileDescriptorSet
 * (reflection.ts, with @bufbuild/protobuf's descriptor types) waits for the first reflection call, so
 * that neither costs start time or memory in a daemon nobody describes. The file is checked to exist at
 * start (the daemon refuses to start without it); a file that does not decode fails the first call with
 * INTERNAL and is logged there, as reflection.ts's createReflection throws.
 */
import { ServerReflectionDefinition as V1Definition } from '../gen/grpc/reflection/v1/reflection.js';
import type { ServerReflectionRequest as V1Request } from '../gen/grpc/reflection/v1/reflection.js';
import { ServerReflectionDefinition as V1alphaDefinition } from '../gen/grpc/reflection/v1alpha/reflection.js';
import type { ServerReflectionRequest as V1alphaRequest } from '../gen/grpc/reflection/v1alpha/reflection.js';
import type { Reflection } from './reflection.js';

/** Both reflection services over the set that `load()` returns, built at the first call. */
export function lazyReflection(load: () => Uint8Array, serviceNames: string[]): Reflection {
  let real: Promise<Reflection> | undefined;
  const get = () => (real ??= import('./reflection.js').then((m) => m.createReflection(load(), serviceNames)));
  return {
    v1: {
      definition: V1Definition,
      implementation: {
        async *serverReflectionInfo(requests: AsyncIterable<V1Request>, ctx) {
          yield* (await get()).v1.implementation.serverReflectionInfo(requests, ctx);
        },
      },
    },
    v1alpha: {
      definition: V1alphaDefinition,
      implementation: {
        async *serverReflectionInfo(requests: AsyncIterable<V1alphaRequest>, ctx) {
          yield* (await get()).v1alpha.implementation.serverReflectionInfo(requests, ctx);
        },
      },
    },
  };
}
