//! The attached-uid list kept on disk (`<state_dir>/attached-uids.json`),
//! so `attach --uid` survives a reboot, which empties bpffs. The pinned
//! `IC_UIDS` map is what the kernel reads; this file only feeds it at start.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum UidStoreError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid attached-uid list: {message}")]
    Parse { path: PathBuf, message: String },
    #[error(
        "uid 0 (root) cannot be attached: the daemon runs as root, and so does the host's own plumbing (init, sshd, the runner service); a root process can also detach the programs. Run the agent as a dedicated unprivileged user and attach that uid"
    )]
    Root,
}

/// One attached uid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UidAttachment {
    pub uid: u32,
    /// The user name at attach time (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached_at: Option<String>,
    /// Who attached it (control socket peer uid).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_uid: Option<u32>,
}

/// The name of a uid in the user database, if it has one.
pub fn user_name(uid: u32) -> Option<String> {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// The real uid of a process (what `bpf_get_current_uid_gid` reports for
/// it), from `/proc/PID/status`.
pub fn real_uid_of(pid: u32) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_real_uid(&text)
}

fn parse_real_uid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|u| u.parse().ok())
}

/// Reads the list; a missing file is an empty list.
pub fn load(path: &Path) -> Result<Vec<UidAttachment>, UidStoreError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(UidStoreError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    serde_json::from_str(&text).map_err(|e| UidStoreError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Replaces the list atomically (write a 0600 temp file, fsync, rename).
pub fn save<'a>(
    path: &Path,
    uids: impl Iterator<Item = &'a UidAttachment>,
) -> Result<(), UidStoreError> {
    let list: Vec<&UidAttachment> = uids.collect();
    let io = |source| UidStoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut body = serde_json::to_vec_pretty(&list).map_err(|e| UidStoreError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    body.push(b'\n');
    let tmp = path.with_extension("json.new");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(&body).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_missing_file() {
        let dir = std::env::temp_dir().join(format!("ic-uids-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("attached-uids.json");
        assert!(load(&path).unwrap().is_empty());
        let a = UidAttachment {
            uid: 1001,
            user: Some("agent".into()),
            attached_at: Some("2026-01-01T00:00:00Z".into()),
            by_uid: Some(0),
        };
        let b = UidAttachment {
            uid: 1002,
            user: None,
            attached_at: None,
            by_uid: None,
        };
        save(&path, [&a, &b].into_iter()).unwrap();
        assert_eq!(load(&path).unwrap(), vec![a, b]);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::write(&path, "not json").unwrap();
        assert!(matches!(load(&path), Err(UidStoreError::Parse { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn real_uid_is_the_first_of_four() {
        assert_eq!(
            parse_real_uid("Name:\tx\nUid:\t1001\t0\t0\t0\nGid:\t5\t5\t5\t5\n"),
            Some(1001)
        );
        assert_eq!(parse_real_uid("Name:\tx\n"), None);
        assert_eq!(
            real_uid_of(std::process::id()),
            Some(nix::unistd::getuid().as_raw())
        );
    }

    #[test]
    fn root_has_a_name() {
        assert_eq!(user_name(0).as_deref(), Some("root"));
    }
}
