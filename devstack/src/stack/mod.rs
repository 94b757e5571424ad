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
//! - Webhooks out: a receiver at `/devstack/webhooks` (the function's
//!   `CREDITGATE_WEBHOOK_URL` unless configured otherwise) that checks the
//!   signature and keeps the last deliveries for the page, and (`cargo dev
//!   up` only) a drain calling `POST /webhooks/deliver` every 3 s
//!   ([`webhook_receiver`]).
//!
//! Ctrl-C (or SIGTERM) stops every process it started.
//!
//! Here: the stack itself (options, start and stop, the gateway process, the
//! banner). Beside it: [`database`] (migrations, demo user, sweeper),
//! [`front_proxy`] (the API port) with [`cors`], [`function_runner`] (Deno)
//! and [`fake_generator`].

mod cors;
mod database;
mod fake_generator;
mod front_proxy;
mod function_runner;
mod webhook_receiver;

pub use database::migrate_new;
pub use function_runner::{function_env, functions, Function, EXTRA_FUNCTIONS_ENV};
pub use webhook_receiver::{verified as webhook_verified, LOCAL_WEBHOOK_SECRET, RECEIVER_PATH};

use crate::keys::{self, KeySet, SigningKey};
use crate::pg::Cluster;
use crate::support::{child_command, terminate, wait_for_port};
use anyhow::{Context, Result};
use database::{ensure_demo_user, sweep};
use front_proxy::{serve_front, Proxy};
use function_runner::start_functions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// The demo user `up` creates (and its opening grant, once).
pub const DEMO_USER_ID: &str = "de000000-0000-4000-8000-000000000001";
pub const DEMO_EMAIL: &str = "demo@creditgate.local";
const DEMO_CREDITS: i32 = 100;

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

/// `cargo dev up [--fresh]`.
pub fn main(fresh: bool) -> Result<()> {
    crate::setup::ensure(crate::setup::Need::Stack)?;
    build_package()?;
    let options = Options::from_env(fresh);
    let stack = Stack::start(&options)?;
    print_banner(&options, &stack);
    let runtime = tokio::runtime::Runtime::new()?;
    // Webhooks out: what pg_cron does on Supabase (the test stacks leave
    // draining to their tests).
    runtime.spawn(webhook_receiver::drain(options.api_url(), keys::service_role_key()));
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

    pub fn options(&self) -> &Options {
        &self.options
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
        for mut child in [self.functions.take(), self.gateway.take()].into_iter().flatten() {
            terminate(&mut child);
        }
        self.cluster.stop();
    }
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

