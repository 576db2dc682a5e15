/** `xdpctl watch`: stream the datapath counters (live table, NDJSON or YAML documents). */
import { Argument, Option, type Command } from 'commander';
import type { Metadata } from 'nice-grpc';

import { CounterKind, WatchCountersResponse } from '../../../gen/xdpctl/v1/counters.js';
import { watchCounterSamples } from '../../index.js';
import { isAbort } from '../errors.js';
import { collectList, examples, parseDuration, parsePositive } from '../flags.js';
import { countersText, dataText, visible } from '../output.js';
import { run } from '../session.js';

export function registerWatch(program: Command): void {
  program
    .command('watch')
    .description(
      'stream the datapath counters: a live table on a terminal; one JSON object per line (NDJSON) when stdout ' +
        'is not a terminal or with -o json. A count marked (reset) (JSON: "reset": true) restarted since the ' +
        'last sample that had it: its object was re-created, or another tool lowered its counters (startTime says ' +
        'when); its rates count from the new start, never across it. startKind says what startTime is: ' +
        'COUNTER_START_KIND_FOUND, counters this xdpctld found counting (kept across its restart), are counted ' +
        'since at most startTime, packets from before it included (the table says so under it)',
    )
    .addArgument(new Argument('[kind]', 'which counters (default: all)').choices(['rules', 'links', 'backends']))
    .addOption(
      new Option('--interval <duration>', 'time between samples (100ms to 60s)')
        .argParser(parseDuration)
        .default(1000, '1s'),
    )
    .addOption(new Option('--rule <name>', 'only these rules; repeatable').argParser(collectList))
    .addOption(
      new Option('--interface <iface>', 'only links from or to these interfaces; repeatable').argParser(collectList),
    )
    .option('--count <n>', 'stop after N samples', parsePositive)
    .addHelpText(
      'after',
      examples(`
        xdpctl watch
        xdpctl watch rules --interval 500ms
        xdpctl watch backends --rule web
        xdpctl watch rules --count 5 -o json | jq .counters.rules`),
    )
    .action(
      run(async (s, o, [kind], f) => {
        const kinds =
          {
            rules: [CounterKind.COUNTER_KIND_RULES],
            backends: [CounterKind.COUNTER_KIND_BACKENDS],
            links: [CounterKind.COUNTER_KIND_LINKS],
          }[kind as 'rules'] ?? [];
        const interval = f.interval as number;
        const count = f.count as number | undefined;
        const live = o.output === 'table' && process.stdout.isTTY === true;
        const ac = new AbortController();
        const stop = () => ac.abort();
        process.once('SIGINT', stop);
        process.once('SIGTERM', stop);
        let n = 0;
        try {
          const stream = watchCounterSamples(
            s.client.counters,
            {
              filter: { kinds, rules: (f.rule as string[]) ?? [], interfaces: (f.interface as string[]) ?? [] },
              interval: { seconds: BigInt(Math.floor(interval / 1000)), nanos: (interval % 1000) * 1_000_000 },
              // Only the counters that changed come over the wire; watchCounterSamples rebuilds each complete
              // sample from them (a daemon that does not know changes_only sends complete samples, also fine).
              changesOnly: true,
            },
            { signal: ac.signal, onTrailer: (md: Metadata) => (s.trailer = md) },
          );
          // Each sample is printed whole: its parts (continued) joined, its changes applied to the last one.
          for await (const sample of stream) {
            const msg: WatchCountersResponse = { counters: sample, continued: false, changesOnly: false };
            if (live) {
              const when = msg.counters?.time?.toLocaleTimeString() ?? '';
              const head = `xdpctl watch ${kind ?? 'all'}: ${o.server}, every ${interval}ms, ${when} (Ctrl-C to stop)`;
              process.stdout.write(`\x1b[H\x1b[2J${visible(countersText(msg.counters!, head), true)}\n`);
            } else if (o.output === 'yaml') {
              process.stdout.write(`---\n${dataText('yaml', WatchCountersResponse.toJSON(msg))}\n`);
            } else {
              process.stdout.write(`${dataText('json', WatchCountersResponse.toJSON(msg), 0)}\n`);
            }
            if (count !== undefined && ++n >= count) break;
          }
        } catch (e) {
          if (!(isAbort(e) && ac.signal.aborted)) throw e;
        } finally {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
        }
      }),
    );
}
