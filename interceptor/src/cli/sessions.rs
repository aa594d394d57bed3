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
    /// Replay a session's timeline with its original timing.
    Replay {
        id: i64,
        /// Playback speed: 2 plays twice as fast, 0.5 half as fast.
        #[arg(long, default_value_t = 1.0)]
        speed: f64,
        /// Print everything at once, without waiting.
        #[arg(long)]
        no_wait: bool,
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
            let approvals = store::session_approvals(&conn, *id)?;
            if *json {
                let v = serde_json::json!({ "session": session, "events": events, "approvals": approvals });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                output::print_session(&session, &events);
                output::print_session_approvals(&approvals);
            }
            Ok(ExitCode::SUCCESS)
        }
        SessionsCommand::Replay { id, speed, no_wait } => {
            if !(*speed > 0.0 && speed.is_finite()) {
                bail!("--speed must be a positive number");
            }
            let session = store::get_session(&conn, *id)?
                .with_context(|| format!("no session with id {id}"))?;
            let events = store::session_events(&conn, *id)?;
            replay(&session, &events, *speed, *no_wait);
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn parse_ts(s: &str) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Prints the timeline, sleeping between events as they happened.
fn replay(session: &store::SessionRow, events: &[store::EventRow], speed: f64, no_wait: bool) {
    use std::io::Write;
    print!("{}", output::replay_header(session, events.len(), speed));
    let mut last = parse_ts(&session.started_at);
    for e in events {
        let at = parse_ts(&e.at);
        if let (Some(prev), Some(now)) = (last, at)
            && !no_wait
        {
            let gap = (now - prev).as_seconds_f64() / speed;
            if gap > 0.0 {
                std::thread::sleep(std::time::Duration::from_secs_f64(gap.min(3600.0)));
            }
        }
        if at.is_some() {
            last = at;
        }
        let offset = match (parse_ts(&session.started_at), at) {
            (Some(s), Some(a)) => format!("+{:.3}s", (a - s).as_seconds_f64()),
            _ => String::new(),
        };
        print!("{}", output::replay_event(&offset, e));
        let _ = std::io::stdout().flush();
    }
    if let Some(end) = output::replay_end(session) {
        print!("{end}");
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

/// `interceptor export`: every matching session with its events and
/// approvals, one JSON object per line, oldest first.
pub fn export(
    paths: &Paths,
    since: Option<&str>,
    output: Option<&std::path::Path>,
) -> Result<ExitCode> {
    use std::io::Write;
    if !paths.db.exists() {
        bail!(
            "no database at {} (pass --db or --config)",
            paths.db.display()
        );
    }
    let conn = store::open_ro(&paths.db)?;
    let filter = SessionFilter {
        since: since.map(parse_since).transpose()?,
        ..Default::default()
    };
    let mut rows = store::list_sessions(&conn, &filter)?;
    rows.reverse();
    let mut out: Box<dyn Write> = match output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    for s in &rows {
        let events = store::session_events(&conn, s.id)?;
        let approvals = store::session_approvals(&conn, s.id)?;
        serde_json::to_writer(
            &mut out,
            &serde_json::json!({ "session": s, "events": events, "approvals": approvals }),
        )?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    if output.is_some() {
        eprintln!("exported {} sessions", rows.len());
    }
    Ok(ExitCode::SUCCESS)
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
