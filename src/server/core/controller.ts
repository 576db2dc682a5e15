/**
 * The controller owns the desired state (rules, links, managed interfaces)
 * and applies every change to the datapath as a transaction: validate
 * everything, resolve interfaces and MACs, check capacity, then write new
 * rules into free slots, publish them by repointing match entries, and only
 * then clear what they replace. Any failure undoes the steps already taken
 * in reverse order, so the kernel maps and this state stay exactly as they
 * were. Calls are serialized (one transaction at a time).
 */
import { formatMac, parseIp, parseMac, parsePrefix } from '../net/addr.js';
import { silentLogger, type Logger } from '../log.js';
import type { BackendEntry, MatchKey } from '../dataplane/codec.js';
import type { Dataplane, InterfaceInfo, XdpModeName } from './dataplane.js';
import { CoreError, type FieldViolation } from './errors.js';
import { IdPool } from './ids.js';
import {
  linkKey,
  type BackendStatus,
  type ChangeAction,
  type LinkSpec,
  type RuleRecord,
  type RuleSpec,
  type RuleStatus,
} from './model.js';
import { fillRing } from './ring.js';
import { STATE_VERSION, type StoredState } from './store.js';
import { validateLink, validateRule } from './validate.js';

const AF_INET = 2;
const IPPROTO_UDP = 17;
const RULE_F_UDP_CSUM_ZERO = 0x4;

/** Kernel resources held by one rule. */
interface RuleKernel {
  slot: number;
  statsId: number;
  matchKeys: MatchKey[];
  prefixes: { length: number; addr: Uint8Array }[];
  /** backend identity (ip@iface) -> kernel ids. */
  backends: Map<string, { id: number; statsId: number }>;
  /** ifindex of every interface the rule was written with (ingress and egress). */
  ifindexes: Map<string, number>;
  status: RuleStatus;
}

export interface RuleView extends RuleRecord {
  status: RuleStatus;
}

export interface RuleChange {
  name: string;
  action: ChangeAction;
}

export interface LinkChange {
  a: string;
  b: string;
  action: ChangeAction;
}

export interface ManagedInterface {
  name: string;
  ifindex: number;
  present: boolean;
  requestedMode: XdpModeName;
  effectiveMode: string;
  progId: number;
  usedBy: string[];
  warnings: string[];
}

export interface ControllerOptions {
  mode: XdpModeName;
  /** Enable GRO on veth peers that need it for native redirects (else refuse). */
  fixVethPeers: boolean;
  log?: Logger;
  /** Called with the new desired state before a change is acknowledged. */
  persist?: (state: StoredState) => void | Promise<void>;
  now?: () => number;
}

export interface DesiredState {
  rules: RuleRecord[];
  links: LinkSpec[];
}

export interface CounterSnapshot {
  time: number;
  rules: {
    name: string;
    matched: bigint;
    matchedBytes: bigint;
    redirected: bigint;
    redirectedBytes: bigint;
    filtered: bigint;
    noBackend: bigint;
  }[];
  backends: { rule: string; ip: string; interface: string; packets: bigint; bytes: bigint }[];
  links: { from: string; to: string; packets: bigint; bytes: bigint }[];
  global: bigint[];
}

const backendKey = (b: { ip: string; interface: string }) => `${b.ip}@${b.interface}`;

function matchId(k: MatchKey): string {
  return `${k.ifindex}|${k.dport}|${k.proto}|${Array.from(k.daddr).join('.')}`;
}

export class Controller {
  private readonly rules = new Map<string, RuleRecord>();
  private readonly ruleKernel = new Map<string, RuleKernel>();
  private readonly links = new Map<string, LinkSpec>();
  private readonly slots: IdPool;
  private readonly ruleStatsIds: IdPool;
  private readonly backendIds: IdPool;
  private readonly backendStatsIds: IdPool;
  /** Interfaces we attached, with who uses them. */
  private readonly attached = new Map<string, { ifindex: number; users: Set<string> }>();
  /** Link direction counters by ingress ifindex -> names. */
  private readonly linkDirs = new Map<number, { from: string; to: string }>();
  private queue: Promise<unknown> = Promise.resolve();
  /** A config file that owns the desired state: API mutations are refused. */
  private owner?: string;
  private applyingConfig = false;
  private readonly log: Logger;
  private readonly now: () => number;

  constructor(
    private readonly dp: Dataplane,
    private readonly opts: ControllerOptions,
  ) {
    this.log = (opts.log ?? silentLogger).child({ component: 'controller' });
    this.now = opts.now ?? Date.now;
    this.slots = new IdPool(1, dp.capacity.ruleSlots);
    this.ruleStatsIds = new IdPool(1, dp.capacity.statsIds);
    this.backendIds = new IdPool(1, dp.capacity.backends);
    this.backendStatsIds = new IdPool(1, dp.capacity.backends);
  }

  /** Hand the desired state to a config file (xdpctld --config). */
  setOwner(path: string | undefined): void {
    this.owner = path;
  }

  private checkOwner(): void {
    if (this.owner && !this.applyingConfig) {
      throw new CoreError(
        'precondition',
        `the desired state is owned by the config file ${this.owner}: edit that file (xdpctld --config) instead`,
      );
    }
  }

  /**
   * Apply a whole config file: both parts are checked (dry run) before
   * either is applied, so an invalid file changes nothing.
   */
  async applyConfig(cfg: {
    rules: RuleSpec[];
    links: LinkSpec[];
  }): Promise<{ rules: RuleChange[]; links: LinkChange[] }> {
    this.applyingConfig = true;
    try {
      await this.applyRules(cfg.rules, true);
      await this.applyLinks(cfg.links, true);
      const rules = await this.applyRules(cfg.rules, false);
      const links = await this.applyLinks(cfg.links, false);
      return { rules, links };
    } finally {
      this.applyingConfig = false;
    }
  }

  /** Run one change at a time. */
  private serial<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.queue.then(fn, fn);
    this.queue = run.catch(() => undefined);
    return run;
  }

  // ---- reads ------------------------------------------------------------

  getRule(name: string): RuleView {
    const r = this.rules.get(name);
    if (!r) throw new CoreError('not-found', `rule "${name}" does not exist`);
    return { ...r, status: this.ruleKernel.get(name)!.status };
  }

  listRules(): RuleView[] {
    return [...this.rules.keys()].sort().map((n) => this.getRule(n));
  }

  listLinks(): (LinkSpec & { active: [boolean, boolean] })[] {
    return [...this.links.values()]
      .sort((x, y) => linkKey(x).localeCompare(linkKey(y)))
      .map((l) => {
        const ia = this.dp.lookupInterface(l.a);
        const ib = this.dp.lookupInterface(l.b);
        const kernel = new Map(this.dp.listLinks());
        return {
          ...l,
          active: [
            !!ia && !!ib && kernel.get(ia.ifindex) === ib.ifindex,
            l.direction === 'both' && !!ia && !!ib && kernel.get(ib.ifindex) === ia.ifindex,
          ],
        };
      });
  }

  desiredState(): DesiredState {
    return { rules: [...this.rules.values()], links: [...this.links.values()] };
  }

  /** The desired state with the kernel ids that keep counters across restarts. */
  storedState(): StoredState {
    return {
      version: STATE_VERSION,
      rules: [...this.rules.values()].map((r) => {
        const k = this.ruleKernel.get(r.name);
        return {
          ...r,
          kernel: k && {
            slot: k.slot,
            statsId: k.statsId,
            backends: Object.fromEntries(k.backends),
          },
        };
      }),
      links: [...this.links.values()],
    };
  }

  listInterfaces(): ManagedInterface[] {
    const users = this.interfaceUsers();
    return [...users.keys()].sort().map((name) => {
      const x = this.dp.xdpStatus(name);
      const info = this.dp.lookupInterface(name);
      const warnings: string[] = [];
      if (!info) warnings.push(`interface ${name} does not exist`);
      else if (x && x.mode !== 'none' && !x.ours) warnings.push(`a foreign XDP program (id ${x.progId}) is attached`);
      return {
        name,
        ifindex: info?.ifindex ?? 0,
        present: !!info,
        requestedMode: this.opts.mode,
        effectiveMode: x?.mode ?? 'none',
        progId: x?.progId ?? 0,
        usedBy: [...users.get(name)!].sort(),
        warnings,
      };
    });
  }

  /** Interfaces the desired state needs the program on, with their users. */
  private interfaceUsers(rules = this.rules, links = this.links): Map<string, Set<string>> {
    const out = new Map<string, Set<string>>();
    const add = (name: string, user: string) => {
      if (!out.has(name)) out.set(name, new Set());
      out.get(name)!.add(user);
    };
    for (const r of rules.values()) for (const i of r.ingressInterfaces) add(i, `rule/${r.name}`);
    for (const l of links.values()) {
      add(l.a, `link/${l.a}:${l.b}`);
      if (l.direction === 'both') add(l.b, `link/${l.a}:${l.b}`);
    }
    return out;
  }

  // ---- rule mutations ---------------------------------------------------

  createRule(spec: RuleSpec): Promise<RuleView> {
    return this.serial(async () => {
      this.checkOwner();
      throwIfInvalid(validateRule(spec, 'rule'));
      if (this.rules.has(spec.name)) throw new CoreError('exists', `rule "${spec.name}" already exists`);
      await this.applyRuleOps([{ name: spec.name, next: spec }], 'rule');
      return this.getRule(spec.name);
    });
  }

  updateRule(spec: RuleSpec, expectedGeneration: number): Promise<RuleView> {
    return this.serial(async () => {
      this.checkOwner();
      throwIfInvalid(validateRule(spec, 'rule'));
      const cur = this.rules.get(spec.name);
      if (!cur) throw new CoreError('not-found', `rule "${spec.name}" does not exist`);
      checkGeneration(cur, expectedGeneration);
      if (!sameSpec(cur, spec)) await this.applyRuleOps([{ name: spec.name, next: spec }], 'rule');
      return this.getRule(spec.name);
    });
  }

  deleteRule(name: string, expectedGeneration: number): Promise<void> {
    return this.serial(async () => {
      this.checkOwner();
      const cur = this.rules.get(name);
      if (!cur) throw new CoreError('not-found', `rule "${name}" does not exist`);
      checkGeneration(cur, expectedGeneration);
      await this.applyRuleOps([{ name }], 'rule');
    });
  }

  /** Replace the whole rule set atomically (or only report the changes). */
  applyRules(specs: RuleSpec[], validateOnly: boolean): Promise<RuleChange[]> {
    return this.serial(async () => {
      if (!validateOnly) this.checkOwner();
      const violations: FieldViolation[] = [];
      const seen = new Map<string, number>();
      specs.forEach((s, i) => {
        validateRule(s, `rules[${i}]`, violations);
        if (seen.has(s.name)) {
          violations.push({ field: `rules[${i}].name`, description: `duplicates rules[${seen.get(s.name)}].name` });
        }
        seen.set(s.name, i);
      });
      throwIfInvalid(violations);
      const changes: RuleChange[] = [];
      const ops: { name: string; next?: RuleSpec; field?: string }[] = [];
      specs.forEach((s, i) => {
        const cur = this.rules.get(s.name);
        const action: ChangeAction = !cur ? 'create' : sameSpec(cur, s) ? 'unchanged' : 'update';
        changes.push({ name: s.name, action });
        if (action !== 'unchanged') ops.push({ name: s.name, next: s, field: `rules[${i}]` });
      });
      for (const name of this.rules.keys()) {
        if (!seen.has(name)) {
          changes.push({ name, action: 'delete' });
          ops.push({ name });
        }
      }
      changes.sort((x, y) => x.name.localeCompare(y.name));
      if (!validateOnly) await this.applyRuleOps(ops, 'rules');
      else await this.checkRuleOps(ops);
      return changes;
    });
  }

  /** Everything a transaction would check, without touching the kernel. */
  private async checkRuleOps(ops: { name: string; next?: RuleSpec; field?: string }[]): Promise<void> {
    const plan = await this.planRules(ops);
    void plan;
  }

  private async planRules(ops: { name: string; next?: RuleSpec; field?: string }[]) {
    // The rule set after the change, to check conflicts across rules.
    const after = new Map(this.rules);
    for (const op of ops) {
      if (op.next) after.set(op.name, { ...op.next, generation: 0, createTime: 0, updateTime: 0 });
      else after.delete(op.name);
    }
    const fieldOf = (name: string) => ops.find((o) => o.name === name)?.field ?? `rule(${name})`;
    const violations: FieldViolation[] = [];
    // Two rules must not claim the same (ingress, port, destination).
    const claims = new Map<string, string>();
    for (const r of after.values()) {
      for (const i of r.ingressInterfaces) {
        const k = `${i}|${r.port}|${r.destination}`;
        const other = claims.get(k);
        if (other && other !== r.name) {
          violations.push({
            field: `${fieldOf(r.name)}.match`,
            description: `rule "${r.name}" and rule "${other}" both match UDP port ${r.port}${r.destination ? ` to ${r.destination}` : ''} on ${i}`,
          });
        }
        claims.set(k, r.name);
      }
    }
    if (violations.length) throw new CoreError('precondition', violations[0].description, violations);
    // Interfaces must exist. Each name is resolved once per transaction:
    // 10 000 rules name the same few interfaces 50 000 times.
    const interfaces = new Map<string, InterfaceInfo | undefined>();
    const lookup = (name: string) => {
      if (!interfaces.has(name)) interfaces.set(name, this.dp.lookupInterface(name));
      return interfaces.get(name);
    };
    const plans: {
      name: string;
      spec: RuleSpec;
      field: string;
      ingress: { name: string; ifindex: number }[];
      backends: { spec: RuleSpec['backends'][number]; ifindex: number; smac: string; mac: string; resolved: boolean }[];
    }[] = [];
    for (const op of ops) {
      if (!op.next) continue;
      const field = op.field ?? 'rule';
      const ingress = op.next.ingressInterfaces.map((name, i) => {
        const info = lookup(name);
        if (!info) {
          throw new CoreError('not-found', `${field}.ingress_interfaces[${i}]: interface "${name}" does not exist`, [
            { field: `${field}.ingress_interfaces[${i}]`, description: `interface "${name}" does not exist` },
          ]);
        }
        return { name, ifindex: info.ifindex };
      });
      const backends = [];
      for (const [i, b] of op.next.backends.entries()) {
        const info = lookup(b.interface);
        if (!info) {
          throw new CoreError(
            'not-found',
            `${field}.backends[${i}].interface: interface "${b.interface}" does not exist`,
            [{ field: `${field}.backends[${i}].interface`, description: `interface "${b.interface}" does not exist` }],
          );
        }
        let mac = b.mac;
        let resolved = true;
        if (mac === '') {
          mac = (await this.dp.neighbourMac(b.ip, b.interface)) ?? '';
          resolved = mac !== '';
        }
        backends.push({
          spec: b,
          ifindex: info.ifindex,
          smac: info.mac,
          mac: mac && formatMac(parseMac(mac)),
          resolved,
        });
      }
      plans.push({ name: op.name, spec: op.next, field, ingress, backends });
    }
    // Capacity, before anything is written.
    const needSlots = plans.length;
    const needBackends = plans.reduce((n, p) => n + p.backends.length, 0);
    const newRules = plans.filter((p) => !this.rules.has(p.name)).length;
    const matchesAfter = [...after.values()].reduce((n, r) => n + r.ingressInterfaces.length, 0);
    const full = (what: string, need: number, have: number) =>
      new CoreError('exhausted', `${what} table full: the change needs ${need}, ${have} free`);
    if (needSlots > this.slots.available) throw full('rule slot', needSlots, this.slots.available);
    if (newRules > this.ruleStatsIds.available) throw full('rule counter', newRules, this.ruleStatsIds.available);
    if (needBackends > this.backendIds.available) throw full('backend', needBackends, this.backendIds.available);
    if (matchesAfter > this.dp.capacity.matches) throw full('match', matchesAfter, this.dp.capacity.matches);
    return { plans, after };
  }

  /**
   * The transaction. `ops` with `next` create or replace a rule, without
   * delete it.
   */
  private async applyRuleOps(
    ops: { name: string; next?: RuleSpec; field?: string }[],
    _what: string,
    restoring = false,
  ): Promise<void> {
    if (ops.length === 0) return;
    const { plans, after } = await this.planRules(ops);
    const undo: (() => void)[] = [];
    const newKernel = new Map<string, RuleKernel>();
    try {
      // 1. The program on every ingress interface the new set needs.
      const users = this.interfaceUsers(after as Map<string, RuleRecord>, this.links);
      for (const p of plans) {
        for (const i of p.ingress) {
          if (this.attached.has(i.name)) continue;
          const st = this.dp.attach(i.name, this.opts.mode);
          this.attached.set(i.name, { ifindex: i.ifindex, users: users.get(i.name) ?? new Set() });
          undo.push(() => {
            this.attached.delete(i.name);
            this.dp.detach(i.name);
          });
          this.log.info({ ifname: i.name, mode: st.mode }, 'attached');
        }
      }
      // 2. Native redirects into veths need NAPI on the peer. Each interface
      // is checked once per transaction (a check queries netlink or runs tools).
      const native = new Map<string, boolean>();
      const peers = new Map<string, { ok: boolean; detail?: string }>();
      for (const p of plans) {
        const isNative = p.ingress.some((i) => {
          if (!native.has(i.name)) native.set(i.name, this.dp.xdpStatus(i.name)?.mode === 'native');
          return native.get(i.name);
        });
        if (!isNative) continue;
        for (const [bi, b] of p.backends.entries()) {
          let r = peers.get(b.spec.interface);
          if (!r) {
            r = await this.dp.redirectTarget(b.spec.interface, this.opts.fixVethPeers);
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
        const old = this.ruleKernel.get(p.name);
        const slot = this.slots.alloc();
        undo.push(() => this.slots.release(slot));
        let statsId = old?.statsId;
        if (statsId === undefined) {
          const id = this.ruleStatsIds.alloc();
          statsId = id;
          undo.push(() => this.ruleStatsIds.release(id));
          this.dp.resetRuleStats(id);
        }
        const backendIds = new Map<string, { id: number; statsId: number }>();
        const entries: [number, BackendEntry][] = [];
        const members: { key: string; weight: number; value: number }[] = [];
        const bstatus: BackendStatus[] = [];
        for (const b of p.backends) {
          const key = backendKey(b.spec);
          const id = this.backendIds.alloc();
          undo.push(() => this.backendIds.release(id));
          let bStats = old?.backends.get(key)?.statsId;
          if (bStats === undefined) {
            const sid = this.backendStatsIds.alloc();
            bStats = sid;
            undo.push(() => this.backendStatsIds.release(sid));
            this.dp.resetBackendStats(sid);
          }
          backendIds.set(key, { id, statsId: bStats });
          bstatus.push({
            ip: b.spec.ip,
            interface: b.spec.interface,
            mac: b.mac,
            resolved: b.resolved,
            message: b.resolved
              ? b.spec.mac === ''
                ? 'MAC resolved from the neighbour table'
                : ''
              : `no neighbour entry for ${b.spec.ip} on ${b.spec.interface}: backend gets no traffic until its MAC is known`,
          });
          if (!b.resolved) continue;
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
          members.push({ key, weight: b.spec.weight, value: id });
        }
        const ring = fillRing(members, this.dp.ringSize, this.dp.noBackend);
        const prefixes = p.spec.sourcePrefixes.map((s) => {
          const x = parsePrefix(s);
          return { length: x.length, addr: x.bytes };
        });
        this.dp.writeRuleSlot({
          slot,
          statsId,
          flags: p.spec.udpChecksum === 'zero' ? RULE_F_UDP_CSUM_ZERO : 0,
          srcPrefixes: prefixes,
          ring,
          backends: entries,
        });
        undo.push(() =>
          this.dp.clearRuleSlot(
            slot,
            prefixes,
            entries.map(([id]) => id),
          ),
        );
        const daddr = p.spec.destination ? parseIp(p.spec.destination).bytes : new Uint8Array(4);
        const matchKeys = p.ingress.map((i) => ({
          ifindex: i.ifindex,
          dport: p.spec.port,
          proto: IPPROTO_UDP,
          family: AF_INET,
          daddr,
        }));
        const unresolved = bstatus.filter((b) => !b.resolved).length;
        const live = members.filter((m) => m.weight > 0).length;
        newKernel.set(p.name, {
          slot,
          statsId,
          matchKeys,
          prefixes,
          backends: backendIds,
          ifindexes: new Map([
            ...p.ingress.map((i) => [i.name, i.ifindex] as const),
            ...p.backends.map((b) => [b.spec.interface, b.ifindex] as const),
          ]),
          status: {
            state: live === 0 ? 'inactive' : unresolved ? 'degraded' : 'active',
            message:
              live === 0
                ? 'no backend can take traffic (all drained or unresolved): matching packets are dropped'
                : unresolved
                  ? `${unresolved} backend(s) without a MAC address`
                  : `forwarding to ${live} backend(s)`,
            backends: bstatus,
            warnings: [],
          },
        });
      }
      // 4. Publish: repoint match entries; remove the ones no longer wanted.
      // A key may move between rules in one change (ApplyRules: "dns" takes
      // the port "web" leaves): whoever held it before is what an undo
      // restores, and a key another rule now claims is never removed.
      const claimed = new Set([...newKernel.values()].flatMap((k) => k.matchKeys.map(matchId)));
      const holder = new Map<string, number>();
      for (const k of this.ruleKernel.values()) for (const m of k.matchKeys) holder.set(matchId(m), k.slot);
      for (const op of ops) {
        const old = this.ruleKernel.get(op.name);
        const next = newKernel.get(op.name);
        for (const k of next?.matchKeys ?? []) {
          this.dp.putMatch(k, next!.slot);
          const prev = holder.get(matchId(k));
          undo.push(() => (prev !== undefined ? this.dp.putMatch(k, prev) : this.dp.deleteMatch(k)));
        }
        for (const k of old?.matchKeys ?? []) {
          if (claimed.has(matchId(k))) continue;
          this.dp.deleteMatch(k);
          undo.push(() => this.dp.putMatch(k, old!.slot));
        }
      }
    } catch (e) {
      this.undo(undo);
      throw e;
    }
    // 5. Commit: clear replaced slots, release their ids, record the state.
    const t = this.now();
    for (const op of ops) {
      const old = this.ruleKernel.get(op.name);
      const next = newKernel.get(op.name);
      if (old) {
        this.dp.clearRuleSlot(
          old.slot,
          old.prefixes,
          [...old.backends.values()].map((b) => b.id),
        );
        this.slots.release(old.slot);
        for (const [key, b] of old.backends) {
          this.backendIds.release(b.id);
          if (!next?.backends.has(key)) this.backendStatsIds.release(b.statsId);
        }
        if (!next) this.ruleStatsIds.release(old.statsId);
      }
      const cur = this.rules.get(op.name);
      if (next && op.next) {
        this.ruleKernel.set(op.name, next);
        this.rules.set(op.name, {
          ...structuredClone(op.next),
          generation: restoring && cur ? cur.generation : (cur?.generation ?? 0) + 1,
          createTime: cur?.createTime ?? t,
          updateTime: restoring && cur ? cur.updateTime : t,
        });
      } else {
        this.ruleKernel.delete(op.name);
        this.rules.delete(op.name);
      }
    }
    this.releaseUnusedInterfaces();
    await this.opts.persist?.(this.storedState());
  }

  /** Run a failed transaction's undo steps, newest first; keep going past failures. */
  private undo(steps: (() => void)[]): void {
    for (const step of steps.reverse()) {
      try {
        step();
      } catch (u) {
        this.log.error({ err: u }, 'undo step failed');
      }
    }
  }

  private releaseUnusedInterfaces(): void {
    const users = this.interfaceUsers();
    for (const [name, a] of this.attached) {
      if (users.has(name)) {
        a.users = users.get(name)!;
        continue;
      }
      try {
        this.dp.detach(name);
      } catch (e) {
        this.log.warn({ err: e, ifname: name }, 'detach failed');
      }
      this.attached.delete(name);
    }
  }

  // ---- links ------------------------------------------------------------

  connect(link: LinkSpec): Promise<LinkSpec> {
    return this.serial(async () => {
      this.checkOwner();
      throwIfInvalid(validateLink(link, 'link'));
      const existing = this.links.get(linkKey(link));
      if (existing) {
        throw new CoreError(
          'exists',
          `${existing.a} and ${existing.b} are already linked (use ApplyLinks, or disconnect first, to change it)`,
        );
      }
      const next = new Map(this.links);
      next.set(linkKey(link), link);
      await this.applyLinkSet(next, 'link');
      return link;
    });
  }

  disconnect(a: string, b: string): Promise<void> {
    return this.serial(async () => {
      this.checkOwner();
      const key = linkKey({ a, b });
      if (!this.links.has(key)) throw new CoreError('not-found', `no link between ${a} and ${b}`);
      const next = new Map(this.links);
      next.delete(key);
      await this.applyLinkSet(next, 'link');
    });
  }

  applyLinks(specs: LinkSpec[], validateOnly: boolean): Promise<LinkChange[]> {
    return this.serial(async () => {
      if (!validateOnly) this.checkOwner();
      const violations: FieldViolation[] = [];
      const next = new Map<string, LinkSpec>();
      const usedIngress = new Map<string, number>();
      specs.forEach((l, i) => {
        validateLink(l, `links[${i}]`, violations);
        const key = linkKey(l);
        if (next.has(key)) violations.push({ field: `links[${i}]`, description: `${l.a}-${l.b} is listed twice` });
        next.set(key, l);
        for (const from of l.direction === 'both' ? [l.a, l.b] : [l.a]) {
          if (usedIngress.has(from)) {
            violations.push({
              field: `links[${i}]`,
              description: `${from} already forwards to another interface (links[${usedIngress.get(from)}])`,
            });
          }
          usedIngress.set(from, i);
        }
      });
      throwIfInvalid(violations);
      const changes: LinkChange[] = [];
      for (const [key, l] of next) {
        const cur = this.links.get(key);
        changes.push({
          a: l.a,
          b: l.b,
          action: !cur ? 'create' : sameLink(cur, l) ? 'unchanged' : 'update',
        });
      }
      for (const [key, l] of this.links) if (!next.has(key)) changes.push({ a: l.a, b: l.b, action: 'delete' });
      if (!validateOnly) await this.applyLinkSet(next, 'links');
      else this.planLinks(next, 'links');
      return changes;
    });
  }

  /** Directions the link set wants: ingress name -> egress name. */
  private planLinks(next: Map<string, LinkSpec>, field: string) {
    const dirs = new Map<string, string>();
    const violations: FieldViolation[] = [];
    let i = 0;
    for (const l of next.values()) {
      for (const [from, to] of l.direction === 'both'
        ? [
            [l.a, l.b],
            [l.b, l.a],
          ]
        : [[l.a, l.b]]) {
        if (dirs.has(from) && dirs.get(from) !== to) {
          violations.push({
            field: `${field}`,
            description: `${from} would forward to both ${dirs.get(from)} and ${to}`,
          });
        }
        dirs.set(from, to);
      }
      i++;
    }
    void i;
    if (violations.length) throw new CoreError('precondition', violations[0].description, violations);
    const resolved = new Map<string, { from: number; to: number; toName: string }>();
    for (const [from, to] of dirs) {
      const a = this.dp.lookupInterface(from);
      const b = this.dp.lookupInterface(to);
      for (const [name, info] of [
        [from, a],
        [to, b],
      ] as const) {
        if (!info) {
          throw new CoreError('not-found', `${field}: interface "${name}" does not exist`, [
            { field, description: `interface "${name}" does not exist` },
          ]);
        }
      }
      resolved.set(from, { from: a!.ifindex, to: b!.ifindex, toName: to });
    }
    return resolved;
  }

  private applyLinkSet(next: Map<string, LinkSpec>, field: string): Promise<void> {
    return this.applyLinkSetLocked(next, field);
  }

  private async applyLinkSetLocked(next: Map<string, LinkSpec>, field: string): Promise<void> {
    const want = this.planLinks(next, field);
    const cur = this.planLinksCurrent();
    const undo: (() => void)[] = [];
    const nextUsers = this.interfaceUsers(this.rules, next);
    try {
      for (const from of want.keys()) {
        if (this.attached.has(from)) continue;
        const info = want.get(from)!;
        this.dp.attach(from, this.opts.mode);
        this.attached.set(from, { ifindex: info.from, users: nextUsers.get(from) ?? new Set() });
        undo.push(() => {
          this.attached.delete(from);
          this.dp.detach(from);
        });
      }
      for (const [from, d] of want) {
        if (this.dp.xdpStatus(from)?.mode !== 'native') continue;
        const r = await this.dp.redirectTarget(d.toName, this.opts.fixVethPeers);
        if (!r.ok) {
          throw new CoreError('precondition', `${field}: ${r.detail}`, [
            { field, description: r.detail ?? 'precondition not met' },
          ]);
        }
      }
      for (const [from, d] of want) {
        const c = cur.get(from);
        if (c && c.to === d.to) continue;
        this.dp.connect(d.from, d.to);
        undo.push(() => (c ? this.dp.connect(c.from, c.to) : this.dp.disconnect(d.from)));
      }
      for (const [from, c] of cur) {
        if (want.has(from)) continue;
        this.dp.disconnect(c.from);
        undo.push(() => this.dp.connect(c.from, c.to));
      }
    } catch (e) {
      this.undo(undo);
      throw e;
    }
    this.links.clear();
    for (const [k, l] of next) this.links.set(k, l);
    this.linkDirs.clear();
    for (const [from, d] of want) this.linkDirs.set(d.from, { from, to: d.toName });
    this.releaseUnusedInterfaces();
    await this.opts.persist?.(this.storedState());
  }

  private planLinksCurrent() {
    const out = new Map<string, { from: number; to: number }>();
    for (const [ifindex, d] of this.linkDirs) {
      const to = this.dp.lookupInterface(d.to);
      if (to) out.set(d.from, { from: ifindex, to: to.ifindex });
    }
    return out;
  }

  // ---- start-up ---------------------------------------------------------

  /**
   * Take over a stored desired state on start, with the datapath still
   * forwarding the previous process's entries. Every id the kernel may still
   * use is reserved first; each rule is then written into a fresh slot and
   * published over the old one (packets move from the old complete rule to
   * the new complete rule), and finally everything nobody wants is removed.
   * Counters continue: the stored stats ids are reused.
   */
  restore(stored: StoredState): Promise<void> {
    return this.serial(async () => {
      // A program from an older layout may have left the port index empty:
      // count first, so the datapath sees the existing entries before any attach.
      this.dp.rebuildPortIndex();
      const referenced = new Set(this.dp.listMatches().map(([, slot]) => slot));
      // Source prefixes of dead slots would leak into a fresh slot: sweep them now.
      this.sweepSrcPrefixes(referenced);
      const known = new Set<number>();
      for (const r of stored.rules) {
        const { kernel, ...record } = r;
        this.rules.set(r.name, record);
        if (!kernel) continue;
        known.add(kernel.slot);
        this.slots.take(kernel.slot);
        this.ruleStatsIds.take(kernel.statsId);
        for (const b of Object.values(kernel.backends)) {
          this.backendIds.take(b.id);
          this.backendStatsIds.take(b.statsId);
        }
        this.ruleKernel.set(r.name, {
          slot: kernel.slot,
          statsId: kernel.statsId,
          matchKeys: [],
          prefixes: r.sourcePrefixes.map((p) => {
            const x = parsePrefix(p);
            return { length: x.length, addr: x.bytes };
          }),
          backends: new Map(Object.entries(kernel.backends)),
          ifindexes: new Map(),
          status: { state: 'inactive', message: 'restoring', backends: [], warnings: [] },
        });
      }
      // Slots in use that the state does not know (a crash after a kernel
      // change and before it was saved): keep them and their backends until
      // the switch is done.
      const orphans = [...referenced].filter((s) => !known.has(s));
      for (const slot of orphans) {
        this.slots.take(slot);
        for (const id of this.dp.readRing(slot)) if (id !== this.dp.noBackend) this.backendIds.take(id);
      }
      // Rules whose interfaces are gone wait (reported) until resync sees them back.
      // Each interface is looked up once, however many rules name it.
      const present = new Map<string, boolean>();
      const exists = (i: string) => {
        if (!present.has(i)) present.set(i, this.dp.lookupInterface(i) !== undefined);
        return present.get(i)!;
      };
      const ready = stored.rules.filter((r) =>
        [...r.ingressInterfaces, ...r.backends.map((b) => b.interface)].every(exists),
      );
      const isReady = new Set(ready);
      for (const r of stored.rules) {
        if (isReady.has(r)) continue;
        const k = this.ruleKernel.get(r.name);
        const slot = k?.slot ?? this.slots.alloc();
        this.ruleKernel.set(r.name, {
          slot,
          statsId: k?.statsId ?? this.ruleStatsIds.alloc(),
          matchKeys: [],
          prefixes: k?.prefixes ?? [],
          backends: k?.backends ?? new Map(),
          ifindexes: new Map(
            [...r.ingressInterfaces, ...r.backends.map((b) => b.interface)].map((i) => [i, -1] as const),
          ),
          status: {
            state: 'inactive',
            message: 'waiting for its interfaces to exist',
            backends: [],
            warnings: [],
          },
        });
      }
      const ops = ready.map((r) => {
        const { kernel: _k, generation: _g, createTime: _c, updateTime: _u, ...spec } = r;
        return { name: r.name, next: spec as RuleSpec };
      });
      await this.applyRuleOps(ops, 'restore', true);
      const linksReady = stored.links.every((l) => this.dp.lookupInterface(l.a) && this.dp.lookupInterface(l.b));
      if (linksReady) await this.applyLinkSetLocked(new Map(stored.links.map((l) => [linkKey(l), l])), 'links');
      else for (const l of stored.links) this.links.set(linkKey(l), l); // resync applies them when present
      this.reconcileEntries();
      for (const slot of orphans) {
        this.dp.clearRuleSlot(slot, [], []);
        this.slots.release(slot);
      }
      this.sweepSrcPrefixes(new Set([...this.ruleKernel.values()].map((k) => k.slot)));
      this.dp.rebuildPortIndex();
      this.log.info({ rules: stored.rules.length, links: stored.links.length, orphans: orphans.length }, 'restored');
    });
  }

  /**
   * Follow interface churn: interfaces that disappeared are reported in the
   * status of what uses them; when one comes back (same name, new ifindex)
   * the rules and links on it are written again and the program re-attached.
   * Returns the names of missing interfaces.
   */
  resync(): Promise<string[]> {
    return this.serial(async () => {
      const missing = new Set<string>();
      // Once per name per pass: this runs every second, and every rule names its interfaces.
      const seen = new Map<string, number | undefined>();
      const now = (name: string) => {
        if (!seen.has(name)) seen.set(name, this.dp.lookupInterface(name)?.ifindex);
        const ifindex = seen.get(name);
        if (ifindex === undefined) missing.add(name);
        return ifindex;
      };
      // Attachments die with their device: forget them so they are redone.
      for (const [name, a] of this.attached) if (now(name) !== a.ifindex) this.attached.delete(name);
      const ops: { name: string; next: RuleSpec }[] = [];
      // No allocation per rule when nothing changed (forEach, not for-of over
      // entries): with 10 000 rules the arrays this pass used to build were
      // ~15 MB of garbage every second.
      const gone: string[] = [];
      let moved = false;
      const check = (idx: number, i: string) => {
        const cur = now(i);
        if (cur === undefined) gone.push(i);
        else if (cur !== idx) moved = true;
      };
      this.ruleKernel.forEach((k, name) => {
        gone.length = 0;
        moved = false;
        k.ifindexes.forEach(check);
        if (gone.length) {
          k.status.warnings = [`interface(s) ${gone.join(', ')} missing: the rule is written again when they return`];
          return;
        }
        if (k.status.warnings.length) k.status.warnings = [];
        if (moved) {
          const { generation: _g, createTime: _c, updateTime: _u, ...spec } = this.rules.get(name)!;
          ops.push({ name, next: spec });
        }
      });
      if (ops.length) {
        this.log.info({ rules: ops.map((o) => o.name) }, 'interfaces changed: re-applying rules');
        await this.applyRuleOps(ops, 'resync', true);
      }
      // Links: every wanted direction must be in the kernel under today's ifindexes.
      const linkIfs = [...this.links.values()].flatMap((l) => [l.a, l.b]);
      const stale = [...this.links.values()].some((l) =>
        (l.direction === 'both'
          ? [
              [l.a, l.b],
              [l.b, l.a],
            ]
          : [[l.a, l.b]]
        ).some(([from, to]) => {
          const idx = now(from);
          return idx === undefined || this.linkDirs.get(idx)?.to !== to;
        }),
      );
      if (stale && linkIfs.every((i) => now(i) !== undefined)) {
        this.log.info({}, 'interfaces changed: re-applying links');
        await this.applyLinkSetLocked(new Map(this.links), 'links');
      }
      return [...missing].sort();
    });
  }

  private sweepSrcPrefixes(live: Set<number>): void {
    for (const k of this.dp.listSrcPrefixes()) if (!live.has(k.slot)) this.dp.deleteSrcPrefix(k);
  }

  /**
   * Make the kernel match the (empty or restored) desired state: remove
   * match entries and links nobody asked for.
   */
  reconcile(): void {
    this.reconcileEntries();
    this.dp.rebuildPortIndex();
  }

  private reconcileEntries(): void {
    const wanted = new Set<string>();
    for (const k of this.ruleKernel.values()) for (const m of k.matchKeys) wanted.add(matchId(m));
    for (const [k] of this.dp.listMatches()) if (!wanted.has(matchId(k))) this.dp.deleteMatch(k);
    for (const [from] of this.dp.listLinks()) if (!this.linkDirs.has(from)) this.dp.disconnect(from);
  }

  // ---- counters -----------------------------------------------------------

  /** One read of every counter the desired state has. */
  readCounters(): CounterSnapshot {
    const ruleIds: number[] = [];
    const backendIds: number[] = [];
    for (const k of this.ruleKernel.values()) {
      ruleIds.push(k.statsId);
      for (const b of k.backends.values()) backendIds.push(b.statsId);
    }
    const read = this.dp.readCounters(ruleIds, backendIds, [...this.linkDirs.keys()]);
    const zero = { matched: 0n, matchedBytes: 0n, redirected: 0n, redirectedBytes: 0n, filtered: 0n, noBackend: 0n };
    const rules: CounterSnapshot['rules'] = [];
    const backends: CounterSnapshot['backends'] = [];
    for (const name of [...this.ruleKernel.keys()].sort()) {
      const k = this.ruleKernel.get(name)!;
      rules.push({ name, ...zero, ...read.rules.get(k.statsId) });
      const spec = this.rules.get(name)!;
      for (const b of spec.backends) {
        const ids = k.backends.get(backendKey(b));
        const c = ids ? read.backends.get(ids.statsId) : undefined;
        backends.push({
          rule: name,
          ip: b.ip,
          interface: b.interface,
          packets: c?.packets ?? 0n,
          bytes: c?.bytes ?? 0n,
        });
      }
    }
    const links = [...this.linkDirs.entries()].map(([ifindex, d]) => {
      const c = read.links.get(ifindex);
      return { from: d.from, to: d.to, packets: c?.packets ?? 0n, bytes: c?.bytes ?? 0n };
    });
    links.sort((x, y) => x.from.localeCompare(y.from));
    return { time: this.now(), rules, backends, links, global: read.global };
  }

  /** Detach from every interface and forget (for --cleanup-on-exit). */
  detachAll(): void {
    for (const name of this.attached.keys()) {
      try {
        this.dp.detach(name);
      } catch (e) {
        this.log.warn({ err: e, ifname: name }, 'detach failed');
      }
    }
    this.attached.clear();
  }
}

/** Same link: for both directions the order of a and b carries no meaning. */
function sameLink(x: LinkSpec, y: LinkSpec): boolean {
  if (x.direction !== y.direction) return false;
  return x.direction === 'both' ? linkKey(x) === linkKey(y) : x.a === y.a && x.b === y.b;
}

function throwIfInvalid(v: FieldViolation[]): void {
  if (v.length) throw CoreError.invalid(v);
}

function checkGeneration(cur: RuleRecord, expected: number): void {
  if (expected !== 0 && expected !== cur.generation) {
    throw new CoreError(
      'conflict',
      `rule "${cur.name}" is at generation ${cur.generation}, not ${expected}: it changed since you read it`,
    );
  }
}

const SPEC_KEYS: (keyof RuleSpec)[] = [
  'name',
  'protocol',
  'port',
  'destination',
  'sourcePrefixes',
  'ingressInterfaces',
  'backends',
  'udpChecksum',
  'labels',
];

function sameSpec(a: RuleSpec, b: RuleSpec): boolean {
  return SPEC_KEYS.every((k) => JSON.stringify(a[k]) === JSON.stringify(b[k]));
}
