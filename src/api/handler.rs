//! The routes' behaviour: who may call what, and the flows behind them.

use super::auth::{authenticate, Caller};
use super::backend::{self, Generated, JobView, LedgerView, Sender};
use super::error::ApiError;
use super::http::{ApiRequest, ApiResponse};
use super::input;
use super::log::Trace;
use super::routes::{route, Route};
use super::settings::{LimitPolicy, Settings, DEFAULT_GENERATE_OPERATION, GENERATE_HOLD_MARGIN_SECONDS};
use crate::client::CreditClient;
use crate::error::{CreditError, ErrorCode};
use crate::ratelimit::rate_limit_headers;
use crate::types::{
    ChargeRequest, ChargeResult, ChargeWithLimitRequest, CompleteRequest, HoldSeconds, JobId, LimitCost, LimitKey,
    LimitRequest, RateLimitResult, Reason, RefundRequest, ResultUrl, UserId,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// The CORS headers every response carries: the API is called from
/// browsers, and they may read the rate-limit fields.
pub const CORS_HEADERS: [(&str, &str); 3] = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-headers", "authorization, x-client-info, apikey, content-type, idempotency-key"),
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
}

/// The RateLimit results of a request so far, by policy name.
type Limits = Vec<(&'static str, RateLimitResult)>;

impl Api {
    pub fn new(settings: Settings) -> Result<Api, CreditError> {
        let client = CreditClient::new(settings.config.clone());
        Ok(Api { settings, client, sender: Sender::new()? })
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
        let caller = authenticate(request, &self.settings, (super::now_ms() / 1000.0) as i64)?;
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
                _ => self.grant(request).await,
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
            Route::Complete(_) | Route::Refund(_) | Route::Grant => {
                Err(ApiError::forbidden("this route is for the service role"))
            }
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
        let charge = ChargeRequest {
            user_id: user,
            operation: body.operation,
            cost,
            idempotency_key,
            metadata: Some(body.metadata),
            hold_seconds: Some(self.settings.hold_seconds),
        };
        let (charged, limits) = self.charge_within_limits(request, charge).await?;
        trace.job = Some(charged.job_id.clone());
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
        let (charged, limits) = self.charge_within_limits(request, charge).await?;
        trace.job = Some(charged.job_id.clone());
        trace.replayed = Some(charged.replayed);
        let job_id = JobId::parse("jobId", &charged.job_id)?;
        if charged.replayed {
            return self.replayed_generation(user, job_id, cost.get()).await.map(|r| with_limits(r, &limits))
                .map_err(|error| error.with_headers(limit_headers(&limits)));
        }

        let call = backend::generator_call(&generator, &body.prompt, body.operation.as_str(), &charged.job_id);
        let outcome = backend::generated(self.sender.send(&call, Some(generator.timeout_ms)).await);
        let failure = match outcome {
            Generated::Url(url) => {
                let completing =
                    CompleteRequest { job_id, result_url: ResultUrl::new(url.as_str()).ok(), actual_cost: None };
                match self.client.complete(&completing).await {
                    Ok(done) => {
                        let body = json!({
                            "jobId": done.job_id, "status": done.status, "resultUrl": url,
                            "balance": done.balance, "cost": cost.get(), "replayed": false,
                        });
                        return Ok(with_limits(ApiResponse::json(200, &body), &limits));
                    }
                    Err(error) => {
                        // If the completion did commit (the answer was lost),
                        // the refund is refused as job_already_settled and
                        // nothing is undone.
                        let refunded = self.refund_quietly(user, job_id, "completing the job failed").await;
                        return Err(settled_failure(ApiError::from(error), &charged, refunded)
                            .with_headers(limit_headers(&limits)));
                    }
                }
            }
            Generated::Failed { cause, status } => (cause, status),
        };
        let (cause, generator_status) = failure;
        let refunded = self.refund_quietly(user, job_id, &format!("generation failed ({cause})")).await;
        let message = match refunded {
            Some(_) => format!("the generation failed ({cause}); the credits were refunded"),
            None => format!("the generation failed ({cause}); the hold is released when it expires"),
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

    /// The IP limit (if on), then the user limit and the charge in one RPC
    /// (all or nothing). A denial answers 429 with `Retry-After`.
    async fn charge_within_limits(
        &self,
        request: &ApiRequest,
        charge: ChargeRequest,
    ) -> Result<(ChargeResult, Limits), ApiError> {
        let mut limits: Limits = Vec::new();
        if let Some(policy) = self.settings.ip_limit {
            let key = format!("creditgate:ip:{}", client_ip(request));
            let result = self.client.limit(&limit_request(&key, policy)?).await?;
            limits.push(("ip", result));
            if !limits[0].1.success {
                return Err(rate_limited(&limits));
            }
        }
        let Some(policy) = self.settings.user_limit else {
            let charged = self.client.charge(&charge).await.map_err(|e| ApiError::from(e).with_headers(limit_headers(&limits)))?;
            return Ok((charged, limits));
        };
        let key = format!("creditgate:user:{}", charge.user_id);
        let both = ChargeWithLimitRequest { charge, limit: limit_request(&key, policy)? };
        let result = self
            .client
            .charge_with_limit(&both)
            .await
            .map_err(|e| ApiError::from(e).with_headers(limit_headers(&limits)))?;
        limits.insert(0, ("user", result.rate_limit.clone()));
        if !result.rate_limit.success {
            return Err(rate_limited(&limits));
        }
        let (Some(job_id), Some(balance)) = (result.job_id, result.balance) else {
            return Err(ApiError::from_code(ErrorCode::Upstream, "the charge was allowed but returned no job"));
        };
        let charged =
            ChargeResult { job_id, balance, replayed: result.replayed.unwrap_or(false), expires_at: result.expires_at };
        Ok((charged, limits))
    }

    /// Refunds a job, returning the new balance; `None` if it could not be
    /// done (the expiry sweeper then releases the hold).
    async fn refund_quietly(&self, user: UserId, job_id: JobId, why: &str) -> Option<i64> {
        let reason = Reason::new(why).ok()?;
        self.client.refund(&RefundRequest { user_id: user, job_id, reason }).await.ok().map(|result| result.balance)
    }

    // -------------------------------------------------------------------------
    // Reads
    // -------------------------------------------------------------------------

    async fn read_job(&self, job_id: JobId, owner: Option<UserId>) -> Result<Option<JobView>, ApiError> {
        let answer = self.sender.read(&backend::job_call(&self.settings.config, job_id, owner)).await?;
        Ok(backend::rows::<JobView>("generation_jobs", &answer)?.into_iter().next())
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
        let answer = self.sender.read(&backend::jobs_call(&self.settings.config, user, limit)).await?;
        let jobs = backend::rows::<JobView>("generation_jobs", &answer)?;
        Ok(ApiResponse::json(200, &json!({"jobs": jobs})))
    }

    async fn ledger(&self, request: &ApiRequest, user: UserId) -> Result<ApiResponse, ApiError> {
        let query = input::ledger(request)?;
        let answer = self.sender.read(&backend::ledger_call(&self.settings.config, user, query)).await?;
        let mut entries = backend::rows::<LedgerView>("credit_ledger", &answer)?;
        let more = entries.len() > query.limit as usize;
        entries.truncate(query.limit as usize);
        let next_before = if more { entries.last().map(|entry| entry.id) } else { None };
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
        let result = self.client.refund(&RefundRequest { user_id: user, job_id, reason }).await?;
        Ok(ApiResponse::json(200, &json!({"jobId": job.id, "balance": result.balance, "refunded": job.cost})))
    }

    async fn grant(&self, request: &ApiRequest) -> Result<ApiResponse, ApiError> {
        input::no_query(request)?;
        let grant = input::grant(request)?;
        let result = self.client.grant(&grant).await?;
        Ok(ApiResponse::json(200, &json!({"userId": grant.user_id.to_string(), "balance": result.balance})))
    }
}

/// The first `X-Forwarded-For` hop (Supabase's gateway puts the client
/// there), as a canonical IP; `unknown` when absent or not an IP.
pub fn client_ip(request: &ApiRequest) -> String {
    request
        .header("x-forwarded-for")
        .and_then(|value| value.split(',').next())
        .and_then(|hop| hop.trim().parse::<std::net::IpAddr>().ok())
        .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
}

fn limit_request(key: &str, policy: LimitPolicy) -> Result<LimitRequest, ApiError> {
    Ok(LimitRequest {
        key: LimitKey::new(key)?,
        limit: policy.limit,
        window_seconds: policy.window_seconds,
        cost: LimitCost::new(1)?,
    })
}

/// `RateLimit-Policy`, `RateLimit` (one list member per policy) and, if
/// any policy denied, `Retry-After` (the longest wait).
pub fn limit_headers(limits: &Limits) -> Vec<(String, String)> {
    let mut policy = Vec::new();
    let mut remaining = Vec::new();
    let mut retry_after: Option<u32> = None;
    for (name, result) in limits {
        // Policy names here are fixed ASCII labels: encoding cannot fail.
        let Ok(headers) = rate_limit_headers(result, name) else { continue };
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

fn rate_limited(limits: &Limits) -> ApiError {
    let denied = limits.iter().find(|(_, result)| !result.success);
    let (policy, retry_after) = denied.map_or(("unknown", 1), |(name, result)| (*name, result.retry_after.max(1)));
    ApiError::from_code(
        ErrorCode::RateLimited,
        format!("too many paid requests ({policy} limit); retry after {retry_after} s"),
    )
    .with_detail("policy", policy)
    .with_detail("retryAfter", retry_after)
    .with_headers(limit_headers(limits))
}

/// A failed generation's error, saying whether the credits came back.
fn settled_failure(error: ApiError, charged: &ChargeResult, refunded_balance: Option<i64>) -> ApiError {
    let mut error = error.with_detail("jobId", charged.job_id.clone()).with_detail("refunded", refunded_balance.is_some());
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

#[cfg(test)]
mod tests;
