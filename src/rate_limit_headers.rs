//! The IETF RateLimit header fields for a [`RateLimitResult`].
//!
//! Follows draft-ietf-httpapi-ratelimit-headers (-08 and later): two
//! Structured Fields (RFC 9651) lists, each member a quoted policy name with
//! parameters, plus RFC 9110's `Retry-After` (delay-seconds) on a denial:
//!
//! ```text
//! RateLimit-Policy: "default";q=100;w=60    quota q per window w seconds
//! RateLimit: "default";r=0;t=42             r remaining, t seconds to reset
//! Retry-After: 42                           only when the request was denied
//! ```

use crate::error::CreditError;
use crate::RateLimitResult;
use serde_json::{Map, Value};

/// The policy name used when the caller gives none.
pub const DEFAULT_POLICY: &str = "default";

/// Policy names are labels: short, printable ASCII (an sf-string).
const POLICY_CHARS_MAX: usize = 64;

pub const POLICY_HEADER: &str = "RateLimit-Policy";
pub const RATELIMIT_HEADER: &str = "RateLimit";
pub const RETRY_AFTER_HEADER: &str = "Retry-After";

/// The header fields for one result, in the order they should be sent.
///
/// ```
/// use creditgate::{rate_limit_headers, RateLimitResult};
/// let denied = RateLimitResult { success: false, limit: 5, remaining: 0, reset: 42,
///                                retry_after: 42, window_seconds: Some(60) };
/// let headers = rate_limit_headers(&denied, "per-user").unwrap();
/// assert_eq!(headers, vec![
///     ("RateLimit-Policy", "\"per-user\";q=5;w=60".to_string()),
///     ("RateLimit", "\"per-user\";r=0;t=42".to_string()),
///     ("Retry-After", "42".to_string()),
/// ]);
/// ```
pub fn rate_limit_headers(
    result: &RateLimitResult,
    policy: &str,
) -> Result<Vec<(&'static str, String)>, CreditError> {
    let name = sf_string(policy)?;
    let mut policy_value = format!("{name};q={}", result.limit);
    if let Some(window) = result.window_seconds {
        policy_value.push_str(&format!(";w={window}"));
    }
    // Remaining can never exceed the quota; a confused input must not say so.
    let remaining = result.remaining.min(result.limit);
    let mut headers = vec![
        (POLICY_HEADER, policy_value),
        (
            RATELIMIT_HEADER,
            format!("{name};r={remaining};t={}", result.reset),
        ),
    ];
    if !result.success {
        headers.push((RETRY_AFTER_HEADER, result.retry_after.max(1).to_string()));
    }
    Ok(headers)
}

/// Encodes a policy name as a Structured Fields string: quoted, with `"`
/// and `\` escaped; only printable ASCII is allowed in one.
fn sf_string(name: &str) -> Result<String, CreditError> {
    let invalid = |why: &str| CreditError::invalid_argument("policy", format!("policy {why}"));
    if name.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if name.chars().count() > POLICY_CHARS_MAX {
        return Err(invalid(&format!(
            "must be at most {POLICY_CHARS_MAX} characters"
        )));
    }
    if !name.chars().all(|c| (' '..='~').contains(&c)) {
        return Err(invalid("must be printable ASCII"));
    }
    let mut out = String::with_capacity(name.len() + 2);
    out.push('"');
    for c in name.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Ok(out)
}

impl RateLimitResult {
    /// Reads a result back from JSON (what JS passes to `rateLimitHeaders`):
    /// `limit()`'s or `chargeWithLimit()`'s result, or any object with
    /// `success, limit, remaining, reset, retryAfter` (and optionally
    /// `windowSeconds`). Other fields are ignored.
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let Value::Object(map) = value else {
            return Err(CreditError::invalid_argument(
                "result",
                "rateLimitHeaders expects the result of limit() or chargeWithLimit()",
            ));
        };
        let success = match map.get("success") {
            Some(Value::Bool(success)) => *success,
            _ => {
                return Err(CreditError::invalid_argument(
                    "success",
                    "success must be a boolean",
                ))
            }
        };
        let window_seconds = match map.get("windowSeconds") {
            None | Some(Value::Null) => None,
            Some(_) => Some(count(map, "windowSeconds")?),
        };
        Ok(RateLimitResult {
            success,
            limit: count(map, "limit")?,
            remaining: count(map, "remaining")?,
            reset: count(map, "reset")?,
            retry_after: count(map, "retryAfter")?,
            window_seconds,
        })
    }
}

/// A non-negative integer field.
fn count(map: &Map<String, Value>, field: &str) -> Result<u32, CreditError> {
    map.get(field)
        .and_then(Value::as_f64)
        .filter(|n| n.fract() == 0.0 && (0.0..=f64::from(u32::MAX)).contains(n))
        .map(|n| n as u32)
        .ok_or_else(|| {
            CreditError::invalid_argument(field, format!("{field} must be a non-negative integer"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    fn result(success: bool, remaining: u32, reset: u32, retry_after: u32) -> RateLimitResult {
        RateLimitResult {
            success,
            limit: 100,
            remaining,
            reset,
            retry_after,
            window_seconds: Some(60),
        }
    }

    fn value<'h>(headers: &'h [(&'static str, String)], name: &str) -> Option<&'h str> {
        headers
            .iter()
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn an_allowed_request_gets_policy_and_ratelimit_but_no_retry_after() {
        let headers = rate_limit_headers(&result(true, 99, 60, 0), DEFAULT_POLICY).expect("valid");
        assert_eq!(headers.len(), 2);
        assert_eq!(
            value(&headers, "RateLimit-Policy"),
            Some("\"default\";q=100;w=60")
        );
        assert_eq!(value(&headers, "RateLimit"), Some("\"default\";r=99;t=60"));
        assert_eq!(value(&headers, "Retry-After"), None);
    }

    #[test]
    fn a_denied_request_gets_retry_after() {
        let headers = rate_limit_headers(&result(false, 0, 17, 17), DEFAULT_POLICY).expect("valid");
        assert_eq!(value(&headers, "RateLimit"), Some("\"default\";r=0;t=17"));
        assert_eq!(value(&headers, "Retry-After"), Some("17"));
        // Never "Retry-After: 0" on a denial: that invites a hot loop.
        let headers = rate_limit_headers(&result(false, 0, 0, 0), DEFAULT_POLICY).expect("valid");
        assert_eq!(value(&headers, "Retry-After"), Some("1"));
    }

    #[test]
    fn an_unknown_window_is_left_out() {
        let mut no_window = result(true, 5, 10, 0);
        no_window.window_seconds = None;
        let headers = rate_limit_headers(&no_window, "p").expect("valid");
        assert_eq!(value(&headers, "RateLimit-Policy"), Some("\"p\";q=100"));
    }

    #[test]
    fn remaining_is_capped_at_the_quota() {
        let headers = rate_limit_headers(&result(true, 5000, 10, 0), "p").expect("valid");
        assert_eq!(value(&headers, "RateLimit"), Some("\"p\";r=100;t=10"));
    }

    #[test]
    fn policy_names_are_escaped_sf_strings() {
        let headers =
            rate_limit_headers(&result(true, 1, 1, 0), "a \"quoted\" \\ name").expect("valid");
        assert_eq!(
            value(&headers, "RateLimit-Policy"),
            Some("\"a \\\"quoted\\\" \\\\ name\";q=100;w=60")
        );
        for bad in ["", "naïve", "tab\there", "new\nline"] {
            let error = rate_limit_headers(&result(true, 1, 1, 0), bad).expect_err(bad);
            assert_eq!(error.code(), ErrorCode::InvalidArgument);
            assert_eq!(error.details()["field"], "policy");
        }
        assert!(rate_limit_headers(&result(true, 1, 1, 0), &"p".repeat(POLICY_CHARS_MAX)).is_ok());
        assert!(
            rate_limit_headers(&result(true, 1, 1, 0), &"p".repeat(POLICY_CHARS_MAX + 1)).is_err()
        );
    }

    #[test]
    fn header_values_are_valid_header_values() {
        for success in [true, false] {
            let headers =
                rate_limit_headers(&result(success, 0, u32::MAX, u32::MAX), "x").expect("valid");
            for (_, value) in headers {
                assert!(value.bytes().all(|b| (0x20..0x7f).contains(&b)), "{value}");
            }
        }
    }

    #[test]
    fn results_are_read_back_from_json() {
        let parsed = RateLimitResult::from_json(&json!({
            "success": false, "limit": 5, "remaining": 0, "reset": 9, "retryAfter": 9,
            "windowSeconds": 60, "jobId": null, "balance": null
        }))
        .expect("valid");
        assert_eq!(
            parsed,
            RateLimitResult {
                success: false,
                limit: 5,
                remaining: 0,
                reset: 9,
                retry_after: 9,
                window_seconds: Some(60)
            }
        );
        let without_window = RateLimitResult::from_json(
            &json!({"success": true, "limit": 5, "remaining": 4, "reset": 9, "retryAfter": 0}),
        )
        .expect("valid");
        assert_eq!(without_window.window_seconds, None);
    }

    #[test]
    fn malformed_results_are_refused_not_panicked_on() {
        let base =
            json!({"success": true, "limit": 5, "remaining": 4, "reset": 9, "retryAfter": 0});
        let cases = [
            ("success", json!("yes")),
            ("limit", json!(-1)),
            ("remaining", json!(1.5)),
            ("reset", json!("9")),
            ("retryAfter", json!(null)),
            ("windowSeconds", json!(1e20)),
        ];
        for (field, bad) in cases {
            let mut value = base.clone();
            value[field] = bad;
            let error = RateLimitResult::from_json(&value).expect_err(field);
            assert_eq!(error.details()["field"], field);
        }
        for bad in [json!(null), json!([]), json!("x"), json!(5)] {
            assert_eq!(
                RateLimitResult::from_json(&bad)
                    .expect_err("not an object")
                    .details()["field"],
                "result"
            );
        }
    }
}
