//! Developer and CI entry points: `cargo xtask setup|run|test|install|bench|vm`.
//!
//! Everything here is idempotent: each step checks before it installs, so
//! running a command twice costs a few `dpkg-query` calls the second time.

mod bench;
mod fuzz;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "interceptor developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install build and test dependencies (apt packages, nightly rust-src, bpf-linker).
    Setup {
        /// Only what building needs (no test servers).
        #[arg(long)]
        build_only: bool,
    },
    /// Build in release mode, install, and start the interceptor with its defaults.
    Run,
    /// Install dependencies, then run lints, the whole test suite (unit and end-to-end)
    /// and, without extra arguments, a fuzz smoke pass of every cargo-fuzz target.
    Test {
        /// Extra arguments passed to `cargo test` (e.g. `-- --test postgres`); they skip the fuzz pass.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Build in release mode and install binary, unit and default config (no start).
    Install,
    /// Boot the Vagrant VM and run the end-to-end suite in it.
    Vm,
    /// Benchmark: direct vs interceptor vs pgbouncer vs haproxy with pgbench;
    /// writes bench-results/ and the Performance section of README.md.
    Bench(bench::Args),
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let root = workspace_root()?;
    match cli.command {
        Cmd::Setup { build_only } => setup::run(!build_only),
        Cmd::Run => {
            setup::run(false)?;
            let bin = build_release(&root)?;
            run(Command::new(&bin).args(["install", "--no-start"]))?;
            if Path::new("/run/systemd/system").is_dir() {
                run(Command::new("systemctl").args(["daemon-reload"]))?;
                run(Command::new("systemctl").args(["enable", "--now", "interceptor.service"]))?;
                run(Command::new("systemctl").args(["restart", "interceptor.service"]))?;
                println!("interceptor.service is running; try `interceptor status`");
                Ok(())
            } else {
                println!(
                    "systemd is not running here: starting the daemon in the foreground (Ctrl-C stops it)"
                );
                run(Command::new("/usr/local/bin/interceptor").args([
                    "run",
                    "--config",
                    "/etc/interceptor/interceptor.toml",
                ]))
            }
        }
        Cmd::Test { args } => {
            setup::run(true)?;
            test(&root, &args)
        }
        Cmd::Install => {
            setup::run(false)?;
            let bin = build_release(&root)?;
            run(Command::new(&bin).args(["install", "--no-start"]))
        }
        Cmd::Vm => run(Command::new("vagrant")
            .arg("up")
            .current_dir(root.join("vagrant"))),
        Cmd::Bench(args) => bench::run(&root, args),
    }
}

fn test(root: &Path, extra: &[String]) -> Result<()> {
    if !nix_is_root() {
        bail!(
            "the end-to-end tests load eBPF programs and create cgroups: run `cargo xtask test` as root"
        );
    }
    setup::clean_stale_test_state();
    run(cargo(root).args(["fmt", "--all", "--", "--check"]))?;
    run(cargo(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(cargo(root).args(["build", "--workspace", "--bins"]))?;
    let bin = target_dir(root).join("debug/interceptor");
    run(cargo(root)
        .args(["test", "--workspace", "--no-fail-fast"])
        .args(extra)
        .env("INTERCEPTOR_BIN", &bin)
        // The end-to-end tests each start servers and a daemon; two cores
        // are happier with a bounded number at once.
        .env(
            "RUST_TEST_THREADS",
            std::env::var("RUST_TEST_THREADS").unwrap_or_else(|_| "4".into()),
        ))?;
    if extra.is_empty() {
        fuzz::smoke(root, fuzz::SMOKE_SECS)?;
    }
    Ok(())
}

pub(crate) fn build_release(root: &Path) -> Result<PathBuf> {
    run(cargo(root).args(["build", "--release", "-p", "interceptor"]))?;
    Ok(target_dir(root).join("release/interceptor"))
}

/// Where cargo puts build output: `CARGO_TARGET_DIR` when set (relative to
/// the workspace root), else `<root>/target`.
fn target_dir(root: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) if !d.is_empty() => root.join(d),
        _ => root.join("target"),
    }
}

fn cargo(root: &Path) -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root);
    c
}

pub(crate) fn run(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    eprintln!("+ {shown}");
    let status = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

/// /proc/self belongs to the effective uid of the process reading it.
pub(crate) fn nix_is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

pub(crate) fn workspace_root() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    dir.parent()
        .map(Path::to_path_buf)
        .context("xtask has no parent directory")
}
