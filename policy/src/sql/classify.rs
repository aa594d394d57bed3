//! Per-statement classification: parse one statement's tokens and walk the
//! AST for kinds, tables, functions and WHERE clauses.

use super::split::dialect_impl;
use super::{Dialect, SqlStatement, StatementKind as K};
use sqlparser::ast::{
    CommentObject, CopySource, Expr, GrantObjects, ObjectName, ObjectNamePart, ObjectType, Select,
    SetExpr, ShowCreateObject, Statement, TableFactor, UtilityOption, Visit, Visitor,
};
use sqlparser::keywords::Keyword;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::{Token, TokenWithSpan};
use std::ops::ControlFlow;

/// Parses and classifies one statement (no `;` inside `tokens`).
pub(super) fn statement(
    tokens: Vec<TokenWithSpan>,
    text: &str,
    dialect: Dialect,
) -> Result<SqlStatement, String> {
    if dialect == Dialect::Postgres
        && let Some(stmt) = fallback(&tokens, text)
    {
        return Ok(stmt);
    }
    // Kept for the COPY fallback below (only for statements starting COPY).
    let copy_tokens = (dialect == Dialect::Postgres
        && first_word(&tokens).as_deref() == Some("copy"))
    .then(|| tokens.clone());
    let d = dialect_impl(dialect);
    let mut parser = Parser::new(d).with_tokens_with_locations(tokens);
    let ast = match parser.parse_statement() {
        Ok(ast) => ast,
        Err(e) => {
            return copy_tokens
                .and_then(|t| copy_fallback(&t, text))
                .ok_or_else(|| e.to_string());
        }
    };
    let next = parser.peek_token();
    if next.token != Token::EOF {
        return Err(format!(
            "unexpected {} after the end of the statement",
            next.token
        ));
    }
    Ok(from_ast(&ast, text, dialect))
}

/// Classifies a parsed statement.
pub(super) fn from_ast(ast: &Statement, text: &str, dialect: Dialect) -> SqlStatement {
    let mut c = Collector {
        dialect,
        kinds: Vec::new(),
        tables: Vec::new(),
        functions: Vec::new(),
        has_where: None,
        pending_table_fn: None,
    };
    let _ = ast.visit(&mut c);
    // Plain EXPLAIN plans without running: only EXPLAIN ANALYZE executes the
    // explained statement, so only then do its kinds count.
    if let Statement::Explain {
        analyze, options, ..
    } = ast
        && !explain_executes(*analyze, options.as_deref())
    {
        c.kinds.truncate(1);
        c.has_where = None;
    }
    let cols = super::lineage::analyze(ast, dialect);
    SqlStatement {
        text: text.to_owned(),
        kinds: c.kinds,
        tables: c.tables,
        functions: c.functions,
        has_where: c.has_where,
        columns: cols.columns,
        all_columns: cols.all_columns,
        outputs: cols.outputs,
    }
}

/// `EXPLAIN ANALYZE ...` or `EXPLAIN (ANALYZE [true|on|1], ...) ...`.
fn explain_executes(analyze: bool, options: Option<&[UtilityOption]>) -> bool {
    analyze
        || options.unwrap_or_default().iter().any(|o| {
            o.name.value.eq_ignore_ascii_case("analyze")
                && o.arg.as_ref().is_none_or(|a| {
                    let v = a.to_string().to_ascii_lowercase();
                    !matches!(v.as_str(), "false" | "off" | "0" | "'false'" | "'off'")
                })
        })
}

struct Collector {
    dialect: Dialect,
    kinds: Vec<K>,
    tables: Vec<String>,
    functions: Vec<String>,
    has_where: Option<bool>,
    /// The name of a `FROM f(...)` table function about to be visited as a
    /// relation: it is a function, not a table.
    pending_table_fn: Option<ObjectName>,
}

fn push_unique(list: &mut Vec<String>, name: String) {
    if !name.is_empty() && !list.contains(&name) {
        list.push(name);
    }
}

/// `schema.table` with identifier quotes removed.
pub(super) fn object_name(name: &ObjectName) -> String {
    let mut out = String::new();
    for (i, part) in name.0.iter().enumerate() {
        if i > 0 {
            out.push('.');
        }
        match part {
            ObjectNamePart::Identifier(ident) => out.push_str(&ident.value),
            other => out.push_str(&other.to_string()),
        }
    }
    out
}

impl Collector {
    fn kind(&mut self, k: K) {
        if !self.kinds.contains(&k) {
            self.kinds.push(k);
        }
    }

    fn table(&mut self, name: &ObjectName) {
        push_unique(&mut self.tables, object_name(name));
    }

    fn function(&mut self, name: &ObjectName) {
        push_unique(&mut self.functions, object_name(name));
    }

    fn where_clause(&mut self, present: bool) {
        self.has_where = Some(self.has_where.unwrap_or(true) && present);
    }

    /// Names that sqlparser's visitor does not report as relations.
    fn statement_names(&mut self, s: &Statement) {
        match s {
            Statement::Drop {
                object_type, names, ..
            } => {
                if matches!(
                    object_type,
                    ObjectType::Table
                        | ObjectType::View
                        | ObjectType::MaterializedView
                        | ObjectType::ForeignTable
                ) {
                    for n in names {
                        self.table(n);
                    }
                }
            }
            Statement::Delete(d) => {
                for n in &d.tables {
                    self.table(n);
                }
                self.where_clause(d.selection.is_some());
            }
            Statement::Update(u) => self.where_clause(u.selection.is_some()),
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                ..
            } => self.table(table_name),
            Statement::Grant(g) => self.grant_objects(g.objects.as_ref()),
            Statement::Revoke(r) => self.grant_objects(r.objects.as_ref()),
            Statement::Comment {
                object_type,
                object_name,
                ..
            } => match object_type {
                CommentObject::Table
                | CommentObject::ForeignTable
                | CommentObject::MaterializedView => self.table(object_name),
                CommentObject::Column => {
                    let parts = &object_name.0;
                    if parts.len() > 1 {
                        self.table(&ObjectName(parts[..parts.len() - 1].to_vec()));
                    }
                }
                _ => {}
            },
            Statement::LockTables { tables } => {
                for t in tables {
                    push_unique(&mut self.tables, t.table.value.clone());
                }
            }
            Statement::RenameTable(renames) => {
                for r in renames {
                    self.table(&r.old_name);
                    self.table(&r.new_name);
                }
            }
            Statement::ShowCreate {
                obj_type: ShowCreateObject::Table | ShowCreateObject::View,
                obj_name,
            } => self.table(obj_name),
            Statement::Vacuum(v) => {
                if let Some(n) = &v.table_name {
                    self.table(n);
                }
            }
            Statement::Call(f) => self.function(&f.name),
            Statement::LoadData { table_name, .. } => self.table(table_name),
            _ => {}
        }
    }

    fn grant_objects(&mut self, objects: Option<&GrantObjects>) {
        if let Some(GrantObjects::Tables(names) | GrantObjects::Views(names)) = objects {
            for n in names {
                self.table(n);
            }
        }
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        self.kind(kind_of(s));
        self.statement_names(s);
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<()> {
        if self.pending_table_fn.as_ref() == Some(relation) {
            self.pending_table_fn = None;
            self.function(relation);
        } else {
            self.table(relation);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, tf: &TableFactor) -> ControlFlow<()> {
        match tf {
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            } => self.pending_table_fn = Some(name.clone()),
            TableFactor::Function { name, .. } => self.function(name),
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            self.function(&f.name);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, s: &Select) -> ControlFlow<()> {
        // PostgreSQL `SELECT ... INTO new_table` creates a table.
        if self.dialect == Dialect::Postgres
            && let Some(into) = &s.into
        {
            self.kind(K::Create);
            for t in &into.targets {
                match t {
                    Expr::Identifier(i) => push_unique(&mut self.tables, i.value.clone()),
                    Expr::CompoundIdentifier(parts) => {
                        let name: Vec<&str> = parts.iter().map(|p| p.value.as_str()).collect();
                        push_unique(&mut self.tables, name.join("."));
                    }
                    _ => {}
                }
            }
        }
        ControlFlow::Continue(())
    }
}

/// The kind of one statement node.
fn kind_of(s: &Statement) -> K {
    use Statement as S;
    match s {
        S::Query(q) => match q.body.as_ref() {
            SetExpr::Insert(_) => K::Insert,
            SetExpr::Update(_) => K::Update,
            SetExpr::Delete(_) => K::Delete,
            SetExpr::Merge(_) => K::Merge,
            _ => K::Select,
        },
        S::Insert(_) => K::Insert,
        S::Update(_) => K::Update,
        S::Delete(_) => K::Delete,
        S::Merge(_) => K::Merge,
        S::Analyze(_) => K::Analyze,
        S::Set(_) => K::Set,
        S::Truncate(_) => K::Truncate,
        S::Call(_) => K::Call,
        S::Copy { .. } | S::CopyIntoSnowflake { .. } | S::LoadData { .. } => K::Copy,
        S::CreateView(_)
        | S::CreateTable(_)
        | S::CreateVirtualTable { .. }
        | S::CreateIndex(_)
        | S::CreateRole(_)
        | S::CreateSecret { .. }
        | S::CreateServer(_)
        | S::CreateForeignTable(_)
        | S::CreateForeignDataWrapper(_)
        | S::CreateUserMapping(_)
        | S::CreatePolicy(_)
        | S::CreateRule(_)
        | S::CreateConnector(_)
        | S::CreateOperator(_)
        | S::CreateOperatorFamily(_)
        | S::CreateOperatorClass(_)
        | S::CreateTextSearch(_)
        | S::CreateAggregate(_)
        | S::CreateExtension(_)
        | S::CreateCollation(_)
        | S::CreateSchema { .. }
        | S::CreateDatabase { .. }
        | S::CreateFunction(_)
        | S::CreateTrigger(_)
        | S::CreateProcedure { .. }
        | S::CreateMacro { .. }
        | S::CreateStage { .. }
        | S::CreateFileFormat { .. }
        | S::CreateWarehouse(_)
        | S::CreateSequence { .. }
        | S::CreateDomain(_)
        | S::CreateType { .. }
        | S::CreateUser(_) => K::Create,
        S::AlterTable(_)
        | S::AlterSchema(_)
        | S::AlterIndex { .. }
        | S::AlterView(_)
        | S::AlterFunction(_)
        | S::AlterType(_)
        | S::AlterCollation(_)
        | S::AlterOperator(_)
        | S::AlterOperatorFamily(_)
        | S::AlterOperatorClass(_)
        | S::AlterTextSearch(_)
        | S::AlterRole { .. }
        | S::AlterPolicy(_)
        | S::AlterTrigger(_)
        | S::AlterConnector { .. }
        | S::AlterSession { .. }
        | S::AlterUser(_)
        | S::RenameTable(_) => K::Alter,
        S::Drop { .. }
        | S::DropFunction(_)
        | S::DropDomain(_)
        | S::DropProcedure { .. }
        | S::DropSecret { .. }
        | S::DropPolicy(_)
        | S::DropRule(_)
        | S::DropConnector { .. }
        | S::DropExtension(_)
        | S::DropOperator(_)
        | S::DropOperatorFamily(_)
        | S::DropOperatorClass(_)
        | S::DropTrigger(_) => K::Drop,
        S::Grant(_) | S::GrantRole(_) | S::AlterDefaultPrivileges(_) => K::Grant,
        S::Revoke(_) | S::RevokeRole(_) => K::Revoke,
        S::ShowFunctions { .. }
        | S::ShowVariable { .. }
        | S::ShowStatus { .. }
        | S::ShowVariables { .. }
        | S::ShowCreate { .. }
        | S::ShowColumns { .. }
        | S::ShowCatalogs { .. }
        | S::ShowDatabases { .. }
        | S::ShowProcessList { .. }
        | S::ShowSchemas { .. }
        | S::ShowCharset(_)
        | S::ShowObjects(_)
        | S::ShowTables { .. }
        | S::ShowViews { .. }
        | S::ShowCollation { .. } => K::Show,
        S::StartTransaction { .. } => K::Begin,
        S::Commit { .. } => K::Commit,
        S::Rollback { .. } => K::Rollback,
        S::Savepoint { .. } => K::Savepoint,
        S::ReleaseSavepoint { .. } => K::Release,
        S::Prepare { .. } => K::Prepare,
        S::Execute { .. } => K::Execute,
        S::Deallocate { .. } => K::Deallocate,
        S::Explain { .. } => K::Explain,
        S::ExplainTable { .. } => K::Describe,
        S::Vacuum(_) => K::Vacuum,
        S::LISTEN { .. } => K::Listen,
        S::NOTIFY { .. } => K::Notify,
        S::UNLISTEN { .. } => K::Unlisten,
        S::Lock(_) | S::LockTables { .. } => K::Lock,
        S::UnlockTables => K::Unlock,
        S::Use(_) => K::Use,
        S::Comment { .. } => K::Comment,
        S::Discard { .. } => K::Discard,
        S::Reset(_) => K::Reset,
        S::Declare { .. } => K::Declare,
        S::Fetch { .. } => K::Fetch,
        S::Close { .. } => K::Close,
        S::RefreshMaterializedView(_) => K::Refresh,
        S::Kill { .. } => K::Kill,
        S::Flush { .. } => K::Flush,
        _ => K::Other,
    }
}

/// PostgreSQL statements sqlparser does not handle but whose shape is simple
/// enough to classify from tokens: `DO` blocks and `VACUUM`.
fn fallback(tokens: &[TokenWithSpan], text: &str) -> Option<SqlStatement> {
    let toks: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let first = match toks.first() {
        Some(Token::Word(w)) if w.quote_style.is_none() => w.value.to_ascii_lowercase(),
        _ => return None,
    };
    match first.as_str() {
        "do" => do_block(&toks[1..]).then(|| SqlStatement {
            text: text.to_owned(),
            kinds: vec![K::Do],
            tables: Vec::new(),
            functions: Vec::new(),
            has_where: None,
            // The body runs unseen (and may RAISE NOTICE any value).
            columns: Vec::new(),
            all_columns: true,
            outputs: None,
        }),
        "vacuum" => vacuum(&toks[1..], text),
        _ => None,
    }
}

fn first_word(tokens: &[TokenWithSpan]) -> Option<String> {
    match tokens
        .iter()
        .map(|t| &t.token)
        .find(|t| !matches!(t, Token::Whitespace(_)))
    {
        Some(Token::Word(w)) if w.quote_style.is_none() => Some(w.value.to_ascii_lowercase()),
        _ => None,
    }
}

/// `COPY table [ ( columns ) ] { FROM | TO } target [options...]` with
/// options sqlparser does not know (e.g. pgbench's `WITH (FREEZE ON)`).
/// The query form `COPY ( query ) TO` is never accepted here: its query
/// must parse.
fn copy_fallback(tokens: &[TokenWithSpan], text: &str) -> Option<SqlStatement> {
    let toks: Vec<&Token> = tokens
        .iter()
        .map(|t| &t.token)
        .filter(|t| !matches!(t, Token::Whitespace(_)))
        .collect();
    let mut i = 1; // after COPY
    let mut name = Vec::new();
    loop {
        match toks.get(i)? {
            Token::Word(w)
                if !(w.quote_style.is_none()
                    && matches!(w.keyword, Keyword::FROM | Keyword::TO)) =>
            {
                name.push(w.value.clone())
            }
            _ => return None,
        }
        i += 1;
        if toks.get(i) == Some(&&Token::Period) {
            i += 1;
        } else {
            break;
        }
    }
    if toks.get(i) == Some(&&Token::LParen) {
        i += 1;
        loop {
            match toks.get(i)? {
                Token::RParen => {
                    i += 1;
                    break;
                }
                Token::Word(_) | Token::Comma => i += 1,
                _ => return None,
            }
        }
    }
    if !toks
        .get(i)
        .is_some_and(|t| is_word(t, Keyword::FROM) || is_word(t, Keyword::TO))
    {
        return None;
    }
    let target = toks.get(i + 1)?;
    let target_ok = is_word(target, Keyword::STDIN)
        || is_word(target, Keyword::STDOUT)
        || is_word(target, Keyword::PROGRAM)
        || matches!(
            target,
            Token::SingleQuotedString(_) | Token::EscapedStringLiteral(_)
        );
    if !target_ok {
        return None;
    }
    Some(SqlStatement {
        text: text.to_owned(),
        kinds: vec![K::Copy],
        tables: vec![name.join(".")],
        functions: Vec::new(),
        has_where: None,
        columns: super::lineage::unknown().columns,
        all_columns: true,
        outputs: super::lineage::unknown().outputs,
    })
}

fn is_string(t: &Token) -> bool {
    matches!(
        t,
        Token::DollarQuotedString(_)
            | Token::SingleQuotedString(_)
            | Token::EscapedStringLiteral(_)
    )
}

fn is_word(t: &Token, kw: Keyword) -> bool {
    matches!(t, Token::Word(w) if w.keyword == kw && w.quote_style.is_none())
}

/// `DO [LANGUAGE name] body [LANGUAGE name]`.
fn do_block(rest: &[&Token]) -> bool {
    let mut i = 0;
    let language = |i: &mut usize| {
        if rest.get(*i).is_some_and(|t| is_word(t, Keyword::LANGUAGE)) {
            if matches!(rest.get(*i + 1), Some(Token::Word(_))) {
                *i += 2;
                return true;
            }
            return false;
        }
        true
    };
    if !language(&mut i) {
        return false;
    }
    if !rest.get(i).is_some_and(|t| is_string(t)) {
        return false;
    }
    i += 1;
    if !language(&mut i) {
        return false;
    }
    i == rest.len()
}

/// `VACUUM [ ( options ) ] [ FULL | FREEZE | VERBOSE | ANALYZE ]...
/// [ table [ ( columns ) ] [, ...] ]`.
fn vacuum(rest: &[&Token], text: &str) -> Option<SqlStatement> {
    let mut i = 0;
    let mut kinds = vec![K::Vacuum];
    if rest.first() == Some(&&Token::LParen) {
        // Option list: words, optional values, commas.
        i += 1;
        loop {
            match rest.get(i)? {
                Token::RParen => {
                    i += 1;
                    break;
                }
                Token::Word(w) => {
                    if w.keyword == Keyword::ANALYZE {
                        push_kind(&mut kinds, K::Analyze);
                    }
                }
                Token::Comma | Token::Number(..) | Token::SingleQuotedString(_) => {}
                _ => return None,
            }
            i += 1;
        }
    }
    while let Some(Token::Word(w)) = rest.get(i) {
        match w.keyword {
            Keyword::FULL | Keyword::FREEZE | Keyword::VERBOSE if w.quote_style.is_none() => {}
            Keyword::ANALYZE if w.quote_style.is_none() => push_kind(&mut kinds, K::Analyze),
            Keyword::NoKeyword
                if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("analyse") =>
            {
                push_kind(&mut kinds, K::Analyze)
            }
            _ => break,
        }
        i += 1;
    }
    let mut tables = Vec::new();
    while i < rest.len() {
        // name [. name]* [( col, ... )] [,]
        let mut name = Vec::new();
        loop {
            match rest.get(i)? {
                Token::Word(w) => name.push(w.value.clone()),
                _ => return None,
            }
            i += 1;
            if rest.get(i) == Some(&&Token::Period) {
                i += 1;
            } else {
                break;
            }
        }
        push_unique(&mut tables, name.join("."));
        if rest.get(i) == Some(&&Token::LParen) {
            i += 1;
            loop {
                match rest.get(i)? {
                    Token::RParen => {
                        i += 1;
                        break;
                    }
                    Token::Word(_) | Token::Comma => i += 1,
                    _ => return None,
                }
            }
        }
        match rest.get(i) {
            None => break,
            Some(Token::Comma) => i += 1,
            Some(_) => return None,
        }
    }
    Some(SqlStatement {
        text: text.to_owned(),
        kinds,
        tables,
        functions: Vec::new(),
        has_where: None,
        columns: Vec::new(),
        all_columns: false,
        outputs: None,
    })
}

fn push_kind(kinds: &mut Vec<K>, k: K) {
    if !kinds.contains(&k) {
        kinds.push(k);
    }
}
