// Loaded into a bench daemon with XDPCTL_BENCH_NODE_ARGS="--import <this file>" (bench/control.ts): every
// interval of a 5 ms timer in which the main thread used more than XDPCTL_TURN_PROBE_MS (default 50) ms of CPU
// (process.threadCpuUsage: about one turn of the event loop, without the time the daemon waited for a CPU),
// with its start and end (process.hrtime, µs), written as JSON to $XDPCTL_TURN_PROBE.longs.json when the daemon
// exits. With XDPCTL_TURN_PROBE_PROFILE_US (a sampling interval, µs), also an in-thread CPU profile of the
// daemon from XDPCTL_TURN_PROBE_DELAY ms after load (default 5000) to its exit, to $XDPCTL_TURN_PROBE (a
// .cpuprofile): bench/turn-report.mjs says what ran in each long interval. (An in-thread profile, not
// --cpu-prof: started after the start-up's program loads, which SIGPROF makes fail with EAGAIN.)
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector';

const out = process.env.XDPCTL_TURN_PROBE;
if (out) {
  const longs = [];
  const limit = Number(process.env.XDPCTL_TURN_PROBE_MS ?? 50);
  const cpu = () => {
    const u = process.threadCpuUsage();
    return (u.user + u.system) / 1000;
  };
  const now = () => Number(process.hrtime.bigint() / 1000n);
  let lastCpu = cpu();
  let lastT = now();
  setInterval(() => {
    const c = cpu();
    const t = now();
    if (c - lastCpu > limit) longs.push({ t0: lastT, t1: t, cpu: c - lastCpu });
    lastCpu = c;
    lastT = t;
  }, 5).unref();
  const every = Number(process.env.XDPCTL_TURN_PROBE_PROFILE_US ?? 0);
  const s = every > 0 ? new Session() : undefined;
  if (s) {
    s.connect();
    setTimeout(
      () =>
        s.post('Profiler.enable', () =>
          s.post('Profiler.setSamplingInterval', { interval: every }, () => s.post('Profiler.start', () => {})),
        ),
      Number(process.env.XDPCTL_TURN_PROBE_DELAY ?? 5000),
    ).unref();
  }
  process.on('exit', () => {
    writeFileSync(`${out}.longs.json`, JSON.stringify(longs));
    // An in-thread session answers synchronously: the profile is written before the process ends.
    s?.post('Profiler.stop', (err, r) => {
      if (!err && r) writeFileSync(out, JSON.stringify(r.profile));
    });
  });
}
