//! What both JS surfaces share (the npm client, `js_client.rs`, and the
//! Edge Function's handler, `api/js_handler.rs`): the JS `CreditError` every
//! failure becomes, its types, and the JSON crossings of the boundary. Built
//! into either package (see the `client` and `handler` features).

use crate::error::CreditError;
use serde::Serialize;
use serde_json::Value;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** Any JSON value. */
export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };

/** Every `CreditError.code`. Codes are only ever added, never renamed. */
export type CreditErrorCode =
  | "invalid_argument"        // 400: a request failed validation (details.field names it)
  | "unauthorized"            // 401: no or a bad key
  | "forbidden"               // 403: the key's role may not call the function
  | "insufficient_credits"    // 402: details { balance, needed }
  | "user_not_found"          // 404
  | "job_not_found"           // 404
  | "lot_not_found"           // 404
  | "plan_not_found"          // 404
  | "idempotency_in_flight"   // 409: the same key is still being processed (retryable)
  | "job_already_settled"     // 409: completed, refunded or expired already
  | "idempotency_key_reused"  // 422: same key, different request
  | "rate_limited"            // 429 (limit() returns denials as values; the HTTP API raises this)
  | "concurrency_limited"     // 429 (the HTTP API: as many paid requests running as a concurrency limit allows)
  | "blocked"                 // 403: a limit key is blocked (details { key, until, reason }); not retryable
  | "upstream"                // 502: PostgREST/the database answered something unexpected
  | "network";                // 503: no answer at all

/** What every creditgate failure is thrown (or rejected) as. */
export declare class CreditError extends Error {
  constructor(init: {
    code: CreditErrorCode;
    message: string;
    status: number;
    details?: { [key: string]: JsonValue };
    retryable?: boolean;
    cause?: unknown;
  });
  readonly name: "CreditError";
  /** Stable: branch on this, never on `message`. */
  readonly code: CreditErrorCode;
  /** The HTTP status of `code` (402 for insufficient_credits, ...). */
  readonly status: number;
  /** Machine-readable context: `{ balance, needed }`, `{ field }`, `{ sqlstate }`, ... */
  readonly details: { [key: string]: JsonValue };
  /** Whether the same request may succeed later, unchanged. */
  readonly retryable: boolean;
  toJSON(): { code: CreditErrorCode; message: string; status: number; details: { [key: string]: JsonValue }; retryable: boolean };
}
"#;

#[wasm_bindgen(module = "/src/js/credit_error.js")]
extern "C" {
    #[wasm_bindgen(js_name = CreditError)]
    type JsCreditError;

    #[wasm_bindgen(constructor, js_class = "CreditError")]
    fn new(init: &JsValue) -> JsCreditError;
}

/// The one serializer configuration every export uses: plain objects for
/// maps, `null` for `None`, numbers (not BigInts) for integers.
pub(crate) const SERIALIZER: serde_wasm_bindgen::Serializer =
    serde_wasm_bindgen::Serializer::json_compatible();

#[derive(Serialize)]
struct ErrorInit<'a> {
    code: &'a str,
    message: &'a str,
    status: u16,
    details: &'a serde_json::Map<String, Value>,
    retryable: bool,
}

/// A [`CreditError`] as the JS `CreditError` it is thrown as.
pub(crate) fn to_js_error(error: CreditError) -> JsValue {
    let init = ErrorInit {
        code: error.code().as_str(),
        message: error.message(),
        status: error.status(),
        details: error.details(),
        retryable: error.retryable(),
    };
    match init.serialize(&SERIALIZER) {
        Ok(init) => JsCreditError::new(&init).into(),
        // Serializing strings and JSON cannot fail; if it ever did, a plain
        // Error still carries the message.
        Err(_) => js_sys::Error::new(error.message()).into(),
    }
}
