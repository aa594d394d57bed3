//! SQL classification: split a query string into statements and say, for
//! each, what kind it is and which tables and functions it touches.
//!
//! The text is first read the way the server will read it (the [`lex`]
//! module: the server's own rules for strings, comments, quoted identifiers
//! and statement boundaries, under the session's settings — [`Lexing`]).
//! Each statement is then parsed by `sqlparser` (PostgreSQL and MySQL
//! dialects) in a canonical form whose literals both readings must agree
//! on, and must be consumed completely. One statement that cannot be read
//! or parsed makes the whole string an error: the caller judges it as
//! unparsed rather than letting the rest through.

mod classify;
mod facts;
pub mod lex;
mod lineage;
mod shape;
mod split;

pub use facts::{Action, ObjectKind};
pub use lex::{Encoding, Lexing, Server};
pub use lineage::{Lineage, OutputItem};
pub use shape::{shape, shape_with};

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The SQL dialect of the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    /// PostgreSQL.
    Postgres,
    /// MySQL / MariaDB.
    Mysql,
}

macro_rules! statement_kinds {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal, )+) => {
        /// What a statement does. Names are lowercase in policy files.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum StatementKind {
            $( $(#[$doc])* $variant, )+
        }

        impl StatementKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [StatementKind] = &[$(StatementKind::$variant),+];

            /// The lowercase name used in policy files.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(StatementKind::$variant => $name,)+
                }
            }
        }
    };
}

statement_kinds! {
    /// `SELECT`, `VALUES`, `WITH ... SELECT`.
    Select = "select",
    /// `INSERT` (and MySQL `REPLACE`).
    Insert = "insert",
    /// `UPDATE`.
    Update = "update",
    /// `DELETE`.
    Delete = "delete",
    /// `MERGE`.
    Merge = "merge",
    /// Any `CREATE ...` (and `SELECT ... INTO new_table` on PostgreSQL).
    Create = "create",
    /// Any `ALTER ...` and `RENAME TABLE`.
    Alter = "alter",
    /// Any `DROP ...`.
    Drop = "drop",
    /// `TRUNCATE`.
    Truncate = "truncate",
    /// `GRANT` and `ALTER DEFAULT PRIVILEGES`.
    Grant = "grant",
    /// `REVOKE`.
    Revoke = "revoke",
    /// `COPY` (and Hive-style `LOAD DATA ... INTO TABLE`).
    Copy = "copy",
    /// `SET ...` (variables, roles, transaction modes, MySQL names).
    Set = "set",
    /// `SHOW ...`.
    Show = "show",
    /// `BEGIN` / `START TRANSACTION`.
    Begin = "begin",
    /// `COMMIT` / `END`.
    Commit = "commit",
    /// `ROLLBACK` / `ABORT` (also `ROLLBACK TO SAVEPOINT`).
    Rollback = "rollback",
    /// `SAVEPOINT`.
    Savepoint = "savepoint",
    /// `RELEASE [SAVEPOINT]`.
    Release = "release",
    /// `PREPARE` (the prepared statement's own kinds follow it).
    Prepare = "prepare",
    /// `EXECUTE` of a prepared statement.
    Execute = "execute",
    /// `DEALLOCATE`.
    Deallocate = "deallocate",
    /// `EXPLAIN` (the explained statement's kinds follow only with `ANALYZE`).
    Explain = "explain",
    /// `DESCRIBE t` / `EXPLAIN t` (MySQL table description).
    Describe = "describe",
    /// `ANALYZE`.
    Analyze = "analyze",
    /// `VACUUM`.
    Vacuum = "vacuum",
    /// `CALL`.
    Call = "call",
    /// PostgreSQL `DO` block (the body is not inspected).
    Do = "do",
    /// `LISTEN`.
    Listen = "listen",
    /// `NOTIFY`.
    Notify = "notify",
    /// `UNLISTEN`.
    Unlisten = "unlisten",
    /// `LOCK TABLE` / MySQL `LOCK TABLES`.
    Lock = "lock",
    /// MySQL `UNLOCK TABLES`.
    Unlock = "unlock",
    /// `USE db`.
    Use = "use",
    /// `COMMENT ON`.
    Comment = "comment",
    /// `DISCARD`.
    Discard = "discard",
    /// `RESET`.
    Reset = "reset",
    /// `DECLARE` (cursors).
    Declare = "declare",
    /// `FETCH` from a cursor.
    Fetch = "fetch",
    /// `CLOSE` a cursor.
    Close = "close",
    /// `REFRESH MATERIALIZED VIEW`.
    Refresh = "refresh",
    /// MySQL `KILL`.
    Kill = "kill",
    /// MySQL `FLUSH`.
    Flush = "flush",
    /// Anything else the parser understood.
    Other = "other",
}

impl fmt::Display for StatementKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StatementKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        StatementKind::ALL
            .iter()
            .copied()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = StatementKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown statement kind {s:?} (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// One classified statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SqlStatement {
    /// This statement's own text: the slice of the original string between
    /// its delimiters, trimmed of surrounding whitespace.
    pub text: String,
    /// The statement's kind first, then the kinds of nested data-modifying
    /// statements (a `DELETE` inside a CTE, the statement of `PREPARE` or of
    /// `EXPLAIN ANALYZE`), without duplicates.
    pub kinds: Vec<StatementKind>,
    /// Every table (or view) named anywhere in the statement, as written
    /// (schema-qualified when it was), without quotes, without duplicates.
    pub tables: Vec<String>,
    /// Every function called anywhere in the statement (including
    /// table functions in `FROM` and `CALL`), as written, without duplicates.
    pub functions: Vec<String>,
    /// `Some` when the statement contains an `UPDATE` or `DELETE`: `false`
    /// if any of them has no `WHERE` clause.
    pub has_where: Option<bool>,
    /// The kinds of object the statement (or a statement nested in it)
    /// creates, alters, drops, truncates, refreshes, comments on, or grants
    /// or revokes privileges on, without duplicates. Empty for statements
    /// that define or change no object (queries, DML, `SET`, …).
    #[serde(default)]
    pub objects: Vec<ObjectKind>,
    /// What the statement does beyond its kind (`COPY … TO PROGRAM`,
    /// `ALTER TABLE … DROP COLUMN`, `SET ROLE`, …), including the actions of
    /// nested statements and of function calls such as `set_config()`,
    /// without duplicates.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// The statement carries code its shape does not show: a `DO` block, a
    /// `CREATE FUNCTION`/`PROCEDURE` body, `COPY … PROGRAM`, `EXECUTE` of a
    /// prepared statement, or a call of a function that runs SQL given as a
    /// string (`dblink*`, `query_to_xml`, …). Approving its shape would
    /// approve any code in its literals, so the gate approves such
    /// statements one at a time only. See [`SqlStatement::literal_code`].
    #[serde(default)]
    pub literal_code: bool,
    /// Every column named anywhere in the statement (select lists, `WHERE`,
    /// `JOIN ... ON`/`USING`, `GROUP BY`/`ORDER BY`, function arguments,
    /// subqueries, CTEs, `INSERT` column lists, `SET` targets, `COPY`
    /// column lists, `RETURNING`, `ALTER TABLE` column operations), as the
    /// bare name (last identifier of `t.col`), without quotes, without
    /// duplicates. Aliases used in `ORDER BY` are listed too.
    #[serde(default)]
    pub columns: Vec<String>,
    /// The statement may read or write columns it does not name: `*`/`t.*`
    /// (outside `EXISTS`), a table used as a row value (`row_to_json(u)`,
    /// `SELECT u FROM users u`), `TABLE t`, columns renamed by position
    /// (`FROM users AS u(a, b)`), `INSERT` without a column list, `COPY t`
    /// without one, a function that runs SQL given as text (`query_to_xml`,
    /// `dblink`, ...), `FETCH`, `EXECUTE`, `CALL`, `MERGE`, `DO`.
    #[serde(default)]
    pub all_columns: bool,
    /// The result columns, in order, for statements that return rows from
    /// data: `SELECT`/`VALUES`/`WITH`/`TABLE`, `INSERT`/`UPDATE`/`DELETE
    /// ... RETURNING`, `COPY ... TO STDOUT` (items without names: COPY data
    /// carries no labels). `FETCH`, `EXECUTE`, `CALL` and statements only a
    /// fallback recogniser understood return rows nothing here can see:
    /// one [`OutputItem::unknown`] run.
    ///
    /// `None`: the statement returns no rows (DDL, `SET`, DML without
    /// `RETURNING`, `COPY ... FROM`, `DECLARE`, `PREPARE`), or only server
    /// metadata and plan text, never stored values (`SHOW`, `EXPLAIN` with
    /// or without `ANALYZE`, `DESCRIBE`).
    #[serde(default)]
    pub outputs: Option<Vec<OutputItem>>,
}

impl SqlStatement {
    /// A statement nothing is known about (text the classifier could not
    /// read, run after an approval or under `unparsed = "allow"`): it may
    /// read any column and return anything, so masks with column rules
    /// mask every one of its result columns and withhold its error texts.
    pub fn unknown(text: &str) -> SqlStatement {
        let facts = lineage::unknown();
        SqlStatement {
            text: text.to_owned(),
            kinds: vec![StatementKind::Other],
            tables: Vec::new(),
            functions: Vec::new(),
            has_where: None,
            objects: Vec::new(),
            actions: Vec::new(),
            literal_code: false,
            columns: facts.columns,
            all_columns: facts.all_columns,
            outputs: facts.outputs,
        }
    }

    /// The statement's own kind (the first of `kinds`).
    pub fn kind(&self) -> StatementKind {
        self.kinds.first().copied().unwrap_or(StatementKind::Other)
    }

    /// Whether the statement carries code in string literals (or in itself)
    /// that its shape does not show, so a shape-wide approval must not
    /// cover it (the field of the same name).
    pub fn literal_code(&self) -> bool {
        self.literal_code
    }
}

/// Why a SQL string could not be classified.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SqlError {
    /// The tokenizer rejected the text (unterminated string or comment, ...).
    #[error("SQL tokenizer error: {0}")]
    Tokenize(String),
    /// Statement number `index` (1-based) did not parse.
    #[error("SQL parse error in statement {index}: {message}")]
    Parse {
        /// 1-based position of the statement in the string.
        index: usize,
        /// The parser's message.
        message: String,
    },
    /// The session's bytes could not be read as text in its character set.
    #[error("the query is not valid in the session's character set: {0}")]
    Encoding(String),
    /// The parser read the text differently from the server's own rules.
    #[error("the parser and the server's lexical rules read this text differently ({0})")]
    Mismatch(String),
}

/// Splits `sql` into statements and classifies each one, under the
/// dialect's default session settings ([`Lexing::default_for`]).
///
/// Empty strings, whitespace and comment-only strings give `Ok(vec![])`. An
/// error in any statement is an error for the whole string.
pub fn classify(sql: &str, dialect: Dialect) -> Result<Vec<SqlStatement>, SqlError> {
    classify_with(sql, &Lexing::default_for(dialect))
}

/// Decodes the query bytes in the session's character set (exactly: a
/// sequence that is not a valid character is an error, never replaced)
/// and classifies them as [`classify_with`] does.
pub fn classify_bytes(sql: &[u8], lexing: &Lexing) -> Result<Vec<SqlStatement>, SqlError> {
    let text = lex::charset::decode(sql, lexing.encoding).map_err(|e| SqlError::Encoding(e.0))?;
    classify_with(&text, lexing)
}

/// Splits `sql` into statements as a server with these session settings
/// does, and classifies each one.
pub fn classify_with(sql: &str, lexing: &Lexing) -> Result<Vec<SqlStatement>, SqlError> {
    let dialect = lexing.dialect;
    let tokens = lex::lex(sql, lexing).map_err(|e| SqlError::Tokenize(e.to_string()))?;
    let segments = lex::segments(&tokens, sql.len());
    let mut out = Vec::with_capacity(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        let text = sql.get(seg.range.clone()).unwrap_or_default().trim();
        let canonical = lex::canonical(sql, seg, dialect);
        let parsed =
            sqlparser::tokenizer::Tokenizer::new(split::dialect_impl(dialect), &canonical.text)
                .tokenize_with_location()
                .map_err(|e| SqlError::Tokenize(e.to_string()))?;
        cross_check(&parsed, &canonical)?;
        let stmt =
            classify::statement(parsed, text, dialect).map_err(|message| SqlError::Parse {
                index: i + 1,
                message,
            })?;
        out.push(stmt);
    }
    Ok(out)
}

/// The literals sqlparser found in the canonical text must be exactly the
/// ones the server-faithful lexer found, in order, and it must find no
/// comment and no statement delimiter.
fn cross_check(
    parsed: &[sqlparser::tokenizer::TokenWithSpan],
    canonical: &lex::Canonical,
) -> Result<(), SqlError> {
    use sqlparser::tokenizer::{Token, Whitespace};
    let mut strings = Vec::new();
    let mut idents = Vec::new();
    for t in parsed {
        match &t.token {
            Token::SingleQuotedString(s)
            | Token::NationalStringLiteral(s)
            | Token::HexStringLiteral(s)
            | Token::SingleQuotedByteStringLiteral(s) => strings.push(s.as_str()),
            Token::Word(w) if w.quote_style.is_some() => idents.push(w.value.as_str()),
            Token::Whitespace(
                Whitespace::SingleLineComment { .. } | Whitespace::MultiLineComment(_),
            ) => {
                return Err(SqlError::Mismatch(
                    "a comment the server does not see".into(),
                ));
            }
            Token::SemiColon => {
                return Err(SqlError::Mismatch(
                    "a statement delimiter inside a statement".into(),
                ));
            }
            Token::DoubleQuotedString(_)
            | Token::TripleSingleQuotedString(_)
            | Token::TripleDoubleQuotedString(_)
            | Token::DollarQuotedString(_)
            | Token::DoubleQuotedByteStringLiteral(_)
            | Token::TripleSingleQuotedByteStringLiteral(_)
            | Token::TripleDoubleQuotedByteStringLiteral(_)
            | Token::SingleQuotedRawStringLiteral(_)
            | Token::DoubleQuotedRawStringLiteral(_)
            | Token::TripleSingleQuotedRawStringLiteral(_)
            | Token::TripleDoubleQuotedRawStringLiteral(_)
            | Token::QuoteDelimitedStringLiteral(_)
            | Token::NationalQuoteDelimitedStringLiteral(_)
            | Token::EscapedStringLiteral(_)
            | Token::UnicodeStringLiteral(_)
            | Token::CopyData { .. } => {
                return Err(SqlError::Mismatch(format!(
                    "an unexpected literal {}",
                    t.token
                )));
            }
            _ => {}
        }
    }
    if strings != canonical.strings {
        return Err(SqlError::Mismatch("string literals differ".into()));
    }
    if idents != canonical.idents {
        return Err(SqlError::Mismatch("quoted identifiers differ".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
