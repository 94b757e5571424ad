//! The local webhook receiver: where `cargo dev up` points the `credits`
//! function's `CREDITGATE_WEBHOOK_URL` (`/devstack/webhooks` on the API
//! port, unless supabase/functions/.env or the caller's environment names
//! another), and the drain that calls `POST /webhooks/deliver` every few
//! seconds, as pg_cron does on Supabase (see the README).
//!
//! `POST /devstack/webhooks` checks `Creditgate-Signature` (Stripe's scheme:
//! `t=<unix seconds>,v1=<hex HMAC-SHA256 of "{t}.{body}">`, 300 s) on the
//! raw body and keeps the last [`KEPT`] deliveries, verified or not (a bad
//! signature is answered 400); `GET /devstack/webhooks` lists them, newest
//! first, for the demo page.

use super::front_proxy::{json_response, Body, BODY_LIMIT_BYTES};
use hmac::{Hmac, Mac};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use sha2::Sha256;
use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;
use subtle::ConstantTimeEq;

/// Deliveries the receiver keeps.
pub const KEPT: usize = 50;
/// How often `cargo dev up` drains the queue.
pub const DRAIN_EVERY: Duration = Duration::from_secs(3);
/// The secret `cargo dev up` gives the function when none is configured.
pub const LOCAL_WEBHOOK_SECRET: &str = "whsec_creditgate_local_stack";
/// The receiver's path on the API port.
pub const RECEIVER_PATH: &str = "/devstack/webhooks";

pub(super) struct Receiver {
    secret: String,
    kept: Mutex<VecDeque<Value>>,
}

impl Receiver {
    pub(super) fn new(secret: String) -> Receiver {
        Receiver { secret, kept: Mutex::new(VecDeque::new()) }
    }
}

/// Whether `header` signs `body` with `secret` within 300 s of `now_s`.
pub fn verified(header: Option<&str>, body: &[u8], secret: &str, now_s: i64) -> bool {
    let Some(header) = header else { return false };
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = Some(value),
            Some(("v1", value)) => signatures.push(value),
            _ => {}
        }
    }
    let Some(t) = timestamp else { return false };
    let Ok(seconds) = t.parse::<i64>() else { return false };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected: String = mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
    let matched = signatures.iter().any(|signature| bool::from(expected.as_bytes().ct_eq(signature.as_bytes())));
    matched && now_s - seconds <= 300
}

pub(super) async fn receive(receiver: &Receiver, request: Request<Incoming>) -> Response<Body> {
    if request.method() == Method::GET {
        let kept: Vec<Value> = receiver.kept.lock().map(|kept| kept.iter().cloned().collect()).unwrap_or_default();
        return json_response(StatusCode::OK, json!({"deliveries": kept}));
    }
    if request.method() != Method::POST {
        return json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"message": "GET or POST"}));
    }
    let header = request.headers().get("creditgate-signature").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let body = match http_body_util::Limited::new(request.into_body(), BODY_LIMIT_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return json_response(StatusCode::PAYLOAD_TOO_LARGE, json!({"message": "too large"})),
    };
    let now = chrono::Utc::now();
    let ok = verified(header.as_deref(), &body, &receiver.secret, now.timestamp());
    let event: Value = serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body)));
    if let Ok(mut kept) = receiver.kept.lock() {
        kept.push_front(json!({"receivedAt": now.to_rfc3339(), "verified": ok, "event": event}));
        kept.truncate(KEPT);
    }
    if ok {
        json_response(StatusCode::OK, json!({"received": true}))
    } else {
        json_response(StatusCode::BAD_REQUEST, json!({"message": "Creditgate-Signature does not verify"}))
    }
}

/// Calls `POST /functions/v1/credits/webhooks/deliver` every [`DRAIN_EVERY`]
/// with the service-role key. A failure (the function restarting, no URL
/// configured) is tried again next tick.
pub(super) async fn drain(api_url: String, service_role_key: String) -> anyhow::Result<()> {
    let client: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut interval = tokio::time::interval(DRAIN_EVERY);
    loop {
        interval.tick().await;
        let Ok(request) = Request::post(format!("{api_url}/functions/v1/credits/webhooks/deliver"))
            .header("authorization", format!("Bearer {service_role_key}"))
            .header("content-type", "application/json")
            .body(Body::from("{}"))
        else {
            continue;
        };
        if let Ok(response) = client.request(request).await {
            let _ = response.into_body().collect().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_receiver_checks_stripes_scheme() {
        let body = br#"{"id":1}"#;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"whsec_x").expect("key");
        mac.update(b"1000.");
        mac.update(body);
        let hex: String = mac.finalize().into_bytes().iter().map(|byte| format!("{byte:02x}")).collect();
        let header = format!("t=1000,v1={hex}");
        assert!(verified(Some(&header), body, "whsec_x", 1100));
        assert!(!verified(Some(&header), body, "whsec_y", 1100));
        assert!(!verified(Some(&header), b"{}", "whsec_x", 1100));
        assert!(!verified(Some(&header), body, "whsec_x", 1400));
        assert!(!verified(None, body, "whsec_x", 1100));
    }
}
