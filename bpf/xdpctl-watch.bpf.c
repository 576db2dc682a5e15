// SPDX-License-Identifier: GPL-2.0-only
/*
 * Writes into the daemon's rule entries (rule_cfg), backend tables
 * (rule_ring) and backend entries (backends) through the bpf() system call,
 * and writable mappings of rule_ring by other processes, told to the slot
 * watcher (src/server/dataplane/slot-watch*.ts) instead of its reading every
 * slot over and over. Three syscall tracepoints (each runs only on its own
 * system call, never on the others):
 *  - syscalls:sys_enter_bpf notes a BPF_MAP_UPDATE_ELEM or _BATCH into one of
 *    the three maps (its descriptor resolved to the map's id through the
 *    caller's file table), and syscalls:sys_exit_bpf, once the kernel has
 *    written, bumps the counter of each rule slot (rule_ring: key /
 *    XDPCTL_RING_SIZE) or backend id written and the generation (watch_seen).
 *    Every process's writes, ours included: bpftool map update, libbpf.
 *  - syscalls:sys_enter_mmap: a store into mapped pages calls no kernel code,
 *    so a write through an mmap of rule_ring (BPF_F_MMAPABLE; the daemon writes
 *    its own tables so) cannot be seen; what is seen is another process
 *    mapping it writable: its process id is recorded, and the watcher reads
 *    rule_ring as before while that process lives.
 * Not seen, left to the watcher's slow read of everything: bpf_map_update_elem
 * called by a BPF program; a mapping made before these programs were attached,
 * inherited through fork or made through io_uring; a batch of more than
 * WATCH_BATCH_KEYS keys (then the overflow counter says "read everything").
 * fentry/fexit on array_map_update_elem would see the first, but this kernel
 * refuses to load fentry/fexit/LSM programs (EPERM, lockdown=integrity), and
 * has no kprobes.
 *
 * Nothing here writes the watched maps, decides or repairs: user space
 * compares what a counter says moved.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

#include "xdpctl.h"

struct bpf_map {
	__u32 id;
} __attribute__((preserve_access_index));

struct qstr {
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct qstr d_name;
} __attribute__((preserve_access_index));

struct path {
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	struct files_struct *files;
} __attribute__((preserve_access_index));

/* The name of every BPF map descriptor's file ("anon_inode:bpf-map" in
 * /proc/PID/fd; kernel/bpf/syscall.c). Its file operations (bpf_map_fops)
 * would say it as well, but this kernel's kallsyms has no data symbols. */
#define BPF_MAP_FILE_NAME 0x0070616d2d667062ULL /* "bpf-map\0", little endian */

#define PROT_WRITE 0x2
#define WATCH_BATCH_KEYS 256

/* Key 0, written by the loader after load (all zeros before: nothing matches):
 * the ids of the three maps watched, the counters' layout, and the pid
 * namespace (device and inode of /proc/self/ns/pid) and process id of the
 * daemon, whose own mappings are not reported. */
struct xdpctl_watch_cfg {
	__u32 cfg_id;
	__u32 ring_id;
	__u32 backends_id;
	__u32 slots;    /* counters of slots 0..slots-1 from WATCH_SLOT0 */
	__u32 backends; /* then of backend ids 0..backends-1 */
	__u32 tgid;
	__u64 pidns_dev;
	__u64 pidns_ino;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xdpctl_watch_cfg);
} watch_cfg SEC(".maps");

/* The counters the watcher reads through a mapping of its pages (it only
 * reads: a counter that differs from the value it saw last is a write since).
 * 0: generation, bumped after any counter below; 1: writes it could not name
 * (a batch of too many keys): read everything; 2: other processes' writable
 * mappings of rule_ring seen; 3..18: the process id of the last 16 of them (at
 * 3 + n % 16; 0: a process of another pid namespace); then one counter per
 * slot, then one per backend id. max_entries is set by the loader. */
#define WATCH_GEN 0
#define WATCH_OVERFLOW 1
#define WATCH_MMAP_GEN 2
#define WATCH_MMAP_TGID 3
#define WATCH_MMAP_TGIDS 16
#define WATCH_SLOT0 (WATCH_MMAP_TGID + WATCH_MMAP_TGIDS)

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, WATCH_SLOT0 + 1);
	__type(key, __u32);
	__type(value, __u64);
	__uint(map_flags, BPF_F_MMAPABLE);
} watch_seen SEC(".maps");

/* A write under way, between the enter and the exit of its bpf() call. */
struct watch_call {
	__u32 map; /* 0 rule_cfg, 1 rule_ring, 2 backends */
	__u32 batch;
	__u64 attr; /* the caller's union bpf_attr */
};

/* pid_tgid -> its write under way. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct watch_call);
} watch_calls SEC(".maps");

/* The syscall tracepoints' records (include/trace/events/syscalls.h; see
 * /sys/kernel/tracing/events/syscalls/<name>/format). */
struct sys_enter_args {
	__u64 common;
	__s64 nr;
	__u64 args[6];
};

struct sys_exit_args {
	__u64 common;
	__s64 nr;
	__s64 ret;
};

static __always_inline struct xdpctl_watch_cfg *config(void)
{
	__u32 zero = 0;
	struct xdpctl_watch_cfg *cfg = bpf_map_lookup_elem(&watch_cfg, &zero);

	return cfg && cfg->cfg_id ? cfg : 0;
}

static __always_inline void bump(__u32 k)
{
	__u64 *c = bpf_map_lookup_elem(&watch_seen, &k);

	if (c)
		__sync_fetch_and_add(c, 1);
}

/* The id of the BPF map the calling process holds at descriptor fd; 0: none. */
static __always_inline __u32 map_id_of(__u64 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = 0;
	struct bpf_map *map;
	const unsigned char *name;
	__u64 word = 0;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	name = BPF_CORE_READ(f, f_path.dentry, d_name.name);
	if (!name || bpf_probe_read_kernel(&word, sizeof(word), name) || word != BPF_MAP_FILE_NAME)
		return 0;
	map = BPF_CORE_READ(f, private_data);
	return BPF_CORE_READ(map, id);
}

SEC("tracepoint/syscalls/sys_enter_bpf")
int xdpctl_watch_bpf_enter(struct sys_enter_args *ctx)
{
	struct xdpctl_watch_cfg *cfg;
	struct watch_call call = {};
	__u64 cmd = ctx->args[0], attr = ctx->args[1], me;
	__u32 fd, id;

	if (cmd != BPF_MAP_UPDATE_ELEM && cmd != BPF_MAP_UPDATE_BATCH)
		return 0;
	cfg = config();
	if (!cfg || !attr)
		return 0;
	call.batch = cmd == BPF_MAP_UPDATE_BATCH;
	call.attr = attr;
	if (bpf_probe_read_user(&fd, sizeof(fd),
				(void *)(attr + (call.batch ? __builtin_offsetof(union bpf_attr, batch.map_fd)
							    : __builtin_offsetof(union bpf_attr, map_fd)))))
		return 0;
	id = map_id_of(fd);
	if (!id)
		return 0;
	if (id == cfg->cfg_id)
		call.map = 0;
	else if (id == cfg->ring_id)
		call.map = 1;
	else if (id == cfg->backends_id)
		call.map = 2;
	else
		return 0;
	me = bpf_get_current_pid_tgid();
	bpf_map_update_elem(&watch_calls, &me, &call, BPF_ANY);
	return 0;
}

/* The counter of key k of map m (as struct watch_call.map); 0: beyond those counted. */
static __always_inline __u32 counter_of(const struct xdpctl_watch_cfg *cfg, __u32 m, __u32 k)
{
	if (m == 2)
		return k < cfg->backends ? WATCH_SLOT0 + cfg->slots + k : 0;
	if (m == 1)
		k /= XDPCTL_RING_SIZE;
	return k < cfg->slots ? WATCH_SLOT0 + k : 0;
}

SEC("tracepoint/syscalls/sys_exit_bpf")
int xdpctl_watch_bpf_exit(struct sys_exit_args *ctx)
{
	struct xdpctl_watch_cfg *cfg;
	struct watch_call *call;
	__u64 me = bpf_get_current_pid_tgid(), keys;
	__u32 k, count, m, c, i;

	call = bpf_map_lookup_elem(&watch_calls, &me);
	if (!call)
		return 0;
	m = call->map;
	cfg = config();
	if (!cfg)
		goto out;
	if (!call->batch) {
		if (ctx->ret)
			goto out;
		if (bpf_probe_read_user(&keys, sizeof(keys), (void *)(call->attr + __builtin_offsetof(union bpf_attr, key))) ||
		    bpf_probe_read_user(&k, sizeof(k), (void *)keys)) {
			bump(WATCH_OVERFLOW);
		} else if ((c = counter_of(cfg, m, k))) {
			bump(c);
		}
		bump(WATCH_GEN);
		goto out;
	}
	/* A batch: the kernel wrote back how many elements it wrote (also on a failure part way). */
	if (bpf_probe_read_user(&count, sizeof(count),
				(void *)(call->attr + __builtin_offsetof(union bpf_attr, batch.count))) ||
	    bpf_probe_read_user(&keys, sizeof(keys), (void *)(call->attr + __builtin_offsetof(union bpf_attr, batch.keys))))
		count = WATCH_BATCH_KEYS + 1;
	if (!count)
		goto out;
	if (count > WATCH_BATCH_KEYS) {
		bump(WATCH_OVERFLOW);
	} else {
		for (i = 0; i < WATCH_BATCH_KEYS && i < count; i++) {
			if (bpf_probe_read_user(&k, sizeof(k), (void *)(keys + i * sizeof(__u32)))) {
				bump(WATCH_OVERFLOW);
				break;
			}
			c = counter_of(cfg, m, k);
			if (c)
				bump(c);
		}
	}
	bump(WATCH_GEN);
out:
	bpf_map_delete_elem(&watch_calls, &me);
	return 0;
}

SEC("tracepoint/syscalls/sys_enter_mmap")
int xdpctl_watch_mmap(struct sys_enter_args *ctx)
{
	struct bpf_pidns_info ns = {};
	struct xdpctl_watch_cfg *cfg;
	__u64 *n, *slot;
	__u32 k;

	if (!(ctx->args[2] & PROT_WRITE))
		return 0;
	cfg = config();
	if (!cfg || map_id_of(ctx->args[4]) != cfg->ring_id)
		return 0;
	/* Ours (the daemon maps windows of its tables to write them): not told.
	 * Another process of the daemon's pid namespace is named by its process
	 * id there; one of another namespace by 0 (the watcher cannot follow it). */
	if (bpf_get_ns_current_pid_tgid(cfg->pidns_dev, cfg->pidns_ino, &ns, sizeof(ns)))
		ns.tgid = 0;
	else if (ns.tgid == cfg->tgid)
		return 0;
	k = WATCH_MMAP_GEN;
	n = bpf_map_lookup_elem(&watch_seen, &k);
	if (!n)
		return 0;
	/* The process id first, then the count that makes the watcher read it
	 * (two mappings at once may name one of the two processes only: the
	 * watcher reads every table for a while after each mapping anyway). */
	k = WATCH_MMAP_TGID + (*n % WATCH_MMAP_TGIDS);
	slot = bpf_map_lookup_elem(&watch_seen, &k);
	if (slot)
		*slot = ns.tgid;
	__sync_fetch_and_add(n, 1);
	bump(WATCH_GEN);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
