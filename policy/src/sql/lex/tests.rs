use super::*;
use crate::sql::{SqlError, StatementKind, classify_bytes, classify_with, shape_with};

const SCS_OFF: Lexing = Lexing {
    backslash_escapes: true,
    ..Lexing::postgres()
};
const MARIADB: Lexing = Lexing {
    server: Server::MariaDb(101106),
    ..Lexing::mysql()
};
const MYSQL8: Lexing = Lexing {
    server: Server::MySql(80036),
    ..Lexing::mysql()
};
const NBE: Lexing = Lexing {
    backslash_escapes: false,
    ..MARIADB
};
const ANSI: Lexing = Lexing {
    ansi_quotes: true,
    ..MARIADB
};

/// The statement kinds (first kind of each statement) under `l`.
fn kinds(sql: &str, l: &Lexing) -> Vec<StatementKind> {
    match classify_with(sql, l) {
        Ok(s) => s.iter().map(|s| s.kind()).collect(),
        Err(e) => panic!("{sql:?} under {l:?}: {e}"),
    }
}

fn fails(sql: &str, l: &Lexing) -> SqlError {
    match classify_with(sql, l) {
        Ok(s) => panic!("{sql:?} under {l:?} should be unparsed, got {s:?}"),
        Err(e) => e,
    }
}

use StatementKind::{Delete, Drop, Select, Set};

#[test]
fn standard_conforming_strings_decides_what_a_backslash_does() {
    let attack = "SELECT 'a\\' -- '; DELETE FROM users; --";
    // On: 'a\' is a string ending in a backslash; the rest is a comment.
    assert_eq!(kinds(attack, &Lexing::postgres()), [Select]);
    // Off: \' escapes the quote; the DELETE is a statement.
    assert_eq!(kinds(attack, &SCS_OFF), [Select, Delete]);
    // E'' strings always take escapes.
    assert_eq!(
        kinds(
            "SELECT E'a\\' -- '; DELETE FROM users; --",
            &Lexing::postgres()
        ),
        [Select, Delete]
    );
}

#[test]
fn a_continued_string_keeps_its_escape_mode() {
    // 'x' newline '…' continues the E'' literal, escapes included.
    let sql = "SELECT E'x'\n'\\' -- '; DELETE FROM users; --";
    assert_eq!(kinds(sql, &Lexing::postgres()), [Select, Delete]);
    let sql = "SELECT 'x' -- c\n  'y'";
    let s = classify_with(sql, &Lexing::postgres()).unwrap();
    assert_eq!(s.len(), 1);
    // Without a newline there is no continuation (a syntax error).
    assert!(classify_with("SELECT 'x' 'y'", &Lexing::postgres()).is_err());
}

#[test]
fn postgres_dollar_quotes_identifiers_and_nested_comments() {
    let pg = Lexing::postgres();
    assert_eq!(kinds("SELECT $$ ; DROP TABLE t; $$", &pg), [Select]);
    assert_eq!(
        kinds("SELECT $a$ $$ ; $b$ $a$; DELETE FROM t", &pg),
        [Select, Delete]
    );
    // `$` continues an identifier: a$b$ is a column, not a dollar quote.
    assert_eq!(
        kinds("SELECT a$b$ FROM t; DELETE FROM u", &pg),
        [Select, Delete]
    );
    // Comments nest in PostgreSQL.
    assert_eq!(
        kinds("SELECT /* /* */ ; DELETE FROM t; */ 1", &pg),
        [Select]
    );
    assert_eq!(
        kinds("SELECT 1 *-- c\n 2; DELETE FROM t", &pg),
        [Select, Delete]
    );
    assert_eq!(kinds("SELECT \"a;\"\"b\" FROM t", &pg), [Select]);
    assert!(matches!(
        fails("SELECT U&'\\0041'", &pg),
        SqlError::Tokenize(_)
    ));
    fails("SELECT 1 /* open", &pg);
    fails("SELECT $1abc", &pg);
    fails("SELECT 123abc", &pg);
    fails("SELECT \"\"", &pg);
}

#[test]
fn mysql_backslashes_follow_no_backslash_escapes() {
    let attack = "SELECT 'a\\' -- '; DELETE FROM users; -- ";
    assert_eq!(kinds(attack, &MARIADB), [Select, Delete]);
    assert_eq!(kinds(attack, &NBE), [Select]);
    let attack = "SELECT 'a\\', 1 -- '; DELETE FROM users";
    assert_eq!(kinds(attack, &NBE), [Select]);
    assert_eq!(kinds(attack, &MARIADB), [Select, Delete]);
}

#[test]
fn mysql_double_quotes_follow_ansi_quotes() {
    let sql = "SELECT \"a\\\" FROM t; DELETE FROM u; -- \"";
    // ANSI_QUOTES: "a\" is an identifier; two statements.
    assert_eq!(kinds(sql, &ANSI), [Select, Delete]);
    // Otherwise one string to the last quote.
    assert_eq!(kinds(sql, &MARIADB), [Select]);
}

#[test]
fn mysql_comments() {
    assert_eq!(kinds("SELECT 1 # ; DELETE FROM t\n", &MARIADB), [Select]);
    // `--` needs a space or control character after it.
    assert_eq!(
        kinds("SELECT 1--1; DELETE FROM t", &MARIADB),
        [Select, Delete]
    );
    assert_eq!(kinds("SELECT 1 --\t; DELETE FROM t", &MARIADB), [Select]);
    assert_eq!(kinds("SELECT 1 --", &MARIADB), [Select]);
    // Comments do not nest in MySQL.
    fails("SELECT /* /* */ ; DELETE FROM t; */ 1", &MARIADB);
}

#[test]
fn executable_comments_follow_the_server_version() {
    assert_eq!(kinds("/*!40101 SET NAMES utf8 */", &MARIADB), [Set]);
    assert_eq!(kinds("/*! DROP TABLE t */", &MARIADB), [Drop]);
    assert_eq!(kinds("/*M!100100 DROP TABLE t */", &MARIADB), [Drop]);
    // A future version: a comment; MariaDB also skips MySQL 5.7+ versions.
    assert_eq!(
        kinds("SELECT 1 /*!999999 ; DROP TABLE t */", &MARIADB),
        [Select]
    );
    assert_eq!(kinds("SELECT 1 /*!50700 , 2 */", &MARIADB), [Select]);
    assert_eq!(kinds("SELECT 1 /*!50700 , 2 */", &MYSQL8), [Select]);
    // The WHERE in a skipped comment does not count.
    let s = classify_with("DELETE FROM t /*!99999 WHERE id = 1 */", &MARIADB).unwrap();
    assert_eq!(s[0].has_where, Some(false));
    let s = classify_with("DELETE FROM t /*!40000 WHERE id = 1 */", &MARIADB).unwrap();
    assert_eq!(s[0].has_where, Some(true));
    // MySQL does not know /*M!.
    assert_eq!(
        kinds("SELECT 1 /*M!100100 ; DROP TABLE t */", &MYSQL8),
        [Select]
    );
    // Unknown server version: unparsed.
    fails("/*!40101 SET NAMES utf8 */", &Lexing::mysql());
    // A delimiter or a comment inside an executable comment: unparsed.
    fails("SELECT 1 /*! ; DROP TABLE x */", &MARIADB);
    fails("SELECT 1 /*! /* x */ */", &MARIADB);
    fails("SELECT 1 /*! 2", &MARIADB);
}

#[test]
fn multibyte_trail_bytes_are_not_backslashes() {
    let sjis = Lexing {
        encoding: Encoding::ShiftJis,
        ..MARIADB
    };
    // 0x95 0x5c is one character: the quote after it closes the string.
    let s = classify_bytes(b"SELECT '\x95\x5c'; DELETE FROM t", &sjis).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[1].kind(), Delete);
    // Read byte by byte (latin1) the 0x5c escapes the quote: one statement.
    let latin1 = Lexing {
        encoding: Encoding::from_mysql("latin1"),
        ..MARIADB
    };
    assert!(
        classify_bytes(b"SELECT '\x95\x5c'; DELETE FROM t'", &latin1).is_ok_and(|s| s.len() == 1)
    );
    // Invalid sequences are unparsed, never guessed.
    let gbk = Lexing {
        encoding: Encoding::Gbk,
        ..Lexing::postgres()
    };
    assert!(matches!(
        classify_bytes(b"SELECT '\xbf'; DELETE FROM t", &gbk),
        Err(SqlError::Encoding(_))
    ));
    let utf8 = Lexing::postgres();
    assert!(matches!(
        classify_bytes(b"SELECT '\xff'", &utf8),
        Err(SqlError::Encoding(_))
    ));
}

#[test]
fn mysql_literals_and_variables() {
    assert_eq!(kinds("SELECT 'a' 'b' \"c\"", &MARIADB), [Select]);
    let s = classify_with("SET @`_p_0` = 2", &MARIADB).unwrap();
    assert_eq!(s[0].kind(), Set);
    assert_eq!(
        kinds("SELECT @@session.sql_mode, @x, @`y`", &MARIADB),
        [Select]
    );
    assert_eq!(
        kinds("SELECT X'4142', B'01', 0x41, N'x', _utf8mb4'y'", &MARIADB),
        [Select]
    );
    assert_eq!(
        kinds("SELECT 1 FROM `a``b`; DELETE FROM t", &MARIADB),
        [Select, Delete]
    );
    fails("SELECT 'x\0'", &MARIADB);
    fails("SELECT $a$ x $a$", &MYSQL8);
}

#[test]
fn statement_text_is_the_original() {
    let s = classify_with(
        "SELECT /* c */ E'a' ; DELETE FROM t -- x",
        &Lexing::postgres(),
    )
    .unwrap();
    assert_eq!(s[0].text, "SELECT /* c */ E'a'");
    assert_eq!(s[1].text, "DELETE FROM t -- x");
}

#[test]
fn shapes_follow_the_settings() {
    let sql = "SELECT 'a\\' , 1 -- '";
    assert_eq!(shape_with(sql, &Lexing::postgres()), "select ? , ?");
    assert_eq!(
        shape_with("UPDATE t SET a = 42 WHERE id = $1", &Lexing::postgres()),
        "update t set a = ? where id = ?"
    );
    assert_eq!(
        shape_with("SELECT \"x\" FROM t", &MARIADB),
        "select ? from t"
    );
    assert_eq!(
        shape_with("SELECT \"x\" FROM t", &ANSI),
        "select \"x\" from t"
    );
}

#[test]
fn lenient_lexing_keeps_the_structure_before_an_error() {
    let sql = "/* -----BEGIN PRIVATE KEY----- */ DROP TABLE x; SELECT 'open";
    let toks = lex_lenient(sql, &Lexing::postgres());
    let last = toks.last().unwrap();
    assert_eq!(&sql[last.range.clone()], "'open");
    assert!(
        toks.iter()
            .any(|t| t.tok == Tok::Word && &sql[t.range.clone()] == "DROP")
    );
}

#[test]
fn server_versions_are_read_from_the_handshake() {
    assert_eq!(Server::from_version_string("8.0.36"), Server::MySql(80036));
    assert_eq!(
        Server::from_version_string("5.5.5-10.11.6-MariaDB-0+deb12u1"),
        Server::MariaDb(101106)
    );
    assert_eq!(
        Server::from_version_string("11.4.2-MariaDB"),
        Server::MariaDb(110402)
    );
    assert_eq!(Server::from_version_string("garbage"), Server::Unknown);
}

#[test]
fn insensitive_text_needs_no_settings() {
    use crate::sql::Dialect::{Mysql, Postgres};
    assert!(Lexing::insensitive(
        b"SELECT * FROM t WHERE id = 3",
        Postgres
    ));
    assert!(!Lexing::insensitive(b"SELECT 'a\\'", Postgres));
    assert!(!Lexing::insensitive("SELECT 'é'".as_bytes(), Postgres));
    assert!(Lexing::insensitive(b"SELECT \"a\" FROM t", Postgres));
    assert!(!Lexing::insensitive(b"SELECT \"a\" FROM t", Mysql));
    assert!(!Lexing::insensitive(b"SELECT 1 /*!99999 x */", Mysql));
}

#[test]
fn ansi_quotes_make_double_quotes_columns() {
    let s = classify_with("SELECT upper(\"password\") FROM users", &ANSI).unwrap();
    assert_eq!(s[0].columns, ["password"]);
    let s = classify_with("SELECT upper(\"password\") FROM users", &MARIADB).unwrap();
    assert!(s[0].columns.is_empty());
}

#[test]
fn a_backslash_before_a_multibyte_character_is_refused_where_trails_are_ascii() {
    // The server escapes the lead byte only; the 0x5c trail then escapes
    // the quote after it.
    let gbk = Lexing {
        encoding: Encoding::Gbk,
        ..MARIADB
    };
    let e = classify_bytes(b"SELECT '\\\x95\x5c' , ' ; DELETE FROM t; -- '", &gbk).unwrap_err();
    assert!(
        e.to_string().contains("backslash before a multi-byte"),
        "{e}"
    );
    // In UTF-8 no trail byte is ASCII: the same shape is fine.
    let s = classify_with("SELECT '\\é', 1", &MARIADB).unwrap();
    assert_eq!(s.len(), 1);
}
