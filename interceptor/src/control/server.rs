//! Serving the control socket.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use super::{Request, Response};
use crate::daemon::Shared;
use crate::record::store;

/// Longest request line accepted.
const MAX_REQUEST: usize = 1 << 20;

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
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(stream, shared, kind).await {
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

async fn connection(stream: UnixStream, shared: Arc<Shared>, kind: Kind) -> std::io::Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer {
        uid: cred.uid(),
        gid: cred.gid(),
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()),
    };
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
                Ok(Request::ApprovalsWatch) if kind == Kind::Control && is_admin(&shared, peer) => {
                    return watch(&shared, &mut w).await;
                }
                Ok(req) if kind == Kind::Enroll => handle_enroll(&shared, peer, req).await,
                Ok(req) => handle(&shared, peer, req).await,
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
async fn handle_enroll(shared: &Arc<Shared>, peer: Peer, req: Request) -> Response {
    match req {
        Request::Ping => Response::ok("pong"),
        Request::Enroll { token } => match shared.enroll(&token, peer).await {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        },
        Request::EnrollRevoke { cgroup: None } => {
            match shared.revoke_enrollment(None, peer).await {
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

async fn handle(shared: &Arc<Shared>, peer: Peer, req: Request) -> Response {
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
        } => match shared
            .decide_approval(id, approve, reason, scope_minutes, peer)
            .await
        {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        },
        Request::ApprovalsWatch => Response::err("permission denied"),
        Request::Enroll { token } => match shared.enroll(&token, peer).await {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(format!("{e:#}")),
        },
        Request::EnrollRevoke { cgroup } => {
            match shared.revoke_enrollment(cgroup.as_deref(), peer).await {
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
