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

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::SessionCtx;

/// Whether this module judges individual commands.
pub const JUDGES_COMMANDS: bool = true;

/// Runs one session; returns why it ended.
pub async fn run(ctx: SessionCtx, client: TcpStream, upstream: TcpStream) -> String {
    session::run(ctx, client, upstream).await
}

/// Refuses a connection in the protocol's own terms: an ERR packet in
/// place of the server's handshake (as a server refusing a host does),
/// without SQLSTATE since no capabilities were agreed yet.
pub async fn refuse(mut client: TcpStream, message: &str) {
    let p = codec::err_packet(codec::errcode::ACCESS_DENIED, None, message);
    let mut seq = 0;
    let _ = stream::write_message(&mut client, &mut seq, &p).await;
    let _ = client.flush().await;
    let _ = client.shutdown().await;
}
