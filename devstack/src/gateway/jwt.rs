//! JWT verification as PostgREST v12 does it (`Auth.hs`, with the `jose`
//! library): `jwt-secret` is an HMAC secret, or a JWK / JWK set (JSON), as
//! Supabase configures PostgREST with its project's signing keys (the
//! legacy HS256 secret and the asymmetric keys' public halves); `exp`/`nbf`/
//! `iat` checked with a 30 second clock skew, the role taken from
//! `jwt-role-claim-key`. The signature checks themselves are devstack's one
//! JWT implementation, [`crate::keys`].

use serde_json::{Map, Value};
use std::sync::{Arc, RwLock};

use super::config::{ClaimPathStep, Config};
use super::error::ApiError;
use crate::keys::{self, KeySet};

/// PostgREST's `allowedSkew`: 30 seconds either way.
pub const CLOCK_SKEW_SECONDS: i64 = 30;

/// Who the request runs as.
#[derive(Debug, Clone)]
pub struct AuthResult {
    /// The database role (`SET ROLE`).
    pub role: String,
    /// The token's claims with `role` set to [`AuthResult::role`]; this is
    /// what `request.jwt.claims` holds.
    pub claims: Map<String, Value>,
}

/// The token of an `Authorization: Bearer <token>` header. Any other scheme
/// is ignored (as Wai's `extractBearerAuth` does): the request is anonymous.
pub fn bearer_token(authorization: Option<&[u8]>) -> &[u8] {
    let Some(value) = authorization else { return b"" };
    let split = value.iter().position(|b| b.is_ascii_whitespace()).unwrap_or(value.len());
    let (scheme, rest) = value.split_at(split);
    if scheme.eq_ignore_ascii_case(b"bearer") {
        let start = rest.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(rest.len());
        &rest[start..]
    } else {
        b""
    }
}

/// Verifies `token` (empty = anonymous) at `now_seconds` (Unix time).
pub fn authenticate(config: &Config, token: &[u8], now_seconds: i64) -> Result<AuthResult, ApiError> {
    let claims = if token.is_empty() {
        Map::new()
    } else {
        let secret = config.jwt_secret.as_deref().ok_or_else(ApiError::jwt_secret_missing)?;
        verify(&key_set(secret), token, now_seconds, config.jwt_aud.as_deref())
            .map_err(|e| ApiError::jwt_invalid(&e.to_string()))?
    };
    let role = match walk(&claims, &config.jwt_role_claim_key) {
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
        None => config.db_anon_role.clone().ok_or_else(ApiError::jwt_required)?,
    };
    let mut claims = claims;
    claims.insert("role".to_string(), Value::String(role.clone()));
    Ok(AuthResult { role, claims })
}

fn walk<'a>(claims: &'a Map<String, Value>, path: &[ClaimPathStep]) -> Option<&'a Value> {
    let (first, rest) = path.split_first()?;
    let mut current = match first {
        ClaimPathStep::Key(k) => claims.get(k)?,
        ClaimPathStep::Index(_) => return None,
    };
    for step in rest {
        current = match (step, current) {
            (ClaimPathStep::Key(k), Value::Object(o)) => o.get(k)?,
            (ClaimPathStep::Index(i), Value::Array(a)) => a.get(*i)?,
            _ => return None,
        };
    }
    Some(current)
}

/// The keys of `jwt-secret`, parsed once per distinct secret.
fn key_set(secret: &[u8]) -> Arc<KeySet> {
    static PARSED: RwLock<Option<(Vec<u8>, Arc<KeySet>)>> = RwLock::new(None);
    if let Some((known, keys)) = PARSED.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        if known == secret {
            return keys.clone();
        }
    }
    let keys = Arc::new(KeySet::from_postgrest_secret(secret));
    *PARSED.write().unwrap_or_else(|e| e.into_inner()) = Some((secret.to_vec(), keys.clone()));
    keys
}

/// The claims, or why the token is refused (`Display`: PostgREST's message).
fn verify(keys: &KeySet, token: &[u8], now: i64, audience: Option<&str>) -> Result<Map<String, Value>, keys::JwtError> {
    let claims = keys::verify_signature(keys, token)?;
    keys::check_claims(&claims, now, CLOCK_SKEW_SECONDS, audience)?;
    Ok(claims)
}

/// Signs `claims` with HS256 (for tests and for printing local keys).
pub fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    keys::sign_hs256(secret, claims)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;
    use serde_json::json;

    const SECRET: &[u8] = b"reallyreallyreallyreallyverysafe";

    fn config() -> Config {
        let mut c = Config::new("postgresql://");
        c.jwt_secret = Some(SECRET.to_vec());
        c.db_anon_role = Some("anon".into());
        c
    }

    #[test]
    fn accepts_a_valid_token_and_takes_its_role() {
        let t = sign_hs256(SECRET, &json!({"role": "authenticated", "sub": "x", "exp": 2_000}));
        let a = authenticate(&config(), t.as_bytes(), 1_000).unwrap();
        assert_eq!(a.role, "authenticated");
        assert_eq!(a.claims["sub"], "x");
    }

    #[test]
    fn no_token_is_anon() {
        let a = authenticate(&config(), b"", 0).unwrap();
        assert_eq!(a.role, "anon");
        assert_eq!(Value::Object(a.claims), json!({"role": "anon"}));
    }

    #[test]
    fn expiry_has_thirty_seconds_of_skew() {
        let t = sign_hs256(SECRET, &json!({"role": "r", "exp": 1_000}));
        assert!(authenticate(&config(), t.as_bytes(), 1_030).is_ok());
        let e = authenticate(&config(), t.as_bytes(), 1_031).unwrap_err();
        assert_eq!(e.body["message"], "JWT expired");
    }

    #[test]
    fn rejects_bad_signature_and_alg_none() {
        let t = sign_hs256(b"another-secret-another-secret-xx", &json!({"role": "r"}));
        let e = authenticate(&config(), t.as_bytes(), 0).unwrap_err();
        assert_eq!(e.body["message"], "JWSError JWSInvalidSignature");
        let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let none = format!(
            "{}.{}.",
            engine.encode(br#"{"alg":"none"}"#),
            engine.encode(br#"{"role":"postgres"}"#)
        );
        assert_eq!(authenticate(&config(), none.as_bytes(), 0).unwrap_err().code(), Some("PGRST301"));
    }

    fn jwks_config(signing: &keys::SigningKey) -> Config {
        let mut c = config();
        c.jwt_secret = Some(keys::KeySet::local(signing).to_private_jwks().to_string().into_bytes());
        c
    }

    #[test]
    fn with_a_jwk_set_es256_user_tokens_and_hs256_keys_are_accepted() {
        let signing = keys::SigningKey::generate();
        let c = jwks_config(&signing);
        let now = chrono::Utc::now().timestamp();
        let user = signing.sign(&keys::user_claims("i", "u", "e", 60));
        let a = authenticate(&c, user.as_bytes(), now).unwrap();
        assert_eq!(a.role, "authenticated");
        assert_eq!(a.claims["sub"], "u");
        assert_eq!(authenticate(&c, keys::service_role_key().as_bytes(), now).unwrap().role, "service_role");
    }

    #[test]
    fn with_a_jwk_set_other_keys_and_kids_are_refused() {
        let signing = keys::SigningKey::generate();
        let c = jwks_config(&signing);
        let now = chrono::Utc::now().timestamp();
        let stranger = keys::SigningKey::generate().sign(&keys::user_claims("i", "u", "e", 60));
        let e = authenticate(&c, stranger.as_bytes(), now).unwrap_err();
        assert_eq!(e.code(), Some("PGRST301"));
        assert_eq!(e.body["message"], "No suitable key or wrong key type");
        let expired = signing.sign(&keys::user_claims("i", "u", "e", -3600));
        assert_eq!(authenticate(&c, expired.as_bytes(), now).unwrap_err().body["message"], "JWT expired");
    }

    #[test]
    fn extracts_bearer_tokens() {
        assert_eq!(bearer_token(Some(b"Bearer abc")), b"abc");
        assert_eq!(bearer_token(Some(b"bearer  abc")), b"abc");
        assert_eq!(bearer_token(Some(b"Basic abc")), b"");
        assert_eq!(bearer_token(None), b"");
    }
}
