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

use js_sys::Promise;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;

#[wasm_bindgen(module = "/src/js/http.js")]
extern "C" {
    #[wasm_bindgen(catch, js_name = fetchText)]
    fn fetch_text(method: &str, url: &str, headers: &str, body: Option<&str>, signal: &JsValue) -> Result<Promise, JsValue>;
}

/// Header pairs as the one string `src/js/http.js` splits: "name\nvalue\n...".
/// A newline in a name or value (which no valid header has) is refused.
pub(crate) fn header_list<'h>(headers: impl IntoIterator<Item = (&'h str, &'h str)>) -> Result<String, String> {
    let mut list = String::new();
    for (name, value) in headers {
        if name.contains('\n') || value.contains('\n') {
            return Err(format!("the {name} header holds a newline"));
        }
        if !list.is_empty() {
            list.push('\n');
        }
        list.push_str(name);
        list.push('\n');
        list.push_str(value);
    }
    Ok(list)
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
    let headers = header_list(headers.iter().copied())?;
    let body = match body.filter(|body| !body.is_empty()) {
        Some(body) => Some(std::str::from_utf8(body).map_err(|_| "the request body is not UTF-8 text".to_owned())?),
        None => None,
    };
    let abort = if abortable { Some(AbortOnDrop(web_sys::AbortController::new().map_err(describe)?)) } else { None };
    let signal: JsValue = abort.as_ref().map_or(JsValue::UNDEFINED, |abort| abort.0.signal().into());
    let promise = fetch_text(method, url, &headers, body, &signal).map_err(describe)?;
    let answer = JsFuture::from(promise).await.map_err(describe)?;
    drop(abort);
    let answer = answer.as_string().ok_or_else(|| "the answer's body is not text".to_owned())?;
    let (status, text) = answer.split_once('\n').ok_or_else(|| "fetch gave no status".to_owned())?;
    let status = status.parse().map_err(|_| format!("fetch gave the status {status:?}"))?;
    Ok((status, text.to_owned()))
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
