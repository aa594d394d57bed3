//! The `postgres` protocol module (not implemented yet: relays as plain TCP).

use tokio::net::TcpStream;

use super::SessionCtx;

/// Whether this module judges individual commands (false: the connection
/// is judged as a whole, like plain TCP).
pub const JUDGES_COMMANDS: bool = false;

/// Runs one session; returns why it ended.
pub async fn run(ctx: SessionCtx, client: TcpStream, upstream: TcpStream) -> String {
    super::tcp::relay(client, upstream, ctx.bytes).await
}

/// Refuses a connection in the protocol's own terms.
pub async fn refuse(client: TcpStream, message: &str) {
    let _ = message;
    drop(client);
}
