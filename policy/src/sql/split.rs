//! The sqlparser dialect of each of our dialects. (Splitting a query string
//! into statements is done by the server-faithful lexer in `lex`.)

use super::Dialect;
use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect};

pub(super) fn dialect_impl(dialect: Dialect) -> &'static dyn sqlparser::dialect::Dialect {
    static PG: PostgreSqlDialect = PostgreSqlDialect {};
    static MY: MySqlDialect = MySqlDialect {};
    match dialect {
        Dialect::Postgres => &PG,
        Dialect::Mysql => &MY,
    }
}
