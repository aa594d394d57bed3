//! Errors of the PostgreSQL module.

use crate::proxy::limits::OverBudget;
use crate::record::RecordError;

/// A frame or message the codec refuses.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("message {tag:?} of {len} bytes is over the limit of {max} bytes")]
    TooLong { tag: char, len: u64, max: u32 },
    #[error("message {tag:?} has an invalid length field {len}")]
    BadLength { tag: char, len: i64 },
    #[error("connection closed in the middle of a message")]
    Truncated,
    #[error("malformed {what} message: {detail}")]
    Malformed {
        what: &'static str,
        detail: &'static str,
    },
    #[error("invalid UTF-8 in {0}")]
    Utf8(&'static str),
    #[error("startup packet of {0} bytes")]
    StartupLength(u32),
    #[error("unsupported protocol version {major}.{minor}")]
    Version { major: u16, minor: u16 },
    /// Buffering more would exceed the daemon's memory budget.
    #[error("{0}")]
    OverBudget(OverBudget),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl CodecError {
    pub(crate) fn malformed(what: &'static str, detail: &'static str) -> CodecError {
        CodecError::Malformed { what, detail }
    }
}

/// Why a session ended abnormally.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The client sent something the codec refuses.
    #[error("protocol error from the client: {0}")]
    Client(CodecError),
    /// The server sent something the codec refuses.
    #[error("protocol error from the server: {0}")]
    Server(CodecError),
    #[error("client I/O: {0}")]
    ClientIo(std::io::Error),
    #[error("server I/O: {0}")]
    ServerIo(std::io::Error),
    #[error("TLS with the client failed: {0}")]
    ClientTls(std::io::Error),
    #[error("TLS with the server failed: {0}")]
    ServerTls(std::io::Error),
    #[error("TLS configuration: {0}")]
    TlsConfig(String),
    /// The server did something this proxy cannot follow.
    #[error("unexpected server behaviour: {0}")]
    Unexpected(String),
    /// A command could not be recorded: nothing more is forwarded.
    #[error("recording failed, session closed (fail closed): {0}")]
    Record(#[from] RecordError),
    #[error("client timed out during start-up")]
    StartupTimeout,
    /// A message could not be buffered within the daemon's memory budget.
    #[error("{0}")]
    Budget(OverBudget),
}

impl PgError {
    /// Wraps a codec error from the client side (I/O errors stay I/O).
    pub fn client(e: CodecError) -> PgError {
        match e {
            CodecError::Io(io) => PgError::ClientIo(io),
            CodecError::OverBudget(b) => PgError::Budget(b),
            e => PgError::Client(e),
        }
    }

    /// Wraps a codec error from the server side.
    pub fn server(e: CodecError) -> PgError {
        match e {
            CodecError::Io(io) => PgError::ServerIo(io),
            CodecError::OverBudget(b) => PgError::Budget(b),
            e => PgError::Server(e),
        }
    }

    /// The SQLSTATE the client is told when this ends its session.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            // out_of_memory
            PgError::Budget(_) => "53200",
            // protocol_violation
            PgError::Client(_) | PgError::Server(_) | PgError::Unexpected(_) => "08P01",
            // system_error
            PgError::Record(_) => "58000",
            // connection_failure
            _ => "08006",
        }
    }
}
