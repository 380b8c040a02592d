// The one rule for user names, applied where a name enters: the passwd file, a login, the SMTP
// role's local users. A name also becomes a Maildir path (mail/paths.ts), hence the rule.

/** Allowed user names: no path separators, no control characters, no leading dot. */
export function isValidUserName(user: string): boolean {
  return /^[A-Za-z0-9_+=-][A-Za-z0-9._+=@-]{0,254}$/.test(user) && !user.includes('..');
}
