/**
 * Child process of the control-plane benchmark: opens N WatchCounters
 * streams on a daemon and only counts what arrives (messages and bytes, not
 * decoded), so that the daemon's CPU can be measured apart from its clients'.
 * Streams are spread over one connection per 100 streams.
 *
 *   node --import tsx bench/cp-watchers.ts <address> <streams> <interval-ms> [changes]
 *
 * With "changes" the streams ask for changes-only samples (changes_only).
 *
 * Prints {"ready":true} once every stream has received its first message;
 * each line "stats" on stdin answers {"messages":n,"bytes":b}. Exits on
 * SIGTERM or when stdin closes.
 */
import { Client, credentials, Metadata, type ClientReadableStream } from '@grpc/grpc-js';

import { WatchCountersRequest } from '../src/gen/xdpctl/v1/counters.js';

const [address, nArg, intervalArg, mode] = process.argv.slice(2);
const streams = Number(nArg);
const intervalMs = Number(intervalArg);
const target = address.replace(/^unix:(?!\/\/)/, 'unix://');
const request = WatchCountersRequest.encode({
  interval: { seconds: BigInt(Math.floor(intervalMs / 1000)), nanos: (intervalMs % 1000) * 1e6 },
  changesOnly: mode === 'changes',
}).finish();

const clients: Client[] = [];
for (let i = 0; i < Math.ceil(streams / 100); i++) {
  // A local subchannel pool gives each client its own HTTP/2 connection.
  clients.push(
    new Client(target, credentials.createInsecure(), {
      'grpc.use_local_subchannel_pool': 1,
      'grpc.max_receive_message_length': 256 << 20,
    }),
  );
}

let messages = 0;
let bytes = 0;
let started = 0;
const calls: ClientReadableStream<Buffer>[] = [];
for (let i = 0; i < streams; i++) {
  const call = clients[Math.floor(i / 100)].makeServerStreamRequest<Buffer, Buffer>(
    '/xdpctl.v1.CounterService/WatchCounters',
    (b) => b,
    (b) => b,
    Buffer.from(request),
    new Metadata(),
  );
  let first = true;
  call.on('data', (b: Buffer) => {
    messages++;
    bytes += b.length;
    if (first) {
      first = false;
      if (++started === streams) process.stdout.write(`${JSON.stringify({ ready: true })}\n`);
    }
  });
  call.on('error', (e: Error & { code?: number }) => {
    if (e.code !== 1) process.stderr.write(`watch ${i}: ${e.message}\n`); // 1 = CANCELLED by us
  });
  calls.push(call);
}

const stop = () => {
  for (const c of calls) c.cancel();
  for (const c of clients) c.close();
  process.exit(0);
};
process.once('SIGTERM', stop);
process.stdin.setEncoding('utf8');
process.stdin.on('data', (d: string) => {
  for (const line of d.split('\n')) {
    if (line.trim() === 'stats') process.stdout.write(`${JSON.stringify({ messages, bytes })}\n`);
  }
});
process.stdin.on('end', stop);
