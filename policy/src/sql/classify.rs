//! Per-statement classification: parse one statement's tokens and walk the
//! AST for kinds, tables, functions and WHERE clauses.

use super::facts::{Action as A, ObjectKind as O};
use super::split::dialect_impl;
use super::{Dialect, SqlStatement, StatementKind as K};
use sqlparser::ast::{
    AlterCollationOperation, AlterFunctionAction, AlterFunctionKind, AlterFunctionOperation,
    AlterIndexOperation, AlterOperatorClassOperation, AlterOperatorFamilyOperation,
    AlterOperatorOperation, AlterPolicyOperation, AlterRoleOperation, AlterSchemaOperation,
    AlterTableOperation, AlterTableType, AlterTextSearchOperation, AlterTriggerOperation,
    AlterTypeOperation, AlterViewOperation, CommentObject, ContextModifier, CopySource, CopyTarget,
    DefaultPrivilegesObjectType, Expr, FunctionArg, FunctionArgExpr, FunctionArguments,
    FunctionSecurity, GrantObjects, ObjectName, ObjectNamePart, ObjectType, Reset, RoleOption,
    Select, Set, SetExpr, SetSessionAuthorizationParamKind, ShowCreateObject, Statement,
    TableFactor, UtilityOption, Visit, Visitor,
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
        objects: Vec::new(),
        actions: Vec::new(),
        literal_code: false,
        pending_table_fn: None,
    };
    let _ = ast.visit(&mut c);
    // A view on pg_settings is as updatable as pg_settings itself, whose
    // update rule calls set_config(): updating the view sets parameters.
    if c.objects.contains(&O::View)
        && c.tables.iter().any(|t| {
            t.rsplit('.')
                .next()
                .is_some_and(|bare| bare.eq_ignore_ascii_case("pg_settings"))
        })
    {
        c.parameter(None);
    }
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
        objects: c.objects,
        actions: c.actions,
        literal_code: c.literal_code,
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
    objects: Vec<O>,
    actions: Vec<A>,
    literal_code: bool,
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
        if runs_sql_text(name) {
            self.literal_code = true;
        }
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

    fn object(&mut self, o: O) {
        if !self.objects.contains(&o) {
            self.objects.push(o);
        }
    }

    fn action(&mut self, a: A) {
        if !self.actions.contains(&a) {
            self.actions.push(a);
        }
    }

    /// A schema or a database: the same thing on MySQL, so both count.
    fn schema_like(&mut self, o: O) {
        if self.dialect == Dialect::Mysql {
            self.object(O::Database);
            self.object(O::Schema);
        } else {
            self.object(o);
        }
    }

    /// Objects and actions of one statement node (nested statements are
    /// visited on their own).
    fn statement_facts(&mut self, s: &Statement) {
        use Statement as S;
        match s {
            // ---- data movement
            S::Copy { to, target, .. } => match target {
                CopyTarget::Program { .. } => {
                    self.action(A::CopyProgram);
                    self.literal_code = true;
                }
                CopyTarget::File { .. } => self.action(A::CopyFile),
                CopyTarget::Stdin | CopyTarget::Stdout => self.action(if *to {
                    A::CopyToClient
                } else {
                    A::CopyFromClient
                }),
            },
            S::LoadData { .. }
            | S::Directory { .. }
            | S::Unload { .. }
            | S::ExportData(_)
            | S::CopyIntoSnowflake { .. } => self.action(A::CopyFile),
            S::Load { .. } => self.action(A::LoadLibrary),
            S::Execute { .. } => self.literal_code = true,
            S::Update(u) => {
                // pg_settings has an update rule that calls set_config():
                // which parameter depends on the WHERE clause, so assume any.
                let mut names = vec![&u.table.relation];
                names.extend(u.table.joins.iter().map(|j| &j.relation));
                if names.into_iter().any(|t| {
                    matches!(t, TableFactor::Table { name, .. } if last_part_is(name, "pg_settings"))
                }) {
                    self.parameter(None);
                }
            }

            // ---- session
            S::Set(set) => self.set_facts(set),
            S::Reset(r) => match &r.reset {
                Reset::ALL => self.action(A::SetParameter),
                Reset::SessionAuthorization => self.action(A::ResetSessionAuthorization),
                Reset::ConfigurationParameter(name) => match single_name(name).as_deref() {
                    Some(n) if n.eq_ignore_ascii_case("role") => self.action(A::ResetRole),
                    Some(n) if n.eq_ignore_ascii_case("session_authorization") => {
                        self.action(A::ResetSessionAuthorization)
                    }
                    _ => self.action(A::SetParameter),
                },
            },
            S::AlterSession { .. } => self.action(A::SetParameter),

            // ---- CREATE
            S::CreateTable(_) | S::CreateVirtualTable { .. } => self.object(O::Table),
            S::CreateView(v) => {
                self.object(if v.materialized {
                    O::MaterializedView
                } else {
                    O::View
                });
                if let Some(p) = &v.params
                    && (p.definer.is_some()
                        || p.security
                            .as_ref()
                            .is_some_and(|s| s.to_string().eq_ignore_ascii_case("definer")))
                {
                    self.action(A::SecurityDefiner);
                }
            }
            S::CreateIndex(_) => self.object(O::Index),
            S::CreateRole(r) => {
                self.object(O::Role);
                if r.password.is_some() {
                    self.action(A::SetPassword);
                }
                if r.bypassrls == Some(true) {
                    self.action(A::DisableRowSecurity);
                }
                if !(r.in_role.is_empty()
                    && r.in_group.is_empty()
                    && r.role.is_empty()
                    && r.user.is_empty()
                    && r.admin.is_empty())
                {
                    self.action(A::GrantRole);
                }
            }
            S::CreateUser(_) => self.object(O::Role),
            S::CreateServer(_) => self.object(O::Server),
            S::CreateForeignTable(_) => self.object(O::ForeignTable),
            S::CreateForeignDataWrapper(_) => self.object(O::ForeignDataWrapper),
            S::CreateUserMapping(_) => self.object(O::UserMapping),
            S::CreatePolicy(_) => self.object(O::Policy),
            S::CreateRule(_) => self.object(O::Rule),
            S::CreateOperator(_) | S::CreateOperatorFamily(_) | S::CreateOperatorClass(_) => {
                self.object(O::Operator)
            }
            S::CreateTextSearch(_) => self.object(O::TextSearch),
            S::CreateAggregate(_) => self.object(O::Aggregate),
            S::CreateExtension(_) => self.object(O::Extension),
            S::CreateCollation(_) => self.object(O::Collation),
            S::CreateSchema { .. } => self.schema_like(O::Schema),
            S::CreateDatabase { .. } => self.schema_like(O::Database),
            S::CreateFunction(f) => {
                self.object(O::Function);
                self.literal_code = true;
                if f.security == Some(FunctionSecurity::Definer) {
                    self.action(A::SecurityDefiner);
                }
                // `SET name = value` clauses apply whenever it runs.
                for p in &f.set_params {
                    self.assignment(None, &p.name);
                }
            }
            S::CreateMacro { .. } => {
                self.object(O::Function);
                self.literal_code = true;
            }
            S::CreateProcedure { .. } => {
                self.object(O::Procedure);
                self.literal_code = true;
            }
            S::CreateTrigger(_) => self.object(O::Trigger),
            S::CreateSequence { .. } => self.object(O::Sequence),
            S::CreateDomain(_) => self.object(O::Domain),
            S::CreateType { .. } => self.object(O::Type),
            S::CreateSecret { .. }
            | S::CreateConnector(_)
            | S::CreateStage { .. }
            | S::CreateFileFormat { .. }
            | S::CreateWarehouse(_) => self.object(O::Other),

            // ---- ALTER
            S::AlterTable(t) => {
                self.object(if t.table_type == Some(AlterTableType::Foreign) {
                    O::ForeignTable
                } else {
                    O::Table
                });
                for op in &t.operations {
                    self.alter_table_op(op);
                }
            }
            S::AlterSchema(a) => {
                self.schema_like(O::Schema);
                for op in &a.operations {
                    match op {
                        AlterSchemaOperation::Rename { .. } => self.action(A::Rename),
                        AlterSchemaOperation::OwnerTo { .. } => self.action(A::ChangeOwner),
                        _ => {}
                    }
                }
            }
            S::AlterIndex { operation, .. } => {
                self.object(O::Index);
                match operation {
                    AlterIndexOperation::RenameIndex { .. } => self.action(A::Rename),
                }
            }
            S::AlterView(v) => {
                self.object(if v.materialized {
                    O::MaterializedView
                } else {
                    O::View
                });
                match &v.operation {
                    AlterViewOperation::AlterColumn { .. } => self.action(A::AlterColumn),
                    AlterViewOperation::OwnerTo(_) => self.action(A::ChangeOwner),
                    AlterViewOperation::RenameColumn { .. }
                    | AlterViewOperation::RenameTo { .. } => self.action(A::Rename),
                    _ => {}
                }
            }
            S::AlterFunction(f) => {
                self.object(match f.kind {
                    AlterFunctionKind::Function => O::Function,
                    AlterFunctionKind::Aggregate => O::Aggregate,
                });
                match &f.operation {
                    AlterFunctionOperation::RenameTo { .. } => self.action(A::Rename),
                    AlterFunctionOperation::OwnerTo(_) => self.action(A::ChangeOwner),
                    AlterFunctionOperation::Actions { actions, .. } => {
                        for a in actions {
                            match a {
                                AlterFunctionAction::Security {
                                    security: FunctionSecurity::Definer,
                                    ..
                                } => self.action(A::SecurityDefiner),
                                AlterFunctionAction::Set(p) => self.assignment(None, &p.name),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            S::AlterType(t) => {
                self.object(O::Type);
                if matches!(
                    t.operation,
                    AlterTypeOperation::Rename(_) | AlterTypeOperation::RenameValue(_)
                ) {
                    self.action(A::Rename);
                }
            }
            S::AlterCollation(c) => {
                self.object(O::Collation);
                match c.operation {
                    AlterCollationOperation::RenameTo { .. } => self.action(A::Rename),
                    AlterCollationOperation::OwnerTo(_) => self.action(A::ChangeOwner),
                    _ => {}
                }
            }
            S::AlterOperator(o) => {
                self.object(O::Operator);
                if matches!(o.operation, AlterOperatorOperation::OwnerTo(_)) {
                    self.action(A::ChangeOwner);
                }
            }
            S::AlterOperatorFamily(o) => {
                self.object(O::Operator);
                match o.operation {
                    AlterOperatorFamilyOperation::RenameTo { .. } => self.action(A::Rename),
                    AlterOperatorFamilyOperation::OwnerTo(_) => self.action(A::ChangeOwner),
                    _ => {}
                }
            }
            S::AlterOperatorClass(o) => {
                self.object(O::Operator);
                match o.operation {
                    AlterOperatorClassOperation::RenameTo { .. } => self.action(A::Rename),
                    AlterOperatorClassOperation::OwnerTo(_) => self.action(A::ChangeOwner),
                    _ => {}
                }
            }
            S::AlterTextSearch(t) => {
                self.object(O::TextSearch);
                match t.operation {
                    AlterTextSearchOperation::RenameTo { .. } => self.action(A::Rename),
                    AlterTextSearchOperation::OwnerTo(_) => self.action(A::ChangeOwner),
                    _ => {}
                }
            }
            S::AlterRole { operation, .. } => {
                self.object(O::Role);
                match operation {
                    AlterRoleOperation::RenameRole { .. } => self.action(A::Rename),
                    AlterRoleOperation::AddMember { .. } => self.action(A::GrantRole),
                    AlterRoleOperation::DropMember { .. } => self.action(A::RevokeRole),
                    AlterRoleOperation::WithOptions { options } => {
                        for o in options {
                            match o {
                                RoleOption::Password(_) => self.action(A::SetPassword),
                                RoleOption::BypassRLS(true) => self.action(A::DisableRowSecurity),
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            S::AlterUser(u) => {
                self.object(O::Role);
                if u.rename_to.is_some() {
                    self.action(A::Rename);
                }
                if u.reset_password {
                    self.action(A::SetPassword);
                }
            }
            S::AlterPolicy(p) => {
                self.object(O::Policy);
                if matches!(p.operation, AlterPolicyOperation::Rename { .. }) {
                    self.action(A::Rename);
                }
            }
            S::AlterTrigger(t) => {
                self.object(O::Trigger);
                if matches!(t.operation, AlterTriggerOperation::Rename { .. }) {
                    self.action(A::Rename);
                }
            }
            S::AlterConnector { .. } => self.object(O::Other),
            S::RenameTable(_) => {
                self.object(O::Table);
                self.action(A::Rename);
            }

            // ---- DROP, TRUNCATE, REFRESH
            S::Drop { object_type, .. } => match object_type {
                ObjectType::Collation => self.object(O::Collation),
                ObjectType::Table => self.object(O::Table),
                ObjectType::ForeignTable => self.object(O::ForeignTable),
                ObjectType::View => self.object(O::View),
                ObjectType::MaterializedView => self.object(O::MaterializedView),
                ObjectType::Index => self.object(O::Index),
                ObjectType::Schema => self.schema_like(O::Schema),
                ObjectType::Database => self.schema_like(O::Database),
                ObjectType::Role | ObjectType::Group | ObjectType::User => self.object(O::Role),
                ObjectType::Sequence => self.object(O::Sequence),
                ObjectType::Type => self.object(O::Type),
                ObjectType::Stage | ObjectType::Stream | ObjectType::Warehouse => {
                    self.object(O::Other)
                }
            },
            S::DropFunction(_) => self.object(O::Function),
            S::DropDomain(_) => self.object(O::Domain),
            S::DropProcedure { .. } => self.object(O::Procedure),
            S::DropPolicy(_) => self.object(O::Policy),
            S::DropRule(_) => self.object(O::Rule),
            S::DropExtension(_) => self.object(O::Extension),
            S::DropOperator(_) | S::DropOperatorFamily(_) | S::DropOperatorClass(_) => {
                self.object(O::Operator)
            }
            S::DropTrigger(_) => self.object(O::Trigger),
            S::DropSecret { .. } | S::DropConnector { .. } => self.object(O::Other),
            S::Truncate(_) => self.object(O::Table),
            S::RefreshMaterializedView(_) => self.object(O::MaterializedView),

            // ---- privileges and comments
            S::Grant(g) => self.grant_facts(g.objects.as_ref()),
            S::Revoke(r) => self.grant_facts(r.objects.as_ref()),
            S::GrantRole(_) => {
                self.object(O::Role);
                self.action(A::GrantRole);
            }
            S::RevokeRole(_) => {
                self.object(O::Role);
                self.action(A::RevokeRole);
            }
            S::AlterDefaultPrivileges(a) => {
                use sqlparser::ast::AlterDefaultPrivilegesOperation as Op;
                let (Op::Grant { object_type, .. } | Op::Revoke { object_type, .. }) = &a.operation;
                match object_type {
                    DefaultPrivilegesObjectType::Tables => self.object(O::Table),
                    DefaultPrivilegesObjectType::Sequences => self.object(O::Sequence),
                    DefaultPrivilegesObjectType::Functions => self.object(O::Function),
                    DefaultPrivilegesObjectType::Routines => {
                        self.object(O::Function);
                        self.object(O::Procedure);
                    }
                    DefaultPrivilegesObjectType::Types => self.object(O::Type),
                    DefaultPrivilegesObjectType::Schemas => self.object(O::Schema),
                    _ => self.object(O::Other),
                }
            }
            S::Comment { object_type, .. } => match object_type {
                CommentObject::Collation => self.object(O::Collation),
                CommentObject::Column => self.object(O::Column),
                CommentObject::Database => self.schema_like(O::Database),
                CommentObject::Domain => self.object(O::Domain),
                CommentObject::Extension => self.object(O::Extension),
                CommentObject::ForeignTable => self.object(O::ForeignTable),
                CommentObject::Function => self.object(O::Function),
                CommentObject::Index => self.object(O::Index),
                CommentObject::MaterializedView => self.object(O::MaterializedView),
                CommentObject::Procedure => self.object(O::Procedure),
                CommentObject::Role | CommentObject::User => self.object(O::Role),
                CommentObject::Schema => self.schema_like(O::Schema),
                CommentObject::Sequence => self.object(O::Sequence),
                CommentObject::Table => self.object(O::Table),
                CommentObject::Type => self.object(O::Type),
                CommentObject::View => self.object(O::View),
            },
            _ => {}
        }
    }

    fn alter_table_op(&mut self, op: &AlterTableOperation) {
        use AlterTableOperation as T;
        match op {
            T::AddColumn { .. } => self.action(A::AddColumn),
            T::DropColumn { .. } => self.action(A::DropColumn),
            T::AlterColumn { .. } | T::ModifyColumn { .. } => self.action(A::AlterColumn),
            T::ChangeColumn {
                old_name, new_name, ..
            } => {
                self.action(A::AlterColumn);
                if !old_name.value.eq_ignore_ascii_case(&new_name.value) {
                    self.action(A::Rename);
                }
            }
            T::RenameColumn { .. }
            | T::RenameTable { .. }
            | T::RenameConstraint { .. }
            | T::RenamePartitions { .. }
            | T::SwapWith { .. } => self.action(A::Rename),
            T::OwnerTo { .. } => self.action(A::ChangeOwner),
            T::DisableTrigger { .. }
            | T::DisableRule { .. }
            | T::EnableReplicaTrigger { .. }
            | T::EnableReplicaRule { .. } => self.action(A::DisableTrigger),
            T::DisableRowLevelSecurity | T::NoForceRowLevelSecurity => {
                self.action(A::DisableRowSecurity)
            }
            _ => {}
        }
    }

    fn grant_facts(&mut self, objects: Option<&GrantObjects>) {
        use GrantObjects as G;
        let Some(objects) = objects else {
            self.object(O::Other);
            return;
        };
        match objects {
            G::AllSequencesInSchema { .. }
            | G::FutureSequencesInSchema { .. }
            | G::Sequences(_) => self.object(O::Sequence),
            G::AllTablesInSchema { .. }
            | G::FutureTablesInSchema { .. }
            | G::AllExternalTablesInSchema { .. }
            | G::FutureExternalTablesInSchema { .. } => self.object(O::Table),
            G::Tables(names) => {
                self.object(O::Table);
                // MySQL `ON db.*` and `ON *.*`: database or global privileges.
                if names.iter().any(|n| last_part_is(n, "*")) {
                    self.schema_like(O::Database);
                }
            }
            G::AllViewsInSchema { .. } | G::FutureViewsInSchema { .. } | G::Views(_) => {
                self.object(O::View)
            }
            G::AllMaterializedViewsInSchema { .. } | G::FutureMaterializedViewsInSchema { .. } => {
                self.object(O::MaterializedView)
            }
            G::AllFunctionsInSchema { .. } | G::Functions(_) => self.object(O::Function),
            G::AllProceduresInSchema { .. } | G::Procedures(_) => self.object(O::Procedure),
            G::AllRoutinesInSchema { .. } | G::Routines(_) => {
                self.object(O::Function);
                self.object(O::Procedure);
            }
            G::FutureSchemasInDatabase { .. } | G::Schemas(_) => self.schema_like(O::Schema),
            G::Databases(_) => self.schema_like(O::Database),
            G::Users(_) => self.object(O::Role),
            _ => self.object(O::Other),
        }
    }

    fn set_facts(&mut self, set: &Set) {
        match set {
            Set::SingleAssignment {
                scope, variable, ..
            } => self.assignment(scope.as_ref(), variable),
            Set::MultipleAssignments { assignments } => {
                for a in assignments {
                    self.assignment(a.scope.as_ref(), &a.name);
                }
            }
            Set::ParenthesizedAssignments { variables, .. } => {
                for v in variables {
                    self.assignment(None, v);
                }
            }
            Set::SetSessionAuthorization(p) => self.action(match p.kind {
                SetSessionAuthorizationParamKind::Default => A::ResetSessionAuthorization,
                SetSessionAuthorizationParamKind::User(_) => A::SetSessionAuthorization,
            }),
            Set::SetRole { role_name, .. } => match role_name {
                None => self.action(A::ResetRole),
                Some(r)
                    if self.dialect == Dialect::Mysql
                        && r.quote_style.is_none()
                        && r.value.eq_ignore_ascii_case("none") =>
                {
                    self.action(A::ResetRole)
                }
                Some(_) => self.action(A::SetRole),
            },
            Set::SetTimeZone { .. }
            | Set::SetNames { .. }
            | Set::SetNamesDefault {}
            | Set::SetSessionParam(_) => self.action(A::SetParameter),
            Set::SetTransaction { .. } => {}
        }
    }

    /// `SET [scope] name = …` (one assignment).
    fn assignment(&mut self, scope: Option<&ContextModifier>, name: &ObjectName) {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| match p {
                ObjectNamePart::Identifier(i) => i.value.clone(),
                other => other.to_string(),
            })
            .collect();
        let mut rest: &[String] = &parts;
        if self.dialect == Dialect::Mysql {
            if scope == Some(&ContextModifier::Global) {
                self.action(A::AlterSystem);
            }
            match rest.first().map(String::as_str) {
                // A user variable, not a server setting.
                Some(p) if p.starts_with('@') && !p.starts_with("@@") => return,
                Some(p) if p.starts_with("@@") => {
                    let scope = p[2..].to_ascii_lowercase();
                    if rest.len() > 1 {
                        if matches!(scope.as_str(), "global" | "persist" | "persist_only") {
                            self.action(A::AlterSystem);
                        }
                        rest = &rest[1..];
                    } else {
                        self.parameter(Some(&p[2..]));
                        return;
                    }
                }
                _ => {}
            }
            if let [one] = rest
                && one.eq_ignore_ascii_case("password")
            {
                self.action(A::SetPassword);
                return;
            }
        }
        let joined = rest.join(".");
        self.parameter(Some(&joined));
    }

    /// Setting run-time parameter `name`; `None` when the text does not say
    /// which (then it may be any of them, `role` included).
    fn parameter(&mut self, name: Option<&str>) {
        self.action(A::SetParameter);
        // Only plain names are trusted; anything else may be spelled in a
        // way the server reads as `role` (escapes, odd quoting).
        let name = name.filter(|n| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        });
        match name {
            None => {
                self.action(A::SetRole);
                self.action(A::SetSessionAuthorization);
                self.action(A::DisableTrigger);
            }
            Some(n) if n.eq_ignore_ascii_case("role") => self.action(A::SetRole),
            Some(n) if n.eq_ignore_ascii_case("session_authorization") => {
                self.action(A::SetSessionAuthorization)
            }
            Some(n) if n.eq_ignore_ascii_case("session_replication_role") => {
                self.action(A::DisableTrigger)
            }
            Some(_) => {}
        }
    }

    /// Facts from a function call: `set_config(name, …)` sets a parameter.
    fn call_facts(&mut self, name: &ObjectName, args: Option<&[FunctionArg]>) {
        if !last_part_is(name, "set_config") {
            return;
        }
        let first = args.and_then(|a| a.first()).and_then(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(Expr::Value(v))) => match &v.value {
                sqlparser::ast::Value::SingleQuotedString(s) => Some(s.as_str()),
                sqlparser::ast::Value::DollarQuotedString(d) => Some(d.value.as_str()),
                _ => None,
            },
            _ => None,
        });
        self.parameter(first);
    }
}

impl Visitor for Collector {
    type Break = ();

    fn pre_visit_statement(&mut self, s: &Statement) -> ControlFlow<()> {
        self.kind(kind_of(s));
        self.statement_names(s);
        self.statement_facts(s);
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
                args: Some(a),
                ..
            } => {
                self.call_facts(name, Some(&a.args));
                self.pending_table_fn = Some(name.clone());
            }
            TableFactor::Function { name, args, .. } => {
                self.call_facts(name, Some(args));
                self.function(name);
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, e: &Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = e {
            let args = match &f.args {
                FunctionArguments::List(l) => Some(l.args.as_slice()),
                _ => None,
            };
            self.call_facts(&f.name, args);
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
            self.object(O::Table);
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
            literal_code: true,
            // The body runs unseen (and may RAISE NOTICE any value).
            all_columns: true,
            ..simple(text, vec![K::Do])
        }),
        "vacuum" => vacuum(&toks[1..], text),
        "alter" => alter_system(&toks[1..], text),
        _ => None,
    }
}

/// A statement recognised from tokens: kinds only, no names or facts.
fn simple(text: &str, kinds: Vec<K>) -> SqlStatement {
    SqlStatement {
        text: text.to_owned(),
        kinds,
        tables: Vec::new(),
        functions: Vec::new(),
        has_where: None,
        objects: Vec::new(),
        actions: Vec::new(),
        literal_code: false,
        columns: Vec::new(),
        all_columns: false,
        outputs: None,
    }
}

/// An unquoted word spelled `name` (any case).
fn is_kw(t: &Token, name: &str) -> bool {
    matches!(t, Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case(name))
}

/// Whether the last part of `name` is `want` (any case).
fn last_part_is(name: &ObjectName, want: &str) -> bool {
    match name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => i.value.eq_ignore_ascii_case(want),
        Some(other) => other.to_string().eq_ignore_ascii_case(want),
        None => false,
    }
}

/// The name when it has one part.
fn single_name(name: &ObjectName) -> Option<String> {
    match name.0.as_slice() {
        [ObjectNamePart::Identifier(i)] => Some(i.value.clone()),
        _ => None,
    }
}

/// Functions that run SQL (or read a relation) named in a string argument:
/// dblink, the `*_to_xml*` family, `ts_stat`/`ts_rewrite`, pg_cron and
/// pg_background jobs, Citus `run_command_on_*`, MySQL
/// `sys.execute_prepared_stmt`. Matched on the last name part, any schema.
fn runs_sql_text(name: &ObjectName) -> bool {
    let last = match name.0.last() {
        Some(ObjectNamePart::Identifier(i)) => i.value.to_ascii_lowercase(),
        Some(other) => other.to_string().to_ascii_lowercase(),
        None => return false,
    };
    if last.starts_with("dblink") || last.starts_with("run_command_on_") {
        return true;
    }
    for prefix in ["query", "table", "cursor", "schema", "database"] {
        if let Some(rest) = last.strip_prefix(prefix)
            && matches!(rest, "_to_xml" | "_to_xmlschema" | "_to_xml_and_xmlschema")
        {
            return true;
        }
    }
    matches!(
        last.as_str(),
        "ts_stat"
            | "ts_rewrite"
            | "schedule"
            | "schedule_in_database"
            | "alter_job"
            | "pg_background_launch"
            | "execute_prepared_stmt"
    )
}

/// PostgreSQL `ALTER SYSTEM SET name { TO | = } { value [, ...] | DEFAULT }`
/// and `ALTER SYSTEM RESET { name | ALL }` (sqlparser does not parse them).
/// Values may only be words, strings and numbers.
fn alter_system(rest: &[&Token], text: &str) -> Option<SqlStatement> {
    if !rest.first().is_some_and(|t| is_kw(t, "system")) {
        return None;
    }
    let name = |i: &mut usize| -> Option<()> {
        loop {
            match rest.get(*i)? {
                Token::Word(_) => *i += 1,
                _ => return None,
            }
            if rest.get(*i) == Some(&&Token::Period) {
                *i += 1;
            } else {
                return Some(());
            }
        }
    };
    let mut i = 2;
    match rest.get(1)? {
        t if is_kw(t, "set") => {
            name(&mut i)?;
            match rest.get(i)? {
                Token::Eq => {}
                t if is_kw(t, "to") => {}
                _ => return None,
            }
            i += 1;
            loop {
                if matches!(rest.get(i)?, Token::Minus | Token::Plus) {
                    i += 1;
                }
                match rest.get(i)? {
                    Token::Word(_)
                    | Token::Number(..)
                    | Token::SingleQuotedString(_)
                    | Token::EscapedStringLiteral(_)
                    | Token::DollarQuotedString(_) => i += 1,
                    _ => return None,
                }
                match rest.get(i) {
                    None => break,
                    Some(Token::Comma) => i += 1,
                    Some(_) => return None,
                }
            }
        }
        t if is_kw(t, "reset") => {
            name(&mut i)?;
            if i != rest.len() {
                return None;
            }
        }
        _ => return None,
    }
    Some(SqlStatement {
        actions: vec![A::AlterSystem],
        ..simple(text, vec![K::Alter])
    })
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
    let to = is_word(toks[i], Keyword::TO);
    let mut stmt = SqlStatement {
        tables: vec![name.join(".")],
        columns: super::lineage::unknown().columns,
        all_columns: true,
        outputs: super::lineage::unknown().outputs,
        ..simple(text, vec![K::Copy])
    };
    if is_word(target, Keyword::PROGRAM) {
        stmt.actions.push(A::CopyProgram);
        stmt.literal_code = true;
    } else if is_word(target, Keyword::STDIN) || is_word(target, Keyword::STDOUT) {
        stmt.actions.push(if to {
            A::CopyToClient
        } else {
            A::CopyFromClient
        });
    } else {
        stmt.actions.push(A::CopyFile);
    }
    Some(stmt)
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
        tables,
        ..simple(text, kinds)
    })
}

fn push_kind(kinds: &mut Vec<K>, k: K) {
    if !kinds.contains(&k) {
        kinds.push(k);
    }
}
