// Which users lost their right to relay when the users file changed: pure, so it is tested without
// files or an API server. A grant is the proof of a login; once the credential that login showed
// is no longer valid (another password, the user gone or set `nologin`), the grant must go too.
import type { UserEntry } from '../auth/passwd-file.ts';

/** Why a user's grants were revoked: a credential change, or an admin (`kubectl drac revoke --user`). */
export type RevocationReason = 'password_changed' | 'removed' | 'nologin' | 'manual';

export interface CredentialChange {
  user: string;
  reason: RevocationReason;
}

/** Dovecot's `nologin` extra field: the user may not log in (see src/auth/login.ts). */
export function isDisabled(entry: UserEntry): boolean {
  return 'nologin' in entry.extra;
}

/**
 * The users whose grants must be revoked going from `before` to `after`. Other edits (uid, home,
 * other extra fields, new users, a nologin lifted) revoke nothing. The stored password is compared
 * as written (scheme and value): a re-hash of the same password is a change too, because which
 * password it was cannot be known from the hashes.
 */
export function credentialChanges(before: ReadonlyMap<string, UserEntry>, after: ReadonlyMap<string, UserEntry>): CredentialChange[] {
  const changes: CredentialChange[] = [];
  for (const [user, old] of before) {
    const now = after.get(user);
    if (now === undefined) changes.push({ user, reason: 'removed' });
    else if (isDisabled(now) && !isDisabled(old)) changes.push({ user, reason: 'nologin' });
    else if (now.password.scheme !== old.password.scheme || now.password.value !== old.password.value) changes.push({ user, reason: 'password_changed' });
  }
  return changes;
}

/** The Event reason (UpperCamelCase) and message for one revoked grant. */
export function revocationEvent(change: CredentialChange): { reason: string; message: string } {
  switch (change.reason) {
    case 'password_changed':
      return { reason: 'PasswordChanged', message: `grant revoked: the password of user ${change.user} changed in the users file` };
    case 'removed':
      return { reason: 'UserRemoved', message: `grant revoked: user ${change.user} was removed from the users file` };
    case 'nologin':
      return { reason: 'UserDisabled', message: `grant revoked: user ${change.user} was set nologin in the users file` };
    case 'manual':
      return { reason: 'Revoked', message: `grant of user ${change.user} revoked with kubectl drac revoke --user` };
  }
}
