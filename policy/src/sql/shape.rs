//! Statement shapes: a normalised form of SQL text used as a cache key and
//! for "approve this statement shape".

use super::Dialect;
use super::lex::{self, Lexing};

/// The normalised shape of `sql` under the dialect's default settings:
/// literals and bind placeholders replaced by `?`, comments dropped,
/// whitespace collapsed to single spaces, keywords lowercased, trailing `;`
/// removed. Identifiers keep their case and quotes.
///
/// Never fails: text the lexer rejects is returned with its whitespace
/// collapsed.
pub fn shape(sql: &str, dialect: Dialect) -> String {
    shape_with(sql, &Lexing::default_for(dialect))
}

/// The shape of `sql` as a session with these settings reads it (a `'` that
/// opens a literal under one setting may be inside one under another).
pub fn shape_with(sql: &str, lexing: &Lexing) -> String {
    match lex::lex(sql, lexing) {
        Ok(tokens) => lex::shape(sql, &tokens),
        Err(_) => collapse(sql),
    }
}

fn collapse(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}
