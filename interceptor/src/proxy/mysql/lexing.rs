//! Following how the server reads this session's queries: its version
//! (for versioned comments), `sql_mode` (`NO_BACKSLASH_ESCAPES`,
//! `ANSI_QUOTES`, and modes whose lexing is not followed here) and
//! `character_set_client`.
//!
//! - `NO_BACKSLASH_ESCAPES` is in the status flags of every OK and EOF
//!   packet: followed exactly after every command.
//! - `ANSI_QUOTES` and the character set have no such flag. After any
//!   command that may have changed them (a `SET`, `CALL`, `EXECUTE`, an
//!   unparsed statement, `COM_CHANGE_USER`, `COM_RESET_CONNECTION`), the
//!   next query is preceded by the proxy's own
//!   `SELECT @@SESSION.sql_mode, @@SESSION.character_set_client`, whose
//!   answer the client never sees. At the start of a session the settings
//!   are the server's (global, `init_connect`): they are read the first
//!   time a query's text depends on them.
//! - In one multi-statement query the server reads each statement only after
//!   running the ones before it; a statement that follows one that may
//!   change the settings is judged unparsed unless its text reads the same
//!   under every setting.
//! - `sql_mode` flags that change lexing in ways not followed here (MariaDB
//!   `ORACLE`, `MSSQL`, and any flag not known) make every statement
//!   unparsed until the mode changes back.

use policy::Dialect;
use policy::sql::{Encoding, Lexing, Server, SqlStatement, StatementKind};

use super::codec::{self, is_terminator};
use super::error::{CodecError, MysqlError, Side};
use super::stream::{Leg, Stream};

/// `SERVER_STATUS_NO_BACKSLASH_ESCAPES`.
pub const NO_BACKSLASH_ESCAPES: u16 = 0x0200;

/// The proxy's own question (ASCII, no quotes: it reads the same under
/// every setting).
const QUERY: &[u8] = b"SELECT @@SESSION.sql_mode, @@SESSION.character_set_client";

/// `sql_mode` flags that do not change how text is lexed (or, for
/// `ANSI_QUOTES` and `NO_BACKSLASH_ESCAPES`, whose effect is followed).
const FOLLOWED_MODES: &[&str] = &[
    "REAL_AS_FLOAT",
    "PIPES_AS_CONCAT",
    "ANSI_QUOTES",
    "IGNORE_SPACE",
    "IGNORE_BAD_TABLE_OPTIONS",
    "ONLY_FULL_GROUP_BY",
    "NO_UNSIGNED_SUBTRACTION",
    "NO_DIR_IN_CREATE",
    "POSTGRESQL",
    "DB2",
    "MAXDB",
    "NO_KEY_OPTIONS",
    "NO_TABLE_OPTIONS",
    "NO_FIELD_OPTIONS",
    "MYSQL323",
    "MYSQL40",
    "ANSI",
    "NO_AUTO_VALUE_ON_ZERO",
    "NO_BACKSLASH_ESCAPES",
    "STRICT_TRANS_TABLES",
    "STRICT_ALL_TABLES",
    "NO_ZERO_IN_DATE",
    "NO_ZERO_DATE",
    "ALLOW_INVALID_DATES",
    "INVALID_DATES",
    "ERROR_FOR_DIVISION_BY_ZERO",
    "TRADITIONAL",
    "NO_AUTO_CREATE_USER",
    "HIGH_NOT_PRECEDENCE",
    "NO_ENGINE_SUBSTITUTION",
    "PAD_CHAR_TO_FULL_LENGTH",
    "EMPTY_STRING_IS_NULL",
    "SIMULTANEOUS_ASSIGNMENT",
    "TIME_ROUND_FRACTIONAL",
    "TIME_TRUNCATE_FRACTIONAL",
];

/// The session's lexing state.
#[derive(Debug, Clone)]
pub struct SessionLexing {
    /// The settings as last known.
    pub lexing: Lexing,
    /// `ANSI_QUOTES` or the character set may have changed since they were
    /// read (or they were never read).
    pub stale: bool,
    /// Read them before the next query whatever its text (a statement that
    /// may change them ran).
    pub eager: bool,
    /// Why the session's queries cannot be judged (an unfollowed mode, or the
    /// settings could not be read).
    pub unfollowable: Option<String>,
}

impl SessionLexing {
    pub fn new(server_version: &str) -> SessionLexing {
        SessionLexing {
            lexing: Lexing {
                server: Server::from_version_string(server_version),
                ..Lexing::mysql()
            },
            stale: true,
            eager: false,
            unfollowable: None,
        }
    }

    /// Follows the status flags of an OK or EOF packet.
    pub fn status(&mut self, status: u16) {
        self.lexing.backslash_escapes = status & NO_BACKSLASH_ESCAPES == 0;
    }

    /// Whether the settings must be read before `sql` is judged.
    pub fn must_read(&self, sql: &[u8]) -> bool {
        self.eager || (self.stale && depends_on_settings(sql))
    }

    /// After a command that may change the settings.
    pub fn changed(&mut self) {
        self.stale = true;
        self.eager = true;
    }

    /// Applies the answer to the proxy's question.
    pub fn apply(&mut self, sql_mode: &str, charset: &str) {
        let modes: Vec<&str> = sql_mode
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .collect();
        let unknown: Vec<&str> = modes
            .iter()
            .copied()
            .filter(|m| !FOLLOWED_MODES.iter().any(|f| f.eq_ignore_ascii_case(m)))
            .collect();
        self.lexing.ansi_quotes = modes.iter().any(|m| m.eq_ignore_ascii_case("ANSI_QUOTES"));
        self.lexing.backslash_escapes = !modes
            .iter()
            .any(|m| m.eq_ignore_ascii_case("NO_BACKSLASH_ESCAPES"));
        self.lexing.encoding = Encoding::from_mysql(charset);
        self.unfollowable = if !unknown.is_empty() {
            Some(format!(
                "sql_mode {} changes how the server reads queries in ways the interceptor does not follow",
                unknown.join(",")
            ))
        } else if self.lexing.encoding == Encoding::NotAscii {
            Some(format!(
                "character_set_client {charset} does not keep ASCII characters as they are"
            ))
        } else {
            None
        };
        self.stale = false;
        self.eager = false;
    }

    /// The settings could not be read: nothing that depends on them can be
    /// judged until they are.
    pub fn unreadable(&mut self, why: String) {
        self.unfollowable = Some(format!("cannot read the session's sql_mode: {why}"));
        self.stale = true;
        self.eager = true;
    }
}

/// Whether text may read differently under another `sql_mode`, character
/// set or server version.
pub fn depends_on_settings(sql: &[u8]) -> bool {
    !Lexing::insensitive(sql, Dialect::Mysql) || sql.contains(&b'[')
}

/// Whether running this statement may change how the server reads the
/// next one.
pub fn may_change_settings(s: &SqlStatement) -> bool {
    s.kinds.iter().any(|k| {
        matches!(
            k,
            StatementKind::Set
                | StatementKind::Call
                | StatementKind::Execute
                | StatementKind::Reset
                | StatementKind::Other
        )
    })
}

/// In a multi-statement query, the statements after one that may change
/// the settings are read under settings not known here: unless their text
/// reads the same under every setting, the query cannot be judged.
pub fn batch_unfollowable(stmts: &[SqlStatement]) -> Option<String> {
    let mut changer: Option<&SqlStatement> = None;
    for s in stmts {
        if let Some(c) = changer
            && depends_on_settings(s.text.as_bytes())
        {
            return Some(format!(
                "a statement follows `{}` in the same query, and the server reads it under the settings that statement may set; send it separately",
                short(&c.text)
            ));
        }
        if may_change_settings(s) {
            changer = Some(s);
        }
    }
    None
}

fn short(s: &str) -> String {
    let mut out: String = s.chars().take(60).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Asks the server for `sql_mode` and `character_set_client` on the
/// session's own connection, between commands; the answer never reaches
/// the client. Leaves the server leg's sequence at 0.
pub async fn read_settings(
    server: &mut Leg<Stream>,
    buf: &mut Vec<u8>,
    deprecate_eof: bool,
) -> Result<Result<(String, String), String>, MysqlError> {
    server.seq = 0;
    let mut q = Vec::with_capacity(QUERY.len() + 1);
    q.push(codec::com::QUERY);
    q.extend_from_slice(QUERY);
    server.write(&q).await?;
    server.flush().await?;
    server.read_expected(buf, "before answering").await?;
    if buf.first() == Some(&0xff) {
        let msg = codec::parse_err(buf)
            .map(|e| e.message)
            .unwrap_or_else(|e| e.to_string());
        server.seq = 0;
        return Ok(Err(msg));
    }
    let count = codec::Cursor::new(buf)
        .lenenc("column count")
        .map_err(MysqlError::codec(Side::Server))?;
    if count != 2 {
        return Err(MysqlError::Codec {
            side: Side::Server,
            source: CodecError::malformed("settings query", format!("{count} columns")),
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
    }
    let mut row: Option<(String, String)> = None;
    loop {
        server
            .read_expected(buf, "in the middle of a result set")
            .await?;
        if is_terminator(buf, deprecate_eof) {
            break;
        }
        if buf.first() == Some(&0xff) {
            let msg = codec::parse_err(buf)
                .map(|e| e.message)
                .unwrap_or_else(|e| e.to_string());
            server.seq = 0;
            return Ok(Err(msg));
        }
        let mut c = codec::Cursor::new(buf);
        let mode = c
            .lenenc_bytes("sql_mode")
            .map_err(MysqlError::codec(Side::Server))?;
        let cs = c
            .lenenc_bytes("character_set_client")
            .map_err(MysqlError::codec(Side::Server))?;
        row = Some((
            String::from_utf8_lossy(mode).into_owned(),
            String::from_utf8_lossy(cs).into_owned(),
        ));
    }
    server.seq = 0;
    Ok(row.ok_or_else(|| "no row".to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::sql::classify_with;

    #[test]
    fn modes_are_followed_or_refused() {
        let mut s = SessionLexing::new("5.5.5-10.11.6-MariaDB");
        assert_eq!(s.lexing.server, Server::MariaDb(101106));
        s.apply(
            "STRICT_TRANS_TABLES,ANSI_QUOTES,NO_BACKSLASH_ESCAPES",
            "utf8mb4",
        );
        assert!(s.lexing.ansi_quotes && !s.lexing.backslash_escapes);
        assert!(s.unfollowable.is_none());
        s.apply("PIPES_AS_CONCAT,ANSI_QUOTES,IGNORE_SPACE,ORACLE", "utf8mb4");
        assert!(s.unfollowable.as_deref().unwrap().contains("ORACLE"));
        s.apply("", "sjis");
        assert_eq!(s.lexing.encoding, Encoding::ShiftJis);
        assert!(s.unfollowable.is_none());
        s.apply("", "swe7");
        assert!(s.unfollowable.is_some());
        s.status(NO_BACKSLASH_ESCAPES);
        assert!(!s.lexing.backslash_escapes);
    }

    #[test]
    fn reading_is_lazy_until_something_may_have_changed() {
        let mut s = SessionLexing::new("8.0.36");
        assert!(!s.must_read(b"SELECT 1 FROM t WHERE id = 4"));
        assert!(s.must_read(b"SELECT \"x\""));
        assert!(s.must_read("SELECT 'é'".as_bytes()));
        s.apply("", "utf8mb4");
        assert!(!s.must_read(b"SELECT \"x\""));
        s.changed();
        assert!(s.must_read(b"SELECT 1"));
    }

    #[test]
    fn statements_after_a_set_in_one_batch() {
        let l = Lexing {
            server: Server::MariaDb(101106),
            ..Lexing::mysql()
        };
        let b = classify_with("SET sql_mode = 'ANSI_QUOTES'; SELECT \"a\" FROM t", &l).unwrap();
        assert!(batch_unfollowable(&b).is_some());
        let b = classify_with("SET NAMES utf8mb4; SET autocommit = 1", &l).unwrap();
        assert!(batch_unfollowable(&b).is_none());
        let b = classify_with("SELECT 1; SELECT \"x\"", &l).unwrap();
        assert!(batch_unfollowable(&b).is_none());
    }
}
