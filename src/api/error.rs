//! The API's failures: docs/design.md's codes and statuses, as
//! `{"error": {"code", "message", "details"}}`.
//!
//! Every [`CreditError`] keeps its code and status. The HTTP layer adds
//! three codes of its own for what only HTTP can get wrong: a path that is
//! no route (`route_not_found`, 404), a method the route does not take
//! (`method_not_allowed`, 405, with `Allow`), and a body over the size bound
//! (`payload_too_large`, 413). Codes are only ever added, never renamed.

use super::http::ApiResponse;
use crate::error::{CreditError, ErrorCode};
use serde_json::{json, Map, Value};

/// A failure on its way to becoming a response.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub details: Map<String, Value>,
    /// Extra response headers (`Allow`, the RateLimit fields, `Retry-After`).
    pub headers: Vec<(String, String)>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: Map::new(), headers: Vec::new() }
    }

    pub fn from_code(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError::new(code.status(), code.as_str(), message)
    }

    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        ApiError::from(CreditError::invalid_argument(field, message))
    }

    pub fn unauthorized(message: impl Into<String>) -> Self {
        ApiError::from_code(ErrorCode::Unauthorized, message)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::from_code(ErrorCode::Forbidden, message)
    }

    pub fn route_not_found(path: &str) -> Self {
        ApiError::new(404, "route_not_found", "no such route").with_detail("path", cut(path, 200))
    }

    pub fn method_not_allowed(method: &str, allowed: &'static str) -> Self {
        let mut error = ApiError::new(405, "method_not_allowed", format!("this route does not take {}", cut(method, 20)))
            .with_detail("allow", allowed);
        error.headers.push(("allow".into(), allowed.into()));
        error
    }

    pub fn payload_too_large(bytes_max: usize) -> Self {
        ApiError::new(413, "payload_too_large", format!("the request body must be at most {bytes_max} bytes"))
            .with_detail("max", bytes_max as u64)
    }

    pub fn with_detail(mut self, name: &str, value: impl Into<Value>) -> Self {
        self.details.insert(name.to_owned(), value.into());
        self
    }

    pub fn with_headers(mut self, headers: Vec<(String, String)>) -> Self {
        self.headers.extend(headers);
        self
    }

    pub fn into_response(self) -> ApiResponse {
        let body = json!({"error": {"code": self.code, "message": self.message, "details": self.details}});
        let mut response = ApiResponse::json(self.status, &body);
        for (name, value) in self.headers {
            response.set_header(&name, value);
        }
        response
    }
}

impl From<CreditError> for ApiError {
    fn from(error: CreditError) -> Self {
        ApiError {
            status: error.status(),
            code: error.code().as_str(),
            message: error.message().to_owned(),
            details: error.details().clone(),
            headers: Vec::new(),
        }
    }
}

/// Text from a request, cut short for a message or detail.
pub fn cut(text: &str, chars_max: usize) -> String {
    if text.chars().count() <= chars_max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(chars_max).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_errors_keep_code_status_and_details() {
        let error = CreditError::new(ErrorCode::InsufficientCredits, "Insufficient credits: has 3 needs 10")
            .with_detail("balance", 3)
            .with_detail("needed", 10);
        let response = ApiError::from(error).into_response();
        assert_eq!(response.status, 402);
        assert_eq!(
            response.json_body(),
            json!({"error": {"code": "insufficient_credits", "message": "Insufficient credits: has 3 needs 10",
                             "details": {"balance": 3, "needed": 10}}})
        );
    }

    #[test]
    fn every_code_keeps_its_design_status() {
        for code in ErrorCode::ALL {
            let response = ApiError::from(CreditError::new(code, "x")).into_response();
            assert_eq!(response.status, code.status(), "{code}");
            assert_eq!(response.json_body()["error"]["code"], code.as_str());
            assert_ne!(response.status, 200);
        }
    }

    #[test]
    fn http_codes_have_their_statuses_and_allow() {
        let response = ApiError::method_not_allowed("DELETE", "GET").into_response();
        assert_eq!(response.status, 405);
        assert_eq!(response.header("allow"), Some("GET"));
        assert_eq!(response.json_body()["error"]["code"], "method_not_allowed");
        assert_eq!(ApiError::route_not_found("/x").into_response().status, 404);
        let too_large = ApiError::payload_too_large(10).into_response();
        assert_eq!(too_large.status, 413);
        assert_eq!(too_large.json_body()["error"]["details"]["max"], 10);
    }

    #[test]
    fn long_text_is_cut_on_char_boundaries() {
        assert_eq!(cut("ééé", 2), "éé…");
        assert_eq!(cut("abc", 3), "abc");
    }
}
