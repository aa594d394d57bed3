"""A raw PostgreSQL wire-protocol client for the end-to-end tests.

It speaks exactly the messages a test asks for (extended-protocol pipelines
without Describe, CancelRequest, ...), which psql and pgbench do not, and
prints every server reply as one JSON list per batch.

    python3 pg_wire.py HOST PORT pipeline
    python3 pg_wire.py HOST PORT cancel
    python3 pg_wire.py HOST PORT direct_tls
    python3 pg_wire.py HOST PORT bad
"""

import json
import socket
import struct
import sys
import time


def msg(tag, body=b""):
    return tag + struct.pack("!I", len(body) + 4) + body


def cstr(s):
    return (s if isinstance(s, bytes) else s.encode()) + b"\0"


def fields(body):
    out, i = {}, 0
    while body[i] != 0:
        code = chr(body[i])
        end = body.index(b"\0", i + 1)
        out[code] = body[i + 1 : end].decode("utf-8", "replace")
        i = end + 1
    return out


def parse(name, query):
    return msg(b"P", cstr(name) + cstr(query) + struct.pack("!h", 0))


def bind(portal, stmt, params=(), result_format=0):
    body = cstr(portal) + cstr(stmt) + struct.pack("!h", 0)
    body += struct.pack("!h", len(params))
    for p in params:
        p = p.encode()
        body += struct.pack("!i", len(p)) + p
    body += struct.pack("!hh", 1, result_format)
    return msg(b"B", body)


def execute(portal=""):
    return msg(b"E", cstr(portal) + struct.pack("!i", 0))


def describe(kind, name):
    return msg(b"D", kind + cstr(name))


SYNC = msg(b"S")


def query(text):
    return msg(b"Q", cstr(text))


class Conn:
    def __init__(self, host, port, user="postgres", db="postgres", direct_tls=False):
        self.s = socket.create_connection((host, port), timeout=30)
        if direct_tls:
            import ssl

            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            ctx.set_alpn_protocols(["postgresql"])
            self.s = ctx.wrap_socket(self.s, server_hostname=host)
        self.buf = b""
        body = struct.pack("!I", 196608)
        body += cstr("user") + cstr(user) + cstr("database") + cstr(db) + b"\0"
        self.s.sendall(struct.pack("!I", len(body) + 4) + body)
        self.key = None
        while True:
            t, b = self.read()
            if t == b"K":
                self.key = b
            elif t == b"E":
                raise RuntimeError(fields(b))
            elif t == b"Z":
                break

    def fill(self):
        d = self.s.recv(65536)
        if not d:
            raise EOFError("server closed")
        self.buf += d

    def read(self):
        while len(self.buf) < 5:
            self.fill()
        t = self.buf[0:1]
        n = struct.unpack("!I", self.buf[1:5])[0]
        while len(self.buf) < 1 + n:
            self.fill()
        b = self.buf[5 : 1 + n]
        self.buf = self.buf[1 + n :]
        return t, b

    def batch(self, *messages):
        """Sends the messages at once, returns the replies up to ReadyForQuery."""
        self.s.sendall(b"".join(messages))
        out = []
        while True:
            t, b = self.read()
            out.append(show(t, b))
            if t == b"Z":
                return out


def show(t, b):
    tag = t.decode()
    if tag == "D":
        n = struct.unpack("!h", b[:2])[0]
        i, vals = 2, []
        for _ in range(n):
            ln = struct.unpack("!i", b[i : i + 4])[0]
            i += 4
            if ln < 0:
                vals.append(None)
            else:
                vals.append(b[i : i + ln].decode("utf-8", "replace"))
                i += ln
        return "D:" + "|".join("NULL" if v is None else v for v in vals)
    if tag == "C":
        return "C:" + b[:-1].decode()
    if tag in ("E", "N"):
        f = fields(b)
        return f"{tag}:{f.get('C')}:{f.get('M')}"
    if tag == "Z":
        return "Z:" + b.decode()
    return tag


def pipeline(host, port):
    c = Conn(host, port)
    out = {}
    # A refused Parse in the middle of a pipeline: what came before runs,
    # the rest up to Sync is skipped, the session goes on.
    out["refused"] = c.batch(
        parse("", "SELECT 1"), bind("", ""), execute(),
        parse("", "DROP TABLE pipeline_t"), bind("", ""), execute(),
        parse("", "SELECT 3"), bind("", ""), execute(),
        SYNC,
    )
    out["after"] = c.batch(parse("", "SELECT 2"), bind("", ""), execute(), SYNC)
    # A named statement executed without Describe: masked all the same.
    out["prepare"] = c.batch(
        parse("s1", "SELECT $1::text AS card, 'hunter2'::text AS password, 7::int4 AS n"), SYNC
    )
    out["masked_text"] = c.batch(bind("", "s1", ["4111111111111111"]), execute(), SYNC)
    out["masked_binary"] = c.batch(
        bind("p1", "s1", ["4111111111111111"], result_format=1), execute("p1"), SYNC
    )
    # Describe statement, then portal: replies are relayed as they are.
    out["described"] = c.batch(
        parse("s2", "SELECT 'bob@example.com'::text AS e"), describe(b"S", "s2"), SYNC
    )
    out["described_run"] = c.batch(bind("", "s2"), describe(b"P", ""), execute(), SYNC)
    # Refusals inside a transaction abort it, as a server error would.
    out["tx"] = [
        c.batch(query("BEGIN")),
        c.batch(query("DROP TABLE pipeline_t")),
        c.batch(query("SELECT 1")),
        c.batch(query("ROLLBACK")),
    ]
    # Several statements in one Query: all or nothing.
    out["multi"] = c.batch(query("SELECT 1; DROP TABLE pipeline_t; SELECT 2"))
    out["final"] = c.batch(query("SELECT count(*) FROM pipeline_t"))
    # COPY FROM STDIN through the extended protocol, the libpq way: a Sync
    # right behind Execute (ignored by the server during the copy), and
    # another after CopyDone.
    c.s.sendall(parse("", "COPY pipeline_t FROM STDIN") + bind("", "") + execute() + SYNC)
    copy = []
    while not copy or copy[-1] != "G":
        copy.append(show(*c.read()))
    copy += c.batch(msg(b"d", b"5\n6\n"), msg(b"c"), SYNC)
    out["copy"] = copy
    out["copy_after"] = c.batch(query("DROP TABLE pipeline_t"))
    out["copy_count"] = c.batch(query("SELECT count(*) FROM pipeline_t"))
    c.s.sendall(msg(b"X"))
    print(json.dumps(out))


def cancel(host, port):
    c = Conn(host, port)
    c.s.sendall(query("SELECT pg_sleep(20)"))
    time.sleep(1.0)
    s = socket.create_connection((host, port), timeout=10)
    body = struct.pack("!I", 80877102) + c.key
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    s.close()
    start = time.time()
    out = []
    while True:
        t, b = c.read()
        out.append(show(t, b))
        if t == b"Z":
            break
    print(json.dumps({"replies": out, "seconds": time.time() - start}))


def until_closed(c):
    out = []
    try:
        while True:
            t, b = c.read()
            out.append(show(t, b))
    except (EOFError, ConnectionResetError, socket.timeout):
        pass
    return out


def bad(host, port):
    """Malformed input: each connection must end alone, with a reason."""
    out = {}
    c = Conn(host, port)
    c.s.sendall(msg(b"Q", b"SELECT '\xff\xfe'\0"))
    out["utf8"] = until_closed(c)
    c = Conn(host, port)
    c.s.sendall(b"Q" + struct.pack("!I", 0x7FFFFF00))
    out["oversized"] = until_closed(c)
    c = Conn(host, port)
    c.s.sendall(b"Q" + struct.pack("!I", 2))
    out["bad_length"] = until_closed(c)
    c = Conn(host, port)
    c.s.sendall(b"Q" + struct.pack("!I", 100) + b"SELECT")
    c.s.shutdown(socket.SHUT_WR)
    out["truncated"] = until_closed(c)
    c = Conn(host, port)
    c.s.sendall(msg(b"P", b"s\0SELECT 1\0\x00\x05"))
    out["short_parse"] = until_closed(c)
    c = Conn(host, port)
    c.s.sendall(query("SELECT repeat('x', 100000)"))
    out["big_row"] = until_closed(c)
    print(json.dumps(out))


def direct_tls(host, port):
    """PostgreSQL 17's sslnegotiation=direct: TLS from the first byte."""
    c = Conn(host, port, direct_tls=True)
    out = c.batch(query("SELECT 'over direct TLS'"))
    print(json.dumps({"replies": out, "alpn": c.s.selected_alpn_protocol()}))


def binary_mask(host, port):
    """Masked columns in binary result format: plain, in an array, in a
    record, through an alias and an expression. Prints the raw replies
    (binary values decoded as UTF-8 where they can be)."""
    c = Conn(host, port)
    out = {}
    for name, sql in [
        ("plain", "SELECT password FROM users"),
        ("alias", "SELECT password AS p FROM users"),
        ("expr", "SELECT upper(password) FROM users"),
        ("array", "SELECT ARRAY[password, 'x'] FROM users"),
        ("record", "SELECT ROW(id, password) FROM users"),
        ("jsonb", "SELECT to_jsonb(u) FROM users u"),
    ]:
        out[name] = c.batch(parse("", sql), bind("", "", result_format=1), execute(), SYNC)
    print(json.dumps(out))


if __name__ == "__main__":
    host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    {
        "pipeline": pipeline,
        "cancel": cancel,
        "direct_tls": direct_tls,
        "bad": bad,
        "binary_mask": binary_mask,
    }[mode](host, port)
