//! TLS on either leg: terminating the client's TLS with a certificate from
//! the local CA, and speaking TLS to the server when it offers it.

use std::net::IpAddr;

use tokio::net::TcpStream;

use super::error::{MysqlError, Side};
use super::stream::Stream;
use crate::daemon::Shared;

/// Completes the client's TLS handshake (after its SSLRequest).
pub async fn accept_client_tls(
    shared: &Shared,
    dst: IpAddr,
    tcp: TcpStream,
) -> Result<Stream, MysqlError> {
    let cfg = shared.tls.server_config(dst).map_err(|e| MysqlError::Tls {
        side: Side::Client,
        message: e.to_string(),
    })?;
    let tls = tokio_rustls::TlsAcceptor::from(cfg)
        .accept(tcp)
        .await
        .map_err(|e| MysqlError::Tls {
            side: Side::Client,
            message: e.to_string(),
        })?;
    Ok(Stream::TlsFromClient(Box::new(tls)))
}

/// Starts TLS to the server (after our SSLRequest), verifying its
/// certificate for `sni` (the name the client asked for) or `dst`.
/// Returns the stream and what was verified, for the record.
pub async fn connect_server_tls(
    shared: &Shared,
    dst: IpAddr,
    sni: Option<&str>,
    tcp: TcpStream,
) -> Result<(Stream, String), MysqlError> {
    let name = crate::proxy::tls::upstream_name(sni, dst);
    let note = crate::proxy::tls::verification_note(shared.config.tls.upstream_verify, &name);
    let tls = tokio_rustls::TlsConnector::from(shared.upstream_tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| MysqlError::Tls {
            side: Side::Server,
            message: format!("TLS to the server failed: {e}"),
        })?;
    Ok((Stream::TlsToServer(Box::new(tls)), note))
}
