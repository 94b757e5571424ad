//! The API's HTTP calls to other services than PostgREST (those all go
//! through [`crate::client::CreditClient`]): the generator `/generate` pays
//! for, and the project's JWKS (`keys.rs`).
//!
//! As in `calls.rs`, each call is built as plain data first ([`HttpCall`])
//! and sent separately, so what goes on the wire is unit-tested with no
//! network. Sending uses reqwest natively and the global `fetch` on wasm32
//! (`src/fetch.rs`: aborted when the future is dropped, which is how a
//! timed-out generation is cancelled there), with a timeout.

use super::settings::GeneratorSettings;
use crate::error::CreditError;
#[cfg(not(target_arch = "wasm32"))]
use crate::error::ErrorCode;
use crate::JobId;
use serde_json::{json, Value};

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

/// The generator call: `POST {url}` with `{prompt, operation, jobId}`.
pub fn generator_call(generator: &GeneratorSettings, prompt: &str, operation: &str, job_id: JobId) -> HttpCall {
    let mut headers = vec![("Content-Type", "application/json".to_owned()), ("Accept", "application/json".to_owned())];
    if let Some(key) = &generator.key {
        headers.push(("Authorization", format!("Bearer {key}")));
    }
    HttpCall {
        method: "POST",
        url: generator.url.clone(),
        headers,
        body: Some(json!({"prompt": prompt, "operation": operation, "jobId": job_id.to_string()}).to_string()),
    }
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
        .filter(|url| crate::ResultUrl::new(url.as_str()).is_ok());
    match url {
        Some(url) => Generated::Url(url),
        None => Generated::Failed { cause: "generator_bad_answer", status: Some(answer.status) },
    }
}

/// Sends calls. One per API instance; cheap to share.
#[derive(Clone, Debug)]
pub struct Sender {
    #[cfg(not(target_arch = "wasm32"))]
    client: reqwest::Client,
}

impl Sender {
    #[cfg(not(target_arch = "wasm32"))]
    pub fn new() -> Result<Sender, CreditError> {
        reqwest::Client::builder()
            .build()
            .map(|client| Sender { client })
            .map_err(|error| CreditError::new(ErrorCode::Network, format!("could not build an HTTP client: {error}")))
    }

    #[cfg(target_arch = "wasm32")]
    pub fn new() -> Result<Sender, CreditError> {
        Ok(Sender {})
    }

    /// Sends `call`; with `timeout_ms`, gives up (and cancels it) after that long.
    #[cfg(target_arch = "wasm32")]
    pub async fn send(&self, call: &HttpCall, timeout_ms: Option<u32>) -> Result<HttpAnswer, SendFailure> {
        let headers: Vec<(&str, &str)> = call.headers.iter().map(|(name, value)| (*name, value.as_str())).collect();
        let body = call.body.as_deref().map(str::as_bytes);
        let exchange = async {
            let (status, body) = crate::fetch::exchange(call.method, &call.url, &headers, body, timeout_ms.is_some())
                .await
                .map_err(SendFailure::Network)?;
            if body.len() > ANSWER_BYTES_MAX {
                return Err(SendFailure::Network(format!("the answer is larger than {ANSWER_BYTES_MAX} bytes")));
            }
            Ok(HttpAnswer { status, body })
        };
        match timeout_ms {
            Some(ms) => super::js_handler::with_timeout(exchange, ms).await.unwrap_or(Err(SendFailure::Timeout)),
            None => exchange.await,
        }
    }

    /// Sends `call`; with `timeout_ms`, gives up (and cancels it) after that long.
    #[cfg(not(target_arch = "wasm32"))]
    pub async fn send(&self, call: &HttpCall, timeout_ms: Option<u32>) -> Result<HttpAnswer, SendFailure> {
        let method = if call.method == "POST" { reqwest::Method::POST } else { reqwest::Method::GET };
        let mut builder = self.client.request(method, &call.url);
        for (name, value) in &call.headers {
            builder = builder.header(*name, value);
        }
        if let Some(body) = &call.body {
            builder = builder.body(body.clone());
        }
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
        exchange.await
    }
}

#[cfg(not(target_arch = "wasm32"))]
fn failure(error: reqwest::Error) -> SendFailure {
    if error.is_timeout() {
        return SendFailure::Timeout;
    }
    SendFailure::Network(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

    fn job() -> JobId {
        JobId::parse("jobId", JOB).expect("uuid")
    }

    #[test]
    fn the_generator_gets_prompt_operation_and_job_and_its_key() {
        let generator = GeneratorSettings { url: "http://gen/x".into(), key: Some("gk".into()), timeout_ms: 1000 };
        let call = generator_call(&generator, "a \"cat\"", "image", job());
        assert_eq!((call.method, call.url.as_str()), ("POST", "http://gen/x"));
        assert!(call.headers.contains(&("Authorization", "Bearer gk".to_owned())));
        let body: Value = serde_json::from_str(call.body.as_deref().unwrap_or_default()).expect("json");
        assert_eq!(body, json!({"prompt": "a \"cat\"", "operation": "image", "jobId": JOB}));
        let keyless = GeneratorSettings { key: None, ..generator };
        assert!(!generator_call(&keyless, "p", "image", job()).headers.iter().any(|(name, _)| *name == "Authorization"));
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

    #[tokio::test]
    async fn a_closed_port_is_a_network_failure_and_a_503() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let sender = Sender::new().expect("client");
        let call = HttpCall { method: "GET", url: format!("http://127.0.0.1:{port}/x"), headers: vec![], body: None };
        assert!(matches!(sender.send(&call, Some(1000)).await, Err(SendFailure::Network(_))));
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
