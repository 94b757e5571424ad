//! creditgate's HTTP API: the `credits` Edge Function's routing, validation
//! and responses, in plain Rust.
//!
//! The function (`supabase/functions/credits/index.ts`) forwards every
//! request to the wasm export `handle` (`wasm.rs`), which copies it into an
//! [`ApiRequest`], runs [`Api::handle`], and copies the [`ApiResponse`] back
//! into a JS `Response`. Everything else here runs natively under `cargo test`.
//!
//! | route | caller | success | notable failures |
//! |---|---|---|---|
//! | `POST /charge` `{operation, metadata?}` + `Idempotency-Key` | user | 200 `{jobId, balance, replayed, expiresAt, cost}` | 400, 401, 402, 403, 409, 422, 429, 503 |
//! | `POST /generate` `{prompt, operation?, metadata?}` + `Idempotency-Key` | user | 200 `{jobId, status, resultUrl, balance, cost, replayed}` | 502 (generator failed or timed out: refunded), 429, 402, ... |
//! | `GET /balance` | user | 200 `{balance}` | |
//! | `GET /jobs?limit` | user | 200 `{jobs: [...]}` newest first | |
//! | `GET /jobs/:id` | user (own), service (any) | 200 job | 404 `job_not_found` |
//! | `GET /ledger?limit&before` | user | 200 `{entries, nextBefore}` newest first | |
//! | `POST /jobs/:id/complete` `{resultUrl?, actualCost?}` | service | 200 `{jobId, status, balance, refunded}` | 403 for users, 409 settled |
//! | `POST /jobs/:id/refund` `{reason?}` | service | 200 `{jobId, balance, refunded}` | 403, 404, 409 |
//! | `POST /grant` `{userId, amount, reason, idempotencyKey?, metadata?}` | service | 200 `{userId, balance}` | 403, 404 |
//! | `POST /webhooks/deliver` (no body, or `{}`) | service | 200 `{claimed, delivered, retrying, failed, unrecorded}` | 403, 502 `webhook_not_configured` |
//!
//! Errors are `{"error": {"code", "message", "details"}}` with docs/design.md's
//! statuses, never 200. Paid routes carry `RateLimit-Policy` and `RateLimit`
//! (and `Retry-After` on 429), and fail closed: no database, no charge (503).

mod auth;
mod error;
mod handler;
mod http;
mod input;
mod keys;
mod log;
mod outbound;
mod routes;
mod settings;
mod stripe;
mod webhooks;
#[cfg(target_arch = "wasm32")]
mod js_handler;

pub use auth::{authenticate, Caller};
pub use error::ApiError;
pub use handler::{client_ip, Api, Handled, CORS_HEADERS};
pub use http::{ApiRequest, ApiResponse, BODY_BYTES_MAX, HEADERS_READ};
pub use input::PROMPT_CHARS_MAX;
pub use routes::{route, Route};
pub use keys::{parse_jwks, Algorithm, KeyStore, PublicKey};
pub use crate::signature::{signature_header, stripe_signature, verify_signature, verify_signature_within, SignatureError, TOLERANCE_SECONDS};
pub use stripe::{action as stripe_action, PriceCredits, StripeApi, StripeSettings, STRIPE_BODY_BYTES_MAX, STRIPE_HEADERS_READ};
pub use webhooks::{delivery_body, DELIVERY_BATCH, SIGNATURE_HEADER};
pub use settings::{policy_names, GeneratorSettings, WebhookSettings, LimitPolicy, NamedPolicy, PolicyKind, Secret, Settings};

/// Milliseconds since the Unix epoch.
#[cfg(target_arch = "wasm32")]
pub(crate) fn now_ms() -> f64 {
    js_sys::Date::now()
}

/// Milliseconds since the Unix epoch.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn now_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}
