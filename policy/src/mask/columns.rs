//! Column rules that follow the data: which result columns to mask, from
//! their labels and the statement's column lineage
//! ([`SqlStatement::outputs`]).

use super::ActiveMasks;
use crate::sql::{Lineage, OutputItem, SqlStatement};

/// PostgreSQL truncates identifiers (and so column labels) to 63 bytes.
const PG_NAME_MAX: usize = 63;

/// One result position, or a run of them, after splicing known wildcard
/// expansions.
enum Slot<'a> {
    One { name: Option<&'a str>, dirty: bool },
    Run { dirty: bool },
}

impl Slot<'_> {
    fn dirty(&self) -> bool {
        match self {
            Slot::One { dirty, .. } | Slot::Run { dirty } => *dirty,
        }
    }
}

impl ActiveMasks {
    /// Whether any column rule is in force for this connection.
    pub fn has_column_rules(&self) -> bool {
        !self.columns.is_empty()
    }

    /// Whether values with this lineage may carry a masked column.
    fn lineage_masked(&self, l: &Lineage) -> bool {
        l.whole_row || l.opaque || l.sources.iter().any(|s| self.column_masked(s))
    }

    /// Which positions of a result to mask whole, given the column labels
    /// the server sent (PostgreSQL RowDescription names, MySQL column
    /// definition names; empty strings where a protocol has none, e.g. COPY)
    /// and the statement that produced it. Call once per result
    /// description, not per row.
    ///
    /// Position `i` is masked when its label matches a column glob, or when
    /// the statement's analysis says the value there may be computed from a
    /// masked column (through aliases, expressions, subqueries, derived
    /// tables, CTEs, set operations), or may hold a whole row or the result
    /// of SQL the analysis cannot see. Result items are lined up with the
    /// labels from both ends around wildcards; when they cannot be lined up
    /// (the counts do not fit, a label contradicts the statement's alias), or
    /// a masked value sits between wildcards, every position it could be in
    /// is masked.
    ///
    /// `stmt = None` (unparsed or unknown statement), or a statement without
    /// [`outputs`](SqlStatement::outputs): labels only. Without column rules
    /// nothing is masked.
    pub fn masked_columns(&self, stmt: Option<&SqlStatement>, labels: &[&str]) -> Vec<bool> {
        let n = labels.len();
        if self.columns.is_empty() {
            return vec![false; n];
        }
        let mut out: Vec<bool> = labels.iter().map(|l| self.column_masked(l)).collect();
        let Some(items) = stmt.and_then(|s| s.outputs.as_deref()) else {
            return out;
        };
        let mut slots = Vec::with_capacity(items.len());
        self.slots(items, false, &mut slots);
        match align(&slots, labels) {
            Some(dirty) => {
                for (o, d) in out.iter_mut().zip(dirty) {
                    *o |= d;
                }
            }
            None => {
                if slots.iter().any(Slot::dirty) {
                    out.iter_mut().for_each(|o| *o = true);
                }
            }
        }
        out
    }

    fn slots<'a>(&self, items: &'a [OutputItem], extra: bool, out: &mut Vec<Slot<'a>>) {
        for item in items {
            match item {
                OutputItem::Expr { name, lineage } => out.push(Slot::One {
                    name: name.as_deref(),
                    dirty: extra || self.lineage_masked(lineage),
                }),
                OutputItem::Wildcard {
                    expands_to: Some(inner),
                    lineage,
                    ..
                } => self.slots(inner, extra || self.lineage_masked(lineage), out),
                OutputItem::Wildcard { lineage, .. } => out.push(Slot::Run {
                    dirty: extra || self.lineage_masked(lineage),
                }),
            }
        }
    }

    /// Whether the statement may touch a masked column anywhere: a column
    /// it names matches a column glob, or it reads or writes columns it does
    /// not name ([`SqlStatement::all_columns`]) while any column rule is in
    /// force. The proxy withholds server error and notice texts for such
    /// statements (a failed cast prints the value it could not cast).
    pub fn touches_masked(&self, stmt: &SqlStatement) -> bool {
        !self.columns.is_empty()
            && (stmt.all_columns || stmt.columns.iter().any(|c| self.column_masked(c)))
    }
}

/// Lines the slots up with the labels: `Some(dirty per position)`, or
/// `None` when they cannot be lined up.
fn align(slots: &[Slot], labels: &[&str]) -> Option<Vec<bool>> {
    let n = labels.len();
    let is_run = |s: &Slot| matches!(s, Slot::Run { .. });
    let check = |slot: &Slot, label: &str| match slot {
        Slot::One {
            name: Some(name), ..
        } => label_matches(name, label),
        _ => true,
    };
    let Some(first) = slots.iter().position(is_run) else {
        if slots.len() != n {
            return None;
        }
        let mut dirty = Vec::with_capacity(n);
        for (s, l) in slots.iter().zip(labels) {
            if !check(s, l) {
                return None;
            }
            dirty.push(s.dirty());
        }
        return Some(dirty);
    };
    let last = slots.iter().rposition(is_run).unwrap_or(first);
    let (prefix, rest) = slots.split_at(first);
    let (middle, suffix) = rest.split_at(last + 1 - first);
    let fixed = prefix.len() + suffix.len() + middle.iter().filter(|s| !is_run(s)).count();
    if fixed > n {
        return None;
    }
    let mid_dirty = middle.iter().any(Slot::dirty);
    let mut dirty = vec![mid_dirty; n];
    for (i, s) in prefix.iter().enumerate() {
        if !check(s, labels[i]) {
            return None;
        }
        dirty[i] = s.dirty();
    }
    let start = n - suffix.len();
    for (i, s) in suffix.iter().enumerate() {
        if !check(s, labels[start + i]) {
            return None;
        }
        dirty[start + i] = s.dirty();
    }
    Some(dirty)
}

/// Whether a server label is the name the statement gave the column:
/// case-insensitively (PostgreSQL folds unquoted names), allowing for
/// PostgreSQL's truncation of long names.
fn label_matches(name: &str, label: &str) -> bool {
    if name.eq_ignore_ascii_case(label) {
        return true;
    }
    let (name, label) = (name.to_lowercase(), label.to_lowercase());
    name == label
        || (name.len() > PG_NAME_MAX
            && !label.is_empty()
            && label.len() <= PG_NAME_MAX
            && name.starts_with(&label))
}

#[cfg(test)]
mod tests;
