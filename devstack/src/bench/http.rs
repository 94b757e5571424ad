//! The HTTP and wasm figures of `cargo dev bench`.
//!
//! - The two `.wasm` modules (npm client and Edge Functions): bytes raw and
//!   gzipped, first import, compile and instantiation times in Deno
//!   ([`super::module`]).
//! - `POST /charge` end to end: a local stack of its own (PostgreSQL, the
//!   gateway, the front proxy), and one Deno process serving two functions
//!   side by side: the real `credits` (the wasm handler) and
//!   bench/http/credits_ts (the same route hand-written in TypeScript: same
//!   checks, same RPC, same answer). Both call the RPC through the stack's API
//!   (front proxy -> gateway -> PostgreSQL), and are loaded alike (same
//!   clients, users, requests; runs alternate). The ratio of their rates is the
//!   cost of wasm. Also the real function through the front proxy, as an
//!   app reaches it (`/functions/v1/credits/charge`, JWT checked there too).

use super::module::Module;
use super::{median, Options};
use crate::stack::{Options as StackOptions, Stack};
use crate::support::{build_package_retrying, die_with_parent, free_ports, terminate, wait_for_port, ServedStack};
use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Concurrent HTTP clients (connections kept alive).
const CONNECTIONS: usize = 16;
/// Users the requests spread over (each with a billion credits).
const USERS: usize = 200;
const WARM_UP: Duration = Duration::from_secs(2);

#[derive(Serialize)]
pub struct Figures {
    modules: Vec<Module>,
    series: Vec<Series>,
    /// wasm rps / TypeScript rps (target: within 5%, so >= 0.95).
    wasm_vs_ts: f64,
    met: bool,
}

#[derive(Serialize, Clone)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: usize,
    errors: usize,
}

#[derive(Serialize)]
struct Series {
    label: String,
    url: String,
    runs: Vec<Run>,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: usize,
}

impl Figures {
    pub fn print(&self) {
        Module::print(&self.modules);
        println!(
            "POST /charge over HTTP, {CONNECTIONS} connections, medians of runs:\n{:<40} {:>9} {:>9} {:>9} {:>7}",
            "client", "req/s", "p50 ms", "p99 ms", "errors"
        );
        for series in &self.series {
            println!(
                "{:<40} {:>9.1} {:>9.2} {:>9.2} {:>7}",
                series.label, series.rps, series.p50_ms, series.p99_ms, series.errors
            );
        }
        println!(
            "wasm client vs TypeScript client: {:.3}x the requests per second (target: within 5%, >= 0.95x): {}",
            self.wasm_vs_ts,
            if self.met { "met" } else { "NOT met" }
        );
    }
}

impl Figures {
    /// The README table's rows: `POST /charge` through the wasm handler
    /// against the TypeScript twin (rates, p50, p99), then each module.
    pub fn readme_rows(&self) -> Vec<super::readme_table::Row> {
        let mut rows = Vec::new();
        if let [wasm, ts, ..] = self.series.as_slice() {
            rows.push(super::readme_table::Row {
                figure: "POST /charge over HTTP".to_string(),
                versus: "wasm handler vs TypeScript twin".to_string(),
                target: ">=0.95x".to_string(),
                regimes: [
                    format!(
                        "{:.2}x ({:.0} / {:.0} req/s; p50 {:.1} / {:.1} ms, p99 {:.1} / {:.1} ms)",
                        self.wasm_vs_ts, wasm.rps, ts.rps, wasm.p50_ms, ts.p50_ms, wasm.p99_ms, ts.p99_ms
                    ),
                    "-".to_string(),
                ],
                met: if self.met { "yes" } else { "**no**" }.to_string(),
            });
        }
        rows.extend(self.modules.iter().map(Module::readme_row));
        rows
    }
}

pub fn measure(root: &Path, options: &Options) -> Result<Figures> {
    if !root.join("supabase/functions/credits/index.ts").exists() {
        bail!("no Edge Function at supabase/functions/credits/index.ts");
    }
    crate::setup::ensure(crate::setup::Need::Stack)?;
    build_package_retrying()?;
    let modules = super::module::measure(root)?;

    // The functions read these at start: no limit gets in the way of the load.
    let limits = [("CREDITGATE_USER_LIMIT", "1000000/60"), ("CREDITGATE_IP_LIMIT", "off")];
    for (name, value) in limits {
        std::env::set_var(name, value);
    }
    let base = free_ports(54621, 100, &[0, 1, 9, 10, 11])?;
    let stack_options = StackOptions {
        api_port: base,
        db_port: base + 1,
        gateway_port: base + 9,
        functions_port: base + 10,
        data_dir: root.join("target/devstack/bench-stack"),
        fresh: true,
    };
    let served = ServedStack::serve(Stack::start(&stack_options)?, "bench stack", PORT_TIMEOUT)?;
    let stack = served.stack();
    let deno_port = base + 11;
    let outcome = charge_rates(root, options, stack, &stack_options, deno_port);
    // The stack's processes stop here.
    drop(served);
    for (name, _) in limits {
        std::env::remove_var(name);
    }
    let series = outcome?;
    let wasm_vs_ts = if series[1].rps > 0.0 { series[0].rps / series[1].rps } else { 0.0 };
    Ok(Figures {
        modules,
        series,
        wasm_vs_ts,
        met: wasm_vs_ts >= 0.95,
    })
}

/// The charge rates: the wasm and TypeScript functions side by side on one
/// Deno (alternating runs), then the wasm one through the front proxy.
fn charge_rates(root: &Path, options: &Options, stack: &Stack, stack_options: &StackOptions, deno_port: u16) -> Result<Vec<Series>> {
    let users = make_users(stack)?;
    let _functions = DenoFunctions::start(root, stack_options, deno_port)?;
    wait_for_port(deno_port, None, None, PORT_TIMEOUT)?;
    let targets = [
        ("wasm: credits (Rust -> wasm)", format!("http://127.0.0.1:{deno_port}/credits/charge")),
        ("TypeScript: credits_ts (hand-written)", format!("http://127.0.0.1:{deno_port}/credits_ts/charge")),
    ];
    let runtime = tokio::runtime::Runtime::new()?;
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(), Vec::new()];
    for (label, url) in &targets {
        eprintln!("  warm-up {label}");
        runtime.block_on(load(url, &users, WARM_UP))?;
    }
    for round in 0..options.runs {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for index in order {
            let (label, url) = &targets[index];
            let run = runtime.block_on(load(url, &users, Duration::from_secs(u64::from(options.seconds))))?;
            eprintln!(
                "  {label:<40} run {}: {:>8.1} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  errors {}",
                round + 1,
                run.rps,
                run.p50_ms,
                run.p99_ms,
                run.errors
            );
            runs[index].push(run);
        }
    }
    let through_proxy = format!("{}/functions/v1/credits/charge", stack_options.api_url());
    let label = "wasm via the API gateway (front proxy)";
    runtime.block_on(load(&through_proxy, &users, WARM_UP))?;
    let mut proxy_runs = Vec::new();
    for round in 0..options.runs {
        let run = runtime.block_on(load(&through_proxy, &users, Duration::from_secs(u64::from(options.seconds))))?;
        eprintln!("  {label:<40} run {}: {:>8.1} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms", round + 1, run.rps, run.p50_ms, run.p99_ms);
        proxy_runs.push(run);
    }
    let mut series: Vec<Series> = targets
        .iter()
        .zip(runs)
        .map(|((label, url), runs)| summarize(label, url, runs))
        .collect();
    series.push(summarize(label, &through_proxy, proxy_runs));
    Ok(series)
}

fn summarize(label: &str, url: &str, runs: Vec<Run>) -> Series {
    Series {
        label: label.to_string(),
        url: url.to_string(),
        rps: median(runs.iter().map(|run| run.rps).collect()),
        p50_ms: median(runs.iter().map(|run| run.p50_ms).collect()),
        p99_ms: median(runs.iter().map(|run| run.p99_ms).collect()),
        errors: runs.iter().map(|run| run.errors).sum(),
        runs,
    }
}

/// Bench users in the stack's database, each with a billion credits, and a
/// token for each.
fn make_users(stack: &Stack) -> Result<Vec<String>> {
    stack.cluster().query(
        "postgres",
        &format!(
            "INSERT INTO auth.users (id, email, aud, role)
             SELECT ('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid, 'http-bench-' || g || '@bench.local',
                    'authenticated', 'authenticated'
             FROM generate_series(1, {USERS}) g ON CONFLICT DO NOTHING;
             SELECT count(public.grant_credits(('00000000-0000-4000-8000-' || lpad(g::text, 12, '0'))::uuid,
                                               1000000000, 'bench opening balance'))
             FROM generate_series(1, {USERS}) g;"
        ),
    )?;
    Ok((1..=USERS)
        .map(|n| {
            let id = format!("00000000-0000-4000-8000-{n:012}");
            crate::keys::user_token(&id, &format!("http-bench-{n}@bench.local"), 3600)
        })
        .collect())
}

/// One Deno process serving `credits` and `credits_ts`, as the stack serves
/// functions (devstack/functions/serve.ts), with the environment Supabase
/// gives a function. Stopped on drop.
struct DenoFunctions {
    child: Child,
}

impl DenoFunctions {
    fn start(root: &Path, stack: &StackOptions, port: u16) -> Result<DenoFunctions> {
        let entrypoints: Vec<PathBuf> =
            vec![root.join("supabase/functions/credits/index.ts"), root.join("bench/http/credits_ts/index.ts")];
        let log = std::fs::File::create(stack.data_dir.join("bench-functions.log"))?;
        let mut command = Command::new(crate::setup::deno());
        command
            .args(["run", "--allow-net", "--allow-read", "--allow-env", "--no-prompt"])
            .arg(root.join("devstack/functions/serve.ts"))
            .arg(port.to_string())
            .args(&entrypoints)
            .env_remove("LD_LIBRARY_PATH")
            .env("SUPABASE_URL", stack.api_url())
            .env("SUPABASE_ANON_KEY", crate::keys::anon_key())
            .env("SUPABASE_SERVICE_ROLE_KEY", crate::keys::service_role_key())
            // As on a project with signing keys: the JWKS inline, no legacy
            // secret (both handlers verify the ES256 user tokens with it).
            .env("SUPABASE_JWKS", crate::keys::current_key().jwks().to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        // The child goes when we go.
        die_with_parent(&mut command);
        let child = command.spawn().context("start deno with credits and credits_ts")?;
        Ok(DenoFunctions { child })
    }
}

impl Drop for DenoFunctions {
    fn drop(&mut self) {
        terminate(&mut self.child);
    }
}

/// How long the stack's API and the bench's Deno get to listen.
const PORT_TIMEOUT: Duration = Duration::from_secs(60);

/// `CONNECTIONS` clients POSTing charges to `url` for `duration`: each
/// request a random user's token, a fresh Idempotency-Key and
/// `{"operation":"text"}` (one credit).
async fn load(url: &str, tokens: &[String], duration: Duration) -> Result<Run> {
    let client: Client<_, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).pool_max_idle_per_host(CONNECTIONS * 2).build_http();
    let tokens = Arc::new(tokens.to_vec());
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for connection in 0..CONNECTIONS {
        let (client, tokens, done, url) = (client.clone(), tokens.clone(), done.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut latencies_us: Vec<u64> = Vec::new();
            let mut errors = 0usize;
            let mut sequence = 0u64;
            let mut first_error: Option<String> = None;
            while !done.load(Ordering::Relaxed) {
                sequence += 1;
                let token = &tokens[(sequence as usize * 7 + connection * 13) % tokens.len()];
                let request = hyper::Request::post(&url)
                    .header("authorization", format!("Bearer {token}"))
                    .header("content-type", "application/json")
                    .header("idempotency-key", format!("http-bench-{}-{connection}-{sequence}", uuid::Uuid::new_v4()))
                    .body(Full::new(Bytes::from_static(br#"{"operation":"text"}"#)))?;
                let sent = Instant::now();
                match client.request(request).await {
                    Ok(response) => {
                        let status = response.status();
                        let body = response.into_body().collect().await.map(|body| body.to_bytes());
                        if status == hyper::StatusCode::OK && body.is_ok() {
                            latencies_us.push(sent.elapsed().as_micros() as u64);
                        } else {
                            errors += 1;
                            first_error.get_or_insert_with(|| {
                                format!("{status}: {}", body.map(|b| String::from_utf8_lossy(&b).to_string()).unwrap_or_default())
                            });
                        }
                    }
                    Err(error) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{error}"));
                    }
                }
            }
            anyhow::Ok((latencies_us, errors, first_error))
        }));
    }
    tokio::time::sleep(duration).await;
    done.store(true, Ordering::Relaxed);
    let mut latencies: Vec<u64> = Vec::new();
    let mut errors = 0;
    let mut first_error = None;
    for task in tasks {
        let (mut task_latencies, task_errors, task_error) = task.await??;
        latencies.append(&mut task_latencies);
        errors += task_errors;
        first_error = first_error.or(task_error);
    }
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(error) = &first_error {
        eprintln!("    ({errors} failed requests at {url}; the first: {})", error.chars().take(300).collect::<String>());
    }
    latencies.sort_unstable();
    let percentile = |p: f64| -> f64 {
        if latencies.is_empty() {
            return 0.0;
        }
        let index = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[index] as f64 / 1000.0
    };
    Ok(Run {
        rps: latencies.len() as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
        ok: latencies.len(),
        errors,
    })
}
