//! PostgreSQL masking that follows the data, not the column label: real
//! PostgreSQL, real psql and a raw wire client (binary result format),
//! through the real eBPF redirect. Each path a masked value could leave
//! by — an alias, an expression, a subquery, a CTE, a whole-row value,
//! binary format, COPY, an error message — returns no clear value; a
//! `[[limit]]` stops a bulk read with a native error.

use std::process::{Output, Stdio};

use interceptor_e2e::servers::Postgres;
use interceptor_e2e::{Daemon, TestCgroup, text};

const SECRET: &str = "hunter2-s3cret";

fn policy(port: u16) -> String {
    format!(
        r#"
[defaults]
unparsed = "deny"

[[intercept]]
port = {port}
protocol = "postgres"

[[mask]]
detectors = ["email"]
columns = ["password*"]

[[limit]]
name = "bulk-export"
rows = 1000
"#
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// psql in the cgroup running `script` (errors do not stop it).
fn psql(pg: &Postgres, cg: &TestCgroup, script: &str) -> Output {
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

fn setup() -> (Postgres, Daemon, TestCgroup) {
    let pg = Postgres::start();
    let out = pg.psql(
        None,
        "127.0.0.1",
        &format!(
            "CREATE TABLE users (id int, name text, email text, password text); \
             INSERT INTO users VALUES (1, 'bob', 'bob@example.com', '{SECRET}')"
        ),
    );
    assert!(out.status.success(), "{}", text(&out));
    let d = Daemon::start(&policy(pg.port));
    let cg = TestCgroup::new();
    d.attach(&cg);
    (pg, d, cg)
}

#[test]
fn masked_columns_stay_masked_through_aliases_expressions_and_errors() {
    let (pg, d, cg) = setup();
    let script = "\
SELECT 'a', password AS p FROM users;
SELECT 'b', upper(password) FROM users;
SELECT 'c', password || '' FROM users;
SELECT 'd', encode(password::bytea, 'base64') FROM users;
SELECT 'e', (SELECT password FROM users LIMIT 1);
WITH x AS (SELECT password AS q FROM users) SELECT 'f', q FROM x;
SELECT 'g', p FROM (SELECT password AS p FROM users) s;
SELECT 'h', row_to_json(u) FROM users u;
SELECT 'i', u FROM users u;
SELECT 'j', id, name FROM users;
SELECT 'k', email FROM users;
SELECT password::int FROM users;
\\copy (SELECT password FROM users) to stdout
SELECT 'l', 1;
";
    let out = psql(&pg, &cg, script);
    let all = text(&out);
    assert!(
        !all.contains(SECRET),
        "a masked value leaked:\n{all}\n{}",
        d.log()
    );
    let o = stdout(&out);
    for tag in ["a", "b", "c", "d", "e", "f", "g", "h", "i"] {
        let line = o
            .lines()
            .find(|l| l.starts_with(&format!("{tag}|")))
            .unwrap_or_else(|| panic!("no row {tag}:\n{all}"));
        assert!(!line.contains("bob@"), "{line}");
    }
    // Unmasked columns come back as they are; e-mail through the detector.
    assert!(o.contains("j|1|bob"), "{all}");
    assert!(o.contains("k|<masked:email>"), "{all}");
    // The failed cast's message would print the value: withheld, with the
    // SQLSTATE kept.
    assert!(all.contains("withheld"), "{all}");
    // The session went on.
    assert!(o.contains("l|1"), "{all}");
}

#[test]
fn binary_results_and_copy_are_masked() {
    let (pg, d, cg) = setup();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pg_wire.py");
    let out = cg
        .command("python3")
        .args([script, "127.0.0.1", &pg.port.to_string(), "binary_mask"])
        .output()
        .expect("python3");
    let all = text(&out);
    assert!(out.status.success(), "{all}\n{}", d.log());
    assert!(!all.contains(SECRET), "a masked value leaked:\n{all}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("JSON");
    for case in ["plain", "alias", "expr", "array", "record", "jsonb"] {
        let replies = v[case].as_array().unwrap();
        assert!(
            replies
                .iter()
                .any(|r| r.as_str().is_some_and(|r| r.starts_with("D:"))),
            "{case}: a row comes back: {v:#}"
        );
    }
    // Masked whole in its type's own binary form.
    assert!(v["plain"].to_string().contains("D:****"), "{v:#}");
    assert!(v["alias"].to_string().contains("D:****"), "{v:#}");
    // Binary COPY cannot be masked: refused before it runs.
    let out = psql(
        &pg,
        &cg,
        "COPY users TO STDOUT (FORMAT binary);\nSELECT 'after';\n",
    );
    let all = text(&out);
    assert!(all.contains("binary COPY cannot be masked"), "{all}");
    assert!(stdout(&out).contains("after"), "{all}");
}

#[test]
fn a_result_past_its_limit_is_stopped_with_a_native_error() {
    let (pg, d, cg) = setup();
    let out = psql(
        &pg,
        &cg,
        "SELECT g FROM generate_series(1, 100000) g;\nSELECT 'still usable';\n",
    );
    let all = text(&out);
    assert!(all.contains("bulk-export"), "{all}\n{}", d.log());
    assert!(all.contains("54000") || all.contains("limit"), "{all}");
    // Not the whole result.
    assert!(stdout(&out).lines().count() < 2000, "{all}");
    assert!(stdout(&out).contains("still usable"), "{all}");
    // Recorded with the reason.
    let s = d.wait_session(|s| s["protocol"] == "postgres");
    let evs = d.session(s["id"].as_i64().unwrap())["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        evs.iter().any(|e| e["error"]
            .as_str()
            .is_some_and(|x| x.contains("bulk-export"))),
        "{evs:#?}"
    );
}
