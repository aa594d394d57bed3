//! Column lineage: which columns a statement names, and where the values of
//! each of its result columns come from.
//!
//! Two passes over the parsed statement:
//!
//! * [`Names`], a plain visitor, lists every column named anywhere and notes
//!   whether the statement may read or write columns without naming them
//!   (`SELECT *`, `row_to_json(u)`, `INSERT` without a column list, a
//!   function that runs SQL given as text, ...).
//! * [`Analyzer`] walks the statement with scopes (FROM items, CTEs, outer
//!   queries) and computes, for each result column, the bare names of the
//!   columns its value is computed from, following aliases, expressions,
//!   derived tables, CTEs (recursive ones to a fixed point), scalar
//!   subqueries and set operations.
//!
//! Everything the analysis cannot resolve errs towards "may depend on more":
//! an unqualified column reference counts as a reference to a stored column
//! of that name *and* to every derived column of that name in scope, an
//! unnamed derived column may be behind any name, and constructs it does not
//! model are opaque.

use super::Dialect;
use super::classify::object_name;
use serde::{Deserialize, Serialize};
use sqlparser::ast::{
    AlterTableOperation, AssignmentTarget, CommentObject, ConflictTarget, CopySource, CopyTarget,
    Expr, FunctionArg, FunctionArgExpr, FunctionArguments, Ident, Insert, JoinConstraint,
    JoinOperator, ObjectName, ObjectNamePart, OnConflictAction, OnInsert, Query, Select,
    SelectItem, SelectItemQualifiedWildcardKind, SetExpr, Statement, TableAlias, TableFactor,
    TableObject, TableWithJoins, UpdateTableFromKind, Value, Values, Visit, Visitor,
    WildcardAdditionalOptions,
};
use std::cell::Cell;
use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;

/// Past this many source columns a lineage becomes opaque (keeps the
/// analysis cheap on hostile statements; no real expression needs more).
const MAX_SOURCES: usize = 256;

/// Where the values of a result column (or of a run of result columns)
/// come from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lineage {
    /// Bare names (last identifier, without quotes) of the columns the
    /// values are computed from, through aliases, expressions, derived
    /// tables, CTEs, scalar subqueries and set operations. Sorted, without
    /// duplicates.
    pub sources: Vec<String>,
    /// The values may contain any column of some table: a table used as a
    /// row value (`row_to_json(u)`, `SELECT u FROM users u`, `to_jsonb(t.*)`),
    /// or stored columns moved away from their own names (a wildcard under
    /// renamed columns, a `UNION` whose sides do not line up, a derived
    /// wildcard inside a scalar subquery).
    pub whole_row: bool,
    /// The values come from SQL the analysis cannot see: a function that runs
    /// SQL given as text (`query_to_xml`, `dblink`, ...), a cursor (`FETCH`),
    /// a prepared statement (`EXECUTE`), a procedure (`CALL`), or syntax the
    /// analysis does not model.
    pub opaque: bool,
}

impl Lineage {
    /// A plain reference to column `name`.
    fn column(name: &str) -> Lineage {
        Lineage {
            sources: vec![name.to_owned()],
            ..Lineage::default()
        }
    }

    fn whole() -> Lineage {
        Lineage {
            whole_row: true,
            ..Lineage::default()
        }
    }

    fn unknown() -> Lineage {
        Lineage {
            opaque: true,
            ..Lineage::default()
        }
    }

    /// Depends on nothing at all (constants, `now()`, ...).
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty() && !self.whole_row && !self.opaque
    }

    fn merge(&mut self, other: &Lineage) {
        self.whole_row |= other.whole_row;
        self.opaque |= other.opaque;
        if other.sources.is_empty() {
            return;
        }
        if self.sources.is_empty() {
            self.sources.clone_from(&other.sources);
            return;
        }
        if other.sources.len() <= 4 {
            for s in &other.sources {
                self.add_source(s);
            }
            return;
        }
        // Both sorted: merge in one pass.
        let mine = std::mem::take(&mut self.sources);
        let mut out = Vec::with_capacity((mine.len() + other.sources.len()).min(MAX_SOURCES));
        let (mut a, mut b) = (mine.into_iter().peekable(), other.sources.iter().peekable());
        loop {
            let next = match (a.peek(), b.peek()) {
                (Some(x), Some(y)) => match x.as_str().cmp(y.as_str()) {
                    std::cmp::Ordering::Less => a.next(),
                    std::cmp::Ordering::Greater => b.next().cloned(),
                    std::cmp::Ordering::Equal => {
                        b.next();
                        a.next()
                    }
                },
                (Some(_), None) => a.next(),
                (None, Some(_)) => b.next().cloned(),
                (None, None) => break,
            };
            let Some(next) = next else { break };
            if out.len() >= MAX_SOURCES {
                self.opaque = true;
                break;
            }
            out.push(next);
        }
        self.sources = out;
    }

    fn add_source(&mut self, name: &str) {
        if let Err(i) = self.sources.binary_search_by(|s| s.as_str().cmp(name)) {
            if self.sources.len() >= MAX_SOURCES {
                // Too many to track cheaply: "anything" is the safe side.
                self.opaque = true;
                return;
            }
            self.sources.insert(i, name.to_owned());
        }
    }
}

/// One item of a statement's result, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputItem {
    /// Exactly one result column.
    Expr {
        /// The label the statement gives the column: its alias, or the name of
        /// a plain column reference. `None` when the server makes the label
        /// up (`upper`, `?column?`, `column1`, the expression text on MySQL).
        name: Option<String>,
        /// Where its values come from.
        lineage: Lineage,
    },
    /// A run of result columns whose number the statement does not say:
    /// `*`, `t.*`, `TABLE t`, or a run the analysis could not split.
    Wildcard {
        /// `t` in `t.*` (as written, without quotes).
        qualifier: Option<String>,
        /// `Some`: the run is exactly these items (a wildcard over derived
        /// tables and CTEs whose results are known). `None`: zero or more
        /// columns, each either a stored column shown under its own name
        /// (so its label tells what it is) or a value with `lineage`.
        expands_to: Option<Vec<OutputItem>>,
        /// What every column of the run may also carry. Empty for a plain
        /// wildcard over stored tables.
        lineage: Lineage,
    },
}

impl OutputItem {
    /// A run of columns of unknown origin: everything in it may carry
    /// anything (fail-closed representation).
    pub fn unknown() -> OutputItem {
        OutputItem::Wildcard {
            qualifier: None,
            expands_to: None,
            lineage: Lineage::unknown(),
        }
    }

    fn expr(name: Option<String>, lineage: Lineage) -> OutputItem {
        OutputItem::Expr { name, lineage }
    }

    fn run(qualifier: Option<String>, lineage: Lineage) -> OutputItem {
        OutputItem::Wildcard {
            qualifier,
            expands_to: None,
            lineage,
        }
    }
}

/// Splices known wildcard expansions in place, recursively. The result has
/// only `Expr` items and `Wildcard`s with `expands_to: None`.
pub(crate) fn flatten(items: &[OutputItem]) -> Vec<OutputItem> {
    let mut out = Vec::with_capacity(items.len());
    flatten_into(items, &Lineage::default(), &mut out);
    out
}

fn flatten_into(items: &[OutputItem], extra: &Lineage, out: &mut Vec<OutputItem>) {
    for item in items {
        match item {
            OutputItem::Wildcard {
                expands_to: Some(inner),
                lineage,
                ..
            } => {
                let mut l = extra.clone();
                l.merge(lineage);
                flatten_into(inner, &l, out);
            }
            OutputItem::Expr { name, lineage } => {
                let mut l = lineage.clone();
                l.merge(extra);
                out.push(OutputItem::expr(name.clone(), l));
            }
            OutputItem::Wildcard {
                qualifier, lineage, ..
            } => {
                let mut l = lineage.clone();
                l.merge(extra);
                out.push(OutputItem::run(qualifier.clone(), l));
            }
        }
    }
}

/// Everything the items may carry once their values leave their labels
/// (a scalar subquery, a whole-row reference to a derived table, columns
/// renamed by position): stored columns under a wildcard become "any column".
fn collapse(items: &[OutputItem]) -> Lineage {
    let mut l = Lineage::default();
    for item in flatten(items) {
        match item {
            OutputItem::Expr { lineage, .. } => l.merge(&lineage),
            OutputItem::Wildcard { lineage, .. } => {
                l.merge(&lineage);
                l.whole_row = true;
            }
        }
    }
    l
}

/// What the items carry beyond stored columns under their own names (the
/// labels stay with the values, only positions are unknown).
fn in_place(items: &[OutputItem]) -> Lineage {
    let mut l = Lineage::default();
    for item in flatten(items) {
        match item {
            OutputItem::Expr { lineage, .. } | OutputItem::Wildcard { lineage, .. } => {
                l.merge(&lineage)
            }
        }
    }
    l
}

/// How much lineage the items hold (the analysis copies it around).
fn weight(items: &[OutputItem]) -> usize {
    items
        .iter()
        .map(|i| match i {
            OutputItem::Expr { lineage, .. } => 1 + lineage.sources.len(),
            OutputItem::Wildcard {
                expands_to,
                lineage,
                ..
            } => 1 + lineage.sources.len() + expands_to.as_deref().map_or(0, weight),
        })
        .sum()
}

/// Renames the first columns of `items` (a derived table's or CTE's column
/// alias list). Renaming columns behind a wildcard hides what they are.
fn rename(items: Vec<OutputItem>, names: &[String]) -> Vec<OutputItem> {
    if names.is_empty() {
        return items;
    }
    let flat = flatten(&items);
    let mut out = Vec::with_capacity(flat.len().max(names.len()));
    let mut k = 0;
    while k < names.len() {
        match flat.get(k) {
            Some(OutputItem::Expr { lineage, .. }) => {
                out.push(OutputItem::expr(Some(names[k].clone()), lineage.clone()));
                k += 1;
            }
            _ => break,
        }
    }
    if k == names.len() || k >= flat.len() {
        out.extend(flat.into_iter().skip(k));
        return out;
    }
    // A wildcard at position k: the remaining names cover an unknown part.
    let tail = &flat[k..];
    let moved = collapse(tail);
    for n in &names[k..] {
        out.push(OutputItem::expr(Some(n.clone()), moved.clone()));
    }
    out.push(OutputItem::run(None, in_place(tail)));
    out
}

/// `left UNION/INTERSECT/EXCEPT right`: labels come from the left side,
/// values from both, position by position.
fn set_op(left: Vec<OutputItem>, right: Vec<OutputItem>) -> Vec<OutputItem> {
    let l = flatten(&left);
    let r = flatten(&right);
    let is_expr = |i: &OutputItem| matches!(i, OutputItem::Expr { .. });
    let lp = l.iter().take_while(|i| is_expr(i)).count();
    let rp = r.iter().take_while(|i| is_expr(i)).count();
    if lp == l.len() && rp == r.len() && l.len() == r.len() {
        return l.into_iter().zip(r).map(|(a, b)| union(a, &b)).collect();
    }
    let p = lp.min(rp);
    let ls = l.iter().rev().take_while(|i| is_expr(i)).count();
    let rs = r.iter().rev().take_while(|i| is_expr(i)).count();
    let s = ls.min(rs).min(l.len() - p).min(r.len() - p);
    let mut out = Vec::new();
    for i in 0..p {
        out.push(union(l[i].clone(), &r[i]));
    }
    let mut mid = in_place(&l[p..l.len() - s]);
    mid.merge(&collapse(&r[p..r.len() - s]));
    out.push(OutputItem::run(None, mid));
    for i in 0..s {
        out.push(union(l[l.len() - s + i].clone(), &r[r.len() - s + i]));
    }
    out
}

fn union(a: OutputItem, b: &OutputItem) -> OutputItem {
    let lb = match b {
        OutputItem::Expr { lineage, .. } | OutputItem::Wildcard { lineage, .. } => lineage,
    };
    match a {
        OutputItem::Expr { name, mut lineage } => {
            lineage.merge(lb);
            OutputItem::expr(name, lineage)
        }
        other => other,
    }
}

// ------------------------------------------------------------------ scopes

/// A relation visible in a FROM clause.
#[derive(Debug, Clone)]
struct Rel {
    /// Names it can be qualified with: alias, table name, `schema.table`.
    names: Vec<String>,
    kind: RelKind,
}

#[derive(Debug, Clone)]
enum RelKind {
    /// A stored table or view: columns unknown, each shown under its own
    /// name. `renamed`: a column alias list (`users AS u(a, b)`), which
    /// renames columns by position. `assigned`/`any`: values written into
    /// it by this statement (visible through `RETURNING`).
    Base {
        renamed: Vec<String>,
        assigned: Vec<(String, Lineage)>,
        any: Lineage,
    },
    /// A derived table or CTE with known result items.
    Derived(Derived),
    /// A table function: every column is computed from this.
    Func(Lineage),
}

/// A derived table's result, indexed for name lookups.
#[derive(Debug, Clone)]
struct Derived {
    /// Flattened.
    items: Vec<OutputItem>,
    /// Lineage of the columns of each (lowercase) name.
    by_name: HashMap<String, Lineage>,
    /// Lineage of the unnamed columns and wildcard runs: any name may
    /// denote them.
    rest: Lineage,
}

impl Derived {
    fn new(items: &[OutputItem]) -> Derived {
        let items = flatten(items);
        let mut by_name: HashMap<String, Lineage> = HashMap::new();
        let mut rest = Lineage::default();
        for item in &items {
            match item {
                OutputItem::Expr {
                    name: Some(n),
                    lineage,
                } => by_name.entry(n.to_lowercase()).or_default().merge(lineage),
                OutputItem::Expr { lineage, .. } | OutputItem::Wildcard { lineage, .. } => {
                    rest.merge(lineage)
                }
            }
        }
        Derived {
            items,
            by_name,
            rest,
        }
    }
}

impl Rel {
    fn base(names: Vec<String>, renamed: Vec<String>) -> Rel {
        Rel {
            names,
            kind: RelKind::Base {
                renamed,
                assigned: Vec::new(),
                any: Lineage::default(),
            },
        }
    }

    fn matches(&self, qualifier: &str) -> bool {
        let last = qualifier.rsplit('.').next().unwrap_or(qualifier);
        self.names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(qualifier) || n.eq_ignore_ascii_case(last))
    }

    /// What a reference to column `name` of this relation may carry
    /// (beyond the stored column `name` itself).
    fn column(&self, name: &str) -> Lineage {
        match &self.kind {
            RelKind::Base {
                renamed,
                assigned,
                any,
            } => {
                let mut l = any.clone();
                if renamed.iter().any(|r| r.eq_ignore_ascii_case(name)) {
                    l.whole_row = true;
                }
                for (c, a) in assigned {
                    if c.eq_ignore_ascii_case(name) {
                        l.merge(a);
                    }
                }
                l
            }
            RelKind::Derived(d) => {
                // An unnamed column has a label the server made up; it may
                // be referenced by that label.
                let mut l = d.rest.clone();
                if let Some(named) = d.by_name.get(&name.to_lowercase()) {
                    l.merge(named);
                }
                l
            }
            RelKind::Func(l) => l.clone(),
        }
    }

    /// Work to resolve a name against it.
    fn size(&self) -> usize {
        match &self.kind {
            RelKind::Base { assigned, .. } => 1 + assigned.len(),
            RelKind::Derived(_) => 2,
            RelKind::Func(_) => 1,
        }
    }

    /// What the relation's whole row may carry.
    fn whole(&self) -> Lineage {
        match &self.kind {
            RelKind::Base { assigned, any, .. } => {
                let mut l = any.clone();
                for (_, a) in assigned {
                    l.merge(a);
                }
                l.whole_row = true;
                l
            }
            RelKind::Derived(d) => collapse(&d.items),
            RelKind::Func(l) => l.clone(),
        }
    }

    /// The items `rel.*` expands to.
    fn star(&self) -> OutputItem {
        let qualifier = self.names.first().cloned();
        match &self.kind {
            RelKind::Base {
                renamed,
                assigned,
                any,
            } => {
                let mut l = any.clone();
                for (_, a) in assigned {
                    l.merge(a);
                }
                if !renamed.is_empty() {
                    l.whole_row = true;
                }
                OutputItem::run(qualifier, l)
            }
            RelKind::Derived(d) => OutputItem::Wildcard {
                qualifier,
                expands_to: Some(d.items.clone()),
                lineage: Lineage::default(),
            },
            RelKind::Func(l) => OutputItem::run(qualifier, l.clone()),
        }
    }
}

/// One level of name resolution: a query's CTEs, a SELECT's FROM items.
#[derive(Debug, Default)]
struct Scope<'p> {
    rels: Vec<Rel>,
    ctes: Vec<(String, Vec<OutputItem>)>,
    /// A `USING`/`NATURAL` join merges columns: `*` is not positional.
    merged: bool,
    parent: Option<&'p Scope<'p>>,
}

impl<'p> Scope<'p> {
    fn child(parent: Option<&'p Scope<'p>>) -> Scope<'p> {
        Scope {
            parent,
            ..Scope::default()
        }
    }

    fn frames(&self) -> impl Iterator<Item = &Scope<'p>> {
        std::iter::successors(Some(self), |s| s.parent)
    }

    fn cte(&self, name: &str) -> Option<&Vec<OutputItem>> {
        self.frames().find_map(|f| {
            f.ctes
                .iter()
                .rev()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, items)| items)
        })
    }

    /// The relations `qualifier` may denote: those of the innermost frame
    /// that has any (all of them when the name is ambiguous).
    fn qualified(&self, qualifier: &str) -> Vec<&Rel> {
        for f in self.frames() {
            let found: Vec<&Rel> = f.rels.iter().filter(|r| r.matches(qualifier)).collect();
            if !found.is_empty() {
                return found;
            }
        }
        Vec::new()
    }

    /// The nearest frame with FROM items (what an unqualified `*` covers).
    fn nearest_rels(&self) -> &[Rel] {
        self.frames()
            .find(|f| !f.rels.is_empty())
            .map(|f| f.rels.as_slice())
            .unwrap_or_default()
    }
}

// ---------------------------------------------------------------- analyzer

/// Functions that run SQL (or read whole tables) given as text.
const DYNAMIC_SQL: &[&str] = &[
    "query_to_xml",
    "query_to_xmlschema",
    "query_to_xml_and_xmlschema",
    "cursor_to_xml",
    "cursor_to_xmlschema",
    "table_to_xml",
    "table_to_xmlschema",
    "table_to_xml_and_xmlschema",
    "schema_to_xml",
    "schema_to_xmlschema",
    "schema_to_xml_and_xmlschema",
    "database_to_xml",
    "database_to_xmlschema",
    "database_to_xml_and_xmlschema",
    "dblink",
    "dblink_exec",
    "dblink_open",
    "dblink_fetch",
    "dblink_get_result",
    "dblink_send_query",
    "ts_stat",
    "crosstab",
    "crosstab2",
    "crosstab3",
    "crosstab4",
    "connectby",
    // Raw reads of the files tables are stored in.
    "pg_read_file",
    "pg_read_binary_file",
];

/// Functions that accept a single row argument and show it, so that
/// PostgreSQL's attribute notation `t.row_to_json` (read as
/// `row_to_json(t)` when `t` has no such column) returns the row. Casts
/// (`t.text`, `t.name`) are not accepted in that notation.
const ROW_FUNCTIONS: &[&str] = &[
    "row_to_json",
    "to_json",
    "to_jsonb",
    "hstore",
    "record_out",
    "record_send",
    "quote_literal",
    "quote_nullable",
    "json_build_array",
    "jsonb_build_array",
    "concat",
    "json_agg",
    "jsonb_agg",
    "array_agg",
];

fn is_row_function(name: &str) -> bool {
    ROW_FUNCTIONS.iter().any(|f| f.eq_ignore_ascii_case(name))
}

fn last_part(name: &ObjectName) -> String {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => i.value.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    }
}

/// Whether `name` is a function known to run SQL given as text.
pub(crate) fn is_dynamic_sql(name: &ObjectName) -> bool {
    let last = last_part(name).to_ascii_lowercase();
    DYNAMIC_SQL.contains(&last.as_str())
}

fn alias_columns(alias: Option<&TableAlias>) -> Vec<String> {
    alias
        .map(|a| a.columns.iter().map(|c| c.name.value.clone()).collect())
        .unwrap_or_default()
}

fn options_plain(o: &WildcardAdditionalOptions) -> bool {
    o.opt_ilike.is_none()
        && o.opt_exclude.is_none()
        && o.opt_except.is_none()
        && o.opt_replace.is_none()
        && o.opt_rename.is_none()
        && o.opt_alias.is_none()
}

fn join_constraint(op: &JoinOperator) -> Option<&JoinConstraint> {
    use JoinOperator as J;
    match op {
        J::Join(c)
        | J::Inner(c)
        | J::Left(c)
        | J::LeftOuter(c)
        | J::Right(c)
        | J::RightOuter(c)
        | J::FullOuter(c)
        | J::CrossJoin(c)
        | J::Semi(c)
        | J::LeftSemi(c)
        | J::RightSemi(c)
        | J::Anti(c)
        | J::LeftAnti(c)
        | J::RightAnti(c)
        | J::StraightJoin(c)
        | J::AsOf { constraint: c, .. } => Some(c),
        _ => None,
    }
}

/// A MySQL `"..."` string, which is an identifier when the session's
/// `sql_mode` has `ANSI_QUOTES` (the proxy does not know the session's
/// mode): treated as both.
fn ansi_quoted(dialect: Dialect, v: &Value) -> Option<&str> {
    match (dialect, v) {
        (Dialect::Mysql, Value::DoubleQuotedString(s)) => Some(s),
        _ => None,
    }
}

/// The label a select item gets when the statement decides it.
fn label_of(e: &Expr) -> Option<String> {
    match e {
        Expr::Identifier(i) => Some(i.value.clone()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.clone()),
        _ => None,
    }
}

/// Upper bound on the work spent on one statement, in queries analysed
/// (recursive CTEs are re-analysed until their lineage stops growing),
/// relations scanned to resolve names, and source names copied. Past it everything left is
/// "unknown": a hostile statement costs little and gains nothing.
const BUDGET: u64 = 50_000;
const QUERY_COST: usize = 20;
/// Rounds of fixed-point iteration for one recursive CTE.
const CTE_ROUNDS: usize = 8;

struct Analyzer {
    dialect: Dialect,
    budget: Cell<u64>,
}

impl Analyzer {
    /// Spends `units` of the budget; `false` once it is exhausted.
    fn charge(&self, units: usize) -> bool {
        let left = self.budget.get();
        let units = u64::try_from(units).unwrap_or(u64::MAX).max(1);
        self.budget.set(left.saturating_sub(units));
        left >= units
    }

    fn query(&self, q: &Query, outer: Option<&Scope>) -> Vec<OutputItem> {
        // A query costs its select list and FROM items on top of the names
        // resolved in it.
        if !self.charge(QUERY_COST) {
            return vec![OutputItem::unknown()];
        }
        let mut frame = Scope::child(outer);
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                let names = alias_columns(Some(&cte.alias));
                let items = if with.recursive {
                    self.recursive_cte(&cte.alias.name.value, &cte.query, &names, &frame)
                } else {
                    rename(self.query(&cte.query, Some(&frame)), &names)
                };
                frame.ctes.push((cte.alias.name.value.clone(), items));
            }
        }
        let out = self.set_expr(&q.body, &frame);
        if !self.charge(weight(&out)) {
            return vec![OutputItem::unknown()];
        }
        out
    }

    /// A CTE that may reference itself: analyse it with its own result
    /// bound to the previous round's until nothing changes.
    fn recursive_cte(
        &self,
        name: &str,
        body: &Query,
        names: &[String],
        frame: &Scope,
    ) -> Vec<OutputItem> {
        let mut current: Vec<OutputItem> = Vec::new();
        for _ in 0..CTE_ROUNDS {
            let mut f = Scope::child(Some(frame));
            f.ctes.push((name.to_owned(), current.clone()));
            let next = flatten(&rename(self.query(body, Some(&f)), names));
            if next == current {
                return next;
            }
            current = next;
        }
        vec![OutputItem::unknown()]
    }

    fn set_expr(&self, e: &SetExpr, scope: &Scope) -> Vec<OutputItem> {
        match e {
            SetExpr::Select(s) => self.select(s, scope),
            SetExpr::Query(q) => self.query(q, Some(scope)),
            SetExpr::SetOperation { left, right, .. } => {
                set_op(self.set_expr(left, scope), self.set_expr(right, scope))
            }
            SetExpr::Values(v) => self.values(v, scope),
            SetExpr::Insert(s) | SetExpr::Update(s) | SetExpr::Delete(s) | SetExpr::Merge(s) => {
                self.rows(s, Some(scope)).unwrap_or_default()
            }
            SetExpr::Table(t) => {
                let name = match (&t.schema_name, &t.table_name) {
                    (Some(s), Some(n)) => format!("{}.{}", s.value, n.value),
                    (None, Some(n)) => n.value.clone(),
                    _ => return vec![OutputItem::unknown()],
                };
                let mut f = Scope::child(Some(scope));
                f.rels
                    .push(self.named_relation(&name, t.schema_name.is_none(), None, scope));
                vec![self.star(None, &f)]
            }
        }
    }

    fn values(&self, v: &Values, scope: &Scope) -> Vec<OutputItem> {
        let mut cols: Vec<Lineage> = Vec::new();
        for row in &v.rows {
            for (i, e) in row.iter().enumerate() {
                let l = self.expr(e, scope);
                match cols.get_mut(i) {
                    Some(c) => c.merge(&l),
                    None => cols.push(l),
                }
            }
        }
        cols.into_iter()
            .map(|l| OutputItem::expr(None, l))
            .collect()
    }

    fn select(&self, s: &Select, outer: &Scope) -> Vec<OutputItem> {
        let mut frame = Scope::child(Some(outer));
        for twj in &s.from {
            self.join_tree(twj, &mut frame);
        }
        if !s.lateral_views.is_empty() {
            frame.rels.push(Rel {
                names: Vec::new(),
                kind: RelKind::Func(Lineage::unknown()),
            });
        }
        let out = self.projection(&s.projection, &frame);
        if s.exclude.is_some() {
            return vec![OutputItem::run(None, collapse(&out))];
        }
        out
    }

    fn projection(&self, items: &[SelectItem], frame: &Scope) -> Vec<OutputItem> {
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            match item {
                SelectItem::UnnamedExpr(e) => {
                    out.push(OutputItem::expr(label_of(e), self.expr(e, frame)))
                }
                SelectItem::ExprWithAlias { expr, alias } => out.push(OutputItem::expr(
                    Some(alias.value.clone()),
                    self.expr(expr, frame),
                )),
                SelectItem::ExprWithAliases { expr, aliases } => {
                    let l = self.expr(expr, frame);
                    for a in aliases {
                        out.push(OutputItem::expr(Some(a.value.clone()), l.clone()));
                    }
                }
                SelectItem::Wildcard(opts) => {
                    let w = self.star(None, frame);
                    out.push(if options_plain(opts) {
                        w
                    } else {
                        OutputItem::run(None, collapse(&[w]))
                    });
                }
                SelectItem::QualifiedWildcard(kind, opts) => {
                    let w = match kind {
                        SelectItemQualifiedWildcardKind::ObjectName(n) => {
                            self.star(Some(&object_name(n)), frame)
                        }
                        SelectItemQualifiedWildcardKind::Expr(e) => {
                            let mut l = self.expr(e, frame);
                            l.whole_row = true;
                            OutputItem::run(None, l)
                        }
                    };
                    out.push(if options_plain(opts) {
                        w
                    } else {
                        OutputItem::run(None, collapse(&[w]))
                    });
                }
            }
        }
        out
    }

    /// `*` (qualifier `None`) or `q.*`.
    fn star(&self, qualifier: Option<&str>, scope: &Scope) -> OutputItem {
        let Some(q) = qualifier else {
            let rels = scope.nearest_rels();
            if rels.len() == 1 {
                return rels[0].star();
            }
            let items: Vec<OutputItem> = rels.iter().map(Rel::star).collect();
            let merged = scope
                .frames()
                .find(|f| !f.rels.is_empty())
                .is_some_and(|f| f.merged);
            if merged {
                return OutputItem::run(None, in_place(&items));
            }
            return OutputItem::Wildcard {
                qualifier: None,
                expands_to: Some(items),
                lineage: Lineage::default(),
            };
        };
        let rels = scope.qualified(q);
        match rels.as_slice() {
            [] => OutputItem::run(Some(q.to_owned()), Lineage::whole()),
            [one] => {
                let mut w = one.star();
                if let OutputItem::Wildcard { qualifier, .. } = &mut w {
                    *qualifier = Some(q.to_owned());
                }
                w
            }
            many => OutputItem::Wildcard {
                qualifier: Some(q.to_owned()),
                expands_to: Some(many.iter().map(|r| r.star()).collect()),
                lineage: Lineage::default(),
            },
        }
    }

    fn join_tree(&self, twj: &TableWithJoins, frame: &mut Scope) {
        self.table_factor(&twj.relation, frame);
        for j in &twj.joins {
            self.table_factor(&j.relation, frame);
            match join_constraint(&j.join_operator) {
                Some(JoinConstraint::Using(_) | JoinConstraint::Natural) => frame.merged = true,
                Some(JoinConstraint::UsingAlias(_, alias)) => {
                    frame.merged = true;
                    let items: Vec<OutputItem> = frame.rels.iter().map(Rel::star).collect();
                    frame.rels.push(Rel {
                        names: vec![alias.value.clone()],
                        kind: RelKind::Derived(Derived::new(&[OutputItem::run(
                            None,
                            in_place(&items),
                        )])),
                    });
                }
                _ => {}
            }
        }
    }

    /// A relation named in FROM: a CTE when one of that name is in scope,
    /// else a stored table.
    fn named_relation(
        &self,
        name: &str,
        may_be_cte: bool,
        alias: Option<&TableAlias>,
        scope: &Scope,
    ) -> Rel {
        let renamed = alias_columns(alias);
        let mut names: Vec<String> = Vec::new();
        if let Some(a) = alias {
            names.push(a.name.value.clone());
        }
        let last = name.rsplit('.').next().unwrap_or(name).to_owned();
        names.push(last);
        if name.contains('.') {
            names.push(name.to_owned());
        }
        match scope.cte(name).filter(|_| may_be_cte) {
            Some(items) => Rel {
                names,
                kind: RelKind::Derived(Derived::new(&rename(items.clone(), &renamed))),
            },
            None => Rel::base(names, renamed),
        }
    }

    fn func_rel(&self, alias: Option<&TableAlias>, fallback: Option<String>, l: Lineage) -> Rel {
        let mut names: Vec<String> = alias.map(|a| a.name.value.clone()).into_iter().collect();
        names.extend(fallback);
        Rel {
            names,
            kind: RelKind::Func(l),
        }
    }

    fn table_factor(&self, tf: &TableFactor, frame: &mut Scope) {
        let rel = match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => match args {
                Some(args) => {
                    let mut l = self.node(&args.args, frame);
                    l.opaque |= is_dynamic_sql(name);
                    self.func_rel(alias.as_ref(), Some(last_part(name)), l)
                }
                None => self.named_relation(
                    &object_name(name),
                    name.0.len() == 1,
                    alias.as_ref(),
                    frame,
                ),
            },
            TableFactor::Derived {
                subquery, alias, ..
            } => {
                let items = self.query(subquery, Some(frame));
                Rel {
                    names: alias.iter().map(|a| a.name.value.clone()).collect(),
                    kind: RelKind::Derived(Derived::new(&rename(
                        items,
                        &alias_columns(alias.as_ref()),
                    ))),
                }
            }
            TableFactor::Function {
                name, args, alias, ..
            } => {
                let mut l = self.node(args, frame);
                l.opaque |= is_dynamic_sql(name);
                self.func_rel(alias.as_ref(), Some(last_part(name)), l)
            }
            TableFactor::TableFunction { expr, alias } => {
                let l = self.expr(expr, frame);
                self.func_rel(alias.as_ref(), None, l)
            }
            TableFactor::UNNEST {
                alias, array_exprs, ..
            } => {
                let l = self.node(array_exprs, frame);
                self.func_rel(alias.as_ref(), Some("unnest".to_owned()), l)
            }
            TableFactor::JsonTable {
                json_expr, alias, ..
            }
            | TableFactor::OpenJsonTable {
                json_expr, alias, ..
            } => {
                let l = self.expr(json_expr, frame);
                self.func_rel(alias.as_ref(), None, l)
            }
            TableFactor::XmlTable { alias, .. } => {
                let l = self.node(tf, frame);
                self.func_rel(alias.as_ref(), None, l)
            }
            TableFactor::NestedJoin {
                table_with_joins,
                alias,
            } => {
                let Some(alias) = alias else {
                    self.join_tree(table_with_joins, frame);
                    return;
                };
                let (rels, merged) = {
                    let mut sub = Scope::child(Some(&*frame));
                    self.join_tree(table_with_joins, &mut sub);
                    (sub.rels, sub.merged)
                };
                let items: Vec<OutputItem> = rels.iter().map(Rel::star).collect();
                let items = if merged {
                    vec![OutputItem::run(None, in_place(&items))]
                } else {
                    items
                };
                Rel {
                    names: vec![alias.name.value.clone()],
                    kind: RelKind::Derived(Derived::new(&rename(
                        items,
                        &alias_columns(Some(alias)),
                    ))),
                }
            }
            // PIVOT, UNPIVOT, MATCH_RECOGNIZE, ...: not PostgreSQL or MySQL.
            _ => Rel {
                names: Vec::new(),
                kind: RelKind::Func(Lineage::unknown()),
            },
        };
        frame.rels.push(rel);
    }

    /// Lineage of an expression.
    fn expr(&self, e: &Expr, scope: &Scope) -> Lineage {
        self.node(e, scope)
    }

    /// Lineage of every expression inside `node` (subqueries analysed in
    /// their own scope, their results flowing in).
    fn node<V: Visit + ?Sized>(&self, node: &V, scope: &Scope) -> Lineage {
        let mut w = ExprWalker {
            an: self,
            scope,
            lin: Lineage::default(),
            depth: 0,
            exists: false,
        };
        let _ = node.visit(&mut w);
        w.lin
    }

    /// A reference to column `name` (qualified by `qualifier` if given).
    fn column(&self, qualifier: Option<&str>, name: &str, scope: &Scope) -> Lineage {
        let cost: usize = scope.frames().flat_map(|f| &f.rels).map(Rel::size).sum();
        if !self.charge(cost) {
            return Lineage::unknown();
        }
        let l = self.resolve(qualifier, name, scope);
        if !self.charge(l.sources.len()) {
            return Lineage::unknown();
        }
        l
    }

    fn resolve(&self, qualifier: Option<&str>, name: &str, scope: &Scope) -> Lineage {
        let mut l = Lineage::column(name);
        match qualifier {
            Some(q) => {
                // PostgreSQL reads `t.f` as `f(t)` when `t` has no column
                // `f`: a function of the whole row.
                let row_fn = is_row_function(name);
                for rel in scope.qualified(q) {
                    l.merge(&rel.column(name));
                    if row_fn {
                        l.merge(&rel.whole());
                    }
                }
                // `schema.table` used as a row value.
                let full = format!("{q}.{name}");
                for f in scope.frames() {
                    for rel in f.rels.iter().filter(|r| r.matches(&full)) {
                        if rel.names.iter().any(|n| n.eq_ignore_ascii_case(&full)) {
                            l.merge(&rel.whole());
                        }
                    }
                }
            }
            None => {
                for f in scope.frames() {
                    for rel in &f.rels {
                        l.merge(&rel.column(name));
                        // A table name or alias used as a value is the
                        // whole row (PostgreSQL).
                        if rel.names.iter().any(|n| n.eq_ignore_ascii_case(name)) {
                            l.merge(&rel.whole());
                        }
                    }
                }
            }
        }
        l
    }

    /// `*` inside an expression (`count(*)` aside): every relation's row.
    fn whole_rows(&self, qualifier: Option<&str>, scope: &Scope) -> Lineage {
        let rels: Vec<&Rel> = match qualifier {
            Some(q) => scope.qualified(q),
            None => scope.nearest_rels().iter().collect(),
        };
        if rels.is_empty() {
            return Lineage::whole();
        }
        let mut l = Lineage::default();
        for r in rels {
            l.merge(&r.whole());
        }
        l
    }

    /// The rows a statement returns, if it returns any (see
    /// [`SqlStatement::outputs`](super::SqlStatement::outputs)).
    fn rows(&self, s: &Statement, outer: Option<&Scope>) -> Option<Vec<OutputItem>> {
        match s {
            Statement::Query(q) => Some(self.query(q, outer)),
            Statement::Insert(i) => {
                let ret = i.returning.as_ref()?;
                let frame = self.insert_frame(i, outer);
                Some(self.projection(ret, &frame))
            }
            Statement::Update(u) => {
                let ret = u.returning.as_ref()?;
                let mut frame = Scope::child(outer);
                self.join_tree(&u.table, &mut frame);
                target_row_names(&mut frame);
                if let Some(UpdateTableFromKind::BeforeSet(f) | UpdateTableFromKind::AfterSet(f)) =
                    &u.from
                {
                    for twj in f {
                        self.join_tree(twj, &mut frame);
                    }
                }
                let writes: Vec<(Option<String>, String, Lineage)> = u
                    .assignments
                    .iter()
                    .flat_map(|a| {
                        let l = self.expr(&a.value, &frame);
                        targets(&a.target)
                            .into_iter()
                            .map(move |(q, c)| (q, c, l.clone()))
                    })
                    .collect();
                for (q, c, l) in writes {
                    for rel in &mut frame.rels {
                        if q.as_deref().is_none_or(|q| rel.matches(q))
                            && let RelKind::Base { assigned, .. } = &mut rel.kind
                        {
                            assigned.push((c.clone(), l.clone()));
                        }
                    }
                }
                Some(self.projection(ret, &frame))
            }
            Statement::Delete(d) => {
                let ret = d.returning.as_ref()?;
                let mut frame = Scope::child(outer);
                let (sqlparser::ast::FromTable::WithFromKeyword(from)
                | sqlparser::ast::FromTable::WithoutKeyword(from)) = &d.from;
                for (i, twj) in from.iter().chain(d.using.iter().flatten()).enumerate() {
                    self.join_tree(twj, &mut frame);
                    if i == 0 {
                        target_row_names(&mut frame);
                    }
                }
                Some(self.projection(ret, &frame))
            }
            Statement::Merge(m) => m.output.as_ref().map(|_| vec![OutputItem::unknown()]),
            Statement::Copy {
                source,
                to: true,
                target: CopyTarget::Stdout,
                ..
            } => Some(match source {
                // No labels travel with COPY data: every stored column
                // under a wildcard is "any column".
                CopySource::Query(q) => unlabel(self.query(q, outer)),
                CopySource::Table { columns, .. } if columns.is_empty() => {
                    vec![OutputItem::run(None, Lineage::whole())]
                }
                CopySource::Table { columns, .. } => columns
                    .iter()
                    .map(|c| OutputItem::expr(None, Lineage::column(&c.value)))
                    .collect(),
            }),
            Statement::Fetch { .. } | Statement::Execute { .. } | Statement::Call(_) => {
                Some(vec![OutputItem::unknown()])
            }
            _ => None,
        }
    }

    /// The scope of an `INSERT`'s `RETURNING` list: the target table, with
    /// the values the statement writes into its columns.
    fn insert_frame<'p>(&self, i: &Insert, outer: Option<&'p Scope<'p>>) -> Scope<'p> {
        let mut frame = Scope::child(outer);
        let mut assigned: Vec<(String, Lineage)> = Vec::new();
        let mut any = Lineage::default();
        if let Some(src) = &i.source {
            let items = self.query(src, outer);
            if i.columns.is_empty() {
                any.merge(&collapse(&items));
            } else {
                let names: Vec<String> = i.columns.iter().map(last_part).collect();
                for item in rename(items, &names) {
                    match item {
                        OutputItem::Expr {
                            name: Some(n),
                            lineage,
                        } if names.contains(&n) => assigned.push((n, lineage)),
                        other => any.merge(&collapse(&[other])),
                    }
                }
            }
        }
        {
            let empty = Scope::child(outer);
            for a in &i.assignments {
                let l = self.expr(&a.value, &empty);
                for (_, c) in targets(&a.target) {
                    assigned.push((c, l.clone()));
                }
            }
        }
        let (names, unknown) = match &i.table {
            TableObject::TableName(n) => {
                let mut names = Vec::new();
                if let Some(a) = &i.table_alias {
                    names.push(a.alias.value.clone());
                }
                names.push(last_part(n));
                (names, false)
            }
            _ => (Vec::new(), true),
        };
        let kind = |assigned: Vec<(String, Lineage)>, any: Lineage| RelKind::Base {
            renamed: Vec::new(),
            assigned,
            any,
        };
        if unknown {
            any.opaque = true;
        }
        // ON CONFLICT DO UPDATE: `excluded` is the row proposed for
        // insertion; the SET values land in the target too.
        if let Some(OnInsert::OnConflict(oc)) = &i.on
            && let OnConflictAction::DoUpdate(du) = &oc.action
        {
            let mut f = Scope::child(outer);
            f.rels.push(Rel {
                names: names.clone(),
                kind: kind(assigned.clone(), any.clone()),
            });
            f.rels.push(Rel {
                names: vec!["excluded".to_owned()],
                kind: kind(assigned.clone(), any.clone()),
            });
            let mut more = Vec::new();
            for a in &du.assignments {
                let l = self.expr(&a.value, &f);
                for (_, c) in targets(&a.target) {
                    more.push((c, l.clone()));
                }
            }
            assigned.extend(more);
        }
        frame.rels.push(Rel {
            names,
            kind: kind(assigned, any),
        });
        target_row_names(&mut frame);
        frame
    }
}

/// PostgreSQL 18 `RETURNING old.x, new.x`: both name the target row.
fn target_row_names(frame: &mut Scope) {
    if let Some(target) = frame.rels.first_mut() {
        target.names.extend(["old".to_owned(), "new".to_owned()]);
    }
}

/// Columns of an assignment target: (qualifier, bare name).
fn targets(t: &AssignmentTarget) -> Vec<(Option<String>, String)> {
    let one = |n: &ObjectName| {
        let q = (n.0.len() > 1).then(|| {
            let full = object_name(n);
            full.rsplit_once('.')
                .map(|(q, _)| q.to_owned())
                .unwrap_or_default()
        });
        (q, last_part(n))
    };
    match t {
        AssignmentTarget::ColumnName(n) => vec![one(n)],
        AssignmentTarget::Tuple(ns) => ns.iter().map(one).collect(),
    }
}

/// For results without column labels (COPY): names dropped, stored columns
/// under wildcards become "any column".
fn unlabel(items: Vec<OutputItem>) -> Vec<OutputItem> {
    flatten(&items)
        .into_iter()
        .map(|i| match i {
            OutputItem::Expr { lineage, .. } => OutputItem::expr(None, lineage),
            OutputItem::Wildcard {
                qualifier,
                mut lineage,
                ..
            } => {
                lineage.whole_row = true;
                OutputItem::run(qualifier, lineage)
            }
        })
        .collect()
}

/// Collects the lineage of the expressions it visits.
struct ExprWalker<'a, 's> {
    an: &'a Analyzer,
    scope: &'a Scope<'s>,
    lin: Lineage,
    /// > 0 inside a subquery (analysed on its own when entered).
    depth: usize,
    /// The next subquery belongs to `EXISTS`: its result is not a value.
    exists: bool,
}

impl Visitor for ExprWalker<'_, '_> {
    type Break = ();

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if self.depth == 0 {
            let items = self.an.query(q, Some(self.scope));
            if !std::mem::take(&mut self.exists) {
                self.lin.merge(&collapse(&items));
            }
        }
        self.depth += 1;
        ControlFlow::Continue(())
    }

    fn post_visit_query(&mut self, _q: &Query) -> ControlFlow<()> {
        self.depth = self.depth.saturating_sub(1);
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if self.depth > 0 {
            return ControlFlow::Continue(());
        }
        let an = self.an;
        match e {
            Expr::Identifier(i) => self.lin.merge(&an.column(None, &i.value, self.scope)),
            Expr::CompoundIdentifier(parts) => {
                if let Some((last, quals)) = parts.split_last() {
                    let q: Vec<&str> = quals.iter().map(|i| i.value.as_str()).collect();
                    let q = q.join(".");
                    self.lin.merge(&an.column(
                        (!q.is_empty()).then_some(&q),
                        &last.value,
                        self.scope,
                    ));
                }
            }
            Expr::MatchAgainst { columns, .. } => {
                for c in columns {
                    let full = object_name(c);
                    let (q, n) = match full.rsplit_once('.') {
                        Some((q, n)) => (Some(q), n),
                        None => (None, full.as_str()),
                    };
                    self.lin.merge(&an.column(q, n, self.scope));
                }
            }
            Expr::Function(f) => {
                if is_dynamic_sql(&f.name) {
                    self.lin.opaque = true;
                }
                if let FunctionArguments::List(list) = &f.args {
                    let is_count = last_part(&f.name).eq_ignore_ascii_case("count");
                    for a in &list.args {
                        let (FunctionArg::Named { arg, .. }
                        | FunctionArg::ExprNamed { arg, .. }
                        | FunctionArg::Unnamed(arg)) = a;
                        match arg {
                            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_)
                                if !is_count =>
                            {
                                self.lin.merge(&an.whole_rows(None, self.scope))
                            }
                            FunctionArgExpr::QualifiedWildcard(n) => self
                                .lin
                                .merge(&an.whole_rows(Some(&object_name(n)), self.scope)),
                            _ => {}
                        }
                    }
                }
            }
            Expr::Wildcard(_) => self.lin.merge(&an.whole_rows(None, self.scope)),
            Expr::QualifiedWildcard(n, _) => self
                .lin
                .merge(&an.whole_rows(Some(&object_name(n)), self.scope)),
            Expr::Exists { .. } => self.exists = true,
            Expr::Value(v) => {
                if let Some(name) = ansi_quoted(an.dialect, &v.value) {
                    self.lin.merge(&an.column(None, name, self.scope));
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

// ------------------------------------------------------------------- names

fn is_wildcard(item: &SelectItem) -> bool {
    matches!(
        item,
        SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
    )
}

/// Every column named anywhere in the statement, and whether it may touch
/// columns it does not name.
struct Names {
    dialect: Dialect,
    columns: Vec<String>,
    seen: HashSet<String>,
    all: bool,
    /// Bare identifiers used as values (possible whole-row references),
    /// lowercase.
    idents: HashSet<String>,
    /// Names and aliases of the relations in FROM clauses, lowercase.
    rels: HashSet<String>,
    /// SELECTs that are the body of an `EXISTS`: their `*` is no value.
    exists_bodies: HashSet<*const Select>,
}

impl Names {
    fn push(&mut self, name: &str) {
        if !name.is_empty() && self.seen.insert(name.to_owned()) {
            self.columns.push(name.to_owned());
        }
    }

    fn push_object(&mut self, n: &ObjectName) {
        self.push(&last_part(n));
    }

    fn push_idents(&mut self, ids: &[Ident]) {
        for i in ids {
            self.push(&i.value);
        }
    }

    fn assignments<'a>(&mut self, targets: impl IntoIterator<Item = &'a AssignmentTarget>) {
        for t in targets {
            match t {
                AssignmentTarget::ColumnName(n) => self.push_object(n),
                AssignmentTarget::Tuple(ns) => {
                    for n in ns {
                        self.push_object(n);
                    }
                }
            }
        }
    }
}

impl Visitor for Names {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        let returning = match s {
            Statement::Insert(i) => i.returning.as_deref(),
            Statement::Update(u) => u.returning.as_deref(),
            Statement::Delete(d) => d.returning.as_deref(),
            _ => None,
        };
        if returning.unwrap_or_default().iter().any(is_wildcard) {
            self.all = true;
        }
        match s {
            Statement::Insert(i) => {
                for c in &i.columns {
                    self.push_object(c);
                }
                if i.columns.is_empty() && i.assignments.is_empty() && i.source.is_some() {
                    self.all = true;
                }
                self.assignments(i.assignments.iter().map(|a| &a.target));
                match &i.on {
                    Some(OnInsert::DuplicateKeyUpdate(a)) => {
                        self.assignments(a.iter().map(|a| &a.target))
                    }
                    Some(OnInsert::OnConflict(oc)) => {
                        if let Some(ConflictTarget::Columns { columns, .. }) = &oc.conflict_target {
                            self.push_idents(columns);
                        }
                        if let OnConflictAction::DoUpdate(du) = &oc.action {
                            self.assignments(du.assignments.iter().map(|a| &a.target));
                        }
                    }
                    _ => {}
                }
            }
            Statement::Update(u) => self.assignments(u.assignments.iter().map(|a| &a.target)),
            Statement::Copy {
                source: CopySource::Table { columns, .. },
                ..
            } => {
                self.push_idents(columns);
                if columns.is_empty() {
                    self.all = true;
                }
            }
            Statement::Fetch { .. }
            | Statement::Execute { .. }
            | Statement::Call(_)
            | Statement::Merge(_) => self.all = true,
            Statement::AlterTable(a) => {
                for op in &a.operations {
                    match op {
                        AlterTableOperation::AddColumn { column_def, .. } => {
                            self.push(&column_def.name.value)
                        }
                        AlterTableOperation::DropColumn { column_names, .. } => {
                            self.push_idents(column_names)
                        }
                        AlterTableOperation::RenameColumn {
                            old_column_name,
                            new_column_name,
                        } => {
                            self.push(&old_column_name.value);
                            self.push(&new_column_name.value);
                        }
                        AlterTableOperation::ChangeColumn {
                            old_name, new_name, ..
                        } => {
                            self.push(&old_name.value);
                            self.push(&new_name.value);
                        }
                        AlterTableOperation::ModifyColumn { col_name, .. } => {
                            self.push(&col_name.value)
                        }
                        AlterTableOperation::AlterColumn { column_name, .. } => {
                            self.push(&column_name.value)
                        }
                        _ => {}
                    }
                }
            }
            Statement::Comment {
                object_type: CommentObject::Column,
                object_name,
                ..
            } => self.push_object(object_name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, q: &Query) -> ControlFlow<()> {
        if matches!(q.body.as_ref(), SetExpr::Table(_)) {
            self.all = true;
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        let in_exists = self.exists_bodies.contains(&(s as *const Select));
        if !in_exists && s.projection.iter().any(is_wildcard) {
            self.all = true;
        }
        for twj in &s.from {
            for j in &twj.joins {
                if let Some(JoinConstraint::Using(cols) | JoinConstraint::UsingAlias(cols, _)) =
                    join_constraint(&j.join_operator)
                {
                    for c in cols {
                        self.push_object(c);
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        let alias = match tf {
            TableFactor::Table {
                name, alias, args, ..
            } => {
                self.rels.insert(last_part(name).to_lowercase());
                match args {
                    Some(_) => self.all |= is_dynamic_sql(name),
                    // `users AS u(a, b)` renames columns by position.
                    None => self.all |= alias.as_ref().is_some_and(|a| !a.columns.is_empty()),
                }
                alias.as_ref()
            }
            TableFactor::Function { name, alias, .. } => {
                self.all |= is_dynamic_sql(name);
                alias.as_ref()
            }
            TableFactor::Derived { alias, .. }
            | TableFactor::TableFunction { alias, .. }
            | TableFactor::UNNEST { alias, .. }
            | TableFactor::JsonTable { alias, .. }
            | TableFactor::OpenJsonTable { alias, .. }
            | TableFactor::NestedJoin { alias, .. }
            | TableFactor::XmlTable { alias, .. } => alias.as_ref(),
            _ => {
                self.all = true;
                None
            }
        };
        if let Some(a) = alias {
            self.rels.insert(a.name.value.to_lowercase());
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        match e {
            Expr::Identifier(i) => {
                self.push(&i.value);
                self.idents.insert(i.value.to_lowercase());
            }
            Expr::CompoundIdentifier(parts) => {
                if let Some(last) = parts.last() {
                    self.push(&last.value);
                    self.all |= parts.len() > 1 && is_row_function(&last.value);
                }
            }
            Expr::MatchAgainst { columns, .. } => {
                for c in columns {
                    self.push_object(c);
                }
            }
            Expr::Function(f) => {
                self.all |= is_dynamic_sql(&f.name);
                if let FunctionArguments::List(list) = &f.args {
                    let is_count = last_part(&f.name).eq_ignore_ascii_case("count");
                    for a in &list.args {
                        let (FunctionArg::Named { arg, .. }
                        | FunctionArg::ExprNamed { arg, .. }
                        | FunctionArg::Unnamed(arg)) = a;
                        match arg {
                            FunctionArgExpr::Wildcard | FunctionArgExpr::WildcardWithOptions(_) => {
                                self.all |= !is_count
                            }
                            FunctionArgExpr::QualifiedWildcard(_) => self.all = true,
                            FunctionArgExpr::Expr(_) => {}
                        }
                    }
                }
            }
            Expr::Wildcard(_) | Expr::QualifiedWildcard(..) => self.all = true,
            Expr::Exists { subquery, .. } => {
                if let SetExpr::Select(s) = subquery.body.as_ref() {
                    self.exists_bodies.insert(&**s as *const Select);
                }
            }
            Expr::Value(v) => {
                if let Some(name) = ansi_quoted(self.dialect, &v.value) {
                    self.push(name);
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

/// The column facts of one parsed statement.
pub(super) struct ColumnFacts {
    pub columns: Vec<String>,
    pub all_columns: bool,
    pub outputs: Option<Vec<OutputItem>>,
}

/// Analyses one parsed statement.
pub(super) fn analyze(ast: &Statement, dialect: Dialect) -> ColumnFacts {
    let mut names = Names {
        dialect,
        columns: Vec::new(),
        seen: HashSet::new(),
        all: false,
        idents: HashSet::new(),
        rels: HashSet::new(),
        exists_bodies: HashSet::new(),
    };
    let _ = ast.visit(&mut names);
    let whole_row_ref = names.idents.iter().any(|i| names.rels.contains(i));
    let an = Analyzer {
        dialect,
        budget: Cell::new(BUDGET),
    };
    let outputs = an.rows(ast, None);
    ColumnFacts {
        columns: names.columns,
        all_columns: names.all || whole_row_ref,
        outputs,
    }
}

/// The column facts of a statement the parser did not handle but a
/// fallback recogniser did: nothing named, anything possible.
pub(super) fn unknown() -> ColumnFacts {
    ColumnFacts {
        columns: Vec::new(),
        all_columns: true,
        outputs: Some(vec![OutputItem::unknown()]),
    }
}

#[cfg(test)]
mod tests;
