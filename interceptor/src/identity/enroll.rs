//! Verified identities bound to cgroups.
//!
//! `interceptor enroll` (run from inside a workload) hands the daemon a
//! workload-identity token; the daemon verifies it and binds its claims to
//! the caller's cgroup — and so to every process in it or below it — until
//! the token expires or the enrollment is revoked. The binding remembers the
//! cgroup's id: a cgroup deleted and recreated under the same path does not
//! inherit it.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::RwLock;

use crate::redirect::cgroup::Cgroup2;

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

#[derive(Default)]
pub struct Enrollments {
    by_path: RwLock<HashMap<String, Enrollment>>,
}

impl Enrollments {
    pub fn bind(&self, e: Enrollment) {
        if let Ok(mut m) = self.by_path.write() {
            m.insert(e.cgroup_path.clone(), e);
        }
    }

    /// Removes the binding of exactly this cgroup path.
    pub fn revoke(&self, path: &str) -> Option<Enrollment> {
        self.by_path.write().ok()?.remove(path)
    }

    pub fn list(&self, now: u64) -> Vec<Enrollment> {
        let Ok(m) = self.by_path.read() else {
            return Vec::new();
        };
        let mut v: Vec<Enrollment> = m.values().filter(|e| e.expires_at > now).cloned().collect();
        v.sort_by(|a, b| a.cgroup_path.cmp(&b.cgroup_path));
        v
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.read().map(|m| m.is_empty()).unwrap_or(true)
    }

    /// The identity that applies to a process in `cgroup`: the binding of
    /// the cgroup itself or of its nearest enrolled ancestor, if unexpired
    /// and still the same cgroup (same id).
    pub fn lookup(&self, cg: &Cgroup2, cgroup: &str, now: u64) -> Option<Enrollment> {
        let m = self.by_path.read().ok()?;
        if m.is_empty() {
            return None;
        }
        let mut path = cgroup.trim_end_matches('/').to_string();
        loop {
            if let Some(e) = m.get(&path)
                && e.expires_at > now
                && std::fs::metadata(cg.dir(&path))
                    .map(|md| md.ino() == e.cgroup_id)
                    .unwrap_or(false)
            {
                return Some(e.clone());
            }
            match path.rfind('/') {
                Some(0) | None => return None,
                Some(i) => path.truncate(i),
            }
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

    fn enrollment(path: &str, id: u64, exp: u64) -> Enrollment {
        Enrollment {
            cgroup_path: path.into(),
            cgroup_id: id,
            identity: policy::Identity {
                issuer: "iss".into(),
                subject: "sub".into(),
                claims: [("repository".to_string(), "acme/api".to_string())].into(),
            },
            token_id: None,
            expires_at: exp,
            enrolled_at: String::new(),
        }
    }

    #[test]
    fn descendants_inherit_and_ids_must_match() {
        let dir = std::env::temp_dir().join(format!("ic-enroll-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("job/child")).unwrap();
        let cg = Cgroup2::for_tests(&dir);
        let id = std::fs::metadata(dir.join("job")).unwrap().ino();
        let e = Enrollments::default();
        e.bind(enrollment("/job", id, 200));
        assert!(e.lookup(&cg, "/job", 100).is_some());
        assert!(
            e.lookup(&cg, "/job/child", 100).is_some(),
            "descendants inherit"
        );
        assert!(e.lookup(&cg, "/jobx", 100).is_none());
        assert!(e.lookup(&cg, "/other", 100).is_none());
        assert!(e.lookup(&cg, "/job", 300).is_none(), "expired");
        e.bind(enrollment("/job", id + 1, 200));
        assert!(
            e.lookup(&cg, "/job", 100).is_none(),
            "a recreated cgroup does not inherit"
        );
        assert!(e.revoke("/job").is_some());
        assert!(e.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
