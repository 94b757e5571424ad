//! creditgate: credits and rate limits for paid operations in Supabase apps.
//!
//! A typed client for creditgate's SQL functions (`docs/rpc.md`), called
//! through PostgREST. Plain Rust, testable natively; compiled to wasm32 it
//! is the npm package `creditgate` (`src/wasm.rs` is the only JS-facing
//! layer).
//!
//! - [`types`]: validated requests (values that cannot be built invalid) and results.
//! - [`request`]: each RPC as plain data (URL, headers, body), built without a network.
//! - [`response`]: each RPC's answer decoded into a result or a [`CreditError`].
//! - [`client`]: sending with the `postgrest` crate; `run` (charge, work, settle).
//! - [`error`]: the one error type and its stable codes.
//! - [`ratelimit`]: IETF `RateLimit-Policy` / `RateLimit` / `Retry-After` values.

pub mod api;
pub mod client;
pub mod error;
pub mod ratelimit;
pub mod request;
pub mod response;
pub mod types;

#[cfg(target_arch = "wasm32")]
mod wasm;

pub use client::{CreditClient, RunError, RunOutcome};
pub use error::{CreditError, ErrorCode};
pub use ratelimit::{rate_limit_headers, DEFAULT_POLICY};
pub use request::{Config, RpcRequest};
pub use response::RpcResponse;
pub use types::*;
