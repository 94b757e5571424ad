//! Conformance of the devstack gateway with PostgREST v12.
//!
//! Each case names the PostgREST spec or documentation page it is derived
//! from. The suite starts a private PostgreSQL cluster (initdb under
//! target/tmp, a free port), loads devstack/sql/supabase_init.sql and
//! tests/fixtures/gateway_fixture.sql, runs the gateway in-process and talks
//! plain HTTP/1.1 to it over TCP.
//!
//! The cluster is shared by all cases; it is stopped (`pg_ctl -m fast`) by
//! its guard's `Drop`, which runs at process exit (atexit), on a panic during
//! set-up, and, should the process be killed, by a watchdog shell that stops
//! it as soon as this process is gone.
//!
//! Run: `cargo test -p devstack --profile devstack --test gateway_conformance`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use devstack::gateway::{self, Config, GatewayHandle};
use serde_json::{json, Value};

const SECRET: &str = "super-secret-jwt-token-with-at-least-32-characters-long";
const ALICE: &str = "11111111-1111-1111-1111-111111111111";

// =============================================================================
// The private cluster
// =============================================================================

struct Cluster {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
}

fn pg_bin() -> PathBuf {
    if let Ok(p) = std::env::var("PG_BIN") {
        return PathBuf::from(p);
    }
    for v in ["17", "16", "15", "14", "13"] {
        let p = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
        if p.join("initdb").exists() {
            return p;
        }
    }
    let out = Command::new("pg_config").arg("--bindir").output().expect("no PostgreSQL binaries (set PG_BIN)");
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    /// A command for a server binary; as root, run as `postgres` (initdb
    /// and postgres refuse to run as root).
    fn server_cmd(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn start() -> Cluster {
        let name = format!("gateway-conformance-{}", std::process::id());
        let as_postgres = unsafe { libc::geteuid() } == 0;
        let mut dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(&name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        if as_postgres {
            let ok = Command::new("chown").arg("postgres:postgres").arg(&dir).status().unwrap();
            assert!(ok.success(), "chown of the data directory failed");
            // With a strict umask, `postgres` may not reach target/: use the temp dir.
            let reachable = Command::new("runuser").args(["-u", "postgres", "--", "test", "-w"]).arg(&dir).status();
            if !reachable.map(|s| s.success()).unwrap_or(false) {
                let _ = std::fs::remove_dir_all(&dir);
                dir = std::env::temp_dir().join(&name);
                let _ = std::fs::remove_dir_all(&dir);
                std::fs::create_dir_all(&dir).unwrap();
                let ok = Command::new("chown").arg("postgres:postgres").arg(&dir).status().unwrap();
                assert!(ok.success(), "chown of the data directory failed");
            }
        }
        let cluster = Cluster { bin: pg_bin(), dir, port: free_port(), as_postgres };
        let out = cluster
            .server_cmd("initdb")
            .arg("-D")
            .arg(&cluster.dir)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "-N"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        cluster.spawn_watchdog();
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            cluster.port,
            cluster.dir.display()
        );
        let out = cluster
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&cluster.dir)
            .arg("-l")
            .arg(cluster.dir.join("server.log"))
            .args(["-w", "-t", "60", "-o", &opts, "start"])
            .output()
            .unwrap();
        assert!(out.status.success(), "pg_ctl start failed: {}", String::from_utf8_lossy(&out.stderr));
        cluster
    }

    /// Stops the server and removes the data directory as soon as this
    /// process is gone, even if it is killed (Drop then never runs).
    fn spawn_watchdog(&self) {
        let prefix = if self.as_postgres { "runuser -u postgres -- " } else { "" };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {prefix}'{pg_ctl}' -D '{dir}' -m immediate stop >/dev/null 2>&1; rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = self.bin.join("pg_ctl").display(),
            dir = self.dir.display(),
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    /// Runs SQL as the superuser; returns psql's unaligned output.
    fn psql(&self, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port.to_string(), "-c", sql])
            .output()
            .unwrap();
        assert!(out.status.success(), "psql failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn psql_file(&self, path: &Path) {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres"])
            .args(["-p", &self.port.to_string(), "-f"])
            .arg(path)
            .output()
            .unwrap();
        assert!(out.status.success(), "loading {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self
            .server_cmd("pg_ctl")
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "fast", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// =============================================================================
// The shared environment: the cluster and a gateway on it
// =============================================================================

struct Env {
    rt: tokio::runtime::Runtime,
    addr: String,
    db_uri: String,
}

static ENV: OnceLock<Env> = OnceLock::new();
static CLUSTER: Mutex<Option<Cluster>> = Mutex::new(None);
static GATEWAYS: Mutex<Vec<GatewayHandle>> = Mutex::new(Vec::new());

extern "C" fn stop_cluster_at_exit() {
    if let Ok(mut slot) = CLUSTER.lock() {
        drop(slot.take());
    }
}

fn with_cluster<T>(f: impl FnOnce(&Cluster) -> T) -> T {
    env();
    let guard = CLUSTER.lock().unwrap_or_else(|e| e.into_inner());
    f(guard.as_ref().expect("the cluster is running"))
}

fn sql(statement: &str) -> String {
    with_cluster(|c| c.psql(statement))
}

fn base_config(db_uri: &str) -> Config {
    let mut c = Config::new(db_uri);
    c.db_schemas = vec!["api".into(), "alt".into()];
    c.db_anon_role = Some("anon".into());
    c.jwt_secret = Some(SECRET.as_bytes().to_vec());
    c.db_extra_search_path = vec!["public".into(), "extensions".into()];
    c.db_pool = 4;
    c
}

fn start_gateway(rt: &tokio::runtime::Runtime, config: Config) -> String {
    let handle = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        gateway::spawn(config, listener).unwrap()
    });
    let addr = handle.local_addr().to_string();
    GATEWAYS.lock().unwrap_or_else(|e| e.into_inner()).push(handle);
    // Ready when the schema cache is loaded (503 PGRST002 until then).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = send(&addr, "GET", "/rpc/noparamsproc", &[("Authorization", &bearer("service_role"))], b"");
        if r.status != 503 {
            break;
        }
        assert!(Instant::now() < deadline, "the gateway never loaded its schema cache");
        std::thread::sleep(Duration::from_millis(50));
    }
    addr
}

fn env() -> &'static Env {
    ENV.get_or_init(|| {
        let cluster = Cluster::start();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        cluster.psql_file(&root.join("sql/supabase_init.sql"));
        cluster.psql_file(&root.join("tests/fixtures/gateway_fixture.sql"));
        let db_uri = format!("postgres://authenticator:postgres@127.0.0.1:{}/postgres", cluster.port);
        *CLUSTER.lock().unwrap_or_else(|e| e.into_inner()) = Some(cluster);
        unsafe {
            libc::atexit(stop_cluster_at_exit);
        }
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let addr = start_gateway(&rt, base_config(&db_uri));
        Env { rt, addr, db_uri }
    })
}

/// Another gateway on the same cluster, with a changed configuration.
fn gateway_with(change: impl FnOnce(&mut Config)) -> String {
    let e = env();
    let mut config = base_config(&e.db_uri);
    change(&mut config);
    start_gateway(&e.rt, config)
}

// =============================================================================
// A small HTTP/1.1 client
// =============================================================================

#[derive(Debug)]
struct Res {
    status: u16,
    reason: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Res {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {:?} (status {})", self.text(), self.status))
    }
    fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or_default().to_string()
    }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(line_end) = body.windows(2).position(|w| w == b"\r\n") {
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        body = &body[line_end + 2..];
        if size == 0 || body.len() < size {
            break;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[(size + 2).min(body.len())..];
    }
    out
}

fn send(addr: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8]) -> Res {
    send_raw(addr, method, target, headers, body, true)
}

fn send_raw(addr: &str, method: &str, target: &str, headers: &[(&str, &str)], body: &[u8], content_length: bool) -> Res {
    let mut stream = TcpStream::connect(addr).expect("connect to the gateway");
    stream.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if content_length && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw, method == "HEAD")
}

fn parse_response(raw: &[u8], head: bool) -> Res {
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no response: {:?}", String::from_utf8_lossy(raw)));
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    parts.next();
    let status: u16 = parts.next().unwrap_or("0").parse().unwrap_or(0);
    let reason = parts.next().unwrap_or_default().to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let rest = &raw[split + 4..];
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if head { Vec::new() } else if chunked { dechunk(rest) } else { rest.to_vec() };
    Res { status, reason, headers, body }
}

fn addr() -> &'static str {
    &env().addr
}

fn get(target: &str) -> Res {
    send(addr(), "GET", target, &[], b"")
}

fn get_h(target: &str, headers: &[(&str, &str)]) -> Res {
    send(addr(), "GET", target, headers, b"")
}

fn post(target: &str, body: Value) -> Res {
    send(addr(), "POST", target, &[("Content-Type", "application/json")], body.to_string().as_bytes())
}

fn post_h(target: &str, headers: &[(&str, &str)], body: &str) -> Res {
    let mut h: Vec<(&str, &str)> = headers.to_vec();
    if !h.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        h.push(("Content-Type", "application/json"));
    }
    send(addr(), "POST", target, &h, body.as_bytes())
}

fn token(claims: Value) -> String {
    gateway::jwt::sign_hs256(SECRET.as_bytes(), &claims)
}

fn bearer_token(claims: Value) -> String {
    format!("Bearer {}", token(claims))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn bearer(role: &str) -> String {
    bearer_token(json!({"role": role, "exp": now() + 3600}))
}

fn user(sub: &str) -> String {
    bearer_token(json!({"role": "authenticated", "sub": sub, "aud": "authenticated", "exp": now() + 3600}))
}

fn assert_error(r: &Res, status: u16, expected: Value) {
    assert_eq!(r.status, status, "body: {}", r.text());
    assert_eq!(r.header("Content-Type"), Some("application/json; charset=utf-8"));
    assert_eq!(r.json(), expected);
}

// =============================================================================
// Authentication: test/spec/Feature/Auth/AuthSpec.hs, NoAnonSpec.hs,
// docs references/auth.rst ("JWT-Based User Impersonation")
// =============================================================================

// docs references/auth.rst: "If the request included no JWT, PostgREST switches into the anonymous role"
#[test]
fn auth_no_token_runs_as_the_anonymous_role() {
    let r = get("/rpc/whoami");
    assert_eq!(r.status, 200);
    let w = r.json();
    assert_eq!(w["user"], "anon");
    assert_eq!(w["claims"], json!({"role": "anon"}));
}

// docs references/auth.rst: the role claim selects the database role
#[test]
fn auth_the_role_claim_selects_the_database_role() {
    let r = get_h("/rpc/whoami", &[("Authorization", &user(ALICE))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let w = r.json();
    assert_eq!(w["user"], "authenticated");
    assert_eq!(w["uid"], ALICE);
    assert_eq!(w["role"], "authenticated");
    let r = get_h("/rpc/whoami", &[("Authorization", &bearer("service_role"))]);
    assert_eq!(r.json()["user"], "service_role");
}

// AuthSpec.hs: "sql functions can read custom and standard claims variables"
#[test]
fn auth_custom_claims_reach_request_jwt_claims() {
    let t = bearer_token(json!({"role": "authenticated", "sub": ALICE, "app_metadata": {"plan": "pro"}, "exp": now() + 60}));
    let r = post_h("/rpc/get_guc_value", &[("Authorization", &t)], r#"{"prefix":"request.jwt.claims","name":"app_metadata"}"#);
    assert_eq!(r.json(), json!("{\"plan\":\"pro\"}"));
}

// AuthSpec.hs: "fails with an expired token" (message, code, WWW-Authenticate)
#[test]
fn auth_expired_token_is_401_pgrst301() {
    let t = bearer_token(json!({"role": "authenticated", "exp": now() - 100}));
    let r = get_h("/items", &[("Authorization", &t)]);
    assert_error(&r, 401, json!({"code": "PGRST301", "message": "JWT expired", "details": null, "hint": null}));
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer error=\"invalid_token\", error_description=\"JWT expired\""));
}

// Auth.hs: jose validation with `allowedSkew 30`
#[test]
fn auth_expiry_allows_thirty_seconds_of_clock_skew() {
    let t = bearer_token(json!({"role": "authenticated", "exp": now() - 10}));
    assert_eq!(get_h("/items?select=id&limit=1", &[("Authorization", &t)]).status, 200);
    let t = bearer_token(json!({"role": "authenticated", "exp": now() - 90}));
    assert_eq!(get_h("/items?select=id&limit=1", &[("Authorization", &t)]).status, 401);
}

// docs references/errors.rst PGRST301 / issue #977: a token signed with another secret
#[test]
fn auth_wrong_signature_is_401() {
    let t = gateway::jwt::sign_hs256(b"not-the-secret-not-the-secret-not-the-secret", &json!({"role": "service_role"}));
    let r = get_h("/items", &[("Authorization", &format!("Bearer {t}"))]);
    assert_error(&r, 401, json!({"code": "PGRST301", "message": "JWSError JWSInvalidSignature", "details": null, "hint": null}));
    assert!(r.header("WWW-Authenticate").unwrap_or_default().starts_with("Bearer error=\"invalid_token\""));
}

// AuthSpec.hs: "hides tables from users with invalid JWT"
#[test]
fn auth_malformed_token_is_401_with_postgrests_message() {
    let r = get_h("/items", &[("Authorization", "Bearer ey9zdGdyZXN0X3Rlc3RfYXV0aG9yIiwiaWQiOiJqZG9lIn0.y4vZuu1dDdwAl0-S00MCRWRYMlJ5YAMSir6Es6WtWx0")]);
    let msg = "JWSError (CompactDecodeError Invalid number of parts: Expected 3 parts; got 2)";
    assert_error(&r, 401, json!({"code": "PGRST301", "message": msg, "details": null, "hint": null}));
    assert_eq!(
        r.header("WWW-Authenticate"),
        Some(format!("Bearer error=\"invalid_token\", error_description=\"{msg}\"").as_str())
    );
}

// docs references/auth.rst: PostgREST does not accept `alg: none` (postgrest-docs PR #79)
#[test]
fn auth_alg_none_is_rejected() {
    use base64::Engine;
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let t = format!("{}.{}.", e.encode(br#"{"alg":"none","typ":"JWT"}"#), e.encode(br#"{"role":"service_role"}"#));
    let r = get_h("/rpc/whoami", &[("Authorization", &format!("Bearer {t}"))]);
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "PGRST301");
}

// AuthSpec.hs: "allows 'Bearer' and 'bearer' as authentication schemes"
#[test]
fn auth_bearer_scheme_is_case_insensitive() {
    let t = token(json!({"role": "service_role"}));
    assert_eq!(get_h("/rpc/whoami", &[("Authorization", &format!("bearer {t}"))]).json()["user"], "service_role");
    assert_eq!(get_h("/rpc/whoami", &[("Authorization", &format!("Bearer {t}"))]).json()["user"], "service_role");
}

// Auth.hs (Wai extractBearerAuth): a non-Bearer Authorization is ignored, the request is anonymous
#[test]
fn auth_other_schemes_are_anonymous() {
    let r = get_h("/rpc/whoami", &[("Authorization", "Basic dXNlcjpwYXNz")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["user"], "anon");
}

// AuthSpec.hs: "hides tables from users with JWT that contain no claims about role" (role defaults to anon)
#[test]
fn auth_token_without_role_claim_uses_the_anonymous_role() {
    let r = get_h("/rpc/whoami", &[("Authorization", &bearer_token(json!({"sub": ALICE})))]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["user"], "anon");
    assert_eq!(r.json()["uid"], ALICE);
}

// AudienceJwtSecretSpec.hs: with jwt-aud set, a token for another audience is refused
#[test]
fn auth_audience_is_checked_when_configured() {
    let gw = gateway_with(|c| c.jwt_aud = Some("youraudience".into()));
    let wrong = bearer_token(json!({"role": "authenticated", "aud": "otheraudience"}));
    let r = send(&gw, "GET", "/rpc/whoami", &[("Authorization", &wrong)], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["message"], "JWTNotInAudience");
    let right = bearer_token(json!({"role": "authenticated", "aud": "youraudience"}));
    assert_eq!(send(&gw, "GET", "/rpc/whoami", &[("Authorization", &right)], b"").status, 200);
}

// docs references/configuration.rst jwt-role-claim-key: the role may sit deeper in the claims
#[test]
fn auth_role_claim_key_is_configurable() {
    let gw = gateway_with(|c| c.jwt_role_claim_key = gateway::config::parse_claim_path(".app_metadata.role").unwrap());
    let t = bearer_token(json!({"role": "anon", "app_metadata": {"role": "service_role"}}));
    assert_eq!(send(&gw, "GET", "/rpc/whoami", &[("Authorization", &t)], b"").json()["user"], "service_role");
    let t = bearer_token(json!({"role": "service_role"}));
    assert_eq!(send(&gw, "GET", "/rpc/whoami", &[("Authorization", &t)], b"").json()["user"], "anon", "the top-level role is not the claim");
}

// Error.hs pgErrorStatus: a role that does not exist fails `set_config('role', ...)` with 22023 -> 400
#[test]
fn auth_role_that_does_not_exist_is_400() {
    let r = get_h("/rpc/whoami", &[("Authorization", &bearer("no_such_role"))]);
    assert_error(&r, 400, json!({"code": "22023", "message": "role \"no_such_role\" does not exist", "details": null, "hint": null}));
}

// Error.hs pgErrorStatus: a role the authenticator was not granted -> 42501 -> 403 (authenticated)
#[test]
fn auth_role_not_granted_to_the_authenticator_is_403() {
    let r = get_h("/rpc/whoami", &[("Authorization", &bearer("postgres"))]);
    assert_error(&r, 403, json!({"code": "42501", "message": "permission denied to set role \"postgres\"", "details": null, "hint": null}));
}

// -----------------------------------------------------------------------------
// Asymmetric signing keys: `jwt-secret` as a JWK set (PostgREST's JWKS support,
// as Supabase configures it with a project's signing keys): the legacy HS256
// secret (`oct`) beside the public half of an ES256 key.
// -----------------------------------------------------------------------------

/// One gateway with a JWK set for every ES256 case, and its signing key.
fn es256_gateway() -> &'static (String, devstack::keys::SigningKey) {
    static GW: OnceLock<(String, devstack::keys::SigningKey)> = OnceLock::new();
    GW.get_or_init(|| {
        let signing = devstack::keys::SigningKey::generate();
        let jwks = devstack::keys::KeySet::local(&signing).to_private_jwks().to_string();
        let addr = gateway_with(|c| c.jwt_secret = Some(jwks.into_bytes()));
        (addr, signing)
    })
}

fn es256_claims(role: &str) -> Value {
    json!({"sub": ALICE, "role": role, "aud": "authenticated", "iat": now(), "exp": now() + 600})
}

// Auth.hs with a JWKS: an ES256 token whose kid names a key of the set is verified with it.
#[test]
fn auth_es256_token_verified_against_the_jwk_set() {
    let (gw, signing) = es256_gateway();
    let t = signing.sign(&es256_claims("authenticated"));
    let r = send(gw, "GET", "/rpc/whoami", &[("Authorization", &format!("Bearer {t}"))], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["user"], "authenticated");
    assert_eq!(r.json()["uid"], ALICE);
    // The legacy HS256 keys still verify against the set's `oct` key.
    let r = send(gw, "GET", "/rpc/whoami", &[("Authorization", &bearer("service_role"))], b"");
    assert_eq!(r.json()["user"], "service_role");
}

// jose: the kid matches, the signature does not (another key) -> JWSInvalidSignature.
#[test]
fn auth_es256_token_signed_with_another_key_is_401() {
    let (gw, signing) = es256_gateway();
    let impostor = devstack::keys::SigningKey::from_private_jwk(&{
        let mut jwk = devstack::keys::SigningKey::generate().private_jwk();
        jwk["kid"] = json!(signing.kid());
        jwk
    })
    .unwrap();
    let t = impostor.sign(&es256_claims("service_role"));
    let r = send(gw, "GET", "/rpc/whoami", &[("Authorization", &format!("Bearer {t}"))], b"");
    assert_error(&r, 401, json!({"code": "PGRST301", "message": "JWSError JWSInvalidSignature", "details": null, "hint": null}));
}

// jose: no key of the set has the token's kid -> NoUsableKeys.
#[test]
fn auth_es256_token_with_an_unknown_kid_is_401() {
    let (gw, _) = es256_gateway();
    let t = devstack::keys::SigningKey::generate().sign(&es256_claims("authenticated"));
    let r = send(gw, "GET", "/rpc/whoami", &[("Authorization", &format!("Bearer {t}"))], b"");
    assert_error(&r, 401, json!({"code": "PGRST301", "message": "No suitable key or wrong key type", "details": null, "hint": null}));
}

// alg none with the set's kid: never accepted; an expired ES256 token neither.
#[test]
fn auth_es256_set_refuses_alg_none_and_expiry() {
    use base64::Engine;
    let (gw, signing) = es256_gateway();
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = json!({"alg": "none", "typ": "JWT", "kid": signing.kid()}).to_string();
    let t = format!("{}.{}.", e.encode(header), e.encode(es256_claims("service_role").to_string()));
    let r = send(gw, "GET", "/rpc/whoami", &[("Authorization", &format!("Bearer {t}"))], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "PGRST301");
    let mut claims = es256_claims("authenticated");
    claims["exp"] = json!(now() - 90);
    let t = signing.sign(&claims);
    let r = send(gw, "GET", "/rpc/whoami", &[("Authorization", &format!("Bearer {t}"))], b"");
    assert_error(&r, 401, json!({"code": "PGRST301", "message": "JWT expired", "details": null, "hint": null}));
}

// Algorithm confusion: HS256 with the public key (its JWK text, or its raw point) as the secret.
#[test]
fn auth_hs256_signed_with_the_public_key_is_401() {
    use base64::Engine;
    let (gw, signing) = es256_gateway();
    let public = signing.public_jwk();
    let e = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut point = vec![4u8];
    point.extend(e.decode(public["x"].as_str().unwrap()).unwrap());
    point.extend(e.decode(public["y"].as_str().unwrap()).unwrap());
    for secret in [public.to_string().into_bytes(), point] {
        let t = gateway::jwt::sign_hs256(&secret, &es256_claims("service_role"));
        let r = send(gw, "GET", "/rpc/whoami", &[("Authorization", &format!("Bearer {t}"))], b"");
        assert_error(&r, 401, json!({"code": "PGRST301", "message": "JWSError JWSInvalidSignature", "details": null, "hint": null}));
    }
}

// NoAnonSpec.hs: "responds with error when user does not attempt auth" / "behaves normally on attempted auth"
#[test]
fn auth_without_anonymous_role_requires_a_token() {
    let no_anon = gateway_with(|c| c.db_anon_role = None);
    let r = send(&no_anon, "GET", "/items", &[], b"");
    assert_error(&r, 401, json!({"code": "PGRST302", "message": "Anonymous access is disabled", "details": null, "hint": null}));
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
    let r = send(&no_anon, "GET", "/items?select=id&id=eq.1", &[("Authorization", &bearer("authenticated"))], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([{"id": 1}]));
}

// Error.hs JwtTokenMissing: a token but no configured secret -> 500 PGRST300
#[test]
fn auth_token_without_configured_secret_is_500_pgrst300() {
    let no_secret = gateway_with(|c| c.jwt_secret = None);
    let r = send(&no_secret, "GET", "/items", &[("Authorization", &bearer("authenticated"))], b"");
    assert_error(&r, 500, json!({"code": "PGRST300", "message": "Server lacks JWT secret", "details": null, "hint": null}));
    assert_eq!(send(&no_secret, "GET", "/items?select=id&id=eq.1", &[], b"").status, 200);
}

// =============================================================================
// Transactions and request settings: RpcSpec.hs "HTTP request env vars",
// docs references/transactions.rst
// =============================================================================

// RpcSpec.hs: "gets the http method" / "gets the http path"
#[test]
fn tx_request_method_and_path_are_set() {
    assert_eq!(post("/rpc/get_guc_value", json!({"name": "request.method"})).json(), json!("POST"));
    assert_eq!(post("/rpc/get_guc_value", json!({"name": "request.path"})).json(), json!("/rpc/get_guc_value"));
    assert_eq!(get("/rpc/get_guc_value?name=request.method").json(), json!("GET"));
}

// RpcSpec.hs: "custom header is set" / "standard header is set" (names lowercased)
#[test]
fn tx_request_headers_are_set_with_lowercase_names() {
    let r = post_h("/rpc/get_guc_value", &[("Custom-Header", "test"), ("Origin", "http://example.com")], r#"{"prefix":"request.headers","name":"custom-header"}"#);
    assert_eq!(r.json(), json!("test"));
    let r = post_h("/rpc/get_guc_value", &[("Origin", "http://example.com")], r#"{"prefix":"request.headers","name":"origin"}"#);
    assert_eq!(r.json(), json!("http://example.com"));
}

// RpcSpec.hs: "single cookie ends up as claims" / "multiple cookies end up as claims"
#[test]
fn tx_request_cookies_are_set() {
    let r = post_h("/rpc/get_guc_value", &[("Cookie", "acookie=cookievalue;secondcookie=anothervalue")], r#"{"prefix":"request.cookies","name":"secondcookie"}"#);
    assert_eq!(r.json(), json!("anothervalue"));
    let r = post_h("/rpc/get_guc_value", &[("Cookie", "acookie=cookievalue")], r#"{"prefix":"request.headers","name":"cookie"}"#);
    assert_eq!(r.json(), Value::Null, "cookies are not in request.headers");
}

// RpcSpec.hs: "gets the Authorization value" and "current role is available as GUC claim"
#[test]
fn tx_authorization_header_and_role_claim_are_visible() {
    let auth = bearer("authenticated");
    let r = post_h("/rpc/get_guc_value", &[("Authorization", &auth)], r#"{"prefix":"request.headers","name":"authorization"}"#);
    assert_eq!(r.json(), json!(auth));
    let r = post("/rpc/get_guc_value", json!({"prefix": "request.jwt.claims", "name": "role"}));
    assert_eq!(r.json(), json!("anon"));
}

// Query.hs setPgLocals: search_path is the request schema, then db-extra-search-path
#[test]
fn tx_search_path_is_the_schema_then_the_extra_search_path() {
    let w = get("/rpc/whoami").json();
    assert_eq!(w["search_path"], "\"api\", \"public\", \"extensions\"");
    let w = get_h("/rpc/whoami", &[("Accept-Profile", "alt")]);
    assert_eq!(w.status, 404, "alt has no whoami: {}", w.text());
}

// Plan.hs callReadPlan txMode: GET is read-only; POST is read-only for STABLE/IMMUTABLE, read-write for VOLATILE
#[test]
fn tx_read_only_for_get_and_stable_functions() {
    assert_eq!(get("/rpc/read_only_stable").json(), json!("on"));
    assert_eq!(post("/rpc/read_only_stable", json!({})).json(), json!("on"));
    assert_eq!(get("/rpc/read_only_volatile").json(), json!("on"));
    assert_eq!(post("/rpc/read_only_volatile", json!({})).json(), json!("off"));
}

// RpcSpec.hs "only for GET rpc": "should fail on mutating procs" (25006 -> 405)
#[test]
fn tx_get_on_a_writing_volatile_function_is_405() {
    let r = get("/rpc/bump_counter");
    assert_error(&r, 405, json!({"code": "25006", "message": "cannot execute INSERT in a read-only transaction", "details": null, "hint": null}));
    let r = post("/rpc/bump_counter", json!({}));
    assert_eq!(r.status, 200, "{}", r.text());
}

// Config/Database.hs queryRoleSettings: ALTER ROLE ... SET settings are applied on the role switch
#[test]
fn tx_role_settings_are_applied() {
    assert_eq!(get("/rpc/whoami").json()["statement_timeout"], "3s");
    assert_eq!(get_h("/rpc/whoami", &[("Authorization", &user(ALICE))]).json()["statement_timeout"], "8s");
}

// docs references/transactions.rst / RollbackSpec.hs: a failed request leaves nothing behind
#[test]
fn tx_a_failing_request_is_rolled_back() {
    let r = post("/rpc/insert_then_fail", json!({}));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["message"], "failed after the insert");
    assert_eq!(get("/rpc/counter_negatives").json(), json!(0));
}

// =============================================================================
// RPC: test/spec/Feature/Query/RpcSpec.hs, docs references/api/functions.rst
// =============================================================================

// RpcSpec.hs "returns text": bare scalar JSON
#[test]
fn rpc_scalar_is_a_bare_json_value() {
    let r = post("/rpc/sayhello", json!({"name": "world"}));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json; charset=utf-8"));
    assert_eq!(r.json(), json!("Hello, world"));
    assert_eq!(r.header("Content-Range"), Some("0-0/*"));
}

// RpcSpec.hs "accepts a variety of arguments with GET": query arguments cast from text
#[test]
fn rpc_get_arguments_are_cast_from_text() {
    assert_eq!(get("/rpc/add_them?a=3&b=4").json(), json!(7));
    let r = get("/rpc/add_them?a=x&b=4");
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "22P02");
}

// RpcSpec.hs "returns setof integers"
#[test]
fn rpc_setof_scalar_is_an_array() {
    assert_eq!(post("/rpc/ret_setof_integers", json!({})).json(), json!([1, 2, 3]));
}

// RpcSpec.hs "a proc that returns a set": "returns proper json"
#[test]
fn rpc_setof_composite_is_an_array_of_objects() {
    let r = post("/rpc/get_items?select=id,name", json!({"min": 2, "max": 3}));
    assert_eq!(r.json(), json!([{"id": 2, "name": "banana"}, {"id": 3, "name": "cherry"}]));
}

// RpcSpec.hs "returns single row from table"
#[test]
fn rpc_single_composite_is_an_object() {
    assert_eq!(post("/rpc/single_item?select=id", json!({"id": 2})).json(), json!({"id": 2}));
}

// RpcSpec.hs "procs with OUT/INOUT params": single and many OUT params are objects
#[test]
fn rpc_out_params_are_an_object() {
    assert_eq!(get("/rpc/single_out_param?num=5").json(), json!({"num_plus_one": 6}));
    assert_eq!(get("/rpc/out_params?num=4").json(), json!({"doubled": 8, "label": "n=4"}));
}

// RpcSpec.hs "procs with TABLE return"
#[test]
fn rpc_table_return_is_an_array_of_objects() {
    assert_eq!(get("/rpc/table_return").json(), json!([{"a": "A", "b": 1}, {"a": "B", "b": 2}]));
}

// RpcSpec.hs "returns 204, no Content-Type header and no content for void"
#[test]
fn rpc_void_is_204_without_body_or_content_type() {
    let r = post("/rpc/ret_void", json!({}));
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("Content-Type"), None);
}

// RpcSpec.hs "returns null for an integer with null value" / "a proc that returns an empty rowset"
#[test]
fn rpc_null_and_empty_set() {
    assert_eq!(post("/rpc/ret_null", json!({})).text(), "null");
    assert_eq!(get("/rpc/test_empty_rowset").json(), json!([]));
}

// RpcSpec.hs "interprets empty string as empty json object on a post request"
#[test]
fn rpc_empty_post_body_is_no_arguments() {
    let r = send(addr(), "POST", "/rpc/noparamsproc", &[], b"");
    assert_eq!(r.json(), json!("Return value of no parameters procedure."));
}

// RpcSpec.hs "can handle procs with args that have a DEFAULT value"
#[test]
fn rpc_defaults_may_be_omitted() {
    assert_eq!(get("/rpc/with_defaults?a=1").json(), json!(11));
    assert_eq!(get("/rpc/with_defaults?a=1&b=2").json(), json!(3));
    assert_eq!(get("/rpc/with_defaults?b=2").status, 404, "a required argument is missing");
}

// RpcSpec.hs "should fail with 404 and hint the closest proc on unknown proc name"
#[test]
fn rpc_unknown_function_is_404_pgrst202_with_hint() {
    let r = get("/rpc/sayhell");
    assert_error(
        &r,
        404,
        json!({
            "code": "PGRST202",
            "message": "Could not find the function api.sayhell without parameters in the schema cache",
            "details": "Searched for the function api.sayhell without parameters, but no matches were found in the schema cache.",
            "hint": "Perhaps you meant to call the function api.sayhello"
        }),
    );
}

// RpcSpec.hs "should fail with 404 and hint the closest args on unknown proc args"
#[test]
fn rpc_unknown_arguments_are_404_with_closest_arguments() {
    let r = get("/rpc/sayhello?nam=Peter");
    assert_error(
        &r,
        404,
        json!({
            "code": "PGRST202",
            "message": "Could not find the function api.sayhello(nam) in the schema cache",
            "details": "Searched for the function api.sayhello with parameter nam, but no matches were found in the schema cache.",
            "hint": "Perhaps you meant to call the function api.sayhello(name)"
        }),
    );
}

// RpcSpec.hs "should not ignore unknown args and fail with 404"
#[test]
fn rpc_extra_arguments_are_not_ignored() {
    let r = get("/rpc/add_them?a=1&b=2&smthelse=blabla");
    assert_error(
        &r,
        404,
        json!({
            "code": "PGRST202",
            "message": "Could not find the function api.add_them(a, b, smthelse) in the schema cache",
            "details": "Searched for the function api.add_them with parameters a, b, smthelse, but no matches were found in the schema cache.",
            "hint": "Perhaps you meant to call the function api.add_them(a, b)"
        }),
    );
}

// RpcSpec.hs "unknown function": "returns 404" on POST (details mention the single unnamed json parameter)
#[test]
fn rpc_unknown_function_by_post() {
    let r = post("/rpc/fakefunc", json!({}));
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["details"],
        "Searched for the function api.fakefunc without parameters or with a single unnamed json/jsonb parameter, but no matches were found in the schema cache."
    );
}

// RpcSpec.hs "should fail with 404 when no json arg is found with prefer single object"
#[test]
fn rpc_single_object_without_json_parameter_is_404() {
    let r = post_h("/rpc/sayhello", &[("Prefer", "params=single-object")], "{}");
    assert_error(
        &r,
        404,
        json!({
            "code": "PGRST202",
            "message": "Could not find the function api.sayhello in the schema cache",
            "details": "Searched for the function api.sayhello with a single json/jsonb parameter, but no matches were found in the schema cache.",
            "hint": null
        }),
    );
}

// RpcSpec.hs "should work with an overloaded function"
#[test]
fn rpc_overloads_are_resolved_by_argument_names() {
    assert_eq!(get("/rpc/overloaded").json(), json!([1, 2, 3]));
    assert_eq!(get("/rpc/overloaded?a=1&b=2").json(), json!(3));
    assert_eq!(get("/rpc/overloaded?a=1&b=2&c=3").json(), json!("123"));
    assert_eq!(post("/rpc/overloaded", json!({"a": 1, "b": 2})).json(), json!(3));
}

// RpcSpec.hs "ambiguous overloaded functions ... should fail with 300 Multiple Choices"
#[test]
fn rpc_ambiguous_overloads_are_300_pgrst203() {
    let r = get("/rpc/ambiguous?arg=value");
    assert_error(
        &r,
        300,
        json!({
            "code": "PGRST203",
            "message": "Could not choose the best candidate function between: api.ambiguous(arg => integer), api.ambiguous(arg => text)",
            "details": null,
            "hint": "Try renaming the parameters or the function itself in the database so function overloading can be resolved"
        }),
    );
}

// RpcSpec.hs "single unnamed param": "can insert json directly"
#[test]
fn rpc_single_unnamed_json_parameter_gets_the_whole_body() {
    assert_eq!(post("/rpc/unnamed_json_param", json!({"A": 1, "B": 2, "C": 3})).json(), json!({"A": 1, "B": 2, "C": 3}));
    let r = send(addr(), "POST", "/rpc/unnamed_text_param", &[("Content-Type", "text/plain")], b"unnamed text arg");
    assert_eq!(r.json(), json!("unnamed text arg"));
}

// RpcSpec.hs "expects a single json object": "does not expand posted json into parameters"
#[test]
fn rpc_prefer_single_object() {
    let body = r#"{"p1": 1, "p2": "text", "p3": {"obj": "text"}}"#;
    let r = post_h("/rpc/singlejsonparam", &[("Prefer", "params=single-object")], body);
    assert_eq!(r.json(), json!({"p1": 1, "p2": "text", "p3": {"obj": "text"}}));
    assert_eq!(r.header("Preference-Applied"), Some("params=single-object"));
    let r = get_h("/rpc/singlejsonparam?p1=1&p2=text", &[("Prefer", "params=single-object")]);
    assert_eq!(r.json(), json!({"p1": "1", "p2": "text"}));
}

// RpcSpec.hs "parses embedded JSON arguments as JSON" / "parses quoted JSON arguments as JSON string"
#[test]
fn rpc_json_arguments_keep_their_json_type() {
    assert_eq!(post("/rpc/json_argument", json!({"arg": {"key": 3}})).json(), json!("object"));
    assert_eq!(post("/rpc/json_argument", json!({"arg": "{ \"key\": 3 }"})).json(), json!("string"));
}

// RpcSpec.hs "procs with VARIADIC params": GET with repeated params, POST with an array
#[test]
fn rpc_variadic_parameters() {
    assert_eq!(get("/rpc/variadic_param?v=hi&v=there").json(), json!(["hi", "there"]));
    assert_eq!(get("/rpc/variadic_param").json(), json!([]));
    assert_eq!(post("/rpc/variadic_param", json!({"v": ["hi", "hello", "there"]})).json(), json!(["hi", "hello", "there"]));
}

// RpcSpec.hs "returns last value for repeated params without VARIADIC"
#[test]
fn rpc_repeated_parameters_keep_the_last_value() {
    assert_eq!(get("/rpc/sayhello?name=ignored&name=world").json(), json!("Hello, world"));
}

// RpcSpec.hs "works when having uppercase identifiers"
#[test]
fn rpc_quoted_identifiers() {
    let r = get("/rpc/quotedFunction?user=mscott&fullName=Michael%20Scott");
    assert_eq!(r.json(), json!({"user": "mscott", "fullName": "Michael Scott"}));
}

// RpcSpec.hs "only takes the first object in case of array of objects payload"
#[test]
fn rpc_array_payload_takes_the_first_object() {
    let r = post_h("/rpc/add_them", &[], r#"[{"a": 1, "b": 2}, {"a": 4, "b": 6}]"#);
    assert_eq!(r.json(), json!(3));
}

// RpcSpec.hs "accepts a variety of arguments from an html form"
#[test]
fn rpc_form_urlencoded_arguments() {
    let r = send(addr(), "POST", "/rpc/add_them", &[("Content-Type", "application/x-www-form-urlencoded")], b"a=2&b=5");
    assert_eq!(r.json(), json!(7));
}

// RpcSpec.hs "can filter proc results" / "can limit proc results" (Content-Range 1-2/*)
#[test]
fn rpc_results_can_be_filtered_ordered_and_limited() {
    let r = get("/rpc/get_items?min=1&max=10&id=gt.2&select=id&order=id.desc&limit=2&offset=1");
    assert_eq!(r.json(), json!([{"id": 9}, {"id": 8}]));
    assert_eq!(r.header("Content-Range"), Some("1-2/*"));
}

// RpcSpec.hs "includes total count if requested": 206 with Content-Range 1-1/2
#[test]
fn rpc_exact_count() {
    let r = send(addr(), "POST", "/rpc/get_items?limit=1&offset=1", &[("Prefer", "count=exact"), ("Content-Type", "application/json")], br#"{"min":2,"max":3}"#);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("Content-Range"), Some("1-1/2"));
    assert_eq!(r.json(), json!([{"id": 3, "name": "cherry", "price": 4.00, "tags": ["fruit", "red"], "data": {"color": "red", "size": 1}, "created_at": "2024-01-01T00:00:00+00:00"}]));
    assert_eq!(r.header("Preference-Applied"), Some("count=exact"));
}

// RpcSpec.hs "using limit and offset" with HEAD: headers, no body
#[test]
fn rpc_head_has_headers_and_no_body() {
    let r = send(addr(), "HEAD", "/rpc/get_items?min=2&max=4&limit=1&offset=1", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json; charset=utf-8"));
    assert_eq!(r.header("Content-Range"), Some("1-1/*"));
    assert!(r.body.is_empty());
}

// RpcSpec.hs "unsupported method": "DELETE fails" (PGRST101), "PATCH fails"
#[test]
fn rpc_delete_patch_put_are_405_pgrst101() {
    let r = send(addr(), "DELETE", "/rpc/sayhello", &[], b"");
    assert_error(&r, 405, json!({"code": "PGRST101", "message": "Cannot use the DELETE method on RPC", "details": null, "hint": null}));
    assert_eq!(send(addr(), "PATCH", "/rpc/sayhello", &[], b"").code(), "PGRST101");
    assert_eq!(send(addr(), "PUT", "/rpc/sayhello", &[], b"").status, 405);
}

// RpcSpec.hs "improper input": "rejects malformed json payload" (PGRST102)
#[test]
fn rpc_invalid_json_is_400_pgrst102() {
    let r = post_h("/rpc/sayhello", &[], "sdfsdf");
    assert_error(&r, 400, json!({"code": "PGRST102", "message": "Empty or invalid json", "details": null, "hint": null}));
}

// ApiRequest.hs getPayload: "Content-Type not acceptable"
#[test]
fn rpc_unacceptable_content_type_is_400() {
    let r = send(addr(), "POST", "/rpc/sayhello", &[("Content-Type", "application/xml")], b"<a/>");
    assert_error(&r, 400, json!({"code": "PGRST102", "message": "Content-Type not acceptable: application/xml", "details": null, "hint": null}));
}

// RpcSpec.hs "improper input": "rejects unknown content type even if payload is good" (406)
#[test]
fn rpc_unacceptable_accept_is_406_pgrst107() {
    let r = send(addr(), "POST", "/rpc/sayhello", &[("Accept", "audio/mpeg3"), ("Content-Type", "application/json")], br#"{"name":"w"}"#);
    assert_error(&r, 406, json!({"code": "PGRST107", "message": "None of these media types are available: audio/mpeg3", "details": null, "hint": null}));
}

// docs references/api/resource_representation.rst "Singular or Plural"
#[test]
fn rpc_singular_accept_returns_an_object() {
    let r = get_h("/rpc/get_items?min=2&max=2&select=id,name", &[("Accept", "application/vnd.pgrst.object+json")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/vnd.pgrst.object+json; charset=utf-8"));
    assert_eq!(r.json(), json!({"id": 2, "name": "banana"}));
}

// SingularSpec.hs: more than one row -> 406 PGRST116
#[test]
fn rpc_singular_with_many_rows_is_406_pgrst116() {
    let r = get_h("/rpc/get_items?min=2&max=3", &[("Accept", "application/vnd.pgrst.object+json")]);
    assert_error(
        &r,
        406,
        json!({"code": "PGRST116", "message": "JSON object requested, multiple (or no) rows returned", "details": "The result contains 2 rows", "hint": null}),
    );
}

// SingularSpec.hs "raises an error ... the rows should not be updated": a failed singular call is rolled back
#[test]
fn rpc_singular_failure_rolls_back_the_call() {
    sql("CREATE OR REPLACE FUNCTION api.insert_two_counters() RETURNS SETOF integer LANGUAGE sql VOLATILE AS $$ INSERT INTO api.counter VALUES (77), (77) RETURNING n $$; NOTIFY pgrst, 'reload schema'");
    let deadline = Instant::now() + Duration::from_secs(20);
    let r = loop {
        let r = send(addr(), "POST", "/rpc/insert_two_counters", &[("Accept", "application/vnd.pgrst.object+json"), ("Content-Type", "application/json")], b"{}");
        if r.status != 404 || Instant::now() > deadline {
            break r;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(r.status, 406, "{}", r.text());
    assert_eq!(sql("SELECT count(*) FROM api.counter WHERE n = 77"), "0");
}

// MultipleSchemaSpec.hs: Accept-Profile selects the schema; Content-Profile is returned
#[test]
fn rpc_accept_profile_selects_the_schema() {
    let r = get_h("/rpc/schema_name", &[("Accept-Profile", "alt")]);
    assert_eq!(r.json(), json!("alt"));
    assert_eq!(r.header("Content-Profile"), Some("alt"));
    let r = get("/rpc/schema_name");
    assert_eq!(r.json(), json!("api"));
    assert_eq!(r.header("Content-Profile"), Some("api"), "many schemas: the default is negotiated too");
}

// MultipleSchemaSpec.hs: POST uses Content-Profile
#[test]
fn rpc_content_profile_selects_the_schema_for_post() {
    let r = post_h("/rpc/alt_only", &[("Content-Profile", "alt")], "{}");
    assert_eq!(r.json(), json!("only in alt"));
    assert_eq!(post("/rpc/alt_only", json!({})).status, 404);
}

// MultipleSchemaSpec.hs "fails trying to read table from unkown schema" (406 PGRST106)
#[test]
fn rpc_unknown_profile_is_406_pgrst106() {
    let r = get_h("/rpc/schema_name", &[("Accept-Profile", "unknown")]);
    assert_error(&r, 406, json!({"code": "PGRST106", "message": "The schema must be one of the following: api, alt", "details": null, "hint": null}));
}

// docs references/api/schemas.rst: only the exposed schemas are served
#[test]
fn rpc_functions_outside_the_exposed_schemas_are_not_found() {
    assert_eq!(get("/rpc/hidden_fn").status, 404);
    assert_eq!(get_h("/rpc/hidden_fn", &[("Accept-Profile", "public")]).code(), "PGRST106");
}

// RpcSpec.hs "GUC headers on function calls" / "GUC status override"
#[test]
fn rpc_response_headers_and_status_from_gucs() {
    let r = post("/rpc/set_response_headers", json!({}));
    assert_eq!(r.status, 202);
    assert_eq!(r.header("X-Test"), Some("key1=val1"));
    assert_eq!(r.header("Cache-Control"), Some("no-store"));
}

// RpcSpec.hs "fails when setting headers with wrong json structure" (PGRST111)
#[test]
fn rpc_bad_response_headers_guc_is_500_pgrst111() {
    let r = post("/rpc/bad_guc_headers", json!({}));
    assert_error(
        &r,
        500,
        json!({"code": "PGRST111", "message": "response.headers guc must be a JSON array composed of objects with a single key and a string value", "details": null, "hint": null}),
    );
}

// RpcSpec.hs "can set the same http header twice"
#[test]
fn rpc_the_same_header_can_be_set_twice() {
    let r = get("/rpc/set_cookie_twice");
    assert_eq!(r.status, 204);
    assert_eq!(r.header("Content-Type"), None);
    assert_eq!(
        r.headers_named("Set-Cookie"),
        vec!["sessionid=38afes7a8; HttpOnly; Path=/", "id=a3fWa; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Secure; HttpOnly"]
    );
}

// RpcSpec.hs "will err when no function with single unnamed text parameter exists and text/plain is specified"
#[test]
fn rpc_text_body_without_an_unnamed_text_parameter_is_404() {
    let r = send(addr(), "POST", "/rpc/add_them", &[("Content-Type", "text/plain")], b"a simple text");
    assert_error(
        &r,
        404,
        json!({
            "code": "PGRST202",
            "message": "Could not find the function api.add_them in the schema cache",
            "details": "Searched for the function api.add_them with a single unnamed text parameter, but no matches were found in the schema cache.",
            "hint": null
        }),
    );
}

// SingularSpec.hs: a function returning a single scalar with the singular media type is the value
#[test]
fn rpc_singular_scalar() {
    let r = get_h("/rpc/add_them?a=1&b=1", &[("Accept", "application/vnd.pgrst.object+json")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!(2));
}

// PreferencesSpec.hs: unknown preferences are ignored, refused with handling=strict (PGRST122)
#[test]
fn rpc_prefer_handling_strict() {
    let r = get_h("/rpc/add_them?a=1&b=1", &[("Prefer", "handling=lenient, nonsense=yes")]);
    assert_eq!(r.json(), json!(2));
    assert_eq!(r.header("Preference-Applied"), Some("handling=lenient"));
    let r = get_h("/rpc/add_them?a=1&b=1", &[("Prefer", "handling=strict, nonsense=yes")]);
    assert_error(&r, 400, json!({"code": "PGRST122", "message": "Invalid preferences given with handling=strict", "details": "Invalid preferences: nonsense=yes", "hint": null}));
}

// OptionsSpec.hs "a function": Allow for volatile / stable functions
#[test]
fn rpc_options_lists_the_allowed_methods() {
    let r = send(addr(), "OPTIONS", "/rpc/bump_counter", &[], b"");
    assert_eq!(r.header("Allow"), Some("OPTIONS,POST"));
    let r = send(addr(), "OPTIONS", "/rpc/noparamsproc", &[], b"");
    assert_eq!(r.header("Allow"), Some("OPTIONS,GET,HEAD,POST"));
}

// =============================================================================
// Errors: docs references/errors.rst, Error.hs, ErrorSpec.hs
// =============================================================================

// RpcSpec.hs "can map a RAISE error code and message to a http status"
#[test]
fn errors_ptnnn_sets_the_status() {
    let r = get("/rpc/raise_pt402");
    assert_error(&r, 402, json!({"code": "PT402", "message": "Payment Required", "details": "Quota exceeded", "hint": "Upgrade your plan"}));
}

// RpcSpec.hs "defaults to status 500 if RAISE code is PT not followed by a number"
#[test]
fn errors_pt_without_a_number_is_500() {
    let r = get("/rpc/raise_bad_pt");
    assert_error(&r, 500, json!({"code": "PT40A", "message": "Wrong", "details": null, "hint": null}));
}

// RpcSpec.hs "treats simple plpgsql raise as invalid input" (P0001 -> 400, with DETAIL and HINT)
#[test]
fn errors_p0001_is_400_with_details_and_hint() {
    let r = post("/rpc/problem", json!({}));
    assert_error(&r, 400, json!({"code": "P0001", "message": "bad thing", "details": "it went wrong", "hint": "try again"}));
}

// RpcSpec.hs "treats plpgsql assert as internal server error" (P0004 -> 500)
#[test]
fn errors_assert_is_500() {
    let r = post("/rpc/assert_fails", json!({}));
    assert_eq!(r.status, 500);
    assert_eq!(r.code(), "P0004");
}

// docs references/errors.rst: 23505 unique_violation -> 409
#[test]
fn errors_unique_violation_is_409() {
    let auth = bearer("service_role");
    let h = [("Authorization", auth.as_str())];
    let first = post_h("/rpc/insert_task", &h, r#"{"id": 500, "title": "unique title"}"#);
    assert_eq!(first.status, 200, "{}", first.text());
    assert_eq!(first.json()["title"], "unique title");
    let again = post_h("/rpc/insert_task", &h, r#"{"id": 501, "title": "unique title"}"#);
    assert_eq!(again.status, 409);
    assert_eq!(again.code(), "23505");
    assert_eq!(again.json()["details"], "Key (title)=(unique title) already exists.");
}

// docs references/errors.rst: 23503 foreign_key_violation -> 409
#[test]
fn errors_foreign_key_violation_is_409() {
    let auth = bearer("service_role");
    let r = post_h("/rpc/add_child", &[("Authorization", auth.as_str())], r#"{"id": 1, "parent_id": 99}"#);
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.code(), "23503");
    let ok = post_h("/rpc/add_child", &[("Authorization", auth.as_str())], r#"{"id": 2, "parent_id": 1}"#);
    assert_eq!(ok.status, 204);
}

// AuthSpec.hs "denies execution on functions that anonymous does not own" (401) and for a user (403)
#[test]
fn errors_insufficient_privilege_is_401_for_anon_403_otherwise() {
    let r = post("/rpc/privileged_hello", json!({"name": "anonymous"}));
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "42501");
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
    let r = post_h("/rpc/privileged_hello", &[("Authorization", &user(ALICE))], r#"{"name":"alice"}"#);
    assert_eq!(r.status, 403);
    assert_eq!(r.header("WWW-Authenticate"), None);
    let r = post_h("/rpc/privileged_hello", &[("Authorization", &bearer("service_role"))], r#"{"name":"jdoe"}"#);
    assert_eq!(r.json(), json!("Privileged hello to jdoe"));
}

// Error.hs: other SQLSTATEs (22xxx) -> 400, with DETAIL and HINT as given (creditgate's invalid_argument)
#[test]
fn errors_data_exceptions_are_400() {
    let r = get("/rpc/divide_by_zero");
    assert_error(&r, 400, json!({"code": "22012", "message": "division by zero", "details": null, "hint": null}));
    let r = post("/rpc/raise_invalid_argument", json!({}));
    assert_error(&r, 400, json!({"code": "22023", "message": "p_cost must be positive", "details": "{\"param\":\"p_cost\"}", "hint": "invalid_argument"}));
}

// RpcSpec.hs "gets message and details from raise sqlstate PGRST" (custom status, status text, headers)
#[test]
fn errors_raise_pgrst_gives_full_control() {
    let r = get("/rpc/raise_sqlstate_test1");
    assert_eq!(r.status, 332);
    assert_eq!(r.reason, "My Custom Status");
    assert_eq!(r.header("X-Header"), Some("str"));
    assert_eq!(r.json(), json!({"code": "123", "message": "ABC", "details": "DEF", "hint": "XYZ"}));
}

// RpcSpec.hs "returns error for invalid JSON in the MESSAGE option of the RAISE statement" (PGRST121)
#[test]
fn errors_raise_pgrst_with_invalid_json_is_500_pgrst121() {
    let r = get("/rpc/raise_sqlstate_invalid_json_message");
    assert_error(
        &r,
        500,
        json!({
            "code": "PGRST121",
            "message": "Could not parse JSON in the \"RAISE SQLSTATE 'PGRST'\" error",
            "details": "Invalid JSON value for MESSAGE: 'INVALID'",
            "hint": "MESSAGE must be a JSON object with obligatory keys: 'code', 'message' and optional keys: 'details', 'hint'."
        }),
    );
}

// ConcurrentSpec.hs / QuerySpec.hs "gives 404 ... nonexistent table": 42P01 -> 404
#[test]
fn errors_unknown_table_is_404_42p01() {
    let r = get("/fakefake");
    assert_error(&r, 404, json!({"code": "42P01", "message": "relation \"api.fakefake\" does not exist", "details": null, "hint": null}));
}

// JsonOperatorSpec.hs: an operator that does not exist -> 42883 -> 404
#[test]
fn errors_undefined_operator_is_404_42883() {
    let r = get("/items?select=name->0");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.code(), "42883");
    assert_eq!(r.json()["message"], "operator does not exist: text -> integer");
}

// ErrorSpec.hs "Non existent URL": "gives 404 on a single nested route" (empty object body)
#[test]
fn errors_nested_routes_are_404() {
    let r = get("/items/nested");
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({}));
    assert_eq!(get("/items/nested/double").status, 404);
}

// ErrorSpec.hs "Unsupported HTTP methods": "should return 405 for TRACE method"
#[test]
fn errors_unsupported_method_is_405_pgrst117() {
    let r = send(addr(), "TRACE", "/", &[], b"");
    assert_error(&r, 405, json!({"code": "PGRST117", "message": "Unsupported HTTP method: TRACE", "details": null, "hint": null}));
    assert_eq!(send(addr(), "OTHER", "/items", &[], b"").code(), "PGRST117");
}

// =============================================================================
// Table reads: QuerySpec.hs, RangeSpec.hs, SingularSpec.hs, AndOrParamsSpec.hs,
// docs references/api/tables_views.rst (what supabase-js sends)
// =============================================================================

// supabase-js from('items').select('id,name').eq('id', 3)
#[test]
fn read_select_and_eq() {
    let r = get("/items?select=id,name&id=eq.3");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([{"id": 3, "name": "cherry"}]));
    assert_eq!(r.header("Content-Location"), Some("/items?id=eq.3&select=id%2Cname"));
}

// supabase-js .order('id', {ascending: false}).limit(3)
#[test]
fn read_order_and_limit() {
    let r = get("/items?select=id&order=id.desc&limit=3");
    assert_eq!(r.json(), json!([{"id": 10}, {"id": 9}, {"id": 8}]));
    assert_eq!(r.header("Content-Range"), Some("0-2/*"));
    let r = get("/items?select=id,price&order=price.desc.nullslast,id&limit=2");
    assert_eq!(r.json(), json!([{"id": 4, "price": 12.00}, {"id": 8, "price": 5.50}]));
    let r = get("/items?select=id&order=price.asc.nullsfirst&limit=1");
    assert_eq!(r.json(), json!([{"id": 10}]));
}

// QuerySpec.hs "filters": neq, gt, gte, lt, lte, in, is
#[test]
fn read_comparison_operators() {
    let ids = |q: &str| -> Vec<i64> {
        get(&format!("/items?select=id&order=id&{q}")).json().as_array().unwrap().iter().map(|v| v["id"].as_i64().unwrap()).collect()
    };
    assert_eq!(ids("id=gt.8"), vec![9, 10]);
    assert_eq!(ids("id=gte.9"), vec![9, 10]);
    assert_eq!(ids("id=lt.2"), vec![1]);
    assert_eq!(ids("id=lte.2"), vec![1, 2]);
    assert_eq!(ids("id=neq.1&id=lt.4"), vec![2, 3]);
    assert_eq!(ids("id=in.(1,3,5)"), vec![1, 3, 5]);
    assert_eq!(ids("id=not.in.(1,2,3,4,5,6,7,8)"), vec![9, 10]);
    assert_eq!(ids("price=is.null"), vec![10]);
    assert_eq!(ids("tags=is.null"), vec![6]);
    assert_eq!(ids("id=in.()"), Vec::<i64>::new());
}

// QuerySpec.hs "matches with like / ilike" (`*` is `%`)
#[test]
fn read_like_and_ilike() {
    let r = get("/items?select=name&name=like.*an*&order=id");
    assert_eq!(r.json(), json!([{"name": "banana"}, {"name": "durian"}, {"name": "eggplant"}]));
    let r = get("/items?select=name&name=ilike.g*");
    assert_eq!(r.json(), json!([{"name": "Grape"}]));
    assert_eq!(get("/items?select=name&name=like.g*").json(), json!([]));
}

// AndOrParamsSpec.hs: or=(...) with nested and(...)
#[test]
fn read_or_and_logic_trees() {
    let r = get("/items?select=id&order=id&or=(id.eq.1,and(id.gt.8,price.is.null))");
    assert_eq!(r.json(), json!([{"id": 1}, {"id": 10}]));
    let r = get("/items?select=id&order=id&not.or=(id.lt.9,id.eq.10)");
    assert_eq!(r.json(), json!([{"id": 9}]));
}

// QuerySpec.hs / JsonOperatorSpec.hs: JSON paths in select and filters; aliases and casts
#[test]
fn read_json_paths_aliases_and_casts() {
    let r = get("/items?select=id,color:data->>color,data->size&id=eq.1");
    assert_eq!(r.json(), json!([{"id": 1, "color": "red", "size": 3}]));
    let r = get("/items?select=id&data->>color=eq.purple");
    assert_eq!(r.json(), json!([{"id": 5}]));
    let r = get("/items?select=label:name,price::text&id=eq.2");
    assert_eq!(r.json(), json!([{"label": "banana", "price": "0.25"}]));
}

// QuerySpec.hs array operators: cs (contains), ov (overlaps)
#[test]
fn read_array_operators() {
    let r = get("/items?select=id&tags=cs.{red}&order=id");
    assert_eq!(r.json(), json!([{"id": 1}, {"id": 3}]));
    let r = get("/items?select=id&tags=ov.{yellow,vegetable}&order=id");
    assert_eq!(r.json(), json!([{"id": 2}, {"id": 5}, {"id": 9}, {"id": 10}]));
}

// QuerySpec.hs: a filter that does not parse is 400 PGRST100
#[test]
fn read_invalid_filter_is_400_pgrst100() {
    let r = get("/items?id=noop.1");
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "PGRST100");
    assert_eq!(get("/items?id=1").code(), "PGRST100");
    assert_eq!(get("/items?order=id.sideways").code(), "PGRST100");
}

// RangeSpec.hs: limit/offset with count=exact -> 206 and Content-Range with the total
#[test]
fn read_exact_count_and_partial_content() {
    let r = get_h("/items?select=id&order=id&limit=2&offset=2", &[("Prefer", "count=exact")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("Content-Range"), Some("2-3/10"));
    assert_eq!(r.header("Preference-Applied"), Some("count=exact"));
    let r = get_h("/items?select=id", &[("Prefer", "count=exact")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Range"), Some("0-9/10"));
}

// supabase-js select('*', {count: 'exact', head: true}): HEAD with the total in Content-Range
#[test]
fn read_head_with_exact_count() {
    let r = send(addr(), "HEAD", "/items?select=*", &[("Prefer", "count=exact")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Range"), Some("0-9/10"));
    assert!(r.body.is_empty());
}

// docs references/configuration.rst db-max-rows: reads are capped
#[test]
fn read_db_max_rows_caps_results() {
    let gw = gateway_with(|c| c.db_max_rows = Some(2));
    let r = send(&gw, "GET", "/items?select=id&order=id", &[("Prefer", "count=exact")], b"");
    assert_eq!(r.json(), json!([{"id": 1}, {"id": 2}]));
    assert_eq!(r.header("Content-Range"), Some("0-1/10"));
    assert_eq!(r.status, 206);
    let r = send(&gw, "GET", "/items?select=id&order=id&limit=1", &[], b"");
    assert_eq!(r.json(), json!([{"id": 1}]));
}

// RangeSpec.hs "with range headers": Range: 1-2 -> 206, Content-Range 1-2/10
#[test]
fn read_range_header() {
    let r = get_h("/items?select=id&order=id", &[("Range", "1-2"), ("Prefer", "count=exact")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.header("Content-Range"), Some("1-2/10"));
    assert_eq!(r.json(), json!([{"id": 2}, {"id": 3}]));
}

// RangeSpec.hs "refuses a range requesting start past last item" / "fails with 416 for offside range"
#[test]
fn read_unsatisfiable_ranges_are_416_pgrst103() {
    let r = get_h("/items?offset=100", &[("Prefer", "count=exact")]);
    assert_error(&r, 416, json!({"code": "PGRST103", "message": "Requested range not satisfiable", "details": "An offset of 100 was requested, but there are only 10 rows.", "hint": null}));
    assert_eq!(r.header("Content-Range"), Some("*/10"));
    let r = get_h("/items", &[("Range", "1-0")]);
    assert_error(&r, 416, json!({"code": "PGRST103", "message": "Requested range not satisfiable", "details": "The lower boundary must be lower than or equal to the upper boundary in the Range header.", "hint": null}));
    let r = get("/items?limit=-1");
    assert_eq!(r.status, 416);
    assert_eq!(r.json()["details"], "Limit should be greater than or equal to zero.");
}

// RangeSpec.hs "returns range Content-Range with */* for empty range"
#[test]
fn read_empty_result() {
    let r = get("/items?id=gt.1000");
    assert_eq!(r.json(), json!([]));
    assert_eq!(r.header("Content-Range"), Some("*/*"));
}

// QuerySpec.hs HEAD: headers only
#[test]
fn read_head_has_no_body() {
    let r = send(addr(), "HEAD", "/items?select=id&limit=2", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Range"), Some("0-1/*"));
    assert!(r.body.is_empty());
}

// SingularSpec.hs "will select an existing object" / "fails for zero rows"
#[test]
fn read_singular_object() {
    let r = get_h("/items?select=id&id=eq.5", &[("Accept", "application/vnd.pgrst.object+json")]);
    assert_eq!(r.json(), json!({"id": 5}));
    assert_eq!(r.header("Content-Type"), Some("application/vnd.pgrst.object+json; charset=utf-8"));
    let r = get_h("/items?id=gt.0&id=lt.0", &[("Accept", "application/vnd.pgrst.object+json")]);
    assert_eq!(r.status, 406);
    assert_eq!(r.json()["details"], "The result contains 0 rows");
}

// RpcSpec.hs/QuerySpec.hs "returns CSV"
#[test]
fn read_csv() {
    let r = get_h("/items?select=id,name&id=lte.2&order=id", &[("Accept", "text/csv")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/csv; charset=utf-8"));
    assert_eq!(r.text(), "id,name\n1,apple\n2,banana");
}

// docs references/api/resource_representation.rst: nulls=stripped
#[test]
fn read_array_with_stripped_nulls() {
    let r = get_h("/items?select=id,price&id=eq.10", &[("Accept", "application/vnd.pgrst.array+json;nulls=stripped")]);
    assert_eq!(r.json(), json!([{"id": 10}]));
}

// docs references/auth.rst "Row Level Security": each user reads their own rows
#[test]
fn read_row_level_security() {
    let r = get_h("/notes?select=body&order=id", &[("Authorization", &user(ALICE))]);
    assert_eq!(r.json(), json!([{"body": "alice 1"}, {"body": "alice 2"}]));
    let r = get_h("/notes?select=body", &[("Authorization", &user("22222222-2222-2222-2222-222222222222"))]);
    assert_eq!(r.json(), json!([{"body": "bob 1"}]));
    let r = get_h("/notes?select=body", &[("Authorization", &user("33333333-3333-3333-3333-333333333333"))]);
    assert_eq!(r.json(), json!([]));
}

// AuthSpec.hs "denies access to tables that anonymous does not own" (401 + WWW-Authenticate: Bearer)
#[test]
fn read_without_privilege_is_401_for_anon() {
    let r = get("/notes");
    assert_error(&r, 401, json!({"code": "42501", "message": "permission denied for table notes", "details": null, "hint": null}));
    assert_eq!(r.header("WWW-Authenticate"), Some("Bearer"));
    let r = get_h("/secrets", &[("Authorization", &user(ALICE))]);
    assert_eq!(r.status, 403);
}

// MultipleSchemaSpec.hs "succeeds in reading table from schema v2" / "doesn't find another_table in schema v1"
#[test]
fn read_tables_of_the_profile_schema() {
    let r = get_h("/things", &[("Accept-Profile", "alt")]);
    assert_eq!(r.json(), json!([{"id": 1, "label": "alt thing"}]));
    assert_eq!(r.header("Content-Profile"), Some("alt"));
    assert_eq!(get("/things").status, 404);
}

// docs references/api/resource_embedding.rst: embedding is not supported here -> PostgREST's "no relationship" error
#[test]
fn read_embedding_is_refused_with_pgrst200() {
    let r = get("/items?select=id,owners(*)");
    assert_eq!(r.status, 400);
    assert_eq!(r.code(), "PGRST200");
    assert_eq!(r.json()["message"], "Could not find a relationship between 'items' and 'owners' in the schema cache");
}

// docs references/api/aggregate_functions.rst: aggregates are disabled by default (PGRST123)
#[test]
fn read_aggregates_are_disabled() {
    let r = get("/items?select=count()");
    assert_error(&r, 400, json!({"code": "PGRST123", "message": "Use of aggregate functions is not allowed", "details": null, "hint": null}));
    assert_eq!(get("/items?select=price.sum()").code(), "PGRST123");
}

// OptionsSpec.hs "a table": Allow lists what the relation accepts; unknown -> 404
#[test]
fn read_options_on_tables_and_views() {
    let r = send(addr(), "OPTIONS", "/items", &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Allow"), Some("OPTIONS,GET,HEAD,POST,PUT,PATCH,DELETE"));
    let r = send(addr(), "OPTIONS", "/items_view", &[], b"");
    assert_eq!(r.header("Allow"), Some("OPTIONS,GET,HEAD,POST,PATCH,DELETE"), "auto-updatable view without a key");
    assert_eq!(send(addr(), "OPTIONS", "/unknown", &[], b"").status, 404);
}

// ErrorSpec.hs "succeeds when requesting root path" (OpenAPI)
#[test]
fn read_root_is_an_openapi_document() {
    let r = get("/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/openapi+json; charset=utf-8"));
    let doc = r.json();
    assert_eq!(doc["swagger"], "2.0");
    assert!(doc["paths"]["/items"].is_object());
    assert!(doc["paths"]["/rpc/add_them"].is_object());
    assert!(doc["paths"]["/things"].is_null(), "alt is not the default schema");
}

// =============================================================================
// Table writes: InsertSpec.hs, UpdateSpec.hs, DeleteSpec.hs, UpsertSpec.hs
// =============================================================================

fn service() -> String {
    bearer("service_role")
}

// InsertSpec.hs "with return=representation" (201 + body) and "return=minimal" (201, no body, Content-Range */*)
#[test]
fn write_insert() {
    let auth = service();
    let r = post_h("/tasks", &[("Authorization", &auth), ("Prefer", "return=representation")], r#"{"id": 100, "title": "write insert"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json(), json!([{"id": 100, "title": "write insert", "done": false}]));
    assert_eq!(r.header("Preference-Applied"), Some("return=representation"));
    let r = post_h("/tasks", &[("Authorization", &auth), ("Prefer", "return=minimal")], r#"[{"id": 101, "title": "b1"}, {"id": 102, "title": "b2"}]"#);
    assert_eq!(r.status, 201);
    assert!(r.body.is_empty());
    assert_eq!(r.header("Content-Range"), Some("*/*"));
    assert_eq!(r.header("Content-Type"), None);
    assert_eq!(get("/tasks?select=id&id=in.(101,102)&order=id").json(), json!([{"id": 101}, {"id": 102}]));
}

// InsertSpec.hs "with ?columns parameter" (what supabase-js sends for a bulk insert): other keys are ignored
#[test]
fn write_insert_with_columns_parameter() {
    let auth = service();
    let r = post_h(
        "/tasks?columns=%22id%22,%22title%22",
        &[("Authorization", &auth), ("Prefer", "return=representation")],
        r#"[{"id": 800, "title": "c1"}, {"id": 801, "title": "c2", "extra": 1}]"#,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json(), json!([{"id": 800, "title": "c1", "done": false}, {"id": 801, "title": "c2", "done": false}]));
    let r = post_h("/tasks?columns=id,nope", &[("Authorization", &auth)], r#"{"id": 802}"#);
    assert_eq!(r.code(), "PGRST204");
}

// InsertSpec.hs: anon without INSERT privilege -> 401
#[test]
fn write_insert_without_privilege_is_401() {
    let r = post("/tasks", json!({"id": 150, "title": "nope"}));
    assert_eq!(r.status, 401);
    assert_eq!(r.code(), "42501");
}

// InsertSpec.hs: "All object keys must match" and an unknown column (PGRST204)
#[test]
fn write_insert_payload_errors() {
    let auth = service();
    let r = post_h("/tasks", &[("Authorization", &auth)], r#"[{"id": 1}, {"title": "x"}]"#);
    assert_error(&r, 400, json!({"code": "PGRST102", "message": "All object keys must match", "details": null, "hint": null}));
    let r = post_h("/tasks", &[("Authorization", &auth)], r#"{"id": 160, "nope": 1}"#);
    assert_error(&r, 400, json!({"code": "PGRST204", "message": "Could not find the 'nope' column of 'tasks' in the schema cache", "details": null, "hint": null}));
}

// UpdateSpec.hs: PATCH with filters (204; 200 with return=representation)
#[test]
fn write_update() {
    let auth = service();
    post_h("/tasks", &[("Authorization", &auth)], r#"{"id": 200, "title": "to update"}"#);
    let r = send(addr(), "PATCH", "/tasks?id=eq.200", &[("Authorization", &auth), ("Content-Type", "application/json")], br#"{"done": true}"#);
    assert_eq!(r.status, 204);
    assert_eq!(r.header("Content-Range"), Some("0-0/*"));
    let r = send(addr(), "PATCH", "/tasks?id=eq.200", &[("Authorization", &auth), ("Content-Type", "application/json"), ("Prefer", "return=representation")], br#"{"title": "updated"}"#);
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([{"id": 200, "title": "updated", "done": true}]));
}

// DeleteSpec.hs: DELETE with filters; return=representation
#[test]
fn write_delete() {
    let auth = service();
    post_h("/tasks", &[("Authorization", &auth)], r#"[{"id": 300, "title": "del 1"}, {"id": 301, "title": "del 2"}]"#);
    let r = send(addr(), "DELETE", "/tasks?id=eq.300", &[("Authorization", &auth), ("Prefer", "return=representation")], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!([{"id": 300, "title": "del 1", "done": false}]));
    let r = send(addr(), "DELETE", "/tasks?id=eq.301", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 204);
    assert_eq!(get("/tasks?id=in.(300,301)").json(), json!([]));
}

// UpsertSpec.hs: Prefer resolution=merge-duplicates / ignore-duplicates on the primary key
#[test]
fn write_upsert() {
    let auth = service();
    post_h("/tasks", &[("Authorization", &auth)], r#"{"id": 400, "title": "upsert a"}"#);
    let r = post_h("/tasks", &[("Authorization", &auth), ("Prefer", "resolution=merge-duplicates,return=representation")], r#"{"id": 400, "title": "upsert b"}"#);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json(), json!([{"id": 400, "title": "upsert b", "done": false}]));
    assert_eq!(r.header("Preference-Applied"), Some("resolution=merge-duplicates, return=representation"));
    let r = post_h("/tasks", &[("Authorization", &auth), ("Prefer", "resolution=ignore-duplicates,return=representation")], r#"{"id": 400, "title": "upsert c"}"#);
    assert_eq!(r.json(), json!([]));
    assert_eq!(get("/tasks?select=title&id=eq.400").json(), json!([{"title": "upsert b"}]));
}

// UpsertSpec.hs "PUT": the URL's primary key must match the payload's (PGRST115); only pk filters (PGRST105)
#[test]
fn write_put() {
    let auth = service();
    let h = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    let r = send(addr(), "PUT", "/tasks?id=eq.450", &h, br#"{"id": 450, "title": "put me"}"#);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(get("/tasks?select=title&id=eq.450").json(), json!([{"title": "put me"}]));
    let r = send(addr(), "PUT", "/tasks?id=eq.451", &h, br#"{"id": 452, "title": "mismatch"}"#);
    assert_error(&r, 400, json!({"code": "PGRST115", "message": "Payload values do not match URL in primary key column(s)", "details": null, "hint": null}));
    let r = send(addr(), "PUT", "/tasks?title=eq.x", &h, br#"{"id": 453, "title": "x"}"#);
    assert_eq!(r.code(), "PGRST105");
}

// SingularSpec.hs "raises an error for multiple rows" on PATCH: 406 and the rows are not updated
#[test]
fn write_singular_update_of_many_rows_is_rolled_back() {
    let auth = service();
    post_h("/tasks", &[("Authorization", &auth)], r#"[{"id": 600, "title": "s1"}, {"id": 601, "title": "s2"}]"#);
    let r = send(
        addr(),
        "PATCH",
        "/tasks?id=in.(600,601)",
        &[("Authorization", &auth), ("Content-Type", "application/json"), ("Accept", "application/vnd.pgrst.object+json")],
        br#"{"done": true}"#,
    );
    assert_eq!(r.status, 406);
    assert_eq!(r.json()["details"], "The result contains 2 rows");
    assert_eq!(get("/tasks?select=done&id=in.(600,601)").json(), json!([{"done": false}, {"done": false}]));
}

// UpdateSpec.hs / RangeSpec.hs: limit on PATCH/DELETE requires an order (PGRST109)
#[test]
fn write_limit_requires_order() {
    let auth = service();
    let r = send(addr(), "DELETE", "/tasks?limit=1", &[("Authorization", &auth)], b"");
    assert_eq!(r.code(), "PGRST109");
    post_h("/tasks", &[("Authorization", &auth)], r#"[{"id": 700, "title": "l1"}, {"id": 701, "title": "l2"}]"#);
    let r = send(addr(), "DELETE", "/tasks?id=in.(700,701)&order=id&limit=1", &[("Authorization", &auth)], b"");
    assert_eq!(r.status, 204);
    assert_eq!(get("/tasks?select=id&id=in.(700,701)").json(), json!([{"id": 701}]));
}

// =============================================================================
// The server: CorsSpec.hs, body limits, bad input, concurrency
// =============================================================================

// CorsSpec.hs "replies naively and permissively to preflight request"
#[test]
fn server_cors_preflight() {
    let r = send(
        addr(),
        "OPTIONS",
        "/",
        &[("Accept", "*/*"), ("Origin", "http://example.com"), ("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "Foo,Bar")],
        b"",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(r.header("Access-Control-Allow-Methods"), Some("GET, POST, PATCH, PUT, DELETE, OPTIONS, HEAD"));
    assert_eq!(r.header("Access-Control-Allow-Headers"), Some("Authorization, Foo, Bar, Accept, Accept-Language, Content-Language"));
    assert_eq!(r.header("Access-Control-Max-Age"), Some("86400"));
    assert!(r.body.is_empty());
}

// CorsSpec.hs "exposes necesssary response headers to regular request"
#[test]
fn server_cors_on_regular_requests() {
    let r = get_h("/items?select=id&limit=1", &[("Origin", "http://example.com")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(
        r.header("Access-Control-Expose-Headers"),
        Some("Content-Encoding, Content-Location, Content-Range, Content-Type, Date, Location, Server, Transfer-Encoding, Range-Unit")
    );
    let r = get("/items?select=id&limit=1");
    assert_eq!(r.header("Access-Control-Allow-Origin"), None, "no Origin, no CORS headers");
    let r = get_h("/rpc/nope", &[("Origin", "http://example.com")]);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some("*"), "errors carry CORS headers too");
}

// App.hs NoSchemaCacheError: without a database the gateway answers 503 PGRST002 and keeps serving
#[test]
fn server_without_a_database_answers_503() {
    let e = env();
    let dead = format!("postgres://authenticator:postgres@127.0.0.1:{}/postgres", free_port());
    let mut config = base_config(&dead);
    config.db_pool_acquisition_timeout = Duration::from_secs(1);
    let handle = e.rt.block_on(async {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        gateway::spawn(config, listener).unwrap()
    });
    let addr = handle.local_addr().to_string();
    GATEWAYS.lock().unwrap_or_else(|e| e.into_inner()).push(handle);
    for _ in 0..3 {
        let r = send(&addr, "GET", "/items", &[], b"");
        assert_error(&r, 503, json!({"code": "PGRST002", "message": "Could not query the database for the schema cache. Retrying.", "details": null, "hint": null}));
    }
    let r = send(&addr, "GET", "/items", &[("Authorization", "Bearer not.a.jwt")], b"");
    assert_eq!(r.status, 401, "authentication comes before the schema cache");
}

// Bounded request body: over the limit -> 413, whether declared or streamed
#[test]
fn server_request_body_is_bounded() {
    let small = gateway_with(|c| c.max_body_bytes = 1024);
    let big = format!("{{\"name\": \"{}\"}}", "x".repeat(2000));
    let r = send(&small, "POST", "/rpc/sayhello", &[("Content-Type", "application/json")], big.as_bytes());
    assert_eq!(r.status, 413);
    assert_eq!(r.code(), "PGRST102");
    let mut chunked = Vec::new();
    for _ in 0..3 {
        chunked.extend_from_slice(format!("{:x}\r\n{}\r\n", 600, "y".repeat(600)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = send_raw(&small, "POST", "/rpc/sayhello", &[("Content-Type", "application/json"), ("Transfer-Encoding", "chunked")], &chunked, false);
    assert_eq!(r.status, 413);
    let ok = send(&small, "POST", "/rpc/sayhello", &[("Content-Type", "application/json")], br#"{"name":"small"}"#);
    assert_eq!(ok.json(), json!("Hello, small"));
}

// Robustness: bad input never takes the gateway down
#[test]
fn server_survives_bad_input() {
    let deep = "[".repeat(100_000);
    let deep_or = format!("/items?or={}", "or(".repeat(20_000));
    let cases: Vec<(&str, String, Vec<u8>)> = vec![
        ("POST", "/rpc/sayhello".into(), deep.into_bytes()),
        ("POST", "/rpc/sayhello".into(), vec![0xff, 0xfe, 0x00, 0x7b]),
        ("GET", "/items?select=%ff%fe".into(), vec![]),
        ("GET", "/items?id=eq.%00".into(), vec![]),
        ("GET", "/%ff/%00".into(), vec![]),
        ("GET", "/items?select=((((((".into(), vec![]),
        ("GET", "/items?or=(((((".into(), vec![]),
        ("GET", deep_or, vec![]),
        ("GET", "/items?order=,,,,".into(), vec![]),
        ("GET", "/items?id=in.(\"unterminated".into(), vec![]),
        ("GET", "/items?limit=99999999999999999999999".into(), vec![]),
        ("GET", "/items?offset=5&limit=9223372036854775807".into(), vec![]),
        ("GET", "/rpc/add_them?a=99999999999&b=1".into(), vec![]),
        ("POST", "/tasks".into(), b"{\"id\": \"not a number\"}".to_vec()),
    ];
    for (method, target, body) in cases {
        let r = send(addr(), method, &target, &[("Content-Type", "application/json")], &body);
        assert!(r.status < 500, "{method} {target}: {} {}", r.status, r.text());
    }
    // Raw garbage on the socket.
    if let Ok(mut s) = TcpStream::connect(addr()) {
        let _ = s.write_all(b"\x00\x01GARBAGE\r\n\r\n");
        let mut sink = Vec::new();
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.read_to_end(&mut sink);
    }
    assert_eq!(get("/rpc/add_them?a=1&b=2").json(), json!(3), "still serving");
}

// A connection pool: many requests at once all succeed
#[test]
fn server_serves_concurrent_requests() {
    let threads: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || {
                (0..5).all(|j| get(&format!("/rpc/add_them?a={i}&b={j}")).json() == json!(i + j))
            })
        })
        .collect();
    for t in threads {
        assert!(t.join().unwrap());
    }
}

// =============================================================================
// The schema cache: docs references/schema_cache.rst (NOTIFY pgrst, 'reload schema')
// =============================================================================

fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

// schema_cache.rst "Schema Cache Reloading": a changed function's new shape is served after NOTIFY.
// A gateway of its own: no other case's request can reload its cache meanwhile.
#[test]
fn cache_notify_reloads_the_schema_cache() {
    let gw = gateway_with(|_| {});
    let probe = || send(&gw, "GET", "/rpc/reload_probe", &[], b"");
    sql("CREATE FUNCTION api.reload_probe() RETURNS integer LANGUAGE sql STABLE AS $$ SELECT 1 $$; NOTIFY pgrst, 'reload schema'");
    wait_for("reload_probe to exist", || probe().status == 200);
    assert_eq!(probe().json(), json!(1));
    // The return type changes from a scalar to a set: only a reload can know.
    sql("DROP FUNCTION api.reload_probe(); CREATE FUNCTION api.reload_probe() RETURNS SETOF integer LANGUAGE sql STABLE AS $$ VALUES (1), (2) $$");
    assert_eq!(probe().json(), json!(1), "stale cache: still the scalar shape");
    sql("NOTIFY pgrst, 'reload schema'");
    wait_for("the new shape", || probe().json() == json!([1, 2]));
}

// Listener.hs: when the listening connection drops, reconnect (and reload)
#[test]
fn cache_listener_reconnects_after_losing_its_connection() {
    let gw = gateway_with(|_| {});
    let probe = || send(&gw, "GET", "/rpc/reconnect_probe", &[], b"");
    sql("CREATE FUNCTION api.reconnect_probe() RETURNS integer LANGUAGE sql STABLE AS $$ SELECT 1 $$; NOTIFY pgrst, 'reload schema'");
    wait_for("reconnect_probe to exist", || probe().status == 200);
    let killed = sql(&format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{}'",
        gateway::listener::LISTENER_APPLICATION_NAME
    ));
    assert_ne!(killed, "0", "a listener connection was found and terminated");
    wait_for("a listener to come back", || {
        sql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = '{}' AND query ILIKE 'LISTEN%'",
            gateway::listener::LISTENER_APPLICATION_NAME
        )) != "0"
    });
    sql("DROP FUNCTION api.reconnect_probe(); CREATE FUNCTION api.reconnect_probe() RETURNS SETOF integer LANGUAGE sql STABLE AS $$ VALUES (7), (8) $$; NOTIFY pgrst, 'reload schema'");
    wait_for("the reconnected listener to reload", || probe().json() == json!([7, 8]));
}

// Safety net (not PostgREST's): a function created without NOTIFY is found by a reload on a miss
#[test]
fn cache_a_missing_function_triggers_a_reload() {
    sql("CREATE FUNCTION api.no_notify_probe() RETURNS text LANGUAGE sql STABLE AS $$ SELECT 'found' $$");
    wait_for("no_notify_probe", || get("/rpc/no_notify_probe").status == 200);
    assert_eq!(get("/rpc/no_notify_probe").json(), json!("found"));
}
