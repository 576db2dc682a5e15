/**
 * One CLI invocation: the global options, the connection they describe, the call options (the
 * --timeout deadline, the trailer for error details), the files a command reads, and `run`, which
 * wraps a command's action so that its session is always closed and a failed call becomes a
 * one-line CliError with its exit code.
 */
import { readFileSync } from 'node:fs';

import type { Command } from 'commander';
import { ClientError, createClientFactory, Status, type Metadata } from 'nice-grpc';

import type { Link } from '../../gen/xdpctl/v1/link.js';
import type { Rule } from '../../gen/xdpctl/v1/rule.js';
import { ConfigError, parseConfig, type ConfigFile } from '../../shared/config-file.js';
import { linkSpecToProto, ruleSpecToProto } from '../../shared/proto-convert.js';
import { deadlineMiddleware } from '../deadline.js';
import { HealthCheckDefinition } from '../health.js';
import { createXdpctlClient, type XdpctlClient } from '../index.js';
import { diagnoseTls } from '../tls-diagnose.js';
import { answeredByDaemon, CliError, describeClientError, EXIT } from './errors.js';
import { checkTlsFiles } from './tls-files.js';
import type { OutputFormat } from './output.js';

export interface GlobalOptions {
  server: string;
  tlsCa?: string;
  tlsCert?: string;
  tlsKey?: string;
  output: OutputFormat;
  timeout: number;
  /** --timeout was left at its default (a bulk call then gets {@link BULK_TIMEOUT_MS}). */
  timeoutIsDefault?: boolean;
  debug?: boolean;
}

/**
 * The deadline of a whole-file transaction (`rules apply`, `links apply`) when --timeout is not given:
 * thousands of rules with dozens of backends each take seconds to write and persist on a loaded host, and
 * a deadline that expires once the transaction has started does not stop it (it completes and is audited),
 * so a short default would only turn a success into DEADLINE_EXCEEDED. An explicit --timeout applies as given.
 */
export const BULK_TIMEOUT_MS = 120_000;

/** One CLI invocation's connection and call options. */
export class Session {
  readonly client: XdpctlClient;
  /** Trailer of the last call (for google.rpc.Status details). */
  trailer: Metadata | undefined;

  constructor(readonly opts: GlobalOptions) {
    this.timeoutMs = opts.timeout;
    const tls = loadTls(opts);
    this.client = createXdpctlClient({ address: opts.server, tls });
  }

  /** The deadline of the last call, in ms (for the message when it expires). */
  timeoutMs: number;

  /**
   * When the last call asked for a change: the command that reads back whether it was made (a call that ends
   * without an answer may have been made all the same: {@link changeMayHaveLanded}).
   */
  readBack: string | undefined;

  /**
   * Options for a unary call: the --timeout deadline (`bulk`: a whole-file transaction, {@link BULK_TIMEOUT_MS}
   * unless --timeout was given) and the trailer.
   */
  call({ bulk = false, readBack }: { bulk?: boolean; readBack?: string } = {}): {
    deadline: Date;
    onTrailer: (md: Metadata) => void;
  } {
    this.timeoutMs = bulk && this.opts.timeoutIsDefault ? BULK_TIMEOUT_MS : this.opts.timeout;
    this.readBack = readBack;
    this.trailer = undefined; // this call's, not an earlier one's
    return { deadline: new Date(Date.now() + this.timeoutMs), onTrailer: (md) => (this.trailer = md) };
  }

  health() {
    return createClientFactory().use(deadlineMiddleware).create(HealthCheckDefinition, this.client.channel);
  }

  close(): void {
    this.client.close();
  }
}

export function readLocal(file: string, what: string): Buffer {
  try {
    return file === '-' ? readFileSync(0) : readFileSync(file);
  } catch (e) {
    const err = e as NodeJS.ErrnoException;
    throw new CliError(`cannot read ${what} ${file}: ${err.code ?? err.message}`, EXIT.LOCAL);
  }
}

export function loadTls(o: GlobalOptions): { ca?: Buffer; cert?: Buffer; key?: Buffer } | undefined {
  if (!o.tlsCa && !o.tlsCert && !o.tlsKey) return undefined;
  // A Unix socket is always plain (the daemon serves TLS on TCP only): refused as bad usage before anything is
  // read (was: a connection tried, then "the server does not speak TLS on this port", exit 10).
  if (/^unix(?:-abstract)?:/.test(o.server)) {
    throw new CliError(`--tls-* apply to TCP addresses; ${o.server} is always plain (drop --tls-*)`, EXIT.USAGE);
  }
  if (!o.tlsCert !== !o.tlsKey) throw new CliError('--tls-cert and --tls-key go together', EXIT.USAGE);
  const ca = o.tlsCa ? readLocal(o.tlsCa, '--tls-ca') : undefined;
  const cert = o.tlsCert ? readLocal(o.tlsCert, '--tls-cert') : undefined;
  const key = o.tlsKey ? readLocal(o.tlsKey, '--tls-key') : undefined;
  // Each file holds what its flag wants, and the key is the certificate's: said naming the flag and the file.
  checkTlsFiles({
    ...(ca ? { ca: { file: o.tlsCa!, buf: ca } } : {}),
    ...(cert ? { cert: { file: o.tlsCert!, buf: cert } } : {}),
    ...(key ? { key: { file: o.tlsKey!, buf: key } } : {}),
  });
  return { ca, cert, key };
}

/**
 * The rules of a file for rules apply, read by the one parser the daemon's --config uses
 * (shared/config-file.ts): the config-file form or the API form that `rules list -o yaml|json`
 * prints, so that list -> edit -> apply round-trips, and a file either accepts the other accepts,
 * refused with the same field-naming problems.
 */
export function loadRules(file: string): Rule[] {
  return loadConfig(file, 'rules').rules.map(ruleSpecToProto);
}

/** The links of a file for links apply (config-file form or what `links list -o yaml|json` prints). */
export function loadLinks(file: string): Link[] {
  return loadConfig(file, 'links').links.map(linkSpecToProto);
}

/** Read and parse a config file; `section` must be present (an empty list deletes everything). */
export function loadConfig(
  file: string,
  section: 'rules' | 'links',
  text = readLocal(file, 'file').toString('utf8'),
): ConfigFile {
  let cfg: ConfigFile;
  try {
    cfg = parseConfig(text);
  } catch (e) {
    if (e instanceof ConfigError) throw new CliError(`${file}: ${e.message}`, EXIT.INVALID);
    throw e;
  }
  if (!cfg.sections[section]) {
    throw new CliError(
      `${file} has no "${section}:" section; nothing to apply (write "${section}: []" to delete every ${section.slice(0, -1)})`,
      EXIT.INVALID,
    );
  }
  return cfg;
}

/**
 * Whether a change whose call failed with `code` may have been made: the call reached xdpctld and ended without its
 * answer (deadline passed, cancelled, the connection dropped): the daemon completes a change once its transaction has
 * started (README, Deadlines). Not when the call never reached it (cannot reach, TLS, permission); nor when xdpctld
 * answered (run() asks only when the status is not xdpctld's own, errors.ts answeredByDaemon: its message then says
 * what became of the change).
 */
export function changeMayHaveLanded(code: Status, message: string): boolean {
  if (code === Status.DEADLINE_EXCEEDED || code === Status.CANCELLED) return true;
  return code === Status.UNAVAILABLE && !/^(cannot reach xdpctld|TLS with xdpctld|permission denied)/.test(message);
}

export type Action = (s: Session, o: GlobalOptions, args: string[], flags: Record<string, unknown>) => Promise<void>;

/**
 * Wrap an action: open a session with the global options and always close it. A failed call leaves
 * as a CliError with its one-line message and exit code (describeClientError, with the session's
 * server, trailer and deadline; a refused TLS handshake asked of TLS itself), the ClientError as its
 * cause. No module-level state: each action has its own session.
 */
export function run(fn: Action) {
  return async (...params: unknown[]): Promise<void> => {
    const cmd = params[params.length - 1] as Command;
    const flags = params[params.length - 2] as Record<string, unknown>;
    const args = params.slice(0, -2).map((a) => a as string);
    const o = {
      ...cmd.optsWithGlobals<GlobalOptions>(),
      timeoutIsDefault: cmd.getOptionValueSourceWithGlobals('timeout') === 'default',
    };
    const s = new Session(o);
    try {
      await fn(s, o, args, flags);
    } catch (e) {
      if (!(e instanceof ClientError)) throw e;
      const described = describeClientError(e, o.server, s.trailer, s.timeoutMs);
      let message = described.message;
      let exitCode = described.exitCode;
      // grpc-js says "Failed to connect" or "ECONNRESET" for a refused TLS handshake: ask TLS itself.
      // An expired server certificate: TLS itself gives its date. The server refusing this client's certificate
      // (or its absence) is a refused identity: exit 9 as UNAUTHENTICATED, not 10 (unreachable).
      if (e.code === Status.UNAVAILABLE && /cannot reach xdpctld|server's certificate/.test(message)) {
        const why = await diagnoseTls(o.server, loadTls(o)).catch(() => undefined);
        if (why) message = why.message;
        if (why?.clientRefused) exitCode = EXIT.DENIED;
      }
      // Only when xdpctld's answer was lost: a status it sent itself says what became of the change.
      if (s.readBack && !answeredByDaemon(s.trailer) && changeMayHaveLanded(e.code, message)) {
        message +=
          '; the change may have been made all the same: xdpctld completes a change it has started whatever ' +
          `becomes of the caller, and its audit log says which (read it back: ${s.readBack})`;
      }
      throw new CliError(message, exitCode, { cause: e });
    } finally {
      s.close();
    }
  };
}
