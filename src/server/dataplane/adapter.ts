/**
 * The real Dataplane for the core: XdpDatapath + tables + netdev behind the
 * interface in core/dataplane.ts.
 */
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';

import type {
  CounterRead,
  Dataplane,
  InterfaceInfo,
  LinkState,
  RuleSlotWrite,
  XdpModeName,
  XdpStatus,
} from '../core/dataplane.js';
import { NO_BACKEND, RING_SIZE, sumCounters, type MatchKey, type SrcKey } from './codec.js';
import type { XdpDatapath } from './datapath.js';
import { KernelError } from './errors.js';
import {
  ensureVethPeerNapi,
  ifindexOf,
  linkState,
  lowerDevices,
  macOf,
  neighbourMac,
  probeNeighbour,
  restoreGro,
  type GroChange,
} from './netdev.js';
import * as tables from './tables.js';

/** How long a passed veth-peer check is trusted for the same interface (name and ifindex). */
export const PEER_CHECK_TTL_MS = 10_000;

export class KernelDataplane implements Dataplane {
  readonly ringSize = RING_SIZE;
  readonly noBackend = NO_BACKEND;

  /** What the datapath cannot observe (the tracepoint programs did not attach). */
  get warnings(): readonly string[] {
    return this.dp.traceWarning ? [this.dp.traceWarning] : [];
  }
  /**
   * Passed veth-peer checks: "name#ifindex" -> until when. The check runs
   * `ip` and `ethtool` (~5 ms each); without this, a rule change paid it for
   * every backend, and ApplyRules of 10 000 rules x 4 backends ran 160 000
   * processes. A recreated interface has a new ifindex and is checked again;
   * a failed check is never cached.
   */
  private readonly peerOk = new Map<string, number>();

  /**
   * Device settings this daemon (or an earlier one with the same file)
   * changed: GRO switched on on veth peers. Kept in `hostChangesFile` when
   * given, so that --cleanup-on-exit can put them back after a restart too.
   */
  private readonly groChanges: GroChange[] = [];

  constructor(
    readonly dp: XdpDatapath,
    private readonly peerCheckTtlMs = PEER_CHECK_TTL_MS,
    private readonly hostChangesFile?: string,
  ) {
    if (hostChangesFile && existsSync(hostChangesFile)) {
      try {
        const saved = JSON.parse(readFileSync(hostChangesFile, 'utf8')) as { gro?: GroChange[] };
        this.groChanges.push(...(saved.gro ?? []));
      } catch {
        // unreadable: nothing to restore from it (the file is rewritten on the next change)
      }
    }
  }

  private recordGro(c: GroChange): void {
    if (this.groChanges.some((x) => x.ifname === c.ifname && x.netns === c.netns && x.ifindex === c.ifindex)) return;
    this.groChanges.push(c);
    this.saveHostChanges();
  }

  private saveHostChanges(): void {
    if (!this.hostChangesFile) return;
    const tmp = `${this.hostChangesFile}.tmp`;
    writeFileSync(tmp, `${JSON.stringify({ gro: this.groChanges })}\n`, { mode: 0o600 });
    renameSync(tmp, this.hostChangesFile);
  }

  /**
   * --cleanup-on-exit: detach our program from every interface (uppers
   * before lowers) and put back every device setting we changed. Returns
   * what could not be undone.
   */
  async cleanupHost(): Promise<{ detached: string[]; restored: string[]; failed: string[] }> {
    const d = this.dp.detachEverywhere();
    const restored: string[] = [];
    const failed = d.failed.map((f) => `detach ${f.ifname}: ${f.error}`);
    for (const c of this.groChanges.splice(0)) {
      const where = c.netns ? `${c.ifname} in netns ${c.netns}` : c.ifname;
      try {
        restored.push(`${where}: ${await restoreGro(c)}`);
      } catch (e) {
        failed.push(`restore GRO on ${where}: ${(e as Error).message}`);
        this.groChanges.push(c);
      }
    }
    this.saveHostChanges();
    return { detached: d.detached, restored, failed };
  }

  get capacity() {
    return this.dp.capacity;
  }

  get progId(): number {
    return this.dp.progId;
  }

  get pinRoot(): string {
    return this.dp.options.pinRoot;
  }

  lookupInterface(name: string): InterfaceInfo | undefined {
    try {
      return { name, ifindex: ifindexOf(name), mac: macOf(name) };
    } catch (e) {
      if (e instanceof KernelError && e.kind === 'not-found') return undefined;
      throw e;
    }
  }

  neighbourMac(ip: string, iface: string): Promise<string | undefined> {
    return neighbourMac(ip, iface);
  }

  /** Why an interface runs in another mode than asked, by name#ifindex (from the last attach). */
  private readonly attachWarnings = new Map<string, string[]>();

  attach(ifname: string, mode: XdpModeName): XdpStatus {
    const r = this.dp.attach(ifname, mode);
    const key = `${ifname}#${r.ifindex}`;
    if (r.warnings.length) this.attachWarnings.set(key, r.warnings);
    else if (r.mode === mode || r.mode === 'native') this.attachWarnings.delete(key);
    return { mode: r.mode, progId: r.progId, ours: true, warnings: this.attachWarnings.get(key) ?? [] };
  }

  detach(ifname: string): void {
    this.dp.detach(ifname);
  }

  lowerDevices(ifname: string): string[] {
    return lowerDevices(ifname);
  }

  linkState(ifname: string): LinkState | undefined {
    return linkState(ifname);
  }

  /** At most one probe per neighbour per second. */
  private readonly probed = new Map<string, number>();

  probeNeighbour(ip: string, iface: string): void {
    const key = `${ip}@${iface}`;
    const t = Date.now();
    if ((this.probed.get(key) ?? 0) > t) return;
    this.probed.set(key, t + 1000);
    if (this.probed.size > 4096) this.probed.clear();
    probeNeighbour(ip, iface);
  }

  xdpStatus(ifname: string): XdpStatus | undefined {
    try {
      const s = this.dp.state(ifname);
      const w = s.ours && s.mode === 'generic' ? this.attachWarnings.get(`${ifname}#${s.ifindex}`) : undefined;
      return { mode: s.mode, progId: s.progId, ours: s.ours, warnings: w ?? [] };
    } catch (e) {
      if (e instanceof KernelError && e.kind === 'not-found') return undefined;
      throw e;
    }
  }

  async redirectTarget(ifname: string, fix: boolean): Promise<{ ok: boolean; detail?: string }> {
    let key = '';
    try {
      key = `${ifname}#${ifindexOf(ifname)}`;
    } catch {
      /* no such interface: the check below says so */
    }
    if ((this.peerOk.get(key) ?? 0) > Date.now()) return { ok: true, detail: 'checked recently' };
    const s = await ensureVethPeerNapi(ifname, fix);
    if (s.fixed && s.peer && s.peerIfindex) this.recordGro({ ifname: s.peer, netns: s.netns, ifindex: s.peerIfindex });
    if (s.ok && key && this.peerCheckTtlMs > 0) this.peerOk.set(key, Date.now() + this.peerCheckTtlMs);
    else this.peerOk.delete(key);
    return { ok: s.ok, detail: s.detail };
  }

  writeRuleSlot(c: RuleSlotWrite): void {
    tables.writeRuleSlot(this.dp.maps, c);
  }

  clearRuleSlot(slot: number, srcPrefixes: { length: number; addr: Uint8Array }[], backendIds: number[]): void {
    tables.clearRuleSlot(this.dp.maps, slot, srcPrefixes, backendIds);
  }

  putMatch(key: MatchKey, slot: number): void {
    tables.publishMatches(this.dp.maps, [key], slot);
  }

  deleteMatch(key: MatchKey): void {
    tables.removeMatches(this.dp.maps, [key]);
  }

  listMatches(): [MatchKey, number][] {
    return [...this.dp.maps.ruleMatch.entries()];
  }

  rebuildPortIndex(): void {
    tables.rebuildPortUse(this.dp.maps);
  }

  listSrcPrefixes(): SrcKey[] {
    return [...this.dp.maps.srcAllow.keys()];
  }

  deleteSrcPrefix(key: SrcKey): void {
    this.dp.maps.srcAllow.delete(key);
  }

  readRing(slot: number): number[] {
    const out: number[] = [];
    for (let i = 0; i < RING_SIZE; i++) out.push(this.dp.maps.ruleRing.get(slot * RING_SIZE + i) ?? NO_BACKEND);
    return out;
  }

  resetRuleStats(statsId: number): void {
    tables.resetRuleStats(this.dp.maps, statsId);
  }

  resetBackendStats(statsId: number): void {
    tables.resetBackendStats(this.dp.maps, statsId);
  }

  connect(from: number, to: number): boolean {
    return tables.connectDirection(this.dp.maps, from, to);
  }

  disconnect(from: number): void {
    tables.disconnectDirection(this.dp.maps, from);
  }

  listLinks(): [number, number][] {
    return [...this.dp.maps.xcLinks.entries()];
  }

  resetLinkStats(from: number): void {
    this.dp.maps.xcStats.delete(from);
  }

  readCounters(ruleStatsIds: number[], backendStatsIds: number[], linkFroms: number[]): CounterRead {
    const m = this.dp.maps;
    const rules = new Map(ruleStatsIds.map((id) => [id, sumCounters(m.ruleStats.getPerCpu(id) ?? [])]));
    const backends = new Map(backendStatsIds.map((id) => [id, sumCounters(m.backendStats.getPerCpu(id) ?? [])]));
    const links = new Map(
      linkFroms.map((id) => [
        id,
        sumCounters(m.xcStats.getPerCpu(id) ?? [{ packets: 0n, bytes: 0n, redirectErrors: 0n }]),
      ]),
    );
    return { rules, backends, links, global: tables.globalCounters(m) };
  }
}
