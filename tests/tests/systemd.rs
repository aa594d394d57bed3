//! The systemd unit and the install step. There is no systemd as PID 1 on
//! the development host, so the unit is checked with `systemd-analyze
//! verify` and its `ExecStart` is run directly.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use interceptor_e2e::{Daemon, TestCgroup, bash_tcp, interceptor_bin, text};

const UNIT: &str = include_str!("../../systemd/interceptor.service");
const SOCKET_UNIT: &str = include_str!("../../systemd/interceptor.socket");

fn verify(unit: &Path) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .expect("systemd-analyze (package systemd)");
    assert!(
        out.status.success(),
        "systemd-analyze verify: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.trim().is_empty(),
        "systemd-analyze verify warned: {err}"
    );
}

#[test]
fn unit_verifies_and_its_exec_start_runs_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let bin = interceptor_bin();
    let unit = UNIT.replace("/usr/local/bin/interceptor", &bin.display().to_string());
    let path = dir.path().join("interceptor.service");
    std::fs::write(&path, &unit).unwrap();
    std::fs::write(dir.path().join("interceptor.socket"), SOCKET_UNIT).unwrap();
    verify(&path);
    verify(&dir.path().join("interceptor.socket"));
    // The socket unit listens where the daemon's default proxy port is.
    assert!(SOCKET_UNIT.contains("ListenStream=127.0.0.1:949"));
    assert!(SOCKET_UNIT.contains("ListenStream=[::1]:949"));

    // Hardening that the issue asks for is really there.
    for needle in [
        "CapabilityBoundingSet=CAP_BPF",
        "ProtectSystem=strict",
        "StateDirectory=interceptor",
        "RuntimeDirectory=interceptor",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
    ] {
        assert!(unit.contains(needle), "unit lacks {needle}");
    }

    // Run ExecStart as systemd would, pointed at a test configuration.
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart line");
    let mut argv: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
    assert_eq!(argv[0], bin.display().to_string());
    // A Daemon provides a complete throwaway configuration; stop it and
    // start the unit's command line with that configuration instead.
    let mut d = Daemon::start("[[intercept]]\nport = 1\nprotocol = \"tcp\"\n");
    assert!(d.stop().success());
    let cfg_idx = argv
        .iter()
        .position(|a| a == "--config")
        .expect("--config in ExecStart")
        + 1;
    argv[cfg_idx] = d.config.display().to_string();
    // Type=notify: the daemon says READY=1 on $NOTIFY_SOCKET.
    let notify = std::os::unix::net::UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .env("NOTIFY_SOCKET", dir.path().join("notify.sock"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 64];
    let n = notify.recv(&mut buf).expect("READY=1 from the daemon");
    assert_eq!(&buf[..n], b"READY=1");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.cli(&["status"]).status.success() {
        assert!(Instant::now() < deadline, "ExecStart did not become ready");
        assert!(child.try_wait().unwrap().is_none(), "ExecStart exited");
        std::thread::sleep(Duration::from_millis(50));
    }
    // It intercepts like any daemon: an attached cgroup's connect to the
    // (closed) intercepted port is redirected and recorded.
    let cg = TestCgroup::new();
    d.attach(&cg);
    let _ = bash_tcp(Some(&cg), "127.0.0.1", 1, "x");
    let s = d.wait_session(|s| s["dst_port"] == 1);
    assert!(
        s["end_reason"]
            .as_str()
            .unwrap()
            .contains("upstream connect failed"),
        "{s}"
    );
    // SIGTERM (systemctl stop) exits cleanly.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let status = child.wait().unwrap();
    assert!(status.success(), "daemon exit on SIGTERM: {status}");
}

#[test]
fn install_puts_binary_unit_config_and_runner_hooks_in_place() {
    let root = tempfile::tempdir().unwrap();
    let prefix = root.path().join("usr/local");
    let etc = root.path().join("etc/interceptor");
    let units = root.path().join("etc/systemd/system");
    let install = || {
        Command::new(interceptor_bin())
            .args(["install", "--no-start", "--prefix"])
            .arg(&prefix)
            .arg("--config-dir")
            .arg(&etc)
            .arg("--unit-dir")
            .arg(&units)
            .args([
                "--github-runner-unit",
                "actions.runner.acme.runner1.service",
            ])
            .output()
            .unwrap()
    };
    let out = install();
    assert!(out.status.success(), "{}", text(&out));
    let bin = prefix.join("bin/interceptor");
    assert!(bin.exists());
    for f in [
        "lib/interceptor/github-job-started.sh",
        "lib/interceptor/github-job-completed.sh",
        "share/doc/interceptor/README.md",
    ] {
        assert!(prefix.join(f).exists(), "{f} not installed");
    }
    let unit = units.join("interceptor.service");
    let unit_text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        unit_text.contains(&format!(
            "ExecStart={} run --config {}",
            bin.display(),
            etc.join("interceptor.toml").display()
        )),
        "{unit_text}"
    );
    verify(&unit);
    let drop_in = std::fs::read_to_string(
        units.join("actions.runner.acme.runner1.service.d/interceptor.conf"),
    )
    .unwrap();
    assert!(
        drop_in.contains(&format!("ExecStartPre=+{} attach --unit %n", bin.display())),
        "{drop_in}"
    );

    // The default configuration is valid: policy check works against it.
    let out = Command::new(&bin)
        .arg("--config")
        .arg(etc.join("interceptor.toml"))
        .args([
            "policy",
            "check",
            "--protocol",
            "postgres",
            "--sql",
            "DROP DATABASE prod",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "default policy should deny DROP: {}",
        text(&out)
    );

    // A second install keeps the operator's configuration.
    std::fs::write(etc.join("policy.toml"), "# mine\n").unwrap();
    let out = install();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept existing"));
    assert_eq!(
        std::fs::read_to_string(etc.join("policy.toml")).unwrap(),
        "# mine\n"
    );
}
