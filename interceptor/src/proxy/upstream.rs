//! Connecting to the original destination.
//!
//! Every upstream socket carries the daemon's SO_MARK, which the eBPF
//! programs treat as "never redirect": a second guard (besides the daemon
//! running outside attached cgroups) against the proxy intercepting itself.

use std::net::SocketAddr;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("creating socket: {0}")]
    Socket(std::io::Error),
    #[error("setting SO_MARK {mark:#x} (needs CAP_NET_ADMIN): {source}")]
    Mark { mark: u32, source: std::io::Error },
    #[error("connecting to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("connecting to {addr}: timed out after {timeout:?}")]
    Timeout { addr: SocketAddr, timeout: Duration },
}

/// Opens a marked TCP connection to `addr`.
pub async fn connect(
    addr: SocketAddr,
    mark: u32,
    timeout: Duration,
) -> Result<TcpStream, UpstreamError> {
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let sock = Socket::new(
        domain,
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(UpstreamError::Socket)?;
    if mark != 0 {
        sock.set_mark(mark)
            .map_err(|source| UpstreamError::Mark { mark, source })?;
    }
    sock.set_tcp_nodelay(true).map_err(UpstreamError::Socket)?;
    let std_stream: std::net::TcpStream = sock.into();
    let tsock = TcpSocket::from_std_stream(std_stream);
    match tokio::time::timeout(timeout, tsock.connect(addr)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(UpstreamError::Connect { addr, source }),
        Err(_) => Err(UpstreamError::Timeout { addr, timeout }),
    }
}
