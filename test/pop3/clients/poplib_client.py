#!/usr/bin/env python3
"""A POP3 session with Python's standard poplib, driven by the POP3 tests.

usage: poplib_client.py MODE PORT CAFILE USER PASSWORD [STEP...]
MODE: stls (plain port, upgrade with stls()), ssl (POP3_SSL), plain (no TLS).
STEPS: capa, user (USER/PASS), authplain (raw AUTH PLAIN), authlogin (raw AUTH LOGIN), stat,
list, uidl, retr:N, top:N:L, dele:N, rset, quit, drop (close without QUIT).
Prints one JSON object with what each step returned; errors are reported, not raised.
"""
import base64
import json
import poplib
import ssl
import sys


def main() -> None:
    mode, port, cafile, user, password, *steps = sys.argv[1:]
    ctx = ssl.create_default_context(cafile=cafile)
    out: dict = {"steps": []}
    if mode == "ssl":
        conn = poplib.POP3_SSL("127.0.0.1", int(port), context=ctx, timeout=20)
    else:
        conn = poplib.POP3("127.0.0.1", int(port), timeout=20)
        if mode == "stls":
            out["stls"] = conn.stls(context=ctx).decode()
    out["welcome"] = conn.getwelcome().decode()
    for step in steps:
        name, *args = step.split(":")
        try:
            if name == "capa":
                result = {k: v for k, v in conn.capa().items()}
            elif name == "user":
                conn.user(user)
                result = conn.pass_(password).decode()
            elif name == "authplain":
                token = base64.b64encode(f"\0{user}\0{password}".encode()).decode()
                result = conn._shortcmd(f"AUTH PLAIN {token}").decode()
            elif name == "authlogin":
                conn._putcmd("AUTH LOGIN")
                assert conn._getline()[0].startswith(b"+ ")
                conn._putcmd(base64.b64encode(user.encode()).decode())
                assert conn._getline()[0].startswith(b"+ ")
                result = conn._shortcmd(base64.b64encode(password.encode()).decode()).decode()
            elif name == "stat":
                result = list(conn.stat())
            elif name == "list":
                resp, lines, _ = conn.list()
                result = [line.decode() for line in lines]
            elif name == "uidl":
                resp, lines, _ = conn.uidl()
                result = [line.decode() for line in lines]
            elif name == "retr":
                resp, lines, octets = conn.retr(int(args[0]))
                result = {"resp": resp.decode(), "text": "\n".join(l.decode("utf-8", "replace") for l in lines), "octets": octets}
            elif name == "top":
                resp, lines, octets = conn.top(int(args[0]), int(args[1]))
                result = {"resp": resp.decode(), "lines": [l.decode("utf-8", "replace") for l in lines]}
            elif name == "dele":
                result = conn.dele(int(args[0])).decode()
            elif name == "rset":
                result = conn.rset().decode()
            elif name == "quit":
                result = conn.quit().decode()
            elif name == "drop":
                conn.sock.close()
                result = "dropped"
            else:
                raise ValueError(f"unknown step {step}")
        except (poplib.error_proto, OSError, AssertionError) as err:
            result = {"error": str(err)}
        out["steps"].append({"step": step, "result": result})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
