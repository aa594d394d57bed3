//! The proxy's listening sockets: 127.0.0.1 and ::1 on the proxy port, the
//! addresses the eBPF programs rewrite intercepted connects to.
//!
//! Whoever holds these sockets receives every redirected connection of
//! every attached cgroup, and can ask for cleartext passwords. So no
//! unprivileged process may ever hold them, even while the daemon is down
//! or restarting:
//!
//! - The port must be a privileged one (below
//!   `net.ipv4.ip_unprivileged_port_start`, 1024 unless lowered): only root
//!   or `CAP_NET_BIND_SERVICE` can bind it. A port an unprivileged process
//!   could bind is refused at start-up.
//! - Or the sockets come from systemd socket activation (`LISTEN_FDS`,
//!   `systemd/interceptor.socket`): systemd holds them across restarts, so
//!   nobody else can bind them and connections made while the daemon
//!   restarts wait in the backlog instead of being refused.
//! - Every address the redirect can target must be listening, or the
//!   daemon does not start. The one exception is a host without an IPv6
//!   loopback address (IPv6 disabled on `lo`): nothing can bind `::1`
//!   there, and IPv6 connects the redirect rewrites to it fail closed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::FromRawFd;

use tokio::net::TcpListener;
use tracing::{info, warn};

/// Why the proxy cannot listen safely.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(
        "proxy_port {port} can be bound by an unprivileged process (net.ipv4.ip_unprivileged_port_start = {start}): while the daemon is down any local user could receive every redirected connection; use a port below {start}, or systemd socket activation (interceptor.socket)"
    )]
    Unprivileged { port: u16, start: u32 },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "socket activation: {0} (the sockets must be TCP listeners on 127.0.0.1 and [::1] at the proxy port)"
    )]
    Activation(String),
}

/// The first port an unprivileged process may bind.
fn unprivileged_port_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(1024)
}

/// The listeners for `port`: from systemd socket activation when the
/// daemon was started that way, else bound here (a privileged port only).
pub async fn bind(port: u16) -> Result<Vec<TcpListener>, ListenError> {
    if let Some(fds) = activated_fds()? {
        return activated(fds, port);
    }
    let start = unprivileged_port_start();
    if u32::from(port) >= start {
        return Err(ListenError::Unprivileged { port, start });
    }
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let l4 = TcpListener::bind(v4)
        .await
        .map_err(|source| ListenError::Bind { addr: v4, source })?;
    let mut out = vec![l4];
    let v6 = SocketAddr::from((Ipv6Addr::LOCALHOST, port));
    match bind_v6(v6) {
        Ok(l) => out.push(l),
        Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {
            warn!(
                "no IPv6 loopback address on this host: nothing can listen on [::1]:{port}, and IPv6 connects the redirect rewrites to it are refused"
            );
        }
        Err(source) => return Err(ListenError::Bind { addr: v6, source }),
    }
    Ok(out)
}

fn bind_v6(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::IPV6,
        socket2::Type::STREAM.nonblocking().cloexec(),
        None,
    )?;
    s.set_only_v6(true)?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    TcpListener::from_std(s.into())
}

/// The file descriptors systemd passed (`LISTEN_PID` is this process,
/// `LISTEN_FDS` of them from fd 3), or `None` when not socket-activated.
fn activated_fds() -> Result<Option<Vec<i32>>, ListenError> {
    let (Ok(pid), Ok(n)) = (std::env::var("LISTEN_PID"), std::env::var("LISTEN_FDS")) else {
        return Ok(None);
    };
    if pid.trim() != std::process::id().to_string() {
        return Ok(None);
    }
    let n: i32 = n
        .trim()
        .parse()
        .map_err(|_| ListenError::Activation(format!("LISTEN_FDS={n:?} is not a number")))?;
    // The variables stay: a child (an approval hook) inherits them, but
    // LISTEN_PID names this process only, so they mean nothing to it.
    Ok(Some((3..3 + n.max(0)).collect()))
}

fn activated(fds: Vec<i32>, port: u16) -> Result<Vec<TcpListener>, ListenError> {
    let mut out = Vec::new();
    let mut v4 = false;
    let mut v6 = false;
    for fd in fds {
        // SAFETY: systemd passes these descriptors to this process, which
        // owns them from here on; each is wrapped exactly once.
        let s = unsafe { socket2::Socket::from_raw_fd(fd) };
        let addr = s
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| ListenError::Activation(format!("fd {fd} is not an inet socket")))?;
        if s.r#type().ok() != Some(socket2::Type::STREAM) {
            return Err(ListenError::Activation(format!(
                "fd {fd} ({addr}) is not TCP"
            )));
        }
        if addr.port() != port {
            return Err(ListenError::Activation(format!(
                "fd {fd} listens on port {}, not the proxy port {port}",
                addr.port()
            )));
        }
        match addr.ip() {
            IpAddr::V4(a) if a == Ipv4Addr::LOCALHOST => v4 = true,
            IpAddr::V6(a) if a == Ipv6Addr::LOCALHOST => v6 = true,
            other => {
                return Err(ListenError::Activation(format!(
                    "fd {fd} listens on {other}, not a loopback address"
                )));
            }
        }
        s.set_nonblocking(true)
            .map_err(|e| ListenError::Activation(e.to_string()))?;
        let l =
            TcpListener::from_std(s.into()).map_err(|e| ListenError::Activation(e.to_string()))?;
        out.push(l);
    }
    if !v4 {
        return Err(ListenError::Activation(format!(
            "no socket on 127.0.0.1:{port}"
        )));
    }
    if !v6 && bind_probe_v6_exists() {
        return Err(ListenError::Activation(format!(
            "no socket on [::1]:{port}, and this host has an IPv6 loopback address"
        )));
    }
    info!(
        sockets = out.len(),
        "listening on sockets passed by systemd"
    );
    Ok(out)
}

/// Whether this host has an IPv6 loopback address (a bind to `[::1]:0`
/// succeeds).
fn bind_probe_v6_exists() -> bool {
    std::net::TcpListener::bind(SocketAddr::from((Ipv6Addr::LOCALHOST, 0))).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unprivileged_port_is_refused() {
        let start = unprivileged_port_start();
        if start > 65535 {
            return;
        }
        let e = bind(start as u16).await.unwrap_err();
        assert!(matches!(e, ListenError::Unprivileged { .. }), "{e}");
        assert!(e.to_string().contains("socket activation"));
    }
}
