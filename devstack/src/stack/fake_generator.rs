//! The fake generator: the local stand-in for an AI provider that the
//! function calls as `GENERATOR_URL` (`/devstack/generator` on the API port).

use super::front_proxy::{json_response, Body, BODY_LIMIT_BYTES};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::json;
use std::time::Duration;

/// The local stand-in for an AI provider (`GENERATOR_URL`). It does what the
/// request's `prompt` says: a prompt starting with `fail` gets a 500, one
/// starting with `hang` gets no answer for a minute, anything else succeeds
/// with a result URL.
pub(super) async fn fake_generator(request: Request<Incoming>) -> Response<Body> {
    let body = match http_body_util::Limited::new(request.into_body(), BODY_LIMIT_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return json_response(StatusCode::PAYLOAD_TOO_LARGE, json!({"error": "too large"})),
    };
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let prompt = request.get("prompt").and_then(|prompt| prompt.as_str()).unwrap_or("");
    if prompt.starts_with("fail") {
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "the generator failed (as asked)"}));
    }
    if prompt.starts_with("hang") {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let id = uuid::Uuid::new_v4();
    json_response(StatusCode::OK, json!({"url": format!("https://images.example/{id}.png")}))
}
