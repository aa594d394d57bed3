//! Human-readable output of the CLI (every command also has `--json`).

use crate::control::Status;
use crate::record::store::{ApprovalRow, EventRow, SessionRow};

fn or_dash<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| x.to_string())
        .unwrap_or_else(|| "-".into())
}

/// "2026-11-29T16:02:41.123456Z" → "2026-11-29 16:02:41".
fn short_ts(ts: &str) -> String {
    ts.get(..19)
        .map(|s| s.replace('T', " "))
        .unwrap_or_else(|| ts.to_string())
}

fn destination(addr: &str, port: i64) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

pub fn print_status(s: &Status) {
    println!(
        "interceptor {} (pid {}), up since {}",
        s.version,
        s.pid,
        short_ts(&s.started_at)
    );
    println!("  proxy port    {}", s.proxy_port);
    println!("  cgroup root   {}", s.cgroup_root);
    println!("  pin dir       {}", s.pin_dir);
    println!("  policy        {}", s.policy);
    println!("  database      {}", s.database);
    println!("  egress        {}", s.egress);
    println!();
    if s.attached.is_empty() {
        println!("attached cgroups: none (attach one with `interceptor attach --cgroup PATH`)");
    } else {
        println!("attached cgroups:");
        for a in &s.attached {
            println!("  {}  (id {})", a.cgroup, a.cgroup_id);
        }
    }
    println!();
    if s.intercepts.is_empty() {
        println!("intercept rules: none (add [[intercept]] entries to the policy)");
    } else {
        println!("intercept rules:");
        for r in &s.intercepts {
            println!(
                "  port {:<5}  {:<18}  {}",
                r.port,
                r.cidr.as_deref().unwrap_or("any address"),
                r.protocol
            );
        }
    }
    println!();
    if !s.enrollments.is_empty() {
        println!("enrolled identities:");
        for e in &s.enrollments {
            let g = |k: &str| e[k].as_str().unwrap_or("-").to_string();
            println!(
                "  {}  {}  repository {}  sha {}  (issuer {}, expires {})",
                g("cgroup"),
                g("subject"),
                g("repository"),
                g("sha"),
                g("issuer"),
                e["expires_at"]
            );
        }
        println!();
    }
    println!("live sessions: {}", s.live_sessions.len());
    for v in &s.live_sessions {
        let get = |k: &str| {
            v.get(k)
                .map(|x| x.to_string().trim_matches('"').to_string())
                .unwrap_or_default()
        };
        println!(
            "  #{}  {}  {}  pid {}  {}  up {} B / down {} B",
            get("id"),
            get("protocol"),
            get("destination"),
            get("pid"),
            get("cgroup"),
            get("bytes_up"),
            get("bytes_down")
        );
    }
    println!();
    println!("counters: {}", s.counters);
}

pub fn print_sessions(rows: &[SessionRow]) {
    if rows.is_empty() {
        println!("no sessions");
        return;
    }
    println!(
        "{:>6}  {:<19}  {:<8}  {:<22}  {:>7}  {:<16}  {:<24}  {:>10}  {:>10}  END",
        "ID", "STARTED", "PROTO", "DESTINATION", "PID", "EXE", "CGROUP", "UP", "DOWN"
    );
    for r in rows {
        let exe = r
            .exe
            .as_deref()
            .map(|e| e.rsplit('/').next().unwrap_or(e).to_string())
            .or_else(|| r.comm.clone())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:>6}  {:<19}  {:<8}  {:<22}  {:>7}  {:<16}  {:<24}  {:>10}  {:>10}  {}",
            r.id,
            short_ts(&r.started_at),
            r.protocol,
            destination(&r.dst_addr, r.dst_port),
            or_dash(&r.pid),
            exe,
            r.cgroup_path,
            r.bytes_up,
            r.bytes_down,
            match (&r.ended_at, &r.end_reason) {
                (None, _) => "open".to_string(),
                (Some(_), Some(reason)) => reason.clone(),
                (Some(_), None) => "closed".to_string(),
            }
        );
    }
}

pub fn print_session(s: &SessionRow, events: &[EventRow]) {
    println!("session {}", s.id);
    let line = |k: &str, v: String| println!("  {k:<14}{v}");
    line("started", s.started_at.clone());
    line("ended", or_dash(&s.ended_at));
    line("end reason", or_dash(&s.end_reason));
    line("protocol", s.protocol.clone());
    line("destination", destination(&s.dst_addr, s.dst_port));
    line("client", s.client_addr.clone());
    if s.target_user.is_some() || s.target_database.is_some() {
        line("db user", or_dash(&s.target_user));
        line("database", or_dash(&s.target_database));
    }
    line("cgroup", format!("{} (id {})", s.cgroup_path, s.cgroup_id));
    line("unit", or_dash(&s.unit));
    line("pid", or_dash(&s.pid));
    line("exe", or_dash(&s.exe));
    line("comm", or_dash(&s.comm));
    line("uid", or_dash(&s.uid));
    match &s.identity_issuer {
        None => line("identity", "none (cgroup not enrolled)".into()),
        Some(iss) => {
            line(
                "identity",
                format!("{} (issuer {iss})", or_dash(&s.identity_subject)),
            );
            line("repository", or_dash(&s.repository));
            line("sha", or_dash(&s.sha));
            line("run id", or_dash(&s.run_id));
            line("actor", or_dash(&s.actor));
            line("token id", or_dash(&s.identity_token_id));
        }
    }
    line(
        "bytes",
        format!("up {} / down {}", s.bytes_up, s.bytes_down),
    );
    println!();
    if events.is_empty() {
        println!("  no events");
        return;
    }
    println!("  events:");
    for e in events {
        let mut parts = vec![
            format!("#{}", e.seq),
            e.at.get(11..26).unwrap_or(&e.at).to_string(),
            e.kind.clone(),
        ];
        if let Some(d) = &e.decision {
            parts.push(match &e.rule {
                Some(r) => format!("{d} ({r})"),
                None => d.clone(),
            });
        }
        if let Some(k) = &e.statement_kind {
            parts.push(k.clone());
        }
        if let Some(us) = e.duration_us {
            parts.push(format!("{:.3} ms", us as f64 / 1000.0));
        }
        if let Some(r) = e.rows {
            parts.push(format!("{r} rows"));
        }
        println!("  {}", parts.join("  "));
        if let Some(t) = &e.text {
            for l in t.lines() {
                println!("      {l}");
            }
        }
        if let Some(r) = &e.reason
            && e.decision.as_deref() != Some("allow")
        {
            println!("      reason: {r}");
        }
        if let Some(err) = &e.error {
            println!("      error: {err}");
        }
    }
}

pub fn print_session_approvals(rows: &[ApprovalRow]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!("  approvals:");
    for r in rows {
        let outcome = match (&r.decided_by, &r.decided_at) {
            (Some(by), Some(at)) => format!("{} by {by} at {at}", r.status),
            (None, Some(at)) => format!("{} at {at}", r.status),
            _ => r.status.clone(),
        };
        println!(
            "  #{}  event #{}  rule {}  {outcome}{}",
            r.id,
            r.seq,
            r.rule.as_deref().unwrap_or("-"),
            r.decision_reason
                .as_deref()
                .map(|x| format!(": {x}"))
                .unwrap_or_default()
        );
    }
}
