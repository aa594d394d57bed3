//! The gate every command of every protocol goes through: decide from the
//! policy, hold for approval when the decision is `review`, and record the
//! command durably before the caller may forward it.
//!
//! Protocol modules build one [`Op`] per command (a SQL statement, an SSH
//! command, an HTTP request), call [`Gate::judge`] with the ops that travel
//! together (a multi-statement query string is one batch: all of it is
//! forwarded or none of it), and forward only when the judgement allows.
//! They report how it went with [`Gate::outcome`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use policy::sql::Lexing;
use policy::{ActiveMasks, Decision, Operation, SqlError, SqlStatement, Target, Verdict, Workload};
use tracing::{info, warn};

use crate::approval::{ApprovalRequest, Resolution};
use crate::daemon::Shared;
use crate::proxy::watch::ClientWatch;
use crate::record::{self, Event, EventOutcome, RecordError, WriteOp};

/// One command to judge.
pub struct Op<'a> {
    pub operation: Operation<'a>,
    /// Event kind: "statement", "command", "request", ...
    pub kind: &'static str,
    /// The command as sent (masked by the gate before it is recorded).
    pub text: &'a str,
    /// Statement kind or similar label, for the record.
    pub label: Option<String>,
    /// Normalised shape, for "approve this shape for N minutes".
    pub shape: Option<String>,
    /// Extra protocol detail for the record (JSON).
    pub detail: Option<serde_json::Value>,
    /// For SQL: how the session's server reads the text. The record masks
    /// its literals one by one (a detector never spans SQL structure), and
    /// approval shapes are computed under it.
    pub lexing: Option<Lexing>,
}

impl Op<'_> {
    /// The text as recorded: detectors applied (to each literal, for SQL).
    fn masked_text(&self, masks: &ActiveMasks) -> String {
        match &self.lexing {
            Some(l) => masks.mask_sql(self.text, l).into_owned(),
            None => masks.mask_text(self.text).into_owned(),
        }
    }
}

/// The verdict on a batch of ops.
#[derive(Debug, Clone)]
pub struct Judgement {
    pub allowed: bool,
    /// Event sequence number of each op, in order.
    pub seqs: Vec<i64>,
    /// The decision that settled the batch (the strictest).
    pub decision: Decision,
    /// For a refusal: the text to show the client.
    pub message: String,
    /// The client went away while the batch was held: the approval request
    /// was withdrawn; the session ends without an answer.
    pub withdrawn: bool,
}

/// Per-session gate.
pub struct Gate {
    shared: Arc<Shared>,
    pub session_id: i64,
    pub workload: Workload,
    pub target: Target,
    masks: ActiveMasks,
    next_seq: i64,
    /// The client's socket, watched while a statement is held.
    watch: Option<ClientWatch>,
}

impl Gate {
    pub fn new(shared: Arc<Shared>, session_id: i64, workload: Workload, target: Target) -> Gate {
        let masks = shared.policy().masker().for_context(&workload, &target);
        Gate {
            shared,
            session_id,
            workload,
            target,
            masks,
            // seq 0 is the connection decision when one is recorded.
            next_seq: 1,
            watch: None,
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// The masks in force for this session.
    pub fn masks(&self) -> &ActiveMasks {
        &self.masks
    }

    /// Re-derives masks after the target changed (database, user known).
    pub fn refresh_masks(&mut self) {
        self.masks = self
            .shared
            .policy()
            .masker()
            .for_context(&self.workload, &self.target);
    }

    fn take_seq(&mut self) -> i64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Classifies SQL query bytes, as a server with these session
    /// settings reads them, through the shared cache.
    pub fn classify(&self, sql: &[u8], lexing: &Lexing) -> Classified {
        self.shared.sql_cache.classify(sql, lexing)
    }

    /// Decides, holds for approval if needed, and records the batch. The
    /// events are committed before this returns, whatever the verdict.
    pub async fn judge(&mut self, ops: &[Op<'_>]) -> Result<Judgement, RecordError> {
        let policy = self.shared.policy();
        let decisions: Vec<Decision> = ops
            .iter()
            .map(|op| policy.decide(&self.workload, &self.target, &op.operation))
            .collect();
        let seqs: Vec<i64> = ops.iter().map(|_| self.take_seq()).collect();
        let worst = decisions
            .iter()
            .enumerate()
            .max_by(|(ia, a), (ib, b)| a.verdict.cmp(&b.verdict).then(ib.cmp(ia)))
            .map(|(i, _)| i);
        let Some(worst) = worst else {
            return Ok(Judgement {
                allowed: true,
                seqs,
                decision: Decision {
                    verdict: Verdict::Allow,
                    rule: None,
                    message: None,
                    reason: "empty batch".into(),
                },
                message: String::new(),
                withdrawn: false,
            });
        };
        let deciding = decisions[worst].clone();
        let texts: Vec<String> = ops.iter().map(|op| op.masked_text(&self.masks)).collect();

        match deciding.verdict {
            Verdict::Allow => {
                self.record(ops, &seqs, &texts, &decisions, None).await?;
                Ok(Judgement {
                    allowed: true,
                    seqs,
                    decision: deciding,
                    message: String::new(),
                    withdrawn: false,
                })
            }
            Verdict::Deny => {
                self.record(ops, &seqs, &texts, &decisions, None).await?;
                let message = self.denial(&deciding, ops.len() > 1, &texts[worst]);
                info!(session = self.session_id, rule = ?deciding.rule, "denied");
                Ok(Judgement {
                    allowed: false,
                    seqs,
                    decision: deciding,
                    message,
                    withdrawn: false,
                })
            }
            Verdict::Review => {
                self.review(ops, seqs, texts, decisions, deciding, worst, &policy)
                    .await
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn review(
        &mut self,
        ops: &[Op<'_>],
        seqs: Vec<i64>,
        texts: Vec<String>,
        decisions: Vec<Decision>,
        deciding: Decision,
        worst: usize,
        policy: &policy::Policy,
    ) -> Result<Judgement, RecordError> {
        let shared = self.shared.clone();
        let approvals = &shared.approvals;
        // Shapes only for what is held; under the session's lexing.
        let shapes: Vec<Option<String>> = ops
            .iter()
            .zip(&decisions)
            .map(|(op, d)| {
                if d.verdict != Verdict::Review {
                    return None;
                }
                // Statements whose literals carry code, and statements not
                // understood, are approved one exact text at a time.
                match &op.operation {
                    Operation::Sql(s) if s.literal_code() => return None,
                    Operation::SqlUnparsed { .. } => return None,
                    _ => {}
                }
                op.shape.clone().or_else(|| {
                    op.lexing
                        .as_ref()
                        .map(|l| policy::sql::shape_with(op.text, l))
                })
            })
            .collect();
        // Shapes granted earlier in this session pass without asking again.
        let all_granted = shapes.iter().zip(&decisions).all(|(shape, d)| {
            d.verdict != Verdict::Review
                || shape
                    .as_deref()
                    .is_some_and(|s| approvals.granted(self.session_id, s))
        });
        if all_granted {
            let decisions: Vec<Decision> = decisions
                .into_iter()
                .map(|d| {
                    if d.verdict == Verdict::Review {
                        Decision {
                            verdict: Verdict::Allow,
                            reason: format!("{}; allowed by an approval granted earlier in this session for this statement shape", d.reason),
                            ..d
                        }
                    } else {
                        d
                    }
                })
                .collect();
            self.record(ops, &seqs, &texts, &decisions, None).await?;
            return Ok(Judgement {
                allowed: true,
                seqs,
                decision: decisions[worst].clone(),
                message: String::new(),
                withdrawn: false,
            });
        }

        let owner = crate::approval::Owner {
            cgroup: shared.job_cgroup(&self.workload.cgroup),
            uid: self.workload.uid,
        };
        let mut hold = match approvals.hold(self.session_id, owner) {
            Ok(h) => h,
            Err(e) => {
                let decisions: Vec<Decision> = decisions
                    .into_iter()
                    .map(|d| Decision {
                        verdict: Verdict::Deny,
                        reason: format!("{}; {e}", d.reason),
                        ..d
                    })
                    .collect();
                self.record(ops, &seqs, &texts, &decisions, None).await?;
                let d = decisions[worst].clone();
                return Ok(Judgement {
                    allowed: false,
                    message: format!(
                        "interceptor: approval required but {e} (session {})",
                        self.session_id
                    ),
                    seqs,
                    decision: d,
                    withdrawn: false,
                });
            }
        };
        let id = hold.id;
        let timeout = policy.defaults().approval_timeout;
        let now = time::OffsetDateTime::now_utc();
        // Approvers see the bound parameters with each statement.
        let operation = ops
            .iter()
            .zip(&texts)
            .map(|(op, t)| {
                match op
                    .detail
                    .as_ref()
                    .and_then(|d| params_line(d.get("params")?))
                {
                    Some(p) => format!("{t}\n-- parameters: {p}"),
                    None => t.clone(),
                }
            })
            .collect::<Vec<_>>()
            .join(";\n");
        let ident = crate::proxy::session_identity(&self.workload, 0);
        let req = ApprovalRequest {
            id,
            session_id: self.session_id,
            seq: seqs[worst],
            created_at: record::format_ts(now),
            expires_at: record::format_ts(now + timeout),
            protocol: self.target.protocol.to_string(),
            destination: std::net::SocketAddr::new(self.target.addr, self.target.port).to_string(),
            operation,
            rule: deciding.rule.clone(),
            reason: deciding.reason.clone(),
            cgroup: self.workload.cgroup.clone(),
            unit: self.workload.unit.clone(),
            pid: self.workload.pid,
            exe: self.workload.exe.clone(),
            uid: self.workload.uid,
            repository: ident.repository,
            sha: ident.sha,
            run_id: ident.run_id,
            actor: ident.actor,
        };
        let shape = shapes.get(worst).cloned().flatten();
        self.record(ops, &seqs, &texts, &decisions, Some(id))
            .await?;
        shared
            .recorder
            .commit(WriteOp::ApprovalNew(Box::new(crate::record::ApprovalNew {
                request: req.clone(),
                shape: shape.clone(),
                claims: ident.claims,
            })))
            .await?;
        info!(session = self.session_id, approval = id, rule = ?deciding.rule, "holding for approval");
        crate::approval::notify::spawn(&shared.config.approvals, shared.config.socket_mark, &req);
        approvals.announce(req);

        // Wait for a human, or for the client to go away (the request is
        // then withdrawn at once, not left to time out).
        let watch = self.watch.take();
        let waited = match &watch {
            Some(w) => tokio::select! {
                r = hold.wait(timeout) => Some(r),
                _ = w.gone() => None,
            },
            None => Some(hold.wait(timeout).await),
        };
        self.watch = watch;
        drop(hold);
        let Some(resolution) = waited else {
            return self.withdrawn(id, seqs, decisions, deciding).await;
        };
        let (allowed, decision_reason, message) = match &resolution {
            Some(Resolution {
                approved: true,
                by_name,
                reason,
                scope_minutes,
                ..
            }) => {
                if let (Some(m), Some(s)) = (scope_minutes, &shape) {
                    approvals.grant(self.session_id, s, *m);
                }
                (
                    true,
                    format!(
                        "approval {id} approved by {by_name}{}",
                        reason
                            .as_deref()
                            .map(|r| format!(": {r}"))
                            .unwrap_or_default()
                    ),
                    String::new(),
                )
            }
            Some(Resolution {
                approved: false,
                by_name,
                reason,
                ..
            }) => {
                let r = format!(
                    "approval {id} denied by {by_name}{}",
                    reason
                        .as_deref()
                        .map(|r| format!(": {r}"))
                        .unwrap_or_default()
                );
                let m = format!("interceptor: {r} (session {})", self.session_id);
                (false, r, m)
            }
            None => {
                let r = format!(
                    "approval {id} timed out after {}; denied",
                    humanize(timeout)
                );
                shared
                    .recorder
                    .commit(WriteOp::ApprovalExpired {
                        id,
                        at: record::now_rfc3339(),
                    })
                    .await?;
                let m = format!("interceptor: {r} (session {})", self.session_id);
                (false, r, m)
            }
        };
        let verdict = if allowed {
            Verdict::Allow
        } else {
            Verdict::Deny
        };
        for (seq, d) in seqs.iter().zip(&decisions) {
            if d.verdict == Verdict::Review {
                shared
                    .recorder
                    .enqueue(WriteOp::EventDecision {
                        session_id: self.session_id,
                        seq: *seq,
                        decision: verdict.to_string(),
                        reason: format!("{}; {decision_reason}", d.reason),
                    })
                    .await?;
            }
        }
        // The final decision is durable before anything is forwarded.
        shared.recorder.commit(WriteOp::Barrier).await?;
        Ok(Judgement {
            allowed,
            seqs,
            decision: Decision {
                verdict,
                reason: decision_reason,
                ..deciding
            },
            message,
            withdrawn: false,
        })
    }

    /// The client left while its batch was held: the request is withdrawn
    /// and the held statements recorded as denied for that reason.
    async fn withdrawn(
        &mut self,
        id: i64,
        seqs: Vec<i64>,
        decisions: Vec<Decision>,
        deciding: Decision,
    ) -> Result<Judgement, RecordError> {
        let shared = self.shared.clone();
        let reason = format!("approval {id} withdrawn: the client disconnected while it was held");
        info!(
            session = self.session_id,
            approval = id,
            "client gone; approval withdrawn"
        );
        shared
            .recorder
            .enqueue(WriteOp::ApprovalWithdrawn {
                id,
                at: record::now_rfc3339(),
            })
            .await?;
        for (seq, d) in seqs.iter().zip(&decisions) {
            if d.verdict == Verdict::Review {
                shared
                    .recorder
                    .enqueue(WriteOp::EventDecision {
                        session_id: self.session_id,
                        seq: *seq,
                        decision: Verdict::Deny.to_string(),
                        reason: format!("{}; {reason}", d.reason),
                    })
                    .await?;
            }
        }
        shared.recorder.commit(WriteOp::Barrier).await?;
        Ok(Judgement {
            allowed: false,
            seqs,
            decision: Decision {
                verdict: Verdict::Deny,
                reason: reason.clone(),
                ..deciding
            },
            message: reason,
            withdrawn: true,
        })
    }

    /// Watches the client's socket while statements are held: a client
    /// that disconnects withdraws its request at once.
    pub fn set_client_watch(&mut self, watch: Option<ClientWatch>) {
        self.watch = watch;
    }

    /// Records one event per op (committed).
    async fn record(
        &self,
        ops: &[Op<'_>],
        seqs: &[i64],
        texts: &[String],
        decisions: &[Decision],
        approval: Option<i64>,
    ) -> Result<(), RecordError> {
        let at = record::now_rfc3339();
        let mut writes = Vec::with_capacity(ops.len());
        for (((op, seq), text), d) in ops.iter().zip(seqs).zip(texts).zip(decisions) {
            let mut detail = op.detail.clone();
            if let (Some(id), Verdict::Review) = (approval, d.verdict) {
                let mut obj = match detail.take() {
                    Some(serde_json::Value::Object(m)) => m,
                    _ => serde_json::Map::new(),
                };
                obj.insert("approval_id".into(), id.into());
                detail = Some(serde_json::Value::Object(obj));
            }
            writes.push(WriteOp::Event(Box::new(Event {
                session_id: self.session_id,
                seq: *seq,
                at: at.clone(),
                kind: op.kind.to_string(),
                text: Some(text.clone()),
                statement_kind: op.label.clone(),
                decision: Some(d.verdict.to_string()),
                rule: d.rule.clone(),
                reason: Some(d.reason.clone()),
                detail: detail.map(|v| v.to_string()),
                ..Default::default()
            })));
        }
        self.shared.recorder.commit_all(writes).await
    }

    /// Records one more run of a command that was judged earlier (each
    /// Execute of a prepared statement judged at Parse time): the earlier
    /// decision applies as is — no new policy decision, no new approval.
    /// Committed before this returns, like [`judge`](Self::judge).
    pub async fn record_decided(
        &mut self,
        op: &Op<'_>,
        decision: &Decision,
    ) -> Result<i64, RecordError> {
        let seq = self.take_seq();
        let text = op.masked_text(&self.masks);
        self.record(
            std::slice::from_ref(op),
            &[seq],
            &[text],
            std::slice::from_ref(decision),
            None,
        )
        .await?;
        Ok(seq)
    }

    /// The client-facing text of a refusal.
    fn denial(&self, d: &Decision, batch: bool, text: &str) -> String {
        let what = d.message.clone().unwrap_or_else(|| d.reason.clone());
        let rule = d
            .rule
            .as_deref()
            .map(|r| format!("rule \"{r}\", "))
            .unwrap_or_default();
        let scope = if batch {
            let short: String = text.chars().take(80).collect();
            format!(" (the whole batch was refused because of: {short})")
        } else {
            String::new()
        };
        format!(
            "interceptor denied this {}: {what}{scope} ({rule}session {})",
            if batch { "batch" } else { "command" },
            self.session_id
        )
    }

    /// Records how a command went (after the upstream answered).
    pub async fn outcome(
        &self,
        seq: i64,
        duration_us: Option<i64>,
        rows: Option<i64>,
        error: Option<String>,
    ) {
        let error = error.map(|e| self.masks.mask_text(&e).into_owned());
        if let Err(e) = self
            .shared
            .recorder
            .enqueue(WriteOp::EventOutcome(EventOutcome {
                session_id: self.session_id,
                seq,
                duration_us,
                rows,
                error,
            }))
            .await
        {
            warn!(error = %e, "cannot record command outcome");
        }
    }

    /// Records a protocol-level event (bad input, protocol error, notice of
    /// something not judged) and returns its sequence number.
    pub async fn note(&mut self, kind: &str, text: Option<&str>, error: Option<&str>) -> i64 {
        let seq = self.take_seq();
        let ev = Event {
            session_id: self.session_id,
            seq,
            at: record::now_rfc3339(),
            kind: kind.to_string(),
            text: text.map(|t| self.masks.mask_text(t).into_owned()),
            error: error.map(str::to_string),
            ..Default::default()
        };
        if let Err(e) = self
            .shared
            .recorder
            .commit(WriteOp::Event(Box::new(ev)))
            .await
        {
            warn!(error = %e, "cannot record event");
        }
        seq
    }

    /// Stores the database user and name once the protocol learnt them.
    pub async fn set_target(&mut self, user: Option<String>, database: Option<String>) {
        self.target.user = user.clone();
        self.target.database = database.clone();
        self.refresh_masks();
        let _ = self
            .shared
            .recorder
            .enqueue(WriteOp::SessionTarget {
                id: self.session_id,
                user,
                database,
            })
            .await;
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.shared.approvals.end_session(self.session_id);
    }
}

/// `$1 = 'x', $2 = 42` for a JSON array of (already masked) parameters.
fn params_line(params: &serde_json::Value) -> Option<String> {
    let serde_json::Value::Array(values) = params else {
        return None;
    };
    Some(
        values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("${} = {v}", i + 1))
            .collect::<Vec<_>>()
            .join(", "),
    )
}

/// "5m", "30s", "1h 2m".
pub fn humanize(d: std::time::Duration) -> String {
    let s = d.as_secs();
    if s == 0 {
        return format!("{}ms", d.as_millis());
    }
    let (h, m, sec) = (s / 3600, (s % 3600) / 60, s % 60);
    let mut out = Vec::new();
    if h > 0 {
        out.push(format!("{h}h"));
    }
    if m > 0 {
        out.push(format!("{m}m"));
    }
    if sec > 0 {
        out.push(format!("{sec}s"));
    }
    out.join(" ")
}

/// A cached classification result.
pub type Classified = Arc<Result<Vec<SqlStatement>, SqlError>>;

/// Classification cache keyed by the exact query bytes and the session
/// settings they are read under (prepared statements and repeated queries
/// hit it; the parser runs once per distinct text). Text that reads the
/// same under every setting is keyed under the dialect's defaults.
#[derive(Default)]
pub struct SqlCache {
    map: Mutex<HashMap<(Lexing, Vec<u8>), Classified>>,
}

/// Most distinct texts kept; the cache is cleared when full.
const SQL_CACHE_ENTRIES: usize = 8192;
/// Longer texts are classified every time rather than kept.
const SQL_CACHE_MAX_TEXT: usize = 4096;

impl SqlCache {
    pub fn classify(&self, sql: &[u8], lexing: &Lexing) -> Classified {
        let lexing = if Lexing::insensitive(sql, lexing.dialect) {
            Lexing::default_for(lexing.dialect)
        } else {
            *lexing
        };
        if sql.len() > SQL_CACHE_MAX_TEXT {
            return Arc::new(policy::sql::classify_bytes(sql, &lexing));
        }
        let key = (lexing, sql.to_vec());
        if let Ok(m) = self.map.lock()
            && let Some(v) = m.get(&key)
        {
            return v.clone();
        }
        let v = Arc::new(policy::sql::classify_bytes(sql, &lexing));
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= SQL_CACHE_ENTRIES {
                m.clear();
            }
            m.insert(key, v.clone());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humanized_durations() {
        assert_eq!(humanize(std::time::Duration::from_secs(300)), "5m");
        assert_eq!(humanize(std::time::Duration::from_secs(3725)), "1h 2m 5s");
        assert_eq!(humanize(std::time::Duration::from_millis(250)), "250ms");
    }

    #[test]
    fn cache_returns_the_same_classification() {
        let c = SqlCache::default();
        let pg = Lexing::postgres();
        let a = c.classify(b"SELECT 1", &pg);
        let b = c.classify(b"SELECT 1", &pg);
        assert!(Arc::ptr_eq(&a, &b));
        assert!(c.classify(b"SELEC 1", &pg).is_err());
        // Settings matter only to text they can change.
        let off = Lexing {
            backslash_escapes: true,
            ..pg
        };
        assert!(Arc::ptr_eq(&a, &c.classify(b"SELECT 1", &off)));
        let attack = b"SELECT 'a\\' -- '; DELETE FROM users; --";
        assert_eq!(
            c.classify(attack, &pg).as_ref().as_ref().map(Vec::len),
            Ok(1)
        );
        assert_eq!(
            c.classify(attack, &off).as_ref().as_ref().map(Vec::len),
            Ok(2)
        );
    }
}
