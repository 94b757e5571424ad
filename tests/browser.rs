//! The client compiled to wasm32, in real headless Chromium, against a
//! running stack: requests go through the browser's `fetch`, cross-origin
//! (the test page and the API are on different ports), so CORS is exercised.
//!
//! Run by `tests/wasm/run.sh`, which creates the test users and passes, at
//! compile time: CREDITGATE_URL, CREDITGATE_SERVICE_ROLE_KEY and
//! CREDITGATE_TEST_USER_IDS (comma-separated auth.users ids).
#![cfg(target_arch = "wasm32")]

use creditgate::{
    rate_limit_headers, ChargeRequest, CompleteRequest, Config, CreditClient, ErrorCode,
    GrantRequest, LimitRequest, RefundRequest, RunError, RunOutput, UserId,
};
use serde_json::json;
use wasm_bindgen_test::*;

wasm_bindgen_test_configure!(run_in_browser);

const URL: &str = match option_env!("CREDITGATE_URL") {
    Some(url) => url,
    None => "http://127.0.0.1:54321",
};
const SERVICE_ROLE_KEY: &str = match option_env!("CREDITGATE_SERVICE_ROLE_KEY") {
    Some(key) => key,
    None => "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJzdXBhYmFzZS1kZW1vIiwicm9sZSI6InNlcnZpY2Vfcm9sZSIsImV4cCI6MTk4MzgxMjk5Nn0.EGIM96RAZx35lJzdJsyH-qQwv8Hdp7fsn3W0YpN81IU",
};
const USER_IDS: &str = match option_env!("CREDITGATE_TEST_USER_IDS") {
    Some(ids) => ids,
    None => "",
};

fn client() -> CreditClient {
    CreditClient::new(Config::new(URL, SERVICE_ROLE_KEY).expect("a valid test configuration"))
}

/// The n-th test user (each test has its own, so their balances are exact).
fn user(n: usize) -> UserId {
    USER_IDS
        .split(',')
        .nth(n)
        .and_then(|id| UserId::parse("userId", id).ok())
        .expect("no test user: run the browser tests with tests/wasm/run.sh, which creates them")
}

/// Grants `credits` to user `n` and returns the id; the balance is then
/// `start + credits` for whatever `start` the user had.
async fn funded(n: usize, credits: i64) -> (CreditClient, UserId, i64) {
    let client = client();
    let user_id = user(n);
    let before = client.balance(&user_id).await.expect("balance");
    let grant = GrantRequest::from_json(
        &json!({"userId": user_id.to_string(), "amount": credits, "reason": "browser test"}),
    )
    .expect("valid grant");
    let after = client.grant(&grant).await.expect("grant").balance;
    assert_eq!(after, before + credits);
    (client, user_id, after)
}

fn charge(user_id: &UserId, cost: i64, key: Option<&str>) -> ChargeRequest {
    let mut value =
        json!({"userId": user_id.to_string(), "operation": "image_generation", "cost": cost});
    if let Some(key) = key {
        value["idempotencyKey"] = json!(key);
    }
    ChargeRequest::from_json(&value).expect("valid charge")
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

#[wasm_bindgen_test]
async fn a_charge_then_a_completion_with_a_lower_actual_cost() {
    let (client, user_id, start) = funded(0, 10).await;
    let held = client
        .charge(&charge(&user_id, 4, None))
        .await
        .expect("charge");
    assert_eq!(held.balance, start - 4);
    assert!(!held.replayed);
    let complete =
        CompleteRequest::from_json(&json!({"jobId": held.job_id, "actualCost": 1})).expect("valid");
    let done = client.complete(&complete).await.expect("complete");
    assert_eq!(done.status, "completed");
    assert_eq!(done.refunded, 3);
    assert_eq!(client.balance(&user_id).await.expect("balance"), start - 1);
}

#[wasm_bindgen_test]
async fn an_idempotent_retry_replays_without_charging() {
    let (client, user_id, start) = funded(1, 10).await;
    let key = unique("browser");
    let first = client
        .charge(&charge(&user_id, 3, Some(&key)))
        .await
        .expect("charge");
    let again = client
        .charge(&charge(&user_id, 3, Some(&key)))
        .await
        .expect("replay");
    assert_eq!(again.job_id, first.job_id);
    assert!(again.replayed);
    assert_eq!(client.balance(&user_id).await.expect("balance"), start - 3);
    let reused = client
        .charge(&charge(&user_id, 2, Some(&key)))
        .await
        .expect_err("same key, other cost");
    assert_eq!(reused.code(), ErrorCode::IdempotencyKeyReused);
}

#[wasm_bindgen_test]
async fn insufficient_credits_carries_balance_and_needed() {
    let (client, user_id, start) = funded(2, 1).await;
    let needed = start + 1;
    let error = client
        .charge(&charge(&user_id, needed, None))
        .await
        .expect_err("too expensive");
    assert_eq!(error.code(), ErrorCode::InsufficientCredits);
    assert_eq!(error.status(), 402);
    assert_eq!(error.details()["balance"], start);
    assert_eq!(error.details()["needed"], needed);
    assert_eq!(client.balance(&user_id).await.expect("balance"), start);
}

#[wasm_bindgen_test]
async fn a_second_refund_is_refused_and_changes_nothing() {
    let (client, user_id, start) = funded(3, 10).await;
    let held = client
        .charge(&charge(&user_id, 6, None))
        .await
        .expect("charge");
    let refund = RefundRequest::from_json(
        &json!({"userId": user_id.to_string(), "jobId": held.job_id, "reason": "failed"}),
    )
    .expect("valid");
    assert_eq!(client.refund(&refund).await.expect("refund").balance, start);
    let again = client.refund(&refund).await.expect_err("double refund");
    assert_eq!(again.code(), ErrorCode::JobAlreadySettled);
    assert_eq!(again.status(), 409);
    assert_eq!(client.balance(&user_id).await.expect("balance"), start);
}

#[wasm_bindgen_test]
async fn a_rate_limit_denial_and_its_headers() {
    let client = client();
    let limit = LimitRequest::from_json(
        &json!({"key": unique("browser"), "limit": 1, "windowSeconds": 30}),
    )
    .expect("valid");
    let allowed = client.limit(&limit).await.expect("first");
    let denied = client.limit(&limit).await.expect("second");
    assert!(allowed.success);
    assert!(!denied.success);
    assert!(denied.retry_after >= 1);
    let headers = rate_limit_headers(&denied, "browser").expect("headers");
    assert_eq!(
        headers[0],
        ("RateLimit-Policy", "\"browser\";q=1;w=30".to_owned())
    );
    assert_eq!(
        headers[1],
        ("RateLimit", format!("\"browser\";r=0;t={}", denied.reset))
    );
    assert_eq!(headers[2], ("Retry-After", denied.retry_after.to_string()));
}

#[wasm_bindgen_test]
async fn run_refunds_when_the_work_fails() {
    let (client, user_id, start) = funded(4, 10).await;
    let outcome = client
        .run(
            &charge(&user_id, 5, Some(&unique("run"))),
            |job| async move {
                assert_eq!(job.balance, start - 5);
                Err::<((), RunOutput), &str>("the generator is down")
            },
        )
        .await;
    assert_eq!(outcome, Err(RunError::Work("the generator is down")));
    assert_eq!(client.balance(&user_id).await.expect("balance"), start);

    let done = client
        .run(
            &charge(&user_id, 5, Some(&unique("run"))),
            |_job| async move { Ok::<_, ()>(("image", RunOutput::default())) },
        )
        .await
        .expect("completed");
    assert_eq!(done.value, "image");
    assert_eq!(done.completion.status, "completed");
    assert_eq!(client.balance(&user_id).await.expect("balance"), start - 5);
}

#[wasm_bindgen_test]
async fn an_unreachable_api_is_a_retryable_network_error() {
    let offline =
        CreditClient::new(Config::new("http://127.0.0.1:9", SERVICE_ROLE_KEY).expect("valid"));
    let error = offline
        .balance(&user(0))
        .await
        .expect_err("nothing listens on port 9");
    assert_eq!(error.code(), ErrorCode::Network);
    assert!(error.retryable());
}
