//! Idempotent installation of what building and testing need.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Result, bail};

use crate::run as sh;

/// Debian packages needed to build the eBPF side (bpf-linker links against LLVM 22).
const BUILD_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "pkg-config",
    "build-essential",
];

/// Real servers and clients the end-to-end tests and benchmarks drive.
const TEST_PACKAGES: &[&str] = &[
    "postgresql",
    "postgresql-client",
    "mariadb-server",
    "mariadb-client",
    "openssh-server",
    "openssh-client",
    "pgbouncer",
    "haproxy",
    "curl",
    "python3",
    "iproute2",
    "systemd",
    // atd: the redirect-hardening test starts an `at` job as an attached uid.
    "at",
];

pub fn run(with_test_deps: bool) -> Result<()> {
    let mut wanted: Vec<&str> = BUILD_PACKAGES.to_vec();
    if with_test_deps {
        wanted.extend_from_slice(TEST_PACKAGES);
    }
    apt_install(&wanted)?;
    rust_toolchain()?;
    bpf_linker()?;
    if with_test_deps {
        cargo_fuzz()?;
        python_packages()?;
    }
    Ok(())
}

/// The fuzz smoke pass of `cargo xtask test` needs cargo-fuzz.
fn cargo_fuzz() -> Result<()> {
    if quiet_ok(Command::new("cargo").args(["fuzz", "--version"])) {
        return Ok(());
    }
    sh(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))
}

/// The Python packages the end-to-end tests use, pinned in one place.
fn python_packages() -> Result<()> {
    if quiet_ok(Command::new("python3").args(["-c", "import mysql.connector"])) {
        return Ok(());
    }
    let requirements = crate::workspace_root()?.join("tests/requirements.txt");
    sh(Command::new("python3")
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(requirements))
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn apt_install(pkgs: &[&str]) -> Result<()> {
    let missing: Vec<&str> = pkgs.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !crate::nix_is_root() {
        bail!(
            "missing Debian packages {missing:?}: run as root (or install them: apt-get install {})",
            missing.join(" ")
        );
    }
    eprintln!("installing Debian packages: {}", missing.join(" "));
    sh(Command::new("apt-get").arg("update").arg("-q"))?;
    sh(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    Ok(())
}

fn quiet_ok(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The eBPF crate is built with nightly (`-Z build-std=core`), which needs rust-src.
fn rust_toolchain() -> Result<()> {
    if !quiet_ok(Command::new("rustup").args(["run", "nightly", "rustc", "--version"])) {
        sh(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let list = Command::new("rustup")
        .args(["component", "list", "--installed", "--toolchain", "nightly"])
        .output()?;
    if !String::from_utf8_lossy(&list.stdout).contains("rust-src") {
        sh(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    // Formatting and lints are part of `cargo xtask test`.
    let stable = Command::new("rustup")
        .args(["component", "list", "--installed"])
        .output()?;
    let stable = String::from_utf8_lossy(&stable.stdout);
    for c in ["rustfmt", "clippy"] {
        if !stable.contains(c) {
            sh(Command::new("rustup").args(["component", "add", c]))?;
        }
    }
    Ok(())
}

fn bpf_linker() -> Result<()> {
    if quiet_ok(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let cargo_bin = std::env::var("CARGO_HOME")
        .map(|h| Path::new(&h).join("bin/bpf-linker"))
        .ok();
    if cargo_bin.as_deref().is_some_and(Path::exists) {
        return Ok(());
    }
    sh(Command::new("cargo")
        .args([
            "install",
            "bpf-linker",
            "--locked",
            "--no-default-features",
            "--features",
            "llvm-22",
        ])
        .env("LLVM_PREFIX", "/usr/lib/llvm-22"))
}

/// Removes cgroups, bpffs pins and throwaway system users (`ictest*`, made
/// by tests/tests/redirect_hardening.rs) left behind by an end-to-end run
/// that was killed before its cleanup ran.
pub fn clean_stale_test_state() {
    if let Ok(passwd) = std::fs::read_to_string("/etc/passwd") {
        for line in passwd.lines() {
            let name = line.split(':').next().unwrap_or_default();
            if name.len() > 6
                && name.starts_with("ictest")
                && name[6..].bytes().all(|b| b.is_ascii_digit())
            {
                let _ = Command::new("userdel").arg(name).output();
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/sys/fs/bpf") {
        for e in entries.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with("interceptor-test-")
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if !right.starts_with("cgroup2 ") {
            continue;
        }
        let Some(mount) = left.split_whitespace().nth(4) else {
            continue;
        };
        if let Ok(entries) = std::fs::read_dir(mount) {
            for e in entries.flatten() {
                if e.file_name()
                    .to_string_lossy()
                    .starts_with("interceptor-test-")
                {
                    let _ = std::fs::remove_dir(e.path());
                }
            }
        }
    }
}
