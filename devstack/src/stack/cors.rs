//! CORS for everything the front proxy answers, in one place: browsers call
//! the API cross-origin (the demo page, supabase-js, the wasm tests), as on
//! Supabase, whose gateway allows any origin.

use super::front_proxy::Body;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;

const ALLOW_ORIGIN: &str = "*";
const ALLOW_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
/// supabase-js's headers, PostgREST's, and the function's `Idempotency-Key`.
const ALLOW_HEADERS: &str = "authorization, x-client-info, apikey, content-type, content-profile, accept-profile, prefer, range, idempotency-key, x-region";
/// How long a browser may keep a preflight's answer (seconds).
const MAX_AGE: &str = "3600";

/// `response` with `Access-Control-Allow-Origin`, unless the upstream set one.
pub(super) fn with_cors(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.entry("access-control-allow-origin").or_insert(ALLOW_ORIGIN.parse().expect("static header"));
    response
}

/// The answer to a CORS preflight (`OPTIONS`).
pub(super) fn preflight() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    let headers = response.headers_mut();
    for (name, value) in [
        ("access-control-allow-origin", ALLOW_ORIGIN),
        ("access-control-allow-methods", ALLOW_METHODS),
        ("access-control-allow-headers", ALLOW_HEADERS),
        ("access-control-max-age", MAX_AGE),
    ] {
        headers.insert(name, value.parse().expect("static header"));
    }
    response
}
