//! Memory and connection exhaustion: a workload inside an attached cgroup
//! that has read the source opens many connections, announces huge
//! messages and stalls, or holds sessions open, to take the daemon (and
//! with it every job on the runner) down. Through the real eBPF redirect,
//! with real servers.
//!
//! What holds: buffers grow only as bytes arrive and messages are small
//! until a session has authenticated (the daemon's RSS stays within a
//! bound while hundreds of connections each announce 64 MiB); sessions are
//! capped per attached cgroup and in total, refused with the protocol's
//! own "too many connections" error while other cgroups go on; and one
//! memory budget for buffered messages ends the session that would exceed
//! it with the protocol's out-of-memory error, and no other.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::{Duration, Instant};

use interceptor_e2e::mariadb::{MariaDb, ensure_connector, python};
use interceptor_e2e::servers::Postgres;
use interceptor_e2e::{Daemon, TestCgroup, text};

/// How far above its idle RSS the daemon may go while 200 connections
/// each announce a 64 MiB message and stall.
const RSS_BOUND_KIB: u64 = 64 * 1024;

fn pg_policy(port: u16) -> String {
    format!("[[intercept]]\nport = {port}\nprotocol = \"postgres\"\n")
}

fn mysql_policy(port: u16) -> String {
    format!("[[intercept]]\nport = {port}\nprotocol = \"mysql\"\n")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn status(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.cli_ok(&["status", "--json"])).expect("status --json is JSON")
}

/// Opens connections in batches, each doing what `mode` says and then
/// stalling; between batches it waits for a line on stdin (so the test
/// can look at the daemon). `report` then says what the connections got
/// back: the error codes of the replies, and how many stayed silent.
const FLOOD: &str = r#"
import json, select, socket, struct, sys, time

mode, port, count, batch, user = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
HUGE = 64 << 20

def exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed after %d bytes" % len(b))
        b += c
    return b

def pg_msg(s):
    tag = exact(s, 1)
    n = struct.unpack("!I", exact(s, 4))[0]
    return tag, exact(s, n - 4)

def startup(user):
    body = struct.pack("!I", 196608) + b"user\0" + user.encode() + b"\0database\0postgres\0\0"
    return struct.pack("!I", len(body) + 4) + body

def my_packet(s):
    h = exact(s, 4)
    return exact(s, h[0] | h[1] << 8 | h[2] << 16)

def open_one():
    s = socket.create_connection(("127.0.0.1", port), timeout=20)
    if mode == "pg_frame":
        # Authenticated (trust), then a query announcing 64 MiB.
        s.sendall(startup(user))
        while True:
            tag, body = pg_msg(s)
            if tag == b"Z":
                break
            if tag == b"E":
                raise RuntimeError(body)
        s.sendall(b"Q" + struct.pack("!I", HUGE) + b"SELECT '" + b"x" * 1000)
    elif mode == "pg_startup_len":
        s.sendall(struct.pack("!II", HUGE, 196608) + b"user\0")
    elif mode == "pg_auth":
        # A password is asked for; the answer announces 64 MiB.
        s.sendall(startup(user))
        tag, body = pg_msg(s)
        assert tag == b"R" and struct.unpack("!I", body[:4])[0] in (3, 5, 10), (tag, body)
        s.sendall(b"p" + struct.pack("!I", HUGE) + b"x" * 10)
    elif mode == "my_handshake":
        # The server's greeting, then a handshake response announcing 16 MiB.
        my_packet(s)
        s.sendall(b"\xff\xff\xff\x01" + b"x" * 1000)
    elif mode == "hold":
        pass
    else:
        raise ValueError(mode)
    return s

conns = []
for i in range(count):
    conns.append(open_one())
    if (i + 1) % batch == 0 or i + 1 == count:
        print("opened", i + 1, flush=True)
        sys.stdin.readline()

# What came back within two seconds.
data = {s: b"" for s in conns}
closed = set()
deadline = time.time() + 2
while time.time() < deadline:
    live = [s for s in conns if s not in closed]
    if not live:
        break
    r, _, _ = select.select(live, [], [], max(0, deadline - time.time()))
    for s in r:
        try:
            c = s.recv(65536)
        except OSError:
            c = b""
        if c:
            data[s] += c
        else:
            closed.add(s)

def code(b):
    if mode.startswith("pg"):
        i = 0
        while i + 5 <= len(b):
            tag, n = b[i:i + 1], struct.unpack("!I", b[i + 1:i + 5])[0]
            body = b[i + 5:i + 1 + n]
            if tag == b"E":
                for f in body.split(b"\0"):
                    if f[:1] == b"C":
                        return f[1:].decode()
            i += 1 + n
        return "?"
    if len(b) > 7 and b[4] == 0xff:
        return str(b[5] | b[6] << 8)
    return "?"

codes = {}
for s in conns:
    if data[s]:
        c = code(data[s])
        codes[c] = codes.get(c, 0) + 1
print(json.dumps({
    "codes": codes,
    "silent": sum(1 for s in conns if not data[s] and s not in closed),
    "closed": len(closed),
}), flush=True)
sys.stdin.read()
"#;

/// One flood of connections from inside a cgroup.
struct Flood {
    child: Child,
    stdin: Option<ChildStdin>,
    out: BufReader<ChildStdout>,
    count: usize,
}

impl Flood {
    fn start(
        cg: &TestCgroup,
        mode: &str,
        port: u16,
        count: usize,
        batch: usize,
        user: &str,
    ) -> Flood {
        let mut child = cg
            .command("python3")
            .args(["-c", FLOOD, mode])
            .arg(port.to_string())
            .arg(count.to_string())
            .arg(batch.to_string())
            .arg(user)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Flood {
            child,
            stdin,
            out,
            count,
        }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).expect("read flood output");
        assert!(
            !l.is_empty(),
            "the flood script ended early ({:?})",
            self.child.try_wait()
        );
        l
    }

    fn go(&mut self) {
        let stdin = self.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("write flood stdin");
        stdin.flush().expect("flush flood stdin");
    }

    /// Opens every batch; after each, the daemon's RSS must stay within
    /// `bound` KiB of `idle`. Returns the highest RSS seen.
    fn open_all(&mut self, d: &Daemon, idle: u64, bound: u64) -> u64 {
        let pid = d.pid().expect("daemon pid");
        let mut peak = 0;
        loop {
            let l = self.line();
            let opened: usize = l
                .strip_prefix("opened ")
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or_else(|| panic!("unexpected flood output {l:?}"));
            // Let the daemon take what it was sent.
            std::thread::sleep(Duration::from_millis(300));
            let rss = rss_kib(pid);
            peak = peak.max(rss);
            eprintln!("{opened} connections: daemon RSS {rss} KiB (idle {idle} KiB)");
            assert!(
                rss <= idle + bound,
                "daemon RSS {rss} KiB after {opened} connections, more than {bound} KiB above its idle {idle} KiB"
            );
            self.go();
            if opened >= self.count {
                return peak;
            }
        }
    }

    /// What the connections got back.
    fn report(&mut self) -> serde_json::Value {
        let l = self.line();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("flood report {l:?}: {e}"))
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects once and prints the first reply: `E:<SQLSTATE>:<message>` for a
/// PostgreSQL ErrorResponse, `ERR:<code>:<message>` for a MySQL ERR packet,
/// else what the first message was.
const PROBE: &str = r#"
import socket, struct, sys
kind, port = sys.argv[1], int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=15)

def exact(n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError("closed")
        b += c
    return b

if kind == "pg":
    body = struct.pack("!I", 196608) + b"user\0postgres\0database\0postgres\0\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    tag = exact(1)
    body = exact(struct.unpack("!I", exact(4))[0] - 4)
    if tag == b"E":
        f = {x[:1].decode(): x[1:].decode() for x in body.split(b"\0") if x}
        print("E:%s:%s" % (f.get("C"), f.get("M")))
    else:
        print(tag.decode())
else:
    h = exact(4)
    p = exact(h[0] | h[1] << 8 | h[2] << 16)
    if p[0] == 0xff:
        print("ERR:%d:%s" % (p[1] | p[2] << 8, p[3:].decode()))
    else:
        print("greeting")
"#;

fn probe(cg: &TestCgroup, kind: &str, port: u16) -> String {
    let out = python(Some(cg), PROBE, &[kind, &port.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Waits until `pred` holds for `status --json`.
fn wait_status(d: &Daemon, what: &str, pred: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(d);
        if pred(&s) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: status {:#}",
            s["counters"]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn live(s: &serde_json::Value) -> usize {
    s["live_sessions"].as_array().map_or(0, |a| a.len())
}

fn buffered(s: &serde_json::Value) -> u64 {
    s["counters"]["proxy"]["buffered_bytes"]
        .as_u64()
        .expect("status counts buffered bytes")
}

/// 200 connections from one attached cgroup each announce a 64 MiB
/// PostgreSQL message and stall — after authenticating, as a start-up
/// length, and as a password message — while a normal psql session from
/// another attached cgroup goes on. The daemon's RSS stays within
/// RSS_BOUND_KIB of its idle RSS throughout.
#[test]
fn postgres_floods_of_huge_announced_messages_leave_the_daemon_small() {
    let pg = Postgres::start();
    pg.add_password_user("locked", "pw", "md5");
    let d = Daemon::start(&pg_policy(pg.port));
    let flooder = TestCgroup::new();
    let other = TestCgroup::new();
    d.attach(&flooder);
    d.attach(&other);
    let pid = d.pid().unwrap();
    // Warm up (threads, TLS material, caches), then measure idle.
    for _ in 0..3 {
        let out = pg.psql(Some(&other), "127.0.0.1", "SELECT 1");
        assert!(out.status.success(), "{}", text(&out));
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(pid);

    // Authenticated sessions whose next query announces 64 MiB.
    let mut f = Flood::start(&flooder, "pg_frame", pg.port, 200, 20, "postgres");
    let peak = f.open_all(&d, idle, RSS_BOUND_KIB);
    let t = Instant::now();
    let out = pg.psql(Some(&other), "127.0.0.1", "SELECT 'still serving'");
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    assert!(String::from_utf8_lossy(&out.stdout).contains("still serving"));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let s = status(&d);
    assert!(live(&s) >= 200, "{} live sessions", live(&s));
    eprintln!(
        "pg_frame: idle {idle} KiB, peak {peak} KiB (+{} KiB) with 200 stalled sessions; buffered_bytes {}",
        peak.saturating_sub(idle),
        buffered(&s)
    );
    let r = f.report();
    assert_eq!(r["silent"], 200, "every session waits for its message: {r}");
    drop(f);
    wait_status(&d, "sessions end and give their buffers back", |s| {
        live(s) == 0 && buffered(s) == 0
    });

    // A start-up packet announcing 64 MiB is refused at once.
    let mut f = Flood::start(&flooder, "pg_startup_len", pg.port, 200, 50, "postgres");
    let peak = f.open_all(&d, idle, RSS_BOUND_KIB);
    let r = f.report();
    assert_eq!(r["silent"], 0, "{r}");
    eprintln!("pg_startup_len: peak {peak} KiB; {r}");
    drop(f);

    // Before authentication, a password message announcing 64 MiB is
    // refused at once with the server's own code for a bad length.
    let mut f = Flood::start(&flooder, "pg_auth", pg.port, 200, 20, "locked");
    let peak = f.open_all(&d, idle, RSS_BOUND_KIB);
    let r = f.report();
    eprintln!("pg_auth: peak {peak} KiB; {r}");
    assert_eq!(r["codes"]["08P01"], 200, "{r}");
    drop(f);
    let ended = d.wait_session(|s| {
        s["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains("'p'") && r.contains("over the limit"))
    });
    assert_eq!(ended["comm"], "python3");
    let out = pg.psql(Some(&other), "127.0.0.1", "SELECT 'after the floods'");
    assert!(out.status.success(), "{}", text(&out));
    eprintln!("daemon RSS at the end: {} KiB", rss_kib(pid));
}

/// 200 MySQL connections each answer the server's greeting with a
/// handshake response header announcing 16 MiB and stall: each is refused
/// at once (ERROR 1153) and the daemon's RSS stays within the bound; a
/// mysql client from another cgroup works meanwhile.
#[test]
fn mysql_floods_of_huge_handshake_responses_leave_the_daemon_small() {
    let db = MariaDb::start();
    db.admin_ok(
        "CREATE USER 'app'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('secret');",
    );
    let d = Daemon::start(&mysql_policy(db.port));
    let flooder = TestCgroup::new();
    let other = TestCgroup::new();
    d.attach(&flooder);
    d.attach(&other);
    let pid = d.pid().unwrap();
    for _ in 0..3 {
        let out = db.mysql(Some(&other), "app", "secret", &[], "SELECT 1;\n");
        assert!(out.status.success(), "{}", text(&out));
    }
    std::thread::sleep(Duration::from_millis(500));
    let idle = rss_kib(pid);

    let mut f = Flood::start(&flooder, "my_handshake", db.port, 200, 20, "app");
    let peak = f.open_all(&d, idle, RSS_BOUND_KIB);
    let out = db.mysql(
        Some(&other),
        "app",
        "secret",
        &[],
        "SELECT 'still serving';\n",
    );
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    let r = f.report();
    eprintln!(
        "my_handshake: idle {idle} KiB, peak {peak} KiB (+{} KiB); {r}",
        peak.saturating_sub(idle)
    );
    assert_eq!(r["codes"]["1153"], 200, "{r}");
    drop(f);
    let s = d.wait_session(|s| {
        s["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains("16777215-byte message"))
    });
    assert_eq!(s["comm"], "python3");
}

/// With `max_sessions_per_cgroup = 3` and `max_sessions = 5`: a cgroup
/// holding 3 sessions is refused a 4th with the protocol's own error
/// (PostgreSQL FATAL 53300, MySQL ERROR 1040) while another cgroup
/// connects; the total cap refuses the next one anywhere; sessions that
/// end give their place back; every refusal is recorded.
#[test]
fn session_caps_refuse_with_the_native_error_and_spare_other_cgroups() {
    let pg = Postgres::start();
    let db = MariaDb::start();
    let policy = format!("{}{}", pg_policy(pg.port), mysql_policy(db.port));
    let d = Daemon::start_with(
        &policy,
        "\n[limits]\nmax_sessions_per_cgroup = 3\nmax_sessions = 5\n",
    );
    let a = TestCgroup::new();
    let b = TestCgroup::new();
    d.attach(&a);
    d.attach(&b);

    let mut hold_a = Flood::start(&a, "hold", pg.port, 3, 3, "postgres");
    hold_a.open_all(&d, 0, u64::MAX / 2);
    wait_status(&d, "3 sessions held", |s| live(s) == 3);

    let p = probe(&a, "pg", pg.port);
    assert!(
        p.starts_with("E:53300:interceptor: too many sessions from cgroup"),
        "{p}"
    );
    assert!(
        p.contains(&a.path) && p.contains("max_sessions_per_cgroup"),
        "{p}"
    );
    let m = probe(&a, "mysql", db.port);
    assert!(
        m.starts_with("ERR:1040:interceptor: too many sessions"),
        "{m}"
    );
    let out = pg.psql(Some(&a), "127.0.0.1", "SELECT 1");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("too many sessions"),
        "{}",
        text(&out)
    );

    // Another cgroup is not affected.
    let out = pg.psql(Some(&b), "127.0.0.1", "SELECT 'b is served'");
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());

    // The total cap.
    let mut hold_b = Flood::start(&b, "hold", pg.port, 2, 2, "postgres");
    hold_b.open_all(&d, 0, u64::MAX / 2);
    wait_status(&d, "5 sessions held", |s| live(s) == 5);
    let p = probe(&b, "pg", pg.port);
    assert!(
        p.starts_with("E:53300:interceptor: too many sessions: 5 in progress"),
        "{p}"
    );

    // Sessions that end give their places back.
    drop(hold_a);
    wait_status(&d, "a's sessions end", |s| live(s) == 2);
    let out = pg.psql(Some(&a), "127.0.0.1", "SELECT 'a again'");
    assert!(out.status.success(), "{}", text(&out));
    let out = pg.psql(Some(&b), "127.0.0.1", "SELECT 'b again'");
    assert!(out.status.success(), "{}", text(&out));
    drop(hold_b);

    // Every refusal is a recorded session with its reason.
    let sessions = d.sessions();
    let refused = |needle: &str| {
        sessions
            .iter()
            .filter(|s| {
                s["end_reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("refused: ") && r.contains(needle))
            })
            .count()
    };
    assert!(refused("from cgroup") >= 3, "{sessions:#?}");
    assert!(refused("too many sessions: 5") >= 1, "{sessions:#?}");
    let s = status(&d);
    assert!(
        s["counters"]["proxy"]["refused_sessions"].as_u64() >= Some(4),
        "{:#}",
        s["counters"]
    );
}

/// With `max_buffered_bytes = 8 MiB`: two sessions each hold most of a
/// 4 MiB message; a third that would take the daemon past the budget is
/// ended with FATAL 53200 and a recorded reason; the two others and a
/// session in another cgroup go on; the budget comes back when they end.
#[test]
fn memory_budget_ends_only_the_session_that_would_exceed_it() {
    let pg = Postgres::start();
    let d = Daemon::start_with(
        &pg_policy(pg.port),
        "\n[limits]\nmax_message_bytes = 4194304\nmax_buffered_bytes = 8388608\n",
    );
    let flooder = TestCgroup::new();
    let other = TestCgroup::new();
    d.attach(&flooder);
    d.attach(&other);
    let script = r#"
import json, socket, struct, sys, time
port = int(sys.argv[1])

def exact(s, n):
    b = b""
    while len(b) < n:
        c = s.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b

def session():
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    body = struct.pack("!I", 196608) + b"user\0postgres\0database\0postgres\0\0"
    s.sendall(struct.pack("!I", len(body) + 4) + body)
    while True:
        tag = exact(s, 1)
        exact(s, struct.unpack("!I", exact(s, 4))[0] - 4)
        if tag == b"Z":
            return s

def big(s):
    # A query announcing just under 4 MiB, of which 3.5 MiB are sent.
    try:
        s.sendall(b"Q" + struct.pack("!I", (4 << 20) - 16))
        for _ in range(56):
            s.sendall(b"x" * 65536)
            time.sleep(0.002)
    except OSError as e:
        return "send failed: %s" % e
    return "sent"

def reply(s):
    s.settimeout(3)
    data = b""
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
    except OSError:
        pass
    if data[:1] == b"E":
        n = struct.unpack("!I", data[1:5])[0]
        f = {x[:1].decode(): x[1:].decode() for x in data[5:1 + n].split(b"\0") if x}
        return "E:%s:%s" % (f.get("C"), f.get("M"))
    return repr(data[:40]) or "nothing"

c1, c2, c3 = session(), session(), session()
out = {"c1": big(c1)}
time.sleep(0.5)
out["c2"] = big(c2)
time.sleep(0.5)
out["c3_send"] = big(c3)
out["c3"] = reply(c3)
# The first two are still open and waiting for their last bytes.
for name, s in (("c1", c1), ("c2", c2)):
    s.setblocking(False)
    try:
        out[name + "_after"] = "closed" if s.recv(1) == b"" else "data"
    except BlockingIOError:
        out[name + "_after"] = "open"
print(json.dumps(out), flush=True)
sys.stdin.read()
"#;
    let mut child = flooder
        .command("python3")
        .args(["-c", script, &pg.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}\n{}", d.log()));
    eprintln!("budget: {r}");
    let c3 = r["c3"].as_str().unwrap();
    assert!(
        c3.starts_with("E:53200:interceptor: out of memory for buffered messages"),
        "{r}\n{}",
        d.log()
    );
    assert_eq!(r["c1_after"], "open", "{r}");
    assert_eq!(r["c2_after"], "open", "{r}");
    let s = status(&d);
    let held = buffered(&s);
    eprintln!(
        "budget: {held} bytes held by the two waiting sessions; {:#}",
        s["counters"]["proxy"]
    );
    assert!(held > 6 << 20 && held <= 8 << 20, "{held}");
    assert!(s["counters"]["proxy"]["over_budget"].as_u64() >= Some(1));
    assert_eq!(s["counters"]["proxy"]["buffered_bytes_limit"], 8 << 20);

    // Ordinary sessions are not charged and go on.
    let out = pg.psql(Some(&other), "127.0.0.1", "SELECT 'small is fine'");
    assert!(out.status.success(), "{}", text(&out));

    let ended = d.wait_session(|s| {
        s["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains("out of memory for buffered messages"))
    });
    assert_eq!(ended["comm"], "python3");

    drop(child.stdin.take());
    let _ = child.wait();
    wait_status(&d, "the budget comes back", |s| {
        live(s) == 0 && buffered(s) == 0
    });
}

/// The same through the MySQL module: two authenticated sessions each
/// hold most of a 4 MiB COM_QUERY; a third that would exceed the 8 MiB
/// budget gets ERROR 1037 (HY001) and ends, recorded; the others go on.
#[test]
fn mysql_memory_budget_ends_only_the_session_that_would_exceed_it() {
    ensure_connector();
    let db = MariaDb::start();
    db.admin_ok(
        "CREATE USER 'app'@'127.0.0.1' IDENTIFIED VIA mysql_native_password USING PASSWORD('secret');",
    );
    let d = Daemon::start_with(
        &mysql_policy(db.port),
        "\n[limits]\nmax_message_bytes = 4194304\nmax_buffered_bytes = 8388608\n",
    );
    let flooder = TestCgroup::new();
    let other = TestCgroup::new();
    d.attach(&flooder);
    d.attach(&other);
    let script = r##"
import json, sys, time, mysql.connector
port = int(sys.argv[1])

def session():
    c = mysql.connector.connect(host="127.0.0.1", port=port, user="app", password="secret",
                                use_pure=True, ssl_disabled=True)
    return c, c._socket.sock

def big(s):
    # A COM_QUERY packet announcing just under 4 MiB, of which 3.5 MiB are sent.
    n = (4 << 20) - 100
    try:
        s.sendall(bytes([n & 0xff, (n >> 8) & 0xff, n >> 16, 0]) + b"\x03SELECT '")
        for _ in range(56):
            s.sendall(b"x" * 65536)
            time.sleep(0.002)
    except OSError as e:
        return "send failed: %s" % e
    return "sent"

def reply(s):
    s.settimeout(3)
    data = b""
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            data += c
    except OSError:
        pass
    if len(data) > 13 and data[4] == 0xff:
        code = data[5] | data[6] << 8
        state, msg = (data[8:13].decode(), data[13:]) if data[7:8] == b"#" else ("", data[7:])
        return "ERR:%d:%s:%s" % (code, state, msg.decode("utf-8", "replace"))
    return repr(data[:40]) or "nothing"

c1, c2, c3 = session(), session(), session()
out = {"c1": big(c1[1])}
time.sleep(0.5)
out["c2"] = big(c2[1])
time.sleep(0.5)
out["c3_send"] = big(c3[1])
out["c3"] = reply(c3[1])
for name, (_, s) in (("c1", c1), ("c2", c2)):
    s.setblocking(False)
    try:
        out[name + "_after"] = "closed" if s.recv(1) == b"" else "data"
    except BlockingIOError:
        out[name + "_after"] = "open"
print(json.dumps(out), flush=True)
sys.stdin.read()
"##;
    let mut child = flooder
        .command("python3")
        .args(["-c", script, &db.port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let r: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}\n{}", d.log()));
    eprintln!("mysql budget: {r}");
    let c3 = r["c3"].as_str().unwrap();
    assert!(
        c3.starts_with(
            "ERR:1037:HY001:interceptor: ending the session: out of memory for buffered messages"
        ),
        "{r}\n{}",
        d.log()
    );
    assert_eq!(r["c1_after"], "open", "{r}");
    assert_eq!(r["c2_after"], "open", "{r}");
    let s = status(&d);
    let held = buffered(&s);
    assert!(held > 6 << 20 && held <= 8 << 20, "{held}");

    let out = db.mysql(
        Some(&other),
        "app",
        "secret",
        &[],
        "SELECT 'small is fine';\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let ended = d.wait_session(|s| {
        s["end_reason"]
            .as_str()
            .is_some_and(|r| r.contains("out of memory for buffered messages"))
    });
    assert_eq!(ended["comm"], "python3");

    drop(child.stdin.take());
    let _ = child.wait();
    wait_status(&d, "the budget comes back", |s| {
        live(s) == 0 && buffered(s) == 0
    });
}

/// The unit protects the daemon from the workload: OOM score, memory and
/// task limits, and still verifies.
#[test]
fn unit_protects_the_daemon_and_verifies() {
    let unit = include_str!("../../systemd/interceptor.service");
    for needle in [
        "OOMScoreAdjust=-900",
        "MemoryHigh=",
        "MemoryMax=",
        "TasksMax=",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle}");
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("interceptor.service");
    let bin = interceptor_e2e::interceptor_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/interceptor", &bin.display().to_string()),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).trim().is_empty(),
        "{}",
        text(&out)
    );
}
