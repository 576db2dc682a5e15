/**
 * Config-file mode (the xdp-xconnect workflow): the daemon applies a YAML
 * file and re-applies it warmly whenever it changes. The directory is
 * watched, not the file, so editors that save by rename are seen. Changes
 * are debounced, and a file that does not parse is read again once shortly
 * after (a half-written file is not an error yet); if it is still invalid,
 * or names an unknown interface, the problem is logged and the last good
 * configuration keeps running. So does an empty file (only blanks or
 * comments: what an editor may leave for a moment); `links: {}` clears. Each
 * applied configuration is logged whole, with what changed.
 */
import { watch, type FSWatcher } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { basename, dirname, resolve } from 'node:path';

import { ConfigError, isEmptyConfig, parseConfig } from '../shared/config-file.js';
import type { Controller } from './core/controller.js';
import type { Logger } from './log.js';

const DEBOUNCE_MS = 150;
const RETRY_MS = 400;

export interface ConfigStatus {
  path: string;
  /** Text of the last file applied. */
  applied?: string;
  appliedAt?: number;
  lastError?: string;
}

export class ConfigWatcher {
  readonly status: ConfigStatus;
  private watcher?: FSWatcher;
  private timer?: NodeJS.Timeout;
  private running: Promise<void> = Promise.resolve();

  constructor(
    path: string,
    private readonly ctl: Controller,
    private readonly log: Logger,
  ) {
    this.status = { path: resolve(path) };
  }

  /** Apply the file once, then follow it. */
  async start(): Promise<void> {
    this.ctl.setOwner(this.status.path);
    await this.load(false);
    const name = basename(this.status.path);
    this.watcher = watch(dirname(this.status.path), (_event, file) => {
      if (file === null || file === name) this.schedule(DEBOUNCE_MS, false);
    });
  }

  private schedule(ms: number, retried: boolean): void {
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.running = this.running.then(() => this.load(retried));
    }, ms);
  }

  private async load(retried: boolean): Promise<void> {
    let text: string;
    try {
      text = await readFile(this.status.path, 'utf8');
    } catch (e) {
      // Between an editor's unlink and rename the file may be missing.
      if (!retried) return this.schedule(RETRY_MS, true);
      return this.fail(`read ${this.status.path}: ${(e as Error).message}`);
    }
    if (text === this.status.applied) return;
    if (isEmptyConfig(text)) {
      if (!retried) return this.schedule(RETRY_MS, true);
      // A warning, not an error: what an editor leaves for a moment; nothing is wrong with what runs.
      return this.fail(
        `config ${this.status.path} is empty (write "links: {}" to remove every link, "rules: []" every rule)`,
        'warn',
      );
    }
    let cfg;
    try {
      cfg = parseConfig(text);
    } catch (e) {
      if (e instanceof ConfigError && e.syntax && !retried) return this.schedule(RETRY_MS, true);
      return this.fail(`invalid config ${this.status.path}: ${(e as Error).message}`);
    }
    try {
      const changes = await this.ctl.applyConfig(cfg);
      this.status.applied = text;
      this.status.appliedAt = Date.now();
      this.status.lastError = undefined;
      this.log.info(
        {
          config: this.status.path,
          // The whole configuration now in force, then what this file changed.
          configuration: {
            links: cfg.links.map((l) => `${l.a} ${l.direction === 'both' ? '<->' : '->'} ${l.b}`),
            rules: cfg.rules,
          },
          changes: {
            rules: changes.rules.filter((c) => c.action !== 'unchanged'),
            links: changes.links.filter((c) => c.action !== 'unchanged'),
          },
        },
        'config applied',
      );
    } catch (e) {
      this.fail(`config ${this.status.path} not applied: ${(e as Error).message}`);
    }
  }

  private fail(message: string, level: 'warn' | 'error' = 'error'): void {
    this.status.lastError = message;
    this.log[level]({ config: this.status.path }, `${message}; the last good configuration keeps running`);
  }

  close(): void {
    clearTimeout(this.timer);
    this.watcher?.close();
  }
}
