//! Relaying the rows of one result (masked, counted against a
//! `[[limit]]`, server errors rewritten) and reading results the client
//! must not see, generic over the legs' transports so that it is tested
//! over in-memory streams.
//!
//! # Stopping a result
//!
//! When a row goes past a `[[limit]]` bound, the proxy stops relaying. It
//! cannot ask the server to stop: MySQL has no in-band cancel, and `KILL
//! QUERY` needs a second connection, which the proxy cannot open (it
//! relays authentication and never holds the user's password). So it reads
//! and discards the rest of the result up to its terminator and sends the
//! client one ERR in the terminator's place ([`rows`]); when the response
//! has more results (a multi-statement query, a procedure), the session
//! reads and discards those too ([`drain_result`]), so the client sees
//! exactly one terminating packet and the connection stays in step. What
//! the client receives is bounded; the server's work and the bytes it
//! sends the proxy are not.

use policy::ActiveMasks;
use tokio::io::{AsyncRead, AsyncWrite};

use super::codec::{self, ColumnPlan, is_terminator, status};
use super::error::{CodecError, MysqlError, Side};
use super::results::{self, End, RowCounter};
use super::stream::Leg;

/// Most columns a result set may announce (MySQL's limit is 4096).
pub const MAX_COLUMNS: u64 = 65_535;

/// How to relay one result's rows.
pub struct Relay<'a> {
    /// Binary protocol rows (COM_STMT_EXECUTE, COM_STMT_FETCH).
    pub binary: bool,
    pub deprecate_eof: bool,
    /// Masks for the rows (`None`: rows pass as they are).
    pub masks: Option<&'a ActiveMasks>,
    pub plans: &'a [ColumnPlan],
    /// Detectors for server error messages.
    pub errors: &'a ActiveMasks,
    /// Replaces server error messages (the statement touches masked
    /// columns).
    pub withhold: Option<&'a str>,
    /// For the limit's error message.
    pub session: i64,
}

/// How a relayed result ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetEnd {
    /// Rows relayed to the client.
    pub rows: i64,
    /// The terminator's status flags (0 after an ERR).
    pub status: u16,
    /// The error the client got, for the record.
    pub error: Option<String>,
    /// A `[[limit]]` stopped the result: the client got the limit's ERR.
    pub limited: bool,
}

/// The text of an ERR packet, for the record.
pub fn err_text(p: &[u8]) -> Option<String> {
    if p.first() != Some(&0xff) {
        return None;
    }
    Some(match codec::parse_err(p) {
        Ok(e) => format!(
            "ERROR {}{}: {}",
            e.code,
            e.sqlstate.map(|s| format!(" ({s})")).unwrap_or_default(),
            e.message
        ),
        Err(e) => format!("unreadable ERR packet: {e}"),
    })
}

/// Sends the client the server's ERR `p` (message withheld or through the
/// detectors); returns its text for the record.
pub async fn relay_err<C>(
    client: &mut Leg<C>,
    p: &[u8],
    withhold: Option<&str>,
    errors: &ActiveMasks,
) -> Result<String, MysqlError>
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let rewritten = results::rewrite_err(p, withhold, errors);
    let sent = rewritten.as_deref().unwrap_or(p);
    client.write(sent).await?;
    Ok(err_text(sent).unwrap_or_default())
}

/// The text an ERR the client does not see would have had (for the
/// record: withheld or through the detectors, as if sent).
fn record_err(p: &[u8], withhold: Option<&str>, errors: &ActiveMasks) -> String {
    let rewritten = results::rewrite_err(p, withhold, errors);
    err_text(rewritten.as_deref().unwrap_or(p)).unwrap_or_default()
}

/// Relays rows up to the result's terminator (or an ERR), masking them,
/// and stops the result when a row goes past `counter`'s limit.
pub async fn rows<C, S>(
    client: &mut Leg<C>,
    server: &mut Leg<S>,
    buf: &mut Vec<u8>,
    out: &mut Vec<u8>,
    r: &Relay<'_>,
    counter: &mut RowCounter,
) -> Result<SetEnd, MysqlError>
where
    C: AsyncRead + AsyncWrite + Unpin,
    S: AsyncRead + AsyncWrite + Unpin,
{
    let active = r.masks.filter(|m| r.plans.iter().any(|p| p.active(m)));
    let mut rows = 0i64;
    loop {
        server
            .read_expected(buf, "in the middle of a result set")
            .await?;
        if is_terminator(buf, r.deprecate_eof) {
            client.write(buf).await?;
            let status = codec::terminator_status(buf, r.deprecate_eof)
                .map_err(MysqlError::codec(Side::Server))?;
            return Ok(SetEnd {
                rows,
                status,
                error: None,
                limited: false,
            });
        }
        if buf.first() == Some(&0xff) {
            let error = relay_err(client, buf, r.withhold, r.errors).await?;
            return Ok(SetEnd {
                rows,
                status: 0,
                error: Some(error),
                limited: false,
            });
        }
        if let Some(e) = counter.row(buf.len()) {
            let skipped = skip_rows(server, buf, r.deprecate_eof).await?;
            let p = results::limit_err(&e, r.session);
            client.write(&p).await?;
            return Ok(SetEnd {
                rows,
                status: skipped.status,
                error: err_text(&p),
                limited: true,
            });
        }
        rows += 1;
        let Some(m) = active else {
            client.write(buf).await?;
            continue;
        };
        let changed = if r.binary {
            codec::mask_binary_row(buf, r.plans, m, out)
        } else {
            codec::mask_text_row(buf, r.plans, m, out)
        }
        .map_err(MysqlError::codec(Side::Server))?;
        client.write(if changed { out } else { buf }).await?;
    }
}

/// What [`skip_rows`] read.
struct Skipped {
    rows: i64,
    /// The terminator's status (0 after an ERR).
    status: u16,
    /// The result ended with an ERR (left in the buffer).
    err: bool,
}

/// Reads and discards rows up to the result's terminator or an ERR.
async fn skip_rows<S>(
    server: &mut Leg<S>,
    buf: &mut Vec<u8>,
    deprecate_eof: bool,
) -> Result<Skipped, MysqlError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut rows = 0i64;
    loop {
        server
            .read_expected(buf, "in the middle of a result set")
            .await?;
        if is_terminator(buf, deprecate_eof) {
            let status = codec::terminator_status(buf, deprecate_eof)
                .map_err(MysqlError::codec(Side::Server))?;
            return Ok(Skipped {
                rows,
                status,
                err: false,
            });
        }
        if buf.first() == Some(&0xff) {
            return Ok(Skipped {
                rows,
                status: 0,
                err: true,
            });
        }
        rows += 1;
    }
}

/// One result read and discarded by [`drain_result`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// How it ended; `None`: with an ERR.
    pub end: Option<End>,
    /// Affected rows of an OK, or the rows of a result set.
    pub rows: Option<i64>,
    pub status: u16,
    /// The server's error, as the record keeps it.
    pub error: Option<String>,
}

impl Drained {
    /// Whether more results follow.
    pub fn more(&self) -> bool {
        self.end.is_some() && self.status & status::MORE_RESULTS_EXISTS != 0
    }
}

/// Reads one result the client will not see (the results after one a
/// `[[limit]]` stopped). A LOCAL INFILE request is answered with an empty
/// file, as a client that declines it does. Error texts are rendered for
/// the record as they would have been sent (`withhold`, `errors`).
pub async fn drain_result<S>(
    server: &mut Leg<S>,
    buf: &mut Vec<u8>,
    deprecate_eof: bool,
    binary: bool,
    withhold: Option<&str>,
    errors: &ActiveMasks,
) -> Result<Drained, MysqlError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        server.read_expected(buf, "before answering").await?;
        match buf.first().copied() {
            None => {
                return Err(MysqlError::Codec {
                    side: Side::Server,
                    source: CodecError::malformed("response", "empty packet"),
                });
            }
            Some(0x00) => {
                let ok = codec::parse_ok(buf).map_err(MysqlError::codec(Side::Server))?;
                return Ok(Drained {
                    end: Some(End::Ok),
                    rows: Some(ok.affected_rows as i64),
                    status: ok.status,
                    error: None,
                });
            }
            Some(0xff) => {
                return Ok(Drained {
                    end: None,
                    rows: None,
                    status: 0,
                    error: Some(record_err(buf, withhold, errors)),
                });
            }
            Some(0xfb) => {
                // The file's contents would follow: an empty packet ends it.
                server.write(&[]).await?;
                server.flush().await?;
            }
            Some(_) => {
                let count = codec::Cursor::new(buf)
                    .lenenc("column count")
                    .map_err(MysqlError::codec(Side::Server))?;
                if count == 0 || count > MAX_COLUMNS {
                    return Err(MysqlError::Codec {
                        side: Side::Server,
                        source: CodecError::malformed("column count", count.to_string()),
                    });
                }
                for _ in 0..count {
                    server
                        .read_expected(buf, "in the middle of a result set")
                        .await?;
                }
                if !deprecate_eof {
                    server
                        .read_expected(buf, "in the middle of a result set")
                        .await?;
                    if !is_terminator(buf, false) {
                        return Err(MysqlError::Codec {
                            side: Side::Server,
                            source: CodecError::malformed("result set", "no EOF after the columns"),
                        });
                    }
                    let st = codec::terminator_status(buf, false)
                        .map_err(MysqlError::codec(Side::Server))?;
                    if binary && st & status::CURSOR_EXISTS != 0 {
                        return Ok(Drained {
                            end: Some(End::Set),
                            rows: Some(0),
                            status: st,
                            error: None,
                        });
                    }
                }
                let s = skip_rows(server, buf, deprecate_eof).await?;
                return Ok(Drained {
                    end: (!s.err).then_some(End::Set),
                    rows: Some(s.rows),
                    status: s.status,
                    error: s.err.then(|| record_err(buf, withhold, errors)),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests;
