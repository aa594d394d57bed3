//! The PostgreSQL module end to end: real PostgreSQL, real psql, pgbench
//! and a raw wire-protocol client, through the real eBPF redirect from a
//! fresh child cgroup.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use interceptor_e2e::servers::Postgres;
use interceptor_e2e::{Daemon, TestCgroup, text};

/// The policy most tests use: DROP/TRUNCATE refused, unbounded DELETE held
/// for review (2 s, no approver), unparsed SQL refused, cards and e-mail
/// addresses masked, `password*` columns masked whole.
fn policy(port: u16, unparsed: &str) -> String {
    format!(
        r#"
[defaults]
decision = "allow"
unparsed = "{unparsed}"
approval_timeout = "2s"

[[intercept]]
port = {port}
protocol = "postgres"

[[rule]]
name = "no-drop"
decision = "deny"
match = {{ sql.statement = ["drop", "truncate"] }}

[[rule]]
name = "unbounded-deletes-need-review"
decision = "review"
match = {{ sql.statement = ["delete"], sql.has_where = false }}

[[mask]]
detectors = ["credit_card", "email"]
columns = ["password*"]
"#
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// psql in the cgroup running a script from stdin (errors do not stop it).
fn psql_script(pg: &Postgres, cg: &TestCgroup, args: &[&str], script: &str) -> Output {
    let mut child = cg
        .command("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
        ])
        .args(["-U", "postgres", "-d", "postgres"])
        .args(args)
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn psql");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    child.wait_with_output().expect("psql output")
}

/// Direct (not intercepted) superuser SQL.
fn direct(pg: &Postgres, sql: &str) -> String {
    let out = pg.psql(None, "127.0.0.1", sql);
    assert!(out.status.success(), "direct psql: {}", text(&out));
    stdout(&out)
}

/// The newest ended postgres session of this daemon.
fn last_pg_session(d: &Daemon) -> serde_json::Value {
    d.wait_session(|s| s["protocol"] == "postgres")
}

fn events(d: &Daemon, id: i64) -> Vec<serde_json::Value> {
    d.session(id)["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn event_with<'a>(evs: &'a [serde_json::Value], needle: &str) -> &'a serde_json::Value {
    evs.iter()
        .find(|e| e["text"].as_str().is_some_and(|t| t.contains(needle)))
        .unwrap_or_else(|| panic!("no event with {needle:?}: {evs:#?}"))
}

#[test]
fn psql_statements_are_judged_masked_and_recorded() {
    let pg = Postgres::start_with(&["log_statement=all"]);
    direct(
        &pg,
        "CREATE TABLE cards (id int, cc text, password text, owner text); \
         INSERT INTO cards VALUES (1, '4111111111111111', 'hunter2', 'bob@example.com'), \
                                  (2, 'no card here', 'swordfish', 'nobody');",
    );
    let d = Daemon::start(&policy(pg.port, "deny"));
    let cg = TestCgroup::new();
    d.attach(&cg);

    let script = "\\set ON_ERROR_STOP 0\n\\set VERBOSITY verbose\n\
        SELECT id, cc, password, owner FROM cards ORDER BY id;\n\
        DROP TABLE cards;\n\
        SELECT 'still' || ' usable';\n\
        SELECT 1; DROP TABLE cards;\n\
        SELECT count(*) AS n FROM cards;\n";
    let out = psql_script(&pg, &cg, &[], script);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(o.contains("<masked:credit_card>"), "{}", text(&out));
    assert!(!o.contains("4111111111111111"), "{}", text(&out));
    assert!(
        o.contains("1|<masked:credit_card>|****|<masked:email>"),
        "{}",
        text(&out)
    );
    assert!(o.contains("2|no card here|****|nobody"), "{}", text(&out));
    assert!(
        o.contains("still usable"),
        "the session goes on: {}",
        text(&out)
    );
    assert!(
        o.lines().any(|l| l.trim() == "2"),
        "count after refusals: {}",
        text(&out)
    );
    assert!(
        e.contains("ERROR:  42501: interceptor denied this command"),
        "{}",
        text(&out)
    );
    assert!(e.contains("rule \"no-drop\""), "{}", text(&out));
    // psql -c sends its string as one Query: all of it or none of it.
    let batch = pg.psql(
        Some(&cg),
        "127.0.0.1",
        "SELECT 1; DROP TABLE cards; SELECT 2",
    );
    assert!(!batch.status.success());
    assert!(
        stderr(&batch).contains("interceptor denied this batch"),
        "{}",
        text(&batch)
    );
    assert!(!stdout(&batch).contains('1'), "{}", text(&batch));
    assert_eq!(direct(&pg, "SELECT count(*) FROM cards").trim(), "2");

    let s = d
        .sessions()
        .into_iter()
        .filter(|s| s["protocol"] == "postgres")
        .min_by_key(|s| s["id"].as_i64())
        .unwrap();
    let id = s["id"].as_i64().unwrap();
    assert!(e.contains(&format!("session {id})")), "{}", text(&out));
    assert_eq!(s["target_user"], "postgres");
    assert_eq!(s["target_database"], "postgres");
    let evs = events(&d, id);
    let sel = event_with(&evs, "SELECT id, cc, password, owner");
    assert_eq!(sel["decision"], "allow");
    assert_eq!(sel["statement_kind"], "select");
    assert_eq!(sel["rows"], 2);
    assert!(sel["duration_us"].as_i64().is_some());
    let drop = event_with(&evs, "DROP TABLE cards");
    assert_eq!(drop["decision"], "deny");
    assert_eq!(drop["rule"], "no-drop");
    // The refused statements never reached the server.
    let log = pg.log();
    assert!(
        log.contains("SELECT id, cc, password, owner FROM cards"),
        "{log}"
    );
    assert!(!log.contains("DROP TABLE cards"), "{log}");
    // The human timeline lists them with their decisions.
    let human = d.cli_ok(&["sessions", "show", &id.to_string()]);
    assert!(human.contains("DROP TABLE cards"), "{human}");
    assert!(human.contains("deny"), "{human}");
}

#[test]
fn copy_in_and_out_through_psql() {
    let pg = Postgres::start();
    direct(&pg, "CREATE TABLE items (id int, note text)");
    let d = Daemon::start(&policy(pg.port, "deny"));
    let cg = TestCgroup::new();
    d.attach(&cg);
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.tsv");
    let rows: String = (1..=500)
        .map(|i| format!("{i}\tnote {i}\n"))
        .chain(std::iter::once("501\tcard 4111111111111111\n".to_string()))
        .collect();
    std::fs::write(&input, rows).unwrap();
    let output = dir.path().join("out.csv");
    let whole = dir.path().join("whole.csv");
    let script = format!(
        "\\copy items from '{}'\n\\copy (SELECT id, note FROM items ORDER BY id) to '{}' csv\n\\copy items to '{}' csv\nSELECT count(*) FROM items;\n",
        input.display(),
        output.display(),
        whole.display()
    );
    let out = psql_script(&pg, &cg, &["-v", "ON_ERROR_STOP=1"], &script);
    assert!(out.status.success(), "{}", text(&out));
    assert!(stdout(&out).contains("COPY 501"), "{}", text(&out));
    assert!(stdout(&out).contains("501\n"), "{}", text(&out));
    assert_eq!(direct(&pg, "SELECT count(*) FROM items").trim(), "501");
    let csv = std::fs::read_to_string(&output).unwrap();
    assert_eq!(csv.lines().count(), 501);
    assert!(csv.contains("1,note 1\n"), "{csv}");
    assert!(
        csv.contains("501,\"card <masked:credit_card>\""),
        "COPY OUT rows are masked: {csv}"
    );
    // COPY data carries no column names: with column rules in force, a
    // whole table (or `*`) is masked whole, columns unknown.
    let whole = std::fs::read_to_string(&whole).unwrap();
    assert_eq!(whole.lines().count(), 501);
    assert!(whole.lines().all(|l| l == "\"****\",\"****\""), "{whole}");
    let s = last_pg_session(&d);
    let evs = events(&d, s["id"].as_i64().unwrap());
    let copy_in = event_with(&evs, "FROM STDIN");
    assert_eq!(copy_in["statement_kind"], "copy");
    assert_eq!(copy_in["rows"], 501);
}

#[test]
fn tls_and_password_authentication() {
    let pg = Postgres::start_tls(&[]);
    pg.add_password_user("scram_user", "s3cret-scram", "scram-sha-256");
    pg.add_password_user("md5_user", "s3cret-md5", "md5");
    // The server's certificate is verified (the default) against the test CA.
    let d = Daemon::start_with(
        &policy(pg.port, "deny"),
        &format!(
            "\n[tls]\nupstream_ca_file = \"{}\"\n",
            pg.ca_file().display()
        ),
    );
    let cg = TestCgroup::new();
    d.attach(&cg);
    let ssl_query = "SELECT 'ssl=' || ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    let run = |user: &str, password: &str, sslmode: &str, sql: &str| -> Output {
        cg.command("psql")
            .args(["-X", "-A", "-t", "-w", "-v", "ON_ERROR_STOP=1"])
            .arg(format!(
                "host=127.0.0.1 port={} user={user} dbname=postgres sslmode={sslmode}",
                pg.port
            ))
            .args(["-c", sql])
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .output()
            .expect("psql")
    };
    // TLS both ways with a trust user: the server sees TLS too.
    let out = run("postgres", "", "require", ssl_query);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "ssl=true");
    let out = run("postgres", "", "require", "\\conninfo");
    assert!(stdout(&out).contains("SSL connection"), "{}", text(&out));
    // sslmode=disable stays plain both ways.
    let out = run("postgres", "", "disable", ssl_query);
    assert_eq!(stdout(&out).trim(), "ssl=false", "{}", text(&out));

    // SCRAM with the default channel_binding=prefer over TLS: the client
    // supports binding but cannot get it through the terminated TLS, and a
    // server on TLS refuses that; the server leg is never dropped to plain
    // text for it: the client is told how to connect.
    let out = run(
        "scram_user",
        "s3cret-scram",
        "require",
        "SELECT current_user",
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("channel_binding=disable"),
        "{}\n{}",
        text(&out),
        d.log()
    );
    // The server leg's certificate was verified, and the record says so.
    let verified = d.sessions().iter().any(|s| {
        events(&d, s["id"].as_i64().unwrap()).iter().any(|e| {
            e["kind"] == "tls"
                && e["text"]
                    .as_str()
                    .is_some_and(|t| t.contains("verified for 127.0.0.1"))
        })
    });
    assert!(verified, "{:#?}", d.sessions());
    // A client that does not offer channel binding keeps TLS on both legs.
    let out = cg
        .command("psql")
        .args(["-X", "-A", "-t", "-w"])
        .arg(format!(
            "host=127.0.0.1 port={} user=scram_user dbname=postgres sslmode=require channel_binding=disable",
            pg.port
        ))
        .args(["-c", ssl_query])
        .env("PGPASSWORD", "s3cret-scram")
        .output()
        .expect("psql");
    assert_eq!(stdout(&out).trim(), "ssl=true", "{}", text(&out));

    let out = run("postgres", "", "prefer", ssl_query);
    assert_eq!(stdout(&out).trim(), "ssl=true", "{}", text(&out));
    let out = run("scram_user", "s3cret-scram", "disable", "SELECT 'plain ok'");
    assert!(out.status.success(), "{}", text(&out));
    let out = run("scram_user", "wrong", "disable", "SELECT 1");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        text(&out)
    );

    // md5 over TLS keeps TLS to the server.
    let out = run("md5_user", "s3cret-md5", "require", ssl_query);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "ssl=true");
    let out = run("md5_user", "nope", "disable", "SELECT 1");
    assert!(
        stderr(&out).contains("password authentication failed"),
        "{}",
        text(&out)
    );

    // Refusals work inside TLS too.
    let out = run(
        "md5_user",
        "s3cret-md5",
        "require",
        "DROP TABLE nothing_here",
    );
    assert!(stderr(&out).contains("no-drop"), "{}", text(&out));

    let sessions = d.sessions();
    assert!(sessions.iter().any(|s| s["target_user"] == "scram_user"));
    assert!(sessions.iter().any(|s| s["target_user"] == "md5_user"));
}

fn pgbench(cg: Option<&TestCgroup>, pg: &Postgres, args: &[&str]) -> Output {
    let mut cmd = match cg {
        Some(cg) => cg.command("pgbench"),
        None => Command::new("pgbench"),
    };
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &pg.port.to_string(),
        "-U",
        "postgres",
    ])
    .args(args)
    .arg("postgres")
    .output()
    .expect("pgbench")
}

#[test]
fn pgbench_extended_and_prepared() {
    let pg = Postgres::start();
    let out = pgbench(None, &pg, &["-i", "-s", "1", "-q"]);
    assert!(out.status.success(), "pgbench -i: {}", text(&out));
    let d = Daemon::start(&policy(pg.port, "deny"));
    let cg = TestCgroup::new();
    d.attach(&cg);
    for mode in ["extended", "prepared", "simple"] {
        let out = pgbench(Some(&cg), &pg, &["-n", "-M", mode, "-T", "3", "-c", "2"]);
        assert!(out.status.success(), "pgbench -M {mode}: {}", text(&out));
        let o = stdout(&out);
        assert!(
            o.contains("number of failed transactions: 0"),
            "{mode}: {o}"
        );
        let tx: i64 = o
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{o}"));
        assert!(tx > 10, "{mode}: {o}");
    }
    // Every execution of the prepared UPDATE is recorded.
    let prepared = d
        .sessions()
        .into_iter()
        .filter(|s| s["protocol"] == "postgres")
        .map(|s| events(&d, s["id"].as_i64().unwrap()))
        .find(|evs| evs.iter().any(|e| e["kind"] == "execute"))
        .expect("a session with execute events");
    let updates = prepared
        .iter()
        .filter(|e| {
            e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("UPDATE pgbench_accounts"))
        })
        .count();
    assert!(updates > 5, "{prepared:#?}");
    assert!(prepared.iter().all(|e| e["decision"] == "allow"));
}

#[test]
fn wire_level_pipelines_refusals_and_masking() {
    let pg = Postgres::start_with(&["log_statement=all"]);
    direct(
        &pg,
        "CREATE TABLE pipeline_t (id int); INSERT INTO pipeline_t VALUES (1)",
    );
    let d = Daemon::start(&policy(pg.port, "deny"));
    let cg = TestCgroup::new();
    d.attach(&cg);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg_wire.py");
    let out = cg
        .command("python3")
        .args([script, "127.0.0.1", &pg.port.to_string(), "pipeline"])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let strs = |k: &str| -> Vec<String> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap().to_string())
            .collect()
    };
    let refused = strs("refused");
    assert_eq!(&refused[..4], ["1", "2", "D:1", "C:SELECT 1"], "{v:#}");
    assert!(
        refused[4].starts_with("E:42501:interceptor denied"),
        "{v:#}"
    );
    assert!(refused[4].contains("no-drop"), "{v:#}");
    assert_eq!(
        refused[5..],
        ["Z:I"],
        "the rest of the batch is skipped: {v:#}"
    );
    assert_eq!(strs("after"), ["1", "2", "D:2", "C:SELECT 1", "Z:I"]);
    assert_eq!(strs("prepare"), ["1", "Z:I"]);
    assert_eq!(
        strs("masked_text"),
        ["2", "D:<masked:credit_card>|****|7", "C:SELECT 1", "Z:I"],
        "no RowDescription was asked for, none is sent"
    );
    let binary = strs("masked_binary");
    assert!(
        binary[1].starts_with("D:<masked:credit_card>|****|"),
        "{v:#}"
    );
    assert_eq!(strs("described"), ["1", "t", "T", "Z:I"]);
    assert_eq!(
        strs("described_run"),
        ["2", "T", "D:<masked:email>", "C:SELECT 1", "Z:I"]
    );
    let tx = v["tx"].as_array().unwrap();
    assert_eq!(tx[0].as_array().unwrap().last().unwrap(), "Z:T");
    let drop = tx[1].as_array().unwrap();
    assert!(drop[0].as_str().unwrap().starts_with("E:42501:"), "{v:#}");
    assert_eq!(
        drop[1], "Z:E",
        "a refusal aborts the transaction like a server error"
    );
    assert!(tx[2][0].as_str().unwrap().starts_with("E:25P02"), "{v:#}");
    assert_eq!(tx[3].as_array().unwrap().last().unwrap(), "Z:I");
    let multi = strs("multi");
    assert!(
        multi[0].starts_with("E:42501:interceptor denied this batch"),
        "{v:#}"
    );
    assert_eq!(multi[1..], ["Z:I"]);
    assert_eq!(strs("final"), ["T", "D:1", "C:SELECT 1", "Z:I"]);
    assert_eq!(strs("copy"), ["1", "2", "G", "C:COPY 2", "Z:I"]);
    assert!(
        strs("copy_after")[0].starts_with("E:42501:"),
        "still in step after COPY: {v:#}"
    );
    assert_eq!(strs("copy_count"), ["T", "D:3", "C:SELECT 1", "Z:I"]);
    assert!(!pg.log().contains("DROP TABLE pipeline_t"), "{}", pg.log());

    // Recording: the named statement's two runs are two events.
    let s = last_pg_session(&d);
    let evs = events(&d, s["id"].as_i64().unwrap());
    let runs: Vec<_> = evs
        .iter()
        .filter(|e| {
            e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("SELECT $1::text"))
        })
        .collect();
    // The Parse (sent alone) and each execution with its own bound
    // parameters, masked.
    assert_eq!(runs.len(), 3, "{evs:#?}");
    assert_eq!(runs[0]["kind"], "statement");
    for run in &runs[1..] {
        assert_eq!(run["kind"], "execute");
        assert_eq!(run["decision"], "allow");
        assert_eq!(run["rows"], 1);
        let detail = match &run["detail"] {
            serde_json::Value::String(s) => serde_json::from_str(s).unwrap(),
            v => v.clone(),
        };
        assert_eq!(
            detail["params"],
            serde_json::json!(["<masked:credit_card>"]),
            "{detail}"
        );
    }
}

#[test]
fn cancel_request_reaches_the_right_backend() {
    let pg = Postgres::start();
    let d = Daemon::start(&policy(pg.port, "deny"));
    let cg = TestCgroup::new();
    d.attach(&cg);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg_wire.py");
    let out = cg
        .command("python3")
        .args([script, "127.0.0.1", &pg.port.to_string(), "cancel"])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let replies = v["replies"].as_array().unwrap();
    assert!(
        replies
            .iter()
            .any(|r| r.as_str().unwrap().starts_with("E:57014")),
        "{v:#}"
    );
    // The cancel connection is a session of its own, recorded as such.
    let cancel = d.wait_session(|s| s["end_reason"] == "cancel request relayed");
    let evs = events(&d, cancel["id"].as_i64().unwrap());
    assert_eq!(evs[0]["kind"], "cancel", "{evs:#?}");
    assert!(v["seconds"].as_f64().unwrap() < 10.0, "{v:#}");
}

#[test]
fn direct_tls_negotiation() {
    let pg = Postgres::start();
    let d = Daemon::start(&policy(pg.port, "deny"));
    let cg = TestCgroup::new();
    d.attach(&cg);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg_wire.py");
    let out = cg
        .command("python3")
        .args([script, "127.0.0.1", &pg.port.to_string(), "direct_tls"])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    assert_eq!(v["alpn"], "postgresql");
    // An SSLRequest is answered as the server answers it: this server has
    // no TLS, so sslmode=require fails as it would without the interceptor,
    // and sslmode=prefer goes on in plain text.
    let conn = |sslmode: &str| {
        cg.command("psql")
            .args(["-X", "-A", "-t", "-w"])
            .arg(format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres sslmode={sslmode}",
                pg.port
            ))
            .args(["-c", "\\conninfo"])
            .output()
            .expect("psql")
    };
    let out = conn("require");
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        stderr(&out).contains("server does not support SSL"),
        "{}",
        text(&out)
    );
    let out = conn("prefer");
    assert!(out.status.success(), "{}", text(&out));
    assert!(!stdout(&out).contains("SSL connection"), "{}", text(&out));
    assert!(
        v["replies"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "D:over direct TLS"),
        "{v:#}"
    );
}

#[test]
fn bad_input_ends_only_its_own_session() {
    let pg = Postgres::start();
    let d = Daemon::start_with(
        &policy(pg.port, "deny"),
        "\n[limits]\nmax_message_bytes = 65536\n",
    );
    let cg = TestCgroup::new();
    d.attach(&cg);
    // A session that stays open the whole time, in the same cgroup.
    let bystander = cg
        .command("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
        ])
        .args(["-U", "postgres", "-c", "SELECT pg_sleep(3), 'bystander ok'"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg_wire.py");
    let out = cg
        .command("python3")
        .args([script, "127.0.0.1", &pg.port.to_string(), "bad"])
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    let fatal = |k: &str, needle: &str| {
        let replies = v[k].as_array().unwrap();
        assert!(
            replies.iter().any(|r| {
                let r = r.as_str().unwrap();
                r.starts_with("E:08P01:interceptor:") && r.contains(needle)
            }),
            "{k}: {v:#}"
        );
    };
    // Bytes that are not valid in the session's encoding are refused as
    // unparsed SQL; the session goes on.
    let utf8 = v["utf8"].as_array().unwrap();
    assert!(
        utf8.iter().any(|r| {
            let r = r.as_str().unwrap();
            r.starts_with("E:42501:") && r.contains("not valid UTF-8")
        }) && utf8.iter().any(|r| r.as_str() == Some("Z:I")),
        "utf8: {v:#}"
    );
    fatal("oversized", "over the limit");
    fatal("bad_length", "invalid length");
    fatal("short_parse", "Parse");
    fatal("big_row", "over the limit");
    fatal("truncated", "middle of a message");

    let by = bystander.wait_with_output().unwrap();
    assert!(stdout(&by).contains("bystander ok"), "{}", text(&by));
    assert!(d.cli(&["status"]).status.success(), "the daemon lives on");
    // Each bad session is recorded with its reason.
    let reasons: Vec<String> = d
        .sessions()
        .iter()
        .filter(|s| s["protocol"] == "postgres")
        .filter_map(|s| s["end_reason"].as_str().map(str::to_string))
        .collect();
    for needle in ["over the limit", "middle of a message"] {
        assert!(
            reasons.iter().any(|r| r.contains(needle)),
            "{needle}: {reasons:#?}"
        );
    }
    let bad = d
        .sessions()
        .into_iter()
        .find(|s| {
            s["end_reason"]
                .as_str()
                .is_some_and(|r| r.contains("over the limit"))
        })
        .unwrap();
    let evs = events(&d, bad["id"].as_i64().unwrap());
    assert!(
        evs.iter().any(|e| e["kind"] == "protocol_error"),
        "{evs:#?}"
    );
}

#[test]
fn unparsed_sql_follows_the_policy_default() {
    let pg = Postgres::start();
    let cg = TestCgroup::new();
    {
        let d = Daemon::start(&policy(pg.port, "deny"));
        d.attach(&cg);
        let out = psql_script(&pg, &cg, &["-v", "VERBOSITY=verbose"], "CHECKPOINT;\n");
        assert!(stderr(&out).contains("42501"), "{}", text(&out));
        assert!(stderr(&out).contains("unparsed"), "{}", text(&out));
        let s = last_pg_session(&d);
        let evs = events(&d, s["id"].as_i64().unwrap());
        assert_eq!(event_with(&evs, "CHECKPOINT")["decision"], "deny");
    }
    let d = Daemon::start(&policy(pg.port, "allow"));
    d.attach(&cg);
    let out = psql_script(&pg, &cg, &["-v", "ON_ERROR_STOP=1"], "CHECKPOINT;\n");
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn review_without_an_approver_times_out() {
    let pg = Postgres::start();
    direct(
        &pg,
        "CREATE TABLE keep (id int); INSERT INTO keep VALUES (1), (2)",
    );
    let d = Daemon::start(&policy(pg.port, "deny"));
    let cg = TestCgroup::new();
    d.attach(&cg);
    let started = Instant::now();
    let out = psql_script(
        &pg,
        &cg,
        &[],
        "\\set ON_ERROR_STOP 0\nDELETE FROM keep;\nSELECT 'after ' || count(*) FROM keep;\n",
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "held for review"
    );
    assert!(stderr(&out).contains("timed out"), "{}", text(&out));
    assert!(stdout(&out).contains("after 2"), "{}", text(&out));
    assert_eq!(direct(&pg, "SELECT count(*) FROM keep").trim(), "2");
}

#[test]
fn statement_is_recorded_before_a_crash() {
    let pg = Postgres::start();
    let mut d = Daemon::start(&policy(pg.port, "deny"));
    let cg = TestCgroup::new();
    d.attach(&cg);
    let child = cg
        .command("psql")
        .args([
            "-X",
            "-A",
            "-t",
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port.to_string(),
        ])
        .args(["-U", "postgres", "-c", "SELECT pg_sleep(5), 'crash-marker'"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("psql");
    let pid = child.id();
    // Wait until the server runs it, then crash the daemon.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = direct(
            &pg,
            "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%crash-marker%' \
             AND state = 'active' AND pid <> pg_backend_pid()",
        );
        if n.trim() == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the statement never reached the server"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    d.kill9();
    let _ = child.wait_with_output();
    // The database is read directly: the daemon is down.
    let sessions = d.sessions();
    let s = sessions
        .iter()
        .find(|s| s["pid"] == pid)
        .unwrap_or_else(|| panic!("{sessions:#?}"));
    let evs = events(&d, s["id"].as_i64().unwrap());
    let e = event_with(&evs, "crash-marker");
    assert_eq!(e["decision"], "allow");
    assert_eq!(e["statement_kind"], "select");
}
