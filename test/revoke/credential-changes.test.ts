// Which users' grants a users-file change revokes (pure: no files, no API server).
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { parsePasswdFile } from '../../src/auth/passwd-file.ts';
import { credentialChanges, revocationEvent } from '../../src/revoke/credential-changes.ts';

const users = (text: string) => parsePasswdFile(text, 'test');

void describe('credentialChanges', () => {
  const before = users('alice:{PLAIN}a\nbob:{PLAIN}b\ncarol:{PLAIN}c\ndave:{PLAIN}d::::::nologin\n');

  it('names each user whose password changed, who was removed or set nologin, and nobody else', () => {
    const after = users('alice:{PLAIN}a2\ncarol:{PLAIN}c::::::nologin\ndave:{PLAIN}d\nerin:{PLAIN}e\n');
    assert.deepEqual(credentialChanges(before, after), [
      { user: 'alice', reason: 'password_changed' },
      { user: 'bob', reason: 'removed' },
      { user: 'carol', reason: 'nologin' },
    ]);
  });

  it('revokes nothing for edits that are no credential: uid, home, other extra fields, nologin lifted, a new user', () => {
    const after = users('alice:{PLAIN}a:1000:1000::/home/alice::userdb_quota_rule=*:storage=1G\nbob:{PLAIN}b\ncarol:{PLAIN}c\ndave:{PLAIN}d\nzed:{PLAIN}z\n');
    assert.deepEqual(credentialChanges(before, after), []);
  });

  it('the same password stored another way counts as a change (which password a hash holds cannot be told)', () => {
    assert.deepEqual(credentialChanges(users('alice:{PLAIN}a\n'), users('alice:{CLEAR}a\n')), [{ user: 'alice', reason: 'password_changed' }]);
  });

  it('a password changed on a nologin user still revokes (grants from before it was disabled)', () => {
    assert.deepEqual(credentialChanges(users('dave:{PLAIN}d::::::nologin\n'), users('dave:{PLAIN}d2::::::nologin\n')), [{ user: 'dave', reason: 'password_changed' }]);
  });

  it('gives each reason its Event reason and a message naming the user', () => {
    assert.deepEqual(revocationEvent({ user: 'alice', reason: 'password_changed' }), { reason: 'PasswordChanged', message: 'grant revoked: the password of user alice changed in the users file' });
    assert.equal(revocationEvent({ user: 'bob', reason: 'removed' }).reason, 'UserRemoved');
    assert.equal(revocationEvent({ user: 'carol', reason: 'nologin' }).reason, 'UserDisabled');
  });
});
