//! `policy check`, `policy reload` and SIGHUP, end to end.

use std::process::Command;

use interceptor_e2e::servers::{HttpServer, curl};
use interceptor_e2e::{Daemon, TestCgroup, interceptor_bin, text};

const POLICY: &str = r#"
[defaults]
decision = "allow"
unparsed = "review"

[[rule]]
name = "no-destructive-ddl"
decision = "deny"
message = "destructive DDL is not allowed from automation"
match = { sql.statement = ["drop", "truncate"] }

[[rule]]
name = "unbounded-writes-need-approval"
decision = "review"
match = { identity.repository = "acme/*", sql.statement = ["update", "delete"], sql.has_where = false }
"#;

fn check(policy: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(interceptor_bin())
        .args(["policy", "check", "--policy"])
        .arg(policy)
        .args(args)
        .output()
        .expect("run policy check")
}

#[test]
fn policy_check_reports_decision_rule_and_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("policy.toml");
    std::fs::write(&p, POLICY).unwrap();

    let out = check(&p, &["--protocol", "postgres", "--sql", "DROP TABLE t"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("DENY") && s.contains("no-destructive-ddl"),
        "{s}"
    );

    let out = check(&p, &["--protocol", "postgres", "--sql", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Identity-scoped review: only with the matching verified claim.
    let out = check(
        &p,
        &[
            "--protocol",
            "postgres",
            "--sql",
            "DELETE FROM t",
            "--identity",
            "repository=acme/api",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let out = check(
        &p,
        &[
            "--protocol",
            "postgres",
            "--sql",
            "DELETE FROM t",
            "--identity",
            "repository=other/api",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = check(
        &p,
        &[
            "--protocol",
            "postgres",
            "--sql",
            "DELETE FROM t WHERE id = 1",
            "--identity",
            "repository=acme/api",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    // Unparseable SQL follows defaults.unparsed.
    let out = check(
        &p,
        &[
            "--protocol",
            "postgres",
            "--sql",
            "SELEKT nonsense FROM",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "review");

    // Multi-statement: each judged, the strictest wins.
    let out = check(
        &p,
        &[
            "--protocol",
            "postgres",
            "--sql",
            "SELECT 1; TRUNCATE t",
            "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(3));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["results"].as_array().unwrap().len(), 2);

    // A malformed policy: a clear message with file and line, exit 1.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[rule]]\nname = \"x\"\ndecision = \"maybe\"\n").unwrap();
    let out = check(&bad, &["--protocol", "postgres", "--sql", "SELECT 1"]);
    assert_eq!(out.status.code(), Some(1));
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("bad.toml:3:"), "{e}");
}

#[test]
fn reload_swaps_valid_policies_and_keeps_the_old_one_on_error() {
    let a = HttpServer::start("127.0.0.1", "a\n");
    let b = HttpServer::start("127.0.0.1", "b\n");
    let intercept = |port: u16| format!("[[intercept]]\nport = {port}\nprotocol = \"tcp\"\n");
    let mut d = Daemon::start(&intercept(a.port));
    let cg = TestCgroup::new();
    d.attach(&cg);
    let url_b = format!("http://127.0.0.1:{}/hello.txt", b.port);

    assert!(curl(Some(&cg), &url_b).status.success());
    assert!(
        !d.sessions().iter().any(|s| s["dst_port"] == b.port),
        "b intercepted before reload"
    );

    // `policy reload`: b is intercepted from now on.
    std::fs::write(
        &d.policy,
        format!("{}{}", intercept(a.port), intercept(b.port)),
    )
    .unwrap();
    let out = d.cli_ok(&["policy", "reload"]);
    assert!(out.contains("policy reloaded"), "{out}");
    assert!(curl(Some(&cg), &url_b).status.success());
    d.wait_session(|s| s["dst_port"] == b.port);

    // A broken file is refused with file:line, and the current policy stays.
    std::fs::write(&d.policy, "[[intercept]]\nport = 0\nprotocol = \"tcp\"\n").unwrap();
    let out = d.cli(&["policy", "reload"]);
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains("policy.toml:2:") && e.contains("current policy stays"),
        "{e}"
    );
    let before = d.sessions().len();
    assert!(curl(Some(&cg), &url_b).status.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while d.sessions().len() == before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        d.sessions().len(),
        before + 1,
        "old policy no longer in force"
    );

    // SIGHUP does the same as `policy reload`: drop b again.
    std::fs::write(&d.policy, intercept(a.port)).unwrap();
    // SAFETY: plain kill(2).
    unsafe {
        libc::kill(d.pid().unwrap() as i32, libc::SIGHUP);
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !d.log().contains("policy reloaded") || d.log().matches("policy reloaded").count() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload after SIGHUP:\n{}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let n = d.sessions().len();
    assert!(curl(Some(&cg), &url_b).status.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(
        d.sessions().len(),
        n,
        "b still intercepted after SIGHUP reload"
    );
    assert!(d.stop().success());
}
