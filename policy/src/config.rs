//! The policy file as written: serde structures with spans. Validation and
//! compilation into matchers happen in `compile.rs`.

use crate::model::{Egress, Verdict};
use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use toml::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFile {
    pub defaults: Option<RawDefaults>,
    #[serde(default)]
    pub intercept: Vec<Spanned<RawIntercept>>,
    #[serde(default)]
    pub egress_allow: Vec<Spanned<RawEgressAllow>>,
    #[serde(default)]
    pub rule: Vec<RawRule>,
    #[serde(default)]
    pub mask: Vec<Spanned<RawMask>>,
    #[serde(default)]
    pub limit: Vec<Spanned<RawLimit>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDefaults {
    pub decision: Option<Verdict>,
    pub unparsed: Option<Verdict>,
    pub approval_timeout: Option<Spanned<String>>,
    pub egress: Option<Egress>,
    pub require_identity: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawIntercept {
    pub port: Spanned<i64>,
    pub cidr: Option<Spanned<String>>,
    pub protocol: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawEgressAllow {
    pub port: Option<Spanned<i64>>,
    pub cidr: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRule {
    pub name: Spanned<String>,
    pub decision: Verdict,
    #[serde(rename = "final", default)]
    pub is_final: bool,
    #[serde(default)]
    pub require_identity: bool,
    pub message: Option<String>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMask {
    pub name: Option<String>,
    pub detectors: Option<Spanned<OneOrMany<String>>>,
    pub columns: Option<Spanned<OneOrMany<String>>>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimit {
    pub name: Spanned<String>,
    pub rows: Option<Spanned<i64>>,
    pub bytes: Option<Spanned<i64>>,
    #[serde(rename = "match")]
    pub matcher: Option<RawMatch>,
}

pub(crate) type Strings = Spanned<OneOrMany<String>>;
pub(crate) type Ints = Spanned<OneOrMany<i64>>;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub protocol: Option<Strings>,
    pub cgroup: Option<Strings>,
    pub unit: Option<Strings>,
    pub exe: Option<Strings>,
    pub comm: Option<Strings>,
    pub uid: Option<Ints>,
    pub identity: Option<Spanned<BTreeMap<Spanned<String>, Strings>>>,
    pub target: Option<Spanned<RawTargetMatch>>,
    pub sql: Option<Spanned<RawSqlMatch>>,
    pub ssh: Option<Spanned<RawSshMatch>>,
    pub http: Option<Spanned<RawHttpMatch>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTargetMatch {
    pub cidr: Option<Strings>,
    pub port: Option<Ints>,
    pub host: Option<Strings>,
    pub database: Option<Strings>,
    pub user: Option<Strings>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSqlMatch {
    pub statement: Option<Strings>,
    pub object: Option<Strings>,
    pub action: Option<Strings>,
    pub tables: Option<Strings>,
    pub functions: Option<Strings>,
    pub columns: Option<Strings>,
    pub has_where: Option<bool>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSshMatch {
    pub command: Option<Strings>,
    pub command_regex: Option<Strings>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttpMatch {
    pub method: Option<Strings>,
    pub host: Option<Strings>,
    pub path: Option<Strings>,
}

/// A value or a list of values. Each list element keeps its own span; a
/// single value takes the span of the enclosing `Spanned`.
#[derive(Debug)]
pub(crate) enum OneOrMany<T> {
    One(T),
    Many(Vec<Spanned<T>>),
}

impl<T: Clone> OneOrMany<T> {
    /// Every value with its span (`outer` for a single value).
    pub fn items(this: &Spanned<OneOrMany<T>>) -> Vec<(T, std::ops::Range<usize>)> {
        match this.get_ref() {
            OneOrMany::One(v) => vec![(v.clone(), this.span())],
            OneOrMany::Many(vs) => vs.iter().map(|v| (v.get_ref().clone(), v.span())).collect(),
        }
    }
}

/// Scalars accepted by [`OneOrMany`].
pub(crate) trait Scalar: Sized {
    /// "a string or a list of strings".
    const EXPECTING: &'static str;
    /// The single-value part of `EXPECTING`.
    const EXPECTING_ONE: &'static str;
    fn from_str(_v: &str) -> Option<Self> {
        None
    }
    fn from_i64(_v: i64) -> Option<Self> {
        None
    }
}

impl Scalar for String {
    const EXPECTING: &'static str = "a string or a list of strings";
    const EXPECTING_ONE: &'static str = "a string";
    fn from_str(v: &str) -> Option<Self> {
        Some(v.to_owned())
    }
}

impl Scalar for i64 {
    const EXPECTING: &'static str = "an integer or a list of integers";
    const EXPECTING_ONE: &'static str = "an integer";
    fn from_i64(v: i64) -> Option<Self> {
        Some(v)
    }
}

/// Visits one scalar; `list` says whether a sequence is also accepted.
struct ScalarVisitor<T> {
    list: bool,
    _t: PhantomData<T>,
}

impl<'de, T: Scalar> Visitor<'de> for ScalarVisitor<T> {
    type Value = OneOrMany<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.list {
            T::EXPECTING
        } else {
            T::EXPECTING_ONE
        })
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        T::from_str(v)
            .map(OneOrMany::One)
            .ok_or_else(|| E::invalid_type(de::Unexpected::Str(v), &self))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        T::from_i64(v)
            .map(OneOrMany::One)
            .ok_or_else(|| E::invalid_type(de::Unexpected::Signed(v), &self))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        match i64::try_from(v) {
            Ok(v) => self.visit_i64(v),
            Err(_) => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
        }
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        if !self.list {
            return Err(de::Error::invalid_type(de::Unexpected::Seq, &self));
        }
        let mut out = Vec::new();
        while let Some(v) = seq.next_element::<Spanned<ScalarOnly<T>>>()? {
            let span = v.span();
            out.push(Spanned::new(span, v.into_inner().0));
        }
        Ok(OneOrMany::Many(out))
    }
}

impl<'de, T: Scalar> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor {
            list: true,
            _t: PhantomData,
        })
    }
}

/// A list element: a scalar only (no nested lists).
struct ScalarOnly<T>(T);

impl<'de, T: Scalar> Deserialize<'de> for ScalarOnly<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match d.deserialize_any(ScalarVisitor::<T> {
            list: false,
            _t: PhantomData,
        })? {
            OneOrMany::One(v) => Ok(ScalarOnly(v)),
            OneOrMany::Many(_) => Err(de::Error::custom("nested lists are not allowed")),
        }
    }
}
