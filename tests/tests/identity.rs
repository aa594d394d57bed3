//! Workload identity end to end: a process inside an attached cgroup enrolls
//! a GitHub-shaped OIDC token signed by a test key (JWKS file), its sessions
//! carry the verified identity, identity-scoped rules apply to it and not to
//! another cgroup, and bad tokens are rejected with their reasons.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use interceptor_e2e::servers::{HttpServer, Postgres, curl};
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

/// A JWKS document for the fixture RSA key, built with the openssl CLI.
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

/// A GitHub Actions-shaped token (claims as GitHub sends them).
fn github_claims(repo: &str, sha: &str, aud: &str, exp: u64) -> serde_json::Value {
    let owner = repo.split('/').next().unwrap();
    serde_json::json!({
        "iss": ISSUER,
        "aud": aud,
        // The immutable form GitHub uses for newer repositories: never parsed.
        "sub": format!("repo:{owner}@1234/{}@5678:ref:refs/heads/main", repo.split('/').nth(1).unwrap()),
        "jti": format!("jti-{sha}"),
        "iat": now() - 10,
        "nbf": now() - 10,
        "exp": exp,
        "repository": repo,
        "repository_owner": owner,
        "ref": "refs/heads/main",
        "sha": sha,
        "workflow": "deploy",
        "job_workflow_ref": format!("{repo}/.github/workflows/deploy.yml@refs/heads/main"),
        "run_id": "987654321",
        "run_attempt": "1",
        "actor": "octocat",
        "event_name": "push",
        "environment": "production",
    })
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

/// Runs `interceptor enroll` with a token file, inside `cg` (or outside).
fn enroll(d: &Daemon, cg: Option<&TestCgroup>, token: &str) -> Output {
    let f = d
        .dir
        .path()
        .join(format!("token-{}", interceptor_e2e::unique("t")));
    std::fs::write(&f, token).unwrap();
    let mut cmd = match cg {
        Some(cg) => cg.command(interceptor_bin()),
        None => interceptor_e2e::root_cgroup_command(interceptor_bin()),
    };
    cmd.arg("--config")
        .arg(&d.config)
        .args(["enroll", "--token-file"])
        .arg(&f)
        .output()
        .expect("run interceptor enroll")
}

#[test]
fn enrolled_identity_is_recorded_and_scopes_policy() {
    let pg = Postgres::start();
    let http = HttpServer::start("127.0.0.1", "secret report\n");
    let jwks_dir = tempfile::tempdir().unwrap();
    let jwks = write_jwks(jwks_dir.path());
    let policy = format!(
        r#"
[[intercept]]
port = {pg}
protocol = "postgres"

[[intercept]]
port = {http}
protocol = "tcp"

# Workloads from acme's repositories may not reach the report service.
[[rule]]
name = "acme-no-reports"
decision = "deny"
match = {{ identity.repository = "acme/*", target.port = {http} }}

# The database only for enrolled workloads.
[[rule]]
name = "db-needs-identity"
decision = "allow"
require_identity = true
match = {{ target.port = {pg} }}
"#,
        pg = pg.port,
        http = http.port
    );
    let d = Daemon::start_with(
        &policy,
        &format!(
            "[[identity.issuer]]\nissuer = \"{ISSUER}\"\naudience = [\"interceptor\"]\nalgorithms = [\"RS256\"]\njwks_file = \"{}\"\n",
            jwks.display()
        ),
    );
    let acme = TestCgroup::new();
    let other = TestCgroup::new();
    d.attach(&acme);
    d.attach(&other);

    // Before enrolling, the database refuses the unenrolled workload, with
    // PostgreSQL's own error saying why.
    let out = pg.psql(Some(&acme), "127.0.0.1", "SELECT 1");
    assert!(
        !out.status.success(),
        "unenrolled workload reached the database: {}",
        text(&out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("FATAL") && err.contains("enrollment"), "{err}");

    let sha = "4f2c0ffee0ddba11c0ffee4f2c0ffee0ddba11c0";
    let token = sign(&github_claims("acme/api", sha, "interceptor", now() + 600));
    let out = enroll(&d, Some(&acme), &token);
    assert!(out.status.success(), "enroll: {}\n{}", text(&out), d.log());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&acme.path) && said.contains("acme/api"),
        "{said}"
    );

    // The enrolled workload reaches the database; its session carries the identity.
    let out = pg.psql(Some(&acme), "127.0.0.1", "SELECT 'enrolled'");
    assert!(out.status.success(), "{}\n{}", text(&out), d.log());
    let s = d.wait_session(|s| {
        s["cgroup_path"] == acme.path.as_str()
            && s["dst_port"] == pg.port
            && s["repository"] == "acme/api"
    });
    assert_eq!(s["repository"], "acme/api");
    assert_eq!(s["sha"], sha);
    assert_eq!(s["run_id"], "987654321");
    assert_eq!(s["actor"], "octocat");
    assert_eq!(s["identity_issuer"], ISSUER);
    assert_eq!(s["identity_token_id"], format!("jti-{sha}"));
    let shown = d.cli_ok(&["sessions", "show", &s["id"].to_string()]);
    assert!(shown.contains("acme/api") && shown.contains(sha), "{shown}");
    let filtered = d.cli_ok(&[
        "sessions",
        "list",
        "--json",
        "--repository",
        "acme/api",
        "--sha",
        sha,
    ]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&filtered).unwrap();
    assert!(!rows.is_empty() && rows.iter().all(|r| r["repository"] == "acme/api"));

    // The identity-scoped rule applies to acme's cgroup, not to a cgroup
    // enrolled as another repository...
    let beta = TestCgroup::new();
    d.attach(&beta);
    let beta_token = sign(&github_claims(
        "beta/web",
        "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0",
        "interceptor",
        now() + 600,
    ));
    let out = enroll(&d, Some(&beta), &beta_token);
    assert!(out.status.success(), "enroll beta: {}", text(&out));
    let url = format!("http://127.0.0.1:{}/hello.txt", http.port);
    let out = curl(Some(&acme), &url);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("secret report"),
        "{}",
        text(&out)
    );
    let out = curl(Some(&beta), &url);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "secret report\n",
        "{}",
        text(&out)
    );
    // ...while an unenrolled one gets it too: a deny rule's identity keys
    // match a workload without a verified identity.
    let out = curl(Some(&other), &url);
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("secret report"),
        "{}",
        text(&out)
    );
    // ... whose database access is still refused (not enrolled).
    assert!(
        !pg.psql(Some(&other), "127.0.0.1", "SELECT 1")
            .status
            .success()
    );

    // Bad tokens are rejected with their reasons, from inside `other`.
    let expired = sign(&github_claims("acme/api", sha, "interceptor", now() - 3600));
    let out = enroll(&d, Some(&other), &expired);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("expired"),
        "{}",
        text(&out)
    );

    let wrong_aud = sign(&github_claims("acme/api", sha, "someone-else", now() + 600));
    let out = enroll(&d, Some(&other), &wrong_aud);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("audience"),
        "{}",
        text(&out)
    );

    let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
    let forged = b64url(
        github_claims("evil/repo", sha, "interceptor", now() + 600)
            .to_string()
            .as_bytes(),
    );
    parts[1] = forged;
    let tampered = parts.join(".");
    let out = enroll(&d, Some(&other), &tampered);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("signature"),
        "{}",
        text(&out)
    );

    let listed = d.cli_ok(&["enroll", "--list", "--all", "--json"]);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    let rejected = rows.iter().filter(|r| r["status"] == "rejected").count();
    assert_eq!(rejected, 3, "{listed}");

    // Enrolling from outside (another cgroup) does not touch acme's identity.
    let outsider = TestCgroup::new();
    let evil = sign(&github_claims(
        "evil/repo",
        "0000000000000000000000000000000000000000",
        "interceptor",
        now() + 600,
    ));
    let out = enroll(&d, Some(&outsider), &evil);
    assert!(out.status.success(), "{}", text(&out));
    let out = pg.psql(Some(&acme), "127.0.0.1", "SELECT 'still acme'");
    assert!(out.status.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let latest = d
        .sessions()
        .into_iter()
        .find(|s| s["cgroup_path"] == acme.path.as_str() && s["dst_port"] == pg.port)
        .unwrap();
    assert_eq!(latest["repository"], "acme/api");

    // Status shows the enrollment; revoking from inside ends it.
    let status = d.cli_ok(&["status"]);
    assert!(
        status.contains(&acme.path) && status.contains("acme/api"),
        "{status}"
    );
    let out = acme
        .command(interceptor_bin())
        .arg("--config")
        .arg(&d.config)
        .args(["enroll", "--revoke"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        !pg.psql(Some(&acme), "127.0.0.1", "SELECT 1")
            .status
            .success(),
        "revoked identity still admitted"
    );

    // The root cgroup cannot be enrolled.
    let out = enroll(&d, None, &token);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("root cgroup"),
        "{}",
        text(&out)
    );
}
