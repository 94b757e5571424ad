//! The `stripe-webhook` Edge Function: Stripe events in, credits granted
//! and revoked exactly once.
//!
//! Deployed with `verify_jwt = false` (Stripe sends no Supabase JWT; the
//! `Stripe-Signature` header is the authentication), as Supabase documents
//! for Stripe webhooks:
//! <https://supabase.com/docs/guides/functions/examples/stripe-webhooks>.
//!
//! 1. The signature is checked on the raw body before anything is parsed
//!    (Stripe's scheme, <https://stripe.com/docs/webhooks/signatures#verify-manually>:
//!    `Stripe-Signature: t=<unix seconds>,v1=<hex>[,v1=<hex>...]`, `v1` =
//!    HMAC-SHA256 of `"{t}.{raw body}"` keyed with the endpoint secret, a
//!    timestamp at most [`crate::signature::TOLERANCE_SECONDS`] old as Stripe's libraries
//!    allow). Several secrets may be valid during a rotation. Bad, missing
//!    or stale: 400, nothing read further, nothing changed.
//! 2. The event becomes an action ([`action`]): grant, revoke, subscribe,
//!    cancel, ignore or invalid.
//! 3. One RPC, `process_stripe_event`, records the event (its id is the
//!    primary key of `stripe_events`) and applies the action in the same
//!    transaction: a retried or concurrently duplicated event changes
//!    nothing. Answer 200 for everything recorded (including unknown users,
//!    which an operator finds in `stripe_events`), 500 when the database
//!    could not be reached (nothing recorded, so Stripe retries).

use super::http::{ApiRequest, ApiResponse};
use super::Handled;
use crate::calls::Rpc;
use crate::client::{Call, CreditClient};
use crate::config::Config;
use crate::error::{CreditError, ErrorCode};
use crate::signature::verify_signature;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Stripe event bodies can be large (an invoice with many lines).
pub const STRIPE_BODY_BYTES_MAX: usize = 512 * 1024;

/// The headers the webhook reads.
pub const STRIPE_HEADERS_READ: [&str; 3] = ["stripe-signature", "content-length", "content-type"];

/// A price's credits (`CREDITGATE_STRIPE_PRICES`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceCredits {
    pub credits: u32,
    pub expires_in_days: Option<u32>,
    pub category: Option<String>,
    pub priority: Option<u8>,
}

/// The webhook's settings.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    pub config: Config,
    /// Endpoint secrets (`whsec_...`); empty: every request is refused (500).
    pub secrets: Vec<String>,
    pub prices: BTreeMap<String, PriceCredits>,
    /// Stripe price id to creditgate plan.
    pub plans: BTreeMap<String, String>,
}

fn invalid(variable: &str, message: impl Into<String>) -> CreditError {
    CreditError::new(ErrorCode::InvalidArgument, message).with_detail("variable", variable)
}

impl StripeSettings {
    /// `SUPABASE_URL`, `SUPABASE_SERVICE_ROLE_KEY`, `STRIPE_WEBHOOK_SECRET`
    /// and/or `STRIPE_WEBHOOK_SECRETS` (each comma-separated),
    /// `CREDITGATE_STRIPE_PRICES`, `CREDITGATE_STRIPE_PLANS`.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<StripeSettings, CreditError> {
        let get = |name: &str| env.get(name).map(|value| value.trim()).filter(|value| !value.is_empty());
        let url = get("SUPABASE_URL").ok_or_else(|| invalid("SUPABASE_URL", "SUPABASE_URL is not set"))?;
        let key = get("SUPABASE_SERVICE_ROLE_KEY")
            .ok_or_else(|| invalid("SUPABASE_SERVICE_ROLE_KEY", "SUPABASE_SERVICE_ROLE_KEY is not set"))?;
        let config = Config::new(url, key).map_err(|error| invalid("SUPABASE_URL", error.message()))?;
        let secrets = ["STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRETS"]
            .into_iter()
            .filter_map(get)
            .flat_map(|list| list.split(','))
            .map(str::trim)
            .filter(|secret| !secret.is_empty())
            .map(str::to_owned)
            .collect();
        let prices = match get("CREDITGATE_STRIPE_PRICES") {
            None => BTreeMap::new(),
            Some(text) => parse_prices(text)?,
        };
        let plans = match get("CREDITGATE_STRIPE_PLANS") {
            None => BTreeMap::new(),
            Some(text) => {
                let bad = || invalid("CREDITGATE_STRIPE_PLANS", r#"CREDITGATE_STRIPE_PLANS must be a JSON object {"price_id": "plan"}"#);
                let map: BTreeMap<String, Value> = serde_json::from_str(text).map_err(|_| bad())?;
                map.into_iter()
                    .map(|(price, plan)| plan.as_str().filter(|p| !p.is_empty()).map(|p| (price, p.to_owned())).ok_or_else(bad))
                    .collect::<Result<_, _>>()?
            }
        };
        Ok(StripeSettings { config, secrets, prices, plans })
    }
}

fn parse_prices(text: &str) -> Result<BTreeMap<String, PriceCredits>, CreditError> {
    let bad = |why: &str| {
        invalid(
            "CREDITGATE_STRIPE_PRICES",
            format!(r#"CREDITGATE_STRIPE_PRICES must be a JSON object {{"price_id": {{"credits": 500, "expiresInDays": 365}}}}: {why}"#),
        )
    };
    let map: BTreeMap<String, Value> = serde_json::from_str(text).map_err(|_| bad("not a JSON object"))?;
    let mut prices = BTreeMap::new();
    for (price, entry) in map {
        let number = |name: &str, max: u64| -> Result<Option<u64>, CreditError> {
            match entry.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => value.as_u64().filter(|n| (1..=max).contains(n)).map(Some).ok_or_else(|| bad(&format!("{price}.{name}"))),
            }
        };
        let credits = number("credits", 1_000_000_000)?.ok_or_else(|| bad(&format!("{price}.credits is required")))?;
        let priority = match entry.get("priority") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_u64().filter(|n| *n <= 100).ok_or_else(|| bad(&format!("{price}.priority")))? as u8),
        };
        let category = match entry.get("category") {
            None | Some(Value::Null) => None,
            Some(value) => Some(value.as_str().ok_or_else(|| bad(&format!("{price}.category")))?.to_owned()),
        };
        let expires_in_days = number("expiresInDays", 100_000)?.map(|days| days as u32);
        prices.insert(price.clone(), PriceCredits { credits: credits as u32, expires_in_days, category, priority });
    }
    Ok(prices)
}

/// A string field, or the `id` of an expanded object.
fn id_of(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Object(object) => object.get("id").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn metadata<'a>(object: &'a Value, name: &str) -> Option<&'a str> {
    object.get("metadata")?.get(name)?.as_str().map(str::trim).filter(|value| !value.is_empty())
}

fn ignore(reason: impl Into<String>) -> Value {
    json!({"kind": "ignore", "reason": reason.into()})
}

fn refused(reason: impl Into<String>) -> Value {
    json!({"kind": "invalid", "reason": reason.into()})
}

/// A metadata number: digits only, within `max`.
fn metadata_number(object: &Value, name: &str, min: u64, max: u64) -> Result<Option<u64>, Value> {
    match metadata(object, name) {
        None => Ok(None),
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .map(Some)
            .ok_or_else(|| refused(format!("metadata.{name} must be a whole number from {min} to {max}"))),
    }
}

/// What an event asks for, as `process_stripe_event`'s `p_action`.
pub fn action(event: &Value, settings: &StripeSettings) -> Value {
    let object = &event["data"]["object"];
    match event["type"].as_str().unwrap_or_default() {
        "checkout.session.completed" | "checkout.session.async_payment_succeeded" => {
            // The session links the Stripe customer to the user, even when it
            // grants nothing (a subscription's): its invoices may name no user.
            let mut action = checkout(object, settings);
            action["customer"] = json!(id_of(object.get("customer")));
            if action.get("user_id").is_none() {
                action["user_id"] = json!(checkout_user(object));
            }
            action
        }
        "charge.refunded" => {
            let Some(payment_intent) = id_of(object.get("payment_intent")) else {
                return ignore("the charge has no payment_intent");
            };
            json!({
                "kind": "revoke", "payment_intent": payment_intent,
                "amount": object["amount"].as_u64(), "amount_refunded": object["amount_refunded"].as_u64(),
                "full": object["refunded"].as_bool() == Some(true),
                "reason": format!("Stripe refund of {}", object["id"].as_str().unwrap_or("a charge")),
            })
        }
        "charge.dispute.created" => {
            let Some(payment_intent) = id_of(object.get("payment_intent")) else {
                return ignore("the dispute has no payment_intent");
            };
            json!({
                "kind": "revoke", "payment_intent": payment_intent, "full": true,
                "reason": format!("Stripe dispute {}", object["id"].as_str().unwrap_or_default()),
            })
        }
        "invoice.paid" => {
            let lines = object["lines"]["data"].as_array().cloned().unwrap_or_default();
            let plan = lines.iter().filter_map(line_price).find_map(|price| settings.plans.get(&price).cloned());
            let Some(plan) = plan else { return ignore("no invoice line has a price in CREDITGATE_STRIPE_PLANS") };
            let user = metadata(object, "creditgate_user_id")
                .or_else(|| metadata(&object["subscription_details"], "creditgate_user_id"))
                .or_else(|| metadata(&object["parent"]["subscription_details"], "creditgate_user_id"))
                .or_else(|| lines.iter().find_map(|line| metadata(line, "creditgate_user_id")));
            json!({"kind": "subscribe", "user_id": user, "plan": plan, "customer": id_of(object.get("customer"))})
        }
        "customer.subscription.deleted" => {
            let items = object["items"]["data"].as_array().cloned().unwrap_or_default();
            if !items.iter().filter_map(line_price).any(|price| settings.plans.contains_key(&price)) {
                return ignore("no subscription item has a price in CREDITGATE_STRIPE_PLANS");
            }
            json!({"kind": "cancel", "user_id": metadata(object, "creditgate_user_id"), "customer": id_of(object.get("customer"))})
        }
        other => ignore(format!("{other} is not handled")),
    }
}

/// An invoice line's or subscription item's price id, in the API versions' shapes.
fn line_price(line: &Value) -> Option<String> {
    id_of(line.get("price"))
        .or_else(|| id_of(line.get("plan")))
        .or_else(|| id_of(line.pointer("/pricing/price_details/price")))
}

/// The user a Checkout Session is for: `client_reference_id`, or `metadata.creditgate_user_id`.
fn checkout_user(session: &Value) -> Option<&str> {
    session["client_reference_id"].as_str().or_else(|| metadata(session, "creditgate_user_id"))
}

fn checkout(session: &Value, settings: &StripeSettings) -> Value {
    if session["payment_status"].as_str() != Some("paid") {
        return ignore("payment_status is not paid (the async_payment_succeeded event grants later)");
    }
    let price_id = metadata(session, "price_id").or_else(|| metadata(session, "creditgate_price_id"));
    let from_price = price_id.and_then(|price| settings.prices.get(price));
    let credits = match metadata_number(session, "creditgate_credits", 1, 1_000_000_000) {
        Err(refusal) => return refusal,
        Ok(Some(credits)) => credits,
        Ok(None) => match from_price {
            Some(price) => u64::from(price.credits),
            None => return ignore("no metadata.creditgate_credits and no metadata.price_id in CREDITGATE_STRIPE_PRICES"),
        },
    };
    let expires_in_days = match metadata_number(session, "creditgate_expires_in_days", 1, 100_000) {
        Err(refusal) => return refusal,
        Ok(days) => days.or_else(|| from_price.and_then(|price| price.expires_in_days.map(u64::from))),
    };
    let priority = match metadata_number(session, "creditgate_priority", 0, 100) {
        Err(refusal) => return refusal,
        Ok(priority) => priority.or_else(|| from_price.and_then(|price| price.priority.map(u64::from))),
    };
    let category = metadata(session, "creditgate_category")
        .map(str::to_owned)
        .or_else(|| from_price.and_then(|price| price.category.clone()));
    let user = checkout_user(session);
    json!({
        "kind": "grant", "user_id": user, "credits": credits, "expires_in_days": expires_in_days,
        "category": category, "priority": priority, "session_id": session["id"].as_str(),
        "payment_intent": id_of(session.get("payment_intent")), "price_id": price_id,
    })
}

/// The webhook for one function instance.
#[derive(Debug, Clone)]
pub struct StripeApi {
    settings: StripeSettings,
    client: CreditClient,
}

fn error_response(status: u16, code: &str, message: &str) -> ApiResponse {
    ApiResponse::json(status, &json!({"error": {"code": code, "message": message, "details": {}}}))
}

impl StripeApi {
    pub fn new(settings: StripeSettings) -> StripeApi {
        StripeApi { client: CreditClient::new(settings.config.clone()), settings }
    }

    pub fn from_env(env: &BTreeMap<String, String>) -> Result<StripeApi, CreditError> {
        Ok(StripeApi::new(StripeSettings::from_env(env)?))
    }

    pub fn settings(&self) -> &StripeSettings {
        &self.settings
    }

    /// Answers one delivery. Never fails: every failure is a response.
    pub async fn handle(&self, request: ApiRequest) -> Handled {
        let mut log = json!({"function": "stripe-webhook", "method": request.method});
        let response = self.respond(&request, &mut log).await;
        log["status"] = json!(response.status);
        Handled { response, log: log.to_string() }
    }

    async fn respond(&self, request: &ApiRequest, log: &mut Value) -> ApiResponse {
        if request.method != "POST" {
            let mut response = error_response(405, "method_not_allowed", "Stripe webhooks are POSTed");
            response.set_header("allow", "POST");
            return response;
        }
        if self.settings.secrets.is_empty() {
            log["cause"] = json!("no_secret");
            return error_response(500, "upstream", "STRIPE_WEBHOOK_SECRET is not set: no delivery can be verified");
        }
        let now_s = (super::now_ms() / 1000.0) as i64;
        if let Err(error) = verify_signature(request.header("stripe-signature"), &request.body, &self.settings.secrets, now_s) {
            log["cause"] = json!(format!("{error:?}").to_lowercase());
            return error_response(400, "invalid_signature", error.message());
        }
        let event: Value = match serde_json::from_slice(&request.body) {
            Ok(event @ Value::Object(_)) => event,
            _ => return error_response(400, "invalid_argument", "the body is not a JSON object"),
        };
        let (Some(id), Some(kind)) = (event["id"].as_str(), event["type"].as_str()) else {
            return error_response(400, "invalid_argument", "the event has no id or type");
        };
        log["event"] = json!(id);
        log["type"] = json!(kind);
        let action = action(&event, &self.settings);
        let rpc = Rpc {
            function: "process_stripe_event",
            body: json!({"p_event_id": id, "p_type": kind, "p_action": action, "p_payload": event}),
        };
        let answer = match self.client.send(&Call::Rpc(rpc)).await {
            Ok(answer) if (200..300).contains(&answer.status) => answer,
            Ok(answer) => {
                log["cause"] = json!(format!("database answered {}", answer.status));
                return error_response(500, "upstream", "the event could not be recorded; Stripe will retry");
            }
            Err(error) => {
                log["cause"] = json!(error.message());
                return error_response(500, "upstream", "the database could not be reached; Stripe will retry");
            }
        };
        let result: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
        log["outcome"] = result["status"].clone();
        log["replayed"] = result["replayed"].clone();
        ApiResponse::json(
            200,
            &json!({"received": true, "eventId": id, "status": result["status"], "replayed": result["replayed"]}),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::{stripe_signature, SignatureError};

    fn settings() -> StripeSettings {
        let env: BTreeMap<String, String> = [
            ("SUPABASE_URL", "http://127.0.0.1:54321"),
            ("SUPABASE_SERVICE_ROLE_KEY", "service-key"),
            ("STRIPE_WEBHOOK_SECRET", "whsec_old, whsec_new"),
            ("CREDITGATE_STRIPE_PRICES", r#"{"price_123": {"credits": 500, "expiresInDays": 365}}"#),
            ("CREDITGATE_STRIPE_PLANS", r#"{"price_pro": "pro"}"#),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        StripeSettings::from_env(&env).unwrap()
    }

    #[test]
    fn signatures_follow_stripes_scheme() {
        let s = settings();
        assert_eq!(s.secrets, vec!["whsec_old".to_owned(), "whsec_new".to_owned()]);
        let body = br#"{"id":"evt_1"}"#;
        let good = stripe_signature("whsec_new", "1000", body);
        let header = format!("t=1000,v1=deadbeef,v1={good}");
        assert_eq!(verify_signature(Some(&header), body, &s.secrets, 1200), Ok(()));
        assert_eq!(verify_signature(Some(&header), body, &s.secrets, 1301), Err(SignatureError::Stale));
        assert_eq!(verify_signature(Some(&header), b"{}", &s.secrets, 1000), Err(SignatureError::Mismatch));
        assert_eq!(verify_signature(None, body, &s.secrets, 1000), Err(SignatureError::Missing));
        assert_eq!(verify_signature(Some("v1=abc"), body, &s.secrets, 1000), Err(SignatureError::Malformed));
        let other = stripe_signature("whsec_other", "1000", body);
        assert_eq!(verify_signature(Some(&format!("t=1000,v1={other}")), body, &s.secrets, 1000), Err(SignatureError::Mismatch));
    }

    #[test]
    fn checkout_actions() {
        let s = settings();
        let event = json!({"type": "checkout.session.completed", "data": {"object": {
            "id": "cs_1", "payment_status": "paid", "client_reference_id": "u", "payment_intent": "pi_1",
            "metadata": {"price_id": "price_123"}}}});
        let a = action(&event, &s);
        assert_eq!((a["kind"].as_str(), a["credits"].as_u64(), a["expires_in_days"].as_u64()), (Some("grant"), Some(500), Some(365)));
        let unpaid = json!({"type": "checkout.session.completed", "data": {"object": {"payment_status": "unpaid"}}});
        assert_eq!(action(&unpaid, &s)["kind"], "ignore");
        let bad = json!({"type": "checkout.session.completed", "data": {"object": {"payment_status": "paid", "metadata": {"creditgate_credits": "-3"}}}});
        assert_eq!(action(&bad, &s)["kind"], "invalid");
        // A subscription's session grants nothing but links the customer to the user.
        let subscription = json!({"type": "checkout.session.completed", "data": {"object": {
            "payment_status": "paid", "client_reference_id": "u", "customer": "cus_1", "mode": "subscription"}}});
        let linked = action(&subscription, &s);
        assert_eq!((linked["kind"].as_str(), linked["user_id"].as_str(), linked["customer"].as_str()), (Some("ignore"), Some("u"), Some("cus_1")));
        let invoice = json!({"type": "invoice.paid", "data": {"object": {"customer": "cus_1", "lines": {"data": [{"price": {"id": "price_pro"}}]}}}});
        let renewal = action(&invoice, &s);
        assert_eq!((renewal["kind"].as_str(), renewal["user_id"].as_str(), renewal["customer"].as_str()), (Some("subscribe"), None, Some("cus_1")));
    }
}
