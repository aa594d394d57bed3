use super::*;
use crate::proxy::mysql::codec::{ValueKind, types};

fn masks(policy: &str) -> ActiveMasks {
    let p = policy::Policy::parse(policy, "test.toml").unwrap();
    let w = policy::Workload {
        cgroup: "/t".into(),
        unit: None,
        exe: None,
        comm: None,
        uid: None,
        pid: None,
        identity: None,
    };
    let t = policy::Target {
        protocol: policy::Protocol::Mysql,
        addr: "127.0.0.1".parse().unwrap(),
        port: 3306,
        host: None,
        database: None,
        user: None,
    };
    p.masker().for_context(&w, &t)
}

fn column_masks() -> ActiveMasks {
    masks("[[mask]]\ndetectors = [\"credit_card\"]\ncolumns = [\"password*\", \"email\"]\n")
}

fn detectors_only() -> ActiveMasks {
    masks("[[mask]]\ndetectors = [\"credit_card\"]\n")
}

fn sql(q: &str) -> Result<Vec<SqlStatement>, SqlError> {
    policy::sql::classify(q, policy::Dialect::Mysql)
}

fn text_plan() -> ColumnPlan {
    ColumnPlan {
        column_type: types::VAR_STRING,
        kind: ValueKind::Text,
        masked: false,
        withheld: false,
    }
}

/// What `plan_result` decides for a result of `q`'s statement `belongs`
/// labelled `labels`: (masked, withheld) per column.
fn planned(
    m: &ActiveMasks,
    q: &str,
    belongs: Belongs,
    labels: &[&str],
    tainted: bool,
) -> Vec<(bool, bool)> {
    let c = sql(q);
    let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
    let mut plans: Vec<ColumnPlan> = labels
        .iter()
        .map(|l| ColumnPlan {
            masked: m.column_masked(l),
            ..text_plan()
        })
        .collect();
    plan_result(&mut plans, &labels, m, (&c, belongs), tainted);
    plans.iter().map(|p| (p.masked, p.withheld)).collect()
}

fn masked(m: &ActiveMasks, q: &str, labels: &[&str]) -> Vec<bool> {
    planned(m, q, Belongs::Statement(0), labels, false)
        .into_iter()
        .map(|(m, _)| m)
        .collect()
}

#[test]
fn results_follow_their_statements() {
    // One result per plain statement.
    let c = sql("SELECT 1; SELECT 2; SELECT 3");
    let mut m = ResultMap::new(&c);
    assert_eq!(m.belongs(), Belongs::Statement(0));
    assert!(m.ended(End::Set, true));
    assert_eq!(m.belongs(), Belongs::Statement(1));
    assert!(m.ended(End::Ok, true));
    assert_eq!(m.belongs(), Belongs::Statement(2));
    assert!(!m.ended(End::Set, false));
    assert_eq!(m.belongs(), Belongs::Statement(2));

    // A CALL's result sets are its own up to its OK: the SELECT after it
    // is judged as itself, not as the CALL's second result.
    let c = sql("CALL p(); SELECT password AS x FROM users; SELECT 1 AS x");
    let mut m = ResultMap::new(&c);
    for _ in 0..3 {
        assert!(!m.ended(End::Set, true));
        assert_eq!(m.belongs(), Belongs::Statement(0));
    }
    assert!(m.ended(End::Ok, true));
    assert_eq!(m.belongs(), Belongs::Statement(1));
    assert!(m.ended(End::Set, true));
    assert_eq!(m.belongs(), Belongs::Statement(2));

    // More results than statements: unknown, recorded on the last one.
    assert!(!m.ended(End::Set, true));
    assert_eq!(m.belongs(), Belongs::Unknown);
    assert_eq!(m.index(), 2);
    assert!(!m.ended(End::Set, true));
    assert_eq!(m.belongs(), Belongs::Unknown);

    // An EXECUTE followed by a result set: whose the next result is cannot
    // be told, so the rest is unknown; an OK ends it normally.
    let c = sql("EXECUTE s; SELECT 1");
    let mut m = ResultMap::new(&c);
    assert!(!m.ended(End::Set, true));
    assert_eq!(m.belongs(), Belongs::Unknown);
    let mut m = ResultMap::new(&c);
    assert!(m.ended(End::Ok, true));
    assert_eq!(m.belongs(), Belongs::Statement(1));

    // Unparsed text: every result is the text's.
    let c = sql("HANDLER users READ FIRST; SELECT 1");
    assert!(c.is_err());
    let mut m = ResultMap::new(&c);
    assert_eq!(m.belongs(), Belongs::Unparsed);
    assert!(!m.ended(End::Set, true));
    assert_eq!((m.belongs(), m.index()), (Belongs::Unparsed, 0));
}

#[test]
fn masking_follows_the_data() {
    let m = column_masks();
    // Aliases, expressions, functions, subqueries, derived tables.
    assert_eq!(
        masked(&m, "SELECT password AS p FROM users", &["p"]),
        [true]
    );
    assert_eq!(
        masked(
            &m,
            "SELECT id, upper(password) FROM users",
            &["id", "upper(password)"]
        ),
        [false, true]
    );
    assert_eq!(
        masked(
            &m,
            "SELECT concat(email, '') FROM users",
            &["concat(email, '')"]
        ),
        [true]
    );
    assert_eq!(
        masked(
            &m,
            "SELECT CAST(password AS SIGNED) AS n FROM users",
            &["n"]
        ),
        [true]
    );
    assert_eq!(
        masked(
            &m,
            "SELECT (SELECT password FROM users LIMIT 1) AS x, 1 AS y",
            &["x", "y"]
        ),
        [true, false]
    );
    assert_eq!(
        masked(
            &m,
            "SELECT d.a, d.b FROM (SELECT id AS a, password AS b FROM users) d",
            &["a", "b"]
        ),
        [false, true]
    );
    // The label rule still holds where lineage says nothing (SHOW).
    assert_eq!(
        masked(&m, "SHOW COLUMNS FROM users", &["Field", "password"]),
        [false, true]
    );
    // A label that contradicts the statement: every position that could
    // hold the masked value is masked.
    assert_eq!(
        masked(&m, "SELECT id, password AS p FROM users", &["id", "q"]),
        [true, true]
    );
    // A procedure can return anything: masked whole.
    assert_eq!(masked(&m, "CALL p()", &["id", "name"]), [true, true]);
    // Unknown results are masked whole; unparsed text by labels only.
    assert_eq!(
        planned(&m, "SELECT 1", Belongs::Unknown, &["a", "b"], false),
        [(true, false), (true, false)]
    );
    assert_eq!(
        planned(
            &m,
            "HANDLER users READ FIRST",
            Belongs::Unparsed,
            &["id", "password"],
            false
        ),
        [(false, false), (true, false)]
    );
    // Without column rules nothing is forced.
    let d = detectors_only();
    assert_eq!(masked(&d, "CALL p()", &["id"]), [false]);
    assert_eq!(
        planned(&d, "SELECT 1", Belongs::Unknown, &["a"], false),
        [(false, false)]
    );
}

#[test]
fn warnings_are_withheld_while_tainted() {
    let m = column_masks();
    let labels = ["Level", "Code", "Message"];
    assert_eq!(
        planned(&m, "SHOW WARNINGS", Belongs::Statement(0), &labels, true),
        [(false, false), (false, false), (false, true)]
    );
    assert_eq!(
        planned(&m, "SHOW ERRORS", Belongs::Statement(0), &labels, false),
        [(false, false); 3],
        "not tainted: shown"
    );
    assert_eq!(
        planned(&m, "SHOW WARNINGS", Belongs::Unknown, &labels, true)[2],
        (true, true)
    );
    // A table's own `message` column is data, not a server message.
    assert_eq!(
        planned(
            &m,
            "SELECT message FROM logs",
            Belongs::Statement(0),
            &["message"],
            true
        ),
        [(false, false)]
    );

    // What taints and what clears.
    let after = |tainted: bool, q: &str, ok: bool| {
        taint_after(tainted, &m, &sql(q), Belongs::Statement(0), ok)
    };
    assert!(after(
        false,
        "SELECT CAST(password AS SIGNED) FROM users",
        true
    ));
    assert!(after(false, "SELECT * FROM users", true), "all columns");
    assert!(after(false, "CALL p()", true));
    assert!(!after(false, "SELECT id FROM users", true));
    assert!(!after(true, "SELECT id FROM users", true), "cleared");
    assert!(after(true, "SELECT id FROM users", false), "failed: kept");
    assert!(after(true, "SELECT 1", true), "no table: kept");
    assert!(after(true, "SELECT 1 FROM dual", true), "DUAL: kept");
    assert!(after(true, "SHOW WARNINGS", true));
    assert!(after(true, "SET @a = 1", true));
    assert!(taint_after(false, &m, &sql("x"), Belongs::Unparsed, true));
    assert!(taint_after(
        false,
        &m,
        &sql("SELECT 1"),
        Belongs::Unknown,
        true
    ));
    // Without column rules nothing taints.
    let d = detectors_only();
    let c = sql("SELECT * FROM users");
    assert!(!taint_after(false, &d, &c, Belongs::Statement(0), true));
    assert!(!taint_after(false, &d, &c, Belongs::Unknown, true));
}

#[test]
fn diagnostics_readers_are_found() {
    let m = column_masks();
    let reads = |q: &str, tainted: bool| reads_diagnostics(&m, &sql(q), q, tainted);
    assert!(reads(
        "GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT",
        false
    ));
    assert!(reads("get /**/ current diagnostics @n = NUMBER", false));
    assert!(reads(
        "PREPARE s FROM 'GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT'",
        false
    ));
    assert!(reads("EXECUTE s", true));
    assert!(!reads("EXECUTE s", false));
    assert!(reads("SELECT password FROM users; EXECUTE s", false));
    assert!(!reads("SELECT id FROM users; EXECUTE s", false));
    assert!(!reads("SELECT @@warning_count", true));
    assert!(
        !reads("SHOW WARNINGS", true),
        "masked in its result instead"
    );
    let d = detectors_only();
    let q = "GET DIAGNOSTICS CONDITION 1 @m = MESSAGE_TEXT";
    assert!(!reads_diagnostics(&d, &sql(q), q, true));
}

#[test]
fn server_errors_are_withheld_or_detected() {
    let m = column_masks();
    let p = codec::err_packet(
        1292,
        Some("22007"),
        "Truncated incorrect INTEGER value: 'hunter2'",
    );
    let w = withheld_error(7);
    let out = rewrite_err(&p, Some(&w), &m).unwrap();
    let e = codec::parse_err(&out).unwrap();
    assert_eq!((e.code, e.sqlstate.as_deref()), (1292, Some("22007")));
    assert!(e.message.contains("withheld") && e.message.contains("session 7"));
    assert!(!e.message.contains("hunter2"));

    // Detectors only: the value is masked, the rest kept.
    let p = codec::err_packet(
        1062,
        Some("23000"),
        "Duplicate entry '4111111111111111' for key 'card'",
    );
    let e = codec::parse_err(&rewrite_err(&p, None, &m).unwrap()).unwrap();
    assert_eq!(e.code, 1062);
    assert_eq!(
        e.message,
        "Duplicate entry '<masked:credit_card>' for key 'card'"
    );
    // Nothing found: sent as it is.
    let p = codec::err_packet(1146, Some("42S02"), "Table 'shop.x' doesn't exist");
    assert_eq!(rewrite_err(&p, None, &m), None);
    // A malformed ERR is replaced whole when withheld.
    let e = codec::parse_err(&rewrite_err(&[0xff, 1], Some(&w), &m).unwrap()).unwrap();
    assert_eq!(e.code, errcode::UNKNOWN_ERROR);
    assert_eq!(rewrite_err(&[0xff, 1], None, &m), None);
}

#[test]
fn the_row_counter_stops_past_a_bound() {
    let limit = ResultLimit {
        rows: Some(5),
        rows_name: Some("bulk".into()),
        bytes: Some(100),
        bytes_name: Some("bytes-cap".into()),
    };
    let mut c = RowCounter::new(Some(limit.clone()));
    for _ in 0..5 {
        assert_eq!(c.row(10), None, "reaching a bound is fine");
    }
    let e = c.row(10).unwrap();
    assert_eq!(e.limit, "bulk");
    assert_eq!(c.exceeded(), Some(e.clone()));
    assert_eq!(
        e.to_string(),
        "result exceeds limit \"bulk\" (more than 5 rows)"
    );
    let p = limit_err(&e, 9);
    let err = codec::parse_err(&p).unwrap();
    assert_eq!((err.code, err.sqlstate.as_deref()), (1104, Some("42000")));
    assert!(err.message.contains("\"bulk\"") && err.message.contains("session 9"));

    // Each result starts again; bytes count too.
    c.reset();
    assert_eq!(c.exceeded(), None);
    assert_eq!(c.row(100), None);
    assert_eq!(c.row(1).unwrap().limit, "bytes-cap");

    // A cursor's fetches carry on counting.
    let mut c = RowCounter::resume(Some(limit), 5, 10);
    assert_eq!(c.row(1).unwrap().limit, "bulk");

    // No limit: never stops.
    let mut c = RowCounter::new(None);
    for _ in 0..1000 {
        assert_eq!(c.row(1 << 20), None);
    }
}
