/**
 * The pin root must be on a BPF filesystem (bpffs): only there can maps and
 * programs be pinned, and only pins let the datapath outlive the daemon.
 * Checked before anything is loaded, by the filesystem magic statfs(2)
 * reports (BPF_FS_MAGIC, <linux/magic.h>), so that a daemon started where
 * /sys/fs/bpf is a plain directory (`ip netns exec` remounts /sys; a
 * container run without the bpffs volume) stops at once with a message that
 * says what to do, instead of failing later or retrying forever.
 */
import { existsSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';

/** BPF_FS_MAGIC. */
export const BPF_FS_MAGIC = 0xcafe4a11;

/** The nearest existing directory at or above `path`. */
function existingAncestor(path: string): string {
  let dir = path;
  while (!existsSync(dir) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}

/** Throws (with what to do) unless `pinRoot`, or the directory it will be made in, is on bpffs. */
export function assertOnBpffs(pinRoot: string): void {
  const dir = existingAncestor(pinRoot);
  const type = statfsSync(dir).type;
  if (type === BPF_FS_MAGIC) return;
  throw new Error(
    `pin root ${pinRoot} is not on a bpffs: ${dir} is not a BPF filesystem (statfs type 0x${type.toString(16)}, ` +
      `bpffs is 0x${BPF_FS_MAGIC.toString(16)}), so it cannot hold pinned maps. Mount bpffs (mount -t bpf bpf /sys/fs/bpf), give a ` +
      "container the host's /sys/fs/bpf, or choose a --pin-root on bpffs. For one network namespace, start " +
      'xdpctld with nsenter --net=/run/netns/NAME rather than ip netns exec, which remounts /sys without bpffs',
  );
}
