//! The project's token-signing keys: the JWKS, fetched and cached, and the
//! signature checks made with them.
//!
//! Supabase signs user access tokens with asymmetric keys (ES256 by
//! default, RS256 possible) and publishes the public halves at
//! `<SUPABASE_URL>/auth/v1/.well-known/jwks.json`; functions also get the
//! same set inline as `SUPABASE_JWKS`. Keys are looked up by the token's
//! `kid`: first in what is known (inline, then the last fetch), then, for an
//! unknown `kid` (a key rotated in), by fetching the JWKS again, at most
//! once per [`REFETCH_COOLDOWN_MS`] so a stream of made-up `kid`s cannot
//! turn into a stream of fetches. A fetched set is kept [`JWKS_TTL_MS`].
//!
//! Signatures are checked with WebCrypto (`crypto.subtle`) on wasm32, so the
//! module carries no elliptic-curve or RSA code. Natively (`cargo test`)
//! there is no WebCrypto: asymmetric tokens are refused there, and the
//! Deno suite (`tests/function/`) covers them with real keys.
//!
//! Only public keys that say what they are count: `kty: EC` with `crv:
//! P-256` verifies ES256 and nothing else, `kty: RSA` RS256 and nothing
//! else; symmetric (`oct`) keys in a JWKS are ignored, so a token can never
//! be HMAC-checked with a public key.

use super::outbound::{HttpCall, Sender};
use super::error::ApiError;
use crate::error::ErrorCode;
use serde_json::Value;
use std::sync::{Arc, Mutex};

/// How long a fetched JWKS is used before it is fetched again (Supabase's
/// endpoint is cached at the edge for 10 minutes).
pub const JWKS_TTL_MS: f64 = 600_000.0;
/// The least time between two fetches caused by an unknown `kid`.
pub const REFETCH_COOLDOWN_MS: f64 = 30_000.0;
/// A JWKS fetch that takes longer than this has failed.
pub const JWKS_FETCH_TIMEOUT_MS: u32 = 5_000;
/// More keys than this in one set is not a signing-key set.
pub const JWKS_KEYS_MAX: usize = 32;

/// A signature algorithm a token may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// HMAC-SHA256 with the project's legacy JWT secret.
    Hs256,
    /// ECDSA P-256 with SHA-256 (Supabase's default signing key).
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
}

impl Algorithm {
    /// The algorithm a JOSE header names; `None` for every other (`none`,
    /// `HS512`, `PS256`, ...), which are all refused.
    pub fn from_header(alg: &str) -> Option<Algorithm> {
        match alg {
            "HS256" => Some(Algorithm::Hs256),
            "ES256" => Some(Algorithm::Es256),
            "RS256" => Some(Algorithm::Rs256),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Es256 => "ES256",
            Algorithm::Rs256 => "RS256",
        }
    }
}

/// One public key of the set.
#[derive(Debug, Clone, PartialEq)]
pub struct PublicKey {
    pub kid: Option<String>,
    /// The only algorithm this key verifies, from its type.
    pub algorithm: Algorithm,
    /// The JWK itself (what WebCrypto imports).
    pub jwk: Value,
}

impl PublicKey {
    /// A usable verification key, or `None` (symmetric, private, unknown
    /// curve, an `alg` that contradicts the type, or meant for encryption).
    fn from_jwk(jwk: &Value) -> Option<PublicKey> {
        let text = |name: &str| jwk.get(name).and_then(Value::as_str);
        let algorithm = match (text("kty")?, text("crv")) {
            ("EC", Some("P-256")) if text("x").is_some() && text("y").is_some() => Algorithm::Es256,
            ("RSA", _) if text("n").is_some() && text("e").is_some() => Algorithm::Rs256,
            _ => return None,
        };
        if jwk.get("d").is_some() || text("use").is_some_and(|usage| usage != "sig") {
            return None;
        }
        if text("alg").is_some_and(|alg| alg != algorithm.name()) {
            return None;
        }
        Some(PublicKey { kid: text("kid").map(str::to_owned), algorithm, jwk: jwk.clone() })
    }
}

/// Parses a JWKS: `{"keys": [...]}` or a bare array. Unusable keys are
/// skipped; a value of another shape is an error.
pub fn parse_jwks(value: &Value) -> Result<Vec<PublicKey>, String> {
    let keys = match value {
        Value::Array(keys) => keys,
        Value::Object(map) => map.get("keys").and_then(Value::as_array).ok_or("a JWKS has a \"keys\" array")?,
        _ => return Err("a JWKS is an object with a \"keys\" array".into()),
    };
    if keys.len() > JWKS_KEYS_MAX {
        return Err(format!("a JWKS of more than {JWKS_KEYS_MAX} keys"));
    }
    Ok(keys.iter().filter_map(PublicKey::from_jwk).collect())
}

/// Where the keys come from, and what is known of them.
#[derive(Debug, Clone)]
pub struct KeyStore {
    /// `SUPABASE_JWKS`, if the function got it.
    inline: Vec<PublicKey>,
    /// The JWKS endpoint; `None` when fetching is off.
    url: Option<String>,
    fetched: Arc<Mutex<Fetched>>,
}

#[derive(Debug, Default)]
struct Fetched {
    keys: Vec<PublicKey>,
    /// When `keys` were fetched (ms since the epoch); `None`: never.
    at_ms: Option<f64>,
    /// When a fetch last failed.
    failed_ms: Option<f64>,
    /// When a fresh set was last fetched again for an unknown `kid`.
    refetched_ms: Option<f64>,
}

/// What looking a key up found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    Found(PublicKey),
    /// No key with this `kid` (and algorithm) is published.
    Unknown,
}

impl KeyStore {
    pub fn new(inline: Vec<PublicKey>, url: Option<String>) -> KeyStore {
        KeyStore { inline, url, fetched: Arc::new(Mutex::new(Fetched::default())) }
    }

    /// Whether asymmetric tokens can be checked at all.
    pub fn is_configured(&self) -> bool {
        !self.inline.is_empty() || self.url.is_some()
    }

    /// The key for a token's `kid` and algorithm, fetching the JWKS when the
    /// cache is empty, stale, or (within the cooldown) lacks the `kid`.
    /// Errors: `network` (503) when the JWKS is needed and cannot be fetched
    /// and nothing is known.
    pub async fn find(
        &self,
        sender: &Sender,
        kid: Option<&str>,
        algorithm: Algorithm,
        now_ms: f64,
    ) -> Result<Lookup, ApiError> {
        if let Some(key) = pick(&self.inline, kid, algorithm) {
            return Ok(Lookup::Found(key));
        }
        let Some(url) = &self.url else { return Ok(Lookup::Unknown) };
        let within = |at: Option<f64>| at.is_some_and(|at| now_ms - at < REFETCH_COOLDOWN_MS);
        let (cached, may_fetch) = {
            let fetched = self.fetched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let fresh = fetched.at_ms.is_some_and(|at| now_ms - at < JWKS_TTL_MS);
            let cached = pick(&fetched.keys, kid, algorithm);
            if let (Some(key), true) = (&cached, fresh) {
                return Ok(Lookup::Found(key.clone()));
            }
            // Stale or never fetched: fetch, unless one just failed. Fresh
            // but without this kid (a key rotated in): fetch again, at most
            // once per cooldown.
            let may_fetch = !within(fetched.failed_ms) && (!fresh || !within(fetched.refetched_ms));
            (cached, may_fetch)
        };
        if !may_fetch {
            return Ok(cached.map_or(Lookup::Unknown, Lookup::Found));
        }
        let result = fetch(sender, url).await;
        let mut fetched = self.fetched.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match result {
            Ok(keys) => {
                if fetched.at_ms.is_some_and(|at| now_ms - at < JWKS_TTL_MS) {
                    fetched.refetched_ms = Some(now_ms);
                }
                let found = pick(&keys, kid, algorithm);
                fetched.keys = keys;
                fetched.at_ms = Some(now_ms);
                Ok(found.map_or(Lookup::Unknown, Lookup::Found))
            }
            // A stale key still verifies what it signed: a JWKS outage does
            // not log everyone out. Without one, the caller cannot be known.
            Err(_) if cached.is_some() => {
                fetched.failed_ms = Some(now_ms);
                Ok(cached.map_or(Lookup::Unknown, Lookup::Found))
            }
            Err(why) => {
                fetched.failed_ms = Some(now_ms);
                Err(ApiError::from_code(
                    ErrorCode::Network,
                    format!("the project's signing keys could not be fetched ({why}); try again"),
                )
                .with_detail("cause", "jwks_unavailable"))
            }
        }
    }
}

/// The key with this `kid` for this algorithm. A token without a `kid` is
/// matched only when exactly one key of its algorithm is published.
fn pick(keys: &[PublicKey], kid: Option<&str>, algorithm: Algorithm) -> Option<PublicKey> {
    let mut candidates = keys.iter().filter(|key| key.algorithm == algorithm);
    match kid {
        Some(kid) => candidates.find(|key| key.kid.as_deref() == Some(kid)).cloned(),
        None => {
            let first = candidates.next()?;
            candidates.next().is_none().then(|| first.clone())
        }
    }
}

async fn fetch(sender: &Sender, url: &str) -> Result<Vec<PublicKey>, String> {
    let call = HttpCall { method: "GET", url: url.to_owned(), headers: vec![("Accept", "application/json".to_owned())], body: None };
    let answer = sender.send(&call, Some(JWKS_FETCH_TIMEOUT_MS)).await.map_err(|failure| format!("{failure:?}"))?;
    if answer.status != 200 {
        return Err(format!("status {}", answer.status));
    }
    let value: Value = serde_json::from_str(&answer.body).map_err(|_| "not JSON".to_owned())?;
    parse_jwks(&value)
}

/// Whether `signature` is `key`'s signature of `data`. `Err` when it could
/// not be checked at all (no WebCrypto, a key WebCrypto refuses).
pub async fn verify_signature(key: &PublicKey, data: &[u8], signature: &[u8]) -> Result<bool, String> {
    #[cfg(target_arch = "wasm32")]
    {
        webcrypto::verify(key, data, signature).await
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = (key, data, signature);
        Err("asymmetric signatures are checked with WebCrypto, which only the wasm build has".into())
    }
}

#[cfg(target_arch = "wasm32")]
mod webcrypto {
    //! `crypto.subtle.importKey` and `verify`, as the runtime provides them.

    use super::{Algorithm, PublicKey};
    use js_sys::{Array, Promise, JSON};
    use std::cell::RefCell;
    use wasm_bindgen::prelude::*;
    use wasm_bindgen_futures::JsFuture;

    #[wasm_bindgen]
    extern "C" {
        type SubtleCrypto;
        #[wasm_bindgen(thread_local_v2, js_namespace = crypto, js_name = subtle)]
        static SUBTLE: SubtleCrypto;
        #[wasm_bindgen(method, catch, js_name = importKey)]
        fn import_key(
            this: &SubtleCrypto,
            format: &str,
            key: &JsValue,
            algorithm: &JsValue,
            extractable: bool,
            usages: &Array,
        ) -> Result<Promise, JsValue>;
        #[wasm_bindgen(method, catch)]
        fn verify(this: &SubtleCrypto, algorithm: &JsValue, key: &JsValue, signature: &[u8], data: &[u8])
            -> Result<Promise, JsValue>;
    }

    /// Imported keys with their JWK: an import is done once per key, and a
    /// request finds its key by comparing JWKs (no serialization per request).
    const IMPORTED_MAX: usize = 64;
    thread_local! {
        static IMPORTED: RefCell<Vec<(serde_json::Value, JsValue)>> = const { RefCell::new(Vec::new()) };
        /// The WebCrypto parameters of ES256 and RS256, built once.
        static PARAMS: RefCell<[Option<JsValue>; 2]> = const { RefCell::new([None, None]) };
    }

    fn algorithm(key: &PublicKey) -> Result<JsValue, String> {
        let (slot, params) = match key.algorithm {
            Algorithm::Es256 => (0, r#"{"name":"ECDSA","namedCurve":"P-256","hash":"SHA-256"}"#),
            Algorithm::Rs256 => (1, r#"{"name":"RSASSA-PKCS1-v1_5","hash":"SHA-256"}"#),
            Algorithm::Hs256 => return Err("HS256 is not a public-key algorithm".into()),
        };
        PARAMS.with(|cache| {
            let mut cache = cache.borrow_mut();
            if let Some(params) = &cache[slot] {
                return Ok(params.clone());
            }
            let parsed = JSON::parse(params).map_err(|_| "algorithm".to_owned())?;
            cache[slot] = Some(parsed.clone());
            Ok(parsed)
        })
    }

    fn message(error: JsValue) -> String {
        js_sys::Error::from(error).message().into()
    }

    async fn import(key: &PublicKey) -> Result<JsValue, String> {
        let cached = IMPORTED.with(|cache| cache.borrow().iter().find(|(jwk, _)| *jwk == key.jwk).map(|(_, imported)| imported.clone()));
        if let Some(imported) = cached {
            return Ok(imported);
        }
        // Only the public members: WebCrypto checks `key_ops`/`use` against
        // the usages asked for, and nothing else is needed.
        let public: serde_json::Map<String, serde_json::Value> = key
            .jwk
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(name, _)| matches!(name.as_str(), "kty" | "crv" | "x" | "y" | "n" | "e"))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        let jwk = JSON::parse(&serde_json::Value::Object(public).to_string()).map_err(|_| "jwk".to_owned())?;
        let usages = Array::of1(&JsValue::from_str("verify"));
        let promise = SUBTLE.with(|subtle| subtle.import_key("jwk", &jwk, &algorithm(key)?, false, &usages)).map_err(message)?;
        let imported = JsFuture::from(promise).await.map_err(message)?;
        IMPORTED.with(|cache| {
            let mut cache = cache.borrow_mut();
            if cache.len() >= IMPORTED_MAX {
                cache.clear();
            }
            cache.push((key.jwk.clone(), imported.clone()));
        });
        Ok(imported)
    }

    pub async fn verify(key: &PublicKey, data: &[u8], signature: &[u8]) -> Result<bool, String> {
        let imported = import(key).await?;
        let algorithm = algorithm(key)?;
        let promise = SUBTLE.with(|subtle| subtle.verify(&algorithm, &imported, signature, data)).map_err(message)?;
        let valid = JsFuture::from(promise).await.map_err(message)?;
        Ok(valid.as_bool() == Some(true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ec(kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "x": "eA", "y": "eQ", "kid": kid, "alg": "ES256", "use": "sig"})
    }

    #[test]
    fn only_public_signing_keys_of_a_known_type_count() {
        let rsa = json!({"kty": "RSA", "n": "bg", "e": "AQAB", "kid": "r1"});
        let set = json!({"keys": [
            ec("e1"), rsa,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "o1"},
            {"kty": "EC", "crv": "P-384", "x": "eA", "y": "eQ", "kid": "p384"},
            {"kty": "EC", "crv": "P-256", "x": "eA", "y": "eQ", "d": "ZA", "kid": "private"},
            {"kty": "EC", "crv": "P-256", "x": "eA", "y": "eQ", "kid": "lying", "alg": "HS256"},
            {"kty": "EC", "crv": "P-256", "x": "eA", "y": "eQ", "kid": "enc", "use": "enc"},
        ]});
        let keys = parse_jwks(&set).expect("a set");
        let kids: Vec<_> = keys.iter().map(|key| (key.kid.clone().unwrap_or_default(), key.algorithm)).collect();
        assert_eq!(kids, vec![("e1".to_owned(), Algorithm::Es256), ("r1".to_owned(), Algorithm::Rs256)]);
        assert_eq!(parse_jwks(&json!([ec("bare")])).expect("bare array").len(), 1);
        assert!(parse_jwks(&json!("keys")).is_err());
        assert!(parse_jwks(&json!({"nokeys": []})).is_err());
    }

    #[test]
    fn a_kid_picks_its_key_and_only_for_its_algorithm() {
        let keys = parse_jwks(&json!([ec("a"), ec("b")])).expect("set");
        assert_eq!(pick(&keys, Some("b"), Algorithm::Es256).and_then(|key| key.kid), Some("b".into()));
        assert_eq!(pick(&keys, Some("b"), Algorithm::Rs256), None, "an EC key never verifies RS256");
        assert_eq!(pick(&keys, Some("c"), Algorithm::Es256), None);
        assert_eq!(pick(&keys, None, Algorithm::Es256), None, "without a kid, two candidates are ambiguous");
        let one = parse_jwks(&json!([ec("only")])).expect("set");
        assert!(pick(&one, None, Algorithm::Es256).is_some());
    }

    #[tokio::test]
    async fn an_unreachable_jwks_is_a_503_unless_a_key_is_known() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let url = format!("http://127.0.0.1:{port}/auth/v1/.well-known/jwks.json");
        let sender = Sender::new().expect("client");
        let store = KeyStore::new(Vec::new(), Some(url.clone()));
        let error = store.find(&sender, Some("k"), Algorithm::Es256, 1e12).await.expect_err("nothing known");
        assert_eq!((error.status, error.code), (503, "network"));
        // Within the cooldown after a failure, no second fetch: still a 503
        // would be wrong (nothing was tried), so the key is unknown (401).
        assert_eq!(store.find(&sender, Some("k"), Algorithm::Es256, 1e12 + 1.0).await, Ok(Lookup::Unknown));
        // After it, fetched again (and failing again, 503).
        let again = store.find(&sender, Some("k"), Algorithm::Es256, 1e12 + REFETCH_COOLDOWN_MS).await;
        assert_eq!(again.map_err(|error| error.status), Err(503));
        // An inline key is found without any fetch.
        let inline = KeyStore::new(parse_jwks(&json!([ec("k")])).expect("set"), Some(url));
        assert!(matches!(inline.find(&sender, Some("k"), Algorithm::Es256, 1e12).await, Ok(Lookup::Found(_))));
    }
}
