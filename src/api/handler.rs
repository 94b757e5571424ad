//! The routes' behaviour: who may call what, and the flows behind them.

use super::auth::{authenticate, Caller};
use super::keys::KeyStore;
use super::outbound::{self, Generated, Sender};
use super::error::ApiError;
use super::http::{ApiRequest, ApiResponse};
use super::input;
use super::log::Trace;
use super::routes::{route, Route};
use super::settings::{
    policy_names, LimitPolicy, NamedPolicy, PolicyKind, Settings, DEFAULT_GENERATE_OPERATION, GENERATE_HOLD_MARGIN_SECONDS,
};
use crate::client::CreditClient;
use crate::error::{CreditError, ErrorCode};
use crate::rate_limit_headers::rate_limit_headers;
use crate::{
    ChargeRequest, ChargeResult, ChargeWithEntriesRequest, ChargeWithLimitsRequest, HoldSeconds, JobId, JobView, Limit,
    LimitEntry, LimitKey, LimitOutcome, LimitRequest, PlanSection, RateLimitResult, RefundRequest, ResultUrl, RunOutput,
    UserId, Weight, WindowSeconds,
};
use crate::{BlockRequest, LimitKeyRequest, PeekLimitRequest, UsageRequest};
use std::net::{IpAddr, Ipv6Addr};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The CORS headers every response carries: the API is called from
/// browsers, and they may read the rate-limit fields.
pub const CORS_HEADERS: [(&str, &str); 4] = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-headers", "authorization, x-client-info, apikey, content-type, idempotency-key"),
    ("access-control-allow-methods", "GET, POST, OPTIONS"),
    ("access-control-expose-headers", "ratelimit-policy, ratelimit, retry-after"),
];

/// A handled request: the response, and the one-line JSON log for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    pub response: ApiResponse,
    pub log: String,
}

/// The API: settings, the credit client, and a sender for table reads and
/// the generator. Built once per function instance; requests share it.
#[derive(Debug, Clone)]
pub struct Api {
    settings: Settings,
    client: CreditClient,
    sender: Sender,
    keys: KeyStore,
}

/// The RateLimit results of a request so far, with the policy of each.
type Limits = Vec<(NamedPolicy, RateLimitResult)>;

impl Api {
    pub fn new(settings: Settings) -> Result<Api, CreditError> {
        let client = CreditClient::new(settings.config.clone());
        let keys = KeyStore::new(settings.jwks.clone(), settings.jwks_url.clone());
        Ok(Api { settings, client, sender: Sender::new()?, keys })
    }

    /// Reads the settings from the environment (see `settings.rs`).
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Api, CreditError> {
        Api::new(Settings::from_env(env)?)
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Answers one request. Never fails: every failure is a response.
    pub async fn handle(&self, request: ApiRequest) -> Handled {
        let started_ms = super::now_ms();
        let mut trace = Trace::default();
        let response = if request.method == "OPTIONS" {
            ApiResponse { status: 204, headers: Vec::new(), body: String::new() }
        } else {
            match self.dispatch(&request, &mut trace).await {
                Ok(response) => response,
                Err(error) => {
                    trace.code = Some(error.code);
                    if let Some(cause) = error.details.get("cause").and_then(Value::as_str) {
                        trace.cause = Some(cause.to_owned());
                    }
                    error.into_response()
                }
            }
        };
        let mut response = response;
        for (name, value) in CORS_HEADERS {
            response.set_header(name, value);
        }
        let log = trace.line(&request.method, response.status, super::now_ms() - started_ms);
        Handled { response, log }
    }

    async fn dispatch(&self, request: &ApiRequest, trace: &mut Trace) -> Result<ApiResponse, ApiError> {
        let route = route(&request.method, &request.path)?;
        trace.route = route.template();
        let caller = authenticate(request, &self.settings, &self.keys, &self.sender, super::now_ms()).await?;
        if let Caller::User(user) = caller {
            trace.user = Some(user.to_string());
        }
        if route.service_only() {
            if caller != Caller::Service {
                return Err(ApiError::forbidden("this route is for the service role (your backend), not for users"));
            }
            return match route {
                Route::Complete(job_id) => self.complete(request, job_id, trace).await,
                Route::Refund(job_id) => self.refund(request, job_id, trace).await,
                Route::Grant => self.grant(request).await,
                Route::RevokeLot(_) | Route::Plan | Route::Subscribe | Route::Cancel => {
                    self.lots_service_route(request, route).await
                }
                Route::DeliverWebhooks => {
                    super::webhooks::deliver(&self.client, &self.sender, self.settings.webhook.as_ref(), request).await
                }
                _ => self.limit_tool(request, route).await,
            };
        }
        if let (Route::Job(job_id), Caller::Service) = (route, caller) {
            trace.job = Some(job_id.to_string());
            return self.job(request, job_id, None).await;
        }
        let user = match caller {
            Caller::User(user) => user,
            Caller::Service => {
                return Err(ApiError::forbidden(
                    "this route acts for a signed-in user: call it with the user's access token",
                ));
            }
            Caller::Anonymous => {
                return Err(ApiError::unauthorized("this route needs a signed-in user's access token"));
            }
        };
        match route {
            Route::Charge => self.charge(request, user, trace).await,
            Route::Generate => self.generate(request, user, trace).await,
            Route::Balance => {
                input::no_query(request)?;
                let balance = self.client.balance(&user).await?;
                Ok(ApiResponse::json(200, &json!({"balance": balance})))
            }
            Route::Job(job_id) => {
                trace.job = Some(job_id.to_string());
                self.job(request, job_id, Some(user)).await
            }
            Route::Jobs => self.jobs(request, user).await,
            Route::Ledger => self.ledger(request, user).await,
            Route::Lots => self.lots(request, user).await,
            Route::Events => self.events(request, user).await,
            _ => Err(ApiError::forbidden("this route is for the service role")),
        }
    }

    // -------------------------------------------------------------------------
    // Paid routes
    // -------------------------------------------------------------------------

    async fn charge(&self, request: &ApiRequest, user: UserId, trace: &mut Trace) -> Result<ApiResponse, ApiError> {
        input::no_query(request)?;
        let body = input::charge(request)?;
        let idempotency_key = input::idempotency_key(request)?;
        let cost = self.settings.price(&body.operation)?;
        let body_units = body.units;
        let charge = ChargeRequest {
            user_id: user,
            operation: body.operation,
            cost,
            idempotency_key,
            metadata: Some(body.metadata),
            hold_seconds: Some(self.settings.hold_seconds),
        };
        let (charged, limits) = self.charge_within_limits(request, charge, body_units, trace).await?;
        trace.job = Some(charged.job_id.to_string());
        trace.replayed = Some(charged.replayed);
        let body = json!({
            "jobId": charged.job_id, "balance": charged.balance, "replayed": charged.replayed,
            "expiresAt": charged.expires_at, "cost": cost.get(),
        });
        Ok(with_limits(ApiResponse::json(200, &body), &limits))
    }

    async fn generate(&self, request: &ApiRequest, user: UserId, trace: &mut Trace) -> Result<ApiResponse, ApiError> {
        input::no_query(request)?;
        let body = input::generate(request, DEFAULT_GENERATE_OPERATION)?;
        let idempotency_key = input::idempotency_key(request)?;
        let cost = self.settings.price(&body.operation)?;
        let body_units = body.units;
        // Refused before anything is charged: there is nowhere to send the work.
        let generator = self.settings.generator.clone().ok_or_else(|| {
            ApiError::from_code(ErrorCode::Upstream, "no generator is configured (set GENERATOR_URL)")
                .with_detail("cause", "generator_not_configured")
        })?;
        let hold_seconds = generator.timeout_ms.div_ceil(1000) + GENERATE_HOLD_MARGIN_SECONDS;
        let charge = ChargeRequest {
            user_id: user,
            operation: body.operation.clone(),
            cost,
            idempotency_key,
            metadata: Some(body.metadata),
            hold_seconds: Some(HoldSeconds::new(i64::from(hold_seconds))?),
        };
        let (charged, limits) = self.charge_within_limits(request, charge, body_units, trace).await?;
        trace.job = Some(charged.job_id.to_string());
        trace.replayed = Some(charged.replayed);
        let job_id = charged.job_id;
        if charged.replayed {
            return self.replayed_generation(user, job_id, cost.get()).await.map(|r| with_limits(r, &limits))
                .map_err(|error| error.with_headers(limit_headers(&limits)));
        }

        let call = outbound::generator_call(&generator, &body.prompt, body.operation.as_str(), job_id);
        let (cause, generator_status) = match outbound::generated(self.sender.send(&call, Some(generator.timeout_ms)).await) {
            Generated::Url(url) => {
                let output = RunOutput { result_url: ResultUrl::new(url.as_str()).ok(), actual_cost: None };
                return match self.client.complete_or_refund(user, job_id, output, "generate").await {
                    Ok(done) => {
                        let body = json!({
                            "jobId": done.job_id, "status": done.status, "resultUrl": url,
                            "balance": done.balance, "cost": cost.get(), "replayed": false,
                        });
                        Ok(with_limits(ApiResponse::json(200, &body), &limits))
                    }
                    Err((error, refunded)) => {
                        Err(settled_failure(ApiError::from(error), &charged, refunded).with_headers(limit_headers(&limits)))
                    }
                };
            }
            Generated::Failed { cause, status } => (cause, status),
        };
        let refunded = self.client.refund_quietly(user, job_id, &format!("generate: generation failed ({cause})")).await;
        let message = match refunded {
            Some(_) => format!("the generation failed ({cause}); the credits were refunded"),
            None => format!("the generation failed ({cause}); the hold expires and comes back"),
        };
        let mut error = ApiError::from_code(ErrorCode::Upstream, message).with_detail("cause", cause);
        if let Some(status) = generator_status {
            error = error.with_detail("generatorStatus", status);
        }
        Err(settled_failure(error, &charged, refunded).with_headers(limit_headers(&limits)))
    }

    /// A retried `/generate` (same key, same request): what happened the
    /// first time, without generating or charging again.
    async fn replayed_generation(&self, user: UserId, job_id: JobId, cost: u32) -> Result<ApiResponse, ApiError> {
        let job = self.read_job(job_id, Some(user)).await?.ok_or_else(|| {
            ApiError::from_code(ErrorCode::Upstream, "the replayed charge's job is missing").with_detail("jobId", job_id.to_string())
        })?;
        match job.status.as_str() {
            "completed" => {
                let balance = self.client.balance(&user).await?;
                let body = json!({
                    "jobId": job.id, "status": job.status, "resultUrl": job.result_url,
                    "balance": balance, "cost": cost, "replayed": true,
                });
                Ok(ApiResponse::json(200, &body))
            }
            "failed" | "expired" => Err(ApiError::from_code(
                ErrorCode::Upstream,
                "this request's generation failed before; its credits were refunded",
            )
            .with_detail("cause", "generation_failed_before")
            .with_detail("jobId", job.id)
            .with_detail("status", job.status)
            .with_detail("refunded", true)
            .with_detail("replayed", true)),
            _ => Err(ApiError::from_code(ErrorCode::IdempotencyInFlight, "this request's generation is still running")
                .with_detail("jobId", job.id)),
        }
    }

    /// The user's limits, the client address's and the operation's (each
    /// window of each, if on) and the charge, in one RPC and one
    /// transaction: a refusal by any spends none, and a replay or a refused
    /// charge (402, 409, 422) spends no limit at all. A denial answers 429
    /// with `Retry-After`; a blocked key (the user's, the address's, the
    /// user's for this operation) 403 `blocked`, from the SQL, before
    /// anything is charged. Without a usable client address only the user
    /// and operation limits apply (pooling every such request in one
    /// bucket would let one client lock out all the others).
    async fn charge_within_limits(
        &self,
        request: &ApiRequest,
        charge: ChargeRequest,
        units: Option<Weight>,
        trace: &mut Trace,
    ) -> Result<(ChargeResult, Limits), ApiError> {
        let address = client_ip(request, self.settings.trusted_proxy_hops);
        if address.is_none() && !self.settings.ip_limits.is_empty() {
            trace.ip_limit_skipped = true;
        }
        if self.settings.user_concurrency.is_some() || !self.settings.unit_limits.is_empty() || self.settings.plan_limits {
            return self.charge_within_limit_entries(address.as_deref(), charge, units).await;
        }
        let policies = self.settings.policies(&charge.operation, address.is_some());
        let mut limits = Vec::with_capacity(policies.len());
        for named in &policies {
            let suffix = match &named.kind {
                PolicyKind::User => format!("user:{}", charge.user_id),
                PolicyKind::Ip => format!("ip:{}", address.as_deref().unwrap_or_default()),
                PolicyKind::Operation(operation) => format!("op:{operation}:user:{}", charge.user_id),
                // Never among `policies()`: these go through charge_within_limit_entries.
                PolicyKind::Concurrency => format!("user:{}", charge.user_id),
                PolicyKind::Units => format!("units:user:{}", charge.user_id),
            };
            limits.push(limit_request(&suffix, named)?);
        }
        let result = self.client.charge_with_limits(&ChargeWithLimitsRequest { charge, limits }).await?;
        let limits: Limits = policies.into_iter().zip(result.limits).collect();
        match result.charge {
            Some(charged) => Ok((charged, limits)),
            None => Err(rate_limited(&limits)),
        }
    }

    /// [`Self::charge_within_limits`] when a concurrency limit, a unit limit
    /// or plan limits are configured: the same limits as [`LimitEntry`]s,
    /// plus the user's concurrency limit (key `creditgate:user:<uuid>`) and
    /// unit limits (`creditgate:units:user:<uuid>`, weighed by the request's
    /// `units` estimate, 1 when absent). With `CREDITGATE_PLAN_LIMITS=on`
    /// the user, operation, concurrency and unit entries stand for the plan's
    /// sections (placeholders where no default is set), resolved by the SQL
    /// in the same call; the answer lists the limits that applied, which
    /// name the policies. A concurrency refusal is 429 `concurrency_limited`.
    async fn charge_within_limit_entries(
        &self,
        address: Option<&str>,
        charge: ChargeRequest,
        units: Option<Weight>,
    ) -> Result<(ChargeResult, Limits), ApiError> {
        let settings = &self.settings;
        let plan = |section: PlanSection| settings.plan_limits.then_some(section);
        let user_key = LimitKey::reserved(&format!("user:{}", charge.user_id))?;
        let operation = charge.operation.as_str().to_owned();
        let operation_key = LimitKey::reserved(&format!("op:{operation}:user:{}", charge.user_id))?;
        let units_key = LimitKey::reserved(&format!("units:user:{}", charge.user_id))?;
        let rate = |key: &LimitKey, policy: &LimitPolicy, weight: Weight| LimitRequest {
            key: key.clone(),
            limit: policy.limit,
            window_seconds: policy.window_seconds,
            weight,
        };
        let one = Weight::new(1)?;
        let mut entries = Vec::new();
        for policy in &settings.user_limits {
            entries.push(LimitEntry::Rate { limit: rate(&user_key, policy, one), units: false, plan: plan(PlanSection::User) });
        }
        if settings.user_limits.is_empty() && settings.plan_limits {
            entries.push(LimitEntry::Placeholder { key: user_key.clone(), plan: PlanSection::User, estimate: None });
        }
        if let Some(address) = address {
            let ip_key = LimitKey::reserved(&format!("ip:{address}"))?;
            for policy in &settings.ip_limits {
                entries.push(LimitEntry::Rate { limit: rate(&ip_key, policy, one), units: false, plan: None });
            }
        }
        match settings.operation_limits.get(&operation) {
            Some(policies) => {
                for policy in policies {
                    entries.push(LimitEntry::Rate {
                        limit: rate(&operation_key, policy, one),
                        units: false,
                        plan: plan(PlanSection::Operation),
                    });
                }
            }
            None if settings.plan_limits => {
                entries.push(LimitEntry::Placeholder { key: operation_key, plan: PlanSection::Operation, estimate: None });
            }
            None => {}
        }
        match settings.user_concurrency {
            Some(concurrency) => entries.push(LimitEntry::Concurrency {
                key: user_key.clone(),
                concurrency,
                plan: plan(PlanSection::Concurrency),
            }),
            None if settings.plan_limits => {
                entries.push(LimitEntry::Placeholder { key: user_key.clone(), plan: PlanSection::Concurrency, estimate: None });
            }
            None => {}
        }
        let estimate = units.unwrap_or(one);
        for policy in &settings.unit_limits {
            if estimate.get() > policy.limit.get() {
                return Err(ApiError::invalid(
                    "units",
                    format!("units ({}) must not exceed the unit limit ({} per {} s)", estimate.get(), policy.limit.get(),
                        policy.window_seconds.get()),
                ));
            }
            entries.push(LimitEntry::Rate { limit: rate(&units_key, policy, estimate), units: true, plan: plan(PlanSection::Units) });
        }
        if settings.unit_limits.is_empty() && settings.plan_limits {
            entries.push(LimitEntry::Placeholder { key: units_key, plan: PlanSection::Units, estimate: Some(estimate) });
        }

        let result = self.client.charge_with_entries(&ChargeWithEntriesRequest { charge, entries }).await?;
        let limits = named_outcomes(&result.limits);
        match result.charge {
            Some(charged) => Ok((charged, limits)),
            None => match result.limits.iter().find(|outcome| outcome.concurrency && !outcome.result.success) {
                Some(outcome) => Err(concurrency_limited(outcome, &limits)),
                None => Err(rate_limited(&limits)),
            },
        }
    }

    // -------------------------------------------------------------------------
    // Reads
    // -------------------------------------------------------------------------

    async fn read_job(&self, job_id: JobId, owner: Option<UserId>) -> Result<Option<JobView>, ApiError> {
        Ok(self.client.job(job_id, owner).await?)
    }

    async fn job(&self, request: &ApiRequest, job_id: JobId, owner: Option<UserId>) -> Result<ApiResponse, ApiError> {
        input::no_query(request)?;
        match self.read_job(job_id, owner).await? {
            Some(job) => Ok(ApiResponse::json(200, &json!(job))),
            // Another user's job is not found either: its existence is not ours to tell.
            None => Err(ApiError::from_code(ErrorCode::JobNotFound, "Job not found").with_detail("jobId", job_id.to_string())),
        }
    }

    async fn jobs(&self, request: &ApiRequest, user: UserId) -> Result<ApiResponse, ApiError> {
        let limit = input::page_limit(request)?;
        let jobs = self.client.jobs(user, limit).await?;
        Ok(ApiResponse::json(200, &json!({"jobs": jobs})))
    }

    async fn ledger(&self, request: &ApiRequest, user: UserId) -> Result<ApiResponse, ApiError> {
        let query = input::ledger(request)?;
        let (entries, next_before) = self.client.ledger(user, query.limit, query.before).await?;
        Ok(ApiResponse::json(200, &json!({"entries": entries, "nextBefore": next_before})))
    }

    // -------------------------------------------------------------------------
    // Service routes
    // -------------------------------------------------------------------------

    async fn complete(&self, request: &ApiRequest, job_id: JobId, trace: &mut Trace) -> Result<ApiResponse, ApiError> {
        trace.job = Some(job_id.to_string());
        input::no_query(request)?;
        let completing = input::complete(request, job_id)?;
        let done = self.client.complete(&completing).await?;
        let body = json!({"jobId": done.job_id, "status": done.status, "balance": done.balance, "refunded": done.refunded});
        Ok(ApiResponse::json(200, &body))
    }

    async fn refund(&self, request: &ApiRequest, job_id: JobId, trace: &mut Trace) -> Result<ApiResponse, ApiError> {
        trace.job = Some(job_id.to_string());
        input::no_query(request)?;
        let reason = input::refund(request)?;
        let job = self
            .read_job(job_id, None)
            .await?
            .ok_or_else(|| ApiError::from_code(ErrorCode::JobNotFound, "Job not found").with_detail("jobId", job_id.to_string()))?;
        let user = UserId::parse("userId", &job.user_id)?;
        trace.user = Some(user.to_string());
        if job.status != "pending" {
            // Settled already (an expired hold's credits are back): the SQL
            // would change nothing, and the caller should know.
            return Err(ApiError::from_code(ErrorCode::JobAlreadySettled, format!("the job is already {}", job.status))
                .with_detail("jobId", job.id)
                .with_detail("status", job.status));
        }
        let result = self.client.refund(&RefundRequest { user_id: user, job_id, reason }).await?;
        Ok(ApiResponse::json(200, &json!({"jobId": job.id, "balance": result.balance, "refunded": job.cost})))
    }

    async fn grant(&self, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
        input::no_query(request)?;
        let grant = input::grant(request)?;
        let result = self.client.grant(&grant).await?;
        Ok(ApiResponse::json(200, &json!({"userId": grant.user_id.to_string(), "balance": result.balance})))
    }

    /// The operator's rate-limit tools: `/limits/peek`, `/limits/reset`,
    /// `/limits/usage`, `/limits/block`, `/limits/unblock`. Keys may be the
    /// function's own (`creditgate:user:<uuid>`, `creditgate:ip:<addr>`,
    /// `creditgate:op:<operation>:user:<uuid>`).
    async fn limit_tool(&self, request: &ApiRequest, route: Route) -> Result<ApiResponse, ApiError> {
        if route == Route::LimitUsage {
            let usage = UsageRequest::from_json(&input::usage_query(request)?)?;
            let rows = self.client.limit_usage(&usage).await?;
            return Ok(ApiResponse::json(200, &json!({"usage": rows})));
        }
        input::no_query(request)?;
        let body = Value::Object(input::body_object(request, false)?);
        let answer = match route {
            Route::PeekLimit => json!(self.client.peek_limit(&PeekLimitRequest::from_json(&body)?).await?),
            Route::ResetLimit => json!(self.client.reset_limit(&LimitKeyRequest::from_json("reset", &body)?).await?),
            Route::BlockLimitKey => json!(self.client.block_limit_key(&BlockRequest::from_json(&body)?).await?),
            _ => json!(self.client.unblock_limit_key(&LimitKeyRequest::from_json("unblock", &body)?).await?),
        };
        Ok(ApiResponse::json(200, &answer))
    }
}

/// The client's address as the trusted proxy saw it: the `hops`-th entry of
/// `X-Forwarded-For` from the right (1: the last, which the proxy in front
/// of the function appended; everything left of it the client may have
/// written). IPv4-mapped IPv6 is IPv4; other IPv6 is its /64, the block one
/// subscriber gets. `None` when that entry is missing or not an address.
pub fn client_ip(request: &ApiRequest, hops: u8) -> Option<String> {
    // Several X-Forwarded-For headers are one list, in order.
    let hops_seen: Vec<&str> = request
        .headers
        .iter()
        .filter(|(name, _)| name == "x-forwarded-for")
        .flat_map(|(_, value)| value.split(','))
        .collect();
    let hop = hops_seen.len().checked_sub(usize::from(hops)).map(|index| hops_seen[index].trim())?;
    let address = parse_hop(hop)?;
    Some(match address {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let segments = v6.segments();
                let prefix = Ipv6Addr::new(segments[0], segments[1], segments[2], segments[3], 0, 0, 0, 0);
                format!("{prefix}/64")
            }
        },
    })
}

/// One hop: an address, optionally with a port (`1.2.3.4:80`, `[::1]:80`).
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(address) = hop.parse::<IpAddr>() {
        return Some(address);
    }
    if let Some(rest) = hop.strip_prefix('[') {
        return rest.split_once(']').and_then(|(address, _)| address.parse::<Ipv6Addr>().ok()).map(IpAddr::V6);
    }
    let (address, port) = hop.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    address.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// One of the function's own limits: its key is reserved (see
/// [`LimitKey::reserved`]), so no caller's key shares its counter.
fn limit_request(suffix: &str, named: &NamedPolicy) -> Result<LimitRequest, ApiError> {
    Ok(LimitRequest {
        key: LimitKey::reserved(suffix)?,
        limit: named.policy.limit,
        window_seconds: named.policy.window_seconds,
        weight: Weight::new(1)?,
    })
}

/// `RateLimit-Policy`, `RateLimit` (one list member per policy) and, if
/// any policy denied, `Retry-After` (the longest wait).
pub fn limit_headers(limits: &Limits) -> Vec<(String, String)> {
    let mut policy = Vec::new();
    let mut remaining = Vec::new();
    let mut retry_after: Option<u32> = None;
    for (named, result) in limits {
        // Policy names are ASCII labels and operation names (no control
        // characters): encoding fails only for a non-ASCII operation name,
        // whose policy is then left out of the headers.
        let Ok(headers) = rate_limit_headers(result, &named.name) else { continue };
        for (header, value) in headers {
            match header {
                "RateLimit-Policy" => policy.push(value),
                "RateLimit" => remaining.push(value),
                _ => {
                    let seconds = value.parse().unwrap_or(1);
                    retry_after = Some(retry_after.map_or(seconds, |known: u32| known.max(seconds)));
                }
            }
        }
    }
    let mut headers = Vec::new();
    if !policy.is_empty() {
        headers.push(("ratelimit-policy".to_owned(), policy.join(", ")));
        headers.push(("ratelimit".to_owned(), remaining.join(", ")));
    }
    if let Some(seconds) = retry_after {
        headers.push(("retry-after".to_owned(), seconds.to_string()));
    }
    headers
}

fn with_limits(mut response: ApiResponse, limits: &Limits) -> ApiResponse {
    for (name, value) in limit_headers(limits) {
        response.set_header(&name, value);
    }
    response
}

/// The 429 of a request some limit refused: `details.policy` (`user`, `ip`,
/// `operation`), `details.windowSeconds` and `details.name` (the RateLimit
/// policy name) of the refusing limit that asks to wait longest (what
/// `Retry-After` says), and `details.operation` for an operation's limit.
fn rate_limited(limits: &Limits) -> ApiError {
    let denied = limits.iter().filter(|(_, result)| !result.success).max_by_key(|(_, result)| result.retry_after);
    let Some((named, result)) = denied else {
        return ApiError::from_code(ErrorCode::RateLimited, "too many paid requests; retry after 1 s")
            .with_detail("policy", "unknown")
            .with_detail("retryAfter", 1)
            .with_headers(limit_headers(limits));
    };
    let retry_after = result.retry_after.max(1);
    let window = named.policy.window_seconds.get();
    let mut error = ApiError::from_code(
        ErrorCode::RateLimited,
        format!("too many paid requests ({} limit, {} per {window} s); retry after {retry_after} s", named.name, named.policy.limit.get()),
    )
    .with_detail("policy", named.kind.as_str())
    .with_detail("name", named.name.clone())
    .with_detail("windowSeconds", window)
    .with_detail("limit", named.policy.limit.get())
    .with_detail("retryAfter", retry_after);
    if let PolicyKind::Operation(operation) = &named.kind {
        error = error.with_detail("operation", operation.clone());
    }
    if let Some(plan) = &named.plan {
        error = error.with_detail("plan", plan.clone());
    }
    error.with_headers(limit_headers(limits))
}

/// The RateLimit policies of the limits a charge's SQL resolved: the kind
/// from the entry (a concurrency or unit limit) or its key's prefix
/// (`creditgate:ip:`, `creditgate:op:<operation>:`, else the user's); named
/// as configured policies are (`user`, or `user-60`, `user-86400`, ... when
/// the kind has several windows).
fn named_outcomes(outcomes: &[LimitOutcome]) -> Limits {
    let kind_of = |outcome: &LimitOutcome| {
        if outcome.concurrency {
            PolicyKind::Concurrency
        } else if outcome.units {
            PolicyKind::Units
        } else if outcome.key.starts_with("creditgate:ip:") {
            PolicyKind::Ip
        } else if let Some(rest) = outcome.key.strip_prefix("creditgate:op:") {
            PolicyKind::Operation(rest.rsplit_once(":user:").map_or(rest, |(operation, _)| operation).to_owned())
        } else {
            PolicyKind::User
        }
    };
    let kinds: Vec<PolicyKind> = outcomes.iter().map(kind_of).collect();
    outcomes
        .iter()
        .zip(&kinds)
        .filter_map(|(outcome, kind)| {
            let window = outcome.result.window_seconds.unwrap_or(1);
            let policy = LimitPolicy {
                limit: Limit::new(i64::from(outcome.result.limit)).ok()?,
                window_seconds: WindowSeconds::new(i64::from(window)).ok()?,
            };
            let base = policy_names(kind.clone(), &[policy]).remove(0).name;
            let several = kinds.iter().filter(|other| *other == kind).count() > 1;
            let name = if several { format!("{base}-{window}") } else { base };
            Some((NamedPolicy { kind: kind.clone(), name, policy, plan: outcome.from_plan.clone() }, outcome.result.clone()))
        })
        .collect()
}

/// The 429 of a request refused by a concurrency limit: the user already
/// has `limit` paid requests running. `Retry-After: 1` (a slot frees when
/// a hold settles, which no one can predict); `details: {policy:
/// "concurrency", name, limit, open, retryAfter, plan?}`.
fn concurrency_limited(outcome: &LimitOutcome, limits: &Limits) -> ApiError {
    let open = outcome.open.unwrap_or(outcome.result.limit);
    let mut error = ApiError::from_code(
        ErrorCode::ConcurrencyLimited,
        format!("too many paid requests running ({open} of {} at once); retry when one finishes", outcome.result.limit),
    )
    .with_detail("policy", "concurrency")
    .with_detail("name", "concurrency")
    .with_detail("limit", outcome.result.limit)
    .with_detail("open", open)
    .with_detail("retryAfter", 1);
    if let Some(plan) = &outcome.from_plan {
        error = error.with_detail("plan", plan.clone());
    }
    error.with_headers(limit_headers(limits))
}

/// A failed generation's error, saying whether the credits came back.
fn settled_failure(error: ApiError, charged: &ChargeResult, refunded_balance: Option<i64>) -> ApiError {
    let mut error = error.with_detail("jobId", charged.job_id.to_string()).with_detail("refunded", refunded_balance.is_some());
    match refunded_balance {
        Some(balance) => error = error.with_detail("balance", balance),
        None => {
            if let Some(expires_at) = &charged.expires_at {
                error = error.with_detail("expiresAt", expires_at.clone());
            }
        }
    }
    error
}

mod lots;
#[cfg(test)]
mod tests;
