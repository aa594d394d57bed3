//! `interceptor install`: puts the running binary, the systemd unit and a
//! default configuration in place, then starts the service when systemd is
//! running. Existing configuration files are never overwritten.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::Args;

const UNIT: &str = include_str!("../../systemd/interceptor.service");
const SOCKET_UNIT: &str = include_str!("../../systemd/interceptor.socket");
const DEFAULT_CONFIG: &str = include_str!("../../systemd/interceptor.toml");
const DEFAULT_POLICY: &str = include_str!("../../systemd/policy.toml");
const README: &str = include_str!("../../README.md");
const GH_JOB_STARTED: &str = include_str!("../../systemd/github-runner/job-started.sh");
const GH_JOB_COMPLETED: &str = include_str!("../../systemd/github-runner/job-completed.sh");
const GH_DROP_IN: &str = include_str!("../../systemd/github-runner/interceptor.conf");

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// Installation prefix for the binary (PREFIX/bin/interceptor) and docs.
    #[arg(long, default_value = "/usr/local")]
    prefix: PathBuf,
    /// Directory for interceptor.toml and policy.toml.
    #[arg(long, default_value = "/etc/interceptor")]
    config_dir: PathBuf,
    /// Directory for the systemd unit.
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// Install only; do not enable or start the service.
    #[arg(long)]
    no_start: bool,
    /// Also install the drop-in for this GitHub Actions runner unit (attach its cgroup, enroll each job's OIDC token).
    #[arg(long, value_name = "UNIT")]
    github_runner_unit: Option<String>,
}

pub fn run(args: &InstallArgs) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "install must run as root (it writes under {} and /etc)",
            args.prefix.display()
        );
    }
    let exe = std::env::current_exe().context("locating the running binary")?;
    let bin_dir = args.prefix.join("bin");
    let bin = bin_dir.join("interceptor");
    std::fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    if exe.canonicalize().ok() != bin.canonicalize().ok() {
        // Copy to a temporary name and rename: a running daemon keeps its inode.
        let tmp = bin_dir.join(".interceptor.new");
        std::fs::copy(&exe, &tmp)
            .with_context(|| format!("copying {} to {}", exe.display(), tmp.display()))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))?;
        std::fs::rename(&tmp, &bin).with_context(|| format!("installing {}", bin.display()))?;
    }
    println!("installed {}", bin.display());

    let lib_dir = args.prefix.join("lib/interceptor");
    std::fs::create_dir_all(&lib_dir)?;
    for (name, body) in [
        ("github-job-started.sh", GH_JOB_STARTED),
        ("github-job-completed.sh", GH_JOB_COMPLETED),
    ] {
        let p = lib_dir.join(name);
        std::fs::write(
            &p,
            body.replace("/usr/local/bin/interceptor", &bin.display().to_string()),
        )
        .with_context(|| format!("writing {}", p.display()))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))?;
    }
    println!("installed runner hooks in {}", lib_dir.display());

    let doc_dir = args.prefix.join("share/doc/interceptor");
    std::fs::create_dir_all(&doc_dir)?;
    std::fs::write(doc_dir.join("README.md"), README)?;

    let unit = UNIT
        .replace("/usr/local/bin/interceptor", &bin.display().to_string())
        .replace(
            "/etc/interceptor/interceptor.toml",
            &args
                .config_dir
                .join("interceptor.toml")
                .display()
                .to_string(),
        );
    std::fs::create_dir_all(&args.unit_dir)?;
    let unit_path = args.unit_dir.join("interceptor.service");
    std::fs::write(&unit_path, unit).with_context(|| format!("writing {}", unit_path.display()))?;
    println!("installed {}", unit_path.display());
    let socket_path = args.unit_dir.join("interceptor.socket");
    std::fs::write(&socket_path, SOCKET_UNIT)
        .with_context(|| format!("writing {}", socket_path.display()))?;
    println!("installed {}", socket_path.display());

    if let Some(unit) = &args.github_runner_unit {
        if !unit.starts_with("actions.runner.") || !unit.ends_with(".service") {
            bail!(
                "--github-runner-unit {unit:?}: expected a unit like actions.runner.<scope>.<name>.service"
            );
        }
        let dir = args.unit_dir.join(format!("{unit}.d"));
        std::fs::create_dir_all(&dir)?;
        let conf = GH_DROP_IN
            .replace("/usr/local/bin/interceptor", &bin.display().to_string())
            .replace("/usr/local/lib/interceptor", &lib_dir.display().to_string());
        let p = dir.join("interceptor.conf");
        std::fs::write(&p, conf).with_context(|| format!("writing {}", p.display()))?;
        println!("installed {} (restart {unit} to apply)", p.display());
    }

    std::fs::create_dir_all(&args.config_dir)?;
    write_if_missing(&args.config_dir.join("interceptor.toml"), DEFAULT_CONFIG)?;
    write_if_missing(&args.config_dir.join("policy.toml"), DEFAULT_POLICY)?;

    if args.no_start {
        return Ok(());
    }
    if Path::new("/run/systemd/system").is_dir() {
        systemctl(&["daemon-reload"])?;
        systemctl(&["enable", "--now", "interceptor.socket"])?;
        systemctl(&["enable", "--now", "interceptor.service"])?;
        systemctl(&["restart", "interceptor.service"])?;
        println!("interceptor.service is enabled and running; check it with `interceptor status`");
    } else {
        println!(
            "systemd is not running on this host; start the daemon with:\n  {} run --config {}",
            bin.display(),
            args.config_dir.join("interceptor.toml").display()
        );
    }
    Ok(())
}

fn write_if_missing(path: &Path, content: &str) -> Result<()> {
    if path.exists() {
        println!("kept existing {}", path.display());
        return Ok(());
    }
    std::fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o644))?;
    println!("installed {}", path.display());
    Ok(())
}

fn systemctl(args: &[&str]) -> Result<()> {
    let status = Command::new("systemctl")
        .args(args)
        .status()
        .with_context(|| format!("running systemctl {}", args.join(" ")))?;
    if !status.success() {
        bail!("systemctl {} failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_defaults_are_valid() {
        let cfg = crate::config::Config::parse(
            DEFAULT_CONFIG,
            Path::new("/etc/interceptor/interceptor.toml"),
        )
        .expect("systemd/interceptor.toml parses");
        assert_eq!(cfg.policy, Path::new("/etc/interceptor/policy.toml"));
        assert_eq!(
            cfg,
            crate::config::Config {
                source: cfg.source.clone(),
                ..Default::default()
            }
        );
        policy::Policy::parse(DEFAULT_POLICY, "systemd/policy.toml")
            .expect("systemd/policy.toml parses");
    }
}
