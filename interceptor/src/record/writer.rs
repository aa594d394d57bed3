//! Group commit of recorded operations.
//!
//! Whoever finds the recorder idle commits: a statement's task, when the
//! database is opened with `sync = "normal"` (a commit is a write to the
//! WAL, tens of microseconds, so it runs inline on the task instead of
//! paying two thread wake-ups), or the writer thread. Operations queued
//! while a commit is running are taken by the next one, so concurrent
//! sessions share transactions. Operations queued without a waiter (the
//! outcomes of statements) ride with the next commit, or the writer thread
//! commits them after [`LINGER`].

use std::sync::atomic::Ordering;
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rusqlite::{Connection, params};

use super::{Job, RecordError, RecorderStats, WriteOp};

/// Most operations applied in one transaction.
pub const MAX_BATCH: usize = 4096;
/// How long an operation nobody waits for may wait for a commit to join.
const LINGER: Duration = Duration::from_millis(10);
/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// The queue and the connection, shared by the recorder handles and the
/// writer thread.
pub(crate) struct Core {
    state: Mutex<State>,
    /// Wakes the writer thread.
    wake: Condvar,
    conn: Mutex<Connection>,
    /// Commit on the caller's task when the recorder is idle.
    inline: bool,
    stats: Arc<RecorderStats>,
}

#[derive(Default)]
struct State {
    queue: Vec<Job>,
    /// When the oldest queued operation was queued.
    since: Option<Instant>,
    /// A commit is running.
    busy: bool,
    closing: bool,
    /// The writer thread waits without a timeout and must be woken for
    /// new work (otherwise it looks at the queue within LINGER anyway).
    writer_asleep: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Core {
    /// Queues operations; commits them (and whatever else is queued) on
    /// this thread if `commit_here`, someone waits for them and the
    /// recorder is idle. Fails once the recorder is closed.
    pub(crate) fn submit(&self, jobs: Vec<Job>, commit_here: bool) -> Result<(), RecordError> {
        let mut st = lock(&self.state);
        if st.closing {
            return Err(RecordError::Stopped);
        }
        if st.queue.is_empty() {
            st.since = Some(Instant::now());
        }
        let waited = jobs.iter().any(|j| j.ack.is_some());
        st.queue.extend(jobs);
        if st.busy {
            // The running commit takes the queue when it is done.
            return Ok(());
        }
        if commit_here && self.inline && waited {
            st.busy = true;
            self.drain(st);
        } else if waited || st.writer_asleep || st.queue.len() >= MAX_BATCH {
            drop(st);
            // The writer thread commits: now if someone waits, otherwise
            // after LINGER unless a commit takes the queue first.
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Commits the queue until it is empty; called with `busy` set.
    fn drain<'a>(&'a self, mut st: MutexGuard<'a, State>) {
        let mut conn = lock(&self.conn);
        loop {
            let n = st.queue.len().min(MAX_BATCH);
            let batch: Vec<Job> = st.queue.drain(..n).collect();
            st.since = if st.queue.is_empty() {
                None
            } else {
                Some(Instant::now())
            };
            drop(st);
            self.commit_batch(&mut conn, batch);
            st = lock(&self.state);
            if st.queue.is_empty() {
                break;
            }
        }
        // The queue is empty: nothing for the writer to do, unless it is
        // waiting for this commit to end before it exits.
        st.busy = false;
        if st.closing {
            self.wake.notify_all();
        }
    }

    fn commit_batch(&self, conn: &mut Connection, mut batch: Vec<Job>) {
        let result = apply(conn, &batch).map_err(|e| RecordError::Write(e.to_string()));
        self.stats
            .ops
            .fetch_add(batch.len() as u64, Ordering::Relaxed);
        match &result {
            Ok(()) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.stats.failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(error = %e, ops = batch.len(), "recording batch failed");
            }
        }
        for job in batch.drain(..) {
            if let Some(ack) = job.ack {
                let _ = ack.send(result.clone());
            }
        }
    }

    /// The writer thread: commits what is queued and nobody else commits,
    /// until closed and drained.
    fn run(&self) {
        let mut st = lock(&self.state);
        loop {
            if st.busy || st.queue.is_empty() {
                if st.closing && !st.busy {
                    return;
                }
                st.writer_asleep = true;
                st = self.wake.wait(st).unwrap_or_else(|p| p.into_inner());
                st.writer_asleep = false;
                continue;
            }
            let waited = st.queue.iter().any(|j| j.ack.is_some());
            let age = st.since.map(|t| t.elapsed()).unwrap_or(LINGER);
            if !waited && !st.closing && age < LINGER && st.queue.len() < MAX_BATCH {
                st = self
                    .wake
                    .wait_timeout(st, LINGER - age)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
                continue;
            }
            st.busy = true;
            self.drain(st);
            st = lock(&self.state);
        }
    }

    /// Stops accepting operations; the writer drains the queue and exits.
    fn close(&self) {
        lock(&self.state).closing = true;
        self.wake.notify_all();
    }
}

/// Joins the writer thread on shutdown.
pub struct WriterHandle {
    core: Arc<Core>,
    thread: Option<std::thread::JoinHandle<()>>,
    checkpointer: Option<(std_mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
}

impl WriterHandle {
    /// Commits what is queued and stops the writer. Call after the last
    /// `Recorder` clone has been dropped (later operations are refused).
    pub fn join(mut self) {
        self.core.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some((stop, t)) = self.checkpointer.take() {
            drop(stop);
            let _ = t.join();
        }
    }
}

/// Starts the writer on `conn` and, when `checkpoint` is given (a second
/// connection to the same database), a checkpointer thread on it.
///
/// The writer runs with automatic checkpoints off: a checkpoint syncs the
/// database file, and doing that inside a commit would put a disk flush on
/// the path of whichever statement happened to cross the threshold. The
/// checkpointer copies committed WAL frames into the database every
/// half-second instead, off the statement path; recovery after a crash
/// replays the WAL as usual, so nothing committed is lost either way.
pub(crate) fn spawn(
    conn: Connection,
    checkpoint: Option<Connection>,
    inline: bool,
    stats: Arc<RecorderStats>,
) -> (Arc<Core>, WriterHandle) {
    let checkpointer = checkpoint.and_then(|c| {
        if let Err(e) = conn.pragma_update(None, "wal_autocheckpoint", 0) {
            tracing::warn!(error = %e, "cannot turn automatic checkpoints off");
            return None;
        }
        let (stop, stopped) = std_mpsc::channel::<()>();
        let t = std::thread::Builder::new()
            .name("checkpointer".into())
            .spawn(move || checkpoints(c, stopped))
            .ok()?;
        Some((stop, t))
    });
    let core = Arc::new(Core {
        state: Mutex::new(State::default()),
        wake: Condvar::new(),
        conn: Mutex::new(conn),
        inline,
        stats,
    });
    let c = core.clone();
    let thread = std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || c.run())
        .ok();
    (
        core.clone(),
        WriterHandle {
            core,
            thread,
            checkpointer,
        },
    )
}

/// Passive checkpoints until told to stop (the sender is dropped).
fn checkpoints(conn: Connection, stop: std_mpsc::Receiver<()>) {
    while let Err(std_mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "checkpoint failed");
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
        WriteOp::ApprovalWithdrawn { id, at } => {
            tx.prepare_cached(
                "UPDATE approvals SET status = 'withdrawn', decided_at = ? WHERE id = ? AND status = 'pending'",
            )?
            .execute(params![at, id])?;
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
            // A workload's revoke ends the active row ('revoked': the
            // binding lives on until the token expires); an administrator's
            // release also ends what kept the binding alive ('released'),
            // so a restart does not bring it back.
            tx.prepare_cached(
                "UPDATE enrollments SET status = ?1, revoked_at = ?2, revoked_by_uid = ?3 WHERE cgroup_path = ?4 \
                 AND (status = 'active' OR (?1 = 'released' AND status IN ('revoked', 'replaced')))",
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
    async fn group_commit_orders_and_acks_inline() {
        group_commit_orders_and_acks(SyncMode::Normal).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_commit_orders_and_acks_on_the_writer_thread() {
        group_commit_orders_and_acks(SyncMode::Full).await;
    }

    async fn group_commit_orders_and_acks(sync: SyncMode) {
        let dir = std::env::temp_dir().join(format!("ic-writer-{}-{sync:?}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("x.db");
        let (rec, handle) = Recorder::start(&db, sync).unwrap();
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
        let stats = std::sync::Arc::new(RecorderStats::default());
        let (core, handle) = super::spawn(conn, None, true, stats.clone());
        // Queued while a commit runs: the next commit takes them all.
        core.state.lock().unwrap().busy = true;
        let mut acks = Vec::new();
        for id in 1..=100 {
            let (ack, done) = tokio::sync::oneshot::channel();
            acks.push(done);
            let op = WriteOp::Attach {
                cgroup_id: id,
                cgroup_path: format!("/c{id}"),
                at: now_rfc3339(),
                by_uid: None,
            };
            core.submit(vec![Job { op, ack: Some(ack) }], true).unwrap();
        }
        let st = core.state.lock().unwrap();
        core.drain(st);
        assert_eq!(stats.commits.load(std::sync::atomic::Ordering::Relaxed), 1);
        for a in acks {
            assert!(a.blocking_recv().unwrap().is_ok());
        }
        handle.join();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unwaited_operations_are_committed_by_the_writer() {
        let dir = std::env::temp_dir().join(format!("ic-linger-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let db = dir.join("x.db");
        let conn = store::open_rw(&db, SyncMode::Normal).unwrap();
        let stats = std::sync::Arc::new(RecorderStats::default());
        let (core, handle) = super::spawn(conn, None, true, stats.clone());
        let op = WriteOp::Attach {
            cgroup_id: 7,
            cgroup_path: "/c7".into(),
            at: now_rfc3339(),
            by_uid: None,
        };
        core.submit(vec![Job { op, ack: None }], true).unwrap();
        let t = std::time::Instant::now();
        while stats.commits.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            assert!(t.elapsed() < std::time::Duration::from_secs(5));
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        handle.join();
        assert!(matches!(
            core.submit(Vec::new(), true),
            Err(RecordError::Stopped)
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
