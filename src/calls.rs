//! Every PostgREST call creditgate makes, as plain data: an [`Rpc`] (a SQL
//! function and its named arguments) or a [`Read`] (a table, columns,
//! filters). Built without a network, so what goes on the wire is
//! unit-tested; [`crate::client::CreditClient`] sends them all with the
//! `postgrest` crate. Argument names are the SQL's (`docs/rpc.md`);
//! optional arguments the caller left out are left out of the body too, so
//! the SQL `DEFAULT` applies (an explicit `null` would override it).

use crate::{
    ChargeWithEntriesRequest, LimitEntry,
    BlockRequest, ChargeRequest, ChargeWithLimitsRequest, CompleteRequest, GrantRequest, IdempotencyKey, JobId,
    LimitKeyRequest, LimitRequest, Metadata, PeekLimitRequest, PlanRequest, RefundRequest, RevokeLotRequest,
    SubscribeRequest, TokenBucketRequest, UsageRequest, UserId,
};
use serde_json::{json, Map, Value};

/// One RPC: `POST /rest/v1/rpc/{function}` with named arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct Rpc {
    /// The SQL function's name.
    pub function: &'static str,
    /// Named arguments, as PostgREST takes them.
    pub body: Value,
}

impl Rpc {
    fn new(function: &'static str, body: Map<String, Value>) -> Self {
        Rpc { function, body: Value::Object(body) }
    }
}

/// One table read: `GET /rest/v1/{table}?select=...` with filters, order
/// and a row limit (PostgREST's `Range` header, as the postgrest crate sends it).
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub table: &'static str,
    pub select: &'static str,
    pub filters: Vec<(&'static str, Filter)>,
    pub order: Option<&'static str>,
    pub limit: Option<usize>,
}

/// A filter on one column.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    Eq(String),
    Lt(String),
}

/// Builds a body from `(name, value)` pairs, leaving out `None`s.
fn args<const N: usize>(pairs: [(&str, Option<Value>); N]) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name.to_owned(), value)))
        .collect()
}

/// `charge_credits`: the full form, with replay flag and hold expiry.
pub fn charge(request: &ChargeRequest) -> Rpc {
    Rpc::new("charge_credits", charge_args(request))
}

fn key_arg(key: Option<&IdempotencyKey>) -> Option<Value> {
    key.map(|key| json!(key.as_str()))
}

fn metadata_arg(metadata: Option<&Metadata>) -> Option<Value> {
    metadata.map(|metadata| Value::Object(metadata.as_map().clone()))
}

fn charge_args(request: &ChargeRequest) -> Map<String, Value> {
    args([
        ("p_user_id", Some(json!(request.user_id.to_string()))),
        ("p_operation_type", Some(json!(request.operation.as_str()))),
        ("p_cost", Some(json!(request.cost.get()))),
        ("p_idempotency_key", key_arg(request.idempotency_key.as_ref())),
        ("p_metadata", metadata_arg(request.metadata.as_ref())),
        (
            "p_hold_seconds",
            request.hold_seconds.map(|seconds| json!(seconds.get())),
        ),
    ])
}

/// `complete_generation_job`.
pub fn complete(request: &CompleteRequest) -> Rpc {
    let body = args([
        ("p_job_id", Some(json!(request.job_id.to_string()))),
        (
            "p_result_url",
            request.result_url.as_ref().map(|url| json!(url.as_str())),
        ),
        (
            "p_actual_cost",
            request.actual_cost.map(|cost| json!(cost.get())),
        ),
        ("p_actual_units", request.actual_units.map(|units| json!(units.get()))),
    ]);
    Rpc::new("complete_generation_job", body)
}

/// `refund_credits`. `p_amount` has no default in SQL; `null` means "the
/// whole hold", the only refund this client offers.
pub fn refund(request: &RefundRequest) -> Rpc {
    let body = args([
        ("p_user_id", Some(json!(request.user_id.to_string()))),
        ("p_job_id", Some(json!(request.job_id.to_string()))),
        ("p_amount", Some(Value::Null)),
        ("p_reason", Some(json!(request.reason.as_str()))),
    ]);
    Rpc::new("refund_credits", body)
}

/// `grant_credits`: every grant opens a lot (expiry, category and priority
/// left to the SQL defaults when absent).
pub fn grant(request: &GrantRequest) -> Rpc {
    let body = args([
        ("p_user_id", Some(json!(request.user_id.to_string()))),
        ("p_amount", Some(json!(request.amount.get()))),
        ("p_reason", Some(json!(request.reason.as_str()))),
        ("p_idempotency_key", key_arg(request.idempotency_key.as_ref())),
        ("p_metadata", metadata_arg(request.metadata.as_ref())),
        ("p_expires_at", request.expires_at.as_ref().map(|at| json!(at.as_str()))),
        ("p_category", request.category.as_ref().map(|category| json!(category.as_str()))),
        ("p_priority", request.priority.map(|priority| json!(priority.get()))),
    ]);
    Rpc::new("grant_credits", body)
}

/// `get_credit_lots`: a user's lots, spendable first in spending order.
pub fn lots(user_id: &UserId) -> Rpc {
    Rpc::new("get_credit_lots", args([("p_user_id", Some(json!(user_id.to_string())))]))
}

/// `revoke_credit_lot`.
pub fn revoke_lot(request: &RevokeLotRequest) -> Rpc {
    Rpc::new(
        "revoke_credit_lot",
        args([("p_lot_id", Some(json!(request.lot_id.to_string()))), ("p_reason", Some(json!(request.reason.as_str())))]),
    )
}

/// `get_credit_events`: a user's events after `after`, oldest first.
pub fn events(user_id: &UserId, after: i64, limit: u32) -> Rpc {
    Rpc::new(
        "get_credit_events",
        args([
            ("p_user_id", Some(json!(user_id.to_string()))),
            ("p_after", Some(json!(after))),
            ("p_limit", Some(json!(limit))),
        ]),
    )
}

/// `upsert_credit_plan`.
pub fn upsert_plan(request: &PlanRequest) -> Rpc {
    Rpc::new(
        "upsert_credit_plan",
        args([
            ("p_plan", Some(json!(request.plan.as_str()))),
            ("p_amount", Some(json!(request.amount.get()))),
            ("p_period", Some(json!(request.period.as_str()))),
            ("p_rollover_max", request.rollover_max.map(|max| json!(max.get()))),
            ("p_limits", request.limits.clone().map(Value::Object)),
        ]),
    )
}

/// `subscribe_credit_plan`.
pub fn subscribe_plan(request: &SubscribeRequest) -> Rpc {
    Rpc::new(
        "subscribe_credit_plan",
        args([
            ("p_user_id", Some(json!(request.user_id.to_string()))),
            ("p_plan", Some(json!(request.plan.as_str()))),
            ("p_anchor", request.anchor.as_ref().map(|at| json!(at.as_str()))),
        ]),
    )
}

/// `cancel_credit_plan`.
pub fn cancel_plan(user_id: &UserId) -> Rpc {
    Rpc::new("cancel_credit_plan", args([("p_user_id", Some(json!(user_id.to_string())))]))
}

/// `get_credit_balance`.
pub fn balance(user_id: &UserId) -> Rpc {
    Rpc::new(
        "get_credit_balance",
        args([("p_user_id", Some(json!(user_id.to_string())))]),
    )
}

/// `apply_rate_limit` (its `p_cost` is the weight: a compatibility name).
pub fn limit(request: &LimitRequest) -> Rpc {
    let body = args([
        ("p_key", Some(json!(request.key.as_str()))),
        ("p_limit", Some(json!(request.limit.get()))),
        (
            "p_window_seconds",
            Some(json!(request.window_seconds.get())),
        ),
        ("p_cost", Some(json!(request.weight.get()))),
    ]);
    Rpc::new("apply_rate_limit", body)
}

/// `apply_token_bucket` (its `p_cost` is the weight).
pub fn token_bucket(request: &TokenBucketRequest) -> Rpc {
    let body = args([
        ("p_key", Some(json!(request.key.as_str()))),
        ("p_capacity", Some(json!(request.capacity.get()))),
        ("p_refill_per_second", Some(json!(request.refill_per_second))),
        ("p_cost", Some(json!(request.weight.get()))),
    ]);
    Rpc::new("apply_token_bucket", body)
}

/// `peek_rate_limit`.
pub fn peek_limit(request: &PeekLimitRequest) -> Rpc {
    let body = args([
        ("p_key", Some(json!(request.key.as_str()))),
        ("p_limit", Some(json!(request.limit.get()))),
        ("p_window_seconds", Some(json!(request.window_seconds.get()))),
    ]);
    Rpc::new("peek_rate_limit", body)
}

/// `reset_rate_limit`.
pub fn reset_limit(request: &LimitKeyRequest) -> Rpc {
    Rpc::new("reset_rate_limit", args([("p_key", Some(json!(request.key.as_str())))]))
}

/// `get_rate_limit_usage`.
pub fn limit_usage(request: &UsageRequest) -> Rpc {
    let body = args([("p_key_prefix", Some(json!(request.prefix))), ("p_max_rows", Some(json!(request.max_rows)))]);
    Rpc::new("get_rate_limit_usage", body)
}

/// `block_rate_limit_key` (`p_until` null: until unblocked; it has no
/// default, so it is always sent).
pub fn block_limit_key(request: &BlockRequest) -> Rpc {
    let body = args([
        ("p_key", Some(json!(request.key.as_str()))),
        ("p_until", Some(request.until.as_ref().map_or(Value::Null, |until| json!(until)))),
        ("p_reason", Some(json!(request.reason.as_str()))),
    ]);
    Rpc::new("block_rate_limit_key", body)
}

/// `unblock_rate_limit_key`.
pub fn unblock_limit_key(request: &LimitKeyRequest) -> Rpc {
    Rpc::new("unblock_rate_limit_key", args([("p_key", Some(json!(request.key.as_str())))]))
}

/// `charge_credits_with_limits`: the charge's arguments and `p_limits`.
/// (`chargeWithLimit`, one limit, is this call with a list of one.)
pub fn charge_with_limits(request: &ChargeWithLimitsRequest) -> Rpc {
    let mut body = charge_args(&request.charge);
    let limits: Vec<Value> = request
        .limits
        .iter()
        .map(|limit| {
            json!({"key": limit.key.as_str(), "limit": limit.limit.get(),
                   "window_seconds": limit.window_seconds.get(), "cost": limit.weight.get()})
        })
        .collect();
    body.extend(args([("p_limits", Some(Value::Array(limits)))]));
    Rpc::new("charge_credits_with_limits", body)
}

/// `charge_credits_with_limits` with [`LimitEntry`]s (concurrency, unit and plan limits).
pub fn charge_with_entries(request: &ChargeWithEntriesRequest) -> Rpc {
    let mut body = charge_args(&request.charge);
    let limits: Vec<Value> = request.entries.iter().map(LimitEntry::to_json).collect();
    body.extend(args([("p_limits", Some(Value::Array(limits)))]));
    Rpc::new("charge_credits_with_limits", body)
}

/// The columns a job read returns.
const JOB_COLUMNS: &str = "id,user_id,operation_type,status,cost,result_url,error_message,created_at,completed_at,expires_at,captured_credits,refunded_credits";
/// The columns a ledger read returns.
const LEDGER_COLUMNS: &str = "id,delta,balance_after,operation_type,entry_type,description,job_id,created_at";

/// One job: the caller's own (`owner`), or any for the service role.
pub fn job(job_id: JobId, owner: Option<UserId>) -> Read {
    let mut filters = vec![("id", Filter::Eq(job_id.to_string()))];
    if let Some(owner) = owner {
        filters.push(("user_id", Filter::Eq(owner.to_string())));
    }
    Read { table: "generation_jobs", select: JOB_COLUMNS, filters, order: None, limit: None }
}

/// A user's latest jobs, newest first.
pub fn jobs(owner: UserId, limit: u32) -> Read {
    Read {
        table: "generation_jobs",
        select: JOB_COLUMNS,
        filters: vec![("user_id", Filter::Eq(owner.to_string()))],
        order: Some("created_at.desc,id.desc"),
        limit: Some(limit as usize),
    }
}

/// A page of a user's ledger, newest first (`before`: ids below it): one
/// row more than asked, to know whether there is a next page.
pub fn ledger(owner: UserId, limit: u32, before: Option<i64>) -> Read {
    let mut filters = vec![("user_id", Filter::Eq(owner.to_string()))];
    if let Some(before) = before {
        filters.push(("id", Filter::Lt(before.to_string())));
    }
    Read { table: "credit_ledger", select: LEDGER_COLUMNS, filters, order: Some("id.desc"), limit: Some(limit as usize + 1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ChargeWithLimitRequest;

    const USER: &str = "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e";
    const JOB: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";


    #[test]
    fn a_grant_sends_its_lot_only_when_given() {
        let plain = GrantRequest::from_json(&json!({"userId": USER, "amount": 5, "reason": "r"})).expect("valid");
        assert_eq!(grant(&plain).body, json!({"p_user_id": USER, "p_amount": 5, "p_reason": "r"}));
        let lot = GrantRequest::from_json(&json!({
            "userId": USER, "amount": 5, "reason": "r", "expiresAt": "2027-01-01T00:00:00Z",
            "category": "promotional", "priority": 10
        }))
        .expect("valid");
        assert_eq!(
            grant(&lot).body,
            json!({"p_user_id": USER, "p_amount": 5, "p_reason": "r", "p_expires_at": "2027-01-01T00:00:00Z",
                   "p_category": "promotional", "p_priority": 10})
        );
    }

    #[test]
    fn lots_plans_and_events_name_their_functions_and_arguments() {
        let user = UserId::parse("userId", USER).expect("uuid");
        assert_eq!(lots(&user).function, "get_credit_lots");
        assert_eq!(events(&user, 7, 50).body, json!({"p_user_id": USER, "p_after": 7, "p_limit": 50}));
        let revoke = RevokeLotRequest::from_json(&json!({"lotId": JOB, "reason": "refunded"})).expect("valid");
        assert_eq!(revoke_lot(&revoke).body, json!({"p_lot_id": JOB, "p_reason": "refunded"}));
        let plan = PlanRequest::from_json(&json!({"plan": "pro", "amount": 100, "period": "month"})).expect("valid");
        assert_eq!(upsert_plan(&plan).body, json!({"p_plan": "pro", "p_amount": 100, "p_period": "month"}));
        let subscribe = SubscribeRequest::from_json(&json!({"userId": USER, "plan": "pro"})).expect("valid");
        assert_eq!(subscribe_plan(&subscribe).body, json!({"p_user_id": USER, "p_plan": "pro"}));
        assert_eq!(cancel_plan(&user).function, "cancel_credit_plan");
    }

    #[test]
    fn reads_are_filtered_by_the_owner_and_paged_by_id() {
        let user = UserId::parse("userId", USER).expect("uuid");
        let job_id = JobId::parse("jobId", JOB).expect("uuid");
        let own = job(job_id, Some(user));
        assert_eq!(own.table, "generation_jobs");
        assert_eq!(own.filters, vec![("id", Filter::Eq(JOB.into())), ("user_id", Filter::Eq(USER.into()))]);
        assert_eq!(job(job_id, None).filters.len(), 1, "the service role reads any job");
        let first = ledger(user, 5, None);
        assert_eq!((first.order, first.limit), (Some("id.desc"), Some(6)));
        let next = ledger(user, 5, Some(42));
        assert_eq!(next.filters[1], ("id", Filter::Lt("42".into())));
        assert_eq!(jobs(user, 3).order, Some("created_at.desc,id.desc"));
    }

    #[test]
    fn a_minimal_charge_leaves_defaults_to_sql() {
        let request =
            ChargeRequest::from_json(&json!({"userId": USER, "operation": "image", "cost": 5}))
                .expect("valid");
        let rpc = charge(&request);
        assert_eq!(rpc.function, "charge_credits");
        assert_eq!(
            rpc.body,
            json!({"p_user_id": USER, "p_operation_type": "image", "p_cost": 5})
        );
    }

    #[test]
    fn a_full_charge_sends_every_argument() {
        let request = ChargeRequest::from_json(&json!({
            "userId": USER, "operation": "image", "cost": 5, "idempotencyKey": "k-1",
            "metadata": {"model": "flux", "n": 2}, "holdSeconds": 120
        }))
        .expect("valid");
        assert_eq!(
            charge(&request).body,
            json!({"p_user_id": USER, "p_operation_type": "image", "p_cost": 5, "p_idempotency_key": "k-1",
                   "p_metadata": {"model": "flux", "n": 2}, "p_hold_seconds": 120})
        );
    }

    #[test]
    fn complete_sends_only_what_was_given() {
        let bare = CompleteRequest::from_json(&json!({"jobId": JOB})).expect("valid");
        let rpc = complete(&bare);
        assert_eq!(rpc.function, "complete_generation_job");
        assert_eq!(rpc.body, json!({"p_job_id": JOB}));
        let full = CompleteRequest::from_json(
            &json!({"jobId": JOB, "resultUrl": "https://r/1.png", "actualCost": 3}),
        )
        .expect("valid");
        assert_eq!(
            complete(&full).body,
            json!({"p_job_id": JOB, "p_result_url": "https://r/1.png", "p_actual_cost": 3})
        );
    }

    #[test]
    fn refund_sends_a_null_amount_for_the_whole_hold() {
        let request =
            RefundRequest::from_json(&json!({"userId": USER, "jobId": JOB, "reason": "failed"}))
                .expect("valid");
        let rpc = refund(&request);
        assert_eq!(rpc.function, "refund_credits");
        assert_eq!(
            rpc.body,
            json!({"p_user_id": USER, "p_job_id": JOB, "p_amount": null, "p_reason": "failed"})
        );
        // The key is sent with an explicit null (PostgREST needs every named
        // argument that has no default), whatever the map's key order.
        let sent: serde_json::Value = serde_json::from_str(&rpc.body.to_string()).expect("JSON");
        assert_eq!(sent.get("p_amount"), Some(&serde_json::Value::Null));
    }

    #[test]
    fn grant_sends_amount_reason_and_key() {
        let request = GrantRequest::from_json(&json!({
            "userId": USER, "amount": 100, "reason": "stripe:evt_1", "idempotencyKey": "evt_1"
        }))
        .expect("valid");
        let rpc = grant(&request);
        assert_eq!(rpc.function, "grant_credits");
        assert_eq!(
            rpc.body,
            json!({"p_user_id": USER, "p_amount": 100, "p_reason": "stripe:evt_1", "p_idempotency_key": "evt_1"})
        );
    }

    #[test]
    fn limit_always_sends_its_cost() {
        let request = LimitRequest::from_json(
            &json!({"key": "ip:1.2.3.4", "limit": 5, "windowSeconds": 3600}),
        )
        .expect("valid");
        let rpc = limit(&request);
        assert_eq!(rpc.function, "apply_rate_limit");
        assert_eq!(
            rpc.body,
            json!({"p_key": "ip:1.2.3.4", "p_limit": 5, "p_window_seconds": 3600, "p_cost": 1})
        );
    }

    #[test]
    fn the_operator_tools_send_the_sql_arguments() {
        let bucket = TokenBucketRequest::from_json(&json!({"key": "tb:1", "capacity": 5, "refillPerSecond": 0.5}))
            .expect("valid");
        assert_eq!(token_bucket(&bucket).function, "apply_token_bucket");
        assert_eq!(
            token_bucket(&bucket).body,
            json!({"p_key": "tb:1", "p_capacity": 5, "p_refill_per_second": 0.5, "p_cost": 1})
        );
        let peek = PeekLimitRequest::from_json(&json!({"key": "creditgate:user:x", "limit": 5, "windowSeconds": 60}))
            .expect("reserved keys may be peeked at");
        assert_eq!(
            peek_limit(&peek).body,
            json!({"p_key": "creditgate:user:x", "p_limit": 5, "p_window_seconds": 60})
        );
        let key = LimitKeyRequest::from_json("resetLimit", &json!({"key": "creditgate:ip:1.2.3.4"})).expect("valid");
        assert_eq!(reset_limit(&key).body, json!({"p_key": "creditgate:ip:1.2.3.4"}));
        assert_eq!(unblock_limit_key(&key).function, "unblock_rate_limit_key");
        let usage = UsageRequest::from_json(&json!({"prefix": "creditgate:user:"})).expect("valid");
        assert_eq!(limit_usage(&usage).body, json!({"p_key_prefix": "creditgate:user:", "p_max_rows": 100}));
        let forever = BlockRequest::from_json(&json!({"key": "ip:1", "reason": "abuse"})).expect("valid");
        assert_eq!(block_limit_key(&forever).body, json!({"p_key": "ip:1", "p_until": null, "p_reason": "abuse"}));
        let until = BlockRequest::from_json(&json!({"key": "ip:1", "reason": "abuse", "until": "2030-01-01T00:00:00Z"}))
            .expect("valid");
        assert_eq!(block_limit_key(&until).body["p_until"], "2030-01-01T00:00:00Z");
    }

    #[test]
    fn the_operator_tools_check_their_input() {
        for bad in [
            json!({"key": "tb", "capacity": 5, "refillPerSecond": 0}),
            json!({"key": "tb", "capacity": 5, "refillPerSecond": 0.000001}),
            json!({"key": "tb", "capacity": 5, "refillPerSecond": "1"}),
            json!({"key": "tb", "capacity": 5, "refillPerSecond": 1, "weight": 6}),
            json!({"key": "creditgate:x", "capacity": 5, "refillPerSecond": 1}),
            json!({"key": "tb", "capacity": 0, "refillPerSecond": 1}),
        ] {
            assert!(TokenBucketRequest::from_json(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            TokenBucketRequest::from_json(&json!({"key": "tb", "capacity": 0, "refillPerSecond": 1}))
                .expect_err("capacity")
                .details()["field"],
            "capacity"
        );
        assert!(UsageRequest::from_json(&json!({"limit": 1001})).is_err());
        assert!(UsageRequest::from_json(&json!({"limit": 0})).is_err());
        assert!(BlockRequest::from_json(&json!({"key": "ip:1"})).is_err(), "a reason is required");
        assert!(LimitKeyRequest::from_json("resetLimit", &json!({"key": ""})).is_err());
    }

    #[test]
    fn charge_with_limit_sends_the_charge_and_a_list_of_one_limit() {
        let request = ChargeWithLimitRequest::from_json(&json!({
            "userId": USER, "operation": "image", "cost": 5, "limitKey": "user:1", "limit": 10,
            "windowSeconds": 60, "weight": 2, "holdSeconds": 30
        }))
        .expect("valid");
        let rpc = charge_with_limits(&ChargeWithLimitsRequest { charge: request.charge, limits: vec![request.limit] });
        assert_eq!(rpc.function, "charge_credits_with_limits");
        assert_eq!(
            rpc.body,
            json!({"p_user_id": USER, "p_operation_type": "image", "p_cost": 5, "p_hold_seconds": 30,
                   "p_limits": [{"key": "user:1", "limit": 10, "window_seconds": 60, "cost": 2}]})
        );
    }
}
