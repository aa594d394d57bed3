//! Real servers from Debian packages, started on free ports in temp dirs.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::{TestCgroup, free_port};

/// uid/gid of a system user (the servers refuse to run as root).
pub fn user_ids(name: &str) -> (u32, u32) {
    let out = Command::new("id")
        .args(["-u", name])
        .output()
        .expect("id -u");
    let uid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("uid");
    let out = Command::new("id")
        .args(["-g", name])
        .output()
        .expect("id -g");
    let gid = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("gid");
    (uid, gid)
}

fn chown_r(path: &Path, uid: u32, gid: u32) {
    let st = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(path)
        .status()
        .expect("chown");
    assert!(st.success());
}

/// The newest PostgreSQL server binaries installed from Debian.
pub fn pg_bindir() -> PathBuf {
    let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL is installed (cargo xtask setup)")
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect();
    versions.sort();
    let v = versions.last().expect("a PostgreSQL version");
    PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"))
}

/// A throwaway PostgreSQL cluster listening on 127.0.0.1 and ::1.
pub struct Postgres {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Postgres {
    pub fn start() -> Postgres {
        Self::start_with(&[])
    }

    /// Starts with extra `-c name=value` settings.
    pub fn start_with(settings: &[&str]) -> Postgres {
        Self::start_full(settings, false)
    }

    /// Starts with `ssl=on` and a self-signed certificate made by `openssl`
    /// (plus extra settings).
    pub fn start_tls(settings: &[&str]) -> Postgres {
        Self::start_full(settings, true)
    }

    fn start_full(settings: &[&str], tls: bool) -> Postgres {
        let dir = tempfile::Builder::new()
            .prefix("interceptor-pg-")
            .tempdir()
            .expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let (uid, gid) = user_ids("postgres");
        chown_r(dir.path(), uid, gid);
        let bindir = pg_bindir();
        let data = dir.path().join("data");
        let out = Command::new(bindir.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .uid(uid)
            .gid(gid)
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb: {}", crate::text(&out));
        if tls {
            crate::make_test_certs(&data);
            std::fs::set_permissions(
                data.join("server.key"),
                std::fs::Permissions::from_mode(0o600),
            )
            .unwrap();
            chown_r(&data, uid, gid);
        }
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("postgres.log")).unwrap();
        chown_r(&dir.path().join("postgres.log"), uid, gid);
        let mut cmd = Command::new(bindir.join("postgres"));
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(port.to_string())
            .arg("-k")
            .arg(dir.path())
            .args(["-c", "listen_addresses=127.0.0.1,::1", "-c", "fsync=off"])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=32MB"]);
        if tls {
            cmd.args(["-c", "ssl=on"]);
        }
        for s in settings {
            cmd.arg("-c").arg(s);
        }
        let child = cmd
            .uid(uid)
            .gid(gid)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start postgres");
        let pg = Postgres {
            port,
            dir,
            child: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ok = Command::new(bindir.join("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not start:\n{}",
                pg.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        pg
    }

    /// The CA that signed the server's certificate (servers started with
    /// TLS): the daemon's `tls.upstream_ca_file`.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("data").join("ca.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("postgres.log")).unwrap_or_default()
    }

    /// Creates a login role with a password stored for `method`
    /// (`"scram-sha-256"` or `"md5"`) and makes TCP logins of that role
    /// authenticate with that method (the other roles stay `trust`).
    pub fn add_password_user(&self, name: &str, password: &str, method: &str) {
        let hba = self.dir.path().join("data/pg_hba.conf");
        let old = std::fs::read_to_string(&hba).expect("read pg_hba.conf");
        let lines =
            format!("host all {name} 127.0.0.1/32 {method}\nhost all {name} ::1/128 {method}\n");
        std::fs::write(&hba, format!("{lines}{old}")).expect("write pg_hba.conf");
        let encryption = if method == "md5" {
            "md5"
        } else {
            "scram-sha-256"
        };
        let out = self.psql(
            None,
            "127.0.0.1",
            &format!(
                "SET password_encryption = '{encryption}'; CREATE ROLE {name} LOGIN SUPERUSER PASSWORD '{password}'; SELECT pg_reload_conf();"
            ),
        );
        assert!(out.status.success(), "create {name}: {}", crate::text(&out));
        // The reload is asynchronous: wait until the role needs its password.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out = Command::new("psql")
                .args([
                    "-X",
                    "-A",
                    "-t",
                    "-w",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &self.port.to_string(),
                ])
                .args(["-U", name, "-d", "postgres", "-c", "SELECT 1"])
                .env_remove("PGPASSWORD")
                .output()
                .expect("run psql");
            if !out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "pg_hba.conf for {name} not reloaded"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `psql` against 127.0.0.1 (or `host`) as the superuser, optionally
    /// inside a cgroup. Returns the output; `-X -A -t -v ON_ERROR_STOP=1`.
    pub fn psql(&self, cg: Option<&TestCgroup>, host: &str, sql: &str) -> Output {
        self.psql_cmd(cg, host, &["-c", sql])
    }

    pub fn psql_cmd(&self, cg: Option<&TestCgroup>, host: &str, args: &[&str]) -> Output {
        let mut cmd = match cg {
            Some(cg) => cg.command("psql"),
            None => Command::new("psql"),
        };
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args([
                "-h",
                host,
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(args)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("run psql")
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SIGQUIT: immediate shutdown, fine for a throwaway cluster.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGQUIT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Python's http.server serving a temp dir on 127.0.0.1 or ::1.
pub struct HttpServer {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

impl HttpServer {
    /// Serves a file `hello.txt` containing `body`.
    pub fn start(bind: &str, body: &str) -> HttpServer {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("hello.txt"), body).unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", bind, &port.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let addr: std::net::SocketAddr = if bind.contains(':') {
            format!("[{bind}]:{port}").parse().unwrap()
        } else {
            format!("{bind}:{port}").parse().unwrap()
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(addr).is_err() {
            assert!(Instant::now() < deadline, "http.server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        HttpServer { port, dir, child }
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `curl` a URL, optionally inside a cgroup.
pub fn curl(cg: Option<&TestCgroup>, url: &str) -> Output {
    let mut cmd = match cg {
        Some(cg) => cg.command("curl"),
        None => Command::new("curl"),
    };
    cmd.args(["-sS", "--max-time", "10", "-g", url])
        .output()
        .expect("run curl")
}
