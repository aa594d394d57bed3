//! JSON Web Key Sets for workload-identity token verification: parsing a
//! JWKS document into verification keys, and a per-issuer cache for
//! `jwks_url` sources.
//!
//! Only public signature keys are kept: RSA (2048 to 16384 bits), EC P-256 /
//! P-384 and OKP Ed25519. Symmetric (`kty: oct`) keys are never used, so an
//! HMAC key can never end up verifying a token, and keys marked for
//! encryption (`use: enc`, `key_ops` without `verify`) are skipped. Skipped
//! keys are remembered with their reason so an "unknown key id" error can say
//! why a key that is in the document was not usable.
//!
//! The cache ([`JwksCache`]) fetches through a [`JwksFetcher`] (the daemon's
//! HTTPS client, [`HttpsFetcher`]; tests use a fake). Timing uses the
//! caller's unix time (the `now` passed to `Verifier::verify`):
//! - the first use fetches;
//! - a set older than [`REFRESH_AFTER_SECS`] is refetched on its next use;
//! - a token whose key id is not in the set (or, without a key id, for which
//!   the set has no usable key) triggers a refetch, but fetch attempts of any
//!   kind are at least [`MIN_FETCH_INTERVAL_SECS`] apart, so a stream of
//!   tokens with made-up key ids cannot hammer the issuer;
//! - when a refetch fails (network, HTTP status, unparsable or keyless
//!   document) the last good set keeps being served, and the failure is
//!   logged and reported by [`JwksCache::status`].

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;

/// A set is refetched when it is older than this (seconds).
pub const REFRESH_AFTER_SECS: u64 = 600;
/// Fetch attempts (scheduled, on an unknown key id, or retries after a
/// failure) are at least this far apart (seconds).
pub const MIN_FETCH_INTERVAL_SECS: u64 = 30;
/// Documents with more keys than this are refused.
pub const MAX_KEYS: usize = 256;

const MIN_RSA_BITS: usize = 2048;
const MAX_RSA_BITS: usize = 16384;

/// Fetches a JWKS document. Implemented by the daemon over HTTPS
/// ([`HttpsFetcher`]) and by tests with canned answers. The error is a human
/// reason ("HTTP 503 from https://…", "timed out after 10s").
pub trait JwksFetcher: Send + Sync {
    fn fetch(
        &self,
        url: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>>;
}

/// [`JwksFetcher`] over the daemon's own HTTPS client
/// ([`crate::http_client::request`]); its socket carries `mark` like every
/// other socket the daemon opens. Only `https://` URLs and `200` answers
/// are accepted; redirects are not followed.
pub struct HttpsFetcher {
    pub mark: u32,
    pub timeout: Duration,
}

impl JwksFetcher for HttpsFetcher {
    fn fetch(
        &self,
        url: &str,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>> + Send + '_>> {
        let url = url.to_string();
        Box::pin(async move {
            if !url.starts_with("https://") {
                return Err(format!(
                    "refusing to fetch {url}: only https:// JWKS URLs are allowed"
                ));
            }
            let resp = crate::http_client::request("GET", &url, None, b"", self.mark, self.timeout)
                .await
                .map_err(|e| format!("fetching {url}: {e}"))?;
            if resp.status != 200 {
                return Err(format!("HTTP {} from {url}", resp.status));
            }
            Ok(resp.body)
        })
    }
}

/// The kind of a usable verification key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Rsa { bits: usize },
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyType {
    /// Whether a token signed with `alg` can be verified by a key of this
    /// type. HMAC algorithms fit no key type.
    pub fn fits(self, alg: Algorithm) -> bool {
        use Algorithm::*;
        match self {
            KeyType::Rsa { .. } => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyType::EcP256 => alg == ES256,
            KeyType::EcP384 => alg == ES384,
            KeyType::Ed25519 => alg == EdDSA,
        }
    }
}

impl std::fmt::Display for KeyType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeyType::Rsa { bits } => write!(f, "an RSA-{bits} key"),
            KeyType::EcP256 => f.write_str("an EC P-256 key"),
            KeyType::EcP384 => f.write_str("an EC P-384 key"),
            KeyType::Ed25519 => f.write_str("an Ed25519 key"),
        }
    }
}

/// One usable public key of a set.
#[derive(Clone)]
pub struct JwkKey {
    /// `kid`, when the JWK has one.
    pub kid: Option<String>,
    pub key_type: KeyType,
    /// The JWK's own `alg`, when it names one: the key is then only used
    /// with exactly that algorithm.
    pub alg: Option<Algorithm>,
    pub(crate) key: DecodingKey,
}

impl JwkKey {
    /// Whether a token signed with `alg` may be verified by this key.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.key_type.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }

    /// The key id for messages ("(no kid)" when absent).
    pub fn label(&self) -> String {
        match &self.kid {
            Some(k) => format!("{:?}", clip(k)),
            None => "(no kid)".to_string(),
        }
    }

    fn describe(&self) -> String {
        match self.alg {
            Some(a) => format!("{} restricted to {a:?}", self.key_type),
            None => self.key_type.to_string(),
        }
    }
}

impl std::fmt::Debug for JwkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwkKey")
            .field("kid", &self.kid)
            .field("key_type", &self.key_type)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

/// Why [`KeySet::select`] found no key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyLookupError {
    /// The token's `kid` is in no usable key of the set.
    UnknownKid { known: Vec<String> },
    /// The token has no `kid`, and the set does not have exactly one key
    /// usable with the token's algorithm.
    NoKid { candidates: usize },
    /// The key named by `kid` cannot verify the token's algorithm.
    Mismatch { kid: String, key: String },
}

/// The usable keys of one JWKS document.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    pub keys: Vec<JwkKey>,
    /// Keys that were in the document but are not used, with the reason.
    pub skipped: Vec<String>,
}

impl KeySet {
    /// Parses a JWKS document (`{"keys": [...]}`). Fails when the document
    /// is not a key set or has no usable key.
    pub fn parse(bytes: &[u8]) -> Result<KeySet, String> {
        let doc: Value =
            serde_json::from_slice(bytes).map_err(|e| format!("JWKS is not JSON: {e}"))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or("JWKS has no \"keys\" array")?;
        if keys.len() > MAX_KEYS {
            return Err(format!(
                "JWKS has {} keys, more than the {MAX_KEYS} accepted",
                keys.len()
            ));
        }
        let mut set = KeySet::default();
        for (i, jwk) in keys.iter().enumerate() {
            match parse_jwk(jwk) {
                Ok(k) => set.keys.push(k),
                Err(why) => {
                    let name = match jwk.get("kid").and_then(Value::as_str) {
                        Some(kid) => format!("key {:?}", clip(kid)),
                        None => format!("key #{i}"),
                    };
                    set.skipped.push(format!("{name}: {why}"));
                }
            }
        }
        if set.keys.is_empty() {
            let mut msg = "JWKS has no usable signature key".to_string();
            if !set.skipped.is_empty() {
                msg.push_str(&format!(" (skipped {})", set.skipped.join("; ")));
            }
            return Err(msg);
        }
        Ok(set)
    }

    /// Picks the key for a token: by `kid` when the token has one (the key
    /// must then accept `alg`), otherwise the one key accepting `alg`.
    pub fn select(&self, kid: Option<&str>, alg: Algorithm) -> Result<&JwkKey, KeyLookupError> {
        match kid {
            Some(kid) => {
                let mut named = self
                    .keys
                    .iter()
                    .filter(|k| k.kid.as_deref() == Some(kid))
                    .peekable();
                let first = named
                    .peek()
                    .copied()
                    .ok_or_else(|| KeyLookupError::UnknownKid { known: self.kids() })?;
                // Duplicate kids (seen during rotations) are resolved by type.
                named
                    .find(|k| k.accepts(alg))
                    .ok_or(KeyLookupError::Mismatch {
                        kid: kid.to_string(),
                        key: first.describe(),
                    })
            }
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.accepts(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Ok(k),
                    (None, _) => Err(KeyLookupError::NoKid { candidates: 0 }),
                    (Some(_), Some(_)) => Err(KeyLookupError::NoKid {
                        candidates: 2 + fitting.count(),
                    }),
                }
            }
        }
    }

    /// Key ids of the usable keys, for messages.
    pub fn kids(&self) -> Vec<String> {
        self.keys.iter().map(JwkKey::label).collect()
    }
}

fn b64(field: &str, v: &Value) -> Result<Vec<u8>, String> {
    let s = v
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| format!("no \"{field}\" string"))?;
    // RFC 7518: base64url without padding; tolerate padding some
    // generators emit.
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|e| format!("\"{field}\" is not base64url: {e}"))
}

fn parse_jwk(v: &Value) -> Result<JwkKey, String> {
    if !v.is_object() {
        return Err("not a JSON object".into());
    }
    let kid = match v.get("kid") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err("\"kid\" is not a string".into()),
    };
    if let Some(u) = v.get("use")
        && u.as_str() != Some("sig")
    {
        return Err(format!("\"use\" is {u}, not \"sig\""));
    }
    if let Some(ops) = v.get("key_ops") {
        let verify = ops
            .as_array()
            .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
        if !verify {
            return Err("\"key_ops\" does not include \"verify\"".into());
        }
    }
    let alg = match v.get("alg") {
        None | Some(Value::Null) => None,
        Some(Value::String(a)) => match a.parse::<Algorithm>() {
            Ok(alg) if alg.family() != jsonwebtoken::AlgorithmFamily::Hmac => Some(alg),
            _ => {
                return Err(format!(
                    "\"alg\" {a:?} is not a supported signature algorithm"
                ));
            }
        },
        Some(_) => return Err("\"alg\" is not a string".into()),
    };
    let kty = v.get("kty").and_then(Value::as_str).ok_or("no \"kty\"")?;
    let (key_type, key) = match kty {
        "RSA" => {
            let n = b64("n", v)?;
            let e = b64("e", v)?;
            let n = strip_zeros(&n);
            let e = strip_zeros(&e);
            let bits = bit_len(n);
            if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                return Err(format!(
                    "RSA modulus of {bits} bits (accepted: {MIN_RSA_BITS} to {MAX_RSA_BITS})"
                ));
            }
            // e is 65537 in practice; anything even, 1, or longer than
            // 32 bits is malformed or hostile.
            if e.is_empty() || e.len() > 4 || e[e.len() - 1] & 1 == 0 || e == [1] {
                return Err("RSA public exponent is invalid".into());
            }
            (
                KeyType::Rsa { bits },
                DecodingKey::from_rsa_raw_components(n, e),
            )
        }
        "EC" => {
            let crv = v
                .get("crv")
                .and_then(Value::as_str)
                .ok_or("EC key without \"crv\"")?;
            let (kt, len, alg) = match crv {
                "P-256" => (KeyType::EcP256, 32, Algorithm::ES256),
                "P-384" => (KeyType::EcP384, 48, Algorithm::ES384),
                other => return Err(format!("EC curve {other:?} is not supported")),
            };
            let x = b64("x", v)?;
            let y = b64("y", v)?;
            if x.len() != len || y.len() != len {
                return Err(format!("{crv} coordinates must be {len} bytes"));
            }
            let x = URL_SAFE_NO_PAD.encode(x);
            let y = URL_SAFE_NO_PAD.encode(y);
            let key =
                DecodingKey::from_ec_components(&x, &y).map_err(|e| format!("EC key: {e}"))?;
            check_usable(&key, alg)?;
            (kt, key)
        }
        "OKP" => {
            let crv = v
                .get("crv")
                .and_then(Value::as_str)
                .ok_or("OKP key without \"crv\"")?;
            if crv != "Ed25519" {
                return Err(format!("OKP curve {crv:?} is not supported"));
            }
            let x = b64("x", v)?;
            if x.len() != 32 {
                return Err("Ed25519 key must be 32 bytes".into());
            }
            let key = DecodingKey::from_ed_components(&URL_SAFE_NO_PAD.encode(x))
                .map_err(|e| format!("Ed25519 key: {e}"))?;
            check_usable(&key, Algorithm::EdDSA)?;
            (KeyType::Ed25519, key)
        }
        "oct" => {
            return Err(
                "symmetric key (kty \"oct\") ignored: HMAC tokens are never accepted".into(),
            );
        }
        other => return Err(format!("key type {other:?} is not supported")),
    };
    if let Some(a) = alg
        && !key_type.fits(a)
    {
        return Err(format!("\"alg\" {a:?} does not fit {key_type}"));
    }
    Ok(JwkKey {
        kid,
        key_type,
        alg,
        key,
    })
}

/// Builds the backend's verifier once, so a point that is not on the curve
/// is refused when the set is loaded rather than on every token.
fn check_usable(key: &DecodingKey, alg: Algorithm) -> Result<(), String> {
    let provider = jsonwebtoken::crypto::CryptoProvider::try_get_default()
        .ok_or("no jsonwebtoken crypto provider (build feature missing)")?;
    (provider.verifier_factory)(&alg, key)
        .map(|_| ())
        .map_err(|e| format!("invalid public key: {e}"))
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[first..]
}

fn bit_len(b: &[u8]) -> usize {
    match b.first() {
        Some(&top) => b.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    }
}

/// Shortens attacker-supplied strings before they go into messages.
pub(crate) fn clip(s: &str) -> &str {
    const MAX: usize = 128;
    if s.len() <= MAX {
        return s;
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Why a key set is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Normal use: fetch when there is no set yet or it is stale.
    Current,
    /// The token's key is not in the set: refetch (rate-limited).
    UnknownKey,
}

/// What [`JwksCache::status`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksStatus {
    pub url: String,
    /// Usable keys in the set being served (0 before the first success).
    pub keys: usize,
    /// Unix time of the last successful fetch.
    pub fetched_at: Option<u64>,
    /// Unix time of the last fetch attempt.
    pub last_attempt: Option<u64>,
    /// Why the last attempt failed, when it did.
    pub last_error: Option<String>,
    /// Fetch attempts so far.
    pub fetches: u64,
}

#[derive(Default)]
struct CacheState {
    set: Option<Arc<KeySet>>,
    fetched_at: Option<u64>,
    last_attempt: Option<u64>,
    last_error: Option<String>,
    fetches: u64,
}

/// The key set of one `jwks_url`, fetched on demand and refreshed as
/// described in the module documentation. One fetch at a time: concurrent
/// callers wait for it and then use its result.
pub struct JwksCache {
    url: String,
    fetcher: Arc<dyn JwksFetcher>,
    state: tokio::sync::Mutex<CacheState>,
}

impl JwksCache {
    pub fn new(url: impl Into<String>, fetcher: Arc<dyn JwksFetcher>) -> JwksCache {
        JwksCache {
            url: url.into(),
            fetcher,
            state: tokio::sync::Mutex::new(CacheState::default()),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The set to verify with at unix time `now`, fetching first when
    /// `want` and the timers call for it. Errors only when there has never
    /// been a good set; the reason names the URL.
    pub async fn get(&self, now: u64, want: Want) -> Result<Arc<KeySet>, String> {
        let mut st = self.state.lock().await;
        // A clock that went backwards counts as "long ago".
        let since = |t: Option<u64>| t.map(|t| now.checked_sub(t).unwrap_or(u64::MAX));
        let due = match (&st.set, want) {
            (None, _) | (Some(_), Want::UnknownKey) => true,
            (Some(_), Want::Current) => {
                since(st.fetched_at).is_none_or(|age| age >= REFRESH_AFTER_SECS)
            }
        };
        let allowed = since(st.last_attempt).is_none_or(|age| age >= MIN_FETCH_INTERVAL_SECS);
        if due && allowed {
            st.last_attempt = Some(now);
            st.fetches += 1;
            let result = match self.fetcher.fetch(&self.url).await {
                Ok(body) => KeySet::parse(&body).map_err(|e| format!("{}: {e}", self.url)),
                Err(e) => Err(e),
            };
            match result {
                Ok(set) => {
                    tracing::debug!(url = %self.url, keys = set.keys.len(), skipped = set.skipped.len(), "JWKS fetched");
                    st.set = Some(Arc::new(set));
                    st.fetched_at = Some(now);
                    st.last_error = None;
                }
                Err(e) => {
                    if st.set.is_some() {
                        tracing::warn!(url = %self.url, error = %e, "JWKS refresh failed; keeping the last good key set");
                    } else {
                        tracing::warn!(url = %self.url, error = %e, "JWKS fetch failed");
                    }
                    st.last_error = Some(e);
                }
            }
        }
        match &st.set {
            Some(set) => Ok(set.clone()),
            None => {
                let why = st
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "not fetched yet".into());
                let wait = st
                    .last_attempt
                    .map(|t| (t + MIN_FETCH_INTERVAL_SECS).saturating_sub(now))
                    .unwrap_or(0);
                if wait > 0 && st.last_attempt != Some(now) {
                    Err(format!("{why} (next attempt in {wait}s)"))
                } else {
                    Err(why)
                }
            }
        }
    }

    pub async fn status(&self) -> JwksStatus {
        let st = self.state.lock().await;
        JwksStatus {
            url: self.url.clone(),
            keys: st.set.as_ref().map_or(0, |s| s.keys.len()),
            fetched_at: st.fetched_at,
            last_attempt: st.last_attempt,
            last_error: st.last_error.clone(),
            fetches: st.fetches,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rsa_jwk(kid: &str) -> Value {
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!(
            "../../tests/fixtures/identity/rsa_private.pem"
        ))
        .unwrap();
        let mut v = serde_json::to_value(
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap(),
        )
        .unwrap();
        v["kid"] = json!(kid);
        v
    }

    #[test]
    fn parses_and_skips_with_reasons() {
        let doc = json!({"keys": [
            rsa_jwk("good"),
            {"kty": "oct", "kid": "h", "k": "c2VjcmV0"},
            {"kty": "RSA", "kid": "small", "n": URL_SAFE_NO_PAD.encode([0xffu8; 128]), "e": "AQAB"},
            {"kty": "EC", "kid": "k1", "crv": "secp256k1", "x": "AA", "y": "AA"},
            {"kty": "EC", "kid": "offcurve", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])},
            {"kty": "OKP", "kid": "short", "crv": "Ed25519", "x": "AAAA"},
            {"kty": "RSA", "kid": "enc", "use": "enc", "n": "AA", "e": "AQAB"},
            {"kty": "RSA", "kid": "hs", "alg": "HS256", "n": "AA", "e": "AQAB"},
        ]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(set.keys.len(), 1);
        assert_eq!(set.keys[0].key_type, KeyType::Rsa { bits: 2048 });
        let skipped = set.skipped.join("\n");
        for needle in [
            "key \"h\": symmetric key",
            "key \"small\": RSA modulus of 1024 bits",
            "key \"k1\": EC curve \"secp256k1\"",
            "key \"offcurve\": invalid public key",
            "key \"short\": Ed25519 key must be 32 bytes",
            "key \"enc\": \"use\" is \"enc\"",
            "key \"hs\": \"alg\" \"HS256\"",
        ] {
            assert!(skipped.contains(needle), "{needle:?} not in {skipped}");
        }
    }

    #[test]
    fn refuses_documents_without_usable_keys() {
        assert!(KeySet::parse(b"nope").unwrap_err().contains("not JSON"));
        assert!(
            KeySet::parse(b"{}")
                .unwrap_err()
                .contains("no \"keys\" array")
        );
        let e = KeySet::parse(br#"{"keys":[{"kty":"oct","k":"AA"}]}"#).unwrap_err();
        assert!(
            e.contains("no usable signature key") && e.contains("symmetric"),
            "{e}"
        );
    }

    #[test]
    fn select_by_kid_and_without() {
        let doc = json!({"keys": [rsa_jwk("a"), rsa_jwk("b")]});
        let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
        assert_eq!(
            set.select(Some("b"), Algorithm::RS256)
                .unwrap()
                .kid
                .as_deref(),
            Some("b")
        );
        assert_eq!(
            set.select(Some("c"), Algorithm::RS256).unwrap_err(),
            KeyLookupError::UnknownKid {
                known: vec!["\"a\"".into(), "\"b\"".into()]
            }
        );
        assert!(matches!(
            set.select(Some("a"), Algorithm::ES256).unwrap_err(),
            KeyLookupError::Mismatch { .. }
        ));
        assert_eq!(
            set.select(None, Algorithm::RS256).unwrap_err(),
            KeyLookupError::NoKid { candidates: 2 }
        );
        let one = KeySet::parse(json!({"keys": [rsa_jwk("a")]}).to_string().as_bytes()).unwrap();
        assert!(one.select(None, Algorithm::RS256).is_ok());
        assert_eq!(
            one.select(None, Algorithm::EdDSA).unwrap_err(),
            KeyLookupError::NoKid { candidates: 0 }
        );
    }
}
