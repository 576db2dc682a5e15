/**
 * Execute step: apply a plan to the datapath over an undo log. Rules are
 * written into fresh slots (unpublished), published by repointing match
 * entries, and only then are the slots they replace cleared. Any failure
 * before the commit point undoes every step already taken, newest first, so
 * the kernel maps and the core state stay exactly as they were.
 */
import { parseIp, parseMac } from '../net/addr.js';
import type { Logger } from '../log.js';
import type { BackendEntry, Dataplane, XdpModeName } from './dataplane.js';
import { CoreError } from './errors.js';
import type { LinkSpec, RuleSpec } from './model.js';
import type { LinkDirection } from './plan-links.js';
import type { RuleOp, RulesPlan } from './plan-rules.js';
import { fillRing } from './ring.js';
import { writtenRuleStatus } from './rule-status.js';
import { matchId, type CoreState, type RuleKernel } from './state.js';
import { UndoLog } from './undo-log.js';

const AF_INET = 2;

/** What execution works with. */
export interface ExecContext {
  dp: Dataplane;
  state: CoreState;
  mode: XdpModeName;
  fixVethPeers: boolean;
  log: Logger;
  now: () => number;
}

/**
 * Execute a rules plan. `restoring` keeps each rule's generation and update
 * time (a restart or resync rewrites, it does not change the rule).
 */
export async function executeRules(
  ctx: ExecContext,
  ops: readonly RuleOp[],
  { plans, after }: RulesPlan,
  restoring: boolean,
): Promise<void> {
  const { dp, state } = ctx;
  const undo = new UndoLog();
  const newKernel = new Map<string, RuleKernel>();
  try {
    // 1. The program on every ingress interface the new set needs.
    const users = state.interfaceUsers(after, state.links);
    for (const p of plans) {
      for (const i of p.ingress) {
        if (state.attached.has(i.name)) continue;
        vacateLowerDevices(ctx, undo, i.name, users);
        attachOne(ctx, undo, i.name, i.ifindex, users.get(i.name) ?? new Set(), restoring);
      }
    }
    // 2. Native redirects into veths need NAPI on the peer. Each interface
    // is checked once per transaction (a check queries netlink or runs tools).
    const native = new Map<string, boolean>();
    const peers = new Map<string, { ok: boolean; detail?: string }>();
    for (const p of plans) {
      const isNative = p.ingress.some((i) => {
        if (!native.has(i.name)) native.set(i.name, dp.xdpStatus(i.name)?.mode === 'native');
        return native.get(i.name);
      });
      if (!isNative) continue;
      for (const [bi, b] of p.backends.entries()) {
        if (!b.receiving) continue; // out of the table: nothing is redirected into it
        let r = peers.get(b.spec.interface);
        if (!r) {
          r = await dp.redirectTarget(b.spec.interface, ctx.fixVethPeers);
          peers.set(b.spec.interface, r);
        }
        if (!r.ok) {
          throw new CoreError('precondition', `${p.field}.backends[${bi}].interface: ${r.detail}`, [
            { field: `${p.field}.backends[${bi}].interface`, description: r.detail ?? 'precondition not met' },
          ]);
        }
      }
    }
    // 3. Write each new or changed rule into a fresh slot (unpublished).
    for (const p of plans) {
      const old = state.ruleKernel.get(p.name);
      const slot = state.slots.alloc();
      undo.push(() => state.slots.release(slot));
      let statsId = old?.statsId;
      if (statsId === undefined) {
        const id = state.ruleStatsIds.alloc();
        statsId = id;
        undo.push(() => state.ruleStatsIds.release(id));
        dp.resetRuleStats(id);
      }
      const backendIds = new Map<string, { id: number; statsId: number }>();
      const entries: [number, BackendEntry][] = [];
      const members: { key: string; weight: number; value: number }[] = [];
      for (const b of p.backends) {
        const id = state.backendIds.alloc();
        undo.push(() => state.backendIds.release(id));
        let bStats = old?.backends.get(b.key)?.statsId;
        if (bStats === undefined) {
          const sid = state.backendStatsIds.alloc();
          bStats = sid;
          undo.push(() => state.backendStatsIds.release(sid));
          dp.resetBackendStats(sid);
        }
        backendIds.set(b.key, { id, statsId: bStats });
        if (!b.receiving) continue; // out of the table: its flows go to the others
        entries.push([
          id,
          {
            dmac: parseMac(b.mac),
            smac: parseMac(b.smac),
            ifindex: b.ifindex,
            statsId: bStats,
            family: AF_INET,
            addr: parseIp(b.spec.ip).bytes,
          },
        ]);
        members.push({ key: b.key, weight: b.spec.weight, value: id });
      }
      const ring = fillRing(members, dp.ringSize, dp.noBackend);
      dp.writeRuleSlot({ slot, statsId, flags: p.flags, srcPrefixes: p.prefixes, ring, backends: entries });
      undo.push(() =>
        dp.clearRuleSlot(
          slot,
          p.prefixes,
          entries.map(([id]) => id),
        ),
      );
      const live = members.filter((m) => m.weight > 0).length;
      newKernel.set(p.name, {
        slot,
        statsId,
        matchKeys: p.matchKeys,
        prefixes: p.prefixes,
        backends: backendIds,
        ifindexes: p.ifindexes,
        status: writtenRuleStatus(
          p.backends.map((b) => b.status),
          live,
          p.backends.map((b) => b.spec.weight),
        ),
      });
    }
    // 4. Publish: repoint match entries; remove the ones no longer wanted.
    // A key may move between rules in one change (ApplyRules: "dns" takes
    // the port "web" leaves): whoever held it before is what an undo
    // restores, and a key another rule now claims is never removed.
    const claimed = new Set<string>();
    for (const k of newKernel.values()) for (const m of k.matchKeys) claimed.add(matchId(m));
    const holder = new Map<string, number>();
    for (const k of state.ruleKernel.values()) for (const m of k.matchKeys) holder.set(matchId(m), k.slot);
    for (const op of ops) {
      const old = state.ruleKernel.get(op.name);
      const next = newKernel.get(op.name);
      for (const k of next?.matchKeys ?? []) {
        dp.putMatch(k, next!.slot);
        const prev = holder.get(matchId(k));
        undo.push(() => (prev !== undefined ? dp.putMatch(k, prev) : dp.deleteMatch(k)));
      }
      for (const k of old?.matchKeys ?? []) {
        if (claimed.has(matchId(k))) continue;
        dp.deleteMatch(k);
        undo.push(() => dp.putMatch(k, old!.slot));
      }
    }
  } catch (e) {
    undo.rollback(ctx.log);
    throw e;
  }
  // 5. Commit: clear replaced slots, release their ids, record the state.
  const t = ctx.now();
  for (const op of ops) {
    const old = state.ruleKernel.get(op.name);
    const next = newKernel.get(op.name);
    if (old) {
      dp.clearRuleSlot(
        old.slot,
        old.prefixes,
        [...old.backends.values()].map((b) => b.id),
      );
      state.slots.release(old.slot);
      for (const [key, b] of old.backends) {
        state.backendIds.release(b.id);
        if (!next?.backends.has(key)) state.backendStatsIds.release(b.statsId);
      }
      if (!next) state.ruleStatsIds.release(old.statsId);
    }
    const cur = state.rules.get(op.name);
    if (next && op.next) {
      state.ruleKernel.set(op.name, next);
      state.rules.set(op.name, {
        ...(structuredClone(op.next) as RuleSpec),
        generation: restoring && cur ? cur.generation : (cur?.generation ?? 0) + 1,
        createTime: cur?.createTime ?? t,
        updateTime: restoring && cur ? cur.updateTime : t,
      });
    } else {
      state.ruleKernel.delete(op.name);
      state.rules.delete(op.name);
    }
  }
  releaseUnusedInterfaces(ctx);
}

/**
 * Execute a link set: attach where needed, check native-redirect targets,
 * then connect, repoint and disconnect directions; undone on any failure.
 */
export async function executeLinks(
  ctx: ExecContext,
  next: ReadonlyMap<string, LinkSpec>,
  want: ReadonlyMap<string, LinkDirection>,
  cur: ReadonlyMap<string, { from: number; to: number }>,
  field: string,
  tolerant = false,
): Promise<void> {
  const { dp, state } = ctx;
  const undo = new UndoLog();
  const nextUsers = state.interfaceUsers(state.rules, next);
  try {
    const usersAfter = state.interfaceUsers(state.rules, next);
    for (const [from, info] of want) {
      if (state.attached.has(from)) continue;
      vacateLowerDevices(ctx, undo, from, usersAfter);
      attachOne(ctx, undo, from, info.from, nextUsers.get(from) ?? new Set(), tolerant);
    }
    for (const [from, d] of want) {
      if (dp.xdpStatus(from)?.mode !== 'native') continue;
      const r = await dp.redirectTarget(d.toName, ctx.fixVethPeers);
      if (!r.ok) {
        throw new CoreError('precondition', `${field}: ${r.detail}`, [
          { field, description: r.detail ?? 'precondition not met' },
        ]);
      }
    }
    for (const [from, d] of want) {
      const c = cur.get(from);
      if (c && c.to === d.to) continue;
      dp.connect(d.from, d.to);
      undo.push(() => (c ? dp.connect(c.from, c.to) : dp.disconnect(d.from)));
    }
    for (const [from, c] of cur) {
      if (want.has(from)) continue;
      dp.disconnect(c.from);
      undo.push(() => dp.connect(c.from, c.to));
    }
  } catch (e) {
    undo.rollback(ctx.log);
    throw e;
  }
  state.links.clear();
  for (const [k, l] of next) state.links.set(k, l);
  state.linkDirs.clear();
  for (const [from, d] of want) state.linkDirs.set(d.from, { from, to: d.toName });
  releaseUnusedInterfaces(ctx);
}

/**
 * Attach our program to one interface within a transaction. The undo step
 * detaches only what this attach put there: a program that was ours already
 * (a restart adopting the datapath) stays, so a failed start never takes
 * down a datapath that was forwarding. With `tolerant` (restore, resync),
 * an interface that another XDP program occupies is recorded, not fatal:
 * the rest is served and the status says why that interface is not.
 */
function attachOne(
  ctx: ExecContext,
  undo: UndoLog,
  name: string,
  ifindex: number,
  users: Set<string>,
  tolerant: boolean,
): void {
  const { dp, state } = ctx;
  const before = dp.xdpStatus(name);
  if (before && before.mode !== 'none' && !before.ours && tolerant) {
    state.foreign.set(name, before.progId);
    return;
  }
  const st = dp.attach(name, ctx.mode);
  state.foreign.delete(name);
  state.attached.set(name, { ifindex, users });
  const wasOurs = !!before && before.mode !== 'none' && before.ours;
  undo.push(() => {
    state.attached.delete(name);
    if (!wasOurs) dp.detach(name);
  });
  if (!wasOurs) ctx.log.info({ ifname: name, mode: st.mode }, 'attached');
}

/**
 * Before attaching to `upper`: detach ours from the devices below it that
 * the new state no longer needs (a rule's ingress moving from a bridge port
 * to the bridge). Once the upper device has a program the kernel refuses to
 * detach from its lower devices (EEXIST), which would leave our program on
 * the port. Undone (re-attached) if the transaction fails.
 */
function vacateLowerDevices(
  ctx: ExecContext,
  undo: UndoLog,
  upper: string,
  usersAfter: ReadonlyMap<string, Set<string>>,
): void {
  const { dp, state } = ctx;
  for (const lower of dp.lowerDevices?.(upper) ?? []) {
    const a = state.attached.get(lower);
    if (!a || usersAfter.has(lower)) continue;
    dp.detach(lower);
    state.attached.delete(lower);
    ctx.log.info({ ifname: lower, upper }, 'detached from a lower device before attaching to its upper device');
    undo.push(() => {
      dp.attach(lower, ctx.mode);
      state.attached.set(lower, a);
    });
  }
}

/**
 * Detach from interfaces no rule or link uses any more. A detach that fails
 * keeps the attachment (listed by ListInterfaces with the reason, retried
 * on the next pass, logged once per distinct error): nothing stays attached
 * that the daemon does not show.
 */
export function releaseUnusedInterfaces(ctx: ExecContext): void {
  const users = ctx.state.interfaceUsers();
  for (const [name, a] of ctx.state.attached) {
    if (users.has(name)) {
      a.users = users.get(name)!;
      a.detachError = undefined;
      continue;
    }
    a.users = new Set();
    try {
      ctx.dp.detach(name);
    } catch (e) {
      const msg = (e as Error).message;
      if (a.detachError !== msg) ctx.log.warn({ err: e, ifname: name }, 'detach failed; retried on the next pass');
      a.detachError = msg;
      continue;
    }
    ctx.state.attached.delete(name);
  }
}
