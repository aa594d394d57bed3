//! Serving the control socket.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use super::peer::PeerProcess;
use super::{Request, Response};
use crate::daemon::Shared;
use crate::record::store;

/// Longest request line accepted on the control socket.
const MAX_REQUEST: usize = 1 << 20;

/// The enroll socket is world-connectable, so everything about a connection
/// is bounded: its request (a token is at most 32 KiB), how long the
/// request may take to arrive and to be answered, how many connections are
/// served at once, and how many of those one user may hold. Connections
/// beyond the bounds are closed at once, without reading.
const MAX_ENROLL_REQUEST: usize = 64 * 1024;
/// Time for the request line to arrive.
const ENROLL_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for the whole exchange (verification may fetch a JWKS).
const ENROLL_DEADLINE: Duration = Duration::from_secs(30);
/// Connections served at once on the enroll socket.
pub const MAX_ENROLL_CONNECTIONS: usize = 64;
/// Of which one uid may hold.
pub const MAX_ENROLL_CONNECTIONS_PER_UID: usize = 8;

/// Admission to the enroll socket: a global count and one per uid.
#[derive(Default)]
struct Admission {
    counts: Mutex<(usize, HashMap<u32, usize>)>,
}

/// Holds one admitted connection's place; gives it back on drop.
struct Admitted {
    owner: Arc<Admission>,
    uid: u32,
}

impl Admission {
    fn admit(self: &Arc<Self>, uid: u32) -> Option<Admitted> {
        let mut c = self.counts.lock().ok()?;
        let mine = c.1.get(&uid).copied().unwrap_or(0);
        if c.0 >= MAX_ENROLL_CONNECTIONS || mine >= MAX_ENROLL_CONNECTIONS_PER_UID {
            return None;
        }
        c.0 += 1;
        c.1.insert(uid, mine + 1);
        Some(Admitted {
            owner: self.clone(),
            uid,
        })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        if let Ok(mut c) = self.owner.counts.lock() {
            c.0 = c.0.saturating_sub(1);
            if let Some(n) = c.1.get_mut(&self.uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.1.remove(&self.uid);
                }
            }
        }
    }
}

/// The caller, from SO_PEERCRED.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: Option<u32>,
}

/// Creates the socket (replacing a stale file): 0600, 0660 for a control
/// group, 0666 with `world` (the enroll socket).
pub fn bind(path: &Path, group: Option<&str>, world: bool) -> anyhow::Result<UnixListener> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating control socket directory {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another interceptor daemon is already answering on {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    let mode = if world {
        0o666
    } else if let Some(g) = group {
        let grp = nix::unistd::Group::from_name(g)
            .ok()
            .flatten()
            .with_context(|| format!("daemon.control_group: no such group {g:?}"))?;
        nix::unistd::chown(path, None, Some(grp.gid))
            .with_context(|| format!("chown {} to group {g}", path.display()))?;
        0o660
    } else {
        0o600
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", path.display()))?;
    Ok(listener)
}

/// Which requests a socket accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The control socket: everything, authorised per request.
    Control,
    /// The enroll socket (world-connectable): enroll and revoke one's own
    /// cgroup, nothing else.
    Enroll,
}

pub async fn serve(
    listener: UnixListener,
    shared: Arc<Shared>,
    kind: Kind,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let admission = Arc::new(Admission::default());
    let mut refused: u64 = 0;
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let admitted = if kind == Kind::Enroll {
                    let uid = stream.peer_cred().map(|c| c.uid()).ok();
                    match uid.and_then(|u| admission.admit(u)) {
                        Some(a) => Some(a),
                        None => {
                            // Closed unread: a flood costs an accept and a close.
                            refused += 1;
                            if refused.is_power_of_two() {
                                warn!(
                                    refused,
                                    ?uid,
                                    "enroll socket: connection refused (too many at once)"
                                );
                            }
                            continue;
                        }
                    }
                } else {
                    None
                };
                let shared = shared.clone();
                tokio::spawn(async move {
                    let _admitted = admitted;
                    let r = match kind {
                        Kind::Control => connection(stream, shared).await,
                        Kind::Enroll => {
                            match tokio::time::timeout(
                                ENROLL_DEADLINE,
                                enroll_connection(stream, shared),
                            )
                            .await
                            {
                                Ok(r) => r,
                                Err(_) => Err(std::io::Error::new(
                                    std::io::ErrorKind::TimedOut,
                                    "enroll exchange took too long",
                                )),
                            }
                        }
                    };
                    if let Err(e) = r {
                        debug!(error = %e, "control connection ended");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// The peer's credentials and its pinned process.
fn identify(stream: &UnixStream) -> std::io::Result<(Peer, PeerProcess)> {
    let cred = stream.peer_cred()?;
    let peer = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
    };
    let proc = PeerProcess::pin(stream, peer.pid);
    Ok((peer, proc))
}

/// One enroll-socket exchange: one bounded request, one response.
async fn enroll_connection(stream: UnixStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (peer, proc) = identify(&stream)?;
    let (r, mut w) = stream.into_split();
    let mut line = Vec::new();
    let read = tokio::time::timeout(
        ENROLL_READ_TIMEOUT,
        BufReader::new(r)
            .take(MAX_ENROLL_REQUEST as u64 + 1)
            .read_until(b'\n', &mut line),
    )
    .await;
    let resp = match read {
        Err(_) => Response::err("request not received in time"),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(0)) => return Ok(()),
        Ok(Ok(n)) if n > MAX_ENROLL_REQUEST => Response::err(format!(
            "request too large (the enroll socket accepts {MAX_ENROLL_REQUEST} bytes)"
        )),
        Ok(Ok(_)) => match std::str::from_utf8(&line)
            .map_err(|e| e.to_string())
            .and_then(|l| serde_json::from_str::<Request>(l.trim_end()).map_err(|e| e.to_string()))
        {
            Ok(req) => handle_enroll(&shared, peer, &proc, req).await,
            Err(e) => Response::err(format!("malformed request: {e}")),
        },
    };
    let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
    out.push(b'\n');
    w.write_all(&out).await
}

async fn connection(stream: UnixStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let (peer, proc) = identify(&stream)?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r);
    let mut line = String::new();
    loop {
        line.clear();
        let n = (&mut lines)
            .take(MAX_REQUEST as u64 + 1)
            .read_line(&mut line)
            .await?;
        if n == 0 {
            return Ok(());
        }
        let resp = if n > MAX_REQUEST {
            Response::err("request too large")
        } else {
            match serde_json::from_str::<Request>(line.trim_end()) {
                Ok(Request::ApprovalsWatch) if is_admin(&shared, peer) => {
                    return watch(&shared, &mut w).await;
                }
                Ok(req) => handle(&shared, peer, &proc, req).await,
                Err(e) => Response::err(format!("malformed request: {e}")),
            }
        };
        let mut out = serde_json::to_vec(&resp).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        out.push(b'\n');
        w.write_all(&out).await?;
        if n > MAX_REQUEST {
            return Ok(());
        }
    }
}

/// Root, or a member of the configured control group.
pub fn is_admin(shared: &Shared, peer: Peer) -> bool {
    if peer.uid == 0 {
        return true;
    }
    let Some(group) = shared.config.control_group.as_deref() else {
        return false;
    };
    let Ok(Some(g)) = nix::unistd::Group::from_name(group) else {
        return false;
    };
    if g.gid.as_raw() == peer.gid {
        return true;
    }
    let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(peer.uid)) else {
        return false;
    };
    g.mem.contains(&user.name)
}

/// The enroll socket: a workload enrolls or revokes its own cgroup.
async fn handle_enroll(
    shared: &Arc<Shared>,
    peer: Peer,
    proc: &PeerProcess,
    req: Request,
) -> Response {
    match req {
        Request::Ping => Response::ok("pong"),
        Request::Enroll { token } => match shared.enroll(&token, peer, proc).await {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        },
        Request::EnrollRevoke { cgroup: None } => {
            match shared.revoke_own_enrollment(peer, proc).await {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(format!("{e:#}")),
            }
        }
        Request::EnrollRevoke { cgroup: Some(_) } => Response::err(
            "revoking another cgroup's enrollment is for administrators: use the control socket as root",
        ),
        _ => Response::err("the enroll socket only accepts enroll and revoke requests"),
    }
}

/// Whether a request changes what is intercepted, decided or bound (and so
/// must come from outside every attached cgroup).
fn changes_state(req: &Request) -> bool {
    matches!(
        req,
        Request::Attach(_)
            | Request::Detach(_)
            | Request::PolicyReload
            | Request::ApprovalsDecide { .. }
            | Request::EnrollRevoke { cgroup: Some(_) }
    )
}

async fn handle(shared: &Arc<Shared>, peer: Peer, proc: &PeerProcess, req: Request) -> Response {
    // Enrolling and revoking one's own cgroup is open to any caller; the
    // rest is for administrators.
    let admin_only = !matches!(
        req,
        Request::Ping | Request::Enroll { .. } | Request::EnrollRevoke { cgroup: None }
    );
    if admin_only && !is_admin(shared, peer) {
        return Response::err(format!(
            "permission denied: uid {} is neither root nor in daemon.control_group",
            peer.uid
        ));
    }
    // State changes only from outside every attached cgroup, whatever the
    // uid: established from the pinned process, refused when it cannot be.
    let caller = if changes_state(&req) {
        match shared.outside_caller(peer, proc) {
            Ok(c) => Some(c),
            // Re-attaching what is attached loosens nothing.
            Err(_) if matches!(&req, Request::Attach(sel) if shared.already_attached(sel)) => None,
            Err(e) => {
                warn!(uid = peer.uid, pid = ?peer.pid, error = %format!("{e:#}"), "control request refused");
                return Response::err(format!("{e:#}"));
            }
        }
    } else {
        None
    };
    match req {
        Request::Ping => Response::ok("pong"),
        Request::Status => Response::ok(shared.status()),
        Request::Attach(sel) => match shared.attach(&sel, peer).await {
            Ok(r) => Response::ok(r),
            Err(e) => Response::err(format!("{e:#}")),
        },
        Request::Detach(sel) => match shared.detach(&sel).await {
            Ok(r) => Response::ok(r),
            Err(e) => Response::err(format!("{e:#}")),
        },
        Request::AttachUid { user } => match shared.attach_uid(&user, peer) {
            Ok(r) => Response::ok(r),
            Err(e) => Response::err(format!("{e:#}")),
        },
        Request::DetachUid { user } => match shared.detach_uid(&user) {
            Ok(r) => Response::ok(r),
            Err(e) => Response::err(format!("{e:#}")),
        },
        Request::PolicyReload => match shared.reload_policy() {
            Ok(summary) => Response::ok(summary),
            Err(e) => Response::err(format!("{e:#}; the current policy stays in force")),
        },
        Request::ApprovalsList { all, limit } => {
            let rows = store::open_ro(&shared.config.database)
                .map_err(anyhow::Error::from)
                .and_then(|c| Ok(store::list_approvals(&c, all, limit)?));
            match rows {
                Ok(r) => Response::ok(r),
                Err(e) => Response::err(format!("{e:#}")),
            }
        }
        Request::ApprovalsDecide {
            id,
            approve,
            reason,
            scope_minutes,
        } => {
            let Some(caller) = &caller else {
                return Response::err("refused: caller not established");
            };
            match shared
                .decide_approval(id, approve, reason, scope_minutes, caller)
                .await
            {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(format!("{e:#}")),
            }
        }
        Request::ApprovalsWatch => Response::err("permission denied"),
        Request::Enroll { token } => match shared.enroll(&token, peer, proc).await {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        },
        Request::EnrollRevoke { cgroup: None } => {
            match shared.revoke_own_enrollment(peer, proc).await {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(format!("{e:#}")),
            }
        }
        Request::EnrollRevoke { cgroup: Some(c) } => {
            let Some(caller) = &caller else {
                return Response::err("refused: caller not established");
            };
            match shared.release_enrollment(&c, caller).await {
                Ok(v) => Response::ok(v),
                Err(e) => Response::err(format!("{e:#}")),
            }
        }
        Request::WhereIs { pid } => match shared.where_is(pid) {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        },
        Request::EnrollmentsList { all, limit } => {
            let rows = store::open_ro(&shared.config.database)
                .map_err(anyhow::Error::from)
                .and_then(|c| Ok(store::list_enrollments(&c, !all, limit)?));
            match rows {
                Ok(r) => Response::ok(r),
                Err(e) => Response::err(format!("{e:#}")),
            }
        }
    }
}

/// Streams new approval requests to a watcher.
async fn watch(
    shared: &Arc<Shared>,
    w: &mut tokio::net::unix::OwnedWriteHalf,
) -> std::io::Result<()> {
    let mut rx = shared.approvals.subscribe();
    // Confirms the subscription before any request can be missed.
    let mut first = serde_json::to_vec(&Response::ok("watching")).unwrap_or_default();
    first.push(b'\n');
    w.write_all(&first).await?;
    loop {
        match rx.recv().await {
            Ok(req) => {
                let mut out = serde_json::to_vec(&Response::ok(req)).unwrap_or_default();
                out.push(b'\n');
                w.write_all(&out).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                let mut out = serde_json::to_vec(&Response::err(format!(
                    "{n} approval requests were not shown (watcher too slow); run `interceptor approvals list`"
                )))
                .unwrap_or_default();
                out.push(b'\n');
                w.write_all(&out).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
