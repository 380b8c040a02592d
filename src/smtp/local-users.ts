// Who is a local recipient: the user names a RCPT address can stand for, and which of them exist.
import fs from 'node:fs';
import path from 'node:path';
import { isValidUserName } from '../auth/user-name.ts';
import { maildirPathFor } from '../mail/paths.ts';
import type { LocalUsers } from './relay-policy.ts';

/**
 * The user names `local@domain` may belong to, most specific first: the full address (for
 * passwd-files keyed by address), then the local part (one mailbox across all local domains,
 * as sendmail's `Cw` did), each also lowercased. Invalid names are never candidates.
 */
export function candidateUsers(localPart: string, domain: string): string[] {
  const out: string[] = [];
  const add = (u: string) => {
    if (isValidUserName(u) && !out.includes(u)) out.push(u);
  };
  if (domain !== '') {
    add(`${localPart}@${domain}`);
    add(`${localPart}@${domain}`.toLowerCase());
  }
  add(localPart);
  add(localPart.toLowerCase());
  return out;
}

/**
 * A local user exists when its Maildir (with `new/`) exists under the mail root. Found users are
 * remembered for a few seconds (a stat per RCPT is a visible share of a busy server's time);
 * misses are not, so a Maildir created now is found at the next RCPT.
 */
export class MaildirLocalUsers implements LocalUsers {
  private readonly root: string;
  private readonly template: string;
  private readonly found = new Map<string, { user: string; untilMs: number }>();
  private readonly rememberMs: number;

  constructor(root: string, template: string, rememberMs = 5000) {
    this.root = root;
    this.template = template;
    this.rememberMs = rememberMs;
  }

  userFor(localPart: string, domain: string): string | undefined {
    const key = `${localPart}@${domain}`;
    const now = Date.now();
    const known = this.found.get(key);
    if (known !== undefined && known.untilMs > now) return known.user;
    for (const user of candidateUsers(localPart, domain)) {
      let dir: string;
      try {
        dir = maildirPathFor(this.root, this.template, user);
      } catch {
        continue;
      }
      try {
        if (fs.statSync(path.join(dir, 'new')).isDirectory()) {
          if (this.found.size >= 10_000) this.found.clear();
          this.found.set(key, { user, untilMs: now + this.rememberMs });
          return user;
        }
      } catch {
        // not this one
      }
    }
    return undefined;
  }
}

/** Users of a users file (a passwd-file's names); their Maildirs are created on first delivery. */
export class KnownLocalUsers implements LocalUsers {
  private readonly has: (user: string) => boolean;

  constructor(has: (user: string) => boolean) {
    this.has = has;
  }

  userFor(localPart: string, domain: string): string | undefined {
    return candidateUsers(localPart, domain).find((u) => this.has(u));
  }
}
