#!/usr/bin/env node
/**
 * xdpctl: the command-line client of xdpctld. A thin layer over the gRPC API
 * (src/client/index.ts): it parses its own flags, sends requests and prints
 * the answers; every rule about what is valid belongs to the server.
 *
 * Exit codes follow the gRPC status of the failed call (see EXIT_CODES).
 */
// First: on a Node older than engines.node, stop with a message before anything else loads.
import '../shared/supported-node.js';

import { readFileSync, realpathSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

import { Command, CommanderError, Option } from 'commander';

import { DEFAULT_SERVER } from './index.js';
import { registerCompletion } from './cli/commands/completion.js';
import { registerInterfaces } from './cli/commands/interfaces.js';
import { registerLinks } from './cli/commands/links.js';
import { registerRules } from './cli/commands/rules.js';
import { registerStatus } from './cli/commands/status.js';
import { registerWatch } from './cli/commands/watch.js';
import { CliError, EXIT, EXIT_HELP, oneLine } from './cli/errors.js';
import { examples, parseTimeout } from './cli/flags.js';

export { bashCompletion, completionScript, zshCompletion } from './cli/commands/completion.js';
export { CliError, describeClientError, detailLines, EXIT } from './cli/errors.js';
export { parseDuration } from './cli/flags.js';
export { renderTable } from './cli/output.js';

export function buildProgram(version = '0.0.0'): Command {
  const program = new Command('xdpctl');
  program
    .description('Command-line client of xdpctld, the XDP datapath control plane.')
    .version(version, '-V, --version', 'print the client version')
    .addOption(
      new Option('--server <addr>', 'xdpctld address: host:port or unix:/path')
        .env('XDPCTL_SERVER')
        .default(DEFAULT_SERVER),
    )
    .option(
      '--tls-ca <file>',
      'PEM CA certificate to trust (enables TLS; TCP addresses only: a unix: socket is always plain)',
    )
    .option('--tls-cert <file>', 'PEM client certificate (mutual TLS, with --tls-key)')
    .option('--tls-key <file>', 'PEM client key (mutual TLS, with --tls-cert)')
    .addOption(new Option('-o, --output <format>', 'output format').choices(['table', 'json', 'yaml']).default('table'))
    .addOption(
      new Option(
        '--timeout <duration>',
        'deadline of each call (500ms, 10s, 2m, 720h; at most 99999999h); "rules apply" and "links apply" default to 2m',
      )
        .argParser(parseTimeout)
        .default(10_000, '10s'),
    )
    .option('--debug', 'print stack traces on errors')
    .showSuggestionAfterError(true)
    .configureHelp({ showGlobalOptions: true })
    .exitOverride()
    .configureOutput({
      outputError: (str, write) => write(`xdpctl: ${oneLine(str.replace(/^error: /, ''))}\n`),
    })
    .addHelpText(
      'after',
      `${examples(`
        xdpctl rules add web --port 7999 --source 192.168.122.10 --backend 172.17.0.2,02:42:ac:11:00:02,veth25 --ingress eth0
        xdpctl rules list
        xdpctl -o json rules get web
        xdpctl links connect eth0 tap0
        xdpctl --server unix:/run/xdpctl/xdpctl.sock status
        xdpctl watch rules`)}${EXIT_HELP}`,
    );

  registerRules(program);
  registerLinks(program);
  registerInterfaces(program);
  registerWatch(program);
  registerStatus(program);
  registerCompletion(program);
  return program;
}

// ---------------------------------------------------------------------------
// Main

function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
    return pkg.version;
  } catch {
    return '0.0.0';
  }
}

/**
 * A reader that went away (`xdpctl watch | head -1`) is the normal end of a
 * pipeline, not an error: exit 0 at once, without a stack trace, as
 * coreutils do for their output.
 */
let epipeHandled = false;
function exitQuietlyOnEpipe(): void {
  if (epipeHandled) return;
  epipeHandled = true;
  for (const stream of [process.stdout, process.stderr]) {
    stream.on('error', (e: NodeJS.ErrnoException) => {
      if (e.code === 'EPIPE') process.exit(EXIT.OK);
      throw e;
    });
  }
}

/** Run the CLI; resolves to the exit code. Errors are printed as one line on stderr. */
export async function main(argv: string[] = process.argv): Promise<number> {
  exitQuietlyOnEpipe();
  const program = buildProgram(packageVersion());
  const debug = argv.includes('--debug');
  try {
    await program.parseAsync(argv);
    return EXIT.OK;
  } catch (e) {
    if (e instanceof CommanderError) {
      // Help and version requested: success. Anything else commander reports
      // (already printed as one line by outputError) is a usage error.
      if (e.code === 'commander.helpDisplayed' || e.code === 'commander.version') return EXIT.OK;
      if (e.code === 'commander.help' && e.exitCode === 0) return EXIT.OK;
      if (debug && e.stack) process.stderr.write(`${e.stack}\n`);
      return EXIT.USAGE;
    }
    let message: string;
    let exitCode: number;
    if (e instanceof CliError) {
      message = e.message;
      exitCode = e.exitCode;
    } else {
      message = e instanceof Error ? e.message : String(e);
      exitCode = EXIT.LOCAL;
    }
    process.stderr.write(`xdpctl: ${oneLine(message)}\n`);
    if (debug && e instanceof Error && e.stack) process.stderr.write(`${e.stack}\n`);
    return exitCode;
  }
}

function isMain(): boolean {
  if (!process.argv[1]) return false;
  try {
    return realpathSync(process.argv[1]) === realpathSync(fileURLToPath(import.meta.url));
  } catch {
    return false;
  }
}

/**
 * Exit once stdout and stderr have written everything: to a pipe they are
 * asynchronous, and process.exit() would cut a long output (a 5 MB
 * `-o json rules list` ended after 219 264 bytes).
 */
function exitAfterFlush(code: number): void {
  let pending = 2;
  const done = () => {
    if (--pending === 0) process.exit(code);
  };
  process.stdout.write('', done);
  process.stderr.write('', done);
}

if (isMain()) {
  // Errors are one line on stderr: no runtime deprecation notices in between (as `node --no-deprecation`).
  process.noDeprecation = true;
  main().then(exitAfterFlush, (e: unknown) => {
    process.stderr.write(`xdpctl: ${e instanceof Error ? e.message : String(e)}\n`);
    exitAfterFlush(EXIT.LOCAL);
  });
}
