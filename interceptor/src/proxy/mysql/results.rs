//! What the proxy decides about each result of a response, without I/O:
//! which statement a result belongs to ([`ResultMap`]), which of its
//! columns to mask whole ([`forced_columns`]), when server texts are
//! withheld ([`touches`], [`taint_after`], [`rewrite_err`]), and the
//! `[[limit]]` counter ([`RowCounter`]).
//!
//! # Results and statements
//!
//! A COM_QUERY with several statements gets one result per statement (a
//! result set, an OK or an ERR), chained with SERVER_MORE_RESULTS_EXISTS;
//! an ERR ends the response. A `CALL` answers with one result set per
//! `SELECT` the procedure runs and then the OK of the call itself, so its
//! results run up to the first OK. A SQL-level `EXECUTE` answers like the
//! statement it runs: one result, or a procedure's result sets and an OK;
//! after a result set the proxy cannot tell whether the next result is
//! still the `EXECUTE`'s, so from there on it does not know which
//! statement a result belongs to ([`Belongs::Unknown`]). Results past the
//! last statement are unknown too. An unknown result is masked whole while
//! any column rule applies (a procedure or an unseen statement can return
//! anything), and its error texts are withheld.

use std::borrow::Cow;

use policy::{ActiveMasks, LimitExceeded, ResultLimit, SqlError, SqlStatement, StatementKind};

use super::codec::{self, ColumnPlan, errcode};

/// How a statement answers in a multi-result response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answers {
    /// Exactly one result: a result set, an OK or an ERR.
    One,
    /// `CALL`: zero or more result sets, then the OK of the call.
    UntilOk,
    /// SQL-level `EXECUTE` / `EXECUTE IMMEDIATE`: one result, or result
    /// sets then an OK when what it runs is a `CALL`.
    Unknown,
}

/// How `s` answers.
pub fn answers(s: &SqlStatement) -> Answers {
    match s.kind() {
        StatementKind::Call => Answers::UntilOk,
        StatementKind::Execute => Answers::Unknown,
        _ => Answers::One,
    }
}

/// How a result ended, as far as the mapping cares (an ERR ends the
/// response, so it needs no transition).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A result set (its terminator).
    Set,
    /// An OK packet.
    Ok,
}

/// Which statement a result belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Belongs {
    /// Statement `i` of the classified text.
    Statement(usize),
    /// The text did not classify: every result is the unparsed text's.
    Unparsed,
    /// The proxy lost track (see the module documentation).
    Unknown,
}

/// Follows which statement each result of one response belongs to.
#[derive(Debug, Clone)]
pub struct ResultMap {
    /// `None`: the text did not classify.
    answers: Option<Vec<Answers>>,
    idx: usize,
    lost: bool,
}

impl ResultMap {
    pub fn new(classified: &Result<Vec<SqlStatement>, SqlError>) -> ResultMap {
        ResultMap {
            answers: classified
                .as_ref()
                .ok()
                .map(|s| s.iter().map(answers).collect()),
            idx: 0,
            lost: false,
        }
    }

    /// The statement the next result belongs to.
    pub fn belongs(&self) -> Belongs {
        match &self.answers {
            _ if self.lost => Belongs::Unknown,
            None => Belongs::Unparsed,
            Some(a) if self.idx < a.len() => Belongs::Statement(self.idx),
            Some(_) => Belongs::Unknown,
        }
    }

    /// The statement whose outcome the next result adds to (for the
    /// record; once lost, the statement where track was lost).
    pub fn index(&self) -> usize {
        self.idx
    }

    /// Notes the end of a result; `more` is its SERVER_MORE_RESULTS_EXISTS.
    /// Returns whether the next result belongs to the next statement.
    pub fn ended(&mut self, end: End, more: bool) -> bool {
        if !more || self.lost {
            return false;
        }
        let Some(a) = &self.answers else {
            return false;
        };
        let advance = match a.get(self.idx) {
            None => {
                self.lost = true;
                return false;
            }
            Some(Answers::One) => true,
            Some(Answers::UntilOk) => end == End::Ok,
            Some(Answers::Unknown) => {
                if end == End::Set {
                    self.lost = true;
                    return false;
                }
                true
            }
        };
        if !advance {
            return false;
        }
        if self.idx + 1 >= a.len() {
            // More results than statements: nothing says whose they are.
            self.lost = true;
            return false;
        }
        self.idx += 1;
        true
    }
}

/// The statement a result belongs to, when it is known.
fn statement(
    classified: &Result<Vec<SqlStatement>, SqlError>,
    belongs: Belongs,
) -> Option<&SqlStatement> {
    match belongs {
        Belongs::Statement(i) => classified.as_ref().ok()?.get(i),
        _ => None,
    }
}

/// Which columns of a result to mask whole because of the statement that
/// produced it (see [`ActiveMasks::masked_columns`]): its labels, and the
/// statement's column lineage. An unparsed text is judged by its labels
/// only (as the policy documents); an unknown result is masked whole
/// while any column rule applies.
pub fn forced_columns(
    masks: &ActiveMasks,
    classified: &Result<Vec<SqlStatement>, SqlError>,
    belongs: Belongs,
    labels: &[&str],
) -> Vec<bool> {
    match belongs {
        Belongs::Statement(_) => masks.masked_columns(statement(classified, belongs), labels),
        Belongs::Unparsed => masks.masked_columns(None, labels),
        Belongs::Unknown => vec![masks.has_column_rules(); labels.len()],
    }
}

/// Completes a result's column plans (built from the column definitions
/// by name and original name) once per result: a column is also masked
/// whole when [`forced_columns`] says so, and while the server's list of
/// warnings may quote masked values (`tainted`) the `Message` column of a
/// `SHOW` statement's result (`SHOW WARNINGS`, `SHOW ERRORS`), or of a
/// result whose statement is not known, is withheld.
pub fn plan_result(
    plans: &mut [ColumnPlan],
    labels: &[String],
    masks: &ActiveMasks,
    (classified, belongs): (&Result<Vec<SqlStatement>, SqlError>, Belongs),
    tainted: bool,
) {
    let names: Vec<&str> = labels.iter().map(String::as_str).collect();
    let forced = forced_columns(masks, classified, belongs, &names);
    for (p, f) in plans.iter_mut().zip(forced) {
        p.masked |= f;
    }
    let diagnostics = match statement(classified, belongs) {
        Some(s) => s.kind() == StatementKind::Show,
        None => true,
    };
    if tainted && diagnostics {
        for (p, l) in plans.iter_mut().zip(labels) {
            if l.eq_ignore_ascii_case("message") {
                p.withheld = true;
            }
        }
    }
}

/// Whether the server's texts about a result (its error message, the
/// warnings it leaves) may quote a masked value: its statement touches a
/// masked column ([`ActiveMasks::touches_masked`]), or the statement is not
/// known while a column rule applies.
pub fn touches(
    masks: &ActiveMasks,
    classified: &Result<Vec<SqlStatement>, SqlError>,
    belongs: Belongs,
) -> bool {
    match statement(classified, belongs) {
        Some(s) => masks.touches_masked(s),
        None => masks.has_column_rules(),
    }
}

/// Whether any statement of a text touches a masked column (for a text
/// that never runs to results, such as COM_STMT_PREPARE's).
pub fn touches_any(masks: &ActiveMasks, classified: &Result<Vec<SqlStatement>, SqlError>) -> bool {
    match classified {
        Ok(stmts) => stmts.iter().any(|s| masks.touches_masked(s)),
        Err(_) => masks.has_column_rules(),
    }
}

/// Whether a statement that ran without error certainly empties the
/// server's list of warnings and errors (what `SHOW WARNINGS`, `SHOW
/// ERRORS` and `GET DIAGNOSTICS` read). MySQL and MariaDB empty it at
/// every statement that uses a table, diagnostic statements excepted; the
/// proxy counts only queries and DML naming a table other than `DUAL`, so
/// that it never thinks the list empty when it is not.
pub fn clears_diagnostics(s: &SqlStatement) -> bool {
    matches!(
        s.kind(),
        StatementKind::Select
            | StatementKind::Insert
            | StatementKind::Update
            | StatementKind::Delete
    ) && s.tables.iter().any(|t| !t.eq_ignore_ascii_case("dual"))
}

/// The session's "warnings may quote masked values" flag after a result
/// of `belongs` ended (`ok`: without an ERR): set by a statement that
/// touches masked columns, cleared by one that certainly empties the
/// server's list and touches none, otherwise kept.
pub fn taint_after(
    tainted: bool,
    masks: &ActiveMasks,
    classified: &Result<Vec<SqlStatement>, SqlError>,
    belongs: Belongs,
    ok: bool,
) -> bool {
    if touches(masks, classified, belongs) {
        return true;
    }
    match statement(classified, belongs) {
        Some(s) if ok && clears_diagnostics(s) => false,
        _ => tainted,
    }
}

/// Whether a text may read the server's diagnostics area in a way the
/// proxy cannot mask: `GET DIAGNOSTICS` (which sqlparser does not parse,
/// so it is found in unparsed text, in any spelling of the word) copies
/// messages into variables, and a SQL-level `EXECUTE` runs text the proxy
/// never saw, after a statement that touched masked columns (`tainted`) or
/// after one earlier in the same batch. Only while column rules apply.
pub fn reads_diagnostics(
    masks: &ActiveMasks,
    classified: &Result<Vec<SqlStatement>, SqlError>,
    text: &str,
    tainted: bool,
) -> bool {
    if !masks.has_column_rules() {
        return false;
    }
    match classified {
        Err(_) => text.to_ascii_lowercase().contains("diagnostics"),
        Ok(stmts) => {
            let mut t = tainted;
            for (i, s) in stmts.iter().enumerate() {
                if t && s.kind() == StatementKind::Execute {
                    return true;
                }
                t = taint_after(t, masks, classified, Belongs::Statement(i), true);
            }
            false
        }
    }
}

/// The text that replaces a server error message that may quote a masked
/// value.
pub fn withheld_error(session: i64) -> String {
    format!(
        "interceptor: the server's message was withheld because the statement reads masked columns (session {session})"
    )
}

/// The ERR packet the client gets for the server's ERR `p`: its message
/// replaced by `withhold` when given, else run through the detectors; the
/// code and SQLSTATE kept. `None`: send `p` as it is. A malformed ERR is
/// replaced whole when its message is to be withheld.
pub fn rewrite_err(p: &[u8], withhold: Option<&str>, masks: &ActiveMasks) -> Option<Vec<u8>> {
    let Ok(e) = codec::parse_err(p) else {
        return withhold.map(|w| codec::err_packet(errcode::UNKNOWN_ERROR, Some("HY000"), w));
    };
    let message = match withhold {
        Some(w) => Cow::Borrowed(w),
        None => match masks.mask_text(&e.message) {
            Cow::Borrowed(_) => return None,
            Cow::Owned(m) => Cow::Owned(m),
        },
    };
    Some(codec::err_packet(e.code, e.sqlstate.as_deref(), &message))
}

/// The ERR packet that ends a result stopped by a `[[limit]]`:
/// ER_TOO_BIG_SELECT (1104, SQLSTATE 42000, an access-rule violation, so
/// that clients do not retry it as a transient interruption), naming the
/// limit.
pub fn limit_err(e: &LimitExceeded, session: i64) -> Vec<u8> {
    codec::err_packet(
        errcode::TOO_BIG_SELECT,
        Some("42000"),
        &format!("interceptor: {e}; the rest of the result was not sent (session {session})"),
    )
}

/// Counts one result's rows and bytes against a [`ResultLimit`].
#[derive(Debug, Clone, Default)]
pub struct RowCounter {
    limit: Option<ResultLimit>,
    /// Rows counted so far (relayed, and the one that went past a bound).
    pub rows: u64,
    /// Payload bytes of those rows, as received from the server.
    pub bytes: u64,
    /// The bound the last counted row went past.
    exceeded: Option<LimitExceeded>,
}

impl RowCounter {
    pub fn new(limit: Option<ResultLimit>) -> RowCounter {
        RowCounter::resume(limit, 0, 0)
    }

    /// Carries on counting a result read in parts (a cursor's fetches).
    pub fn resume(limit: Option<ResultLimit>, rows: u64, bytes: u64) -> RowCounter {
        RowCounter {
            limit,
            rows,
            bytes,
            exceeded: None,
        }
    }

    /// Starts a new result.
    pub fn reset(&mut self) {
        self.rows = 0;
        self.bytes = 0;
        self.exceeded = None;
    }

    /// The bound the last counted row went past, if it did.
    pub fn exceeded(&self) -> Option<LimitExceeded> {
        self.exceeded.clone()
    }

    /// Counts one row of `len` payload bytes. `Some`: the row goes past a
    /// bound and must not be relayed.
    pub fn row(&mut self, len: usize) -> Option<LimitExceeded> {
        self.rows = self.rows.saturating_add(1);
        self.bytes = self.bytes.saturating_add(len as u64);
        self.exceeded = self.limit.as_ref()?.check(self.rows, self.bytes);
        self.exceeded.clone()
    }
}

#[cfg(test)]
mod tests;
