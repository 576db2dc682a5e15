// Loaded into section 5's daemon with --import (bench/control.ts): the event loop's delay measured with
// perf_hooks.monitorEventLoopDelay, as the daemon's own xdpctl.eventloop.delay.max gauge measures it, but
// read and reset by a signal instead of a /metrics scrape: a scrape with 10 000 rules holds the loop itself
// (its counter read and serialization), and its cost landed in the window the gauge reset starts.
// On SIGWINCH it writes "<seq> <longest delay, ms> <samples>" to $XDPCTL_BENCH_LOOP_PROBE and resets.
import { renameSync, writeFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';

const file = process.env.XDPCTL_BENCH_LOOP_PROBE;
if (file) {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  let seq = 0;
  process.on('SIGWINCH', () => {
    // Written whole, then renamed into place: a reader polling the file never sees it empty or half written.
    writeFileSync(`${file}.tmp`, `${++seq} ${h.count ? h.max / 1e6 : 0} ${h.count}\n`);
    renameSync(`${file}.tmp`, file);
    h.reset();
  });
}
