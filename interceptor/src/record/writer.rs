//! The writer thread: group commit of queued operations.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use rusqlite::{Connection, params};
use tokio::sync::mpsc;

use super::{Job, RecordError, RecorderStats, WriteOp};

/// Most operations applied in one transaction.
pub const MAX_BATCH: usize = 4096;
/// Queue capacity; beyond it senders wait.
const QUEUE: usize = 65_536;

/// Joins the writer thread on shutdown, after every sender is gone.
pub struct WriterHandle {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WriterHandle {
    /// Waits for the writer to drain its queue and exit. Call after the last
    /// `Recorder` clone has been dropped.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub(crate) fn spawn(
    conn: Connection,
    stats: Arc<RecorderStats>,
) -> (mpsc::Sender<Job>, WriterHandle) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let thread = std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || run(conn, rx, stats))
        .ok();
    (tx, WriterHandle { thread })
}

fn run(mut conn: Connection, mut rx: mpsc::Receiver<Job>, stats: Arc<RecorderStats>) {
    let mut batch: Vec<Job> = Vec::with_capacity(256);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let result = apply(&mut conn, &batch).map_err(|e| RecordError::Write(e.to_string()));
        stats.ops.fetch_add(batch.len() as u64, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, ops = batch.len(), "recording batch failed");
            }
        }
        for job in batch.drain(..) {
            if let Some(ack) = job.ack {
                let _ = ack.send(result.clone());
            }
        }
    }
}

fn apply(conn: &mut Connection, batch: &[Job]) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for job in batch {
        apply_one(&tx, &job.op)?;
    }
    tx.commit()
}

fn apply_one(tx: &rusqlite::Transaction<'_>, op: &WriteOp) -> rusqlite::Result<()> {
    match op {
        WriteOp::SessionStart(s) => {
            let i = &s.identity;
            tx.prepare_cached(
                "INSERT INTO sessions (id, started_at, protocol, client_addr, dst_addr, dst_port, \
                 cgroup_path, cgroup_id, unit, pid, exe, comm, uid, identity_issuer, identity_subject, \
                 identity_token_id, repository, sha, run_id, actor, identity_claims) \
                 VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            )?
            .execute(params![
                s.id,
                s.started_at,
                s.protocol,
                s.client_addr,
                s.dst_addr,
                s.dst_port,
                i.cgroup_path,
                i.cgroup_id as i64,
                i.unit,
                i.pid,
                i.exe,
                i.comm,
                i.uid,
                i.issuer,
                i.subject,
                i.token_id,
                i.repository,
                i.sha,
                i.run_id,
                i.actor,
                i.claims,
            ])?;
        }
        WriteOp::SessionEnd(e) => {
            tx.prepare_cached(
                "UPDATE sessions SET ended_at = ?, bytes_up = ?, bytes_down = ?, end_reason = ? WHERE id = ?",
            )?
            .execute(params![
                e.ended_at,
                e.bytes_up as i64,
                e.bytes_down as i64,
                e.end_reason,
                e.id
            ])?;
        }
        WriteOp::SessionTarget { id, user, database } => {
            tx.prepare_cached(
                "UPDATE sessions SET target_user = coalesce(?, target_user), target_database = coalesce(?, target_database) WHERE id = ?",
            )?
            .execute(params![user, database, id])?;
        }
        WriteOp::Event(e) => {
            tx.prepare_cached(
                "INSERT INTO events (session_id, seq, at, kind, text, statement_kind, decision, rule, \
                 reason, duration_us, rows, error, detail) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            )?
            .execute(params![
                e.session_id,
                e.seq,
                e.at,
                e.kind,
                e.text,
                e.statement_kind,
                e.decision,
                e.rule,
                e.reason,
                e.duration_us,
                e.rows,
                e.error,
                e.detail,
            ])?;
        }
        WriteOp::EventOutcome(o) => {
            tx.prepare_cached(
                "UPDATE events SET duration_us = coalesce(?, duration_us), rows = coalesce(?, rows), \
                 error = coalesce(?, error) WHERE session_id = ? AND seq = ?",
            )?
            .execute(params![o.duration_us, o.rows, o.error, o.session_id, o.seq])?;
        }
        WriteOp::Attach {
            cgroup_id,
            cgroup_path,
            at,
            by_uid,
        } => {
            tx.prepare_cached(
                "INSERT INTO attachments (cgroup_id, cgroup_path, attached_at, attached_by_uid) VALUES (?,?,?,?) \
                 ON CONFLICT(cgroup_id) DO UPDATE SET cgroup_path = excluded.cgroup_path",
            )?
            .execute(params![*cgroup_id as i64, cgroup_path, at, by_uid])?;
        }
        WriteOp::Detach { cgroup_id } => {
            tx.prepare_cached("DELETE FROM attachments WHERE cgroup_id = ?")?
                .execute(params![*cgroup_id as i64])?;
        }
        WriteOp::EventDecision {
            session_id,
            seq,
            decision,
            reason,
        } => {
            tx.prepare_cached(
                "UPDATE events SET decision = ?, reason = ? WHERE session_id = ? AND seq = ?",
            )?
            .execute(params![decision, reason, session_id, seq])?;
        }
        WriteOp::ApprovalNew(a) => {
            let r = &a.request;
            tx.prepare_cached(
                "INSERT INTO approvals (id, session_id, seq, created_at, expires_at, status, protocol, \
                 destination, operation, shape, rule, reason, cgroup, unit, pid, exe, uid, repository, sha, \
                 run_id, actor, identity_claims) VALUES (?,?,?,?,?,'pending',?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            )?
            .execute(params![
                r.id,
                r.session_id,
                r.seq,
                r.created_at,
                r.expires_at,
                r.protocol,
                r.destination,
                r.operation,
                a.shape,
                r.rule,
                r.reason,
                r.cgroup,
                r.unit,
                r.pid,
                r.exe,
                r.uid,
                r.repository,
                r.sha,
                r.run_id,
                r.actor,
                a.claims,
            ])?;
        }
        WriteOp::ApprovalDecided {
            id,
            status,
            at,
            by_uid,
            by,
            reason,
            scope_minutes,
        } => {
            tx.prepare_cached(
                "UPDATE approvals SET status = ?, decided_at = ?, decided_by_uid = ?, decided_by = ?, \
                 decision_reason = ?, scope_minutes = ? WHERE id = ? AND status = 'pending'",
            )?
            .execute(params![status, at, by_uid, by, reason, scope_minutes, id])?;
        }
        WriteOp::ApprovalExpired { id, at } => {
            tx.prepare_cached(
                "UPDATE approvals SET status = 'expired', decided_at = ? WHERE id = ? AND status = 'pending'",
            )?
            .execute(params![at, id])?;
        }
        WriteOp::Enrollment(e) => {
            if e.status == "active" {
                // One active enrollment per cgroup: the new token replaces the old.
                tx.prepare_cached(
                    "UPDATE enrollments SET status = 'replaced', revoked_at = ? WHERE cgroup_path = ? AND status = 'active'",
                )?
                .execute(params![e.at, e.cgroup_path])?;
            }
            tx.prepare_cached(
                "INSERT INTO enrollments (at, status, reason, cgroup_path, cgroup_id, pid, uid, issuer, subject, \
                 token_id, claims, expires_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            )?
            .execute(params![
                e.at,
                e.status,
                e.reason,
                e.cgroup_path,
                e.cgroup_id as i64,
                e.pid,
                e.uid,
                e.issuer,
                e.subject,
                e.token_id,
                e.claims,
                e.expires_at,
            ])?;
        }
        WriteOp::EnrollmentRevoked {
            cgroup_path,
            at,
            by_uid,
            status,
        } => {
            tx.prepare_cached(
                "UPDATE enrollments SET status = ?, revoked_at = ?, revoked_by_uid = ? WHERE cgroup_path = ? AND status = 'active'",
            )?
            .execute(params![status, at, by_uid, cgroup_path])?;
        }
        WriteOp::Barrier => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::*;
    use crate::config::SyncMode;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_orders_and_acks() {
        let dir = std::env::temp_dir().join(format!("ic-writer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("x.db");
        let (rec, handle) = Recorder::start(&db, SyncMode::Normal).unwrap();
        let id = rec.next_session_id();
        rec.commit(WriteOp::SessionStart(Box::new(SessionStart {
            id,
            started_at: now_rfc3339(),
            protocol: "tcp".into(),
            client_addr: "127.0.0.1:1".into(),
            dst_addr: "127.0.0.1".into(),
            dst_port: 5432,
            identity: SessionIdentity {
                cgroup_path: "/t".into(),
                ..Default::default()
            },
        })))
        .await
        .unwrap();
        let mut tasks = Vec::new();
        for seq in 0..200 {
            let rec = rec.clone();
            tasks.push(tokio::spawn(async move {
                rec.commit(WriteOp::Event(Box::new(Event {
                    session_id: id,
                    seq,
                    at: now_rfc3339(),
                    kind: "statement".into(),
                    text: Some(format!("SELECT {seq}")),
                    ..Default::default()
                })))
                .await
            }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // A duplicate key fails its batch and reports the error to the waiter.
        let dup = rec
            .commit(WriteOp::Event(Box::new(Event {
                session_id: id,
                seq: 0,
                at: now_rfc3339(),
                kind: "statement".into(),
                ..Default::default()
            })))
            .await;
        assert!(dup.is_err());
        assert_eq!(rec.stats().failures, 1);
        drop(rec);
        handle.join();
        let conn = store::open_ro(&db).unwrap();
        assert_eq!(store::session_events(&conn, id).unwrap().len(), 200);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn queued_operations_share_one_commit() {
        let dir = std::env::temp_dir().join(format!("ic-batch-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let conn = store::open_rw(&dir.join("x.db"), SyncMode::Normal).unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut acks = Vec::new();
        for id in 1..=100 {
            let (ack, done) = tokio::sync::oneshot::channel();
            acks.push(done);
            tx.try_send(Job {
                op: WriteOp::Attach {
                    cgroup_id: id,
                    cgroup_path: format!("/c{id}"),
                    at: now_rfc3339(),
                    by_uid: None,
                },
                ack: Some(ack),
            })
            .unwrap();
        }
        drop(tx);
        let stats = std::sync::Arc::new(RecorderStats::default());
        super::run(conn, rx, stats.clone());
        assert_eq!(stats.commits.load(std::sync::atomic::Ordering::Relaxed), 1);
        for a in acks {
            assert!(a.blocking_recv().unwrap().is_ok());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
