//! A throwaway MariaDB server (Debian `mariadb-server`) on a free port in a
//! temp dir, optionally with TLS (a self-signed certificate made with
//! `openssl`), and the `mysql` client and Python's mysql-connector to talk
//! to it.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::servers::user_ids;
use crate::{TestCgroup, free_port, text};

/// The pinned Python packages (mysql-connector-python) the prepared-statement
/// tests use: `cargo xtask setup` installs them; [`ensure_connector`] does if
/// missing.
pub const PYTHON_REQUIREMENTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/requirements.txt");

/// Serialises `mariadb-install-db` runs.
static INSTALL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A MariaDB server listening on 127.0.0.1.
pub struct MariaDb {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Option<Child>,
}

fn chown(path: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .expect("chown");
    assert!(st.success());
}

impl MariaDb {
    pub fn start() -> MariaDb {
        Self::start_with(false)
    }

    /// With `tls`, the server offers TLS with a fresh self-signed certificate.
    pub fn start_with(tls: bool) -> MariaDb {
        Self::start_full(tls, &[])
    }

    /// Starts with extra server options (`--performance-schema=ON`, …).
    pub fn start_args(extra: &[&str]) -> MariaDb {
        Self::start_full(false, extra)
    }

    fn start_full(tls: bool, extra: &[&str]) -> MariaDb {
        let dir = tempfile::Builder::new()
            .prefix("interceptor-mariadb-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (uid, gid) = user_ids("mysql");
        let data = dir.path().join("data");
        // Each server gets its own tmpdir: concurrent bootstraps sharing /tmp
        // collide on their temporary tables.
        let tmp = dir.path().join("tmp");
        std::fs::create_dir(&tmp).expect("mkdir tmp");
        chown(dir.path(), uid, gid);
        let out = {
            let _one_at_a_time = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
            Command::new("mariadb-install-db")
                .arg("--no-defaults")
                .arg("--user=mysql")
                .arg(format!("--datadir={}", data.display()))
                .arg(format!("--tmpdir={}", tmp.display()))
                .args(["--auth-root-authentication-method=normal", "--skip-test-db"])
                .output()
                .expect("mariadb-install-db (is mariadb-server installed?)")
        };
        assert!(out.status.success(), "mariadb-install-db: {}", text(&out));
        let mut tls_args = Vec::new();
        if tls {
            crate::make_test_certs(dir.path());
            tls_args.push(format!(
                "--ssl-cert={}",
                dir.path().join("server.crt").display()
            ));
            tls_args.push(format!(
                "--ssl-key={}",
                dir.path().join("server.key").display()
            ));
        }
        chown(dir.path(), uid, gid);
        let port = free_port();
        let socket = dir.path().join("mysqld.sock");
        let log = dir.path().join("mariadb.log");
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--tmpdir={}", tmp.display()))
            .arg(format!("--port={port}"))
            .arg(format!("--socket={}", socket.display()))
            .arg(format!("--log-error={}", log.display()))
            .arg(format!(
                "--pid-file={}",
                dir.path().join("mariadbd.pid").display()
            ))
            .args([
                "--bind-address=127.0.0.1",
                "--user=mysql",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=16M",
                "--innodb-log-file-size=16M",
                "--max-connections=300",
                "--max-allowed-packet=64M",
            ])
            .args(&tls_args)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mariadbd");
        let db = MariaDb {
            port,
            dir,
            socket,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if db.admin("SELECT 1").status.success() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not start:\n{}",
                db.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        db
    }

    /// The CA that signed the server's certificate (servers started with
    /// TLS): the daemon's `tls.upstream_ca_file`.
    pub fn ca_file(&self) -> std::path::PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mariadb.log")).unwrap_or_default()
    }

    /// Runs SQL as root over the unix socket (never intercepted).
    pub fn admin(&self, sql: &str) -> Output {
        Command::new("mysql")
            .arg("--no-defaults")
            .arg(format!("--socket={}", self.socket.display()))
            .args(["-uroot", "-N", "-B", "-e", sql])
            .output()
            .expect("run mysql")
    }

    /// Like [`admin`](Self::admin), failing the test on error.
    pub fn admin_ok(&self, sql: &str) -> String {
        let out = self.admin(sql);
        assert!(out.status.success(), "{sql}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `mysql` client over TCP to 127.0.0.1 (inside `cg` when given),
    /// in batch mode, feeding `stdin`.
    pub fn mysql(
        &self,
        cg: Option<&TestCgroup>,
        user: &str,
        password: &str,
        args: &[&str],
        stdin: &str,
    ) -> Output {
        let mut cmd = match cg {
            Some(cg) => cg.command("mysql"),
            None => Command::new("mysql"),
        };
        cmd.arg("--no-defaults")
            .args(["-h", "127.0.0.1", "-P", &self.port.to_string()])
            .arg(format!("-u{user}"))
            .arg(format!("-p{password}"))
            .args(["--connect-timeout=10", "-B"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn mysql");
        if let Some(mut i) = child.stdin.take() {
            let _ = i.write_all(stdin.as_bytes());
        }
        child.wait_with_output().expect("mysql output")
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: plain kill(2).
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Installs mysql-connector-python (pinned) for `python3` unless present.
pub fn ensure_connector() {
    let present = Command::new("python3")
        .args(["-c", "import mysql.connector"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if present {
        return;
    }
    let out = Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "-r", PYTHON_REQUIREMENTS])
        .output()
        .expect("python3 -m pip");
    assert!(
        out.status.success(),
        "installing mysql-connector-python: {}",
        text(&out)
    );
}

/// Runs a Python script (inside `cg` when given) with `args`.
pub fn python(cg: Option<&TestCgroup>, script: &str, args: &[&str]) -> Output {
    let mut cmd = match cg {
        Some(cg) => cg.command("python3"),
        None => Command::new("python3"),
    };
    cmd.arg("-c")
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python3")
}
