/**
 * A mode change at start never takes down what forwards. A restart with another --xdp-mode would switch
 * each adopted ingress to it, and the kernel cannot hold a native and a generic program on one device at
 * once, so the switch detaches and attaches (a few datagrams are lost while it happens: docs/architecture.md,
 * "A mode change at restart").
 * Worse, native mode changes what the ingress can redirect into: a native redirect into a veth is dropped
 * unless the veth's peer has NAPI (a native XDP program, or GRO switched on while up), where a generic one
 * is delivered (kernel drivers/net/veth.c veth_xdp_xmit; docs/kernel-notes.md). So before a start switches
 * an ingress that runs our program in generic mode to native, every egress it redirects into (the far end
 * of each link direction from it, each backend interface of each rule on it) is checked as a native
 * redirect target (Dataplane.redirectTarget, which with --fix-veth-peers repairs a peer first); when one
 * would drop, the ingress keeps generic mode, the mode it had, and its status says why.
 *
 * With --xdp-mode auto (native where the driver takes it, else generic), a program an earlier start attached
 * in generic mode (--xdp-mode generic) is kept in generic mode: auto does not switch what forwards, since the
 * switch drops what arrives while it happens. That is not silent: the interface's status and condition say
 * that it runs in generic mode, that it was kept and why, what a switch would meet (an egress that would
 * drop native redirects, a device without native XDP), and how to switch (a start with --xdp-mode native);
 * the log says it once per interface.
 */
import type { ExecContext } from './execute.js';
import type { LinkSpec } from './model.js';
import type { StoredState } from './store.js';

/**
 * The ingress interfaces that must keep generic mode at this start, with the reason its status shows
 * (state.keepMode). Nothing when the mode asked is not native.
 */
export async function modesToKeep(
  ctx: ExecContext,
  stored: Pick<StoredState, 'rules'> & { links: readonly LinkSpec[] },
): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  if (ctx.mode !== 'native' && ctx.mode !== 'auto') return out;
  const egresses = new Map<string, Set<string>>();
  const add = (from: string, to: string) => {
    if (!egresses.has(from)) egresses.set(from, new Set());
    egresses.get(from)!.add(to);
  };
  for (const l of stored.links) {
    add(l.a, l.b);
    if (l.direction === 'both') add(l.b, l.a);
  }
  for (const r of stored.rules) for (const i of r.ingressInterfaces) for (const b of r.backends) add(i, b.interface);
  for (const [from, tos] of egresses) {
    let x;
    try {
      x = ctx.dp.xdpStatus(from);
    } catch {
      continue; // not readable now: the attach reports it
    }
    if (!x || !x.ours || x.mode !== 'generic') continue;
    if (ctx.mode === 'auto') {
      out.set(from, await autoKeeps(ctx, from, tos));
      continue;
    }
    const drop: string[] = [];
    for (const to of tos) {
      if (!ctx.dp.lookupInterface(to)) continue; // missing: nothing forwards into it now
      // A check that cannot be made keeps the mode the program has (nothing switched on a guess).
      const r = await ctx.dp
        .redirectTarget(to, ctx.fixVethPeers)
        .catch((e: Error) => ({ ok: false, detail: `cannot check ${to}: ${e.message}` }));
      if (!r.ok) drop.push(r.detail ?? `${to} cannot take native XDP redirects`);
    }
    if (drop.length) {
      out.set(
        from,
        `native XDP refused (not switched at this start: native redirects from ${from} would be dropped, where ` +
          `generic ones are delivered: ${drop.join('; ')}); our program keeps running in generic mode, the mode ` +
          'it had',
      );
    }
  }
  return out;
}

/**
 * Why --xdp-mode auto keeps our program in generic mode on `from` (attached so by an earlier start), with what a
 * switch to native would meet there: a device without native XDP support, egresses that would drop native
 * redirects (checked without repairing anything).
 */
async function autoKeeps(ctx: ExecContext, from: string, tos: Iterable<string>): Promise<string> {
  const kept =
    'our program keeps running in generic mode, the mode an earlier start attached it in: --xdp-mode auto does ' +
    'not switch a program that forwards (the kernel holds one mode at a time: a switch detaches it for a moment ' +
    'and what arrives meanwhile is dropped)';
  const native = ctx.dp.nativeXdp?.(from);
  if (native && !native.supported) {
    // What auto would choose anyway: said as a fresh attach says it.
    return (
      `native XDP refused (${from} has no native XDP support: the kernel reports xdp-features: ` +
      `${native.features || 'none'}); our program keeps running in generic mode, the mode it had`
    );
  }
  const drop: string[] = [];
  for (const to of tos) {
    if (!ctx.dp.lookupInterface(to)) continue; // missing: nothing forwards into it now
    const r = await ctx.dp
      .redirectTarget(to, false)
      .catch((e: Error) => ({ ok: false, detail: `cannot check ${to}: ${e.message}` }));
    if (!r.ok) drop.push(r.detail ?? `${to} cannot take native XDP redirects`);
  }
  if (drop.length) {
    return (
      `${kept}; native mode would not forward here yet: native redirects from ${from} would be dropped, where ` +
      `generic ones are delivered: ${drop.join('; ')}`
    );
  }
  return `${kept}; a start with --xdp-mode native switches it`;
}
