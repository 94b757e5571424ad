//! JWT verification as PostgREST v12 does it (`Auth.hs`, with the `jose`
//! library): HMAC-SHA2 with the configured secret, `exp`/`nbf`/`iat` checked
//! with a 30 second clock skew, the role taken from `jwt-role-claim-key`.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};

use super::config::{ClaimPathStep, Config};
use super::error::ApiError;

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
        verify(secret, token, now_seconds, config.jwt_aud.as_deref()).map_err(|m| ApiError::jwt_invalid(&m))?
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

fn b64(part: &[u8]) -> Option<Vec<u8>> {
    let trimmed: &[u8] = {
        let mut end = part.len();
        while end > 0 && part[end - 1] == b'=' {
            end -= 1;
        }
        &part[..end]
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(trimmed).ok()
}

/// Returns the claims, or the message PostgREST (jose) gives for the failure.
fn verify(secret: &[u8], token: &[u8], now: i64, audience: Option<&str>) -> Result<Map<String, Value>, String> {
    let parts: Vec<&[u8]> = token.split(|b| *b == b'.').collect();
    if parts.len() != 3 {
        return Err(format!(
            "JWSError (CompactDecodeError Invalid number of parts: Expected 3 parts; got {})",
            parts.len()
        ));
    }
    let header: Value = b64(parts[0])
        .and_then(|h| serde_json::from_slice(&h).ok())
        .ok_or_else(|| "JWSError (CompactDecodeError Invalid JSON in the protected header)".to_string())?;
    let alg = header.get("alg").and_then(Value::as_str).unwrap_or("");
    let signing_input_len = parts[0].len() + 1 + parts[1].len();
    let signing_input = &token[..signing_input_len];
    let signature = b64(parts[2]).ok_or_else(|| "JWSError JWSInvalidSignature".to_string())?;
    let valid = match alg {
        "HS256" => hmac_ok::<Hmac<sha2::Sha256>>(secret, signing_input, &signature),
        "HS384" => hmac_ok::<Hmac<sha2::Sha384>>(secret, signing_input, &signature),
        "HS512" => hmac_ok::<Hmac<sha2::Sha512>>(secret, signing_input, &signature),
        // `none` is not an accepted algorithm: no signature is left to check.
        "none" => return Err("JWSError JWSNoSignatures".into()),
        _ => false,
    };
    if !valid {
        return Err("JWSError JWSInvalidSignature".into());
    }
    let payload = b64(parts[1]).ok_or_else(|| "JWSError (CompactDecodeError Invalid base64url payload)".to_string())?;
    let claims = match serde_json::from_slice::<Value>(&payload) {
        Ok(Value::Object(map)) => map,
        _ => return Err("JWTClaimsSetDecodeError \"the claims set is not a JSON object\"".into()),
    };
    let numeric = |name: &str| -> Result<Option<i64>, String> {
        match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64().map(|f| f.floor() as i64)),
            Some(_) => Err(format!("JWTClaimsSetDecodeError \"{name} is not a NumericDate\"")),
        }
    };
    if let Some(exp) = numeric("exp")? {
        if now > exp.saturating_add(CLOCK_SKEW_SECONDS) {
            return Err("JWT expired".into());
        }
    }
    if let Some(nbf) = numeric("nbf")? {
        if now.saturating_add(CLOCK_SKEW_SECONDS) < nbf {
            return Err("JWTNotYetValid".into());
        }
    }
    if let Some(iat) = numeric("iat")? {
        if iat > now.saturating_add(CLOCK_SKEW_SECONDS) {
            return Err("JWTIssuedAtFuture".into());
        }
    }
    if let Some(expected) = audience {
        let ok = match claims.get("aud") {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => s == expected,
            Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(expected)),
            Some(_) => false,
        };
        if !ok {
            return Err("JWTNotInAudience".into());
        }
    }
    Ok(claims)
}

fn hmac_ok<M: Mac + hmac::digest::KeyInit>(secret: &[u8], input: &[u8], signature: &[u8]) -> bool {
    match <M as Mac>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(input);
            mac.verify_slice(signature).is_ok()
        }
        Err(_) => false,
    }
}

/// Signs `claims` with HS256 (for tests and for printing local keys).
pub fn sign_hs256(secret: &[u8], claims: &Value) -> String {
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = engine.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = engine.encode(claims.to_string().as_bytes());
    let input = format!("{header}.{payload}");
    let signature = match <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(input.as_bytes());
            engine.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    format!("{input}.{signature}")
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn extracts_bearer_tokens() {
        assert_eq!(bearer_token(Some(b"Bearer abc")), b"abc");
        assert_eq!(bearer_token(Some(b"bearer  abc")), b"abc");
        assert_eq!(bearer_token(Some(b"Basic abc")), b"");
        assert_eq!(bearer_token(None), b"");
    }
}
