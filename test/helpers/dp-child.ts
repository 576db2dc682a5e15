/**
 * A separate process that programs the datapath and exits, leaving it
 * running (pinned maps, netlink-attached program): the "daemon that went
 * away" of the restart tests. Usage: tsx dp-child.ts <json>
 *   { pinRoot, object?, attach: [[ifname, mode]], rule?: TestRule }
 * Prints {"progId": n} on success.
 */
import type { XdpMode } from '../../src/server/dataplane/xdp.js';
import { installRule, openDatapath, type TestRule } from './fixture.js';

const spec = JSON.parse(process.argv[2]) as {
  pinRoot: string;
  object?: string;
  attach: [string, XdpMode][];
  rule?: TestRule;
};
const dp = openDatapath(spec.pinRoot, spec.object);
for (const [ifname, mode] of spec.attach) dp.attach(ifname, mode);
if (spec.rule) installRule(dp, spec.rule);
process.stdout.write(JSON.stringify({ progId: dp.progId }) + '\n');
dp.close();
