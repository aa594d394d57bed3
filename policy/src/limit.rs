//! `[[limit]]` entries: caps on how much one result may return (bulk
//! export, data-loss prevention).

use crate::matcher::Matcher;
use crate::model::{Target, Workload};
use serde::{Deserialize, Serialize};
use std::fmt;

/// One `[[limit]]` entry.
#[derive(Debug, Clone)]
pub struct LimitRule {
    pub(crate) name: String,
    pub(crate) line: usize,
    pub(crate) rows: Option<u64>,
    pub(crate) bytes: Option<u64>,
    pub(crate) matcher: Option<Matcher>,
}

impl LimitRule {
    /// The limit's unique name (shown to the client when it stops a
    /// result).
    pub fn name(&self) -> &str {
        &self.name
    }
    /// 1-based line of the `[[limit]]` header in the policy file.
    pub fn line(&self) -> usize {
        self.line
    }
    /// Most rows one result may return.
    pub fn rows(&self) -> Option<u64> {
        self.rows
    }
    /// Most bytes of rows one result may return.
    pub fn bytes(&self) -> Option<u64> {
        self.bytes
    }
    /// Whether the limit has a `match` table (else it applies to every
    /// connection).
    pub fn is_conditional(&self) -> bool {
        self.matcher.is_some()
    }
    /// Whether the limit applies to connections of `workload` to `target`.
    /// Its `identity.*` keys count as matching a workload without a
    /// verified identity (a limit is restrictive: losing an identity never
    /// lifts it).
    pub fn applies(&self, workload: &Workload, target: &Target) -> bool {
        self.matcher
            .as_ref()
            .is_none_or(|m| m.restricts(workload, target))
    }
}

/// The tightest `[[limit]]` bounds for one connection, from
/// [`Policy::result_limit`](crate::Policy::result_limit): each bound is the
/// smallest of the applying limits, with the name of the limit that set it
/// (the first in the file among equals).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ResultLimit {
    /// Most rows one result may return.
    pub rows: Option<u64>,
    /// Name of the `[[limit]]` that set `rows`.
    pub rows_name: Option<String>,
    /// Most bytes of rows one result may return.
    pub bytes: Option<u64>,
    /// Name of the `[[limit]]` that set `bytes`.
    pub bytes_name: Option<String>,
}

impl ResultLimit {
    pub(crate) fn tighten(&mut self, rule: &LimitRule) {
        if let Some(r) = rule.rows
            && self.rows.is_none_or(|cur| r < cur)
        {
            self.rows = Some(r);
            self.rows_name = Some(rule.name.clone());
        }
        if let Some(b) = rule.bytes
            && self.bytes.is_none_or(|cur| b < cur)
        {
            self.bytes = Some(b);
            self.bytes_name = Some(rule.name.clone());
        }
    }

    /// Checks a result in progress: `rows` rows and `bytes` bytes of rows
    /// sent so far. A result may reach a bound but not go past it; the
    /// first bound gone past is returned (rows before bytes).
    pub fn check(&self, rows: u64, bytes: u64) -> Option<LimitExceeded> {
        if let Some(max) = self.rows
            && rows > max
        {
            return Some(LimitExceeded {
                limit: self.rows_name.clone().unwrap_or_default(),
                unit: LimitUnit::Rows,
                max,
            });
        }
        if let Some(max) = self.bytes
            && bytes > max
        {
            return Some(LimitExceeded {
                limit: self.bytes_name.clone().unwrap_or_default(),
                unit: LimitUnit::Bytes,
                max,
            });
        }
        None
    }
}

/// What a `[[limit]]` bound counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitUnit {
    /// Result rows.
    Rows,
    /// Bytes of result rows.
    Bytes,
}

impl LimitUnit {
    /// `rows` or `bytes`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitUnit::Rows => "rows",
            LimitUnit::Bytes => "bytes",
        }
    }
}

/// A result went past a `[[limit]]` bound. `Display` is the text for the
/// client's error: `result exceeds limit "bulk-export" (more than 10000
/// rows)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitExceeded {
    /// The `[[limit]]` name.
    pub limit: String,
    /// Which bound.
    pub unit: LimitUnit,
    /// The bound's value.
    pub max: u64,
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "result exceeds limit {:?} (more than {} {})",
            self.limit,
            self.max,
            self.unit.as_str()
        )
    }
}
