//! Workload-identity token verification: a JWT from a CI system (GitHub
//! Actions OIDC, GitLab CI `id_tokens`), a SPIFFE JWT-SVID or any OIDC
//! issuer, checked against the configured issuers and turned into a
//! [`VerifiedToken`] whose claims can be bound to a cgroup.
//!
//! Order of checks, nothing from the payload trusted before the signature:
//! 1. shape: three base64url parts, JSON header and payload (JWE, `crit`
//!    and unencoded payloads are refused);
//! 2. header `alg`: `none` and every `HS*` are refused outright (an `HS256`
//!    token MACed with the issuer's public key is the classic key-confusion
//!    attack), then it must be in the issuer's allow-list;
//! 3. the *unverified* `iss` only picks the issuer configuration;
//! 4. the key: by `kid` from that issuer's JWKS (without a `kid`, the one
//!    key usable with the algorithm), and the algorithm must fit its type
//!    (RSA for RS*/PS*, P-256 for ES256, P-384 for ES384, Ed25519 for EdDSA,
//!    and the JWK's own `alg` when it has one). Keys only ever come from
//!    the configured JWKS: `jwk`, `jku`, `x5u` and `x5c` header parameters
//!    are ignored;
//! 5. signature and claims through `jsonwebtoken::decode` with an explicit
//!    `Validation` (that one algorithm, required `exp`/`sub`/`iss`/`aud`,
//!    issuer, audience, leeway);
//! 6. on the verified claims: `iss` exact, `aud` intersects, `exp` (required),
//!    `nbf` and `iat` against the caller's `now` with the issuer's clock
//!    skew, `sub` a non-empty string. Time is checked here rather than by
//!    `jsonwebtoken` (which reads the wall clock) so callers and tests
//!    control `now`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::jwks::{JwkKey, JwksCache, JwksFetcher, KeyLookupError, KeySet, Want, clip};

/// Algorithms accepted when an issuer's `algorithms` is empty.
pub const DEFAULT_ALGORITHMS: [&str; 3] = ["RS256", "ES256", "EdDSA"];
/// Clock skew allowance when the config does not say.
pub const DEFAULT_CLOCK_SKEW_SECS: u64 = 60;
/// Largest accepted `clock_skew_secs`.
pub const MAX_CLOCK_SKEW_SECS: u64 = 600;
/// Longer tokens are refused before any decoding (CI tokens are 1-3 KiB).
pub const MAX_TOKEN_BYTES: usize = 32 * 1024;

/// GitHub Actions' public OIDC issuer.
pub const GITHUB_ISSUER: &str = "https://token.actions.githubusercontent.com";

/// Which known token family the claims come from; decides the named fields
/// added to [`VerifiedToken::claims`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimShape {
    /// GitHub Actions OIDC: `iss` is GitHub's (or a GHES `…/_services/token`),
    /// or the claims have `repository` and `run_id`.
    GitHub,
    /// GitLab CI `id_tokens`: claims `project_path` and `pipeline_id`.
    GitLab,
    /// SPIFFE JWT-SVID: `sub` is a `spiffe://` ID.
    Spiffe,
    /// Anything else: claims as-is.
    Generic,
}

impl ClaimShape {
    pub fn as_str(self) -> &'static str {
        match self {
            ClaimShape::GitHub => "github",
            ClaimShape::GitLab => "gitlab",
            ClaimShape::Spiffe => "spiffe",
            ClaimShape::Generic => "generic",
        }
    }

    /// The named identity fields of this shape (present in
    /// [`VerifiedToken::claims`] when the token carries them).
    pub fn named_fields(self) -> &'static [&'static str] {
        match self {
            ClaimShape::GitHub => &[
                "repository",
                "ref",
                "sha",
                "workflow",
                "job_workflow_ref",
                "run_id",
                "run_attempt",
                "actor",
                "event_name",
                "environment",
            ],
            ClaimShape::GitLab => &[
                "project_path",
                "ref",
                "sha",
                "pipeline_id",
                "job_id",
                "user_login",
                "repository",
                "run_id",
                "actor",
            ],
            ClaimShape::Spiffe => &["spiffe_id", "trust_domain"],
            ClaimShape::Generic => &[],
        }
    }
}

impl std::fmt::Display for ClaimShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `[[identity.issuer]]` entry of the daemon configuration.
///
/// ```toml
/// [[identity.issuer]]
/// issuer = "https://token.actions.githubusercontent.com"   # exact `iss`
/// audience = ["interceptor"]                                # or one string
/// algorithms = ["RS256"]                 # optional; default RS256, ES256, EdDSA
/// jwks_url = "https://token.actions.githubusercontent.com/.well-known/jwks"
/// # jwks_file = "/etc/interceptor/jwks/ci.json"            # offline hosts
/// clock_skew_secs = 60                                      # optional
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The exact `iss` of the tokens (no normalisation: a trailing slash
    /// matters).
    pub issuer: String,
    /// Accepted `aud` values; a token's `aud` (string or array) must
    /// contain at least one. Must not be empty. A single string is accepted
    /// in the config too.
    #[serde(deserialize_with = "one_or_many")]
    pub audience: Vec<String>,
    /// Allowed signature algorithms (`RS256`, `RS384`, `RS512`, `PS256`,
    /// `PS384`, `PS512`, `ES256`, `ES384`, `EdDSA`). Empty means
    /// [`DEFAULT_ALGORITHMS`]. `none` and `HS*` are configuration errors.
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// A JWKS document on disk, read once when the verifier is built.
    /// Exactly one of `jwks_file` and `jwks_url`.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// An `https://` JWKS URL, fetched on first use, refreshed after 10
    /// minutes and on an unknown key id (at most every 30 s).
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// Allowed clock difference for `exp`, `nbf` and `iat`, in seconds
    /// (default 60, at most 600).
    #[serde(default = "default_skew")]
    pub clock_skew_secs: u64,
}

fn default_skew() -> u64 {
    DEFAULT_CLOCK_SKEW_SECS
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl Default for IssuerConfig {
    fn default() -> Self {
        IssuerConfig {
            issuer: String::new(),
            audience: Vec::new(),
            algorithms: Vec::new(),
            jwks_file: None,
            jwks_url: None,
            clock_skew_secs: DEFAULT_CLOCK_SKEW_SECS,
        }
    }
}

/// A token whose signature and claims checked out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifiedToken {
    /// `iss` (equal to the configured issuer).
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `jti`, when the token has a string one.
    pub token_id: Option<String>,
    /// `exp`, unix seconds.
    pub expires_at: u64,
    /// `iat`, unix seconds, when the token has one.
    pub issued_at: Option<u64>,
    pub shape: ClaimShape,
    /// Every claim stringified (strings as-is, numbers and booleans as
    /// written, `null`, arrays and objects as compact JSON), plus the named
    /// fields of the shape (GitLab aliases `repository`, `run_id`, `actor`
    /// when absent; SPIFFE `spiffe_id`, `trust_domain`, which replace claims
    /// of those names).
    pub claims: BTreeMap<String, String>,
}

/// Why a token was refused. The messages are meant for the enrolling user
/// and the enrollment-failure record; [`TokenError::kind`] is a stable
/// short code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("token issuer {0:?} is not a configured issuer")]
    UnknownIssuer(String),
    #[error("token header has alg \"none\": unsigned tokens are refused")]
    AlgNone,
    #[error(
        "token algorithm {alg} is refused: HMAC-signed tokens are never accepted (a token MACed with an issuer's public key is a key-confusion attack)"
    )]
    HmacRefused { alg: String },
    #[error("token algorithm {alg:?} is not allowed for issuer {issuer} (allowed: {})", .allowed.join(", "))]
    AlgorithmNotAllowed {
        alg: String,
        issuer: String,
        allowed: Vec<String>,
    },
    #[error("token algorithm {alg} does not fit key {kid} of issuer {issuer}, which is {key}")]
    KeyMismatch {
        alg: String,
        kid: String,
        issuer: String,
        key: String,
    },
    #[error("key id {kid:?} is not in the key set of issuer {issuer} (key ids: {})", list_or_none(.known))]
    UnknownKeyId {
        kid: String,
        issuer: String,
        known: Vec<String>,
    },
    #[error(
        "token has no key id and issuer {issuer} has {candidates} keys usable with {alg} (exactly one is needed without a kid)"
    )]
    NoKeyId {
        alg: String,
        issuer: String,
        candidates: usize,
    },
    #[error(
        "bad signature: the token is not signed by key {kid} of issuer {issuer}, or was altered"
    )]
    BadSignature { issuer: String, kid: String },
    #[error(
        "token expired at {} (exp {exp}), {}s before now, beyond the {skew}s clock skew allowance",
        utc(*.exp), .now.saturating_sub(*.exp)
    )]
    Expired { exp: u64, now: u64, skew: u64 },
    #[error(
        "token is not valid before {} (nbf {nbf}), {}s from now, beyond the {skew}s clock skew allowance",
        utc(*.nbf), .nbf.saturating_sub(*.now)
    )]
    NotYetValid { nbf: u64, now: u64, skew: u64 },
    #[error(
        "token was issued in the future: iat {} ({iat}), {}s from now, beyond the {skew}s clock skew allowance",
        utc(*.iat), .iat.saturating_sub(*.now)
    )]
    IssuedInFuture { iat: u64, now: u64, skew: u64 },
    #[error(
        "token is too old: issued at {} (iat {iat}), {}s ago, more than the {max}s [identity] max_token_age (plus {skew}s clock skew); enroll a freshly issued token",
        utc(*.iat), .now.saturating_sub(*.iat)
    )]
    TooOld {
        iat: u64,
        now: u64,
        max: u64,
        skew: u64,
    },
    #[error("wrong audience: token is for {}, issuer {issuer} accepts {}", list_or_none(.got), .expected.join(", "))]
    WrongAudience {
        got: Vec<String>,
        expected: Vec<String>,
        issuer: String,
    },
    #[error("token lacks the required claim {0:?}")]
    MissingClaim(String),
    #[error("claim {claim:?} is invalid: {reason}")]
    InvalidClaim { claim: String, reason: String },
    #[error("key set of issuer {issuer} is unavailable: {reason}")]
    JwksUnavailable { issuer: String, reason: String },
    #[error("key {kid} of issuer {issuer} cannot be used: {reason}")]
    KeyUnusable {
        issuer: String,
        kid: String,
        reason: String,
    },
}

impl TokenError {
    /// A stable short code for records and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "malformed",
            TokenError::UnknownIssuer(_) => "unknown_issuer",
            TokenError::AlgNone => "alg_none",
            TokenError::HmacRefused { .. } => "hmac_refused",
            TokenError::AlgorithmNotAllowed { .. } => "algorithm_not_allowed",
            TokenError::KeyMismatch { .. } => "key_mismatch",
            TokenError::UnknownKeyId { .. } => "unknown_key_id",
            TokenError::NoKeyId { .. } => "no_key_id",
            TokenError::BadSignature { .. } => "bad_signature",
            TokenError::Expired { .. } => "expired",
            TokenError::NotYetValid { .. } => "not_yet_valid",
            TokenError::IssuedInFuture { .. } => "issued_in_future",
            TokenError::TooOld { .. } => "too_old",
            TokenError::WrongAudience { .. } => "wrong_audience",
            TokenError::MissingClaim(_) => "missing_claim",
            TokenError::InvalidClaim { .. } => "invalid_claim",
            TokenError::JwksUnavailable { .. } => "jwks_unavailable",
            TokenError::KeyUnusable { .. } => "key_unusable",
        }
    }
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

/// RFC 3339 UTC rendering of a unix time, for messages.
fn utc(t: u64) -> String {
    i64::try_from(t)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("unix time {t}"))
}

/// A configuration the verifier cannot be built from. Messages name the
/// issuer and, for key files, the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("identity issuer {issuer:?}: {reason}")]
    Invalid { issuer: String, reason: String },
    #[error("identity issuer {issuer:?}: JWKS file {}: {reason}", .path.display())]
    JwksFile {
        issuer: String,
        path: PathBuf,
        reason: String,
    },
}

enum KeySource {
    File { path: PathBuf, set: Arc<KeySet> },
    Url(JwksCache),
}

struct Issuer {
    config: IssuerConfig,
    algorithms: Vec<Algorithm>,
    keys: KeySource,
}

/// Where an issuer's keys come from and how they are doing, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySourceStatus {
    pub issuer: String,
    /// The JWKS file path or URL.
    pub source: String,
    /// Usable keys currently served.
    pub keys: usize,
    /// Unix time of the last successful fetch (URL sources).
    pub fetched_at: Option<u64>,
    /// Why the last fetch failed, when it did (URL sources).
    pub last_error: Option<String>,
}

/// Verifies workload-identity tokens against the configured issuers.
/// Cheap to share behind an `Arc`; `verify` takes `&self`.
pub struct Verifier {
    issuers: Vec<Issuer>,
    by_iss: HashMap<String, usize>,
    /// Oldest accepted token age (`now - iat`), seconds; None: no limit.
    max_token_age: Option<u64>,
}

impl Verifier {
    /// Checks the issuer configurations and reads every `jwks_file` now.
    /// `http` is needed only when some issuer has a `jwks_url`.
    pub fn new(
        issuers: Vec<IssuerConfig>,
        http: Option<Arc<dyn JwksFetcher>>,
    ) -> Result<Verifier, ConfigError> {
        let mut out = Verifier {
            issuers: Vec::with_capacity(issuers.len()),
            by_iss: HashMap::new(),
            max_token_age: None,
        };
        for config in issuers {
            let invalid = |reason: String| ConfigError::Invalid {
                issuer: config.issuer.clone(),
                reason,
            };
            if config.issuer.trim().is_empty() {
                return Err(invalid("`issuer` is empty".into()));
            }
            if out.by_iss.contains_key(&config.issuer) {
                return Err(invalid("configured twice".into()));
            }
            if config.audience.is_empty() || config.audience.iter().any(|a| a.is_empty()) {
                return Err(invalid(
                    "`audience` must list at least one non-empty value".into(),
                ));
            }
            if config.clock_skew_secs > MAX_CLOCK_SKEW_SECS {
                return Err(invalid(format!(
                    "`clock_skew_secs` = {} is more than {MAX_CLOCK_SKEW_SECS}",
                    config.clock_skew_secs
                )));
            }
            let names: Vec<&str> = if config.algorithms.is_empty() {
                DEFAULT_ALGORITHMS.to_vec()
            } else {
                config.algorithms.iter().map(String::as_str).collect()
            };
            let mut algorithms = Vec::new();
            for name in names {
                let alg = parse_alg(name).map_err(|why| invalid(format!("`algorithms`: {why}")))?;
                if !algorithms.contains(&alg) {
                    algorithms.push(alg);
                }
            }
            let keys = match (&config.jwks_file, &config.jwks_url) {
                (Some(path), None) => {
                    let file_err = |reason: String| ConfigError::JwksFile {
                        issuer: config.issuer.clone(),
                        path: path.clone(),
                        reason,
                    };
                    let bytes = std::fs::read(path).map_err(|e| file_err(e.to_string()))?;
                    let set = KeySet::parse(&bytes).map_err(file_err)?;
                    if !set
                        .keys
                        .iter()
                        .any(|k| algorithms.iter().any(|&a| k.accepts(a)))
                    {
                        return Err(file_err(format!(
                            "no key usable with the allowed algorithms ({})",
                            alg_names(&algorithms).join(", ")
                        )));
                    }
                    for s in &set.skipped {
                        tracing::warn!(issuer = %config.issuer, file = %path.display(), "JWKS key skipped: {s}");
                    }
                    KeySource::File {
                        path: path.clone(),
                        set: Arc::new(set),
                    }
                }
                (None, Some(url)) => {
                    if !url.starts_with("https://") {
                        return Err(invalid(format!(
                            "`jwks_url` {url:?} must be an https:// URL"
                        )));
                    }
                    let fetcher = http.clone().ok_or_else(|| {
                        invalid("`jwks_url` is set but no HTTPS fetcher was given".into())
                    })?;
                    KeySource::Url(JwksCache::new(url.clone(), fetcher))
                }
                (Some(_), Some(_)) => {
                    return Err(invalid("set only one of `jwks_file` and `jwks_url`".into()));
                }
                (None, None) => {
                    return Err(invalid(
                        "one of `jwks_file` or `jwks_url` is required".into(),
                    ));
                }
            };
            out.by_iss.insert(config.issuer.clone(), out.issuers.len());
            out.issuers.push(Issuer {
                config,
                algorithms,
                keys,
            });
        }
        Ok(out)
    }

    /// Refuses tokens issued more than `secs` seconds ago (plus the
    /// issuer's clock skew), and tokens without `iat` (their age is unknown):
    /// a token that leaked from an old job cannot be enrolled later.
    pub fn with_max_token_age(mut self, secs: Option<u64>) -> Verifier {
        self.max_token_age = secs;
        self
    }

    /// The configured issuers, in configuration order.
    pub fn issuers(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| i.config.issuer.as_str())
    }

    /// Key sources and their state (for `interceptor status`).
    pub async fn key_status(&self) -> Vec<KeySourceStatus> {
        let mut out = Vec::with_capacity(self.issuers.len());
        for i in &self.issuers {
            out.push(match &i.keys {
                KeySource::File { path, set } => KeySourceStatus {
                    issuer: i.config.issuer.clone(),
                    source: path.display().to_string(),
                    keys: set.keys.len(),
                    fetched_at: None,
                    last_error: None,
                },
                KeySource::Url(cache) => {
                    let s = cache.status().await;
                    KeySourceStatus {
                        issuer: i.config.issuer.clone(),
                        source: s.url,
                        keys: s.keys,
                        fetched_at: s.fetched_at,
                        last_error: s.last_error,
                    }
                }
            });
        }
        out
    }

    /// Verifies `token` (surrounding whitespace ignored) at unix time
    /// `now_unix` (pass the current wall-clock time; it is also the clock
    /// of the JWKS cache).
    pub async fn verify(&self, token: &str, now_unix: u64) -> Result<VerifiedToken, TokenError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(TokenError::Malformed("empty token".into()));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(TokenError::Malformed(format!(
                "{} bytes, more than the {MAX_TOKEN_BYTES} accepted",
                token.len()
            )));
        }
        let parts: Vec<&str> = token.split('.').collect();
        match parts.len() {
            3 => {}
            5 => {
                return Err(TokenError::Malformed(
                    "5 dot-separated parts: encrypted tokens (JWE) are not supported".into(),
                ));
            }
            n => {
                return Err(TokenError::Malformed(format!(
                    "a JWT has 3 dot-separated parts, this has {n}"
                )));
            }
        }

        // 1-2. Header, untrusted: only decides what to refuse and which key
        // to look up.
        let header = decode_object("header", parts[0])?;
        let alg_name = match header.get("alg") {
            Some(Value::String(a)) => a.as_str(),
            Some(_) => {
                return Err(TokenError::Malformed(
                    "header \"alg\" is not a string".into(),
                ));
            }
            None => return Err(TokenError::Malformed("header has no \"alg\"".into())),
        };
        if alg_name.eq_ignore_ascii_case("none") {
            return Err(TokenError::AlgNone);
        }
        if alg_name
            .as_bytes()
            .get(..2)
            .is_some_and(|p| p.eq_ignore_ascii_case(b"HS"))
        {
            return Err(TokenError::HmacRefused {
                alg: format!("{:?}", clip(alg_name)),
            });
        }
        if header.contains_key("crit") {
            return Err(TokenError::Malformed(
                "header has \"crit\" extensions, which are not supported".into(),
            ));
        }
        if header.get("b64").is_some_and(|b| b != &Value::Bool(true)) {
            return Err(TokenError::Malformed(
                "unencoded payloads (b64) are not supported".into(),
            ));
        }
        let kid = match header.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => {
                return Err(TokenError::Malformed(
                    "header \"kid\" is not a string".into(),
                ));
            }
        };
        if parts[2].is_empty() {
            return Err(TokenError::Malformed("the signature part is empty".into()));
        }

        // 3. Payload, untrusted: only `iss` is read, to pick the issuer.
        let unverified = decode_object("payload", parts[1])?;
        let iss = match unverified.get("iss") {
            Some(Value::String(s)) => s.as_str(),
            Some(_) => {
                return Err(TokenError::InvalidClaim {
                    claim: "iss".into(),
                    reason: "not a string".into(),
                });
            }
            None => return Err(TokenError::MissingClaim("iss".into())),
        };
        let issuer = self
            .by_iss
            .get(iss)
            .map(|&i| &self.issuers[i])
            .ok_or_else(|| TokenError::UnknownIssuer(clip(iss).to_string()))?;
        let cfg = &issuer.config;
        let alg = Algorithm::from_str(alg_name)
            .ok()
            .filter(|a| issuer.algorithms.contains(a))
            .ok_or_else(|| TokenError::AlgorithmNotAllowed {
                alg: clip(alg_name).to_string(),
                issuer: cfg.issuer.clone(),
                allowed: alg_names(&issuer.algorithms),
            })?;

        // 4. Key.
        let key = issuer.key_for(kid, alg, now_unix).await?;

        // 5. Signature, then the library's claim checks.
        let mut validation = Validation::new(alg);
        validation.algorithms = vec![alg];
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        validation.leeway = cfg.clock_skew_secs;
        // Times are checked below against `now_unix`.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = true;
        validation.set_audience(&cfg.audience);
        validation.set_issuer(&[cfg.issuer.as_str()]);
        let kid_label = key.label();
        let claims = match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation)
        {
            Ok(data) => data.claims,
            Err(e) => {
                return Err(match e.into_kind() {
                    ErrorKind::InvalidSignature => TokenError::BadSignature {
                        issuer: cfg.issuer.clone(),
                        kid: kid_label,
                    },
                    // Raised only after the signature checked out, so the
                    // payload is the issuer's.
                    ErrorKind::InvalidAudience => TokenError::WrongAudience {
                        got: audiences(unverified.get("aud")),
                        expected: cfg.audience.clone(),
                        issuer: cfg.issuer.clone(),
                    },
                    // The library also counts a claim of the wrong type
                    // (`"exp": "2030-01-01"`) as missing.
                    ErrorKind::MissingRequiredClaim(c) if unverified.contains_key(&c) => {
                        TokenError::InvalidClaim {
                            claim: c,
                            reason: "wrong type".into(),
                        }
                    }
                    ErrorKind::MissingRequiredClaim(c) => TokenError::MissingClaim(c),
                    ErrorKind::InvalidClaimFormat(c) => TokenError::InvalidClaim {
                        claim: c,
                        reason: "wrong type".into(),
                    },
                    ErrorKind::InvalidIssuer => TokenError::UnknownIssuer(clip(iss).to_string()),
                    ErrorKind::InvalidAlgorithm
                    | ErrorKind::InvalidAlgorithmName
                    | ErrorKind::UnsupportedAlgorithm => TokenError::AlgorithmNotAllowed {
                        alg: clip(alg_name).to_string(),
                        issuer: cfg.issuer.clone(),
                        allowed: alg_names(&issuer.algorithms),
                    },
                    k @ (ErrorKind::InvalidKeyFormat
                    | ErrorKind::InvalidRsaKey(_)
                    | ErrorKind::InvalidEcdsaKey
                    | ErrorKind::InvalidEddsaKey
                    | ErrorKind::Provider(_)) => TokenError::KeyUnusable {
                        issuer: cfg.issuer.clone(),
                        kid: kid_label,
                        reason: jsonwebtoken::errors::Error::from(k).to_string(),
                    },
                    k => TokenError::Malformed(jsonwebtoken::errors::Error::from(k).to_string()),
                });
            }
        };

        // 6. Our own checks on the verified claims.
        check_claims(&claims, cfg, now_unix, self.max_token_age)
    }
}

impl Issuer {
    async fn key_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
        now: u64,
    ) -> Result<JwkKey, TokenError> {
        let issuer = &self.config.issuer;
        let set = match &self.keys {
            KeySource::File { set, .. } => set.clone(),
            KeySource::Url(cache) => cache
                .get(now, Want::Current)
                .await
                .map_err(|reason| self.unavailable(reason))?,
        };
        let first = set.select(kid, alg).cloned();
        let found = match (first, &self.keys) {
            // Rotation: refetch (rate-limited) and look again.
            (
                Err(KeyLookupError::UnknownKid { .. } | KeyLookupError::NoKid { candidates: 0 }),
                KeySource::Url(cache),
            ) => {
                let set = cache
                    .get(now, Want::UnknownKey)
                    .await
                    .map_err(|reason| self.unavailable(reason))?;
                set.select(kid, alg).cloned()
            }
            (first, _) => first,
        };
        found.map_err(|e| match e {
            KeyLookupError::UnknownKid { known } => TokenError::UnknownKeyId {
                kid: clip(kid.unwrap_or_default()).to_string(),
                issuer: issuer.clone(),
                known,
            },
            KeyLookupError::NoKid { candidates } => TokenError::NoKeyId {
                alg: format!("{alg:?}"),
                issuer: issuer.clone(),
                candidates,
            },
            KeyLookupError::Mismatch { kid, key } => TokenError::KeyMismatch {
                alg: format!("{alg:?}"),
                kid: format!("{:?}", clip(&kid)),
                issuer: issuer.clone(),
                key,
            },
        })
    }

    fn unavailable(&self, reason: String) -> TokenError {
        TokenError::JwksUnavailable {
            issuer: self.config.issuer.clone(),
            reason,
        }
    }
}

fn parse_alg(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("\"none\" (unsigned tokens) is never allowed".into());
    }
    match Algorithm::from_str(name) {
        Ok(a) if a.family() == jsonwebtoken::AlgorithmFamily::Hmac => Err(format!(
            "{name} is never allowed (HMAC keys are shared secrets; a JWKS has none)"
        )),
        Ok(a) => Ok(a),
        Err(_) => Err(format!(
            "unknown algorithm {name:?} (known: RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA)"
        )),
    }
}

fn alg_names(algs: &[Algorithm]) -> Vec<String> {
    algs.iter().map(|a| format!("{a:?}")).collect()
}

fn decode_object(what: &str, part: &str) -> Result<Map<String, Value>, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| TokenError::Malformed(format!("{what} is not base64url: {e}")))?;
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(TokenError::Malformed(format!(
            "{what} is not a JSON object"
        ))),
        Err(e) => Err(TokenError::Malformed(format!("{what} is not JSON: {e}"))),
    }
}

/// `aud` as a list (string or array of strings; anything else is empty).
fn audiences(aud: Option<&Value>) -> Vec<String> {
    match aud {
        Some(Value::String(s)) => vec![format!("{:?}", clip(s))],
        Some(Value::Array(a)) => a
            .iter()
            .take(16)
            .map(|v| match v {
                Value::String(s) => format!("{:?}", clip(s)),
                other => clip(&other.to_string()).to_string(),
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// A NumericDate claim: a non-negative number of seconds (fractions are
/// truncated). Present but not a number is an error, never "absent".
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, TokenError> {
    let invalid = |reason: &str| TokenError::InvalidClaim {
        claim: name.into(),
        reason: reason.into(),
    };
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => {
            if let Some(v) = n.as_u64() {
                Ok(Some(v))
            } else {
                match n.as_f64() {
                    Some(f) if f.is_finite() && f >= 0.0 && f < u64::MAX as f64 => {
                        Ok(Some(f as u64))
                    }
                    _ => Err(invalid("not a non-negative number of seconds")),
                }
            }
        }
        Some(_) => Err(invalid("not a number (NumericDate)")),
    }
}

fn stringify(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Runs on claims whose signature has been verified.
fn check_claims(
    claims: &Map<String, Value>,
    cfg: &IssuerConfig,
    now: u64,
    max_age: Option<u64>,
) -> Result<VerifiedToken, TokenError> {
    let skew = cfg.clock_skew_secs;
    match claims.get("iss") {
        Some(Value::String(s)) if *s == cfg.issuer => {}
        Some(Value::String(s)) => return Err(TokenError::UnknownIssuer(clip(s).to_string())),
        Some(_) => {
            return Err(TokenError::InvalidClaim {
                claim: "iss".into(),
                reason: "not a string".into(),
            });
        }
        None => return Err(TokenError::MissingClaim("iss".into())),
    }

    let aud: Vec<&str> = match claims.get("aud") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => {
            let mut v = Vec::with_capacity(a.len());
            for x in a {
                v.push(x.as_str().ok_or_else(|| TokenError::InvalidClaim {
                    claim: "aud".into(),
                    reason: "array holds a non-string".into(),
                })?);
            }
            v
        }
        Some(_) => {
            return Err(TokenError::InvalidClaim {
                claim: "aud".into(),
                reason: "neither a string nor an array of strings".into(),
            });
        }
        None => return Err(TokenError::MissingClaim("aud".into())),
    };
    if !aud.iter().any(|a| cfg.audience.iter().any(|c| c == a)) {
        return Err(TokenError::WrongAudience {
            got: audiences(claims.get("aud")),
            expected: cfg.audience.clone(),
            issuer: cfg.issuer.clone(),
        });
    }

    let exp = numeric_date(claims, "exp")?.ok_or_else(|| TokenError::MissingClaim("exp".into()))?;
    if now >= exp.saturating_add(skew) {
        return Err(TokenError::Expired { exp, now, skew });
    }
    if let Some(nbf) = numeric_date(claims, "nbf")?
        && nbf > now.saturating_add(skew)
    {
        return Err(TokenError::NotYetValid { nbf, now, skew });
    }
    let issued_at = numeric_date(claims, "iat")?;
    if let Some(iat) = issued_at
        && iat > now.saturating_add(skew)
    {
        return Err(TokenError::IssuedInFuture { iat, now, skew });
    }
    if let Some(max) = max_age {
        let iat = issued_at.ok_or_else(|| TokenError::MissingClaim("iat".into()))?;
        if now > iat.saturating_add(max).saturating_add(skew) {
            return Err(TokenError::TooOld {
                iat,
                now,
                max,
                skew,
            });
        }
    }

    let subject = match claims.get("sub") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(TokenError::InvalidClaim {
                claim: "sub".into(),
                reason: "empty".into(),
            });
        }
        Some(_) => {
            return Err(TokenError::InvalidClaim {
                claim: "sub".into(),
                reason: "not a string".into(),
            });
        }
        None => return Err(TokenError::MissingClaim("sub".into())),
    };
    let token_id = match claims.get("jti") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };

    let shape = detect_shape(&cfg.issuer, claims, &subject);
    let mut out: BTreeMap<String, String> = claims
        .iter()
        .map(|(k, v)| (k.clone(), stringify(v)))
        .collect();
    match shape {
        // The named fields are GitHub's own claim names; `sub` is not parsed
        // (it has several shapes, e.g. `repo:OWNER@ID/REPO@ID:…`).
        ClaimShape::GitHub | ClaimShape::Generic => {}
        ClaimShape::GitLab => {
            for (alias, source) in [
                ("repository", "project_path"),
                ("run_id", "pipeline_id"),
                ("actor", "user_login"),
            ] {
                if !out.contains_key(alias)
                    && let Some(v) = out.get(source).cloned()
                {
                    out.insert(alias.to_string(), v);
                }
            }
        }
        ClaimShape::Spiffe => {
            let trust_domain =
                spiffe_trust_domain(&subject).map_err(|reason| TokenError::InvalidClaim {
                    claim: "sub".into(),
                    reason: format!("not a valid SPIFFE ID: {reason}"),
                })?;
            out.insert("spiffe_id".into(), subject.clone());
            out.insert("trust_domain".into(), trust_domain.to_string());
        }
    }

    Ok(VerifiedToken {
        issuer: cfg.issuer.clone(),
        subject,
        token_id,
        expires_at: exp,
        issued_at,
        shape,
        claims: out,
    })
}

fn is_github_issuer(iss: &str) -> bool {
    iss == GITHUB_ISSUER
        || iss.starts_with("https://token.actions.githubusercontent.com/")
        || (iss.starts_with("https://") && iss.ends_with("/_services/token"))
}

fn detect_shape(iss: &str, claims: &Map<String, Value>, sub: &str) -> ClaimShape {
    let has = |k: &str| claims.contains_key(k);
    if is_github_issuer(iss) {
        ClaimShape::GitHub
    } else if has("project_path") && has("pipeline_id") {
        ClaimShape::GitLab
    } else if has("repository") && has("run_id") {
        ClaimShape::GitHub
    } else if sub.starts_with("spiffe://") {
        ClaimShape::Spiffe
    } else {
        ClaimShape::Generic
    }
}

/// The trust domain of a SPIFFE ID (`spiffe://TRUST.DOMAIN/path`), checked
/// against the SPIFFE ID format: lowercase `[a-z0-9._-]` trust domain, path
/// segments of `[A-Za-z0-9._-]`, none empty, `.` or `..`.
fn spiffe_trust_domain(id: &str) -> Result<&str, &'static str> {
    let rest = id.strip_prefix("spiffe://").ok_or("no spiffe:// scheme")?;
    let (td, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if td.is_empty() {
        return Err("empty trust domain");
    }
    if !td
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_'))
    {
        return Err("trust domain has characters other than [a-z0-9._-]");
    }
    if !path.is_empty() {
        for seg in path[1..].split('/') {
            if seg.is_empty() || seg == "." || seg == ".." {
                return Err("path has an empty, \".\" or \"..\" segment");
            }
            if !seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            {
                return Err("path has characters other than [A-Za-z0-9._-]");
            }
        }
    }
    Ok(td)
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;
    use std::future::Future;
    use std::path::Path;
    use std::pin::Pin;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{EncodingKey, Header, jwk::Jwk};
    use serde_json::json;

    use super::*;
    use crate::identity::jwks::{MIN_FETCH_INTERVAL_SECS, REFRESH_AFTER_SECS};

    const RSA_PRIV: &[u8] = include_bytes!("../../tests/fixtures/identity/rsa_private.pem");
    const RSA2_PRIV: &[u8] = include_bytes!("../../tests/fixtures/identity/rsa2_private.pem");
    const RSA_PUB_PEM: &[u8] = include_bytes!("../../tests/fixtures/identity/rsa_public.pem");
    const RSA_PUB_DER: &[u8] = include_bytes!("../../tests/fixtures/identity/rsa_public.der");
    const EC_PRIV: &[u8] = include_bytes!("../../tests/fixtures/identity/ec_private.pem");
    const ED_PRIV: &[u8] = include_bytes!("../../tests/fixtures/identity/ed25519_private.pem");

    /// 2026-04-12T13:20:00Z.
    const NOW: u64 = 1_776_000_000;
    const AUD: &str = "interceptor";
    const GITLAB: &str = "https://gitlab.example.com";
    const SPIRE: &str = "https://spire.example.org";
    const ES_ISS: &str = "https://es.example";

    fn rsa() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA_PRIV).unwrap()
    }
    fn rsa2() -> EncodingKey {
        EncodingKey::from_rsa_pem(RSA2_PRIV).unwrap()
    }
    fn ec() -> EncodingKey {
        EncodingKey::from_ec_pem(EC_PRIV).unwrap()
    }
    fn ed() -> EncodingKey {
        EncodingKey::from_ed_pem(ED_PRIV).unwrap()
    }

    fn jwk(key: &EncodingKey, alg: Algorithm, kid: Option<&str>) -> Value {
        let mut v = serde_json::to_value(Jwk::from_encoding_key(key, alg).unwrap()).unwrap();
        if let Some(kid) = kid {
            v["kid"] = json!(kid);
        }
        v
    }

    struct TempDir(PathBuf);
    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "interceptor-id-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
        fn jwks(&self, name: &str, keys: Vec<Value>) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, json!({ "keys": keys }).to_string()).unwrap();
            p
        }
    }
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn issuer(iss: &str, jwks_file: &Path) -> IssuerConfig {
        IssuerConfig {
            issuer: iss.into(),
            audience: vec![AUD.into()],
            jwks_file: Some(jwks_file.to_path_buf()),
            ..Default::default()
        }
    }

    /// GitHub (RS256 only; keys: RSA "gh1", EC "ec1"), an ES256 issuer,
    /// GitLab (one RSA key without kid), SPIRE (Ed25519).
    fn verifier(dir: &TempDir) -> Verifier {
        let gh = dir.jwks(
            "gh.json",
            vec![
                jwk(&rsa(), Algorithm::RS256, Some("gh1")),
                jwk(&ec(), Algorithm::ES256, Some("ec1")),
            ],
        );
        let es = dir.jwks(
            "es.json",
            vec![
                jwk(&ec(), Algorithm::ES256, Some("ec1")),
                // No `alg` member: usable with any RSA algorithm allowed.
                {
                    let mut k = jwk(&rsa(), Algorithm::RS256, Some("rsa-any"));
                    k.as_object_mut().unwrap().remove("alg");
                    k
                },
            ],
        );
        let gl = dir.jwks("gl.json", vec![jwk(&rsa(), Algorithm::RS256, None)]);
        let spire = dir.jwks(
            "spire.json",
            vec![jwk(&ed(), Algorithm::EdDSA, Some("ed1"))],
        );
        Verifier::new(
            vec![
                IssuerConfig {
                    algorithms: vec!["RS256".into()],
                    ..issuer(GITHUB_ISSUER, &gh)
                },
                issuer(ES_ISS, &es),
                issuer(GITLAB, &gl),
                issuer(SPIRE, &spire),
            ],
            None,
        )
        .unwrap()
    }

    fn sign(alg: Algorithm, key: &EncodingKey, kid: Option<&str>, claims: &Value) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&h, claims, key).unwrap()
    }

    fn b64(v: &Value) -> String {
        URL_SAFE_NO_PAD.encode(v.to_string())
    }

    fn github_claims() -> Value {
        json!({
            "iss": GITHUB_ISSUER,
            "aud": AUD,
            "sub": "repo:acme@123/api@456:ref:refs/heads/main",
            "jti": "5b7c2d1e-0000-4000-8000-000000000001",
            "repository": "acme/api",
            "repository_id": "456",
            "repository_owner": "acme",
            "ref": "refs/heads/main",
            "sha": "0123456789abcdef0123456789abcdef01234567",
            "workflow": "ci",
            "job_workflow_ref": "acme/api/.github/workflows/ci.yml@refs/heads/main",
            "run_id": "987654321",
            "run_attempt": "1",
            "actor": "alice",
            "event_name": "push",
            "environment": "production",
            "runner_environment": "self-hosted",
            "nbf": NOW - 10,
            "iat": NOW - 10,
            "exp": NOW + 300,
        })
    }

    fn with(mut v: Value, k: &str, x: Value) -> Value {
        if x.is_null() {
            v.as_object_mut().unwrap().remove(k);
        } else {
            v[k] = x;
        }
        v
    }

    async fn github(v: &Verifier, claims: Value) -> Result<VerifiedToken, TokenError> {
        v.verify(&sign(Algorithm::RS256, &rsa(), Some("gh1"), &claims), NOW)
            .await
    }

    #[tokio::test]
    async fn github_rs256_token_maps_named_fields() {
        let dir = TempDir::new();
        let v = verifier(&dir);
        let claims = with(github_claims(), "groups", json!(["a", "b"]));
        let claims = with(claims, "extra_num", json!(7));
        let claims = with(claims, "extra_obj", json!({"k": true}));
        let t = github(&v, claims).await.unwrap();
        assert_eq!(t.issuer, GITHUB_ISSUER);
        assert_eq!(t.subject, "repo:acme@123/api@456:ref:refs/heads/main");
        assert_eq!(
            t.token_id.as_deref(),
            Some("5b7c2d1e-0000-4000-8000-000000000001")
        );
        assert_eq!(t.expires_at, NOW + 300);
        assert_eq!(t.shape, ClaimShape::GitHub);
        let c = &t.claims;
        assert_eq!(c["repository"], "acme/api");
        assert_eq!(c["sha"], "0123456789abcdef0123456789abcdef01234567");
        assert_eq!(c["run_id"], "987654321");
        assert_eq!(c["actor"], "alice");
        assert_eq!(c["environment"], "production");
        for f in ClaimShape::GitHub.named_fields() {
            assert!(c.contains_key(*f), "{f} missing");
        }
        // Everything kept, stringified.
        assert_eq!(c["runner_environment"], "self-hosted");
        assert_eq!(c["extra_num"], "7");
        assert_eq!(c["exp"], (NOW + 300).to_string());
        assert_eq!(c["groups"], r#"["a","b"]"#);
        assert_eq!(c["extra_obj"], r#"{"k":true}"#);
        assert_eq!(c["aud"], AUD);
        // `sub` is not parsed into fields.
        assert!(!c.contains_key("owner") && !c.contains_key("spiffe_id"));
        assert_eq!(serde_json::to_value(t.shape).unwrap(), json!("github"));

        // `aud` as an array, one of which matches; GHES issuer shape by claims.
        let t = github(
            &v,
            with(github_claims(), "aud", json!(["sts.amazonaws.com", AUD])),
        )
        .await
        .unwrap();
        assert_eq!(t.claims["aud"], r#"["sts.amazonaws.com","interceptor"]"#);
        // Surrounding whitespace (token files end with a newline) is ignored.
        let tok = sign(Algorithm::RS256, &rsa(), Some("gh1"), &github_claims());
        assert!(v.verify(&format!("  {tok}\n"), NOW).await.is_ok());
    }

    #[tokio::test]
    async fn es256_token_from_a_generic_issuer() {
        let dir = TempDir::new();
        let v = verifier(&dir);
        let claims = json!({"iss": ES_ISS, "aud": AUD, "sub": "deploy-bot", "exp": NOW + 60, "n": 1.5, "x": null});
        let t = v
            .verify(&sign(Algorithm::ES256, &ec(), Some("ec1"), &claims), NOW)
            .await
            .unwrap();
        assert_eq!(t.shape, ClaimShape::Generic);
        assert_eq!(t.subject, "deploy-bot");
        assert_eq!(t.token_id, None);
        assert_eq!(t.claims["n"], "1.5");
        assert_eq!(t.claims["x"], "null");
        // An RSA JWK without `alg` serves RS256 (allowed by default).
        assert!(
            v.verify(
                &sign(Algorithm::RS256, &rsa(), Some("rsa-any"), &claims),
                NOW
            )
            .await
            .is_ok()
        );
    }

    #[tokio::test]
    async fn eddsa_spiffe_svid() {
        let dir = TempDir::new();
        let v = verifier(&dir);
        let claims = json!({"iss": SPIRE, "aud": [AUD], "sub": "spiffe://example.org/ns/ci/sa/runner", "exp": NOW + 300, "iat": NOW});
        let t = v
            .verify(&sign(Algorithm::EdDSA, &ed(), Some("ed1"), &claims), NOW)
            .await
            .unwrap();
        assert_eq!(t.shape, ClaimShape::Spiffe);
        assert_eq!(
            t.claims["spiffe_id"],
            "spiffe://example.org/ns/ci/sa/runner"
        );
        assert_eq!(t.claims["trust_domain"], "example.org");

        let bad = with(claims, "sub", json!("spiffe://Example.org/../x"));
        let e = v
            .verify(&sign(Algorithm::EdDSA, &ed(), Some("ed1"), &bad), NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TokenError::InvalidClaim { claim, .. } if claim == "sub"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn gitlab_token_gets_cross_ci_aliases() {
        let dir = TempDir::new();
        let v = verifier(&dir);
        let claims = json!({
            "iss": GITLAB, "aud": AUD,
            "sub": "project_path:acme/api:ref_type:branch:ref:main",
            "project_path": "acme/api", "project_id": "42", "namespace_path": "acme",
            "ref": "main", "sha": "fedcba9876543210fedcba9876543210fedcba98",
            "pipeline_id": "1001", "job_id": "5005", "user_login": "bob",
            "iat": NOW, "nbf": NOW, "exp": NOW + 300, "jti": "j-1",
        });
        // No kid: the issuer's only RSA key is used.
        let t = v
            .verify(&sign(Algorithm::RS256, &rsa(), None, &claims), NOW)
            .await
            .unwrap();
        assert_eq!(t.shape, ClaimShape::GitLab);
        let c = &t.claims;
        assert_eq!(c["project_path"], "acme/api");
        assert_eq!(c["repository"], "acme/api");
        assert_eq!(c["run_id"], "1001");
        assert_eq!(c["pipeline_id"], "1001");
        assert_eq!(c["job_id"], "5005");
        assert_eq!(c["actor"], "bob");
        assert_eq!(c["user_login"], "bob");

        // Aliases never overwrite a claim of the same name.
        let claims = with(claims, "actor", json!("someone-else"));
        let t = v
            .verify(&sign(Algorithm::RS256, &rsa(), None, &claims), NOW)
            .await
            .unwrap();
        assert_eq!(t.claims["actor"], "someone-else");
    }

    #[tokio::test]
    async fn time_claims() {
        let dir = TempDir::new();
        let v = verifier(&dir);

        let e = github(&v, with(github_claims(), "exp", json!(NOW - 120)))
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::Expired { exp, .. } if exp == NOW - 120));
        let msg = e.to_string();
        assert!(
            msg.contains("2026-04-12T13:18:00Z") && msg.contains("120s before now"),
            "{msg}"
        );
        // Within the 60 s skew.
        assert!(
            github(&v, with(github_claims(), "exp", json!(NOW - 30)))
                .await
                .is_ok()
        );

        let e = github(&v, with(github_claims(), "nbf", json!(NOW + 600)))
            .await
            .unwrap_err();
        assert!(
            matches!(e, TokenError::NotYetValid { nbf, .. } if nbf == NOW + 600),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("not valid before 2026-04-12T13:30:00Z"),
            "{e}"
        );
        assert!(
            github(&v, with(github_claims(), "nbf", json!(NOW + 30)))
                .await
                .is_ok()
        );

        let e = github(&v, with(github_claims(), "iat", json!(NOW + 120)))
            .await
            .unwrap_err();
        assert!(
            matches!(e, TokenError::IssuedInFuture { iat, .. } if iat == NOW + 120),
            "{e}"
        );
        assert!(e.to_string().contains("issued in the future"), "{e}");
        assert!(
            github(&v, with(github_claims(), "iat", json!(NOW + 30)))
                .await
                .is_ok()
        );

        // exp is required and must be a number.
        let e = github(&v, with(github_claims(), "exp", Value::Null))
            .await
            .unwrap_err();
        assert_eq!(e, TokenError::MissingClaim("exp".into()));
        let e = github(&v, with(github_claims(), "exp", json!("9999999999")))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TokenError::InvalidClaim { claim, .. } if claim == "exp"),
            "{e}"
        );
        let e = github(&v, with(github_claims(), "nbf", json!("soon")))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TokenError::InvalidClaim { claim, .. } if claim == "nbf"),
            "{e}"
        );
    }

    /// A token that leaked from an old job cannot be enrolled later:
    /// `[identity] max_token_age` bounds `now - iat`, and without `iat` the
    /// age is unknown, so the token is refused.
    #[tokio::test]
    async fn max_token_age() {
        let dir = TempDir::new();
        let v = verifier(&dir).with_max_token_age(Some(900));
        let t = github(&v, github_claims()).await.unwrap();
        assert_eq!(t.issued_at, Some(NOW - 10));
        // 900 s plus the 60 s skew is the edge.
        assert!(
            github(&v, with(github_claims(), "iat", json!(NOW - 960)))
                .await
                .is_ok()
        );
        let e = github(&v, with(github_claims(), "iat", json!(NOW - 961)))
            .await
            .unwrap_err();
        assert!(
            matches!(e, TokenError::TooOld { iat, max: 900, .. } if iat == NOW - 961),
            "{e}"
        );
        assert_eq!(e.kind(), "too_old");
        assert!(e.to_string().contains("max_token_age"), "{e}");
        let e = github(&v, with(github_claims(), "iat", Value::Null))
            .await
            .unwrap_err();
        assert_eq!(e, TokenError::MissingClaim("iat".into()));
        // Without the limit, an old token with a live exp still verifies.
        let v = verifier(&dir);
        assert!(
            github(&v, with(github_claims(), "iat", json!(NOW - 86_400)))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn audience_issuer_and_subject() {
        let dir = TempDir::new();
        let v = verifier(&dir);

        let e = github(&v, with(github_claims(), "aud", json!("someone-else")))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            TokenError::WrongAudience {
                got: vec!["\"someone-else\"".into()],
                expected: vec![AUD.into()],
                issuer: GITHUB_ISSUER.into(),
            }
        );
        assert!(
            e.to_string().contains("someone-else") && e.to_string().contains("accepts interceptor")
        );
        let e = github(&v, with(github_claims(), "aud", json!([])))
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::WrongAudience { .. }), "{e}");
        let e = github(&v, with(github_claims(), "aud", Value::Null))
            .await
            .unwrap_err();
        assert_eq!(e, TokenError::MissingClaim("aud".into()));

        // An issuer we do not know, even signed with a key we know.
        let e = github(
            &v,
            with(github_claims(), "iss", json!("https://evil.example")),
        )
        .await
        .unwrap_err();
        assert_eq!(e, TokenError::UnknownIssuer("https://evil.example".into()));
        assert!(
            e.to_string()
                .contains("\"https://evil.example\" is not a configured issuer")
        );
        // Issuers match exactly.
        let e = github(
            &v,
            with(github_claims(), "iss", json!(format!("{GITHUB_ISSUER}/"))),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, TokenError::UnknownIssuer(_)));
        let e = github(&v, with(github_claims(), "iss", Value::Null))
            .await
            .unwrap_err();
        assert_eq!(e, TokenError::MissingClaim("iss".into()));

        let e = github(&v, with(github_claims(), "sub", Value::Null))
            .await
            .unwrap_err();
        assert_eq!(e, TokenError::MissingClaim("sub".into()));
        let e = github(&v, with(github_claims(), "sub", json!("")))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, TokenError::InvalidClaim { claim, .. } if claim == "sub"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn tampered_or_foreign_signature_is_refused() {
        let dir = TempDir::new();
        let v = verifier(&dir);
        let tok = sign(Algorithm::RS256, &rsa(), Some("gh1"), &github_claims());
        let parts: Vec<&str> = tok.split('.').collect();
        let evil = b64(&with(github_claims(), "repository", json!("acme/evil")));
        let tampered = format!("{}.{}.{}", parts[0], evil, parts[2]);
        let e = v.verify(&tampered, NOW).await.unwrap_err();
        assert_eq!(
            e,
            TokenError::BadSignature {
                issuer: GITHUB_ISSUER.into(),
                kid: "\"gh1\"".into()
            }
        );
        assert!(e.to_string().starts_with("bad signature"), "{e}");

        // A different RSA key claiming the issuer's kid.
        let forged = sign(Algorithm::RS256, &rsa2(), Some("gh1"), &github_claims());
        assert!(matches!(
            v.verify(&forged, NOW).await,
            Err(TokenError::BadSignature { .. })
        ));

        // A signature that is not base64url, or truncated.
        let e = v
            .verify(&format!("{}.{}.!!!", parts[0], parts[1]), NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                TokenError::Malformed(_) | TokenError::BadSignature { .. }
            ),
            "{e}"
        );
        let e = v
            .verify(
                &format!("{}.{}.{}", parts[0], parts[1], &parts[2][..20]),
                NOW,
            )
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::BadSignature { .. }), "{e}");
    }

    #[tokio::test]
    async fn alg_none_is_refused() {
        let dir = TempDir::new();
        let v = verifier(&dir);
        for alg in ["none", "None", "NONE"] {
            let header = b64(&json!({"alg": alg, "typ": "JWT"}));
            let payload = b64(&github_claims());
            for sig in ["", "c2ln"] {
                let e = v
                    .verify(&format!("{header}.{payload}.{sig}"), NOW)
                    .await
                    .unwrap_err();
                assert_eq!(e, TokenError::AlgNone, "{alg} {sig:?}");
            }
        }
        assert!(TokenError::AlgNone.to_string().contains("\"none\""));
    }

    #[tokio::test]
    async fn hmac_key_confusion_is_refused() {
        let dir = TempDir::new();
        let v = verifier(&dir);
        // The attack: MAC the token with the issuer's *public* RSA key as
        // the HMAC secret, hoping the verifier feeds that key to HMAC.
        for secret in [RSA_PUB_PEM, RSA_PUB_DER] {
            for (alg, kid) in [
                (Algorithm::HS256, Some("gh1")),
                (Algorithm::HS256, None),
                (Algorithm::HS384, Some("gh1")),
                (Algorithm::HS512, Some("gh1")),
            ] {
                let key = EncodingKey::from_secret(secret).unwrap();
                let tok = sign(alg, &key, kid, &github_claims());
                let e = v.verify(&tok, NOW).await.unwrap_err();
                assert!(matches!(e, TokenError::HmacRefused { .. }), "{alg:?}: {e}");
                assert!(e.to_string().contains("key-confusion"), "{e}");
            }
        }
        // And HMAC cannot be configured.
        let gh = dir.jwks("hs.json", vec![jwk(&rsa(), Algorithm::RS256, Some("gh1"))]);
        for alg in ["HS256", "none"] {
            let err = Verifier::new(
                vec![IssuerConfig {
                    algorithms: vec![alg.into()],
                    ..issuer(GITHUB_ISSUER, &gh)
                }],
                None,
            )
            .err()
            .unwrap();
            assert!(err.to_string().contains("never allowed"), "{err}");
        }
    }

    #[tokio::test]
    async fn algorithm_allow_list_and_key_type() {
        let dir = TempDir::new();
        let v = verifier(&dir);
        // GitHub allows RS256 only; its set does have an EC key.
        let e = v
            .verify(
                &sign(Algorithm::ES256, &ec(), Some("ec1"), &github_claims()),
                NOW,
            )
            .await
            .unwrap_err();
        assert_eq!(
            e,
            TokenError::AlgorithmNotAllowed {
                alg: "ES256".into(),
                issuer: GITHUB_ISSUER.into(),
                allowed: vec!["RS256".into()]
            }
        );
        assert!(
            e.to_string()
                .contains("\"ES256\" is not allowed for issuer https://token.actions")
        );
        let e = v
            .verify(
                &sign(Algorithm::PS256, &rsa(), Some("gh1"), &github_claims()),
                NOW,
            )
            .await
            .unwrap_err();
        assert!(
            matches!(e, TokenError::AlgorithmNotAllowed { ref alg, .. } if alg == "PS256"),
            "{e}"
        );
        // An algorithm jsonwebtoken does not know.
        let header = b64(&json!({"alg": "ES512", "kid": "gh1"}));
        let e = v
            .verify(&format!("{header}.{}.c2ln", b64(&github_claims())), NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(e, TokenError::AlgorithmNotAllowed { ref alg, .. } if alg == "ES512"),
            "{e}"
        );

        // Allowed algorithm, but the kid names a key of another type.
        let claims = json!({"iss": ES_ISS, "aud": AUD, "sub": "x", "exp": NOW + 60});
        let e = v
            .verify(&sign(Algorithm::RS256, &rsa(), Some("ec1"), &claims), NOW)
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("which is an EC P-256 key"), "{e}");
        // EdDSA with an RSA-only set, no kid: nothing fits.
        let claims = with(claims, "iss", json!(GITLAB));
        let e = v
            .verify(&sign(Algorithm::EdDSA, &ed(), None, &claims), NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(e, TokenError::NoKeyId { candidates: 0, .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn unknown_kid_and_ambiguous_keys() {
        let dir = TempDir::new();
        let v = verifier(&dir);
        let e = v
            .verify(
                &sign(Algorithm::RS256, &rsa(), Some("nope"), &github_claims()),
                NOW,
            )
            .await
            .unwrap_err();
        assert_eq!(
            e,
            TokenError::UnknownKeyId {
                kid: "nope".into(),
                issuer: GITHUB_ISSUER.into(),
                known: vec!["\"gh1\"".into(), "\"ec1\"".into()]
            }
        );
        assert!(e.to_string().contains("key ids: \"gh1\", \"ec1\""), "{e}");

        let two = dir.jwks(
            "two.json",
            vec![
                jwk(&rsa(), Algorithm::RS256, Some("a")),
                jwk(&rsa2(), Algorithm::RS256, Some("b")),
            ],
        );
        let v2 = Verifier::new(vec![issuer(GITHUB_ISSUER, &two)], None).unwrap();
        let e = v2
            .verify(&sign(Algorithm::RS256, &rsa(), None, &github_claims()), NOW)
            .await
            .unwrap_err();
        assert!(
            matches!(e, TokenError::NoKeyId { candidates: 2, .. }),
            "{e}"
        );
        assert!(
            v2.verify(
                &sign(Algorithm::RS256, &rsa2(), Some("b"), &github_claims()),
                NOW
            )
            .await
            .is_ok()
        );
    }

    #[tokio::test]
    async fn malformed_tokens() {
        let dir = TempDir::new();
        let v = verifier(&dir);
        let good = sign(Algorithm::RS256, &rsa(), Some("gh1"), &github_claims());
        let p: Vec<&str> = good.split('.').collect();
        let rs_header = p[0];
        let claims = b64(&github_claims());
        let not_json = URL_SAFE_NO_PAD.encode("not json");
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "empty token"),
            ("   \n".into(), "empty token"),
            ("abc.def".into(), "this has 2"),
            ("abc".into(), "this has 1"),
            ("a.b.c.d".into(), "this has 4"),
            ("a.b.c.d.e".into(), "JWE"),
            (format!("!!!.{claims}.sig"), "header is not base64url"),
            (format!("{not_json}.{claims}.sig"), "header is not JSON"),
            (
                format!("{}.{claims}.sig", b64(&json!([1]))),
                "header is not a JSON object",
            ),
            (
                format!("{}.{claims}.sig", b64(&json!({"typ": "JWT"}))),
                "header has no \"alg\"",
            ),
            (
                format!("{}.{claims}.sig", b64(&json!({"alg": 7}))),
                "\"alg\" is not a string",
            ),
            (format!("{rs_header}.%%%.sig"), "payload is not base64url"),
            (format!("{rs_header}.{not_json}.sig"), "payload is not JSON"),
            (format!("{rs_header}.{claims}."), "signature part is empty"),
            (
                format!(
                    "{}.{claims}.sig",
                    b64(&json!({"alg": "RS256", "kid": "gh1", "crit": ["exp"]}))
                ),
                "\"crit\"",
            ),
            (
                format!("{}.{claims}.sig", b64(&json!({"alg": "RS256", "kid": 5}))),
                "\"kid\" is not a string",
            ),
            ("x".repeat(MAX_TOKEN_BYTES + 1), "more than the"),
            ("€€.€.€".into(), "header is not base64url"),
        ];
        for (tok, want) in cases {
            let e = v.verify(&tok, NOW).await.unwrap_err();
            assert!(
                matches!(e, TokenError::Malformed(_)) && e.to_string().contains(want),
                "{:?}: got {e}, want {want:?}",
                &tok[..tok.len().min(40)]
            );
        }
    }

    #[tokio::test]
    async fn every_single_character_change_is_refused() {
        let dir = TempDir::new();
        let v = verifier(&dir);
        let claims =
            json!({"iss": SPIRE, "aud": AUD, "sub": "spiffe://example.org/x", "exp": NOW + 60});
        let tok = sign(Algorithm::EdDSA, &ed(), Some("ed1"), &claims);
        assert!(v.verify(&tok, NOW).await.is_ok());
        let bytes = tok.as_bytes();
        for i in 0..bytes.len() {
            for with in [b'A', b'_', b'.', 0xc3] {
                if bytes[i] == with {
                    continue;
                }
                let mut m = bytes.to_vec();
                m[i] = with;
                let m = String::from_utf8_lossy(&m);
                assert!(v.verify(&m, NOW).await.is_err(), "accepted {m}");
            }
        }
        // Odd headers must not panic either.
        for alg in ["€€", "H", "", "HS", "h€"] {
            let header = b64(&json!({"alg": alg, "kid": "ed1"}));
            let tok = format!("{header}.{}.c2ln", b64(&claims));
            assert!(v.verify(&tok, NOW).await.is_err(), "{alg}");
        }
    }

    #[test]
    fn config_errors_and_toml() {
        let dir = TempDir::new();
        let gh = dir.jwks("gh.json", vec![jwk(&rsa(), Algorithm::RS256, Some("gh1"))]);
        let missing = dir.0.join("missing.json");
        let err = |c: IssuerConfig| Verifier::new(vec![c], None).err().unwrap().to_string();

        let e = err(issuer(GITHUB_ISSUER, &missing));
        assert!(
            e.contains("missing.json") && e.contains(GITHUB_ISSUER),
            "{e}"
        );
        std::fs::write(dir.0.join("bad.json"), "{").unwrap();
        let e = err(issuer(GITHUB_ISSUER, &dir.0.join("bad.json")));
        assert!(e.contains("bad.json") && e.contains("not JSON"), "{e}");
        // The file's only key cannot serve the allowed algorithms.
        let e = err(IssuerConfig {
            algorithms: vec!["EdDSA".into()],
            ..issuer(GITHUB_ISSUER, &gh)
        });
        assert!(
            e.contains("no key usable with the allowed algorithms (EdDSA)"),
            "{e}"
        );
        let e = err(IssuerConfig {
            audience: vec![],
            ..issuer(GITHUB_ISSUER, &gh)
        });
        assert!(e.contains("audience"), "{e}");
        let e = err(IssuerConfig {
            algorithms: vec!["RS1".into()],
            ..issuer(GITHUB_ISSUER, &gh)
        });
        assert!(e.contains("unknown algorithm \"RS1\""), "{e}");
        let e = err(IssuerConfig {
            jwks_url: Some("https://x/jwks".into()),
            ..issuer(GITHUB_ISSUER, &gh)
        });
        assert!(e.contains("only one of"), "{e}");
        let e = err(IssuerConfig {
            jwks_file: None,
            jwks_url: Some("http://x/jwks".into()),
            ..issuer(GITHUB_ISSUER, &gh)
        });
        assert!(e.contains("https://"), "{e}");
        let e = err(IssuerConfig {
            jwks_file: None,
            jwks_url: Some("https://x/jwks".into()),
            ..issuer(GITHUB_ISSUER, &gh)
        });
        assert!(e.contains("no HTTPS fetcher"), "{e}");
        let e = err(IssuerConfig {
            clock_skew_secs: 3600,
            ..issuer(GITHUB_ISSUER, &gh)
        });
        assert!(e.contains("clock_skew_secs"), "{e}");
        let e = Verifier::new(
            vec![issuer(GITHUB_ISSUER, &gh), issuer(GITHUB_ISSUER, &gh)],
            None,
        )
        .err()
        .unwrap()
        .to_string();
        assert!(e.contains("configured twice"), "{e}");

        #[derive(Deserialize)]
        struct Doc {
            issuer: Vec<IssuerConfig>,
        }
        let doc: Doc = toml::from_str(&format!(
            r#"
            [[issuer]]
            issuer = "{GITHUB_ISSUER}"
            audience = "interceptor"
            jwks_file = "{}"
            [[issuer]]
            issuer = "{GITLAB}"
            audience = ["a", "b"]
            algorithms = ["RS256", "ES256"]
            jwks_url = "https://gitlab.example.com/oauth/discovery/keys"
            clock_skew_secs = 30
            "#,
            gh.display()
        ))
        .unwrap();
        assert_eq!(doc.issuer[0].audience, vec!["interceptor"]);
        assert_eq!(doc.issuer[0].clock_skew_secs, DEFAULT_CLOCK_SKEW_SECS);
        assert!(doc.issuer[0].algorithms.is_empty());
        assert_eq!(doc.issuer[1].audience, vec!["a", "b"]);
        assert_eq!(doc.issuer[1].clock_skew_secs, 30);
        let unknown = toml::from_str::<Doc>(
            "[[issuer]]\nissuer = \"x\"\naudience = \"a\"\njwks_file = \"f\"\njwks = \"typo\"\n",
        );
        assert!(unknown.err().unwrap().to_string().contains("unknown field"));
        let v =
            Verifier::new(doc.issuer, Some(Arc::new(FakeFetcher::new(Ok(Vec::new()))))).unwrap();
        assert_eq!(v.issuers().collect::<Vec<_>>(), vec![GITHUB_ISSUER, GITLAB]);
    }

    /// Serves queued answers, then repeats the last one; counts calls.
    struct FakeFetcher {
        answers: Mutex<VecDeque<Result<Vec<u8>, String>>>,
        last: Mutex<Result<Vec<u8>, String>>,
        calls: AtomicUsize,
    }

    impl FakeFetcher {
        fn new(first: Result<Vec<u8>, String>) -> FakeFetcher {
            FakeFetcher {
                answers: Mutex::new(VecDeque::new()),
                last: Mutex::new(first),
                calls: AtomicUsize::new(0),
            }
        }
        fn set(&self, answer: Result<Vec<u8>, String>) {
            *self.last.lock().unwrap() = answer;
        }
        fn calls(&self) -> usize {
            self.calls.load(Ordering::SeqCst)
        }
    }

    impl JwksFetcher for FakeFetcher {
        fn fetch(
            &self,
            url: &str,
        ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
            assert_eq!(url, "https://ci.example/jwks");
            self.calls.fetch_add(1, Ordering::SeqCst);
            let answer = self
                .answers
                .lock()
                .unwrap()
                .pop_front()
                .unwrap_or_else(|| self.last.lock().unwrap().clone());
            Box::pin(async move { answer })
        }
    }

    fn jwks_doc(keys: Vec<Value>) -> Result<Vec<u8>, String> {
        Ok(json!({ "keys": keys }).to_string().into_bytes())
    }

    fn url_verifier(fetcher: &Arc<FakeFetcher>) -> Verifier {
        Verifier::new(
            vec![IssuerConfig {
                issuer: "https://ci.example".into(),
                audience: vec![AUD.into()],
                jwks_url: Some("https://ci.example/jwks".into()),
                ..Default::default()
            }],
            Some(fetcher.clone() as Arc<dyn JwksFetcher>),
        )
        .unwrap()
    }

    fn ci_token(key: &EncodingKey, alg: Algorithm, kid: &str, now: u64) -> String {
        let claims = json!({"iss": "https://ci.example", "aud": AUD, "sub": "job", "exp": now + 300, "iat": now});
        sign(alg, key, Some(kid), &claims)
    }

    #[tokio::test]
    async fn jwks_url_refresh_rate_limit_and_last_good_set() {
        let k1 = jwk(&rsa(), Algorithm::RS256, Some("k1"));
        let k2 = jwk(&ec(), Algorithm::ES256, Some("k2"));
        let k3 = jwk(&ed(), Algorithm::EdDSA, Some("k3"));
        let fetcher = Arc::new(FakeFetcher::new(jwks_doc(vec![k1.clone()])));
        let v = url_verifier(&fetcher);
        let t0 = NOW;
        assert_eq!(fetcher.calls(), 0, "nothing fetched before first use");

        // First use fetches.
        v.verify(&ci_token(&rsa(), Algorithm::RS256, "k1", t0), t0)
            .await
            .unwrap();
        assert_eq!(fetcher.calls(), 1);
        v.verify(&ci_token(&rsa(), Algorithm::RS256, "k1", t0), t0 + 1)
            .await
            .unwrap();
        assert_eq!(fetcher.calls(), 1, "fresh set is reused");

        // The issuer rotates in k2. Within 30 s of the last fetch an unknown
        // kid does not trigger a fetch.
        fetcher.set(jwks_doc(vec![k1.clone(), k2.clone()]));
        let t = t0 + 5;
        let e = v
            .verify(&ci_token(&ec(), Algorithm::ES256, "k2", t), t)
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::UnknownKeyId { .. }), "{e}");
        assert_eq!(fetcher.calls(), 1, "rate limited");
        // A burst of made-up kids does not fetch either.
        for i in 0..20 {
            let _ = v
                .verify(&ci_token(&ec(), Algorithm::ES256, &format!("x{i}"), t), t)
                .await;
        }
        assert_eq!(fetcher.calls(), 1);

        // After 30 s the unknown kid refetches and verifies.
        let t = t0 + MIN_FETCH_INTERVAL_SECS;
        v.verify(&ci_token(&ec(), Algorithm::ES256, "k2", t), t)
            .await
            .unwrap();
        assert_eq!(fetcher.calls(), 2);
        let refreshed = t;

        // The endpoint breaks. The set goes stale and the refresh fails:
        // the last good set keeps being served.
        fetcher.set(Err("HTTP 503 from https://ci.example/jwks".into()));
        let t = refreshed + REFRESH_AFTER_SECS;
        v.verify(&ci_token(&rsa(), Algorithm::RS256, "k1", t), t)
            .await
            .unwrap();
        assert_eq!(fetcher.calls(), 3, "stale set refetched");
        v.verify(&ci_token(&ec(), Algorithm::ES256, "k2", t + 1), t + 1)
            .await
            .unwrap();
        assert_eq!(fetcher.calls(), 3, "failed refresh is not retried at once");
        let st = v.key_status().await;
        assert_eq!(st[0].keys, 2);
        assert_eq!(st[0].fetched_at, Some(refreshed));
        assert_eq!(
            st[0].last_error.as_deref(),
            Some("HTTP 503 from https://ci.example/jwks")
        );

        // An unknown kid during the outage: one attempt per 30 s, then the
        // precise unknown-kid error (from the last good set).
        let t = t + MIN_FETCH_INTERVAL_SECS;
        let e = v
            .verify(&ci_token(&ed(), Algorithm::EdDSA, "k3", t), t)
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::UnknownKeyId { .. }), "{e}");
        assert_eq!(fetcher.calls(), 4);
        let e = v
            .verify(&ci_token(&ed(), Algorithm::EdDSA, "k3", t + 5), t + 5)
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::UnknownKeyId { .. }), "{e}");
        assert_eq!(fetcher.calls(), 4);

        // A garbage document counts as a failed fetch too.
        fetcher.set(Ok(b"<html>oops</html>".to_vec()));
        let t = t + MIN_FETCH_INTERVAL_SECS;
        let e = v
            .verify(&ci_token(&ed(), Algorithm::EdDSA, "k3", t), t)
            .await
            .unwrap_err();
        assert!(matches!(e, TokenError::UnknownKeyId { .. }), "{e}");
        assert_eq!(fetcher.calls(), 5);
        assert!(
            v.key_status().await[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("not JSON")
        );

        // Recovery.
        fetcher.set(jwks_doc(vec![k1, k2, k3]));
        let t = t + MIN_FETCH_INTERVAL_SECS;
        v.verify(&ci_token(&ed(), Algorithm::EdDSA, "k3", t), t)
            .await
            .unwrap();
        assert_eq!(fetcher.calls(), 6);
        assert_eq!(v.key_status().await[0].last_error, None);
    }

    #[tokio::test]
    async fn jwks_url_unavailable_at_first_use() {
        let fetcher = Arc::new(FakeFetcher::new(Err("connection refused".into())));
        let v = url_verifier(&fetcher);
        let tok = ci_token(&rsa(), Algorithm::RS256, "k1", NOW);
        let e = v.verify(&tok, NOW).await.unwrap_err();
        assert_eq!(
            e,
            TokenError::JwksUnavailable {
                issuer: "https://ci.example".into(),
                reason: "connection refused".into()
            }
        );
        assert_eq!(fetcher.calls(), 1);
        let e = v.verify(&tok, NOW + 10).await.unwrap_err();
        assert!(e.to_string().contains("next attempt in 20s"), "{e}");
        assert_eq!(fetcher.calls(), 1);

        fetcher.set(jwks_doc(vec![jwk(&rsa(), Algorithm::RS256, Some("k1"))]));
        v.verify(&tok, NOW + MIN_FETCH_INTERVAL_SECS).await.unwrap();
        assert_eq!(fetcher.calls(), 2);
    }

    #[tokio::test]
    async fn concurrent_unknown_kids_fetch_once() {
        let fetcher = Arc::new(FakeFetcher::new(jwks_doc(vec![jwk(
            &rsa(),
            Algorithm::RS256,
            Some("k1"),
        )])));
        let v = Arc::new(url_verifier(&fetcher));
        v.verify(&ci_token(&rsa(), Algorithm::RS256, "k1", NOW), NOW)
            .await
            .unwrap();
        fetcher.set(jwks_doc(vec![
            jwk(&rsa(), Algorithm::RS256, Some("k1")),
            jwk(&ec(), Algorithm::ES256, Some("k2")),
        ]));
        let t = NOW + MIN_FETCH_INTERVAL_SECS;
        let tok = ci_token(&ec(), Algorithm::ES256, "k2", t);
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (v, tok) = (v.clone(), tok.clone());
            tasks.push(tokio::spawn(async move { v.verify(&tok, t).await }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(fetcher.calls(), 2);
    }

    #[test]
    fn spiffe_ids() {
        assert_eq!(
            spiffe_trust_domain("spiffe://example.org"),
            Ok("example.org")
        );
        assert_eq!(spiffe_trust_domain("spiffe://td/a/b-c/d_e.f"), Ok("td"));
        for bad in [
            "spiffe://",
            "spiffe:///x",
            "spiffe://Ex.org/x",
            "spiffe://td:8080/x",
            "spiffe://td/",
            "spiffe://td//x",
            "spiffe://td/./x",
            "spiffe://td/x?y",
            "spiffe://u@td/x",
        ] {
            assert!(spiffe_trust_domain(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shapes() {
        let m = |v: Value| v.as_object().unwrap().clone();
        assert_eq!(
            detect_shape(GITHUB_ISSUER, &m(json!({})), "x"),
            ClaimShape::GitHub
        );
        assert_eq!(
            detect_shape(
                "https://ghe.example.com/_services/token",
                &m(json!({})),
                "x"
            ),
            ClaimShape::GitHub
        );
        assert_eq!(
            detect_shape(
                "https://other",
                &m(json!({"repository": "a/b", "run_id": "1"})),
                "x"
            ),
            ClaimShape::GitHub
        );
        assert_eq!(
            detect_shape(
                "https://other",
                &m(json!({"project_path": "a/b", "pipeline_id": "1"})),
                "x"
            ),
            ClaimShape::GitLab
        );
        assert_eq!(
            detect_shape("https://other", &m(json!({})), "spiffe://td/x"),
            ClaimShape::Spiffe
        );
        assert_eq!(
            detect_shape("https://other", &m(json!({})), "x"),
            ClaimShape::Generic
        );
    }
}
