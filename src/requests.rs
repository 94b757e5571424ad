//! Requests, parsed from JSON (what JS passes, through serde-wasm-bindgen)
//! by [`ChargeRequest::from_json`] and friends, which check every field
//! before anything reaches the network and report the first problem as
//! `invalid_argument` naming the field.

use crate::error::CreditError;
use crate::results::{ChargeResult, RateLimitResult};
use crate::values::*;
use serde_json::{Map, Value};

// -----------------------------------------------------------------------------
// Reading JSON input (what JS passes) field by field
// -----------------------------------------------------------------------------

/// One request object being read. Unknown fields are refused, so a typo
/// (`idempotencykey`) fails loudly instead of silently dropping the key.
struct Fields<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Fields<'a> {
    fn new(what: &str, value: &'a Value, known: &[&str]) -> Result<Self, CreditError> {
        let Value::Object(map) = value else {
            return Err(CreditError::invalid_argument(
                "request",
                format!("{what} expects an object, got {}", type_name(value)),
            ));
        };
        if let Some(unknown) = map.keys().find(|key| !known.contains(&key.as_str())) {
            return Err(CreditError::invalid_argument(
                unknown,
                format!(
                    "{what} got an unknown field {}; expected {}",
                    quote(unknown),
                    known.join(", ")
                ),
            ));
        }
        Ok(Fields { map })
    }

    /// A present, non-null value. JS `undefined` arrives as null.
    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|value| !value.is_null())
    }

    fn required(&self, name: &str) -> Result<&'a Value, CreditError> {
        self.get(name)
            .ok_or_else(|| CreditError::invalid_argument(name, format!("{name} is required")))
    }

    fn string(&self, name: &str) -> Result<&'a str, CreditError> {
        as_str(name, self.required(name)?)
    }

    fn optional_string(&self, name: &str) -> Result<Option<&'a str>, CreditError> {
        self.get(name).map(|value| as_str(name, value)).transpose()
    }

    fn integer(&self, name: &str) -> Result<i64, CreditError> {
        as_integer(name, self.required(name)?)
    }

    /// The optional `idempotencyKey`.
    fn idempotency_key(&self) -> Result<Option<IdempotencyKey>, CreditError> {
        self.optional_string("idempotencyKey")?.map(IdempotencyKey::new).transpose()
    }

    /// The optional `metadata` object.
    fn metadata(&self) -> Result<Option<Metadata>, CreditError> {
        self.get("metadata").map(|value| Metadata::new(value.clone())).transpose()
    }

    fn optional_integer(&self, name: &str) -> Result<Option<i64>, CreditError> {
        self.get(name)
            .map(|value| as_integer(name, value))
            .transpose()
    }
}

fn as_str<'v>(name: &str, value: &'v Value) -> Result<&'v str, CreditError> {
    value.as_str().ok_or_else(|| {
        CreditError::invalid_argument(
            name,
            format!("{name} must be a string, got {}", type_name(value)),
        )
    })
}

/// An integer from a JSON number. JS numbers are doubles, so `5.0` is 5;
/// `5.5`, `NaN` (which arrives as null) and `1e300` are refused.
fn as_integer(name: &str, value: &Value) -> Result<i64, CreditError> {
    let not_integer = || {
        CreditError::invalid_argument(
            name,
            format!("{name} must be an integer, got {}", describe(value)),
        )
    };
    let Value::Number(number) = value else {
        return Err(CreditError::invalid_argument(
            name,
            format!("{name} must be a number, got {}", type_name(value)),
        ));
    };
    if let Some(int) = number.as_i64() {
        return Ok(int);
    }
    if number.as_u64().is_some() {
        // Above i64::MAX: out of every range we accept; report it as such.
        return Ok(i64::MAX);
    }
    match number.as_f64() {
        Some(float) if float.fract() == 0.0 && float.abs() < 9.0e15 => Ok(float as i64),
        Some(float) if float.fract() == 0.0 && float.is_finite() => {
            Ok(if float > 0.0 { i64::MAX } else { i64::MIN })
        }
        _ => Err(not_integer()),
    }
}

// -----------------------------------------------------------------------------
// Requests
// -----------------------------------------------------------------------------

/// `charge`: hold `cost` credits for a new job.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeRequest {
    pub user_id: UserId,
    pub operation: Operation,
    pub cost: Cost,
    pub idempotency_key: Option<IdempotencyKey>,
    pub metadata: Option<Metadata>,
    pub hold_seconds: Option<HoldSeconds>,
}

const CHARGE_FIELDS: [&str; 6] = [
    "userId",
    "operation",
    "cost",
    "idempotencyKey",
    "metadata",
    "holdSeconds",
];

impl ChargeRequest {
    /// Parses `{ userId, operation, cost, idempotencyKey?, metadata?, holdSeconds? }`.
    ///
    /// ```
    /// use creditgate::ChargeRequest;
    /// use serde_json::json;
    /// let ok = json!({"userId": "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e", "operation": "image", "cost": 5});
    /// assert!(ChargeRequest::from_json(&ok).is_ok());
    /// let zero = json!({"userId": "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e", "operation": "image", "cost": 0});
    /// assert_eq!(ChargeRequest::from_json(&zero).unwrap_err().details()["field"], "cost");
    /// ```
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("charge", value, &CHARGE_FIELDS)?;
        Self::from_fields(&fields)
    }

    fn from_fields(fields: &Fields<'_>) -> Result<Self, CreditError> {
        Ok(ChargeRequest {
            user_id: UserId::parse("userId", fields.string("userId")?)?,
            operation: Operation::new(fields.string("operation")?)?,
            cost: Cost::new(fields.integer("cost")?)?,
            idempotency_key: fields.idempotency_key()?,
            metadata: fields.metadata()?,
            hold_seconds: fields
                .optional_integer("holdSeconds")?
                .map(HoldSeconds::new)
                .transpose()?,
        })
    }
}

/// `complete`: settle a job keeping its cost, or a lower actual cost.
#[derive(Debug, Clone, PartialEq)]
pub struct CompleteRequest {
    pub job_id: JobId,
    pub result_url: Option<ResultUrl>,
    pub actual_cost: Option<ActualCost>,
    /// The units (tokens) the job really used: its unit limits are
    /// corrected to it (absent: the estimate stands).
    pub actual_units: Option<ActualUnits>,
}

impl CompleteRequest {
    /// Parses `{ jobId, resultUrl?, actualCost?, actualUnits? }`.
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("complete", value, &["jobId", "resultUrl", "actualCost", "actualUnits"])?;
        Ok(CompleteRequest {
            job_id: JobId::parse("jobId", fields.string("jobId")?)?,
            result_url: fields
                .optional_string("resultUrl")?
                .map(ResultUrl::new)
                .transpose()?,
            actual_cost: fields
                .optional_integer("actualCost")?
                .map(ActualCost::new)
                .transpose()?,
            actual_units: fields.optional_integer("actualUnits")?.map(ActualUnits::new).transpose()?,
        })
    }
}

/// `refund`: settle a job returning its whole hold.
#[derive(Debug, Clone, PartialEq)]
pub struct RefundRequest {
    pub user_id: UserId,
    pub job_id: JobId,
    pub reason: Reason,
}

impl RefundRequest {
    /// Parses `{ userId, jobId, reason }`.
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("refund", value, &["userId", "jobId", "reason"])?;
        Ok(RefundRequest {
            user_id: UserId::parse("userId", fields.string("userId")?)?,
            job_id: JobId::parse("jobId", fields.string("jobId")?)?,
            reason: Reason::new(fields.string("reason")?)?,
        })
    }
}

/// `grant`: add credits (a purchase, a gift), idempotent by key.
#[derive(Debug, Clone, PartialEq)]
pub struct GrantRequest {
    pub user_id: UserId,
    pub amount: Amount,
    pub reason: Reason,
    pub idempotency_key: Option<IdempotencyKey>,
    pub metadata: Option<Metadata>,
    /// When what remains of the lot leaves the balance (never when absent).
    pub expires_at: Option<Timestamp>,
    /// The lot's category (`paid` when absent).
    pub category: Option<Category>,
    /// The lot's priority (50 when absent).
    pub priority: Option<Priority>,
}

/// The fields a grant takes.
pub const GRANT_FIELDS: [&str; 8] =
    ["userId", "amount", "reason", "idempotencyKey", "metadata", "expiresAt", "category", "priority"];

impl GrantRequest {
    /// Parses `{ userId, amount, reason, idempotencyKey?, metadata?,
    /// expiresAt?, category?, priority? }`: every grant opens a lot.
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("grant", value, &GRANT_FIELDS)?;
        Ok(GrantRequest {
            user_id: UserId::parse("userId", fields.string("userId")?)?,
            amount: Amount::new(fields.integer("amount")?)?,
            reason: Reason::new(fields.string("reason")?)?,
            idempotency_key: fields.idempotency_key()?,
            metadata: fields.metadata()?,
            expires_at: timestamp(&fields, "expiresAt")?,
            category: fields.optional_string("category")?.map(Category::new).transpose()?,
            priority: fields.optional_integer("priority")?.map(Priority::new).transpose()?,
        })
    }
}

/// An optional instant field, its errors naming the field.
fn timestamp(fields: &Fields<'_>, name: &str) -> Result<Option<Timestamp>, CreditError> {
    fields
        .optional_string(name)?
        .map(|text| Timestamp::new(text).map_err(|error| error.with_detail("field", name)))
        .transpose()
}

/// `revokeLot`: take back what remains of a lot.
#[derive(Debug, Clone, PartialEq)]
pub struct RevokeLotRequest {
    pub lot_id: LotId,
    pub reason: Reason,
}

impl RevokeLotRequest {
    /// Parses `{ lotId, reason }`.
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("revokeLot", value, &["lotId", "reason"])?;
        Ok(RevokeLotRequest {
            lot_id: LotId::parse("lotId", fields.string("lotId")?)?,
            reason: Reason::new(fields.string("reason")?)?,
        })
    }
}

/// `events`: a user's balance events after an id.
#[derive(Debug, Clone, PartialEq)]
pub struct EventsRequest {
    pub user_id: UserId,
    pub after: i64,
    pub limit: u32,
}

impl EventsRequest {
    /// Parses `{ userId, after?, limit? }` (after 0, limit 20 when absent).
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("events", value, &["userId", "after", "limit"])?;
        let after = fields.optional_integer("after")?.unwrap_or(0);
        if after < 0 {
            return Err(CreditError::invalid_argument("after", "after must be an event id, 0 or more"));
        }
        let limit = fields.optional_integer("limit")?.unwrap_or(i64::from(PAGE_DEFAULT));
        if !(1..=i64::from(PAGE_MAX)).contains(&limit) {
            return Err(CreditError::invalid_argument("limit", format!("limit must be from 1 to {PAGE_MAX}, got {limit}")));
        }
        Ok(EventsRequest { user_id: UserId::parse("userId", fields.string("userId")?)?, after, limit: limit as u32 })
    }
}

/// `upsertPlan`: a plan's allowance per period.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRequest {
    pub plan: PlanName,
    pub amount: Amount,
    pub period: Period,
    pub rollover_max: Option<RolloverMax>,
    /// The plan's limits, `{user?, operations?, concurrency?, units?}`
    /// (docs/rpc.md, `upsert_credit_plan`; the SQL checks the shape, naming
    /// the field); absent: a plan's limits are kept.
    pub limits: Option<Map<String, Value>>,
}

impl PlanRequest {
    /// Parses `{ plan, amount, period: "day" | "week" | "month", rolloverMax?, limits? }`.
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("upsertPlan", value, &["plan", "amount", "period", "rolloverMax", "limits"])?;
        let limits = match fields.get("limits") {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => Some(map.clone()),
            Some(_) => {
                return Err(CreditError::invalid_argument(
                    "limits",
                    "limits must be an object {user?, operations?, concurrency?, units?}",
                ))
            }
        };
        Ok(PlanRequest {
            plan: PlanName::new(fields.string("plan")?)?,
            amount: Amount::new(fields.integer("amount")?)?,
            period: Period::parse(fields.string("period")?)?,
            rollover_max: fields.optional_integer("rolloverMax")?.map(RolloverMax::new).transpose()?,
            limits,
        })
    }
}

/// `subscribePlan`: put a user on a plan, periods counted from `anchor`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscribeRequest {
    pub user_id: UserId,
    pub plan: PlanName,
    /// Now when absent.
    pub anchor: Option<Timestamp>,
}

impl SubscribeRequest {
    /// Parses `{ userId, plan, anchor? }`.
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("subscribePlan", value, &["userId", "plan", "anchor"])?;
        Ok(SubscribeRequest {
            user_id: UserId::parse("userId", fields.string("userId")?)?,
            plan: PlanName::new(fields.string("plan")?)?,
            anchor: timestamp(&fields, "anchor")?,
        })
    }
}

/// `limit`: count `cost` against `limit` per `windowSeconds` for `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitRequest {
    pub key: LimitKey,
    pub limit: Limit,
    pub window_seconds: WindowSeconds,
    pub weight: Weight,
}

impl LimitRequest {
    /// Parses `{ key, limit, windowSeconds, cost? }` (`cost` defaults to 1).
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("limit", value, &["key", "limit", "windowSeconds", "weight"])?;
        Self::from_fields(&fields, "key")
    }

    /// The limit's fields; its key is read from `key_field` (`key`, or
    /// `limitKey` beside a charge's `idempotencyKey`).
    fn from_fields(fields: &Fields<'_>, key_field: &str) -> Result<Self, CreditError> {
        let key = LimitKey::new(fields.string(key_field)?).map_err(|error| error.with_detail("field", key_field))?;
        let limit = Limit::new(fields.integer("limit")?)?;
        let window_seconds = WindowSeconds::new(fields.integer("windowSeconds")?)?;
        let weight = match fields.optional_integer("weight")? {
            None => Weight::new(1)?,
            Some(value) => Weight::new(value)?,
        };
        // A request heavier than the whole limit could never be allowed:
        // that is a mistake in the caller, not a rate-limit denial.
        if weight.get() > limit.get() {
            return Err(CreditError::invalid_argument(
                "weight",
                format!("weight ({}) must not exceed limit ({})", weight.get(), limit.get()),
            ));
        }
        Ok(LimitRequest { key, limit, window_seconds, weight })
    }
}

/// `tokenBucket`: take `weight` tokens from a bucket of `capacity` tokens
/// refilled at `refillPerSecond` (burst, then a steady rate).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucketRequest {
    pub key: LimitKey,
    pub capacity: Limit,
    /// Tokens per second, from [`REFILL_PER_SECOND_MIN`] to [`REFILL_PER_SECOND_MAX`].
    pub refill_per_second: f64,
    pub weight: Weight,
}

impl TokenBucketRequest {
    /// Parses `{ key, capacity, refillPerSecond, weight? }`.
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("tokenBucket", value, &["key", "capacity", "refillPerSecond", "weight"])?;
        let key = LimitKey::new(fields.string("key")?)?;
        let capacity = Limit::new(fields.integer("capacity")?).map_err(|error| renamed(error, "capacity"))?;
        let rate = fields.required("refillPerSecond")?.as_f64().filter(|rate| rate.is_finite());
        let refill_per_second = rate
            .filter(|rate| (REFILL_PER_SECOND_MIN..=REFILL_PER_SECOND_MAX).contains(rate))
            .ok_or_else(|| {
                CreditError::invalid_argument(
                    "refillPerSecond",
                    // Spelled out: formatting an f64 would pull float printing
                    // (~14 KB) into the module (a unit test checks the text).
                    "refillPerSecond must be a number from 0.00001 to 1000000",
                )
            })?;
        let weight = Weight::new(fields.optional_integer("weight")?.unwrap_or(1))?;
        if weight.get() > capacity.get() {
            return Err(CreditError::invalid_argument(
                "weight",
                format!("weight ({}) must not exceed capacity ({})", weight.get(), capacity.get()),
            ));
        }
        Ok(TokenBucketRequest { key, capacity, refill_per_second, weight })
    }
}

/// The same error, naming `field` instead.
fn renamed(error: CreditError, field: &str) -> CreditError {
    CreditError::invalid_argument(field, error.message().replacen("limit", field, 1))
}

/// `peekLimit`: what `limit` would answer for a request of weight 1,
/// spending nothing. Any key, `creditgate:` ones included.
#[derive(Debug, Clone, PartialEq)]
pub struct PeekLimitRequest {
    pub key: LimitKey,
    pub limit: Limit,
    pub window_seconds: WindowSeconds,
}

impl PeekLimitRequest {
    /// Parses `{ key, limit, windowSeconds }`.
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("peekLimit", value, &["key", "limit", "windowSeconds"])?;
        Ok(PeekLimitRequest {
            key: LimitKey::any(fields.string("key")?)?,
            limit: Limit::new(fields.integer("limit")?)?,
            window_seconds: WindowSeconds::new(fields.integer("windowSeconds")?)?,
        })
    }
}

/// `resetLimit`, `unblockLimitKey`: one key, `creditgate:` ones included.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitKeyRequest {
    pub key: LimitKey,
}

impl LimitKeyRequest {
    /// Parses `{ key }`; `what` names the call in errors.
    pub fn from_json(what: &str, value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new(what, value, &["key"])?;
        Ok(LimitKeyRequest { key: LimitKey::any(fields.string("key")?)? })
    }
}

/// `blockLimitKey`: every limit naming `key` refuses (403 `blocked`) until
/// `until` (ISO 8601; absent: until unblocked).
#[derive(Debug, Clone, PartialEq)]
pub struct BlockRequest {
    pub key: LimitKey,
    pub until: Option<String>,
    pub reason: Reason,
}

impl BlockRequest {
    /// Parses `{ key, until?, reason }`. `until` is checked by the database
    /// (a timestamp in the future).
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("blockLimitKey", value, &["key", "until", "reason"])?;
        let until = fields.optional_string("until")?.map(str::to_owned);
        if until.as_deref().is_some_and(|until| until.is_empty() || until.len() > 64) {
            return Err(CreditError::invalid_argument("until", "until must be an ISO 8601 timestamp"));
        }
        Ok(BlockRequest { key: LimitKey::any(fields.string("key")?)?, until, reason: Reason::new(fields.string("reason")?)? })
    }
}

/// `limitUsage`: the windows of keys starting with `prefix` that hold
/// something now, at most `max_rows` (1 to [`USAGE_ROWS_MAX`], default 100).
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRequest {
    pub prefix: String,
    pub max_rows: u32,
}

impl UsageRequest {
    /// Parses `{ prefix?, limit? }` (`limit`: rows, as for `/jobs?limit`).
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let fields = Fields::new("limitUsage", value, &["prefix", "limit"])?;
        let prefix = fields.optional_string("prefix")?.unwrap_or_default().to_owned();
        if prefix.chars().count() > LIMIT_KEY_CHARS_MAX {
            return Err(CreditError::invalid_argument("prefix", format!("prefix must be at most {LIMIT_KEY_CHARS_MAX} characters")));
        }
        let rows = fields.optional_integer("limit")?.unwrap_or(100);
        let max_rows = crate::values::check_int("limit", rows, 1, USAGE_ROWS_MAX)?;
        Ok(UsageRequest { prefix, max_rows })
    }
}

/// `chargeWithLimit`: a limit and a charge in one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeWithLimitRequest {
    pub charge: ChargeRequest,
    pub limit: LimitRequest,
    /// A unit limit: `weight` is the units estimate the job reserves,
    /// corrected by `complete({actualUnits})` (docs/rpc.md).
    pub units: bool,
}

impl ChargeWithLimitRequest {
    /// Parses a charge's fields plus `limitKey, limit, windowSeconds, weight?, units?`
    /// (`cost` is the charge's credits; `weight` what the request counts
    /// against the limit, default 1; `units: true` makes it a unit limit).
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let mut known: Vec<&str> = CHARGE_FIELDS.to_vec();
        known.extend(["limitKey", "limit", "windowSeconds", "weight", "units"]);
        let fields = Fields::new("chargeWithLimit", value, &known)?;
        let units = match fields.get("units") {
            None => false,
            Some(Value::Bool(units)) => *units,
            Some(_) => return Err(CreditError::invalid_argument("units", "units must be true or false")),
        };
        Ok(ChargeWithLimitRequest {
            charge: ChargeRequest::from_fields(&fields)?,
            limit: LimitRequest::from_fields(&fields, "limitKey")?,
            units,
        })
    }
}

/// A charge and several limits in one transaction, all or nothing: when any
/// limit refuses, nothing is spent and nothing charged; an idempotent
/// replay, or a charge refused (402, 409, 422), spends no limit.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeWithLimitsRequest {
    pub charge: ChargeRequest,
    /// In the order the results come back; at most [`LIMITS_PER_CALL_MAX`].
    pub limits: Vec<LimitRequest>,
}


/// The section of a plan's limits an entry stands for: the subscribed
/// plan's section replaces it (`"plan"` in `charge_credits_with_limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanSection {
    User,
    Operation,
    Concurrency,
    Units,
}

impl PlanSection {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanSection::User => "user",
            PlanSection::Operation => "operation",
            PlanSection::Concurrency => "concurrency",
            PlanSection::Units => "units",
        }
    }
}

/// One entry of `charge_credits_with_limits`' `p_limits` beyond a plain
/// rate limit (docs/rpc.md): a rate or unit limit, a concurrency limit, or
/// a plan placeholder; each optionally standing for a plan section.
#[derive(Debug, Clone, PartialEq)]
pub enum LimitEntry {
    /// A rate limit; `units`: a unit limit whose weight is the estimate.
    Rate { limit: LimitRequest, units: bool, plan: Option<PlanSection> },
    /// At most `concurrency` open holds of the charged user.
    Concurrency { key: LimitKey, concurrency: Concurrency, plan: Option<PlanSection> },
    /// No default: the plan's section applies under `key` if it has one
    /// (`estimate`: a units placeholder's estimate).
    Placeholder { key: LimitKey, plan: PlanSection, estimate: Option<Weight> },
}

impl LimitEntry {
    /// The entry as `p_limits` takes it.
    pub fn to_json(&self) -> Value {
        let mut map = Map::new();
        let plan = match self {
            LimitEntry::Rate { limit, units, plan } => {
                map.insert("key".into(), limit.key.as_str().into());
                map.insert("limit".into(), limit.limit.get().into());
                map.insert("window_seconds".into(), limit.window_seconds.get().into());
                map.insert("cost".into(), limit.weight.get().into());
                if *units {
                    map.insert("units".into(), true.into());
                }
                *plan
            }
            LimitEntry::Concurrency { key, concurrency, plan } => {
                map.insert("key".into(), key.as_str().into());
                map.insert("concurrency".into(), concurrency.get().into());
                *plan
            }
            LimitEntry::Placeholder { key, plan, estimate } => {
                map.insert("key".into(), key.as_str().into());
                if let Some(estimate) = estimate {
                    map.insert("units".into(), true.into());
                    map.insert("cost".into(), estimate.get().into());
                }
                Some(*plan)
            }
        };
        if let Some(plan) = plan {
            map.insert("plan".into(), plan.as_str().into());
        }
        Value::Object(map)
    }
}

/// `charge_credits_with_limits` with [`LimitEntry`]s: the limits that
/// apply come back resolved (a plan's replace the defaults), each
/// describing itself.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeWithEntriesRequest {
    pub charge: ChargeRequest,
    pub entries: Vec<LimitEntry>,
}

/// One limit that applied to a [`ChargeWithEntriesRequest`], as the SQL
/// resolved it.
#[derive(Debug, Clone, PartialEq)]
pub struct LimitOutcome {
    pub key: String,
    /// A concurrency limit (`result.limit` holds, no window).
    pub concurrency: bool,
    /// A unit limit.
    pub units: bool,
    /// The plan section it stands for, and the plan it came from (if not a default).
    pub plan: Option<String>,
    pub from_plan: Option<String>,
    /// Holds open before this request (concurrency limits).
    pub open: Option<u32>,
    pub result: RateLimitResult,
}

/// `ChargeWithEntriesRequest`'s result.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeWithEntriesResult {
    pub charge: Option<ChargeResult>,
    pub limits: Vec<LimitOutcome>,
}

/// `charge_credits_with_limits`' result: every limit's outcome, in the
/// request's order, and the charge when every limit allowed it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeWithLimitsResult {
    pub charge: Option<ChargeResult>,
    pub limits: Vec<RateLimitResult>,
}

/// The value `run`'s callback may return: what `complete` should record.
/// Any other fields of the value are the caller's own and are ignored.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunOutput {
    pub result_url: Option<ResultUrl>,
    pub actual_cost: Option<ActualCost>,
}

impl RunOutput {
    /// Reads `resultUrl` and `actualCost` from whatever the callback
    /// returned; anything that is not an object (including nothing)
    /// completes at the full cost with no URL.
    pub fn from_json(value: &Value) -> Result<Self, CreditError> {
        let Value::Object(map) = value else {
            return Ok(RunOutput::default());
        };
        let fields = Fields { map };
        Ok(RunOutput {
            result_url: fields
                .optional_string("resultUrl")?
                .map(ResultUrl::new)
                .transpose()?,
            actual_cost: fields
                .optional_integer("actualCost")?
                .map(ActualCost::new)
                .transpose()?,
        })
    }
}

/// `{ userId }` alone (`POST /plans/cancel`): any other field is refused.
pub fn user_field_from_json(value: &Value) -> Result<UserId, CreditError> {
    let fields = Fields::new("cancelPlan", value, &["userId"])?;
    UserId::parse("userId", fields.string("userId")?)
}

/// A user id given alone (`balance(userId)`).
pub fn user_id_from_json(value: &Value) -> Result<UserId, CreditError> {
    UserId::parse("userId", as_str("userId", value)?)
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    const USER: &str = "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e";
    const JOB: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

    fn field_of(result: Result<impl std::fmt::Debug, CreditError>) -> String {
        let error = result.expect_err("should be refused");
        assert_eq!(error.code(), ErrorCode::InvalidArgument, "{error}");
        error.details()["field"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    fn charge(overrides: Value) -> Value {
        let mut base = json!({"userId": USER, "operation": "image_generation", "cost": 5});
        if let (Value::Object(base_map), Value::Object(extra)) = (&mut base, overrides) {
            base_map.extend(extra);
        }
        base
    }

    #[test]
    fn a_minimal_charge_parses() {
        let request = ChargeRequest::from_json(&charge(json!({}))).expect("valid");
        assert_eq!(request.user_id.to_string(), USER);
        assert_eq!(request.operation.as_str(), "image_generation");
        assert_eq!(request.cost.get(), 5);
        assert_eq!(request.idempotency_key, None);
        assert_eq!(request.metadata, None);
        assert_eq!(request.hold_seconds, None);
    }

    #[test]
    fn a_full_charge_parses() {
        let request = ChargeRequest::from_json(&charge(json!({
            "idempotencyKey": "req-1", "metadata": {"model": "x"}, "holdSeconds": 60
        })))
        .expect("valid");
        assert_eq!(
            request.idempotency_key.as_ref().map(IdempotencyKey::as_str),
            Some("req-1")
        );
        assert_eq!(
            request
                .metadata
                .as_ref()
                .map(|m| m.as_map()["model"].clone()),
            Some(json!("x"))
        );
        assert_eq!(request.hold_seconds.map(HoldSeconds::get), Some(60));
    }

    #[test]
    fn undefined_optionals_count_as_absent() {
        let request = ChargeRequest::from_json(&charge(json!({
            "idempotencyKey": null, "metadata": null, "holdSeconds": null
        })))
        .expect("valid");
        assert_eq!(request.idempotency_key, None);
        assert_eq!(request.metadata, None);
    }

    #[test]
    fn uuids_are_normalized_to_lowercase() {
        let request = ChargeRequest::from_json(&charge(json!({"userId": USER.to_uppercase()})))
            .expect("valid");
        assert_eq!(request.user_id.to_string(), USER);
    }

    #[test]
    fn cost_bounds() {
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(json!({"cost": 0})))),
            "cost"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(json!({"cost": -1})))),
            "cost"
        );
        assert!(ChargeRequest::from_json(&charge(json!({"cost": 1}))).is_ok());
        assert!(ChargeRequest::from_json(&charge(json!({"cost": 1_000_000_000}))).is_ok());
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(
                json!({"cost": 1_000_000_001})
            ))),
            "cost"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(
                json!({"cost": 2147483648_i64})
            ))),
            "cost"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(json!({"cost": u64::MAX})))),
            "cost"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(json!({"cost": 1e300})))),
            "cost"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(json!({"cost": -1e300})))),
            "cost"
        );
    }

    #[test]
    fn cost_must_be_an_integer_number() {
        assert!(ChargeRequest::from_json(&charge(json!({"cost": 5.0}))).is_ok());
        for bad in [
            json!(5.5),
            json!("5"),
            json!(true),
            json!([5]),
            json!({"n": 5}),
            json!(null),
        ] {
            assert_eq!(
                field_of(ChargeRequest::from_json(&charge(json!({ "cost": bad })))),
                "cost"
            );
        }
        let error =
            ChargeRequest::from_json(&charge(json!({"cost": 5.5}))).expect_err("fractional");
        assert_eq!(error.message(), "cost must be an integer, got 5.5");
        let error = ChargeRequest::from_json(&charge(json!({"cost": "5"}))).expect_err("string");
        assert_eq!(error.message(), "cost must be a number, got a string");
        let error = ChargeRequest::from_json(&charge(json!({"cost": null}))).expect_err("null");
        assert_eq!(error.message(), "cost is required");
    }

    #[test]
    fn operation_bounds() {
        let at_max = "o".repeat(OPERATION_CHARS_MAX);
        let past_max = "o".repeat(OPERATION_CHARS_MAX + 1);
        assert!(ChargeRequest::from_json(&charge(json!({"operation": at_max}))).is_ok());
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(
                json!({"operation": past_max})
            ))),
            "operation"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(json!({"operation": ""})))),
            "operation"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(
                json!({"operation": "   "})
            ))),
            "operation"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(
                json!({"operation": "a\nb"})
            ))),
            "operation"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(
                json!({"operation": "a\u{0}b"})
            ))),
            "operation"
        );
        // Chars, not bytes: 64 two-byte chars are fine.
        assert!(ChargeRequest::from_json(&charge(json!({"operation": "é".repeat(64)}))).is_ok());
        assert!(ChargeRequest::from_json(&charge(json!({"operation": "é".repeat(65)}))).is_err());
    }

    #[test]
    fn idempotency_key_bounds() {
        let at_max = "k".repeat(IDEMPOTENCY_KEY_CHARS_MAX);
        let past_max = "k".repeat(IDEMPOTENCY_KEY_CHARS_MAX + 1);
        assert!(ChargeRequest::from_json(&charge(json!({"idempotencyKey": at_max}))).is_ok());
        let error = ChargeRequest::from_json(&charge(json!({"idempotencyKey": past_max})))
            .expect_err("too long");
        assert_eq!(error.details()["field"], "idempotencyKey");
        assert_eq!(error.details()["max"], 255);
        assert_eq!(
            error.message(),
            "idempotencyKey must be at most 255 characters, got 256"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(
                json!({"idempotencyKey": ""})
            ))),
            "idempotencyKey"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(
                json!({"idempotencyKey": 7})
            ))),
            "idempotencyKey"
        );
    }

    #[test]
    fn hold_seconds_bounds() {
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(json!({"holdSeconds": 0})))),
            "holdSeconds"
        );
        assert!(ChargeRequest::from_json(&charge(json!({"holdSeconds": 1}))).is_ok());
        assert!(
            ChargeRequest::from_json(&charge(json!({"holdSeconds": HOLD_SECONDS_MAX}))).is_ok()
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(
                json!({"holdSeconds": HOLD_SECONDS_MAX + 1})
            ))),
            "holdSeconds"
        );
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        for bad in [json!([1]), json!("x"), json!(3), json!(true)] {
            assert_eq!(
                field_of(ChargeRequest::from_json(&charge(
                    json!({ "metadata": bad })
                ))),
                "metadata"
            );
        }
        // {"a": "..."} is 9 bytes of jsonb text around the string.
        let fits = "x".repeat(METADATA_BYTES_MAX - 9);
        assert!(ChargeRequest::from_json(&charge(json!({"metadata": {"a": fits}}))).is_ok());
        let too_big = "x".repeat(METADATA_BYTES_MAX - 8);
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(
                json!({"metadata": {"a": too_big}})
            ))),
            "metadata"
        );
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(
                json!({"metadata": {"a": ["ok", {"b": "\u{0}"}]}})
            ))),
            "metadata"
        );
    }

    #[test]
    fn jsonb_text_length_matches_postgres_printing() {
        // SELECT octet_length('{"a":1,"b":[1,2],"c":{"d":null}}'::jsonb::text) = 39
        assert_eq!(
            jsonb_text_bytes(&json!({"a": 1, "b": [1, 2], "c": {"d": null}})),
            39
        );
        assert_eq!(jsonb_text_bytes(&json!({})), 2);
        assert_eq!(jsonb_text_bytes(&json!([])), 2);
        // SELECT octet_length(jsonb_build_object('q', E'say "hi"\n')::text) = 21
        assert_eq!(jsonb_text_bytes(&json!({"q": "say \"hi\"\n"})), 21);
    }

    #[test]
    fn user_ids_must_be_uuids() {
        for bad in [
            "",
            "not-a-uuid",
            "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0",
            "' OR 1=1 --",
        ] {
            assert_eq!(
                field_of(ChargeRequest::from_json(&charge(json!({ "userId": bad })))),
                "userId",
                "{bad}"
            );
        }
        assert_eq!(
            field_of(ChargeRequest::from_json(&charge(json!({"userId": 42})))),
            "userId"
        );
        let error = ChargeRequest::from_json(&charge(json!({"userId": ""}))).expect_err("empty");
        assert_eq!(error.message(), "userId must not be empty");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error =
            ChargeRequest::from_json(&charge(json!({"idempotencykey": "k"}))).expect_err("typo");
        assert_eq!(error.details()["field"], "idempotencykey");
        assert!(
            error.message().contains("unknown field"),
            "{}",
            error.message()
        );
    }

    #[test]
    fn requests_must_be_objects() {
        for bad in [json!(null), json!("x"), json!([]), json!(1)] {
            assert_eq!(field_of(ChargeRequest::from_json(&bad)), "request");
            assert_eq!(field_of(CompleteRequest::from_json(&bad)), "request");
            assert_eq!(field_of(RefundRequest::from_json(&bad)), "request");
            assert_eq!(field_of(GrantRequest::from_json(&bad)), "request");
            assert_eq!(field_of(LimitRequest::from_json(&bad)), "request");
            assert_eq!(field_of(ChargeWithLimitRequest::from_json(&bad)), "request");
        }
    }

    #[test]
    fn complete_parses_and_checks_its_fields() {
        let request = CompleteRequest::from_json(&json!({"jobId": JOB})).expect("valid");
        assert_eq!(request.job_id.to_string(), JOB);
        assert_eq!(request.actual_cost, None);
        let request = CompleteRequest::from_json(
            &json!({"jobId": JOB, "resultUrl": "https://x/y.png", "actualCost": 0}),
        )
        .expect("valid");
        assert_eq!(request.actual_cost.map(ActualCost::get), Some(0));
        assert_eq!(
            request.result_url.as_ref().map(ResultUrl::as_str),
            Some("https://x/y.png")
        );
        assert_eq!(
            field_of(CompleteRequest::from_json(
                &json!({"jobId": JOB, "actualCost": -1})
            )),
            "actualCost"
        );
        assert_eq!(
            field_of(CompleteRequest::from_json(&json!({"jobId": "x"}))),
            "jobId"
        );
        assert_eq!(field_of(CompleteRequest::from_json(&json!({}))), "jobId");
        let url_at_max = format!("https://x/{}", "u".repeat(RESULT_URL_CHARS_MAX - 10));
        let url_past_max = format!("{url_at_max}u");
        assert!(
            CompleteRequest::from_json(&json!({"jobId": JOB, "resultUrl": url_at_max})).is_ok()
        );
        for bad in ["javascript:alert(1)", "JavaScript://x%0aalert(1)", "data:text/html,x", "ftp://x/y", "//x/y", "https:", "https://", "u"] {
            assert_eq!(field_of(CompleteRequest::from_json(&json!({"jobId": JOB, "resultUrl": bad}))), "resultUrl", "{bad}");
        }
        assert!(CompleteRequest::from_json(&json!({"jobId": JOB, "resultUrl": "HTTP://cdn.example/1.png"})).is_ok());
        assert_eq!(
            field_of(CompleteRequest::from_json(
                &json!({"jobId": JOB, "resultUrl": url_past_max})
            )),
            "resultUrl"
        );
    }

    #[test]
    fn refund_needs_user_job_and_reason() {
        let request = RefundRequest::from_json(
            &json!({"userId": USER, "jobId": JOB, "reason": "generation failed"}),
        )
        .expect("valid");
        assert_eq!(request.reason.as_str(), "generation failed");
        assert_eq!(
            field_of(RefundRequest::from_json(
                &json!({"userId": USER, "jobId": JOB})
            )),
            "reason"
        );
        assert_eq!(
            field_of(RefundRequest::from_json(
                &json!({"userId": USER, "jobId": JOB, "reason": ""})
            )),
            "reason"
        );
        // Prose may span lines, but not hold NUL.
        assert!(
            RefundRequest::from_json(&json!({"userId": USER, "jobId": JOB, "reason": "a\nb"}))
                .is_ok()
        );
        assert_eq!(
            field_of(RefundRequest::from_json(
                &json!({"userId": USER, "jobId": JOB, "reason": "a\u{0}b"})
            )),
            "reason"
        );
        let at_max = "r".repeat(REASON_CHARS_MAX);
        let past_max = "r".repeat(REASON_CHARS_MAX + 1);
        assert!(
            RefundRequest::from_json(&json!({"userId": USER, "jobId": JOB, "reason": at_max}))
                .is_ok()
        );
        assert_eq!(
            field_of(RefundRequest::from_json(
                &json!({"userId": USER, "jobId": JOB, "reason": past_max})
            )),
            "reason"
        );
    }

    #[test]
    fn grant_amount_bounds() {
        let grant = |amount: Value| json!({"userId": USER, "amount": amount, "reason": "purchase"});
        assert_eq!(
            field_of(GrantRequest::from_json(&grant(json!(0)))),
            "amount"
        );
        assert!(GrantRequest::from_json(&grant(json!(1))).is_ok());
        assert!(GrantRequest::from_json(&grant(json!(1_000_000_000))).is_ok());
        assert_eq!(
            field_of(GrantRequest::from_json(&grant(json!(1_000_000_001)))),
            "amount"
        );
    }

    #[test]
    fn limit_bounds() {
        let limit = |extra: Value| {
            let mut base = json!({"key": "user:1", "limit": 10, "windowSeconds": 60});
            if let (Value::Object(base_map), Value::Object(extra)) = (&mut base, extra) {
                base_map.extend(extra);
            }
            base
        };
        let request = LimitRequest::from_json(&limit(json!({}))).expect("valid");
        assert_eq!(request.weight.get(), 1);
        assert_eq!(
            field_of(LimitRequest::from_json(&limit(json!({"limit": 0})))),
            "limit"
        );
        assert!(LimitRequest::from_json(&limit(json!({"limit": 1}))).is_ok());
        assert!(LimitRequest::from_json(&limit(json!({"limit": 1_000_000}))).is_ok());
        assert_eq!(
            field_of(LimitRequest::from_json(&limit(json!({"limit": 1_000_001})))),
            "limit"
        );
        assert_eq!(
            field_of(LimitRequest::from_json(&limit(json!({"windowSeconds": 0})))),
            "windowSeconds"
        );
        assert!(LimitRequest::from_json(&limit(json!({"windowSeconds": 1}))).is_ok());
        assert!(LimitRequest::from_json(&limit(json!({"windowSeconds": 86400}))).is_ok());
        assert_eq!(
            field_of(LimitRequest::from_json(&limit(
                json!({"windowSeconds": 86401})
            ))),
            "windowSeconds"
        );
        assert_eq!(
            field_of(LimitRequest::from_json(&limit(json!({"weight": 0})))),
            "weight"
        );
        assert!(LimitRequest::from_json(&limit(json!({"weight": 10}))).is_ok());
        assert_eq!(
            field_of(LimitRequest::from_json(&limit(json!({"weight": 11})))),
            "weight"
        );
        assert_eq!(
            field_of(LimitRequest::from_json(&limit(json!({"key": ""})))),
            "key"
        );
        assert!(LimitRequest::from_json(&limit(json!({"key": "k".repeat(255)}))).is_ok());
        assert_eq!(
            field_of(LimitRequest::from_json(&limit(
                json!({"key": "k".repeat(256)})
            ))),
            "key"
        );
    }

    #[test]
    fn charge_with_limit_takes_both_and_names_the_limit_key_and_weight() {
        let value = json!({
            "userId": USER, "operation": "image", "cost": 5, "idempotencyKey": "k",
            "limitKey": "user:1", "limit": 3, "windowSeconds": 60, "weight": 2
        });
        let request = ChargeWithLimitRequest::from_json(&value).expect("valid");
        assert_eq!(request.charge.cost.get(), 5);
        assert_eq!(request.limit.weight.get(), 2);
        assert_eq!(request.limit.key.as_str(), "user:1");
        assert_eq!(request.limit.limit.get(), 3);
        let mut heavy = value.clone();
        heavy["weight"] = json!(4);
        assert_eq!(
            field_of(ChargeWithLimitRequest::from_json(&heavy)),
            "weight"
        );
        let mut no_window = value;
        no_window
            .as_object_mut()
            .map(|map| map.remove("windowSeconds"));
        assert_eq!(
            field_of(ChargeWithLimitRequest::from_json(&no_window)),
            "windowSeconds"
        );
    }

    #[test]
    fn run_output_reads_only_its_two_fields() {
        assert_eq!(
            RunOutput::from_json(&json!(null)).expect("ok"),
            RunOutput::default()
        );
        assert_eq!(
            RunOutput::from_json(&json!("a string result")).expect("ok"),
            RunOutput::default()
        );
        let output = RunOutput::from_json(
            &json!({"resultUrl": "https://x", "actualCost": 2, "image": [1, 2]}),
        )
        .expect("ok");
        assert_eq!(output.actual_cost.map(ActualCost::get), Some(2));
        assert_eq!(
            field_of(RunOutput::from_json(&json!({"actualCost": -2}))),
            "actualCost"
        );
        assert_eq!(
            field_of(RunOutput::from_json(&json!({"resultUrl": 5}))),
            "resultUrl"
        );
    }

    #[test]
    fn the_refill_range_message_names_the_bounds() {
        let error = TokenBucketRequest::from_json(&serde_json::json!({"key": "k", "capacity": 5, "refillPerSecond": 0})).unwrap_err();
        let bounds = format!("from {REFILL_PER_SECOND_MIN} to {REFILL_PER_SECOND_MAX}");
        assert!(error.message().ends_with(&bounds), "{} vs {bounds}", error.message());
    }
}
