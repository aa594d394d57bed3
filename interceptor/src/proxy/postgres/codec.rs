//! PostgreSQL wire protocol (3.0 and 3.2): framing, the decoders for the
//! messages the proxy looks into, and the encoders for the messages it
//! writes itself.
//!
//! Every message after start-up is a type byte, a big-endian `i32` length
//! that counts itself but not the type byte, and a body. Start-up packets
//! (StartupMessage, SSLRequest, GSSENCRequest, CancelRequest) have no type
//! byte. The decoders never panic on any input: they return
//! [`CodecError`] (the `pg_frontend` and `pg_backend` fuzz targets hold
//! them to that).

use std::borrow::Cow;

use tokio::io::{AsyncRead, AsyncReadExt};

pub use super::error::CodecError;
use crate::proxy::limits::{self, Held, MemoryBudget, STANDING_BYTES};

/// SSLRequest code (in place of a protocol version).
pub const SSL_REQUEST: u32 = 80_877_103;
/// GSSENCRequest code.
pub const GSSENC_REQUEST: u32 = 80_877_104;
/// CancelRequest code.
pub const CANCEL_REQUEST: u32 = 80_877_102;
/// Longest start-up packet accepted (the server's own limit).
pub const MAX_STARTUP: u32 = 10_000;

/// One complete message.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    /// Type byte.
    pub tag: u8,
    /// Body, after the length field.
    pub body: &'a [u8],
    /// The whole message as on the wire (type, length, body).
    pub raw: &'a [u8],
}

/// Length of the message at the front of `buf`, if its header is there.
/// `Ok(None)`: fewer than 5 bytes buffered.
pub fn frame_len(buf: &[u8], max: u32) -> Result<Option<usize>, CodecError> {
    let Some(hdr) = buf.get(..5) else {
        return Ok(None);
    };
    let tag = hdr[0];
    let len = i32::from_be_bytes([hdr[1], hdr[2], hdr[3], hdr[4]]);
    if len < 4 {
        return Err(CodecError::BadLength {
            tag: tag as char,
            len: len as i64,
        });
    }
    if len as u32 > max {
        return Err(CodecError::TooLong {
            tag: tag as char,
            len: len as u64,
            max,
        });
    }
    Ok(Some(len as usize + 1))
}

/// Splits the message at the front of `buf`: the frame and its wire length,
/// or `Ok(None)` if it is not complete yet.
pub fn split_frame(buf: &[u8], max: u32) -> Result<Option<(Frame<'_>, usize)>, CodecError> {
    let Some(n) = frame_len(buf, max)? else {
        return Ok(None);
    };
    let Some(raw) = buf.get(..n) else {
        return Ok(None);
    };
    Ok(Some((
        Frame {
            tag: raw[0],
            body: &raw[5..],
            raw,
        },
        n,
    )))
}

/// A buffer holding more than this once it is empty gives the memory back.
const KEEP_CAPACITY: usize = 64 * 1024;

/// Reads whole messages from a stream through one growable buffer.
///
/// The buffer grows only as bytes arrive (at most doubling what it holds
/// per step), never to a length a peer announced: a header claiming
/// 64 MiB costs nothing until 64 MiB have been sent. What it holds beyond
/// the standing chunk is charged to the daemon's
/// [`MemoryBudget`](crate::proxy::limits::MemoryBudget); a read that would
/// exceed it fails with [`CodecError::OverBudget`].
///
/// [`next`](Self::next) is cancel-safe (bytes read stay buffered), so it
/// can sit in a `select!`.
pub struct FrameReader<R> {
    inner: R,
    /// `buf[start..]` is read and not consumed yet.
    buf: Vec<u8>,
    start: usize,
    max: u32,
    held: Held,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R, max: u32) -> Self {
        Self::with_buffered(inner, max, Vec::new())
    }

    /// A reader that first yields the bytes in `buffered`.
    pub fn with_buffered(inner: R, max: u32, buffered: Vec<u8>) -> Self {
        Self::with_budget(inner, max, buffered, MemoryBudget::global())
    }

    /// A reader charging its buffer to `budget` (tests; sessions use the
    /// daemon's).
    pub fn with_budget(
        inner: R,
        max: u32,
        mut buf: Vec<u8>,
        budget: &'static MemoryBudget,
    ) -> Self {
        if buf.capacity() > buf.len().max(STANDING_BYTES) {
            buf.shrink_to(STANDING_BYTES);
        }
        let mut held = Held::new(budget);
        // Bytes already read are held whatever the budget says.
        held.set(buf.capacity());
        FrameReader {
            inner,
            buf,
            start: 0,
            max,
            held,
        }
    }

    /// Sets the largest message taken from now on: sessions start with a
    /// small limit and raise it once authenticated.
    pub fn set_max(&mut self, max: u32) {
        self.max = max;
    }

    pub fn max(&self) -> u32 {
        self.max
    }

    /// Bytes of buffer allocated (for tests and accounting).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The stream and the bytes read but not consumed yet.
    pub fn into_parts(self) -> (R, Vec<u8>) {
        let rest = self.buf[self.start..].to_vec();
        (self.inner, rest)
    }

    /// Whether a complete message is buffered (a read would not block).
    pub fn has_frame(&self) -> bool {
        let avail = &self.buf[self.start..];
        matches!(frame_len(avail, self.max), Ok(Some(n)) if n <= avail.len())
    }

    /// Whether any byte is buffered.
    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    /// The next message; `Ok(None)` at a clean end of stream (between
    /// messages). A stream that ends inside a message is
    /// [`CodecError::Truncated`].
    pub async fn next(&mut self) -> Result<Option<Frame<'_>>, CodecError> {
        let Some(n) = self.next_len().await? else {
            return Ok(None);
        };
        let s = self.start;
        self.start += n;
        let raw = &self.buf[s..s + n];
        Ok(Some(Frame {
            tag: raw[0],
            body: &raw[5..],
            raw,
        }))
    }

    /// The next message, and the one after it when that one is already
    /// complete in the buffer (without consuming it): a Parse can then be
    /// recorded together with the parameters of the Bind that follows it.
    pub async fn next_and_peek(
        &mut self,
    ) -> Result<Option<(Frame<'_>, Option<Frame<'_>>)>, CodecError> {
        let Some(n) = self.next_len().await? else {
            return Ok(None);
        };
        let s = self.start;
        self.start += n;
        let rest = &self.buf[self.start..];
        let following = split_frame(rest, self.max).ok().flatten().map(|(f, _)| f);
        let raw = &self.buf[s..s + n];
        let frame = Frame {
            tag: raw[0],
            body: &raw[5..],
            raw,
        };
        Ok(Some((frame, following)))
    }

    /// Waits until a whole message is buffered: its length, or `None` at a
    /// clean end of stream.
    async fn next_len(&mut self) -> Result<Option<usize>, CodecError> {
        if self.start == self.buf.len() {
            self.start = 0;
            self.buf.clear();
            if self.buf.capacity() > KEEP_CAPACITY {
                // Give back the memory of an earlier large message.
                self.buf.shrink_to(STANDING_BYTES);
                self.held.set(self.buf.capacity());
            }
        }
        loop {
            let avail = &self.buf[self.start..];
            match frame_len(avail, self.max)? {
                Some(n) if n <= avail.len() => return Ok(Some(n)),
                need => {
                    let missing = need.unwrap_or(5) - avail.len();
                    if !self.fill(missing).await? {
                        return if self.is_empty() {
                            Ok(None)
                        } else {
                            Err(CodecError::Truncated)
                        };
                    }
                }
            }
        }
    }

    /// The next message as owned bytes (type byte, body).
    pub async fn next_owned(&mut self) -> Result<Option<(u8, Vec<u8>)>, CodecError> {
        Ok(self.next().await?.map(|f| (f.tag, f.body.to_vec())))
    }

    /// Reads more bytes towards a message that lacks `missing` of them;
    /// false at end of stream.
    async fn fill(&mut self, missing: usize) -> Result<bool, CodecError> {
        if self.start > 0 && !limits::has_room(self.buf.len(), self.buf.capacity(), missing) {
            // Move the partial message to the front before growing.
            self.buf.drain(..self.start);
            self.start = 0;
        }
        limits::grow(&mut self.buf, missing, &mut self.held).map_err(CodecError::OverBudget)?;
        let n = self.inner.read_buf(&mut self.buf).await?;
        Ok(n > 0)
    }
}

/// A bounds-checked cursor over a message body.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8], what: &'static str) -> Self {
        Cursor { buf, what }
    }

    fn short(&self) -> CodecError {
        CodecError::malformed(self.what, "shorter than its fields")
    }

    pub fn remaining(&self) -> &'a [u8] {
        self.buf
    }

    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub fn u8(&mut self) -> Result<u8, CodecError> {
        let (&b, rest) = self.buf.split_first().ok_or_else(|| self.short())?;
        self.buf = rest;
        Ok(b)
    }

    pub fn i16(&mut self) -> Result<i16, CodecError> {
        let b = self.bytes(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }

    pub fn i32(&mut self) -> Result<i32, CodecError> {
        let b = self.bytes(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn bytes(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(self.short());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    /// A NUL-terminated string, without the NUL.
    pub fn cstr(&mut self) -> Result<&'a [u8], CodecError> {
        let pos =
            self.buf.iter().position(|&b| b == 0).ok_or_else(|| {
                CodecError::malformed(self.what, "string without its NUL terminator")
            })?;
        let s = &self.buf[..pos];
        self.buf = &self.buf[pos + 1..];
        Ok(s)
    }

    /// A NUL-terminated UTF-8 string.
    pub fn str(&mut self) -> Result<&'a str, CodecError> {
        let what = self.what;
        std::str::from_utf8(self.cstr()?).map_err(|_| CodecError::Utf8(what))
    }

    /// The bytes not read yet (not consumed).
    pub fn rest(&self) -> &'a [u8] {
        self.buf
    }

    pub fn end(&self) -> Result<(), CodecError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(CodecError::malformed(self.what, "trailing bytes"))
        }
    }
}

// ---------------------------------------------------------------- start-up

/// A start-up packet (the first packet of a connection, no type byte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup<'a> {
    Ssl,
    GssEnc,
    /// CancelRequest: the backend process id and secret key, as sent
    /// (4 + 4 bytes in 3.0, 4 + up to 256 bytes in 3.2).
    Cancel {
        key: &'a [u8],
    },
    /// StartupMessage.
    Message {
        major: u16,
        minor: u16,
        params: Vec<(&'a [u8], &'a [u8])>,
    },
}

impl Startup<'_> {
    /// The value of a StartupMessage parameter.
    pub fn param(&self, name: &str) -> Option<Cow<'_, str>> {
        match self {
            Startup::Message { params, .. } => params
                .iter()
                .find(|(k, _)| *k == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v)),
            _ => None,
        }
    }
}

/// Validates a start-up packet's length field (the first 4 bytes).
pub fn startup_len(hdr: [u8; 4]) -> Result<usize, CodecError> {
    let len = u32::from_be_bytes(hdr);
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(CodecError::StartupLength(len));
    }
    Ok(len as usize)
}

/// Decodes a start-up packet body (after the length field).
pub fn decode_startup(body: &[u8]) -> Result<Startup<'_>, CodecError> {
    let mut c = Cursor::new(body, "start-up");
    let code = c.i32()? as u32;
    match code {
        SSL_REQUEST => {
            c.end()?;
            Ok(Startup::Ssl)
        }
        GSSENC_REQUEST => {
            c.end()?;
            Ok(Startup::GssEnc)
        }
        CANCEL_REQUEST => {
            let key = c.remaining();
            if !(8..=4 + 256).contains(&key.len()) {
                return Err(CodecError::malformed(
                    "CancelRequest",
                    "key of an invalid length",
                ));
            }
            Ok(Startup::Cancel { key })
        }
        version => {
            let (major, minor) = ((version >> 16) as u16, (version & 0xffff) as u16);
            if major != 3 {
                return Err(CodecError::Version { major, minor });
            }
            let mut params = Vec::new();
            loop {
                let k = c.cstr()?;
                if k.is_empty() {
                    break;
                }
                let v = c.cstr()?;
                params.push((k, v));
            }
            c.end()?;
            Ok(Startup::Message {
                major,
                minor,
                params,
            })
        }
    }
}

// ---------------------------------------------------------------- frontend

/// A frontend (client) message, decoded as far as the proxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frontend<'a> {
    /// The query bytes, in the session's client encoding (decoded by the
    /// session, which knows the encoding).
    Query(&'a [u8]),
    Parse {
        name: &'a [u8],
        query: &'a [u8],
        /// Parameter type OIDs (4 bytes each; 0 = unspecified).
        types: &'a [u8],
    },
    Bind {
        portal: &'a [u8],
        statement: &'a [u8],
        /// Everything after the two names: parameter formats, values and
        /// result formats (see [`bind_values`]).
        args: &'a [u8],
    },
    Execute {
        portal: &'a [u8],
        max_rows: i32,
    },
    /// `kind` is `b'S'` (statement) or `b'P'` (portal).
    Describe {
        kind: u8,
        name: &'a [u8],
    },
    Close {
        kind: u8,
        name: &'a [u8],
    },
    Sync,
    Flush,
    Terminate,
    CopyData,
    CopyDone,
    CopyFail,
    FunctionCall {
        oid: u32,
    },
    /// PasswordMessage / SASLInitialResponse / SASLResponse / GSSResponse
    /// (their meaning depends on the authentication exchange).
    Password,
}

/// Decodes a frontend message (after start-up).
pub fn decode_frontend(f: Frame<'_>) -> Result<Frontend<'_>, CodecError> {
    match f.tag {
        b'Q' => {
            let mut c = Cursor::new(f.body, "Query");
            let q = c.cstr()?;
            c.end()?;
            Ok(Frontend::Query(q))
        }
        b'P' => {
            let mut c = Cursor::new(f.body, "Parse");
            let name = c.cstr()?;
            let query = c.cstr()?;
            let n = c.i16()?;
            if n < 0 {
                return Err(CodecError::malformed("Parse", "negative parameter count"));
            }
            let types = c.bytes(n as usize * 4)?;
            c.end()?;
            Ok(Frontend::Parse { name, query, types })
        }
        b'B' => {
            let mut c = Cursor::new(f.body, "Bind");
            let portal = c.cstr()?;
            let statement = c.cstr()?;
            let args = c.rest();
            let nfmt = c.i16()?;
            if nfmt < 0 {
                return Err(CodecError::malformed("Bind", "negative format count"));
            }
            c.bytes(nfmt as usize * 2)?;
            let nparams = c.i16()?;
            if nparams < 0 {
                return Err(CodecError::malformed("Bind", "negative parameter count"));
            }
            for _ in 0..nparams {
                let len = c.i32()?;
                if len < -1 {
                    return Err(CodecError::malformed("Bind", "negative parameter length"));
                }
                if len > 0 {
                    c.bytes(len as usize)?;
                }
            }
            let nres = c.i16()?;
            if nres < 0 {
                return Err(CodecError::malformed(
                    "Bind",
                    "negative result format count",
                ));
            }
            c.bytes(nres as usize * 2)?;
            c.end()?;
            Ok(Frontend::Bind {
                portal,
                statement,
                args,
            })
        }
        b'E' => {
            let mut c = Cursor::new(f.body, "Execute");
            let portal = c.cstr()?;
            let max_rows = c.i32()?;
            c.end()?;
            Ok(Frontend::Execute { portal, max_rows })
        }
        b'D' | b'C' => {
            let what = if f.tag == b'D' { "Describe" } else { "Close" };
            let mut c = Cursor::new(f.body, what);
            let kind = c.u8()?;
            if kind != b'S' && kind != b'P' {
                return Err(CodecError::malformed(what, "kind is neither 'S' nor 'P'"));
            }
            let name = c.cstr()?;
            c.end()?;
            Ok(if f.tag == b'D' {
                Frontend::Describe { kind, name }
            } else {
                Frontend::Close { kind, name }
            })
        }
        b'S' | b'H' | b'X' | b'c' => {
            if !f.body.is_empty() {
                return Err(CodecError::malformed(
                    "Sync/Flush/Terminate",
                    "non-empty body",
                ));
            }
            Ok(match f.tag {
                b'S' => Frontend::Sync,
                b'H' => Frontend::Flush,
                b'X' => Frontend::Terminate,
                _ => Frontend::CopyDone,
            })
        }
        b'd' => Ok(Frontend::CopyData),
        b'f' => {
            let mut c = Cursor::new(f.body, "CopyFail");
            c.cstr()?;
            c.end()?;
            Ok(Frontend::CopyFail)
        }
        b'F' => {
            let mut c = Cursor::new(f.body, "FunctionCall");
            let oid = c.i32()? as u32;
            Ok(Frontend::FunctionCall { oid })
        }
        b'p' => Ok(Frontend::Password),
        _ => Err(CodecError::malformed("frontend", "unknown message type")),
    }
}

/// SASLInitialResponse: the mechanism and the client-first message.
pub fn decode_sasl_initial(body: &[u8]) -> Result<(&[u8], Option<&[u8]>), CodecError> {
    let mut c = Cursor::new(body, "SASLInitialResponse");
    let mech = c.cstr()?;
    let len = c.i32()?;
    let data = if len < 0 {
        None
    } else {
        Some(c.bytes(len as usize)?)
    };
    c.end()?;
    Ok((mech, data))
}

// ---------------------------------------------------------------- backend

/// Authentication request code of an `R` message.
pub fn auth_code(body: &[u8]) -> Result<i32, CodecError> {
    Cursor::new(body, "Authentication").i32()
}

/// The mechanisms of an AuthenticationSASL (`R`, code 10) body.
pub fn sasl_mechanisms(body: &[u8]) -> Result<Vec<&[u8]>, CodecError> {
    let mut c = Cursor::new(body, "AuthenticationSASL");
    if c.i32()? != 10 {
        return Err(CodecError::malformed("AuthenticationSASL", "not code 10"));
    }
    let mut out = Vec::new();
    loop {
        let m = c.cstr()?;
        if m.is_empty() {
            break;
        }
        out.push(m);
    }
    c.end()?;
    Ok(out)
}

/// An AuthenticationSASL message offering `mechs`.
pub fn auth_sasl(mechs: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    message(&mut out, b'R', |b| {
        b.extend_from_slice(&10i32.to_be_bytes());
        for m in mechs {
            b.extend_from_slice(m);
            b.push(0);
        }
        b.push(0);
    });
    out
}

/// ReadyForQuery transaction status (`I`, `T` or `E`).
pub fn ready_status(body: &[u8]) -> Result<u8, CodecError> {
    match body {
        [s @ (b'I' | b'T' | b'E')] => Ok(*s),
        _ => Err(CodecError::malformed(
            "ReadyForQuery",
            "status is not I, T or E",
        )),
    }
}

/// One bound parameter: its format (0 text, 1 binary) and value (`None`
/// is SQL NULL).
pub type BindValue<'a> = (i16, Option<&'a [u8]>);

/// A Bind's parameter values.
pub fn bind_values(args: &[u8]) -> Result<Vec<BindValue<'_>>, CodecError> {
    let mut c = Cursor::new(args, "Bind");
    let nfmt = c.i16()?;
    if nfmt < 0 {
        return Err(CodecError::malformed("Bind", "negative format count"));
    }
    let mut formats = Vec::with_capacity(nfmt as usize);
    for _ in 0..nfmt {
        formats.push(c.i16()?);
    }
    let n = c.i16()?;
    if n < 0 {
        return Err(CodecError::malformed("Bind", "negative parameter count"));
    }
    let mut out = Vec::with_capacity(n as usize);
    for i in 0..n as usize {
        let fmt = match formats.len() {
            0 => 0,
            1 => formats[0],
            _ => *formats
                .get(i)
                .ok_or_else(|| CodecError::malformed("Bind", "fewer formats than parameters"))?,
        };
        let len = c.i32()?;
        let v = match len {
            -1 => None,
            l if l < -1 => return Err(CodecError::malformed("Bind", "negative parameter length")),
            l => Some(c.bytes(l as usize)?),
        };
        out.push((fmt, v));
    }
    Ok(out)
}

/// ParameterStatus: the parameter's name and value.
pub fn parameter_status(body: &[u8]) -> Result<(&[u8], &[u8]), CodecError> {
    let mut c = Cursor::new(body, "ParameterStatus");
    let name = c.cstr()?;
    let value = c.cstr()?;
    c.end()?;
    Ok((name, value))
}

/// One RowDescription field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDesc<'a> {
    pub name: &'a [u8],
    pub type_oid: u32,
    pub type_len: i16,
    pub format: i16,
}

/// The fields of a RowDescription body.
pub fn row_description(body: &[u8]) -> Result<Vec<FieldDesc<'_>>, CodecError> {
    let mut c = Cursor::new(body, "RowDescription");
    let n = c.i16()?;
    if n < 0 {
        return Err(CodecError::malformed(
            "RowDescription",
            "negative field count",
        ));
    }
    let mut out = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let name = c.cstr()?;
        let _table = c.i32()?;
        let _col = c.i16()?;
        let type_oid = c.i32()? as u32;
        let type_len = c.i16()?;
        let _typmod = c.i32()?;
        let format = c.i16()?;
        out.push(FieldDesc {
            name,
            type_oid,
            type_len,
            format,
        });
    }
    c.end()?;
    Ok(out)
}

/// Iterates the values of a DataRow body (`None` is SQL NULL).
pub struct DataRowIter<'a> {
    c: Cursor<'a>,
    left: i16,
}

impl<'a> DataRowIter<'a> {
    pub fn new(body: &'a [u8]) -> Result<Self, CodecError> {
        let mut c = Cursor::new(body, "DataRow");
        let left = c.i16()?;
        if left < 0 {
            return Err(CodecError::malformed("DataRow", "negative column count"));
        }
        Ok(DataRowIter { c, left })
    }

    /// Number of columns.
    pub fn len(&self) -> usize {
        self.left as usize
    }

    pub fn is_empty(&self) -> bool {
        self.left == 0
    }

    /// The next value; `Ok(None)` after the last one (and the body must
    /// end there).
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> Result<Option<Option<&'a [u8]>>, CodecError> {
        if self.left == 0 {
            self.c.end()?;
            return Ok(None);
        }
        self.left -= 1;
        let len = self.c.i32()?;
        if len == -1 {
            return Ok(Some(None));
        }
        if len < 0 {
            return Err(CodecError::malformed("DataRow", "negative value length"));
        }
        Ok(Some(Some(self.c.bytes(len as usize)?)))
    }
}

/// The command tag of a CommandComplete body.
pub fn command_tag(body: &[u8]) -> Result<&str, CodecError> {
    let mut c = Cursor::new(body, "CommandComplete");
    let t = c.str()?;
    c.end()?;
    Ok(t)
}

/// Rows affected or returned, from a command tag (`SELECT 5`,
/// `INSERT 0 3`, `UPDATE 2`, `COPY 10`, ...).
pub fn tag_rows(tag: &str) -> Option<i64> {
    let mut words = tag.split(' ');
    let first = words.next()?;
    match first {
        "SELECT" | "INSERT" | "UPDATE" | "DELETE" | "MERGE" | "COPY" | "FETCH" | "MOVE" => {
            tag.rsplit(' ').next()?.parse().ok()
        }
        _ => None,
    }
}

/// The fields of an ErrorResponse or NoticeResponse body.
pub fn error_fields(body: &[u8]) -> Result<Vec<(u8, &[u8])>, CodecError> {
    let mut c = Cursor::new(body, "ErrorResponse");
    let mut out = Vec::new();
    loop {
        let code = c.u8()?;
        if code == 0 {
            break;
        }
        out.push((code, c.cstr()?));
    }
    c.end()?;
    Ok(out)
}

/// One field of an ErrorResponse (`b'C'` SQLSTATE, `b'M'` message, ...).
pub fn error_field<'a>(fields: &[(u8, &'a [u8])], code: u8) -> Option<Cow<'a, str>> {
    fields
        .iter()
        .find(|(c, _)| *c == code)
        .map(|(_, v)| String::from_utf8_lossy(v))
}

/// BackendKeyData: the cancel key (process id and secret, as sent).
pub fn backend_key(body: &[u8]) -> Result<&[u8], CodecError> {
    if !(8..=4 + 256).contains(&body.len()) {
        return Err(CodecError::malformed(
            "BackendKeyData",
            "key of an invalid length",
        ));
    }
    Ok(body)
}

/// The format of a CopyOutResponse / CopyInResponse: 0 textual, 1 binary.
pub fn copy_format(body: &[u8]) -> Result<u8, CodecError> {
    Cursor::new(body, "CopyResponse").u8()
}

/// A CopyOutResponse / CopyInResponse / CopyBothResponse body: the overall
/// format (0 textual, 1 binary) and each column's format (0 or 1).
pub fn copy_response(body: &[u8]) -> Result<(u8, Vec<i16>), CodecError> {
    let mut c = Cursor::new(body, "CopyResponse");
    let overall = c.u8()?;
    if overall > 1 {
        return Err(CodecError::malformed(
            "CopyResponse",
            "format is neither 0 nor 1",
        ));
    }
    let n = c.i16()?;
    if n < 0 || c.remaining().len() != n as usize * 2 {
        return Err(CodecError::malformed(
            "CopyResponse",
            "column count does not match the formats that follow",
        ));
    }
    let mut formats = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let f = c.i16()?;
        if f != 0 && f != 1 {
            return Err(CodecError::malformed(
                "CopyResponse",
                "column format is neither 0 nor 1",
            ));
        }
        formats.push(f);
    }
    Ok((overall, formats))
}

/// Decodes a backend message far enough to validate it (what the proxy
/// reads of each type). For the fuzz target and tests.
pub fn check_backend(f: Frame<'_>) -> Result<(), CodecError> {
    match f.tag {
        b'R' => {
            let code = auth_code(f.body)?;
            if code == 10 {
                sasl_mechanisms(f.body)?;
            }
        }
        b'Z' => {
            ready_status(f.body)?;
        }
        b'T' => {
            row_description(f.body)?;
        }
        b'D' => {
            let mut it = DataRowIter::new(f.body)?;
            while it.next()?.is_some() {}
        }
        b'C' => {
            tag_rows(command_tag(f.body)?);
        }
        b'E' | b'N' => {
            error_fields(f.body)?;
        }
        b'K' => {
            backend_key(f.body)?;
        }
        b'H' | b'G' | b'W' => {
            copy_response(f.body)?;
        }
        b'A' => {
            let mut c = Cursor::new(f.body, "NotificationResponse");
            c.i32()?;
            c.cstr()?;
            c.cstr()?;
            c.end()?;
        }
        _ => {}
    }
    Ok(())
}

// ---------------------------------------------------------------- encoders

/// Appends a message: type byte, length, then what `body` writes.
pub fn message(out: &mut Vec<u8>, tag: u8, body: impl FnOnce(&mut Vec<u8>)) {
    let at = out.len();
    out.push(tag);
    out.extend_from_slice(&[0; 4]);
    body(out);
    let len = (out.len() - at - 1) as u32;
    out[at + 1..at + 5].copy_from_slice(&len.to_be_bytes());
}

fn put_cstr(b: &mut Vec<u8>, s: &[u8]) {
    // A NUL inside would end the string early on the other side.
    b.extend(s.iter().map(|&c| if c == 0 { b' ' } else { c }));
    b.push(0);
}

/// An ErrorResponse (or NoticeResponse with `tag = b'N'`).
pub fn error_response(severity: &str, code: &str, message_text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(32 + message_text.len());
    message(&mut out, b'E', |b| {
        b.push(b'S');
        put_cstr(b, severity.as_bytes());
        b.push(b'V');
        put_cstr(b, severity.as_bytes());
        b.push(b'C');
        put_cstr(b, code.as_bytes());
        b.push(b'M');
        put_cstr(b, message_text.as_bytes());
        b.push(0);
    });
    out
}

/// Rewrites the fields of an ErrorResponse/NoticeResponse body with `f`
/// (which returns a replacement for a field's value, or `None`).
pub fn rewrite_error_fields(
    tag: u8,
    body: &[u8],
    mut f: impl FnMut(u8, &[u8]) -> Option<Vec<u8>>,
) -> Result<Option<Vec<u8>>, CodecError> {
    let fields = error_fields(body)?;
    let mut changed = false;
    let mut out = Vec::with_capacity(body.len() + 16);
    message(&mut out, tag, |b| {
        for (code, v) in &fields {
            b.push(*code);
            match f(*code, v) {
                Some(new) => {
                    changed = true;
                    put_cstr(b, &new);
                }
                None => put_cstr(b, v),
            }
        }
        b.push(0);
    });
    Ok(changed.then_some(out))
}

/// A Query message.
pub fn query(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 6);
    message(&mut out, b'Q', |b| put_cstr(b, text.as_bytes()));
    out
}

/// A Parse message without parameter types.
pub fn parse(name: &[u8], text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + name.len() + 9);
    message(&mut out, b'P', |b| {
        put_cstr(b, name);
        put_cstr(b, text.as_bytes());
        b.extend_from_slice(&0i16.to_be_bytes());
    });
    out
}

/// Describe of a portal.
pub fn describe_portal(out: &mut Vec<u8>, name: &[u8]) {
    message(out, b'D', |b| {
        b.push(b'P');
        put_cstr(b, name);
    });
}

/// An SSLRequest packet.
pub fn ssl_request() -> [u8; 8] {
    let mut p = [0u8; 8];
    p[..4].copy_from_slice(&8u32.to_be_bytes());
    p[4..].copy_from_slice(&SSL_REQUEST.to_be_bytes());
    p
}

/// A start-up packet carrying `body` (length prepended).
pub fn startup_packet(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.extend_from_slice(&((body.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        message(&mut out, tag, |b| b.extend_from_slice(body));
        out
    }

    #[test]
    fn splits_frames_and_refuses_bad_lengths() {
        let mut buf = frame(b'Q', b"SELECT 1\0");
        buf.extend(frame(b'S', b""));
        let (f, n) = split_frame(&buf, 1024).unwrap().unwrap();
        assert_eq!((f.tag, f.body), (b'Q', &b"SELECT 1\0"[..]));
        assert_eq!(decode_frontend(f).unwrap(), Frontend::Query(b"SELECT 1"));
        let (f, m) = split_frame(&buf[n..], 1024).unwrap().unwrap();
        assert_eq!(decode_frontend(f).unwrap(), Frontend::Sync);
        assert_eq!(n + m, buf.len());
        // Truncated: not complete yet.
        assert!(split_frame(&buf[..n - 1], 1024).unwrap().is_none());
        assert!(split_frame(&buf[..3], 1024).unwrap().is_none());
        // A length below 4 and one past the limit are errors.
        assert!(matches!(
            split_frame(&[b'Q', 0, 0, 0, 3], 1024),
            Err(CodecError::BadLength { .. })
        ));
        assert!(matches!(
            split_frame(&[b'Q', 0xff, 0xff, 0xff, 0xff], 1024),
            Err(CodecError::BadLength { .. })
        ));
        assert!(matches!(
            split_frame(&[b'Q', 0, 1, 0, 0], 1024),
            Err(CodecError::TooLong { .. })
        ));
    }

    #[test]
    fn refuses_malformed_frontend_messages() {
        let bad: &[(u8, &[u8])] = &[
            (b'Q', b"SELECT 1"),                        // no NUL
            (b'Q', b"SELECT 1\0junk"),                  // trailing bytes
            (b'P', b"s\0SELECT 1\0"),                   // missing parameter count
            (b'P', b"s\0SELECT 1\0\xff\xff"),           // negative count
            (b'P', b"s\0SELECT 1\0\0\x02\0\0\0\x17"),   // 2 types, 1 present
            (b'B', b"\0s\0\0\0\0\x01\0\0\0\x09ab\0\0"), // param longer than body
            (b'E', b"p\0\0\0"),
            (b'D', b"Xname\0"),
            (b'C', b"S"),
            (b'S', b"x"),
            (b'?', b""),
        ];
        for (tag, body) in bad {
            let buf = frame(*tag, body);
            let (f, _) = split_frame(&buf, 1 << 20).unwrap().unwrap();
            assert!(
                decode_frontend(f).is_err(),
                "{:?} {:?} should be refused",
                *tag as char,
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn decodes_extended_protocol_messages() {
        let buf = frame(b'P', b"s1\0SELECT $1\0\0\x01\0\0\0\x17");
        let (f, _) = split_frame(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!(
            decode_frontend(f).unwrap(),
            Frontend::Parse {
                name: b"s1",
                query: b"SELECT $1",
                types: b"\0\0\0\x17",
            }
        );
        let buf = frame(b'B', b"p\0s1\0\0\x01\0\x00\0\x01\0\0\0\x0242\0\x01\0\x01");
        let (f, _) = split_frame(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!(
            decode_frontend(f).unwrap(),
            Frontend::Bind {
                portal: b"p",
                statement: b"s1",
                args: b"\0\x01\0\x00\0\x01\0\0\0\x0242\0\x01\0\x01",
            }
        );
        let Frontend::Bind { args, .. } = decode_frontend(f).unwrap() else {
            unreachable!()
        };
        assert_eq!(bind_values(args).unwrap(), vec![(0, Some(&b"42"[..]))]);
        let buf = frame(b'E', b"p\0\0\0\0\x0a");
        let (f, _) = split_frame(&buf, 1 << 20).unwrap().unwrap();
        assert_eq!(
            decode_frontend(f).unwrap(),
            Frontend::Execute {
                portal: b"p",
                max_rows: 10
            }
        );
    }

    #[test]
    fn decodes_startup_packets() {
        assert_eq!(
            decode_startup(&SSL_REQUEST.to_be_bytes()).unwrap(),
            Startup::Ssl
        );
        assert_eq!(
            decode_startup(&GSSENC_REQUEST.to_be_bytes()).unwrap(),
            Startup::GssEnc
        );
        let mut cancel = CANCEL_REQUEST.to_be_bytes().to_vec();
        cancel.extend_from_slice(&[0, 0, 0, 7, 1, 2, 3, 4]);
        assert_eq!(
            decode_startup(&cancel).unwrap(),
            Startup::Cancel {
                key: &[0, 0, 0, 7, 1, 2, 3, 4]
            }
        );
        // 3.2: a longer key.
        cancel.extend_from_slice(&[9; 28]);
        assert!(matches!(
            decode_startup(&cancel).unwrap(),
            Startup::Cancel { key } if key.len() == 36
        ));
        let mut m = 196608u32.to_be_bytes().to_vec();
        m.extend_from_slice(b"user\0alice\0database\0db\0\0");
        let s = decode_startup(&m).unwrap();
        assert_eq!(s.param("user").as_deref(), Some("alice"));
        assert_eq!(s.param("database").as_deref(), Some("db"));
        // 3.2 is accepted, 2.0 and 4.0 are not.
        let mut m32 = 196610u32.to_be_bytes().to_vec();
        m32.extend_from_slice(b"user\0a\0\0");
        assert!(matches!(
            decode_startup(&m32).unwrap(),
            Startup::Message { minor: 2, .. }
        ));
        assert!(decode_startup(&131072u32.to_be_bytes()).is_err());
        // Unterminated parameter list.
        let mut bad = 196608u32.to_be_bytes().to_vec();
        bad.extend_from_slice(b"user\0alice");
        assert!(decode_startup(&bad).is_err());
        assert!(startup_len([0, 0, 0, 4]).is_err());
        assert!(startup_len([0, 1, 0, 0]).is_err());
        assert_eq!(startup_len([0, 0, 0, 8]).unwrap(), 8);
    }

    #[test]
    fn backend_helpers() {
        assert_eq!(tag_rows("SELECT 5"), Some(5));
        assert_eq!(tag_rows("INSERT 0 3"), Some(3));
        assert_eq!(tag_rows("UPDATE 12"), Some(12));
        assert_eq!(tag_rows("CREATE TABLE"), None);
        assert_eq!(tag_rows("COPY 7"), Some(7));
        let e = error_response("ERROR", "42501", "no");
        let (f, _) = split_frame(&e, 1024).unwrap().unwrap();
        let fields = error_fields(f.body).unwrap();
        assert_eq!(error_field(&fields, b'C').as_deref(), Some("42501"));
        assert_eq!(error_field(&fields, b'M').as_deref(), Some("no"));
        let sasl = auth_sasl(&[b"SCRAM-SHA-256-PLUS", b"SCRAM-SHA-256"]);
        let (f, _) = split_frame(&sasl, 1024).unwrap().unwrap();
        assert_eq!(
            sasl_mechanisms(f.body).unwrap(),
            vec![&b"SCRAM-SHA-256-PLUS"[..], b"SCRAM-SHA-256"]
        );
        // A DataRow whose value runs past the body.
        let row = frame(b'D', &[0, 1, 0, 0, 0, 9, b'a']);
        let (f, _) = split_frame(&row, 1024).unwrap().unwrap();
        assert!(check_backend(f).is_err());
        let row = frame(b'D', &[0, 2, 0, 0, 0, 1, b'a', 0xff, 0xff, 0xff, 0xff]);
        let (f, _) = split_frame(&row, 1024).unwrap().unwrap();
        let mut it = DataRowIter::new(f.body).unwrap();
        assert_eq!(it.next().unwrap(), Some(Some(&b"a"[..])));
        assert_eq!(it.next().unwrap(), Some(None));
        assert_eq!(it.next().unwrap(), None);
    }

    #[tokio::test]
    async fn reader_yields_frames_across_reads_and_reports_truncation() {
        let mut wire = Vec::new();
        for i in 0..100 {
            wire.extend(frame(b'Q', format!("SELECT {i}\0").as_bytes()));
        }
        wire.extend(frame(b'd', &vec![7u8; 100_000]));
        let (mut a, b) = tokio::io::duplex(777);
        let w = wire.clone();
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(&w).await.unwrap();
            a.write_all(&[b'Q', 0, 0]).await.unwrap(); // truncated header
        });
        let mut r = FrameReader::new(b, 1 << 20);
        for i in 0..100 {
            let f = r.next().await.unwrap().unwrap();
            assert_eq!(
                decode_frontend(f).unwrap(),
                Frontend::Query(format!("SELECT {i}").as_bytes())
            );
        }
        let f = r.next().await.unwrap().unwrap();
        assert_eq!(f.body.len(), 100_000);
        assert!(matches!(r.next().await, Err(CodecError::Truncated)));
    }

    #[tokio::test]
    async fn reader_refuses_oversized_messages() {
        let (mut a, b) = tokio::io::duplex(64);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let _ = a.write_all(&[b'Q', 0x7f, 0, 0, 0]).await;
        });
        let mut r = FrameReader::new(b, 1 << 20);
        assert!(matches!(r.next().await, Err(CodecError::TooLong { .. })));
    }

    fn budget(limit: usize) -> &'static crate::proxy::limits::MemoryBudget {
        Box::leak(Box::new(crate::proxy::limits::MemoryBudget::new(limit)))
    }

    /// Writes `bytes` on a duplex stream and keeps it open (a stalled peer).
    fn stalled(bytes: Vec<u8>) -> tokio::io::DuplexStream {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            a.write_all(&bytes).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            drop(a);
        });
        b
    }

    #[tokio::test]
    async fn reader_memory_follows_bytes_received_not_lengths_announced() {
        // A header announcing 64 MiB, then 100 bytes, then nothing.
        let mut wire = vec![b'Q'];
        wire.extend_from_slice(&(64u32 << 20).to_be_bytes());
        wire.extend_from_slice(&[b'x'; 100]);
        let b = budget(usize::MAX);
        let mut r = FrameReader::with_budget(stalled(wire), 64 << 20, Vec::new(), b);
        let pending = tokio::time::timeout(std::time::Duration::from_millis(200), r.next()).await;
        assert!(pending.is_err(), "the frame is not complete");
        assert!(
            r.capacity() <= 32 * 1024,
            "{} bytes allocated",
            r.capacity()
        );
        assert_eq!(b.held(), r.capacity().saturating_sub(STANDING_BYTES));

        // Sent for real, a large message grows the buffer by steps and is
        // given back once consumed.
        let mut wire = frame(b'Q', &vec![b'y'; 3 << 20]);
        wire.extend(frame(b'S', b""));
        let mut r = FrameReader::with_budget(stalled(wire), 64 << 20, Vec::new(), b);
        let f = r.next().await.unwrap().unwrap();
        assert_eq!(f.body.len(), 3 << 20);
        assert!(r.capacity() < (3 << 20) + 64 * 1024, "{}", r.capacity());
        assert_eq!(r.next().await.unwrap().unwrap().tag, b'S');
        let _ = tokio::time::timeout(std::time::Duration::from_millis(50), r.next()).await;
        assert!(r.capacity() <= KEEP_CAPACITY, "{}", r.capacity());
        drop(r);
        assert_eq!(b.held(), 0);
    }

    #[tokio::test]
    async fn reader_past_the_budget_fails_and_others_keep_theirs() {
        let b = budget(1 << 20);
        let mut first_wire = vec![b'Q'];
        first_wire.extend_from_slice(&(2u32 << 20).to_be_bytes());
        first_wire.extend(vec![b'a'; 700 * 1024]);
        let mut first = FrameReader::with_budget(stalled(first_wire), 4 << 20, Vec::new(), b);
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(200), first.next()).await;
        assert!(pending.is_err());
        let held = b.held();
        assert!(held >= 600 * 1024, "{held}");

        let mut second_wire = vec![b'Q'];
        second_wire.extend_from_slice(&(2u32 << 20).to_be_bytes());
        second_wire.extend(vec![b'b'; 700 * 1024]);
        let mut second = FrameReader::with_budget(stalled(second_wire), 4 << 20, Vec::new(), b);
        match second.next().await {
            Err(CodecError::OverBudget(e)) => assert_eq!(e.limit, 1 << 20),
            other => panic!(
                "expected the budget to refuse: {:?}",
                other.map(|f| f.is_some())
            ),
        }
        assert!(b.held() <= 1 << 20);
        assert_eq!(b.refused(), 1);
        // Small messages still pass: the standing chunk is not charged.
        let mut small =
            FrameReader::with_budget(stalled(frame(b'Q', b"SELECT 1\0")), 4 << 20, Vec::new(), b);
        assert_eq!(small.next().await.unwrap().unwrap().tag, b'Q');
        drop((first, second, small));
        assert_eq!(b.held(), 0);
    }

    #[tokio::test]
    async fn reader_limit_can_be_raised_after_authentication() {
        let mut wire = frame(b'p', &[1u8; 1000]);
        wire.extend(frame(b'Q', &vec![b'z'; 100_000]));
        let mut r = FrameReader::new(stalled(wire), 2048);
        assert_eq!(r.next().await.unwrap().unwrap().tag, b'p');
        r.set_max(1 << 20);
        assert_eq!(r.max(), 1 << 20);
        assert_eq!(r.next().await.unwrap().unwrap().body.len(), 100_000);

        let mut r = FrameReader::new(stalled(frame(b'Q', &vec![b'z'; 100_000])), 2048);
        assert!(matches!(r.next().await, Err(CodecError::TooLong { .. })));
    }
}
