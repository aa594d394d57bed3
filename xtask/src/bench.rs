//! `cargo xtask bench`: what the interceptor costs, measured against the
//! server itself and against the proxies people already know.
//!
//! One run, as root, from a clone:
//!
//! 1. installs what it needs ([`crate::setup`]) and builds the interceptor
//!    in release mode;
//! 2. starts its own throwaway servers on free ports in a temp dir:
//!    PostgreSQL (loaded with `pgbench -i -s 10` and a 100 000-row table
//!    of fake e-mail addresses and Luhn-valid card numbers), pgbouncer
//!    (session pooling) and haproxy (`mode tcp`) in front of it;
//! 3. starts the interceptor daemon (release binary, `sync = "full"`, a
//!    representative policy with rules and masking), makes a fresh child
//!    cgroup and attaches it: the "interceptor" variant runs the very same
//!    `pgbench` command as the "direct" one, only inside that cgroup, so
//!    the eBPF redirect takes it through the daemon;
//! 4. runs every workload on every variant, round after round, rotating
//!    the order of the variants in each round so that machine drift hits
//!    them equally;
//! 5. writes `bench-results/latest.{md,json}` (and dated copies), and the
//!    Performance section of README.md between `<!-- bench:start -->` and
//!    `<!-- bench:end -->`.
//!
//! Latencies come from pgbench's per-transaction logs (`-l`), so the p99
//! is exact. The daemon's CPU time (utime + stime from /proc), its peak RSS
//! (VmHWM) and the events it recorded (counted in its SQLite database,
//! opened read-only) are taken around each run. Everything started is
//! stopped and removed at the end, on error and on Ctrl-C too.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// Rows in the bulk-result table.
const BULK_ROWS: u64 = 100_000;
/// pgbench scale factor (1 = 100 000 accounts).
const SCALE: u32 = 10;
/// Readme markers around the generated Performance section.
const README_START: &str = "<!-- bench:start -->";
const README_END: &str = "<!-- bench:end -->";
/// Prefix of everything this harness creates outside its temp dir (cgroups,
/// bpffs pin directories), followed by the harness's pid.
const PREFIX: &str = "interceptor-bench-";

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Rounds; each round runs every workload on every variant once.
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Seconds per pgbench run.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Smoke run (1 round of 3 s): writes bench-results/quick.{md,json}
    /// only, README.md and latest.* are left alone.
    #[arg(long)]
    quick: bool,
    /// Only these workloads (comma-separated ids: select-c1-simple,
    /// select-c8-simple, select-c1-extended, select-c8-extended, bulk,
    /// connect).
    #[arg(long, value_delimiter = ',')]
    workloads: Vec<String>,
    /// Also measure the interceptor with `sync = "normal"` (a second daemon
    /// on a second cgroup): shows what the per-commit fsync costs.
    #[arg(long)]
    sync_normal: bool,

    /// After the rounds, profile the daemon with `perf record` during one
    /// more `pgbench -S -c 8` run and add the top symbols to the report.
    #[arg(long)]
    profile: bool,
    /// Leave README.md alone.
    #[arg(long)]
    no_readme: bool,
    /// Skip installing dependencies (apt packages, toolchains); still builds.
    #[arg(long)]
    skip_setup: bool,
    /// Use this interceptor binary instead of building one (e.g. a copy
    /// that stays put while the tree changes).
    #[arg(long, value_name = "PATH")]
    bin: Option<PathBuf>,
}

// ------------------------------------------------------------ interruption

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C / SIGTERM set a flag instead of killing the harness, so that its
/// cleanup (daemon, servers, cgroup, pins) still runs.
fn install_signal_handlers() {
    let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

// ------------------------------------------------------------ processes

/// Makes a child die with the harness even if the harness is SIGKILLed
/// (runs after the uid switch, so it survives it).
fn die_with_parent(cmd: &mut Command) -> &mut Command {
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork
    // and exec here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

/// A long-running child, stopped with `stop` (then SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
    stop: libc::c_int,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, cmd: &mut Command, log: &Path, stop: libc::c_int) -> Result<Proc> {
        let file =
            std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = die_with_parent(cmd)
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .with_context(|| format!("start {name}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            stop,
            log: log.to_path_buf(),
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails (with the log's tail) if the process has exited.
    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log ends with:\n{}",
                self.name,
                tail(&self.log, 30)
            );
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Already reaped: its pid may belong to someone else by now.
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        // SAFETY: plain kill(2) on our own, not yet reaped, child.
        unsafe {
            libc::kill(self.child.id() as i32, self.stop);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `cmd` to completion with stdout/stderr in files (`<base>.out`,
/// `<base>.err`), giving up after `timeout` or on Ctrl-C.
fn run_logged(cmd: &mut Command, base: &Path, timeout: Duration) -> Result<(String, String)> {
    let out_path = base.with_extension("out");
    let err_path = base.with_extension("err");
    let shown = format!("{cmd:?}");
    let mut child = die_with_parent(cmd)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out_path)?)
        .stderr(std::fs::File::create(&err_path)?)
        .spawn()
        .with_context(|| format!("start {shown}"))?;
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if INTERRUPTED.load(Ordering::SeqCst) || Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            check_interrupted()?;
            bail!("{shown} did not finish in {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = std::fs::read_to_string(&out_path).unwrap_or_default();
    let err = std::fs::read_to_string(&err_path).unwrap_or_default();
    if !status.success() {
        bail!("{shown} failed ({status}):\n{out}\n{err}");
    }
    Ok((out, err))
}

/// Runs a short command and returns its stdout, failing with its output.
fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("start {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ------------------------------------------------------------ host helpers

/// A TCP port free on 127.0.0.1 right now.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("bind 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A privileged TCP port free on 127.0.0.1 and ::1 right now.
fn free_privileged_port() -> Result<u16> {
    let start = (std::process::id() % 600) as u16;
    for i in 0..700u16 {
        let port = 300 + (start + i * 7) % 700;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("::1", port)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no privileged port free on 127.0.0.1 and ::1")
}

fn wait_port(port: u16, what: &str, proc: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        proc.check_alive()?;
        check_interrupted()?;
        if Instant::now() > deadline {
            bail!("{what} is not listening on {port} after 30 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The cgroup2 mount, from /proc/self/mountinfo.
fn cgroup2_mount() -> Result<PathBuf> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    for line in text.lines() {
        if let Some((left, right)) = line.split_once(" - ")
            && right.starts_with("cgroup2 ")
            && let Some(m) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(m));
        }
    }
    bail!("no cgroup2 mount on this host (the interceptor needs cgroup v2)")
}

fn user_ids(name: &str) -> Result<(u32, u32)> {
    let uid = output(Command::new("id").args(["-u", name]))?
        .trim()
        .parse()
        .with_context(|| format!("uid of {name}"))?;
    let gid = output(Command::new("id").args(["-g", name]))?
        .trim()
        .parse()
        .with_context(|| format!("gid of {name}"))?;
    Ok((uid, gid))
}

fn chown_r(path: &Path, uid: u32, gid: u32) -> Result<()> {
    output(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path),
    )
    .map(|_| ())
}

/// The newest PostgreSQL server binaries installed from Debian.
fn pg_bindir() -> Result<PathBuf> {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL is not installed (cargo xtask setup)")?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    versions.sort();
    let v = versions.last().context("no PostgreSQL version installed")?;
    Ok(PathBuf::from(format!("/usr/lib/postgresql/{v}/bin")))
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes cgroups and bpffs pins of an earlier bench run that was killed
/// before its cleanup ran (its pid is gone).
fn clean_stale() {
    let stale = |name: &str| {
        name.strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
            .is_some_and(|pid| !pid_alive(pid))
    };
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            if stale(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(mount) = cgroup2_mount()
        && let Ok(entries) = std::fs::read_dir(mount)
    {
        for e in entries.flatten() {
            if stale(&e.file_name().to_string_lossy()) {
                let _ = std::fs::remove_dir(e.path());
            }
        }
    }
}

/// utime + stime of a whole process (all its threads), in milliseconds.
fn cpu_ms(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat
        .rsplit_once(") ")
        .map(|(_, r)| r)
        .context("parse /proc/PID/stat")?;
    let f: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of proc_pid_stat(5); `after` starts at field 3.
    let utime: f64 = f.get(11).context("utime")?.parse()?;
    let stime: f64 = f.get(12).context("stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((utime + stime) * 1000.0 / hz)
}

/// A `VmXXX:` line of /proc/PID/status, in KiB.
fn vm_kib(pid: u32, key: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    for line in status.lines() {
        if let Some(v) = line.strip_prefix(key) {
            return Ok(v
                .trim_start_matches(':')
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()?);
        }
    }
    bail!("no {key} in /proc/{pid}/status")
}

// ------------------------------------------------------------ cgroup

/// A fresh child cgroup of the cgroup2 root, removed on drop (after killing
/// whatever still runs in it).
struct Cgroup {
    /// Path relative to the cgroup2 root, e.g. "/interceptor-bench-12-0".
    path: String,
    dir: PathBuf,
}

impl Cgroup {
    fn create(name: &str) -> Result<Cgroup> {
        let dir = cgroup2_mount()?.join(name);
        std::fs::create_dir(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(Cgroup {
            path: format!("/{name}"),
            dir,
        })
    }

    /// A command that moves itself into this cgroup before exec.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let procs = self.dir.join("cgroup.procs");
        // SAFETY: only open/write/close between fork and exec.
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

impl Drop for Cgroup {
    fn drop(&mut self) {
        let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            // SAFETY: plain kill(2).
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

// ------------------------------------------------------------ servers

struct Postgres {
    port: u16,
    proc: Proc,
}

impl Postgres {
    fn start(dir: &Path) -> Result<Postgres> {
        let (uid, gid) = user_ids("postgres")?;
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        chown_r(dir, uid, gid)?;
        let bindir = pg_bindir()?;
        let data = dir.join("data");
        output(
            Command::new(bindir.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=trust", "--no-sync"])
                .args(["-E", "UTF8", "--locale=C"])
                .uid(uid)
                .gid(gid),
        )?;
        let port = free_port()?;
        let log = dir.join("postgres.log");
        std::fs::File::create(&log)?;
        chown_r(&log, uid, gid)?;
        let mut cmd = Command::new(bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string()])
            .arg("-k")
            .arg(dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=128MB"])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .uid(uid)
            .gid(gid);
        // SIGQUIT: immediate shutdown, fine for a throwaway cluster.
        let mut proc = Proc::spawn("postgres", &mut cmd, &log, libc::SIGQUIT)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ready = Command::new(bindir.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ready {
                break;
            }
            proc.check_alive()?;
            check_interrupted()?;
            if Instant::now() > deadline {
                bail!("postgres did not start:\n{}", tail(&log, 30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Postgres { port, proc })
    }
}

fn psql(port: u16) -> Command {
    let mut cmd = Command::new("psql");
    cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"])
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-U", "postgres", "-d", "postgres"])
        .env("PGCONNECT_TIMEOUT", "10");
    cmd
}

/// `pgbench -i -s 10` and the bulk table: `bench_people(id, email, card)`
/// with a fake e-mail address and a Luhn-valid card number on every row,
/// both found by the `email` and `credit_card` detectors.
fn load_data(pg_port: u16, dir: &Path) -> Result<()> {
    eprintln!("loading pgbench data (scale {SCALE}) and the {BULK_ROWS}-row bulk table");
    run_logged(
        Command::new("pgbench")
            .args(["-i", "-q", "-s", &SCALE.to_string()])
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg_port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("postgres"),
        &dir.join("pgbench-init"),
        Duration::from_secs(600),
    )?;
    output(psql(pg_port).args([
        "-c",
        "CREATE TABLE bench_people (id integer PRIMARY KEY, email text NOT NULL, card text NOT NULL)",
    ]))?;
    let mut csv = String::with_capacity(BULK_ROWS as usize * 48);
    for id in 1..=BULK_ROWS {
        let _ = writeln!(csv, "{id},user{id}@example.com,{}", card_number(id));
    }
    let data = dir.join("people.csv");
    std::fs::write(&data, csv)?;
    output(psql(pg_port).args([
        "-c",
        &format!(
            "\\copy bench_people FROM '{}' WITH (FORMAT csv)",
            data.display()
        ),
    ]))?;
    output(psql(pg_port).args(["-c", "VACUUM ANALYZE"]))?;
    Ok(())
}

/// A 16-digit Visa-style number (first digit 4) with a valid Luhn check
/// digit, grouped in fours as cards are usually written.
fn card_number(id: u64) -> String {
    let body = format!("4{:014}", id * 7919 % 100_000_000_000_000);
    let digits: Vec<u32> = body.bytes().map(|b| u32::from(b - b'0')).collect();
    // Luhn: double every second digit from the right of the full number;
    // with the check digit still missing, that is every second digit from
    // the right of `body`, starting with its last.
    let mut sum = 0;
    for (i, d) in digits.iter().rev().enumerate() {
        let mut v = *d;
        if i % 2 == 0 {
            v *= 2;
            if v > 9 {
                v -= 9;
            }
        }
        sum += v;
    }
    let check = (10 - sum % 10) % 10;
    let full = format!("{body}{check}");
    format!(
        "{} {} {} {}",
        &full[0..4],
        &full[4..8],
        &full[8..12],
        &full[12..16]
    )
}

fn start_pgbouncer(dir: &Path, pg_port: u16) -> Result<(u16, Proc)> {
    let (uid, gid) = user_ids("postgres")?;
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    std::fs::write(dir.join("users.txt"), "\"postgres\" \"\"\n")?;
    std::fs::write(
        dir.join("pgbouncer.ini"),
        format!(
            "[databases]\n* = host=127.0.0.1 port={pg_port}\n\n[pgbouncer]\n\
             listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {sock}\n\
             auth_type = trust\nauth_file = {auth}\npool_mode = session\n\
             max_client_conn = 500\ndefault_pool_size = 100\n\
             ignore_startup_parameters = extra_float_digits,options\n",
            sock = dir.display(),
            auth = dir.join("users.txt").display(),
        ),
    )?;
    chown_r(dir, uid, gid)?;
    let mut cmd = Command::new("pgbouncer");
    cmd.arg(dir.join("pgbouncer.ini")).uid(uid).gid(gid);
    let mut proc = Proc::spawn(
        "pgbouncer",
        &mut cmd,
        &dir.join("pgbouncer.log"),
        libc::SIGINT,
    )?;
    wait_port(port, "pgbouncer", &mut proc)?;
    Ok((port, proc))
}

fn start_haproxy(dir: &Path, pg_port: u16) -> Result<(u16, Proc)> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n    maxconn 2000\n\ndefaults\n    mode tcp\n    timeout connect 5s\n\
             \x20   timeout client 1h\n    timeout server 1h\n\n\
             frontend bench\n    bind 127.0.0.1:{port}\n    default_backend pg\n\n\
             backend pg\n    server pg 127.0.0.1:{pg_port}\n"
        ),
    )?;
    let mut cmd = Command::new("haproxy");
    cmd.arg("-f").arg(&cfg).arg("-db");
    let mut proc = Proc::spawn("haproxy", &mut cmd, &dir.join("haproxy.log"), libc::SIGTERM)?;
    wait_port(port, "haproxy", &mut proc)?;
    Ok((port, proc))
}

/// A throwaway MariaDB on 127.0.0.1 with `bench.kv` (100 000 rows) and a
/// `bench` user (password `bench`) allowed from 127.0.0.1.
struct MariaDb {
    port: u16,
    proc: Proc,
}

impl MariaDb {
    fn start(dir: &Path) -> Result<MariaDb> {
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
        let (uid, gid) = user_ids("mysql")?;
        let data = dir.join("data");
        output(
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg("--user=mysql")
                .arg(format!("--datadir={}", data.display()))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"]),
        )?;
        chown_r(dir, uid, gid)?;
        let port = free_port()?;
        let socket = dir.join("mysqld.sock");
        let mut cmd = Command::new("mariadbd");
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--pid-file={}", dir.join("mariadbd.pid").display()))
            .args([
                "--bind-address=127.0.0.1",
                "--user=mysql",
                "--skip-name-resolve",
            ])
            .args(["--innodb-buffer-pool-size=128M", "--max-connections=300"])
            .args(["--innodb-flush-log-at-trx-commit=0", "--skip-log-bin"]);
        let mut proc = Proc::spawn(
            "mariadbd",
            &mut cmd,
            &dir.join("mariadb.log"),
            libc::SIGTERM,
        )?;
        let m = |sql: &str| -> Command {
            let mut c = Command::new("mariadb");
            c.arg("--no-defaults")
                .arg(format!("--socket={}", socket.display()))
                .args(["-uroot", "-N", "-B", "-e", sql]);
            c
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while output(&mut m("SELECT 1")).is_err() {
            proc.check_alive()?;
            check_interrupted()?;
            if Instant::now() > deadline {
                bail!("mariadbd did not start:\n{}", tail(&proc.log, 30));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        output(&mut m("CREATE DATABASE bench; USE bench; \
             CREATE TABLE bench.kv (id INT PRIMARY KEY, v VARCHAR(64) NOT NULL, email VARCHAR(64) NOT NULL); \
             INSERT INTO bench.kv SELECT seq, CONCAT('value-', seq), CONCAT('user', seq, '@example.com') FROM seq_1_to_100000; \
             CREATE USER 'bench'@'127.0.0.1' IDENTIFIED BY 'bench'; \
             GRANT ALL ON bench.* TO 'bench'@'127.0.0.1';"))?;
        Ok(MariaDb { port, proc })
    }
}

/// The statements `mysqlslap` cycles through: point SELECTs with
/// pseudo-random keys (different literals, as `pgbench -M simple` sends).
fn mysql_queries(path: &Path) -> Result<()> {
    let mut text = String::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..10_000 {
        // xorshift64
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let _ = writeln!(text, "SELECT v FROM kv WHERE id = {};", x % 100_000 + 1);
    }
    std::fs::write(path, text)?;
    Ok(())
}

// ------------------------------------------------------------ daemon

/// The representative policy: the PostgreSQL port intercepted with the
/// postgres protocol module, destructive DDL denied, unbounded writes held
/// for review, everything else allowed without an identity, and masking
/// by detectors and column names.
fn policy(pg_port: u16, mysql_port: Option<u16>) -> String {
    let mysql = match mysql_port {
        Some(p) => format!("\n[[intercept]]\nport = {p}\nprotocol = \"mysql\"\n"),
        None => String::new(),
    };
    format!(
        r#"[defaults]
decision = "allow"
unparsed = "review"
approval_timeout = "5m"

[[intercept]]
port = {pg_port}
protocol = "postgres"
{mysql}
[[rule]]
name = "no-destructive-ddl"
match = {{ protocol = ["postgres", "mysql"], sql.statement = ["drop", "truncate"] }}
decision = "deny"

[[rule]]
name = "unbounded-writes-need-review"
match = {{ protocol = ["postgres", "mysql"], sql.statement = ["update", "delete"], sql.has_where = false }}
decision = "review"

[[rule]]
name = "databases-allowed"
match = {{ protocol = ["postgres", "mysql"] }}
decision = "allow"

[[mask]]
name = "sensitive"
detectors = ["credit_card", "email", "us_ssn", "iban", "aws_access_key", "jwt"]
columns = ["password*", "*token*", "ssn"]
"#
    )
}

struct Daemon {
    proc: Proc,
    bin: PathBuf,
    config: PathBuf,
    db: PathBuf,
    pin_dir: PathBuf,
    sync: &'static str,
}

impl Daemon {
    fn start(
        bin: &Path,
        dir: &Path,
        ports: (u16, Option<u16>),
        sync: &'static str,
        n: usize,
    ) -> Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        // The daemon refuses a proxy port an unprivileged process could bind.
        let port = free_privileged_port()?;
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/{PREFIX}{}-{n}", std::process::id()));
        std::fs::write(dir.join("policy.toml"), policy(ports.0, ports.1))?;
        let config = dir.join("interceptor.toml");
        std::fs::write(
            &config,
            format!(
                "[identity]\nenroll_socket = \"{enroll}\"\n\n[daemon]\npolicy = \"policy.toml\"\n\
                 proxy_port = {port}\nstate_dir = \"{state}\"\ncontrol_socket = \"{control}\"\n\
                 bpf_pin_dir = \"{pins}\"\nsync = \"{sync}\"\nshutdown_grace = \"2s\"\n",
                enroll = dir.join("enroll.sock").display(),
                state = dir.join("state").display(),
                control = dir.join("control.sock").display(),
                pins = pin_dir.display(),
            ),
        )?;
        let mut cmd = Command::new(bin);
        cmd.args(["run", "--config"]).arg(&config);
        let proc = Proc::spawn(
            &format!("interceptor daemon (sync = {sync})"),
            &mut cmd,
            &dir.join("daemon.log"),
            libc::SIGTERM,
        )?;
        let mut d = Daemon {
            proc,
            bin: bin.to_path_buf(),
            config,
            db: dir.join("state/interceptor.db"),
            pin_dir,
            sync,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while d.cli(&["status", "--json"]).is_err() {
            d.proc.check_alive()?;
            check_interrupted()?;
            if Instant::now() > deadline {
                bail!("daemon not ready after 30 s:\n{}", tail(&d.proc.log, 30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(d)
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        output(
            Command::new(&self.bin)
                .arg("--config")
                .arg(&self.config)
                .args(args),
        )
    }

    fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// The recorder's counters: operations written and transactions
    /// committed since the daemon started.
    fn recorder_counters(&self) -> Result<(u64, u64)> {
        let status: serde_json::Value = serde_json::from_str(&self.cli(&["status", "--json"])?)
            .context("interceptor status --json")?;
        let r = &status["counters"]["recorder"];
        match (r["ops"].as_u64(), r["commits"].as_u64()) {
            (Some(ops), Some(commits)) => Ok((ops, commits)),
            _ => bail!("no recorder counters in `interceptor status --json`"),
        }
    }

    fn open_db(&self) -> Result<rusqlite::Connection> {
        let conn = rusqlite::Connection::open_with_flags(
            &self.db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .with_context(|| format!("open {}", self.db.display()))?;
        conn.busy_timeout(Duration::from_secs(5))?;
        Ok(conn)
    }

    fn max_session(&self) -> Result<i64> {
        Ok(self
            .open_db()?
            .query_row("SELECT coalesce(max(id), 0) FROM sessions", [], |r| {
                r.get(0)
            })?)
    }

    /// What was recorded for sessions newer than `after`.
    fn recorded_since(&self, after: i64, needle: &str) -> Result<Recorded> {
        let conn = self.open_db()?;
        let sessions: i64 = conn.query_row(
            "SELECT count(*) FROM sessions WHERE id > ?1",
            [after],
            |r| r.get(0),
        )?;
        let (events, statements, matching): (i64, i64, i64) = conn.query_row(
            "SELECT count(*), coalesce(sum(kind IN ('statement', 'execute')), 0), \
             coalesce(sum(kind IN ('statement', 'execute') AND instr(text, ?2) > 0), 0) \
             FROM events WHERE session_id > ?1",
            rusqlite::params![after, needle],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        Ok(Recorded {
            sessions: sessions as u64,
            events: events as u64,
            statements: statements as u64,
            workload_statements: matching as u64,
        })
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // Stop the daemon first (SIGTERM, then SIGKILL), then unpin its
        // links, which detaches the programs.
        if let Ok(None) = self.proc.child.try_wait() {
            // SAFETY: plain kill(2) on our own, not yet reaped, child.
            unsafe {
                libc::kill(self.proc.pid() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.proc.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.proc.child.kill();
            let _ = self.proc.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct Recorded {
    /// Sessions recorded (one per client connection).
    sessions: u64,
    /// All events.
    events: u64,
    /// Statement and execute events.
    statements: u64,
    /// Statement and execute events of the workload's own statement.
    workload_statements: u64,
}

// ------------------------------------------------------------ variants

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Variant {
    Direct,
    Interceptor,
    InterceptorSyncNormal,
    Pgbouncer,
    Haproxy,
}

impl Variant {
    fn id(self) -> &'static str {
        match self {
            Variant::Direct => "direct",
            Variant::Interceptor => "interceptor",
            Variant::InterceptorSyncNormal => "interceptor (sync=normal)",
            Variant::Pgbouncer => "pgbouncer",
            Variant::Haproxy => "haproxy",
        }
    }

    /// The MySQL workloads compare direct and interceptor only.
    fn applies_to(self, w: &Workload) -> bool {
        w.kind != Kind::MysqlSelect || self == Variant::Direct || self.is_interceptor()
    }

    fn is_interceptor(self) -> bool {
        matches!(self, Variant::Interceptor | Variant::InterceptorSyncNormal)
    }
}

// ------------------------------------------------------------ workloads

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `pgbench -S`: one indexed SELECT per transaction.
    Select,
    /// One SELECT of the whole 100 000-row table per transaction.
    Bulk,
    /// `pgbench -S -C`: a new connection for every transaction.
    Connect,
    /// MariaDB: `mysqlslap` running random primary-key SELECTs.
    MysqlSelect,
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    id: &'static str,
    /// The pgbench options that define it (for the report).
    command: &'static str,
    kind: Kind,
    clients: u32,
    mode: &'static str,
}

const WORKLOADS: &[Workload] = &[
    Workload {
        id: "select-c1-simple",
        command: "pgbench -S -c 1 -j 1 -M simple",
        kind: Kind::Select,
        clients: 1,
        mode: "simple",
    },
    Workload {
        id: "select-c8-simple",
        command: "pgbench -S -c 8 -j 2 -M simple",
        kind: Kind::Select,
        clients: 8,
        mode: "simple",
    },
    Workload {
        id: "select-c1-extended",
        command: "pgbench -S -c 1 -j 1 -M extended",
        kind: Kind::Select,
        clients: 1,
        mode: "extended",
    },
    Workload {
        id: "select-c8-extended",
        command: "pgbench -S -c 8 -j 2 -M extended",
        kind: Kind::Select,
        clients: 8,
        mode: "extended",
    },
    Workload {
        id: "bulk",
        command: "pgbench -f bulk.sql -c 1 -j 1 -M simple (SELECT id, email, card FROM bench_people: 100 000 rows, e-mail and card masked)",
        kind: Kind::Bulk,
        clients: 1,
        mode: "simple",
    },
    Workload {
        id: "connect",
        command: "pgbench -S -C -c 1 -j 1 -M simple (new connection per transaction)",
        kind: Kind::Connect,
        clients: 1,
        mode: "simple",
    },
    Workload {
        id: "mysql-c1",
        command: "mysqlslap -c 1 (random primary-key SELECTs on MariaDB, text protocol)",
        kind: Kind::MysqlSelect,
        clients: 1,
        mode: "text",
    },
    Workload {
        id: "mysql-c8",
        command: "mysqlslap -c 8 (random primary-key SELECTs on MariaDB, text protocol)",
        kind: Kind::MysqlSelect,
        clients: 8,
        mode: "text",
    },
];

impl Workload {
    /// Text that identifies the workload's statement in recorded events
    /// (pgbench's own start-up queries, e.g. its partition check on
    /// pgbench_accounts, do not count).
    fn needle(&self) -> &'static str {
        match self.kind {
            Kind::Bulk => "SELECT id, email, card FROM bench_people",
            Kind::MysqlSelect => "SELECT v FROM kv WHERE id",
            _ => "SELECT abalance FROM pgbench_accounts WHERE aid",
        }
    }

    fn unit(&self) -> &'static str {
        match self.kind {
            Kind::Select | Kind::MysqlSelect => "tps",
            Kind::Bulk => "rows/s",
            Kind::Connect => "connections/s",
        }
    }
}

// ------------------------------------------------------------ one run

#[derive(Debug, Clone, Serialize)]
struct Run {
    round: u32,
    /// Transactions per second as pgbench reports it.
    tps: f64,
    transactions: u64,
    avg_latency_ms: f64,
    p99_latency_ms: f64,
    wall_s: f64,
    /// CPU time of the proxy process during the run (all variants but
    /// direct), ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy_cpu_ms: Option<f64>,
    /// Interceptor variants only.
    #[serde(skip_serializing_if = "Option::is_none")]
    daemon: Option<DaemonRun>,
}

#[derive(Debug, Clone, Serialize)]
struct DaemonRun {
    recorded: Recorded,
    /// Operations the recorder wrote and transactions it committed.
    recorder_ops: u64,
    recorder_commits: u64,
}

fn parse_pgbench(stdout: &str) -> Result<(f64, u64)> {
    let mut tps = None;
    let mut txns = None;
    for line in stdout.lines() {
        if tps.is_none()
            && let Some(rest) = line.strip_prefix("tps = ")
        {
            tps = rest.split_whitespace().next().and_then(|v| v.parse().ok());
        }
        if let Some(rest) = line.strip_prefix("number of transactions actually processed: ") {
            txns = rest
                .split(['/', ' '])
                .next()
                .and_then(|v| v.trim().parse().ok());
        }
    }
    match (tps, txns) {
        (Some(t), Some(n)) => Ok((t, n)),
        _ => bail!("cannot parse pgbench output:\n{stdout}"),
    }
}

struct Mysqlslap {
    seconds: f64,
    clients: u32,
    queries_per_client: f64,
}

/// `Average number of seconds to run all queries: 2.345 seconds`,
/// `Number of clients running queries: 8`,
/// `Average number of queries per client: 1250`.
fn parse_mysqlslap(stdout: &str) -> Result<Mysqlslap> {
    let value = |key: &str| -> Option<f64> {
        stdout.lines().find_map(|l| {
            l.trim()
                .strip_prefix(key)
                .and_then(|r| r.split_whitespace().next())
                .and_then(|v| v.parse().ok())
        })
    };
    match (
        value("Average number of seconds to run all queries:"),
        value("Number of clients running queries:"),
        value("Average number of queries per client:"),
    ) {
        (Some(s), Some(c), Some(q)) if s > 0.0 => Ok(Mysqlslap {
            seconds: s,
            clients: c as u32,
            queries_per_client: q,
        }),
        _ => bail!("cannot parse mysqlslap output:\n{stdout}"),
    }
}

/// Per-transaction latencies (µs) from the pgbench logs in `dir`
/// (`client_id transaction_no time script_no time_epoch time_us ...`).
fn read_latencies(dir: &Path) -> Result<Vec<u64>> {
    let mut lat = Vec::new();
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if !e.file_name().to_string_lossy().starts_with("log") {
            continue;
        }
        let text = std::fs::read_to_string(e.path())?;
        for line in text.lines() {
            if let Some(v) = line.split_whitespace().nth(2).and_then(|v| v.parse().ok()) {
                lat.push(v);
            }
        }
    }
    lat.sort_unstable();
    Ok(lat)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1] as f64
}

// ------------------------------------------------------------ the bench

struct Bench {
    // Dropped in this order: clients' cgroups, daemons, proxies, server,
    // and the temp dir last.
    cgroups: Vec<Cgroup>,
    daemons: Vec<Daemon>,
    pgbouncer: Option<Proc>,
    haproxy: Option<Proc>,
    pg: Option<Postgres>,
    mariadb: Option<MariaDb>,
    pg_port: u16,
    pgbouncer_port: u16,
    haproxy_port: u16,
    /// Per-client query rate of each MySQL workload and variant, from its
    /// last run: sizes the next run to about `duration` seconds
    /// (mysqlslap runs a number of queries, not for a time).
    mysql_rate: BTreeMap<(&'static str, Variant), f64>,
    dir: tempfile::TempDir,
}

impl Bench {
    fn start(bin: &Path, sync_normal: bool, mysql: bool) -> Result<Bench> {
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir()
            .context("temp dir")?;
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
        let mut b = Bench {
            cgroups: Vec::new(),
            daemons: Vec::new(),
            pgbouncer: None,
            haproxy: None,
            pg: None,
            mariadb: None,
            pg_port: 0,
            pgbouncer_port: 0,
            haproxy_port: 0,
            mysql_rate: BTreeMap::new(),
            dir,
        };
        eprintln!("starting PostgreSQL in {}", b.dir.path().display());
        let pg = Postgres::start(&b.dir.path().join("pg"))?;
        b.pg_port = pg.port;
        b.pg = Some(pg);
        load_data(b.pg_port, b.dir.path())?;
        std::fs::write(
            b.dir.path().join("bulk.sql"),
            "SELECT id, email, card FROM bench_people;\n",
        )?;
        let (port, proc) = start_pgbouncer(&b.dir.path().join("pgbouncer"), b.pg_port)?;
        b.pgbouncer_port = port;
        b.pgbouncer = Some(proc);
        let (port, proc) = start_haproxy(&b.dir.path().join("haproxy"), b.pg_port)?;
        b.haproxy_port = port;
        b.haproxy = Some(proc);
        if mysql {
            eprintln!("starting MariaDB");
            b.mariadb = Some(MariaDb::start(&b.dir.path().join("mariadb"))?);
            mysql_queries(&b.dir.path().join("mysql-queries.sql"))?;
        }
        let syncs: &[&'static str] = if sync_normal {
            &["full", "normal"]
        } else {
            &["full"]
        };
        for (n, sync) in syncs.iter().enumerate() {
            eprintln!("starting the interceptor daemon (sync = {sync})");
            let d = Daemon::start(
                bin,
                &b.dir.path().join(format!("daemon-{n}")),
                (b.pg_port, b.mariadb.as_ref().map(|m| m.port)),
                sync,
                n,
            )?;
            b.daemons.push(d);
            let cg = Cgroup::create(&format!("{PREFIX}{}-{n}", std::process::id()))?;
            b.daemons[n].cli(&["attach", "--cgroup", &cg.path])?;
            b.cgroups.push(cg);
        }
        Ok(b)
    }

    fn port_for(&self, w: &Workload, v: Variant) -> u16 {
        match (w.kind, &self.mariadb) {
            (Kind::MysqlSelect, Some(m)) => m.port,
            _ => self.port(v),
        }
    }

    fn port(&self, v: Variant) -> u16 {
        match v {
            Variant::Direct | Variant::Interceptor | Variant::InterceptorSyncNormal => self.pg_port,
            Variant::Pgbouncer => self.pgbouncer_port,
            Variant::Haproxy => self.haproxy_port,
        }
    }

    fn slot(v: Variant) -> Option<usize> {
        match v {
            Variant::Interceptor => Some(0),
            Variant::InterceptorSyncNormal => Some(1),
            _ => None,
        }
    }

    fn daemon(&self, v: Variant) -> Option<&Daemon> {
        Self::slot(v).and_then(|i| self.daemons.get(i))
    }

    /// The process that proxies variant `v`, if any.
    fn proxy_pid(&self, v: Variant) -> Option<u32> {
        match v {
            Variant::Direct => None,
            Variant::Pgbouncer => self.pgbouncer.as_ref().map(Proc::pid),
            Variant::Haproxy => self.haproxy.as_ref().map(Proc::pid),
            _ => self.daemon(v).map(Daemon::pid),
        }
    }

    /// A client command for variant `v`: inside the attached cgroup for the
    /// interceptor variants (the redirect does the rest), plain otherwise.
    fn client(&self, v: Variant, program: &str) -> Command {
        let mut cmd = match Self::slot(v).and_then(|i| self.cgroups.get(i)) {
            Some(cg) => cg.command(program),
            None => Command::new(program),
        };
        // libpq's default, pinned: the server has no TLS, so every path is
        // plain TCP after the SSLRequest round trip (which the interceptor
        // and haproxy relay to the server, and pgbouncer answers itself).
        cmd.env("PGSSLMODE", "prefer")
            .env("PGCONNECT_TIMEOUT", "10");
        cmd
    }

    fn check_alive(&mut self) -> Result<()> {
        for d in &mut self.daemons {
            d.proc.check_alive()?;
        }
        for p in [&mut self.pgbouncer, &mut self.haproxy]
            .into_iter()
            .flatten()
        {
            p.check_alive()?;
        }
        if let Some(pg) = &mut self.pg {
            pg.proc.check_alive()?;
        }
        if let Some(m) = &mut self.mariadb {
            m.proc.check_alive()?;
        }
        Ok(())
    }

    fn pgbench(&self, v: Variant, w: &Workload, duration: u32, log_prefix: &Path) -> Command {
        let mut cmd = self.client(v, "pgbench");
        cmd.arg("-n");
        match w.kind {
            Kind::Select => {
                cmd.args(["-S", "-c", &w.clients.to_string()])
                    .args(["-j", &w.clients.min(2).to_string()]);
            }
            Kind::Bulk => {
                cmd.arg("-f")
                    .arg(self.dir.path().join("bulk.sql"))
                    .args(["-c", "1", "-j", "1"]);
            }
            Kind::Connect | Kind::MysqlSelect => {
                cmd.args(["-S", "-C", "-c", "1", "-j", "1"]);
            }
        }
        cmd.args(["-M", w.mode, "-T", &duration.to_string()])
            .args(["-h", "127.0.0.1", "-p", &self.port(v).to_string()])
            .args(["-U", "postgres", "-l", "--log-prefix"])
            .arg(log_prefix)
            .arg("postgres");
        cmd
    }

    fn mysqlslap(&self, v: Variant, w: &Workload, duration: u32) -> Command {
        // Queries per client: from the last measured rate, or a first guess.
        let rate = self.mysql_rate.get(&(w.id, v)).copied().unwrap_or(500.0);
        let per_client = ((rate * f64::from(duration)) as u64).clamp(200, 2_000_000);
        let mut cmd = self.client(v, "mysqlslap");
        cmd.arg("--no-defaults")
            .args(["--host=127.0.0.1", "--protocol=tcp"])
            .arg(format!("--port={}", self.port_for(w, v)))
            .args(["--user=bench", "--password=bench", "--create-schema=bench"])
            .args(["--no-drop", "--iterations=1", "--delimiter=;"])
            .arg(format!("--concurrency={}", w.clients))
            .arg(format!(
                "--number-of-queries={}",
                per_client * u64::from(w.clients)
            ))
            .arg(format!(
                "--query={}",
                self.dir.path().join("mysql-queries.sql").display()
            ));
        cmd
    }

    fn run_once(&mut self, w: &Workload, v: Variant, round: u32, duration: u32) -> Result<Run> {
        check_interrupted()?;
        let name = format!(
            "{}-{}-{round}",
            w.id,
            v.id().replace([' ', '(', ')', '='], "")
        );
        let logs = self.dir.path().join("runs").join(&name);
        std::fs::create_dir_all(&logs)?;
        let cpu0 = match self.proxy_pid(v) {
            Some(pid) => Some(cpu_ms(pid)?),
            None => None,
        };
        let before = match self.daemon(v) {
            Some(d) => Some((d.max_session()?, d.recorder_counters()?)),
            None => None,
        };
        let start = Instant::now();
        let mut cmd = match w.kind {
            Kind::MysqlSelect => self.mysqlslap(v, w, duration),
            _ => self.pgbench(v, w, duration, &logs.join("log")),
        };
        let (out, _) = run_logged(
            &mut cmd,
            &logs,
            Duration::from_secs(u64::from(duration) * 10 + 120),
        )?;
        let wall_s = start.elapsed().as_secs_f64();
        let proxy_cpu_ms = match (self.proxy_pid(v), cpu0) {
            (Some(pid), Some(c0)) => Some(cpu_ms(pid)? - c0),
            _ => None,
        };
        let daemon = match (self.daemon(v), before) {
            (Some(d), Some((session0, (ops0, commits0)))) => {
                let (ops, commits) = d.recorder_counters()?;
                Some(DaemonRun {
                    recorded: d.recorded_since(session0, w.needle())?,
                    recorder_ops: ops - ops0,
                    recorder_commits: commits - commits0,
                })
            }
            _ => None,
        };
        self.check_alive()?;
        let (tps, transactions, avg_latency_ms, p99_latency_ms) = match w.kind {
            Kind::MysqlSelect => {
                let m = parse_mysqlslap(&out)?;
                let rate = m.queries_per_client / m.seconds;
                self.mysql_rate.insert((w.id, v), rate);
                (
                    rate * f64::from(m.clients),
                    (m.queries_per_client * f64::from(m.clients)) as u64,
                    1000.0 / rate,
                    // mysqlslap reports no per-query latencies.
                    f64::NAN,
                )
            }
            _ => {
                let (tps, transactions) = parse_pgbench(&out)?;
                let lat = read_latencies(&logs)?;
                let avg = if lat.is_empty() {
                    0.0
                } else {
                    lat.iter().sum::<u64>() as f64 / lat.len() as f64
                };
                (
                    tps,
                    transactions,
                    avg / 1000.0,
                    percentile(&lat, 99.0) / 1000.0,
                )
            }
        };
        let run = Run {
            round,
            tps,
            transactions,
            avg_latency_ms,
            p99_latency_ms,
            wall_s,
            proxy_cpu_ms,
            daemon,
        };
        let _ = std::fs::remove_dir_all(&logs);
        eprintln!(
            "  {:<20} {:<26} {:>10.1} tps  avg {:>8.3} ms  p99 {:>8} {}",
            w.id,
            v.id(),
            run.tps,
            run.avg_latency_ms,
            fmt_ms(run.p99_latency_ms),
            match (&run.daemon, run.proxy_cpu_ms) {
                (Some(d), cpu) => format!(
                    "  cpu {:.0} ms  recorded {}/{}  commits {}",
                    cpu.unwrap_or(0.0),
                    d.recorded.workload_statements,
                    run.transactions,
                    d.recorder_commits
                ),
                (None, Some(cpu)) => format!("  cpu {cpu:.0} ms"),
                (None, None) => String::new(),
            }
        );
        Ok(run)
    }

    /// The whole bulk result through `psql`, checked: every e-mail and card
    /// value masked through the interceptor, none directly.
    fn mask_check(&self, v: Variant) -> Result<MaskCheck> {
        let mut cmd = self.client(v, "psql");
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port(v).to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .args(["-c", "SELECT id, email, card FROM bench_people"]);
        let base = self
            .dir
            .path()
            .join(format!("mask-check-{}", Self::slot(v).unwrap_or(9)));
        let (out, _) = run_logged(&mut cmd, &base, Duration::from_secs(120))?;
        let _ = std::fs::remove_file(base.with_extension("out"));
        let mut c = MaskCheck::default();
        for line in out.lines() {
            c.rows += 1;
            c.masked_email += u64::from(line.contains("<masked:email>"));
            c.masked_card += u64::from(line.contains("<masked:credit_card>"));
            c.raw_email += u64::from(line.contains("@example.com"));
        }
        Ok(c)
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize)]
struct MaskCheck {
    rows: u64,
    masked_email: u64,
    masked_card: u64,
    raw_email: u64,
}

// ------------------------------------------------------------ aggregation

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[derive(Debug, Clone, Serialize)]
struct Cell {
    workload: &'static str,
    variant: Variant,
    variant_name: &'static str,
    /// Throughput in the workload's unit (tps, rows/s, connections/s).
    unit: &'static str,
    throughput_median: f64,
    throughput_min: f64,
    throughput_max: f64,
    /// Median throughput / median direct throughput.
    ratio_to_direct: f64,
    avg_latency_ms: f64,
    p99_latency_ms: f64,
    /// Median average latency minus direct's (1-client workloads), µs.
    added_latency_us: Option<f64>,
    /// Proxies (not direct): median CPU ms of the proxy process per 1 000
    /// statements.
    cpu_ms_per_1000_statements: Option<f64>,
    /// Interceptor only: median recorder commits (SQLite transactions,
    /// each a WAL fsync with `sync = "full"`) per 1 000 statements.
    commits_per_1000_statements: Option<f64>,
    /// Interceptor only: median events recorded per second.
    events_per_s: Option<f64>,
    /// Interceptor only: workload statements recorded, over all rounds.
    statements_recorded: Option<u64>,
    /// Interceptor only: transactions pgbench completed, over all rounds.
    transactions: Option<u64>,
    runs: Vec<Run>,
}

fn aggregate(w: &Workload, v: Variant, runs: &[Run], direct: Option<&Cell>) -> Cell {
    let per_run = |r: &Run| match w.kind {
        Kind::Bulk => r.tps * BULK_ROWS as f64,
        _ => r.tps,
    };
    let mut t: Vec<f64> = runs.iter().map(per_run).collect();
    let throughput_median = median(&mut t);
    let throughput_min = t.iter().copied().fold(f64::INFINITY, f64::min);
    let throughput_max = t.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let avg_latency_ms = median(&mut runs.iter().map(|r| r.avg_latency_ms).collect::<Vec<_>>());
    let p99_latency_ms = median(&mut runs.iter().map(|r| r.p99_latency_ms).collect::<Vec<_>>());
    let ratio_to_direct = direct.map_or(1.0, |d| throughput_median / d.throughput_median);
    let added_latency_us = match (direct, w.clients) {
        (Some(d), 1) => Some((avg_latency_ms - d.avg_latency_ms) * 1000.0),
        (None, 1) => Some(0.0),
        _ => None,
    };
    // Each transaction of every workload is one statement.
    let mut cpu: Vec<f64> = runs
        .iter()
        .filter_map(|r| {
            r.proxy_cpu_ms
                .map(|c| c * 1000.0 / r.transactions.max(1) as f64)
        })
        .collect();
    let cpu = (!cpu.is_empty()).then(|| median(&mut cpu));
    let daemon_runs: Vec<(&Run, &DaemonRun)> = runs
        .iter()
        .filter_map(|r| r.daemon.as_ref().map(|d| (r, d)))
        .collect();
    let (commits, eps, recorded, txns) = if daemon_runs.is_empty() {
        (None, None, None, None)
    } else {
        let mut commits: Vec<f64> = daemon_runs
            .iter()
            .map(|(r, d)| d.recorder_commits as f64 * 1000.0 / r.transactions.max(1) as f64)
            .collect();
        // Events per second over pgbench's own measurement window.
        let mut eps: Vec<f64> = daemon_runs
            .iter()
            .map(|(r, d)| {
                let window = if r.tps > 0.0 {
                    r.transactions as f64 / r.tps
                } else {
                    r.wall_s
                };
                d.recorded.events as f64 / window.max(1e-9)
            })
            .collect();
        (
            Some(median(&mut commits)),
            Some(median(&mut eps)),
            Some(
                daemon_runs
                    .iter()
                    .map(|(_, d)| d.recorded.workload_statements)
                    .sum(),
            ),
            Some(daemon_runs.iter().map(|(r, _)| r.transactions).sum()),
        )
    };
    Cell {
        workload: w.id,
        variant: v,
        variant_name: v.id(),
        unit: w.unit(),
        throughput_median,
        throughput_min,
        throughput_max,
        ratio_to_direct,
        avg_latency_ms,
        p99_latency_ms,
        added_latency_us,
        cpu_ms_per_1000_statements: cpu,
        commits_per_1000_statements: commits,
        events_per_s: eps,
        statements_recorded: recorded,
        transactions: txns,
        runs: runs.to_vec(),
    }
}

// ------------------------------------------------------------ machine

#[derive(Debug, Clone, Serialize)]
struct Machine {
    date_utc: String,
    cores: u32,
    cpu_model: String,
    kernel: String,
    load_average_start: String,
    load_average_end: String,
    postgres: String,
    pgbouncer: String,
    haproxy: String,
    interceptor_commit: String,
    /// File system of the temp dir that holds the daemon's database.
    state_fs: String,
    /// Uncommitted changes under interceptor/, interceptor-ebpf/,
    /// interceptor-common/ or policy/ at the time of the run.
    interceptor_worktree_dirty: bool,
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

impl Machine {
    fn probe(root: &Path) -> Machine {
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_default();
        let dirty = Command::new("git")
            .args(["status", "--porcelain", "--"])
            .args([
                "interceptor",
                "interceptor-ebpf",
                "interceptor-common",
                "policy",
            ])
            .current_dir(root)
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        // "postgres (PostgreSQL) 15.18 (Debian …)" -> "PostgreSQL 15.18"
        let pg = pg_bindir()
            .map(|b| first_line(Command::new(b.join("postgres")).arg("--version")))
            .unwrap_or_default();
        let pg = match pg.split_whitespace().nth(2) {
            Some(v) => format!("PostgreSQL {v}"),
            None => pg,
        };
        // "HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://…" -> "HAProxy 2.6.12-1+deb12u4"
        let haproxy = first_line(Command::new("haproxy").arg("-v"));
        let haproxy = match haproxy.split_whitespace().nth(2) {
            Some(v) => format!("HAProxy {v}"),
            None => haproxy,
        };
        Machine {
            date_utc: first_line(Command::new("date").args(["-u", "+%Y-%m-%d %H:%M UTC"])),
            cores: first_line(&mut Command::new("nproc")).parse().unwrap_or(0),
            cpu_model,
            kernel: first_line(Command::new("uname").arg("-r")),
            load_average_start: loadavg(),
            load_average_end: String::new(),
            postgres: pg,
            pgbouncer: first_line(Command::new("pgbouncer").arg("--version")),
            haproxy,
            interceptor_commit: first_line(
                Command::new("git")
                    .args(["rev-parse", "--short", "HEAD"])
                    .current_dir(root),
            ),
            interceptor_worktree_dirty: dirty,
            state_fs: first_line(
                Command::new("findmnt")
                    .args(["-n", "-o", "FSTYPE", "-T"])
                    .arg(std::env::temp_dir()),
            ),
        }
    }
}

// ------------------------------------------------------------ report

#[derive(Debug, Clone, Serialize)]
struct Target {
    name: String,
    measured: String,
    met: bool,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    command: String,
    rounds: u32,
    duration_s: u32,
    machine: Machine,
    /// Peak resident set (VmHWM) of each proxy process at the end, KiB.
    peak_rss_kib: BTreeMap<String, u64>,
    mask_check: BTreeMap<String, MaskCheck>,
    targets: Vec<Target>,
    cells: Vec<Cell>,
    #[serde(skip_serializing_if = "Option::is_none")]
    profile: Option<String>,
}

fn find<'a>(cells: &'a [Cell], w: &str, v: Variant) -> Option<&'a Cell> {
    cells.iter().find(|c| c.workload == w && c.variant == v)
}

fn targets(cells: &[Cell]) -> Vec<Target> {
    let mut out = Vec::new();
    for w in ["select-c8-simple", "select-c8-extended"] {
        if let Some(i) = find(cells, w, Variant::Interceptor) {
            for other in [Variant::Pgbouncer, Variant::Haproxy] {
                if let Some(o) = find(cells, w, other) {
                    out.push(Target {
                        name: format!("{w}: interceptor tps ≥ {}", other.id()),
                        measured: format!(
                            "{:.0} vs {:.0} tps ({:.2}×)",
                            i.throughput_median,
                            o.throughput_median,
                            i.throughput_median / o.throughput_median
                        ),
                        met: i.throughput_median >= o.throughput_median,
                    });
                }
            }
        }
    }
    for w in ["select-c1-simple", "select-c1-extended"] {
        if let Some(i) = find(cells, w, Variant::Interceptor)
            && let Some(added) = i.added_latency_us
        {
            out.push(Target {
                name: format!("{w}: added latency ≤ 25 µs per statement"),
                measured: format!("{added:.0} µs"),
                met: added <= 25.0,
            });
        }
    }
    if let (Some(i), Some(d)) = (
        find(cells, "connect", Variant::Interceptor),
        find(cells, "connect", Variant::Direct),
    ) {
        out.push(Target {
            name: "connection setup through the redirect ≤ 1.5× direct".into(),
            measured: format!(
                "{:.0} vs {:.0} connections/s ({:.2}× the time)",
                i.throughput_median,
                d.throughput_median,
                d.throughput_median / i.throughput_median
            ),
            met: i.throughput_median * 1.5 >= d.throughput_median,
        });
    }
    let mut recorded = 0;
    let mut txns = 0;
    let mut short = Vec::new();
    for c in cells.iter().filter(|c| c.variant.is_interceptor()) {
        for r in &c.runs {
            if let Some(d) = &r.daemon {
                recorded += d.recorded.workload_statements;
                txns += r.transactions;
                if d.recorded.workload_statements < r.transactions {
                    short.push(format!(
                        "{} {} round {}: {} recorded < {} transactions",
                        c.workload,
                        c.variant_name,
                        r.round,
                        d.recorded.workload_statements,
                        r.transactions
                    ));
                }
            }
        }
    }
    if txns > 0 {
        out.push(Target {
            name: "every statement recorded".into(),
            measured: if short.is_empty() {
                format!(
                    "{recorded} statements recorded for {txns} transactions (≥ 1 each; the extra ones were in flight when pgbench stopped)"
                )
            } else {
                format!("missing: {}", short.join("; "))
            },
            met: short.is_empty(),
        });
    }
    out
}

fn fmt_ms(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3} ms")
    } else {
        "–".into()
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        let s = format!("{v:.0}");
        // Thin grouping for readability: 1234567 -> 1 234 567.
        let bytes = s.as_bytes();
        let mut out = String::new();
        for (i, c) in bytes.iter().enumerate() {
            if i > 0 && (bytes.len() - i) % 3 == 0 {
                out.push(' ');
            }
            out.push(*c as char);
        }
        out
    } else {
        format!("{v:.1}")
    }
}

/// The report as Markdown; the profile (long) only with `with_profile`.
fn markdown(r: &Report, with_profile: bool) -> String {
    let m = &r.machine;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} with `{}` ({} round{} × {} s per run, the variants alternated within each round).\n",
        m.date_utc,
        r.command,
        r.rounds,
        if r.rounds == 1 { "" } else { "s" },
        r.duration_s
    );
    let _ = writeln!(
        s,
        "Machine: {} cores ({}), Linux {}; load average {} at the start, {} at the end. \
         {}, {}, {}. interceptor {}{}, release build, `sync = \"full\"` (database on {}), a policy with 3 rules and 6 detectors + 3 column globs of masking; \
         PostgreSQL with `fsync=off`, `synchronous_commit=off`, pgbench scale {SCALE}. \
         pgbouncer in session mode, haproxy in `mode tcp`; clients and servers share the machine. \
         Clients use libpq's default `sslmode=prefer`; the server has no TLS, so every path is plain TCP.\n",
        m.cores,
        m.cpu_model,
        m.kernel,
        m.load_average_start,
        m.load_average_end,
        m.postgres,
        m.pgbouncer,
        m.haproxy,
        m.interceptor_commit,
        if m.interceptor_worktree_dirty {
            " (with uncommitted changes)"
        } else {
            ""
        },
        m.state_fs,
    );
    let _ = writeln!(
        s,
        "| workload | variant | throughput (median) | min–max | vs direct | avg latency | p99 latency | added latency |"
    );
    let _ = writeln!(s, "|---|---|--:|--:|--:|--:|--:|--:|");
    for c in &r.cells {
        let _ = writeln!(
            s,
            "| {} | {} | {} {} | {}–{} | {:.2}× | {} | {} | {} |",
            c.workload,
            c.variant_name,
            fmt_num(c.throughput_median),
            c.unit,
            fmt_num(c.throughput_min),
            fmt_num(c.throughput_max),
            c.ratio_to_direct,
            fmt_ms(c.avg_latency_ms),
            fmt_ms(c.p99_latency_ms),
            match c.added_latency_us {
                Some(a) if c.variant != Variant::Direct => format!("{a:+.0} µs"),
                _ => String::new(),
            }
        );
    }
    s.push('\n');
    let _ = writeln!(
        s,
        "Workloads: {}.\n",
        WORKLOADS
            .iter()
            .filter(|w| r.cells.iter().any(|c| c.workload == w.id))
            .map(|w| format!("`{}` = `{}`", w.id, w.command))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        s,
        "The proxies' own cost (CPU time of the proxy process, utime + stime, per 1 000 statements; \
         for the interceptor also its recorder's SQLite commits and the events it recorded):\n"
    );
    let _ = writeln!(
        s,
        "| workload | variant | CPU ms / 1 000 statements | commits / 1 000 statements | events recorded / s | statements recorded / transactions |"
    );
    let _ = writeln!(s, "|---|---|--:|--:|--:|--:|");
    let opt = |v: Option<f64>| v.map(fmt_num).unwrap_or_default();
    for c in r.cells.iter().filter(|c| c.variant != Variant::Direct) {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            c.workload,
            c.variant_name,
            opt(c.cpu_ms_per_1000_statements),
            opt(c.commits_per_1000_statements),
            opt(c.events_per_s),
            match (c.statements_recorded, c.transactions) {
                (Some(a), Some(b)) => format!("{a} / {b}"),
                _ => String::new(),
            }
        );
    }
    s.push('\n');
    for (name, kib) in &r.peak_rss_kib {
        let _ = writeln!(
            s,
            "Peak RSS of {name} (VmHWM, whole run): {:.1} MiB.",
            *kib as f64 / 1024.0
        );
    }
    for (name, c) in &r.mask_check {
        let _ = writeln!(
            s,
            "Bulk result through `psql` ({name}): {} rows, e-mail masked in {}, card masked in {}, raw e-mail visible in {}.",
            c.rows, c.masked_email, c.masked_card, c.raw_email
        );
    }
    s.push('\n');
    let _ = writeln!(s, "| target | measured | met |");
    let _ = writeln!(s, "|---|---|---|");
    for t in &r.targets {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            t.name,
            t.measured,
            if t.met { "yes" } else { "**no**" }
        );
    }
    if let Some(p) = r.profile.as_ref().filter(|_| with_profile) {
        let _ = writeln!(
            s,
            "\nWhere the daemon spends its CPU (`perf record --call-graph dwarf` during `pgbench -S -c 8 -M simple`):\n\n```text\n{}\n```",
            p.trim_end()
        );
    }
    s
}

fn update_readme(root: &Path, body: &str) -> Result<()> {
    let path = root.join("README.md");
    let text = std::fs::read_to_string(&path)?;
    let (Some(a), Some(b)) = (text.find(README_START), text.find(README_END)) else {
        bail!(
            "README.md has no {README_START} … {README_END} markers; paste the section from bench-results/latest.md"
        );
    };
    if b < a {
        bail!("README.md: {README_END} comes before {README_START}");
    }
    let new = format!(
        "{}{README_START}\n{}\n{}",
        &text[..a],
        body.trim_end(),
        &text[b..]
    );
    std::fs::write(&path, new)?;
    Ok(())
}

// ------------------------------------------------------------ profile

/// `perf record` (DWARF call graphs) on the interceptor daemon during one
/// more `pgbench -S -c 8 -M simple` run; returns where its CPU time goes:
/// by thread, by binary, by function including callees (the interceptor's
/// own stages), and the top functions by self time.
fn profile(b: &mut Bench, duration: u32) -> Result<String> {
    let Some(d) = b.daemon(Variant::Interceptor) else {
        bail!("no daemon to profile");
    };
    let pid = d.pid();
    let data = b.dir.path().join("perf.data");
    let mut perf = Command::new("perf");
    perf.args(["record", "-F", "499", "--call-graph", "dwarf,8192", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string()]);
    let mut rec = Proc::spawn(
        "perf record",
        &mut perf,
        &b.dir.path().join("perf.log"),
        libc::SIGINT,
    )?;
    std::thread::sleep(Duration::from_millis(500));
    rec.check_alive()?;
    let w = WORKLOADS
        .iter()
        .find(|w| w.id == "select-c8-simple")
        .context("workload")?;
    b.run_once(w, Variant::Interceptor, 0, duration)?;
    // SAFETY: plain kill(2) on our own, running child.
    unsafe {
        libc::kill(rec.pid() as i32, libc::SIGINT);
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while rec.child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            bail!("perf record did not stop");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(rec);
    let report = |extra: &[&str]| -> Result<Vec<String>> {
        let text = output(
            Command::new("perf")
                .args(["report", "--stdio", "-g", "none", "-q", "-i"])
                .arg(&data)
                .args(extra),
        )?;
        Ok(text
            .lines()
            .map(|l| l.trim_end().trim_end_matches(['-', ' ']).to_string())
            .filter(|l| !l.trim().is_empty())
            .collect())
    };
    let by_thread = report(&["--no-children", "--sort", "comm", "--percent-limit", "1"])?;
    let by_dso = report(&["--no-children", "--sort", "dso", "--percent-limit", "1"])?;
    let inclusive = report(&["--children", "--sort", "symbol", "--percent-limit", "2"])?;
    // The stages worth naming, not the runtime's plumbing around them.
    const STAGES: &[&str] = &[
        "interceptor::proxy::",
        "interceptor::record::",
        "policy::",
        "sqlite3_step",
        "sqlparser::parser::Parser::parse_statements",
        "rustls::",
        "multi_thread::worker::Context::park",
        "[k] __x64_sys_",
        "[k] tcp_sendmsg",
        "[k] tcp_recvmsg",
    ];
    let inclusive: Vec<String> = inclusive
        .into_iter()
        .filter(|l| STAGES.iter().any(|k| l.contains(k)))
        .take(30)
        .collect();
    let self_time = report(&["--no-children", "--sort", "symbol", "--percent-limit", "1"])?;
    let self_time: Vec<String> = self_time.into_iter().take(20).collect();
    Ok(format!(
        "by thread (self):\n{}\n\nby binary (self):\n{}\n\nby function, including callees (children, self):\n{}\n\ntop functions by self time:\n{}",
        by_thread.join("\n"),
        by_dso.join("\n"),
        inclusive.join("\n"),
        self_time.join("\n"),
    ))
}

// ------------------------------------------------------------ entry point

pub fn run(root: &Path, args: Args) -> Result<()> {
    if !crate::nix_is_root() {
        bail!(
            "the benchmark loads eBPF programs, creates a cgroup and starts servers as other users: run `cargo xtask bench` as root"
        );
    }
    let (rounds, duration) = if args.quick {
        (1, 3)
    } else {
        (args.rounds.max(1), args.duration.max(1))
    };
    let workloads: Vec<&Workload> = WORKLOADS
        .iter()
        .filter(|w| args.workloads.is_empty() || args.workloads.iter().any(|x| x == w.id))
        .collect();
    if workloads.is_empty() {
        bail!("no workload matches {:?}", args.workloads);
    }
    install_signal_handlers();
    if !args.skip_setup {
        crate::setup::run(true)?;
    }
    let bin = match &args.bin {
        Some(b) => std::fs::canonicalize(b).with_context(|| format!("{}", b.display()))?,
        None => crate::build_release(root)?,
    };
    clean_stale();
    let mut machine = Machine::probe(root);
    let mut command = String::from("cargo xtask bench");
    if args.quick {
        command.push_str(" --quick");
    } else {
        if args.rounds != 3 {
            let _ = write!(command, " --rounds {rounds}");
        }
        if args.duration != 10 {
            let _ = write!(command, " --duration {duration}");
        }
    }
    if !args.workloads.is_empty() {
        let _ = write!(command, " --workloads {}", args.workloads.join(","));
    }
    if args.sync_normal {
        command.push_str(" --sync-normal");
    }

    if args.profile {
        command.push_str(" --profile");
    }
    if args.bin.is_some() {
        command.push_str(" --bin <release build>");
    }

    let mysql = workloads.iter().any(|w| w.kind == Kind::MysqlSelect);
    let mut b = Bench::start(&bin, args.sync_normal, mysql)?;
    let mut variants = vec![Variant::Direct, Variant::Interceptor];
    if args.sync_normal {
        variants.push(Variant::InterceptorSyncNormal);
    }

    variants.extend([Variant::Pgbouncer, Variant::Haproxy]);

    // The masking is what the bulk workload pays for: check it happens.
    let mut mask_check = BTreeMap::new();
    if workloads.iter().any(|w| w.kind == Kind::Bulk) {
        for v in &variants {
            if *v == Variant::Direct || v.is_interceptor() {
                let c = b.mask_check(*v)?;
                eprintln!("mask check ({}): {c:?}", v.id());
                if v.is_interceptor() && (c.masked_email != BULK_ROWS || c.raw_email != 0) {
                    bail!("the interceptor did not mask the bulk result: {c:?}");
                }
                mask_check.insert(v.id().to_string(), c);
            }
        }
    }

    // Warm-up: connections, caches, the daemon's first allocations (and
    // the query rates that size the mysqlslap runs).
    eprintln!("warm-up");
    let warm = WORKLOADS[1];
    for v in &variants {
        b.run_once(&warm, *v, 0, 2)?;
    }
    for w in workloads.iter().filter(|w| w.kind == Kind::MysqlSelect) {
        for v in variants.iter().filter(|v| v.applies_to(w)) {
            b.run_once(w, *v, 0, 2)?;
        }
    }

    let mut runs: BTreeMap<(&str, Variant), Vec<Run>> = BTreeMap::new();
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}");
        for w in &workloads {
            let vs: Vec<Variant> = variants
                .iter()
                .copied()
                .filter(|v| v.applies_to(w))
                .collect();
            for i in 0..vs.len() {
                // Rotate the order each round (and per workload) so that no
                // variant always runs first or right after another.
                let k = (i + round as usize + w.clients as usize) % vs.len();
                let v = vs[k];
                let r = b.run_once(w, v, round, duration)?;
                runs.entry((w.id, v)).or_default().push(r);
            }
        }
    }

    let profile_text = if args.profile {
        eprintln!("profiling the daemon (perf record, pgbench -S -c 8 -M simple)");
        match profile(&mut b, duration) {
            Ok(p) => Some(p),
            Err(e) => {
                eprintln!("profile failed: {e:#}");
                None
            }
        }
    } else {
        None
    };

    let mut peak = BTreeMap::new();
    for v in &variants {
        let name = match b.daemon(*v) {
            Some(d) => format!("the interceptor daemon (sync = {})", d.sync),
            None => v.id().to_string(),
        };
        if let Some(pid) = b.proxy_pid(*v) {
            peak.insert(name, vm_kib(pid, "VmHWM")?);
        }
    }
    drop(b);
    machine.load_average_end = loadavg();

    let mut cells = Vec::new();
    for w in &workloads {
        let direct = runs
            .get(&(w.id, Variant::Direct))
            .map(|r| aggregate(w, Variant::Direct, r, None));
        for v in &variants {
            if let Some(r) = runs.get(&(w.id, *v)) {
                let c = match (&direct, v) {
                    (Some(d), v) if *v != Variant::Direct => aggregate(w, *v, r, Some(d)),
                    _ => aggregate(w, *v, r, None),
                };
                cells.push(c);
            }
        }
    }
    let report = Report {
        command,
        rounds,
        duration_s: duration,
        targets: targets(&cells),
        machine,
        peak_rss_kib: peak,
        mask_check,
        cells,
        profile: profile_text,
    };

    let results = root.join("bench-results");
    std::fs::create_dir_all(&results)?;
    let json = serde_json::to_string_pretty(&report)? + "\n";
    let md_doc = format!("# interceptor benchmark\n\n{}", markdown(&report, true));
    if args.quick {
        std::fs::write(results.join("quick.md"), &md_doc)?;
        std::fs::write(results.join("quick.json"), &json)?;
        eprintln!("wrote bench-results/quick.{{md,json}} (smoke run: README.md untouched)");
    } else {
        let stamp = first_line(Command::new("date").args(["-u", "+%Y-%m-%d-%H%M"]));
        for name in ["latest".to_string(), stamp] {
            std::fs::write(results.join(format!("{name}.md")), &md_doc)?;
            std::fs::write(results.join(format!("{name}.json")), &json)?;
        }
        eprintln!("wrote bench-results/latest.{{md,json}} and dated copies");
        if !args.no_readme {
            update_readme(
                root,
                &format!(
                    "{}\nThe daemon's CPU profile and every run: [`bench-results/latest.md`](bench-results/latest.md), [`latest.json`](bench-results/latest.json).\n",
                    markdown(&report, false)
                ),
            )?;
            eprintln!("updated the Performance section of README.md");
        }
    }
    println!("{md_doc}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn luhn_ok(s: &str) -> bool {
        let d: Vec<u32> = s
            .bytes()
            .filter(u8::is_ascii_digit)
            .map(|b| u32::from(b - b'0'))
            .collect();
        let sum: u32 = d
            .iter()
            .rev()
            .enumerate()
            .map(|(i, &x)| {
                if i % 2 == 1 {
                    let y = x * 2;
                    if y > 9 { y - 9 } else { y }
                } else {
                    x
                }
            })
            .sum();
        sum.is_multiple_of(10)
    }

    #[test]
    fn card_numbers_pass_luhn() {
        for id in [1, 2, 17, 99_999, 100_000] {
            let c = card_number(id);
            assert_eq!(c.len(), 19, "{c}");
            assert!(luhn_ok(&c), "{c}");
        }
    }

    #[test]
    fn percentiles_are_exact_ranks() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[5], 99.0), 5.0);
    }

    #[test]
    fn pgbench_output_parses() {
        let out = "transaction type: <builtin: select only>\nnumber of transactions actually processed: 4242\nnumber of failed transactions: 0 (0.000%)\nlatency average = 0.236 ms\ntps = 4240.123456 (without initial connection time)\n";
        assert_eq!(parse_pgbench(out).unwrap(), (4240.123456, 4242));
    }
}
