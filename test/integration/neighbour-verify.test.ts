/**
 * A backend given without MAC (`IP,,iface`: the MAC comes from the neighbour table) whose host changes its
 * MAC without a gratuitous ARP (docs/architecture.md, promise 1: "re-resolve MACs"). Frames the datapath redirects never
 * pass the stack, so the kernel never revalidates the entry by itself: it stays REACHABLE with the old MAC,
 * then STALE, forever (a review saw 0 of 55 delivered for over 45 s). The reconciler makes the kernel
 * verify the entries it relies on (NUD_PROBE once no confirmation was seen for NEIGHBOUR_VERIFY_MS); the
 * old MAC does not answer, the entry fails, is resolved again, and the backend is rewritten with the new
 * MAC. Bound (docs/architecture.md, "Neighbours"): NEIGHBOUR_VERIFY_MS + ucast_solicit x retrans_time +
 * 3 s (11 s with the kernel's defaults). The daemon's own ARP check (dataplane/arp.ts: the MAC a backend
 * receives with asked once a second) usually finds it much sooner: the old MAC is silent, whoever has the
 * address is asked, and the new MAC is written (neighbour-rewritten.test.ts measures that path). Real traffic throughout; host defaults (nothing but the backend's MAC changes).
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { NEIGHBOUR_VERIFY_MS } from '../../src/server/dataplane/adapter.js';
import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { metric, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, sh, sleep, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';
import { UdpListener } from '../helpers/udp.js';

const { SERVING } = HealthCheckResponse_ServingStatus;

describe('a MAC-less backend whose MAC changes without a gratuitous ARP', kernelOnly(), () => {
  const lab = new Lab();
  const { health } = lab;
  let d: DaemonProcess;
  let c: Clients;
  let b1: Host, b2: Host;

  before(async () => {
    ({ b1, b2 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24', b2: '198.18.2.2/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info', '--prometheus', '127.0.0.1:0']));
  });
  after(() => lab.destroy());

  /** Send `n` datagrams over `flows` flows from vm; what each backend received. */
  const send = (port: number, n = 100, flows = 50, started?: UdpListener[]) =>
    lab.send(port, [b1, b2], n, flows, { started });
  const status = () => lab.status('nb');
  const neighbour = () => sh('ip', ['neigh', 'show', 'to', b2.ip!, 'dev', b2.hostIf]);
  /** The reconciler's re-applications of nb, with the change each names. */
  const reapplied = () =>
    d.output
      .split('\n')
      .filter((l) => l.includes('"msg":"the host changed: re-applying rules"'))
      .map((l) => (JSON.parse(l) as { changes: Record<string, string> }).changes.nb)
      .filter((x) => x !== undefined);

  it('is verified, re-resolved and rewritten within the documented bound; status and log say so', async (t) => {
    await c.rules.createRule({
      rule: lab.rule('nb', 7996, [backendOf(b1), backendOf(b2, '')]),
    });
    await until(
      'nb ACTIVE (b2 resolved by a probe)',
      async () => (await status()).state === RuleState.RULE_STATE_ACTIVE,
    );
    assert.equal((await status()).backendStatus[1].mac, b2.mac);
    let r = await send(7996);
    assert.equal(r.total, r.sent, `all delivered at first (${r.got})`);
    assert.ok(r.got[1] > 0, `b2 has flows (${r.got})`);
    await until('health SERVING', async () => (await health()) === SERVING);
    const before = reapplied().length;

    // b2's host takes another MAC and says nothing (no gratuitous ARP: arp_notify is off by default).
    const oldMac = b2.mac;
    const newMac = '02:16:4e:00:00:02';
    // The listeners first: the premise's datagrams leave at once after the change (~0.1 s), before the daemon's
    // own check (at most a second apart, 0.6 s to find a MAC silent) can have found it.
    const ls = await Promise.all([b1, b2].map((b) => UdpListener.start(b.netns, b.ip!, 7996)));
    sh('ip', ['-n', b2.netns, 'link', 'set', 'eth0', 'address', newMac]);
    const t0 = Date.now();
    assert.match(neighbour(), new RegExp(`lladdr ${oldMac}`), 'premise: the kernel still holds the old MAC');
    r = await send(7996, 100, 50, ls);
    assert.ok(r.got[1] === 0 && r.total < r.sent, `premise: b2's flows are lost meanwhile (${r.got} of ${r.sent})`);

    const sysctl = (k: string) => Number(readFileSync(`/proc/sys/net/ipv4/neigh/${b2.hostIf}/${k}`, 'utf8'));
    const boundMs = NEIGHBOUR_VERIFY_MS + sysctl('ucast_solicit') * sysctl('retrans_time_ms') + 3000;
    let resumedMs: number | undefined;
    while (Date.now() - t0 < boundMs + 5000) {
      r = await send(7996, 100, 50);
      if (r.total === r.sent && r.got[1] > 0) {
        resumedMs = Date.now() - t0;
        break;
      }
      await sleep(300);
    }
    assert.ok(resumedMs !== undefined, `delivery to b2 resumed (last ${r.got} of ${r.sent}; ${neighbour().trim()})`);
    t.diagnostic(`delivery to b2 resumed ${resumedMs} ms after its MAC changed (bound ${boundMs} ms)`);
    assert.ok(resumedMs <= boundMs, `resumed after ${resumedMs} ms, within the documented ${boundMs} ms`);

    const st = await status();
    assert.equal(st.state, RuleState.RULE_STATE_ACTIVE);
    assert.equal(st.backendStatus[1].mac, newMac, 'the status names the new MAC');
    assert.match(neighbour(), new RegExp(`lladdr ${newMac}`), 'the kernel holds the new MAC');
    await until('health SERVING', async () => (await health()) === SERVING);
    // The log: why the rule was written again and what was written, once. The daemon's own ARP check finds
    // the old MAC silent and asks who has the address: the host's reply (the new MAC) reaches the kernel too,
    // which takes it into the entry, and the backend is rewritten with it at once. Or, when the kernel's entry
    // failed first (its own probe of the old MAC), out of the table, then back with the new MAC.
    await sleep(1200);
    const why = reapplied().slice(before);
    const direct = `backend ${b2.ip} on ${b2.hostIf}: MAC ${oldMac} -> ${newMac}`;
    const failed = `backend ${b2.ip} on ${b2.hostIf} cannot receive: its neighbour entry (MAC ${oldMac}) failed; resolving it again`;
    assert.ok(
      (why.length === 1 && why[0] === direct) ||
        (why[0] === failed &&
          why.length <= 2 &&
          (why.length === 1 || why[1] === `backend ${b2.ip} on ${b2.hostIf} can receive again`)),
      why.join(' | '),
    );
    const changed = () =>
      d.output
        .split('\n')
        .filter((l) =>
          l.includes(`"msg":"backend ${b2.ip} on ${b2.hostIf} has a new MAC, ${oldMac} -> ${newMac} (neighbour table)`),
        ).length;
    assert.equal(changed(), 1, 'the new MAC logged once');
    // Stays true: a MAC that answers is verified again and kept (no more changes).
    const settled = reapplied().length;
    await sleep(NEIGHBOUR_VERIFY_MS + 1500);
    assert.equal(reapplied().length, settled, 'nothing re-applied while the MAC answers');
    assert.equal(changed(), 1);
    // The metric counts the same: one MAC change; probes made (at least the one that found it).
    const events = (e: string) => metric(d.prometheus!, 'xdpctl_reconciler_events_total', { xdpctl_event: e });
    assert.equal(await events('neighbour_mac_changes'), 1);
    assert.ok((await events('neighbour_probes'))! >= 2, `probes counted (${await events('neighbour_probes')})`);
    r = await send(7996);
    assert.equal(r.total, r.sent, `all delivered (${r.got})`);
    await c.rules.deleteRule({ name: 'nb', expectedGeneration: 0n });
  });
});
