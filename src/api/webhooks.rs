//! Webhooks out: `POST /webhooks/deliver` (the service role; on Supabase,
//! pg_cron through pg_net every few seconds, see the README) drains the
//! delivery queue of balance events (`credit_events`, migration 0800).
//!
//! 1. `claim_credit_event_deliveries` leases up to [`DELIVERY_BATCH`] due
//!    deliveries to this drain (`FOR UPDATE SKIP LOCKED`: a concurrent drain
//!    gets others), for long enough to send them all one after another; a
//!    full batch is followed by another while [`DRAIN_BUDGET_MS`] lasts.
//! 2. Each is POSTed to `CREDITGATE_WEBHOOK_URL` as
//!    `{"id", "type", "userId", "payload", "createdAt"}` (the event as
//!    `/events` shows it, with its user), signed as Stripe signs:
//!    `Creditgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "{t}.{body}">`
//!    keyed with `CREDITGATE_WEBHOOK_SECRET` (`stripe.rs`'s code).
//! 3. `record_credit_event_delivery` records each outcome: a 2xx delivers;
//!    another status, a timeout or a refused connection is retried later
//!    with backoff, and given up after a bound, by the SQL.
//!
//! At least once: an event whose outcome was not recorded (the drain died,
//! the database went away) is sent again when its lease runs out, with the
//! same `id`; receivers de-duplicate on it.

use super::error::ApiError;
use super::http::{ApiRequest, ApiResponse};
use super::input;
use super::outbound::{HttpCall, Sender, SendFailure};
use super::settings::WebhookSettings;
use crate::signature::signature_header;
use crate::answers;
use crate::calls::Rpc;
use crate::client::{Call, CreditClient};
use crate::error::ErrorCode;
use serde::Deserialize;
use serde_json::{json, Value};

/// Deliveries one claim takes; sent one after another, so a batch lasts at
/// most this many timeouts (20 x 5 s).
pub const DELIVERY_BATCH: u32 = 20;
/// A drain claims batch after batch while the last one was full and this
/// long has not passed (then at most one more batch: 20 s + 20 x 5 s, inside
/// an Edge Function's wall-clock limit).
pub const DRAIN_BUDGET_MS: f64 = 20_000.0;
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Creditgate-Signature";

/// One claimed delivery, as `claim_credit_event_deliveries` returns it.
#[derive(Debug, Clone, Deserialize)]
struct Claimed {
    event_id: i64,
    user_id: String,
    #[serde(rename = "type")]
    kind: String,
    payload: Value,
    created_at: String,
    attempt: i32,
}

/// The body a receiver gets for one event.
pub fn delivery_body(event_id: i64, kind: &str, user_id: &str, payload: &Value, created_at: &str) -> String {
    json!({"id": event_id, "type": kind, "userId": user_id, "payload": payload, "createdAt": created_at}).to_string()
}

/// The signed POST of `body`, at `now_s`.
pub fn delivery_call(webhook: &WebhookSettings, body: String, now_s: i64) -> HttpCall {
    HttpCall {
        method: "POST",
        url: webhook.url.clone(),
        headers: vec![
            ("Content-Type", "application/json".to_owned()),
            (SIGNATURE_HEADER, signature_header(webhook.secret.expose(), now_s, body.as_bytes())),
        ],
        body: Some(body),
    }
}

/// The outcome to record: the HTTP status, and an error text unless 2xx.
fn outcome(result: &Result<super::outbound::HttpAnswer, SendFailure>, timeout_ms: u32) -> (Option<u16>, Option<String>) {
    match result {
        Ok(answer) if (200..300).contains(&answer.status) => (Some(answer.status), None),
        Ok(answer) => (Some(answer.status), Some(format!("the receiver answered HTTP {}", answer.status))),
        Err(SendFailure::Timeout) => (None, Some(format!("no answer within {timeout_ms} ms"))),
        Err(SendFailure::Network(why)) => (None, Some(format!("the request failed: {}", why.chars().take(500).collect::<String>()))),
    }
}

/// `POST /webhooks/deliver`: one drain. Answers `{claimed, delivered,
/// retrying, failed, unrecorded}`.
pub async fn deliver(
    client: &CreditClient,
    sender: &Sender,
    webhook: Option<&WebhookSettings>,
    request: &ApiRequest,
) -> Result<ApiResponse, ApiError> {
    input::no_query(request)?;
    if !input::body_object(request, true)?.is_empty() {
        return Err(ApiError::invalid("body", "POST /webhooks/deliver takes no fields (send {} or nothing)"));
    }
    let webhook = webhook.ok_or_else(|| {
        ApiError::from_code(ErrorCode::Upstream, "no webhook URL is configured (set CREDITGATE_WEBHOOK_URL)")
            .with_detail("cause", "webhook_not_configured")
    })?;
    let lease_seconds = (DELIVERY_BATCH * webhook.timeout_ms).div_ceil(1000) + 30;
    let started_ms = super::now_ms();
    let (mut claimed_total, mut delivered, mut retrying, mut failed, mut unrecorded) = (0, 0, 0, 0, 0);
    loop {
        let claim = Rpc {
            function: "claim_credit_event_deliveries",
            body: json!({"p_limit": DELIVERY_BATCH, "p_lease_seconds": lease_seconds}),
        };
        let answer = client.send(&Call::Rpc(claim)).await;
        let claimed: Vec<Claimed> = match answer.and_then(|answer| answers::rows("claim_credit_event_deliveries", &answer)) {
            Ok(claimed) => claimed,
            // The first claim's failure is the answer; a later one ends the drain.
            Err(error) if claimed_total == 0 => return Err(error.into()),
            Err(_) => break,
        };
        claimed_total += claimed.len();
        for delivery in &claimed {
            let body = delivery_body(delivery.event_id, &delivery.kind, &delivery.user_id, &delivery.payload, &delivery.created_at);
            let now_s = (super::now_ms() / 1000.0) as i64;
            let result = sender.send(&delivery_call(webhook, body, now_s), Some(webhook.timeout_ms)).await;
            let (status, error) = outcome(&result, webhook.timeout_ms);
            let record = Rpc {
                function: "record_credit_event_delivery",
                body: json!({
                    "p_user_id": delivery.user_id, "p_event_id": delivery.event_id, "p_attempt": delivery.attempt,
                    "p_http_status": status, "p_error": error,
                }),
            };
            let recorded = match client.send(&Call::Rpc(record)).await {
                Ok(answer) => answers::scalar::<String>("record_credit_event_delivery", &answer).ok(),
                Err(_) => None,
            };
            match recorded.as_deref() {
                Some("delivered") => delivered += 1,
                Some("pending") => retrying += 1,
                Some("failed") => failed += 1,
                _ => unrecorded += 1,
            }
        }
        if claimed.len() < DELIVERY_BATCH as usize || super::now_ms() - started_ms > DRAIN_BUDGET_MS {
            break;
        }
    }
    Ok(ApiResponse::json(
        200,
        &json!({
            "claimed": claimed_total, "delivered": delivered, "retrying": retrying,
            "failed": failed, "unrecorded": unrecorded,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{verify_signature_within, Secret};

    #[test]
    fn a_delivery_is_the_event_signed_as_stripe_signs() {
        let webhook = WebhookSettings { url: "http://hook/x".into(), secret: secret("whsec_creditgate_test"), timeout_ms: 5000 };
        let body = delivery_body(7, "low_balance", "u-1", &json!({"balance": 3}), "2026-01-01T00:00:00Z");
        assert_eq!(
            serde_json::from_str::<Value>(&body).expect("json"),
            json!({"id": 7, "type": "low_balance", "userId": "u-1", "payload": {"balance": 3}, "createdAt": "2026-01-01T00:00:00Z"})
        );
        let call = delivery_call(&webhook, body.clone(), 1_000);
        assert_eq!((call.method, call.url.as_str()), ("POST", "http://hook/x"));
        let header = call.headers.iter().find(|(name, _)| *name == SIGNATURE_HEADER).map(|(_, v)| v.clone());
        let secrets = vec!["whsec_creditgate_test".to_owned()];
        assert_eq!(verify_signature_within(header.as_deref(), body.as_bytes(), &secrets, 1_100, 300), Ok(()));
        assert!(verify_signature_within(header.as_deref(), b"{}", &secrets, 1_100, 300).is_err());
        assert!(verify_signature_within(header.as_deref(), body.as_bytes(), &secrets, 1_400, 300).is_err());
    }

    #[test]
    fn outcomes() {
        use super::super::outbound::HttpAnswer;
        let answer = |status| Ok(HttpAnswer { status, body: String::new() });
        assert_eq!(outcome(&answer(204), 5000), (Some(204), None));
        assert_eq!(outcome(&answer(500), 5000), (Some(500), Some("the receiver answered HTTP 500".into())));
        assert_eq!(outcome(&Err(SendFailure::Timeout), 250), (None, Some("no answer within 250 ms".into())));
    }

    fn secret(text: &str) -> Secret {
        let env: std::collections::BTreeMap<String, String> = [
            ("SUPABASE_URL", "http://127.0.0.1:54321"),
            ("SUPABASE_SERVICE_ROLE_KEY", "service-key"),
            ("CREDITGATE_WEBHOOK_URL", "http://hook/x"),
            ("CREDITGATE_WEBHOOK_SECRET", text),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        crate::api::Settings::from_env(&env).expect("valid").webhook.expect("set").secret
    }
}
