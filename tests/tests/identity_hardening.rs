//! Workload identity against the workload (issue 11): nothing a workload
//! does to its own identity — revoke it, let it expire, re-enroll as
//! another repository or run, replay a token another job enrolled, enroll a
//! stale one, flood the enroll socket — loosens the policy or wedges the
//! daemon. Tokens are GitHub-shaped, signed by the test key (JWKS file).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use interceptor_e2e::servers::Postgres;
use interceptor_e2e::{Daemon, TestCgroup, interceptor_bin, text};

const ISSUER: &str = "https://token.actions.githubusercontent.com";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../interceptor/tests/fixtures/identity")
        .join(name)
}

fn b64url(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..=chunk.len() {
            out.push(A[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

fn write_jwks(dir: &Path) -> PathBuf {
    let out = Command::new("openssl")
        .args(["rsa", "-noout", "-modulus", "-in"])
        .arg(fixture("rsa_private.pem"))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", text(&out));
    let hex = String::from_utf8_lossy(&out.stdout)
        .trim()
        .trim_start_matches("Modulus=")
        .to_string();
    let n: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    let jwks = serde_json::json!({
        "keys": [{ "kty": "RSA", "kid": "test-key-1", "alg": "RS256", "use": "sig", "n": b64url(&n), "e": "AQAB" }]
    });
    let p = dir.join("jwks.json");
    std::fs::write(&p, jwks.to_string()).unwrap();
    p
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A GitHub Actions-shaped token's claims.
fn claims(repo: &str, run_id: &str, jti: &str) -> serde_json::Value {
    let owner = repo.split('/').next().unwrap();
    serde_json::json!({
        "iss": ISSUER,
        "aud": "interceptor",
        "sub": format!("repo:{repo}:ref:refs/heads/main"),
        "jti": jti,
        "iat": now() - 5,
        "nbf": now() - 5,
        "exp": now() + 600,
        "repository": repo,
        "repository_owner": owner,
        "ref": "refs/heads/main",
        "sha": "4f2c0ffee0ddba11c0ffee4f2c0ffee0ddba11c0",
        "workflow": "ci",
        "run_id": run_id,
        "run_attempt": "1",
        "actor": "octocat",
    })
}

fn with(mut v: serde_json::Value, k: &str, x: serde_json::Value) -> serde_json::Value {
    if x.is_null() {
        v.as_object_mut().unwrap().remove(k);
    } else {
        v[k] = x;
    }
    v
}

fn sign(claims: &serde_json::Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(fixture("rsa_private.pem")).unwrap(),
    )
    .expect("fixture RSA key");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("test-key-1".into());
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

fn issuer_config(jwks: &Path) -> String {
    format!(
        "[[identity.issuer]]\nissuer = \"{ISSUER}\"\naudience = [\"interceptor\"]\nalgorithms = [\"RS256\"]\njwks_file = \"{}\"\n",
        jwks.display()
    )
}

/// `interceptor enroll` with a token, inside `cg`.
fn enroll(d: &Daemon, cg: &TestCgroup, token: &str) -> Output {
    let f = d
        .dir
        .path()
        .join(format!("token-{}", interceptor_e2e::unique("t")));
    std::fs::write(&f, token).unwrap();
    cg.command(interceptor_bin())
        .arg("--config")
        .arg(&d.config)
        .args(["enroll", "--token-file"])
        .arg(&f)
        .output()
        .expect("run interceptor enroll")
}

fn enroll_ok(d: &Daemon, cg: &TestCgroup, token: &str) {
    let out = enroll(d, cg, token);
    assert!(out.status.success(), "enroll: {}\n{}", text(&out), d.log());
}

fn enroll_refused(d: &Daemon, cg: &TestCgroup, token: &str, why: &str) {
    let out = enroll(d, cg, token);
    assert!(!out.status.success(), "enrolled: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(why), "wanted {why:?}: {}", text(&out));
}

fn revoke_inside(d: &Daemon, cg: &TestCgroup) -> Output {
    cg.command(interceptor_bin())
        .arg("--config")
        .arg(&d.config)
        .args(["enroll", "--revoke"])
        .output()
        .unwrap()
}

#[test]
fn revoking_or_expiring_never_loosens_policy() {
    let pg = Postgres::start();
    let out = pg.psql(
        None,
        "127.0.0.1",
        "CREATE TABLE people (id int, email text); INSERT INTO people VALUES (1, 'ann@example.com')",
    );
    assert!(out.status.success(), "{}", text(&out));
    let jwks_dir = tempfile::tempdir().unwrap();
    let jwks = write_jwks(jwks_dir.path());
    let policy = format!(
        r#"
[[intercept]]
port = {}
protocol = "postgres"

[[rule]]
name = "contractors-no-drop"
decision = "deny"
match = {{ identity.repository = "contractors/*", sql.statement = "drop" }}

[[mask]]
columns = ["email"]
match = {{ identity.repository = "contractors/*" }}
"#,
        pg.port
    );
    let d = Daemon::start_with(&policy, &issuer_config(&jwks));
    let cg = TestCgroup::new();
    d.attach(&cg);
    let drop_denied = |cg: &TestCgroup| {
        let out = pg.psql(Some(cg), "127.0.0.1", "DROP TABLE IF EXISTS nothing_here");
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("contractors-no-drop")
    };
    let email = |cg: &TestCgroup| {
        let out = pg.psql(Some(cg), "127.0.0.1", "SELECT email FROM people");
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };

    enroll_ok(&d, &cg, &sign(&claims("contractors/site", "1", "c-1")));
    assert!(drop_denied(&cg));
    assert_eq!(email(&cg), "****");

    // Revoked from inside: still denied, still masked.
    let out = revoke_inside(&d, &cg);
    assert!(out.status.success(), "{}", text(&out));
    assert!(drop_denied(&cg), "revoking lifted a deny rule");
    assert_eq!(email(&cg), "****", "revoking lifted a mask");

    // Let expire: the same. (exp is checked with a clock-skew allowance at
    // enrollment, not when the binding ends.)
    let short = TestCgroup::new();
    d.attach(&short);
    let t = with(
        claims("contractors/site", "2", "c-2"),
        "exp",
        serde_json::json!(now() + 3),
    );
    enroll_ok(&d, &short, &sign(&t));
    std::thread::sleep(Duration::from_secs(4));
    assert!(drop_denied(&short), "expiry lifted a deny rule");
    assert_eq!(email(&short), "****", "expiry lifted a mask");

    // Never enrolled: the same.
    let never = TestCgroup::new();
    d.attach(&never);
    assert!(drop_denied(&never));
    assert_eq!(email(&never), "****");
}

#[test]
fn a_cgroup_stays_bound_to_its_first_identity() {
    let jwks_dir = tempfile::tempdir().unwrap();
    let jwks = write_jwks(jwks_dir.path());
    let mut d = Daemon::start_with("", &issuer_config(&jwks));
    let cg = TestCgroup::new();
    d.attach(&cg);
    enroll_ok(&d, &cg, &sign(&claims("acme/api", "100", "b-1")));
    // Another repository, another run: refused, naming what differs.
    enroll_refused(
        &d,
        &cg,
        &sign(&claims("evil/repo", "100", "b-2")),
        "bound to",
    );
    enroll_refused(&d, &cg, &sign(&claims("acme/api", "101", "b-3")), "run_id");
    // A fresh token of the same job refreshes the enrollment.
    enroll_ok(&d, &cg, &sign(&claims("acme/api", "100", "b-4")));
    // Revoking one's own enrollment does not free the cgroup...
    let out = revoke_inside(&d, &cg);
    assert!(out.status.success(), "{}", text(&out));
    enroll_refused(
        &d,
        &cg,
        &sign(&claims("evil/repo", "100", "b-5")),
        "bound to",
    );
    // ... not even across a restart.
    d.stop();
    d.spawn().unwrap();
    enroll_refused(
        &d,
        &cg,
        &sign(&claims("evil/repo", "100", "b-6")),
        "bound to",
    );
    let status = d.cli_ok(&["status", "--json"]);
    assert!(
        !status.contains("acme/api"),
        "revoked identity came back: {status}"
    );
    // The administrator's revoke, from outside, releases it.
    d.cli_ok(&["enroll", "--revoke", "--cgroup", &cg.path]);
    enroll_ok(&d, &cg, &sign(&claims("other/repo", "7", "b-7")));
    let listed = d.cli_ok(&["enroll", "--list", "--all", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert!(rows.iter().any(|r| r["status"] == "released"), "{listed}");
}

#[test]
fn tokens_are_single_use_and_fresh() {
    let jwks_dir = tempfile::tempdir().unwrap();
    let jwks = write_jwks(jwks_dir.path());
    let mut d = Daemon::start_with("", &issuer_config(&jwks));
    let (a, b, c) = (TestCgroup::new(), TestCgroup::new(), TestCgroup::new());
    let token = sign(&claims("acme/api", "200", "r-1"));
    enroll_ok(&d, &a, &token);
    // The same token for another cgroup is a replay...
    enroll_refused(&d, &b, &token, "already enrolled");
    // ... and stays one after a restart.
    d.stop();
    d.spawn().unwrap();
    enroll_refused(&d, &c, &token, "already enrolled");
    // Tokens issued long ago are refused (default max_token_age 15m), and
    // so are tokens whose age is unknown.
    let old = with(
        claims("acme/api", "201", "r-2"),
        "iat",
        serde_json::json!(now() - 3600),
    );
    enroll_refused(&d, &b, &sign(&old), "too old");
    let ageless = with(
        claims("acme/api", "202", "r-3"),
        "iat",
        serde_json::Value::Null,
    );
    enroll_refused(&d, &b, &sign(&ageless), "\"iat\"");
    enroll_ok(&d, &b, &sign(&claims("acme/api", "203", "r-4")));
}

/// Opens `n` connections to `socket` as `uid` from inside `cg` and holds
/// them, silent, for `secs` seconds.
fn hold_connections(
    cg: &TestCgroup,
    uid: u32,
    socket: &Path,
    n: usize,
    secs: u64,
) -> std::process::Child {
    use std::os::unix::process::CommandExt;
    let script = r#"
import socket, sys, time
path, n, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
held = []
for _ in range(n):
    try:
        s = socket.socket(socket.AF_UNIX)
        s.connect(path)
        held.append(s)
    except OSError:
        pass
print(len(held), flush=True)
time.sleep(secs)
"#;
    let mut cmd = Command::new("python3");
    let procs = cg.dir.join("cgroup.procs");
    // SAFETY: as in TestCgroup::command, then dropping to `uid`.
    unsafe {
        cmd.pre_exec(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&procs)?
                .write_all(b"0")?;
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(uid) != 0
                || libc::setuid(uid) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd
        .args(["-c", script])
        .arg(socket)
        .arg(n.to_string())
        .arg(secs.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.trim().parse::<usize>().unwrap() > 0, "{line}");
    child
}

/// One raw request line to the enroll socket; the answer line.
fn raw_enroll(socket: &Path, line: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let _ = s.write_all(line);
    let mut answer = String::new();
    let _ = BufReader::new(s).read_line(&mut answer);
    answer
}

#[test]
fn the_enroll_socket_is_bounded() {
    let jwks_dir = tempfile::tempdir().unwrap();
    let jwks = write_jwks(jwks_dir.path());
    let d = Daemon::start_with("", &issuer_config(&jwks));
    // The socket lives in the daemon's temp dir: let nobody reach it.
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let enroll_socket = d.dir.path().join("enroll.sock");
    let attacker = TestCgroup::new();
    let job = TestCgroup::new();
    d.attach(&attacker);

    // A flood of silent connections from the workload's user...
    let mut flood = hold_connections(&attacker, 65534, &enroll_socket, 300, 8);
    // ... does not keep another job from enrolling, nor the daemon from answering.
    let started = Instant::now();
    enroll_ok(&d, &job, &sign(&claims("acme/api", "300", "f-1")));
    d.cli_ok(&["status"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let _ = flood.kill();
    let _ = flood.wait();

    // A silent connection is answered and closed after the read timeout.
    let started = Instant::now();
    let mut s = UnixStream::connect(&enroll_socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut answer = String::new();
    BufReader::new(&mut s).read_line(&mut answer).unwrap();
    assert!(answer.contains("not received in time"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10));

    // An oversized request is refused unread.
    let mut big = br#"{"op":"enroll","token":""#.to_vec();
    big.extend(std::iter::repeat_n(b'a', 100 * 1024));
    big.extend_from_slice(b"\"}\n");
    let answer = raw_enroll(&enroll_socket, &big);
    assert!(answer.contains("request too large"), "{answer}");

    // Rejected attempts in a loop are recorded within a bound.
    let script = r#"
import json, socket, sys
for i in range(60):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.sendall(json.dumps({"op": "enroll", "token": "not.a.token%d" % i}).encode() + b"\n")
    s.makefile().readline()
    s.close()
"#;
    let out = attacker
        .command("python3")
        .args(["-c", script])
        .arg(&enroll_socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let listed = d.cli_ok(&["enroll", "--list", "--all", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let recorded = rows
        .iter()
        .filter(|r| r["status"] == "rejected" && r["cgroup_path"] == attacker.path.as_str())
        .count();
    assert!(
        (1..=5).contains(&recorded),
        "{recorded} rejections recorded"
    );

    // The connect-fork-exit trick does not enroll a cgroup by a stale pid.
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("answer");
    let script = r#"
import json, os, socket, sys, time
path, token, out = sys.argv[1], sys.argv[2], sys.argv[3]
s = socket.socket(socket.AF_UNIX)
s.connect(path)
if os.fork() > 0:
    os._exit(0)
os.setsid()
time.sleep(1.5)
s.sendall(json.dumps({"op": "enroll", "token": token}).encode() + b"\n")
line = s.makefile().readline()
with open(out + ".tmp", "w") as f:
    f.write(line)
os.rename(out + ".tmp", out)
"#;
    let fresh = TestCgroup::new();
    let mut parent = fresh
        .command("python3")
        .args(["-c", script])
        .arg(&enroll_socket)
        .arg(sign(&claims("acme/api", "301", "f-2")))
        .arg(&out_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(parent.wait().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let answer = loop {
        if let Ok(s) = std::fs::read_to_string(&out_file) {
            break s;
        }
        assert!(Instant::now() < deadline, "no answer");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        answer.contains("\"ok\":false") && answer.contains("exited"),
        "{answer}"
    );
}
