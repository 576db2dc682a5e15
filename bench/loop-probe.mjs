// Loaded into section 5's daemon with --import (bench/control.ts): the event loop's delay measured with
// perf_hooks.monitorEventLoopDelay, as the daemon's own xdpctl.eventloop.delay.max gauge measures it, but
// read and reset by a signal instead of a /metrics scrape: a scrape with 10 000 rules holds the loop itself
// (its counter read and serialization), and its cost landed in the window the gauge reset starts.
// Beside it, the longest turn in CPU time: the main thread's CPU (process.threadCpuUsage) between two ticks
// of a 5 ms interval, at most one turn's plus the interval's. On a loaded machine the delay also counts the
// time the daemon waited for a CPU; this does not.
// On SIGWINCH it writes "<seq> <longest delay, ms> <samples> <longest CPU between ticks, ms>" to
// $XDPCTL_BENCH_LOOP_PROBE and resets.
import { renameSync, writeFileSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';

const file = process.env.XDPCTL_BENCH_LOOP_PROBE;
if (file) {
  const h = monitorEventLoopDelay({ resolution: 10 });
  h.enable();
  let seq = 0;
  const cpuNow = () => {
    const u = process.threadCpuUsage();
    return (u.user + u.system) / 1000;
  };
  let last = cpuNow();
  let cpuMax = 0;
  setInterval(() => {
    const now = cpuNow();
    cpuMax = Math.max(cpuMax, now - last);
    last = now;
  }, 5).unref();
  process.on('SIGWINCH', () => {
    const now = cpuNow();
    cpuMax = Math.max(cpuMax, now - last);
    // Written whole, then renamed into place: a reader polling the file never sees it empty or half written.
    writeFileSync(`${file}.tmp`, `${++seq} ${h.count ? h.max / 1e6 : 0} ${h.count} ${cpuMax}\n`);
    renameSync(`${file}.tmp`, file);
    h.reset();
    cpuMax = 0;
    last = cpuNow();
  });
}
