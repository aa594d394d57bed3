//! Durable recording of sessions and events.
//!
//! All writes go through one writer thread that owns the SQLite connection.
//! It takes whatever is queued (up to [`MAX_BATCH`] operations), applies it
//! in one transaction and commits once: a group commit, so many sessions
//! waiting for durability share one fsync. A caller that must not proceed
//! before its record is on disk (a statement about to be forwarded) awaits
//! [`Recorder::commit`]; others use [`Recorder::enqueue`], which still keeps
//! order. The queue is bounded: when the disk is slower than the traffic,
//! sessions wait (backpressure) instead of records being dropped.

pub mod store;
pub mod writer;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use serde::Serialize;
use thiserror::Error;
use tokio::sync::oneshot;

pub use store::StoreError;
pub use writer::MAX_BATCH;

#[derive(Debug, Error, Clone)]
pub enum RecordError {
    #[error("the recorder has stopped; refusing to forward unrecorded traffic")]
    Stopped,
    #[error("recording failed: {0}")]
    Write(String),
}

/// Identity fields stored with a session.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionIdentity {
    pub cgroup_path: String,
    pub cgroup_id: u64,
    pub unit: Option<String>,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    pub comm: Option<String>,
    pub uid: Option<u32>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub token_id: Option<String>,
    pub repository: Option<String>,
    pub sha: Option<String>,
    pub run_id: Option<String>,
    pub actor: Option<String>,
    /// All verified claims, as JSON.
    pub claims: Option<String>,
}

#[derive(Debug, Clone)]
pub struct SessionStart {
    pub id: i64,
    pub started_at: String,
    pub protocol: String,
    pub client_addr: String,
    pub dst_addr: String,
    pub dst_port: u16,
    pub identity: SessionIdentity,
}

#[derive(Debug, Clone)]
pub struct SessionEnd {
    pub id: i64,
    pub ended_at: String,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub end_reason: String,
}

/// One event of a session; `seq` is allocated by the session.
#[derive(Debug, Clone, Default)]
pub struct Event {
    pub session_id: i64,
    pub seq: i64,
    pub at: String,
    pub kind: String,
    pub text: Option<String>,
    pub statement_kind: Option<String>,
    pub decision: Option<String>,
    pub rule: Option<String>,
    pub reason: Option<String>,
    pub duration_us: Option<i64>,
    pub rows: Option<i64>,
    pub error: Option<String>,
    pub detail: Option<String>,
}

/// The outcome of an event, filled in after the upstream answered.
#[derive(Debug, Clone, Default)]
pub struct EventOutcome {
    pub session_id: i64,
    pub seq: i64,
    pub duration_us: Option<i64>,
    pub rows: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub enum WriteOp {
    SessionStart(Box<SessionStart>),
    SessionEnd(SessionEnd),
    /// Target details learnt after the start (database user and name).
    SessionTarget {
        id: i64,
        user: Option<String>,
        database: Option<String>,
    },
    Event(Box<Event>),
    EventOutcome(EventOutcome),
    Attach {
        cgroup_id: u64,
        cgroup_path: String,
        at: String,
        by_uid: Option<u32>,
    },
    Detach {
        cgroup_id: u64,
    },
    /// The final decision of an event held for approval.
    EventDecision {
        session_id: i64,
        seq: i64,
        decision: String,
        reason: String,
    },
    ApprovalNew(Box<ApprovalNew>),
    ApprovalDecided {
        id: i64,
        status: &'static str,
        at: String,
        by_uid: u32,
        by: String,
        reason: Option<String>,
        scope_minutes: Option<u32>,
    },
    ApprovalExpired {
        id: i64,
        at: String,
    },
    /// The client disconnected while its request was pending.
    ApprovalWithdrawn {
        id: i64,
        at: String,
    },
    /// A successful or rejected enrollment.
    Enrollment(Box<EnrollmentRecord>),
    /// Active enrollments of a cgroup end: `status` "revoked" (by the
    /// workload; the binding lives on) or "released" (by an administrator;
    /// the binding ends too).
    EnrollmentRevoked {
        cgroup_path: String,
        at: String,
        by_uid: u32,
        status: &'static str,
    },
    /// Writes nothing; committing it waits for everything queued before.
    Barrier,
}

/// One enrollment attempt.
#[derive(Debug, Clone, Default)]
pub struct EnrollmentRecord {
    pub at: String,
    /// "active" or "rejected".
    pub status: &'static str,
    pub reason: Option<String>,
    pub cgroup_path: String,
    pub cgroup_id: u64,
    pub pid: Option<u32>,
    pub uid: Option<u32>,
    pub issuer: Option<String>,
    pub subject: Option<String>,
    pub token_id: Option<String>,
    pub claims: Option<String>,
    pub expires_at: Option<i64>,
}

/// A new approval request as stored.
#[derive(Debug, Clone)]
pub struct ApprovalNew {
    pub request: crate::approval::ApprovalRequest,
    pub shape: Option<String>,
    /// Verified identity claims as JSON.
    pub claims: Option<String>,
}

pub(crate) struct Job {
    pub op: WriteOp,
    pub ack: Option<oneshot::Sender<Result<(), RecordError>>>,
}

/// Counters exposed by `interceptor status`.
#[derive(Debug, Default)]
pub struct RecorderStats {
    pub commits: AtomicU64,
    pub ops: AtomicU64,
    pub failures: AtomicU64,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct RecorderStatsSnapshot {
    pub commits: u64,
    pub ops: u64,
    pub failures: u64,
}

/// Handle to the recorder; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    core: Arc<writer::Core>,
    next_session: Arc<AtomicI64>,
    stats: Arc<RecorderStats>,
}

impl Recorder {
    /// Opens the database, closes sessions a crashed daemon left open, and
    /// starts the writer thread.
    pub fn start(
        path: &std::path::Path,
        sync: crate::config::SyncMode,
    ) -> Result<(Recorder, writer::WriterHandle), StoreError> {
        let conn = store::open_rw(path, sync)?;
        store::close_orphans(&conn, &now_rfc3339())?;
        store::expire_orphan_approvals(&conn, &now_rfc3339())?;
        let max = store::max_session_id(&conn)?;
        let stats = Arc::new(RecorderStats::default());
        let checkpoint = store::open_checkpointer(path)
            .map_err(|e| tracing::warn!(error = %e, "no checkpointer; the writer checkpoints"))
            .ok();
        // With `sync = "full"` a commit waits for the disk: that runs on the
        // writer thread, never on a task of the async runtime.
        let inline = sync == crate::config::SyncMode::Normal;
        let (core, handle) = writer::spawn(conn, checkpoint, inline, stats.clone());
        Ok((
            Recorder {
                core,
                next_session: Arc::new(AtomicI64::new(max + 1)),
                stats,
            },
            handle,
        ))
    }

    pub fn next_session_id(&self) -> i64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Records `op` and waits until it is committed to disk.
    pub async fn commit(&self, op: WriteOp) -> Result<(), RecordError> {
        self.commit_all(vec![op]).await
    }

    /// Records several operations (in one transaction when the recorder is
    /// idle) and waits until all are committed.
    pub async fn commit_all(&self, ops: Vec<WriteOp>) -> Result<(), RecordError> {
        let mut jobs = Vec::with_capacity(ops.len());
        let mut waits = Vec::with_capacity(ops.len());
        for op in ops {
            let (ack, done) = oneshot::channel();
            jobs.push(Job { op, ack: Some(ack) });
            waits.push(done);
        }
        self.core.submit(jobs, true)?;
        for w in waits {
            w.await.map_err(|_| RecordError::Stopped)??;
        }
        Ok(())
    }

    /// Queues `op` without waiting for the commit (order is preserved): it
    /// goes with the next commit, or within milliseconds.
    pub async fn enqueue(&self, op: WriteOp) -> Result<(), RecordError> {
        self.core.submit(vec![Job { op, ack: None }], false)
    }

    pub fn stats(&self) -> RecorderStatsSnapshot {
        RecorderStatsSnapshot {
            commits: self.stats.commits.load(Ordering::Relaxed),
            ops: self.stats.ops.load(Ordering::Relaxed),
            failures: self.stats.failures.load(Ordering::Relaxed),
        }
    }
}

/// Current UTC time as RFC 3339 with microseconds, the format of every
/// timestamp in the database (sorts lexicographically).
pub fn now_rfc3339() -> String {
    format_ts(time::OffsetDateTime::now_utc())
}

pub fn format_ts(t: time::OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.microsecond()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_format_sorts() {
        let a = format_ts(time::macros::datetime!(2026-01-02 03:04:05.000007 UTC));
        assert_eq!(a, "2026-01-02T03:04:05.000007Z");
        let b = format_ts(time::macros::datetime!(2026-01-02 03:04:05.1 UTC));
        assert!(a < b);
    }
}
