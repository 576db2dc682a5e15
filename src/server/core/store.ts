/**
 * Persistence of the desired state in a state directory (default
 * /var/lib/xdpctl): one JSON file, written atomically (temporary file, fsync,
 * rename, fsync of the directory) before a change is acknowledged. A file
 * that is corrupt or from a newer version is an error that names the file:
 * it is never silently discarded or overwritten.
 */
import { closeSync, fsyncSync, mkdirSync, openSync, readFileSync, renameSync, writeSync } from 'node:fs';
import { join } from 'node:path';

import { CoreError } from './errors.js';
import type { LinkSpec, RuleRecord } from './model.js';

export const STATE_VERSION = 1;

/** Kernel ids a rule held, kept so that a restart continues its counters. */
export interface RuleKernelIds {
  slot: number;
  statsId: number;
  /** backend identity (ip@iface) -> ids. */
  backends: Record<string, { id: number; statsId: number }>;
}

export interface StoredRule extends RuleRecord {
  kernel?: RuleKernelIds;
}

export interface StoredState {
  version: number;
  rules: StoredRule[];
  links: LinkSpec[];
}

export class StateStore {
  readonly path: string;

  constructor(readonly dir: string) {
    this.path = join(dir, 'state.json');
  }

  /** The stored state, or undefined when there is none yet. */
  load(): StoredState | undefined {
    let text: string;
    try {
      text = readFileSync(this.path, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new CoreError('internal', `read state ${this.path}: ${(e as Error).message}`);
    }
    let state: StoredState;
    try {
      state = JSON.parse(text) as StoredState;
    } catch (e) {
      throw new CoreError(
        'precondition',
        `state file ${this.path} is corrupt (${(e as Error).message}); it was left as it is: ` +
          'fix or move it aside to start empty',
      );
    }
    if (typeof state !== 'object' || state === null || !Number.isInteger(state.version)) {
      throw new CoreError('precondition', `state file ${this.path} has no version: not an xdpctl state file`);
    }
    if (state.version > STATE_VERSION) {
      throw new CoreError(
        'precondition',
        `state file ${this.path} is version ${state.version}, newer than this xdpctld (${STATE_VERSION}): ` +
          'run the newer xdpctld, or move the file aside',
      );
    }
    if (!Array.isArray(state.rules) || !Array.isArray(state.links)) {
      throw new CoreError('precondition', `state file ${this.path} is corrupt (rules or links missing)`);
    }
    return state;
  }

  /** Write atomically: readers see the old file or the new one, never a mix. */
  save(state: StoredState): void {
    mkdirSync(this.dir, { recursive: true });
    const tmp = `${this.path}.tmp-${process.pid}`;
    const fd = openSync(tmp, 'w', 0o600);
    try {
      writeSync(fd, JSON.stringify(state, null, 1));
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.path);
    const dfd = openSync(this.dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  }
}
