/**
 * Who is calling, for a handler whose answer depends on it (GetStatus's accepts_writes): the access middleware
 * (access.ts) puts the caller's identity and role on the call's context after its role check; a handler run
 * without it (a unit test) finds nothing and answers for no one in particular. Must not decide access: the
 * middleware does that, once.
 */
import type { Identity } from '../auth/identity.js';
import type { Role } from '../auth/policy.js';

export const CALLER = Symbol('xdpctl.caller');

/** The caller as the access middleware identified it. */
export interface Caller {
  identity: Identity;
  /** Its role by the policy; undefined: none. */
  role: Role | undefined;
  /** "x509-cn:viewer (mtls)", as denials name it. */
  who: string;
}

/** The caller of this call, or undefined outside the access middleware. */
export function callerOf(context: object | undefined): Caller | undefined {
  return (context as { [CALLER]?: Caller } | undefined)?.[CALLER];
}
