//! `interceptor sessions …`: reads the database directly (read-only), so it
//! works while the daemon is down.

use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Subcommand;

use super::Paths;
use super::output;
use crate::record::store::{self, SessionFilter};

#[derive(Subcommand, Debug)]
pub enum SessionsCommand {
    /// List sessions, newest first.
    List {
        #[arg(long)]
        json: bool,
        /// Only sessions started since: an RFC 3339 time, a date (2026-11-29), or an age (30s, 10m, 2h, 7d).
        #[arg(long, value_name = "WHEN")]
        since: Option<String>,
        /// Only sessions from this cgroup or below it.
        #[arg(long, value_name = "PATH")]
        cgroup: Option<String>,
        /// Only sessions whose verified identity has this repository.
        #[arg(long)]
        repository: Option<String>,
        /// Only sessions whose verified identity has this commit sha.
        #[arg(long)]
        sha: Option<String>,
        /// Only sessions whose verified identity has this actor.
        #[arg(long)]
        actor: Option<String>,
        /// Only sessions whose verified identity has this CI run id.
        #[arg(long)]
        run_id: Option<String>,
        /// Only sessions of this protocol (tcp, postgres, mysql, ssh, http).
        #[arg(long)]
        protocol: Option<String>,
        /// At most this many sessions.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Show one session: identity, destination, and its event timeline.
    Show {
        id: i64,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: &SessionsCommand, paths: &Paths) -> Result<ExitCode> {
    if !paths.db.exists() {
        bail!(
            "no database at {} (has the daemon run yet? pass --db or --config)",
            paths.db.display()
        );
    }
    let conn = store::open_ro(&paths.db)?;
    match cmd {
        SessionsCommand::List {
            json,
            since,
            cgroup,
            repository,
            sha,
            actor,
            run_id,
            protocol,
            limit,
        } => {
            let filter = SessionFilter {
                since: since.as_deref().map(parse_since).transpose()?,
                cgroup: cgroup.clone(),
                repository: repository.clone(),
                sha: sha.clone(),
                actor: actor.clone(),
                run_id: run_id.clone(),
                protocol: protocol.clone(),
                limit: Some(*limit),
            };
            let rows = store::list_sessions(&conn, &filter)?;
            if *json {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                output::print_sessions(&rows);
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionsCommand::Show { id, json } => {
            let session = store::get_session(&conn, *id)?
                .with_context(|| format!("no session with id {id}"))?;
            let events = store::session_events(&conn, *id)?;
            if *json {
                let v = serde_json::json!({ "session": session, "events": events });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                output::print_session(&session, &events);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Turns `--since` into the database's timestamp format.
pub fn parse_since(s: &str) -> Result<String> {
    use time::format_description::well_known::Rfc3339;
    let s = s.trim();
    if let Ok(t) = time::OffsetDateTime::parse(s, &Rfc3339) {
        return Ok(crate::record::format_ts(t));
    }
    if let Ok(d) = time::Date::parse(s, time::macros::format_description!("[year]-[month]-[day]")) {
        return Ok(crate::record::format_ts(d.midnight().assume_utc()));
    }
    let age = if let Some(days) = s.strip_suffix('d') {
        days.parse::<u64>()
            .ok()
            .and_then(|d| d.checked_mul(86_400))
            .map(std::time::Duration::from_secs)
    } else {
        crate::config::parse_duration(s)
    };
    match age {
        Some(age) => Ok(crate::record::format_ts(
            time::OffsetDateTime::now_utc() - age,
        )),
        None => bail!(
            "--since {s:?}: use an RFC 3339 time (2026-11-29T10:00:00Z), a date (2026-11-29) or an age (30s, 10m, 2h, 7d)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_forms() {
        assert_eq!(
            parse_since("2026-11-29T10:00:00Z").unwrap(),
            "2026-11-29T10:00:00.000000Z"
        );
        assert_eq!(
            parse_since("2026-11-29").unwrap(),
            "2026-11-29T00:00:00.000000Z"
        );
        assert!(parse_since("10m").unwrap() < crate::record::now_rfc3339());
        assert!(parse_since("7d").is_ok());
        assert!(parse_since("yesterday").is_err());
    }
}
