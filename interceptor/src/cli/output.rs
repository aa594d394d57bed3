//! Human-readable output of the CLI (every command also has `--json`).
//!
//! Almost every string shown here comes from the workload or passed
//! through it: SQL text, comm, exe, cgroup paths, units, identity claims,
//! server error texts, reasons that quote them. None of it may steer the
//! terminal or fake a line an approver reads, so every string goes
//! through [`esc`] (one line) or [`block`] (multi-line text such as SQL,
//! every line of which gets a prefix the workload cannot produce). The
//! formatters are pure functions returning the text; the `print_*`
//! wrappers write it to stdout.

use std::borrow::Cow;
use std::fmt::Write as _;

use crate::control::{AttachResult, Status, UidAttachResult};
use crate::record::store::{ApprovalRow, EventRow, SessionRow};

/// Whether `c` is shown as an escape: C0 controls (newline included),
/// DEL, C1 controls, and the invisible characters that reorder, join or
/// hide text (bidi embeddings, overrides, isolates and marks; zero-width
/// spaces and joiners; line and paragraph separators; soft hyphen; fillers
/// that render blank; tag characters).
fn hidden(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{ad}'
        | '\u{34f}'
        | '\u{61c}'
        | '\u{115f}' | '\u{1160}'
        | '\u{180e}'
        | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{206f}'
        | '\u{3164}'
        | '\u{feff}'
        | '\u{ffa0}'
        | '\u{fff9}'..='\u{fffb}'
        | '\u{e0000}'..='\u{e007f}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// A workload-controlled string made safe for one line of terminal output:
/// every [`hidden`] character becomes a visible escape (`\n`, `\r`, `\t`,
/// `\x1b`, `\u{202e}`). Backslashes are left alone (SQL is full of them,
/// and a literal `\n` cannot start a line). Borrowed when nothing needed
/// escaping.
pub fn esc(s: &str) -> Cow<'_, str> {
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if hidden(c) {
            push_escaped(&mut out, c);
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Multi-line workload text (SQL), one output line per line of the text,
/// each starting with `prefix` and escaped like [`esc`] (so only `\n`
/// starts a new line, and every line the reader sees begins with
/// `prefix`). A final newline does not add an empty line; an empty text is
/// one empty prefixed line. Every output line ends with `\n`.
pub fn block(prefix: &str, s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    let s = s.strip_suffix('\n').unwrap_or(s);
    for line in s.split('\n') {
        out.push_str(prefix);
        out.push_str(&esc(line));
        out.push('\n');
    }
    out
}

/// An optional string, escaped, or `-`.
fn opt(v: &Option<String>) -> Cow<'_, str> {
    v.as_deref().map_or(Cow::Borrowed("-"), esc)
}

fn or_dash<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref()
        .map(|x| esc(&x.to_string()).into_owned())
        .unwrap_or_else(|| "-".into())
}

/// A JSON value for display: strings escaped, anything else as JSON
/// (escaped too: a JSON string escapes controls but not bidi characters).
pub fn json(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => esc(s).into_owned(),
        serde_json::Value::Null => "-".into(),
        v => esc(&v.to_string()).into_owned(),
    }
}

/// A string member of a JSON object, escaped, or `-`.
fn jstr(v: &serde_json::Value, k: &str) -> String {
    v.get(k)
        .and_then(|x| x.as_str())
        .map_or_else(|| "-".into(), |s| esc(s).into_owned())
}

/// "2026-11-29T16:02:41.123456Z" → "2026-11-29 16:02:41".
fn short_ts(ts: &str) -> String {
    esc(&ts
        .get(..19)
        .map(|s| s.replace('T', " "))
        .unwrap_or_else(|| ts.to_string()))
    .into_owned()
}

fn destination(addr: &str, port: i64) -> String {
    let addr = esc(addr);
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

/// `interceptor attach|detach`.
pub fn attach_result(r: &AttachResult, verb: &str) -> String {
    if verb == "detached" && !r.changed {
        format!("{} was not attached\n", esc(&r.cgroup))
    } else {
        format!("{verb} {} (cgroup id {})\n", esc(&r.cgroup), r.cgroup_id)
    }
}

/// `interceptor attach|detach --uid`.
pub fn uid_attach_result(r: &UidAttachResult, verb: &str) -> String {
    let who = match &r.user {
        Some(name) => format!("uid {} ({})", r.uid, esc(name)),
        None => format!("uid {}", r.uid),
    };
    match (verb, r.changed) {
        ("detached", false) => format!("{who} was not attached\n"),
        ("attached", false) => format!("{who} was already attached\n"),
        _ => format!("{verb} {who}\n"),
    }
}

/// `interceptor status --pid PID` (the daemon's `where_is` answer).
pub fn where_is(pid: u32, v: &serde_json::Value) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "pid {pid} ({})", jstr(v, "exe"));
    let _ = writeln!(o, "  cgroup     {}", jstr(v, "cgroup"));
    let _ = writeln!(o, "  unit       {}", jstr(v, "unit"));
    match (v["attached"].as_str(), v["attached_uid"].as_u64()) {
        (Some(a), _) => {
            let _ = writeln!(o, "  intercepted: yes (attached cgroup {})", esc(a));
        }
        (None, Some(uid)) => {
            let _ = writeln!(o, "  intercepted: yes (attached uid {uid})");
        }
        (None, None) => {
            let _ = writeln!(
                o,
                "  intercepted: no (no attached cgroup covers it; `interceptor attach --pid {pid}` would attach {})",
                jstr(v, "cgroup")
            );
        }
    }
    match v["identity"].as_object() {
        Some(_) => {
            let i = &v["identity"];
            let _ = writeln!(
                o,
                "  identity   {} (repository {}, enrolled at {})",
                jstr(i, "subject"),
                jstr(i, "repository"),
                jstr(i, "enrolled_cgroup")
            );
        }
        None => o.push_str("  identity   none enrolled\n"),
    }
    o
}

pub fn status(s: &Status) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "interceptor {} (pid {}), up since {}",
        esc(&s.version),
        s.pid,
        short_ts(&s.started_at)
    );
    let _ = writeln!(o, "  proxy port    {}", s.proxy_port);
    let _ = writeln!(o, "  cgroup root   {}", esc(&s.cgroup_root));
    let _ = writeln!(o, "  pin dir       {}", esc(&s.pin_dir));
    let _ = writeln!(o, "  policy        {}", esc(&s.policy));
    let _ = writeln!(o, "  database      {}", esc(&s.database));
    let _ = writeln!(o, "  egress        {}", esc(&s.egress));
    o.push('\n');
    if s.attached.is_empty() {
        o.push_str("attached cgroups: none (attach one with `interceptor attach --cgroup PATH`)\n");
    } else {
        o.push_str("attached cgroups:\n");
        for a in &s.attached {
            let _ = writeln!(o, "  {}  (id {})", esc(&a.cgroup), a.cgroup_id);
        }
    }
    if !s.attached_uids.is_empty() {
        o.push_str("attached uids (intercepted wherever they run):\n");
        for u in &s.attached_uids {
            let _ = writeln!(
                o,
                "  uid {}  {}  (since {})",
                u.uid,
                esc(u.user.as_deref().unwrap_or("-")),
                u.attached_at
                    .as_deref()
                    .map(short_ts)
                    .unwrap_or_else(|| "-".into())
            );
        }
    }
    o.push('\n');
    if s.intercepts.is_empty() {
        o.push_str("intercept rules: none (add [[intercept]] entries to the policy)\n");
    } else {
        o.push_str("intercept rules:\n");
        for r in &s.intercepts {
            let _ = writeln!(
                o,
                "  port {:<5}  {:<18}  {}",
                r.port,
                esc(r.cidr.as_deref().unwrap_or("any address")),
                esc(&r.protocol)
            );
        }
    }
    o.push('\n');
    if !s.enrollments.is_empty() {
        o.push_str("enrolled identities:\n");
        for e in &s.enrollments {
            let _ = writeln!(
                o,
                "  {}  {}  repository {}  sha {}  (issuer {}, expires {})",
                jstr(e, "cgroup"),
                jstr(e, "subject"),
                jstr(e, "repository"),
                jstr(e, "sha"),
                jstr(e, "issuer"),
                json(&e["expires_at"])
            );
        }
        o.push('\n');
    }
    let _ = writeln!(o, "live sessions: {}", s.live_sessions.len());
    for v in &s.live_sessions {
        let get = |k: &str| v.get(k).map(json).unwrap_or_default();
        let _ = writeln!(
            o,
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
    o.push('\n');
    let _ = writeln!(o, "counters: {}", json(&s.counters));
    o
}

pub fn print_status(s: &Status) {
    print!("{}", status(s));
}

pub fn sessions(rows: &[SessionRow]) -> String {
    if rows.is_empty() {
        return "no sessions\n".into();
    }
    let mut o = String::new();
    let _ = writeln!(
        o,
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
        let _ = writeln!(
            o,
            "{:>6}  {:<19}  {:<8}  {:<22}  {:>7}  {:<16}  {:<24}  {:>10}  {:>10}  {}",
            r.id,
            short_ts(&r.started_at),
            esc(&r.protocol),
            destination(&r.dst_addr, r.dst_port),
            or_dash(&r.pid),
            esc(&exe),
            esc(&r.cgroup_path),
            r.bytes_up,
            r.bytes_down,
            match (&r.ended_at, &r.end_reason) {
                (None, _) => "open".into(),
                (Some(_), Some(reason)) => esc(reason),
                (Some(_), None) => "closed".into(),
            }
        );
    }
    o
}

pub fn print_sessions(rows: &[SessionRow]) {
    print!("{}", sessions(rows));
}

pub fn session(s: &SessionRow, events: &[EventRow]) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "session {}", s.id);
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(o, "  {k:<14}{v}");
    };
    line("started", &esc(&s.started_at));
    line("ended", &opt(&s.ended_at));
    line("end reason", &opt(&s.end_reason));
    line("protocol", &esc(&s.protocol));
    line("destination", &destination(&s.dst_addr, s.dst_port));
    line("client", &esc(&s.client_addr));
    if s.target_user.is_some() || s.target_database.is_some() {
        line("db user", &opt(&s.target_user));
        line("database", &opt(&s.target_database));
    }
    line(
        "cgroup",
        &format!("{} (id {})", esc(&s.cgroup_path), s.cgroup_id),
    );
    line("unit", &opt(&s.unit));
    line("pid", &or_dash(&s.pid));
    line("exe", &opt(&s.exe));
    line("comm", &opt(&s.comm));
    line("uid", &or_dash(&s.uid));
    match &s.identity_issuer {
        None => line("identity", "none (cgroup not enrolled)"),
        Some(iss) => {
            line(
                "identity",
                &format!("{} (issuer {})", opt(&s.identity_subject), esc(iss)),
            );
            line("repository", &opt(&s.repository));
            line("sha", &opt(&s.sha));
            line("run id", &opt(&s.run_id));
            line("actor", &opt(&s.actor));
            line("token id", &opt(&s.identity_token_id));
        }
    }
    line(
        "bytes",
        &format!("up {} / down {}", s.bytes_up, s.bytes_down),
    );
    o.push('\n');
    if events.is_empty() {
        o.push_str("  no events\n");
        return o;
    }
    o.push_str("  events:\n");
    for e in events {
        let mut parts = vec![
            format!("#{}", e.seq),
            esc(e.at.get(11..26).unwrap_or(&e.at)).into_owned(),
            esc(&e.kind).into_owned(),
        ];
        if let Some(d) = &e.decision {
            parts.push(match &e.rule {
                Some(r) => format!("{} ({})", esc(d), esc(r)),
                None => esc(d).into_owned(),
            });
        }
        if let Some(k) = &e.statement_kind {
            parts.push(esc(k).into_owned());
        }
        if let Some(us) = e.duration_us {
            parts.push(format!("{:.3} ms", us as f64 / 1000.0));
        }
        if let Some(r) = e.rows {
            parts.push(format!("{r} rows"));
        }
        let _ = writeln!(o, "  {}", parts.join("  "));
        if let Some(t) = &e.text {
            o.push_str(&block("      | ", t));
        }
        if let Some(r) = &e.reason
            && e.decision.as_deref() != Some("allow")
        {
            let _ = writeln!(o, "      reason: {}", esc(r));
        }
        if let Some(err) = &e.error {
            let _ = writeln!(o, "      error: {}", esc(err));
        }
    }
    o
}

pub fn print_session(s: &SessionRow, events: &[EventRow]) {
    print!("{}", session(s, events));
}

pub fn session_approvals(rows: &[ApprovalRow]) -> String {
    if rows.is_empty() {
        return String::new();
    }
    let mut o = String::from("\n  approvals:\n");
    for r in rows {
        let outcome = match (&r.decided_by, &r.decided_at) {
            (Some(by), Some(at)) => format!("{} by {} at {}", esc(&r.status), esc(by), esc(at)),
            (None, Some(at)) => format!("{} at {}", esc(&r.status), esc(at)),
            _ => esc(&r.status).into_owned(),
        };
        let _ = writeln!(
            o,
            "  #{}  event #{}  rule {}  {outcome}{}",
            r.id,
            r.seq,
            opt(&r.rule),
            r.decision_reason
                .as_deref()
                .map(|x| format!(": {}", esc(x)))
                .unwrap_or_default()
        );
    }
    o
}

pub fn print_session_approvals(rows: &[ApprovalRow]) {
    print!("{}", session_approvals(rows));
}

/// The header line of `sessions replay`.
pub fn replay_header(s: &SessionRow, events: usize, speed: f64) -> String {
    format!(
        "replaying session {} ({} to {}, {events} events, speed {speed}x)\n",
        s.id,
        esc(&s.protocol),
        destination(&s.dst_addr, s.dst_port),
    )
}

/// One event of `sessions replay` (`offset`: time since the session
/// started, or empty). The statement is shown on one line, its newlines as
/// `\n`.
pub fn replay_event(offset: &str, e: &EventRow) -> String {
    let mut o = format!(
        "{offset:>10}  #{:<4} {:<10} {:<7} {}\n",
        e.seq,
        esc(&e.kind),
        opt(&e.decision),
        esc(e.text.as_deref().unwrap_or(""))
    );
    if let Some(err) = &e.error {
        let _ = writeln!(o, "{:>10}  error: {}", "", esc(err));
    }
    o
}

/// The last line of `sessions replay`.
pub fn replay_end(s: &SessionRow) -> Option<String> {
    s.ended_at.as_ref().map(|end| {
        format!(
            "session ended at {}: {}\n",
            esc(end),
            esc(s.end_reason.as_deref().unwrap_or("closed"))
        )
    })
}

/// One request of `approvals list`.
pub fn approval(r: &ApprovalRow) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "#{}  {}  session {}  {}  {} → {}  expires {}",
        r.id,
        esc(&r.status),
        r.session_id,
        esc(&r.protocol),
        esc(&r.cgroup),
        esc(&r.destination),
        esc(&r.expires_at)
    );
    let _ = writeln!(o, "    rule: {}  ({})", opt(&r.rule), esc(&r.reason));
    if let Some(repo) = &r.repository {
        let _ = writeln!(
            o,
            "    identity: {}@{} run {} by {}",
            esc(repo),
            opt(&r.sha),
            opt(&r.run_id),
            opt(&r.actor)
        );
    }
    let _ = writeln!(o, "    process: pid {} {}", or_dash(&r.pid), opt(&r.exe));
    o.push_str(&block("    | ", &r.operation));
    if r.status == "pending" && r.shape.is_none() {
        let _ = writeln!(
            o,
            "    exact text only: its literals carry code or it was not understood (no --for)"
        );
    }
    if let Some(by) = &r.decided_by {
        let _ = writeln!(
            o,
            "    decided by {} at {}{}",
            esc(by),
            opt(&r.decided_at),
            r.decision_reason
                .as_deref()
                .map(|x| format!(": {}", esc(x)))
                .unwrap_or_default()
        );
    }
    o
}

/// One request as `approvals watch` announces it (the daemon's event).
pub fn approval_event(d: &serde_json::Value) -> String {
    let id = json(&d["id"]);
    let mut o = format!(
        "#{id} session {} {} {} (rule {})\n",
        json(&d["session_id"]),
        jstr(d, "cgroup"),
        jstr(d, "destination"),
        jstr(d, "rule"),
    );
    o.push_str(&block("    | ", d["operation"].as_str().unwrap_or("")));
    let _ = writeln!(
        o,
        "    approve: interceptor approvals approve {id}   deny: interceptor approvals deny {id}"
    );
    o
}

/// One row of `enroll --list`.
pub fn enrollment(r: &serde_json::Value) -> String {
    let claims = &r["claims"];
    format!(
        "#{}  {}  {}  {}  {}  repository {}  sha {}  expires {}{}\n",
        json(&r["id"]),
        jstr(r, "at"),
        jstr(r, "status"),
        jstr(r, "cgroup_path"),
        jstr(r, "subject"),
        jstr(claims, "repository"),
        jstr(claims, "sha"),
        json(&r["expires_at"]),
        r["reason"]
            .as_str()
            .map(|x| format!("  reason: {}", esc(x)))
            .unwrap_or_default()
    )
}

/// What `enroll` prints when the token was accepted.
pub fn enrolled(data: &serde_json::Value) -> String {
    let mut o = format!(
        "enrolled {} as {} (issuer {}), until unix time {}\n",
        jstr(data, "cgroup"),
        jstr(data, "subject"),
        jstr(data, "issuer"),
        json(&data["expires_at"])
    );
    if let Some(c) = data["claims"].as_object() {
        for (k, v) in c {
            let v = v.as_str().map_or_else(|| json(v), |s| esc(s).into_owned());
            let _ = writeln!(o, "  {:<18}{v}", esc(k));
        }
    }
    o
}

#[cfg(test)]
mod tests;
