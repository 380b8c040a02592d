// The label that names a grant's user without spelling it: user names (`alice@example.org`, UTF-8)
// are not valid label values, a hash of them is. It hides nothing (spec.user is next to it); it
// only lets the API server select one user's grants.
import crypto from 'node:crypto';
import { LABEL_USER_HASH } from './types.ts';

/** 32 hex digits of SHA-256 (128 bits): a label value (<= 63 characters) no two users share. */
export function userHash(user: string): string {
  return crypto.createHash('sha256').update(user, 'utf8').digest('hex').slice(0, 32);
}

/** The label selector of the grants labelled as `user`'s. */
export function userSelector(user: string): string {
  return `${LABEL_USER_HASH}=${userHash(user)}`;
}

/** The label selector of grants with no user label (written before it existed, or by hand). */
export const UNLABELLED_SELECTOR = `!${LABEL_USER_HASH}`;
