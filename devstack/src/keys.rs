//! The local stack's JWT secret and keys, the same as `supabase start`'s.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

/// Supabase's local JWT secret.
pub const JWT_SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
/// The expiry of the well-known local keys (2032-11-11).
const LOCAL_KEY_EXP: i64 = 1_983_812_996;

/// Signs `claims` with HS256 and `secret`.
pub fn sign(claims: &Value, secret: &str) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signing_input = format!("{header}.{payload}");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(signing_input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{signing_input}.{signature}")
}

/// The claims of `token` if it is an HS256 JWT signed with `secret` and not
/// expired at `now` (seconds since the epoch); `None` otherwise.
pub fn verify(token: &str, secret: &str, now: i64) -> Option<Value> {
    let mut parts = token.split('.');
    let (header, payload, signature) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).ok()?).ok()?;
    if header.get("alg")?.as_str()? != "HS256" {
        return None;
    }
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).ok()?;
    mac.update(format!("{}.{payload}", token.split('.').next()?).as_bytes());
    mac.verify_slice(&URL_SAFE_NO_PAD.decode(signature).ok()?).ok()?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()?;
    match claims.get("exp").map(Value::as_i64) {
        Some(Some(exp)) if exp <= now => None,
        Some(None) => None,
        _ => Some(claims),
    }
}

/// The anon key `supabase start` prints.
pub fn anon_key() -> String {
    sign(&json!({"iss": "supabase-demo", "role": "anon", "exp": LOCAL_KEY_EXP}), JWT_SECRET)
}

/// The service-role key `supabase start` prints.
pub fn service_role_key() -> String {
    sign(&json!({"iss": "supabase-demo", "role": "service_role", "exp": LOCAL_KEY_EXP}), JWT_SECRET)
}

/// A signed-in user's access token, as GoTrue issues it.
pub fn user_token(user_id: &str, email: &str, lifetime_seconds: i64) -> String {
    let now = chrono::Utc::now().timestamp();
    sign(
        &json!({
            "aud": "authenticated",
            "exp": now + lifetime_seconds,
            "iat": now,
            "iss": "http://127.0.0.1:54321/auth/v1",
            "sub": user_id,
            "email": email,
            "role": "authenticated",
            "aal": "aal1",
            "session_id": uuid::Uuid::new_v4().to_string(),
            "is_anonymous": false
        }),
        JWT_SECRET,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_keys_are_supabases_well_known_ones() {
        assert_eq!(
            anon_key(),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6ImFub24iLCJleHAiOjE5ODM4MTI5OTZ9.CRXP1A7WOeoJeXxjNni43kdQwgnWNReilDMblYTn_I0"
        );
        assert_eq!(
            service_role_key(),
            "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU"
        );
    }

    #[test]
    fn verify_accepts_its_own_tokens_and_refuses_tampering_and_expiry() {
        let token = user_token("00000000-0000-0000-0000-000000000001", "a@b.c", 60);
        let now = chrono::Utc::now().timestamp();
        assert_eq!(verify(&token, JWT_SECRET, now).unwrap()["role"], "authenticated");
        assert!(verify(&token, "another-secret-another-secret-another", now).is_none());
        assert!(verify(&token, JWT_SECRET, now + 3600).is_none());
        let tampered = token.replacen('.', ".x", 1);
        assert!(verify(&tampered, JWT_SECRET, now).is_none());
        let none = format!("{}.{}.", URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#), token.split('.').nth(1).unwrap());
        assert!(verify(&none, JWT_SECRET, now).is_none());
    }
}
