use super::*;
use crate::sql::{SqlStatement, classify};
use Dialect::{Mysql as My, Postgres as Pg};

fn stmt(d: Dialect, sql: &str) -> SqlStatement {
    let mut v = classify(sql, d).unwrap_or_else(|e| panic!("{d:?} {sql:?}: {e}"));
    assert_eq!(v.len(), 1, "{sql}");
    v.remove(0)
}

fn names(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

/// (dialect, statement, expected `columns`, expected `all_columns`).
#[rustfmt::skip]
const COLUMNS: &[(Dialect, &str, &str, bool)] = &[
    (Pg, "SELECT 1", "", false),
    (Pg, "SELECT u.id, \"Name\" FROM public.users u WHERE u.password = $1 ORDER BY created", "id,Name,password,created", false),
    (Pg, "SELECT a.x FROM a JOIN b ON a.id = b.a_id GROUP BY a.x HAVING count(b.y) > 1", "x,id,a_id,y", false),
    (Pg, "SELECT * FROM a JOIN b USING (k)", "k", true),
    (Pg, "SELECT count(*) FROM t", "", false),
    (Pg, "SELECT count(t.*) FROM t", "", true),
    (Pg, "SELECT id FROM t WHERE EXISTS (SELECT * FROM u WHERE u.t_id = t.id)", "id,t_id", false),
    (Pg, "SELECT (SELECT * FROM u LIMIT 1)", "", true),
    (Pg, "SELECT row_to_json(t) FROM t", "t", true),
    (Pg, "SELECT x FROM t AS q(x)", "x", true),
    (Pg, "WITH c AS (SELECT secret AS s FROM t) SELECT s FROM c", "secret,s", false),
    (Pg, "INSERT INTO t (a, b) VALUES (1, 2) ON CONFLICT (a) DO UPDATE SET b = excluded.b RETURNING c", "a,b,c", false),
    (Pg, "INSERT INTO t VALUES (1, 2)", "", true),
    (Pg, "INSERT INTO t DEFAULT VALUES", "", false),
    (Pg, "UPDATE t SET a = b, (c, d) = (SELECT e, f FROM u) WHERE g = 1", "a,c,d,b,e,f,g", false),
    (Pg, "DELETE FROM t WHERE a = 1 RETURNING *", "a", true),
    (Pg, "COPY t (a, b) TO STDOUT", "a,b", false),
    (Pg, "COPY t TO STDOUT", "", true),
    (Pg, "COPY t FROM STDIN WITH (FREEZE ON)", "", true),
    (Pg, "ALTER TABLE t RENAME COLUMN password TO p", "password,p", false),
    (Pg, "ALTER TABLE t DROP COLUMN ssn, ALTER COLUMN email SET NOT NULL", "ssn,email", false),
    (Pg, "COMMENT ON COLUMN t.password IS 'x'", "password", false),
    (Pg, "CREATE VIEW v AS SELECT upper(password) AS p FROM t", "password", false),
    (Pg, "EXPLAIN SELECT password FROM t", "password", false),
    (Pg, "SELECT query_to_xml('select 1', true, true, '')", "", true),
    (Pg, "SELECT * FROM dblink('x', 'select 1') AS r(a int)", "", true),
    (Pg, "DO $$ BEGIN RAISE NOTICE 'x'; END $$", "", true),
    (Pg, "FETCH 10 FROM c", "", true),
    (Pg, "VACUUM t", "", false),
    (My, "SELECT `password`, u.email FROM users u", "password,email", false),
    // A string without ANSI_QUOTES (the lexer follows sql_mode).
    (My, "SELECT \"password\" FROM users", "", false),
    (My, "INSERT INTO t SET a = 1, b = c ON DUPLICATE KEY UPDATE d = 2", "c,a,b,d", false),
    (My, "SELECT id FROM t WHERE MATCH (title, body) AGAINST ('x')", "id,title,body", false),
    (My, "ALTER TABLE t CHANGE COLUMN password pw TEXT, MODIFY COLUMN ssn TEXT", "password,pw,ssn", false),
    (My, "SELECT * FROM users", "", true),
];

#[test]
fn columns_table() {
    let mut failures = Vec::new();
    for &(d, sql, want, all) in COLUMNS {
        let s = stmt(d, sql);
        let mut got = s.columns.clone();
        let mut want_v = names(want);
        got.sort();
        want_v.sort();
        if got != want_v || s.all_columns != all {
            failures.push(format!(
                "{d:?} {sql:?}\n    want {want} all={all}\n    got  {:?} all={}",
                s.columns, s.all_columns
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn e(name: Option<&str>, sources: &str) -> OutputItem {
    OutputItem::Expr {
        name: name.map(str::to_owned),
        lineage: Lineage {
            sources: names(sources),
            ..Lineage::default()
        },
    }
}

fn base(q: &str) -> OutputItem {
    OutputItem::Wildcard {
        qualifier: Some(q.to_owned()),
        expands_to: None,
        lineage: Lineage::default(),
    }
}

#[test]
fn outputs_follow_the_data() {
    let cases: Vec<(Dialect, &str, Option<Vec<OutputItem>>)> = vec![
        (
            Pg,
            "SELECT id, upper(password) AS p, 1 FROM users",
            Some(vec![
                e(Some("id"), "id"),
                e(Some("p"), "password"),
                e(None, ""),
            ]),
        ),
        (
            Pg,
            "SELECT p FROM (SELECT password AS p FROM users) s",
            Some(vec![e(Some("p"), "p,password")]),
        ),
        (
            Pg,
            "SELECT s.*, u.* FROM (SELECT ssn AS x FROM people) s, users u",
            Some(vec![
                OutputItem::Wildcard {
                    qualifier: Some("s".into()),
                    expands_to: Some(vec![e(Some("x"), "ssn")]),
                    lineage: Lineage::default(),
                },
                base("u"),
            ]),
        ),
        (Pg, "SELECT * FROM users", Some(vec![base("users")])),
        (
            Pg,
            "SELECT a FROM t UNION ALL SELECT b FROM u",
            Some(vec![e(Some("a"), "a,b")]),
        ),
        (
            My,
            "VALUES ROW(1, x), ROW(y, 2)",
            Some(vec![e(None, "y"), e(None, "x")]),
        ),
        (Pg, "COPY t (a) TO STDOUT", Some(vec![e(None, "a")])),
        (Pg, "COPY t (a) FROM STDIN", None),
        (Pg, "INSERT INTO t (a) VALUES (1)", None),
        (Pg, "UPDATE t SET a = 1", None),
        (Pg, "CREATE TABLE t (a int)", None),
        (Pg, "SET search_path = x", None),
        (Pg, "EXPLAIN ANALYZE SELECT a FROM t", None),
        (Pg, "SHOW search_path", None),
        (My, "SHOW TABLES", None),
        (Pg, "FETCH ALL FROM c", Some(vec![OutputItem::unknown()])),
        (
            Pg,
            "COPY t FROM STDIN WITH (FREEZE ON)",
            Some(vec![OutputItem::unknown()]),
        ),
    ];
    for (d, sql, want) in cases {
        assert_eq!(stmt(d, sql).outputs, want, "{d:?} {sql}");
    }
}

#[test]
fn recursive_ctes_reach_a_fixed_point() {
    // The secret enters through the recursive term only, two steps away.
    let s = stmt(
        Pg,
        "WITH RECURSIVE r(a, b, c) AS (SELECT 1, 2, 3 UNION ALL SELECT b, c, (SELECT ssn FROM people LIMIT 1) FROM r) SELECT a FROM r",
    );
    let Some(outputs) = &s.outputs else {
        panic!("no outputs")
    };
    let OutputItem::Expr { lineage, .. } = &outputs[0] else {
        panic!("{outputs:?}")
    };
    assert!(lineage.sources.iter().any(|x| x == "ssn"), "{lineage:?}");
}

#[test]
fn deep_nesting_stays_bounded() {
    // Nested recursive CTEs multiply the rounds; the budget turns the rest
    // into "unknown" instead of running long.
    let mut sql = "SELECT 1".to_owned();
    for i in 0..6 {
        sql = format!(
            "WITH RECURSIVE r{i}(x) AS ({sql} UNION ALL SELECT x FROM r{i}) SELECT x FROM r{i}"
        );
    }
    let s = stmt(Pg, &sql);
    assert!(s.outputs.is_some());
}

#[test]
fn statements_serialize_with_their_lineage() {
    let s = stmt(
        Pg,
        "SELECT *, row_to_json(u) AS j FROM users u WHERE password = 'x'",
    );
    let json = serde_json::to_string(&s).unwrap();
    let back: SqlStatement = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s);
    assert!(json.contains("\"whole_row\":true"), "{json}");
    // Records written before these fields existed still load.
    let old =
        r#"{"text":"SELECT 1","kinds":["select"],"tables":[],"functions":[],"has_where":null}"#;
    let old: SqlStatement = serde_json::from_str(old).unwrap();
    assert!(old.columns.is_empty() && old.outputs.is_none());
}

#[test]
fn wide_statements_stay_bounded_and_fail_closed() {
    // One expression over many columns, referenced many times: the
    // analysis gives up (opaque) rather than copying lineage around.
    let cols: Vec<String> = (0..600).map(|i| format!("c{i}")).collect();
    let refs = vec!["x"; 3000].join(", ");
    let sql = format!(
        "SELECT {refs} FROM (SELECT concat({}) AS x FROM t) s",
        cols.join(", ")
    );
    let s = stmt(Pg, &sql);
    let outputs = s.outputs.expect("rows");
    let m = flatten(&outputs);
    assert!(m.iter().all(|i| match i {
        OutputItem::Expr { lineage, .. } | OutputItem::Wildcard { lineage, .. } =>
            lineage.opaque || lineage.whole_row,
    }));
}
