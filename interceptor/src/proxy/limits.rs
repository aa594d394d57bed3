//! What a workload can make the daemon hold: session caps (per attached
//! cgroup and in total) and one daemon-wide budget for the bytes held in
//! protocol frame buffers.
//!
//! The threat is a workload that has read this source and opens many
//! connections, each announcing a huge message and then stalling. Three
//! things bound what that costs:
//!
//! - the frame readers (`postgres::codec::FrameReader`,
//!   `mysql::stream`) grow their buffers only as bytes arrive, and take
//!   a small limit ([`AUTH_MESSAGE_LIMIT`]) until the session has
//!   authenticated;
//! - [`Admission`] caps the sessions in progress per attached cgroup and
//!   in total (`limits.max_sessions_per_cgroup`, `limits.max_sessions`);
//! - every reader charges the bytes its buffer holds beyond a small
//!   standing chunk ([`STANDING_BYTES`]) to the [`MemoryBudget`]
//!   (`limits.max_buffered_bytes`); a read that would go over it ends
//!   that session with the protocol's out-of-memory error, and every
//!   other session goes on.
//!
//! The budget is process-wide (one daemon per process): readers find it
//! without plumbing through every session type, and it can never be
//! bypassed by a reader built somewhere the plumbing forgot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Limits;

/// Largest message taken before a session has authenticated (start-up,
/// SASL and password messages, MySQL handshake and auth packets). The
/// servers' own bounds sit just below: PostgreSQL reads an authentication
/// message of at most 65 535 bytes, MySQL connection attributes are at
/// most 64 KiB; the extra kibibyte covers the fields around them.
pub const AUTH_MESSAGE_LIMIT: usize = 65 * 1024;

/// Bytes of each reader's buffer not charged to the budget: the chunk
/// every reader reads into. What sessions hold in standing chunks is
/// bounded by the session caps instead.
pub const STANDING_BYTES: usize = 16 * 1024;

/// The message limit before authentication, given the configured one.
pub fn auth_limit(max_message_bytes: usize) -> usize {
    AUTH_MESSAGE_LIMIT.min(max_message_bytes)
}

// ------------------------------------------------------------------ budget

/// A daemon-wide count of the bytes held in frame buffers, with a limit.
#[derive(Debug)]
pub struct MemoryBudget {
    held: AtomicUsize,
    limit: AtomicUsize,
    /// Reads refused because the budget was spent.
    refused: AtomicU64,
}

static GLOBAL: MemoryBudget = MemoryBudget::new(usize::MAX);

impl MemoryBudget {
    pub const fn new(limit: usize) -> MemoryBudget {
        MemoryBudget {
            held: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            refused: AtomicU64::new(0),
        }
    }

    /// The daemon's budget (unlimited until [`set_limit`](Self::set_limit)).
    pub fn global() -> &'static MemoryBudget {
        &GLOBAL
    }

    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn limit(&self) -> usize {
        self.limit.load(Ordering::Relaxed)
    }

    /// Bytes held right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Reads refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Takes `n` more bytes if they fit.
    fn take(&self, n: usize) -> Result<(), OverBudget> {
        let limit = self.limit();
        let mut held = self.held();
        loop {
            let next = held.saturating_add(n);
            if next > limit {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(OverBudget {
                    want: n,
                    held,
                    limit,
                });
            }
            match self
                .held
                .compare_exchange_weak(held, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Ok(()),
                Err(now) => held = now,
            }
        }
    }

    /// Takes `n` more bytes, over the limit if need be (memory already
    /// allocated must be counted).
    fn force(&self, n: usize) {
        self.held.fetch_add(n, Ordering::Relaxed);
    }

    fn give(&self, n: usize) {
        self.held.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A read that would take the daemon over its budget.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "out of memory for buffered messages: {want} more bytes would exceed limits.max_buffered_bytes ({limit}; {held} held by all sessions)"
)]
pub struct OverBudget {
    pub want: usize,
    pub held: usize,
    pub limit: usize,
}

/// What one buffer holds of the budget; given back when dropped.
#[derive(Debug)]
pub struct Held {
    budget: &'static MemoryBudget,
    bytes: usize,
}

impl Default for Held {
    fn default() -> Self {
        Held::new(MemoryBudget::global())
    }
}

impl Held {
    pub fn new(budget: &'static MemoryBudget) -> Held {
        Held { budget, bytes: 0 }
    }

    /// Bytes charged.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Charges a buffer of `capacity` bytes (the standing chunk free);
    /// growing is refused when it does not fit, shrinking always works.
    pub fn try_set(&mut self, capacity: usize) -> Result<(), OverBudget> {
        let n = capacity.saturating_sub(STANDING_BYTES);
        if n > self.bytes {
            self.budget.take(n - self.bytes)?;
        } else {
            self.budget.give(self.bytes - n);
        }
        self.bytes = n;
        Ok(())
    }

    /// Charges a buffer of `capacity` bytes, over the limit if need be
    /// (for memory that is already allocated).
    pub fn set(&mut self, capacity: usize) {
        let n = capacity.saturating_sub(STANDING_BYTES);
        if n > self.bytes {
            self.budget.force(n - self.bytes);
        } else {
            self.budget.give(self.bytes - n);
        }
        self.bytes = n;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.budget.give(self.bytes);
    }
}

/// A read is worth making into this much room (or what the message
/// still lacks, if less).
const MIN_READ: usize = 4 * 1024;

/// Whether a buffer holding `len` of `capacity` bytes has room for a
/// useful read towards a message that lacks `missing` bytes.
pub fn has_room(len: usize, capacity: usize, missing: usize) -> bool {
    let spare = capacity.saturating_sub(len);
    spare > 0 && spare >= missing.min(MIN_READ)
}

/// Makes room in `buf` for a read towards a message that lacks `missing`
/// bytes, charging the growth to `held` first. An empty buffer gets the
/// standing chunk; past it, each step at most doubles what the buffer
/// holds and never goes past the message: memory follows the bytes that
/// arrived, never a length a peer announced. An allocation the system
/// refuses is reported as the budget being spent (the session ends the
/// same way).
pub fn grow(buf: &mut Vec<u8>, missing: usize, held: &mut Held) -> Result<(), OverBudget> {
    if has_room(buf.len(), buf.capacity(), missing) {
        return Ok(());
    }
    let len = buf.len();
    let step = missing.min(len.max(STANDING_BYTES)).max(1);
    let target = len.saturating_add(step).max(STANDING_BYTES);
    held.try_set(target)?;
    let reserved = buf.try_reserve_exact(target - len);
    held.set(buf.capacity());
    reserved.map_err(|_| OverBudget {
        want: target - len,
        held: held.budget.held(),
        limit: held.budget.limit(),
    })
}

// --------------------------------------------------------------- admission

/// Sessions in progress per attached cgroup and in total.
#[derive(Debug, Default)]
pub struct Admission {
    live: Mutex<Live>,
    /// Connections refused by a cap.
    refused: AtomicU64,
}

#[derive(Debug, Default)]
struct Live {
    total: usize,
    per_key: HashMap<String, usize>,
}

/// A session's place under the caps; given back when dropped.
#[derive(Debug)]
pub struct Ticket {
    admission: Arc<Admission>,
    key: String,
}

/// A session the caps refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapReached {
    #[error(
        "too many sessions from cgroup {cgroup}: {limit} in progress (limits.max_sessions_per_cgroup)"
    )]
    PerCgroup { cgroup: String, limit: usize },
    #[error("too many sessions: {limit} in progress (limits.max_sessions)")]
    Total { limit: usize },
}

impl Admission {
    /// Admits a session charged to `key` (its attached cgroup) if both
    /// caps allow it.
    pub fn admit(self: &Arc<Self>, key: &str, limits: &Limits) -> Result<Ticket, CapReached> {
        let mut live = match self.live.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        let refused = if live.total >= limits.max_sessions {
            Some(CapReached::Total {
                limit: limits.max_sessions,
            })
        } else if live.per_key.get(key).copied().unwrap_or(0) >= limits.max_sessions_per_cgroup {
            Some(CapReached::PerCgroup {
                cgroup: key.to_string(),
                limit: limits.max_sessions_per_cgroup,
            })
        } else {
            None
        };
        if let Some(r) = refused {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(r);
        }
        live.total += 1;
        *live.per_key.entry(key.to_string()).or_default() += 1;
        Ok(Ticket {
            admission: self.clone(),
            key: key.to_string(),
        })
    }

    /// Sessions admitted and not ended.
    pub fn total(&self) -> usize {
        self.live.lock().map(|l| l.total).unwrap_or(0)
    }

    /// Sessions admitted for `key` and not ended.
    pub fn of(&self, key: &str) -> usize {
        self.live
            .lock()
            .map(|l| l.per_key.get(key).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut live = match self.admission.live.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        live.total = live.total.saturating_sub(1);
        if let Some(n) = live.per_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                live.per_key.remove(&self.key);
            }
        }
    }
}

/// The cgroup a session is counted under: the closest attached cgroup
/// that contains the connecting process's cgroup. A workload that creates
/// child cgroups (delegation) does not get a cap per child; a cgroup the
/// daemon could not resolve shares one count with every other unresolved
/// one.
pub fn admission_key(cgroup: &str, attached: &[String]) -> String {
    let within = |root: &str| {
        root == "/"
            || cgroup == root
            || cgroup
                .strip_prefix(root)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    if let Some(root) = attached
        .iter()
        .filter(|r| within(r))
        .max_by_key(|r| r.len())
    {
        return root.clone();
    }
    if cgroup.starts_with('/') {
        cgroup.to_string()
    } else {
        "(unresolved)".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: usize) -> &'static MemoryBudget {
        Box::leak(Box::new(MemoryBudget::new(limit)))
    }

    fn limits(total: usize, per: usize) -> Limits {
        Limits {
            max_sessions: total,
            max_sessions_per_cgroup: per,
            ..Limits::default()
        }
    }

    #[test]
    fn held_charges_beyond_the_standing_chunk_and_gives_back() {
        let b = budget(100_000);
        let mut h = Held::new(b);
        h.try_set(STANDING_BYTES).unwrap();
        assert_eq!(b.held(), 0);
        h.try_set(STANDING_BYTES + 60_000).unwrap();
        assert_eq!(b.held(), 60_000);
        let mut other = Held::new(b);
        let e = other.try_set(STANDING_BYTES + 50_000).unwrap_err();
        assert_eq!(
            e,
            OverBudget {
                want: 50_000,
                held: 60_000,
                limit: 100_000
            }
        );
        assert_eq!(b.refused(), 1);
        assert_eq!(other.bytes(), 0);
        other.try_set(STANDING_BYTES + 40_000).unwrap();
        assert_eq!(b.held(), 100_000);
        h.try_set(1000).unwrap();
        assert_eq!(b.held(), 40_000);
        drop(other);
        assert_eq!(b.held(), 0);
        // Memory already allocated is counted even over the limit.
        h.set(STANDING_BYTES + 200_000);
        assert_eq!(b.held(), 200_000);
        drop(h);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn grow_follows_received_bytes_not_announced_lengths() {
        let b = budget(usize::MAX);
        let mut h = Held::new(b);
        let mut buf = Vec::new();
        // A peer announces 64 MiB and has sent nothing yet.
        grow(&mut buf, 64 << 20, &mut h).unwrap();
        assert!(buf.capacity() <= 2 * STANDING_BYTES, "{}", buf.capacity());
        // Each step at most doubles what arrived.
        while buf.len() < 1 << 20 {
            let room = buf.capacity() - buf.len();
            buf.resize(buf.len() + room, 7);
            let missing = (64 << 20) - buf.len();
            grow(&mut buf, missing, &mut h).unwrap();
            assert!(
                buf.capacity() <= 2 * buf.len() + STANDING_BYTES,
                "{} for {}",
                buf.capacity(),
                buf.len()
            );
        }
        assert_eq!(b.held(), buf.capacity() - STANDING_BYTES);
        // An empty buffer gets the standing chunk, charged nothing.
        let mut small = Vec::new();
        let mut h2 = Held::new(b);
        grow(&mut small, 10, &mut h2).unwrap();
        assert_eq!(small.capacity(), STANDING_BYTES);
        assert_eq!(h2.bytes(), 0);
        // Room left for a useful read: no growth.
        small.resize(STANDING_BYTES - MIN_READ, 0);
        grow(&mut small, 1 << 20, &mut h2).unwrap();
        assert_eq!(small.capacity(), STANDING_BYTES);
    }

    #[test]
    fn grow_refuses_over_the_budget() {
        let b = budget(1 << 20);
        let mut h = Held::new(b);
        let mut buf = Vec::new();
        let mut refused = None;
        for _ in 0..100 {
            if let Err(e) = grow(&mut buf, 64 << 20, &mut h) {
                refused = Some(e);
                break;
            }
            let room = buf.capacity() - buf.len();
            buf.resize(buf.len() + room, 0);
        }
        let e = refused.expect("the budget stops the growth");
        assert_eq!(e.limit, 1 << 20);
        assert!(b.held() <= 1 << 20);
        assert_eq!(h.bytes(), b.held());
        drop(h);
        assert_eq!(b.held(), 0);
    }

    #[test]
    fn caps_per_cgroup_and_in_total() {
        let a = Arc::new(Admission::default());
        let l = limits(3, 2);
        let t1 = a.admit("/job-a", &l).unwrap();
        let _t2 = a.admit("/job-a", &l).unwrap();
        assert_eq!(
            a.admit("/job-a", &l).unwrap_err(),
            CapReached::PerCgroup {
                cgroup: "/job-a".into(),
                limit: 2
            }
        );
        let _t3 = a.admit("/job-b", &l).unwrap();
        assert_eq!(
            a.admit("/job-c", &l).unwrap_err(),
            CapReached::Total { limit: 3 }
        );
        assert_eq!(a.refused(), 2);
        drop(t1);
        assert_eq!(a.of("/job-a"), 1);
        let _t4 = a.admit("/job-a", &l).unwrap();
        assert_eq!(a.total(), 3);
    }

    #[test]
    fn sessions_count_under_their_attached_cgroup() {
        let attached = vec![
            "/ci".to_string(),
            "/ci/job-1".to_string(),
            "/other".to_string(),
        ];
        assert_eq!(admission_key("/ci/job-1/step/x", &attached), "/ci/job-1");
        assert_eq!(admission_key("/ci/job-2", &attached), "/ci");
        assert_eq!(admission_key("/ci", &attached), "/ci");
        assert_eq!(admission_key("/cix", &attached), "/cix");
        assert_eq!(admission_key("/other/a/b/c", &attached), "/other");
        assert_eq!(admission_key("cgroup-id:42", &attached), "(unresolved)");
        assert_eq!(admission_key("cgroup-id:43", &attached), "(unresolved)");
        assert_eq!(admission_key("/x", &["/".to_string()]), "/");
    }
}
