//! Masking of sensitive values in results and in recorded SQL text.
//!
//! A [`Masker`] holds the policy's `[[mask]]` rules. Per connection the
//! daemon asks it for the [`ActiveMasks`] that apply to that workload and
//! target, then masks result cells with [`ActiveMasks::mask_cell`] and
//! statement text with [`ActiveMasks::mask_text`].

mod columns;
mod detect;
mod sql;

use crate::matcher::Matcher;
use crate::model::{Target, Workload};
use regex::RegexSet;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

/// A kind of sensitive value recognised inside text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// Payment card numbers (13–19 digits, Luhn).
    CreditCard,
    /// E-mail addresses.
    Email,
    /// US social security numbers (`AAA-GG-SSSS`).
    UsSsn,
    /// International bank account numbers (mod 97).
    Iban,
    /// Phone numbers (E.164 and formatted national numbers).
    Phone,
    /// AWS access key ids (`AKIA…`/`ASIA…`).
    AwsAccessKey,
    /// PEM private key blocks.
    PrivateKey,
    /// JSON Web Tokens.
    Jwt,
}

impl Detector {
    /// Every detector, in declaration order.
    pub const ALL: [Detector; 8] = [
        Detector::CreditCard,
        Detector::Email,
        Detector::UsSsn,
        Detector::Iban,
        Detector::Phone,
        Detector::AwsAccessKey,
        Detector::PrivateKey,
        Detector::Jwt,
    ];

    /// The snake_case name used in policy files and in `<masked:NAME>`.
    pub fn as_str(self) -> &'static str {
        match self {
            Detector::CreditCard => "credit_card",
            Detector::Email => "email",
            Detector::UsSsn => "us_ssn",
            Detector::Iban => "iban",
            Detector::Phone => "phone",
            Detector::AwsAccessKey => "aws_access_key",
            Detector::PrivateKey => "private_key",
            Detector::Jwt => "jwt",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Detector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Detector {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Detector::ALL
            .into_iter()
            .find(|d| d.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Detector::ALL.iter().map(|d| d.as_str()).collect();
                format!(
                    "unknown detector {s:?} (expected one of: {})",
                    names.join(", ")
                )
            })
    }
}

/// A set of detectors (a small bit set; `Copy`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DetectorSet(u16);

impl DetectorSet {
    /// No detectors.
    pub const EMPTY: DetectorSet = DetectorSet(0);

    /// Every detector.
    pub fn all() -> DetectorSet {
        Detector::ALL.into_iter().collect()
    }

    /// Whether `d` is in the set.
    pub fn contains(self, d: Detector) -> bool {
        self.0 & d.bit() != 0
    }

    /// Adds `d`.
    pub fn insert(&mut self, d: Detector) {
        self.0 |= d.bit();
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Number of detectors in the set.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// The union of two sets.
    pub fn union(self, other: DetectorSet) -> DetectorSet {
        DetectorSet(self.0 | other.0)
    }

    /// The detectors in the set, in declaration order.
    pub fn iter(self) -> impl Iterator<Item = Detector> {
        Detector::ALL.into_iter().filter(move |d| self.contains(*d))
    }
}

impl FromIterator<Detector> for DetectorSet {
    fn from_iter<I: IntoIterator<Item = Detector>>(iter: I) -> Self {
        let mut s = DetectorSet::EMPTY;
        for d in iter {
            s.insert(d);
        }
        s
    }
}

impl fmt::Debug for DetectorSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// How a result value was encoded, as far as masking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CellKind {
    /// A string-typed value (text, varchar, json, ...).
    Text,
    /// A number rendered as text (int, numeric, float, ...).
    Numeric,
}

/// What a column-masked cell becomes.
pub const MASKED_TEXT: &str = "****";
/// What a column-masked numeric cell becomes (still parses as a number).
pub const MASKED_NUMBER: &str = "0";

/// One `[[mask]]` rule.
#[derive(Debug, Clone)]
pub struct MaskRule {
    pub(crate) name: Option<String>,
    pub(crate) line: usize,
    pub(crate) detectors: DetectorSet,
    pub(crate) columns: Vec<String>,
    pub(crate) column_set: Option<Arc<RegexSet>>,
    pub(crate) matcher: Option<Matcher>,
}

impl MaskRule {
    /// The optional `name`.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// 1-based line of the `[[mask]]` entry in the policy file.
    pub fn line(&self) -> usize {
        self.line
    }
    /// The `detectors` list.
    pub fn detectors(&self) -> DetectorSet {
        self.detectors
    }
    /// The `columns` globs as written.
    pub fn columns(&self) -> &[String] {
        &self.columns
    }
    /// Whether the rule has a `match` table.
    pub fn is_conditional(&self) -> bool {
        self.matcher.is_some()
    }
}

/// All `[[mask]]` rules of a policy.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    pub(crate) rules: Vec<MaskRule>,
}

impl Masker {
    /// Whether the policy has no mask rules at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules, in file order.
    pub fn rules(&self) -> &[MaskRule] {
        &self.rules
    }

    /// The masks that apply to connections of `workload` to `target`
    /// (rules without `match`, and rules whose `match` matches). A rule's
    /// `identity.*` keys count as matching a workload without a verified
    /// identity: revoking an enrollment or letting it expire never unmasks.
    pub fn for_context(&self, workload: &Workload, target: &Target) -> ActiveMasks {
        let mut active = ActiveMasks::default();
        for rule in &self.rules {
            if rule
                .matcher
                .as_ref()
                .is_some_and(|m| !m.restricts(workload, target))
            {
                continue;
            }
            active.detectors = active.detectors.union(rule.detectors);
            if let Some(set) = &rule.column_set {
                active.columns.push(Arc::clone(set));
            }
        }
        active
    }
}

/// The masks in force for one connection. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ActiveMasks {
    detectors: DetectorSet,
    columns: Vec<Arc<RegexSet>>,
}

impl ActiveMasks {
    /// Masks with the given detectors and no column rules (for tools and
    /// tests).
    pub fn with_detectors(detectors: DetectorSet) -> ActiveMasks {
        ActiveMasks {
            detectors,
            columns: Vec::new(),
        }
    }

    /// Whether nothing is masked at all (the caller may skip the work).
    pub fn is_empty(&self) -> bool {
        self.detectors.is_empty() && self.columns.is_empty()
    }

    /// The active detectors.
    pub fn detectors(&self) -> DetectorSet {
        self.detectors
    }

    /// Whether values of the result column named `column` are masked
    /// whole (case-insensitive glob match). Call once per column per
    /// result description, not per cell.
    pub fn column_masked(&self, column: &str) -> bool {
        self.columns.iter().any(|set| set.is_match(column))
    }

    /// The masked value of one result cell, or `None` to leave it as is.
    ///
    /// A column-masked cell becomes `****` (text) or `0` (numeric). In
    /// other text cells each validated detector match is replaced with
    /// `<masked:NAME>`. Numeric cells are never touched by detectors.
    pub fn mask_cell(&self, column_masked: bool, kind: CellKind, value: &str) -> Option<String> {
        self.mask_cell_fired(column_masked, kind, value).0
    }

    /// [`mask_cell`](Self::mask_cell), also reporting which detectors
    /// fired (for counters).
    pub fn mask_cell_fired(
        &self,
        column_masked: bool,
        kind: CellKind,
        value: &str,
    ) -> (Option<String>, DetectorSet) {
        if column_masked {
            let v = match kind {
                CellKind::Text => MASKED_TEXT,
                CellKind::Numeric => MASKED_NUMBER,
            };
            return (Some(v.to_owned()), DetectorSet::EMPTY);
        }
        if kind == CellKind::Numeric || self.detectors.is_empty() {
            return (None, DetectorSet::EMPTY);
        }
        match detect::mask(value, self.detectors) {
            (Cow::Borrowed(_), fired) => (None, fired),
            (Cow::Owned(s), fired) => (Some(s), fired),
        }
    }

    /// Applies the detectors (not the column rules) to free text, e.g. a
    /// SQL statement before it is recorded. Borrowed when nothing matched.
    pub fn mask_text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.mask_text_fired(text).0
    }

    /// [`mask_text`](Self::mask_text), also reporting which detectors
    /// fired.
    pub fn mask_text_fired<'a>(&self, text: &'a str) -> (Cow<'a, str>, DetectorSet) {
        if self.detectors.is_empty() {
            return (Cow::Borrowed(text), DetectorSet::EMPTY);
        }
        detect::mask(text, self.detectors)
    }

    /// Which active detectors find a validated match in `text` (without
    /// building the masked string).
    pub fn detectors_fired(&self, text: &str) -> DetectorSet {
        if self.detectors.is_empty() {
            return DetectorSet::EMPTY;
        }
        detect::find(text, self.detectors).1
    }
}

#[cfg(test)]
mod tests;
