//! cgroup v2 discovery: where the cgroup2 filesystem is mounted, which cgroup
//! a pid or a systemd unit lives in, and the id ↔ path mapping.
//!
//! A cgroup is named two ways here: by its *path* relative to the cgroup2
//! root (`/system.slice/foo.service`, what `/proc/PID/cgroup` shows and what
//! operators type), and by its *id* (the inode number of its directory, what
//! `bpf_get_current_cgroup_id()` returns in the kernel).

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum CgroupError {
    #[error(
        "no cgroup2 filesystem is mounted (checked /proc/self/mountinfo); mount one, e.g. `mount -t cgroup2 none /sys/fs/cgroup/unified`, or set daemon.cgroup_root"
    )]
    NoCgroup2,
    #[error("{0} is not a cgroup2 mount (daemon.cgroup_root)")]
    NotCgroup2(PathBuf),
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {0} does not exist (looked for directory {1})")]
    NoSuchCgroup(String, PathBuf),
    #[error("invalid cgroup path {0:?}: use a path like /system.slice/foo.service")]
    InvalidPath(String),
    #[error("process {0} does not exist")]
    NoSuchProcess(u32),
    #[error("process {0} is not in a cgroup v2 hierarchy (no `0::` line in /proc/{0}/cgroup)")]
    NoV2Cgroup(u32),
    #[error("no cgroup found for systemd unit {0:?} (searched {1})")]
    NoSuchUnit(String, PathBuf),
}

/// The cgroup2 mount this host uses.
#[derive(Debug, Clone)]
pub struct Cgroup2 {
    mount: PathBuf,
}

impl Cgroup2 {
    /// Finds the cgroup2 mount in /proc/self/mountinfo (`/sys/fs/cgroup` on
    /// unified hosts, `/sys/fs/cgroup/unified` on hybrid ones), or checks
    /// the one given.
    pub fn detect(configured: Option<&Path>) -> Result<Cgroup2, CgroupError> {
        if let Some(p) = configured {
            let st = nix::sys::statfs::statfs(p).map_err(|e| CgroupError::Io {
                path: p.to_path_buf(),
                source: e.into(),
            })?;
            if st.filesystem_type() != nix::sys::statfs::CGROUP2_SUPER_MAGIC {
                return Err(CgroupError::NotCgroup2(p.to_path_buf()));
            }
            return Ok(Cgroup2 {
                mount: p.to_path_buf(),
            });
        }
        let path = Path::new("/proc/self/mountinfo");
        let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
            path: path.into(),
            source,
        })?;
        parse_mountinfo(&text)
            .map(|mount| Cgroup2 { mount })
            .ok_or(CgroupError::NoCgroup2)
    }

    /// A "mount" that is any directory (unit tests).
    #[cfg(test)]
    pub fn for_tests(dir: &Path) -> Cgroup2 {
        Cgroup2 {
            mount: dir.to_path_buf(),
        }
    }

    pub fn mount(&self) -> &Path {
        &self.mount
    }

    /// Directory of a cgroup given by its path relative to the root.
    pub fn dir(&self, cgroup: &str) -> PathBuf {
        self.mount.join(cgroup.trim_start_matches('/'))
    }

    /// Normalises what an operator typed: either a path relative to the
    /// cgroup2 root ("/system.slice/x.service") or an absolute filesystem
    /// path under the mount. Returns the relative form ("/" for the root).
    pub fn normalise(&self, input: &str) -> Result<String, CgroupError> {
        let p = Path::new(input);
        let rel = match p.strip_prefix(&self.mount) {
            Ok(rel) => rel.to_path_buf(),
            Err(_) => PathBuf::from(input.trim_start_matches('/')),
        };
        let mut out = String::new();
        for c in rel.components() {
            match c {
                Component::Normal(s) => {
                    out.push('/');
                    out.push_str(
                        s.to_str()
                            .ok_or_else(|| CgroupError::InvalidPath(input.into()))?,
                    );
                }
                Component::CurDir => {}
                _ => return Err(CgroupError::InvalidPath(input.into())),
            }
        }
        if out.is_empty() {
            out.push('/');
        }
        Ok(out)
    }

    /// The id (directory inode) of a cgroup; errors if it does not exist.
    pub fn id_of(&self, cgroup: &str) -> Result<u64, CgroupError> {
        let dir = self.dir(cgroup);
        let md = std::fs::metadata(&dir)
            .map_err(|_| CgroupError::NoSuchCgroup(cgroup.to_string(), dir.clone()))?;
        if !md.is_dir() || !dir.join("cgroup.procs").exists() {
            return Err(CgroupError::NoSuchCgroup(cgroup.to_string(), dir));
        }
        Ok(md.ino())
    }

    /// The cgroup (relative path) a process is in, from /proc/PID/cgroup.
    pub fn of_pid(&self, pid: u32) -> Result<String, CgroupError> {
        let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = std::fs::read_to_string(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                CgroupError::NoSuchProcess(pid)
            } else {
                CgroupError::Io { path, source: e }
            }
        })?;
        parse_proc_cgroup(&text).ok_or(CgroupError::NoV2Cgroup(pid))
    }

    /// The cgroup of a systemd unit: asks systemd when it runs, otherwise
    /// searches the hierarchy for a directory named after the unit.
    pub fn of_unit(&self, unit: &str) -> Result<String, CgroupError> {
        let unit = if unit.contains('.') {
            unit.to_string()
        } else {
            format!("{unit}.service")
        };
        if let Ok(out) = std::process::Command::new("systemctl")
            .args(["show", "--property=ControlGroup", "--value", &unit])
            .output()
            && out.status.success()
        {
            let cg = String::from_utf8_lossy(&out.stdout).trim().to_string();
            if !cg.is_empty() && self.dir(&cg).is_dir() {
                return Ok(cg);
            }
        }
        self.find_dir_named(&unit)
            .ok_or_else(|| CgroupError::NoSuchUnit(unit.clone(), self.mount.clone()))
    }

    /// Breadth-first search for a directory with this name (depth-limited).
    fn find_dir_named(&self, name: &str) -> Option<String> {
        let mut queue = vec![(self.mount.clone(), 0usize)];
        while let Some((dir, depth)) = queue.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    continue;
                }
                let p = e.path();
                if e.file_name() == name {
                    return p
                        .strip_prefix(&self.mount)
                        .ok()
                        .map(|r| format!("/{}", r.display()));
                }
                if depth < 8 {
                    queue.insert(0, (p, depth + 1));
                }
            }
        }
        None
    }

    /// Finds the path of a cgroup id below `under` (a relative path).
    pub fn path_of_id(&self, id: u64, under: &str) -> Option<String> {
        let root = self.dir(under);
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            let Ok(md) = std::fs::metadata(&dir) else {
                continue;
            };
            if md.ino() == id {
                let rel = dir.strip_prefix(&self.mount).ok()?;
                let s = format!("/{}", rel.display());
                return Some(if s == "/" {
                    s
                } else {
                    s.trim_end_matches('/').into()
                });
            }
            if let Ok(entries) = std::fs::read_dir(&dir) {
                for e in entries.flatten() {
                    if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                        stack.push(e.path());
                    }
                }
            }
        }
        None
    }
}

/// The deepest systemd unit (service or scope) in a cgroup path.
pub fn unit_of(cgroup: &str) -> Option<String> {
    cgroup
        .split('/')
        .rev()
        .find(|c| c.ends_with(".service") || c.ends_with(".scope"))
        .map(str::to_string)
}

/// True when `inner` is `outer` or below it.
pub fn is_within(inner: &str, outer: &str) -> bool {
    if outer == "/" {
        return true;
    }
    inner == outer || (inner.starts_with(outer) && inner.as_bytes().get(outer.len()) == Some(&b'/'))
}

fn parse_mountinfo(text: &str) -> Option<PathBuf> {
    // Fields: id parent major:minor root mountpoint options... - fstype source superopts
    for line in text.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() != Some("cgroup2") {
            continue;
        }
        let mountpoint = left.split_whitespace().nth(4)?;
        return Some(PathBuf::from(unescape_mountinfo(mountpoint)));
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Some(v) = std::str::from_utf8(&b[i + 1..i + 4])
                .ok()
                .and_then(|oct| u8::from_str_radix(oct, 8).ok())
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_proc_cgroup(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| p.trim_end_matches(" (deleted)").to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_hybrid_and_unified_mounts() {
        let hybrid = "25 24 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                      26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev - cgroup2 cgroup2 rw\n\
                      27 25 0:24 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,name=systemd\n";
        assert_eq!(
            parse_mountinfo(hybrid),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "30 24 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            parse_mountinfo(unified),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(parse_mountinfo("1 0 0:1 / / rw - ext4 /dev/vda rw\n"), None);
    }

    #[test]
    fn unescapes_mountpoints() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/trail\\"), "/trail\\");
    }

    #[test]
    fn proc_cgroup_v2_line() {
        let t = "9:name=systemd:/\n4:memory:/x\n0::/system.slice/foo.service\n";
        assert_eq!(
            parse_proc_cgroup(t).as_deref(),
            Some("/system.slice/foo.service")
        );
        assert_eq!(parse_proc_cgroup("4:memory:/x\n"), None);
    }

    #[test]
    fn normalises_paths() {
        let c = Cgroup2 {
            mount: "/sys/fs/cgroup/unified".into(),
        };
        assert_eq!(c.normalise("/sys/fs/cgroup/unified/a/b").unwrap(), "/a/b");
        assert_eq!(c.normalise("/a/b/").unwrap(), "/a/b");
        assert_eq!(c.normalise("a").unwrap(), "/a");
        assert_eq!(c.normalise("/").unwrap(), "/");
        assert!(c.normalise("/a/../b").is_err());
    }

    #[test]
    fn units_and_nesting() {
        assert_eq!(
            unit_of("/system.slice/actions.runner.x.service/job-1").as_deref(),
            Some("actions.runner.x.service")
        );
        assert_eq!(
            unit_of("/user.slice/user-1000.slice/session-3.scope").as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(unit_of("/test-1"), None);
        assert!(is_within("/a/b", "/a"));
        assert!(!is_within("/ab", "/a"));
        assert!(is_within("/a", "/a"));
        assert!(is_within("/x", "/"));
    }
}
