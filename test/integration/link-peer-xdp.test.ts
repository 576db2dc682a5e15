/**
 * What runs on a link egress's veth peer (twentieth review, HIGH-1): another tool's XDP program on the far side of
 * the veth a link redirects into sees every frame first and may drop them all, while the link said both
 * directions forwarding, no warning, Active True, and xdpctl.datapath SERVING: ping 10/10 lost while the link's
 * packets counter rose by 10 (the kernel took them into the veth). A backend's egress was judged so already
 * (backend-peer-xdp.test.ts); a link's was never read. Now the direction says it, as a backend does: a warning
 * "a -> b: veth peer eth0 in netns N runs XDP program id P (base_sink, generic mode): delivery past it cannot be
 * verified", Active Unknown (PeerXdpProgram), the same line among GetStatus's datapath warnings (NOT_SERVING), one
 * log line when it appears and one when it goes; the other direction says nothing of it; a Connect's reply says it
 * too. The same for a tc bpf
 * filter on the peer's ingress (PeerTcFilter). Once removed: no warning, Active True, SERVING, pings answered.
 * Both XDP modes of the daemon (the peer's program in the other mode); real veths, namespaces and packets, the
 * frames the program dropped counted by the program itself (its sink_rx map).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { ConditionStatus } from '../../src/gen/xdpctl/v1/common.js';
import { LinkDirection, type LinkStatus } from '../../src/gen/xdpctl/v1/link.js';
import { kernelOnly, ROOT, sh, shQuiet, until } from '../helpers/env.js';
import { esc, Lab } from '../helpers/lab.js';
import type { Host } from '../helpers/topology.js';

const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;
const SINK = `${ROOT}build/bpf/baseline.bpf.o`;
const TC_DROP = `${ROOT}build/bpf/test-tc-drop.bpf.o`;

/** The sum over CPUs of a per-CPU __u64 that `bpftool -j map lookup` printed (BTF-formatted, or raw bytes). */
function perCpuSum(json: string): number {
  const v = JSON.parse(json) as {
    values?: { value: string[] }[];
    formatted?: { values: { value: number }[] };
  };
  if (v.formatted) return v.formatted.values.reduce((n, x) => n + Number(x.value), 0);
  return (v.values ?? []).reduce(
    (n, x) => n + Number(Buffer.from(x.value.map((b) => parseInt(b, 16))).readBigUInt64LE()),
    0,
  );
}

const active = (s: LinkStatus) => s.conditions.find((c) => c.type === 'Active')!;

for (const [mode, peerMode, peerWords] of [
  ['native', 'xdpgeneric', 'generic'],
  ['generic', 'xdpdrv', 'native'],
] as const) {
  describe(
    `what runs on a link egress's veth peer is said (daemon ${mode}, peer XDP ${peerWords})`,
    kernelOnly(),
    () => {
      const lab = new Lab();
      let h1: Host, h2: Host;

      before(async () => {
        ({ h1, h2 } = lab.addHosts({ h1: '198.18.44.1/24', h2: '198.18.44.2/24' }));
        await lab.start(['--xdp-mode', mode, '--log-level', 'info']);
        await lab.c.links.connect({
          link: { a: h1.hostIf, b: h2.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH, status: undefined },
        });
        await until('h1 reaches h2 through the link', () => lab.topo.ping('h1', h2.ip!, 1), 15_000);
        await until('SERVING', async () => (await lab.health()) === SERVING, 15_000);
        // Each ping is one echo request through the link, never an ARP request in its place (the entry cannot age
        // out while h2 answers nothing).
        sh('ip', ['-n', h1.netns, 'neigh', 'replace', h2.ip!, 'lladdr', h2.mac, 'dev', 'eth0', 'nud', 'permanent']);
      });
      after(() => lab.destroy());

      /** The packets the link counted from h1 to h2. */
      const packets = async () => {
        const { counters } = await lab.c.counters.getCounters({});
        return counters!.links.find((l) => l.fromInterface === h1.hostIf)?.packets ?? 0n;
      };

      /**
       * With `add` done on h2's eth0 (the peer of the egress of h1 -> h2): said as `words` and `reason` on the link,
       * GetStatus and the log, pings from h1 lost while the link counts them; all gone, and pings answered, once
       * `remove` is done (also when the test fails). `dropped` reads what the program there counted it dropped.
       */
      const saidWhileThere = async (
        words: () => string,
        reason: string,
        add: () => void,
        remove: () => void,
        dropped?: () => number,
      ) => {
        const dir = `${h1.hostIf} -> ${h2.hostIf}`;
        let removed = false;
        try {
          add();
          const note = `${dir}: veth peer eth0 in netns ${h2.netns} ${words()}: delivery past it cannot be verified`;
          await until(
            'the link names what runs on the peer',
            async () => (await lab.linkStatus(h1.hostIf)).warnings.includes(note),
            15_000,
          );
          const s = await lab.linkStatus(h1.hostIf);
          // Only the direction into h2 passes through it: h2 -> h1's egress is h1, whose peer runs nothing.
          assert.deepEqual(
            s.warnings.filter((w) => /veth peer/.test(w)),
            [note],
            JSON.stringify(s.warnings),
          );
          const a = active(s);
          assert.deepEqual([a.status, a.reason, a.message], [ConditionStatus.CONDITION_STATUS_UNKNOWN, reason, note]);
          // In the datapath, taken into the veth by the kernel: the direction forwards as far as it can be seen.
          assert.deepEqual([s.aToBActive, s.bToAActive], [true, true]);
          const st = await lab.c.daemon.getStatus({});
          assert.ok(st.datapath!.warnings.includes(`link ${note}`), JSON.stringify(st.datapath!.warnings));
          assert.equal(await lab.health(), NOT_SERVING);
          await until('said once in the log', () => lab.count(new RegExp(`"msg":"link ${esc(note)}"`)) === 1, 15_000);

          // What it is about: the frames the link redirects are dropped there, counted by the link as forwarded.
          const p0 = await packets();
          const d0 = dropped?.() ?? 0;
          assert.equal(lab.topo.ping('h1', h2.ip!, 5), false, 'no ping answered past the program');
          const p1 = await packets();
          assert.ok(p1 - p0 >= 5n, `the link counted them: ${p0} -> ${p1}`);
          if (dropped) assert.ok(dropped() - d0 >= 5, `the program dropped them: ${d0} -> ${dropped()}`);
          // A Connect's reply says it too, judged by the write as a read right after it (before any pass).
          await lab.c.links.disconnect({ a: h1.hostIf, b: h2.hostIf });
          const reply = (
            await lab.c.links.connect({
              link: { a: h1.hostIf, b: h2.hostIf, direction: LinkDirection.LINK_DIRECTION_BOTH, status: undefined },
            })
          ).link!.status!;
          assert.ok(reply.warnings.includes(note), JSON.stringify(reply));
          // A new link: said again by the pass that sees it (the removed one was not said to lose it).
          await until(
            'said again for the new link',
            () => lab.count(new RegExp(`"msg":"link ${esc(note)}"`)) === 2,
            15_000,
          );
          assert.deepEqual(
            [active(reply).status, active(reply).reason],
            [ConditionStatus.CONDITION_STATUS_UNKNOWN, reason],
          );

          remove();
          removed = true;
          await until(
            async () => `the warning goes: ${JSON.stringify(await lab.linkStatus(h1.hostIf))}`,
            async () => !(await lab.linkStatus(h1.hostIf)).warnings.some((w) => w.includes(' veth peer ')),
            15_000,
          );
          const s2 = await lab.linkStatus(h1.hostIf);
          const a2 = active(s2);
          assert.deepEqual([a2.status, a2.reason], [ConditionStatus.CONDITION_STATUS_TRUE, 'Forwarding']);
          await until('SERVING again', async () => (await lab.health()) === SERVING, 15_000);
          const gone = new RegExp(
            `"msg":"link ${esc(dir)}: nothing that may drop what the link redirects is seen on ${esc(h2.hostIf)}'s ` +
              `veth peer any more \\(it was: ${esc(note.slice(dir.length + 2))}\\)"`,
          );
          await until('its end said once', () => lab.count(gone) === 1, 15_000);
        } finally {
          if (!removed) remove();
        }
        await until('h1 reaches h2 again', () => lab.topo.ping('h1', h2.ip!, 1), 15_000);
      };

      it('an XDP program on the peer', async () => {
        let id = 0;
        let map = 0;
        await saidWhileThere(
          () => `runs XDP program id ${id} (base_sink, ${peerWords} mode)`,
          'PeerXdpProgram',
          () => {
            const prog = ['obj', SINK, 'sec', 'xdp', 'program', 'base_sink'];
            sh('ip', ['-n', h2.netns, 'link', 'set', 'dev', 'eth0', peerMode, ...prog]);
            id = JSON.parse(sh('ip', ['-n', h2.netns, '-j', 'link', 'show', 'dev', 'eth0']))[0].xdp.prog.id as number;
            map = (JSON.parse(sh('bpftool', ['-j', 'prog', 'show', 'id', String(id)])) as { map_ids: number[] })
              .map_ids[0];
          },
          () => shQuiet('ip', ['-n', h2.netns, 'link', 'set', 'dev', 'eth0', peerMode, 'off']),
          () => {
            // sink_rx[1]: what it dropped that is not UDP (the pings and ARP requests).
            return perCpuSum(sh('bpftool', ['-j', 'map', 'lookup', 'id', String(map), 'key', '1', '0', '0', '0']));
          },
        );
      });

      if (mode === 'native') {
        it('a tc bpf filter (direct-action, TC_ACT_SHOT) on the peer’s clsact ingress', async () => {
          let id = 0;
          await saidWhileThere(
            () => `has a tc ingress filter (bpf program id ${id} (tc_drop, direct-action))`,
            'PeerTcFilter',
            () => {
              sh('tc', ['-n', h2.netns, 'qdisc', 'add', 'dev', 'eth0', 'clsact']);
              sh('tc', [
                '-n',
                h2.netns,
                'filter',
                'add',
                'dev',
                'eth0',
                'ingress',
                'bpf',
                'da',
                'obj',
                TC_DROP,
                'sec',
                'tc',
              ]);
              const fs = JSON.parse(sh('tc', ['-n', h2.netns, '-j', 'filter', 'show', 'dev', 'eth0', 'ingress'])) as {
                options?: { prog?: { id?: number } };
              }[];
              id = fs.find((f) => f.options?.prog?.id)?.options?.prog?.id ?? 0;
              assert.ok(id, JSON.stringify(fs));
            },
            () => shQuiet('tc', ['-n', h2.netns, 'qdisc', 'del', 'dev', 'eth0', 'clsact']),
          );
        });
      }
    },
  );
}
