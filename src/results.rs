//! What the RPCs return, as JS receives it (camelCase).

use crate::values::JobId;
use serde::{Deserialize, Serialize};

// -----------------------------------------------------------------------------
// Results (what JS receives; camelCase)
// -----------------------------------------------------------------------------

/// `charge`'s result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeResult {
    pub job_id: JobId,
    /// The balance after the hold, in credits.
    pub balance: i64,
    /// True when this is a retry with a known key: nothing was charged again.
    pub replayed: bool,
    /// When the hold expires if the job is not settled (ISO 8601), if known.
    pub expires_at: Option<String>,
}

/// `complete`'s result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompleteResult {
    pub job_id: JobId,
    /// The job's status after completion (`"completed"`).
    pub status: String,
    pub balance: i64,
    /// Credits returned because the actual cost was below the hold.
    pub refunded: i64,
}

/// `refund`'s and `grant`'s result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BalanceResult {
    pub balance: i64,
}

/// `limit`'s result: being over a limit is a value, not an error.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitResult {
    /// Whether the request was allowed (and counted).
    pub success: bool,
    /// The limit per window.
    pub limit: u32,
    /// What is left in the current window, after this request.
    pub remaining: u32,
    /// Seconds until the window has room again (IETF `t`).
    pub reset: u32,
    /// Seconds to wait before retrying; 0 when allowed.
    pub retry_after: u32,
    /// The window, in seconds (IETF `w`); absent if unknown.
    #[serde(default)]
    pub window_seconds: Option<u32>,
}

/// `chargeWithLimit`'s result: the limit's fields, plus the charge's when allowed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChargeWithLimitResult {
    #[serde(flatten)]
    pub rate_limit: RateLimitResult,
    pub job_id: Option<JobId>,
    pub balance: Option<i64>,
    pub replayed: Option<bool>,
    pub expires_at: Option<String>,
}


/// One sliding window in use, as `limitUsage` lists it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all(serialize = "camelCase"))]
pub struct LimitUsage {
    pub key: String,
    pub limit: u32,
    pub window_seconds: u32,
    /// The weight counted in the window now.
    pub used: u32,
    /// Seconds until the window is empty.
    #[serde(rename(deserialize = "reset_seconds"))]
    pub reset: u32,
}

/// `blockLimitKey`'s result: the block in force.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockResult {
    pub key: String,
    /// When the block ends (ISO 8601); `None`: until unblocked.
    pub until: Option<String>,
    pub reason: String,
}

/// `resetLimit`'s result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResetResult {
    pub key: String,
    /// How many counters (windows and token buckets) were cleared.
    pub cleared: u32,
}

/// `unblockLimitKey`'s result.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnblockResult {
    pub key: String,
    /// Whether a block was in force.
    pub unblocked: bool,
}

/// A job as a read returns it (snake_case from PostgREST, camelCase to JS).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all(serialize = "camelCase"))]
pub struct JobView {
    #[serde(rename(serialize = "jobId"))]
    pub id: String,
    pub user_id: String,
    #[serde(rename(serialize = "operation"))]
    pub operation_type: String,
    /// `pending`, `completed`, `failed` (refunded) or `expired`.
    pub status: String,
    pub cost: i64,
    pub result_url: Option<String>,
    #[serde(rename(serialize = "error"))]
    pub error_message: Option<String>,
    pub created_at: String,
    pub completed_at: Option<String>,
    pub expires_at: Option<String>,
    pub captured_credits: Option<i64>,
    pub refunded_credits: Option<i64>,
}

/// A ledger entry as a read returns it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all(serialize = "camelCase"))]
pub struct LedgerView {
    pub id: i64,
    pub delta: i64,
    pub balance_after: i64,
    #[serde(rename(serialize = "operation"))]
    pub operation_type: String,
    pub entry_type: String,
    pub description: Option<String>,
    pub job_id: Option<String>,
    pub created_at: String,
}

/// A lot as `lots` lists it (snake_case from SQL, camelCase to JS).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all(serialize = "camelCase"))]
pub struct LotView {
    pub lot_id: String,
    pub category: String,
    pub priority: i64,
    pub granted: i64,
    pub remaining: i64,
    pub expires_at: Option<String>,
    pub created_at: String,
    pub reason: Option<String>,
    /// Whether it can still be spent (something remains, not expired or revoked).
    #[serde(default)]
    pub spendable: Option<bool>,
    #[serde(default)]
    pub plan: Option<String>,
    #[serde(default)]
    pub period_start: Option<String>,
    #[serde(default)]
    pub expired_at: Option<String>,
    #[serde(default)]
    pub revoked_at: Option<String>,
}

/// A balance event (`low_balance`, `depleted`, `lot_expiring`,
/// `lot_expired`, `hold_expired`, `allowance_granted`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all(serialize = "camelCase"))]
pub struct EventView {
    pub id: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: serde_json::Value,
    pub created_at: String,
}

/// A plan as `upsertPlan` left it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all(serialize = "camelCase"))]
pub struct PlanView {
    pub plan: String,
    pub amount: i64,
    pub period: String,
    pub rollover_max: i64,
}

/// A subscription as `subscribePlan` made it: the current period, and its
/// allowance (0 when that period was granted already).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all(serialize = "camelCase"))]
pub struct SubscriptionView {
    pub plan: String,
    pub period_start: String,
    pub period_end: String,
    pub lot_id: Option<String>,
    pub granted: i64,
    #[serde(rename(serialize = "balance"))]
    pub new_balance: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const JOB: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

    #[test]
    fn results_serialize_in_camel_case() {
        let result = ChargeWithLimitResult {
            rate_limit: RateLimitResult {
                success: true,
                limit: 10,
                remaining: 9,
                reset: 60,
                retry_after: 0,
                window_seconds: Some(60),
            },
            job_id: Some(JobId::parse("jobId", JOB).expect("uuid")),
            balance: Some(95),
            replayed: Some(false),
            expires_at: None,
        };
        assert_eq!(
            serde_json::to_value(&result).expect("serializes"),
            json!({"success": true, "limit": 10, "remaining": 9, "reset": 60, "retryAfter": 0,
                   "windowSeconds": 60, "jobId": JOB, "balance": 95, "replayed": false, "expiresAt": null})
        );
    }
}
