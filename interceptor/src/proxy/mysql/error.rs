//! Errors of the MySQL module.

use super::codec::errcode;
use crate::proxy::limits::OverBudget;
use crate::record::RecordError;

/// Which connection a problem came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

impl std::fmt::Display for Side {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Side::Client => "client",
            Side::Server => "server",
        })
    }
}

/// A packet or message that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("malformed {what}: {why}")]
    Malformed { what: &'static str, why: String },
}

impl CodecError {
    pub fn malformed(what: &'static str, why: impl Into<String>) -> CodecError {
        CodecError::Malformed {
            what,
            why: why.into(),
        }
    }
}

/// Why a session ends abnormally.
#[derive(Debug, thiserror::Error)]
pub enum MysqlError {
    #[error("{side} I/O error: {source}")]
    Io { side: Side, source: std::io::Error },
    #[error("{side} closed the connection {when}")]
    Closed { side: Side, when: &'static str },
    #[error("{side} sent a packet out of order (sequence id {got}, expected {expected})")]
    Sequence { side: Side, expected: u8, got: u8 },
    #[error(
        "{side} sent a {len}-byte message, more than the {max}-byte limit (limits.max_message_bytes; at most 65 KiB before authentication)"
    )]
    TooLarge { side: Side, len: usize, max: usize },
    /// A message from `side` could not be buffered within the daemon's
    /// memory budget.
    #[error("{source} (reading from the {side})")]
    OverBudget { side: Side, source: OverBudget },
    #[error("{side} sent a bad packet: {source}")]
    Codec { side: Side, source: CodecError },
    #[error("TLS with the {side}: {message}")]
    Tls { side: Side, message: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("cannot record: {0}")]
    Record(#[from] RecordError),
}

impl MysqlError {
    pub fn io(side: Side) -> impl FnOnce(std::io::Error) -> MysqlError {
        move |source| MysqlError::Io { side, source }
    }

    pub fn codec(side: Side) -> impl FnOnce(CodecError) -> MysqlError {
        move |source| MysqlError::Codec { side, source }
    }

    /// The error code and SQLSTATE the client is told when this ends its
    /// session.
    pub fn errcode(&self) -> (u16, &'static str) {
        match self {
            MysqlError::OverBudget { .. } => (errcode::OUT_OF_MEMORY, "HY001"),
            MysqlError::TooLarge { .. } => (errcode::NET_PACKET_TOO_LARGE, "08S01"),
            _ => (errcode::UNKNOWN_ERROR, "HY000"),
        }
    }
}
