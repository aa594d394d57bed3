//! Who is on the other end of an intercepted connection.
//!
//! The kernel side records the connecting process's tgid, uid, cgroup id and
//! comm at `connect()` time. Here that becomes a [`policy::Workload`]: the
//! cgroup path and systemd unit, the executable, and (once enrolled) the
//! verified workload-identity token claims bound to the cgroup.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex};

use interceptor_common::Origin;

use crate::redirect::cgroup::{Cgroup2, unit_of};

pub mod enroll;

pub mod jwks;
pub mod token;

/// Maps cgroup ids to paths, learning lazily. Ids are stable for the life of
/// a cgroup; a recreated cgroup gets a new id.
#[derive(Clone, Default)]
pub struct CgroupPaths {
    known: Arc<Mutex<HashMap<u64, String>>>,
}

impl CgroupPaths {
    pub fn remember(&self, id: u64, path: &str) {
        if let Ok(mut m) = self.known.lock() {
            m.insert(id, path.to_string());
        }
    }

    pub fn get(&self, id: u64) -> Option<String> {
        self.known.lock().ok()?.get(&id).cloned()
    }

    /// Resolves an id by searching below the given roots (the attached
    /// cgroups), caching what it finds.
    pub fn resolve(&self, cg: &Cgroup2, id: u64, roots: &[String]) -> Option<String> {
        if let Some(p) = self.get(id) {
            return Some(p);
        }
        let found = roots.iter().find_map(|r| cg.path_of_id(id, r))?;
        self.remember(id, &found);
        Some(found)
    }
}

/// A resolved workload plus the cgroup id it was resolved from.
#[derive(Debug, Clone)]
pub struct ResolvedWorkload {
    pub workload: policy::Workload,
    pub cgroup_id: u64,
}

/// Builds the workload for an origin. The pid's /proc entry is trusted only
/// while the process is still in the cgroup the kernel saw it in: a pid
/// that exited (and perhaps was reused) yields no exe.
pub fn resolve(
    origin: &Origin,
    cg: &Cgroup2,
    paths: &CgroupPaths,
    roots: &[String],
) -> ResolvedWorkload {
    let pid = origin.tgid;
    let comm = comm_str(&origin.comm);
    let from_proc = cg.of_pid(pid).ok().filter(|p| {
        std::fs::metadata(cg.dir(p))
            .map(|m| m.ino() == origin.cgroup_id)
            .unwrap_or(false)
    });
    let exe = from_proc.as_ref().and_then(|_| {
        std::fs::read_link(format!("/proc/{pid}/exe"))
            .ok()
            .map(|p| p.display().to_string())
    });
    let cgroup = match from_proc {
        Some(p) => {
            paths.remember(origin.cgroup_id, &p);
            p
        }
        None => paths
            .resolve(cg, origin.cgroup_id, roots)
            .unwrap_or_else(|| format!("cgroup-id:{}", origin.cgroup_id)),
    };
    ResolvedWorkload {
        workload: policy::Workload {
            unit: unit_of(&cgroup),
            cgroup,
            exe,
            comm: Some(comm),
            uid: Some(origin.uid),
            pid: Some(pid),
            identity: None,
        },
        cgroup_id: origin.cgroup_id,
    }
}

fn comm_str(comm: &[u8; 16]) -> String {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_nul_terminated() {
        let mut c = [0u8; 16];
        c[..4].copy_from_slice(b"psql");
        assert_eq!(comm_str(&c), "psql");
        assert_eq!(comm_str(&[b'a'; 16]), "a".repeat(16));
    }
}
