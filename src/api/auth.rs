//! Who is calling: the caller's token, checked.
//!
//! Tokens arrive as `Authorization: Bearer <token>`.
//! - The service role is the service-role key (or one of the project's
//!   `SUPABASE_SECRET_KEYS`) presented exactly, compared in constant time;
//!   or, when a JWT secret is configured, an HS256 JWT signed with it whose
//!   `role` is `service_role`.
//! - A user is a JWT whose `role` is `authenticated` with a UUID `sub`:
//!   the user's id comes from there and nowhere else.
//! - Any other valid token (the anon key) is [`Caller::Anonymous`].
//!
//! **Verification.** With `CREDITGATE_JWT_SECRET` (or `SUPABASE_JWT_SECRET`,
//! `JWT_SECRET`) set, every JWT's HS256 signature is verified here, so a
//! forged token is refused even if the function is deployed with
//! `verify_jwt = false`. Without a secret (a hosted project using
//! asymmetric signing keys, whose secret functions do not get), the
//! signature is the Edge Runtime's to check (`verify_jwt = true`, the
//! default, kept in `supabase/config.toml`); the claims are then only
//! decoded, and a `service_role` claim alone is never trusted: the service
//! routes need the service-role key itself. In both modes `exp` is checked.

use super::error::ApiError;
use super::http::ApiRequest;
use super::settings::{JwtCheck, Settings};
use crate::types::UserId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// Tokens longer than this are refused unread (a Supabase JWT is ~1 KiB).
pub const TOKEN_CHARS_MAX: usize = 8 * 1024;

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A signed-in user (`role: authenticated`), by the token's `sub`.
    User(UserId),
    /// The service role: the app's backend, a webhook.
    Service,
    /// A valid token that is neither (the anon key).
    Anonymous,
}

/// Checks the request's bearer token at `now_seconds` (Unix time).
pub fn authenticate(request: &ApiRequest, settings: &Settings, now_seconds: i64) -> Result<Caller, ApiError> {
    let header = request
        .header("authorization")
        .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
    let token = bearer(header).ok_or_else(|| ApiError::unauthorized("Authorization must be Bearer <token>"))?;
    if token.len() > TOKEN_CHARS_MAX {
        return Err(ApiError::unauthorized(format!("the token is longer than {TOKEN_CHARS_MAX} characters")));
    }
    if settings.service_keys.0.iter().any(|key| constant_time_eq(key.as_bytes(), token.as_bytes())) {
        return Ok(Caller::Service);
    }
    let claims = claims(token, &settings.jwt, now_seconds)?;
    match claims.get("role").and_then(Value::as_str) {
        Some("service_role") if matches!(settings.jwt, JwtCheck::Verify(_)) => Ok(Caller::Service),
        Some("service_role") => Err(ApiError::unauthorized(
            "without a configured JWT secret, the service role is the service-role key itself",
        )),
        Some("authenticated") => {
            let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
            UserId::parse("sub", sub)
                .map(Caller::User)
                .map_err(|_| ApiError::unauthorized("the token's sub is not a user id"))
        }
        _ => Ok(Caller::Anonymous),
    }
}

fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The verified (or, trusting the runtime, decoded) claims of a JWT.
fn claims(token: &str, check: &JwtCheck, now_seconds: i64) -> Result<Value, ApiError> {
    let malformed = || ApiError::unauthorized("the token is not a valid JWT");
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let decode = |part: &str| -> Result<Value, ApiError> {
        let bytes = URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| malformed())?;
        serde_json::from_slice(&bytes).map_err(|_| malformed())
    };
    let header_json = decode(header)?;
    if let JwtCheck::Verify(secret) = check {
        // Only HS256: "none" and every other algorithm are refused, so a
        // token cannot choose how it is checked.
        if header_json.get("alg").and_then(Value::as_str) != Some("HS256") {
            return Err(ApiError::unauthorized("the token must be signed with HS256"));
        }
        let signature = URL_SAFE_NO_PAD.decode(signature.trim_end_matches('=')).map_err(|_| malformed())?;
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| malformed())?;
        mac.update(header.as_bytes());
        mac.update(b".");
        mac.update(payload.as_bytes());
        mac.verify_slice(&signature).map_err(|_| ApiError::unauthorized("the token's signature is invalid"))?;
    }
    let claims = decode(payload)?;
    if !claims.is_object() {
        return Err(malformed());
    }
    match claims.get("exp").and_then(Value::as_f64) {
        Some(exp) if exp > now_seconds as f64 => Ok(claims),
        Some(_) => Err(ApiError::unauthorized("the token has expired")),
        None => Err(ApiError::unauthorized("the token has no exp")),
    }
}

/// Equal without an early exit, so timing does not reveal a prefix.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    pub const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
    pub const SERVICE_KEY: &str = "the-service-role-key";
    pub const USER: &str = "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e";
    pub const NOW: i64 = 1_800_000_000;

    pub fn sign(claims: &Value, secret: &str, alg: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg, "typ": "JWT"}).to_string());
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{header}.{payload}");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    pub fn user_token(user: &str) -> String {
        sign(&json!({"sub": user, "role": "authenticated", "aud": "authenticated", "exp": NOW + 3600}), SECRET, "HS256")
    }

    pub fn settings(verify: bool) -> Settings {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("SUPABASE_URL".into(), "http://127.0.0.1:9".into());
        env.insert("SUPABASE_SERVICE_ROLE_KEY".into(), SERVICE_KEY.into());
        if verify {
            env.insert("CREDITGATE_JWT_SECRET".into(), SECRET.into());
        }
        Settings::from_env(&env).expect("valid settings")
    }

    fn with_token(token: &str) -> ApiRequest {
        ApiRequest::new("GET", "/credits/balance").with_header("Authorization", &format!("Bearer {token}"))
    }

    fn refusal(request: &ApiRequest, settings: &Settings) -> String {
        let error = authenticate(request, settings, NOW).expect_err("should be refused");
        assert_eq!((error.status, error.code), (401, "unauthorized"));
        error.message
    }

    #[test]
    fn a_user_token_gives_its_sub() {
        for verify in [true, false] {
            let caller = authenticate(&with_token(&user_token(USER)), &settings(verify), NOW).expect("valid");
            assert_eq!(caller, Caller::User(UserId::parse("sub", USER).expect("uuid")));
        }
    }

    #[test]
    fn the_service_role_key_is_the_service_role_in_both_modes() {
        for verify in [true, false] {
            assert_eq!(authenticate(&with_token(SERVICE_KEY), &settings(verify), NOW), Ok(Caller::Service));
        }
    }

    #[test]
    fn a_service_role_jwt_counts_only_when_verified_here() {
        let token = sign(&json!({"role": "service_role", "exp": NOW + 60}), SECRET, "HS256");
        assert_eq!(authenticate(&with_token(&token), &settings(true), NOW), Ok(Caller::Service));
        refusal(&with_token(&token), &settings(false));
    }

    #[test]
    fn the_anon_key_is_anonymous() {
        let token = sign(&json!({"role": "anon", "exp": NOW + 60}), SECRET, "HS256");
        assert_eq!(authenticate(&with_token(&token), &settings(true), NOW), Ok(Caller::Anonymous));
    }

    #[test]
    fn forged_and_broken_tokens_are_refused_when_verifying() {
        let settings = settings(true);
        let claims = json!({"sub": USER, "role": "authenticated", "exp": NOW + 60});
        let wrong_secret = sign(&claims, &"x".repeat(40), "HS256");
        assert_eq!(refusal(&with_token(&wrong_secret), &settings), "the token's signature is invalid");
        let none = format!(
            "{}.{}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        assert_eq!(refusal(&with_token(&none), &settings), "the token must be signed with HS256");
        let hs512 = sign(&claims, SECRET, "HS512");
        assert_eq!(refusal(&with_token(&hs512), &settings), "the token must be signed with HS256");
        // A valid signature over other claims does not carry over.
        let good = user_token(USER);
        let other = URL_SAFE_NO_PAD.encode(json!({"sub": USER, "role": "service_role", "exp": NOW + 60}).to_string());
        let parts: Vec<&str> = good.split('.').collect();
        let spliced = format!("{}.{other}.{}", parts[0], parts[2]);
        assert_eq!(refusal(&with_token(&spliced), &settings), "the token's signature is invalid");
    }

    #[test]
    fn expiry_is_checked_in_both_modes() {
        for verify in [true, false] {
            let settings = settings(verify);
            let expired = sign(&json!({"sub": USER, "role": "authenticated", "exp": NOW}), SECRET, "HS256");
            assert_eq!(refusal(&with_token(&expired), &settings), "the token has expired");
            let no_exp = sign(&json!({"sub": USER, "role": "authenticated"}), SECRET, "HS256");
            assert_eq!(refusal(&with_token(&no_exp), &settings), "the token has no exp");
            let later = sign(&json!({"sub": USER, "role": "authenticated", "exp": NOW + 1}), SECRET, "HS256");
            assert!(authenticate(&with_token(&later), &settings, NOW).is_ok());
        }
    }

    #[test]
    fn malformed_headers_and_tokens_are_refused_not_panicked_on() {
        let settings = settings(false);
        assert_eq!(refusal(&ApiRequest::new("GET", "/"), &settings), "missing Authorization: Bearer <token>");
        for header in ["", "Bearer", "Bearer ", "Basic abc", "token"] {
            let request = ApiRequest::new("GET", "/").with_header("authorization", header);
            refusal(&request, &settings);
        }
        let long = "a".repeat(TOKEN_CHARS_MAX + 1);
        for token in ["a", "a.b", "a.b.c", "a.b.c.d", "....", "é.é.é", "e30.e30.", "e30.W10.", long.as_str()] {
            refusal(&with_token(token), &settings);
        }
        let no_sub = sign(&json!({"role": "authenticated", "exp": NOW + 60}), SECRET, "HS256");
        assert_eq!(refusal(&with_token(&no_sub), &settings), "the token's sub is not a user id");
        let bad_sub = sign(&json!({"sub": "alice", "role": "authenticated", "exp": NOW + 60}), SECRET, "HS256");
        assert_eq!(refusal(&with_token(&bad_sub), &settings), "the token's sub is not a user id");
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let request = ApiRequest::new("GET", "/").with_header("authorization", &format!("bearer {SERVICE_KEY}"));
        assert_eq!(authenticate(&request, &settings(true), NOW), Ok(Caller::Service));
    }

    #[test]
    fn near_miss_service_keys_are_not_the_service_role() {
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"abc", b"abc"));
        let near = format!("{SERVICE_KEY}x");
        refusal(&with_token(&near), &settings(true));
    }
}
