/**
 * Every NOT_SERVING of the xdpctl.datapath health service comes with its reason, and every reader says the same
 * judgement (Controller.problemReport): for each cause below, with real veths and a real attach, the health service
 * is NOT_SERVING exactly while GetStatus `datapath.warnings` names the cause, the `xdpctl_datapath_problems` gauge is
 * above 0 and `xdpctl status` prints the reason; once the cause is undone, SERVING, no warning, 0, no reason.
 * Causes: a backend's egress MTU below the ingress's (rule DEGRADED), the egress down, the only ingress of a rule
 * deleted (rule INACTIVE, interface missing), a foreign XDP program on the ingress. Before, GetStatus had no
 * warning and the CLI printed `datapath health: NOT_SERVING` and nothing else (newcomer review, LOW).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { HealthCheckResponse_ServingStatus } from 'nice-grpc-server-health/lib/proto/grpc/health/v1/health.js';

import { RuleState } from '../../src/gen/xdpctl/v1/rule.js';
import { metric, xdpctl, type Clients, type DaemonProcess } from '../helpers/daemon.js';
import { kernelOnly, ROOT, sh, until } from '../helpers/env.js';
import { backendOf, esc, Lab } from '../helpers/lab.js';
import { type Host } from '../helpers/topology.js';

const { SERVING, NOT_SERVING } = HealthCheckResponse_ServingStatus;

describe('xdpctl.datapath NOT_SERVING always says why: health, GetStatus, metric and CLI agree', kernelOnly(), () => {
  const lab = new Lab();
  const { status, health } = lab;
  let d: DaemonProcess;
  let c: Clients;
  let be: Host;
  let vm2: Host;

  before(async () => {
    ({ be, vm2 } = lab.addHosts({ vm: '198.18.1.1/24', vm2: '198.18.3.1/24', be: '198.18.2.1/24' }));
    ({ d, c } = await lab.start(['--log-level', 'info', '--prometheus', '127.0.0.1:0']));
    await c.rules.createRule({ rule: lab.rule('web', 7990, [backendOf(be)]) });
    await c.rules.createRule({ rule: lab.rule('side', 7991, [backendOf(be)], [vm2.hostIf]) });
    await until('both ACTIVE', async () =>
      (await Promise.all(['web', 'side'].map(status))).every((s) => s.state === RuleState.RULE_STATE_ACTIVE),
    );
  });
  after(() => lab.destroy());

  /** What each reader says now. */
  const readers = async () => {
    const st = await c.daemon.getStatus({});
    const cli = await xdpctl(d.unix, ['status']);
    assert.equal(cli.code, 0, cli.stderr);
    return {
      health: await health(),
      warnings: st.datapath!.warnings,
      problems: (await metric(d.prometheus!, 'xdpctl_datapath_problems', {})) ?? -1,
      cli: cli.stdout,
    };
  };

  /** Until every reader says `cause` (NOT_SERVING); then each says it. */
  const allSay = async (cause: RegExp) => {
    let last: Awaited<ReturnType<typeof readers>> | undefined;
    await until(
      `NOT_SERVING with ${cause} in GetStatus, the metric and the CLI`,
      async () => {
        last = await readers();
        return (
          last.health === NOT_SERVING &&
          last.warnings.some((w) => cause.test(w)) &&
          last.problems > 0 &&
          last.cli.split('\n').some((l) => /^warning\b/.test(l.trim()) && cause.test(l))
        );
      },
      8000,
    ).catch((e: Error) => {
      throw new Error(`${e.message}; last seen: ${JSON.stringify(last)}`);
    });
  };

  /** Until every reader says the datapath is as desired; then none names anything. */
  const noneSays = async () => {
    let last: Awaited<ReturnType<typeof readers>> | undefined;
    await until(
      'SERVING, no warning, no problem, no warning line',
      async () => {
        last = await readers();
        return (
          last.health === SERVING &&
          last.warnings.length === 0 &&
          last.problems === 0 &&
          !/^\s*warning\b/m.test(last.cli)
        );
      },
      8000,
    ).catch((e: Error) => {
      throw new Error(`${e.message}; last seen: ${JSON.stringify(last)}`);
    });
  };

  it('starts as desired: SERVING, no warning, 0 problems', async () => {
    await noneSays();
  });

  it("a backend's egress MTU below the ingress's: the rule DEGRADED, named with both MTUs", async () => {
    sh('ip', ['link', 'set', 'dev', be.hostIf, 'mtu', '1000']);
    try {
      await allSay(new RegExp(`rule web is DEGRADED: .*MTU`));
      const st = await c.daemon.getStatus({});
      assert.ok(
        st.datapath!.warnings.some((w) => w.includes(be.hostIf)),
        st.datapath!.warnings.join('\n'),
      );
    } finally {
      sh('ip', ['link', 'set', 'dev', be.hostIf, 'mtu', '1500']);
    }
    await noneSays();
  });

  it("a backend's egress down: the rule not ACTIVE, naming the egress", async () => {
    sh('ip', ['link', 'set', 'dev', be.hostIf, 'down']);
    try {
      await allSay(new RegExp(`rule web is (DEGRADED|INACTIVE): .*${esc(be.hostIf)}`));
    } finally {
      sh('ip', ['link', 'set', 'dev', be.hostIf, 'up']);
    }
    await noneSays();
  });

  it('the only ingress of a rule deleted: the rule INACTIVE, the interface named', async () => {
    lab.topo.unplug('vm2');
    try {
      await allSay(new RegExp(`rule side is INACTIVE: .*${esc(vm2.hostIf)}`));
      await allSay(new RegExp(esc(vm2.hostIf)));
    } finally {
      lab.topo.replug('vm2', '198.18.3.1/24');
    }
    await noneSays();
  });

  it('a foreign XDP program on the ingress: named with its id', async () => {
    sh('ip', [
      '-force',
      'link',
      'set',
      'dev',
      lab.vm.hostIf,
      'xdpdrv',
      'obj',
      `${ROOT}build/bpf/baseline.bpf.o`,
      'sec',
      'xdp',
    ]);
    try {
      await allSay(new RegExp(`${esc(lab.vm.hostIf)}.*another XDP program|another XDP program.*${esc(lab.vm.hostIf)}`));
    } finally {
      sh('ip', ['link', 'set', 'dev', lab.vm.hostIf, 'xdp', 'off']);
    }
    await noneSays();
  });
});
