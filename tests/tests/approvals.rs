//! Just-in-time approvals end to end, with psql through the redirect: a
//! held `DELETE` runs once approved, a denied one shows the reason, one
//! times out, and nobody inside the attached cgroup can approve.

use std::io::{Read, Write};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use interceptor_e2e::servers::Postgres;
use interceptor_e2e::{Daemon, TestCgroup, interceptor_bin, text};

fn spawn_psql(pg: &Postgres, cg: &TestCgroup, sql: &str) -> Child {
    cg.command("psql")
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-c",
            sql,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql")
}

/// Waits for the next pending approval request and returns it.
fn next_pending(d: &Daemon, seen: &mut Vec<i64>) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let out = d.cli_ok(&["approvals", "list", "--json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        if let Some(r) = rows
            .into_iter()
            .find(|r| !seen.contains(&r["id"].as_i64().unwrap()))
        {
            seen.push(r["id"].as_i64().unwrap());
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no approval request appeared\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn count(pg: &Postgres) -> String {
    let out = pg.psql(None, "127.0.0.1", "SELECT count(*) FROM t");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A one-shot HTTP server that records the body of the first request.
fn webhook_sink() -> (u16, std::sync::mpsc::Receiver<String>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).unwrap_or(0);
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(i) = text.find("\r\n\r\n") {
                let len: usize = text
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse().unwrap_or(0))
                    })
                    .unwrap_or(0);
                if buf.len() >= i + 4 + len {
                    break;
                }
            }
        }
        let _ = s.write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n");
        let text = String::from_utf8_lossy(&buf).to_string();
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        let _ = tx.send(body);
    });
    (port, rx)
}

#[test]
fn held_statements_wait_for_a_human() {
    let pg = Postgres::start();
    let out = pg.psql(None, "127.0.0.1", "CREATE TABLE t (id int, note text); INSERT INTO t SELECT g, 'row' FROM generate_series(1,3) g");
    assert!(out.status.success(), "{}", text(&out));

    let hook_dir = tempfile::tempdir().unwrap();
    let hook_file = hook_dir.path().join("notified.json");
    let (webhook_port, webhook_rx) = webhook_sink();
    let policy = format!(
        r#"
[defaults]
approval_timeout = "6s"

[[intercept]]
port = {}
protocol = "postgres"

[[rule]]
name = "unbounded-writes-need-approval"
decision = "review"
match = {{ sql.statement = ["update", "delete"], sql.has_where = false }}
"#,
        pg.port
    );
    let d = Daemon::start_with(
        &policy,
        &format!(
            // psql runs as root here, like the approver: allow_same_uid.
            "[approvals]\ncommand = [\"sh\", \"-c\", \"cat >> {}\"]\nwebhook = \"http://127.0.0.1:{webhook_port}/hook\"\nallow_same_uid = true\n",
            hook_file.display()
        ),
    );
    let cg = TestCgroup::new();
    d.attach(&cg);
    let mut seen = Vec::new();

    // 1. Held, then approved: the DELETE runs and its row count comes back.
    let child = spawn_psql(&pg, &cg, "DELETE FROM t");
    let req = next_pending(&d, &mut seen);
    assert_eq!(req["status"], "pending");
    assert_eq!(req["rule"], "unbounded-writes-need-approval");
    assert!(
        req["operation"].as_str().unwrap().contains("DELETE FROM t"),
        "{req}"
    );
    assert_eq!(req["cgroup"], cg.path.as_str());
    assert_eq!(count(&pg), "3", "the held statement reached the server");
    let id = req["id"].to_string();

    // Nobody inside the attached cgroup may approve, not even root.
    let out = cg
        .command(interceptor_bin())
        .arg("--config")
        .arg(&d.config)
        .args(["approvals", "approve", &id])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("inside an attached cgroup"),
        "{}",
        text(&out)
    );

    d.cli_ok(&[
        "approvals",
        "approve",
        &id,
        "--reason",
        "cleanup ticket OPS-12",
    ]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("DELETE 3"),
        "{}",
        text(&out)
    );
    assert_eq!(count(&pg), "0");

    // Deciding twice, or an unknown id: clear errors.
    let out = d.cli(&["approvals", "deny", &id]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already approved by root"),
        "{}",
        text(&out)
    );
    let out = d.cli(&["approvals", "approve", "987654"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no approval request with id 987654"),
        "{}",
        text(&out)
    );

    // The outcome is part of the session record.
    let session = req["session_id"].as_i64().unwrap();
    let shown = d.cli_ok(&["sessions", "show", &session.to_string()]);
    assert!(
        shown.contains("approved by root") && shown.contains("cleanup ticket OPS-12"),
        "{shown}"
    );

    // Notifications went out.
    let body = webhook_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("webhook called");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["id"].to_string(), id);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&hook_file)
        .unwrap_or_default()
        .contains("DELETE FROM t")
    {
        assert!(Instant::now() < deadline, "command hook not run");
        std::thread::sleep(Duration::from_millis(50));
    }

    // 2. Held, then denied: psql shows the reason; nothing ran.
    pg.psql(None, "127.0.0.1", "INSERT INTO t VALUES (7, 'keep')");
    let child = spawn_psql(&pg, &cg, "UPDATE t SET note = 'changed'");
    let req = next_pending(&d, &mut seen);
    d.cli_ok(&[
        "approvals",
        "deny",
        &req["id"].to_string(),
        "--reason",
        "not during the freeze",
    ]);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not during the freeze") && err.contains("denied by root"),
        "{err}"
    );
    let out = pg.psql(None, "127.0.0.1", "SELECT note FROM t");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "keep");

    // 3. Nobody answers: it times out and is denied.
    let started = Instant::now();
    let child = spawn_psql(&pg, &cg, "DELETE FROM t");
    let req = next_pending(&d, &mut seen);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "answered before the timeout"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("timed out"),
        "{}",
        text(&out)
    );
    assert_eq!(count(&pg), "1");
    let out = d.cli(&["approvals", "approve", &req["id"].to_string()]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already expired"),
        "{}",
        text(&out)
    );

    let all = d.cli_ok(&["approvals", "list", "--all", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&all).unwrap();
    let statuses: Vec<&str> = rows.iter().map(|r| r["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, vec!["expired", "denied", "approved"]);
}

#[test]
fn approval_scoped_to_a_statement_shape() {
    let pg = Postgres::start();
    pg.psql(None, "127.0.0.1", "CREATE TABLE t (id int)");
    let policy = format!(
        "[defaults]\napproval_timeout = \"20s\"\n\n[[intercept]]\nport = {}\nprotocol = \"postgres\"\n\n\
         [[rule]]\nname = \"inserts-need-approval\"\ndecision = \"review\"\nmatch = {{ sql.statement = [\"insert\"] }}\n",
        pg.port
    );
    // psql runs as root here, like the approver: allow_same_uid.
    let d = Daemon::start_with(&policy, "[approvals]\nallow_same_uid = true\n");
    let cg = TestCgroup::new();
    d.attach(&cg);
    let mut seen = Vec::new();
    // One psql session sends three inserts of the same shape.
    let mut child = cg
        .command("psql")
        .args([
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(
            b"INSERT INTO t VALUES (1);\nINSERT INTO t VALUES (2);\nINSERT INTO t VALUES (3);\n",
        )
        .unwrap();
    drop(stdin);
    let req = next_pending(&d, &mut seen);
    d.cli_ok(&["approvals", "approve", &req["id"].to_string(), "--for", "5"]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&pg), "3");
    // Only one request was needed for the three statements of that shape.
    let all = d.cli_ok(&["approvals", "list", "--all", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&all).unwrap();
    assert_eq!(rows.len(), 1, "{all}");
    // A new session gets no grant.
    let child = cg
        .command("psql")
        .args([
            "-X",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
            "-U",
            "postgres",
            "-c",
            "INSERT INTO t VALUES (4)",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let req = next_pending(&d, &mut seen);
    d.cli_ok(&["approvals", "deny", &req["id"].to_string()]);
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
}

/// A client that disconnects while its statement is held withdraws the
/// request within a second, and its server connection is closed with it
/// (not left open until the approval times out).
#[test]
fn a_held_statement_is_withdrawn_when_its_client_leaves() {
    let pg = Postgres::start();
    pg.psql(
        None,
        "127.0.0.1",
        "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)",
    );
    let policy = format!(
        "[defaults]\napproval_timeout = \"5m\"\n\n[[intercept]]\nport = {}\nprotocol = \"postgres\"\n\n\
         [[rule]]\nname = \"deletes-need-approval\"\ndecision = \"review\"\nmatch = {{ sql.statement = [\"delete\"] }}\n",
        pg.port
    );
    let d = Daemon::start(&policy);
    let cg = TestCgroup::new();
    d.attach(&cg);
    let backends = || {
        let out = pg.psql(
            None,
            "127.0.0.1",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'held-client'",
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let mut child = cg
        .command("psql")
        .args(["-X", "-h", "127.0.0.1", "-p", &pg.port.to_string()])
        .args(["-U", "postgres", "-c", "DELETE FROM t"])
        .env("PGAPPNAME", "held-client")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("psql");
    let mut seen = Vec::new();
    let req = next_pending(&d, &mut seen);
    assert_eq!(backends(), "1");
    child.kill().unwrap();
    let _ = child.wait();
    let killed = Instant::now();
    let id = req["id"].as_i64().unwrap().to_string();
    loop {
        let out = d.cli_ok(&["approvals", "list", "--all", "--json"]);
        let rows: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        let status = rows
            .iter()
            .find(|r| r["id"].as_i64().map(|i| i.to_string()).as_deref() == Some(id.as_str()))
            .map(|r| r["status"].as_str().unwrap_or("").to_string());
        if status.as_deref() == Some("withdrawn") && backends() == "0" {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(3),
            "not withdrawn within a second or two: {status:?}, backends {}\n{}",
            backends(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        killed.elapsed() < Duration::from_millis(1500),
        "{:?}",
        killed.elapsed()
    );
    // Approving it now finds nobody.
    assert!(!d.cli(&["approvals", "approve", &id]).status.success());
    // The statement is recorded as denied, with the reason.
    let s = d.wait_session(|s| s["protocol"] == "postgres");
    let evs = d.session(s["id"].as_i64().unwrap())["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        evs.iter().any(|e| e["decision"] == "deny"
            && e["reason"]
                .as_str()
                .is_some_and(|r| r.contains("withdrawn"))),
        "{evs:#?}"
    );
    assert_eq!(count(&pg), "2");
}
