/**
 * The role every RPC needs, by full method path. Every method of every
 * service the daemon serves must be listed (a unit test walks the service
 * definitions); a path missing here needs `admin`, so a new RPC fails closed.
 */
import type { Role } from './policy.js';

export const METHOD_ROLES: Readonly<Record<string, Role>> = {
  // Mutations: change the host's forwarding.
  '/xdpctl.v1.RuleService/CreateRule': 'admin',
  '/xdpctl.v1.RuleService/UpdateRule': 'admin',
  '/xdpctl.v1.RuleService/DeleteRule': 'admin',
  // Even with validate_only: a dry run of a whole-table replacement is part of changing it.
  '/xdpctl.v1.RuleService/ApplyRules': 'admin',
  '/xdpctl.v1.LinkService/Connect': 'admin',
  '/xdpctl.v1.LinkService/Disconnect': 'admin',
  '/xdpctl.v1.LinkService/ApplyLinks': 'admin',
  // Reads.
  '/xdpctl.v1.RuleService/GetRule': 'read-only',
  '/xdpctl.v1.RuleService/ListRules': 'read-only',
  '/xdpctl.v1.LinkService/ListLinks': 'read-only',
  '/xdpctl.v1.InterfaceService/ListInterfaces': 'read-only',
  '/xdpctl.v1.InterfaceService/GetInterface': 'read-only',
  '/xdpctl.v1.CounterService/GetCounters': 'read-only',
  '/xdpctl.v1.CounterService/WatchCounters': 'read-only',
  '/xdpctl.v1.DaemonService/GetStatus': 'read-only',
  '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo': 'read-only',
  '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo': 'read-only',
  // Probes (kubelet, load balancers) carry no identity; health reveals only SERVING or not.
  '/grpc.health.v1.Health/Check': 'public',
  '/grpc.health.v1.Health/Watch': 'public',
};

/** The role `path` needs; unknown paths need admin (fail closed). */
export function roleForMethod(path: string): Role {
  return METHOD_ROLES[path] ?? 'admin';
}
