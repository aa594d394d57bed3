//! The redirect against a workload that has read the source (issue 11):
//! direct connects to the proxy port, stale origins after a restart, other
//! network namespaces, SO_MARK set by the workload, and escapes out of the
//! attached cgroup through `at`, closed by `attach --uid`.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use interceptor_e2e::servers::{HttpServer, curl};
use interceptor_e2e::{Daemon, TestCgroup, bash_tcp, free_port, root_cgroup_command, text, unique};

const MARK: u32 = 0x1c7e_0001;

fn tcp_policy(port: u16) -> String {
    format!("[[intercept]]\nport = {port}\nprotocol = \"tcp\"\n")
}

fn status(d: &Daemon) -> serde_json::Value {
    serde_json::from_str(&d.cli_ok(&["status", "--json"])).expect("status --json is JSON")
}

fn kernel_counter(d: &Daemon, name: &str) -> u64 {
    status(d)["counters"]["kernel"][name].as_u64().unwrap_or(0)
}

/// Runs a python3 script (argv after it) and returns its output.
fn python(cmd: Command, script: &str, args: &[&str]) -> Output {
    let mut cmd = cmd;
    cmd.arg("-c").arg(script).args(args);
    cmd.stdin(Stdio::null()).output().expect("run python3")
}

/// A child cgroup of a test cgroup, removed (before its parent) on drop.
struct ChildCgroup {
    path: String,
    dir: std::path::PathBuf,
}

impl ChildCgroup {
    fn new(parent: &TestCgroup, name: &str) -> ChildCgroup {
        let dir = parent.dir.join(name);
        std::fs::create_dir(&dir).expect("mkdir child cgroup");
        ChildCgroup {
            path: format!("{}/{name}", parent.path),
            dir,
        }
    }

    fn command(&self, program: &str) -> Command {
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(program);
        let procs = self.dir.join("cgroup.procs");
        // SAFETY: as in TestCgroup::command: open, write, close.
        unsafe {
            cmd.pre_exec(move || {
                let mut f = std::fs::OpenOptions::new().write(true).open(&procs)?;
                f.write_all(b"0")?;
                Ok(())
            });
        }
        cmd
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let pids = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in pids.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: plain kill(2) of a process in our own test cgroup.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn direct_connects_to_the_proxy_port_are_refused() {
    let http = HttpServer::start("127.0.0.1", "through the proxy\n");
    let d = Daemon::start(&tcp_policy(http.port));
    let cg = TestCgroup::new();
    d.attach(&cg);

    // Every address that reaches the proxy listener: refused at connect().
    for host in [
        "127.0.0.1",
        "::1",
        "0.0.0.0",
        "::ffff:127.0.0.1",
        "127.0.0.2",
    ] {
        let out = bash_tcp(Some(&cg), host, d.port, "GET / HTTP/1.0\r\n\r\n");
        assert_eq!(out.status.code(), Some(7), "{host}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
            "{host}: {}",
            text(&out)
        );
    }
    assert!(kernel_counter(&d, "direct_refused") >= 5);

    // The redirect itself still reaches the proxy (the rewritten connect is
    // the programs' own), and so does it from a nested attached cgroup,
    // where the parent's program sees the already redirected connect.
    let url = format!("http://127.0.0.1:{}/hello.txt", http.port);
    let out = curl(Some(&cg), &url);
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "through the proxy\n");
    let child = ChildCgroup::new(&cg, "nested");
    d.cli_ok(&["attach", "--cgroup", &child.path]);
    let out = child
        .command("curl")
        .args(["-sS", "--max-time", "10", &url])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    let s = d.wait_session(|s| s["cgroup_path"] == child.path.as_str());
    assert_eq!(s["dst_port"], http.port);
    d.cli_ok(&["detach", "--cgroup", &child.path]);

    // A process outside the attached cgroups is not refused (the daemon
    // itself closes a connection that has no recorded origin).
    let out = bash_tcp(None, "127.0.0.1", d.port, "x");
    assert_ne!(out.status.code(), Some(7), "{}", text(&out));
}

#[test]
fn stale_origin_is_not_served_after_a_restart() {
    let http = HttpServer::start("127.0.0.1", "served under the old origin\n");
    let mut d = Daemon::start(&tcp_policy(http.port));
    let cg = TestCgroup::new();
    d.attach(&cg);

    // While the daemon is down, an attached process connects from a port of
    // its choosing: the connect is redirected (and refused: nothing
    // listens), leaving an origin keyed by (127.0.0.1, src port, proxy port).
    d.kill9();
    let src = free_port();
    let connect_from = "import socket, sys\n\
        s = socket.socket()\n\
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        s.bind(('127.0.0.1', int(sys.argv[1])))\n\
        s.settimeout(5)\n\
        try:\n\
        \x20   s.connect(('127.0.0.1', int(sys.argv[2])))\n\
        except OSError as e:\n\
        \x20   print(type(e).__name__); sys.exit(0)\n\
        s.sendall(b'GET /hello.txt HTTP/1.0\\r\\n\\r\\n')\n\
        data = b''\n\
        try:\n\
        \x20   while True:\n\
        \x20       b = s.recv(4096)\n\
        \x20       if not b: break\n\
        \x20       data += b\n\
        except OSError as e:\n\
        \x20   print(type(e).__name__)\n\
        print('connected'); sys.stdout.write(data.decode(errors='replace'))\n";
    let out = python(
        cg.command("python3"),
        connect_from,
        &[&src.to_string(), &http.port.to_string()],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ConnectionRefusedError"),
        "the redirected connect should fail while the daemon is down: {}",
        text(&out)
    );

    d.spawn().expect("restart daemon");
    // Outside every attached cgroup, the same source port straight to the
    // proxy port: the 4-tuple of the stale origin.
    let out = python(
        root_cgroup_command("python3"),
        connect_from,
        &[&src.to_string(), &d.port.to_string()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("served under the old origin"),
        "a stale origin was served: {}\n{}",
        text(&out),
        d.log()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        d.sessions().is_empty(),
        "a session was recorded from a stale origin: {:#?}",
        d.sessions()
    );
    assert!(
        d.log().contains("purged origins left by an earlier run"),
        "{}",
        d.log()
    );

    // The attached cgroup is intercepted as before.
    let out = curl(
        Some(&cg),
        &format!("http://127.0.0.1:{}/hello.txt", http.port),
    );
    assert!(out.status.success(), "{}", text(&out));
    d.wait_session(|s| s["cgroup_path"] == cg.path.as_str());
}

#[test]
fn other_network_namespaces_are_refused_not_redirected() {
    let intercepted = free_port();
    let plain = free_port();
    let d = Daemon::start(&tcp_policy(intercepted));
    let cg = TestCgroup::new();
    d.attach(&cg);

    // In a fresh network namespace, the workload listens on its own loopback
    // on the intercepted port AND on the proxy port (where a redirect would
    // land), then connects to both its own services.
    let script = "import socket, sys, threading\n\
        ports = [int(p) for p in sys.argv[1:]]\n\
        ls = []\n\
        for p in ports:\n\
        \x20   l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
        \x20   l.bind(('127.0.0.1', p)); l.listen(8); ls.append(l)\n\
        def serve(l):\n\
        \x20   while True:\n\
        \x20       c, _ = l.accept(); c.sendall(b'local:%d' % l.getsockname()[1]); c.close()\n\
        for l in ls: threading.Thread(target=serve, args=(l,), daemon=True).start()\n\
        for p in ports[:2]:\n\
        \x20   s = socket.socket(); s.settimeout(5)\n\
        \x20   try:\n\
        \x20       s.connect(('127.0.0.1', p)); print(p, s.recv(100).decode())\n\
        \x20   except OSError as e:\n\
        \x20       print(p, type(e).__name__)\n";
    let inner = format!(
        "ip link set lo up && exec python3 -c \"$0\" {intercepted} {plain} {}",
        d.port
    );
    let out = cg
        .command("unshare")
        .args(["-n", "sh", "-c", &inner, script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains(&format!("{intercepted} PermissionError")),
        "an intercepted connect in another netns must fail with EPERM: {}\n{}",
        text(&out),
        d.log()
    );
    assert!(
        stdout.contains(&format!("{plain} local:{plain}")),
        "a port that is not intercepted works inside the namespace: {}",
        text(&out)
    );
    assert!(!stdout.contains(&format!("local:{}", d.port)), "{stdout}");
    assert!(kernel_counter(&d, "netns_refused") >= 1);
    assert!(d.sessions().is_empty());
}

#[test]
fn so_mark_set_by_the_workload_skips_nothing() {
    let http = HttpServer::start("127.0.0.1", "marked\n");
    let denied = HttpServer::start("127.0.0.1", "should not be reached\n");
    let policy = format!("[defaults]\negress = \"deny\"\n\n{}", tcp_policy(http.port));
    let d = Daemon::start_with(&policy, &format!("socket_mark = {MARK}"));
    let cg = TestCgroup::new();
    d.attach(&cg);

    // Root inside the attached cgroup can set the daemon's mark.
    let script = "import socket, sys\n\
        s = socket.socket()\n\
        s.setsockopt(socket.SOL_SOCKET, 36, int(sys.argv[1]))\n\
        assert s.getsockopt(socket.SOL_SOCKET, 36) == int(sys.argv[1])\n\
        s.settimeout(5)\n\
        try:\n\
        \x20   s.connect(('127.0.0.1', int(sys.argv[2])))\n\
        except OSError as e:\n\
        \x20   print(type(e).__name__); sys.exit(0)\n\
        s.sendall(b'GET /hello.txt HTTP/1.0\\r\\n\\r\\n')\n\
        data = b''\n\
        while True:\n\
        \x20   b = s.recv(4096)\n\
        \x20   if not b: break\n\
        \x20   data += b\n\
        sys.stdout.write(data.decode(errors='replace'))\n";
    let out = python(
        cg.command("python3"),
        script,
        &[&MARK.to_string(), &http.port.to_string()],
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("marked"),
        "{}",
        text(&out)
    );
    let s = d.wait_session(|s| s["dst_port"] == http.port);
    assert_eq!(
        s["cgroup_path"],
        cg.path.as_str(),
        "intercepted despite the mark"
    );

    // egress = "deny" applies to marked sockets too.
    let out = python(
        cg.command("python3"),
        script,
        &[&MARK.to_string(), &denied.port.to_string()],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "PermissionError",
        "{}",
        text(&out)
    );
}

/// A throwaway system user, deleted on drop.
struct TestUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl TestUser {
    fn new() -> TestUser {
        // useradd names: at most 32 characters, lower case.
        // (`cargo xtask test` deletes leftovers named ictest* of a killed run.)
        let name = unique("ictest").replace('-', "");
        let out = Command::new("useradd")
            .args(["--system", "--no-create-home", "--shell", "/bin/sh", &name])
            .output()
            .expect("useradd");
        assert!(out.status.success(), "useradd: {}", text(&out));
        let (uid, gid) = interceptor_e2e::servers::user_ids(&name);
        TestUser { name, uid, gid }
    }

    /// A command run as this user (real and effective ids).
    fn command(&self, cmd: Command) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg(cmd.get_program())
            .args(cmd.get_args());
        c
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).output();
    }
}

/// atd, started for the test (in a cgroup of its own, not attached) unless
/// one already runs.
struct Atd {
    cgroup: Option<TestCgroup>,
    child: Option<std::process::Child>,
}

impl Atd {
    fn ensure() -> Atd {
        let running = std::fs::read_to_string("/run/atd.pid")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).ok())
            .is_some_and(|comm| comm.trim() == "atd");
        if running {
            return Atd {
                cgroup: None,
                child: None,
            };
        }
        let cg = TestCgroup::new();
        let child = cg
            .command("atd")
            .arg("-f")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start atd (Debian package `at`; `cargo xtask setup` installs it)");
        std::thread::sleep(Duration::from_millis(300));
        Atd {
            cgroup: Some(cg),
            child: Some(child),
        }
    }
}

impl Drop for Atd {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SIGTERM first: atd removes its pid file on a clean exit.
            // SAFETY: plain kill(2) of the child we spawned.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // The cgroup's drop kills what is left in it (running jobs).
        self.cgroup.take();
    }
}

/// The same command, moved into `cg` before it runs.
fn in_cgroup(cg: &TestCgroup, cmd: Command) -> Command {
    let mut c = cg.command(cmd.get_program());
    c.args(cmd.get_args());
    c
}

/// Submits a job with `at now` as `user` from inside `cg`; the job curls
/// `url` and leaves its exit code in `dir/rc`. Returns (rc, body).
fn at_curl(user: &TestUser, cg: &TestCgroup, dir: &Path, tag: &str, url: &str) -> (String, String) {
    let rc = dir.join(format!("{tag}.rc"));
    let body = dir.join(format!("{tag}.out"));
    let job = format!(
        "curl -sS --max-time 10 '{url}' > '{}' 2>&1; echo $? > '{}'\n",
        body.display(),
        rc.display()
    );
    let mut at = Command::new("at");
    at.arg("now");
    let mut child = in_cgroup(cg, user.command(at))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run at");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(job.as_bytes()).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "at: {}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        if let Ok(code) = std::fs::read_to_string(&rc)
            && !code.trim().is_empty()
        {
            let got = std::fs::read_to_string(&body).unwrap_or_default();
            return (code.trim().to_string(), got);
        }
        assert!(
            Instant::now() < deadline,
            "the at job did not run within 90 s (is atd running?)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn attach_uid_intercepts_what_the_user_starts_through_at() {
    let http = HttpServer::start("127.0.0.1", "hello from at\n");
    let mut d = Daemon::start(&tcp_policy(http.port));
    let cg = TestCgroup::new();
    d.attach(&cg);
    let user = TestUser::new();
    let atd = Atd::ensure();
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let url = format!("http://127.0.0.1:{}/hello.txt", http.port);

    // Root is never attachable by uid, by name or number.
    for root in ["root", "0"] {
        let out = d.cli(&["attach", "--uid", root]);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("uid 0 (root) cannot be attached"),
            "{}",
            text(&out)
        );
    }
    let out = d.cli(&["attach", "--uid", "no-such-user-here"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no user named"),
        "{}",
        text(&out)
    );

    let out = d.cli_ok(&["attach", "--uid", &user.name]);
    assert!(
        out.contains(&format!("attached uid {} ({})", user.uid, user.name)),
        "{out}"
    );
    let st = status(&d);
    assert_eq!(st["attached_uids"][0]["uid"], user.uid, "{st}");
    assert!(
        d.cli_ok(&["status"])
            .contains(&format!("uid {}  {}", user.uid, user.name))
    );

    // Attachments by uid survive a crash and restart of the daemon.
    d.kill9();
    d.spawn().expect("restart daemon");
    assert_eq!(status(&d)["attached_uids"][0]["uid"], user.uid);

    // The job runs in atd's cgroup, outside the attached one, and is still
    // intercepted: recorded with the user's uid and the cgroup it ran in.
    let (rc, body) = at_curl(&user, &cg, dir.path(), "first", &url);
    assert_eq!(rc, "0", "{body}\n{}", d.log());
    assert_eq!(body, "hello from at\n");
    let s = d.wait_session(|s| s["uid"] == user.uid && s["comm"] == "curl");
    assert_ne!(s["cgroup_path"], cg.path.as_str(), "{s}");
    if let Some(atd_cg) = &atd.cgroup {
        assert_eq!(s["cgroup_path"], atd_cg.path.as_str(), "{s}");
    }
    assert_eq!(s["dst_port"], http.port);

    // Inside the attached cgroup, as the attached user: both the cgroup's
    // and the uid's programs see the connect; it is redirected once.
    let before = d.sessions().len();
    let mut c = Command::new("curl");
    c.args(["-sS", "--max-time", "10", &url]);
    let out = in_cgroup(&cg, user.command(c)).output().unwrap();
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.sessions().len(), before + 1);

    // `status --pid` says a process of the user is covered by its uid.
    let mut sleeper = {
        let mut s = Command::new("sleep");
        s.arg("30");
        user.command(s).spawn().unwrap()
    };
    std::thread::sleep(Duration::from_millis(100));
    let v: serde_json::Value =
        serde_json::from_str(&d.cli_ok(&["status", "--json", "--pid", &sleeper.id().to_string()]))
            .unwrap();
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(v["attached_uid"], user.uid, "{v}");

    // Detached: the user's jobs connect directly again.
    let out = d.cli_ok(&["detach", "--uid", &user.uid.to_string()]);
    assert!(out.contains(&format!("detached uid {}", user.uid)), "{out}");
    let out = d.cli_ok(&["detach", "--uid", &user.name]);
    assert!(out.contains("was not attached"), "{out}");
    assert_eq!(status(&d)["attached_uids"], serde_json::json!([]));
    let before = d.sessions().len();
    let (rc, body) = at_curl(&user, &cg, dir.path(), "second", &url);
    assert_eq!(rc, "0", "{body}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(d.sessions().len(), before, "intercepted after detach --uid");
}
