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
    const child = spawnGuarded('ip', ['monitor', 'label', 'link', 'neigh', 'route'], {
      stdio: ['ignore', 'pipe', 'ignore'],
    });
    this.child = child;
    child.stdout!.on('data', (chunk: Buffer) => {
      if (this.onRoute && chunk.includes('[ROUTE]')) this.onRoute();
      if (this.timer) return;
      this.timer = setTimeout(() => {
        this.timer = undefined;
        this.onChange();
      }, this.debounceMs);
    });
    child.on('error', (err) => this.log.warn({ err }, 'ip monitor failed: changes are seen by the periodic pass only'));
    child.on('exit', (code, signal) => {
      if (this.closed) return;
      this.log.warn({ code, signal }, 'ip monitor exited: restarting it in 1 s');
      setTimeout(() => this.start(), 1000).unref();
    });
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    this.child?.kill();
  }
}
