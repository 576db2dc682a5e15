/**
 * Runs the independent client (test/clients/reflection_client.py: Debian's
 * python3-grpcio, i.e. gRPC's C core, and python3-protobuf; reflection only,
 * no generated stubs) and returns one result per step plus its transcript.
 */
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';

import { ROOT } from './env.js';

/** Debian's interpreter: the one python3-grpcio and python3-protobuf are installed for. */
export const PYTHON = '/usr/bin/python3';
const SCRIPT = `${ROOT}test/clients/reflection_client.py`;

export type Step =
  | { op: 'list' | 'describe_all'; version?: 'v1' | 'v1alpha' }
  | { op: 'unary'; method: string; request?: unknown; timeout?: number }
  | {
      op: 'stream';
      method: string;
      request?: unknown;
      count?: number;
      timeout?: number;
      tally?: Record<string, string>;
    }
  | { op: 'pages'; method: string; request?: unknown; timeout?: number; tally?: Record<string, string> }
  | { op: 'health'; service?: string }
  | { op: 'health_watch'; service?: string; count?: number; timeout?: number };

export interface StepResult {
  ok: boolean;
  op: string;
  step: number;
  code?: string;
  details?: string;
  services?: string[];
  described?: Record<string, { file: string; methods: string[] }>;
  response?: Record<string, unknown>;
  messages?: Record<string, unknown>[];
  /** With tally: each page or stream message's encoded size and element counts per path. */
  parts?: { bytes: number; counts: Record<string, number>; continued?: boolean; time?: string; at?: number }[];
  /** With tally (pages): per path, how many elements had each value of the tallied field. */
  tally?: Record<string, Record<string, number>>;
  /** With tally (stream): the same per whole sample. */
  samples?: Record<string, Record<string, number>>[];
  /** Seconds from the call's start at which each stream message arrived. */
  at?: number[];
  endedAt?: number;
}

export interface PythonRun {
  results: StepResult[];
  transcript: string;
  exitCode: number | null;
}

/**
 * `wrap` runs the interpreter under another command (e.g. setpriv to another
 * uid); the script is fed on stdin so that it need not be readable by that uid.
 */
export async function runPythonClient(
  target: string,
  steps: Step[],
  opts: { wrap?: string[]; args?: string[]; timeoutMs?: number } = {},
): Promise<PythonRun> {
  const wrap = opts.wrap ?? [];
  const argv = ['-', target, JSON.stringify(steps), ...(opts.args ?? [])];
  // cwd "/": the checkout may be closed (0700) to the uid the client runs as.
  const child = spawn(wrap[0] ?? PYTHON, [...(wrap.length ? [...wrap.slice(1), PYTHON] : []), ...argv], {
    stdio: ['pipe', 'pipe', 'pipe'],
    cwd: '/',
  });
  child.stdin.end(readFileSync(SCRIPT));
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
  const exitCode = await new Promise<number | null>((r) => child.on('close', (code) => r(code)));
  clearTimeout(timer);
  const results = out
    .split('\n')
    .filter((l) => l.trim())
    .map((l) => JSON.parse(l) as StepResult);
  if (exitCode !== 0 || results.length !== steps.length) {
    throw new Error(`python client exited ${exitCode} after ${results.length}/${steps.length} steps:\n${err}${out}`);
  }
  return { results, transcript: err, exitCode };
}
