//! `cargo dev up`: what `supabase start` serves, without Docker.
//!
//! - 127.0.0.1:54322: the embedded PostgreSQL ([`crate::pg`]), migrated, with a
//!   demo user.
//! - 127.0.0.1:54321: the API, through a small front proxy that does what
//!   Supabase's API gateway (Kong) and edge runtime do: `/rest/v1/*` ->
//!   the PostgREST-compatible gateway (after the `apikey` check; the
//!   `sb_publishable_`/`sb_secret_` keys stand for the anon and service-role
//!   JWTs), `/functions/v1/<name>/*` -> the function under Deno (after the
//!   JWT check when `verify_jwt` is on), `/auth/v1/.well-known/jwks.json`
//!   (the public signing key), CORS, and a page at `/`.
//! - JWTs as on a current Supabase project ([`crate::keys`]): user access
//!   tokens are ES256, signed with a key made on the first start and kept in
//!   the data directory (`--fresh` makes a new one); the legacy anon and
//!   service-role keys stay HS256 with the legacy secret.
//! - A sweeper that releases expired holds every few seconds.
//!
//! Ctrl-C (or SIGTERM) stops every process it started.

use crate::keys::{self, KeySet, SigningKey};
use crate::pg::Cluster;
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The demo user `up` creates (and its opening grant, once).
pub const DEMO_USER_ID: &str = "de000000-0000-4000-8000-000000000001";
pub const DEMO_EMAIL: &str = "demo@creditgate.local";
const DEMO_CREDITS: i32 = 100;
/// Largest request body the front proxy forwards (PostgREST's own bound is
/// the gateway's; this one protects the proxy).
const BODY_LIMIT_BYTES: usize = 1 << 20;
/// How often the sweeper releases expired holds and old rate-limit state.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Where the stack listens and keeps its data; the test runner starts a
/// second stack beside a developer's with other values.
#[derive(Clone, Debug)]
pub struct Options {
    pub api_port: u16,
    pub db_port: u16,
    pub gateway_port: u16,
    pub functions_port: u16,
    pub data_dir: PathBuf,
    pub fresh: bool,
}

impl Options {
    /// `supabase start`'s ports, overridable by environment (for tests).
    pub fn from_env(fresh: bool) -> Options {
        let port = |name: &str, default: u16| {
            std::env::var(name).ok().and_then(|value| value.parse().ok()).unwrap_or(default)
        };
        let api_port = port("CREDITGATE_API_PORT", 54321);
        Options {
            api_port,
            db_port: port("CREDITGATE_DB_PORT", crate::pg::DEFAULT_PORT),
            gateway_port: port("CREDITGATE_GATEWAY_PORT", api_port + 9),
            functions_port: port("CREDITGATE_FUNCTIONS_PORT", api_port + 10),
            data_dir: std::env::var_os("CREDITGATE_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| crate::project_root().join("target/devstack/local")),
            fresh,
        }
    }

    pub fn api_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }
}

pub fn main(args: &[String]) -> Result<()> {
    let fresh = args.iter().any(|arg| arg == "--fresh");
    if let Some(unknown) = args.iter().find(|arg| *arg != "--fresh") {
        bail!("unknown option {unknown} (usage: cargo dev up [--fresh])");
    }
    crate::setup::ensure(crate::setup::Need::Stack)?;
    build_package()?;
    let options = Options::from_env(fresh);
    let stack = Stack::start(&options)?;
    print_banner(&options, &stack);
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(stack.serve_until_signal());
    drop(stack);
    result
}

/// Builds the wasm package the Edge Function imports, if the project has one.
pub fn build_package() -> Result<()> {
    let script = crate::project_root().join("scripts/build-pkg.sh");
    if script.exists() {
        crate::setup::run(Command::new("bash").arg(&script).env("PATH", crate::setup::tool_path()))?;
    }
    Ok(())
}

/// The running stack's processes; dropping it stops them.
pub struct Stack {
    options: Options,
    cluster: Cluster,
    gateway: Option<Child>,
    functions: Option<Child>,
    signing_key: Arc<SigningKey>,
    /// The functions served, read once at start.
    function_list: Vec<Function>,
}

impl Stack {
    /// Starts PostgreSQL (migrated, with the demo user) and the functions'
    /// Deno process. Call from the main thread: children are tied to the
    /// thread that spawns them (`PR_SET_PDEATHSIG`).
    pub fn start(options: &Options) -> Result<Stack> {
        let cluster = Cluster::start(&options.data_dir.join("pg"), options.db_port, options.fresh)?;
        cluster.bootstrap("postgres")?;
        let applied = migrate_new(&cluster)?;
        if !applied.is_empty() {
            eprintln!("applied {} migration(s)", applied.len());
        }
        ensure_demo_user(&cluster)?;
        let signing_key = Arc::new(SigningKey::load_or_create(&options.data_dir, options.fresh)?);
        // `keys::user_token` signs for this stack from now on.
        keys::install(signing_key.clone(), &options.api_url());
        let gateway = start_gateway(options, &cluster, &signing_key)?;
        let function_list = functions()?;
        let functions = start_functions(options, &function_list, &signing_key)?;
        Ok(Stack { options: options.clone(), cluster, gateway: Some(gateway), functions, signing_key, function_list })
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// The key that signs this stack's user access tokens.
    pub fn signing_key(&self) -> &Arc<SigningKey> {
        &self.signing_key
    }

    /// The file holding the private signing key (a JSON array of JWKs).
    pub fn signing_key_path(&self) -> PathBuf {
        SigningKey::path_in(&self.options.data_dir)
    }

    /// A user's access token for this stack, as its Auth server would issue it.
    pub fn user_token(&self, user_id: &str, email: &str, lifetime_seconds: i64) -> String {
        let issuer = format!("{}/auth/v1", self.options.api_url());
        self.signing_key.sign(&keys::user_claims(&issuer, user_id, email, lifetime_seconds))
    }

    /// Serves the API until Ctrl-C or SIGTERM.
    pub async fn serve_until_signal(&self) -> Result<()> {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        self.serve_until(async move {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("\nstopping");
        })
        .await
    }

    /// Serves the API until `stop` completes.
    pub async fn serve_until(&self, stop: impl std::future::Future<Output = ()>) -> Result<()> {
        tokio::select! {
            served = self.serve() => served,
            () = stop => Ok(()),
        }
    }

    /// Serves the API (the proxy, the sweeper) forever.
    pub async fn serve(&self) -> Result<()> {
        let options = &self.options;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.api_port))
            .await
            .with_context(|| format!("bind the API to 127.0.0.1:{}", options.api_port))?;
        let proxy = Arc::new(Proxy::new(options, self.signing_key.clone(), self.function_list.clone()));
        let front = serve_front(listener, proxy);
        let sweeper = sweep(self.cluster.url("postgres", "postgres"));
        tokio::select! {
            result = front => result.context("front proxy"),
            result = sweeper => result.context("sweeper"),
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in [self.functions.take(), self.gateway.take()].into_iter().flatten() {
            terminate(child);
        }
        self.cluster.stop();
    }
}

fn terminate(mut child: Child) {
    // SAFETY: a signal to our own child.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGTERM);
    }
    let _ = child.wait();
}

/// A child process that receives SIGTERM if this process dies first.
fn child_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    command
}

/// The PostgREST-compatible gateway, as its own process configured by
/// PostgREST's variables, as Supabase runs PostgREST behind its API gateway.
fn start_gateway(options: &Options, cluster: &Cluster, signing_key: &SigningKey) -> Result<Child> {
    let log_path = options.data_dir.join("gateway.log");
    std::fs::create_dir_all(&options.data_dir)?;
    let log = std::fs::File::create(&log_path)?;
    let mut child = child_command(crate::devstack_exe()?)
        .arg("gateway")
        .env("PGRST_DB_URI", cluster.url("authenticator", "postgres"))
        .env("PGRST_DB_SCHEMAS", "public")
        .env("PGRST_DB_ANON_ROLE", "anon")
        // A JWK set, as Supabase configures PostgREST on a project with
        // signing keys: the legacy secret (for the anon and service-role
        // keys) and the public half of the ES256 key (for user tokens).
        .env("PGRST_JWT_SECRET", KeySet::local(signing_key).to_private_jwks().to_string())
        .env("PGRST_SERVER_HOST", "127.0.0.1")
        .env("PGRST_SERVER_PORT", options.gateway_port.to_string())
        .env("PGRST_DB_POOL", "20")
        // As Supabase configures its PostgREST.
        .env("PGRST_DB_EXTRA_SEARCH_PATH", "public,extensions")
        .env("PGRST_DB_MAX_ROWS", "1000")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start the gateway")?;
    wait_for_port(options.gateway_port, Some(&mut child), Some(&log_path), Duration::from_secs(60))?;
    Ok(child)
}

fn print_banner(options: &Options, stack: &Stack) {
    let api = options.api_url();
    let service = keys::service_role_key();
    let user = stack.user_token(DEMO_USER_ID, DEMO_EMAIL, 24 * 3600);
    eprintln!(
        "
creditgate local stack is running.

         API URL: {api}
     Page (demo): {api}/
          DB URL: postgresql://postgres:postgres@127.0.0.1:{db}/postgres
        JWKS URL: {api}/auth/v1/.well-known/jwks.json
 signing key kid: {kid} (ES256; private key in {key_file})
 Publishable key: {publishable}
      Secret key: {secret_key}
      JWT secret: {secret} (legacy, HS256)
        anon key: {anon}
service_role key: {service}
       demo user: {DEMO_USER_ID} ({DEMO_EMAIL})
 demo user token: {user}

Try:
  curl -s {api}/rest/v1/rpc/get_credit_balance -H 'apikey: {service}' \\
       -H 'Authorization: Bearer {service}' -H 'Content-Type: application/json' \\
       -d '{{\"p_user_id\": \"{DEMO_USER_ID}\"}}'
  curl -s {api}/functions/v1/credits/balance -H 'Authorization: Bearer {user}'
  curl -s -X POST {api}/functions/v1/credits/charge -H 'Authorization: Bearer {user}' \\
       -H 'Idempotency-Key: first-try' -H 'Content-Type: application/json' -d '{{\"operation\": \"image\"}}'

Ctrl-C stops everything.",
        db = options.db_port,
        secret = keys::JWT_SECRET,
        anon = keys::anon_key(),
        kid = stack.signing_key().kid(),
        key_file = stack.signing_key_path().display(),
        publishable = keys::PUBLISHABLE_KEY,
        secret_key = keys::SECRET_KEY,
    );
}

// -----------------------------------------------------------------------------
// Database: migrations as `supabase db push` tracks them, and the demo user
// -----------------------------------------------------------------------------

/// Applies the migrations not yet recorded in Supabase's migration table.
pub fn migrate_new(cluster: &Cluster) -> Result<Vec<PathBuf>> {
    cluster.query(
        "postgres",
        "CREATE SCHEMA IF NOT EXISTS supabase_migrations;
         CREATE TABLE IF NOT EXISTS supabase_migrations.schema_migrations
           (version text PRIMARY KEY, name text, statements text[])",
    )?;
    let done = cluster.query("postgres", "SELECT version FROM supabase_migrations.schema_migrations")?;
    let done: Vec<&str> = done.lines().collect();
    let mut applied = Vec::new();
    for path in crate::pg::migrations()? {
        let stem = path.file_stem().and_then(|stem| stem.to_str()).unwrap_or_default().to_string();
        let (version, name) = stem.split_once('_').unwrap_or((&stem, ""));
        if done.contains(&version) {
            continue;
        }
        cluster.run_file("postgres", &path)?;
        cluster.query(
            "postgres",
            &format!(
                "INSERT INTO supabase_migrations.schema_migrations (version, name) VALUES ('{}', '{}')",
                version.replace('\'', "''"),
                name.replace('\'', "''")
            ),
        )?;
        applied.push(path);
    }
    Ok(applied)
}

fn ensure_demo_user(cluster: &Cluster) -> Result<()> {
    cluster.query(
        "postgres",
        &format!(
            "INSERT INTO auth.users (id, aud, role, email, email_confirmed_at, raw_app_meta_data)
             VALUES ('{DEMO_USER_ID}', 'authenticated', 'authenticated', '{DEMO_EMAIL}', now(),
                     '{{\"provider\":\"email\"}}')
             ON CONFLICT (id) DO NOTHING;
             SELECT public.grant_credits('{DEMO_USER_ID}', {DEMO_CREDITS}, 'welcome credits',
                                         'demo-welcome', '{{}}'::jsonb);"
        ),
    )?;
    Ok(())
}

async fn sweep(url: String) -> Result<()> {
    let mut interval = tokio::time::interval(SWEEP_EVERY);
    loop {
        interval.tick().await;
        // A failed sweep (the database restarting) is retried next tick.
        if let Ok((client, connection)) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await {
            tokio::spawn(connection);
            let _ = client
                .batch_execute(
                    "SELECT public.expire_stale_generation_jobs(); SELECT public.cleanup_expired_rate_limits();",
                )
                .await;
        }
    }
}

// -----------------------------------------------------------------------------
// Functions: every folder in supabase/functions/ with an index.ts, served by
// one Deno process (devstack/functions/serve.ts) as Supabase's edge runtime does
// -----------------------------------------------------------------------------

/// A function's name, entrypoint, and whether the runtime checks its
/// caller's JWT (`[functions.<name>] verify_jwt` in supabase/config.toml; on
/// by default, as in Supabase).
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub verify_jwt: bool,
    pub entrypoint: PathBuf,
}

/// Directories laid out as `supabase/` (a `config.toml`, `functions/<name>/index.ts`)
/// whose functions the stack serves beside the project's: the test runner
/// adds functions of its own this way (`CREDITGATE_EXTRA_FUNCTIONS`, paths
/// separated by `:`).
pub const EXTRA_FUNCTIONS_ENV: &str = "CREDITGATE_EXTRA_FUNCTIONS";

pub fn functions() -> Result<Vec<Function>> {
    let mut found = functions_in(&crate::project_root().join("supabase"))?;
    if let Some(extra) = std::env::var_os(EXTRA_FUNCTIONS_ENV) {
        for dir in std::env::split_paths(&extra).filter(|dir| !dir.as_os_str().is_empty()) {
            for function in functions_in(&dir)? {
                if !found.iter().any(|known| known.name == function.name) {
                    found.push(function);
                }
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The functions of one `supabase/`-like directory.
fn functions_in(dir: &Path) -> Result<Vec<Function>> {
    let config_path = dir.join("config.toml");
    let config: toml::Value = match std::fs::read_to_string(&config_path) {
        Ok(text) => toml::from_str(&text).with_context(|| config_path.display().to_string())?,
        Err(_) => toml::Value::Table(Default::default()),
    };
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("functions")) else {
        return Ok(found);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('_') || name.starts_with('.') || !path.join("index.ts").exists() {
            continue;
        }
        let verify_jwt = config
            .get("functions")
            .and_then(|functions| functions.get(&name))
            .and_then(|function| function.get("verify_jwt"))
            .and_then(toml::Value::as_bool)
            .unwrap_or(true);
        found.push(Function { name, verify_jwt, entrypoint: path.join("index.ts") });
    }
    Ok(found)
}

fn start_functions(options: &Options, functions: &[Function], signing_key: &SigningKey) -> Result<Option<Child>> {
    if functions.is_empty() {
        return Ok(None);
    }
    let root = crate::project_root();
    let log_path = options.data_dir.join("functions.log");
    std::fs::create_dir_all(&options.data_dir)?;
    let log = std::fs::File::create(&log_path)?;
    let mut command = child_command(crate::setup::deno());
    command
        .args(["run", "--allow-net", "--allow-read", "--allow-env", "--no-prompt"])
        .arg(root.join("devstack/functions/serve.ts"))
        .arg(options.functions_port.to_string())
        .args(functions.iter().map(|function| &function.entrypoint))
        .envs(function_env(options, signing_key)?)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = command.spawn().context("start deno")?;
    wait_for_port(options.functions_port, Some(&mut child), Some(&log_path), Duration::from_secs(60))?;
    Ok(Some(child))
}

/// The environment Supabase gives every function (on a project with signing
/// keys and the new API keys), plus supabase/functions/.env.
pub fn function_env(options: &Options, signing_key: &SigningKey) -> Result<Vec<(String, String)>> {
    let mut env = vec![
        ("SUPABASE_URL".to_string(), options.api_url()),
        ("SUPABASE_ANON_KEY".to_string(), keys::anon_key()),
        ("SUPABASE_SERVICE_ROLE_KEY".to_string(), keys::service_role_key()),
        ("SUPABASE_PUBLISHABLE_KEYS".to_string(), json!({"default": keys::PUBLISHABLE_KEY}).to_string()),
        ("SUPABASE_SECRET_KEYS".to_string(), json!({"default": keys::SECRET_KEY}).to_string()),
        ("SUPABASE_JWKS".to_string(), signing_key.jwks().to_string()),
        (
            "SUPABASE_DB_URL".to_string(),
            format!("postgresql://postgres:postgres@127.0.0.1:{}/postgres", options.db_port),
        ),
        ("GENERATOR_URL".to_string(), format!("{}/devstack/generator", options.api_url())),
    ];
    if let Ok(text) = std::fs::read_to_string(crate::project_root().join("supabase/functions/.env")) {
        for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
            if let Some((name, value)) = line.split_once('=') {
                env.push((name.trim().to_string(), value.trim().trim_matches('"').to_string()));
            }
        }
    }
    // The caller's environment wins, so tests can configure the function.
    for (name, value) in std::env::vars() {
        if let Some(pos) = env.iter().position(|(known, _)| *known == name) {
            env[pos].1 = value;
        } else if name.starts_with("CREDITGATE_") || name == "GENERATOR_URL" {
            env.push((name, value));
        }
    }
    Ok(env)
}

/// Waits until something listens on 127.0.0.1:`port`, for at most `timeout`,
/// failing early if `child` exits first; `log` (the child's output) goes
/// into the error.
pub fn wait_for_port(port: u16, mut child: Option<&mut Child>, log: Option<&Path>, timeout: Duration) -> Result<()> {
    let log_text = || log.map(|log| std::fs::read_to_string(log).unwrap_or_default()).unwrap_or_default();
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        if let Some(child) = child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("it exited ({status}) before listening on 127.0.0.1:{port}: {}", log_text());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("nothing listened on 127.0.0.1:{port} within {timeout:?}: {}", log_text())
}

// -----------------------------------------------------------------------------
// The front proxy on :54321
// -----------------------------------------------------------------------------

type Body = Full<Bytes>;
type HttpClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Body>;

struct Proxy {
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
}

impl Proxy {
    fn new(options: &Options, signing_key: Arc<SigningKey>, functions: Vec<Function>) -> Proxy {
        Proxy {
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

async fn serve_front(listener: tokio::net::TcpListener, proxy: Arc<Proxy>) -> Result<()> {
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

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().expect("static header"));
    with_cors(response)
}

fn with_cors(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.entry("access-control-allow-origin").or_insert("*".parse().expect("static header"));
    response
}

fn preflight() -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::new()));
    let headers = response.headers_mut();
    for (name, value) in [
        ("access-control-allow-origin", "*"),
        ("access-control-allow-methods", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        (
            "access-control-allow-headers",
            "authorization, x-client-info, apikey, content-type, content-profile, accept-profile, prefer, range, idempotency-key, x-region",
        ),
        ("access-control-max-age", "3600"),
    ] {
        headers.insert(name, value.parse().expect("static header"));
    }
    response
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
            Err(refusal) => return refusal,
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
                return refusal;
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
fn check_api_key(proxy: &Proxy, request: &Request<Incoming>) -> Result<String, Response<Body>> {
    let from_header = request.headers().get("apikey").and_then(|value| value.to_str().ok()).map(str::to_string);
    let from_query = request.uri().query().and_then(|query| {
        query.split('&').find_map(|pair| pair.strip_prefix("apikey=").map(str::to_string))
    });
    match from_header.or(from_query) {
        None => Err(json_response(StatusCode::UNAUTHORIZED, json!({"message": "No API key found in request"}))),
        Some(key)
            if key == proxy.anon_key
                || key == proxy.service_role_key
                || key == keys::PUBLISHABLE_KEY
                || key == keys::SECRET_KEY =>
        {
            Ok(key)
        }
        Some(_) => Err(json_response(StatusCode::UNAUTHORIZED, json!({"message": "Invalid API key"}))),
    }
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
        Some(value) => crate::gateway::jwt::bearer_token(Some(value.as_bytes())) == key.as_bytes(),
    };
    if replace {
        if let Ok(value) = format!("Bearer {jwt}").parse() {
            request.headers_mut().insert("authorization", value);
        }
    }
}

/// The edge runtime's `verify_jwt`: a valid, unexpired token signed with one
/// of the project's keys (an ES256 user token, or an HS256 legacy key).
fn check_jwt(proxy: &Proxy, request: &Request<Incoming>) -> Result<(), Response<Body>> {
    let Some(header) = request.headers().get("authorization").and_then(|value| value.to_str().ok()) else {
        return Err(json_response(StatusCode::UNAUTHORIZED, json!({"msg": "Error: Missing authorization header"})));
    };
    let token = header.strip_prefix("Bearer ").or_else(|| header.strip_prefix("bearer ")).unwrap_or("");
    match keys::verify(token, &proxy.keys, chrono::Utc::now().timestamp()) {
        Ok(_) => Ok(()),
        Err(_) => Err(json_response(StatusCode::UNAUTHORIZED, json!({"msg": "Invalid JWT"}))),
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

/// The local stand-in for an AI provider (`GENERATOR_URL`). It does what the
/// request's `prompt` says: a prompt starting with `fail` gets a 500, one
/// starting with `hang` gets no answer for a minute, anything else succeeds
/// with a result URL.
async fn fake_generator(request: Request<Incoming>) -> Response<Body> {
    let body = match http_body_util::Limited::new(request.into_body(), BODY_LIMIT_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return json_response(StatusCode::PAYLOAD_TOO_LARGE, json!({"error": "too large"})),
    };
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let prompt = request.get("prompt").and_then(|prompt| prompt.as_str()).unwrap_or("");
    if prompt.starts_with("fail") {
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "the generator failed (as asked)"}));
    }
    if prompt.starts_with("hang") {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let id = uuid::Uuid::new_v4();
    json_response(StatusCode::OK, json!({"url": format!("https://images.example/{id}.png")}))
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
