//! `cargo dev test`: every test the project has, on a fresh private cluster.
//!
//! Suites run in order; a failing suite does not stop the others, so one run
//! shows everything that is wrong. The last line is `N passed, N failed`
//! (suites), and the exit code is non-zero if any failed.

use crate::pg::Cluster;
use crate::setup::Need;
use crate::support::{pg_prove, pgtap_files, wait_for_port, ServedStack};
use crate::{db_checks, http_checks};
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

// Test ports sit below Linux's ephemeral range (32768-60999), where no
// outgoing connection can already hold them, and away from `cargo dev up`'s.

/// The test cluster's port, for this checkout (see [`checkout_offset`]).
pub fn test_pg_port() -> u16 {
    24332 + checkout_offset()
}

/// Test runs in two checkouts of the project (a clone and a worktree) run
/// side by side: each checkout's test ports are shifted by a multiple of
/// 40 taken from its path, so they do not collide (the cluster's and the
/// stack's ports are 89 to 99 apart, never a multiple of 40).
pub fn checkout_offset() -> u16 {
    let root = crate::project_root();
    let hash = root.to_string_lossy().bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    });
    (hash % 50) as u16 * 40
}

/// The test groups `cargo dev test [groups...]` takes, with what each runs.
pub const GROUPS: &[(&str, &str)] = &[
    ("db", "migrations, pgTAP, upgrades, concurrency, cron, privileges, crash"),
    ("rust", "cargo test: crate units, devstack units, gateway conformance"),
    ("stack", "build the package and start the test stack (no suite of its own)"),
    ("js", "the packed package from Node, Deno and Chromium"),
    ("wasm", "wasm-pack test --headless --chrome"),
    ("function", "the Edge Function's types and handler under Deno"),
    ("e2e", "supabase-js against the stack"),
    ("page", "the demo page in headless Chromium"),
    ("http", "hostile input, hostile tokens, SIGKILL, on a stack of its own"),
    ("up", "`cargo dev up`, Ctrl-C, a restart"),
];

/// A group named on the command line: one of [`GROUPS`] or the start of
/// one (`cargo dev test func`); anything else is refused.
pub fn parse_group(name: &str) -> Result<String, String> {
    if !name.is_empty() && GROUPS.iter().any(|(group, _)| group.starts_with(name)) {
        return Ok(name.to_string());
    }
    let known: Vec<String> = GROUPS.iter().map(|(group, what)| format!("  {group:<9} {what}")).collect();
    Err(format!("no test group is called {name:?}; the groups are:\n{}", known.join("\n")))
}

/// `cargo dev test [groups...]`: every group, or the named ones.
pub fn main(groups: &[String]) -> Result<()> {
    for group in groups {
        parse_group(group).map_err(anyhow::Error::msg)?;
    }
    let only: Vec<&str> = groups.iter().map(String::as_str).collect();
    let database_only = !only.is_empty() && only.iter().all(|name| name.starts_with("db"));
    crate::setup::ensure(if database_only { Need::Database } else { Need::Everything })?;
    let mut run = Run::default();
    let root = crate::project_root();
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.starts_with(o));
    if wanted("db") {
        db_suites(&mut run)?;
    }
    if wanted("rust") {
        run.suite("rust: cargo test (crate units, devstack units, gateway conformance)", || {
            crate::setup::run(
                Command::new("cargo")
                    .args(["test", "--workspace", "--profile", "devstack"])
                    .current_dir(&root),
            )
        });
    }
    if ["stack", "js", "wasm", "function", "e2e", "page"].iter().any(|group| wanted(group)) {
        run.suite("pkg: build the wasm package", crate::stack::build_package);
        stack_suites(&mut run, &wanted)?;
    }
    if wanted("http") {
        // A stack of its own: the SIGKILL suite kills parts of it.
        let http = http_checks::HttpStack::start();
        let stack = || http.as_ref().map_err(|error| anyhow::anyhow!("the stack did not start: {error:#}"));
        run.suite("http: hostile input against every route: no 5xx, no change on a 4xx", || {
            http_checks::hostile_input(stack()?)
        });
        run.suite("http: hostile tokens and another user's job: refused, nothing changed", || {
            http_checks::tokens(stack()?)
        });
        run.suite("http: SIGKILL of the function runtime and the gateway under charges: no credit lost", || {
            http_checks::sigkill(stack()?)
        });
    }
    if wanted("up") {
        run.suite("stack: `cargo dev up`, Ctrl-C leaves nothing behind, data survives a restart", up_and_interrupt);
    }
    run.finish()
}

/// The database suites, on a fresh private cluster.
fn db_suites(run: &mut Run) -> Result<()> {
    let root = crate::project_root();
    let cluster = Cluster::start(&root.join("target/devstack/test-pg"), test_pg_port(), true)?;
    run.suite("db: migrations on a fresh database, three times over", || fresh_migrations(&cluster));
    run.suite("db: pgTAP (supabase/tests/database)", || {
        prove_dir(&cluster, FRESH, &root.join("supabase/tests/database"))
    });
    run.suite("db: legacy upgrade, from before the seed (tests/upgrade)", || {
        legacy_upgrade(&cluster, "legacy", &root.join("tests/upgrade"))
    });
    run.suite("db: legacy upgrade, the seed half applied (tests/upgrade/seed-half-applied)", || {
        legacy_upgrade(&cluster, "seed_half_applied", &root.join("tests/upgrade/seed-half-applied"))
    });
    run.suite("db: concurrency", || db_checks::model::concurrency(&cluster, FRESH));
    run.suite("db: concurrency, credit lots (spending order, settlements, expiry, revokes) against a model", || {
        db_checks::lots_model::lots_concurrency(&cluster, FRESH)
    });
    run.suite("db: concurrency, charges under two shared limits (charge_credits_with_limits)", || {
        db_checks::limits_model::multi_limit_concurrency(&cluster, FRESH)
    });
    run.suite("db: concurrency, weighted rate, unit (corrected) and concurrency limits and a token bucket, against a model", || {
        db_checks::limits_model::limit_kinds_concurrency(&cluster, FRESH)
    });
    run.suite("db: pg_cron runs the sweeper and the cleanup (cron.job_run_details: succeeded)", || {
        db_checks::cron::cron_runs(&cluster, FRESH)
    });
    run.suite("db: privileges, every function and table tried as each role", || {
        db_checks::privileges::privilege_sweep(&cluster, FRESH)
    });
    run.suite("db: PostgreSQL immediate shutdown under charges, twice: no credit lost or created", || {
        db_checks::crash::postgres_crash()
    });
    Ok(())
}

/// The test stack's options: its own ports and data, beside a developer's.
fn test_stack_options() -> crate::stack::Options {
    let offset = checkout_offset();
    crate::stack::Options {
        api_port: 24421 + offset,
        db_port: 24422 + offset,
        gateway_port: 24430 + offset,
        functions_port: 24431 + offset,
        data_dir: crate::project_root().join("target/devstack/test-stack"),
        fresh: true,
    }
}

/// Suites that need the whole stack running: the built package from Node,
/// Deno and Chromium, supabase-js as a real app, the Edge Function end to end.
fn stack_suites(run: &mut Run, wanted: &dyn Fn(&str) -> bool) -> Result<()> {
    let root = crate::project_root();
    let options = test_stack_options();
    // The function gives up on the generator after 2 s here (20 s by
    // default), so the tests of a hanging generator finish quickly.
    std::env::set_var("CREDITGATE_GENERATOR_TIMEOUT_MS", "2000");
    // The test clients stand in for a CDN the deployment trusts: their
    // X-Forwarded-For hop is the one left of the one the stack's proxy
    // appends, so each test can be its own client address.
    std::env::set_var("CREDITGATE_TRUSTED_PROXY_HOPS", "2");
    // Test-only functions beside the project's (verify_jwt on and off).
    std::env::set_var(crate::stack::EXTRA_FUNCTIONS_ENV, root.join("tests/e2e/supabase"));
    let stack = crate::stack::Stack::start(&options);
    std::env::remove_var(crate::stack::EXTRA_FUNCTIONS_ENV);
    let served = ServedStack::serve(stack?, "test stack", STACK_START_TIMEOUT)?;
    let stack = served.stack();
    let env = [
        ("CREDITGATE_URL", options.api_url()),
        ("CREDITGATE_ANON_KEY", crate::keys::anon_key()),
        ("CREDITGATE_SERVICE_ROLE_KEY", crate::keys::service_role_key()),
        ("CREDITGATE_JWT_SECRET", crate::keys::JWT_SECRET.to_string()),
        // The stack's private ES256 signing key (a JSON array of JWKs): tests
        // sign user access tokens with it as the stack's Auth server would.
        ("CREDITGATE_SIGNING_KEYS_PATH", stack.signing_key_path().to_string_lossy().into_owned()),
        ("CREDITGATE_DB_URL", stack.cluster().url("postgres", "postgres")),
        ("PATH", crate::setup::tool_path()),
    ];
    for (group, name, mut command) in stack_suite_commands(&root) {
        if !wanted(group) {
            continue;
        }
        // `cargo run` sets LD_LIBRARY_PATH for us; Deno refuses to spawn
        // (psql) with it set unless given every run permission.
        command
            .current_dir(&root)
            .env_remove("LD_LIBRARY_PATH")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())));
        run.suite(name, || crate::setup::run(&mut command));
    }
    // The stack's processes stop here.
    drop(served);
    Ok(())
}

/// The stack suites' commands: (group, suite name, command), in the order
/// they run.
fn stack_suite_commands(root: &Path) -> Vec<(&'static str, &'static str, Command)> {
    let script = |path: &str| {
        let mut command = Command::new("bash");
        command.arg(root.join(path));
        command
    };
    vec![
        ("js", "js: the packed package from Node, Deno and Chromium (tests/js/run.sh)", script("tests/js/run.sh")),
        ("wasm", "wasm: wasm-pack test --headless --chrome (tests/wasm/run.sh)", script("tests/wasm/run.sh")),
        ("function", "function: the Edge Function's types and handler under Deno (tests/function)", {
            let mut command = Command::new("bash");
            command.arg("-c").arg(
                "deno check supabase/functions/credits/index.ts supabase/functions/stripe-webhook/index.ts && \
                 deno test --no-check --allow-net --allow-read --allow-env --allow-run=psql tests/function",
            );
            command
        }),
        ("e2e", "e2e: supabase-js against the stack (tests/e2e)", {
            let mut command = Command::new("node");
            command.args(["--experimental-websocket", "--test", "--test-concurrency=1"]).arg(root.join("tests/e2e"));
            command
        }),
        // Last: it spends the demo user's and 127.0.0.1's rate limits.
        ("page", "page: the demo page in headless Chromium (tests/page; screenshot in tests/output)", {
            let mut command = Command::new("node");
            command.args(["--experimental-websocket", "--test"]).arg(root.join("tests/page"));
            command
        }),
    ]
}

/// `cargo dev up` builds the package first, which takes minutes cold.
const STACK_START_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(900);

/// Runs `cargo dev up` as a newcomer would, spends some of the demo user's
/// credits, interrupts it as Ctrl-C does, and checks that every port is free
/// and no process it started is left; then runs it again without `--fresh`
/// and checks the data survived the restart.
fn up_and_interrupt() -> Result<()> {
    let data_dir = crate::project_root().join("target/devstack/up-test");
    let ports = [24521u16, 24522, 24530, 24531];
    let key_file = crate::keys::SigningKey::path_in(&data_dir);
    let kid_before = std::fs::read_to_string(&key_file).ok();
    let (first, first_kid) = up_once(&data_dir, ports, true, |api| {
        let balance = demo_balance(api)?;
        // Webhooks out: one drain now, so the charge's event is queued
        // (events are queued once a drain has run); the stack's own drain
        // delivers it.
        let (status, body) = http_post(api, "/functions/v1/credits/webhooks/deliver", "{}")?;
        if status != 200 {
            bail!("POST /webhooks/deliver through the stack: {status} {body}");
        }
        let threshold = format!(r#"{{"p_user_id":"{}","p_threshold":{}}}"#, crate::stack::DEMO_USER_ID, balance - 1);
        let (status, body) = http_post(api, "/rest/v1/rpc/set_low_balance_threshold", &threshold)?;
        if status != 200 {
            bail!("set_low_balance_threshold through the stack: {status} {body}");
        }
        let charge = format!(
            r#"{{"p_user_id":"{}","p_operation_type":"image","p_cost":7}}"#,
            crate::stack::DEMO_USER_ID
        );
        let (status, body) = http_post(api, "/rest/v1/rpc/charge_credits", &charge)?;
        if status != 200 {
            bail!("charge through the stack: {status} {body}");
        }
        stripe_webhook_served(api)?;
        webhook_received(api)?;
        Ok((balance - 7, jwks_kid(api)?))
    })?;
    if kid_before.is_some_and(|text| text.contains(&first_kid)) {
        bail!("`cargo dev up --fresh` kept the previous signing key ({first_kid})");
    }
    let (second, second_kid) = up_once(&data_dir, ports, false, |api| Ok((demo_balance(api)?, jwks_kid(api)?)))?;
    if second != first {
        bail!("the demo user's balance was {first} before the restart and {second} after it");
    }
    if second_kid != first_kid {
        bail!("the signing key changed on a restart without --fresh ({first_kid} -> {second_kid}): tokens would not survive it");
    }
    eprintln!("the demo user's balance ({second}) and the signing key ({second_kid}) survived a restart without --fresh");
    Ok(())
}

/// `cargo dev up` serves the `stripe-webhook` function beside `credits`,
/// with `verify_jwt = false` (a request with no token reaches it) and the
/// caller's STRIPE_WEBHOOK_SECRET (else it would answer 500): an unsigned
/// delivery is refused by the function itself, 400 `invalid_signature`.
fn stripe_webhook_served(api_port: u16) -> Result<()> {
    use std::io::{Read, Write};
    let body = r#"{"id":"evt_up","type":"customer.created","data":{"object":{}}}"#;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", api_port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        stream,
        "POST /functions/v1/stripe-webhook HTTP/1.1\r\nHost: 127.0.0.1\r\nStripe-Signature: t=1,v1=00\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    if !(response.starts_with("HTTP/1.1 400") && response.contains("invalid_signature")) {
        bail!("stripe-webhook through the stack: expected 400 invalid_signature, got {response:?}");
    }
    Ok(())
}

/// The stack's receiver got the demo user's `low_balance` event, signed
/// with the local secret, from `cargo dev up`'s own drain (every 3 s).
fn webhook_received(api_port: u16) -> Result<()> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", api_port))?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
        write!(stream, "GET {} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", crate::stack::RECEIVER_PATH)?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let body = response.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
        let kept: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        let deliveries = kept["deliveries"].as_array().cloned().unwrap_or_default();
        let ours = deliveries.iter().find(|delivery| {
            delivery["event"]["type"] == "low_balance" && delivery["event"]["userId"] == crate::stack::DEMO_USER_ID
        });
        match ours {
            Some(delivery) if delivery["verified"] == true => return Ok(()),
            Some(delivery) => bail!("the local receiver got the event with a signature that does not verify: {delivery}"),
            None if std::time::Instant::now() > deadline => {
                bail!("no low_balance webhook reached the local receiver within 60 s: {kept}")
            }
            None => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

/// The `kid` of the signing key the stack's JWKS endpoint serves.
fn jwks_kid(api_port: u16) -> Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", api_port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(stream, "GET /auth/v1/.well-known/jwks.json HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or_default();
    let jwks: serde_json::Value = serde_json::from_str(body).with_context(|| format!("a JWKS, not {response:?}"))?;
    jwks["keys"][0]["kid"].as_str().map(str::to_string).with_context(|| format!("no kid in {jwks}"))
}

/// One `cargo dev up`: waits until it serves, runs `body` against its API
/// port, sends SIGINT, and checks that nothing it started is left behind.
fn up_once<T>(data_dir: &Path, ports: [u16; 4], fresh: bool, body: impl FnOnce(u16) -> Result<T>) -> Result<T> {
    let mut command = Command::new(crate::devstack_exe()?);
    command.arg("up");
    if fresh {
        command.arg("--fresh");
    }
    let mut child = command
        // Reaches the stripe-webhook function as supabase/functions/.env would.
        .env("STRIPE_WEBHOOK_SECRET", "whsec_up_test")
        .env("CREDITGATE_API_PORT", ports[0].to_string())
        .env("CREDITGATE_DB_PORT", ports[1].to_string())
        .env("CREDITGATE_GATEWAY_PORT", ports[2].to_string())
        .env("CREDITGATE_FUNCTIONS_PORT", ports[3].to_string())
        .env("CREDITGATE_DATA_DIR", data_dir)
        .spawn()?;
    let outcome = wait_for_port(ports[0], Some(&mut child), None, STACK_START_TIMEOUT).and_then(|()| body(ports[0]));
    // SAFETY: SIGINT to our own child, as a terminal's Ctrl-C sends it.
    unsafe {
        libc::kill(child.id() as libc::pid_t, libc::SIGINT);
    }
    let status = child.wait()?;
    let value = outcome?;
    eprintln!("`cargo dev up{}` exited with {status} after SIGINT", if fresh { " --fresh" } else { "" });
    let busy: Vec<u16> = ports
        .iter()
        .copied()
        .filter(|port| std::net::TcpStream::connect(("127.0.0.1", *port)).is_ok())
        .collect();
    if !busy.is_empty() {
        bail!("ports still answering after Ctrl-C: {busy:?}");
    }
    let functions = format!("serve.ts {}", ports[3]);
    let left = processes_mentioning(&[&data_dir.to_string_lossy(), &functions])?;
    if !left.is_empty() {
        bail!("processes left behind: {left:?}");
    }
    if !status.success() {
        bail!("`cargo dev up` did not exit cleanly: {status}");
    }
    Ok(value)
}

/// The demo user's balance, read through the stack's API as a client would.
fn demo_balance(api_port: u16) -> Result<i64> {
    let body = format!(r#"{{"p_user_id":"{}"}}"#, crate::stack::DEMO_USER_ID);
    let (status, text) = http_post(api_port, "/rest/v1/rpc/get_credit_balance", &body)?;
    if status != 200 {
        bail!("get_credit_balance through the stack: {status} {text}");
    }
    text.trim().parse().with_context(|| format!("a balance, not {text:?}"))
}

/// A minimal HTTP/1.1 POST with the service-role key: (status, body).
fn http_post(port: u16, path: &str, body: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let key = crate::keys::service_role_key();
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(30)))?;
    write!(
        stream,
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\napikey: {key}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("not an HTTP response: {response:?}"))?;
    let body = response.split_once("\r\n\r\n").map(|(_, body)| body.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// The command lines of live processes that mention any of `needles`.
fn processes_mentioning(needles: &[&str]) -> Result<Vec<String>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if needles.iter().any(|needle| cmdline.contains(needle)) {
            found.push(cmdline);
        }
    }
    Ok(found)
}

#[derive(Default)]
struct Run {
    passed: Vec<String>,
    failed: Vec<String>,
}

impl Run {
    fn suite(&mut self, name: &str, body: impl FnOnce() -> Result<()>) {
        eprintln!("\n=== {name}");
        let started = Instant::now();
        match body() {
            Ok(()) => {
                eprintln!("--- ok: {name} ({:.1} s)", started.elapsed().as_secs_f64());
                self.passed.push(name.to_string());
            }
            Err(error) => {
                eprintln!("--- FAILED: {name}: {error:#}");
                self.failed.push(name.to_string());
            }
        }
    }

    fn finish(self) -> Result<()> {
        eprintln!("\nsuites:");
        for name in &self.passed {
            eprintln!("  ok      {name}");
        }
        for name in &self.failed {
            eprintln!("  FAILED  {name}");
        }
        println!("{} passed, {} failed", self.passed.len(), self.failed.len());
        if !self.failed.is_empty() {
            bail!("{} suite(s) failed", self.failed.len());
        }
        Ok(())
    }
}

/// The schema of `database` and the data of its `public` schema as text, for
/// comparing runs (without pg_dump's per-run `\restrict` keys).
fn schema_dump(cluster: &Cluster, database: &str) -> Result<String> {
    let mut dump = String::new();
    for what in [&["--schema-only"][..], &["--data-only", "--schema=public"][..]] {
        let output = Command::new(crate::pg::bin_dir().join("pg_dump"))
            .env("PGPASSWORD", crate::pg::PASSWORD)
            .args(what)
            .args(["--no-owner", "-h", "127.0.0.1", "-U", "postgres"])
            .args(["-p", &cluster.port().to_string(), database])
            .output()?;
        if !output.status.success() {
            bail!("pg_dump: {}", String::from_utf8_lossy(&output.stderr));
        }
        let text = String::from_utf8_lossy(&output.stdout);
        for line in text.lines().filter(|line| !line.starts_with("\\restrict") && !line.starts_with("\\unrestrict")) {
            dump.push_str(line);
            dump.push('\n');
        }
    }
    Ok(dump)
}

/// The fresh database is `postgres`, as on Supabase: the one pg_cron runs in.
const FRESH: &str = "postgres";

/// Fresh database: migrations apply, and a second and third run change nothing.
fn fresh_migrations(cluster: &Cluster) -> Result<()> {
    cluster.bootstrap(FRESH)?;
    let applied = cluster.migrate(FRESH)?;
    eprintln!("applied {} migrations", applied.len());
    let first = schema_dump(cluster, FRESH)?;
    for round in 2..=3 {
        cluster.migrate(FRESH).with_context(|| format!("migration run {round}"))?;
        let again = schema_dump(cluster, FRESH)?;
        if again != first {
            bail!("migration run {round} changed the schema or data:\n{}", diff(&first, &again));
        }
        eprintln!("run {round}: no error, schema and data unchanged");
    }
    Ok(())
}

/// Legacy database: `dir/fixture.sql`, then the migrations twice (the second
/// changing nothing), then the pgTAP checks `dir/NN-*.sql`.
fn legacy_upgrade(cluster: &Cluster, database: &str, dir: &Path) -> Result<()> {
    cluster.create_supabase_database(database)?;
    cluster.run_file(database, &dir.join("fixture.sql"))?;
    cluster.migrate(database).context("first migration run over the legacy schema")?;
    let first = schema_dump(cluster, database)?;
    cluster.migrate(database).context("second migration run over the legacy schema")?;
    let again = schema_dump(cluster, database)?;
    if again != first {
        bail!("the second run changed the upgraded schema or data:\n{}", diff(&first, &again));
    }
    prove_dir(cluster, database, dir)
}

/// Runs every `NN-*.sql` pgTAP file in `dir` with pg_prove.
fn prove_dir(cluster: &Cluster, database: &str, dir: &Path) -> Result<()> {
    let status = pg_prove(cluster, database, &pgtap_files(dir)?)?;
    if !status.success() {
        bail!("pg_prove failed ({status})");
    }
    Ok(())
}

/// The lines of `b` not in `a` and vice versa (enough to see what changed).
fn diff(a: &str, b: &str) -> String {
    let only_a = a.lines().filter(|line| !b.contains(line)).map(|line| format!("- {line}"));
    let only_b = b.lines().filter(|line| !a.contains(line)).map(|line| format!("+ {line}"));
    only_a.chain(only_b).take(40).collect::<Vec<_>>().join("\n")
}

#[cfg(test)]
mod tests {
    use super::{parse_group, GROUPS};

    #[test]
    fn groups_and_their_prefixes_are_accepted_anything_else_refused() {
        for (group, _) in GROUPS {
            assert_eq!(parse_group(group).as_deref(), Ok(*group));
        }
        assert!(parse_group("func").is_ok());
        for wrong in ["", "tyop", "nosuchgroup", "dbx", "e2e2"] {
            let error = parse_group(wrong).unwrap_err();
            assert!(error.contains("db") && error.contains("up"), "{error}");
        }
    }
}
