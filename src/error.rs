//! One error type for every failure, with the stable codes of docs/design.md.
//!
//! Every failure a caller can see has a snake_case [`ErrorCode`], an HTTP
//! status, a message, JSON details and a `retryable` flag. Codes are only
//! ever added, never renamed: callers branch on them.
//!
//! PostgREST answers a failed RPC with `{code, message, details, hint}`:
//! `code` is the SQLSTATE, and creditgate's SQL puts the stable code in
//! `hint` and machine-readable JSON in `details` (see `docs/rpc.md`).
//! [`CreditError::from_postgrest`] turns any such answer (or anything else a
//! proxy might send instead) into a `CreditError`, never panicking.

use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// The stable error codes. Only ever added to; a retired code keeps its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// A request failed validation (locally, or SQLSTATE 22023 / PT400).
    InvalidArgument,
    /// No or a bad key/JWT (the gateway, or 42501 with 401).
    Unauthorized,
    /// The key's role may not call the function (42501 with 403).
    Forbidden,
    /// The balance is below the cost (PT402; details `{balance, needed}`).
    InsufficientCredits,
    /// No such user (PT404).
    UserNotFound,
    /// No such job, or not this user's (PT404).
    JobNotFound,
    /// No such lot (PT404).
    LotNotFound,
    /// No such plan (PT404).
    PlanNotFound,
    /// The same idempotency key is still being processed (PT409).
    IdempotencyInFlight,
    /// The job was already completed, refunded or expired (PT409).
    JobAlreadySettled,
    /// The idempotency key was used before with a different request (PT422).
    IdempotencyKeyReused,
    /// Over a rate limit. `limit()` returns this as a value; the HTTP layer
    /// raises it with `Retry-After`.
    RateLimited,
    /// The user already has as many paid requests running (open holds) as
    /// a concurrency limit allows (HTTP 429, `Retry-After: 1`; a slot frees
    /// when a hold settles or expires). Retryable.
    ConcurrencyLimited,
    /// A limit key of the request is blocked by an operator (PT403 with
    /// hint `blocked`; details `{key, until, reason}`): not retryable, the
    /// block ends when it ends.
    Blocked,
    /// PostgREST or the database answered something unexpected (5xx, a
    /// missing function, an undecodable body).
    Upstream,
    /// The request never got an answer (DNS, connection, CORS, abort).
    Network,
}

impl ErrorCode {
    /// Every code, in docs/design.md's order.
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::InvalidArgument,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::InsufficientCredits,
        ErrorCode::UserNotFound,
        ErrorCode::JobNotFound,
        ErrorCode::LotNotFound,
        ErrorCode::PlanNotFound,
        ErrorCode::IdempotencyInFlight,
        ErrorCode::JobAlreadySettled,
        ErrorCode::IdempotencyKeyReused,
        ErrorCode::RateLimited,
        ErrorCode::ConcurrencyLimited,
        ErrorCode::Blocked,
        ErrorCode::Upstream,
        ErrorCode::Network,
    ];

    /// The wire name, e.g. `"insufficient_credits"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidArgument => "invalid_argument",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::InsufficientCredits => "insufficient_credits",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::JobNotFound => "job_not_found",
            ErrorCode::LotNotFound => "lot_not_found",
            ErrorCode::PlanNotFound => "plan_not_found",
            ErrorCode::IdempotencyInFlight => "idempotency_in_flight",
            ErrorCode::JobAlreadySettled => "job_already_settled",
            ErrorCode::IdempotencyKeyReused => "idempotency_key_reused",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ConcurrencyLimited => "concurrency_limited",
            ErrorCode::Blocked => "blocked",
            ErrorCode::Upstream => "upstream",
            ErrorCode::Network => "network",
        }
    }

    /// The code for a wire name, if it is one of ours.
    ///
    /// ```
    /// use creditgate::ErrorCode;
    /// assert_eq!(ErrorCode::parse("job_not_found"), Some(ErrorCode::JobNotFound));
    /// assert_eq!(ErrorCode::parse("Job_Not_Found"), None);
    /// ```
    pub fn parse(name: &str) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| code.as_str() == name)
    }

    /// The HTTP status docs/design.md gives this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::InvalidArgument => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::InsufficientCredits => 402,
            ErrorCode::Forbidden | ErrorCode::Blocked => 403,
            ErrorCode::UserNotFound | ErrorCode::JobNotFound | ErrorCode::LotNotFound | ErrorCode::PlanNotFound => 404,
            ErrorCode::IdempotencyInFlight | ErrorCode::JobAlreadySettled => 409,
            ErrorCode::IdempotencyKeyReused => 422,
            ErrorCode::RateLimited | ErrorCode::ConcurrencyLimited => 429,
            ErrorCode::Upstream => 502,
            ErrorCode::Network => 503,
        }
    }

    /// Whether the same request may succeed if sent again later, unchanged.
    /// In-flight idempotency and rate limits clear with time; transport and
    /// upstream failures are usually transient. Everything else is a fact
    /// about the request or the data and will fail the same way again.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::IdempotencyInFlight
                | ErrorCode::RateLimited
                | ErrorCode::ConcurrencyLimited
                | ErrorCode::Upstream
                | ErrorCode::Network
        )
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure, as every layer reports it.
///
/// Invariant: `details` is always a JSON object (possibly empty).
#[derive(Debug, Clone, PartialEq)]
pub struct CreditError {
    code: ErrorCode,
    message: String,
    details: Map<String, Value>,
    retryable: bool,
}

/// Bodies longer than this are not parsed, only summarized: an error body
/// from PostgREST is a few hundred bytes, and a huge HTML page from a proxy
/// is not worth holding in a message.
const ERROR_BODY_BYTES_MAX: usize = 64 * 1024;

/// Messages taken from a response are cut to this many chars.
const MESSAGE_CHARS_MAX: usize = 1000;

impl CreditError {
    /// An error with no details, retryable as its code says.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        CreditError {
            code,
            message: message.into(),
            details: Map::new(),
            retryable: code.retryable(),
        }
    }

    /// A validation failure naming the offending field.
    pub fn invalid_argument(field: &str, message: impl Into<String>) -> Self {
        CreditError::new(ErrorCode::InvalidArgument, message).with_detail("field", field)
    }

    /// A transport failure: the request got no answer.
    pub fn network(message: impl Into<String>) -> Self {
        CreditError::new(ErrorCode::Network, message)
    }

    /// An answer that is not what the RPC promises.
    pub fn upstream(message: impl Into<String>) -> Self {
        CreditError::new(ErrorCode::Upstream, message)
    }

    /// Adds one detail (replacing one of the same name).
    pub fn with_detail(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.details.insert(name.to_owned(), value.into());
        self
    }

    /// Overrides the code's default `retryable`.
    pub fn with_retryable(mut self, retryable: bool) -> Self {
        self.retryable = retryable;
        self
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Always an object; `{}` when there is nothing to add.
    pub fn details(&self) -> &Map<String, Value> {
        &self.details
    }

    /// The HTTP status of the code (docs/design.md's table), whatever status the
    /// upstream answer had: one status, one meaning.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    pub fn retryable(&self) -> bool {
        self.retryable
    }

    /// Decodes a non-2xx answer from PostgREST (or from whatever stood in
    /// its way: a proxy, a load balancer). Never panics, whatever the body.
    ///
    /// ```
    /// use creditgate::{CreditError, ErrorCode};
    /// let body = r#"{"code":"PT402","message":"Insufficient credits: has 3 needs 5",
    ///               "details":"{\"balance\": 3, \"needed\": 5}","hint":"insufficient_credits"}"#;
    /// let error = CreditError::from_postgrest(402, body);
    /// assert_eq!(error.code(), ErrorCode::InsufficientCredits);
    /// assert_eq!(error.details()["needed"], 5);
    /// assert!(!error.retryable());
    /// ```
    pub fn from_postgrest(http_status: u16, body: &str) -> CreditError {
        let parsed = if body.len() <= ERROR_BODY_BYTES_MAX {
            serde_json::from_str::<PostgrestErrorBody>(body).ok()
        } else {
            None
        };
        match parsed {
            Some(error_body) => error_body.into_error(http_status),
            None => from_status_only(http_status, body),
        }
    }
}

impl fmt::Display for CreditError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for CreditError {}

/// PostgREST's error body. Every field is optional and loosely typed here so
/// that a body from a different PostgREST version still decodes.
#[derive(Debug, Deserialize)]
struct PostgrestErrorBody {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    message: Option<Value>,
    #[serde(default)]
    details: Option<Value>,
    #[serde(default)]
    hint: Option<Value>,
}

impl PostgrestErrorBody {
    fn into_error(self, http_status: u16) -> CreditError {
        let sqlstate = text_of(self.code.as_ref());
        let message = text_of(self.message.as_ref()).unwrap_or_default();
        let hint = text_of(self.hint.as_ref());
        let ours = hint.as_deref().and_then(ErrorCode::parse);
        let code =
            ours.unwrap_or_else(|| code_from_sqlstate(sqlstate.as_deref(), &message, http_status));

        let mut details = details_object(self.details);
        if code == ErrorCode::InvalidArgument {
            // The SQL names its parameter (`p_cost`); JS callers know the field (`cost`).
            let field = details
                .get("parameter")
                .and_then(Value::as_str)
                .and_then(field_of_parameter);
            if let Some(field) = field {
                details
                    .entry("field")
                    .or_insert_with(|| Value::String(field.to_owned()));
            }
        }
        if ours.is_none() {
            // Not one of creditgate's own errors: keep what explains it.
            if let Some(sqlstate) = &sqlstate {
                details.insert("sqlstate".into(), Value::String(sqlstate.clone()));
            }
            if let Some(hint) = hint {
                details.insert("hint".into(), Value::String(cut(&hint)));
            }
            details.insert("httpStatus".into(), Value::from(http_status));
        }
        let message = if message.is_empty() {
            format!("the database refused the request (HTTP {http_status})")
        } else {
            cut(&message)
        };
        let error = CreditError {
            code,
            message,
            details,
            retryable: code.retryable(),
        };
        // A missing function or a schema mismatch is a deployment mistake:
        // retrying will not fix it.
        let misconfigured =
            matches!(sqlstate.as_deref(), Some(s) if s.starts_with("PGRST2") || s == "42883");
        if misconfigured {
            error.with_retryable(false)
        } else {
            error
        }
    }
}

/// A field's text: strings as they are, other JSON as JSON, null as absent.
fn text_of(value: Option<&Value>) -> Option<String> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => Some(text.clone()),
        Some(other) => Some(other.to_string()),
    }
}

/// `details` as an object: our SQL sends a JSON object as text; PostgreSQL's
/// own errors send prose, kept as `{"detail": "..."}`.
fn details_object(details: Option<Value>) -> Map<String, Value> {
    match details {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(map)) => map,
        Some(Value::String(text)) => match serde_json::from_str::<Value>(&text) {
            Ok(Value::Object(map)) => map,
            _ => {
                let mut map = Map::new();
                if !text.is_empty() {
                    map.insert("detail".into(), Value::String(cut(&text)));
                }
                map
            }
        },
        Some(other) => {
            let mut map = Map::new();
            map.insert("detail".into(), other);
            map
        }
    }
}

/// The request field a SQL parameter comes from.
fn field_of_parameter(parameter: &str) -> Option<&'static str> {
    Some(match parameter {
        "p_user_id" => "userId",
        "p_operation_type" => "operation",
        "p_cost" => "cost",
        "p_idempotency_key" => "idempotencyKey",
        "p_metadata" => "metadata",
        "p_hold_seconds" => "holdSeconds",
        "p_job_id" => "jobId",
        "p_result_url" => "resultUrl",
        "p_actual_cost" => "actualCost",
        "p_amount" => "amount",
        "p_reason" => "reason",
        "p_key" | "p_limit_key" => "key",
        "p_limit" => "limit",
        "p_window_seconds" => "windowSeconds",
        "p_limit_cost" => "weight",
        _ => return None,
    })
}

/// The code for an error whose HINT is not one of ours: by SQLSTATE, then
/// by HTTP status.
fn code_from_sqlstate(sqlstate: Option<&str>, message: &str, http_status: u16) -> ErrorCode {
    let lowercase = message.to_ascii_lowercase();
    match sqlstate {
        // Invalid parameter value, bad text representation (a malformed
        // uuid), out of range, null not allowed, check violation, and
        // PostgREST's own request parsing errors.
        Some(
            "22023" | "PT400" | "22P02" | "22003" | "22004" | "23502" | "23514" | "PGRST100"
            | "PGRST102",
        ) => ErrorCode::InvalidArgument,
        Some("PT402") => ErrorCode::InsufficientCredits,
        Some("PT404") if lowercase.contains("job") => ErrorCode::JobNotFound,
        Some("PT404") if lowercase.contains("lot") => ErrorCode::LotNotFound,
        Some("PT404") if lowercase.contains("plan") => ErrorCode::PlanNotFound,
        Some("PT404") => ErrorCode::UserNotFound,
        // A foreign key to auth.users: the user does not exist.
        Some("23503") => ErrorCode::UserNotFound,
        Some("PT409") if lowercase.contains("in flight") || lowercase.contains("in progress") => {
            ErrorCode::IdempotencyInFlight
        }
        Some("PT409") => ErrorCode::JobAlreadySettled,
        Some("PT422") => ErrorCode::IdempotencyKeyReused,
        Some("PT403") if lowercase.contains("blocked") => ErrorCode::Blocked,
        Some("PT403") => ErrorCode::Forbidden,
        Some("42501") if http_status == 401 => ErrorCode::Unauthorized,
        Some("42501") => ErrorCode::Forbidden,
        // JWT missing, malformed, expired, or with an unknown role.
        Some("PGRST300" | "PGRST301" | "PGRST302" | "PGRST303") => ErrorCode::Unauthorized,
        _ => code_from_status(http_status),
    }
}

fn code_from_status(http_status: u16) -> ErrorCode {
    match http_status {
        400 => ErrorCode::InvalidArgument,
        401 => ErrorCode::Unauthorized,
        403 => ErrorCode::Forbidden,
        429 => ErrorCode::RateLimited,
        _ => ErrorCode::Upstream,
    }
}

/// A body that is not PostgREST's JSON (an HTML error page, a proxy's 502).
fn from_status_only(http_status: u16, body: &str) -> CreditError {
    let code = code_from_status(http_status);
    let mut excerpt: String = body.chars().take(200).collect();
    if excerpt.len() < body.len() {
        excerpt.push('…');
    }
    CreditError::new(
        code,
        format!("unexpected HTTP {http_status} answer from the API (not a PostgREST error body)"),
    )
    .with_detail("httpStatus", http_status)
    .with_detail("body", excerpt)
}

/// Cuts text taken from a response to a sane length (on a char boundary).
fn cut(text: &str) -> String {
    if text.chars().count() <= MESSAGE_CHARS_MAX {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(MESSAGE_CHARS_MAX).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn body(code: &str, message: &str, details: Value, hint: Value) -> String {
        json!({"code": code, "message": message, "details": details, "hint": hint}).to_string()
    }

    #[test]
    fn every_code_round_trips_through_its_name() {
        for code in ErrorCode::ALL {
            assert_eq!(ErrorCode::parse(code.as_str()), Some(code));
            assert_eq!(code.to_string(), code.as_str());
        }
        assert_eq!(ErrorCode::parse(""), None);
        assert_eq!(ErrorCode::parse("INSUFFICIENT_CREDITS"), None);
    }

    #[test]
    fn statuses_match_the_design_table() {
        let table = [
            ("invalid_argument", 400),
            ("unauthorized", 401),
            ("forbidden", 403),
            ("insufficient_credits", 402),
            ("user_not_found", 404),
            ("job_not_found", 404),
            ("lot_not_found", 404),
            ("plan_not_found", 404),
            ("idempotency_in_flight", 409),
            ("job_already_settled", 409),
            ("idempotency_key_reused", 422),
            ("rate_limited", 429),
            ("concurrency_limited", 429),
            ("blocked", 403),
            ("upstream", 502),
            ("network", 503),
        ];
        assert_eq!(table.len(), ErrorCode::ALL.len());
        for (name, status) in table {
            assert_eq!(
                ErrorCode::parse(name).map(ErrorCode::status),
                Some(status),
                "{name}"
            );
        }
    }

    #[test]
    fn only_transient_codes_are_retryable() {
        let retryable: Vec<&str> = ErrorCode::ALL
            .into_iter()
            .filter(|code| code.retryable())
            .map(ErrorCode::as_str)
            .collect();
        assert_eq!(
            retryable,
            [
                "idempotency_in_flight",
                "rate_limited",
                "concurrency_limited",
                "upstream",
                "network"
            ]
        );
    }

    #[test]
    fn the_hint_carries_every_one_of_our_codes() {
        for code in ErrorCode::ALL {
            let text = body("PT409", "something", json!(null), json!(code.as_str()));
            let error = CreditError::from_postgrest(409, &text);
            assert_eq!(error.code(), code);
            assert_eq!(error.status(), code.status());
            assert_eq!(error.retryable(), code.retryable());
            assert_eq!(error.message(), "something");
            // Our own errors carry only the SQL's details, nothing added.
            assert!(error.details().is_empty(), "{:?}", error.details());
        }
    }

    #[test]
    fn insufficient_credits_keeps_balance_and_needed() {
        let text = body(
            "PT402",
            "Insufficient credits: has 3 needs 5",
            json!("{\"balance\": 3, \"needed\": 5}"),
            json!("insufficient_credits"),
        );
        let error = CreditError::from_postgrest(402, &text);
        assert_eq!(error.code(), ErrorCode::InsufficientCredits);
        assert_eq!(error.status(), 402);
        assert_eq!(error.details()["balance"], 3);
        assert_eq!(error.details()["needed"], 5);
        assert_eq!(
            error.to_string(),
            "insufficient_credits: Insufficient credits: has 3 needs 5"
        );
    }

    #[test]
    fn sqlstates_without_our_hint_still_map() {
        let cases = [
            (
                "22023",
                "p_cost must be positive",
                400,
                ErrorCode::InvalidArgument,
            ),
            ("PT400", "bad", 400, ErrorCode::InvalidArgument),
            (
                "22P02",
                "invalid input syntax for type uuid: \"x\"",
                400,
                ErrorCode::InvalidArgument,
            ),
            (
                "22003",
                "integer out of range",
                400,
                ErrorCode::InvalidArgument,
            ),
            (
                "23514",
                "violates check constraint",
                400,
                ErrorCode::InvalidArgument,
            ),
            (
                "PGRST102",
                "Empty or invalid json",
                400,
                ErrorCode::InvalidArgument,
            ),
            (
                "PT402",
                "Insufficient credits: has 0 needs 1",
                402,
                ErrorCode::InsufficientCredits,
            ),
            ("PT404", "User not found", 404, ErrorCode::UserNotFound),
            ("PT404", "Job not found", 404, ErrorCode::JobNotFound),
            (
                "23503",
                "violates foreign key constraint",
                409,
                ErrorCode::UserNotFound,
            ),
            (
                "PT409",
                "Job already settled",
                409,
                ErrorCode::JobAlreadySettled,
            ),
            (
                "PT409",
                "Request with this key is in flight",
                409,
                ErrorCode::IdempotencyInFlight,
            ),
            ("PT422", "Key reused", 422, ErrorCode::IdempotencyKeyReused),
            (
                "42501",
                "permission denied for function x",
                401,
                ErrorCode::Unauthorized,
            ),
            (
                "42501",
                "permission denied for function x",
                403,
                ErrorCode::Forbidden,
            ),
            ("PGRST301", "JWSError", 401, ErrorCode::Unauthorized),
            (
                "PGRST202",
                "Could not find the function",
                404,
                ErrorCode::Upstream,
            ),
            ("XX000", "internal error", 500, ErrorCode::Upstream),
            (
                "40001",
                "could not serialize access",
                409,
                ErrorCode::Upstream,
            ),
            (
                "57014",
                "canceling statement due to statement timeout",
                500,
                ErrorCode::Upstream,
            ),
        ];
        for (sqlstate, message, status, expected) in cases {
            let error = CreditError::from_postgrest(
                status,
                &body(sqlstate, message, json!(null), json!(null)),
            );
            assert_eq!(error.code(), expected, "{sqlstate} {message}");
            assert_eq!(error.details()["sqlstate"], sqlstate);
            assert_eq!(error.details()["httpStatus"], status);
        }
    }

    #[test]
    fn a_missing_function_is_not_retryable_but_a_500_is() {
        let missing = CreditError::from_postgrest(
            404,
            &body(
                "PGRST202",
                "Could not find the function public.charge_credits",
                json!(null),
                json!("Perhaps you meant ..."),
            ),
        );
        assert_eq!(missing.code(), ErrorCode::Upstream);
        assert!(!missing.retryable());
        assert_eq!(missing.details()["hint"], "Perhaps you meant ...");

        let crash =
            CreditError::from_postgrest(500, &body("XX000", "boom", json!(null), json!(null)));
        assert_eq!(crash.code(), ErrorCode::Upstream);
        assert!(crash.retryable());
    }

    #[test]
    fn prose_details_are_kept_as_detail() {
        let error = CreditError::from_postgrest(
            409,
            &body(
                "23503",
                "fk",
                json!("Key (user_id)=(x) is not present in table \"users\"."),
                json!(null),
            ),
        );
        assert_eq!(
            error.details()["detail"],
            "Key (user_id)=(x) is not present in table \"users\"."
        );
    }

    #[test]
    fn sql_parameters_are_named_as_request_fields() {
        let text = body(
            "22023",
            "p_actual_cost cannot exceed the held amount",
            json!("{\"parameter\": \"p_actual_cost\", \"value\": 9, \"held\": 5}"),
            json!("invalid_argument"),
        );
        let error = CreditError::from_postgrest(400, &text);
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
        assert_eq!(error.details()["field"], "actualCost");
        assert_eq!(error.details()["parameter"], "p_actual_cost");
        assert_eq!(error.details()["held"], 5);
        let unknown = body(
            "22023",
            "x",
            json!("{\"parameter\": \"p_other\"}"),
            json!("invalid_argument"),
        );
        assert!(CreditError::from_postgrest(400, &unknown)
            .details()
            .get("field")
            .is_none());
    }

    #[test]
    fn an_unknown_hint_is_not_mistaken_for_a_code() {
        let error = CreditError::from_postgrest(
            400,
            &body(
                "22023",
                "bad",
                json!(null),
                json!("try again with a smaller number"),
            ),
        );
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
        assert_eq!(error.details()["hint"], "try again with a smaller number");
    }

    #[test]
    fn non_json_bodies_fall_back_to_the_status() {
        let cases = [
            (400, ErrorCode::InvalidArgument),
            (401, ErrorCode::Unauthorized),
            (403, ErrorCode::Forbidden),
            (404, ErrorCode::Upstream),
            (429, ErrorCode::RateLimited),
            (500, ErrorCode::Upstream),
            (502, ErrorCode::Upstream),
            (503, ErrorCode::Upstream),
        ];
        for (status, expected) in cases {
            let error =
                CreditError::from_postgrest(status, "<html><body>Bad Gateway</body></html>");
            assert_eq!(error.code(), expected, "{status}");
            assert_eq!(error.details()["httpStatus"], status);
            assert_eq!(
                error.details()["body"],
                "<html><body>Bad Gateway</body></html>"
            );
        }
    }

    #[test]
    fn garbage_bodies_never_panic() {
        let huge = "x".repeat(ERROR_BODY_BYTES_MAX + 10);
        let long_message = body("22023", &"é".repeat(5000), json!(null), json!(null));
        let garbage = [
            "",
            "null",
            "[]",
            "42",
            "\"text\"",
            "{",
            "{\"code\": 5, \"message\": [1,2], \"details\": {\"a\": 1}, \"hint\": {\"x\": true}}",
            "{\"code\": null, \"message\": null, \"details\": null, \"hint\": null}",
            "{\"hint\": \"insufficient_credits\", \"details\": \"not json {\"}",
            "{\"details\": \"[1,2,3]\"}",
            "\u{0}\u{1}\u{ffff}",
            huge.as_str(),
            long_message.as_str(),
        ];
        for status in [0, 200, 400, 402, 404, 409, 500, 599, 999] {
            for text in garbage {
                let error = CreditError::from_postgrest(status, text);
                assert!(!error.message().is_empty());
                assert!(error.message().chars().count() <= MESSAGE_CHARS_MAX + 1);
            }
        }
    }

    #[test]
    fn a_hint_with_our_code_and_non_json_details_still_decodes() {
        let error = CreditError::from_postgrest(
            402,
            "{\"hint\": \"insufficient_credits\", \"details\": \"not json {\"}",
        );
        assert_eq!(error.code(), ErrorCode::InsufficientCredits);
        assert_eq!(error.details()["detail"], "not json {");
        assert_eq!(
            error.message(),
            "the database refused the request (HTTP 402)"
        );
    }

    #[test]
    fn invalid_argument_names_its_field() {
        let error = CreditError::invalid_argument("cost", "cost must be positive");
        assert_eq!(error.code(), ErrorCode::InvalidArgument);
        assert_eq!(error.details()["field"], "cost");
        assert_eq!(error.status(), 400);
        assert!(!error.retryable());
    }
}
