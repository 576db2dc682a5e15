/**
 * rtnetlink notifications as a trigger for the reconciler: `ip monitor label
 * link neigh route` (iproute2) prints a line for every link change (up/down,
 * carrier, rename, new/deleted device), every neighbour change and every route
 * change (an address added or removed changes its connected and local routes);
 * each burst calls `onChange` once (debounced). The lines are not parsed beyond
 * their label: the reconciler is level-triggered and reads the facts itself, so
 * a lost or merged event only delays it to the next periodic pass. A burst with
 * a route line ("[ROUTE]") calls `onRoute` first (the backends' next hops are
 * looked up again: dataplane/adapter.ts hopOf). close() ends the monitor (idempotent).
 * The child cannot outlive the daemon (children.ts: the kernel kills it when the daemon ends, SIGKILL
 * included).
 */
import type { ChildProcess } from 'node:child_process';

import type { Logger } from '../log.js';
import { spawnGuarded } from './children.js';

export class LinkMonitor {
  private child?: ChildProcess;
  private timer?: NodeJS.Timeout;
  private closed = false;

  constructor(
    private readonly onChange: () => void,
    private readonly log: Logger,
    private readonly debounceMs = 50,
    private readonly onRoute?: () => void,
  ) {
    this.start();
  }

  private start(): void {
    if (this.closed) return;
    let child: ChildProcess;
    try {
      child = spawnGuarded('ip', ['monitor', 'label', 'link', 'neigh', 'route'], {
        stdio: ['ignore', 'pipe', 'ignore'],
      });
    } catch (err) {
      if (!this.failing) this.log.warn({ err }, 'ip monitor failed: changes are seen by the periodic pass only');
      this.failing = true;
      setTimeout(() => this.start(), 1000).unref();
      return;
    }
    this.child = child;
    // (No stdout when the fork was refused for want of descriptors: EMFILE.)
    child.stdout?.on('data', (chunk: Buffer) => {
      if (this.onRoute && chunk.includes('[ROUTE]')) this.onRoute();
      if (this.timer) return;
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.onChange();
      }, this.debounceMs);
    });
    let again = false;
    const restart = () => {
      if (this.closed || again || this.child !== child) return;
      again = true;
      setTimeout(() => this.start(), 1000).unref();
    };
    // Not started (a pids or open-files limit refused the fork: EAGAIN, EMFILE): tried again every second, as
    // an exited one is; said once until it runs again (before: never started again, the periodic pass only).
    child.on('error', (err) => {
      if (!this.failing) {
        this.log.warn(
          { err },
          'ip monitor failed: changes are seen by the periodic pass only until it runs again (tried each second)',
        );
      }
      this.failing = true;
      restart();
    });
    child.on('spawn', () => {
      if (this.failing) this.log.info({}, 'ip monitor runs again: changes are seen as they happen');
      this.failing = false;
    });
    child.on('exit', (code, signal) => {
      if (this.closed) return;
      if (code !== null || signal !== null) this.log.warn({ code, signal }, 'ip monitor exited: restarting it in 1 s');
      restart();
    });
  }

  /** Whether the last start of `ip monitor` failed (not said again until it runs). */
  private failing = false;

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.child?.kill();
  }
}
