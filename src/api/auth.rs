//! Who is calling: the caller's token, verified here, always.
//!
//! Tokens arrive as `Authorization: Bearer <token>` (without that header,
//! the `apikey` header's key is the token: Supabase's new keys travel
//! there). The function is
//! deployed with `verify_jwt = false` (Supabase's advice for projects on
//! asymmetric signing keys or the new API keys), so nothing in front of it
//! has checked anything: every claim below is believed only after its
//! signature is.
//! - The service role is a key presented exactly: `SUPABASE_SERVICE_ROLE_KEY`
//!   or one of `SUPABASE_SECRET_KEYS` (`sb_secret_...`), compared in
//!   constant time. Never a `role` claim: a JWT saying `service_role` is
//!   refused, however it is signed.
//! - The anon key and the publishable keys (`SUPABASE_ANON_KEY`,
//!   `SUPABASE_PUBLISHABLE_KEYS`), presented exactly, are
//!   [`Caller::Anonymous`]; so is a verified JWT whose `role` is `anon`.
//! - A user is a JWT verified with the project's keys ([`super::keys`]:
//!   ES256/RS256 from the JWKS, or HS256 with the legacy JWT secret when one
//!   is configured), unexpired (`exp`), already valid (`nbf`, with
//!   [`CLOCK_SKEW_SECONDS`]), for `aud: authenticated`, from the configured
//!   issuer (`CREDITGATE_JWT_ISSUER`) if any, with `role: authenticated` and
//!   a UUID `sub`: the user's id comes from there and nowhere else.
//! - The algorithm comes from the key, not the token: `alg: none`, HS256
//!   without a configured secret, an EC key asked to verify RS256, are all
//!   refused before any signature is computed.

use super::outbound::Sender;
use super::error::ApiError;
use super::http::ApiRequest;
use super::keys::{verify_signature, Algorithm, KeyStore, Lookup};
use super::settings::Settings;
use crate::UserId;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Tokens longer than this are refused unread (a Supabase JWT is ~1 KiB).
pub const TOKEN_CHARS_MAX: usize = 8 * 1024;
/// How far a token's `nbf` may be ahead of our clock (clocks differ a little).
pub const CLOCK_SKEW_SECONDS: i64 = 30;
/// The audience of a signed-in user's access token.
pub const USER_AUDIENCE: &str = "authenticated";

/// Who is calling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A signed-in user (`role: authenticated`), by the token's `sub`.
    User(UserId),
    /// The service role: the app's backend, a webhook.
    Service,
    /// The anon or a publishable key: known to the project, but no one.
    Anonymous,
}

/// A JWT split and decoded, not yet believed.
#[derive(Debug)]
struct Token<'t> {
    algorithm: Algorithm,
    kid: Option<String>,
    /// `header.payload`, what the signature covers.
    signed: &'t str,
    signature: Vec<u8>,
    claims: Value,
}

/// Checks the request's bearer token at `now_ms` (ms since the epoch).
pub async fn authenticate(
    request: &ApiRequest,
    settings: &Settings,
    keys: &KeyStore,
    sender: &Sender,
    now_ms: f64,
) -> Result<Caller, ApiError> {
    // Supabase's new API keys travel in `apikey`; a request with no
    // Authorization is judged by that key.
    let token = match (request.header("authorization"), request.header("apikey")) {
        (Some(header), _) => bearer(header).ok_or_else(|| ApiError::unauthorized("Authorization must be Bearer <token>"))?,
        (None, Some(key)) if !key.trim().is_empty() => key.trim(),
        _ => return Err(ApiError::unauthorized("missing Authorization: Bearer <token>")),
    };
    if token.len() > TOKEN_CHARS_MAX {
        return Err(ApiError::unauthorized(format!("the token is longer than {TOKEN_CHARS_MAX} characters")));
    }
    if is_one_of(&settings.service_keys.0, token) {
        return Ok(Caller::Service);
    }
    if is_one_of(&settings.anonymous_keys.0, token) {
        return Ok(Caller::Anonymous);
    }
    let token = decode(token)?;
    verify(&token, settings, keys, sender, now_ms).await?;
    caller(&token.claims, settings, (now_ms / 1000.0).floor() as i64)
}

fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Equal to one of `keys`, in time independent of where they differ.
fn is_one_of(keys: &[String], token: &str) -> bool {
    keys.iter().fold(false, |found, key| found | bool::from(key.as_bytes().ct_eq(token.as_bytes())))
}

fn decode(token: &str) -> Result<Token<'_>, ApiError> {
    let malformed = || ApiError::unauthorized("the token is not a valid JWT");
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let bytes = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| malformed());
    let json = |part: &str| -> Result<Value, ApiError> { serde_json::from_slice(&bytes(part)?).map_err(|_| malformed()) };
    let header_json = json(header)?;
    let alg = header_json.get("alg").and_then(Value::as_str).unwrap_or_default();
    let algorithm = Algorithm::from_header(alg)
        .ok_or_else(|| ApiError::unauthorized("the token must be signed with ES256, RS256 or HS256").with_detail("alg", alg))?;
    let claims = json(payload)?;
    if !claims.is_object() {
        return Err(malformed());
    }
    Ok(Token {
        algorithm,
        kid: header_json.get("kid").and_then(Value::as_str).map(str::to_owned),
        signed: &token[..header.len() + 1 + payload.len()],
        signature: bytes(signature)?,
        claims,
    })
}

async fn verify(token: &Token<'_>, settings: &Settings, keys: &KeyStore, sender: &Sender, now_ms: f64) -> Result<(), ApiError> {
    let invalid = || ApiError::unauthorized("the token's signature is invalid");
    if token.algorithm == Algorithm::Hs256 {
        let Some(secret) = &settings.jwt_secret else {
            return Err(ApiError::unauthorized(
                "HS256 tokens are verified only with the project's legacy JWT secret, and none is configured",
            ));
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).map_err(|_| invalid())?;
        mac.update(token.signed.as_bytes());
        return mac.verify_slice(&token.signature).map_err(|_| invalid());
    }
    if !keys.is_configured() {
        return Err(ApiError::unauthorized("no signing keys are configured to verify this token"));
    }
    let key = match keys.find(sender, token.kid.as_deref(), token.algorithm, now_ms).await? {
        Lookup::Found(key) => key,
        Lookup::Unknown => {
            return Err(ApiError::unauthorized("the token's signing key is not one of the project's")
                .with_detail("kid", token.kid.clone().unwrap_or_default()));
        }
    };
    match verify_signature(&key, token.signed.as_bytes(), &token.signature).await {
        Ok(true) => Ok(()),
        Ok(false) => Err(invalid()),
        Err(why) => Err(ApiError::unauthorized(format!("the token's signature could not be checked: {why}"))),
    }
}

/// Who a verified token's claims say is calling, if they are current and
/// meant for us.
fn caller(claims: &Value, settings: &Settings, now: i64) -> Result<Caller, ApiError> {
    let seconds = |name: &str| claims.get(name).and_then(Value::as_f64);
    match seconds("exp") {
        Some(exp) if exp > now as f64 => {}
        Some(_) => return Err(ApiError::unauthorized("the token has expired")),
        None => return Err(ApiError::unauthorized("the token has no exp")),
    }
    if claims.get("nbf").is_some_and(|nbf| nbf.as_f64().is_none_or(|nbf| nbf > (now + CLOCK_SKEW_SECONDS) as f64)) {
        return Err(ApiError::unauthorized("the token is not valid yet (nbf)"));
    }
    if let Some(issuer) = &settings.jwt_issuer {
        if claims.get("iss").and_then(Value::as_str) != Some(issuer.as_str()) {
            return Err(ApiError::unauthorized("the token was issued by another issuer").with_detail("expected", issuer.clone()));
        }
    }
    match claims.get("role").and_then(Value::as_str) {
        Some("authenticated") => {
            let audience_ok = match claims.get("aud") {
                Some(Value::String(aud)) => aud == USER_AUDIENCE,
                Some(Value::Array(auds)) => auds.iter().any(|aud| aud.as_str() == Some(USER_AUDIENCE)),
                _ => false,
            };
            if !audience_ok {
                return Err(ApiError::unauthorized(format!("a user's token must be for aud {USER_AUDIENCE}")));
            }
            let sub = claims.get("sub").and_then(Value::as_str).unwrap_or_default();
            UserId::parse("sub", sub)
                .map(Caller::User)
                .map_err(|_| ApiError::unauthorized("the token's sub is not a user id"))
        }
        Some("anon") => Ok(Caller::Anonymous),
        Some("service_role") => Err(ApiError::unauthorized(
            "the service role is the service-role or a secret key itself, never a token's role claim",
        )),
        _ => Err(ApiError::unauthorized("the token's role is not one this API serves")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeMap;

    pub const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
    pub const SERVICE_KEY: &str = "the-service-role-key";
    pub const SECRET_KEY: &str = "sb_secret_0123456789abcdef";
    pub const PUBLISHABLE_KEY: &str = "sb_publishable_0123456789abcdef";
    pub const USER: &str = "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e";
    pub const NOW: i64 = 1_800_000_000;

    pub fn sign(claims: &Value, secret: &str, alg: &str) -> String {
        sign_with_header(&json!({"alg": alg, "typ": "JWT"}), claims, secret)
    }

    fn sign_with_header(header: &Value, claims: &Value, secret: &str) -> String {
        let header = URL_SAFE_NO_PAD.encode(header.to_string());
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{header}.{payload}");
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
        mac.update(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    fn user_claims() -> Value {
        json!({"sub": USER, "role": "authenticated", "aud": "authenticated", "exp": NOW + 3600})
    }

    fn with(claims: Value, changes: Value) -> Value {
        let mut claims = claims;
        if let (Value::Object(base), Value::Object(extra)) = (&mut claims, changes) {
            for (name, value) in extra {
                if value.is_null() {
                    base.remove(&name);
                } else {
                    base.insert(name, value);
                }
            }
        }
        claims
    }

    pub fn user_token(user: &str) -> String {
        sign(&with(user_claims(), json!({"sub": user})), SECRET, "HS256")
    }

    /// Settings with or without the legacy secret; the JWKS is never
    /// fetched here (CREDITGATE_JWKS_URL=off) unless `extra` says so.
    pub fn settings_with(secret: bool, extra: &[(&str, &str)]) -> Settings {
        let mut env: BTreeMap<String, String> = BTreeMap::new();
        env.insert("SUPABASE_URL".into(), "http://127.0.0.1:9".into());
        env.insert("SUPABASE_SERVICE_ROLE_KEY".into(), SERVICE_KEY.into());
        env.insert("SUPABASE_SECRET_KEYS".into(), json!({"default": SECRET_KEY}).to_string());
        env.insert("SUPABASE_PUBLISHABLE_KEYS".into(), json!({"default": PUBLISHABLE_KEY}).to_string());
        env.insert("CREDITGATE_JWKS_URL".into(), "off".into());
        if secret {
            env.insert("CREDITGATE_JWT_SECRET".into(), SECRET.into());
        }
        for (name, value) in extra {
            env.insert((*name).into(), (*value).into());
        }
        Settings::from_env(&env).expect("valid settings")
    }

    fn run(token: &str, settings: &Settings) -> Result<Caller, ApiError> {
        let request = ApiRequest::new("GET", "/credits/balance").with_header("Authorization", &format!("Bearer {token}"));
        run_request(&request, settings)
    }

    fn run_request(request: &ApiRequest, settings: &Settings) -> Result<Caller, ApiError> {
        let keys = KeyStore::new(settings.jwks.clone(), settings.jwks_url.clone());
        let sender = Sender::new().expect("client");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        runtime.block_on(authenticate(request, settings, &keys, &sender, NOW as f64 * 1000.0))
    }

    fn refusal(token: &str, settings: &Settings) -> String {
        let error = run(token, settings).expect_err("should be refused");
        assert_eq!((error.status, error.code), (401, "unauthorized"), "{}", error.message);
        error.message
    }

    #[test]
    fn a_verified_user_token_gives_its_sub() {
        let caller = run(&user_token(USER), &settings_with(true, &[])).expect("valid");
        assert_eq!(caller, Caller::User(UserId::parse("sub", USER).expect("uuid")));
        // aud may be a list that includes ours.
        let listed = sign(&with(user_claims(), json!({"aud": ["other", "authenticated"]})), SECRET, "HS256");
        assert!(run(&listed, &settings_with(true, &[])).is_ok());
    }

    #[test]
    fn an_unverifiable_token_is_refused_never_decoded_and_trusted() {
        // No secret and no keys: nothing can verify this token, so it is
        // not believed (the old behaviour read its sub).
        let settings = settings_with(false, &[]);
        assert!(refusal(&user_token(USER), &settings).contains("HS256 tokens are verified only"));
        let es256 = sign_with_header(&json!({"alg": "ES256", "kid": "k"}), &user_claims(), SECRET);
        assert_eq!(refusal(&es256, &settings), "no signing keys are configured to verify this token");
    }

    #[test]
    fn the_service_role_is_a_key_never_a_claim() {
        for secret in [true, false] {
            let settings = settings_with(secret, &[]);
            assert_eq!(run(SERVICE_KEY, &settings), Ok(Caller::Service));
            assert_eq!(run(SECRET_KEY, &settings), Ok(Caller::Service));
        }
        // A correctly signed JWT claiming the role is still not the service role.
        let forged = sign(&json!({"role": "service_role", "exp": NOW + 60}), SECRET, "HS256");
        assert!(refusal(&forged, &settings_with(true, &[])).contains("never a token's role claim"));
        for near in [format!("{SERVICE_KEY}x"), SERVICE_KEY[1..].to_owned(), SECRET_KEY.to_uppercase()] {
            refusal(&near, &settings_with(true, &[]));
        }
    }

    #[test]
    fn anon_and_publishable_keys_are_anonymous_not_users() {
        let settings = settings_with(true, &[("SUPABASE_ANON_KEY", "the-anon-key")]);
        assert_eq!(run(PUBLISHABLE_KEY, &settings), Ok(Caller::Anonymous));
        assert_eq!(run("the-anon-key", &settings), Ok(Caller::Anonymous));
        let anon = sign(&json!({"role": "anon", "exp": NOW + 60}), SECRET, "HS256");
        assert_eq!(run(&anon, &settings), Ok(Caller::Anonymous));
        // An unknown publishable-looking key is nobody.
        refusal("sb_publishable_somebody-elses", &settings);
    }

    #[test]
    fn forged_and_broken_tokens_are_refused() {
        let settings = settings_with(true, &[]);
        let claims = user_claims();
        let wrong_secret = sign(&claims, &"x".repeat(40), "HS256");
        assert_eq!(refusal(&wrong_secret, &settings), "the token's signature is invalid");
        for alg in ["none", "None", "HS512", "PS256", "ES384", ""] {
            let token = format!(
                "{}.{}.",
                URL_SAFE_NO_PAD.encode(json!({"alg": alg}).to_string()),
                URL_SAFE_NO_PAD.encode(claims.to_string())
            );
            assert_eq!(refusal(&token, &settings), "the token must be signed with ES256, RS256 or HS256", "{alg}");
        }
        // A valid signature over other claims does not carry over.
        let good = user_token(USER);
        let other = URL_SAFE_NO_PAD.encode(with(claims, json!({"sub": "11111111-1111-4111-8111-111111111111"})).to_string());
        let parts: Vec<&str> = good.split('.').collect();
        assert_eq!(refusal(&format!("{}.{other}.{}", parts[0], parts[2]), &settings), "the token's signature is invalid");
        // Padding or non-canonical base64 is not the signed text.
        refusal(&format!("{good}="), &settings);
    }

    #[test]
    fn time_audience_role_and_issuer_are_checked() {
        let settings = settings_with(true, &[]);
        let token = |changes: Value| sign(&with(user_claims(), changes), SECRET, "HS256");
        assert_eq!(refusal(&token(json!({"exp": NOW})), &settings), "the token has expired");
        assert_eq!(refusal(&token(json!({"exp": null})), &settings), "the token has no exp");
        assert_eq!(refusal(&token(json!({"exp": "later"})), &settings), "the token has no exp");
        assert!(run(&token(json!({"exp": NOW + 1})), &settings).is_ok());
        assert_eq!(refusal(&token(json!({"nbf": NOW + 3600})), &settings), "the token is not valid yet (nbf)");
        assert_eq!(refusal(&token(json!({"nbf": "soon"})), &settings), "the token is not valid yet (nbf)");
        assert!(run(&token(json!({"nbf": NOW + CLOCK_SKEW_SECONDS})), &settings).is_ok(), "within the skew");
        for aud in [json!("other"), json!(null), json!(["x"]), json!(5)] {
            assert!(refusal(&token(json!({"aud": aud})), &settings).contains("aud"), "{aud}");
        }
        assert!(refusal(&token(json!({"role": "supabase_admin"})), &settings).contains("role"));
        assert!(refusal(&token(json!({"role": null})), &settings).contains("role"));
        assert_eq!(refusal(&token(json!({"sub": "alice"})), &settings), "the token's sub is not a user id");
        let pinned = settings_with(true, &[("CREDITGATE_JWT_ISSUER", "https://abc.supabase.co/auth/v1")]);
        assert!(refusal(&token(json!({"iss": "https://evil.example/auth/v1"})), &pinned).contains("issuer"));
        assert!(refusal(&token(json!({})), &pinned).contains("issuer"));
        assert!(run(&token(json!({"iss": "https://abc.supabase.co/auth/v1"})), &pinned).is_ok());
    }

    #[test]
    fn a_kid_not_in_the_jwks_is_refused_and_symmetric_jwks_keys_are_ignored() {
        // A JWKS whose only usable key is EC: an `oct` key in it (the
        // "HS256 with a public key" trick) is never used.
        let jwks = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", "kid": "ec-1", "alg": "ES256"},
            {"kty": "oct", "k": URL_SAFE_NO_PAD.encode(SECRET), "kid": "oct-1"}
        ]})
        .to_string();
        let settings = settings_with(false, &[("SUPABASE_JWKS", &jwks)]);
        assert_eq!(settings.jwks.len(), 1);
        let unknown = sign_with_header(&json!({"alg": "ES256", "kid": "nope"}), &user_claims(), SECRET);
        assert_eq!(refusal(&unknown, &settings), "the token's signing key is not one of the project's");
        let rs_with_ec_kid = sign_with_header(&json!({"alg": "RS256", "kid": "ec-1"}), &user_claims(), SECRET);
        assert_eq!(refusal(&rs_with_ec_kid, &settings), "the token's signing key is not one of the project's");
        let hs_with_oct = sign_with_header(&json!({"alg": "HS256", "kid": "oct-1"}), &user_claims(), SECRET);
        assert!(refusal(&hs_with_oct, &settings).contains("HS256 tokens are verified only"));
    }

    #[test]
    fn malformed_headers_and_tokens_are_refused_not_panicked_on() {
        let settings = settings_with(true, &[]);
        let missing = run_request(&ApiRequest::new("GET", "/"), &settings).expect_err("no header");
        assert_eq!(missing.message, "missing Authorization: Bearer <token>");
        for header in ["", "Bearer", "Bearer ", "Basic abc", "token"] {
            let request = ApiRequest::new("GET", "/").with_header("authorization", header);
            assert_eq!(run_request(&request, &settings).map_err(|e| e.status), Err(401), "{header:?}");
        }
        let long = "a".repeat(TOKEN_CHARS_MAX + 1);
        for token in ["a", "a.b", "a.b.c", "a.b.c.d", "....", "é.é.é", "e30.e30.", "e30.W10.", long.as_str()] {
            refusal(token, &settings);
        }
    }

    #[test]
    fn without_authorization_the_apikey_header_is_the_key() {
        let settings = settings_with(true, &[]);
        let with_key = |key: &str| ApiRequest::new("GET", "/").with_header("apikey", key);
        assert_eq!(run_request(&with_key(SECRET_KEY), &settings), Ok(Caller::Service));
        assert_eq!(run_request(&with_key(PUBLISHABLE_KEY), &settings), Ok(Caller::Anonymous));
        assert_eq!(run_request(&with_key("sb_secret_guess"), &settings).map_err(|e| e.status), Err(401));
        // Authorization, when present, decides: a publishable apikey beside a
        // user's token is that user; a secret apikey does not lift a user.
        let user = ApiRequest::new("GET", "/")
            .with_header("apikey", SECRET_KEY)
            .with_header("authorization", &format!("Bearer {}", user_token(USER)));
        assert!(matches!(run_request(&user, &settings), Ok(Caller::User(_))));
    }

    #[test]
    fn the_scheme_is_case_insensitive() {
        let request = ApiRequest::new("GET", "/").with_header("authorization", &format!("bearer {SERVICE_KEY}"));
        assert_eq!(run_request(&request, &settings_with(true, &[])), Ok(Caller::Service));
    }
}
