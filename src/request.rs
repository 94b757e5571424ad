//! Each RPC request as plain data: function, URL, headers, JSON body.
//!
//! Built separately from being sent (see `client.rs`), so everything that
//! goes on the wire is unit-tested with no network. Argument names are the
//! SQL's (`docs/rpc.md`); optional arguments the caller left out are left
//! out of the body too, so the SQL `DEFAULT` applies (an explicit `null`
//! would override it).

use crate::error::CreditError;
use crate::types::{
    ChargeRequest, ChargeWithLimitRequest, ChargeWithLimitsRequest, CompleteRequest, GrantRequest, LimitRequest,
    RefundRequest, UserId,
};
use serde_json::{json, Map, Value};

/// Where the API is and how to authenticate: validated once, at construction.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    rest_url: String,
    service_role_key: String,
}

impl std::fmt::Debug for Config {
    /// The key is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("rest_url", &self.rest_url)
            .field("service_role_key", &"<redacted>")
            .finish()
    }
}

/// Keys longer than this are not JWTs (Supabase's are ~220 chars; new-style
/// `sb_secret_...` keys are shorter).
const SERVICE_ROLE_KEY_CHARS_MAX: usize = 4096;

impl Config {
    /// `url` is the project URL (`https://<ref>.supabase.co`,
    /// `http://127.0.0.1:54321`), with or without `/rest/v1`.
    ///
    /// ```
    /// use creditgate::Config;
    /// let config = Config::new("http://127.0.0.1:54321/", "key").unwrap();
    /// assert_eq!(config.rest_url(), "http://127.0.0.1:54321/rest/v1");
    /// let config = Config::new("https://abc.supabase.co/rest/v1", "key").unwrap();
    /// assert_eq!(config.rest_url(), "https://abc.supabase.co/rest/v1");
    /// ```
    pub fn new(url: &str, service_role_key: &str) -> Result<Self, CreditError> {
        Ok(Config {
            rest_url: rest_url(url)?,
            service_role_key: check_key(service_role_key)?,
        })
    }

    /// The PostgREST root, ending in `/rest/v1` (no trailing slash).
    pub fn rest_url(&self) -> &str {
        &self.rest_url
    }

    /// The project URL itself, without `/rest/v1` (no trailing slash).
    pub fn project_url(&self) -> &str {
        self.rest_url.strip_suffix("/rest/v1").unwrap_or(&self.rest_url)
    }

    /// The headers every request carries. `apikey` is what Supabase's API
    /// gateway checks; `Authorization` is what PostgREST takes the role
    /// from. A new-style secret key (`sb_secret_...`) is not a JWT: it goes
    /// in `apikey` only, and the gateway gives PostgREST the role for it.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("apikey", self.service_role_key.clone())];
        if !self.service_role_key.starts_with("sb_") {
            headers.push(("Authorization", format!("Bearer {}", self.service_role_key)));
        }
        headers.push(("Accept", "application/json".to_owned()));
        headers.push(("Content-Type", "application/json".to_owned()));
        headers
    }
}

fn rest_url(url: &str) -> Result<String, CreditError> {
    let invalid = |why: &str| {
        CreditError::invalid_argument(
            "url",
            format!("url must be the project's http(s) URL, like https://<ref>.supabase.co: {why}"),
        )
    };
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let parsed = url::Url::parse(trimmed).map_err(|error| invalid(&error.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(&format!("the scheme is {}", parsed.scheme())));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("it has a query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "it carries credentials; pass the key as serviceRoleKey",
        ));
    }
    let base = parsed.as_str().trim_end_matches('/');
    if base.ends_with("/rest/v1") {
        Ok(base.to_owned())
    } else {
        Ok(format!("{base}/rest/v1"))
    }
}

fn check_key(key: &str) -> Result<String, CreditError> {
    let field = "serviceRoleKey";
    if key.is_empty() {
        return Err(CreditError::invalid_argument(
            field,
            "serviceRoleKey must not be empty",
        ));
    }
    if key.chars().count() > SERVICE_ROLE_KEY_CHARS_MAX {
        return Err(CreditError::invalid_argument(
            field,
            format!("serviceRoleKey must be at most {SERVICE_ROLE_KEY_CHARS_MAX} characters"),
        ));
    }
    // It goes in a header: visible ASCII only (this also keeps the postgrest
    // crate's header insertion, which panics on invalid values, safe).
    if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(CreditError::invalid_argument(
            field,
            "serviceRoleKey must be printable ASCII with no spaces (a JWT or an sb_secret_ key)",
        ));
    }
    Ok(key.to_owned())
}

/// One RPC call, ready to send: `POST {url}` with `headers` and `body`.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcRequest {
    /// The SQL function's name.
    pub function: &'static str,
    /// `{rest_url}/rpc/{function}`.
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    /// Named arguments, as PostgREST takes them.
    pub body: Value,
}

impl RpcRequest {
    fn new(config: &Config, function: &'static str, body: Map<String, Value>) -> Self {
        RpcRequest {
            function,
            url: format!("{}/rpc/{function}", config.rest_url()),
            headers: config.headers(),
            body: Value::Object(body),
        }
    }

    /// HTTP method: PostgREST runs a volatile function only for POST.
    pub fn method(&self) -> &'static str {
        "POST"
    }
}

/// Builds a body from `(name, value)` pairs, leaving out `None`s.
fn args<const N: usize>(pairs: [(&str, Option<Value>); N]) -> Map<String, Value> {
    pairs
        .into_iter()
        .filter_map(|(name, value)| value.map(|value| (name.to_owned(), value)))
        .collect()
}

/// `charge_credits`: the full form, with replay flag and hold expiry.
pub fn charge(config: &Config, request: &ChargeRequest) -> RpcRequest {
    RpcRequest::new(config, "charge_credits", charge_args(request))
}

fn charge_args(request: &ChargeRequest) -> Map<String, Value> {
    args([
        ("p_user_id", Some(json!(request.user_id.to_string()))),
        ("p_operation_type", Some(json!(request.operation.as_str()))),
        ("p_cost", Some(json!(request.cost.get()))),
        (
            "p_idempotency_key",
            request
                .idempotency_key
                .as_ref()
                .map(|key| json!(key.as_str())),
        ),
        (
            "p_metadata",
            request
                .metadata
                .as_ref()
                .map(|metadata| Value::Object(metadata.as_map().clone())),
        ),
        (
            "p_hold_seconds",
            request.hold_seconds.map(|seconds| json!(seconds.get())),
        ),
    ])
}

/// `complete_generation_job`.
pub fn complete(config: &Config, request: &CompleteRequest) -> RpcRequest {
    let body = args([
        ("p_job_id", Some(json!(request.job_id.to_string()))),
        (
            "p_result_url",
            request.result_url.as_ref().map(|url| json!(url.as_str())),
        ),
        (
            "p_actual_cost",
            request.actual_cost.map(|cost| json!(cost.get())),
        ),
    ]);
    RpcRequest::new(config, "complete_generation_job", body)
}

/// `refund_credits`. `p_amount` has no default in SQL; `null` means "the
/// whole hold", the only refund this client offers.
pub fn refund(config: &Config, request: &RefundRequest) -> RpcRequest {
    let body = args([
        ("p_user_id", Some(json!(request.user_id.to_string()))),
        ("p_job_id", Some(json!(request.job_id.to_string()))),
        ("p_amount", Some(Value::Null)),
        ("p_reason", Some(json!(request.reason.as_str()))),
    ]);
    RpcRequest::new(config, "refund_credits", body)
}

/// `grant_credits`.
pub fn grant(config: &Config, request: &GrantRequest) -> RpcRequest {
    let body = args([
        ("p_user_id", Some(json!(request.user_id.to_string()))),
        ("p_amount", Some(json!(request.amount.get()))),
        ("p_reason", Some(json!(request.reason.as_str()))),
        (
            "p_idempotency_key",
            request
                .idempotency_key
                .as_ref()
                .map(|key| json!(key.as_str())),
        ),
        (
            "p_metadata",
            request
                .metadata
                .as_ref()
                .map(|metadata| Value::Object(metadata.as_map().clone())),
        ),
    ]);
    RpcRequest::new(config, "grant_credits", body)
}

/// `get_credit_balance`.
pub fn balance(config: &Config, user_id: &UserId) -> RpcRequest {
    RpcRequest::new(
        config,
        "get_credit_balance",
        args([("p_user_id", Some(json!(user_id.to_string())))]),
    )
}

/// `apply_rate_limit`.
pub fn limit(config: &Config, request: &LimitRequest) -> RpcRequest {
    let body = args([
        ("p_key", Some(json!(request.key.as_str()))),
        ("p_limit", Some(json!(request.limit.get()))),
        (
            "p_window_seconds",
            Some(json!(request.window_seconds.get())),
        ),
        ("p_cost", Some(json!(request.cost.get()))),
    ]);
    RpcRequest::new(config, "apply_rate_limit", body)
}

/// `charge_credits_with_limit`: the limit and the charge in one transaction.
pub fn charge_with_limit(config: &Config, request: &ChargeWithLimitRequest) -> RpcRequest {
    let mut body = charge_args(&request.charge);
    body.extend(args([
        ("p_limit_key", Some(json!(request.limit.key.as_str()))),
        ("p_limit", Some(json!(request.limit.limit.get()))),
        (
            "p_window_seconds",
            Some(json!(request.limit.window_seconds.get())),
        ),
        ("p_limit_cost", Some(json!(request.limit.cost.get()))),
    ]));
    RpcRequest::new(config, "charge_credits_with_limit", body)
}

/// `charge_credits_with_limits`: the charge's arguments and `p_limits`.
pub fn charge_with_limits(config: &Config, request: &ChargeWithLimitsRequest) -> RpcRequest {
    let mut body = charge_args(&request.charge);
    let limits: Vec<Value> = request
        .limits
        .iter()
        .map(|limit| {
            json!({"key": limit.key.as_str(), "limit": limit.limit.get(),
                   "window_seconds": limit.window_seconds.get(), "cost": limit.cost.get()})
        })
        .collect();
    body.extend(args([("p_limits", Some(Value::Array(limits)))]));
    RpcRequest::new(config, "charge_credits_with_limits", body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    const USER: &str = "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e";
    const JOB: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";
    const KEY: &str = "eyJhbGciOiJIUzI1NiJ9.e30.sig";

    fn config() -> Config {
        Config::new("http://127.0.0.1:54321", KEY).expect("valid config")
    }

    fn header<'r>(request: &'r RpcRequest, name: &str) -> Option<&'r str> {
        request
            .headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    #[test]
    fn urls_are_accepted_with_or_without_rest_v1() {
        let cases = [
            ("http://127.0.0.1:54321", "http://127.0.0.1:54321/rest/v1"),
            ("http://127.0.0.1:54321/", "http://127.0.0.1:54321/rest/v1"),
            (
                "http://127.0.0.1:54321/rest/v1",
                "http://127.0.0.1:54321/rest/v1",
            ),
            (
                "http://127.0.0.1:54321/rest/v1/",
                "http://127.0.0.1:54321/rest/v1",
            ),
            (
                "  https://ABC.supabase.co  ",
                "https://abc.supabase.co/rest/v1",
            ),
            (
                "https://proxy.example/tenant",
                "https://proxy.example/tenant/rest/v1",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                Config::new(input, KEY).expect(input).rest_url(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn bad_urls_are_refused_naming_url() {
        for bad in [
            "",
            "   ",
            "127.0.0.1:54321",
            "ftp://example.com",
            "http://",
            "https://x.supabase.co?x=1",
            "https://x.supabase.co#frag",
            "https://user:pw@x.supabase.co",
            "not a url",
        ] {
            let error = Config::new(bad, KEY).expect_err(bad);
            assert_eq!(error.code(), ErrorCode::InvalidArgument, "{bad}");
            assert_eq!(error.details()["field"], "url", "{bad}");
        }
    }

    #[test]
    fn bad_keys_are_refused_naming_the_key() {
        let too_long = "k".repeat(SERVICE_ROLE_KEY_CHARS_MAX + 1);
        for bad in ["", "has space", "new\nline", "naïve", too_long.as_str()] {
            let error = Config::new("http://localhost", bad).expect_err("bad key");
            assert_eq!(error.details()["field"], "serviceRoleKey");
        }
        assert!(Config::new("http://localhost", &"k".repeat(SERVICE_ROLE_KEY_CHARS_MAX)).is_ok());
    }

    #[test]
    fn the_key_never_appears_in_debug_output() {
        let printed = format!("{:?}", config());
        assert!(!printed.contains(KEY), "{printed}");
        assert!(printed.contains("<redacted>"));
    }

    #[test]
    fn every_request_carries_apikey_and_bearer() {
        let request = balance(&config(), &UserId::parse("userId", USER).expect("uuid"));
        assert_eq!(request.method(), "POST");
        assert_eq!(
            request.url,
            "http://127.0.0.1:54321/rest/v1/rpc/get_credit_balance"
        );
        assert_eq!(header(&request, "apikey"), Some(KEY));
        assert_eq!(
            header(&request, "Authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
        assert_eq!(header(&request, "Content-Type"), Some("application/json"));
        assert_eq!(header(&request, "Accept"), Some("application/json"));
        assert_eq!(request.body, json!({"p_user_id": USER}));
    }

    #[test]
    fn a_new_style_secret_key_goes_in_apikey_only() {
        let config = Config::new("https://abc.supabase.co", "sb_secret_abc123").expect("valid");
        let request = balance(&config, &UserId::parse("userId", USER).expect("uuid"));
        assert_eq!(header(&request, "apikey"), Some("sb_secret_abc123"));
        assert_eq!(header(&request, "Authorization"), None);
        assert_eq!(header(&request, "Content-Type"), Some("application/json"));
    }

    #[test]
    fn a_minimal_charge_leaves_defaults_to_sql() {
        let request =
            ChargeRequest::from_json(&json!({"userId": USER, "operation": "image", "cost": 5}))
                .expect("valid");
        let rpc = charge(&config(), &request);
        assert_eq!(rpc.function, "charge_credits");
        assert_eq!(rpc.url, "http://127.0.0.1:54321/rest/v1/rpc/charge_credits");
        assert_eq!(
            rpc.body,
            json!({"p_user_id": USER, "p_operation_type": "image", "p_cost": 5})
        );
    }

    #[test]
    fn a_full_charge_sends_every_argument() {
        let request = ChargeRequest::from_json(&json!({
            "userId": USER, "operation": "image", "cost": 5, "idempotencyKey": "k-1",
            "metadata": {"model": "flux", "n": 2}, "holdSeconds": 120
        }))
        .expect("valid");
        assert_eq!(
            charge(&config(), &request).body,
            json!({"p_user_id": USER, "p_operation_type": "image", "p_cost": 5, "p_idempotency_key": "k-1",
                   "p_metadata": {"model": "flux", "n": 2}, "p_hold_seconds": 120})
        );
    }

    #[test]
    fn complete_sends_only_what_was_given() {
        let bare = CompleteRequest::from_json(&json!({"jobId": JOB})).expect("valid");
        let rpc = complete(&config(), &bare);
        assert_eq!(
            rpc.url,
            "http://127.0.0.1:54321/rest/v1/rpc/complete_generation_job"
        );
        assert_eq!(rpc.body, json!({"p_job_id": JOB}));
        let full = CompleteRequest::from_json(
            &json!({"jobId": JOB, "resultUrl": "https://r/1.png", "actualCost": 3}),
        )
        .expect("valid");
        assert_eq!(
            complete(&config(), &full).body,
            json!({"p_job_id": JOB, "p_result_url": "https://r/1.png", "p_actual_cost": 3})
        );
    }

    #[test]
    fn refund_sends_a_null_amount_for_the_whole_hold() {
        let request =
            RefundRequest::from_json(&json!({"userId": USER, "jobId": JOB, "reason": "failed"}))
                .expect("valid");
        let rpc = refund(&config(), &request);
        assert_eq!(rpc.function, "refund_credits");
        assert_eq!(
            rpc.body,
            json!({"p_user_id": USER, "p_job_id": JOB, "p_amount": null, "p_reason": "failed"})
        );
        // The key is sent with an explicit null (PostgREST needs every named
        // argument that has no default), whatever the map's key order.
        let sent: serde_json::Value = serde_json::from_str(&rpc.body.to_string()).expect("JSON");
        assert_eq!(sent.get("p_amount"), Some(&serde_json::Value::Null));
    }

    #[test]
    fn grant_sends_amount_reason_and_key() {
        let request = GrantRequest::from_json(&json!({
            "userId": USER, "amount": 100, "reason": "stripe:evt_1", "idempotencyKey": "evt_1"
        }))
        .expect("valid");
        let rpc = grant(&config(), &request);
        assert_eq!(rpc.function, "grant_credits");
        assert_eq!(
            rpc.body,
            json!({"p_user_id": USER, "p_amount": 100, "p_reason": "stripe:evt_1", "p_idempotency_key": "evt_1"})
        );
    }

    #[test]
    fn limit_always_sends_its_cost() {
        let request = LimitRequest::from_json(
            &json!({"key": "ip:1.2.3.4", "limit": 5, "windowSeconds": 3600}),
        )
        .expect("valid");
        let rpc = limit(&config(), &request);
        assert_eq!(
            rpc.url,
            "http://127.0.0.1:54321/rest/v1/rpc/apply_rate_limit"
        );
        assert_eq!(
            rpc.body,
            json!({"p_key": "ip:1.2.3.4", "p_limit": 5, "p_window_seconds": 3600, "p_cost": 1})
        );
    }

    #[test]
    fn charge_with_limit_merges_both_argument_lists() {
        let request = ChargeWithLimitRequest::from_json(&json!({
            "userId": USER, "operation": "image", "cost": 5, "key": "user:1", "limit": 10,
            "windowSeconds": 60, "limitCost": 2, "holdSeconds": 30
        }))
        .expect("valid");
        let rpc = charge_with_limit(&config(), &request);
        assert_eq!(rpc.function, "charge_credits_with_limit");
        assert_eq!(
            rpc.body,
            json!({"p_user_id": USER, "p_operation_type": "image", "p_cost": 5, "p_hold_seconds": 30,
                   "p_limit_key": "user:1", "p_limit": 10, "p_window_seconds": 60, "p_limit_cost": 2})
        );
    }

    #[test]
    fn a_base_url_with_rest_v1_builds_the_same_request() {
        let with = Config::new("http://127.0.0.1:54321/rest/v1/", KEY).expect("valid");
        let user = UserId::parse("userId", USER).expect("uuid");
        assert_eq!(balance(&with, &user), balance(&config(), &user));
    }
}
