//! Verified identities bound to cgroups.
//!
//! `interceptor enroll` (run from inside a workload) hands the daemon a
//! workload-identity token; the daemon verifies it and binds its claims to
//! the caller's cgroup — and so to every process in it or below it — until
//! the token expires or the enrollment is revoked. The binding remembers the
//! cgroup's id: a cgroup deleted and recreated under the same path does not
//! inherit it.
//!
//! The workload is the adversary, so what it can do to its own identity is
//! limited to making it *less* useful to itself:
//!
//! * **A binding lives until the last of its tokens expires.** While it
//!   lives, the cgroup (and every cgroup below it) can only be re-enrolled
//!   with a token for the *same* identity: the same issuer and the same
//!   claims apart from the per-token ones (`jti`, `iat`, `nbf`, `exp`). A
//!   fresh token of the same job refreshes it; a token for another
//!   repository, run or job is refused.
//! * **The workload may revoke, not rebind.** Revoking one's own cgroup
//!   ends the identity (the workload becomes unverified, and the policy's
//!   restrictive identity rules keep applying to it) but keeps the binding,
//!   so it cannot enroll as something else afterwards. Only an
//!   administrator's revoke (`enroll --revoke --cgroup`, from outside the
//!   attached cgroups) releases the binding.
//! * **A token binds one cgroup.** Its id (`jti`, or the SHA-256 of the
//!   token when it has none) is remembered until the token expires; the
//!   same token offered for another cgroup is a replay and refused.
//!
//! The bindings and token ids live in the `enrollments` table as well, and
//! are rebuilt from it at start-up ([`Enrollments::restore`]), so a restart
//! forgets neither.

use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, RwLock};

use crate::record::store::EnrollmentRow;
use crate::redirect::cgroup::Cgroup2;

/// Claims that differ between two tokens of the same identity.
const PER_TOKEN_CLAIMS: &[&str] = &["jti", "iat", "nbf", "exp"];

/// One active binding.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Enrollment {
    pub cgroup_path: String,
    pub cgroup_id: u64,
    pub identity: policy::Identity,
    pub token_id: Option<String>,
    /// Unix seconds.
    pub expires_at: u64,
    pub enrolled_at: String,
}

/// What a cgroup is bound to, for as long as any of its tokens lives.
#[derive(Debug, Clone)]
struct Binding {
    cgroup_id: u64,
    issuer: String,
    /// The claims a re-enrollment must repeat.
    key: BTreeMap<String, String>,
    /// Unix seconds: the latest `exp` of the tokens bound.
    until: u64,
    /// None once the workload revoked it: unverified, still bound.
    active: Option<Enrollment>,
}

/// Where a token was enrolled.
#[derive(Debug, Clone)]
struct Seen {
    cgroup_path: String,
    cgroup_id: u64,
    expires_at: u64,
}

#[derive(Default)]
struct State {
    by_path: HashMap<String, Binding>,
    /// (issuer, token id) → where it was enrolled.
    seen: HashMap<(String, String), Seen>,
}

/// Why a verified token may not be bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    #[error(
        "token {token_id} was already enrolled for cgroup {cgroup}; a token binds one cgroup (replays are refused until it expires at {until})"
    )]
    Replayed {
        token_id: String,
        cgroup: String,
        until: String,
    },
    #[error(
        "cgroup {bound_at} is bound to {bound} until {until}; a token for {offered} cannot replace it (it differs in {}). Revoking one's own enrollment does not release the binding: an administrator can, with `interceptor enroll --revoke --cgroup {bound_at}` as root from outside the attached cgroups",
        .differs.join(", ")
    )]
    Rebind {
        bound_at: String,
        bound: String,
        offered: String,
        differs: Vec<String>,
        until: String,
    },
}

/// The identity key of a token: its claims without the per-token ones.
pub fn identity_key(claims: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    claims
        .iter()
        .filter(|(k, _)| !PER_TOKEN_CLAIMS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The id a token is remembered by: its `jti`, or `sha256:HEX` of the token
/// itself when it has none.
pub fn replay_id(jti: Option<&str>, token: &str) -> String {
    match jti {
        Some(j) if !j.is_empty() => j.to_string(),
        _ => {
            let d = ring::digest::digest(&ring::digest::SHA256, token.trim().as_bytes());
            let mut s = String::with_capacity(7 + 64);
            s.push_str("sha256:");
            for b in d.as_ref() {
                s.push_str(&format!("{b:02x}"));
            }
            s
        }
    }
}

/// A short human form of an identity: the claims that usually tell jobs
/// apart, when present, else the subject.
fn describe(issuer: &str, key: &BTreeMap<String, String>) -> String {
    let named: Vec<String> = ["repository", "run_id", "run_attempt", "job_id", "spiffe_id"]
        .iter()
        .filter_map(|k| key.get(*k).map(|v| format!("{k} {v}")))
        .collect();
    if named.is_empty() {
        format!(
            "subject {} of {issuer}",
            key.get("sub").map(String::as_str).unwrap_or("-")
        )
    } else {
        named.join(", ")
    }
}

fn differing(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    out.sort();
    out.dedup();
    out
}

fn utc(t: u64) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix time {t}"))
}

/// Parents of a cgroup path, nearest first, the path itself included
/// (`/a/b` → `/a/b`, `/a`).
fn self_and_ancestors(path: &str) -> impl Iterator<Item = &str> {
    let path = path.trim_end_matches('/');
    std::iter::successors(Some(path), |p| match p.rfind('/') {
        Some(0) | None => None,
        Some(i) => Some(&p[..i]),
    })
    .filter(|p| !p.is_empty())
}

fn same_cgroup(cg: &Cgroup2, path: &str, id: u64) -> bool {
    std::fs::metadata(cg.dir(path))
        .map(|md| md.ino() == id)
        .unwrap_or(false)
}

#[derive(Default)]
pub struct Enrollments {
    state: RwLock<State>,
}

impl Enrollments {
    /// Whether a token verified for `issuer` with `claims` may be bound to
    /// `path` (id `cgroup_id`) now. The caller serialises check and
    /// [`bind`](Self::bind) (the daemon's enroll lock).
    #[allow(clippy::too_many_arguments)]
    pub fn check(
        &self,
        cg: &Cgroup2,
        path: &str,
        cgroup_id: u64,
        issuer: &str,
        claims: &BTreeMap<String, String>,
        replay_id: &str,
        now: u64,
    ) -> Result<(), BindError> {
        let Ok(s) = self.state.read() else {
            // Poisoned: refuse rather than bind blind.
            return Err(BindError::Replayed {
                token_id: replay_id.into(),
                cgroup: path.into(),
                until: "unknown".into(),
            });
        };
        if let Some(seen) = s.seen.get(&(issuer.to_string(), replay_id.to_string()))
            && seen.expires_at > now
            && (seen.cgroup_path != path || seen.cgroup_id != cgroup_id)
        {
            return Err(BindError::Replayed {
                token_id: replay_id.to_string(),
                cgroup: seen.cgroup_path.clone(),
                until: utc(seen.expires_at),
            });
        }
        let key = identity_key(claims);
        for p in self_and_ancestors(path) {
            let Some(b) = s.by_path.get(p) else { continue };
            let id_ok = if p == path {
                b.cgroup_id == cgroup_id
            } else {
                same_cgroup(cg, p, b.cgroup_id)
            };
            if b.until <= now || !id_ok {
                continue;
            }
            // The nearest live binding governs.
            if b.issuer != issuer || b.key != key {
                let mut differs = differing(&b.key, &key);
                if b.issuer != issuer {
                    differs.insert(0, "iss".into());
                    differs.dedup();
                }
                return Err(BindError::Rebind {
                    bound_at: p.to_string(),
                    bound: describe(&b.issuer, &b.key),
                    offered: describe(issuer, &key),
                    differs,
                    until: utc(b.until),
                });
            }
            return Ok(());
        }
        Ok(())
    }

    /// Binds a checked enrollment (replacing the cgroup's active one) and
    /// remembers its token.
    pub fn bind(&self, e: Enrollment, replay_id: String) {
        let Ok(mut s) = self.state.write() else {
            return;
        };
        let key = identity_key(&e.identity.claims);
        let issuer = e.identity.issuer.clone();
        s.seen.insert(
            (issuer.clone(), replay_id),
            Seen {
                cgroup_path: e.cgroup_path.clone(),
                cgroup_id: e.cgroup_id,
                expires_at: e.expires_at,
            },
        );
        let until = match s.by_path.get(&e.cgroup_path) {
            Some(b) if b.cgroup_id == e.cgroup_id && b.issuer == issuer && b.key == key => {
                b.until.max(e.expires_at)
            }
            _ => e.expires_at,
        };
        s.by_path.insert(
            e.cgroup_path.clone(),
            Binding {
                cgroup_id: e.cgroup_id,
                issuer,
                key,
                until,
                active: Some(e),
            },
        );
    }

    /// The workload's own revoke: the identity ends (the cgroup is
    /// unverified from now on), the binding stays until it expires.
    pub fn revoke(&self, path: &str) -> Option<Enrollment> {
        self.state
            .write()
            .ok()?
            .by_path
            .get_mut(path)
            .and_then(|b| b.active.take())
    }

    /// An administrator's revoke: the identity and the binding end; the
    /// cgroup may be enrolled afresh. True when there was either.
    pub fn release(&self, path: &str) -> bool {
        self.state
            .write()
            .map(|mut s| s.by_path.remove(path).is_some())
            .unwrap_or(false)
    }

    /// Drops bindings and token ids whose tokens have all expired.
    pub fn prune(&self, now: u64) {
        if let Ok(mut s) = self.state.write() {
            s.by_path.retain(|_, b| b.until > now);
            s.seen.retain(|_, t| t.expires_at > now);
        }
    }

    pub fn list(&self, now: u64) -> Vec<Enrollment> {
        let Ok(s) = self.state.read() else {
            return Vec::new();
        };
        let mut v: Vec<Enrollment> = s
            .by_path
            .values()
            .filter_map(|b| b.active.as_ref())
            .filter(|e| e.expires_at > now)
            .cloned()
            .collect();
        v.sort_by(|a, b| a.cgroup_path.cmp(&b.cgroup_path));
        v
    }

    pub fn is_empty(&self) -> bool {
        self.state
            .read()
            .map(|s| s.by_path.values().all(|b| b.active.is_none()))
            .unwrap_or(true)
    }

    /// The identity that applies to a process in `cgroup`: that of the
    /// nearest live binding of the cgroup itself or an ancestor (same
    /// cgroup id, a token unexpired). A binding whose identity was revoked
    /// or has expired while a later token of it lives gives none: the
    /// process is unverified, it does not fall back to an ancestor's
    /// identity.
    pub fn lookup(&self, cg: &Cgroup2, cgroup: &str, now: u64) -> Option<Enrollment> {
        let s = self.state.read().ok()?;
        if s.by_path.is_empty() {
            return None;
        }
        for p in self_and_ancestors(cgroup) {
            let Some(b) = s.by_path.get(p) else { continue };
            if b.until <= now || !same_cgroup(cg, p, b.cgroup_id) {
                continue;
            }
            return b.active.as_ref().filter(|e| e.expires_at > now).cloned();
        }
        None
    }

    /// Rebuilds bindings and token ids from the `enrollments` table (rows in
    /// any order): `active` rows bind, `replaced` and `revoked` rows keep
    /// the binding (and the token id) alive until they expire, `released`
    /// rows end it. Rows of expired tokens are skipped.
    pub fn restore(&self, rows: &[EnrollmentRow], now: u64) {
        let mut rows: Vec<&EnrollmentRow> = rows.iter().collect();
        rows.sort_by_key(|r| r.id);
        let Ok(mut s) = self.state.write() else {
            return;
        };
        for row in rows {
            if row.status == "released" {
                s.by_path.remove(&row.cgroup_path);
                continue;
            }
            let Some(exp) = row.expires_at.and_then(|e| u64::try_from(e).ok()) else {
                continue;
            };
            let Ok(cgroup_id) = u64::try_from(row.cgroup_id) else {
                continue;
            };
            if exp <= now || !matches!(row.status.as_str(), "active" | "replaced" | "revoked") {
                continue;
            }
            let issuer = row.issuer.clone().unwrap_or_default();
            let claims: BTreeMap<String, String> = row
                .claims
                .clone()
                .and_then(|c| serde_json::from_value(c).ok())
                .unwrap_or_default();
            if let Some(t) = &row.token_id {
                s.seen.insert(
                    (issuer.clone(), t.clone()),
                    Seen {
                        cgroup_path: row.cgroup_path.clone(),
                        cgroup_id,
                        expires_at: exp,
                    },
                );
            }
            let key = identity_key(&claims);
            let active = (row.status == "active").then(|| Enrollment {
                cgroup_path: row.cgroup_path.clone(),
                cgroup_id,
                identity: policy::Identity {
                    issuer: issuer.clone(),
                    subject: row.subject.clone().unwrap_or_default(),
                    claims: claims.clone(),
                },
                token_id: row.token_id.clone(),
                expires_at: exp,
                enrolled_at: row.at.clone(),
            });
            let b = s
                .by_path
                .entry(row.cgroup_path.clone())
                .or_insert_with(|| Binding {
                    cgroup_id,
                    issuer: issuer.clone(),
                    key: key.clone(),
                    until: exp,
                    active: None,
                });
            if b.cgroup_id != cgroup_id || b.issuer != issuer || b.key != key {
                // A later binding of the path (another cgroup, or rebound by
                // an administrator without a record in between): the later
                // row wins.
                *b = Binding {
                    cgroup_id,
                    issuer,
                    key,
                    until: exp,
                    active: None,
                };
            }
            b.until = b.until.max(exp);
            if active.is_some() {
                b.active = active;
            }
        }
    }
}

/// Recording of rejected enrollments, bounded: a workload sending garbage in
/// a loop must not fill the database or the log. Fixed one-minute windows,
/// at most [`RejectLimiter::PER_CGROUP`] records per cgroup and
/// [`RejectLimiter::GLOBAL`] in all per window; what is not recorded is
/// counted and reported with the next record of that cgroup.
pub struct RejectLimiter {
    state: Mutex<LimiterState>,
}

#[derive(Default)]
struct LimiterState {
    window: u64,
    global: u32,
    per_cgroup: HashMap<String, u32>,
    /// Suppressed since the cgroup's last record (kept across windows).
    suppressed: HashMap<String, u64>,
}

/// What to do with one rejection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Record it; this many earlier rejections of the cgroup were not.
    Record { suppressed: u64 },
    /// Count it only.
    Suppress,
}

impl Default for RejectLimiter {
    fn default() -> Self {
        RejectLimiter {
            state: Mutex::new(LimiterState::default()),
        }
    }
}

impl RejectLimiter {
    pub const WINDOW_SECS: u64 = 60;
    pub const PER_CGROUP: u32 = 5;
    pub const GLOBAL: u32 = 30;
    /// Most cgroups whose suppressed counts are kept.
    const MAX_TRACKED: usize = 4096;

    pub fn admit(&self, cgroup: &str, now: u64) -> Admit {
        let Ok(mut s) = self.state.lock() else {
            return Admit::Suppress;
        };
        let window = now / Self::WINDOW_SECS;
        if window != s.window {
            s.window = window;
            s.global = 0;
            s.per_cgroup.clear();
        }
        let n = s.per_cgroup.get(cgroup).copied().unwrap_or(0);
        if n >= Self::PER_CGROUP || s.global >= Self::GLOBAL {
            if s.suppressed.len() < Self::MAX_TRACKED || s.suppressed.contains_key(cgroup) {
                *s.suppressed.entry(cgroup.to_string()).or_insert(0) += 1;
            }
            return Admit::Suppress;
        }
        if s.per_cgroup.len() < Self::MAX_TRACKED || s.per_cgroup.contains_key(cgroup) {
            s.per_cgroup.insert(cgroup.to_string(), n + 1);
        }
        s.global += 1;
        Admit::Record {
            suppressed: s.suppressed.remove(cgroup).unwrap_or(0),
        }
    }
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(repo: &str, run: &str, jti: &str) -> BTreeMap<String, String> {
        [
            ("repository", repo),
            ("run_id", run),
            ("sub", "repo:x"),
            ("jti", jti),
            ("iat", "100"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn enrollment(path: &str, id: u64, exp: u64) -> Enrollment {
        enrollment_as(path, id, exp, "acme/api", "1", "j1")
    }

    fn enrollment_as(
        path: &str,
        id: u64,
        exp: u64,
        repo: &str,
        run: &str,
        jti: &str,
    ) -> Enrollment {
        Enrollment {
            cgroup_path: path.into(),
            cgroup_id: id,
            identity: policy::Identity {
                issuer: "iss".into(),
                subject: "sub".into(),
                claims: claims(repo, run, jti),
            },
            token_id: Some(jti.into()),
            expires_at: exp,
            enrolled_at: String::new(),
        }
    }

    struct Dir(std::path::PathBuf);
    impl Dir {
        fn new(name: &str) -> Dir {
            let d = std::env::temp_dir().join(format!("ic-enroll-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&d);
            std::fs::create_dir_all(d.join("job/child")).unwrap();
            Dir(d)
        }
        fn id(&self, rel: &str) -> u64 {
            std::fs::metadata(self.0.join(rel)).unwrap().ino()
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn descendants_inherit_and_ids_must_match() {
        let dir = Dir::new("inherit");
        let cg = Cgroup2::for_tests(&dir.0);
        let id = dir.id("job");
        let e = Enrollments::default();
        e.bind(enrollment("/job", id, 200), "j1".into());
        assert!(e.lookup(&cg, "/job", 100).is_some());
        assert!(
            e.lookup(&cg, "/job/child", 100).is_some(),
            "descendants inherit"
        );
        assert!(e.lookup(&cg, "/jobx", 100).is_none());
        assert!(e.lookup(&cg, "/other", 100).is_none());
        assert!(e.lookup(&cg, "/job", 300).is_none(), "expired");
        e.bind(enrollment("/job", id + 1, 200), "j2".into());
        assert!(
            e.lookup(&cg, "/job", 100).is_none(),
            "a recreated cgroup does not inherit"
        );
        assert!(e.revoke("/job").is_some());
        assert!(e.is_empty());
    }

    /// Jobs sharing a cgroup cannot overwrite each other, and revoking does
    /// not free the cgroup for another identity; an administrator's release
    /// does, and so does the binding's expiry.
    #[test]
    fn rebinding_is_refused_while_the_binding_lives() {
        let dir = Dir::new("rebind");
        let cg = Cgroup2::for_tests(&dir.0);
        let id = dir.id("job");
        let e = Enrollments::default();
        let first = enrollment("/job", id, 200);
        assert_eq!(
            e.check(&cg, "/job", id, "iss", &first.identity.claims, "j1", 100),
            Ok(())
        );
        e.bind(first, "j1".into());
        // Another repository, another run: refused, naming what differs.
        for (repo, run, what) in [("evil/x", "1", "repository"), ("acme/api", "2", "run_id")] {
            let c = claims(repo, run, "j9");
            let err = e.check(&cg, "/job", id, "iss", &c, "j9", 100).unwrap_err();
            match &err {
                BindError::Rebind { differs, .. } => assert_eq!(differs, &vec![what.to_string()]),
                other => panic!("{other:?}"),
            }
            assert!(
                err.to_string().contains("enroll --revoke --cgroup /job"),
                "{err}"
            );
            // ... in a child cgroup too.
            let child = dir.id("job/child");
            assert!(
                e.check(&cg, "/job/child", child, "iss", &c, "j9", 100)
                    .is_err()
            );
        }
        // Another issuer with the same claims: refused too.
        let same = claims("acme/api", "1", "j3");
        assert!(
            e.check(&cg, "/job", id, "other-iss", &same, "j3", 100)
                .is_err()
        );
        // A fresh token of the same identity refreshes it.
        assert_eq!(e.check(&cg, "/job", id, "iss", &same, "j3", 100), Ok(()));
        // The workload revokes: unverified now, still bound.
        assert!(e.revoke("/job").is_some());
        assert!(e.lookup(&cg, "/job", 100).is_none());
        assert!(e.lookup(&cg, "/job/child", 100).is_none());
        let evil = claims("evil/x", "1", "j4");
        assert!(e.check(&cg, "/job", id, "iss", &evil, "j4", 100).is_err());
        // It may come back as itself.
        assert_eq!(e.check(&cg, "/job", id, "iss", &same, "j3", 100), Ok(()));
        // Once every token of the binding expired, the cgroup is free.
        assert_eq!(e.check(&cg, "/job", id, "iss", &evil, "j4", 200), Ok(()));
        // A recreated cgroup is another cgroup.
        assert_eq!(
            e.check(&cg, "/job", id + 1, "iss", &evil, "j4", 100),
            Ok(())
        );
        // The administrator's release frees it at once.
        assert!(e.release("/job"));
        assert_eq!(e.check(&cg, "/job", id, "iss", &evil, "j4", 100), Ok(()));
    }

    #[test]
    fn a_token_binds_one_cgroup() {
        let dir = Dir::new("replay");
        let cg = Cgroup2::for_tests(&dir.0);
        let (job, child) = (dir.id("job"), dir.id("job/child"));
        let e = Enrollments::default();
        let t = enrollment("/job/child", child, 200);
        e.bind(t.clone(), "j1".into());
        let err = e
            .check(&cg, "/job", job, "iss", &t.identity.claims, "j1", 100)
            .unwrap_err();
        assert!(matches!(err, BindError::Replayed { .. }), "{err}");
        // The same token for the same cgroup is not a replay.
        assert_eq!(
            e.check(
                &cg,
                "/job/child",
                child,
                "iss",
                &t.identity.claims,
                "j1",
                100
            ),
            Ok(())
        );
        // Another issuer's token with the same jti is another token.
        assert_eq!(
            e.check(&cg, "/job", job, "iss2", &t.identity.claims, "j1", 100),
            Ok(())
        );
        // After it expires, it is forgotten (and refused by the verifier).
        e.prune(200);
        assert_eq!(
            e.check(&cg, "/job", job, "iss", &t.identity.claims, "j1", 200),
            Ok(())
        );
    }

    #[test]
    fn replay_ids() {
        assert_eq!(replay_id(Some("abc"), "t"), "abc");
        let h = replay_id(None, " a.b.c\n");
        assert_eq!(h, replay_id(Some(""), "a.b.c"));
        assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
        assert_ne!(h, replay_id(None, "a.b.d"));
    }

    fn row(
        id: i64,
        status: &str,
        path: &str,
        cgroup_id: u64,
        repo: &str,
        jti: &str,
        exp: i64,
    ) -> EnrollmentRow {
        EnrollmentRow {
            id,
            at: String::new(),
            status: status.into(),
            reason: None,
            cgroup_path: path.into(),
            cgroup_id: cgroup_id as i64,
            pid: None,
            uid: None,
            issuer: Some("iss".into()),
            subject: Some("sub".into()),
            token_id: Some(jti.into()),
            claims: Some(serde_json::to_value(claims(repo, "1", jti)).unwrap()),
            expires_at: Some(exp),
            revoked_at: None,
        }
    }

    /// A restart forgets neither bindings, revoked bindings nor token ids.
    #[test]
    fn restored_from_the_database() {
        let dir = Dir::new("restore");
        let cg = Cgroup2::for_tests(&dir.0);
        let (job, child) = (dir.id("job"), dir.id("job/child"));
        let e = Enrollments::default();
        e.restore(
            &[
                row(3, "revoked", "/job", job, "acme/api", "j2", 200),
                row(1, "replaced", "/job", job, "acme/api", "j1", 150),
                row(4, "active", "/job/child", child, "acme/web", "j3", 200),
                row(5, "released", "/job/child", child, "acme/web", "j4", 200),
                row(6, "rejected", "/other", 1, "x/y", "j5", 200),
                row(7, "active", "/gone", 1, "x/y", "j6", 50),
            ],
            100,
        );
        // /job: revoked, still bound; its token ids are remembered.
        assert!(e.lookup(&cg, "/job", 100).is_none());
        let evil = claims("evil/x", "1", "j9");
        assert!(e.check(&cg, "/job", job, "iss", &evil, "j9", 100).is_err());
        let replay = claims("acme/api", "1", "j1");
        assert!(matches!(
            e.check(&cg, "/job/child", child, "iss", &replay, "j1", 100),
            Err(BindError::Replayed { .. })
        ));
        // /job/child: released by an administrator after it was active.
        assert!(e.lookup(&cg, "/job/child", 100).is_none());
        assert!(e.list(100).is_empty());
        // An active row binds.
        let e = Enrollments::default();
        e.restore(&[row(1, "active", "/job", job, "acme/api", "j1", 200)], 100);
        assert_eq!(
            e.lookup(&cg, "/job/child", 100)
                .map(|x| x.identity.claims["repository"].clone()),
            Some("acme/api".into())
        );
    }

    #[test]
    fn rejections_are_recorded_within_bounds() {
        let l = RejectLimiter::default();
        let t = 6000;
        for _ in 0..RejectLimiter::PER_CGROUP {
            assert_eq!(l.admit("/a", t), Admit::Record { suppressed: 0 });
        }
        assert_eq!(l.admit("/a", t), Admit::Suppress);
        assert_eq!(l.admit("/a", t + 1), Admit::Suppress);
        // Another cgroup is not starved by the first.
        assert_eq!(l.admit("/b", t), Admit::Record { suppressed: 0 });
        // Next window: the count of what was not recorded comes along.
        assert_eq!(
            l.admit("/a", t + RejectLimiter::WINDOW_SECS),
            Admit::Record { suppressed: 2 }
        );
        // The global bound holds whatever the number of cgroups.
        let t = t + 10 * RejectLimiter::WINDOW_SECS;
        let recorded = (0..1000)
            .filter(|i| matches!(l.admit(&format!("/c{i}"), t), Admit::Record { .. }))
            .count();
        assert_eq!(recorded, RejectLimiter::GLOBAL as usize);
    }
}
