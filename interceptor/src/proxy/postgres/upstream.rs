//! Both ends of a session as byte streams (plain or TLS), and the
//! server-side start-up: SSLRequest and TLS towards the server.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::debug;

use super::codec;
use super::error::PgError;
use crate::daemon::Shared;

/// One end of a session.
pub enum Stream {
    Plain(TcpStream),
    /// TLS terminated here (the client's side).
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    /// TLS to the server.
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

pub type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

impl Stream {
    pub fn is_tls(&self) -> bool {
        !matches!(self, Stream::Plain(_))
    }

    /// The socket under the stream (TLS or not).
    pub fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        match self {
            Stream::Plain(t) => t.as_fd(),
            Stream::Server(t) => t.get_ref().0.as_fd(),
            Stream::Client(t) => t.get_ref().0.as_fd(),
        }
    }

    /// The name the client asked for in its TLS handshake (SNI), if any.
    pub fn sni(&self) -> Option<String> {
        match self {
            Stream::Server(t) => t.get_ref().1.server_name().map(str::to_string),
            _ => None,
        }
    }

    /// Read and write halves for the two directions of the session.
    pub fn split(self) -> (BoxRead, BoxWrite) {
        match self {
            Stream::Plain(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Stream::Server(s) => {
                let (r, w) = tokio::io::split(*s);
                (Box::new(r), Box::new(w))
            }
            Stream::Client(s) => {
                let (r, w) = tokio::io::split(*s);
                (Box::new(r), Box::new(w))
            }
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Stream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Terminates the client's TLS (after we answered its SSLRequest with
/// `S`, or on a direct TLS connection when `alpn` is set).
pub async fn accept_tls(
    shared: &Arc<Shared>,
    dst: SocketAddr,
    tcp: TcpStream,
    alpn: bool,
) -> Result<Stream, PgError> {
    let mut cfg = shared
        .tls
        .server_config(dst.ip())
        .map_err(|e| PgError::TlsConfig(e.to_string()))?;
    if alpn {
        // PostgreSQL 17 direct TLS requires the "postgresql" protocol.
        let mut c = (*cfg).clone();
        c.alpn_protocols = vec![b"postgresql".to_vec()];
        cfg = Arc::new(c);
    }
    let tls = tokio_rustls::TlsAcceptor::from(cfg)
        .accept(tcp)
        .await
        .map_err(PgError::ClientTls)?;
    Ok(Stream::Server(Box::new(tls)))
}

/// Asks the server for TLS (SSLRequest): whether it agrees. The
/// handshake waits until the client's own TLS handshake has said which name
/// it wants the server verified for (see [`connect_tls`]).
pub async fn ask_tls(tcp: &mut TcpStream) -> Result<bool, PgError> {
    tcp.write_all(&codec::ssl_request())
        .await
        .map_err(PgError::ServerIo)?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer)
        .await
        .map_err(PgError::ServerIo)?;
    match answer[0] {
        b'S' => Ok(true),
        b'N' => {
            debug!("the server does not offer TLS; plain to the server");
            Ok(false)
        }
        other => Err(PgError::Unexpected(format!(
            "answer {other:#04x} to SSLRequest (expected 'S' or 'N')"
        ))),
    }
}

/// The TLS handshake with the server (after it agreed), verifying its
/// certificate for `sni` (the name the client asked for) or the
/// destination address. Returns the stream and what was verified.
pub async fn connect_tls(
    shared: &Arc<Shared>,
    dst: SocketAddr,
    sni: Option<&str>,
    tcp: TcpStream,
) -> Result<(Stream, String), PgError> {
    let name = crate::proxy::tls::upstream_name(sni, dst.ip());
    let note = crate::proxy::tls::verification_note(shared.config.tls.upstream_verify, &name);
    let tls = tokio_rustls::TlsConnector::from(shared.upstream_tls.clone())
        .connect(name, tcp)
        .await
        .map_err(PgError::ServerTls)?;
    debug!("TLS to the server");
    Ok((Stream::Client(Box::new(tls)), note))
}
