/**
 * The typed client of xdpctld: one factory over the generated nice-grpc
 * definitions. Imports nothing from src/server/.
 */
import { isIP } from 'node:net';

import { ChannelCredentials, createChannel, createClientFactory, type Channel, type Client } from 'nice-grpc';
import { retryMiddleware, type RetryOptions } from 'nice-grpc-client-middleware-retry';

import { CounterServiceDefinition } from '../gen/xdpctl/v1/counters.js';
import { DaemonServiceDefinition } from '../gen/xdpctl/v1/daemon.js';
import { InterfaceServiceDefinition } from '../gen/xdpctl/v1/interface.js';
import { LinkServiceDefinition } from '../gen/xdpctl/v1/link.js';
import { RuleServiceDefinition } from '../gen/xdpctl/v1/rule.js';
import { deadlineMiddleware, type DeadlineOptions } from './deadline.js';

export { ChangeAction } from '../gen/xdpctl/v1/common.js';
export { CounterKind, type CounterFilter, type Counters } from '../gen/xdpctl/v1/counters.js';
export { EffectiveXdpMode, XdpMode, type ManagedInterface } from '../gen/xdpctl/v1/interface.js';
export { LinkDirection, type Link } from '../gen/xdpctl/v1/link.js';
export {
  Protocol,
  RuleState,
  UdpChecksumMode,
  type Backend,
  type Rule,
  type RuleMatch,
} from '../gen/xdpctl/v1/rule.js';

export {
  applyChanges,
  getAllCounters,
  listAllInterfaces,
  listAllLinks,
  listAllRules,
  mergeCounters,
  watchCounterSamples,
  type CounterReader,
  type InterfacePager,
  type LinkPager,
  type RulePager,
} from './pages.js';

export const DEFAULT_SERVER = '127.0.0.1:9091';

export interface ClientOptions {
  /** "host:port" or "unix:/path" (default 127.0.0.1:9091). */
  address?: string;
  /** TLS: PEM CA to trust; with cert and key, mutual TLS. */
  tls?: { ca?: Buffer; cert?: Buffer; key?: Buffer };
}

/**
 * Call options every method takes: { deadline } (a Date or ms from now; any length: deadline.ts), and for reads
 * { retry, retryMaxAttempts }.
 */
export type XdpctlCallOptions = DeadlineOptions & RetryOptions;

export interface XdpctlClient {
  rules: Client<typeof RuleServiceDefinition, XdpctlCallOptions>;
  links: Client<typeof LinkServiceDefinition, XdpctlCallOptions>;
  interfaces: Client<typeof InterfaceServiceDefinition, XdpctlCallOptions>;
  counters: Client<typeof CounterServiceDefinition, XdpctlCallOptions>;
  daemon: Client<typeof DaemonServiceDefinition, XdpctlCallOptions>;
  channel: Channel;
  close(): void;
}

/** Channel addresses as grpc-js wants them (unix:/path -> unix:///path). */
export function channelAddress(address: string): string {
  return address.replace(/^unix:(?!\/\/)/, 'unix://');
}

interface SecureConnector {
  connectionOptions?: { servername?: string };
}

/**
 * TLS credentials that send no server name (SNI) to an IP address. grpc-js passes the target's host as
 * `servername` even when it is an address, which RFC 6066 does not allow and Node 24 reports as a
 * DeprecationWarning (DEP0123) in every program that connects to `127.0.0.1:9091` over TLS. Without it, Node
 * checks the certificate against the connection's host, the same address (test/unit/client-tls-ip.test.ts: a
 * certificate for another address is still refused). A grpc-js that no longer builds its options this way
 * leaves the connector as it is (and that test sees the warning again).
 */
export function sslCredentials(ca?: Buffer, key?: Buffer, cert?: Buffer): ChannelCredentials {
  const creds = ChannelCredentials.createSsl(ca, key, cert);
  const inner = creds as unknown as { _createSecureConnector?: (...args: unknown[]) => SecureConnector };
  const create = inner._createSecureConnector?.bind(creds);
  if (create) {
    inner._createSecureConnector = (...args: unknown[]) => {
      const connector = create(...args);
      const o = connector.connectionOptions;
      if (o?.servername !== undefined && isIP(o.servername)) delete o.servername;
      return connector;
    };
  }
  return creds;
}

/**
 * Create a client. Per-call deadlines go in call options ({ deadline }).
 * Reads marked NO_SIDE_EFFECTS in the protos (Get*, List*) are retried on
 * transient failures (UNAVAILABLE and the like) by nice-grpc's retry
 * middleware; mutations never are.
 */
export function createXdpctlClient(opts: ClientOptions = {}): XdpctlClient {
  const address = channelAddress(opts.address ?? DEFAULT_SERVER);
  const creds = opts.tls ? sslCredentials(opts.tls.ca, opts.tls.key, opts.tls.cert) : undefined;
  const channel = createChannel(address, creds);
  const factory = createClientFactory().use(deadlineMiddleware).use(retryMiddleware);
  // Reads: up to 3 retries, backing off from 200 ms (applies only to NO_SIDE_EFFECTS methods).
  const defaults = { '*': { retryMaxAttempts: 3, retryBaseDelayMs: 200, retryMaxDelayMs: 2000 } };
  return {
    rules: factory.create(RuleServiceDefinition, channel, defaults),
    links: factory.create(LinkServiceDefinition, channel, defaults),
    interfaces: factory.create(InterfaceServiceDefinition, channel, defaults),
    counters: factory.create(CounterServiceDefinition, channel, defaults),
    daemon: factory.create(DaemonServiceDefinition, channel, defaults),
    channel,
    close: () => channel.close(),
  };
}
