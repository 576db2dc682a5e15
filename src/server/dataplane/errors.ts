/**
 * Typed errors for everything that touches the kernel. Every libbpf or system
 * call failure becomes a {@link KernelError} at its call site, carrying the
 * operation ("attach xdp to veth3"), the errno name ("EBUSY") and, for program
 * loads, the verifier log. Mapping to gRPC status happens elsewhere (once).
 */
import { constants } from 'node:os';

import { PortError, type ErrorKind } from '../core/errors.js';

export type { ErrorKind } from '../core/errors.js';

const ERRNO_NAMES = new Map<number, string>();
for (const [name, value] of Object.entries(constants.errno)) {
  if (!ERRNO_NAMES.has(value)) ERRNO_NAMES.set(value, name);
}
// Kernel-internal codes that leak out of the bpf() syscall and have no libc name.
const KERNEL_ONLY: Record<number, [string, string]> = {
  512: ['ERESTARTSYS', 'interrupted, restart'],
  524: ['ENOTSUPP', 'operation not supported by this map or program type'],
};

/** The symbolic name of an errno ("ENOENT"), or "E<n>" when unknown. */
export function errnoName(errno: number): string {
  return KERNEL_ONLY[errno]?.[0] ?? ERRNO_NAMES.get(errno) ?? `E${errno}`;
}

/** A short lower-case description of an errno, as strerror would give it. */
export function errnoText(errno: number): string {
  const known = KERNEL_ONLY[errno];
  if (known) return known[1];
  const name = ERRNO_NAMES.get(errno);
  const text = name ? DESCRIPTIONS[name] : undefined;
  return text ?? `error ${errno}`;
}

// Descriptions of the errnos libbpf and the kernel return in practice.
const DESCRIPTIONS: Record<string, string> = {
  EPERM: 'operation not permitted',
  ENOENT: 'no such file or entry',
  ESRCH: 'no such process',
  EINTR: 'interrupted system call',
  EIO: 'input/output error',
  ENXIO: 'no such device or address',
  E2BIG: 'argument list too long',
  EBADF: 'bad file descriptor',
  EAGAIN: 'resource temporarily unavailable',
  ENOMEM: 'out of memory',
  EACCES: 'permission denied',
  EFAULT: 'bad address',
  EBUSY: 'device busy',
  EEXIST: 'already exists',
  ENODEV: 'no such device',
  ENOTDIR: 'not a directory',
  EINVAL: 'invalid argument',
  ENOSPC: 'no space left (map full)',
  ERANGE: 'result out of range',
  ENOSYS: 'function not implemented',
  ENOTSUP: 'operation not supported',
  EOPNOTSUPP: 'operation not supported',
  EADDRNOTAVAIL: 'address not available',
  ENETDOWN: 'network is down',
  ELOOP: 'too many levels of symbolic links',
};

/** The kind of failure an errno stands for. */
export function errnoKind(errno: number): ErrorKind {
  switch (errnoName(errno)) {
    case 'ENOENT':
    case 'ENODEV':
    case 'ENXIO':
      return 'not-found';
    case 'EEXIST':
      return 'exists';
    case 'EBUSY':
    case 'EAGAIN':
      return 'busy';
    case 'EINVAL':
    case 'ERANGE':
      return 'invalid';
    case 'E2BIG':
    case 'ENOSPC':
    case 'ENOMEM':
      return 'exhausted';
    case 'ENOTSUPP':
    case 'ENOTSUP':
    case 'EOPNOTSUPP':
    case 'ENOSYS':
      return 'unsupported';
    case 'EPERM':
    case 'EACCES':
      return 'permission';
    default:
      return 'internal';
  }
}

/** A failed kernel or libbpf operation. */
export class KernelError extends PortError {
  override readonly name = 'KernelError';
  /** What was attempted, "verb object" ("update map rule_cfg"). */
  readonly op: string;
  /** Positive errno. */
  readonly errno: number;
  /** Symbolic errno ("EBUSY"). */
  readonly code: string;
  /** The libbpf/verifier log lines captured during the call, if any. */
  readonly log: readonly string[];

  /** Whether the cause named in the message was observed (see PortError.causeObserved). */
  override readonly causeObserved: boolean;

  constructor(op: string, errno: number, log: readonly string[] = [], detail?: string, causeObserved = false) {
    const code = errnoName(errno);
    super(`${op}: ${detail ?? errnoText(errno)} (${code})`);
    this.op = op;
    this.errno = errno;
    this.code = code;
    this.log = log;
    this.causeObserved = causeObserved;
  }

  get kind(): ErrorKind {
    return errnoKind(this.errno);
  }
}

/** A precondition of the datapath that is not met (e.g. a veth peer without NAPI). */
export class PreconditionError extends Error {
  override readonly name = 'PreconditionError';
  constructor(
    message: string,
    /** The interface concerned. */
    readonly iface: string,
  ) {
    super(message);
  }
}
