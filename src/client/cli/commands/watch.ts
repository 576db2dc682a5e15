/** `xdpctl watch`: stream the datapath counters (live table, NDJSON or YAML documents). */
import { Argument, Option, type Command } from 'commander';
import { ClientError, Status, type Metadata } from 'nice-grpc';

import { CounterKind, WatchCountersResponse } from '../../../gen/xdpctl/v1/counters.js';
import { watchCounterSamples } from '../../index.js';
import { CliError, EXIT, isAbort } from '../errors.js';
import { collectList, examples, parseDuration, parsePositive } from '../flags.js';
import { countersText, dataText, visible } from '../output.js';
import { run, type Session } from '../session.js';

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
    .addOption(
      new Option(
        '--rule <name>',
        'only these rules; repeatable. A rule that does not exist is said on stderr and watched for; one that ' +
          'never appears in a sample ends the watch with exit 4 (not found)',
      ).argParser(collectList),
    )
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
        const ruleNames = (f.rule as string[] | undefined) ?? [];
        // The rules named that do not exist as the watch starts (the stream itself cannot say: a rule may be
        // created later, and WatchCounters filters by name), each said once; one never seen ends with exit 4.
        const missing = kind === 'links' ? [] : await absentRules(s, ruleNames);
        for (const name of missing) {
          process.stderr.write(`xdpctl: rule "${visible(name)}" does not exist (yet): watching for it\n`);
        }
        const unseen = new Set(missing);
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
            for (const r of sample.rules) unseen.delete(r.rule);
            for (const b of sample.backends) unseen.delete(b.rule);
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
            n++;
            if (count !== undefined && n >= count) break;
          }
        } catch (e) {
          if (!(isAbort(e) && ac.signal.aborted)) throw e;
        } finally {
          process.off('SIGINT', stop);
          process.off('SIGTERM', stop);
        }
        if (unseen.size) {
          const names = [...unseen].map((x) => `"${visible(x)}"`).join(', ');
          throw new CliError(
            `no rule named ${names} appeared in ${n === 1 ? 'the 1 sample' : `any of the ${n} samples`} watched`,
            EXIT.NOT_FOUND,
          );
        }
      }),
    );
}

/**
 * Which of `names` name no rule now: GetCounters answers NOT_FOUND naming each ("filter.rules[1]: rule \"x\" does
 * not exist", counters.proto CounterFilter); a name no rule can have fails here with INVALID_ARGUMENT naming it
 * (exit 3), before anything is watched.
 */
async function absentRules(s: Session, names: string[]): Promise<string[]> {
  if (names.length === 0) return [];
  try {
    await s.client.counters.getCounters(
      { filter: { kinds: [CounterKind.COUNTER_KIND_RULES], rules: names, interfaces: [] } },
      { onTrailer: (md: Metadata) => (s.trailer = md) },
    );
    return [];
  } catch (e) {
    if (!(e instanceof ClientError && e.code === Status.NOT_FOUND)) throw e;
    const at = [...e.details.matchAll(/filter\.rules\[(\d+)\]/g)].map((m) => names[Number(m[1])]);
    return [...new Set(at.filter((x) => x !== undefined))];
  }
}
