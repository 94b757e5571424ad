//! The JS surface: the only `#[wasm_bindgen]` code in the crate.
//!
//! Thin by design: each method turns its JS argument into JSON, lets the
//! plain-Rust layers validate and send, and turns the result (or the
//! [`CreditError`]) back into JS. Every failure, including a validation
//! failure, rejects the returned promise with a JS `CreditError`; nothing
//! here panics on any input (a panic would kill the module instance for
//! every later request).
//!
//! The JS `CreditError` and the JSON crossings it shares with the HTTP
//! handler (`src/api/js_handler.rs`) are in `js_error.rs`.

use crate::client::{CreditClient, RunError, RunOutcome};
use crate::error::CreditError;
use crate::config::Config;
use crate::{
    user_id_from_json, BlockRequest, ChargeRequest, ChargeWithLimitRequest, CompleteRequest, EventsRequest,
    GrantRequest, LimitKeyRequest, LimitRequest, PeekLimitRequest, PlanRequest, RateLimitResult, RefundRequest,
    RevokeLotRequest, RunOutput, SubscribeRequest, TokenBucketRequest, UsageRequest,
};
use crate::js_error::{to_js_error, SERIALIZER};
use js_sys::{Function, Object, Promise, Reflect, JSON};
use serde::Serialize;
use serde_json::Value;
use std::rc::Rc;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
export interface CreditClientOptions {
  /** The project URL: `https://<ref>.supabase.co`, `http://127.0.0.1:54321`; with or without `/rest/v1`. */
  url: string;
  /** The service-role key. Server side only: it bypasses row-level security. */
  serviceRoleKey: string;
}

export interface ChargeRequest {
  /** `auth.users.id` (a UUID). */
  userId: string;
  /** What the credits pay for, 1 to 64 chars: `"image_generation"`. */
  operation: string;
  /** Credits to hold: an integer from 1 to 1000000000. */
  cost: number;
  /** Makes the charge safe to retry: 1 to 255 chars, scoped to the user. */
  idempotencyKey?: string;
  /** A JSON object (at most 4096 bytes as jsonb text) stored with the job. */
  metadata?: { [key: string]: JsonValue };
  /** Seconds before an unsettled hold is refunded by the sweeper (1 to 86400; the SQL default is 900). */
  holdSeconds?: number;
}

export interface ChargeResult {
  jobId: string;
  /** The balance after the hold, in credits. */
  balance: number;
  /** True for a retry with a known idempotency key: nothing was charged again. */
  replayed: boolean;
  /** When the hold expires if not settled (ISO 8601), if the server says. */
  expiresAt: string | null;
}

export interface CompleteRequest {
  jobId: string;
  /** Where the result lives (at most 2048 chars). */
  resultUrl?: string;
  /** What the job really cost, 0 up to the hold; the difference is refunded. */
  actualCost?: number;
  /** The units (tokens) the job really used, 0 to 1000000: the unit limits its
   *  charge reserved an estimate in are corrected to it (absent: the estimate stands). */
  actualUnits?: number;
}

export interface CompleteResult {
  jobId: string;
  /** `"completed"`. */
  status: string;
  balance: number;
  /** Credits returned because `actualCost` was below the hold. */
  refunded: number;
}

export interface RefundRequest {
  userId: string;
  jobId: string;
  /** Why, for the ledger: 1 to 500 chars. */
  reason: string;
}

export interface GrantRequest {
  userId: string;
  /** Credits to add: an integer from 1 to 1000000000. */
  amount: number;
  /** Why, for the ledger: `"stripe:evt_123"`. */
  reason: string;
  /** A webhook's event id, so a redelivery grants once. */
  idempotencyKey?: string;
  metadata?: { [key: string]: JsonValue };
  /** When what remains of the lot leaves the balance (ISO 8601); never when absent. */
  expiresAt?: string;
  /** `paid` (default), `promotional`, `allowance`, or your own lowercase word (1 to 32 chars). */
  category?: string;
  /** 0 to 100, lower is spent first (default 50). */
  priority?: number;
}

/** One grant's credits: spent by priority, then soonest expiry, then oldest. */
export interface Lot {
  lotId: string;
  category: string;
  priority: number;
  granted: number;
  remaining: number;
  expiresAt: string | null;
  createdAt: string;
  reason: string | null;
  spendable: boolean | null;
  plan: string | null;
  periodStart: string | null;
  expiredAt: string | null;
  revokedAt: string | null;
}

export interface RevokeLotRequest {
  lotId: string;
  /** Why, for the ledger: 1 to 500 chars. */
  reason: string;
}

/** `low_balance`, `depleted`, `lot_expiring`, `lot_expired`, `hold_expired` or `allowance_granted`. */
export interface CreditEvent {
  id: number;
  type: string;
  payload: { [key: string]: JsonValue };
  createdAt: string;
}

/**
 * The JSON body of one of creditgate's webhooks (POSTed to
 * `CREDITGATE_WEBHOOK_URL`, signed in `Creditgate-Signature`: check it with
 * `verifyWebhookSignature` on the raw body first). Delivered at least once:
 * de-duplicate on `id`.
 */
export interface CreditWebhook {
  /** The event's id (`credit_events.id`): the same on every redelivery. */
  id: number;
  type: string;
  userId: string;
  payload: { [key: string]: JsonValue };
  createdAt: string;
}

export interface EventsRequest {
  userId: string;
  /** Events after this id (default 0: from the first). */
  after?: number;
  /** 1 to 100 (default 20). */
  limit?: number;
}

export interface PlanRequest {
  /** 1 to 64 chars. */
  plan: string;
  /** Credits per period. */
  amount: number;
  period: "day" | "week" | "month";
  /** How much of an expiring allowance carries into the next period (default 0). */
  rolloverMax?: number;
  /** The plan's limits, replacing the function's defaults for subscribers
   *  (with CREDITGATE_PLAN_LIMITS=on); absent: kept. */
  limits?: PlanLimits;
}

/** A window of a plan's limit: `limit` per `window_seconds`. */
export interface PlanWindow {
  limit: number;
  window_seconds: number;
}

/** A plan's limits; a section it leaves out falls back to the defaults, an empty list is "no limit". */
export interface PlanLimits {
  user?: PlanWindow[];
  operations?: Record<string, PlanWindow[]>;
  /** Paid requests running at once (1 to 1000). */
  concurrency?: number;
  /** Units (tokens) per window. */
  units?: PlanWindow[];
}

export interface Plan {
  plan: string;
  amount: number;
  period: string;
  rolloverMax: number;
}

export interface SubscribeRequest {
  userId: string;
  plan: string;
  /** Periods are counted from here (ISO 8601, not in the future); now when absent. */
  anchor?: string;
}

export interface Subscription {
  plan: string;
  periodStart: string;
  periodEnd: string;
  lotId: string | null;
  /** The allowance granted now; 0 when this period's was granted already. */
  granted: number;
  balance: number;
}

export interface BalanceResult {
  balance: number;
}

export interface LimitRequest {
  /** What is counted: `"user:<id>:generate"`, `"ip:203.0.113.7"` (1 to 255 chars). */
  key: string;
  /** Allowed per window: 1 to 1000000. */
  limit: number;
  /** The window, 1 to 86400 seconds. Part of the counter's identity with `limit`. */
  windowSeconds: number;
  /** This request's weight, 1 to `limit` (default 1). */
  weight?: number;
}

/** Being over a limit is a value, not an exception. All times in seconds. */
export interface RateLimitResult {
  /** Whether the request was allowed (and counted; a denial consumes nothing). */
  success: boolean;
  limit: number;
  /** What is left in the window after this request. */
  remaining: number;
  /** Seconds until the window has room again. */
  reset: number;
  /** Seconds to wait before retrying; 0 when allowed. */
  retryAfter: number;
  /** The window, in seconds. */
  windowSeconds?: number | null;
}

/** A token bucket: `capacity` tokens at once (a burst), refilled at `refillPerSecond`. */
export interface TokenBucketRequest {
  /** What is counted (1 to 255 chars, not starting with `creditgate:`). */
  key: string;
  /** The burst: 1 to 1000000 tokens. Part of the bucket's identity with `refillPerSecond`. */
  capacity: number;
  /** Tokens added per second: 0.00001 (about one a day) to 1000000. */
  refillPerSecond: number;
  /** Tokens this request takes, 1 to `capacity` (default 1). */
  weight?: number;
}

/** `peekLimit`: what `limit` would answer for a request of weight 1, spending nothing. */
export interface PeekLimitRequest {
  /** Any key, `creditgate:` ones included (the Edge Function's `creditgate:user:<uuid>`, `creditgate:ip:<addr>`). */
  key: string;
  limit: number;
  windowSeconds: number;
}

/** `resetLimit`, `unblockLimitKey`: one key, `creditgate:` ones included. */
export interface LimitKeyRequest {
  key: string;
}

export interface ResetLimitResult {
  key: string;
  /** Counters cleared: every window and token bucket of the key. */
  cleared: number;
}

/** `blockLimitKey`: every limit naming `key` rejects with `blocked` (403) until `until`. */
export interface BlockLimitKeyRequest {
  key: string;
  /** ISO 8601, in the future; absent: until unblocked. */
  until?: string;
  /** 1 to 500 chars; shown to the blocked caller in `details.reason`. */
  reason: string;
}

export interface BlockLimitKeyResult {
  key: string;
  /** When the block ends; null: until unblocked. */
  until: string | null;
  reason: string;
}

export interface UnblockLimitKeyResult {
  key: string;
  /** Whether a block was in force. */
  unblocked: boolean;
}

/** `limitUsage`: windows in use of keys starting with `prefix`. */
export interface LimitUsageRequest {
  /** Default `""`: every key. */
  prefix?: string;
  /** Rows, 1 to 1000 (default 100). */
  limit?: number;
}

export interface LimitUsage {
  key: string;
  limit: number;
  windowSeconds: number;
  /** The weight counted in the window now. */
  used: number;
  /** Seconds until the window is empty. */
  reset: number;
}

/** A charge plus a limit, in one transaction. `cost` is the charge's credits; `weight` what it counts against the limit. */
export interface ChargeWithLimitRequest extends ChargeRequest {
  /** What the limit counts (not the idempotency key). */
  limitKey: string;
  limit: number;
  windowSeconds: number;
  /** This request's weight against the limit, 1 to `limit` (default 1). */
  weight?: number;
  /** A unit (token) limit: `weight` is the estimate the job reserves; `complete({actualUnits})` corrects it. */
  units?: boolean;
}

/** Allowed: the limit was counted and the charge made. Denied: nothing happened. */
export type ChargeWithLimitResult =
  | (RateLimitResult & { success: true; jobId: string; balance: number; replayed: boolean; expiresAt: string | null })
  | (RateLimitResult & { success: false; jobId: null; balance: null; replayed: null; expiresAt: null });

/** What `run`'s callback may return for `complete` to record; other fields are yours. */
export interface RunOutput {
  resultUrl?: string;
  actualCost?: number;
}

export interface RunResult<T> {
  /** What the callback returned. */
  value: T;
  charge: ChargeResult;
  completion: CompleteResult;
}

/** IETF RateLimit header fields, ready for `new Headers(...)`. */
export interface RateLimitHeaders {
  "RateLimit-Policy": string;
  "RateLimit": string;
  /** Only when the request was denied. */
  "Retry-After"?: string;
}

export interface CreditClient {
  /**
   * Charges, calls `work(job)`, then completes the job with the `resultUrl` /
   * `actualCost` of what `work` returned. If `work` throws (or rejects), or
   * completing fails, the hold is refunded and the error rethrown unchanged.
   */
  run<T>(request: ChargeRequest, work: (job: ChargeResult) => T | PromiseLike<T>): Promise<RunResult<Awaited<T>>>;
}
"#;

/// JS input beyond this is refused before it is parsed: requests are small.
const INPUT_BYTES_MAX: usize = 256 * 1024;

/// A Rust value as a plain JS object.
pub(crate) fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsValue> {
    value.serialize(&SERIALIZER).map_err(|error| {
        to_js_error(CreditError::upstream(format!(
            "could not build the JS result: {error}"
        )))
    })
}

/// A JS argument as JSON, through `JSON.stringify`: so `toJSON` (a `Date`)
/// is honoured, `undefined` fields vanish, and a cycle, a BigInt or a
/// throwing getter becomes an `invalid_argument` instead of a crash.
pub(crate) fn from_js(value: &JsValue, what: &str) -> Result<Value, CreditError> {
    let unusable = |why: &str| CreditError::invalid_argument("request", format!("{what}: {why}"));
    if value.is_undefined() {
        return Ok(Value::Null);
    }
    let text = JSON::stringify(value).map_err(|_| {
        unusable(
            "the argument cannot be converted to JSON (a cycle, a BigInt, or a throwing getter)",
        )
    })?;
    let Some(text) = JsValue::from(text).as_string() else {
        return Err(unusable(
            "the argument is not a JSON value (a function or a symbol)",
        ));
    };
    if text.len() > INPUT_BYTES_MAX {
        return Err(unusable(&format!(
            "the argument is larger than {INPUT_BYTES_MAX} bytes of JSON"
        )));
    }
    serde_json::from_str(&text)
        .map_err(|error| unusable(&format!("the argument is not valid JSON ({error})")))
}


/// Runs `body` as a JS promise, rejecting with a `CreditError` on failure.
fn promise<F>(body: F) -> Promise
where
    F: std::future::Future<Output = Result<JsValue, JsValue>> + 'static,
{
    future_to_promise(body)
}

/// A client for one Supabase project: credits and rate limits through
/// creditgate's SQL functions. Build it once (at module level) and reuse it.
#[wasm_bindgen(js_name = CreditClient)]
pub struct JsCreditClient {
    inner: Rc<CreditClient>,
}

#[wasm_bindgen(js_class = CreditClient)]
impl JsCreditClient {
    /// Throws a `CreditError` (`invalid_argument`) if `url` or
    /// `serviceRoleKey` is missing or malformed.
    #[wasm_bindgen(constructor)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "CreditClientOptions")] options: JsValue,
    ) -> Result<JsCreditClient, JsValue> {
        let config = client_config(&options).map_err(to_js_error)?;
        Ok(JsCreditClient {
            inner: Rc::new(CreditClient::new(config)),
        })
    }

    /// The PostgREST root this client calls (`.../rest/v1`).
    #[wasm_bindgen(getter, js_name = restUrl)]
    pub fn rest_url(&self) -> String {
        self.inner.config().rest_url().to_owned()
    }

    /// Holds `cost` credits for a new job. Rejects with
    /// `insufficient_credits` (details `{balance, needed}`), `user_not_found`,
    /// `idempotency_key_reused`, `idempotency_in_flight`, `invalid_argument`.
    #[wasm_bindgen(unchecked_return_type = "Promise<ChargeResult>")]
    pub fn charge(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ChargeRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "charge").and_then(|value| ChargeRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.charge(&request).await.map_err(to_js_error)?)
        })
    }

    /// Completes a job; with `actualCost` below its hold, the rest goes back.
    /// Rejects with `job_already_settled`, `job_not_found`.
    #[wasm_bindgen(unchecked_return_type = "Promise<CompleteResult>")]
    pub fn complete(
        &self,
        #[wasm_bindgen(unchecked_param_type = "CompleteRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed =
            from_js(&request, "complete").and_then(|value| CompleteRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.complete(&request).await.map_err(to_js_error)?)
        })
    }

    /// Returns a job's whole hold to the user. A second refund (or a refund
    /// after completion) rejects with `job_already_settled`.
    #[wasm_bindgen(unchecked_return_type = "Promise<BalanceResult>")]
    pub fn refund(
        &self,
        #[wasm_bindgen(unchecked_param_type = "RefundRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "refund").and_then(|value| RefundRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.refund(&request).await.map_err(to_js_error)?)
        })
    }

    /// Adds credits; with an `idempotencyKey`, a redelivery grants once.
    #[wasm_bindgen(unchecked_return_type = "Promise<BalanceResult>")]
    pub fn grant(
        &self,
        #[wasm_bindgen(unchecked_param_type = "GrantRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "grant").and_then(|value| GrantRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.grant(&request).await.map_err(to_js_error)?)
        })
    }

    /// The user's lots: spendable ones first, in spending order.
    #[wasm_bindgen(unchecked_return_type = "Promise<Lot[]>")]
    #[allow(non_snake_case)]
    pub fn lots(&self, #[wasm_bindgen(unchecked_param_type = "string")] userId: JsValue) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&userId, "lots").and_then(|value| user_id_from_json(&value));
        promise(async move {
            let user_id = parsed.map_err(to_js_error)?;
            to_js(&client.lots(&user_id).await.map_err(to_js_error)?)
        })
    }

    /// Takes back what remains of a lot (a refunded purchase); a second revoke changes nothing.
    #[wasm_bindgen(js_name = revokeLot, unchecked_return_type = "Promise<BalanceResult>")]
    pub fn revoke_lot(&self, #[wasm_bindgen(unchecked_param_type = "RevokeLotRequest")] request: JsValue) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "revokeLot").and_then(|value| RevokeLotRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.revoke_lot(&request).await.map_err(to_js_error)?)
        })
    }

    /// A user's balance events after `after`, oldest first.
    #[wasm_bindgen(unchecked_return_type = "Promise<CreditEvent[]>")]
    pub fn events(&self, #[wasm_bindgen(unchecked_param_type = "EventsRequest")] request: JsValue) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "events").and_then(|value| EventsRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.events(&request.user_id, request.after, request.limit).await.map_err(to_js_error)?)
        })
    }

    /// Creates or changes a plan (from each subscriber's next period).
    #[wasm_bindgen(js_name = upsertPlan, unchecked_return_type = "Promise<Plan>")]
    pub fn upsert_plan(&self, #[wasm_bindgen(unchecked_param_type = "PlanRequest")] request: JsValue) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "upsertPlan").and_then(|value| PlanRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.upsert_plan(&request).await.map_err(to_js_error)?)
        })
    }

    /// Puts a user on a plan and grants the current period's allowance.
    #[wasm_bindgen(js_name = subscribePlan, unchecked_return_type = "Promise<Subscription>")]
    pub fn subscribe_plan(&self, #[wasm_bindgen(unchecked_param_type = "SubscribeRequest")] request: JsValue) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "subscribePlan").and_then(|value| SubscribeRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.subscribe_plan(&request).await.map_err(to_js_error)?)
        })
    }

    /// Ends a user's plan (the current allowance stays until its period ends); false if there was none.
    #[wasm_bindgen(js_name = cancelPlan, unchecked_return_type = "Promise<boolean>")]
    #[allow(non_snake_case)]
    pub fn cancel_plan(&self, #[wasm_bindgen(unchecked_param_type = "string")] userId: JsValue) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&userId, "cancelPlan").and_then(|value| user_id_from_json(&value));
        promise(async move {
            let user_id = parsed.map_err(to_js_error)?;
            to_js(&client.cancel_plan(&user_id).await.map_err(to_js_error)?)
        })
    }

    /// The user's balance in credits (expired holds already returned).
    #[wasm_bindgen(unchecked_return_type = "Promise<number>")]
    #[allow(non_snake_case)]
    pub fn balance(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string")] userId: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&userId, "balance").and_then(|value| user_id_from_json(&value));
        promise(async move {
            let user_id = parsed.map_err(to_js_error)?;
            to_js(&client.balance(&user_id).await.map_err(to_js_error)?)
        })
    }

    /// Counts `cost` against `limit` per `windowSeconds` for `key`. Over the
    /// limit is a value (`success: false`), not an error.
    #[wasm_bindgen(unchecked_return_type = "Promise<RateLimitResult>")]
    pub fn limit(
        &self,
        #[wasm_bindgen(unchecked_param_type = "LimitRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "limit").and_then(|value| LimitRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.limit(&request).await.map_err(to_js_error)?)
        })
    }

    /// A token bucket: `capacity` at once, then `refillPerSecond`. Over it
    /// is a value (`success: false`), not an error.
    #[wasm_bindgen(js_name = tokenBucket, unchecked_return_type = "Promise<RateLimitResult>")]
    pub fn token_bucket(
        &self,
        #[wasm_bindgen(unchecked_param_type = "TokenBucketRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "tokenBucket").and_then(|value| TokenBucketRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.token_bucket(&request).await.map_err(to_js_error)?)
        })
    }

    /// What `limit` would answer for a request of weight 1, spending nothing.
    #[wasm_bindgen(js_name = peekLimit, unchecked_return_type = "Promise<RateLimitResult>")]
    pub fn peek_limit(
        &self,
        #[wasm_bindgen(unchecked_param_type = "PeekLimitRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "peekLimit").and_then(|value| PeekLimitRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.peek_limit(&request).await.map_err(to_js_error)?)
        })
    }

    /// Clears every window and token bucket of a key.
    #[wasm_bindgen(js_name = resetLimit, unchecked_return_type = "Promise<ResetLimitResult>")]
    pub fn reset_limit(
        &self,
        #[wasm_bindgen(unchecked_param_type = "LimitKeyRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "resetLimit").and_then(|value| LimitKeyRequest::from_json("resetLimit", &value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.reset_limit(&request).await.map_err(to_js_error)?)
        })
    }

    /// The windows in use of keys starting with `prefix`, for dashboards.
    #[wasm_bindgen(js_name = limitUsage, unchecked_return_type = "Promise<LimitUsage[]>")]
    pub fn limit_usage(
        &self,
        #[wasm_bindgen(unchecked_param_type = "LimitUsageRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "limitUsage").and_then(|value| UsageRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.limit_usage(&request).await.map_err(to_js_error)?)
        })
    }

    /// Blocks a key: every limit naming it rejects with `blocked` (403).
    #[wasm_bindgen(js_name = blockLimitKey, unchecked_return_type = "Promise<BlockLimitKeyResult>")]
    pub fn block_limit_key(
        &self,
        #[wasm_bindgen(unchecked_param_type = "BlockLimitKeyRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "blockLimitKey").and_then(|value| BlockRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.block_limit_key(&request).await.map_err(to_js_error)?)
        })
    }

    /// Lifts a block; `unblocked` says whether one was in force.
    #[wasm_bindgen(js_name = unblockLimitKey, unchecked_return_type = "Promise<UnblockLimitKeyResult>")]
    pub fn unblock_limit_key(
        &self,
        #[wasm_bindgen(unchecked_param_type = "LimitKeyRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed =
            from_js(&request, "unblockLimitKey").and_then(|value| LimitKeyRequest::from_json("unblockLimitKey", &value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(&client.unblock_limit_key(&request).await.map_err(to_js_error)?)
        })
    }

    /// A limit and a charge in one transaction, all or nothing: a denial
    /// charges nothing; insufficient credits rejects and counts nothing.
    #[wasm_bindgen(js_name = chargeWithLimit, unchecked_return_type = "Promise<ChargeWithLimitResult>")]
    pub fn charge_with_limit(
        &self,
        #[wasm_bindgen(unchecked_param_type = "ChargeWithLimitRequest")] request: JsValue,
    ) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "chargeWithLimit")
            .and_then(|value| ChargeWithLimitRequest::from_json(&value));
        promise(async move {
            let request = parsed.map_err(to_js_error)?;
            to_js(
                &client
                    .charge_with_limit(&request)
                    .await
                    .map_err(to_js_error)?,
            )
        })
    }

    /// See the `CreditClient.run` declaration in the TypeScript section.
    #[wasm_bindgen(skip_typescript)]
    pub fn run(&self, request: JsValue, work: JsValue) -> Promise {
        let client = Rc::clone(&self.inner);
        let parsed = from_js(&request, "run").and_then(|value| ChargeRequest::from_json(&value));
        let work = work.dyn_into::<Function>().map_err(|_| {
            CreditError::invalid_argument("work", "run expects a function as its second argument")
        });
        promise(async move {
            // Both arguments are checked before anything is charged.
            let request = parsed.map_err(to_js_error)?;
            let work = work.map_err(to_js_error)?;
            let outcome = client
                .run(&request, |job| async move {
                    let returned = work.call1(&JsValue::UNDEFINED, &to_js(&job)?)?;
                    let value = JsFuture::from(Promise::resolve(&returned)).await?;
                    let output = run_output(&value).map_err(to_js_error)?;
                    Ok((value, output))
                })
                .await;
            match outcome {
                Ok(RunOutcome {
                    value,
                    charge,
                    completion,
                }) => {
                    let result = Object::new();
                    Reflect::set(&result, &"value".into(), &value)?;
                    Reflect::set(&result, &"charge".into(), &to_js(&charge)?)?;
                    Reflect::set(&result, &"completion".into(), &to_js(&completion)?)?;
                    Ok(result.into())
                }
                Err(RunError::Credit(error)) => Err(to_js_error(error)),
                // The callback's own error, rethrown as it was.
                Err(RunError::Work(error)) => Err(error),
            }
        })
    }
}

/// `resultUrl` and `actualCost` of whatever `run`'s callback returned, read
/// as two properties (the value itself may be anything: huge, cyclic).
fn run_output(value: &JsValue) -> Result<RunOutput, CreditError> {
    if !value.is_object() {
        return Ok(RunOutput::default());
    }
    let mut fields = serde_json::Map::new();
    for name in ["resultUrl", "actualCost"] {
        let property = Reflect::get(value, &name.into()).map_err(|_| {
            CreditError::invalid_argument(name, format!("reading {name} from run's result threw"))
        })?;
        if !property.is_undefined() {
            fields.insert(name.to_owned(), from_js(&property, "run's result")?);
        }
    }
    RunOutput::from_json(&Value::Object(fields))
}

fn client_config(options: &JsValue) -> Result<Config, CreditError> {
    let value = from_js(options, "new CreditClient")?;
    let Value::Object(map) = &value else {
        return Err(CreditError::invalid_argument(
            "options",
            "new CreditClient expects { url, serviceRoleKey }",
        ));
    };
    let text = |name: &str| match map.get(name) {
        Some(Value::String(text)) => Ok(text.as_str()),
        None | Some(Value::Null) => Err(CreditError::invalid_argument(
            name,
            format!("{name} is required"),
        )),
        Some(_) => Err(CreditError::invalid_argument(
            name,
            format!("{name} must be a string"),
        )),
    };
    if let Some(unknown) = map
        .keys()
        .find(|key| !matches!(key.as_str(), "url" | "serviceRoleKey"))
    {
        return Err(CreditError::invalid_argument(
            unknown,
            format!(
                "new CreditClient got an unknown option {unknown:?}; expected url, serviceRoleKey"
            ),
        ));
    }
    Config::new(text("url")?, text("serviceRoleKey")?)
}

/// The IETF `RateLimit-Policy`, `RateLimit` and (when denied) `Retry-After`
/// header values for a `limit()` or `chargeWithLimit()` result. `policy`
/// names the policy in both fields (default `"default"`).
#[wasm_bindgen(js_name = rateLimitHeaders, unchecked_return_type = "RateLimitHeaders")]
pub fn rate_limit_headers(
    #[wasm_bindgen(unchecked_param_type = "RateLimitResult")] result: JsValue,
    #[wasm_bindgen(unchecked_optional_param_type = "string")] policy: JsValue,
) -> Result<JsValue, JsValue> {
    let headers = header_values(&result, &policy).map_err(to_js_error)?;
    let object = Object::new();
    for (name, value) in headers {
        Reflect::set(&object, &name.into(), &value.into())?;
    }
    Ok(object.into())
}

fn header_values(
    result: &JsValue,
    policy: &JsValue,
) -> Result<Vec<(&'static str, String)>, CreditError> {
    let result = RateLimitResult::from_json(&from_js(result, "rateLimitHeaders")?)?;
    let policy = if policy.is_undefined() || policy.is_null() {
        crate::rate_limit_headers::DEFAULT_POLICY.to_owned()
    } else {
        policy
            .as_string()
            .ok_or_else(|| CreditError::invalid_argument("policy", "policy must be a string"))?
    };
    crate::rate_limit_headers::rate_limit_headers(&result, &policy)
}

/// Checks the `Creditgate-Signature` header of one of creditgate's outgoing
/// webhooks on the raw body (a string or bytes, exactly as received): the
/// scheme of `Stripe-Signature` (`t=<unix seconds>,v1=<hex HMAC-SHA256 of
/// "{t}.{body}">`), against each of `secrets` (one, or several during a
/// rotation), and a timestamp at most `toleranceSeconds` old (default 300).
/// `true` when it holds; `false` for a missing, malformed, stale or wrong
/// signature. Throws `invalid_argument` when no secret is given.
#[wasm_bindgen(js_name = verifyWebhookSignature)]
pub fn verify_webhook_signature(
    #[wasm_bindgen(unchecked_param_type = "string | Uint8Array")] raw_body: JsValue,
    #[wasm_bindgen(unchecked_param_type = "string | null | undefined")] header: JsValue,
    #[wasm_bindgen(unchecked_param_type = "string | string[]")] secrets: JsValue,
    #[wasm_bindgen(unchecked_optional_param_type = "number")] tolerance_seconds: JsValue,
) -> Result<bool, JsValue> {
    let body: Vec<u8> = match raw_body.as_string() {
        Some(text) => text.into_bytes(),
        None if raw_body.is_instance_of::<js_sys::Uint8Array>() => js_sys::Uint8Array::new(&raw_body).to_vec(),
        None => {
            return Err(to_js_error(CreditError::invalid_argument("rawBody", "rawBody must be the body as received: a string or a Uint8Array")))
        }
    };
    let secrets: Vec<String> = match secrets.as_string() {
        Some(secret) => vec![secret],
        None if js_sys::Array::is_array(&secrets) => js_sys::Array::from(&secrets).iter().filter_map(|s| s.as_string()).collect(),
        None => Vec::new(),
    };
    let secrets: Vec<String> = secrets.into_iter().filter(|secret| !secret.is_empty()).collect();
    if secrets.is_empty() {
        return Err(to_js_error(CreditError::invalid_argument("secrets", "secrets must be a non-empty string or array of strings")));
    }
    let tolerance = match tolerance_seconds.as_f64() {
        None if tolerance_seconds.is_undefined() || tolerance_seconds.is_null() => crate::signature::TOLERANCE_SECONDS,
        Some(seconds) if seconds.is_finite() && seconds >= 0.0 => seconds as i64,
        _ => {
            return Err(to_js_error(CreditError::invalid_argument("toleranceSeconds", "toleranceSeconds must be a number of seconds, 0 or more")))
        }
    };
    let now_s = (js_sys::Date::now() / 1000.0) as i64;
    Ok(crate::signature::verify_signature_within(header.as_string().as_deref(), &body, &secrets, now_s, tolerance).is_ok())
}
