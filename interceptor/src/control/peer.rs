//! Who is on the other end of a control or enroll socket connection, pinned
//! to the process rather than to its pid.
//!
//! `SO_PEERCRED` gives the pid of the process that called `connect()`. A pid
//! is only a number: the process may exit right after connecting (connect,
//! fork, parent exits, child sends the request) and the number may name
//! another process by the time the request is read. So the peer is held by a
//! *pidfd*:
//!
//! * `SO_PEERPIDFD` (Linux 6.5+) returns a pidfd for the very process that
//!   connected, taken by the kernel at `connect()`;
//! * on older kernels, `pidfd_open(2)` on the `SO_PEERCRED` pid right after
//!   `accept()`: this leaves a window between `connect()` and `accept()` in
//!   which the connecting process could exit and its pid be reused — rare
//!   (the pid space must wrap in that window), but not impossible, and
//!   documented as such;
//! * without pidfds at all (Linux < 5.3), the bare pid, with the same race
//!   for as long as the connection lives.
//!
//! Reading anything about the peer (`/proc/PID/cgroup`) goes through
//! [`PeerProcess::with_live_pid`]: the pid is read from the pidfd
//! (`/proc/self/fdinfo/FD`, `Pid:`; `-1` once the process has exited), the
//! `/proc` data is read, and then the pidfd must still name a live (or
//! zombie, whose pid cannot be reused yet) process, so what was read belongs
//! to the process that connected. If it is gone, or anything cannot be
//! read, the caller gets an error and must refuse: a peer whose cgroup
//! cannot be established is never treated as "outside".

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::server::Peer;
use crate::redirect::cgroup::{Cgroup2, CgroupError};

/// A control-socket caller established to be outside every attached cgroup
/// (only `Shared::outside_caller` makes one): what every state-changing
/// request takes.
#[derive(Debug, Clone)]
pub struct OutsideCaller {
    peer: Peer,
    cgroup: String,
}

impl OutsideCaller {
    pub(crate) fn new(peer: Peer, cgroup: String) -> OutsideCaller {
        OutsideCaller { peer, cgroup }
    }

    pub fn peer(&self) -> Peer {
        self.peer
    }

    /// The caller's cgroup when it was established.
    pub fn cgroup(&self) -> &str {
        &self.cgroup
    }
}

/// Why the peer's process (or its cgroup) cannot be established.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error(
        "the process that connected (pid {0}) has exited; requests are only taken from the process that opened the connection"
    )]
    Exited(u32),
    #[error(
        "the process that connected has exited; requests are only taken from the process that opened the connection"
    )]
    ExitedUnknownPid,
    #[error("the socket did not say which process connected (no peer pid)")]
    NoPid,
    #[error("cannot read the connecting process's pidfd: {0}")]
    Pidfd(std::io::Error),
    #[error("cannot establish the connecting process's cgroup: {0}")]
    Cgroup(#[from] CgroupError),
}

/// How the peer was pinned (shown in logs and errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PinMethod {
    /// `SO_PEERPIDFD`: the kernel's pidfd of the connecting process.
    PeerPidfd,
    /// `pidfd_open(2)` on the `SO_PEERCRED` pid after `accept()`.
    PidfdOpen,
    /// The `SO_PEERCRED` pid alone.
    Pid,
}

/// The process on the other end of a unix socket.
#[derive(Debug)]
pub struct PeerProcess {
    pidfd: Option<OwnedFd>,
    /// The `SO_PEERCRED` pid (0 or absent when the peer is in a pid
    /// namespace we cannot see).
    cred_pid: Option<u32>,
    method: PinMethod,
}

impl PeerProcess {
    /// Pins the peer of a connected unix socket. `cred_pid` is the
    /// `SO_PEERCRED` pid.
    pub fn pin(sock: &impl AsRawFd, cred_pid: Option<u32>) -> PeerProcess {
        let cred_pid = cred_pid.filter(|&p| p > 0);
        if let Some(fd) = peer_pidfd(sock.as_raw_fd()) {
            return PeerProcess {
                pidfd: Some(fd),
                cred_pid,
                method: PinMethod::PeerPidfd,
            };
        }
        if let Some(pid) = cred_pid
            && let Some(fd) = pidfd_open(pid)
        {
            return PeerProcess {
                pidfd: Some(fd),
                cred_pid,
                method: PinMethod::PidfdOpen,
            };
        }
        PeerProcess {
            pidfd: None,
            cred_pid,
            method: PinMethod::Pid,
        }
    }

    pub fn method(&self) -> PinMethod {
        self.method
    }

    /// The `SO_PEERCRED` pid, for records (not for decisions).
    pub fn cred_pid(&self) -> Option<u32> {
        self.cred_pid
    }

    /// Runs `read` with the peer's pid while it is provably the process that
    /// connected: before, the pidfd must name a live process; after, it
    /// still must (so the pid was not reused in between).
    pub fn with_live_pid<T>(
        &self,
        read: impl FnOnce(u32) -> Result<T, CgroupError>,
    ) -> Result<T, PeerError> {
        let Some(fd) = &self.pidfd else {
            // No pidfd on this kernel: the bare pid (racy, see the module doc).
            let pid = self.cred_pid.ok_or(PeerError::NoPid)?;
            return read(pid).map_err(|e| match e {
                CgroupError::NoSuchProcess(p) => PeerError::Exited(p),
                e => PeerError::Cgroup(e),
            });
        };
        let pid = match pidfd_pid(fd.as_raw_fd()).map_err(PeerError::Pidfd)? {
            Some(p) => p,
            None => {
                return Err(self
                    .cred_pid
                    .map(PeerError::Exited)
                    .unwrap_or(PeerError::ExitedUnknownPid));
            }
        };
        let out = read(pid).map_err(|e| match e {
            CgroupError::NoSuchProcess(p) => PeerError::Exited(p),
            e => PeerError::Cgroup(e),
        })?;
        if !pidfd_alive(fd.as_raw_fd()) {
            return Err(PeerError::Exited(pid));
        }
        Ok(out)
    }

    /// The peer's cgroup (relative path), read while it provably lives.
    pub fn cgroup(&self, cg: &Cgroup2) -> Result<String, PeerError> {
        self.with_live_pid(|pid| cg.of_pid(pid))
    }

    /// The peer's current pid while it lives (for records).
    pub fn pid(&self) -> Result<u32, PeerError> {
        self.with_live_pid(Ok)
    }
}

/// `getsockopt(SO_PEERPIDFD)`; None when the kernel does not have it.
fn peer_pidfd(sock: RawFd) -> Option<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `fd`, an int.
    let r = unsafe {
        libc::getsockopt(
            sock,
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 || fd < 0 {
        return None;
    }
    // SAFETY: the kernel just gave us this descriptor; we own it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `pidfd_open(pid, 0)`; None when it fails (no such process, old kernel).
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    let pid = libc::pid_t::try_from(pid).ok()?;
    // SAFETY: plain syscall with integer arguments.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = RawFd::try_from(fd).ok().filter(|&f| f >= 0)?;
    // SAFETY: the kernel just gave us this descriptor; we own it.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The pid a pidfd refers to, from `/proc/self/fdinfo/FD`; None once the
/// process has exited (the kernel shows `Pid: -1`).
fn pidfd_pid(fd: RawFd) -> std::io::Result<Option<u32>> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    parse_fdinfo_pid(&text).ok_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "no Pid: line in the pidfd's fdinfo",
        )
    })
}

/// `Some(Some(pid))` for a live process, `Some(None)` for an exited one,
/// None when there is no `Pid:` line.
fn parse_fdinfo_pid(text: &str) -> Option<Option<u32>> {
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))?
        .trim()
        .parse::<i64>()
        .ok()?;
    Some(u32::try_from(v).ok().filter(|&p| p > 0))
}

/// Whether the pidfd's process still exists (running or a zombie, whose
/// pid cannot be handed out again yet): `pidfd_send_signal(fd, 0)`.
fn pidfd_alive(fd: RawFd) -> bool {
    // SAFETY: signal 0 only checks; the null siginfo is allowed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd,
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_pid_lines() {
        assert_eq!(
            parse_fdinfo_pid(
                "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nPid:\t4242\nNSpid:\t4242\n"
            ),
            Some(Some(4242))
        );
        assert_eq!(parse_fdinfo_pid("Pid:\t-1\nNSpid:\t-1\n"), Some(None));
        assert_eq!(parse_fdinfo_pid("Pid:\t0\n"), Some(None));
        assert_eq!(parse_fdinfo_pid("pos:\t0\n"), None);
        assert_eq!(parse_fdinfo_pid("Pid:\tx\n"), None);
    }

    #[test]
    fn a_live_peer_is_pinned_and_read() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let p = PeerProcess::pin(&a, Some(std::process::id()));
        assert_ne!(p.method(), PinMethod::Pid, "this kernel has pidfds");
        assert_eq!(p.pid().unwrap(), std::process::id());
    }

    /// A peer that connected and exited is refused, however the request
    /// reached us: the attack is connect, fork, parent exits, child sends.
    #[test]
    fn an_exited_peer_is_refused() {
        let dir = std::env::temp_dir().join(format!("ic-peer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // A child that connects, hands nothing over and exits at once.
        let status = std::process::Command::new("python3")
            .args([
                "-c",
                "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
            ])
            .arg(&path)
            .status();
        let Ok(status) = status else {
            eprintln!("python3 not available; skipping");
            return;
        };
        assert!(status.success());
        let (conn, _) = listener.accept().unwrap();
        let cred_pid =
            nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials)
                .ok()
                .and_then(|c| u32::try_from(c.pid()).ok());
        let p = PeerProcess::pin(&conn, cred_pid);
        assert_eq!(p.method(), PinMethod::PeerPidfd, "kernel 6.5+ expected");
        let e = p.pid().unwrap_err();
        assert!(
            matches!(e, PeerError::Exited(_) | PeerError::ExitedUnknownPid),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
