use super::*;

/// Strings a workload can put in SQL, process names, cgroup paths, claims
/// or error texts to steer a terminal or fake lines.
const HOSTILE: &[&str] = &[
    "\x1b[2J\x1b[HSELECT 1",                          // clear screen, home
    "DROP TABLE users\r    | SELECT 1",               // carriage return over it
    "DROP TABLE users\x08\x08\x08\x08\x08\x08\x08",   // backspaces
    "SELECT 1\n    | harmless\n#8  approved",         // fake lines
    "SELECT '\u{202e}elbat pord'",                    // right-to-left override
    "a\u{2066}b\u{2069}c\u{200b}d\u{feff}e\u{2028}f", // isolates, zero-width, line separator
    "\u{85}next line\u{9b}31m",                       // C1 NEL and CSI
    "tag\u{e0041}\u{e0042}",                          // invisible tag characters
    "nul\0del\x7f",
];

/// No control character, no bidi or invisible character, and every line
/// of `out` is one the formatter wrote (checked by the caller).
fn assert_clean(out: &str) {
    for c in out.chars() {
        assert!(c == '\n' || !hidden(c), "{c:?} left in {out:?}");
    }
}

#[test]
fn esc_makes_hidden_characters_visible() {
    assert!(matches!(esc("SELECT 'a\\nb' → ü"), Cow::Borrowed(_)));
    assert_eq!(esc("a\nb\tc\rd"), "a\\nb\\tc\\rd");
    assert_eq!(esc("\x1b[31m"), "\\x1b[31m");
    assert_eq!(esc("\0\x7f"), "\\x00\\x7f");
    assert_eq!(esc("x\u{202e}y"), "x\\u{202e}y");
    assert_eq!(esc("\u{85}\u{9b}"), "\\u{85}\\u{9b}");
    assert_eq!(
        esc("\u{200b}\u{2028}\u{feff}\u{e0041}"),
        "\\u{200b}\\u{2028}\\u{feff}\\u{e0041}"
    );
    for s in HOSTILE {
        let e = esc(s);
        assert_clean(&e);
        assert!(!e.contains('\n'));
    }
}

#[test]
fn block_prefixes_every_line() {
    assert_eq!(block("| ", "a\nb\n"), "| a\n| b\n");
    assert_eq!(block("| ", ""), "| \n");
    assert_eq!(block("| ", "a\r\n\x1b[1Ab"), "| a\\r\n| \\x1b[1Ab\n");
    for s in HOSTILE {
        let b = block("    | ", s);
        assert_clean(&b);
        assert!(b.lines().all(|l| l.starts_with("    | ")), "{b:?}");
        assert_eq!(b.lines().count(), s.split('\n').count());
    }
}

fn session_row(h: &str) -> SessionRow {
    let s = Some(h.to_string());
    SessionRow {
        id: 1,
        started_at: h.into(),
        ended_at: s.clone(),
        protocol: h.into(),
        client_addr: h.into(),
        dst_addr: h.into(),
        dst_port: 5432,
        cgroup_path: h.into(),
        cgroup_id: 9,
        unit: s.clone(),
        pid: Some(3),
        exe: s.clone(),
        comm: s.clone(),
        uid: Some(0),
        identity_issuer: s.clone(),
        identity_subject: s.clone(),
        identity_token_id: s.clone(),
        repository: s.clone(),
        sha: s.clone(),
        run_id: s.clone(),
        actor: s.clone(),
        identity_claims: None,
        target_user: s.clone(),
        target_database: s.clone(),
        bytes_up: 1,
        bytes_down: 2,
        end_reason: s,
    }
}

fn event_row(h: &str) -> EventRow {
    let s = Some(h.to_string());
    EventRow {
        session_id: 1,
        seq: 1,
        at: h.into(),
        kind: h.into(),
        text: s.clone(),
        statement_kind: s.clone(),
        decision: Some("deny".into()),
        rule: s.clone(),
        reason: s.clone(),
        duration_us: Some(5),
        rows: Some(1),
        error: s,
        detail: None,
    }
}

fn approval_row(h: &str) -> ApprovalRow {
    let s = Some(h.to_string());
    ApprovalRow {
        id: 7,
        session_id: 1,
        seq: 2,
        created_at: h.into(),
        expires_at: h.into(),
        status: h.into(),
        protocol: h.into(),
        destination: h.into(),
        operation: h.into(),
        rule: s.clone(),
        reason: h.into(),
        cgroup: h.into(),
        unit: s.clone(),
        pid: Some(4),
        exe: s.clone(),
        uid: None,
        repository: s.clone(),
        sha: s.clone(),
        run_id: s.clone(),
        actor: s.clone(),
        decided_at: s.clone(),
        decided_by_uid: None,
        decided_by: s.clone(),
        decision_reason: s,
        scope_minutes: None,
        shape: None,
    }
}

/// The number of lines a terminal shows for `out` (the hostile strings
/// must not add any beyond the prefixed lines of a statement).
fn count_lines(out: &str) -> usize {
    out.lines().count()
}

#[test]
fn session_formatters_escape_every_field() {
    for h in HOSTILE {
        let calm = "x";
        let (s, e, a) = (session_row(h), event_row(h), approval_row(h));
        let out = sessions(std::slice::from_ref(&s));
        assert_clean(&out);
        assert_eq!(
            count_lines(&out),
            count_lines(&sessions(&[session_row(calm)]))
        );
        let out = session(&s, std::slice::from_ref(&e));
        assert_clean(&out);
        // Only the statement may add lines, and only prefixed ones.
        let extra = h.split('\n').count() - 1;
        assert_eq!(
            count_lines(&out),
            count_lines(&session(&session_row(calm), &[event_row(calm)])) + extra,
            "{out}"
        );
        let sql: Vec<&str> = out.lines().filter(|l| l.starts_with("      | ")).collect();
        assert_eq!(sql.len(), extra + 1);
        let out = session_approvals(std::slice::from_ref(&a));
        assert_clean(&out);
        assert_eq!(
            count_lines(&out),
            count_lines(&session_approvals(&[approval_row(calm)]))
        );
        for out in [
            replay_header(&s, 1, 1.0),
            replay_event("+1.000s", &e),
            replay_end(&s).unwrap(),
        ] {
            assert_clean(&out);
            assert!(out.lines().count() <= 2, "{out}");
        }
    }
}

#[test]
fn approval_formatters_escape_every_field() {
    for h in HOSTILE {
        let a = approval_row(h);
        let out = approval(&a);
        assert_clean(&out);
        let extra = h.split('\n').count() - 1;
        assert_eq!(
            count_lines(&out),
            count_lines(&approval(&approval_row("x"))) + extra
        );
        // Every line is either one of the formatter's own (they start with
        // `#7 ` or four spaces and a known word) or a prefixed SQL line.
        for l in out.lines() {
            assert!(
                l.starts_with("#7  ")
                    || l.starts_with("    | ")
                    || [
                        "    rule: ",
                        "    identity: ",
                        "    process: ",
                        "    decided by "
                    ]
                    .iter()
                    .any(|p| l.starts_with(p)),
                "{l:?}"
            );
        }
        let ev = serde_json::json!({
            "id": 7, "session_id": 1, "cgroup": h, "destination": h, "rule": h, "operation": h,
        });
        let out = approval_event(&ev);
        assert_clean(&out);
        assert_eq!(out.lines().count(), 2 + h.split('\n').count());
        assert!(
            out.lines()
                .last()
                .unwrap()
                .starts_with("    approve: interceptor approvals approve 7 ")
        );
    }
    // The README's example.
    let mut a = approval_row("x");
    a.operation = "DELETE FROM users".into();
    assert!(approval(&a).contains("\n    | DELETE FROM users\n"));
}

#[test]
fn status_enroll_and_where_is_escape_every_field() {
    for h in HOSTILE {
        let st = Status {
            version: h.to_string(),
            pid: 1,
            started_at: h.to_string(),
            cgroup_root: h.to_string(),
            pin_dir: h.to_string(),
            proxy_port: 1,
            database: h.to_string(),
            policy: h.to_string(),
            egress: h.to_string(),
            attached: vec![AttachResult {
                cgroup_id: 2,
                cgroup: h.to_string(),
                changed: true,
            }],
            attached_uids: vec![crate::redirect::UidAttachment {
                uid: 1001,
                user: Some(h.to_string()),
                attached_at: Some(h.to_string()),
                by_uid: Some(0),
            }],
            intercepts: vec![crate::control::InterceptInfo {
                port: 5432,
                cidr: Some(h.to_string()),
                protocol: h.to_string(),
            }],
            enrollments: vec![serde_json::json!({
                "cgroup": h, "subject": h, "repository": h, "sha": h, "issuer": h, "expires_at": h,
            })],
            live_sessions: vec![serde_json::json!({
                "id": 1, "protocol": h, "destination": h, "pid": 3, "cgroup": h, "bytes_up": 1, "bytes_down": 2,
            })],
            counters: serde_json::json!({ *h: 1 }),
        };
        let out = status(&st);
        assert_clean(&out);
        assert_eq!(out.lines().count(), 23, "{out}");
        let v = serde_json::json!({
            "exe": h, "cgroup": h, "unit": h, "attached": h,
            "identity": { "subject": h, "repository": h, "enrolled_cgroup": h },
        });
        let out = where_is(5, &v);
        assert_clean(&out);
        assert_eq!(out.lines().count(), 5);
        let r = serde_json::json!({
            "id": 1, "at": h, "status": h, "cgroup_path": h, "subject": h,
            "claims": { "repository": h, "sha": h }, "expires_at": 9, "reason": h,
        });
        let out = enrollment(&r);
        assert_clean(&out);
        assert_eq!(out.lines().count(), 1);
        let d = serde_json::json!({
            "cgroup": h, "subject": h, "issuer": h, "expires_at": 9,
            "claims": { "repository": h, *h: h, "n": 5 },
        });
        let out = enrolled(&d);
        assert_clean(&out);
        assert_eq!(out.lines().count(), 4);
        let out = attach_result(
            &AttachResult {
                cgroup_id: 1,
                cgroup: h.to_string(),
                changed: false,
            },
            "detached",
        );
        assert_clean(&out);
        assert_eq!(out.lines().count(), 1);
        for verb in ["attached", "detached"] {
            for changed in [true, false] {
                let out = uid_attach_result(
                    &crate::control::UidAttachResult {
                        uid: 1001,
                        user: Some(h.to_string()),
                        changed,
                    },
                    verb,
                );
                assert_clean(&out);
                assert_eq!(out.lines().count(), 1);
            }
        }
        let v = serde_json::json!({
            "exe": h, "cgroup": h, "unit": h, "attached": null, "attached_uid": 1001,
            "identity": null,
        });
        let out = where_is(5, &v);
        assert_clean(&out);
        assert!(out.contains("attached uid 1001"), "{out}");
    }
}
