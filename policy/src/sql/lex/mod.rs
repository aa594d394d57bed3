//! Reading SQL text the way the server will.
//!
//! Whether a `'` opens a string, a `\` escapes the quote after it, a `--`
//! starts a comment or a `/*!` comment is code depends on the server and on
//! the session: PostgreSQL's `standard_conforming_strings` and
//! `client_encoding`, MySQL's `sql_mode` (`NO_BACKSLASH_ESCAPES`,
//! `ANSI_QUOTES`), its connection character set and its version. A
//! classifier that reads the text with a fixed idea of those settings can be
//! shown one statement while the server runs another
//! (`SELECT 'a\' -- '; DELETE FROM users; --` with
//! `standard_conforming_strings = off` is one SELECT to a standard lexer and
//! a SELECT plus a DELETE to the server).
//!
//! So the text is lexed here, by small lexers that follow the servers' own
//! scanners (PostgreSQL `scan.l`, MariaDB/MySQL `sql_lex.cc`) for everything
//! that decides where literals, identifiers, comments and statements begin
//! and end, under the [`Lexing`] settings of the session. Anything they are
//! not sure to read as the server does is an error, and the caller judges
//! the text as unparsed. Each statement is then handed to `sqlparser` in a
//! *canonical* form — comments removed, executable comments opened, every
//! string literal re-written in the one form sqlparser reads unambiguously —
//! and the literals sqlparser finds are checked against the ones found here:
//! two independent readings must agree, or the text is unparsed.

pub mod charset;
mod mysql;
mod pg;

pub use charset::Encoding;

use super::Dialect;
use std::ops::Range;

/// The server family and version, for MySQL's versioned comments
/// (`/*!50700 … */` is code on a server at least that new, a comment on an
/// older one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Server {
    /// Not known: a versioned comment with a version number is unparsed.
    Unknown,
    /// MariaDB with its `MYSQL_VERSION_ID` (10.11.6 → 101106).
    MariaDb(u32),
    /// MySQL with its version id (8.0.36 → 80036).
    MySql(u32),
}

impl Server {
    /// Reads a MySQL handshake's server version string
    /// (`8.0.36`, `5.5.5-10.11.6-MariaDB-0+deb12u1`).
    pub fn from_version_string(v: &str) -> Server {
        let mariadb = v.to_ascii_lowercase().contains("mariadb");
        let v = if mariadb {
            // The "5.5.5-" prefix is a replication-compatibility hack.
            v.strip_prefix("5.5.5-").unwrap_or(v)
        } else {
            v
        };
        let mut parts = v
            .split(|c: char| !c.is_ascii_digit())
            .filter(|p| !p.is_empty())
            .map(|p| p.parse::<u32>().ok());
        let (Some(Some(major)), Some(Some(minor)), Some(Some(patch))) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Server::Unknown;
        };
        if minor > 99 || patch > 99 {
            return Server::Unknown;
        }
        let id = major * 10_000 + minor * 100 + patch;
        if mariadb {
            Server::MariaDb(id)
        } else {
            Server::MySql(id)
        }
    }
}

/// How the server will lex a query: its dialect and the session settings
/// that change where literals and comments begin and end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lexing {
    /// The server's SQL dialect.
    pub dialect: Dialect,
    /// Backslash escapes in ordinary string literals: PostgreSQL with
    /// `standard_conforming_strings = off`; MySQL unless `sql_mode` has
    /// `NO_BACKSLASH_ESCAPES`.
    pub backslash_escapes: bool,
    /// MySQL `ANSI_QUOTES`: `"x"` is an identifier, not a string
    /// (PostgreSQL: always; the field is ignored).
    pub ansi_quotes: bool,
    /// The character set the query bytes are written in.
    pub encoding: Encoding,
    /// MySQL: the server, for versioned comments (ignored for PostgreSQL).
    pub server: Server,
}

impl Lexing {
    /// PostgreSQL's defaults: `standard_conforming_strings = on`, UTF-8.
    pub const fn postgres() -> Lexing {
        Lexing {
            dialect: Dialect::Postgres,
            backslash_escapes: false,
            ansi_quotes: true,
            encoding: Encoding::Utf8,
            server: Server::Unknown,
        }
    }

    /// MySQL's defaults: backslash escapes, `"` strings, `utf8mb4`, server
    /// version unknown.
    pub const fn mysql() -> Lexing {
        Lexing {
            dialect: Dialect::Mysql,
            backslash_escapes: true,
            ansi_quotes: false,
            encoding: Encoding::Utf8,
            server: Server::Unknown,
        }
    }

    /// The defaults of a dialect.
    pub const fn default_for(dialect: Dialect) -> Lexing {
        match dialect {
            Dialect::Postgres => Lexing::postgres(),
            Dialect::Mysql => Lexing::mysql(),
        }
    }

    /// Whether `bytes` read the same under every setting of this dialect
    /// (no backslash, no double quote, pure ASCII, no executable comment):
    /// such text can be judged before the session's settings are known.
    pub fn insensitive(bytes: &[u8], dialect: Dialect) -> bool {
        bytes.iter().all(|&b| b.is_ascii() && b != b'\\' && b != 0)
            && match dialect {
                Dialect::Postgres => true,
                Dialect::Mysql => !bytes.contains(&b'"') && !contains(bytes, b"/*"),
            }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// What a string literal holds and how it is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrKind {
    /// An ordinary character string (also PostgreSQL `E''`, dollar-quoted).
    Plain,
    /// `N'…'`.
    National,
    /// Bit and hex strings (`B'01'`, `X'1f'`): rendered as written.
    Bits,
}

/// One token of the server's reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Tok {
    /// Whitespace.
    Space,
    /// A comment: not code.
    Comment,
    /// MySQL: the `/*!NNNNN` that opens, or the `*/` that closes, a comment
    /// whose content the server runs as code.
    ExecMarker,
    /// A string literal and its value.
    Str { value: String, kind: StrKind },
    /// A quoted identifier and its value.
    QIdent(String),
    /// An unquoted identifier or keyword.
    Word,
    /// A numeric literal.
    Number,
    /// A bind parameter (`$1`, `?`).
    Param,
    /// MySQL `@name`: `Some(name)`; `@@system` variables: `None`.
    Var(Option<String>),
    /// `;` at the top level.
    Semi,
    /// An operator or punctuation.
    Op,
}

/// A token and its byte range in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub range: Range<usize>,
}

/// Why text cannot be read as the server reads it, and the byte offset of
/// the token where reading stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LexError {
    pub message: String,
    pub at: usize,
}

impl LexError {
    pub(crate) fn new(msg: impl Into<String>) -> LexError {
        LexError {
            message: msg.into(),
            at: 0,
        }
    }

    pub(crate) fn at(mut self, at: usize) -> LexError {
        self.at = at;
        self
    }
}

impl std::fmt::Display for LexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.at)
    }
}

/// Lexes the whole text under `lexing`.
pub(crate) fn lex(text: &str, lexing: &Lexing) -> Result<Vec<Token>, LexError> {
    match lexing.dialect {
        Dialect::Postgres => pg::lex(text, lexing.backslash_escapes),
        Dialect::Mysql => mysql::lex(text, lexing),
    }
}

/// Like [`lex`], but never fails: from where reading stopped, the rest of
/// the text is one opaque literal token. For masking recorded text, where
/// what cannot be read must still be masked as a unit and never allowed to
/// swallow the structure before it.
pub(crate) fn lex_lenient(text: &str, lexing: &Lexing) -> Vec<Token> {
    match lex(text, lexing) {
        Ok(t) => t,
        Err(e) => {
            let at = e.at.min(text.len());
            let mut prefix = lex(&text[..at], lexing).unwrap_or_default();
            let from = prefix.last().map_or(0, |t| t.range.end);
            prefix.push(Token {
                tok: Tok::Str {
                    value: String::new(),
                    kind: StrKind::Plain,
                },
                range: from..text.len(),
            });
            prefix
        }
    }
}

/// A statement: its tokens (delimiters excluded) and the byte range of its
/// text.
pub(crate) struct Segment<'t> {
    pub tokens: &'t [Token],
    pub range: Range<usize>,
}

/// Splits tokens at top-level `;`. Segments of only whitespace and
/// comments are dropped.
pub(crate) fn segments(tokens: &[Token], len: usize) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    let mut first = 0;
    let mut start = 0;
    for (i, t) in tokens.iter().enumerate() {
        if t.tok == Tok::Semi {
            push(&mut out, &tokens[first..i], start..t.range.start);
            first = i + 1;
            start = t.range.end;
        }
    }
    push(&mut out, &tokens[first..], start..len);
    out
}

fn push<'t>(out: &mut Vec<Segment<'t>>, tokens: &'t [Token], range: Range<usize>) {
    if tokens.iter().any(|t| !is_blank(&t.tok)) {
        out.push(Segment { tokens, range });
    }
}

fn is_blank(t: &Tok) -> bool {
    matches!(t, Tok::Space | Tok::Comment | Tok::ExecMarker)
}

/// The canonical form of a statement for sqlparser, and the values of its
/// string literals and quoted identifiers in order (for the cross-check).
pub(crate) struct Canonical {
    pub text: String,
    pub strings: Vec<String>,
    pub idents: Vec<String>,
}

/// Renders a statement's tokens in the form sqlparser reads unambiguously:
/// comments and executable-comment markers become a space, adjacent MySQL
/// string literals are joined (as the server joins them), every string is
/// written `'…'` with `''` (and, for MySQL, `\\`) escapes, PostgreSQL
/// dollar-quoted and `E''` strings included; identifiers that sqlparser
/// might split (`$` inside, a leading digit) are quoted.
pub(crate) fn canonical(text: &str, seg: &Segment<'_>, dialect: Dialect) -> Canonical {
    let mut out = String::with_capacity(seg.range.len() + 8);
    let mut strings = Vec::new();
    let mut idents = Vec::new();
    let toks = seg.tokens;
    let mut i = 0;
    while i < toks.len() {
        let t = &toks[i];
        let src = &text[t.range.clone()];
        match &t.tok {
            Tok::Space => out.push_str(src),
            Tok::Comment | Tok::ExecMarker => out.push(' '),
            Tok::Str { value, kind } => match kind {
                StrKind::Bits => {
                    out.push_str(src);
                    // sqlparser gives the digits as the value.
                    strings.push(value.clone());
                }
                StrKind::Plain | StrKind::National => {
                    let mut value = value.clone();
                    if dialect == Dialect::Mysql && *kind == StrKind::Plain {
                        // `'a' 'b'` is one literal to MySQL.
                        let mut j = i + 1;
                        let mut last = i;
                        while let Some(n) = toks.get(j) {
                            match &n.tok {
                                Tok::Space | Tok::Comment => j += 1,
                                Tok::Str {
                                    value: v,
                                    kind: StrKind::Plain,
                                } => {
                                    value.push_str(v);
                                    last = j;
                                    j += 1;
                                }
                                _ => break,
                            }
                        }
                        i = last;
                    }
                    if *kind == StrKind::National {
                        out.push('N');
                    }
                    quote_string(&mut out, &value, dialect);
                    strings.push(value);
                }
            },
            Tok::QIdent(v) => {
                let q = match dialect {
                    Dialect::Postgres => '"',
                    Dialect::Mysql => '`',
                };
                quote_ident(&mut out, v, q);
                idents.push(v.clone());
            }
            Tok::Word => {
                let starts_digit = src.as_bytes().first().is_some_and(u8::is_ascii_digit);
                if (dialect == Dialect::Postgres && src.contains('$'))
                    || (dialect == Dialect::Mysql && starts_digit)
                {
                    let v = match dialect {
                        // Unquoted PostgreSQL identifiers fold to lower case.
                        Dialect::Postgres => src.to_ascii_lowercase(),
                        Dialect::Mysql => src.to_string(),
                    };
                    let q = if dialect == Dialect::Postgres {
                        '"'
                    } else {
                        '`'
                    };
                    quote_ident(&mut out, &v, q);
                    idents.push(v);
                } else {
                    out.push_str(src);
                }
            }
            Tok::Var(Some(name)) => {
                out.push('@');
                if name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') && !name.is_empty()
                {
                    out.push_str(name);
                } else {
                    quote_ident(&mut out, name, '`');
                    idents.push(name.clone());
                }
            }
            Tok::Op if dialect == Dialect::Mysql && src == "\\N" => out.push_str("NULL"),
            Tok::Var(None) | Tok::Number | Tok::Param | Tok::Op | Tok::Semi => {
                out.push_str(src);
            }
        }
        // Keep tokens apart where the source had them adjacent to something
        // that was removed.
        i += 1;
    }
    Canonical {
        text: out,
        strings,
        idents,
    }
}

fn quote_string(out: &mut String, v: &str, dialect: Dialect) {
    out.push('\'');
    for c in v.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' if dialect == Dialect::Mysql => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
}

fn quote_ident(out: &mut String, v: &str, q: char) {
    out.push(q);
    for c in v.chars() {
        if c == q {
            out.push(q);
        }
        out.push(c);
    }
    out.push(q);
}

/// The statement's shape: literals and parameters as `?`, comments and
/// executable-comment markers dropped, whitespace collapsed, keywords in
/// lower case, identifiers as written, no trailing `;`.
pub(crate) fn shape(text: &str, tokens: &[Token]) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for t in tokens {
        let src = &text[t.range.clone()];
        let piece: std::borrow::Cow<'_, str> = match &t.tok {
            Tok::Space | Tok::Comment | Tok::ExecMarker => {
                space = true;
                continue;
            }
            Tok::Str { .. } | Tok::Number | Tok::Param => "?".into(),
            Tok::Word if is_keyword(src) => src.to_ascii_lowercase().into(),
            _ => src.into(),
        };
        if space && !out.is_empty() {
            out.push(' ');
        }
        space = false;
        out.push_str(&piece);
    }
    while out.ends_with(';') || out.ends_with(' ') {
        out.pop();
    }
    out
}

fn is_keyword(word: &str) -> bool {
    let upper = word.to_ascii_uppercase();
    sqlparser::keywords::ALL_KEYWORDS
        .binary_search(&upper.as_str())
        .is_ok()
}

#[cfg(test)]
mod tests;
