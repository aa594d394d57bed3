//! Token-based statement splitting.

use super::{Dialect, SqlError};
use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect};
use sqlparser::tokenizer::{Location, Token, TokenWithSpan, Tokenizer};
use std::ops::Range;

/// One statement's tokens (whitespace and comments included) and the byte
/// range of its text in the original string (delimiters excluded).
pub(super) struct Segment {
    pub tokens: Vec<TokenWithSpan>,
    pub range: Range<usize>,
}

pub(super) fn dialect_impl(dialect: Dialect) -> &'static dyn sqlparser::dialect::Dialect {
    static PG: PostgreSqlDialect = PostgreSqlDialect {};
    static MY: MySqlDialect = MySqlDialect {};
    match dialect {
        Dialect::Postgres => &PG,
        Dialect::Mysql => &MY,
    }
}

/// Tokenizes `sql` (all of it) with the dialect's tokenizer.
///
/// `COPY ... FROM STDIN;` makes sqlparser's tokenizer swallow the following
/// lines as inline COPY data (the way psql scripts carry it). Over the wire
/// that text is not data: the server runs it as further statements. So the
/// data token is dropped and the text from where it started is tokenized
/// again as SQL.
pub(super) fn tokens(sql: &str, dialect: Dialect) -> Result<Vec<(TokenWithSpan, usize)>, SqlError> {
    let d = dialect_impl(dialect);
    let mut out = Vec::new();
    let mut base = 0usize;
    loop {
        let sub = sql.get(base..).ok_or(SqlError::Split)?;
        let toks = Tokenizer::new(d, sub)
            .tokenize_with_location()
            .map_err(|e| SqlError::Tokenize(e.to_string()))?;
        let mut cursor = Cursor::new(sub);
        let mut restart: Option<Location> = None;
        for t in toks {
            if let Some(data_start) = restart {
                // Tokens of the rest of the `;` line come before the data.
                if loc_key(t.span.start) >= loc_key(data_start) {
                    break;
                }
            }
            match &t.token {
                Token::CopyData { .. } => {
                    restart = Some(t.span.start);
                    continue;
                }
                Token::SemiColon => {
                    let off = base + cursor.seek(t.span.start)?;
                    if sql.as_bytes().get(off) != Some(&b';') {
                        return Err(SqlError::Split);
                    }
                    out.push((t, off));
                }
                _ => out.push((t, usize::MAX)),
            }
        }
        match restart {
            Some(loc) => {
                let off = base + cursor.seek(loc)?;
                if off <= base {
                    return Err(SqlError::Split);
                }
                base = off;
            }
            None => return Ok(out),
        }
    }
}

/// Splits `sql` at its top-level `;` tokens. Segments holding only
/// whitespace and comments are dropped.
pub(super) fn split(sql: &str, dialect: Dialect) -> Result<Vec<Segment>, SqlError> {
    let mut segments = Vec::new();
    let mut current = Vec::new();
    let mut start = 0usize;
    for (tok, off) in tokens(sql, dialect)? {
        if matches!(tok.token, Token::SemiColon) {
            push(&mut segments, std::mem::take(&mut current), start..off);
            start = off + 1;
        } else {
            current.push(tok);
        }
    }
    push(&mut segments, current, start..sql.len());
    Ok(segments)
}

fn push(segments: &mut Vec<Segment>, tokens: Vec<TokenWithSpan>, range: Range<usize>) {
    if tokens
        .iter()
        .any(|t| !matches!(t.token, Token::Whitespace(_)))
    {
        segments.push(Segment { tokens, range });
    }
}

fn loc_key(l: Location) -> (u64, u64) {
    (l.line, l.column)
}

/// Converts tokenizer locations (1-based line, 1-based column in chars) to
/// byte offsets, moving forward only: O(n) over a whole string.
struct Cursor<'a> {
    text: &'a str,
    byte: usize,
    line: u64,
    col: u64,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a str) -> Self {
        Cursor {
            text,
            byte: 0,
            line: 1,
            col: 1,
        }
    }

    fn seek(&mut self, loc: Location) -> Result<usize, SqlError> {
        let want = loc_key(loc);
        if want < (self.line, self.col) {
            return Err(SqlError::Split);
        }
        while (self.line, self.col) < want {
            let c = self.text[self.byte..]
                .chars()
                .next()
                .ok_or(SqlError::Split)?;
            self.byte += c.len_utf8();
            if c == '\n' {
                self.line += 1;
                self.col = 1;
            } else {
                self.col += 1;
            }
        }
        Ok(self.byte)
    }
}
