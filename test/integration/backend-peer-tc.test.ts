/**
 * A tc program or filter on a backend egress's veth peer (thirty-sixth review): a filter on the ingress of the
 * backend's side of the veth (eth0 in the backend's namespace: `tc qdisc add dev eth0 clsact; tc filter add dev
 * eth0 ingress bpf da obj drop.o`, TC_ACT_SHOT) dropped every datagram redirected to the backend, while the rule
 * stayed ACTIVE, BackendsReceiving AllReceiving, with no word of it. tc runs on the peer's receive path after XDP
 * (sch_handle_ingress) in both of the daemon's modes. Now the peer's clsact/ingress filters (RTM_GETTFILTER,
 * read inside its namespace) and tcx programs (BPF_PROG_QUERY BPF_TCX_INGRESS) are said as the peer's XDP
 * program is: "veth peer eth0 in netns N has a tc ingress filter (bpf program id P (tc_drop, direct-action)):
 * delivery past it cannot be verified", the rule DEGRADED, BackendsReceiving Unknown (PeerTcFilter), the backend
 * kept in its table; ACTIVE again once it is removed (20 of 20 arrive). A bpf filter in both XDP modes of the
 * daemon, a matchall filter with a drop action, and a tcx program. Real veths, namespaces, daemon, datagrams.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { after, before, describe, it } from 'node:test';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { kernelOnly, ROOT, sh, shQuiet, until } from '../helpers/env.js';
import { backendOf, Lab } from '../helpers/lab.js';
import { saidWhileOnPeer } from '../helpers/peer-note.js';
import { type Host } from '../helpers/topology.js';

const PORT = 7652;
const DROP = `${ROOT}build/bpf/test-tc-drop.bpf.o`;

/** Attach tc_drop as a tcx ingress program on `dev` in `netns` (a BPF link held by a python child, ctypes). */
async function attachTcx(netns: string, dev: string): Promise<ChildProcess> {
  const py = `
import ctypes, sys
b = ctypes.CDLL('libbpf.so.1', use_errno=True)
b.bpf_object__open_file.restype = ctypes.c_void_p
b.bpf_object__open_file.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
b.bpf_object__load.argtypes = [ctypes.c_void_p]
b.bpf_object__find_program_by_name.restype = ctypes.c_void_p
b.bpf_object__find_program_by_name.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
b.bpf_program__fd.argtypes = [ctypes.c_void_p]
o = b.bpf_object__open_file(sys.argv[1].encode(), None)
assert o and b.bpf_object__load(o) == 0, 'load'
fd = b.bpf_program__fd(b.bpf_object__find_program_by_name(o, b'tc_drop'))
ifindex = ctypes.CDLL('libc.so.6').if_nametoindex(sys.argv[2].encode())
link = b.bpf_link_create(fd, ifindex, 46, None)  # BPF_TCX_INGRESS
assert link >= 0, 'bpf_link_create: %d' % link
print('attached', flush=True)
sys.stdin.read()
`;
  const p = spawn('nsenter', [`--net=/run/netns/${netns}`, 'python3', '-c', py, DROP, dev], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  let out = '';
  p.stdout!.on('data', (d: Buffer) => (out += d.toString()));
  await until('the tcx program attached', async () => out.includes('attached') || p.exitCode !== null, 10_000);
  assert.ok(out.includes('attached'), `the tcx attach failed (exit ${p.exitCode})`);
  return p;
}

/** Release the tcx link (the child closes it when its stdin ends). */
async function detachTcx(p: ChildProcess): Promise<void> {
  if (p.exitCode !== null) return;
  const gone = once(p, 'exit');
  p.stdin!.end();
  await gone;
}

/** tc's JSON of the ingress filters of eth0 in `netns`: the bpf program's id. */
function tcProgId(netns: string): number {
  const fs = JSON.parse(sh('tc', ['-n', netns, '-j', 'filter', 'show', 'dev', 'eth0', 'ingress'])) as {
    options?: { prog?: { id?: number } };
  }[];
  const id = fs.find((f) => f.options?.prog?.id)?.options?.prog?.id;
  assert.ok(id, JSON.stringify(fs));
  return id;
}

for (const mode of ['native', 'generic'] as const) {
  describe(`a tc program on a backend's veth peer is said (daemon ${mode})`, kernelOnly(), () => {
    const lab = new Lab();
    let b1: Host;

    before(async () => {
      ({ b1 } = lab.addHosts({ vm: '198.18.1.1/24', b1: '198.18.2.1/24' }));
      await lab.start(['--xdp-mode', mode, '--log-level', 'info']);
      await lab.c.rules.createRule({ rule: lab.rule('web', PORT, [backendOf(b1)]) });
      await until('web ACTIVE', async () => (await lab.status('web')).state === RuleState.RULE_STATE_ACTIVE, 10_000);
    });
    after(() => lab.destroy());

    /** With `add` done on b1's side of the veth: said, DEGRADED, then ACTIVE once `remove` is done (peer-note.ts). */
    const saidWhileThere = (
      words: () => string,
      drops: boolean,
      add: () => Promise<void> | void,
      remove: () => Promise<void> | void,
    ) => saidWhileOnPeer(lab, b1, { rule: 'web', port: PORT, reason: 'PeerTcFilter', words, drops, add, remove });

    it('a bpf filter (direct-action, TC_ACT_SHOT) on the peer’s clsact ingress', async () => {
      let id = 0;
      await saidWhileThere(
        () => `has a tc ingress filter (bpf program id ${id} (tc_drop, direct-action))`,
        true,
        () => {
          sh('tc', ['-n', b1.netns, 'qdisc', 'add', 'dev', 'eth0', 'clsact']);
          sh('tc', ['-n', b1.netns, 'filter', 'add', 'dev', 'eth0', 'ingress', 'bpf', 'da', 'obj', DROP, 'sec', 'tc']);
          id = tcProgId(b1.netns);
        },
        () => shQuiet('tc', ['-n', b1.netns, 'qdisc', 'del', 'dev', 'eth0', 'clsact']),
      );
    });

    if (mode === 'generic') {
      // Not a bpf filter: this kernel has u32 but not the gact action (no modules), so it passes what it matches.
      it('a u32 filter on the peer’s ingress qdisc', async () => {
        await saidWhileThere(
          () => 'has a tc ingress filter (u32, pref 49152, protocol ip)',
          false,
          () => {
            sh('tc', ['-n', b1.netns, 'qdisc', 'add', 'dev', 'eth0', 'ingress']);
            sh(
              'tc',
              ['-n', b1.netns, 'filter', 'add', 'dev', 'eth0', 'ingress', 'protocol', 'ip', 'u32'].concat([
                'match',
                'u32',
                '0',
                '0',
                'flowid',
                '1:1',
              ]),
            );
          },
          () => shQuiet('tc', ['-n', b1.netns, 'qdisc', 'del', 'dev', 'eth0', 'ingress']),
        );
      });
    } else {
      it('a tcx ingress program on the peer', async () => {
        let p: ChildProcess | undefined;
        let id = 0;
        const ids = () =>
          new Set(
            [JSON.parse(sh('bpftool', ['-j', 'prog', 'show']))]
              .flat()
              .filter((x: { name?: string }) => x.name === 'tc_drop')
              .map((x: { id: number }) => x.id),
          );
        await saidWhileThere(
          () => `has a tcx ingress program id ${id} (tc_drop)`,
          true,
          async () => {
            const before = ids();
            p = await attachTcx(b1.netns, 'eth0');
            const fresh = [...ids()].filter((x) => !before.has(x));
            assert.equal(fresh.length, 1, `the tcx program's id: ${JSON.stringify(fresh)}`);
            id = fresh[0];
          },
          async () => {
            if (p) await detachTcx(p);
          },
        );
      });
    }
  });
}
