//! Just-in-time approvals: a command whose decision is `review` is held
//! until someone allowed to approve says yes or no, or the policy's
//! `approval_timeout` passes (then it is denied).
//!
//! The request (with the workload identity, target, masked operation text
//! and rule) is stored in SQLite before anyone is notified; the outcome —
//! who, when, why — is stored with it and shows in `sessions show`.
//! Pending requests are bounded per session, per job (the attached cgroup
//! the workload runs in) and globally: beyond the bounds new ones are denied
//! at once, so a flood of reviews cannot exhaust memory, and one job cannot
//! take the whole global budget and starve the others.

pub mod notify;

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, oneshot};

/// Most pending requests one session may have.
pub const MAX_PENDING_PER_SESSION: usize = 8;
/// Most pending requests one job (attached cgroup) may have, over all its
/// sessions.
pub const MAX_PENDING_PER_CGROUP: usize = 16;
/// Most pending requests overall.
pub const MAX_PENDING: usize = 1024;

/// What an approver decided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Resolution {
    pub approved: bool,
    pub by_uid: u32,
    pub by_name: String,
    pub reason: Option<String>,
    /// For approvals: also allow the same statement shape in this session
    /// for this many minutes.
    pub scope_minutes: Option<u32>,
    pub at: String,
}

/// A new request, as broadcast to `approvals watch` and notification hooks.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApprovalRequest {
    pub id: i64,
    pub session_id: i64,
    pub seq: i64,
    pub created_at: String,
    pub expires_at: String,
    pub protocol: String,
    pub destination: String,
    pub operation: String,
    pub rule: Option<String>,
    pub reason: String,
    pub cgroup: String,
    pub unit: Option<String>,
    pub pid: Option<u32>,
    pub exe: Option<String>,
    pub uid: Option<u32>,
    pub repository: Option<String>,
    pub sha: Option<String>,
    pub run_id: Option<String>,
    pub actor: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HoldError {
    #[error("too many pending approval requests in this session (limit {0}); denied")]
    SessionLimit(usize),
    #[error("too many pending approval requests from this cgroup (limit {0}); denied")]
    CgroupLimit(usize),
    #[error("too many pending approval requests on this host (limit {0}); denied")]
    GlobalLimit(usize),
}

/// Who a held request is for: the job it counts against and the uid of the
/// process whose command is held (approvers with that uid are refused
/// unless `[approvals] allow_same_uid`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The attached cgroup the workload runs in (its own cgroup when none
    /// covers it): the unit of the per-cgroup bound.
    pub cgroup: String,
    pub uid: Option<u32>,
}

struct Pending {
    session_id: i64,
    owner: Owner,
    tx: oneshot::Sender<Resolution>,
}

/// In-memory side of approvals: who is waiting, and which statement shapes
/// a session was granted for a while.
pub struct Approvals {
    next_id: AtomicI64,
    pending: Mutex<HashMap<i64, Pending>>,
    grants: Mutex<HashMap<(i64, String), Instant>>,
    events: broadcast::Sender<ApprovalRequest>,
}

/// A held request: await `wait`, the request is withdrawn on drop.
pub struct Hold<'a> {
    pub id: i64,
    rx: Option<oneshot::Receiver<Resolution>>,
    owner: &'a Approvals,
}

impl Hold<'_> {
    /// The resolution, or None when the timeout passed first.
    pub async fn wait(&mut self, timeout: Duration) -> Option<Resolution> {
        let rx = self.rx.take()?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(r)) => Some(r),
            _ => None,
        }
    }
}

impl Drop for Hold<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.owner.pending.lock() {
            p.remove(&self.id);
        }
    }
}

impl Approvals {
    /// `first_id`: one more than the highest id already in the database.
    pub fn new(first_id: i64) -> Approvals {
        let (events, _) = broadcast::channel(256);
        Approvals {
            next_id: AtomicI64::new(first_id),
            pending: Mutex::new(HashMap::new()),
            grants: Mutex::new(HashMap::new()),
            events,
        }
    }

    /// Whether the session holds an unexpired grant for this shape.
    pub fn granted(&self, session_id: i64, shape: &str) -> bool {
        let Ok(mut g) = self.grants.lock() else {
            return false;
        };
        let key = (session_id, shape.to_string());
        match g.get(&key) {
            Some(until) if *until > Instant::now() => true,
            Some(_) => {
                g.remove(&key);
                false
            }
            None => false,
        }
    }

    pub fn grant(&self, session_id: i64, shape: &str, minutes: u32) {
        if let Ok(mut g) = self.grants.lock() {
            g.insert(
                (session_id, shape.to_string()),
                Instant::now() + Duration::from_secs(u64::from(minutes) * 60),
            );
        }
    }

    /// Forgets a session's grants (it ended).
    pub fn end_session(&self, session_id: i64) {
        if let Ok(mut g) = self.grants.lock() {
            g.retain(|(s, _), _| *s != session_id);
        }
    }

    /// Registers a pending request (bounded per session, per owner cgroup
    /// and globally).
    pub fn hold(&self, session_id: i64, owner: Owner) -> Result<Hold<'_>, HoldError> {
        let mut p = self
            .pending
            .lock()
            .map_err(|_| HoldError::GlobalLimit(MAX_PENDING))?;
        if p.len() >= MAX_PENDING {
            return Err(HoldError::GlobalLimit(MAX_PENDING));
        }
        if p.values().filter(|x| x.session_id == session_id).count() >= MAX_PENDING_PER_SESSION {
            return Err(HoldError::SessionLimit(MAX_PENDING_PER_SESSION));
        }
        if p.values()
            .filter(|x| x.owner.cgroup == owner.cgroup)
            .count()
            >= MAX_PENDING_PER_CGROUP
        {
            return Err(HoldError::CgroupLimit(MAX_PENDING_PER_CGROUP));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        p.insert(
            id,
            Pending {
                session_id,
                owner,
                tx,
            },
        );
        Ok(Hold {
            id,
            rx: Some(rx),
            owner: self,
        })
    }

    /// Delivers a resolution to the waiting session. False when nobody
    /// waits for this id any more (unknown, decided, expired or gone).
    pub fn resolve(&self, id: i64, r: Resolution) -> bool {
        let waiter = self.pending.lock().ok().and_then(|mut p| p.remove(&id));
        match waiter {
            Some(w) => w.tx.send(r).is_ok(),
            None => false,
        }
    }

    /// Whom a pending request is for; None when nobody waits for it.
    pub fn owner(&self, id: i64) -> Option<Owner> {
        self.pending.lock().ok()?.get(&id).map(|p| p.owner.clone())
    }

    pub fn is_pending(&self, id: i64) -> bool {
        self.pending
            .lock()
            .map(|p| p.contains_key(&id))
            .unwrap_or(false)
    }

    pub fn pending_count(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    pub fn announce(&self, req: ApprovalRequest) {
        // No watchers is fine.
        let _ = self.events.send(req);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<ApprovalRequest> {
        self.events.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(cgroup: &str) -> Owner {
        Owner {
            cgroup: cgroup.into(),
            uid: Some(1000),
        }
    }

    #[test]
    fn owner_is_known_while_pending() {
        let a = Approvals::new(1);
        let h = a.hold(7, owner("/job")).unwrap();
        assert_eq!(a.owner(h.id), Some(owner("/job")));
        drop(h);
        assert_eq!(a.owner(1), None);
    }

    fn res(approved: bool) -> Resolution {
        Resolution {
            approved,
            by_uid: 0,
            by_name: "root".into(),
            reason: None,
            scope_minutes: None,
            at: String::new(),
        }
    }

    #[tokio::test]
    async fn resolve_wakes_the_holder() {
        let a = Approvals::new(1);
        let mut h = a.hold(7, owner("/job")).unwrap();
        assert_eq!(h.id, 1);
        assert!(a.is_pending(1));
        assert!(a.resolve(1, res(true)));
        assert_eq!(h.wait(Duration::from_secs(1)).await, Some(res(true)));
        assert!(!a.resolve(1, res(false)), "a second decision finds nobody");
    }

    #[tokio::test]
    async fn timeout_and_drop_withdraw() {
        let a = Approvals::new(1);
        let mut h = a.hold(7, owner("/job")).unwrap();
        assert_eq!(h.wait(Duration::from_millis(10)).await, None);
        drop(h);
        assert!(!a.is_pending(1));
        assert_eq!(a.pending_count(), 0);
    }

    #[test]
    fn bounded_per_session_and_globally() {
        let a = Approvals::new(1);
        let held: Vec<_> = (0..MAX_PENDING_PER_SESSION)
            .map(|_| a.hold(1, owner("/job-a")).unwrap())
            .collect();
        assert_eq!(
            a.hold(1, owner("/job-a")).err(),
            Some(HoldError::SessionLimit(MAX_PENDING_PER_SESSION))
        );
        assert!(a.hold(2, owner("/job-a")).is_ok());
        drop(held);
        // One job over many sessions stops at its own bound; another job
        // still gets its requests held.
        let mut job = Vec::new();
        let mut session = 10;
        loop {
            match a.hold(session, owner("/job-a")) {
                Ok(h) => job.push(h),
                Err(HoldError::SessionLimit(_)) => session += 1,
                Err(e) => {
                    assert_eq!(e, HoldError::CgroupLimit(MAX_PENDING_PER_CGROUP));
                    break;
                }
            }
        }
        assert_eq!(job.len(), MAX_PENDING_PER_CGROUP);
        assert!(a.hold(9_999, owner("/job-b")).is_ok());
        drop(job);
        let mut many = Vec::new();
        let mut session = 100;
        while many.len() < MAX_PENDING {
            match a.hold(session, owner(&format!("/job-{}", session / 2))) {
                Ok(h) => many.push(h),
                Err(_) => session += 1,
            }
        }
        assert_eq!(
            a.hold(99_999, owner("/job-fresh")).err(),
            Some(HoldError::GlobalLimit(MAX_PENDING))
        );
    }

    #[test]
    fn grants_expire_and_end_with_the_session() {
        let a = Approvals::new(1);
        a.grant(1, "delete from t", 5);
        assert!(a.granted(1, "delete from t"));
        assert!(!a.granted(2, "delete from t"));
        assert!(!a.granted(1, "delete from u"));
        a.grant(1, "x", 0);
        assert!(!a.granted(1, "x"));
        a.end_session(1);
        assert!(!a.granted(1, "delete from t"));
    }
}
