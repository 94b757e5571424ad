//! What the API reads and calls besides the credit RPCs: the user's jobs
//! and ledger (PostgREST table reads with the service-role key, always
//! filtered by the caller's id), and the generator `/generate` pays for.
//!
//! As in `request.rs`, each call is built as plain data first ([`HttpCall`])
//! and sent separately, so what goes on the wire is unit-tested with no
//! network. Sending uses reqwest: hyper natively, the global `fetch` on
//! wasm32 (aborted when the future is dropped, which is how a timed-out
//! generation is cancelled there).

use super::input::LedgerQuery;
use super::settings::GeneratorSettings;
use crate::error::{CreditError, ErrorCode};
use crate::request::Config;
use crate::types::{JobId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The columns a job view shows.
const JOB_COLUMNS: &str = "id,user_id,operation_type,status,cost,result_url,error_message,created_at,completed_at,expires_at,captured_credits,refunded_credits";
/// The columns a ledger view shows.
const LEDGER_COLUMNS: &str = "id,delta,balance_after,operation_type,entry_type,description,job_id,created_at";
/// Answers longer than this are not read further: a page of 100 ledger rows
/// is about 40 KiB, a generator's answer a URL.
pub const ANSWER_BYTES_MAX: usize = 1024 * 1024;

/// One HTTP call, ready to send.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpCall {
    pub method: &'static str,
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Option<String>,
}

/// Its answer: status and body text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: String,
}

/// Why a call got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendFailure {
    /// No answer within the timeout.
    Timeout,
    /// The connection failed, or the answer could not be read.
    Network(String),
}

fn table_call(config: &Config, table: &str, query: &[(&str, String)]) -> HttpCall {
    let query: String = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
    HttpCall {
        method: "GET",
        url: format!("{}/{table}?{query}", config.rest_url()),
        headers: config.headers().into_iter().filter(|(name, _)| *name != "Content-Type").collect(),
        body: None,
    }
}

/// One job: the caller's own (`owner`), or any for the service role.
pub fn job_call(config: &Config, job_id: JobId, owner: Option<UserId>) -> HttpCall {
    let mut query = vec![("select", JOB_COLUMNS.to_owned()), ("id", format!("eq.{job_id}"))];
    if let Some(owner) = owner {
        query.push(("user_id", format!("eq.{owner}")));
    }
    table_call(config, "generation_jobs", &query)
}

/// A user's latest jobs, newest first.
pub fn jobs_call(config: &Config, owner: UserId, limit: u32) -> HttpCall {
    table_call(
        config,
        "generation_jobs",
        &[
            ("select", JOB_COLUMNS.to_owned()),
            ("user_id", format!("eq.{owner}")),
            ("order", "created_at.desc,id.desc".to_owned()),
            ("limit", limit.to_string()),
        ],
    )
}

/// A page of a user's ledger, newest first: one row more than asked, to
/// know whether there is a next page.
pub fn ledger_call(config: &Config, owner: UserId, query: LedgerQuery) -> HttpCall {
    let mut params = vec![("select", LEDGER_COLUMNS.to_owned()), ("user_id", format!("eq.{owner}"))];
    if let Some(before) = query.before {
        params.push(("id", format!("lt.{before}")));
    }
    params.push(("order", "id.desc".to_owned()));
    params.push(("limit", (query.limit + 1).to_string()));
    table_call(config, "credit_ledger", &params)
}

/// The generator call: `POST {url}` with `{prompt, operation, jobId}`.
pub fn generator_call(generator: &GeneratorSettings, prompt: &str, operation: &str, job_id: &str) -> HttpCall {
    let mut headers = vec![("Content-Type", "application/json".to_owned()), ("Accept", "application/json".to_owned())];
    if let Some(key) = &generator.key {
        headers.push(("Authorization", format!("Bearer {key}")));
    }
    HttpCall {
        method: "POST",
        url: generator.url.clone(),
        headers,
        body: Some(json!({"prompt": prompt, "operation": operation, "jobId": job_id}).to_string()),
    }
}

/// A job as the API shows it.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(rename_all(serialize = "camelCase"))]
pub struct JobView {
    #[serde(rename(serialize = "jobId"))]
    pub id: String,
    pub user_id: String,
    #[serde(rename(serialize = "operation"))]
    pub operation_type: String,
    /// `pending`, `processing`, `completed`, `failed` (refunded) or `expired`.
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

/// A ledger entry as the API shows it.
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

/// Rows from a table read, or the PostgREST error as a [`CreditError`].
pub fn rows<T: for<'de> Deserialize<'de>>(table: &str, answer: &HttpAnswer) -> Result<Vec<T>, CreditError> {
    if !(200..300).contains(&answer.status) {
        return Err(CreditError::from_postgrest(answer.status, &answer.body));
    }
    serde_json::from_str(&answer.body).map_err(|error| {
        CreditError::upstream(format!("unexpected answer reading {table}: {error}"))
            .with_detail("table", table)
            .with_retryable(false)
    })
}

/// What the generator said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Generated {
    /// 2xx with `{"url": "..."}`.
    Url(String),
    /// Anything else: why, for the refund's reason and the response.
    Failed { cause: &'static str, status: Option<u16> },
}

/// Reads the generator's answer.
pub fn generated(answer: Result<HttpAnswer, SendFailure>) -> Generated {
    let answer = match answer {
        Ok(answer) => answer,
        Err(SendFailure::Timeout) => return Generated::Failed { cause: "generator_timeout", status: None },
        Err(SendFailure::Network(_)) => return Generated::Failed { cause: "generator_unreachable", status: None },
    };
    if !(200..300).contains(&answer.status) {
        return Generated::Failed { cause: "generator_error", status: Some(answer.status) };
    }
    let url = serde_json::from_str::<Value>(&answer.body)
        .ok()
        .and_then(|value| value.get("url").and_then(Value::as_str).map(str::to_owned))
        .filter(|url| crate::types::ResultUrl::new(url.as_str()).is_ok());
    match url {
        Some(url) => Generated::Url(url),
        None => Generated::Failed { cause: "generator_bad_answer", status: Some(answer.status) },
    }
}

/// Sends calls. One per API instance; cheap to share.
#[derive(Clone, Debug)]
pub struct Sender {
    client: reqwest::Client,
}

impl Sender {
    pub fn new() -> Result<Sender, CreditError> {
        reqwest::Client::builder()
            .build()
            .map(|client| Sender { client })
            .map_err(|error| CreditError::new(ErrorCode::Network, format!("could not build an HTTP client: {error}")))
    }

    /// Sends `call`; with `timeout_ms`, gives up (and cancels it) after that long.
    pub async fn send(&self, call: &HttpCall, timeout_ms: Option<u32>) -> Result<HttpAnswer, SendFailure> {
        let method = if call.method == "POST" { reqwest::Method::POST } else { reqwest::Method::GET };
        let mut builder = self.client.request(method, &call.url);
        for (name, value) in &call.headers {
            builder = builder.header(*name, value);
        }
        if let Some(body) = &call.body {
            builder = builder.body(body.clone());
        }
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(ms) = timeout_ms {
            builder = builder.timeout(std::time::Duration::from_millis(u64::from(ms)));
        }
        let exchange = async move {
            let response = builder.send().await.map_err(failure)?;
            let status = response.status().as_u16();
            let body = response.text().await.map_err(failure)?;
            if body.len() > ANSWER_BYTES_MAX {
                return Err(SendFailure::Network(format!("the answer is larger than {ANSWER_BYTES_MAX} bytes")));
            }
            Ok(HttpAnswer { status, body })
        };
        #[cfg(target_arch = "wasm32")]
        if let Some(ms) = timeout_ms {
            return match super::wasm::with_timeout(exchange, ms).await {
                Some(result) => result,
                None => Err(SendFailure::Timeout),
            };
        }
        #[cfg(not(target_arch = "wasm32"))]
        let _ = timeout_ms;
        exchange.await
    }

    /// Sends a database call: no answer is the `network` error (503).
    pub async fn read(&self, call: &HttpCall) -> Result<HttpAnswer, CreditError> {
        self.send(call, None).await.map_err(|failure| match failure {
            SendFailure::Timeout => CreditError::network("the database did not answer in time"),
            SendFailure::Network(why) => CreditError::network(format!("the database could not be reached: {why}")),
        })
    }
}

fn failure(error: reqwest::Error) -> SendFailure {
    #[cfg(not(target_arch = "wasm32"))]
    if error.is_timeout() {
        return SendFailure::Timeout;
    }
    SendFailure::Network(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e";
    const JOB: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

    fn config() -> Config {
        Config::new("http://127.0.0.1:54321", "service-key").expect("valid")
    }

    fn user() -> UserId {
        UserId::parse("userId", USER).expect("uuid")
    }

    fn job() -> JobId {
        JobId::parse("jobId", JOB).expect("uuid")
    }

    #[test]
    fn a_users_job_read_is_filtered_by_the_user() {
        let call = job_call(&config(), job(), Some(user()));
        assert_eq!(call.method, "GET");
        assert!(call.url.starts_with("http://127.0.0.1:54321/rest/v1/generation_jobs?select="), "{}", call.url);
        assert!(call.url.ends_with(&format!("&id=eq.{JOB}&user_id=eq.{USER}")), "{}", call.url);
        assert!(call.headers.contains(&("apikey", "service-key".to_owned())));
        assert!(call.headers.contains(&("Authorization", "Bearer service-key".to_owned())));
        let any = job_call(&config(), job(), None);
        assert!(!any.url.contains("user_id="), "the service role reads any job");
    }

    #[test]
    fn ledger_pages_are_keyset_by_id() {
        let first = ledger_call(&config(), user(), LedgerQuery { limit: 5, before: None });
        assert!(first.url.ends_with(&format!("user_id=eq.{USER}&order=id.desc&limit=6")), "{}", first.url);
        let next = ledger_call(&config(), user(), LedgerQuery { limit: 5, before: Some(42) });
        assert!(next.url.ends_with(&format!("user_id=eq.{USER}&id=lt.42&order=id.desc&limit=6")), "{}", next.url);
        let jobs = jobs_call(&config(), user(), 3);
        assert!(jobs.url.ends_with("&order=created_at.desc%2Cid.desc&limit=3"), "{}", jobs.url);
    }

    #[test]
    fn the_generator_gets_prompt_operation_and_job_and_its_key() {
        let generator = GeneratorSettings { url: "http://gen/x".into(), key: Some("gk".into()), timeout_ms: 1000 };
        let call = generator_call(&generator, "a \"cat\"", "image", JOB);
        assert_eq!((call.method, call.url.as_str()), ("POST", "http://gen/x"));
        assert!(call.headers.contains(&("Authorization", "Bearer gk".to_owned())));
        let body: Value = serde_json::from_str(call.body.as_deref().unwrap_or_default()).expect("json");
        assert_eq!(body, json!({"prompt": "a \"cat\"", "operation": "image", "jobId": JOB}));
        let keyless = GeneratorSettings { key: None, ..generator };
        assert!(!generator_call(&keyless, "p", "image", JOB).headers.iter().any(|(name, _)| *name == "Authorization"));
    }

    #[test]
    fn generator_answers_are_judged() {
        let ok = |status: u16, body: &str| generated(Ok(HttpAnswer { status, body: body.into() }));
        assert_eq!(ok(200, r#"{"url": "https://img/1.png"}"#), Generated::Url("https://img/1.png".into()));
        assert_eq!(ok(500, r#"{"url": "https://img/1.png"}"#), Generated::Failed { cause: "generator_error", status: Some(500) });
        assert_eq!(ok(200, "{}"), Generated::Failed { cause: "generator_bad_answer", status: Some(200) });
        assert_eq!(ok(200, r#"{"url": 5}"#), Generated::Failed { cause: "generator_bad_answer", status: Some(200) });
        assert_eq!(ok(200, "<html>"), Generated::Failed { cause: "generator_bad_answer", status: Some(200) });
        let long = format!(r#"{{"url": "{}"}}"#, "u".repeat(3000));
        assert_eq!(ok(200, &long), Generated::Failed { cause: "generator_bad_answer", status: Some(200) });
        assert_eq!(generated(Err(SendFailure::Timeout)), Generated::Failed { cause: "generator_timeout", status: None });
        assert_eq!(
            generated(Err(SendFailure::Network("refused".into()))),
            Generated::Failed { cause: "generator_unreachable", status: None }
        );
    }

    #[test]
    fn rows_decode_and_errors_map() {
        let body = json!([{"id": 7, "delta": -10, "balance_after": 90, "operation_type": "image",
                           "entry_type": "charge", "description": null, "job_id": JOB,
                           "created_at": "2030-01-01T00:00:00+00:00"}]).to_string();
        let entries: Vec<LedgerView> = rows("credit_ledger", &HttpAnswer { status: 200, body }).expect("decodes");
        assert_eq!(
            serde_json::to_value(&entries[0]).expect("serializes"),
            json!({"id": 7, "delta": -10, "balanceAfter": 90, "operation": "image", "entryType": "charge",
                   "description": null, "jobId": JOB, "createdAt": "2030-01-01T00:00:00+00:00"})
        );
        let error = rows::<LedgerView>("credit_ledger", &HttpAnswer { status: 200, body: "{}".into() }).expect_err("shape");
        assert_eq!(error.code(), ErrorCode::Upstream);
        let denied = HttpAnswer { status: 401, body: json!({"code": "PGRST301", "message": "JWT"}).to_string() };
        assert_eq!(rows::<LedgerView>("credit_ledger", &denied).expect_err("401").code(), ErrorCode::Unauthorized);
    }

    #[tokio::test]
    async fn a_closed_port_is_a_network_failure_and_a_503() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let sender = Sender::new().expect("client");
        let call = HttpCall { method: "GET", url: format!("http://127.0.0.1:{port}/x"), headers: vec![], body: None };
        assert!(matches!(sender.send(&call, Some(1000)).await, Err(SendFailure::Network(_))));
        let error = sender.read(&call).await.expect_err("nothing listens");
        assert_eq!((error.code(), error.status()), (ErrorCode::Network, 503));
    }

    #[tokio::test]
    async fn a_silent_server_is_a_timeout() {
        // A listener that accepts and never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let call = HttpCall { method: "POST", url: format!("http://127.0.0.1:{port}/gen"), headers: vec![], body: Some("{}".into()) };
        let sender = Sender::new().expect("client");
        assert_eq!(sender.send(&call, Some(200)).await, Err(SendFailure::Timeout));
        drop(listener);
    }
}
