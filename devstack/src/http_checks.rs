//! Checks over HTTP of `cargo dev test http`, against a local stack of its
//! own: hostile input against every route ([`hostile_input`]), hostile
//! [`tokens`], and [`sigkill`] of the function runtime and of the gateway in
//! the middle of charges.
//!
//! The stack is `cargo dev up`'s (PostgreSQL, the PostgREST-compatible
//! gateway, the front proxy, the functions under Deno), started on its own
//! ports and data folder. Requests go where an app sends them:
//! `/functions/v1/credits/...` and `/rest/v1/...` on the API port.

use crate::stack::{Options as StackOptions, Stack};
use crate::support::{build_package_retrying, connect, die_with_parent, free_ports, terminate, wait_for_port, ServedStack};
use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A local stack for these suites, stopped on drop (with any process the
/// SIGKILL suite started again in place of a killed one).
pub struct HttpStack {
    served: Option<ServedStack>,
    options: StackOptions,
    respawned: Mutex<Vec<Child>>,
}

impl HttpStack {
    /// Starts the stack (call from the main thread: its children are tied to
    /// the thread that spawns them). Limits are set high so that the load of
    /// the SIGKILL suite is not refused; the hostile suite sets its own.
    pub fn start() -> Result<HttpStack> {
        build_package_retrying()?;
        let base = free_ports(54721, 100, &[0, 1, 9, 10])?;
        let options = StackOptions {
            api_port: base,
            db_port: base + 1,
            gateway_port: base + 9,
            functions_port: base + 10,
            data_dir: crate::project_root().join("target/devstack/faults-stack"),
            fresh: true,
        };
        let settings = [
            ("CREDITGATE_USER_LIMIT", "100000/60"),
            ("CREDITGATE_IP_LIMIT", "off"),
            ("CREDITGATE_GENERATOR_TIMEOUT_MS", "2000"),
        ];
        let before: Vec<(&str, Option<String>)> =
            settings.iter().map(|(name, _)| (*name, std::env::var(name).ok())).collect();
        for (name, value) in settings {
            std::env::set_var(name, value);
        }
        let started = Stack::start(&options);
        for (name, value) in before {
            match value {
                Some(value) => std::env::set_var(name, value),
                None => std::env::remove_var(name),
            }
        }
        let served = ServedStack::serve(started?, "fault stack", Duration::from_secs(60))?;
        Ok(HttpStack { served: Some(served), options, respawned: Mutex::new(Vec::new()) })
    }

    fn api(&self) -> String {
        self.options.api_url()
    }

    fn function(&self, path: &str) -> String {
        format!("{}/functions/v1/credits{path}", self.api())
    }

    fn db_url(&self) -> String {
        format!("postgresql://postgres:postgres@127.0.0.1:{}/postgres", self.options.db_port)
    }
}

impl Drop for HttpStack {
    fn drop(&mut self) {
        if let Some(served) = self.served.as_mut() {
            served.stop_serving();
        }
        if let Ok(mut children) = self.respawned.lock() {
            for child in children.iter_mut() {
                terminate(child);
            }
        }
        drop(self.served.take());
    }
}

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).pool_max_idle_per_host(64).build_http()
}

/// One HTTP exchange: the status (0 when the connection failed) and the body.
async fn send(
    client: &HttpClient,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> Result<(u16, Vec<u8>)> {
    let mut request = hyper::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(name.as_bytes(), value.as_bytes());
    }
    let request = request.body(Full::new(Bytes::from(body)))?;
    match tokio::time::timeout(Duration::from_secs(30), client.request(request)).await {
        Err(_) => bail!("{method} {url}: no answer within 30 s"),
        Ok(Err(_)) => Ok((0, Vec::new())),
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.map(|b| b.to_bytes().to_vec()).unwrap_or_default();
            Ok((status, body))
        }
    }
}

fn bearer(token: &str) -> Vec<(String, String)> {
    vec![("authorization".into(), format!("Bearer {token}")), ("content-type".into(), "application/json".into())]
}

/// Users for a suite: auth users with `credits` each; returns (id, token).
async fn make_users(db: &tokio_postgres::Client, names: &[&str], credits: i32) -> Result<Vec<(Uuid, String)>> {
    let mut users = Vec::new();
    for name in names {
        let id = Uuid::new_v4();
        let email = format!("{name}-{id}@faults.local");
        db.execute(
            "INSERT INTO auth.users (id, email, aud, role) VALUES ($1, $2, 'authenticated', 'authenticated')",
            &[&id, &email],
        )
        .await?;
        db.query_one("SELECT public.grant_credits($1, $2, 'opening', NULL, '{}'::jsonb)", &[&id, &credits]).await?;
        users.push((id, crate::keys::user_token(&id.to_string(), &email, 3600)));
    }
    Ok(users)
}

/// What a request could change, for `users`: their jobs (id, status, kept),
/// balances, ledger rows, idempotency keys and rate-limit counts.
async fn state(db: &tokio_postgres::Client, users: &[Uuid]) -> Result<String> {
    let row = db
        .query_one(
            "SELECT
               (SELECT coalesce(string_agg(j.id || ':' || j.status || ':' || coalesce(j.captured_credits, -1), ',' ORDER BY j.id), '')
                  FROM public.generation_jobs j WHERE j.user_id = ANY($1)),
               (SELECT coalesce(string_agg(u.id || '=' || u.credits, ',' ORDER BY u.id), '') FROM public.users u WHERE u.id = ANY($1)),
               (SELECT count(*) FROM public.credit_ledger l WHERE l.user_id = ANY($1))::text,
               (SELECT count(*) FROM public.idempotency_keys k WHERE k.user_id = ANY($1))::text,
               (SELECT coalesce(sum(c), 0) FROM public.rate_limits r, unnest(r.bucket_costs) c
                  WHERE r.key IN (SELECT 'creditgate:user:' || x FROM unnest($1::uuid[]) x))::text",
            &[&users],
        )
        .await?;
    Ok((0..5).map(|i| row.get::<_, String>(i)).collect::<Vec<_>>().join(" | "))
}

// -----------------------------------------------------------------------------
// Hostile input
// -----------------------------------------------------------------------------

/// Requests generated per run of the hostile-input suite.
const HOSTILE_REQUESTS: usize = 3000;

/// Thousands of malformed, oversized and boundary requests against every
/// route of the function (and the RPCs behind it, through the gateway):
/// none may answer 5xx or drop the connection, and none answered 4xx may
/// change anything. Afterwards the function still serves a valid request.
pub fn hostile_input(http: &HttpStack) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(hostile(http))
}

async fn hostile(http: &HttpStack) -> Result<()> {
    let db = connect(&http.db_url()).await?;
    let users = make_users(&db, &["mallory", "victim"], 1_000).await?;
    let ids: Vec<Uuid> = users.iter().map(|(id, _)| *id).collect();
    let (mallory, mallory_token) = users[0].clone();
    let service = crate::keys::service_role_key();
    let client = client();
    // A real job of each user, for the routes that take one.
    let mut jobs = Vec::new();
    for (_, token) in &users {
        let (status, body) = send(
            &client,
            "POST",
            &http.function("/charge"),
            &[bearer(token), vec![("idempotency-key".into(), format!("hostile-setup-{}", Uuid::new_v4()))]].concat(),
            br#"{"operation":"text"}"#.to_vec(),
        )
        .await?;
        let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
        let job = answer["jobId"].as_str().map(str::to_owned);
        jobs.push(job.ok_or_else(|| anyhow!("setup charge answered {status}: {}", String::from_utf8_lossy(&body)))?);
    }

    let mut rng = StdRng::seed_from_u64(0x5eed_0bad);
    let mut counts: HashMap<u16, usize> = HashMap::new();
    let mut before = state(&db, &ids).await?;
    let mut changed_on_success = 0;
    for n in 0..HOSTILE_REQUESTS {
        let case = hostile_case(&mut rng, n, &http.api(), &mallory, &mallory_token, &service, &jobs, &ids[1]);
        let (status, body) = send(&client, &case.method, &case.url, &case.headers, case.body.clone()).await?;
        *counts.entry(status).or_default() += 1;
        let described = || {
            format!(
                "{} {} ({}, body {:?})",
                case.method,
                case.url.chars().take(200).collect::<String>(),
                case.what,
                String::from_utf8_lossy(&case.body).chars().take(200).collect::<String>()
            )
        };
        if status == 0 || status >= 500 {
            bail!("{} answered {status}: {}", described(), String::from_utf8_lossy(&body).chars().take(500).collect::<String>());
        }
        let after = state(&db, &ids).await?;
        if after != before {
            if (400..500).contains(&status) {
                bail!("{} answered {status} but changed the state:\n before {before}\n after  {after}", described());
            }
            changed_on_success += 1;
            before = after;
        }
    }
    // Still alive, and still right.
    let (status, body) = send(&client, "GET", &http.function("/balance"), &bearer(&mallory_token), Vec::new()).await?;
    if status != 200 {
        bail!("after the hostile requests, GET /balance answered {status}: {}", String::from_utf8_lossy(&body));
    }
    let problems: i64 = db.query_one("SELECT count(*) FROM public.verify_credit_ledger()", &[]).await?.get(0);
    if problems != 0 {
        bail!("verify_credit_ledger() reports {problems} problem(s)");
    }
    let mut statuses: Vec<(u16, usize)> = counts.into_iter().collect();
    statuses.sort_unstable();
    eprintln!(
        "{HOSTILE_REQUESTS} hostile requests over every route (statuses {statuses:?}): no 5xx, no dropped \
         connection, no change on any 4xx ({changed_on_success} valid ones changed state, as they should); \
         the function still answers; ledger sound"
    );
    Ok(())
}

/// Bytes outside RFC 3986's unreserved set, percent-encoded: a hostile id
/// still has to be a URL to be sent.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'%' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

struct Case {
    what: &'static str,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Values that are wrong for some field in some way.
fn hostile_value(rng: &mut StdRng) -> Value {
    match rng.gen_range(0..24) {
        0 => Value::Null,
        1 => json!(true),
        2 => json!(0),
        3 => json!(-1),
        4 => json!(1.5),
        5 => json!(i64::MAX),
        6 => json!(u64::MAX),
        7 => json!(2_147_483_648i64),
        8 => json!(-2_147_483_649i64),
        9 => json!(1e308),
        10 => json!(""),
        11 => json!(" "),
        12 => json!("x".repeat(65)),
        13 => json!("y".repeat(5000)),
        14 => json!("\u{0}nul"),
        15 => json!("💸".repeat(40)),
        16 => json!([]),
        17 => json!([1, 2, 3]),
        18 => json!({}),
        19 => json!({"creditgate": {"route": "forged"}}),
        20 => json!("00000000-0000-0000-0000-000000000000"),
        21 => json!("not-a-uuid"),
        22 => json!("10"),
        _ => json!({"deep": [[[[[[[[[[[[[[[[{"a": 1}]]]]]]]]]]]]]]]]}),
    }
}

/// Bodies that are not what any route takes.
fn hostile_body(rng: &mut StdRng, fields: &[&str]) -> (&'static str, Vec<u8>) {
    match rng.gen_range(0..14) {
        0 => ("empty body", Vec::new()),
        1 => ("truncated JSON", br#"{"operation": "te"#.to_vec()),
        2 => ("not JSON", b"operation=text&cost=-5".to_vec()),
        3 => ("random bytes", (0..rng.gen_range(1..300)).map(|_| rng.gen::<u8>()).collect()),
        4 => ("a JSON array", br#"[{"operation":"text"}]"#.to_vec()),
        5 => ("a JSON scalar", b"42".to_vec()),
        6 => ("JSON null", b"null".to_vec()),
        7 => ("oversized body", format!(r#"{{"operation":"text","metadata":{{"pad":"{}"}}}}"#, "p".repeat(70_000)).into_bytes()),
        8 => ("deeply nested", format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).into_bytes()),
        9 => ("duplicate keys", br#"{"operation":"text","operation":"image","amount":1,"amount":-1}"#.to_vec()),
        10 => ("unknown field", br#"{"operation":"text","cost":-1000,"userId":"00000000-0000-4000-8000-000000000000"}"#.to_vec()),
        11 => ("invalid UTF-8 in a string", b"{\"operation\":\"te\xff\xfext\"}".to_vec()),
        _ => {
            // Each known field with a hostile value, plus at times an extra one.
            let mut object = serde_json::Map::new();
            for field in fields {
                if rng.gen_bool(0.8) {
                    object.insert((*field).to_string(), hostile_value(rng));
                }
            }
            if rng.gen_bool(0.3) {
                object.insert("__proto__".into(), json!({"admin": true}));
            }
            ("hostile field values", Value::Object(object).to_string().into_bytes())
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn hostile_case(
    rng: &mut StdRng,
    n: usize,
    api: &str,
    user: &Uuid,
    user_token: &str,
    service: &str,
    jobs: &[String],
    other_user: &Uuid,
) -> Case {
    let base = format!("{api}/functions/v1/credits");
    let job = &jobs[rng.gen_range(0..jobs.len())];
    let bad_ids = ["x", "1", "00000000-0000-0000-0000-00000000000", "%00", "..%2F..%2Fetc%2Fpasswd", "' OR 1=1 --", &"f".repeat(5000)];
    let bad_id = percent_encode(bad_ids[rng.gen_range(0..bad_ids.len())]);
    let id = if rng.gen_bool(0.5) { job.clone() } else { bad_id.clone() };
    // (method, path, fields of the body, needs the service key)
    let routes: [(&str, String, &[&str], bool); 11] = [
        ("POST", "/charge".into(), &["operation", "metadata"], false),
        ("POST", "/generate".into(), &["prompt", "operation", "metadata"], false),
        ("GET", "/balance".into(), &[], false),
        ("GET", "/jobs".into(), &[], false),
        ("GET", format!("/jobs/{id}"), &[], false),
        ("GET", "/ledger".into(), &[], false),
        ("POST", format!("/jobs/{id}/complete"), &["resultUrl", "actualCost"], true),
        ("POST", format!("/jobs/{id}/refund"), &["reason"], true),
        ("POST", "/grant".into(), &["userId", "amount", "reason", "idempotencyKey", "metadata"], true),
        ("POST", "/rest/v1/rpc/charge_credits".into(), &["p_user_id", "p_operation_type", "p_cost", "p_idempotency_key", "p_metadata", "p_hold_seconds"], true),
        ("POST", "/rest/v1/rpc/refund_credits".into(), &["p_user_id", "p_job_id", "p_amount", "p_reason"], true),
    ];
    let (method, path, fields, service_only) = &routes[n % routes.len()];
    let url = if path.starts_with("/rest/") { format!("{api}{path}") } else { format!("{base}{path}") };
    let mut headers = Vec::new();
    let token = if *service_only { service } else { user_token };
    let mut method = method.to_string();
    let mut url = url;
    let (what, body): (&'static str, Vec<u8>) = match rng.gen_range(0..10) {
        // The right caller, a hostile body.
        0..=4 => {
            headers.extend(bearer(token));
            if path.starts_with("/rest/") {
                headers.push(("apikey".into(), service.to_string()));
            }
            hostile_body(rng, fields)
        }
        // A valid-looking body with boundary values for the money fields.
        5 => {
            headers.extend(bearer(token));
            let amount = [0i64, -1, 1, 1_000_000_000, 1_000_000_001, i64::from(i32::MAX), i64::MIN][rng.gen_range(0..7)];
            let body = match *path {
                ref p if p.ends_with("/grant") => json!({"userId": other_user, "amount": amount, "reason": "hostile"}),
                ref p if p.ends_with("/complete") => json!({"actualCost": amount}),
                ref p if p.ends_with("/charge_credits") => json!({"p_user_id": user, "p_operation_type": "text", "p_cost": amount}),
                _ => {
                    let operation = ["text", "image", "video", "TEXT", "text "][rng.gen_range(0..5)];
                    json!({"operation": operation})
                }
            };
            if path.starts_with("/rest/") {
                headers.push(("apikey".into(), service.to_string()));
            }
            ("boundary amounts", body.to_string().into_bytes())
        }
        // Hostile headers: keys, content types, the caller.
        6 => {
            let keys = [String::new(), "k".repeat(256), "k".repeat(9000), "\u{7f}\u{1}".into(), "ключ".into(), "a b".into()];
            let key = keys[rng.gen_range(0..keys.len())].clone();
            headers.extend(bearer(token));
            headers.retain(|(name, _)| name != "content-type");
            headers.push(("content-type".into(), ["text/plain", "application/x-www-form-urlencoded", "application/json; charset=latin1", ""][rng.gen_range(0..4)].into()));
            if !key.is_empty() && key.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                headers.push(("idempotency-key".into(), key));
            } else {
                headers.push(("idempotency-key".into(), String::new()));
            }
            headers.push(("x-forwarded-for".into(), ["not-an-ip", "1.1.1.1, 2.2.2.2", "::1", &"9".repeat(300)][rng.gen_range(0..4)].into()));
            ("hostile headers", br#"{"operation":"text"}"#.to_vec())
        }
        // Wrong method, or a path around the routes.
        7 => {
            headers.extend(bearer(token));
            method = ["PUT", "DELETE", "PATCH", "GET", "POST", "TRACE"][rng.gen_range(0..6)].into();
            let paths = [format!("{base}{path}/extra"), format!("{base}//{path}"), format!("{base}/../credits{path}"), format!("{base}{path}?limit=abc&before=-1&x=%ZZ"), format!("{base}/{}", "a/".repeat(3000)), format!("{base}/ledger?limit=0"), format!("{base}/ledger?limit=101"), format!("{base}/ledger?before=99999999999999999999999"), format!("{base}/jobs?limit=1e3")];
            url = paths[rng.gen_range(0..paths.len())].clone();
            ("wrong method or path", Vec::new())
        }
        // The wrong caller for the route: a user on service routes, the
        // service key on user routes, anon, nobody.
        8 => {
            let tokens = [user_token.to_string(), service.to_string(), crate::keys::anon_key(), String::new()];
            let chosen = &tokens[rng.gen_range(0..tokens.len())];
            if !chosen.is_empty() {
                headers.extend(bearer(chosen));
            }
            if path.starts_with("/rest/") {
                headers.push(("apikey".into(), crate::keys::anon_key()));
            }
            ("the wrong caller", br#"{"operation":"text","amount":5,"userId":"00000000-0000-4000-8000-000000000000","reason":"x"}"#.to_vec())
        }
        // Hostile Authorization headers.
        _ => {
            let values = [
                "Bearer".to_string(),
                "Bearer ".to_string(),
                "Basic dXNlcjpwYXNz".to_string(),
                format!("Bearer {}", "a".repeat(10_000)),
                "Bearer a.b.c".to_string(),
                "Bearer ...".to_string(),
                format!("Bearer {user_token}x"),
                format!("bearer  {user_token}"),
            ];
            headers.push(("authorization".into(), values[rng.gen_range(0..values.len())].clone()));
            headers.push(("content-type".into(), "application/json".into()));
            ("hostile Authorization", br#"{"operation":"text"}"#.to_vec())
        }
    };
    Case { what, method, url, headers, body }
}

// -----------------------------------------------------------------------------
// Tokens
// -----------------------------------------------------------------------------

fn unsigned_token(header: &Value, claims: &Value) -> String {
    format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    )
}

/// Hostile tokens: `alg: none`, a wrong secret, expired, a user token edited
/// to claim `service_role`, and a user acting on another user's job. Each is
/// refused, through the function and through the REST API, and nothing changes.
pub fn tokens(http: &HttpStack) -> Result<()> {
    tokio::runtime::Runtime::new()?.block_on(hostile_tokens(http))
}

async fn hostile_tokens(http: &HttpStack) -> Result<()> {
    let db = connect(&http.db_url()).await?;
    let users = make_users(&db, &["alice", "bob"], 100).await?;
    let ((alice, alice_token), (bob, bob_token)) = (users[0].clone(), users[1].clone());
    let ids = [alice, bob];
    let client = client();
    let (status, body) = send(
        &client,
        "POST",
        &http.function("/charge"),
        &[bearer(&alice_token), vec![("idempotency-key".into(), "alice-job".into())]].concat(),
        br#"{"operation":"text"}"#.to_vec(),
    )
    .await?;
    let answer: Value = serde_json::from_slice(&body).unwrap_or_default();
    let job = answer["jobId"].as_str().ok_or_else(|| anyhow!("alice's charge answered {status}"))?.to_string();
    let before = state(&db, &ids).await?;

    let now = chrono::Utc::now().timestamp();
    let claims = |sub: &Uuid, role: &str, exp: i64| {
        json!({"aud": "authenticated", "sub": sub, "role": role, "email": "x@faults.local", "iat": now - 60, "exp": exp})
    };
    let secret = crate::keys::JWT_SECRET;
    let edited_role = {
        // Alice's real token with its payload swapped for one claiming service_role.
        let parts: Vec<&str> = alice_token.split('.').collect();
        format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(claims(&alice, "service_role", now + 3600).to_string()), parts[2])
    };
    let forged: Vec<(&str, String)> = vec![
        ("alg none", unsigned_token(&json!({"alg": "none", "typ": "JWT"}), &claims(&alice, "authenticated", now + 3600))),
        ("alg none claiming service_role", unsigned_token(&json!({"alg": "none", "typ": "JWT"}), &claims(&alice, "service_role", now + 3600))),
        ("alg NONE", unsigned_token(&json!({"alg": "NONE"}), &claims(&alice, "authenticated", now + 3600))),
        ("wrong secret", crate::keys::sign(&claims(&alice, "authenticated", now + 3600), "another-secret-that-is-at-least-32-characters")),
        ("wrong secret, service_role", crate::keys::sign(&claims(&alice, "service_role", now + 3600), "another-secret-that-is-at-least-32-characters")),
        // An hour past `exp`: well beyond PostgREST's 30 s clock-skew allowance.
        ("expired", crate::keys::sign(&claims(&alice, "authenticated", now - 3600), secret)),
        ("user token edited to claim service_role", edited_role),
        ("HS256 header, empty signature", {
            let parts: Vec<&str> = alice_token.split('.').collect();
            format!("{}.{}.", parts[0], parts[1])
        }),
    ];
    let mut tried = 0;
    let mut failures = Vec::new();
    for (what, token) in &forged {
        // Every route the function has, then the REST API behind it.
        let attempts: Vec<(&str, String, Vec<u8>, bool)> = vec![
            ("POST", http.function("/charge"), br#"{"operation":"text"}"#.to_vec(), false),
            ("GET", http.function("/balance"), Vec::new(), false),
            ("GET", http.function(&format!("/jobs/{job}")), Vec::new(), false),
            ("POST", http.function(&format!("/jobs/{job}/refund")), br#"{"reason":"forged"}"#.to_vec(), false),
            ("POST", http.function(&format!("/jobs/{job}/complete")), b"{}".to_vec(), false),
            ("POST", http.function("/grant"), json!({"userId": alice, "amount": 1000, "reason": "forged"}).to_string().into_bytes(), false),
            ("POST", http.function("/webhooks/deliver"), b"{}".to_vec(), false),
            ("POST", format!("{}/rest/v1/rpc/grant_credits", http.api()), json!({"p_user_id": alice, "p_amount": 1000, "p_reason": "forged"}).to_string().into_bytes(), true),
            ("POST", format!("{}/rest/v1/rpc/refund_credits", http.api()), json!({"p_user_id": alice, "p_job_id": job, "p_amount": null, "p_reason": "forged"}).to_string().into_bytes(), true),
            ("GET", format!("{}/rest/v1/generation_jobs?select=id", http.api()), Vec::new(), true),
        ];
        for (method, url, body, rest) in attempts {
            let mut headers = bearer(token);
            if rest {
                headers.push(("apikey".into(), crate::keys::anon_key()));
            }
            let (status, answer) = send(&client, method, &url, &headers, body).await?;
            tried += 1;
            if status != 401 {
                failures.push(format!("{what}: {method} {url} answered {status} (not 401): {}", String::from_utf8_lossy(&answer).chars().take(200).collect::<String>()));
            }
        }
    }
    // Bob, signed in for real, on Alice's job.
    // (method, URL, body, a /rest/v1 call, the statuses it may get)
    type Attempt<'a> = (&'a str, String, Vec<u8>, bool, &'a [u16]);
    let bob_attempts: Vec<Attempt> = vec![
        ("GET", http.function(&format!("/jobs/{job}")), Vec::new(), false, &[404]),
        ("POST", http.function(&format!("/jobs/{job}/refund")), br#"{"reason":"not mine"}"#.to_vec(), false, &[403]),
        ("POST", http.function(&format!("/jobs/{job}/complete")), b"{}".to_vec(), false, &[403]),
        ("POST", http.function("/grant"), json!({"userId": bob, "amount": 1000, "reason": "free money"}).to_string().into_bytes(), false, &[403]),
        ("POST", http.function("/webhooks/deliver"), b"{}".to_vec(), false, &[403]),
        ("POST", http.function("/limits/block"), json!({"key": format!("creditgate:user:{alice}"), "reason": "not mine"}).to_string().into_bytes(), false, &[403]),
        ("POST", format!("{}/rest/v1/rpc/refund_credits", http.api()), json!({"p_user_id": alice, "p_job_id": job, "p_amount": null, "p_reason": "not mine"}).to_string().into_bytes(), true, &[401, 403]),
        ("POST", format!("{}/rest/v1/rpc/refund_credits", http.api()), json!({"p_user_id": bob, "p_job_id": job, "p_amount": null, "p_reason": "not mine"}).to_string().into_bytes(), true, &[401, 403]),
        ("POST", format!("{}/rest/v1/rpc/complete_generation_job", http.api()), json!({"p_job_id": job}).to_string().into_bytes(), true, &[401, 403]),
        ("PATCH", format!("{}/rest/v1/generation_jobs?id=eq.{job}", http.api()), json!({"status": "failed"}).to_string().into_bytes(), true, &[401, 403]),
        ("PATCH", format!("{}/rest/v1/users?id=eq.{bob}", http.api()), json!({"credits": 1000000}).to_string().into_bytes(), true, &[401, 403]),
    ];
    for (method, url, body, rest, allowed) in bob_attempts {
        let mut headers = bearer(&bob_token);
        if rest {
            headers.push(("apikey".into(), crate::keys::anon_key()));
        }
        let (status, answer) = send(&client, method, &url, &headers, body).await?;
        tried += 1;
        if !allowed.contains(&status) {
            failures.push(format!("bob: {method} {url} answered {status} (expected {allowed:?}): {}", String::from_utf8_lossy(&answer).chars().take(200).collect::<String>()));
        }
    }
    // Bob reads Alice's job through the REST API: RLS shows him nothing.
    let mut headers = bearer(&bob_token);
    headers.push(("apikey".into(), crate::keys::anon_key()));
    let (status, answer) =
        send(&client, "GET", &format!("{}/rest/v1/generation_jobs?id=eq.{job}&select=id", http.api()), &headers, Vec::new()).await?;
    tried += 1;
    if status != 200 || answer != b"[]" {
        failures.push(format!("bob reading alice's job through REST: {status} {}", String::from_utf8_lossy(&answer)));
    }
    let after = state(&db, &ids).await?;
    if after != before {
        failures.push(format!("the state changed:\n before {before}\n after  {after}"));
    }
    if !failures.is_empty() {
        bail!("{} of {tried} token checks failed:\n  {}", failures.len(), failures.join("\n  "));
    }
    eprintln!(
        "{tried} requests with {} forged tokens (alg none, wrong secret, expired, edited to service_role, no signature) \
         and a user acting on another's job: all refused (401 / 403 / 404, RLS shows nothing); nothing changed",
        forged.len()
    );
    Ok(())
}

// -----------------------------------------------------------------------------
// SIGKILL of the function runtime and of the gateway
// -----------------------------------------------------------------------------

const KILL_CONNECTIONS: usize = 12;
const KILL_USERS: usize = 6;
const LOAD_BETWEEN_KILLS: Duration = Duration::from_millis(2_500);

#[derive(Default)]
struct Outcomes {
    /// Jobs the clients were told of: id -> (user, cost, kept once settled).
    jobs: HashMap<String, (Uuid, i64, Option<i64>)>,
    /// Charges whose answer never came (or was a 5xx): user index, key.
    unknown_charges: Vec<(usize, String)>,
    /// Settlements whose answer never came: job id.
    unknown_settlements: Vec<String>,
    requests: usize,
    failed: usize,
}

/// The function runtime (Deno) and then the gateway killed with SIGKILL
/// while charges, completes and refunds are in flight, each started again
/// in place (the same command and environment, as a supervisor would).
/// Afterwards every unknown outcome is resolved as a client would (a charge
/// sent again with its Idempotency-Key replays or charges; a settlement is
/// read back), every open hold is expired, and no credit was lost or created.
pub fn sigkill(http: &HttpStack) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new()?;
    let db_url = http.db_url();
    let users = runtime.block_on(async {
        let db = connect(&db_url).await?;
        let names: Vec<String> = (0..KILL_USERS).map(|n| format!("kill{n}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        make_users(&db, &names, 1_000_000).await
    })?;
    let outcomes = Arc::new(Mutex::new(Outcomes::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for connection in 0..KILL_CONNECTIONS {
        let (users, outcomes, stop) = (users.clone(), outcomes.clone(), stop.clone());
        let function = http.function("");
        tasks.push(runtime.spawn(async move { kill_load(connection, &function, &users, &outcomes, &stop).await }));
    }
    let mut killed = Vec::new();
    for (what, needle) in [
        ("the function runtime (deno)", format!("serve.ts {}", http.options.functions_port)),
        ("the gateway", format!("PGRST_SERVER_PORT={}", http.options.gateway_port)),
    ] {
        std::thread::sleep(LOAD_BETWEEN_KILLS);
        let port = if what.contains("gateway") { http.options.gateway_port } else { http.options.functions_port };
        let respawned = kill_and_restart(&needle, port)?;
        eprintln!("SIGKILL to {what} (pid {}), started again as pid {}", respawned.0, respawned.1.id());
        http.respawned.lock().map_err(|_| anyhow!("lock"))?.push(respawned.1);
        wait_for_port(port, None, None, Duration::from_secs(60))?;
        killed.push(what);
    }
    std::thread::sleep(LOAD_BETWEEN_KILLS);
    stop.store(true, Ordering::SeqCst);
    for task in tasks {
        runtime.block_on(task)??;
    }
    // Let any transaction the killed processes left behind end first.
    std::thread::sleep(Duration::from_millis(500));
    let summary = runtime.block_on(resolve_after_kills(http, &users, &outcomes))?;
    eprintln!("SIGKILL to {} under load from {KILL_CONNECTIONS} connections; {summary}", killed.join(" and "));
    Ok(())
}

/// Finds our child process whose command line or environment contains
/// `needle`, kills it with SIGKILL and, once its `port` is free, starts it
/// again with the same command line, environment and working folder.
/// Returns the old pid and the new child.
fn kill_and_restart(needle: &str, port: u16) -> Result<(u32, Child)> {
    let me = std::process::id();
    let mut found = None;
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        // The parent pid is the second field after the parenthesised name.
        let parent = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)).and_then(|p| p.parse::<u32>().ok());
        if parent != Some(me) || stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(true) {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let text = format!("{} {}", String::from_utf8_lossy(&cmdline).replace('\0', " "), String::from_utf8_lossy(&environ).replace('\0', " "));
        if text.contains(needle) {
            let cwd = std::fs::read_link(entry.path().join("cwd"))?;
            found = Some((pid, cmdline, environ, cwd));
            break;
        }
    }
    let (pid, cmdline, environ, cwd) = found.ok_or_else(|| anyhow!("no child process mentions {needle:?}"))?;
    // SAFETY: SIGKILL to our own child, found above.
    unsafe {
        libc::kill(pid as libc::pid_t, libc::SIGKILL);
    }
    let split = |bytes: &[u8]| -> Vec<String> {
        bytes.split(|b| *b == 0).filter(|part| !part.is_empty()).map(|part| String::from_utf8_lossy(part).to_string()).collect()
    };
    let argv = split(&cmdline);
    let (program, arguments) = argv.split_first().ok_or_else(|| anyhow!("pid {pid} has no command line"))?;
    // The port is free once every thread of the process is gone (its leader
    // shows as a zombie before that): wait until it can be bound again.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            bail!("port {port} still taken 10 s after SIGKILL to pid {pid}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(crate::project_root().join("target/devstack/faults-stack/respawned.log"))?;
    let mut command = Command::new(program);
    command.args(arguments).current_dir(cwd).env_clear().stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    for pair in split(&environ) {
        if let Some((name, value)) = pair.split_once('=') {
            command.env(name, value);
        }
    }
    // The child goes when we go.
    die_with_parent(&mut command);
    let child = command.spawn().with_context(|| format!("start {program} again"))?;
    Ok((pid, child))
}

fn lock(outcomes: &Mutex<Outcomes>) -> Result<std::sync::MutexGuard<'_, Outcomes>> {
    outcomes.lock().map_err(|_| anyhow!("outcomes lock poisoned"))
}

async fn kill_load(
    connection: usize,
    function: &str,
    users: &[(Uuid, String)],
    outcomes: &Mutex<Outcomes>,
    stop: &AtomicBool,
) -> Result<()> {
    let client = client();
    let service = crate::keys::service_role_key();
    let mut rng = StdRng::seed_from_u64(0x9111 + connection as u64);
    let mut mine: Vec<String> = Vec::new();
    let mut sequence = 0;
    while !stop.load(Ordering::SeqCst) {
        sequence += 1;
        let user_index = rng.gen_range(0..users.len());
        let (user, token) = &users[user_index];
        if rng.gen_bool(0.65) || mine.is_empty() {
            let key = format!("kill-{connection}-{sequence}");
            let headers = [bearer(token), vec![("idempotency-key".into(), key.clone())]].concat();
            let (status, body) = send(&client, "POST", &format!("{function}/charge"), &headers, br#"{"operation":"image"}"#.to_vec()).await?;
            let mut outcomes = lock(outcomes)?;
            outcomes.requests += 1;
            match status {
                200 => {
                    let answer: Value = serde_json::from_slice(&body)?;
                    let job = answer["jobId"].as_str().ok_or_else(|| anyhow!("no jobId in {answer}"))?.to_string();
                    let cost = answer["cost"].as_i64().ok_or_else(|| anyhow!("no cost in {answer}"))?;
                    outcomes.jobs.insert(job.clone(), (*user, cost, None));
                    mine.push(job);
                }
                0 | 500..=599 => {
                    outcomes.failed += 1;
                    outcomes.unknown_charges.push((user_index, key));
                }
                other => bail!("a charge answered {other}: {}", String::from_utf8_lossy(&body)),
            }
        } else {
            let job = mine.swap_remove(rng.gen_range(0..mine.len()));
            let complete = rng.gen_bool(0.5);
            let (path, body) = if complete {
                (format!("{function}/jobs/{job}/complete"), br#"{"actualCost":4}"#.to_vec())
            } else {
                (format!("{function}/jobs/{job}/refund"), br#"{"reason":"kill test"}"#.to_vec())
            };
            let (status, answer) = send(&client, "POST", &path, &bearer(&service), body).await?;
            let mut outcomes = lock(outcomes)?;
            outcomes.requests += 1;
            match status {
                200 => {
                    let kept = if complete { 4 } else { 0 };
                    if let Some(entry) = outcomes.jobs.get_mut(&job) {
                        entry.2 = Some(kept);
                    }
                }
                0 | 500..=599 => {
                    outcomes.failed += 1;
                    outcomes.unknown_settlements.push(job);
                }
                other => bail!("a settlement answered {other}: {}", String::from_utf8_lossy(&answer)),
            }
        }
        if lock(outcomes)?.failed > 0 && rng.gen_bool(0.1) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

// Every session has finished: nothing else takes the lock while it is held
// across these awaits.
#[allow(clippy::await_holding_lock)]
async fn resolve_after_kills(http: &HttpStack, users: &[(Uuid, String)], outcomes: &Mutex<Outcomes>) -> Result<String> {
    let client = client();
    let db = connect(&http.db_url()).await?;
    let mut outcomes = outcomes.lock().map_err(|_| anyhow!("outcomes lock poisoned"))?;
    let (mut replayed, mut charged_now) = (0, 0);
    for (user_index, key) in std::mem::take(&mut outcomes.unknown_charges) {
        let (user, token) = &users[user_index];
        let headers = [bearer(token), vec![("idempotency-key".into(), key.clone())]].concat();
        // As a client retries: again while the answer is a 5xx (a pooled
        // connection to a killed process may fail once more).
        let mut attempt = 0;
        let (status, body) = loop {
            attempt += 1;
            let (status, body) = send(&client, "POST", &http.function("/charge"), &headers, br#"{"operation":"image"}"#.to_vec()).await?;
            if (status == 0 || status >= 500) && attempt < 20 {
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
            break (status, body);
        };
        if status != 200 {
            bail!("charge {key} sent again ({attempt} tries) answered {status}: {}", String::from_utf8_lossy(&body));
        }
        let answer: Value = serde_json::from_slice(&body)?;
        let job = answer["jobId"].as_str().ok_or_else(|| anyhow!("no jobId"))?.to_string();
        if answer["replayed"].as_bool() == Some(true) {
            replayed += 1;
        } else {
            charged_now += 1;
        }
        let cost = answer["cost"].as_i64().unwrap_or(0);
        outcomes.jobs.entry(job).or_insert((*user, cost, None));
    }
    let unknown_settlements = std::mem::take(&mut outcomes.unknown_settlements);
    for job in &unknown_settlements {
        let id: Uuid = job.parse()?;
        let row = db.query_one("SELECT status, captured_credits FROM public.generation_jobs WHERE id = $1", &[&id]).await?;
        let (status, captured): (String, Option<i32>) = (row.get(0), row.get(1));
        if status != "pending" {
            if let Some(entry) = outcomes.jobs.get_mut(job) {
                entry.2 = captured.map(i64::from);
            }
        }
    }
    let released: i32 = db
        .query_one("SELECT creditgate.expire_stale_generation_jobs_at(clock_timestamp() + interval '2 days')", &[])
        .await?
        .get(0);
    let ids: Vec<Uuid> = users.iter().map(|(id, _)| *id).collect();
    let rows = db.query("SELECT id, status, captured_credits FROM public.generation_jobs WHERE user_id = ANY($1)", &[&ids]).await?;
    if rows.len() != outcomes.jobs.len() {
        bail!("the database has {} jobs for these users, the clients were told of {}", rows.len(), outcomes.jobs.len());
    }
    for row in &rows {
        let (id, status, captured): (Uuid, String, Option<i32>) = (row.get(0), row.get(1), row.get(2));
        let (_, _, kept) = outcomes.jobs.get(&id.to_string()).ok_or_else(|| anyhow!("job {id} that no client was told of"))?;
        if status == "pending" || captured.map(i64::from) != Some(kept.unwrap_or(0)) {
            bail!("job {id}: {status}, kept {captured:?}; the clients expect {kept:?}");
        }
    }
    for (user, _) in users {
        let balance: i32 = db.query_one("SELECT credits FROM public.users WHERE id = $1", &[user]).await?.get(0);
        let kept: i64 = outcomes.jobs.values().filter(|(owner, _, _)| owner == user).map(|(_, _, kept)| kept.unwrap_or(0)).sum();
        if i64::from(balance) != 1_000_000 - kept {
            bail!("user {user}: balance {balance}, the clients' answers say {}", 1_000_000 - kept);
        }
    }
    let problems: i64 = db.query_one("SELECT count(*) FROM public.verify_credit_ledger()", &[]).await?.get(0);
    if problems != 0 {
        bail!("verify_credit_ledger() reports {problems} problem(s)");
    }
    Ok(format!(
        "{} requests, {} without an answer (connection dropped or 5xx); unknown charges sent again with their \
         Idempotency-Key: {replayed} replayed (had committed), {charged_now} charged then; {} unknown settlements \
         read back; {released} open holds expired at the end; {} jobs; every balance = opening - kept; \
         verify_credit_ledger() empty",
        outcomes.requests,
        outcomes.failed,
        unknown_settlements.len(),
        outcomes.jobs.len()
    ))
}
