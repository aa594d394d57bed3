//! The `mysql` protocol module: a MySQL / MariaDB wire-protocol proxy that
//! judges every statement (text protocol, multi-statement strings and
//! prepared statements) before it reaches the server, records it durably,
//! and streams results back row by row with masking applied.
//!
//! Shape (as every protocol module): [`codec`] (framing and messages, pure),
//! [`stream`] (buffered framed I/O per leg), [`session`] (handshake and
//! command loop), [`lexing`] (following how the server reads the session's
//! queries), [`results`] (which statement each result belongs to, what to
//! mask and withhold, `[[limit]]` counting; pure), [`relay`] (relaying and
//! draining rows over any transport), [`upstream`] (TLS on either leg),
//! [`error`].

pub mod codec;
pub mod error;
pub mod lexing;
pub mod relay;
pub mod results;
pub mod session;
pub mod stream;
pub mod upstream;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{Refusal, SessionCtx};

/// Whether this module judges individual commands.
pub const JUDGES_COMMANDS: bool = true;

/// Runs one session; returns why it ended.
pub async fn run(ctx: SessionCtx, client: TcpStream, upstream: TcpStream) -> String {
    session::run(ctx, client, upstream).await
}

/// Refuses a connection in the protocol's own terms: an ERR packet in
/// place of the server's handshake (as a server refusing a host, or one
/// with too many connections, does), without SQLSTATE since no
/// capabilities were agreed yet.
pub async fn refuse(mut client: TcpStream, why: Refusal, message: &str) {
    let code = match why {
        Refusal::Denied => codec::errcode::ACCESS_DENIED,
        Refusal::TooManySessions => codec::errcode::TOO_MANY_CONNECTIONS,
    };
    let _ = send_refusal(&mut client, code, message).await;
    let _ = client.shutdown().await;
}

/// Sends a connection-phase ERR packet (sequence 0, no SQLSTATE).
pub(crate) async fn send_refusal<W: AsyncWrite + Unpin>(
    w: &mut W,
    code: u16,
    message: &str,
) -> std::io::Result<()> {
    let p = codec::err_packet(code, None, message);
    let mut seq = 0;
    stream::write_message(w, &mut seq, &p).await?;
    w.flush().await
}
