//! Decoding each PostgREST answer: a result on 2xx, a [`CreditError`] otherwise.
//!
//! PostgREST returns a `RETURNS TABLE` function as a JSON array of rows and
//! a scalar function as a bare JSON value. Anything else on a 2xx is an
//! `upstream` error (the schema and this client disagree), never a panic.

use crate::error::{CreditError, ErrorCode};
use crate::{
    ChargeWithEntriesResult, LimitOutcome,
    BalanceResult, BlockResult, ChargeResult, ChargeWithLimitResult, ChargeWithLimitsResult, CompleteResult,
    JobId, LimitKeyRequest, LimitRequest, LimitUsage, PeekLimitRequest, RateLimitResult, ResetResult, UnblockResult,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// A raw PostgREST answer: status and body text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

impl Answer {
    pub fn new(status: u16, body: impl Into<String>) -> Self {
        Answer {
            status,
            body: body.into(),
        }
    }

    fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The single row of a `RETURNS TABLE` function (an array of one row;
    /// a bare object is accepted too, as `Accept: ...object+json` gives).
    fn row<T: DeserializeOwned>(&self, function: &str) -> Result<T, CreditError> {
        let value = self.json(function)?;
        let row = match value {
            Value::Array(mut rows) if rows.len() == 1 => rows.swap_remove(0),
            Value::Array(rows) => {
                return Err(unexpected(
                    function,
                    &format!("{} rows instead of 1", rows.len()),
                ));
            }
            other => other,
        };
        serde_json::from_value(row).map_err(|error| unexpected(function, &error.to_string()))
    }

    /// The value of a scalar function.
    fn scalar<T: DeserializeOwned>(&self, function: &str) -> Result<T, CreditError> {
        let value = self.json(function)?;
        serde_json::from_value(value).map_err(|error| unexpected(function, &error.to_string()))
    }

    fn json(&self, function: &str) -> Result<Value, CreditError> {
        if !self.is_success() {
            return Err(CreditError::from_postgrest(self.status, &self.body));
        }
        serde_json::from_str(&self.body).map_err(|error| unexpected(function, &error.to_string()))
    }
}

/// The rows of a table read.
pub fn rows<T: DeserializeOwned>(table: &str, answer: &Answer) -> Result<Vec<T>, CreditError> {
    let value = answer.json(table)?;
    serde_json::from_value(value).map_err(|error| {
        CreditError::upstream(format!("unexpected answer reading {table}: {error}"))
            .with_detail("table", table)
            .with_retryable(false)
    })
}

/// The one row of a `RETURNS TABLE` function.
pub fn one_row<T: DeserializeOwned>(function: &str, answer: &Answer) -> Result<T, CreditError> {
    answer.row(function)
}

/// A scalar function's value.
pub fn scalar<T: DeserializeOwned>(function: &str, answer: &Answer) -> Result<T, CreditError> {
    answer.scalar(function)
}

/// A job id from a row: a malformed one means the schema and this client disagree.
fn job_id(function: &str, text: &str) -> Result<JobId, CreditError> {
    JobId::parse("job_id", text).map_err(|_| unexpected(function, "job_id is not a UUID"))
}

fn unexpected(function: &str, why: &str) -> CreditError {
    CreditError::upstream(format!("unexpected answer from {function}: {why}"))
        .with_detail("function", function)
        .with_retryable(false)
}

#[derive(Deserialize)]
struct ChargeRow {
    job_id: String,
    new_balance: i64,
    #[serde(default)]
    replayed: Option<bool>,
    #[serde(default)]
    expires_at: Option<String>,
}

/// `charge_credits`.
pub fn charge(response: &Answer) -> Result<ChargeResult, CreditError> {
    let row: ChargeRow = response.row("charge_credits")?;
    Ok(ChargeResult {
        job_id: job_id("charge_credits", &row.job_id)?,
        balance: row.new_balance,
        replayed: row.replayed.unwrap_or(false),
        expires_at: row.expires_at,
    })
}

#[derive(Deserialize)]
struct CompleteRow {
    job_id: String,
    status: String,
    new_balance: i64,
    #[serde(default)]
    refunded: Option<i64>,
}

/// `complete_generation_job`. A hold that had expired comes back as a row
/// with status `expired` (its expiry is committed, the credits are back):
/// for the caller that is a refused completion, `job_already_settled`.
pub fn complete(response: &Answer) -> Result<CompleteResult, CreditError> {
    let row: CompleteRow = response.row("complete_generation_job")?;
    if row.status == "expired" {
        return Err(CreditError::new(
            ErrorCode::JobAlreadySettled,
            "the hold expired before it was completed; its credits went back to the user",
        )
        .with_detail("jobId", row.job_id)
        .with_detail("status", "expired")
        .with_detail("balance", row.new_balance)
        .with_detail("refunded", row.refunded.unwrap_or(0)));
    }
    Ok(CompleteResult {
        job_id: job_id("complete_generation_job", &row.job_id)?,
        status: row.status,
        balance: row.new_balance,
        refunded: row.refunded.unwrap_or(0),
    })
}

/// `refund_credits`, `grant_credits`: the new balance.
pub fn balance_result(
    function: &str,
    response: &Answer,
) -> Result<BalanceResult, CreditError> {
    Ok(BalanceResult {
        balance: balance(function, response)?,
    })
}

/// A scalar balance. A NULL balance can only mean there is no such user.
pub fn balance(function: &str, response: &Answer) -> Result<i64, CreditError> {
    let balance: Option<i64> = response.scalar(function)?;
    balance.ok_or_else(|| CreditError::new(ErrorCode::UserNotFound, "User not found"))
}

#[derive(Deserialize)]
struct LimitRow {
    allowed: bool,
    limit: i64,
    remaining: i64,
    reset_seconds: i64,
    retry_after_seconds: i64,
}

impl LimitRow {
    fn into_result(self, request: &LimitRequest) -> RateLimitResult {
        self.into_window(Some(request.window_seconds.get()))
    }

    fn into_window(self, window_seconds: Option<u32>) -> RateLimitResult {
        let clamp = |value: i64| value.clamp(0, i64::from(u32::MAX)) as u32;
        RateLimitResult {
            success: self.allowed,
            limit: clamp(self.limit),
            remaining: clamp(self.remaining),
            reset: clamp(self.reset_seconds),
            // Allowed means no waiting, whatever the row says.
            retry_after: if self.allowed {
                0
            } else {
                clamp(self.retry_after_seconds).max(1)
            },
            window_seconds,
        }
    }
}

/// `apply_rate_limit`.
pub fn limit(
    request: &LimitRequest,
    response: &Answer,
) -> Result<RateLimitResult, CreditError> {
    let row: LimitRow = response.row("apply_rate_limit")?;
    Ok(row.into_result(request))
}

/// `apply_token_bucket`: a limit's row (`limit` is the capacity; a bucket
/// has no window).
pub fn token_bucket(response: &Answer) -> Result<RateLimitResult, CreditError> {
    let row: LimitRow = response.row("apply_token_bucket")?;
    Ok(row.into_window(None))
}

/// `peek_rate_limit`: a limit's row, nothing spent.
pub fn peek_limit(request: &PeekLimitRequest, response: &Answer) -> Result<RateLimitResult, CreditError> {
    let row: LimitRow = response.row("peek_rate_limit")?;
    Ok(row.into_window(Some(request.window_seconds.get())))
}

/// `reset_rate_limit`: how many counters were cleared.
pub fn reset_limit(request: &LimitKeyRequest, response: &Answer) -> Result<ResetResult, CreditError> {
    let cleared: i64 = response.scalar("reset_rate_limit")?;
    Ok(ResetResult { key: request.key.as_str().to_owned(), cleared: cleared.clamp(0, i64::from(u32::MAX)) as u32 })
}

/// `get_rate_limit_usage`: its rows.
pub fn limit_usage(response: &Answer) -> Result<Vec<LimitUsage>, CreditError> {
    let value = response.json("get_rate_limit_usage")?;
    serde_json::from_value(value).map_err(|error| unexpected("get_rate_limit_usage", &error.to_string()))
}

#[derive(Deserialize)]
struct BlockRow {
    key: String,
    blocked_until: Option<String>,
    reason: String,
}

/// `block_rate_limit_key`: the block in force.
pub fn block_limit_key(response: &Answer) -> Result<BlockResult, CreditError> {
    let row: BlockRow = response.row("block_rate_limit_key")?;
    Ok(BlockResult { key: row.key, until: row.blocked_until, reason: row.reason })
}

/// `unblock_rate_limit_key`: whether a block was in force.
pub fn unblock_limit_key(request: &LimitKeyRequest, response: &Answer) -> Result<UnblockResult, CreditError> {
    let unblocked: bool = response.scalar("unblock_rate_limit_key")?;
    Ok(UnblockResult { key: request.key.as_str().to_owned(), unblocked })
}

/// `chargeWithLimit`'s flat shape: the one-limit case of
/// [`charge_with_limits`] (the SQL's `charge_credits_with_limit` is the same
/// wrapper).
pub fn charge_with_limit(request: &LimitRequest, response: &Answer) -> Result<ChargeWithLimitResult, CreditError> {
    let result = charge_with_limits(std::slice::from_ref(request), response)?;
    let rate_limit = result.limits.into_iter().next().ok_or_else(|| unexpected("charge_credits_with_limits", "no limit"))?;
    let charge = result.charge;
    Ok(ChargeWithLimitResult {
        rate_limit,
        job_id: charge.as_ref().map(|charge| charge.job_id),
        balance: charge.as_ref().map(|charge| charge.balance),
        replayed: charge.as_ref().map(|charge| charge.replayed),
        expires_at: charge.and_then(|charge| charge.expires_at),
    })
}

/// A row of `charge_credits_with_limits`, its limits read as `L`.
#[derive(Deserialize)]
struct ChargeWithLimitsRow<L> {
    allowed: bool,
    job_id: Option<String>,
    new_balance: Option<i64>,
    replayed: Option<bool>,
    expires_at: Option<String>,
    limits: Vec<L>,
}

impl<L> ChargeWithLimitsRow<L> {
    /// The charge when the row is allowed (then it must carry one), else None.
    fn charge(&mut self, function: &str) -> Result<Option<ChargeResult>, CreditError> {
        match (self.allowed, self.job_id.take(), self.new_balance) {
            (false, _, _) => Ok(None),
            (true, Some(id), Some(balance)) => Ok(Some(ChargeResult {
                job_id: job_id(function, &id)?,
                balance,
                replayed: self.replayed.unwrap_or(false),
                expires_at: self.expires_at.take(),
            })),
            (true, _, _) => Err(unexpected(function, "allowed but no job_id or new_balance")),
        }
    }
}

/// `charge_credits_with_limits`.
pub fn charge_with_limits(
    requests: &[LimitRequest],
    response: &Answer,
) -> Result<ChargeWithLimitsResult, CreditError> {
    let function = "charge_credits_with_limits";
    let mut row: ChargeWithLimitsRow<LimitRow> = response.row(function)?;
    if row.limits.len() != requests.len() {
        return Err(unexpected(function, &format!("{} limits for {} asked", row.limits.len(), requests.len())));
    }
    let charge = row.charge(function)?;
    let limits: Vec<RateLimitResult> =
        row.limits.into_iter().zip(requests).map(|(limit, request)| limit.into_result(request)).collect();
    if row.allowed != limits.iter().all(|limit| limit.success) {
        return Err(unexpected(function, "allowed disagrees with the limits"));
    }
    Ok(ChargeWithLimitsResult { charge, limits })
}

#[derive(Deserialize)]
struct OutcomeRow {
    key: String,
    #[serde(flatten)]
    limit: LimitRow,
    #[serde(default)]
    window_seconds: Option<u32>,
    #[serde(default)]
    concurrency: bool,
    #[serde(default)]
    units: bool,
    #[serde(default)]
    plan: Option<String>,
    #[serde(default)]
    from_plan: Option<String>,
    #[serde(default)]
    open: Option<u32>,
}

/// `charge_credits_with_limits` called with [`crate::LimitEntry`]s: the
/// limits as resolved, each describing itself.
pub fn charge_with_entries(response: &Answer) -> Result<ChargeWithEntriesResult, CreditError> {
    let function = "charge_credits_with_limits";
    let mut row: ChargeWithLimitsRow<OutcomeRow> = response.row(function)?;
    let charge = row.charge(function)?;
    let limits: Vec<LimitOutcome> = row
        .limits
        .into_iter()
        .map(|outcome| LimitOutcome {
            key: outcome.key,
            concurrency: outcome.concurrency,
            units: outcome.units,
            plan: outcome.plan,
            from_plan: outcome.from_plan,
            open: outcome.open,
            result: outcome.limit.into_window(if outcome.concurrency { None } else { outcome.window_seconds }),
        })
        .collect();
    if row.allowed != limits.iter().all(|limit| limit.result.success) && !row.replayed.unwrap_or(false) {
        return Err(unexpected(function, "allowed disagrees with the limits"));
    }
    Ok(ChargeWithEntriesResult { charge, limits })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JOB: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

    fn ok(body: Value) -> Answer {
        Answer::new(200, body.to_string())
    }

    fn limit_request() -> LimitRequest {
        LimitRequest::from_json(&json!({"key": "k", "limit": 10, "windowSeconds": 60}))
            .expect("valid")
    }

    #[test]
    fn completing_an_expired_hold_is_a_409_that_says_so() {
        let expired = ok(json!([{"job_id": JOB, "status": "expired", "new_balance": 40, "refunded": 10}]));
        let error = complete(&expired).expect_err("refused");
        assert_eq!((error.code(), error.status()), (ErrorCode::JobAlreadySettled, 409));
        assert_eq!(error.details()["status"], "expired");
        assert_eq!(error.details()["refunded"], 10);
        assert_eq!(error.details()["balance"], 40);
        let done = ok(json!([{"job_id": JOB, "status": "completed", "new_balance": 40, "refunded": 2}]));
        assert_eq!(complete(&done).expect("completed").refunded, 2);
    }

    #[test]
    fn charge_with_limits_decodes_every_limit_in_order() {
        let requests = vec![limit_request(), limit_request()];
        let limit = |allowed: bool, remaining: i64, retry: i64| {
            json!({"key": "k", "allowed": allowed, "limit": 10, "remaining": remaining,
                   "reset_seconds": 30, "retry_after_seconds": retry})
        };
        let allowed = ok(json!([{"allowed": true, "job_id": JOB, "new_balance": 90, "replayed": false,
                                 "expires_at": null, "limits": [limit(true, 9, 0), limit(true, 4, 0)]}]));
        let result = charge_with_limits(&requests, &allowed).expect("decodes");
        assert_eq!(result.charge.map(|charge| (charge.job_id.to_string(), charge.balance)), Some((JOB.to_owned(), 90)));
        assert_eq!(result.limits.iter().map(|limit| limit.remaining).collect::<Vec<_>>(), vec![9, 4]);
        let refused = ok(json!([{"allowed": false, "job_id": null, "new_balance": null, "replayed": false,
                                 "expires_at": null, "limits": [limit(true, 9, 0), limit(false, 0, 12)]}]));
        let result = charge_with_limits(&requests, &refused).expect("decodes");
        assert_eq!(result.charge, None);
        assert_eq!((result.limits[1].success, result.limits[1].retry_after), (false, 12));
        // Disagreements between the row and what was asked are upstream errors.
        let short = ok(json!([{"allowed": true, "job_id": JOB, "new_balance": 1, "limits": [limit(true, 9, 0)]}]));
        assert_eq!(charge_with_limits(&requests, &short).expect_err("1 of 2").code(), ErrorCode::Upstream);
        let lying = ok(json!([{"allowed": true, "job_id": JOB, "new_balance": 1,
                               "limits": [limit(true, 9, 0), limit(false, 0, 3)]}]));
        assert_eq!(charge_with_limits(&requests, &lying).expect_err("disagrees").code(), ErrorCode::Upstream);
        let jobless = ok(json!([{"allowed": true, "job_id": null, "new_balance": null, "limits": []}]));
        assert_eq!(charge_with_limits(&[], &jobless).expect_err("no job").code(), ErrorCode::Upstream);
    }

    #[test]
    fn charge_decodes_its_row() {
        let result = charge(&ok(
            json!([{"job_id": JOB, "new_balance": 95, "replayed": true,
                                         "expires_at": "2030-01-01T00:15:00+00:00"}]),
        ))
        .expect("decodes");
        assert_eq!(
            result,
            ChargeResult {
                job_id: JobId::parse("jobId", JOB).expect("uuid"),
                balance: 95,
                replayed: true,
                expires_at: Some("2030-01-01T00:15:00+00:00".into())
            }
        );
        // The seed's shape (no replayed, no expires_at) still decodes.
        let seed = charge(&ok(json!([{"job_id": JOB, "new_balance": 7}]))).expect("decodes");
        assert!(!seed.replayed);
        // An object rather than a one-row array, too.
        assert_eq!(
            charge(&ok(json!({"job_id": JOB, "new_balance": 7})))
                .expect("decodes")
                .balance,
            7
        );
    }

    #[test]
    fn charge_errors_pass_through_the_error_decoder() {
        let body = json!({"code": "PT402", "message": "Insufficient credits: has 1 needs 5",
                          "details": "{\"balance\":1,\"needed\":5}", "hint": "insufficient_credits"});
        let error = charge(&Answer::new(402, body.to_string())).expect_err("402");
        assert_eq!(error.code(), ErrorCode::InsufficientCredits);
        assert_eq!(error.details()["balance"], 1);
    }

    #[test]
    fn wrong_shapes_are_upstream_errors() {
        let cases = [
            json!([]),
            json!([{"job_id": JOB, "new_balance": 1}, {"job_id": JOB, "new_balance": 2}]),
            json!([{"job_id": JOB}]),
            json!([{"job_id": 5, "new_balance": 1}]),
            json!("text"),
            json!(null),
        ];
        for body in cases {
            let error = charge(&ok(body.clone())).expect_err("bad shape");
            assert_eq!(error.code(), ErrorCode::Upstream, "{body}");
            assert_eq!(error.details()["function"], "charge_credits");
            assert!(!error.retryable());
        }
        let error = charge(&Answer::new(200, "<html>")).expect_err("not json");
        assert_eq!(error.code(), ErrorCode::Upstream);
    }

    #[test]
    fn complete_decodes_status_and_refunded() {
        let result = complete(&ok(
            json!([{"job_id": JOB, "status": "completed", "new_balance": 98, "refunded": 2}]),
        ))
        .expect("decodes");
        assert_eq!(result.status, "completed");
        assert_eq!(result.balance, 98);
        assert_eq!(result.refunded, 2);
        let error = complete(&Answer::new(
            409,
            json!({"code": "PT409", "message": "Job already settled", "details": null, "hint": "job_already_settled"})
                .to_string(),
        ))
        .expect_err("409");
        assert_eq!(error.code(), ErrorCode::JobAlreadySettled);
    }

    #[test]
    fn scalar_balances_decode() {
        assert_eq!(
            balance("get_credit_balance", &ok(json!(42))).expect("decodes"),
            42
        );
        assert_eq!(
            balance_result("refund_credits", &ok(json!(0)))
                .expect("decodes")
                .balance,
            0
        );
        assert_eq!(
            balance("get_credit_balance", &ok(json!(null)))
                .expect_err("null")
                .code(),
            ErrorCode::UserNotFound
        );
        assert_eq!(
            balance("get_credit_balance", &ok(json!("42")))
                .expect_err("string")
                .code(),
            ErrorCode::Upstream
        );
        assert_eq!(
            balance("get_credit_balance", &ok(json!(1.5)))
                .expect_err("float")
                .code(),
            ErrorCode::Upstream
        );
    }

    #[test]
    fn an_allowed_limit_has_no_retry_after() {
        let result = limit(
            &limit_request(),
            &ok(json!([{"allowed": true, "limit": 10, "remaining": 9, "reset_seconds": 60, "retry_after_seconds": 0}])),
        )
        .expect("decodes");
        assert_eq!(
            result,
            RateLimitResult {
                success: true,
                limit: 10,
                remaining: 9,
                reset: 60,
                retry_after: 0,
                window_seconds: Some(60)
            }
        );
    }

    #[test]
    fn a_denied_limit_always_says_when_to_retry() {
        let row = |retry: i64| json!([{"allowed": false, "limit": 10, "remaining": 0, "reset_seconds": 30, "retry_after_seconds": retry}]);
        assert_eq!(
            limit(&limit_request(), &ok(row(30)))
                .expect("decodes")
                .retry_after,
            30
        );
        // A denial with retry 0 would invite a hot loop: at least 1 s.
        assert_eq!(
            limit(&limit_request(), &ok(row(0)))
                .expect("decodes")
                .retry_after,
            1
        );
        // Negative values from a confused server do not wrap around.
        let negative = limit(
            &limit_request(),
            &ok(json!([{"allowed": false, "limit": 10, "remaining": -3, "reset_seconds": -1, "retry_after_seconds": -5}])),
        )
        .expect("decodes");
        assert_eq!(
            (negative.remaining, negative.reset, negative.retry_after),
            (0, 0, 1)
        );
    }

    #[test]
    fn charge_with_limit_is_the_one_limit_case_of_charge_with_limits() {
        let one = |row: Value| charge_with_limit(&limit_request(), &ok(row));
        let limit = |allowed: bool, remaining: i64, retry: i64| {
            json!({"key": "k", "allowed": allowed, "limit": 10, "remaining": remaining,
                   "reset_seconds": 50, "retry_after_seconds": retry})
        };
        let allowed = one(json!([{"allowed": true, "job_id": JOB, "new_balance": 90, "replayed": false,
                                  "expires_at": "2030-01-01T00:00:00Z", "limits": [limit(true, 4, 0)]}]))
        .expect("decodes");
        assert!(allowed.rate_limit.success);
        assert_eq!(allowed.job_id.map(|id| id.to_string()).as_deref(), Some(JOB));
        assert_eq!(allowed.balance, Some(90));
        assert_eq!(allowed.replayed, Some(false));

        let denied = one(json!([{"allowed": false, "job_id": null, "new_balance": null, "replayed": null,
                                 "expires_at": null, "limits": [limit(false, 0, 12)]}]))
        .expect("decodes");
        assert!(!denied.rate_limit.success);
        assert_eq!(denied.rate_limit.retry_after, 12);
        assert_eq!((denied.job_id, denied.balance, denied.replayed), (None, None, None));

        let broken = one(json!([{"allowed": true, "job_id": null, "new_balance": null, "replayed": null,
                                 "expires_at": null, "limits": [limit(true, 0, 0)]}]));
        assert_eq!(broken.expect_err("inconsistent").code(), ErrorCode::Upstream);
    }
}
