//! The one PostgREST transport: every [`Call`] (an RPC or a table read)
//! goes out through the `postgrest` crate (reqwest natively, the global
//! `fetch` on wasm32), and comes back as an [`Answer`] the `answers` module
//! decodes. Also [`CreditClient::run`] (charge, work, settle) and the two
//! settling steps `/generate` shares with it ([`CreditClient::complete_or_refund`],
//! [`CreditClient::refund_quietly`]).

use crate::answers::{self, Answer};
use crate::calls::{self, Filter, Read, Rpc};
use crate::config::Config;
use crate::error::CreditError;
use crate::{
    BalanceResult, BlockRequest, BlockResult, ChargeRequest, ChargeResult, ChargeWithLimitRequest,
    ChargeWithLimitResult, ChargeWithLimitsRequest, ChargeWithLimitsResult, CompleteRequest, CompleteResult,
    EventView, GrantRequest, JobId, JobView, LedgerView, LimitKeyRequest, LimitRequest, LimitUsage, LotView,
    PeekLimitRequest, PlanRequest, PlanView, RateLimitResult, Reason, RefundRequest, ResetResult, RevokeLotRequest,
    RunOutput, SubscribeRequest, SubscriptionView, TokenBucketRequest, UnblockResult, UsageRequest, UserId,
};
use postgrest::Postgrest;
use std::future::Future;

/// A creditgate client for one Supabase project. Cheap to clone.
#[derive(Clone)]
pub struct CreditClient {
    config: Config,
    postgrest: Postgrest,
}

impl std::fmt::Debug for CreditClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CreditClient").field("config", &self.config).finish()
    }
}

/// One PostgREST call, plain data: what [`CreditClient::builder`] sends.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    Rpc(Rpc),
    Read(Read),
}

impl Call {
    /// The function or table, for error details.
    pub fn name(&self) -> &'static str {
        match self {
            Call::Rpc(rpc) => rpc.function,
            Call::Read(read) => read.table,
        }
    }
}

impl CreditClient {
    pub fn new(config: Config) -> Self {
        // Config has checked the key is printable ASCII, so the postgrest
        // crate's header insertion (which panics on an invalid value) is safe.
        let postgrest = config
            .headers()
            .into_iter()
            .filter(|(name, _)| *name != "Content-Type")
            .fold(Postgrest::new(config.rest_url()), |client, (name, value)| client.insert_header(name, value));
        CreditClient { config, postgrest }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The postgrest crate's request for `call`, before it is sent.
    pub fn builder(&self, call: &Call) -> postgrest::Builder {
        match call {
            Call::Rpc(rpc) => self.postgrest.rpc(rpc.function, rpc.body.to_string()),
            Call::Read(read) => {
                let mut builder = self.postgrest.from(read.table).select(read.select);
                for (column, filter) in &read.filters {
                    builder = match filter {
                        Filter::Eq(value) => builder.eq(column, value),
                        Filter::Lt(value) => builder.lt(column, value),
                    };
                }
                if let Some(order) = read.order {
                    builder = builder.order(order);
                }
                match read.limit {
                    Some(limit) if limit > 0 => builder.limit(limit),
                    _ => builder,
                }
            }
        }
    }

    /// Sends one call and reads the whole answer. Only a transport failure
    /// is an error here; statuses are for `answers` to judge.
    pub async fn send(&self, call: &Call) -> Result<Answer, CreditError> {
        let network = |error: &dyn std::fmt::Display| {
            // On wasm32 the text embeds the JS error and its stack: keep
            // only the first line.
            let text = error.to_string();
            let first_line = text.lines().next().unwrap_or_default().replace("JsValue(", "");
            let detail = if matches!(call, Call::Rpc(_)) { "function" } else { "table" };
            CreditError::network(format!("{} request failed: {first_line}", call.name())).with_detail(detail, call.name())
        };
        // On wasm32 the crate's request goes out through one `fetch` call
        // (src/fetch.rs); natively through reqwest, as the crate sends it.
        #[cfg(target_arch = "wasm32")]
        {
            let request = self.builder(call).build().build().map_err(|e| network(&e))?;
            let (status, body) = crate::fetch::send(request).await.map_err(|e| network(&e))?;
            Ok(Answer::new(status, body))
        }
        #[cfg(not(target_arch = "wasm32"))]
        {
            let answer = self.builder(call).execute().await.map_err(|e| network(&e))?;
            let status = answer.status().as_u16();
            let body = answer.text().await.map_err(|e| network(&e))?;
            Ok(Answer::new(status, body))
        }
    }

    async fn rpc(&self, rpc: Rpc) -> Result<Answer, CreditError> {
        self.send(&Call::Rpc(rpc)).await
    }

    pub async fn charge(&self, request: &ChargeRequest) -> Result<ChargeResult, CreditError> {
        answers::charge(&self.rpc(calls::charge(request)).await?)
    }

    pub async fn complete(&self, request: &CompleteRequest) -> Result<CompleteResult, CreditError> {
        answers::complete(&self.rpc(calls::complete(request)).await?)
    }

    pub async fn refund(&self, request: &RefundRequest) -> Result<BalanceResult, CreditError> {
        answers::balance_result("refund_credits", &self.rpc(calls::refund(request)).await?)
    }

    pub async fn grant(&self, request: &GrantRequest) -> Result<BalanceResult, CreditError> {
        answers::balance_result("grant_credits", &self.rpc(calls::grant(request)).await?)
    }

    pub async fn balance(&self, user_id: &UserId) -> Result<i64, CreditError> {
        answers::balance("get_credit_balance", &self.rpc(calls::balance(user_id)).await?)
    }

    pub async fn limit(&self, request: &LimitRequest) -> Result<RateLimitResult, CreditError> {
        answers::limit(request, &self.rpc(calls::limit(request)).await?)
    }

    /// A token bucket: `capacity` at once, then `refill_per_second`. Over it
    /// is a value (`success: false`), not an error.
    pub async fn token_bucket(&self, request: &TokenBucketRequest) -> Result<RateLimitResult, CreditError> {
        answers::token_bucket(&self.rpc(calls::token_bucket(request)).await?)
    }

    /// What [`CreditClient::limit`] would answer for a request of weight 1,
    /// spending nothing.
    pub async fn peek_limit(&self, request: &PeekLimitRequest) -> Result<RateLimitResult, CreditError> {
        answers::peek_limit(request, &self.rpc(calls::peek_limit(request)).await?)
    }

    /// Clears every window and token bucket of a key.
    pub async fn reset_limit(&self, request: &LimitKeyRequest) -> Result<ResetResult, CreditError> {
        answers::reset_limit(request, &self.rpc(calls::reset_limit(request)).await?)
    }

    /// The windows in use of keys starting with a prefix, for dashboards.
    pub async fn limit_usage(&self, request: &UsageRequest) -> Result<Vec<LimitUsage>, CreditError> {
        answers::limit_usage(&self.rpc(calls::limit_usage(request)).await?)
    }

    /// Blocks a key: every limit naming it is 403 `blocked` until `until`.
    pub async fn block_limit_key(&self, request: &BlockRequest) -> Result<BlockResult, CreditError> {
        answers::block_limit_key(&self.rpc(calls::block_limit_key(request)).await?)
    }

    /// Lifts a block.
    pub async fn unblock_limit_key(&self, request: &LimitKeyRequest) -> Result<UnblockResult, CreditError> {
        answers::unblock_limit_key(request, &self.rpc(calls::unblock_limit_key(request)).await?)
    }

    /// One limit and the charge in one transaction: the one-limit case of
    /// [`CreditClient::charge_with_limits`], in the flat shape JS gets.
    pub async fn charge_with_limit(&self, request: &ChargeWithLimitRequest) -> Result<ChargeWithLimitResult, CreditError> {
        if request.units {
            let entries = vec![crate::LimitEntry::Rate { limit: request.limit.clone(), units: true, plan: None }];
            let result =
                self.charge_with_entries(&crate::ChargeWithEntriesRequest { charge: request.charge.clone(), entries }).await?;
            let rate_limit = result
                .limits
                .into_iter()
                .next()
                .ok_or_else(|| CreditError::new(crate::ErrorCode::Upstream, "charge_credits_with_limits answered no limit"))?
                .result;
            let charge = result.charge;
            return Ok(ChargeWithLimitResult {
                rate_limit,
                job_id: charge.as_ref().map(|charge| charge.job_id),
                balance: charge.as_ref().map(|charge| charge.balance),
                replayed: charge.as_ref().map(|charge| charge.replayed),
                expires_at: charge.and_then(|charge| charge.expires_at),
            });
        }
        let both = ChargeWithLimitsRequest { charge: request.charge.clone(), limits: vec![request.limit.clone()] };
        answers::charge_with_limit(&request.limit, &self.rpc(calls::charge_with_limits(&both)).await?)
    }

    /// A charge and several limits in one transaction, all or nothing.
    pub async fn charge_with_limits(&self, request: &ChargeWithLimitsRequest) -> Result<ChargeWithLimitsResult, CreditError> {
        answers::charge_with_limits(&request.limits, &self.rpc(calls::charge_with_limits(request)).await?)
    }

    /// A charge under [`crate::LimitEntry`]s (concurrency, unit and plan
    /// limits beside rate limits) in one transaction, all or nothing.
    pub async fn charge_with_entries(
        &self,
        request: &crate::ChargeWithEntriesRequest,
    ) -> Result<crate::ChargeWithEntriesResult, CreditError> {
        answers::charge_with_entries(&self.rpc(calls::charge_with_entries(request)).await?)
    }

    /// A user's lots: spendable ones first, in spending order.
    pub async fn lots(&self, user_id: &UserId) -> Result<Vec<LotView>, CreditError> {
        answers::rows("get_credit_lots", &self.rpc(calls::lots(user_id)).await?)
    }

    /// Takes back what remains of a lot; the new balance.
    pub async fn revoke_lot(&self, request: &RevokeLotRequest) -> Result<BalanceResult, CreditError> {
        answers::balance_result("revoke_credit_lot", &self.rpc(calls::revoke_lot(request)).await?)
    }

    /// A user's balance events after `after` (an event id; 0 for all), oldest first.
    pub async fn events(&self, user_id: &UserId, after: i64, limit: u32) -> Result<Vec<EventView>, CreditError> {
        answers::rows("get_credit_events", &self.rpc(calls::events(user_id, after, limit)).await?)
    }

    pub async fn upsert_plan(&self, request: &PlanRequest) -> Result<PlanView, CreditError> {
        answers::one_row("upsert_credit_plan", &self.rpc(calls::upsert_plan(request)).await?)
    }

    pub async fn subscribe_plan(&self, request: &SubscribeRequest) -> Result<SubscriptionView, CreditError> {
        answers::one_row("subscribe_credit_plan", &self.rpc(calls::subscribe_plan(request)).await?)
    }

    /// Ends a user's subscription; false when there was none.
    pub async fn cancel_plan(&self, user_id: &UserId) -> Result<bool, CreditError> {
        answers::scalar("cancel_credit_plan", &self.rpc(calls::cancel_plan(user_id)).await?)
    }

    /// One job: the owner's own (`owner`), or any (the service role).
    pub async fn job(&self, job_id: JobId, owner: Option<UserId>) -> Result<Option<JobView>, CreditError> {
        let read = calls::job(job_id, owner);
        let answer = self.send(&Call::Read(read)).await?;
        Ok(answers::rows::<JobView>("generation_jobs", &answer)?.into_iter().next())
    }

    /// A user's latest jobs, newest first.
    pub async fn jobs(&self, owner: UserId, limit: u32) -> Result<Vec<JobView>, CreditError> {
        let answer = self.send(&Call::Read(calls::jobs(owner, limit))).await?;
        answers::rows("generation_jobs", &answer)
    }

    /// A page of a user's ledger, newest first, and the id to pass as
    /// `before` for the next page (`None`: no more).
    pub async fn ledger(&self, owner: UserId, limit: u32, before: Option<i64>) -> Result<(Vec<LedgerView>, Option<i64>), CreditError> {
        let answer = self.send(&Call::Read(calls::ledger(owner, limit, before))).await?;
        let mut entries: Vec<LedgerView> = answers::rows("credit_ledger", &answer)?;
        let more = entries.len() > limit as usize;
        entries.truncate(limit as usize);
        let next = if more { entries.last().map(|entry| entry.id) } else { None };
        Ok((entries, next))
    }

    /// Charges, runs `work` with the job, then settles the job with what
    /// `work` returned (see [`CreditClient::settle`]). If the refund itself
    /// cannot be made (the network is gone), the hold is expired by the
    /// expiry sweeper after its `holdSeconds`: the credits are never lost.
    ///
    /// A replayed charge (same idempotency key) still calls `work`, with
    /// `job.replayed` set, so `work` can decide what a retry means.
    pub async fn run<T, E, W, Fut>(&self, request: &ChargeRequest, work: W) -> Result<RunOutcome<T>, RunError<E>>
    where
        W: FnOnce(ChargeResult) -> Fut,
        Fut: Future<Output = Result<(T, RunOutput), E>>,
    {
        let charge = self.charge(request).await.map_err(RunError::Credit)?;
        match work(charge.clone()).await {
            Ok((value, output)) => match self.complete_or_refund(request.user_id, charge.job_id, output, "run").await {
                Ok(completion) => Ok(RunOutcome { value, charge, completion }),
                Err((error, _refunded)) => Err(RunError::Credit(error)),
            },
            Err(error) => {
                self.refund_quietly(request.user_id, charge.job_id, "run: the job's work failed").await;
                Err(RunError::Work(error))
            }
        }
    }

    /// Settles a job whose work succeeded: completes it with the work's
    /// `output`; if completing fails, refunds it (best effort) and returns
    /// the error with the balance after the refund (`None`: not refunded,
    /// the hold expires). If a completion did commit but its answer was
    /// lost, the refund is refused as `job_already_settled` and nothing is
    /// undone. `by` names the caller in the refund's reason.
    pub async fn complete_or_refund(
        &self,
        user_id: UserId,
        job_id: JobId,
        output: RunOutput,
        by: &str,
    ) -> Result<CompleteResult, (CreditError, Option<i64>)> {
        let completing =
            CompleteRequest { job_id, result_url: output.result_url, actual_cost: output.actual_cost, actual_units: None };
        match self.complete(&completing).await {
            Ok(completion) => Ok(completion),
            Err(error) => Err((error, self.refund_quietly(user_id, job_id, &format!("{by}: completing the job failed")).await)),
        }
    }

    /// Settles a job whose work failed: refunds it, best effort (the caller
    /// reports the original failure either way). The new balance, or
    /// `None` if that could not be done (the hold then expires).
    pub async fn refund_quietly(&self, user_id: UserId, job_id: JobId, why: &str) -> Option<i64> {
        let reason = Reason::new(why).ok()?;
        self.refund(&RefundRequest { user_id, job_id, reason }).await.ok().map(|result| result.balance)
    }
}

/// What `run` returns when the job completed.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome<T> {
    /// What `work` returned.
    pub value: T,
    pub charge: ChargeResult,
    pub completion: CompleteResult,
}

/// Why `run` failed: a credit operation, or the work itself.
#[derive(Debug, Clone, PartialEq)]
pub enum RunError<E> {
    Credit(CreditError),
    Work(E),
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use serde_json::json;

    const KEY: &str = "eyJhbGciOiJIUzI1NiJ9.e30.sig";
    const USER: &str = "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e";
    const JOB: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

    fn built(client: &CreditClient, call: &Call) -> reqwest::Request {
        client.builder(call).build().build().expect("a valid request")
    }

    fn header<'r>(request: &'r reqwest::Request, name: &str) -> Option<&'r str> {
        request.headers().get(name).and_then(|value| value.to_str().ok())
    }

    fn client(url: &str, key: &str) -> CreditClient {
        CreditClient::new(Config::new(url, key).expect("valid"))
    }

    #[test]
    fn every_rpc_is_a_post_with_apikey_bearer_and_its_arguments() {
        let client = client("http://127.0.0.1:54321", KEY);
        let user = UserId::parse("userId", USER).expect("uuid");
        let rpc = calls::balance(&user);
        let request = built(&client, &Call::Rpc(rpc.clone()));
        assert_eq!(request.method().as_str(), "POST");
        assert_eq!(request.url().as_str(), "http://127.0.0.1:54321/rest/v1/rpc/get_credit_balance");
        assert_eq!(header(&request, "apikey"), Some(KEY));
        assert_eq!(header(&request, "Authorization"), Some(format!("Bearer {KEY}").as_str()));
        assert_eq!(header(&request, "Content-Type"), Some("application/json"));
        assert_eq!(header(&request, "Accept"), Some("application/json"));
        let body = request.body().and_then(|body| body.as_bytes()).expect("a body");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(body).expect("JSON"), json!({"p_user_id": USER}));
        assert_eq!(rpc.body, json!({"p_user_id": USER}));
        // A base URL with /rest/v1 builds the same request.
        let with = built(&self::client("http://127.0.0.1:54321/rest/v1/", KEY), &Call::Rpc(rpc));
        assert_eq!(with.url(), request.url());
    }

    #[test]
    fn a_new_style_secret_key_goes_in_apikey_only() {
        let client = client("https://abc.supabase.co", "sb_secret_abc123");
        let user = UserId::parse("userId", USER).expect("uuid");
        let request = built(&client, &Call::Rpc(calls::balance(&user)));
        assert_eq!(header(&request, "apikey"), Some("sb_secret_abc123"));
        assert_eq!(header(&request, "Authorization"), None);
        assert_eq!(header(&request, "Content-Type"), Some("application/json"));
    }

    #[test]
    fn a_read_is_a_get_filtered_ordered_and_ranged() {
        let client = client("http://127.0.0.1:54321", KEY);
        let user = UserId::parse("userId", USER).expect("uuid");
        let job = JobId::parse("jobId", JOB).expect("uuid");
        let request = built(&client, &Call::Read(calls::job(job, Some(user))));
        assert_eq!(request.method().as_str(), "GET");
        let url = request.url().as_str();
        assert!(url.starts_with("http://127.0.0.1:54321/rest/v1/generation_jobs?select="), "{url}");
        assert!(url.ends_with(&format!("&id=eq.{JOB}&user_id=eq.{USER}")), "{url}");
        assert_eq!(header(&request, "apikey"), Some(KEY));
        assert_eq!(header(&request, "Authorization"), Some(format!("Bearer {KEY}").as_str()));
        let page = built(&client, &Call::Read(calls::ledger(user, 5, Some(42))));
        assert!(page.url().as_str().ends_with(&format!("user_id=eq.{USER}&id=lt.42&order=id.desc")), "{}", page.url());
        assert_eq!(header(&page, "Range"), Some("0-5"), "one row more than asked");
    }

    /// A port nothing listens on: the transport fails, and that is a
    /// retryable `network` error naming the function, not a panic.
    #[tokio::test]
    async fn an_unreachable_server_is_a_network_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let client = client(&format!("http://127.0.0.1:{port}"), KEY);
        let user = UserId::parse("userId", USER).expect("uuid");
        let error = client.balance(&user).await.expect_err("nothing listens");
        assert_eq!(error.code(), crate::ErrorCode::Network);
        assert!(error.retryable());
        assert_eq!(error.details()["function"], "get_credit_balance");
        let read = client.jobs(user, 5).await.expect_err("nothing listens");
        assert_eq!((read.code(), read.status()), (crate::ErrorCode::Network, 503));
        assert_eq!(read.details()["table"], "generation_jobs");
    }
}
