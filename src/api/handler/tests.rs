//! The handler with no database: everything decided before the network,
//! and what happens when the database cannot be reached (fail closed).
//! The same handler against a real stack is tested by tests/function and
//! tests/e2e.

use super::*;
use crate::api::auth::tests::{sign, SECRET, SERVICE_KEY, USER};
use serde_json::json;

const JOB: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

/// A port nothing listens on: every database call fails to connect.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

fn api(extra: &[(&str, &str)]) -> Api {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("SUPABASE_URL".into(), format!("http://127.0.0.1:{}", closed_port()));
    env.insert("SUPABASE_SERVICE_ROLE_KEY".into(), SERVICE_KEY.into());
    env.insert("CREDITGATE_JWT_SECRET".into(), SECRET.into());
    for (name, value) in extra {
        env.insert((*name).into(), (*value).into());
    }
    Api::from_env(&env).expect("valid settings")
}

fn user_request(method: &str, path: &str, body: &str) -> ApiRequest {
    let token = live_user_token();
    ApiRequest::new(method, path).with_header("Authorization", &format!("Bearer {token}")).with_body(body)
}

/// A user token valid now (the auth tests' tokens are for a fixed clock).
fn live_user_token() -> String {
    let now = (crate::api::now_ms() / 1000.0) as i64;
    sign(&json!({"sub": USER, "role": "authenticated", "aud": "authenticated", "exp": now + 600}), SECRET, "HS256")
}

fn service_request(method: &str, path: &str, body: &str) -> ApiRequest {
    ApiRequest::new(method, path).with_header("Authorization", &format!("Bearer {SERVICE_KEY}")).with_body(body)
}

fn error_of(handled: &Handled) -> (u16, String) {
    let body = handled.response.json_body();
    (handled.response.status, body["error"]["code"].as_str().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn unknown_routes_and_methods() {
    let api = api(&[]);
    let handled = api.handle(user_request("GET", "/credits/nope", "")).await;
    assert_eq!(error_of(&handled), (404, "route_not_found".into()));
    let handled = api.handle(user_request("GET", "/credits/charge", "")).await;
    assert_eq!(error_of(&handled), (405, "method_not_allowed".into()));
    assert_eq!(handled.response.header("allow"), Some("POST"));
}

#[tokio::test]
async fn who_may_call_what() {
    let api = api(&[]);
    let anon = sign(&json!({"role": "anon", "exp": 4_000_000_000_i64}), SECRET, "HS256");
    let expired = sign(&json!({"sub": USER, "role": "authenticated", "exp": 1000}), SECRET, "HS256");
    let as_anon = |method: &str, path: &str| {
        ApiRequest::new(method, path).with_header("Authorization", &format!("Bearer {anon}"))
    };
    let cases = [
        (ApiRequest::new("GET", "/credits/balance"), 401, "unauthorized"),
        (as_anon("GET", "/credits/balance"), 401, "unauthorized"),
        (as_anon("POST", "/credits/grant"), 403, "forbidden"),
        (service_request("GET", "/credits/balance", ""), 403, "forbidden"),
        (service_request("POST", "/credits/charge", r#"{"operation": "image"}"#), 403, "forbidden"),
        (user_request("POST", "/credits/grant", "{}"), 403, "forbidden"),
        (user_request("POST", &format!("/credits/jobs/{JOB}/complete"), ""), 403, "forbidden"),
        (user_request("POST", &format!("/credits/jobs/{JOB}/refund"), ""), 403, "forbidden"),
        (
            ApiRequest::new("GET", "/credits/balance").with_header("Authorization", &format!("Bearer {expired}")),
            401,
            "unauthorized",
        ),
    ];
    for (request, status, code) in cases {
        let label = format!("{} {}", request.method, request.path);
        assert_eq!(error_of(&api.handle(request).await), (status, code.to_owned()), "{label}");
    }
}

#[tokio::test]
async fn invalid_requests_are_400_before_any_network() {
    // The database is unreachable: a 400 proves nothing was sent.
    let api = api(&[("GENERATOR_URL", "http://127.0.0.1:9/gen")]);
    let cases = [
        user_request("POST", "/credits/charge", "{"),
        user_request("POST", "/credits/charge", r#"{"operation": "image", "cost": 1}"#),
        user_request("POST", "/credits/charge", r#"{"operation": "video"}"#),
        user_request("POST", "/credits/charge", r#"{"operation": ["image"]}"#),
        user_request("POST", "/credits/charge", r#"{"operation": "image"}"#).with_header("Idempotency-Key", &"k".repeat(256)),
        user_request("POST", "/credits/generate", r#"{"prompt": ""}"#),
        user_request("POST", "/credits/generate", r#"{"prompt": "x", "operation": "video"}"#),
        user_request("GET", "/credits/jobs/not-a-uuid", ""),
        user_request("GET", "/credits/ledger?limit=1000", ""),
        user_request("GET", "/credits/ledger?before=-1", ""),
        user_request("GET", "/credits/balance?user=x", ""),
        service_request("POST", "/credits/grant", r#"{"userId": "x", "amount": 1, "reason": "r"}"#),
        service_request("POST", "/credits/grant", &format!(r#"{{"userId": "{USER}", "amount": 1e400, "reason": "r"}}"#)),
        service_request("POST", &format!("/credits/jobs/{JOB}/complete"), r#"{"actualCost": -1}"#),
    ];
    for request in cases {
        let label = format!("{} {} {}", request.method, request.path, String::from_utf8_lossy(&request.body));
        let handled = api.handle(request).await;
        assert_eq!(error_of(&handled), (400, "invalid_argument".into()), "{label}: {}", handled.response.body);
        assert!(handled.response.json_body()["error"]["details"]["field"].is_string(), "{label}");
    }
    let huge = "x".repeat(crate::api::BODY_BYTES_MAX + 1);
    let handled = api.handle(user_request("POST", "/credits/charge", &huge)).await;
    assert_eq!(error_of(&handled), (413, "payload_too_large".into()));
}

#[tokio::test]
async fn paid_routes_fail_closed_without_the_database() {
    for limits in [vec![], vec![("CREDITGATE_IP_LIMIT", "off"), ("CREDITGATE_USER_LIMIT", "off")]] {
        let api = api(&limits);
        let handled = api.handle(user_request("POST", "/credits/charge", r#"{"operation": "image"}"#)).await;
        assert_eq!(error_of(&handled), (503, "network".into()), "{limits:?}");
    }
    let api = api(&[("GENERATOR_URL", "http://127.0.0.1:9/gen")]);
    let handled = api.handle(user_request("POST", "/credits/generate", r#"{"prompt": "a cat"}"#)).await;
    assert_eq!(error_of(&handled), (503, "network".into()));
    let handled = api.handle(user_request("GET", "/credits/balance", "")).await;
    assert_eq!(error_of(&handled), (503, "network".into()));
    let handled = api.handle(user_request("GET", "/credits/ledger", "")).await;
    assert_eq!(error_of(&handled), (503, "network".into()));
}

#[tokio::test]
async fn generate_without_a_generator_refuses_before_charging() {
    let handled = api(&[]).handle(user_request("POST", "/credits/generate", r#"{"prompt": "a cat"}"#)).await;
    assert_eq!(error_of(&handled), (502, "upstream".into()));
    assert_eq!(handled.response.json_body()["error"]["details"]["cause"], "generator_not_configured");
}

#[tokio::test]
async fn every_response_has_cors_and_a_log_line_without_secrets() {
    let api = api(&[]);
    let token = live_user_token();
    let request = ApiRequest::new("POST", "/functions/v1/credits/charge")
        .with_header("Authorization", &format!("Bearer {token}"))
        .with_body(r#"{"operation": "image", "metadata": {"secret": "prompt text"}}"#);
    let handled = api.handle(request).await;
    assert_eq!(handled.response.header("access-control-allow-origin"), Some("*"));
    assert!(handled.response.header("access-control-expose-headers").is_some_and(|v| v.contains("retry-after")));
    let log: Value = serde_json::from_str(&handled.log).expect("one JSON line");
    assert_eq!(log["route"], "/charge");
    assert_eq!(log["status"], 503);
    assert_eq!(log["code"], "network");
    assert_eq!(log["user"], USER);
    assert!(!handled.log.contains(&token) && !handled.log.contains("prompt text") && !handled.log.contains(SERVICE_KEY));
    let preflight = api.handle(ApiRequest::new("OPTIONS", "/credits/charge")).await;
    assert_eq!(preflight.response.status, 204);
    assert!(preflight.response.header("access-control-allow-headers").is_some_and(|v| v.contains("idempotency-key")));
}

#[test]
fn the_client_is_the_hop_the_trusted_proxy_appended() {
    let request = |value: &str| ApiRequest::new("GET", "/").with_header("X-Forwarded-For", value);
    // What the client wrote (left) never counts: the proxy's hop (right) does.
    assert_eq!(client_ip(&request("203.0.113.7, 198.51.100.9"), 1).as_deref(), Some("198.51.100.9"));
    for spoof in 1..4 {
        let spoofed = request(&format!("203.0.113.{spoof}, 198.51.100.9"));
        assert_eq!(client_ip(&spoofed, 1).as_deref(), Some("198.51.100.9"), "a fresh bucket per spoofed hop");
    }
    // Behind one more trusted proxy, the second from the right.
    assert_eq!(client_ip(&request("6.6.6.6, 198.51.100.9, 10.0.0.2"), 2).as_deref(), Some("198.51.100.9"));
    assert_eq!(client_ip(&request("198.51.100.9"), 2), None, "fewer hops than trusted proxies: no address");
    // Several headers are one list.
    let two = ApiRequest::new("GET", "/").with_header("X-Forwarded-For", "6.6.6.6").with_header("x-forwarded-for", "198.51.100.9");
    assert_eq!(client_ip(&two, 1).as_deref(), Some("198.51.100.9"));
    // IPv6 by /64; IPv4-mapped as IPv4; ports dropped.
    assert_eq!(client_ip(&request("2001:DB8:1:2:aaaa::1"), 1).as_deref(), Some("2001:db8:1:2::/64"));
    assert_eq!(client_ip(&request("2001:db8:1:2:ffff:ffff:ffff:ffff"), 1).as_deref(), Some("2001:db8:1:2::/64"));
    assert_ne!(client_ip(&request("2001:db8:1:3::1"), 1), client_ip(&request("2001:db8:1:2::1"), 1));
    assert_eq!(client_ip(&request("::ffff:198.51.100.9"), 1).as_deref(), Some("198.51.100.9"));
    assert_eq!(client_ip(&request("198.51.100.9:4711"), 1).as_deref(), Some("198.51.100.9"));
    assert_eq!(client_ip(&request("[2001:db8::1]:443"), 1).as_deref(), Some("2001:db8::/64"));
    // Nothing usable: no address, not a shared "unknown" bucket.
    for bad in ["not-an-ip", "198.51.100.9, not-an-ip", "", " , ", "1.2.3.4:99999"] {
        assert_eq!(client_ip(&request(bad), 1), None, "{bad:?}");
    }
    assert_eq!(client_ip(&ApiRequest::new("GET", "/"), 1), None);
}

#[test]
fn limit_headers_list_every_policy_and_the_longest_wait() {
    let result = |success: bool, remaining: u32, retry_after: u32| RateLimitResult {
        success,
        limit: 5,
        remaining,
        reset: 30,
        retry_after,
        window_seconds: Some(60),
    };
    let settings = Settings::from_env(&crate::api::settings::tests::env(&[])).expect("valid");
    let image = crate::Operation::new("image").expect("valid");
    let named = settings.policies(&image, true);
    let headers = limit_headers(&vec![(named[0].clone(), result(true, 4, 0)), (named[1].clone(), result(false, 0, 12))]);
    assert_eq!(
        headers,
        vec![
            ("ratelimit-policy".to_owned(), "\"user\";q=5;w=60, \"ip\";q=5;w=60".to_owned()),
            ("ratelimit".to_owned(), "\"user\";r=4;t=30, \"ip\";r=0;t=30".to_owned()),
            ("retry-after".to_owned(), "12".to_owned()),
        ]
    );
    assert!(limit_headers(&vec![]).is_empty());
    let error = rate_limited(&vec![(named[0].clone(), result(false, 0, 7))]);
    assert_eq!((error.status, error.code), (429, "rate_limited"));
    assert_eq!(error.details["policy"], "user");
    assert_eq!(error.details["retryAfter"], 7);
    assert!(error.headers.contains(&("retry-after".to_owned(), "7".to_owned())));
}

#[test]
fn several_windows_have_distinct_policies_and_the_429_names_the_refusing_one() {
    let env = crate::api::settings::tests::env(&[
        ("CREDITGATE_USER_LIMIT", "5/60,100/86400"),
        ("CREDITGATE_OPERATION_LIMITS", r#"{"image": "2/60,20/3600"}"#),
    ]);
    let settings = Settings::from_env(&env).expect("valid");
    let image = crate::Operation::new("image").expect("valid");
    let named = settings.policies(&image, false);
    let result = |limit: u32, window: u32, success: bool, retry_after: u32| RateLimitResult {
        success,
        limit,
        remaining: if success { limit - 1 } else { 0 },
        reset: window,
        retry_after,
        window_seconds: Some(window),
    };
    let limits: Limits = named
        .into_iter()
        .zip([result(5, 60, true, 0), result(100, 86400, false, 3600), result(2, 60, false, 30), result(20, 3600, true, 0)])
        .collect();
    let headers = limit_headers(&limits);
    assert_eq!(
        headers[0].1,
        "\"user-60\";q=5;w=60, \"user-86400\";q=100;w=86400, \"op-image-60\";q=2;w=60, \"op-image-3600\";q=20;w=3600"
    );
    assert_eq!(headers[2], ("retry-after".to_owned(), "3600".to_owned()));
    let error = rate_limited(&limits);
    assert_eq!(error.details["policy"], "user", "the refusal that waits longest: the daily window");
    assert_eq!(error.details["name"], "user-86400");
    assert_eq!(error.details["windowSeconds"], 86400);
    assert_eq!(error.details["retryAfter"], 3600);
    let only_operation: Limits = limits.into_iter().filter(|(named, _)| named.name == "op-image-60").collect();
    let error = rate_limited(&only_operation);
    assert_eq!((error.details["policy"].as_str(), error.details["operation"].as_str()), (Some("operation"), Some("image")));
}

#[tokio::test]
async fn service_routes_for_limits_refuse_users_and_check_input_before_the_network() {
    let api = api(&[]);
    for (method, path) in [
        ("POST", "/credits/limits/peek"),
        ("POST", "/credits/limits/reset"),
        ("GET", "/credits/limits/usage"),
        ("POST", "/credits/limits/block"),
        ("POST", "/credits/limits/unblock"),
    ] {
        let handled = api.handle(user_request(method, path, "{}")).await;
        assert_eq!(handled.response.status, 403, "{path}: a user may not");
    }
    let bad = [
        ("POST", "/credits/limits/peek", r#"{"key": "k", "limit": 0, "windowSeconds": 60}"#, ""),
        ("POST", "/credits/limits/block", r#"{"key": "k"}"#, ""),
        ("POST", "/credits/limits/reset", r#"{"key": ""}"#, ""),
        ("GET", "/credits/limits/usage", "", "limit=1001"),
        ("GET", "/credits/limits/usage", "", "other=1"),
    ];
    for (method, path, body, query) in bad {
        let mut request = service_request(method, path, body);
        request.query = query.to_owned();
        let handled = api.handle(request).await;
        assert_eq!(handled.response.status, 400, "{path}?{query} {body}");
    }
}

#[test]
fn resolved_limits_name_their_policies_and_a_concurrency_refusal_is_concurrency_limited() {
    let outcome = |key: &str, window: Option<u32>, success: bool, concurrency: bool, units: bool| LimitOutcome {
        key: key.to_owned(),
        concurrency,
        units,
        plan: None,
        from_plan: concurrency.then(|| "free".to_owned()),
        open: concurrency.then_some(2),
        result: RateLimitResult {
            success,
            limit: 2,
            remaining: 0,
            reset: 0,
            retry_after: if success { 0 } else { 1 },
            window_seconds: window,
        },
    };
    let outcomes = vec![
        outcome("creditgate:user:u", Some(60), true, false, false),
        outcome("creditgate:op:image:user:u", Some(60), true, false, false),
        outcome("creditgate:op:image:user:u", Some(86400), true, false, false),
        outcome("creditgate:user:u", None, false, true, false),
        outcome("creditgate:units:user:u", Some(60), true, false, true),
    ];
    let limits = named_outcomes(&outcomes);
    let names: Vec<&str> = limits.iter().map(|(named, _)| named.name.as_str()).collect();
    assert_eq!(names, ["user", "op-image-60", "op-image-86400", "concurrency", "units"]);
    let error = concurrency_limited(&outcomes[3], &limits);
    assert_eq!((error.status, error.code), (429, "concurrency_limited"));
    assert_eq!(error.details["open"], 2);
    assert_eq!(error.details["plan"], "free");
    let headers: BTreeMap<String, String> = error.headers.iter().cloned().collect();
    assert_eq!(headers["retry-after"], "1");
    assert!(headers["ratelimit-policy"].contains("\"concurrency\";q=2,"), "{headers:?}");
}
