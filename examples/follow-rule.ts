// Add a rule and follow its counters (README: "Client library").
import { createXdpctlClient } from '../src/client/index.js';

const xdpctl = createXdpctlClient({ address: process.env.XDPCTL_SERVER ?? '127.0.0.1:9091' });
const backends = [{ ip: '172.17.0.2', mac: '02:42:ac:11:00:02', interface: 'veth25' }];
const match = { port: 7999, sourcePrefixes: ['192.168.122.10/32'] };
await xdpctl.rules.createRule({ rule: { name: 'web', match, ingressInterfaces: ['eth0'], backends } });
for await (const { counters } of xdpctl.counters.watchCounters({ filter: { rules: ['web'] } })) {
  for (const r of counters?.rules ?? []) console.log(r.rule, r.redirectedPackets, r.redirectedRates?.pps ?? 0);
}
