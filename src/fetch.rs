//! Every HTTP call on wasm32: the request the `postgrest` crate builds (a
//! `reqwest::Request`: method, URL with the query, headers, body), and the
//! HTTP API's calls to the generator and the JWKS (`api/outbound.rs`), sent
//! with the runtime's global `fetch`, the answer read as status and text.
//!
//! reqwest's own wasm `send` does more per call than creditgate needs: an
//! `AbortController`, a `Request` object, a re-parse of the response URL,
//! and every response header copied back through `JSON.stringify` and
//! serde_json. On the Edge Function's hot path (`POST /charge` makes one
//! RPC) that was a measurable share of the time, and its code a share of the
//! module (docs/design.md, "Performance"), so this sends the same request
//! with one `fetch` call.

use js_sys::{Object, Promise, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(catch, js_name = fetch)]
    fn global_fetch(url: &str, init: &Object) -> Result<Promise, JsValue>;
}

/// Sends `request`; the status and the whole body, or why nothing came back.
pub async fn send(request: reqwest::Request) -> Result<(u16, String), String> {
    let mut headers = Vec::with_capacity(request.headers().len());
    for (name, value) in request.headers() {
        let value = value.to_str().map_err(|_| format!("the {name} header is not text"))?;
        headers.push((name.as_str(), value));
    }
    let body = request.body().and_then(reqwest::Body::as_bytes);
    exchange(request.method().as_str(), request.url().as_str(), &headers, body, false).await
}

/// One `fetch`: the status and the whole body as text. `abortable`: the
/// fetch is aborted if this future is dropped before it ends (how a timed-out
/// call to the generator is cancelled).
pub async fn exchange(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    abortable: bool,
) -> Result<(u16, String), String> {
    let init = Object::new();
    let set = |name: &str, value: &JsValue| Reflect::set(&init, &JsValue::from_str(name), value).map(drop);
    set("method", &JsValue::from_str(method)).map_err(describe)?;
    let js_headers = web_sys::Headers::new().map_err(describe)?;
    for (name, value) in headers {
        js_headers.append(name, value).map_err(describe)?;
    }
    set("headers", &js_headers).map_err(describe)?;
    if let Some(body) = body.filter(|body| !body.is_empty()) {
        let body = match std::str::from_utf8(body) {
            Ok(text) => JsValue::from_str(text),
            Err(_) => js_sys::Uint8Array::from(body).into(),
        };
        set("body", &body).map_err(describe)?;
    }
    let _abort = if abortable {
        let controller = web_sys::AbortController::new().map_err(describe)?;
        set("signal", &controller.signal()).map_err(describe)?;
        Some(AbortOnDrop(controller))
    } else {
        None
    };
    let promise = global_fetch(url, &init).map_err(describe)?;
    let response: web_sys::Response = JsFuture::from(promise).await.map_err(describe)?.unchecked_into();
    let status = response.status();
    let text = JsFuture::from(response.text().map_err(describe)?).await.map_err(describe)?;
    let text = text.as_string().ok_or_else(|| "the answer's body is not text".to_owned())?;
    Ok((status, text))
}

/// Aborts its fetch when dropped (a no-op once the body has been read).
struct AbortOnDrop(web_sys::AbortController);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A thrown JS value as one line of text.
fn describe(error: JsValue) -> String {
    match error.dyn_ref::<js_sys::Error>() {
        Some(error) => String::from(error.to_string()),
        None => error.as_string().unwrap_or_else(|| "fetch failed".to_owned()),
    }
}
