/**
 * Network topologies for integration tests: "hosts" are network namespaces
 * whose eth0 is one end of a veth pair; the other end stays in the test's
 * own namespace, where the XDP program is attached (as on a real host whose
 * containers or VMs hang off veths/taps). Every name carries a per-run id so
 * that a leftover never collides with the next run; destroy() removes it all
 * and is safe to call twice.
 */
import { sh, shQuiet } from './env.js';

export interface Host {
  /** Role given by the test, e.g. "h1". */
  role: string;
  /** Network namespace name. */
  netns: string;
  /** The veth end in the test's namespace (where XDP runs). */
  hostIf: string;
  /** The address configured on eth0 in the namespace, if any. */
  ip?: string;
  /** MAC of eth0 in the namespace. */
  mac: string;
  /** MAC of the host-side end. */
  hostMac: string;
}

export class Topology {
  readonly hosts = new Map<string, Host>();
  private destroyed = false;

  constructor(readonly id: string) {}

  /**
   * Add a host: netns xdpt-<id>-<role>, veth x<id><role> (host side) <-> eth0.
   * `cidr` like "198.18.0.1/24" goes on eth0.
   */
  addHost(role: string, cidr?: string): Host {
    const netns = `xdpt-${this.id}-${role}`;
    const hostIf = `x${this.id}${role}`;
    if (hostIf.length > 15) throw new Error(`interface name ${hostIf} too long`);
    sh('ip', ['netns', 'add', netns]);
    const host: Host = { role, netns, hostIf, mac: '', hostMac: '' };
    this.hosts.set(role, host);
    sh('ip', ['link', 'add', hostIf, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', netns]);
    sh('ip', ['link', 'set', hostIf, 'up']);
    // Whatever XDP passes to our stack must never be routed anywhere else.
    sh('sysctl', ['-qw', `net.ipv4.conf.${hostIf}.forwarding=0`]);
    sh('ip', ['-n', netns, 'link', 'set', 'lo', 'up']);
    sh('ip', ['-n', netns, 'link', 'set', 'eth0', 'up']);
    if (cidr) {
      sh('ip', ['-n', netns, 'addr', 'add', cidr, 'dev', 'eth0']);
      host.ip = cidr.split('/')[0];
    }
    host.mac = JSON.parse(sh('ip', ['-n', netns, '-j', 'link', 'show', 'eth0']))[0].address;
    host.hostMac = JSON.parse(sh('ip', ['-j', 'link', 'show', hostIf]))[0].address;
    return host;
  }

  /** Delete a host's veth pair (the namespace stays). */
  unplug(role: string): void {
    sh('ip', ['link', 'del', this.host(role).hostIf]);
  }

  /**
   * Plug it back: same names and address, new ifindexes and MACs. `peerUp: false` leaves the host's
   * eth0 down (the caller brings it up), as when a container's side comes up a while after the host's.
   * `mac` gives the host's eth0 that MAC from its creation (no moment with another one).
   */
  replug(role: string, cidr?: string, { peerUp = true, mac = '' } = {}): Host {
    const h = this.host(role);
    const peer = ['name', 'eth0', ...(mac ? ['address', mac] : []), 'netns', h.netns];
    sh('ip', ['link', 'add', h.hostIf, 'type', 'veth', 'peer', ...peer]);
    return this.plugged(h, cidr, peerUp);
  }

  /**
   * Delete a host's veth pair and make it again at once (one `ip -batch`) with the same names, ifindexes and MACs
   * on both ends (eth0 keeps its ifindex in its namespace too), and its address: a new device pair that no name,
   * ifindex or MAC tells from the old one.
   */
  remake(role: string, cidr?: string): Host {
    const h = this.host(role);
    const index = JSON.parse(sh('ip', ['-j', 'link', 'show', h.hostIf]))[0].ifindex as number;
    const peerIndex = JSON.parse(sh('ip', ['-n', h.netns, '-j', 'link', 'show', 'eth0']))[0].ifindex as number;
    const input =
      `link del ${h.hostIf}\n` +
      `link add ${h.hostIf} index ${index} address ${h.hostMac} type veth ` +
      `peer name eth0 index ${peerIndex} address ${h.mac} netns ${h.netns}\n`;
    sh('ip', ['-batch', '-'], { input, stdio: ['pipe', 'pipe', 'pipe'] });
    return this.plugged(h, cidr, true);
  }

  /**
   * As {@link remake}, with `meanwhile` awaited between the deletion and the new pair: the device is missing
   * for as long as it takes (a reconciler pass can see it gone).
   */
  async remakeAfter(role: string, cidr: string | undefined, meanwhile: () => Promise<void>): Promise<Host> {
    const h = this.host(role);
    const index = JSON.parse(sh('ip', ['-j', 'link', 'show', h.hostIf]))[0].ifindex as number;
    const peerIndex = JSON.parse(sh('ip', ['-n', h.netns, '-j', 'link', 'show', 'eth0']))[0].ifindex as number;
    sh('ip', ['link', 'del', h.hostIf]);
    await meanwhile();
    sh('ip', [
      ...['link', 'add', h.hostIf, 'index', String(index), 'address', h.hostMac, 'type', 'veth'],
      ...['peer', 'name', 'eth0', 'index', String(peerIndex), 'address', h.mac, 'netns', h.netns],
    ]);
    return this.plugged(h, cidr, true);
  }

  /** A veth pair just made for `h`: up, not forwarding, its address on eth0, its MACs read. */
  private plugged(h: Host, cidr: string | undefined, peerUp: boolean): Host {
    sh('ip', ['link', 'set', h.hostIf, 'up']);
    sh('sysctl', ['-qw', `net.ipv4.conf.${h.hostIf}.forwarding=0`]);
    if (peerUp) sh('ip', ['-n', h.netns, 'link', 'set', 'eth0', 'up']);
    if (cidr) sh('ip', ['-n', h.netns, 'addr', 'add', cidr, 'dev', 'eth0']);
    h.mac = JSON.parse(sh('ip', ['-n', h.netns, '-j', 'link', 'show', 'eth0']))[0].address;
    h.hostMac = JSON.parse(sh('ip', ['-j', 'link', 'show', h.hostIf]))[0].address;
    return h;
  }

  host(role: string): Host {
    const h = this.hosts.get(role);
    if (!h) throw new Error(`no host ${role}`);
    return h;
  }

  /** Run a command inside a host's namespace (nsenter keeps our bpffs view). */
  exec(role: string, cmd: string, args: string[], opts: { input?: Uint8Array } = {}): string {
    const stdio = opts.input ? { stdio: ['pipe', 'pipe', 'pipe'] as ('pipe' | 'ignore')[], input: opts.input } : {};
    return sh('nsenter', [`--net=/run/netns/${this.host(role).netns}`, cmd, ...args], stdio);
  }

  /**
   * Send three raw frames out of a host's eth0 (broadcast, ethertype 0x88b5 for local experiments, 100 bytes of
   * payload) and count those that come back to it unchanged, until none comes for 1 s: what python3 printed.
   */
  reflectedFrames(role: string): string {
    return this.exec(role, 'python3', [
      '-c',
      [
        'import socket, select',
        's = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x88b5)); s.bind(("eth0", 0))',
        'f = b"\\xff" * 6 + b"\\x02\\x00\\x00\\x00\\x00\\x09\\x88\\xb5" + bytes(range(100))',
        'for i in range(3): s.send(f)',
        'n = 0',
        'while select.select([s], [], [], 1)[0]:',
        '    d, addr = s.recvfrom(2048)',
        '    if addr[2] != socket.PACKET_OUTGOING and d == f: n += 1',
        'print(n)',
      ].join('\n'),
    ]);
  }

  /**
   * Route everything from a host to a gateway MAC without any address on
   * our side: a static neighbour entry for a made-up gateway IP.
   */
  defaultRouteVia(role: string, gatewayIp: string, gatewayMac: string): void {
    const { netns } = this.host(role);
    sh('ip', ['-n', netns, 'neigh', 'replace', gatewayIp, 'lladdr', gatewayMac, 'dev', 'eth0', 'nud', 'permanent']);
    sh('ip', ['-n', netns, 'route', 'replace', 'default', 'via', gatewayIp, 'dev', 'eth0', 'onlink']);
  }

  /**
   * Ping from a host; true when replies came back. The host's learned neighbours are flushed first
   * (static ones stay): an ARP entry that an earlier ping left INCOMPLETE retries only once a
   * second, which can fall outside this ping's short window and make a working path look dead.
   */
  ping(from: string, ip: string, count = 2): boolean {
    sh('ip', ['-n', this.host(from).netns, 'neigh', 'flush', 'all']);
    try {
      this.exec(from, 'ping', ['-c', String(count), '-i', '0.2', '-W', '1', '-q', ip]);
      return true;
    } catch {
      return false;
    }
  }

  /** One ping from a host with Don't Fragment set and `size` bytes of payload; true when it was answered. */
  pingDf(from: string, ip: string, size: number): boolean {
    try {
      this.exec(from, 'ping', ['-c', '1', '-W', '1', '-M', 'do', '-s', String(size), ip]);
      return true;
    } catch {
      return false;
    }
  }

  /**
   * Make a host a UDP client that sends everything to our veth: a default
   * route through a made-up gateway resolved to the veth's MAC. Offloads stay
   * as a new veth has them (TX checksum offload on: its datagrams carry partial
   * checksums, docs/kernel-notes.md, trap 4), which the product must handle.
   */
  routeToXdp(role: string): void {
    this.defaultRouteVia(role, '198.18.1.254', this.host(role).hostMac);
  }

  /**
   * The two hosts a rule test starts from: "vm" (198.18.1.1/24), a UDP client sending everything to our veth
   * ({@link routeToXdp}), and "b1" (198.18.2.1/24), a backend.
   */
  clientAndBackend(): { vm: Host; b1: Host } {
    const vm = this.addHost('vm', '198.18.1.1/24');
    const b1 = this.addHost('b1', '198.18.2.1/24');
    this.routeToXdp('vm');
    return { vm, b1 };
  }

  /** A counter of a host's /proc/net/snmp, e.g. ("Udp", "InCsumErrors"). */
  snmp(role: string, group: string, name: string): number {
    const lines = this.exec(role, 'cat', ['/proc/net/snmp'])
      .split('\n')
      .filter((l) => l.startsWith(`${group}:`));
    const names = lines[0].split(/\s+/);
    const values = lines[1].split(/\s+/);
    return Number(values[names.indexOf(name)]);
  }

  /** Delete everything this topology made (idempotent). */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    for (const h of this.hosts.values()) {
      shQuiet('ip', ['link', 'del', h.hostIf]);
      shQuiet('ip', ['netns', 'del', h.netns]);
    }
  }
}
