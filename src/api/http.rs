//! The HTTP request and response as plain data, independent of any runtime.
//!
//! The wasm layer (`wasm.rs`) copies a JS `Request` into an [`ApiRequest`]
//! and an [`ApiResponse`] into a JS `Response`; everything in between is
//! plain Rust that `cargo test` runs natively.

use serde_json::Value;

/// The headers the API reads. The wasm layer copies only these from a JS
/// `Request`: nothing else is looked at, so nothing else is carried.
pub const HEADERS_READ: [&str; 6] =
    ["authorization", "apikey", "idempotency-key", "x-forwarded-for", "content-length", "content-type"];

/// Request bodies above this are refused with 413 before they are parsed:
/// the largest valid body (a grant with 16 KiB of metadata) is well below it.
pub const BODY_BYTES_MAX: usize = 32 * 1024;

/// Header values longer than this are refused (a JWT is about 1 KiB).
pub const HEADER_CHARS_MAX: usize = 8 * 1024;

/// One incoming request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiRequest {
    /// Upper-case method: `GET`, `POST`, ...
    pub method: String,
    /// The URL path as the function received it (`/credits/charge`),
    /// percent-encoded as it came.
    pub path: String,
    /// The query string without `?` (empty when there is none).
    pub query: String,
    /// Header names in lower case, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ApiRequest {
    /// A request for `target`: a full URL (what `Request.url` holds) or a
    /// path with an optional query.
    ///
    /// ```
    /// use creditgate::api::ApiRequest;
    /// let request = ApiRequest::new("post", "http://127.0.0.1:54321/functions/v1/credits/ledger?limit=5");
    /// assert_eq!((request.method.as_str(), request.path.as_str(), request.query.as_str()),
    ///            ("POST", "/functions/v1/credits/ledger", "limit=5"));
    /// ```
    pub fn new(method: &str, target: &str) -> Self {
        let without_origin = match target.find("://") {
            Some(scheme_end) => {
                let rest = &target[scheme_end + 3..];
                rest.find(['/', '?']).map_or("", |start| &rest[start..])
            }
            None => target,
        };
        let without_fragment = without_origin.split('#').next().unwrap_or_default();
        let (path, query) = without_fragment.split_once('?').unwrap_or((without_fragment, ""));
        ApiRequest {
            method: method.to_ascii_uppercase(),
            path: if path.is_empty() { "/".to_owned() } else { path.to_owned() },
            query: query.to_owned(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Adds a header (the name is stored in lower case).
    pub fn with_header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_ascii_lowercase(), value.to_owned()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// One outgoing response. The body is always JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl ApiResponse {
    pub fn json(status: u16, body: &Value) -> Self {
        ApiResponse {
            status,
            headers: vec![("content-type".to_owned(), "application/json".to_owned())],
            body: body.to_string(),
        }
    }

    /// Sets a header, replacing any of the same name.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        let name = name.to_ascii_lowercase();
        self.headers.retain(|(key, _)| *key != name);
        self.headers.push((name, value.into()));
    }

    /// A header's value, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The body as JSON (it always is).
    pub fn json_body(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn targets_split_into_path_and_query() {
        let cases = [
            ("http://h:1/credits/charge", "/credits/charge", ""),
            ("https://x.supabase.co/functions/v1/credits/ledger?limit=5&before=9", "/functions/v1/credits/ledger", "limit=5&before=9"),
            ("/credits/balance", "/credits/balance", ""),
            ("/credits/balance?", "/credits/balance", ""),
            ("http://h:1", "/", ""),
            ("http://h:1?x=1", "/", "x=1"),
            ("/a#frag", "/a", ""),
            ("", "/", ""),
        ];
        for (target, path, query) in cases {
            let request = ApiRequest::new("get", target);
            assert_eq!(request.path, path, "{target}");
            assert_eq!(request.query, query, "{target}");
            assert_eq!(request.method, "GET");
        }
    }

    #[test]
    fn headers_are_found_by_any_case() {
        let request = ApiRequest::new("GET", "/").with_header("Idempotency-Key", "k1").with_header("idempotency-key", "k2");
        assert_eq!(request.header("IDEMPOTENCY-KEY"), Some("k1"));
        assert_eq!(request.header("authorization"), None);
    }

    #[test]
    fn responses_are_json_and_headers_replace() {
        let mut response = ApiResponse::json(402, &json!({"a": 1}));
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        response.set_header("Retry-After", "5");
        response.set_header("retry-after", "6");
        assert_eq!(response.header("retry-after"), Some("6"));
        assert_eq!(response.headers.iter().filter(|(name, _)| name == "retry-after").count(), 1);
        assert_eq!(response.json_body(), json!({"a": 1}));
    }
}
