//! Command-line interface: the daemon (`run`) and the operator commands.

mod approvals;
mod enroll;
mod output;
mod policy_cmd;
mod sessions;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::control::client::Client;
use crate::control::{AttachResult, CgroupSelector, Request, Status, UidAttachResult};

#[derive(Parser, Debug)]
#[command(
    name = "interceptor",
    version,
    about = "Policy, masking, approval and recording gate for the database, SSH and HTTP connections of agents in attached cgroups",
    long_about = "interceptor redirects outbound connections of processes in attached cgroups (eBPF cgroup/connect hooks) to a local proxy that identifies the workload, decides per command from a policy file, masks sensitive values, records every command to SQLite before forwarding it, and connects to the original destination.\n\nRun the daemon with `interceptor run`; everything else talks to it over the control socket or reads its database."
)]
pub struct Cli {
    /// Daemon configuration file.
    #[arg(long, global = true, env = "INTERCEPTOR_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Control socket (default: from the config file, else /run/interceptor/control.sock).
    #[arg(long, global = true, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Enroll socket (default: from the config file, else /run/interceptor/enroll.sock).
    #[arg(long, global = true, value_name = "PATH")]
    enroll_socket: Option<PathBuf>,
    /// Database (default: from the config file, else /var/lib/interceptor/interceptor.db).
    #[arg(long, global = true, value_name = "PATH")]
    db: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the daemon: load and pin the eBPF programs, serve the proxy and the control socket.
    Run {
        /// Log format on stderr.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Attach a cgroup (or a uid): its processes' intercepted connections go through the proxy.
    Attach(#[command(flatten)] Target),
    /// Detach a cgroup (or a uid): its processes connect directly again.
    Detach(#[command(flatten)] Target),
    /// Show the daemon's attachments, intercept rules, live sessions and counters (or, with --pid, where a process lives).
    Status {
        #[arg(long)]
        json: bool,
        /// Show this process's cgroup, whether an attached cgroup covers it, and its enrolled identity.
        #[arg(long, value_name = "PID")]
        pid: Option<u32>,
    },
    /// List and inspect recorded sessions.
    Sessions {
        #[command(subcommand)]
        command: sessions::SessionsCommand,
    },
    /// Enroll this workload: verify its CI identity token and bind it to its cgroup (also --revoke, --list).
    Enroll(enroll::EnrollArgs),
    /// Export sessions with their events and approvals as JSON lines (oldest first).
    Export {
        /// Only sessions started since (RFC 3339 time, date, or age like 7d).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Write to this file instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// List, approve, deny and watch commands held for approval.
    Approvals {
        #[command(subcommand)]
        command: approvals::ApprovalsCommand,
    },
    /// Check a decision against a policy file, or reload the daemon's policy.
    Policy {
        #[command(subcommand)]
        command: policy_cmd::PolicyCommand,
    },
    /// Install the binary, the systemd unit and a default configuration, and start the service.
    Install(crate::install::InstallArgs),
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
struct Target {
    /// cgroup path, relative to the cgroup2 root (/system.slice/x.service) or absolute under its mount.
    #[arg(long, value_name = "PATH")]
    cgroup: Option<String>,
    /// systemd unit whose cgroup to use (e.g. actions.runner.acme.runner1.service).
    #[arg(long, value_name = "NAME")]
    unit: Option<String>,
    /// Use the cgroup this process is in.
    #[arg(long, value_name = "PID")]
    pid: Option<u32>,
    /// Every process running as this user (name or numeric uid), wherever it
    /// lives: closes escapes through at, cron, systemd-run --user, ssh. Not root.
    #[arg(long, value_name = "NAME|UID")]
    uid: Option<String>,
}

impl Target {
    fn request(self, attach: bool) -> Request {
        match (self.uid, attach) {
            (Some(user), true) => Request::AttachUid { user },
            (Some(user), false) => Request::DetachUid { user },
            (None, _) => {
                let sel = CgroupSelector {
                    cgroup: self.cgroup,
                    unit: self.unit,
                    pid: self.pid,
                };
                if attach {
                    Request::Attach(sel)
                } else {
                    Request::Detach(sel)
                }
            }
        }
    }
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Paths the CLI needs, from flags, then the config file, then defaults.
pub(crate) struct Paths {
    pub socket: PathBuf,
    pub enroll_socket: PathBuf,
    pub db: PathBuf,
}

impl Cli {
    fn config(&self) -> Result<Config> {
        Ok(Config::load_or_default(self.config.as_deref())?)
    }

    fn paths(&self) -> Result<Paths> {
        let cfg = self.config()?;
        Ok(Paths {
            enroll_socket: self
                .enroll_socket
                .clone()
                .unwrap_or(cfg.identity.enroll_socket),
            socket: self.socket.clone().unwrap_or(cfg.control_socket),
            db: self.db.clone().unwrap_or(cfg.database),
        })
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // Errors can quote the daemon's answers (paths, claims, texts).
            eprintln!("interceptor: error: {}", output::esc(&format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> Result<ExitCode> {
    match &cli.command {
        Command::Run { log_format } => {
            init_tracing(*log_format);
            let path = cli
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH));
            let config = Config::load(&path)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .thread_name("interceptor")
                .build()
                .context("starting the async runtime")?;
            rt.block_on(crate::daemon::run(config))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Attach(_) | Command::Detach(_) => {
            let paths = cli.paths()?;
            let (req, verb) = match cli.command {
                Command::Attach(t) => (t.request(true), "attached"),
                Command::Detach(t) => (t.request(false), "detached"),
                _ => unreachable!("matched above"),
            };
            let by_uid = matches!(req, Request::AttachUid { .. } | Request::DetachUid { .. });
            let data = Client::connect(&paths.socket)?.call(&req)?;
            if by_uid {
                let r: UidAttachResult =
                    serde_json::from_value(data).context("reading the daemon's answer")?;
                print!("{}", output::uid_attach_result(&r, verb));
            } else {
                let r: AttachResult =
                    serde_json::from_value(data).context("reading the daemon's answer")?;
                print!("{}", output::attach_result(&r, verb));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            json,
            pid: Some(pid),
        } => {
            let paths = cli.paths()?;
            let v = Client::connect(&paths.socket)?.call(&Request::WhereIs { pid: *pid })?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("{}", output::where_is(*pid, &v));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, pid: None } => {
            let paths = cli.paths()?;
            let data = Client::connect(&paths.socket)?.call(&Request::Status)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&data)?);
            } else {
                let s: Status =
                    serde_json::from_value(data).context("reading the daemon's answer")?;
                output::print_status(&s);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Sessions { command } => {
            let paths = cli.paths()?;
            sessions::run(command, &paths)
        }
        Command::Enroll(args) => {
            let paths = cli.paths()?;
            enroll::run(args, &paths)
        }
        Command::Export { since, output } => {
            let paths = cli.paths()?;
            sessions::export(&paths, since.as_deref(), output.as_deref())
        }
        Command::Approvals { command } => {
            let paths = cli.paths()?;
            approvals::run(command, &paths)
        }
        Command::Policy { command } => {
            let paths = cli.paths()?;
            let policy_path = cli.config()?.policy;
            policy_cmd::run(command, &paths, policy_path)
        }
        Command::Install(args) => {
            crate::install::run(args)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("INTERCEPTOR_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    // aya-log (kernel-side log lines) and aya itself use the log crate.
    let _ = tracing_log::LogTracer::init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn attach_needs_exactly_one_target() {
        assert!(Cli::try_parse_from(["interceptor", "attach"]).is_err());
        assert!(
            Cli::try_parse_from(["interceptor", "attach", "--cgroup", "/a", "--pid", "1"]).is_err()
        );
        assert!(Cli::try_parse_from(["interceptor", "attach", "--pid", "1"]).is_ok());
        assert!(
            Cli::try_parse_from(["interceptor", "attach", "--uid", "agent", "--pid", "1"]).is_err()
        );
    }

    #[test]
    fn uid_targets_become_uid_requests() {
        let cli = Cli::try_parse_from(["interceptor", "attach", "--uid", "agent"]).unwrap();
        let Command::Attach(t) = cli.command else {
            panic!("attach")
        };
        assert!(matches!(t.request(true), Request::AttachUid { user } if user == "agent"));
        let cli = Cli::try_parse_from(["interceptor", "detach", "--uid", "1001"]).unwrap();
        let Command::Detach(t) = cli.command else {
            panic!("detach")
        };
        assert!(matches!(t.request(false), Request::DetachUid { user } if user == "1001"));
        let cli = Cli::try_parse_from(["interceptor", "detach", "--cgroup", "/a"]).unwrap();
        let Command::Detach(t) = cli.command else {
            panic!("detach")
        };
        assert!(
            matches!(t.request(false), Request::Detach(s) if s.cgroup.as_deref() == Some("/a"))
        );
    }
}
