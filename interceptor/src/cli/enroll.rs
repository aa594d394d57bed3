//! `interceptor enroll`: bind this workload's identity token to its cgroup.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;

use super::Paths;
use super::output;
use crate::control::Request;
use crate::control::client::Client;

#[derive(Args, Debug)]
pub struct EnrollArgs {
    /// Read the token from this file.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["token_env", "token"])]
    token_file: Option<PathBuf>,
    /// Read the token from this environment variable.
    #[arg(long, value_name = "VAR", conflicts_with = "token")]
    token_env: Option<String>,
    /// `-`: read the token from stdin (passing it as an argument would expose it in `ps`).
    #[arg(long, value_name = "-")]
    token: Option<String>,
    /// End the enrollment of this process's cgroup (its binding lives on until the token
    /// expires), or, as root from outside attached cgroups, end --cgroup's enrollment and binding.
    #[arg(long, conflicts_with_all = ["token_file", "token_env", "token", "list"])]
    revoke: bool,
    /// With --revoke: the cgroup whose enrollment to end (administrators only).
    #[arg(long, requires = "revoke", value_name = "PATH")]
    cgroup: Option<String>,
    /// List active enrollments (with --all also revoked, replaced and rejected attempts).
    #[arg(long, conflicts_with_all = ["token_file", "token_env", "token"])]
    list: bool,
    #[arg(long, requires = "list")]
    all: bool,
    #[arg(long)]
    json: bool,
}

pub fn run(a: &EnrollArgs, paths: &Paths) -> Result<ExitCode> {
    if a.list {
        let data = Client::connect(&paths.socket)?.call(&Request::EnrollmentsList {
            all: a.all,
            limit: 1000,
        })?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&data)?);
        } else {
            let rows = data.as_array().cloned().unwrap_or_default();
            if rows.is_empty() {
                println!("no enrollments");
            }
            for r in rows {
                print!("{}", output::enrollment(&r));
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.revoke {
        // Revoking one's own cgroup works for any user over the enroll
        // socket; naming another cgroup needs the control socket.
        let (socket, req) = match &a.cgroup {
            Some(c) => (
                &paths.socket,
                Request::EnrollRevoke {
                    cgroup: Some(c.clone()),
                },
            ),
            None => (&paths.enroll_socket, Request::EnrollRevoke { cgroup: None }),
        };
        let data = Client::connect(socket)?.call(&req)?;
        if a.json {
            println!("{data}");
        } else {
            let cgroup = output::esc(data["cgroup"].as_str().unwrap_or("-"));
            if data["released"].as_bool() == Some(false) {
                println!(
                    "revoked the enrollment of {cgroup} (its processes are unverified from now on; the cgroup stays bound to that identity until its token expires)"
                );
            } else {
                println!("revoked the enrollment of {cgroup} and released its binding");
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let token = if let Some(f) = &a.token_file {
        std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
    } else if let Some(v) = &a.token_env {
        std::env::var(v).with_context(|| format!("environment variable {v} is not set"))?
    } else if a.token.as_deref() == Some("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading the token from stdin")?;
        s
    } else if a.token.is_some() {
        bail!(
            "--token only accepts `-` (stdin): a token on the command line is visible to every user in `ps`"
        );
    } else {
        bail!("give the token with --token-file FILE, --token-env VAR or --token - (stdin)");
    };
    let token = token.trim();
    if token.is_empty() {
        bail!("the token is empty");
    }
    let data = Client::connect(&paths.enroll_socket)?.call(&Request::Enroll {
        token: token.to_string(),
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&data)?);
    } else {
        print!("{}", output::enrolled(&data));
    }
    Ok(ExitCode::SUCCESS)
}
