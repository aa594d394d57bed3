//! `interceptor policy check|reload`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use policy::{Dialect, Identity, Operation, Protocol, Target, Verdict, Workload};
use serde::Serialize;

use super::Paths;
use super::output;
use crate::control::Request;
use crate::control::client::Client;

/// Exit status of `policy check` for each verdict.
pub const EXIT_ALLOW: u8 = 0;
pub const EXIT_DENY: u8 = 3;
pub const EXIT_REVIEW: u8 = 4;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Decide one operation against a policy file, offline. Exit status: 0 allow, 3 deny, 4 review, 1 error.
    Check(Box<CheckArgs>),
    /// Make the running daemon re-read its policy file (as SIGHUP does); a broken file is refused and the current policy kept.
    Reload,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    /// Policy file (default: the one the daemon configuration names).
    #[arg(long, value_name = "PATH")]
    policy: Option<PathBuf>,
    /// Protocol of the target: tcp, postgres, mysql, ssh, http.
    #[arg(long)]
    protocol: Protocol,
    /// SQL to judge (several statements are judged one by one; the strictest wins).
    #[arg(long, conflicts_with_all = ["command", "method"])]
    sql: Option<String>,
    /// SSH command line to judge.
    #[arg(long, conflicts_with = "method")]
    command: Option<String>,
    /// HTTP method to judge (with --path and --http-host).
    #[arg(long, requires = "path")]
    method: Option<String>,
    /// HTTP request path.
    #[arg(long)]
    path: Option<String>,
    /// HTTP Host header.
    #[arg(long)]
    http_host: Option<String>,
    /// A verified identity claim, NAME=VALUE (repeatable), e.g. repository=acme/api.
    #[arg(long = "identity", value_name = "NAME=VALUE")]
    identity: Vec<String>,
    /// Workload cgroup path.
    #[arg(long, default_value = "/")]
    cgroup: String,
    /// Workload systemd unit.
    #[arg(long)]
    unit: Option<String>,
    /// Workload executable.
    #[arg(long)]
    exe: Option<String>,
    /// Workload uid.
    #[arg(long)]
    uid: Option<u32>,
    /// Target address.
    #[arg(long, default_value = "127.0.0.1")]
    addr: IpAddr,
    /// Target port (default: the protocol's usual port).
    #[arg(long)]
    port: Option<u16>,
    /// Target host name (HTTP Host, TLS SNI).
    #[arg(long)]
    host: Option<String>,
    /// Target database.
    #[arg(long)]
    database: Option<String>,
    /// Target database user.
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct CheckResult {
    operation: String,
    statement_kinds: Vec<String>,
    verdict: Verdict,
    rule: Option<String>,
    message: Option<String>,
    reason: String,
}

/// The human form of `policy check`: the verdict and the operation on one
/// line (an operation of several lines below it, each line with a `| `
/// prefix), its kinds, rule, reason and message, escaped.
fn check_text(results: &[CheckResult]) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    for r in results {
        let verdict = r.verdict.as_str().to_uppercase();
        if r.operation.trim_end_matches('\n').contains('\n') {
            let _ = writeln!(o, "{verdict}");
            o.push_str(&output::block("  | ", &r.operation));
        } else {
            let _ = writeln!(o, "{verdict}  {}", output::esc(&r.operation));
        }
        if !r.statement_kinds.is_empty() {
            let _ = writeln!(
                o,
                "  kind:   {}",
                output::esc(&r.statement_kinds.join(", "))
            );
        }
        let _ = writeln!(
            o,
            "  rule:   {}",
            output::esc(r.rule.as_deref().unwrap_or("(none: default)"))
        );
        let _ = writeln!(o, "  why:    {}", output::esc(&r.reason));
        if let Some(m) = &r.message {
            let _ = writeln!(o, "  message: {}", output::esc(m));
        }
    }
    o
}

pub fn run(cmd: &PolicyCommand, paths: &Paths, policy_path: PathBuf) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Reload => {
            let data = Client::connect(&paths.socket)?.call(&Request::PolicyReload)?;
            println!(
                "policy reloaded: {}",
                output::esc(data.as_str().unwrap_or_default())
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Check(args) => check(args, args.policy.clone().unwrap_or(policy_path)),
    }
}

fn check(a: &CheckArgs, path: PathBuf) -> Result<ExitCode> {
    let policy = crate::daemon::load_policy(&path)?;
    let mut claims = BTreeMap::new();
    for kv in &a.identity {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--identity {kv:?}: use NAME=VALUE"))?;
        claims.insert(k.to_string(), v.to_string());
    }
    let workload = Workload {
        cgroup: a.cgroup.clone(),
        unit: a.unit.clone(),
        exe: a.exe.clone(),
        comm: None,
        uid: a.uid,
        pid: None,
        identity: (!claims.is_empty()).then(|| Identity {
            issuer: claims
                .get("iss")
                .cloned()
                .unwrap_or_else(|| "policy-check".into()),
            subject: claims.get("sub").cloned().unwrap_or_default(),
            claims,
        }),
    };
    let default_port = match a.protocol {
        Protocol::Postgres => 5432,
        Protocol::Mysql => 3306,
        Protocol::Ssh => 22,
        Protocol::Http => 80,
        Protocol::Tcp => 0,
    };
    let target = Target {
        protocol: a.protocol,
        addr: a.addr,
        port: a.port.unwrap_or(default_port),
        host: a.host.clone().or_else(|| a.http_host.clone()),
        database: a.database.clone(),
        user: a.user.clone(),
    };
    let mut results = Vec::new();
    if let Some(sql) = &a.sql {
        let dialect = match a.protocol {
            Protocol::Mysql => Dialect::Mysql,
            Protocol::Postgres => Dialect::Postgres,
            p => bail!("--sql needs --protocol postgres or mysql, not {p}"),
        };
        match policy::sql::classify(sql, dialect) {
            Ok(stmts) if stmts.is_empty() => bail!("--sql contains no statement"),
            Ok(stmts) => {
                for st in &stmts {
                    let d = policy.decide(&workload, &target, &Operation::Sql(st));
                    results.push(CheckResult {
                        operation: st.text.clone(),
                        statement_kinds: st.kinds.iter().map(|k| k.to_string()).collect(),
                        verdict: d.verdict,
                        rule: d.rule,
                        message: d.message,
                        reason: d.reason,
                    });
                }
            }
            Err(e) => {
                let err = e.to_string();
                let d = policy.decide(
                    &workload,
                    &target,
                    &Operation::SqlUnparsed {
                        text: sql,
                        error: &err,
                    },
                );
                results.push(CheckResult {
                    operation: sql.clone(),
                    statement_kinds: vec![],
                    verdict: d.verdict,
                    rule: d.rule,
                    message: d.message,
                    reason: format!("{} (unparsed: {err})", d.reason),
                });
            }
        }
    } else if let Some(c) = &a.command {
        let d = policy.decide(&workload, &target, &Operation::SshCommand(c));
        results.push(CheckResult {
            operation: c.clone(),
            statement_kinds: vec![],
            verdict: d.verdict,
            rule: d.rule,
            message: d.message,
            reason: d.reason,
        });
    } else if let Some(m) = &a.method {
        let host = a
            .http_host
            .clone()
            .or_else(|| a.host.clone())
            .unwrap_or_else(|| a.addr.to_string());
        let path = a.path.clone().unwrap_or_else(|| "/".into());
        let d = policy.decide(
            &workload,
            &target,
            &Operation::Http {
                method: m,
                host: &host,
                path: &path,
            },
        );
        results.push(CheckResult {
            operation: format!("{m} {path}"),
            statement_kinds: vec![],
            verdict: d.verdict,
            rule: d.rule,
            message: d.message,
            reason: d.reason,
        });
    } else {
        let d = policy.decide(&workload, &target, &Operation::Connect);
        results.push(CheckResult {
            operation: "connect".into(),
            statement_kinds: vec![],
            verdict: d.verdict,
            rule: d.rule,
            message: d.message,
            reason: d.reason,
        });
    }
    let overall = results
        .iter()
        .map(|r| r.verdict)
        .max()
        .unwrap_or(Verdict::Allow);
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "verdict": overall, "results": results })
            )?
        );
    } else {
        print!("{}", check_text(&results));
    }
    Ok(ExitCode::from(match overall {
        Verdict::Allow => EXIT_ALLOW,
        Verdict::Deny => EXIT_DENY,
        Verdict::Review => EXIT_REVIEW,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_output_escapes_and_prefixes_multi_line_operations() {
        let r = |op: &str| CheckResult {
            operation: op.into(),
            statement_kinds: vec!["drop\x1b[2J".into()],
            verdict: Verdict::Deny,
            rule: Some("r\u{202e}".into()),
            message: Some("m\r".into()),
            reason: "why\n  rule:   fake".into(),
        };
        let out = check_text(&[r("DROP TABLE users")]);
        assert!(out.starts_with("DENY  DROP TABLE users\n"), "{out}");
        assert!(out.contains("kind:   drop\\x1b[2J"));
        assert!(out.contains("rule:   r\\u{202e}"));
        assert!(out.contains("why:    why\\n  rule:   fake"));
        assert_eq!(out.lines().count(), 5);
        let out = check_text(&[r("SELECT 1;\n  rule:   allowed\nDROP TABLE users")]);
        assert!(
            out.starts_with("DENY\n  | SELECT 1;\n  |   rule:   allowed\n  | DROP TABLE users\n"),
            "{out}"
        );
    }
}
