//! Sending RPC requests with the `postgrest` crate (reqwest natively, the
//! global `fetch` on wasm32), and `run`: charge, work, complete or refund.

use crate::error::CreditError;
use crate::request::{self, Config, RpcRequest};
use crate::response::{self, RpcResponse};
use crate::types::{
    BalanceResult, ChargeRequest, ChargeResult, ChargeWithLimitRequest, ChargeWithLimitResult,
    ChargeWithLimitsRequest, ChargeWithLimitsResult,
    CompleteRequest, CompleteResult, GrantRequest, JobId, LimitRequest, RateLimitResult, Reason,
    RefundRequest, RunOutput, UserId,
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
        f.debug_struct("CreditClient")
            .field("config", &self.config)
            .finish()
    }
}

impl CreditClient {
    pub fn new(config: Config) -> Self {
        // Config has checked the key is printable ASCII, so the postgrest
        // crate's header insertion (which panics on an invalid value) is safe.
        let postgrest = config.headers().into_iter().fold(
            Postgrest::new(config.rest_url()),
            |client, (name, value)| client.insert_header(name, value),
        );
        CreditClient { config, postgrest }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The postgrest crate's request for `rpc`, before it is sent. The same
    /// URL, headers and body as `rpc` says (a unit test holds them equal).
    pub fn prepare(&self, rpc: &RpcRequest) -> postgrest::Builder {
        self.postgrest.rpc(rpc.function, rpc.body.to_string())
    }

    /// Sends one request and reads the whole answer. Only a transport
    /// failure is an error here; statuses are for `response` to judge.
    pub async fn send(&self, rpc: &RpcRequest) -> Result<RpcResponse, CreditError> {
        let network = |error: &dyn std::fmt::Display| {
            // On wasm32 the text embeds the JS error and its stack: keep
            // only the first line.
            let text = error.to_string();
            let first_line = text
                .lines()
                .next()
                .unwrap_or_default()
                .replace("JsValue(", "");
            CreditError::network(format!("{} request failed: {first_line}", rpc.function))
                .with_detail("function", rpc.function)
        };
        let answer = self.prepare(rpc).execute().await.map_err(|e| network(&e))?;
        let status = answer.status().as_u16();
        let body = answer.text().await.map_err(|e| network(&e))?;
        Ok(RpcResponse::new(status, body))
    }

    pub async fn charge(&self, request: &ChargeRequest) -> Result<ChargeResult, CreditError> {
        response::charge(&self.send(&request::charge(&self.config, request)).await?)
    }

    pub async fn complete(&self, request: &CompleteRequest) -> Result<CompleteResult, CreditError> {
        response::complete(&self.send(&request::complete(&self.config, request)).await?)
    }

    pub async fn refund(&self, request: &RefundRequest) -> Result<BalanceResult, CreditError> {
        response::balance_result(
            "refund_credits",
            &self.send(&request::refund(&self.config, request)).await?,
        )
    }

    pub async fn grant(&self, request: &GrantRequest) -> Result<BalanceResult, CreditError> {
        response::balance_result(
            "grant_credits",
            &self.send(&request::grant(&self.config, request)).await?,
        )
    }

    pub async fn balance(&self, user_id: &UserId) -> Result<i64, CreditError> {
        response::balance(
            "get_credit_balance",
            &self.send(&request::balance(&self.config, user_id)).await?,
        )
    }

    pub async fn limit(&self, request: &LimitRequest) -> Result<RateLimitResult, CreditError> {
        response::limit(
            request,
            &self.send(&request::limit(&self.config, request)).await?,
        )
    }

    pub async fn charge_with_limit(
        &self,
        request: &ChargeWithLimitRequest,
    ) -> Result<ChargeWithLimitResult, CreditError> {
        let rpc = request::charge_with_limit(&self.config, request);
        response::charge_with_limit(&request.limit, &self.send(&rpc).await?)
    }

    /// A charge and several limits in one transaction, all or nothing.
    pub async fn charge_with_limits(
        &self,
        request: &ChargeWithLimitsRequest,
    ) -> Result<ChargeWithLimitsResult, CreditError> {
        let rpc = request::charge_with_limits(&self.config, request);
        response::charge_with_limits(&request.limits, &self.send(&rpc).await?)
    }

    /// Charges, runs `work` with the job, then completes the job with what
    /// `work` returned; if `work` fails, or completing fails, refunds the
    /// hold and returns the failure. If the refund itself cannot be made
    /// (the network is gone), the hold is released by the expiry sweeper
    /// after its `holdSeconds`: the credits are never lost.
    ///
    /// A replayed charge (same idempotency key) still calls `work`, with
    /// `job.replayed` set, so `work` can decide what a retry means.
    pub async fn run<T, E, W, Fut>(
        &self,
        request: &ChargeRequest,
        work: W,
    ) -> Result<RunOutcome<T>, RunError<E>>
    where
        W: FnOnce(ChargeResult) -> Fut,
        Fut: Future<Output = Result<(T, RunOutput), E>>,
    {
        let charge = self.charge(request).await.map_err(RunError::Credit)?;
        let job_id = JobId::parse("jobId", &charge.job_id).map_err(RunError::Credit)?;
        let (value, output) = match work(charge.clone()).await {
            Ok(done) => done,
            Err(error) => {
                self.refund_quietly(request.user_id, job_id, "run: the job's work failed")
                    .await;
                return Err(RunError::Work(error));
            }
        };
        let completing = CompleteRequest {
            job_id,
            result_url: output.result_url,
            actual_cost: output.actual_cost,
        };
        match self.complete(&completing).await {
            Ok(completion) => Ok(RunOutcome {
                value,
                charge,
                completion,
            }),
            Err(error) => {
                // If the completion did commit (the answer was lost), the
                // refund is refused as job_already_settled: nothing is undone.
                self.refund_quietly(request.user_id, job_id, "run: completing the job failed")
                    .await;
                Err(RunError::Credit(error))
            }
        }
    }

    async fn refund_quietly(&self, user_id: UserId, job_id: JobId, why: &'static str) {
        if let Ok(reason) = Reason::new(why) {
            // Best effort: the caller gets the original failure either way.
            let _ = self
                .refund(&RefundRequest {
                    user_id,
                    job_id,
                    reason,
                })
                .await;
        }
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

    /// What the postgrest crate would put on the wire equals what
    /// `request.rs` built, for every RPC.
    #[test]
    fn the_postgrest_request_matches_the_plain_request() {
        let config = Config::new("http://127.0.0.1:54321", KEY).expect("valid");
        let client = CreditClient::new(config.clone());
        let charge = ChargeRequest::from_json(&json!({
            "userId": USER, "operation": "image", "cost": 5, "idempotencyKey": "k", "metadata": {"a": [1]}
        }))
        .expect("valid");
        let refund = RefundRequest::from_json(&json!({
            "userId": USER, "jobId": USER, "reason": "because"
        }))
        .expect("valid");
        let limit = LimitRequest::from_json(&json!({"key": "k", "limit": 2, "windowSeconds": 1}))
            .expect("valid");
        let user = UserId::parse("userId", USER).expect("uuid");
        let rpcs = [
            request::charge(&config, &charge),
            request::refund(&config, &refund),
            request::limit(&config, &limit),
            request::balance(&config, &user),
        ];
        for rpc in rpcs {
            let built = client
                .prepare(&rpc)
                .build()
                .build()
                .expect("a valid request");
            assert_eq!(built.method().as_str(), rpc.method());
            assert_eq!(built.url().as_str(), rpc.url);
            for (name, value) in &rpc.headers {
                assert_eq!(
                    built.headers().get(*name).and_then(|v| v.to_str().ok()),
                    Some(value.as_str()),
                    "header {name}"
                );
            }
            assert_eq!(built.headers().len(), rpc.headers.len(), "no other headers");
            let body = built
                .body()
                .and_then(|body| body.as_bytes())
                .expect("a body");
            let sent: serde_json::Value = serde_json::from_slice(body).expect("JSON body");
            assert_eq!(sent, rpc.body);
        }
    }

    /// A port nothing listens on: the transport fails, and that is a
    /// retryable `network` error naming the function, not a panic.
    #[tokio::test]
    async fn an_unreachable_server_is_a_network_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let config = Config::new(&format!("http://127.0.0.1:{port}"), KEY).expect("valid");
        let client = CreditClient::new(config);
        let user = UserId::parse("userId", USER).expect("uuid");
        let error = client.balance(&user).await.expect_err("nothing listens");
        assert_eq!(error.code(), crate::ErrorCode::Network);
        assert!(error.retryable());
        assert_eq!(error.details()["function"], "get_credit_balance");
    }
}
