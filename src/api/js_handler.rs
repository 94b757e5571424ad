//! The API's JS surface: `createHandler(env)` once at module level, then
//! `handle(request)` per request (a JS `Request` in, a `Response` out).
//!
//! Only copying happens here: the request's method, URL, the headers the
//! API reads (`HEADERS_READ`) and its body into an [`ApiRequest`]; the
//! [`ApiResponse`] back into a `Response`. The log line goes to
//! `console.log` (Supabase's function logs). Nothing here panics on any
//! input: a panic would kill the instance for every later request.

use super::http::{ApiRequest, ApiResponse, BODY_BYTES_MAX, HEADERS_READ};
use super::stripe::{StripeApi, STRIPE_BODY_BYTES_MAX, STRIPE_HEADERS_READ};
use super::Api;
use crate::js_error::to_js_error;
use js_sys::{Array, Function, Object, Promise, Reflect, Uint8Array};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::future::Future;
use std::rc::Rc;
use std::task::Poll;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{future_to_promise, JsFuture};

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** The function's environment: `Deno.env.toObject()`. See the README for the variables read. */
export type CreditsEnv = { [name: string]: string | undefined };
"#;

#[wasm_bindgen(module = "/src/js/http.js")]
extern "C" {
    #[wasm_bindgen(js_name = requestHead)]
    fn request_head(request: &web_sys::Request, names: &str) -> String;
    #[wasm_bindgen(catch, js_name = makeResponse)]
    fn make_response(status: u16, headers: &str, body: Option<&str>) -> Result<JsValue, JsValue>;
}

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = console, js_name = log)]
    fn console_log(line: &str);
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: i32) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(id: &JsValue);
}

thread_local! {
    /// The handler `createHandler` built last, for the free `handle`.
    static CURRENT: RefCell<Option<Rc<Api>>> = const { RefCell::new(None) };
}

/// The credits API for one function instance. Build it once, at module
/// level, with `createHandler(Deno.env.toObject())`.
#[wasm_bindgen(js_name = CreditsHandler)]
pub struct JsCreditsHandler {
    api: Rc<Api>,
}

#[wasm_bindgen(js_class = CreditsHandler)]
impl JsCreditsHandler {
    /// Answers one request. Never rejects: every failure is a JSON error response.
    #[wasm_bindgen(unchecked_return_type = "Promise<Response>")]
    pub fn handle(&self, request: web_sys::Request) -> Promise {
        respond(Rc::clone(&self.api), request)
    }
}

/// Builds the API from the function's environment variables and makes it
/// the one `handle` uses. Throws a `CreditError` (`invalid_argument`, naming
/// the variable in `details.variable`) if the configuration is malformed.
#[wasm_bindgen(js_name = createHandler)]
pub fn create_handler(
    #[wasm_bindgen(unchecked_param_type = "CreditsEnv")] env: JsValue,
) -> Result<JsCreditsHandler, JsValue> {
    let api = Rc::new(Api::from_env(&env_map(&env)).map_err(to_js_error)?);
    CURRENT.with(|current| *current.borrow_mut() = Some(Rc::clone(&api)));
    Ok(JsCreditsHandler { api })
}

/// Answers one request with the handler `createHandler` built.
#[wasm_bindgen(unchecked_return_type = "Promise<Response>")]
pub fn handle(request: web_sys::Request) -> Promise {
    match CURRENT.with(|current| current.borrow().clone()) {
        Some(api) => respond(api, request),
        None => future_to_promise(async {
            let body = r#"{"error":{"code":"upstream","message":"the function calls handle() before createHandler(env)","details":{}}}"#;
            to_response(&ApiResponse { status: 500, headers: vec![("content-type".into(), "application/json".into())], body: body.into() })
        }),
    }
}

/// The `stripe-webhook` function's handler: Stripe events in, credits
/// granted and revoked exactly once (`stripe.rs`).
#[wasm_bindgen(js_name = StripeHandler)]
pub struct JsStripeHandler {
    api: Rc<StripeApi>,
}

#[wasm_bindgen(js_class = StripeHandler)]
impl JsStripeHandler {
    /// Answers one delivery (the raw body is verified against
    /// `Stripe-Signature` before anything is parsed). Never rejects.
    #[wasm_bindgen(unchecked_return_type = "Promise<Response>")]
    pub fn handle(&self, request: web_sys::Request) -> Promise {
        let api = Rc::clone(&self.api);
        future_to_promise(async move {
            let request = match read_request(&request, &STRIPE_HEADERS_READ, STRIPE_BODY_BYTES_MAX).await {
                Ok(request) => request,
                Err(response) => return to_response(&response),
            };
            let handled = api.handle(request).await;
            console_log(&handled.log);
            to_response(&handled.response)
        })
    }
}

/// Builds the Stripe webhook handler from the function's environment
/// (`SUPABASE_URL`, `SUPABASE_SERVICE_ROLE_KEY`, `STRIPE_WEBHOOK_SECRET` /
/// `STRIPE_WEBHOOK_SECRETS`, `CREDITGATE_STRIPE_PRICES`,
/// `CREDITGATE_STRIPE_PLANS`). Throws a `CreditError` (`invalid_argument`,
/// `details.variable`) for a malformed setting.
#[wasm_bindgen(js_name = createStripeHandler)]
pub fn create_stripe_handler(
    #[wasm_bindgen(unchecked_param_type = "CreditsEnv")] env: JsValue,
) -> Result<JsStripeHandler, JsValue> {
    let api = StripeApi::from_env(&env_map(&env)).map_err(to_js_error)?;
    Ok(JsStripeHandler { api: Rc::new(api) })
}

fn respond(api: Rc<Api>, request: web_sys::Request) -> Promise {
    future_to_promise(async move {
        let request = match read_request(&request, &HEADERS_READ, BODY_BYTES_MAX).await {
            Ok(request) => request,
            Err(response) => return to_response(&response),
        };
        let handled = api.handle(request).await;
        console_log(&handled.log);
        to_response(&handled.response)
    })
}

/// The environment object as strings; other values are skipped.
fn env_map(env: &JsValue) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    if !env.is_object() {
        return map;
    }
    for entry in Object::entries(&Object::from(env.clone())).iter() {
        let pair = Array::from(&entry);
        if let (Some(name), Some(value)) = (pair.get(0).as_string(), pair.get(1).as_string()) {
            map.insert(name, value);
        }
    }
    map
}

/// Copies what the API reads from a JS `Request`. A body over the bound is
/// refused by its `Content-Length` before it is read, and otherwise while it
/// is read: the stream is cancelled at the first chunk past the bound, so a
/// streamed body without a length is never buffered whole. All of this
/// happens before any token check or database call.
async fn read_request(request: &web_sys::Request, headers_read: &[&str], body_bytes_max: usize) -> Result<ApiRequest, ApiResponse> {
    // Method, URL and the headers read, in one crossing (src/js/http.js).
    let head = request_head(request, &headers_read.join("\n"));
    let mut lines = head.split('\n');
    let (verb, url) = (lines.next().unwrap_or_default(), lines.next().unwrap_or_default());
    let mut api_request = ApiRequest::new(verb, url);
    for (name, line) in headers_read.iter().copied().zip(lines) {
        if let Some(value) = line.strip_prefix('+') {
            api_request = api_request.with_header(name, value);
        }
    }
    let too_large = || super::ApiError::payload_too_large(body_bytes_max).into_response();
    let declared = api_request.header("content-length").and_then(|length| length.trim().parse::<u64>().ok());
    if declared.is_some_and(|length| length > body_bytes_max as u64) {
        return Err(too_large());
    }
    if matches!(api_request.method.as_str(), "GET" | "HEAD" | "OPTIONS") {
        return Ok(api_request);
    }
    let Some(stream) = request.body() else { return Ok(api_request) };
    let unreadable = || super::ApiError::invalid("body", "the request body could not be read").into_response();
    if declared.is_some() {
        // A declared length within the bound (the runtime's HTTP server
        // holds the body to it): one read of the whole body, not a loop of
        // reader promises. The stream is the path for a body of no length.
        let buffer = JsFuture::from(request.array_buffer().map_err(|_| unreadable())?).await.map_err(|_| unreadable())?;
        let bytes = Uint8Array::new(&buffer);
        if bytes.length() as usize > body_bytes_max {
            return Err(too_large());
        }
        return Ok(api_request.with_body(bytes.to_vec()));
    }
    let reader: Object = stream.get_reader().dyn_into().map_err(|_| unreadable())?;
    let read = method(&reader, "read").ok_or_else(unreadable)?;
    let mut body: Vec<u8> = Vec::new();
    loop {
        let promise: Promise = read.call0(&reader).and_then(JsCast::dyn_into).map_err(|_| unreadable())?;
        let chunk = JsFuture::from(promise).await.map_err(|_| unreadable())?;
        if Reflect::get(&chunk, &JsValue::from_str("done")).ok().and_then(|done| done.as_bool()) == Some(true) {
            break;
        }
        let value = Reflect::get(&chunk, &JsValue::from_str("value")).map_err(|_| unreadable())?;
        let bytes: Uint8Array = value.dyn_into().map_err(|_| unreadable())?;
        if body.len() + bytes.length() as usize > body_bytes_max {
            if let Some(cancel) = method(&reader, "cancel") {
                let _ = cancel.call0(&reader);
            }
            return Err(too_large());
        }
        body.extend(bytes.to_vec());
    }
    Ok(api_request.with_body(body))
}

/// `object[name]` if it is a function.
fn method(object: &Object, name: &str) -> Option<Function> {
    Reflect::get(object, &JsValue::from_str(name)).ok()?.dyn_into().ok()
}

fn to_response(response: &ApiResponse) -> Result<JsValue, JsValue> {
    // The headers cross as one string (src/js/http.js).
    let headers = crate::fetch::header_list(response.headers.iter().map(|(name, value)| (name.as_str(), value.as_str())))
        .map_err(|why| JsValue::from(js_sys::Error::new(&why)))?;
    let body = (!response.body.is_empty() && response.status != 204).then_some(response.body.as_str());
    make_response(response.status, &headers, body)
}

/// A JS timer that is cleared when dropped, so a finished race leaves no
/// pending timer behind (Deno's test sanitizers would flag one).
struct Timer {
    id: JsValue,
    fired: JsFuture,
}

impl Timer {
    fn new(ms: u32) -> Timer {
        let mut id = JsValue::UNDEFINED;
        let delay = i32::try_from(ms).unwrap_or(i32::MAX);
        let promise = Promise::new(&mut |resolve, _reject| {
            id = set_timeout(&resolve, delay);
        });
        Timer { id, fired: JsFuture::from(promise) }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        clear_timeout(&self.id);
    }
}

/// Runs `work` for at most `ms`; `None` if the time ran out first (and
/// `work` is dropped: a reqwest `fetch` is aborted when its future is).
pub(crate) async fn with_timeout<F: Future>(work: F, ms: u32) -> Option<F::Output> {
    let mut timer = Timer::new(ms);
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(move |cx| {
        if let Poll::Ready(output) = work.as_mut().poll(cx) {
            return Poll::Ready(Some(output));
        }
        match std::pin::Pin::new(&mut timer.fired).poll(cx) {
            Poll::Ready(_) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    })
    .await
}
