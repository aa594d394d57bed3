//! The MySQL / MariaDB wire format: packet framing and the messages the
//! proxy reads or rewrites. Pure and synchronous (no I/O), so it is unit
//! tested and fuzzed on its own (`fuzz/fuzz_targets/mysql_packet.rs`).
//!
//! A packet is a 3-byte little-endian payload length, a 1-byte sequence id
//! and the payload. A payload of exactly 16 MiB − 1 bytes continues in the
//! next packet; the message ends with the first shorter packet (possibly
//! empty). Every packet of a command's exchange carries the next sequence
//! id, starting from 0 with the command.

use std::borrow::Cow;

use policy::mask::{MASKED_NUMBER, MASKED_TEXT};
use policy::{ActiveMasks, CellKind};

use super::error::CodecError;

/// Largest payload of one packet; a packet this long continues.
pub const MAX_PAYLOAD: usize = 0xFF_FFFF;

/// Capability flags (`CLIENT_*`).
pub mod caps {
    /// MariaDB calls this bit CLIENT_MYSQL: when the server clears it, the
    /// handshake carries MariaDB's extended capabilities.
    pub const LONG_PASSWORD: u32 = 1;
    pub const FOUND_ROWS: u32 = 1 << 1;
    pub const LONG_FLAG: u32 = 1 << 2;
    pub const CONNECT_WITH_DB: u32 = 1 << 3;
    pub const NO_SCHEMA: u32 = 1 << 4;
    pub const COMPRESS: u32 = 1 << 5;
    pub const ODBC: u32 = 1 << 6;
    pub const LOCAL_FILES: u32 = 1 << 7;
    pub const IGNORE_SPACE: u32 = 1 << 8;
    pub const PROTOCOL_41: u32 = 1 << 9;
    pub const INTERACTIVE: u32 = 1 << 10;
    pub const SSL: u32 = 1 << 11;
    pub const IGNORE_SIGPIPE: u32 = 1 << 12;
    pub const TRANSACTIONS: u32 = 1 << 13;
    pub const RESERVED: u32 = 1 << 14;
    pub const SECURE_CONNECTION: u32 = 1 << 15;
    pub const MULTI_STATEMENTS: u32 = 1 << 16;
    pub const MULTI_RESULTS: u32 = 1 << 17;
    pub const PS_MULTI_RESULTS: u32 = 1 << 18;
    pub const PLUGIN_AUTH: u32 = 1 << 19;
    pub const CONNECT_ATTRS: u32 = 1 << 20;
    pub const PLUGIN_AUTH_LENENC_DATA: u32 = 1 << 21;
    pub const CAN_HANDLE_EXPIRED_PASSWORDS: u32 = 1 << 22;
    pub const SESSION_TRACK: u32 = 1 << 23;
    pub const DEPRECATE_EOF: u32 = 1 << 24;
    pub const OPTIONAL_RESULTSET_METADATA: u32 = 1 << 25;
    pub const ZSTD_COMPRESSION: u32 = 1 << 26;
    pub const QUERY_ATTRIBUTES: u32 = 1 << 27;
    pub const MULTI_FACTOR_AUTH: u32 = 1 << 28;
    pub const CAPABILITY_EXTENSION: u32 = 1 << 29;
    pub const SSL_VERIFY_SERVER_CERT: u32 = 1 << 30;
    pub const REMEMBER_OPTIONS: u32 = 1 << 31;

    /// What the proxy lets through. Everything else is cleared in both
    /// directions: compression (CLIENT_COMPRESS, zstd) because the proxy
    /// must read every packet; query attributes, optional result-set
    /// metadata and multi-factor auth because they change message layouts
    /// the proxy parses. CLIENT_SSL is handled separately (each leg
    /// negotiates TLS on its own).
    pub const SUPPORTED: u32 = LONG_PASSWORD
        | FOUND_ROWS
        | LONG_FLAG
        | CONNECT_WITH_DB
        | NO_SCHEMA
        | ODBC
        | LOCAL_FILES
        | IGNORE_SPACE
        | PROTOCOL_41
        | INTERACTIVE
        | IGNORE_SIGPIPE
        | TRANSACTIONS
        | RESERVED
        | SECURE_CONNECTION
        | MULTI_STATEMENTS
        | MULTI_RESULTS
        | PS_MULTI_RESULTS
        | PLUGIN_AUTH
        | CONNECT_ATTRS
        | PLUGIN_AUTH_LENENC_DATA
        | CAN_HANDLE_EXPIRED_PASSWORDS
        | SESSION_TRACK
        | DEPRECATE_EOF
        | SSL_VERIFY_SERVER_CERT
        | REMEMBER_OPTIONS;
}

/// Server status flags.
pub mod status {
    pub const MORE_RESULTS_EXISTS: u16 = 0x0008;
    pub const CURSOR_EXISTS: u16 = 0x0040;
}

/// Command bytes.
pub mod com {
    use std::borrow::Cow;

    pub const QUIT: u8 = 0x01;
    pub const INIT_DB: u8 = 0x02;
    pub const QUERY: u8 = 0x03;
    pub const FIELD_LIST: u8 = 0x04;
    pub const STATISTICS: u8 = 0x09;
    pub const PING: u8 = 0x0e;
    pub const CHANGE_USER: u8 = 0x11;
    pub const STMT_PREPARE: u8 = 0x16;
    pub const STMT_EXECUTE: u8 = 0x17;
    pub const STMT_SEND_LONG_DATA: u8 = 0x18;
    pub const STMT_CLOSE: u8 = 0x19;
    pub const STMT_RESET: u8 = 0x1a;
    pub const SET_OPTION: u8 = 0x1b;
    pub const STMT_FETCH: u8 = 0x1c;
    pub const RESET_CONNECTION: u8 = 0x1f;

    /// A name for the record.
    pub fn name(c: u8) -> Cow<'static, str> {
        let n = match c {
            0x00 => "COM_SLEEP",
            QUIT => "COM_QUIT",
            INIT_DB => "COM_INIT_DB",
            QUERY => "COM_QUERY",
            FIELD_LIST => "COM_FIELD_LIST",
            0x05 => "COM_CREATE_DB",
            0x06 => "COM_DROP_DB",
            0x07 => "COM_REFRESH",
            0x08 => "COM_SHUTDOWN",
            STATISTICS => "COM_STATISTICS",
            0x0a => "COM_PROCESS_INFO",
            0x0b => "COM_CONNECT",
            0x0c => "COM_PROCESS_KILL",
            0x0d => "COM_DEBUG",
            PING => "COM_PING",
            0x0f => "COM_TIME",
            0x10 => "COM_DELAYED_INSERT",
            CHANGE_USER => "COM_CHANGE_USER",
            0x12 => "COM_BINLOG_DUMP",
            0x13 => "COM_TABLE_DUMP",
            0x14 => "COM_CONNECT_OUT",
            0x15 => "COM_REGISTER_SLAVE",
            STMT_PREPARE => "COM_STMT_PREPARE",
            STMT_EXECUTE => "COM_STMT_EXECUTE",
            STMT_SEND_LONG_DATA => "COM_STMT_SEND_LONG_DATA",
            STMT_CLOSE => "COM_STMT_CLOSE",
            STMT_RESET => "COM_STMT_RESET",
            SET_OPTION => "COM_SET_OPTION",
            STMT_FETCH => "COM_STMT_FETCH",
            0x1d => "COM_DAEMON",
            0x1e => "COM_BINLOG_DUMP_GTID",
            RESET_CONNECTION => "COM_RESET_CONNECTION",
            0xfa => "COM_STMT_BULK_EXECUTE",
            _ => return Cow::Owned(format!("command 0x{c:02x}")),
        };
        Cow::Borrowed(n)
    }
}

/// Column types (`MYSQL_TYPE_*`).
pub mod types {
    pub const DECIMAL: u8 = 0;
    pub const TINY: u8 = 1;
    pub const SHORT: u8 = 2;
    pub const LONG: u8 = 3;
    pub const FLOAT: u8 = 4;
    pub const DOUBLE: u8 = 5;
    pub const NULL: u8 = 6;
    pub const TIMESTAMP: u8 = 7;
    pub const LONGLONG: u8 = 8;
    pub const INT24: u8 = 9;
    pub const DATE: u8 = 10;
    pub const TIME: u8 = 11;
    pub const DATETIME: u8 = 12;
    pub const YEAR: u8 = 13;
    pub const NEWDATE: u8 = 14;
    pub const VARCHAR: u8 = 15;
    pub const BIT: u8 = 16;
    pub const TIMESTAMP2: u8 = 17;
    pub const DATETIME2: u8 = 18;
    pub const TIME2: u8 = 19;
    pub const VECTOR: u8 = 242;
    pub const JSON: u8 = 245;
    pub const NEWDECIMAL: u8 = 246;
    pub const ENUM: u8 = 247;
    pub const SET: u8 = 248;
    pub const TINY_BLOB: u8 = 249;
    pub const MEDIUM_BLOB: u8 = 250;
    pub const LONG_BLOB: u8 = 251;
    pub const BLOB: u8 = 252;
    pub const VAR_STRING: u8 = 253;
    pub const STRING: u8 = 254;
    pub const GEOMETRY: u8 = 255;
}

/// The `binary` character set: string columns with it hold bytes.
pub const BINARY_CHARSET: u16 = 63;

/// Error codes the proxy sends.
pub mod errcode {
    /// ER_ACCESS_DENIED_ERROR: a refused connection.
    pub const ACCESS_DENIED: u16 = 1045;
    /// ER_UNKNOWN_COM_ERROR: a command the proxy does not relay.
    pub const UNKNOWN_COM: u16 = 1047;
    /// ER_SPECIFIC_ACCESS_DENIED_ERROR: a statement refused by policy.
    pub const SPECIFIC_ACCESS_DENIED: u16 = 1227;
    /// ER_UNKNOWN_STMT_HANDLER: a statement id the proxy never saw prepared.
    pub const UNKNOWN_STMT_HANDLER: u16 = 1243;
    /// ER_NOT_SUPPORTED_AUTH_MODE: a client without the 4.1 protocol.
    pub const NOT_SUPPORTED_AUTH_MODE: u16 = 1251;
    /// ER_UNKNOWN_ERROR: the proxy cannot go on (recording failed, ...).
    pub const UNKNOWN_ERROR: u16 = 1105;
    /// ER_TOO_BIG_SELECT: a result stopped by a `[[limit]]`.
    pub const TOO_BIG_SELECT: u16 = 1104;
    /// ER_CON_COUNT_ERROR: a session cap is reached ("Too many connections").
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    /// ER_OUTOFMEMORY: the daemon's memory budget for messages is spent.
    pub const OUT_OF_MEMORY: u16 = 1037;
    /// ER_NET_PACKET_TOO_LARGE: a message over the limit.
    pub const NET_PACKET_TOO_LARGE: u16 = 1153;
}

// ---------------------------------------------------------------------------
// Framing

/// A packet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub len: usize,
    pub seq: u8,
}

impl Header {
    pub fn parse(h: [u8; 4]) -> Header {
        Header {
            len: usize::from(h[0]) | usize::from(h[1]) << 8 | usize::from(h[2]) << 16,
            seq: h[3],
        }
    }

    pub fn encode(len: usize, seq: u8) -> [u8; 4] {
        debug_assert!(len <= MAX_PAYLOAD);
        [len as u8, (len >> 8) as u8, (len >> 16) as u8, seq]
    }
}

/// Why a packet cannot be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The sequence id is not the next one.
    Sequence { expected: u8, got: u8 },
    /// The message would exceed the limit.
    TooLarge { len: usize },
}

/// Checks one packet header against the expected sequence id and the size
/// limit, given `so_far` bytes of the message already read. On success the
/// sequence id advances.
pub fn check_header(h: Header, seq: &mut u8, so_far: usize, max: usize) -> Result<(), FrameError> {
    if h.seq != *seq {
        return Err(FrameError::Sequence {
            expected: *seq,
            got: h.seq,
        });
    }
    let total = so_far.saturating_add(h.len);
    if total > max {
        return Err(FrameError::TooLarge { len: total });
    }
    *seq = seq.wrapping_add(1);
    Ok(())
}

/// Reassembles the logical message at the start of `data` into `out`,
/// following continuation packets. Returns the bytes consumed, or `None`
/// when `data` does not hold the whole message yet.
pub fn decode_message(
    data: &[u8],
    seq: &mut u8,
    max: usize,
    out: &mut Vec<u8>,
) -> Result<Option<usize>, FrameError> {
    out.clear();
    let mut pos = 0;
    let mut s = *seq;
    loop {
        let Some(h) = data.get(pos..pos + 4) else {
            return Ok(None);
        };
        let h = Header::parse([h[0], h[1], h[2], h[3]]);
        check_header(h, &mut s, out.len(), max)?;
        let Some(p) = data.get(pos + 4..pos + 4 + h.len) else {
            return Ok(None);
        };
        out.extend_from_slice(p);
        pos += 4 + h.len;
        if h.len < MAX_PAYLOAD {
            *seq = s;
            return Ok(Some(pos));
        }
    }
}

/// Frames `payload` as one logical message (continuation packets as
/// needed), appending to `out`.
pub fn encode_message(payload: &[u8], seq: &mut u8, out: &mut Vec<u8>) {
    let mut rest = payload;
    loop {
        let n = rest.len().min(MAX_PAYLOAD);
        out.extend_from_slice(&Header::encode(n, *seq));
        out.extend_from_slice(&rest[..n]);
        *seq = seq.wrapping_add(1);
        rest = &rest[n..];
        if n < MAX_PAYLOAD {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Primitive fields

/// A reader over one payload.
#[derive(Debug, Clone)]
pub struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub fn new(buf: &'a [u8]) -> Cursor<'a> {
        Cursor { buf, pos: 0 }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], CodecError> {
        if n > self.remaining() {
            return Err(CodecError::Truncated(what));
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, CodecError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u24(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let b = self.take(3, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], 0]))
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, CodecError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, CodecError> {
        let b = self.take(8, what)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_le_bytes(a))
    }

    /// A length-encoded integer (0xFB, NULL, and 0xFF are errors here).
    pub fn lenenc(&mut self, what: &'static str) -> Result<u64, CodecError> {
        match self.u8(what)? {
            n @ 0..=0xfa => Ok(u64::from(n)),
            0xfc => Ok(u64::from(self.u16(what)?)),
            0xfd => Ok(u64::from(self.u24(what)?)),
            0xfe => self.u64(what),
            b => Err(CodecError::malformed(
                what,
                format!("0x{b:02x} is not a length-encoded integer"),
            )),
        }
    }

    /// A length-encoded string.
    pub fn lenenc_bytes(&mut self, what: &'static str) -> Result<&'a [u8], CodecError> {
        let n = self.lenenc(what)?;
        let n = usize::try_from(n).map_err(|_| CodecError::Truncated(what))?;
        self.take(n, what)
    }

    /// A NUL-terminated string (the NUL is consumed). A missing NUL at the
    /// very end is tolerated when `lenient` (some servers omit it).
    pub fn nul_bytes(&mut self, what: &'static str, lenient: bool) -> Result<&'a [u8], CodecError> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == 0) {
            Some(i) => {
                self.pos += i + 1;
                Ok(&rest[..i])
            }
            None if lenient => {
                self.pos = self.buf.len();
                Ok(rest)
            }
            None => Err(CodecError::Truncated(what)),
        }
    }

    pub fn rest(&mut self) -> &'a [u8] {
        let r = &self.buf[self.pos..];
        self.pos = self.buf.len();
        r
    }
}

pub fn put_lenenc(out: &mut Vec<u8>, v: u64) {
    if v < 0xfb {
        out.push(v as u8);
    } else if v <= 0xffff {
        out.push(0xfc);
        out.extend_from_slice(&(v as u16).to_le_bytes());
    } else if v <= 0xff_ffff {
        out.push(0xfd);
        out.extend_from_slice(&(v as u32).to_le_bytes()[..3]);
    } else {
        out.push(0xfe);
        out.extend_from_slice(&v.to_le_bytes());
    }
}

pub fn put_lenenc_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_lenenc(out, b.len() as u64);
    out.extend_from_slice(b);
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

// ---------------------------------------------------------------------------
// Connection phase

/// The server's initial handshake (protocol version 10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub server_version: String,
    pub connection_id: u32,
    pub capabilities: u32,
    /// MariaDB's extended capabilities (when the server clears CLIENT_MYSQL).
    pub mariadb_ext: Option<u32>,
    pub charset: u8,
    pub status: u16,
    pub auth_plugin: Option<String>,
    caps_low_at: usize,
    caps_high_at: Option<usize>,
    ext_at: Option<usize>,
}

pub fn parse_greeting(p: &[u8]) -> Result<Greeting, CodecError> {
    const W: &str = "initial handshake";
    let mut c = Cursor::new(p);
    let version = c.u8(W)?;
    if version != 10 {
        return Err(CodecError::malformed(
            W,
            format!("protocol version {version} (only 10 is supported)"),
        ));
    }
    let server_version = lossy(c.nul_bytes(W, false)?);
    let connection_id = c.u32(W)?;
    c.take(8, W)?; // auth-plugin-data part 1
    c.u8(W)?; // filler
    let caps_low_at = c.pos();
    let mut capabilities = u32::from(c.u16(W)?);
    let mut g = Greeting {
        server_version,
        connection_id,
        capabilities,
        mariadb_ext: None,
        charset: 0,
        status: 0,
        auth_plugin: None,
        caps_low_at,
        caps_high_at: None,
        ext_at: None,
    };
    if c.is_empty() {
        return Ok(g);
    }
    g.charset = c.u8(W)?;
    g.status = c.u16(W)?;
    g.caps_high_at = Some(c.pos());
    capabilities |= u32::from(c.u16(W)?) << 16;
    g.capabilities = capabilities;
    let auth_len = c.u8(W)?;
    let reserved_at = c.pos();
    let reserved = c.take(10, W)?;
    if capabilities & caps::LONG_PASSWORD == 0 {
        g.ext_at = Some(reserved_at + 6);
        g.mariadb_ext = Some(u32::from_le_bytes([
            reserved[6],
            reserved[7],
            reserved[8],
            reserved[9],
        ]));
    }
    if capabilities & caps::SECURE_CONNECTION != 0 {
        let n = usize::from(auth_len).saturating_sub(8).max(13);
        c.take(n.min(c.remaining()), W)?;
    }
    if capabilities & caps::PLUGIN_AUTH != 0 && !c.is_empty() {
        g.auth_plugin = Some(lossy(c.nul_bytes(W, true)?));
    }
    Ok(g)
}

/// The greeting with its capability flags replaced (MariaDB's extended
/// capabilities with `ext` when present).
pub fn patch_greeting(p: &[u8], g: &Greeting, capabilities: u32, ext: u32) -> Vec<u8> {
    let mut out = p.to_vec();
    out[g.caps_low_at..g.caps_low_at + 2].copy_from_slice(&(capabilities as u16).to_le_bytes());
    if let Some(at) = g.caps_high_at {
        out[at..at + 2].copy_from_slice(&((capabilities >> 16) as u16).to_le_bytes());
    }
    if let Some(at) = g.ext_at {
        out[at..at + 4].copy_from_slice(&ext.to_le_bytes());
    }
    out
}

/// The client's HandshakeResponse41 (or, 32 bytes long, its SSLRequest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandshakeResponse {
    pub capabilities: u32,
    pub max_packet: u32,
    pub charset: u8,
    pub user: String,
    pub database: Option<String>,
    pub auth_plugin: Option<String>,
}

/// Length of an SSLRequest (and of the fixed part of a handshake response).
pub const SSL_REQUEST_LEN: usize = 32;

/// Whether a client's first message is an SSLRequest.
pub fn is_ssl_request(p: &[u8]) -> bool {
    p.len() == SSL_REQUEST_LEN && u32::from_le_bytes([p[0], p[1], p[2], p[3]]) & caps::SSL != 0
}

/// The capability flags at the start of a handshake response.
pub fn response_capabilities(p: &[u8]) -> Result<u32, CodecError> {
    Cursor::new(p).u32("handshake response")
}

pub fn parse_handshake_response(p: &[u8]) -> Result<HandshakeResponse, CodecError> {
    const W: &str = "handshake response";
    let mut c = Cursor::new(p);
    let capabilities = c.u32(W)?;
    if capabilities & caps::PROTOCOL_41 == 0 {
        return Err(CodecError::malformed(
            W,
            "client without CLIENT_PROTOCOL_41 (pre-4.1 clients are not supported)",
        ));
    }
    let max_packet = c.u32(W)?;
    let charset = c.u8(W)?;
    c.take(23, W)?;
    let user = lossy(c.nul_bytes(W, false)?);
    if capabilities & caps::PLUGIN_AUTH_LENENC_DATA != 0 {
        c.lenenc_bytes(W)?;
    } else if capabilities & caps::SECURE_CONNECTION != 0 {
        let n = c.u8(W)?;
        c.take(usize::from(n), W)?;
    } else {
        c.nul_bytes(W, false)?;
    }
    let mut database = None;
    if capabilities & caps::CONNECT_WITH_DB != 0 && !c.is_empty() {
        let db = c.nul_bytes(W, true)?;
        if !db.is_empty() {
            database = Some(lossy(db));
        }
    }
    let mut auth_plugin = None;
    if capabilities & caps::PLUGIN_AUTH != 0 && !c.is_empty() {
        auth_plugin = Some(lossy(c.nul_bytes(W, true)?));
    }
    if capabilities & caps::CONNECT_ATTRS != 0 && !c.is_empty() {
        c.lenenc_bytes(W)?;
    }
    Ok(HandshakeResponse {
        capabilities,
        max_packet,
        charset,
        user,
        database,
        auth_plugin,
    })
}

/// A handshake response with its capability flags replaced and MariaDB's
/// extended capabilities (bytes 28..32 of the filler) cleared.
pub fn patch_handshake_response(p: &[u8], capabilities: u32) -> Vec<u8> {
    let mut out = p.to_vec();
    if out.len() >= SSL_REQUEST_LEN {
        out[..4].copy_from_slice(&capabilities.to_le_bytes());
        out[28..32].fill(0);
    }
    out
}

/// An SSLRequest packet payload.
pub fn ssl_request(capabilities: u32, max_packet: u32, charset: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(SSL_REQUEST_LEN);
    out.extend_from_slice(&(capabilities | caps::SSL).to_le_bytes());
    out.extend_from_slice(&max_packet.to_le_bytes());
    out.push(charset);
    out.extend_from_slice(&[0u8; 23]);
    out
}

/// COM_CHANGE_USER, as far as the proxy cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeUser {
    pub user: String,
    pub database: Option<String>,
}

pub fn parse_change_user(p: &[u8], capabilities: u32) -> Result<ChangeUser, CodecError> {
    const W: &str = "COM_CHANGE_USER";
    let mut c = Cursor::new(p);
    c.u8(W)?;
    let user = lossy(c.nul_bytes(W, false)?);
    if capabilities & caps::SECURE_CONNECTION != 0 {
        let n = c.u8(W)?;
        c.take(usize::from(n), W)?;
    } else {
        c.nul_bytes(W, false)?;
    }
    let db = c.nul_bytes(W, true)?;
    Ok(ChangeUser {
        user,
        database: (!db.is_empty()).then(|| lossy(db)),
    })
}

// ---------------------------------------------------------------------------
// Generic responses

/// An OK packet (header 0x00, or 0xFE when it ends a result set under
/// CLIENT_DEPRECATE_EOF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OkPacket {
    pub affected_rows: u64,
    pub last_insert_id: u64,
    pub status: u16,
    pub warnings: u16,
}

pub fn parse_ok(p: &[u8]) -> Result<OkPacket, CodecError> {
    const W: &str = "OK packet";
    let mut c = Cursor::new(p);
    match c.u8(W)? {
        0x00 | 0xfe => {}
        b => return Err(CodecError::malformed(W, format!("header 0x{b:02x}"))),
    }
    let affected_rows = c.lenenc(W)?;
    let last_insert_id = c.lenenc(W)?;
    let (status, warnings) = if c.remaining() >= 4 {
        (c.u16(W)?, c.u16(W)?)
    } else {
        (0, 0)
    };
    Ok(OkPacket {
        affected_rows,
        last_insert_id,
        status,
        warnings,
    })
}

/// An ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrPacket {
    pub code: u16,
    pub sqlstate: Option<String>,
    pub message: String,
}

pub fn parse_err(p: &[u8]) -> Result<ErrPacket, CodecError> {
    const W: &str = "ERR packet";
    let mut c = Cursor::new(p);
    if c.u8(W)? != 0xff {
        return Err(CodecError::malformed(W, "header is not 0xff"));
    }
    let code = c.u16(W)?;
    let mut sqlstate = None;
    if c.peek() == Some(b'#') && c.remaining() >= 6 {
        c.u8(W)?;
        sqlstate = Some(lossy(c.take(5, W)?));
    }
    Ok(ErrPacket {
        code,
        sqlstate,
        message: lossy(c.rest()),
    })
}

/// An ERR packet payload. Without `sqlstate` (the connection-phase form,
/// before capabilities are agreed) no SQLSTATE marker is written.
pub fn err_packet(code: u16, sqlstate: Option<&str>, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + message.len());
    out.push(0xff);
    out.extend_from_slice(&code.to_le_bytes());
    if let Some(s) = sqlstate {
        out.push(b'#');
        let mut st = [b'H', b'Y', b'0', b'0', b'0'];
        for (d, s) in st.iter_mut().zip(s.bytes()) {
            *d = s;
        }
        out.extend_from_slice(&st);
    }
    out.extend_from_slice(message.as_bytes());
    out
}

/// Whether `p` ends a result set (or a list of column definitions): an EOF
/// packet, or under CLIENT_DEPRECATE_EOF an OK packet with header 0xFE. A
/// row can start with 0xFE only with a value of 16 MiB or more.
pub fn is_terminator(p: &[u8], deprecate_eof: bool) -> bool {
    p.first() == Some(&0xfe)
        && if deprecate_eof {
            p.len() < MAX_PAYLOAD
        } else {
            p.len() < 9
        }
}

/// The status flags of a terminator (EOF or OK-with-0xFE).
pub fn terminator_status(p: &[u8], deprecate_eof: bool) -> Result<u16, CodecError> {
    if deprecate_eof {
        Ok(parse_ok(p)?.status)
    } else {
        let mut c = Cursor::new(p);
        c.u8("EOF packet")?;
        if c.remaining() < 4 {
            return Ok(0);
        }
        c.u16("EOF packet")?;
        c.u16("EOF packet")
    }
}

// ---------------------------------------------------------------------------
// Result sets

/// A column definition (Protocol::ColumnDefinition41).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnDef {
    pub table: String,
    pub name: String,
    pub org_name: String,
    pub charset: u16,
    pub column_type: u8,
    pub flags: u16,
}

pub fn parse_column_def(p: &[u8]) -> Result<ColumnDef, CodecError> {
    const W: &str = "column definition";
    let mut c = Cursor::new(p);
    c.lenenc_bytes(W)?; // catalog
    c.lenenc_bytes(W)?; // schema
    let table = lossy(c.lenenc_bytes(W)?);
    c.lenenc_bytes(W)?; // org_table
    let name = lossy(c.lenenc_bytes(W)?);
    let org_name = lossy(c.lenenc_bytes(W)?);
    let fixed = c.lenenc(W)?;
    if fixed < 0x0a {
        return Err(CodecError::malformed(
            W,
            format!("fixed-length fields of {fixed} bytes"),
        ));
    }
    let charset = c.u16(W)?;
    c.u32(W)?; // column length
    let column_type = c.u8(W)?;
    let flags = c.u16(W)?;
    Ok(ColumnDef {
        table,
        name,
        org_name,
        charset,
        column_type,
        flags,
    })
}

/// How a column's values are encoded, as far as masking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Character strings (text charset), JSON, ENUM, SET: detectors apply.
    Text,
    /// Byte strings (binary charset), BIT, GEOMETRY.
    Binary,
    /// Integers, decimals, floats, YEAR.
    Numeric,
    /// DATE, TIME, DATETIME, TIMESTAMP.
    Temporal,
    /// NULL type and types the proxy does not know.
    Other,
}

pub fn value_kind(column_type: u8, charset: u16) -> ValueKind {
    use types::*;
    match column_type {
        VARCHAR | VAR_STRING | STRING | TINY_BLOB | MEDIUM_BLOB | LONG_BLOB | BLOB => {
            if charset == BINARY_CHARSET {
                ValueKind::Binary
            } else {
                ValueKind::Text
            }
        }
        JSON | ENUM | SET => ValueKind::Text,
        BIT | GEOMETRY | VECTOR => ValueKind::Binary,
        DECIMAL | NEWDECIMAL | TINY | SHORT | LONG | FLOAT | DOUBLE | LONGLONG | INT24 | YEAR => {
            ValueKind::Numeric
        }
        TIMESTAMP | DATE | TIME | DATETIME | NEWDATE | TIMESTAMP2 | DATETIME2 | TIME2 => {
            ValueKind::Temporal
        }
        _ => ValueKind::Other,
    }
}

/// What replaces the `Message` of `SHOW WARNINGS` / `SHOW ERRORS` rows
/// that may quote a masked value.
pub const WITHHELD_MESSAGE: &str =
    "interceptor: message withheld because an earlier statement read masked columns";

/// What to do with one column's values, decided once per result set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnPlan {
    pub column_type: u8,
    pub kind: ValueKind,
    /// Masked whole: a `[[mask]] columns` rule matches the column (name or
    /// original name), or the statement's lineage says its values may come
    /// from a masked column (OR-ed in by the session).
    pub masked: bool,
    /// A server message that may quote a masked value: every value is
    /// replaced with [`WITHHELD_MESSAGE`] (takes precedence over `masked`).
    pub withheld: bool,
}

impl ColumnPlan {
    pub fn new(def: &ColumnDef, masks: &ActiveMasks) -> ColumnPlan {
        ColumnPlan {
            column_type: def.column_type,
            kind: value_kind(def.column_type, def.charset),
            masked: masks.column_masked(&def.name)
                || (!def.org_name.is_empty()
                    && def.org_name != def.name
                    && masks.column_masked(&def.org_name)),
            withheld: false,
        }
    }

    /// Whether values of this column may change.
    pub fn active(&self, masks: &ActiveMasks) -> bool {
        self.masked
            || self.withheld
            || (self.kind == ValueKind::Text && !masks.detectors().is_empty())
    }
}

/// Masks with every detector and no column rule (for tools and fuzzing,
/// which cannot name the policy crate).
pub fn all_detectors() -> ActiveMasks {
    ActiveMasks::with_detectors(policy::DetectorSet::all())
}

/// No masks at all.
pub fn no_masks() -> ActiveMasks {
    ActiveMasks::default()
}

/// The masked form of a string-encoded value, or `None` to keep it.
fn mask_string(plan: &ColumnPlan, v: &[u8], masks: &ActiveMasks) -> Option<Cow<'static, str>> {
    if plan.withheld {
        return Some(Cow::Borrowed(WITHHELD_MESSAGE));
    }
    match plan.kind {
        ValueKind::Text => match std::str::from_utf8(v) {
            Ok(s) => masks
                .mask_cell(plan.masked, CellKind::Text, s)
                .map(Cow::Owned),
            Err(_) if plan.masked => Some(Cow::Borrowed(MASKED_TEXT)),
            Err(_) => masks
                .mask_cell(false, CellKind::Text, &String::from_utf8_lossy(v))
                .map(Cow::Owned),
        },
        ValueKind::Numeric if plan.masked => Some(Cow::Borrowed(MASKED_NUMBER)),
        ValueKind::Binary | ValueKind::Temporal | ValueKind::Other if plan.masked => {
            Some(Cow::Borrowed(MASKED_TEXT))
        }
        _ => None,
    }
}

/// Masks a text-protocol row into `out`. Returns whether anything changed
/// (when not, `out` holds a copy of `row`).
pub fn mask_text_row(
    row: &[u8],
    plans: &[ColumnPlan],
    masks: &ActiveMasks,
    out: &mut Vec<u8>,
) -> Result<bool, CodecError> {
    const W: &str = "text row";
    out.clear();
    let mut c = Cursor::new(row);
    let mut changed = false;
    for plan in plans {
        if c.peek() == Some(0xfb) {
            c.u8(W)?;
            out.push(0xfb);
            continue;
        }
        let start = c.pos();
        let v = c.lenenc_bytes(W)?;
        match plan
            .active(masks)
            .then(|| mask_string(plan, v, masks))
            .flatten()
        {
            Some(m) => {
                put_lenenc_bytes(out, m.as_bytes());
                changed = true;
            }
            None => out.extend_from_slice(&row[start..c.pos()]),
        }
    }
    if !c.is_empty() {
        return Err(CodecError::malformed(
            W,
            format!("{} bytes after the last column", c.remaining()),
        ));
    }
    Ok(changed)
}

/// How a binary-protocol value is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    Fixed(usize),
    /// One length byte, then that many bytes (dates and times).
    LenByte,
    /// A length-encoded string.
    LenEnc,
}

pub fn binary_layout(column_type: u8) -> Option<Layout> {
    use types::*;
    Some(match column_type {
        LONGLONG | DOUBLE => Layout::Fixed(8),
        LONG | INT24 | FLOAT => Layout::Fixed(4),
        SHORT | YEAR => Layout::Fixed(2),
        TINY => Layout::Fixed(1),
        NULL => Layout::Fixed(0),
        DATE | DATETIME | TIMESTAMP | TIME | NEWDATE | TIMESTAMP2 | DATETIME2 | TIME2 => {
            Layout::LenByte
        }
        DECIMAL | NEWDECIMAL | VARCHAR | BIT | JSON | ENUM | SET | TINY_BLOB | MEDIUM_BLOB
        | LONG_BLOB | BLOB | VAR_STRING | STRING | GEOMETRY | VECTOR => Layout::LenEnc,
        _ => return None,
    })
}

/// Masks a binary-protocol row into `out`. Fixed-width numbers and
/// temporal values are never rewritten except when their column is masked
/// as a whole: then they become zero of the same width (a zero-length
/// temporal value). Returns whether anything changed.
pub fn mask_binary_row(
    row: &[u8],
    plans: &[ColumnPlan],
    masks: &ActiveMasks,
    out: &mut Vec<u8>,
) -> Result<bool, CodecError> {
    const W: &str = "binary row";
    out.clear();
    let mut c = Cursor::new(row);
    if c.u8(W)? != 0x00 {
        return Err(CodecError::malformed(W, "header is not 0x00"));
    }
    let bitmap = c.take((plans.len() + 7 + 2) / 8, W)?;
    out.push(0x00);
    out.extend_from_slice(bitmap);
    let mut changed = false;
    for (i, plan) in plans.iter().enumerate() {
        let bit = i + 2;
        if bitmap[bit / 8] & (1 << (bit % 8)) != 0 {
            continue;
        }
        let layout = binary_layout(plan.column_type).ok_or_else(|| {
            CodecError::malformed(W, format!("unknown column type {}", plan.column_type))
        })?;
        let start = c.pos();
        match layout {
            Layout::Fixed(n) => {
                c.take(n, W)?;
                if plan.masked || plan.withheld {
                    out.resize(out.len() + n, 0);
                    changed = true;
                } else {
                    out.extend_from_slice(&row[start..c.pos()]);
                }
            }
            Layout::LenByte => {
                let n = c.u8(W)?;
                c.take(usize::from(n), W)?;
                if plan.masked || plan.withheld {
                    out.push(0);
                    changed = true;
                } else {
                    out.extend_from_slice(&row[start..c.pos()]);
                }
            }
            Layout::LenEnc => {
                let v = c.lenenc_bytes(W)?;
                match plan
                    .active(masks)
                    .then(|| mask_string(plan, v, masks))
                    .flatten()
                {
                    Some(m) => {
                        put_lenenc_bytes(out, m.as_bytes());
                        changed = true;
                    }
                    None => out.extend_from_slice(&row[start..c.pos()]),
                }
            }
        }
    }
    if !c.is_empty() {
        return Err(CodecError::malformed(
            W,
            format!("{} bytes after the last column", c.remaining()),
        ));
    }
    Ok(changed)
}

// ---------------------------------------------------------------------------
// Prepared statements

/// COM_STMT_PREPARE_OK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrepareOk {
    pub statement_id: u32,
    pub columns: u16,
    pub params: u16,
}

pub fn parse_prepare_ok(p: &[u8]) -> Result<PrepareOk, CodecError> {
    const W: &str = "COM_STMT_PREPARE response";
    let mut c = Cursor::new(p);
    if c.u8(W)? != 0 {
        return Err(CodecError::malformed(W, "header is not 0x00"));
    }
    Ok(PrepareOk {
        statement_id: c.u32(W)?,
        columns: c.u16(W)?,
        params: c.u16(W)?,
    })
}

/// The statement id at the start of a COM_STMT_* command.
pub fn statement_id(p: &[u8]) -> Result<u32, CodecError> {
    let mut c = Cursor::new(p);
    c.u8("statement command")?;
    c.u32("statement id")
}

/// A bound parameter of COM_STMT_EXECUTE, decoded for the record.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue {
    Null,
    Int(i64),
    UInt(u64),
    Float(f64),
    /// A string (or DECIMAL) value; `truncated` when only a prefix is kept.
    Text(String),
    /// A non-UTF-8 byte string: its length.
    Bytes(usize),
    /// A date or time, formatted.
    Temporal(String),
    /// Sent before with COM_STMT_SEND_LONG_DATA.
    LongData,
}

/// COM_STMT_EXECUTE.
#[derive(Debug, Clone, PartialEq)]
pub struct Execute {
    pub statement_id: u32,
    pub flags: u8,
    pub params: Vec<ParamValue>,
}

/// Longest string parameter kept whole in the record.
pub const MAX_PARAM_TEXT: usize = 1024;

/// Decodes COM_STMT_EXECUTE for a statement with `param_count` parameters.
/// `types` holds the parameter types bound by an earlier execution and is
/// updated when this one binds new ones; `long_data[i]` says parameter `i`
/// was sent with COM_STMT_SEND_LONG_DATA (its value is not in the packet).
pub fn parse_execute(
    p: &[u8],
    param_count: usize,
    types: &mut Vec<(u8, u8)>,
    long_data: &[bool],
) -> Result<Execute, CodecError> {
    const W: &str = "COM_STMT_EXECUTE";
    let mut c = Cursor::new(p);
    c.u8(W)?;
    let statement_id = c.u32(W)?;
    let flags = c.u8(W)?;
    c.u32(W)?; // iteration count
    let mut params = Vec::with_capacity(param_count);
    if param_count == 0 {
        return Ok(Execute {
            statement_id,
            flags,
            params,
        });
    }
    let nulls = c.take(param_count.div_ceil(8), W)?;
    if c.u8(W)? == 1 {
        let mut t = Vec::with_capacity(param_count);
        for _ in 0..param_count {
            t.push((c.u8(W)?, c.u8(W)?));
        }
        *types = t;
    }
    if types.len() != param_count {
        return Err(CodecError::malformed(
            W,
            "parameters without types (none were ever bound)",
        ));
    }
    for (i, &(ty, tflags)) in types.iter().enumerate() {
        if nulls[i / 8] & (1 << (i % 8)) != 0 {
            params.push(ParamValue::Null);
            continue;
        }
        if long_data.get(i).copied().unwrap_or(false) {
            params.push(ParamValue::LongData);
            continue;
        }
        let unsigned = tflags & 0x80 != 0;
        params.push(decode_param(&mut c, ty, unsigned)?);
    }
    Ok(Execute {
        statement_id,
        flags,
        params,
    })
}

fn decode_param(c: &mut Cursor<'_>, ty: u8, unsigned: bool) -> Result<ParamValue, CodecError> {
    const W: &str = "COM_STMT_EXECUTE parameter";
    use types::*;
    let layout =
        binary_layout(ty).ok_or_else(|| CodecError::malformed(W, format!("unknown type {ty}")))?;
    Ok(match (layout, ty) {
        (_, NULL) => ParamValue::Null,
        (_, TINY) => {
            let v = c.u8(W)?;
            if unsigned {
                ParamValue::UInt(u64::from(v))
            } else {
                ParamValue::Int(i64::from(v as i8))
            }
        }
        (_, SHORT | YEAR) => {
            let v = c.u16(W)?;
            if unsigned {
                ParamValue::UInt(u64::from(v))
            } else {
                ParamValue::Int(i64::from(v as i16))
            }
        }
        (_, LONG | INT24) => {
            let v = c.u32(W)?;
            if unsigned {
                ParamValue::UInt(u64::from(v))
            } else {
                ParamValue::Int(i64::from(v as i32))
            }
        }
        (_, LONGLONG) => {
            let v = c.u64(W)?;
            if unsigned {
                ParamValue::UInt(v)
            } else {
                ParamValue::Int(v as i64)
            }
        }
        (_, FLOAT) => ParamValue::Float(f64::from(f32::from_bits(c.u32(W)?))),
        (_, DOUBLE) => ParamValue::Float(f64::from_bits(c.u64(W)?)),
        (Layout::LenByte, TIME | TIME2) => {
            let n = c.u8(W)?;
            let b = c.take(usize::from(n), W)?;
            ParamValue::Temporal(format_time(b))
        }
        (Layout::LenByte, _) => {
            let n = c.u8(W)?;
            let b = c.take(usize::from(n), W)?;
            ParamValue::Temporal(format_datetime(b))
        }
        (Layout::LenEnc, _) => {
            let b = c.lenenc_bytes(W)?;
            match std::str::from_utf8(b) {
                Ok(s) => {
                    let mut end = s.len().min(MAX_PARAM_TEXT);
                    while !s.is_char_boundary(end) {
                        end -= 1;
                    }
                    ParamValue::Text(s[..end].to_string())
                }
                Err(_) => ParamValue::Bytes(b.len()),
            }
        }
        (Layout::Fixed(n), _) => {
            c.take(n, W)?;
            ParamValue::Null
        }
    })
}

fn le16(b: &[u8], at: usize) -> u32 {
    u32::from(b.get(at).copied().unwrap_or(0)) | u32::from(b.get(at + 1).copied().unwrap_or(0)) << 8
}

fn le32(b: &[u8], at: usize) -> u32 {
    le16(b, at) | le16(b, at + 2) << 16
}

fn byte(b: &[u8], at: usize) -> u32 {
    u32::from(b.get(at).copied().unwrap_or(0))
}

fn format_datetime(b: &[u8]) -> String {
    let mut s = format!("{:04}-{:02}-{:02}", le16(b, 0), byte(b, 2), byte(b, 3));
    if b.len() >= 7 {
        s.push_str(&format!(
            " {:02}:{:02}:{:02}",
            byte(b, 4),
            byte(b, 5),
            byte(b, 6)
        ));
    }
    if b.len() >= 11 {
        s.push_str(&format!(".{:06}", le32(b, 7)));
    }
    s
}

fn format_time(b: &[u8]) -> String {
    if b.is_empty() {
        return "00:00:00".into();
    }
    let neg = if byte(b, 0) == 1 { "-" } else { "" };
    let hours = u64::from(le32(b, 1)) * 24 + u64::from(byte(b, 5));
    let mut s = format!("{neg}{hours:02}:{:02}:{:02}", byte(b, 6), byte(b, 7));
    if b.len() >= 12 {
        s.push_str(&format!(".{:06}", le32(b, 8)));
    }
    s
}

/// `name` quoted as a MySQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

#[cfg(test)]
mod tests;
