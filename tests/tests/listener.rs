//! The proxy's listener cannot be taken by an unprivileged process, and the
//! server leg's TLS is verified for the name the client asked for.

use std::process::Command;

use interceptor_e2e::servers::Postgres;
use interceptor_e2e::{Daemon, TestCgroup, free_port, interceptor_bin, text};

fn policy(port: u16) -> String {
    format!("[[intercept]]\nport = {port}\nprotocol = \"postgres\"\n")
}

/// A daemon configured on a port an unprivileged user could bind refuses
/// to start, and says why.
#[test]
fn an_unprivileged_proxy_port_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    assert!(port >= 1024);
    std::fs::write(dir.path().join("policy.toml"), policy(5432)).unwrap();
    let cfg = dir.path().join("interceptor.toml");
    std::fs::write(
        &cfg,
        format!(
            "[identity]\nenroll_socket = \"{}\"\n[daemon]\npolicy = \"policy.toml\"\nproxy_port = {port}\nstate_dir = \"state\"\ncontrol_socket = \"{}\"\nbpf_pin_dir = \"/sys/fs/bpf/{}\"\n",
            dir.path().join("enroll.sock").display(),
            dir.path().join("control.sock").display(),
            interceptor_e2e::unique("interceptor-listener"),
        ),
    )
    .unwrap();
    // It must exit on its own, quickly; a daemon that starts is killed and
    // fails the test.
    let mut child = Command::new(interceptor_bin())
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("unprivileged process"), "{all}");
    assert!(all.contains("socket activation"), "{all}");
    // Nothing was left listening.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
    // And an unprivileged user cannot bind the daemon's default kind of
    // port (a privileged one) while it is down.
    let probe = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args([
            "python3",
            "-c",
            "import socket; socket.socket().bind(('127.0.0.1', 949))",
        ])
        .output()
        .expect("setpriv");
    assert!(!probe.status.success(), "{}", text(&probe));
    assert!(
        text(&probe).contains("Permission denied"),
        "{}",
        text(&probe)
    );
}

/// Started with listening sockets passed as systemd does (LISTEN_FDS),
/// the daemon serves them, even on an unprivileged port: systemd holds
/// them, so nobody else can.
#[test]
fn socket_activation_hands_the_daemon_its_listeners() {
    let pg = Postgres::start();
    let port = free_port();
    let launcher = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/socket_activate.py");
    let d = Daemon::start_launched(
        &policy(pg.port),
        "",
        &["python3", launcher, &port.to_string()],
        port,
    );
    let cg = TestCgroup::new();
    d.attach(&cg);
    let out = pg.psql(Some(&cg), "127.0.0.1", "SELECT 'through activated sockets'");
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    assert!(text(&out).contains("through activated sockets"));
    assert!(
        d.log().contains("listening on sockets passed by systemd"),
        "{}",
        d.log()
    );
    let s = d.wait_session(|s| s["protocol"] == "postgres");
    assert_eq!(s["dst_port"], pg.port, "{s:#}");
}

/// The server's certificate is verified by default: a server whose
/// certificate the interceptor cannot verify is refused with a clear error,
/// and nothing is sent to it.
#[test]
fn an_unverifiable_server_certificate_is_refused() {
    let pg = Postgres::start_tls(&[]);
    // No upstream_ca_file: the test CA is unknown to the daemon.
    let d = Daemon::start(&policy(pg.port));
    let cg = TestCgroup::new();
    d.attach(&cg);
    let out = cg
        .command("psql")
        .args(["-X", "-A", "-t", "-w"])
        .arg(format!(
            "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode=require",
            pg.port
        ))
        .args(["-c", "SELECT 'should not run'"])
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql");
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(
        all.contains("TLS with the server failed"),
        "{all}\n{}",
        d.log()
    );
    assert!(!pg.log().contains("should not run"), "{}", pg.log());
}
