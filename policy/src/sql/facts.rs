//! Finer facts about a statement than its kind: the kind of object it
//! defines or changes ([`ObjectKind`], `sql.object`) and what it does beyond
//! its kind ([`Action`], `sql.action`).
//!
//! Names are lowercase snake_case in policy files. A name the classifier can
//! never produce (because sqlparser does not parse the statements it would
//! describe) is refused when a policy is loaded, with a message that says
//! so: a rule on it could never run.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

macro_rules! named_enum {
    (
        $(#[$meta:meta])*
        $name:ident, $what:literal, unparsed = [$($unparsed:literal => $why:literal,)*],
        { $( $(#[$doc:meta])* $variant:ident = $s:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$doc])* $variant, )+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// Names that describe statements sqlparser does not parse yet,
            /// with what they stand for. Policies naming them are refused.
            pub const UNPARSED: &'static [(&'static str, &'static str)] = &[$(($unparsed, $why)),*];

            /// The lowercase name used in policy files.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                if let Some(v) = $name::ALL.iter().copied().find(|v| v.as_str() == s) {
                    return Ok(v);
                }
                if let Some((_, why)) = $name::UNPARSED.iter().find(|(n, _)| *n == s) {
                    return Err(format!(
                        "{} {s:?} can never match: sqlparser does not parse {why} yet, so such statements are judged as unparsed SQL (defaults.unparsed); remove it",
                        $what
                    ));
                }
                let names: Vec<&str> = $name::ALL.iter().map(|v| v.as_str()).collect();
                Err(format!(
                    "unknown {} {s:?} (expected one of: {})",
                    $what,
                    names.join(", ")
                ))
            }
        }
    };
}

named_enum! {
    /// The kind of object a statement creates, alters, drops, truncates,
    /// refreshes, renames, comments on, or grants/revokes privileges on
    /// (`sql.object`).
    ObjectKind, "object kind",
    unparsed = [
        "event" => "MySQL CREATE/ALTER/DROP EVENT",
        "event_trigger" => "CREATE/ALTER/DROP EVENT TRIGGER",
        "publication" => "CREATE/ALTER/DROP PUBLICATION",
        "subscription" => "CREATE/ALTER/DROP SUBSCRIPTION",
        "tablespace" => "CREATE/ALTER/DROP TABLESPACE",
        "language" => "CREATE/ALTER/DROP LANGUAGE",
        "cast" => "CREATE/DROP CAST",
        "statistics" => "CREATE/ALTER/DROP STATISTICS",
        "conversion" => "CREATE/ALTER/DROP CONVERSION",
        "access_method" => "CREATE/DROP ACCESS METHOD",
        "transform" => "CREATE/DROP TRANSFORM",
        "plugin" => "MySQL INSTALL/UNINSTALL PLUGIN",
    ],
    {
        /// Tables: `CREATE/ALTER/DROP/TRUNCATE TABLE`, `CREATE TABLE AS`,
        /// PostgreSQL `SELECT … INTO`, MySQL `RENAME TABLE`, `GRANT … ON
        /// [TABLE] t` and `ON ALL TABLES IN SCHEMA`, MySQL `ON db.*`.
        Table = "table",
        /// Views.
        View = "view",
        /// Materialized views (also `REFRESH MATERIALIZED VIEW`).
        MaterializedView = "materialized_view",
        /// Indexes.
        Index = "index",
        /// Sequences.
        Sequence = "sequence",
        /// Roles, users and groups: PostgreSQL `CREATE/ALTER/DROP
        /// ROLE|USER|GROUP`, MySQL `CREATE/DROP USER|ROLE`, `GRANT role TO`,
        /// `REVOKE role FROM`.
        Role = "role",
        /// Databases (on MySQL also every `… SCHEMA`, which is a synonym).
        Database = "database",
        /// Schemas (on MySQL also every `… DATABASE`).
        Schema = "schema",
        /// Functions (`CREATE/ALTER/DROP FUNCTION`, `GRANT … ON FUNCTION`).
        Function = "function",
        /// Procedures.
        Procedure = "procedure",
        /// Aggregates (`CREATE/ALTER AGGREGATE`).
        Aggregate = "aggregate",
        /// Triggers.
        Trigger = "trigger",
        /// PostgreSQL rewrite rules.
        Rule = "rule",
        /// Extensions.
        Extension = "extension",
        /// Types.
        Type = "type",
        /// Domains.
        Domain = "domain",
        /// Row-level security policies.
        Policy = "policy",
        /// Foreign servers.
        Server = "server",
        /// Foreign tables.
        ForeignTable = "foreign_table",
        /// Foreign-data wrappers.
        ForeignDataWrapper = "foreign_data_wrapper",
        /// User mappings (credentials for foreign servers).
        UserMapping = "user_mapping",
        /// Collations.
        Collation = "collation",
        /// Operator classes and families (statements on operators themselves
        /// do not parse).
        Operator = "operator",
        /// Text search configurations, dictionaries, parsers and templates.
        TextSearch = "text_search",
        /// Columns (`COMMENT ON COLUMN`; column changes in `ALTER TABLE`
        /// are the table's, see the column actions).
        Column = "column",
        /// Any other object sqlparser understands (Snowflake stages,
        /// warehouses, secrets, connectors, …).
        Other = "other",
    }
}

named_enum! {
    /// What a statement does, beyond its kind (`sql.action`).
    Action, "action",
    unparsed = [
        "load_data_infile" => "MySQL LOAD DATA|XML [LOCAL] INFILE",
        "load_data_local_infile" => "MySQL LOAD DATA|XML LOCAL INFILE",
        "select_into_outfile" => "MySQL SELECT … INTO OUTFILE|DUMPFILE",
    ],
    {
        /// `COPY … TO PROGRAM` / `COPY … FROM PROGRAM`: runs a shell
        /// command on the database server.
        CopyProgram = "copy_program",
        /// `COPY … TO 'file'` / `COPY … FROM 'file'`: a file on the
        /// database server (also Hive-style `LOAD DATA INPATH`).
        CopyFile = "copy_file",
        /// `COPY … TO STDOUT`: data to the client.
        CopyToClient = "copy_to_client",
        /// `COPY … FROM STDIN`: data from the client.
        CopyFromClient = "copy_from_client",
        /// `ALTER TABLE … ADD [COLUMN]`.
        AddColumn = "add_column",
        /// `ALTER TABLE … DROP [COLUMN]`.
        DropColumn = "drop_column",
        /// `ALTER TABLE|VIEW … ALTER COLUMN`, MySQL `MODIFY`/`CHANGE`.
        AlterColumn = "alter_column",
        /// Any rename: `ALTER … RENAME [TO|COLUMN|CONSTRAINT|VALUE]`,
        /// MySQL `RENAME TABLE`, `CHANGE old new`.
        Rename = "rename",
        /// `ALTER … OWNER TO`.
        ChangeOwner = "change_owner",
        /// Stops triggers or rules from firing: `ALTER TABLE … DISABLE
        /// TRIGGER|RULE`, `ENABLE REPLICA|ALWAYS TRIGGER|RULE`, setting
        /// `session_replication_role`.
        DisableTrigger = "disable_trigger",
        /// Weakens row-level security: `ALTER TABLE … DISABLE ROW LEVEL
        /// SECURITY` / `NO FORCE ROW LEVEL SECURITY`, a role given
        /// `BYPASSRLS`.
        DisableRowSecurity = "disable_row_security",
        /// Switches the current role: `SET [LOCAL|SESSION] ROLE r`,
        /// `SET role = r`, `set_config('role', …)`, MySQL `SET ROLE`.
        SetRole = "set_role",
        /// `RESET ROLE`, `SET ROLE NONE`.
        ResetRole = "reset_role",
        /// `SET SESSION AUTHORIZATION u`, `SET session_authorization = u`,
        /// `set_config('session_authorization', …)`.
        SetSessionAuthorization = "set_session_authorization",
        /// `RESET SESSION AUTHORIZATION`, `SET SESSION AUTHORIZATION
        /// DEFAULT`.
        ResetSessionAuthorization = "reset_session_authorization",
        /// Any other change of a run-time parameter: `SET x = …`,
        /// `SET TIME ZONE`, `SET NAMES`, `RESET x`, `set_config()`,
        /// `UPDATE pg_settings` (or a view on it). Not `SET TRANSACTION` and
        /// not MySQL user variables (`SET @x = …`).
        SetParameter = "set_parameter",
        /// Server-wide configuration: PostgreSQL `ALTER SYSTEM`, MySQL
        /// `SET GLOBAL`, `SET @@global.x`, `SET @@persist.x`.
        AlterSystem = "alter_system",
        /// Sets a password: MySQL `SET PASSWORD`, `CREATE ROLE … PASSWORD`,
        /// `ALTER ROLE|USER … PASSWORD`.
        SetPassword = "set_password",
        /// PostgreSQL `LOAD 'library'`.
        LoadLibrary = "load_library",
        /// Code that runs with its owner's rights: `CREATE/ALTER FUNCTION …
        /// SECURITY DEFINER`, MySQL views with `DEFINER =` or `SQL SECURITY
        /// DEFINER`.
        SecurityDefiner = "security_definer",
        /// Role membership granted: `GRANT role TO`, `CREATE ROLE … IN
        /// ROLE|ROLE|USER|ADMIN`.
        GrantRole = "grant_role",
        /// Role membership revoked: `REVOKE role FROM`.
        RevokeRole = "revoke_role",
    }
}
