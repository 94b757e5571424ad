//! Stripe's webhook signature scheme, used both ways: the `stripe-webhook`
//! function checks `Stripe-Signature` on Stripe's events (`api/stripe.rs`),
//! creditgate signs its own webhooks with it (`Creditgate-Signature`,
//! `api/webhooks.rs`), and the npm package's `verifyWebhookSignature` checks
//! those on a receiver (`js_client.rs`). Outside `api` so the npm build,
//! which has no HTTP handler, carries it too.
//!
//! `t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, `v1` = HMAC-SHA256 of
//! `"{t}.{raw body}"` keyed with a secret:
//! <https://stripe.com/docs/webhooks/signatures#verify-manually>.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Signatures older than this are refused (Stripe's libraries' default).
pub const TOLERANCE_SECONDS: i64 = 300;

/// Why a signature was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    Missing,
    Malformed,
    Stale,
    Mismatch,
}

impl SignatureError {
    pub fn message(self) -> &'static str {
        match self {
            SignatureError::Missing => "the Stripe-Signature header is missing",
            SignatureError::Malformed => "the Stripe-Signature header has no t= timestamp or no v1= signature",
            SignatureError::Stale => "the Stripe-Signature timestamp is outside the tolerance (300 s)",
            SignatureError::Mismatch => "no v1 signature matches the body and an endpoint secret",
        }
    }
}

/// The hex HMAC-SHA256 of `"{t}.{body}"` keyed with `secret`: Stripe's v1.
pub fn stripe_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A signature header in Stripe's format, `t=<t>,v1=<hex>`: what creditgate's
/// own webhooks carry in `Creditgate-Signature` (`webhooks.rs`).
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let t = timestamp.to_string();
    format!("t={t},v1={}", stripe_signature(secret, &t, body))
}

/// Checks `Stripe-Signature` against the raw body with every secret, in
/// constant time per comparison. `now_s`: Unix seconds.
pub fn verify_signature(header: Option<&str>, body: &[u8], secrets: &[String], now_s: i64) -> Result<(), SignatureError> {
    verify_signature_within(header, body, secrets, now_s, TOLERANCE_SECONDS)
}

/// [`verify_signature`] with another tolerance (seconds): also how a
/// receiver checks creditgate's `Creditgate-Signature` (`verifyWebhookSignature`).
pub fn verify_signature_within(
    header: Option<&str>,
    body: &[u8],
    secrets: &[String],
    now_s: i64,
    tolerance_s: i64,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = Some(value.trim()),
            Some(("v1", value)) => signatures.push(value.trim()),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    let seconds: i64 = timestamp.parse().map_err(|_| SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let mut matched = subtle::Choice::from(0u8);
    for secret in secrets {
        let expected = stripe_signature(secret, timestamp, body);
        for signature in &signatures {
            if signature.len() == expected.len() {
                matched |= expected.as_bytes().ct_eq(signature.as_bytes());
            }
        }
    }
    if !bool::from(matched) {
        return Err(SignatureError::Mismatch);
    }
    // As Stripe's libraries: only the age is bounded.
    if now_s - seconds > tolerance_s {
        return Err(SignatureError::Stale);
    }
    Ok(())
}
