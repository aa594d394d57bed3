use crate::glob::Glob;
use crate::mask::{ActiveMasks, DetectorSet};
use crate::sql::{Dialect, SqlStatement, classify};
use Dialect::{Mysql as My, Postgres as Pg};
use regex::RegexSet;
use std::sync::Arc;

fn masks(globs: &[&str]) -> ActiveMasks {
    let set = RegexSet::new(
        globs
            .iter()
            .map(|g| Glob::new(g, true).unwrap().regex_str().to_owned()),
    )
    .unwrap();
    ActiveMasks {
        detectors: DetectorSet::EMPTY,
        columns: vec![Arc::new(set)],
    }
}

fn stmt(d: Dialect, sql: &str) -> SqlStatement {
    let mut v = classify(sql, d).unwrap_or_else(|e| panic!("{d:?} {sql:?}: {e}"));
    assert_eq!(v.len(), 1, "{sql}");
    v.remove(0)
}

/// `"a,b,c"` → labels; `"-"` → no labels; `"'',''"` → two empty labels.
fn labels(s: &str) -> Vec<&str> {
    match s {
        "-" => Vec::new(),
        _ => s
            .split(',')
            .map(|l| if l == "''" { "" } else { l })
            .collect(),
    }
}

/// `"X.X"` → masked, clear, masked.
fn mask_vec(s: &str) -> Vec<bool> {
    s.chars().map(|c| c == 'X').collect()
}

/// (dialect, statement, labels the server sends, expected mask per
/// position, expected `touches_masked`), with column rules
/// `password*` and `ssn`.
#[rustfmt::skip]
const CASES: &[(Dialect, &str, &str, &str, bool)] = &[
    // The leaks of label-only masking.
    (Pg, "SELECT password AS p FROM users", "p", "X", true),
    (Pg, "SELECT upper(password) FROM users", "upper", "X", true),
    (Pg, "SELECT encode(password::bytea, 'base64') FROM users", "encode", "X", true),
    (Pg, "SELECT password || '' FROM users", "?column?", "X", true),
    (Pg, "SELECT (SELECT password FROM users LIMIT 1)", "password", "X", true),
    (Pg, "SELECT (SELECT password FROM users LIMIT 1) AS x", "x", "X", true),
    (Pg, "SELECT p FROM (SELECT password AS p FROM users) s", "p", "X", true),
    (Pg, "WITH x AS (SELECT password p FROM users) SELECT p FROM x", "p", "X", true),
    (Pg, "SELECT row_to_json(u) FROM users u", "row_to_json", "X", true),
    (Pg, "SELECT u FROM users u", "u", "X", true),
    (Pg, "SELECT to_jsonb(users.*) FROM users", "to_jsonb", "X", true),
    (Pg, "SELECT json_agg(u) FROM users u", "json_agg", "X", true),
    (Pg, "SELECT array_agg(password) FROM users", "array_agg", "X", true),
    (Pg, "SELECT COALESCE(password, '') AS c FROM users", "c", "X", true),
    (Pg, "SELECT CASE WHEN id > 0 THEN password END FROM users", "case", "X", true),
    (Pg, "SELECT password::text AS t FROM users", "t", "X", true),
    (Pg, "SELECT CAST(password AS int) AS n FROM users", "n", "X", true),
    (Pg, "SELECT concat_ws(',', email, password) FROM users", "concat_ws", "X", true),
    (Pg, "SELECT md5(password) h FROM users", "h", "X", true),
    (Pg, "SELECT \"Password\" FROM users", "Password", "X", true),
    (Pg, "SELECT u.\"PASSWORD\" AS x FROM users u", "x", "X", true),
    (Pg, "SELECT id, lag(password) OVER (ORDER BY id) AS prev FROM users", "id,prev", ".X", true),
    (Pg, "SELECT id, row_number() OVER (PARTITION BY ssn) FROM people", "id,row_number", ".X", true),
    (Pg, "SELECT u.id, x.p FROM users u, LATERAL (SELECT u.password AS p) x", "id,p", ".X", true),
    (Pg, "SELECT u.id, x.p FROM users u CROSS JOIN LATERAL (SELECT u.password AS p) AS x", "id,p", ".X", true),
    (Pg, "SELECT name FROM users UNION SELECT password FROM users", "name", "X", true),
    (Pg, "SELECT id, name FROM users UNION ALL SELECT id, ssn FROM people", "id,name", ".X", true),
    (Pg, "SELECT p.a FROM (SELECT id AS a FROM users UNION SELECT ssn FROM people) p", "a", "X", true),
    (Pg, "SELECT x FROM users AS u(a, x)", "x", "X", true),
    (Pg, "SELECT * FROM users AS u(a, b)", "a,b,password", "XXX", true),
    (Pg, "SELECT t.password FROM (SELECT id AS password FROM users) t", "password", "X", true),
    (Pg, "SELECT upper FROM (SELECT upper(password) FROM users) s", "upper", "X", true),
    (Pg, "SELECT * FROM (SELECT id, password AS secret FROM users) s", "id,secret", ".X", true),
    (Pg, "SELECT s.*, 1 FROM (SELECT password AS a, id AS b FROM users) s", "a,b,?column?", "X..", true),
    (Pg, "SELECT * FROM (SELECT * FROM (SELECT ssn AS x, 1 AS y FROM people) a) b", "x,y", "X.", true),
    (Pg, "WITH a AS (SELECT ssn AS s FROM people), b AS (SELECT s AS t FROM a) SELECT t FROM b", "t", "X", true),
    (Pg, "SELECT * FROM users, (SELECT upper(password) AS x FROM users) s", "id,name,password,x", "..XX", true),
    (Pg, "SELECT (SELECT max(x) FROM (SELECT ssn AS x FROM people) q) AS m", "m", "X", true),
    (Pg, "SELECT id = ANY (SELECT ssn FROM people) AS hit FROM users", "hit", "X", true),
    // Recursive CTEs: lineage through the recursion, clean ones stay clean.
    (Pg, "WITH RECURSIVE r(x) AS (SELECT upper(password) FROM users UNION SELECT x FROM r WHERE false) SELECT x FROM r", "x", "X", true),
    (Pg, "WITH RECURSIVE r(n, v) AS (SELECT 1, ''::text UNION ALL SELECT n + 1, v FROM r WHERE n < 3) SELECT n, v FROM r", "n,v", "..", false),
    (Pg, "WITH RECURSIVE r(n, v) AS (SELECT 1, '' UNION ALL SELECT n + 1, (SELECT ssn FROM people LIMIT 1) FROM r WHERE n < 3) SELECT n, v FROM r", "n,v", ".X", true),
    // Whole rows in other spellings.
    (Pg, "SELECT ROW(u.id, u.password) FROM users u", "row", "X", true),
    (Pg, "SELECT (u.*)::text FROM users u", "text", "X", true),
    (Pg, "SELECT ARRAY[u.*] FROM users u", "array", "X", true),
    (Pg, "SELECT (SELECT u) FROM users u", "u", "X", true),
    (Pg, "SELECT u.row_to_json FROM users u", "row_to_json", "X", true),
    (Pg, "SELECT u.to_jsonb FROM users u", "to_jsonb", "X", true),
    (Pg, "SELECT u.name FROM users u", "name", ".", false),
    (Pg, "SELECT s FROM (SELECT password FROM users) s", "s", "X", true),
    (Pg, "WITH c AS (SELECT ssn FROM people) SELECT c FROM c", "c", "X", true),
    (Pg, "SELECT * FROM json_populate_record(null::users, (SELECT row_to_json(u) FROM users u LIMIT 1))", "id,name,password", "XXX", true),
    (Pg, "SELECT string_agg(x, ',') FROM unnest(ARRAY(SELECT password FROM users)) x", "string_agg", "X", true),
    (Pg, "SELECT x FROM users u, unnest(ARRAY[u.password]) x", "x", "X", true),
    (Pg, "SELECT id FROM users WHERE (users.*)::text LIKE '%x%'", "id", ".", true),
    // Dynamic SQL and foreign queries: unknowable.
    (Pg, "SELECT pg_read_binary_file('base/16384/16385')", "pg_read_binary_file", "X", true),
    (Pg, "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET x = s.password RETURNING t.x", "x", "X", true),
    (Pg, "SELECT query_to_xml('select password from users', true, true, '')", "query_to_xml", "X", true),
    (Pg, "SELECT id, table_to_xml('users', true, true, '') FROM t", "id,table_to_xml", ".X", true),
    (Pg, "SELECT * FROM dblink('dbname=x', 'select password from users') AS t(p text)", "p", "X", true),
    (Pg, "FETCH ALL FROM c", "a,b", "XX", true),
    (Pg, "EXECUTE p(1)", "a", "X", true),
    (Pg, "CALL proc()", "a", "X", true),
    // Data-modifying statements with RETURNING.
    (Pg, "INSERT INTO users (name, password) VALUES ('a', 'b') RETURNING id, password AS pw", "id,pw", ".X", true),
    (Pg, "INSERT INTO audit (note) SELECT password FROM users RETURNING note", "note", "X", true),
    (Pg, "INSERT INTO audit SELECT password FROM users RETURNING note", "note", "X", true),
    (Pg, "INSERT INTO audit (id, note) VALUES (1, 'x') RETURNING note", "note", ".", false),
    (Pg, "INSERT INTO users VALUES (1, 'a', 'b') RETURNING name", "name", ".", true),
    (Pg, "INSERT INTO audit (note) VALUES ('x') ON CONFLICT (id) DO UPDATE SET note = excluded.note || (SELECT ssn FROM people LIMIT 1) RETURNING note", "note", "X", true),
    (Pg, "UPDATE users SET name = password RETURNING name", "name", "X", true),
    (Pg, "UPDATE users SET name = 'x' WHERE id = 1 RETURNING id, name", "id,name", "..", false),
    (Pg, "UPDATE users SET name = password RETURNING new.name AS x, old.name AS y", "x,y", "XX", true),
    (Pg, "UPDATE users u SET name = p.ssn FROM people p WHERE p.id = u.id RETURNING u.name", "name", "X", true),
    (Pg, "DELETE FROM users WHERE id = 1 RETURNING *", "id,name,password", "..X", true),
    (Pg, "DELETE FROM users WHERE id = 1 RETURNING upper(password)", "upper", "X", true),
    (Pg, "WITH d AS (DELETE FROM users RETURNING password AS p) SELECT p FROM d", "p", "X", true),
    // COPY carries no labels: positions come from the statement alone.
    (Pg, "COPY (SELECT id, password AS p FROM users) TO STDOUT", "'',''", ".X", true),
    (Pg, "COPY (SELECT * FROM users) TO STDOUT", "'','',''", "XXX", true),
    (Pg, "COPY users TO STDOUT", "'','',''", "XXX", true),
    (Pg, "COPY users (id, name) TO STDOUT", "'',''", "..", false),
    (Pg, "COPY users (id, password) TO STDOUT", "'',''", ".X", true),
    // Label rule and clean statements.
    (Pg, "SELECT id, name FROM users", "id,name", "..", false),
    (Pg, "SELECT * FROM users", "id,name,password", "..X", true),
    (Pg, "SELECT *, upper(password) FROM users", "id,name,password,upper", "..XX", true),
    (Pg, "SELECT a.*, b.* FROM users a, users b", "id,password,id,password", ".X.X", true),
    (Pg, "SELECT *, upper(password), * FROM users", "id,password,upper,id,password", "XXXXX", true),
    (Pg, "SELECT id FROM users WHERE password = 'x'", "id", ".", true),
    (Pg, "SELECT id FROM users u WHERE u.password LIKE 'a%' ORDER BY password", "id", ".", true),
    (Pg, "SELECT name AS x FROM users ORDER BY x", "x", ".", false),
    (Pg, "SELECT id AS password_hint FROM users", "password_hint", "X", false),
    (Pg, "SELECT count(*) FROM users", "count", ".", false),
    (Pg, "SELECT id FROM users WHERE EXISTS (SELECT * FROM people p WHERE p.id = users.id)", "id", ".", false),
    (Pg, "SELECT id, (SELECT count(*) FROM logins l WHERE l.user_id = u.id) FROM users u", "id,count", "..", false),
    (Pg, "SELECT row_to_json(s) FROM (SELECT id, name FROM users) s", "row_to_json", ".", true),
    (Pg, "VALUES (1, 'a'), (2, 'b')", "column1,column2", "..", false),
    (Pg, "SELECT * FROM generate_series(1, 3) AS g", "g", ".", true),
    (Pg, "SELECT * FROM users JOIN orders USING (id)", "id,name,password,total", "..X.", true),
    (Pg, "SELECT * FROM users JOIN (SELECT id, password AS p FROM users) s USING (id)", "id,name,password,p", "XXXX", true),
    (Pg, "SELECT * FROM users UNION ALL SELECT 1, upper(password), 'x' FROM users", "id,name,password", "XXX", true),
    (Pg, "SELECT * FROM users UNION ALL SELECT * FROM archive", "id,name,password", "XXX", true),
    (Pg, "EXPLAIN ANALYZE SELECT password FROM users", "QUERY PLAN", ".", true),
    (Pg, "SHOW search_path", "search_path", ".", false),
    (Pg, "SELECT id, name FROM users", "name,id", "..", false),
    // MySQL.
    (My, "SELECT `password` FROM users", "password", "X", true),
    (My, "SELECT password p FROM users", "p", "X", true),
    (My, "SELECT upper(password) FROM users", "upper(password)", "X", true),
    (My, "SELECT CONCAT(name, password) AS c FROM users", "c", "X", true),
    // With ANSI_QUOTES in sql_mode "password" is the column.
    // Without ANSI_QUOTES "password" is a string literal (the lexer reads
    // the session's sql_mode; see sql::lex).
    (My, "SELECT upper(\"password\") FROM users", "upper(\"password\")", ".", false),
    (My, "SELECT `Password` AS `x` FROM users", "x", "X", true),
    (My, "SELECT id, name FROM users", "id,name", "..", false),
    (My, "SELECT * FROM users", "id,name,password", "..X", true),
    (My, "SELECT p FROM (SELECT password AS p FROM users) AS s", "p", "X", true),
    (My, "WITH x AS (SELECT password p FROM users) SELECT p FROM x", "p", "X", true),
    (My, "SELECT name FROM users UNION SELECT password FROM users", "name", "X", true),
    (My, "SELECT JSON_ARRAY(password) FROM users", "JSON_ARRAY(password)", "X", true),
    (My, "SELECT GROUP_CONCAT(password) FROM users", "GROUP_CONCAT(password)", "X", true),
    (My, "SELECT id FROM users WHERE password = 'x'", "id", ".", true),
    (My, "SELECT u.*, o.total FROM users u JOIN orders o ON o.user_id = u.id", "id,name,password,total", "..X.", true),
    (My, "SELECT j.p FROM docs, JSON_TABLE(docs.password_json, '$' COLUMNS (p VARCHAR(10) PATH '$.p')) AS j", "p", "X", true),
    (My, "SELECT CAST(password AS CHAR) AS c FROM users", "c", "X", true),
    (My, "SELECT IF(id > 0, password, NULL) AS v FROM users", "v", "X", true),
    (My, "SELECT id, MATCH (password) AGAINST ('x') AS score FROM users", "id,score", ".X", true),
    (My, "EXECUTE stmt", "a", "X", true),
    (My, "CALL p()", "a", "X", true),
    (My, "SHOW COLUMNS FROM users", "Field,Type", "..", false),
];

#[test]
fn masked_columns_table() {
    let m = masks(&["password*", "ssn"]);
    let mut failures = Vec::new();
    for &(d, sql, l, want, touch) in CASES {
        let s = stmt(d, sql);
        let labels = labels(l);
        let got = m.masked_columns(Some(&s), &labels);
        let got_touch = m.touches_masked(&s);
        if got != mask_vec(want) || got_touch != touch {
            let g: String = got.iter().map(|b| if *b { 'X' } else { '.' }).collect();
            failures.push(format!(
                "{d:?} {sql:?} labels {l}\n    want {want} touches={touch}\n    got  {g} touches={got_touch}\n    columns={:?} all={} outputs={:?}",
                s.columns, s.all_columns, s.outputs
            ));
        }
    }
    assert!(
        CASES.len() >= 40,
        "the table should cover at least 40 statements"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn without_column_rules_nothing_is_masked() {
    let m = ActiveMasks::with_detectors(DetectorSet::all());
    let s = stmt(Pg, "SELECT password, row_to_json(u) FROM users u");
    assert!(!m.has_column_rules());
    assert_eq!(
        m.masked_columns(Some(&s), &["password", "row_to_json"]),
        [false, false]
    );
    assert!(!m.touches_masked(&s));
}

#[test]
fn unknown_statement_masks_by_label() {
    let m = masks(&["password*"]);
    assert_eq!(
        m.masked_columns(None, &["id", "PASSWORD", "p"]),
        [false, true, false]
    );
}

#[test]
fn unalignable_results_mask_everything_not_provably_clean() {
    let m = masks(&["password*"]);
    // Fewer labels than the statement has columns.
    let s = stmt(Pg, "SELECT id, password AS p FROM users");
    assert_eq!(m.masked_columns(Some(&s), &["id"]), [true]);
    // A label contradicts the alias: the statement is not what the server
    // answered.
    assert_eq!(m.masked_columns(Some(&s), &["p", "id"]), [true, true]);
    // Nothing in the statement is masked: labels decide.
    let clean = stmt(Pg, "SELECT id, name FROM users");
    assert_eq!(
        m.masked_columns(Some(&clean), &["id", "name", "extra"]),
        [false, false, false]
    );
    // Wildcards and known columns that cannot fit.
    let w = stmt(Pg, "SELECT upper(password), *, id AS x FROM users");
    assert_eq!(m.masked_columns(Some(&w), &["upper"]), [true]);
    assert_eq!(
        m.masked_columns(Some(&w), &["upper", "x"]),
        [true, false],
        "an empty wildcard fits"
    );
}

#[test]
fn postgres_truncated_labels_still_line_up() {
    let m = masks(&["password*"]);
    let alias = "a".repeat(70);
    let s = stmt(
        Pg,
        &format!("SELECT id AS {alias}, password AS p FROM users"),
    );
    let label = &alias[..63];
    assert_eq!(m.masked_columns(Some(&s), &[label, "p"]), [false, true]);
}
