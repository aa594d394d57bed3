//! Reliability: crash durability, load, hostile input and bypass attempts,
//! all through the real eBPF redirect with real PostgreSQL clients.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use interceptor_e2e::servers::{HttpServer, Postgres, curl};
use interceptor_e2e::{Daemon, TestCgroup, text};

fn pg_policy(port: u16) -> String {
    format!("[[intercept]]\nport = {port}\nprotocol = \"postgres\"\n")
}

/// A small deterministic generator for the kill points (seed printed).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// SIGKILL the daemon at random points while statements stream through it;
/// after each restart, every statement the server logged is in the
/// database, and the database opens cleanly.
#[test]
fn every_statement_that_reached_the_server_is_recorded_across_crashes() {
    let pg = Postgres::start_with(&["log_statement=all", "log_min_duration_statement=-1"]);
    let out = pg.psql(None, "127.0.0.1", "CREATE TABLE d (n int)");
    assert!(out.status.success(), "{}", text(&out));
    let mut d = Daemon::start(&pg_policy(pg.port));
    let cg = TestCgroup::new();
    d.attach(&cg);

    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    eprintln!("kill-point seed: {seed}");
    let mut rng = Lcg(seed);
    let mut next = 0u64;
    for round in 0..4 {
        // A client streaming single-statement inserts as fast as it can.
        let mut psql = cg
            .command("psql")
            .args([
                "-X",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = psql.stdin.take().unwrap();
        let kill_after = Duration::from_millis(200 + rng.next(600));
        let started = Instant::now();
        while started.elapsed() < kill_after {
            let mut batch = String::new();
            for _ in 0..20 {
                batch.push_str(&format!("INSERT INTO d VALUES ({next});\n"));
                next += 1;
            }
            if stdin.write_all(batch.as_bytes()).is_err() {
                break;
            }
        }
        d.kill9();
        drop(stdin);
        let _ = psql.wait();
        d.spawn()
            .unwrap_or_else(|e| panic!("restart after kill {round}: {e}"));
    }

    // What the server executed, from its own log.
    let log = pg.log();
    let executed: Vec<String> = log
        .lines()
        .filter_map(|l| {
            l.split_once("statement: ")
                .map(|(_, s)| s.trim().to_string())
        })
        .filter(|s| s.starts_with("INSERT INTO d VALUES"))
        .collect();
    assert!(
        executed.len() > 20,
        "too few statements reached the server: {}",
        executed.len()
    );

    // What the interceptor recorded (the database opens cleanly: export works).
    let export = d.cli_ok(&["export"]);
    let mut recorded = std::collections::HashSet::new();
    for line in export.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("export is JSON lines");
        for e in v["events"].as_array().unwrap() {
            if let Some(t) = e["text"].as_str() {
                recorded.insert(t.trim().trim_end_matches(';').to_string());
            }
        }
    }
    let missing: Vec<&String> = executed
        .iter()
        .filter(|s| !recorded.contains(s.trim_end_matches(';')))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} statements the server executed are not recorded, e.g. {:?}",
        missing.len(),
        executed.len(),
        &missing[..missing.len().min(5)]
    );
    // Sessions cut by the kills are closed with a reason on restart.
    let open: Vec<serde_json::Value> = d
        .sessions()
        .into_iter()
        .filter(|s| s["ended_at"].is_null())
        .collect();
    assert!(
        open.is_empty(),
        "sessions left open after restarts: {open:?}"
    );
}

/// 200 concurrent client sessions for a bounded time: no errors, bounded
/// memory, no file-descriptor leak.
#[test]
fn two_hundred_concurrent_sessions() {
    let pg = Postgres::start();
    let out = Command::new(interceptor_e2e::servers::pg_bindir().join("pgbench"))
        .args([
            "-i",
            "-q",
            "-s",
            "2",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "postgres",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let d = Daemon::start(&pg_policy(pg.port));
    let cg = TestCgroup::new();
    d.attach(&cg);
    let pid = d.pid().unwrap();
    // Warm up (first session creates TLS material, caches, threads).
    assert!(pg.psql(Some(&cg), "127.0.0.1", "SELECT 1").status.success());
    std::thread::sleep(Duration::from_millis(300));
    let fds_before = fd_count(pid);

    let out = cg
        .command(interceptor_e2e::servers::pg_bindir().join("pgbench"))
        .args([
            "-S",
            "-c",
            "200",
            "-j",
            "4",
            "-T",
            "8",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "postgres",
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    assert!(report.contains("number of clients: 200"), "{report}");
    assert!(
        report.contains("number of failed transactions: 0"),
        "failures under load: {report}"
    );
    let rss = rss_kib(pid);
    eprintln!("daemon RSS after 200 sessions: {rss} KiB\n{report}");
    assert!(rss < 256 * 1024, "daemon RSS {rss} KiB is not bounded");

    // All sessions end; descriptors return to where they were.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let status: serde_json::Value =
            serde_json::from_str(&d.cli_ok(&["status", "--json"])).unwrap();
        if status["live_sessions"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "sessions still live after the load ended"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    let fds_after = fd_count(pid);
    assert!(
        fds_after <= fds_before + 2,
        "file descriptors leaked: {fds_before} before, {fds_after} after"
    );
    let sessions = d.sessions();
    assert!(sessions.len() >= 201, "{}", sessions.len());
}

/// Truncated and oversized frames from a raw socket client through the
/// redirect end only their own session; slow clients sending one byte per
/// second cannot starve the others.
#[test]
fn hostile_and_slow_clients_do_not_hurt_others() {
    let pg = Postgres::start();
    let d = Daemon::start_with(
        &pg_policy(pg.port),
        "[limits]\nmax_message_bytes = 1048576\n",
    );
    let cg = TestCgroup::new();
    d.attach(&cg);
    let port = pg.port.to_string();

    // A raw client: an oversized startup length, garbage, a truncated frame.
    let script = r#"
import socket, struct, sys, time
port = int(sys.argv[1])
def send(data, wait=0.3):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(2)
    s.sendall(data)
    time.sleep(wait)
    try:
        s.recv(100)
    except Exception:
        pass
    s.close()
send(struct.pack("!I", 0x7ffffff0) + b"\x00\x03\x00\x00")         # oversized startup
send(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")                           # SSLRequest, then nothing
send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")                          # not PostgreSQL at all
send(struct.pack("!I", 200) + b"\x00\x03\x00\x00user\x00")          # truncated startup
print("done")
"#;
    let out = cg
        .command("python3")
        .args(["-c", script, &port])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));

    // The daemon is alive and a normal client works.
    let out = pg.psql(Some(&cg), "127.0.0.1", "SELECT 'still serving'");
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());

    // Slow clients: 20 of them trickle a startup packet one byte per second.
    let slow = r#"
import socket, sys, time, threading
port = int(sys.argv[1])
def slow():
    s = socket.create_connection(("127.0.0.1", port))
    for b in b"\x00\x00\x00\x29\x00\x03\x00\x00user\x00postgres\x00database\x00postgres\x00\x00":
        s.send(bytes([b]))
        time.sleep(1)
threads = [threading.Thread(target=slow, daemon=True) for _ in range(20)]
for t in threads: t.start()
print("started", flush=True)
time.sleep(30)
"#;
    let mut trickle = cg
        .command("python3")
        .args(["-c", slow, &port])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(trickle.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "started");
    std::thread::sleep(Duration::from_secs(2));
    for _ in 0..5 {
        let t = Instant::now();
        let out = pg.psql(Some(&cg), "127.0.0.1", "SELECT 1");
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "a normal client waited {:?} behind slow ones",
            t.elapsed()
        );
    }
    let _ = trickle.kill();
    let _ = trickle.wait();

    // Each hostile session ended with a recorded reason.
    std::thread::sleep(Duration::from_millis(500));
    let ended: Vec<serde_json::Value> = d
        .sessions()
        .into_iter()
        .filter(|s| s["comm"] == "python3" && !s["ended_at"].is_null())
        .collect();
    assert!(ended.len() >= 4, "{ended:#?}");
    assert!(
        ended
            .iter()
            .all(|s| s["end_reason"].as_str().is_some_and(|r| !r.is_empty()))
    );
}

/// Attempts to get around the interception from inside an attached cgroup.
#[test]
fn bypass_attempts_from_inside_are_intercepted_or_refused() {
    let pg = Postgres::start();
    // A server on a second loopback address of the same host.
    let http2 = HttpServer::start("127.0.0.2", "second address\n");
    let policy = format!(
        "{}[[intercept]]\nport = {}\nprotocol = \"tcp\"\n",
        pg_policy(pg.port),
        http2.port
    );
    let d = Daemon::start(&policy);
    let cg = TestCgroup::new();
    d.attach(&cg);
    let port = pg.port.to_string();
    let count =
        |pred: &dyn Fn(&serde_json::Value) -> bool| d.sessions().iter().filter(|s| pred(s)).count();

    // IPv6, IPv4-mapped IPv6, a second address of the host.
    for host in ["::1", "::ffff:127.0.0.1"] {
        let out = pg.psql(Some(&cg), host, "SELECT 1");
        assert!(out.status.success(), "{host}: {}", text(&out));
    }
    let out = curl(
        Some(&cg),
        &format!("http://127.0.0.2:{}/hello.txt", http2.port),
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "second address\n",
        "{}",
        text(&out)
    );
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(&|s| s["dst_addr"] == "::1"), 1);
    assert_eq!(
        count(&|s| s["dst_addr"] == "127.0.0.1" && s["dst_port"] == pg.port),
        1
    );
    assert_eq!(count(&|s| s["dst_addr"] == "127.0.0.2"), 1);

    // A grandchild process, and a second thread of a process.
    let out = cg
        .command("bash")
        .args([
            "-c",
            &format!("bash -c 'psql -X -h 127.0.0.1 -p {port} -U postgres -c \"SELECT 2\"'"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let threaded = r#"
import socket, sys, threading
port = int(sys.argv[1])
ok = []
def connect():
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # SSLRequest: the proxy answers
    ok.append(s.recv(1))
    s.close()
t = threading.Thread(target=connect); t.start(); t.join()
print(ok)
"#;
    let out = cg
        .command("python3")
        .args(["-c", threaded, &port])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        count(&|s| s["comm"] == "python3") >= 1,
        "thread connect not intercepted"
    );
    assert!(count(&|s| s["dst_port"] == pg.port) >= 4);

    // A new network namespace does not help: the connect is still rewritten
    // to the proxy address, which does not exist in the new namespace, so it
    // fails instead of going anywhere.
    let out = cg
        .command("unshare")
        .args([
            "--net",
            "bash",
            "-c",
            &format!("ip link set lo up; exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"),
        ])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("connected"),
        "{}",
        text(&out)
    );
}
