//! creditgate: credits and rate limits for paid operations in Supabase apps.
//!
//! A typed client for creditgate's SQL functions (`docs/rpc.md`), called
//! through PostgREST, and the HTTP API the Edge Function runs ([`api`]).
//! Plain Rust, testable natively; compiled to wasm32 it is the npm package
//! `creditgate` (`js_client.rs` is its JS surface; `api/js_handler.rs` the
//! Edge Function's). See `docs/design.md` for how the pieces fit.
//!
//! - [`values`]: what requests carry, each a type that cannot be built invalid.
//! - [`requests`]: requests parsed from JSON, every field checked.
//! - [`results`]: what the calls return.
//! - [`config`]: the project URL and key.
//! - [`calls`]: every PostgREST call (RPC or table read) as plain data.
//! - [`client`]: the one transport (the `postgrest` crate), `run` and the settling steps.
//! - [`answers`]: each answer decoded into a result or a [`CreditError`].
//! - [`error`]: the one error type and its stable codes.
//! - [`api`] (feature `handler`): the Edge Function's HTTP API.
//! - [`signature`]: Stripe's webhook signature scheme (Stripe's events in, creditgate's webhooks out).
//! - [`rate_limit_headers`]: IETF `RateLimit-Policy` / `RateLimit` / `Retry-After` values.
//!
//! Features: `client` (the npm package's `CreditClient`, `js_client.rs`) and
//! `handler` (the Edge Function's `createHandler`/`handle`/
//! `createStripeHandler`, `api/`), both on by default. scripts/build-pkg.sh
//! builds each into its own package so that neither module carries the
//! other's code.

#[cfg(feature = "handler")]
pub mod api;
pub mod answers;
pub mod calls;
pub mod client;
pub mod config;
pub mod error;
pub mod rate_limit_headers;
pub mod requests;
pub mod results;
pub mod signature;
pub mod values;

#[cfg(all(target_arch = "wasm32", feature = "client"))]
mod js_client;
#[cfg(target_arch = "wasm32")]
mod fetch;
#[cfg(target_arch = "wasm32")]
mod js_error;

pub use client::{Call, CreditClient, RunError, RunOutcome};
pub use error::{CreditError, ErrorCode};
pub use rate_limit_headers::{rate_limit_headers, DEFAULT_POLICY};
pub use answers::Answer;
pub use config::Config;
pub use requests::*;
pub use results::*;
pub use values::*;
