//! The control socket against the workload (issue 11): a process inside an
//! attached cgroup that has read the source tries to approve its own held
//! command — by forking and letting the child speak after the connecting
//! parent is gone, or as the workload's own user from outside — to change
//! what intercepts it (detach, attach, policy reload, ending another
//! cgroup's enrollment), and to fill the approval queue for everyone.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use interceptor_e2e::servers::Postgres;
use interceptor_e2e::{Daemon, TestCgroup, interceptor_bin, text};

const NOBODY: u32 = 65534;

/// A command that moves itself into `cg` and then drops to `uid` (and the
/// same gid) before exec: a non-root workload.
fn command_as(cg: &TestCgroup, uid: u32, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    let procs = cg.dir.join("cgroup.procs");
    // SAFETY: only async-signal-safe work between fork and exec: open,
    // write, close and the set*id calls.
    unsafe {
        cmd.pre_exec(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&procs)?;
            f.write_all(b"0")?;
            drop(f);
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn psql_args(pg: &Postgres, sql: &str) -> Vec<String> {
    [
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
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn spawn(mut cmd: Command) -> Child {
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn")
}

fn pending(d: &Daemon) -> Vec<serde_json::Value> {
    serde_json::from_str(&d.cli_ok(&["approvals", "list", "--json"])).unwrap()
}

/// Waits until `n` requests are pending; returns them.
fn wait_pending(d: &Daemon, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rows = pending(d);
        if rows.len() >= n {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} approval requests appeared\n{}",
            rows.len(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count(pg: &Postgres) -> String {
    let out = pg.psql(None, "127.0.0.1", "SELECT count(*) FROM t");
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The attack on the pid check: connect from inside `cg`, fork, let the
/// parent exit (and be reaped), then send `request` from the child. Returns
/// the daemon's answer line.
fn fork_and_send(cg: &TestCgroup, socket: &Path, request: &serde_json::Value) -> String {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("answer");
    let script = r#"
import json, os, socket, sys, time
path, request, out = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
if os.fork() > 0:
    os._exit(0)          # the process that connected is gone...
os.setsid()
time.sleep(1.5)          # ...and reaped by the time the child speaks
s.sendall(request.encode() + b"\n")
line = s.makefile().readline()
with open(out + ".tmp", "w") as f:
    f.write(line)
os.rename(out + ".tmp", out)
"#;
    let mut parent = cg
        .command("python3")
        .args(["-c", script])
        .arg(socket)
        .arg(request.to_string())
        .arg(&out)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    assert!(parent.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(s) = std::fs::read_to_string(&out) {
            return s;
        }
        assert!(Instant::now() < deadline, "the forked child never answered");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The CLI run as `uid` from the test's own cgroup (outside every attached
/// one).
fn cli_as(d: &Daemon, uid: u32, args: &[&str]) -> Output {
    Command::new(interceptor_bin())
        .uid(uid)
        .gid(uid)
        .arg("--config")
        .arg(&d.config)
        .args(args)
        .output()
        .unwrap()
}

/// The CLI run inside `cg` (as root).
fn cli_in(d: &Daemon, cg: &TestCgroup, args: &[&str]) -> Output {
    cg.command(interceptor_bin())
        .arg("--config")
        .arg(&d.config)
        .args(args)
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn approvals_only_from_outside_the_workload_and_its_user() {
    let pg = Postgres::start();
    let out = pg.psql(
        None,
        "127.0.0.1",
        "CREATE TABLE t (id int); INSERT INTO t SELECT generate_series(1,3); GRANT ALL ON t TO PUBLIC",
    );
    assert!(out.status.success(), "{}", text(&out));
    let policy = format!(
        "[defaults]\napproval_timeout = \"60s\"\n\n[[intercept]]\nport = {}\nprotocol = \"postgres\"\n\n\
         [[rule]]\nname = \"unbounded-deletes\"\ndecision = \"review\"\nmatch = {{ sql.statement = \"delete\", sql.has_where = false }}\n",
        pg.port
    );
    // nobody's group may use the control socket: the workload's user is an
    // approver in every other respect.
    let d = Daemon::start_with(&policy, "control_group = \"nogroup\"\n");
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cg = TestCgroup::new();
    d.attach(&cg);

    // The workload, as nobody, runs a held DELETE.
    let mut cmd = command_as(&cg, NOBODY, "psql");
    cmd.args(psql_args(&pg, "DELETE FROM t"));
    let child = spawn(cmd);
    let req = wait_pending(&d, 1).remove(0);
    assert_eq!(req["uid"], NOBODY);
    let id = req["id"].as_i64().unwrap();

    // 1. Connect from inside, fork, parent exits, the child approves.
    let answer = fork_and_send(
        &cg,
        &d.socket,
        &serde_json::json!({ "op": "approvals_decide", "id": id, "approve": true }),
    );
    let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(v["ok"], false, "the forked child approved: {answer}");
    assert!(
        v["error"].as_str().unwrap_or("").contains("has exited"),
        "{answer}"
    );
    assert_eq!(pending(&d).len(), 1, "still pending");
    assert_eq!(count(&pg), "3");

    // 2. Root inside the attached cgroup: refused.
    let out = cli_in(&d, &cg, &["approvals", "approve", &id.to_string()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("inside an attached cgroup"),
        "{}",
        text(&out)
    );

    // 3. The workload's own user, from outside the cgroup: refused.
    let out = cli_as(&d, NOBODY, &["approvals", "approve", &id.to_string()]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("the approver's own uid") && stderr(&out).contains("allow_same_uid"),
        "{}",
        text(&out)
    );
    // ... and cannot deny either (a decision is a decision).
    let out = cli_as(&d, NOBODY, &["approvals", "deny", &id.to_string()]);
    assert!(stderr(&out).contains("own uid"), "{}", text(&out));
    assert_eq!(pending(&d).len(), 1, "still pending");

    // 4. Another user (root) outside: approved, the DELETE runs.
    d.cli_ok(&["approvals", "approve", &id.to_string(), "--reason", "ok"]);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&pg), "0");
}

#[test]
fn state_changes_only_from_outside_attached_cgroups() {
    let pg = Postgres::start();
    let policy = format!(
        "[[intercept]]\nport = {}\nprotocol = \"postgres\"\n\n[[rule]]\nname = \"no-drop\"\ndecision = \"deny\"\nmatch = {{ sql.statement = \"drop\" }}\n",
        pg.port
    );
    let d = Daemon::start(&policy);
    let cg = TestCgroup::new();
    let other = TestCgroup::new();
    d.attach(&cg);
    let attached = |d: &Daemon| -> Vec<String> {
        let v: serde_json::Value = serde_json::from_str(&d.cli_ok(&["status", "--json"])).unwrap();
        v["attached"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["cgroup"].as_str().unwrap().to_string())
            .collect()
    };

    // Root inside the attached cgroup: every state change is refused.
    for args in [
        vec!["detach", "--cgroup", cg.path.as_str()],
        vec!["attach", "--cgroup", other.path.as_str()],
        vec!["policy", "reload"],
        vec!["enroll", "--revoke", "--cgroup", other.path.as_str()],
    ] {
        let out = cli_in(&d, &cg, &args);
        assert!(
            !out.status.success(),
            "{args:?} from inside: {}",
            text(&out)
        );
        assert!(
            stderr(&out).contains("inside an attached cgroup"),
            "{args:?}: {}",
            text(&out)
        );
    }
    // Below the attached cgroup too.
    let sub = cg.dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let mut cmd = Command::new(interceptor_bin());
    let procs = sub.join("cgroup.procs");
    // SAFETY: as in TestCgroup::command.
    unsafe {
        cmd.pre_exec(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)?
                .write_all(b"0")
        });
    }
    let out = cmd
        .arg("--config")
        .arg(&d.config)
        .args(["detach", "--cgroup", &cg.path])
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("inside an attached cgroup"),
        "{}",
        text(&out)
    );
    let _ = std::fs::remove_dir(&sub);

    // The fork trick does not get a detach through either.
    let answer = fork_and_send(
        &cg,
        &d.socket,
        &serde_json::json!({ "op": "detach", "cgroup": cg.path }),
    );
    assert!(
        answer.contains("\"ok\":false") && answer.contains("exited"),
        "{answer}"
    );
    assert_eq!(attached(&d), vec![cg.path.clone()]);

    // Attaching what is attached already changes nothing, so it is allowed
    // (a runner unit's ExecStartPre attach runs in the unit's own cgroup).
    let out = cli_in(&d, &cg, &["attach", "--cgroup", &cg.path]);
    assert!(out.status.success(), "{}", text(&out));

    // Read-only requests still work from inside.
    let out = cli_in(&d, &cg, &["status"]);
    assert!(out.status.success(), "{}", text(&out));

    // Drops are still denied: nothing changed.
    let out = pg.psql(Some(&cg), "127.0.0.1", "DROP TABLE IF EXISTS nothing");
    assert!(!out.status.success(), "{}", text(&out));

    // From outside, all of it works.
    d.cli_ok(&["attach", "--cgroup", &other.path]);
    d.cli_ok(&["policy", "reload"]);
    d.cli_ok(&["detach", "--cgroup", &cg.path]);
    assert_eq!(attached(&d), vec![other.path.clone()]);
}

#[test]
fn one_job_cannot_fill_the_approval_queue() {
    let pg = Postgres::start();
    let out = pg.psql(None, "127.0.0.1", "CREATE TABLE t (id int)");
    assert!(out.status.success(), "{}", text(&out));
    let policy = format!(
        "[defaults]\napproval_timeout = \"90s\"\n\n[[intercept]]\nport = {}\nprotocol = \"postgres\"\n\n\
         [[rule]]\nname = \"inserts\"\ndecision = \"review\"\nmatch = {{ sql.statement = \"insert\" }}\n",
        pg.port
    );
    let d = Daemon::start(&policy);
    let job = TestCgroup::new();
    let next = TestCgroup::new();
    d.attach(&job);
    d.attach(&next);
    // 16 sessions of one job each hold one INSERT: the per-cgroup bound.
    let mut held: Vec<Child> = (0..16)
        .map(|i| {
            let mut c = job.command("psql");
            c.args(psql_args(&pg, &format!("INSERT INTO t VALUES ({i})")));
            spawn(c)
        })
        .collect();
    wait_pending(&d, 16);
    // The 17th is denied at once, naming the bound.
    let mut c = job.command("psql");
    c.args(psql_args(&pg, "INSERT INTO t VALUES (99)"));
    let started = Instant::now();
    let out = spawn(c).wait_with_output().unwrap();
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("too many pending approval requests from this cgroup"),
        "{}",
        text(&out)
    );
    assert!(started.elapsed() < Duration::from_secs(20), "it was held");
    // Another job is still heard.
    let mut c = next.command("psql");
    c.args(psql_args(&pg, "INSERT INTO t VALUES (100)"));
    held.push(spawn(c));
    let rows = wait_pending(&d, 17);
    assert!(
        rows.iter().any(|r| r["cgroup"] == next.path.as_str()),
        "{rows:#?}"
    );
    for mut c in held {
        let _ = c.kill();
        let _ = c.wait();
    }
}
