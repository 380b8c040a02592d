// Users from a Dovecot-compatible passwd-file (`user:{SCHEME}hash[:uid:gid:gecos:home:shell:extra]`),
// mounted from a Secret and reloaded when it changes. A file that does not parse is refused as a
// whole and the last good one stays in force: half a users file would lock people out.
import { ReloadedFile, type MountedFileOptions } from '../config/reloaded-file.ts';
import { isValidUserName } from './user-name.ts';
import type { Scheme, StoredPassword } from './schemes.ts';
import { PasswordSchemeError, costClass, isPlainSecret, parseStoredPassword } from './schemes.ts';

export interface UserEntry {
  user: string;
  password: StoredPassword;
  /** Dovecot's extra fields (`userdb_mail=...`, `nologin`, ...), key -> value ('' when bare). */
  extra: Record<string, string>;
}

export class PasswdFileError extends Error {
  override readonly name = 'PasswdFileError';
}

/** Parse the whole file; throws PasswdFileError naming the line on the first mistake. */
export function parsePasswdFile(text: string, source: string, defaultScheme: Scheme = 'CRYPT'): Map<string, UserEntry> {
  const users = new Map<string, UserEntry>();
  const lines = text.split('\n');
  lines.forEach((raw, i) => {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    const where = `${source} line ${i + 1}`;
    if (line.trim() === '' || line.trimStart().startsWith('#')) return;
    const fields = line.split(':');
    if (fields.length < 2) throw new PasswdFileError(`${where}: expected user:{SCHEME}hash[:uid:gid:gecos:home:shell:extra fields]`);
    const user = fields[0] as string;
    if (!isValidUserName(user)) throw new PasswdFileError(`${where}: ${JSON.stringify(user)} is not a valid user name`);
    if (users.has(user)) throw new PasswdFileError(`${where}: user ${user} is listed twice`);
    // As in Dovecot: the password is the second field (so it cannot hold ':'), and the extra
    // fields are everything after the seventh colon (they may hold ':').
    const passwordField = fields[1] as string;
    let password: StoredPassword;
    try {
      password = parseStoredPassword(passwordField, defaultScheme);
    } catch (err) {
      if (err instanceof PasswordSchemeError) throw new PasswdFileError(`${where} (user ${user}): ${err.message}`);
      throw err;
    }
    const extraText = fields.slice(7).join(':');
    const extra: Record<string, string> = {};
    for (const item of extraText.split(/\s+/)) {
      if (item === '') continue;
      const eq = item.indexOf('=');
      if (eq === -1) extra[item] = '';
      else extra[item.slice(0, eq)] = item.slice(eq + 1);
    }
    users.set(user, { user, password, extra });
  });
  return users;
}

export interface UserDatabaseOptions extends MountedFileOptions {
  defaultScheme?: Scheme;
}

/** The users, kept current with the file. Construction throws when the first load fails. */
export class UserDatabase {
  private readonly file: ReloadedFile<Map<string, UserEntry>>;
  private plainSecretsOf: Map<string, UserEntry> | undefined;
  private plainSecrets = false;
  private decoyOf: Map<string, UserEntry> | undefined;
  private decoy: StoredPassword | undefined;

  constructor(opts: UserDatabaseOptions) {
    const { file, defaultScheme = 'CRYPT' } = opts;
    this.file = new ReloadedFile({
      ...opts,
      parse: (text) => parsePasswdFile(text, file, defaultScheme),
      readError: (code) => new PasswdFileError(`cannot read users file ${file}: ${code}`),
      eventPrefix: 'users',
      summary: (users) => ['users', users.size],
    });
  }

  /** Set when the newest file on disk was refused (for readiness and logs). */
  get lastError(): string | undefined {
    return this.file.lastError;
  }

  private get users(): Map<string, UserEntry> {
    return this.file.current;
  }

  get size(): number {
    return this.users.size;
  }

  lookup(user: string): UserEntry | undefined {
    return this.users.get(user);
  }

  /** Whether any user's secret is stored in the clear (only those can use APOP). */
  /** Asked at every POP3 connection (whether to offer APOP): worked out once per version of the file. */
  get hasPlainSecrets(): boolean {
    if (this.plainSecretsOf !== this.users) {
      this.plainSecretsOf = this.users;
      this.plainSecrets = false;
      for (const entry of this.users.values()) {
        if (isPlainSecret(entry.password)) {
          this.plainSecrets = true;
          break;
        }
      }
    }
    return this.plainSecrets;
  }

  /**
   * A stored password that costs to check what most users' do (the most common costClass), for
   * logins of unknown users: their answer then takes as long as a wrong password's. Worked out
   * once per version of the file.
   */
  decoyPassword(): StoredPassword | undefined {
    if (this.decoyOf !== this.users) {
      this.decoyOf = this.users;
      const classes = new Map<string, { count: number; password: StoredPassword }>();
      for (const entry of this.users.values()) {
        const key = costClass(entry.password);
        const seen = classes.get(key);
        if (seen) seen.count++;
        else classes.set(key, { count: 1, password: entry.password });
      }
      let best: { count: number; password: StoredPassword } | undefined;
      for (const c of classes.values()) if (best === undefined || c.count > best.count) best = c;
      this.decoy = best?.password;
    }
    return this.decoy;
  }

  /** Re-read the file; returns whether a new version was taken. A broken file keeps the old users. */
  reload(): boolean {
    return this.file.reload();
  }

  close(): void {
    this.file.close();
  }
}
