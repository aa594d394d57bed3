//! Harness for the end-to-end tests: a daemon with its own pin directory,
//! port, socket and database; fresh child cgroups; real servers started on
//! free ports in temp dirs. Everything is torn down in `Drop`, so a failing
//! test cleans up too (`cargo xtask test` also sweeps leftovers of a killed
//! run before it starts).
//!
//! These tests need root and a kernel with cgroup BPF: they are what the
//! product is, so they run (never skip) under `cargo xtask test`.

pub mod mariadb;
pub mod servers;
pub mod wire;

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this test process and call.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The interceptor binary under test (`cargo xtask test` sets INTERCEPTOR_BIN).
pub fn interceptor_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("INTERCEPTOR_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/interceptor");
    assert!(
        p.exists(),
        "{} not built: run the suite with `cargo xtask test`",
        p.display()
    );
    p
}

/// A TCP port free on both 127.0.0.1 and ::1 right now.
pub fn free_port() -> u16 {
    for _ in 0..100 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local addr").port();
        if std::net::TcpListener::bind(("::1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free on both 127.0.0.1 and ::1");
}

/// A privileged TCP port (below 1024) free on both 127.0.0.1 and ::1 right
/// now: the daemon refuses a proxy port an unprivileged process could bind.
/// Picked at random (tests in other processes pick too) and never the same
/// twice in one process.
pub fn free_privileged_port() -> u16 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (u64::from(std::process::id()) << 20);
    for i in 0..500u64 {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let x = seed
            .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .wrapping_add(i)
            .rotate_left(17);
        let port = 300 + (x % 700) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("::1", port)).is_ok()
        {
            return port;
        }
    }
    panic!("no privileged port free on both 127.0.0.1 and ::1");
}

/// Writes a test CA (`ca.pem`) and a server certificate it signed
/// (`server.crt`, key `server.key`) for localhost, 127.0.0.1 and ::1 into
/// `dir`, with openssl. The interceptor verifies upstream certificates by
/// default: its configuration gets `ca.pem` as `tls.upstream_ca_file`.
pub fn make_test_certs(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl");
        assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=interceptor test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-new",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write server.ext");
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
}

/// The cgroup2 mount, from /proc/self/mountinfo.
pub fn cgroup2_mount() -> PathBuf {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read mountinfo");
    for line in text.lines() {
        if let Some((left, right)) = line.split_once(" - ")
            && right.starts_with("cgroup2 ")
            && let Some(m) = left.split_whitespace().nth(4)
        {
            return PathBuf::from(m);
        }
    }
    panic!("no cgroup2 mount on this host");
}

/// A fresh child cgroup of the cgroup2 root, removed on drop.
pub struct TestCgroup {
    /// Path relative to the cgroup2 root, e.g. "/interceptor-test-12-3".
    pub path: String,
    pub dir: PathBuf,
}

impl TestCgroup {
    pub fn new() -> TestCgroup {
        let name = unique("interceptor-test");
        let dir = cgroup2_mount().join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        TestCgroup {
            path: format!("/{name}"),
            dir,
        }
    }

    /// A command that moves itself into this cgroup before exec.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let procs = self.dir.join("cgroup.procs");
        // SAFETY: only async-signal-safe work between fork and exec: open,
        // write and close through std's thin wrappers, no allocation of note.
        unsafe {
            cmd.pre_exec(move || {
                let mut f = std::fs::OpenOptions::new().write(true).open(&procs)?;
                f.write_all(b"0")?;
                Ok(())
            });
        }
        cmd
    }

    pub fn pids(&self) -> Vec<u32> {
        std::fs::read_to_string(self.dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }
}

/// A command that runs in the root cgroup (as a process outside every
/// attached cgroup would on a host where the test itself runs elsewhere).
pub fn root_cgroup_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new(program);
    let procs = cgroup2_mount().join("cgroup.procs");
    // SAFETY: as in TestCgroup::command.
    unsafe {
        cmd.pre_exec(move || {
            let mut f = std::fs::OpenOptions::new().write(true).open(&procs)?;
            f.write_all(b"0")?;
            Ok(())
        });
    }
    cmd
}

impl Default for TestCgroup {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for pid in self.pids() {
            // SAFETY: plain kill(2).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A daemon under test with all of its state in a temp dir.
pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub policy: PathBuf,
    pub socket: PathBuf,
    pub db: PathBuf,
    pub pin_dir: PathBuf,
    pub port: u16,
    /// A program (and arguments) the daemon is started through, e.g. one
    /// that passes it listening sockets as systemd does.
    pub launcher: Vec<String>,
    child: Option<Child>,
}

impl Daemon {
    /// Writes a config and the given policy, starts the daemon, waits for it.
    pub fn start(policy: &str) -> Daemon {
        Self::start_with(policy, "")
    }

    /// Like `start_with`, started through `launcher` (see [`Daemon::launcher`]).
    pub fn start_launched(policy: &str, extra: &str, launcher: &[&str], port: u16) -> Daemon {
        let mut d = Self::configure(policy, extra, port);
        d.launcher = launcher.iter().map(|s| s.to_string()).collect();
        d.spawn().expect("start daemon");
        d
    }

    /// Like `start`, with extra configuration appended after the `[daemon]`
    /// keys (more `[daemon]` keys, or further sections such as
    /// `[[identity.issuer]]`).
    pub fn start_with(policy: &str, extra: &str) -> Daemon {
        let mut d = Self::configure(policy, extra, free_privileged_port());
        // Another test process may take the port between the check and the
        // daemon's bind: pick another one then.
        for _ in 0..3 {
            match d.spawn() {
                Ok(()) => return d,
                Err(e) if e.to_string().contains("Address already in use") => {
                    let old = d.port;
                    d.port = free_privileged_port();
                    let cfg = std::fs::read_to_string(&d.config).expect("read config");
                    std::fs::write(
                        &d.config,
                        cfg.replace(
                            &format!("proxy_port = {old}\n"),
                            &format!("proxy_port = {}\n", d.port),
                        ),
                    )
                    .expect("write config");
                }
                Err(e) => panic!("start daemon: {e:#}"),
            }
        }
        panic!("start daemon: no free privileged port");
    }

    /// Writes the daemon's directory, configuration and policy.
    fn configure(policy: &str, extra: &str, port: u16) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("interceptor-e2e-")
            .tempdir()
            .expect("tempdir");
        let pin_dir = PathBuf::from("/sys/fs/bpf").join(unique("interceptor-test"));
        let socket = dir.path().join("control.sock");
        let db = dir.path().join("state/interceptor.db");
        let config = dir.path().join("interceptor.toml");
        let policy_path = dir.path().join("policy.toml");
        std::fs::write(&policy_path, policy).expect("write policy");
        std::fs::write(
            &config,
            format!(
                "[identity]\nenroll_socket = \"{}\"\n\n[daemon]\npolicy = \"policy.toml\"\nproxy_port = {port}\nstate_dir = \"state\"\n\
                 control_socket = \"{}\"\nbpf_pin_dir = \"{}\"\nsync = \"normal\"\nshutdown_grace = \"1s\"\n{extra}\n",
                dir.path().join("enroll.sock").display(),
                socket.display(),
                pin_dir.display()
            ),
        )
        .expect("write config");
        Daemon {
            dir,
            config,
            policy: policy_path,
            socket,
            db,
            pin_dir,
            port,
            launcher: Vec::new(),
            child: None,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// Starts (or restarts) the daemon process and waits until it answers.
    pub fn spawn(&mut self) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut cmd = match self.launcher.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(interceptor_bin());
                c
            }
            None => Command::new(interceptor_bin()),
        };
        let child = cmd
            .args(["run", "--config"])
            .arg(&self.config)
            .env("INTERCEPTOR_LOG", "info,interceptor=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning interceptor run")?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(c) = self.child.as_mut()
                && let Some(status) = c.try_wait()?
            {
                bail!("daemon exited during start-up ({status}):\n{}", self.log());
            }
            if self.cli(&["status", "--json"]).status.success() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("daemon did not become ready in 30 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Runs the CLI against this daemon.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(interceptor_bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("run interceptor CLI")
    }

    /// Runs the CLI and fails the test (with the daemon log) if it fails.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "interceptor {args:?} failed: {}\n{}\n--- daemon log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn attach(&self, cg: &TestCgroup) {
        self.cli_ok(&["attach", "--cgroup", &cg.path]);
    }

    pub fn detach(&self, cg: &TestCgroup) {
        self.cli_ok(&["detach", "--cgroup", &cg.path]);
    }

    /// `sessions list --json` as JSON values (newest first).
    pub fn sessions(&self) -> Vec<serde_json::Value> {
        let out = self.cli_ok(&["sessions", "list", "--json", "--limit", "10000"]);
        serde_json::from_str(&out).expect("sessions list --json is JSON")
    }

    /// `sessions show ID --json`.
    pub fn session(&self, id: i64) -> serde_json::Value {
        let out = self.cli_ok(&["sessions", "show", &id.to_string(), "--json"]);
        serde_json::from_str(&out).expect("sessions show --json is JSON")
    }

    /// Waits until a session matching `pred` has ended (its end is recorded
    /// asynchronously, after the client disconnects).
    pub fn wait_session(&self, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = self
                .sessions()
                .into_iter()
                .find(|s| pred(s) && !s["ended_at"].is_null())
            {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "no matching ended session; sessions: {:#?}\n--- daemon log ---\n{}",
                self.sessions(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// SIGKILL, no cleanup: pinned links stay behind, as after a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon running");
        // SAFETY: plain kill(2).
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        c.wait().expect("wait daemon")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // Unpinning the links detaches the programs.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Output of a command, for assertions.
pub fn text(out: &Output) -> String {
    format!(
        "status: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Opens a TCP connection from bash (`/dev/tcp`), sends a line, prints what
/// comes back: the least sophisticated client there is.
pub fn bash_tcp(cg: Option<&TestCgroup>, host: &str, port: u16, send: &str) -> Output {
    let script = format!(
        "exec 3<>/dev/tcp/{host}/{port} || exit 7; printf '%s' \"$1\" >&3; timeout 5 cat <&3"
    );
    let mut cmd = match cg {
        Some(cg) => cg.command("bash"),
        None => Command::new("bash"),
    };
    cmd.args(["-c", &script, "bash", send])
        .output()
        .expect("run bash")
}
