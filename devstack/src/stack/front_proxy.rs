//! The front proxy on the API port: the stand-in for Supabase's API gateway
//! (Kong) and the edge runtime's front. It routes `/rest/v1/*` to the
//! PostgREST-compatible gateway after the `apikey` check (the
//! `sb_publishable_`/`sb_secret_` keys stand for the anon and service-role
//! JWTs), `/functions/v1/<name>/*` to the function runner after the JWT check
//! when `verify_jwt` is on, serves the JWKS, the fake generator and the demo
//! page, and adds CORS ([`super::cors`]).

use super::cors::{preflight, with_cors};
use super::fake_generator::fake_generator;
use super::function_runner::Function;
use super::webhook_receiver::{receive, Receiver, LOCAL_WEBHOOK_SECRET, RECEIVER_PATH};
use super::{Options, DEMO_EMAIL, DEMO_USER_ID};
use crate::keys::{self, KeySet, SigningKey};
use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use subtle::{Choice, ConstantTimeEq};

/// Largest request body the front proxy forwards (PostgREST's own bound is
/// the gateway's; this one protects the proxy).
pub(super) const BODY_LIMIT_BYTES: usize = 1 << 20;

pub(super) type Body = Full<Bytes>;
/// The answer to a request the proxy refuses (boxed: a response is large).
type Refusal = Box<Response<Body>>;
type HttpClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

pub(super) struct Proxy {
    options: Options,
    functions: Vec<Function>,
    anon_key: String,
    service_role_key: String,
    /// What verifies a JWT here: the legacy secret and the signing key's public half.
    keys: KeySet,
    signing_key: Arc<SigningKey>,
    /// The public JWKS, as served.
    jwks: String,
    client: HttpClient,
    /// The local webhook receiver, with the secret the function signs with.
    webhooks: Receiver,
}

impl Proxy {
    pub(super) fn new(options: &Options, signing_key: Arc<SigningKey>, functions: Vec<Function>) -> Proxy {
        let webhook_secret = super::function_env(options, &signing_key)
            .ok()
            .and_then(|env| env.into_iter().rev().find(|(name, _)| name == "CREDITGATE_WEBHOOK_SECRET"))
            .map_or_else(|| LOCAL_WEBHOOK_SECRET.to_string(), |(_, secret)| secret);
        Proxy {
            webhooks: Receiver::new(webhook_secret),
            options: options.clone(),
            functions,
            anon_key: keys::anon_key(),
            service_role_key: keys::service_role_key(),
            keys: KeySet::local(&signing_key),
            jwks: signing_key.jwks().to_string(),
            signing_key,
            client: hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    fn demo_token(&self) -> String {
        let issuer = format!("{}/auth/v1", self.options.api_url());
        self.signing_key.sign(&keys::user_claims(&issuer, DEMO_USER_ID, DEMO_EMAIL, 24 * 3600))
    }
}

pub(super) async fn serve_front(listener: tokio::net::TcpListener, proxy: Arc<Proxy>) -> Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let proxy = proxy.clone();
                async move { Ok::<_, std::convert::Infallible>(route(&proxy, request, peer).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                // Raw `>`, `"` in a curl query reach the gateway, as with Kong.
                .serve_connection(TokioIo::new(crate::gateway::server::LenientRequestLine::new(stream)), service)
                .await;
        });
    }
}

pub(super) fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    with_cors(response)
}

async fn route(proxy: &Proxy, mut request: Request<Incoming>, peer: SocketAddr) -> Response<Body> {
    let path = request.uri().path().to_string();
    if path == "/auth/v1/.well-known/jwks.json" {
        return jwks(proxy, request.method());
    }
    if let Some(rest) = path.strip_prefix("/rest/v1") {
        if request.method() == hyper::Method::OPTIONS {
            return preflight();
        }
        match check_api_key(proxy, &request) {
            Err(refusal) => return *refusal,
            Ok(key) => stand_in_for_api_key(proxy, &mut request, &key),
        }
        let target = format!("http://127.0.0.1:{}{}", proxy.options.gateway_port, path_and_query(&request, rest));
        return forward(proxy, request, &target, peer).await;
    }
    if let Some(rest) = path.strip_prefix("/functions/v1/") {
        let name = rest.split('/').next().unwrap_or_default();
        let Some(function) = proxy.functions.iter().find(|function| function.name == name) else {
            return json_response(StatusCode::NOT_FOUND, json!({"code": "NOT_FOUND", "message": "Requested function was not found"}));
        };
        if function.verify_jwt && request.method() != hyper::Method::OPTIONS {
            if let Err(refusal) = check_jwt(proxy, &request) {
                return *refusal;
            }
        }
        let target = format!(
            "http://127.0.0.1:{}{}",
            proxy.options.functions_port,
            path_and_query(&request, &format!("/{rest}"))
        );
        return forward(proxy, request, &target, peer).await;
    }
    if path == "/devstack/generator" {
        return fake_generator(request).await;
    }
    if path == RECEIVER_PATH {
        return receive(&proxy.webhooks, request).await;
    }
    if path == "/" || path == "/index.html" {
        return page(proxy);
    }
    if request.method() == hyper::Method::OPTIONS {
        return preflight();
    }
    json_response(StatusCode::NOT_FOUND, json!({"message": "no route matched with those values"}))
}

fn path_and_query(request: &Request<Incoming>, path: &str) -> String {
    match request.uri().query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_string(),
    }
}

/// Supabase Auth's public keys (GoTrue's `/.well-known/jwks.json`), cached
/// by clients and Supabase's edge for 10 minutes.
fn jwks(proxy: &Proxy, method: &hyper::Method) -> Response<Body> {
    if method == hyper::Method::OPTIONS {
        return preflight();
    }
    if method != hyper::Method::GET && method != hyper::Method::HEAD {
        return json_response(StatusCode::METHOD_NOT_ALLOWED, json!({"code": 405, "msg": "Method Not Allowed"}));
    }
    let body = if method == hyper::Method::HEAD { Bytes::new() } else { Bytes::from(proxy.jwks.clone()) };
    let mut response = Response::new(Full::new(body));
    let headers = response.headers_mut();
    headers.insert("content-type", "application/json".parse().expect("static header"));
    headers.insert("cache-control", "public, max-age=600".parse().expect("static header"));
    with_cors(response)
}

/// Supabase's API gateway admits a request to `/rest/v1` only with one of the
/// project's keys in `apikey` (header or query); returns that key.
fn check_api_key(proxy: &Proxy, request: &Request<Incoming>) -> Result<String, Refusal> {
    let from_header = request.headers().get("apikey").and_then(|value| value.to_str().ok()).map(str::to_string);
    let from_query = request.uri().query().and_then(|query| {
        query.split('&').find_map(|pair| pair.strip_prefix("apikey=").map(str::to_string))
    });
    match from_header.or(from_query) {
        None => Err(Box::new(json_response(StatusCode::UNAUTHORIZED, json!({"message": "No API key found in request"})))),
        Some(key) if is_project_key(proxy, &key) => Ok(key),
        Some(_) => Err(Box::new(json_response(StatusCode::UNAUTHORIZED, json!({"message": "Invalid API key"})))),
    }
}

/// Whether `key` is one of the project's four API keys, compared in
/// constant time (every key is compared, whichever matches).
fn is_project_key(proxy: &Proxy, key: &str) -> bool {
    let known = [proxy.anon_key.as_str(), proxy.service_role_key.as_str(), keys::PUBLISHABLE_KEY, keys::SECRET_KEY];
    known.iter().fold(Choice::from(0), |found, known| found | key.as_bytes().ct_eq(known.as_bytes())).into()
}

/// With a publishable or secret key (not JWTs), Supabase's gateway sends
/// PostgREST a JWT of the role the key stands for (anon, service_role) when
/// the request carries no other token (no Authorization, or the same key).
fn stand_in_for_api_key(proxy: &Proxy, request: &mut Request<Incoming>, key: &str) {
    let jwt = match key {
        keys::PUBLISHABLE_KEY => &proxy.anon_key,
        keys::SECRET_KEY => &proxy.service_role_key,
        _ => return,
    };
    let authorization = request.headers().get("authorization").and_then(|value| value.to_str().ok());
    let replace = match authorization {
        None => true,
        Some(value) => crate::gateway::jwt::bearer_token(Some(value.as_bytes())).ct_eq(key.as_bytes()).into(),
    };
    if replace {
        if let Ok(value) = format!("Bearer {jwt}").parse() {
            request.headers_mut().insert("authorization", value);
        }
    }
}

/// The edge runtime's `verify_jwt`: a valid, unexpired token signed with one
/// of the project's keys (an ES256 user token, or an HS256 legacy key).
fn check_jwt(proxy: &Proxy, request: &Request<Incoming>) -> Result<(), Refusal> {
    let Some(header) = request.headers().get("authorization").and_then(|value| value.to_str().ok()) else {
        return Err(Box::new(json_response(StatusCode::UNAUTHORIZED, json!({"msg": "Error: Missing authorization header"}))));
    };
    let token = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).unwrap_or("");
    match keys::verify(token, &proxy.keys, chrono::Utc::now().timestamp()) {
        Ok(_) => Ok(()),
        Err(_) => Err(Box::new(json_response(StatusCode::UNAUTHORIZED, json!({"msg": "Invalid JWT"})))),
    }
}

async fn forward(proxy: &Proxy, request: Request<Incoming>, target: &str, peer: SocketAddr) -> Response<Body> {
    let (mut parts, body) = request.into_parts();
    let body = match http_body_util::Limited::new(body, BODY_LIMIT_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return json_response(StatusCode::PAYLOAD_TOO_LARGE, json!({"message": "Request body too large"}));
        }
    };
    let Ok(uri) = target.parse() else {
        return json_response(StatusCode::BAD_REQUEST, json!({"message": "Invalid request path"}));
    };
    parts.uri = uri;
    parts.headers.remove("host");
    // As Supabase's load balancer does: the client's address first.
    let forwarded = match parts.headers.get("x-forwarded-for").and_then(|value| value.to_str().ok()) {
        Some(existing) => format!("{existing}, {}", peer.ip()),
        None => peer.ip().to_string(),
    };
    if let Ok(value) = forwarded.parse() {
        parts.headers.insert("x-forwarded-for", value);
    }
    let outgoing = Request::from_parts(parts, Full::new(body));
    match proxy.client.request(outgoing).await {
        Ok(response) => {
            let (parts, body) = response.into_parts();
            match body.collect().await {
                Ok(collected) => with_cors(Response::from_parts(parts, Full::new(collected.to_bytes()))),
                Err(_) => json_response(StatusCode::BAD_GATEWAY, json!({"message": "upstream closed the response"})),
            }
        }
        Err(_) => json_response(StatusCode::BAD_GATEWAY, json!({"message": "An invalid response was received from the upstream server"})),
    }
}


fn page(proxy: &Proxy) -> Response<Body> {
    let file = crate::project_root().join("devstack/page/index.html");
    let html = std::fs::read_to_string(file).unwrap_or_else(|_| {
        "<!doctype html><title>creditgate</title><h1>creditgate local stack</h1>\
         <p>API: /rest/v1, functions: /functions/v1/&lt;name&gt;</p>"
            .to_string()
    });
    let html = html
        .replace("{{ANON_KEY}}", &proxy.anon_key)
        .replace("{{DEMO_USER_ID}}", DEMO_USER_ID)
        .replace("{{DEMO_EMAIL}}", DEMO_EMAIL)
        .replace("{{DEMO_TOKEN}}", &proxy.demo_token());
    let mut response = Response::new(Full::new(Bytes::from(html)));
    response.headers_mut().insert("content-type", "text/html; charset=utf-8".parse().expect("static header"));
    response
}
