//! The `postgres` protocol module: a PostgreSQL wire-protocol proxy
//! (protocol 3.0 and 3.2) that judges, records and masks every statement.
//!
//! - [`codec`] — framing, decoders and encoders (fuzzed: `pg_frontend`,
//!   `pg_backend`).
//! - [`session`] — start-up (SSLRequest, GSSENCRequest, CancelRequest),
//!   authentication relay, then the two directions of a session: client
//!   messages are judged and recorded before they go upstream; server
//!   messages are matched to what was sent, masked, and their outcome
//!   recorded.
//! - [`upstream`] — plain and TLS streams, TLS towards the server.
//! - [`mask`] — DataRow, error text and COPY OUT masking.
//! - [`error`] — errors.
//!
//! Refusals never reach the server as the client wrote them: a refused
//! statement is replaced by a placeholder the server rejects with a syntax
//! error (`INTERCEPTOR_REFUSED …`), and that error is rewritten into the
//! refusal (SQLSTATE 42501, naming the rule and the session). So the server
//! stays in step with what the client sees — the transaction is aborted as
//! a real permission error would abort it, an extended-protocol batch is
//! skipped up to Sync — and ReadyForQuery carries the server's own
//! transaction status.

pub mod codec;
pub mod error;
pub mod mask;
pub mod params;
pub mod session;
pub mod upstream;

use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::{Refusal, SessionCtx};

/// Whether this module judges individual commands (false: the connection
/// is judged as a whole, like plain TCP).
pub const JUDGES_COMMANDS: bool = true;

/// Runs one session; returns why it ended.
pub async fn run(ctx: SessionCtx, client: TcpStream, upstream: TcpStream) -> String {
    session::run(ctx, client, upstream).await
}

/// Refuses a connection in the protocol's own terms: reads the start-up
/// packet (answering SSLRequest and GSSENCRequest with `N`), then sends a
/// FATAL ErrorResponse with `message` and closes: SQLSTATE 28000
/// (invalid_authorization_specification) for a denied connection, 53300
/// (too_many_connections) for a session cap, as the server says them.
pub async fn refuse(mut client: TcpStream, why: Refusal, message: &str) {
    let code = match why {
        Refusal::Denied => "28000",
        Refusal::TooManySessions => "53300",
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..3 {
            let Ok(Some(body)) = session::read_startup(&mut client).await else {
                return;
            };
            match codec::decode_startup(&body) {
                Ok(codec::Startup::Ssl | codec::Startup::GssEnc) => {
                    if client.write_all(b"N").await.is_err() {
                        return;
                    }
                }
                Ok(codec::Startup::Message { .. }) => {
                    let e = codec::error_response("FATAL", code, message);
                    let _ = client.write_all(&e).await;
                    let _ = client.shutdown().await;
                    return;
                }
                Ok(codec::Startup::Cancel { .. }) | Err(_) => return,
            }
        }
    })
    .await;
}
