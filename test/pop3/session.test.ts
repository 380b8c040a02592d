// The session state machine alone: fake I/O and maildrop, no sockets.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { LoginOutcome, Maildrop, SessionOptions } from '../../src/pop3/session.ts';
import { Pop3Session } from '../../src/pop3/session.ts';

class FakeDrop implements Maildrop {
  messages = [
    { size: 10, uid: 'a' },
    { size: 20, uid: 'b' },
    { size: 30, uid: 'c' },
  ];
  removed: number[][] = [];
  released = 0;
  content(index: number): AsyncIterable<Buffer> {
    const data = Buffer.from(`message ${index + 1}\r\n.\r\n`);
    return (async function* () {
      yield await Promise.resolve(data);
    })();
  }
  remove(indexes: number[]) {
    this.removed.push(indexes);
    return Promise.resolve({ removed: indexes.length, failed: 0 });
  }
  release() {
    this.released++;
    return Promise.resolve();
  }
}

function setup(opts: Partial<SessionOptions> = {}, outcomeOf?: () => LoginOutcome) {
  const out: string[] = [];
  const flags = { closed: false, tls: 0 };
  const drop = new FakeDrop();
  const outcome = outcomeOf ?? ((): LoginOutcome => ({ result: 'ok', maildrop: drop }));
  const session = new Pop3Session(
    {
      write: (t) => out.push(...t.split('\r\n')),
      writeStream: async (head, chunks) => {
        out.push(head);
        let n = 0;
        for await (const c of chunks) {
          out.push(c.toString());
          n += c.length;
        }
        return n;
      },
      startTls: () => {
        flags.tls++;
        return Promise.resolve();
      },
      close: () => {
        flags.closed = true;
      },
    },
    {
      tlsAvailable: true,
      secure: false,
      allowPlaintextAuth: false,
      expire: 'NEVER',
      loginDelaySeconds: 0,
      implementation: 'test',
      maxErrors: 5,
      login: () => Promise.resolve(outcome()),
      ...opts,
    },
  );
  const say = async (line: string) => {
    out.length = 0;
    await session.handle(line);
    return out.join('\n');
  };
  return { session, say, drop, flags, out };
}

describe('Pop3Session', () => {
  it('requires TLS for passwords, then allows them after STLS, which works once', async () => {
    const { say, flags, session } = setup();
    assert.match(await say('USER carol'), /^-ERR \[AUTH\]/);
    assert.match(await say('STLS'), /^\+OK/);
    assert.equal(flags.tls, 1);
    assert.ok(session.isSecure);
    assert.match(await say('STLS'), /^-ERR/);
    assert.match(await say('USER carol'), /^\+OK/);
    assert.match(await say('PASS x y z'), /^\+OK Logged in, 3 messages/);
    assert.equal(session.state, 'TRANSACTION');
  });

  it('QUIT in TRANSACTION removes exactly the marked messages; abort removes none', async () => {
    const a = setup({ secure: true });
    await a.say('USER u');
    await a.say('PASS p');
    await a.say('DELE 3');
    await a.say('DELE 1');
    assert.match(await a.say('STAT'), /^\+OK 1 20$/);
    assert.match(await a.say('QUIT'), /^\+OK .*2 messages deleted/);
    assert.deepEqual(a.drop.removed, [[0, 2]]);
    assert.equal(a.drop.released, 1);
    assert.ok(a.flags.closed);

    const b = setup({ secure: true });
    await b.say('USER u');
    await b.say('PASS p');
    await b.say('DELE 1');
    await b.session.abort();
    assert.deepEqual(b.drop.removed, []);
    assert.equal(b.drop.released, 1);
  });

  it('maps login outcomes to response codes', async () => {
    for (const [outcome, reply] of [
      [{ result: 'failed' }, /^-ERR \[AUTH\]/],
      [{ result: 'throttled' }, /^-ERR \[SYS\/TEMP\]/],
      [{ result: 'in-use' }, /^-ERR \[IN-USE\]/],
      [{ result: 'temporary', reason: 'x' }, /^-ERR \[SYS\/TEMP\]/],
    ] as const) {
      const { say, session } = setup({ secure: true }, () => outcome);
      await say('USER u');
      assert.match(await say('PASS p'), reply);
      assert.equal(session.state, 'AUTHORIZATION');
    }
  });

  it('ends the session after too many bad commands in a row', async () => {
    const { say, flags } = setup();
    for (let i = 0; i < 4; i++) assert.match(await say('BOGUS'), /^-ERR Unknown/);
    assert.match(await say('BOGUS'), /Too many invalid commands/);
    assert.ok(flags.closed);
  });

  it('TOP and RETR answer +OK and then the data; a deleted message is an error', async () => {
    const { say } = setup({ secure: true });
    await say('USER u');
    await say('PASS p');
    assert.equal(await say('RETR 2'), '+OK 20 octets\nmessage 2\r\n.\r\n');
    await say('DELE 2');
    assert.match(await say('TOP 2 0'), /^-ERR Message is deleted/);
    assert.match(await say('UIDL 3'), /^\+OK 3 c$/);
  });
});
