/**
 * Roles and who holds them. `read-only` may call Get/List/Watch, status and
 * reflection; `admin` may also change rules and links. Health checks need no
 * role. Roles come from allow-lists in the daemon's auth file
 * (`xdpctld --auth-config`), or from the default policy without one. The file
 * is validated whole at start; every problem is reported with its path.
 *
 *   # /etc/xdpctl/auth.yaml
 *   admin:
 *     - spiffe://example.org/ns/net/sa/xdpctl-controller
 *     - unix-uid:0
 *     - unix-group:netadmin
 *   readOnly:
 *     - spiffe://example.org/ns/monitoring/*     # every ID under this path
 *     - x509-cn:grafana
 *     - unix-user:prometheus
 *     - anonymous                                # plaintext or certificate-less TLS clients
 *
 * Pure: the user database is passed in (see {@link readUserDb}).
 */
import { readFileSync } from 'node:fs';

import { yaml } from '../../shared/yaml-lazy.js';

import { spiffeIdProblem, type Identity } from './identity.js';
import { readRegularFileSync } from '../regular-file.js';

/** What an RPC needs. `public`: anyone who can connect (health checks). */
export type Role = 'public' | 'read-only' | 'admin';

const RANK: Record<Role, number> = { public: 0, 'read-only': 1, admin: 2 };

/** Whether `held` (undefined: no role) satisfies `needed`. */
export function roleSatisfies(held: Role | undefined, needed: Role): boolean {
  return needed === 'public' || (held !== undefined && RANK[held] >= RANK[needed]);
}

/** Users and groups as /etc/passwd and /etc/group list them. */
export interface UserDb {
  uidByName: Map<string, number>;
  primaryGidByUid: Map<number, number>;
  nameByUid: Map<number, string>;
  gidByGroup: Map<string, number>;
  /** Supplementary members (user names) by gid. */
  membersByGid: Map<number, Set<string>>;
}

/** Parse passwd and group files (no NSS: LDAP or sssd users must be named by uid/gid). */
export function parseUserDb(passwd: string, group: string): UserDb {
  const db: UserDb = {
    uidByName: new Map(),
    primaryGidByUid: new Map(),
    nameByUid: new Map(),
    gidByGroup: new Map(),
    membersByGid: new Map(),
  };
  for (const line of passwd.split('\n')) {
    const f = line.split(':');
    if (f.length < 4 || line.startsWith('#')) continue;
    const uid = Number(f[2]);
    const gid = Number(f[3]);
    if (!Number.isInteger(uid) || !Number.isInteger(gid)) continue;
    db.uidByName.set(f[0], uid);
    if (!db.nameByUid.has(uid)) db.nameByUid.set(uid, f[0]);
    if (!db.primaryGidByUid.has(uid)) db.primaryGidByUid.set(uid, gid);
  }
  for (const line of group.split('\n')) {
    const f = line.split(':');
    if (f.length < 4 || line.startsWith('#')) continue;
    const gid = Number(f[2]);
    if (!Number.isInteger(gid)) continue;
    db.gidByGroup.set(f[0], gid);
    const members = db.membersByGid.get(gid) ?? new Set<string>();
    for (const m of f[3].split(',')) if (m.trim()) members.add(m.trim());
    db.membersByGid.set(gid, members);
  }
  return db;
}

export function readUserDb(passwd = '/etc/passwd', group = '/etc/group'): UserDb {
  const read = (p: string) => {
    try {
      return readFileSync(p, 'utf8');
    } catch {
      return '';
    }
  };
  return parseUserDb(read(passwd), read(group));
}

/** One allow-list entry, resolved. */
export type Grant =
  | { type: 'spiffe'; id: string; prefix: boolean }
  | { type: 'x509-cn'; cn: string }
  | { type: 'unix-uid'; uid: number }
  | { type: 'unix-gid'; gid: number }
  | { type: 'anonymous' };

/** The parsed auth file: grants per role. */
export interface AuthConfig {
  admin: Grant[];
  readOnly: Grant[];
}

export class AuthConfigError extends Error {
  override readonly name = 'AuthConfigError';
  constructor(
    readonly file: string,
    readonly problems: string[],
  ) {
    super(`auth config ${file}: ${problems.join('; ')}`);
  }
}

const MAX_ID = 0xffff_fffe;

/** Parse one entry; returns a problem text instead when it is not valid. */
export function parseGrant(entry: unknown, db: UserDb): Grant | string {
  if (typeof entry !== 'string') return `must be a string, not ${entry === null ? 'null' : typeof entry}`;
  const e = entry.trim();
  if (e === 'anonymous') return { type: 'anonymous' };
  if (e.startsWith('spiffe://')) {
    const prefix = e.endsWith('/*');
    const id = prefix ? e.slice(0, -2) : e;
    const problem = spiffeIdProblem(id);
    return problem ? `"${e}": SPIFFE ID ${problem}` : { type: 'spiffe', id, prefix };
  }
  const colon = e.indexOf(':');
  const kind = colon < 0 ? e : e.slice(0, colon);
  const value = colon < 0 ? '' : e.slice(colon + 1);
  const num = (v: string) => (/^\d+$/.test(v) && Number(v) <= MAX_ID ? Number(v) : undefined);
  switch (kind) {
    case 'x509-cn':
      return value ? { type: 'x509-cn', cn: value } : `"${e}": x509-cn needs a name (x509-cn:alice)`;
    case 'unix-uid': {
      const uid = num(value);
      return uid === undefined ? `"${e}": unix-uid needs a number (unix-uid:0)` : { type: 'unix-uid', uid };
    }
    case 'unix-gid': {
      const gid = num(value);
      return gid === undefined ? `"${e}": unix-gid needs a number (unix-gid:0)` : { type: 'unix-gid', gid };
    }
    case 'unix-user': {
      const uid = db.uidByName.get(value);
      return uid === undefined ? `"${e}": no user "${value}" in /etc/passwd` : { type: 'unix-uid', uid };
    }
    case 'unix-group': {
      const gid = db.gidByGroup.get(value);
      return gid === undefined ? `"${e}": no group "${value}" in /etc/group` : { type: 'unix-gid', gid };
    }
    default:
      return (
        `"${e}" is not an identity: use spiffe://TRUST-DOMAIN/PATH (or .../*), x509-cn:NAME, ` +
        'unix-uid:N, unix-user:NAME, unix-gid:N, unix-group:NAME or anonymous'
      );
  }
}

/** Parse and validate the text of an auth file; throws AuthConfigError listing every problem. */
export function parseAuthConfig(text: string, file: string, db: UserDb): AuthConfig {
  const doc = yaml().parseDocument(text, { prettyErrors: false, uniqueKeys: true });
  if (doc.errors.length)
    throw new AuthConfigError(
      file,
      doc.errors.map((e) => `YAML: ${e.message}`),
    );
  const root: unknown = doc.toJS();
  if (typeof root !== 'object' || root === null || Array.isArray(root)) {
    throw new AuthConfigError(file, ['must be a mapping with "admin" and/or "readOnly" lists']);
  }
  const problems: string[] = [];
  const out: AuthConfig = { admin: [], readOnly: [] };
  const obj = root as Record<string, unknown>;
  for (const key of Object.keys(obj)) {
    if (key !== 'admin' && key !== 'readOnly') problems.push(`${key}: unknown key (expected admin, readOnly)`);
  }
  if (!('admin' in obj) && !('readOnly' in obj)) {
    problems.push('grants no role: list identities under "admin" and/or "readOnly"');
  }
  for (const key of ['admin', 'readOnly'] as const) {
    if (!(key in obj)) continue;
    const list = obj[key];
    if (list === null) continue; // "admin:" with nothing under it: an empty list
    if (!Array.isArray(list)) {
      problems.push(`${key}: must be a list of identities`);
      continue;
    }
    list.forEach((entry, i) => {
      const g = parseGrant(entry, db);
      if (typeof g === 'string') problems.push(`${key}[${i}]: ${g}`);
      else out[key].push(g);
    });
  }
  if (problems.length) throw new AuthConfigError(file, problems);
  return out;
}

export function loadAuthConfig(file: string, db: UserDb = readUserDb()): AuthConfig {
  let text: string;
  try {
    text = readRegularFileSync(file).toString('utf8');
  } catch (e) {
    throw new AuthConfigError(file, [`cannot read: ${(e as Error).message}`]);
  }
  return parseAuthConfig(text, file, db);
}

/** Whether a grant matches an identity. Group grants match the peer's gid, primary gid or membership. */
export function grantMatches(g: Grant, id: Identity, db: UserDb): boolean {
  switch (g.type) {
    case 'anonymous':
      return id.kind === 'anonymous';
    case 'spiffe':
      return id.kind === 'spiffe' && (g.prefix ? id.principal.startsWith(`${g.id}/`) : id.principal === g.id);
    case 'x509-cn':
      return id.kind === 'x509-cn' && id.principal === `x509-cn:${g.cn}`;
    case 'unix-uid':
      return id.kind === 'unix' && id.uid === g.uid;
    case 'unix-gid': {
      if (id.kind !== 'unix' || id.uid === undefined) return false;
      if (id.gid === g.gid || db.primaryGidByUid.get(id.uid) === g.gid) return true;
      const name = db.nameByUid.get(id.uid);
      return name !== undefined && (db.membersByGid.get(g.gid)?.has(name) ?? false);
    }
  }
}

/** Options of the default policy (no auth file). */
export interface DefaultPolicyOptions {
  /** The daemon's own uid (admin besides root). */
  selfUid: number;
  /** The Unix socket's group (--socket-group): its members get read-only. */
  socketGid?: number;
}

/**
 * Without an auth file: local root and the daemon's own uid are admin; the
 * socket group's members are read-only; a client certificate verified by
 * --tls-client-ca is read-only (the CA vouches for it, but changing the
 * host's forwarding takes an explicit grant); anonymous callers and other
 * local users get no role. Health checks stay open to all.
 */
export function defaultAuthConfig(o: DefaultPolicyOptions): AuthConfig {
  const admin: Grant[] = [{ type: 'unix-uid', uid: 0 }];
  if (o.selfUid !== 0) admin.push({ type: 'unix-uid', uid: o.selfUid });
  const readOnly: Grant[] = [];
  if (o.socketGid !== undefined) readOnly.push({ type: 'unix-gid', gid: o.socketGid });
  return { admin, readOnly };
}

/** Decides the role of an identity. */
export class Policy {
  constructor(
    private cfg: AuthConfig,
    private db: UserDb,
    /** Grant read-only to every verified certificate identity (the default policy). */
    private readonly certificatesReadOnly = false,
  ) {}

  get config(): AuthConfig {
    return this.cfg;
  }

  /** Take a new allow-list (--auth-config read again on SIGHUP) and the user database it was resolved with. */
  replace(config: AuthConfig, db: UserDb): void {
    this.cfg = config;
    this.db = db;
  }

  roleOf(id: Identity): Role | undefined {
    if (this.cfg.admin.some((g) => grantMatches(g, id, this.db))) return 'admin';
    if (this.cfg.readOnly.some((g) => grantMatches(g, id, this.db))) return 'read-only';
    if (this.certificatesReadOnly && (id.kind === 'spiffe' || id.kind === 'x509-cn')) return 'read-only';
    return undefined;
  }
}

/** A group given by name or number, as its gid; throws naming the flag when unknown. */
export function resolveGroup(spec: string, db: UserDb, flag = '--socket-group'): number {
  if (/^\d+$/.test(spec) && Number(spec) <= MAX_ID) return Number(spec);
  const gid = db.gidByGroup.get(spec);
  if (gid === undefined) throw new Error(`${flag}: no group "${spec}" in /etc/group`);
  return gid;
}
