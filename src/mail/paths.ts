// Where a user's Maildir lives, shared by the POP3 reader and the SMTP deliverer.
import path from 'node:path';

/**
 * Expand a Dovecot-style location template under `root`:
 * `%u` full user, `%n` local part, `%d` domain (empty when none), `%%` a percent sign.
 * Users are validated before this is called (auth/user-name.ts); still, never let a name climb out of the root.
 */
export function maildirPathFor(root: string, template: string, user: string): string {
  const at = user.lastIndexOf('@');
  const local = at === -1 ? user : user.slice(0, at);
  const domain = at === -1 ? '' : user.slice(at + 1);
  const expanded = template.replace(/%([%und])/g, (_, c: string) =>
    c === '%' ? '%' : c === 'u' ? user : c === 'n' ? local : domain,
  );
  const full = path.resolve(root, expanded);
  const rootResolved = path.resolve(root);
  if (full !== rootResolved && !full.startsWith(rootResolved + path.sep)) {
    throw new Error(`maildir for ${JSON.stringify(user)} resolves outside the mail root`);
  }
  return full;
}
