//! Reliability suites of `cargo dev test`: faults, and who may do what.
//!
//! - [`postgres_crash`]: PostgreSQL killed with an immediate shutdown
//!   (`pg_ctl -m immediate`: SIGQUIT to the postmaster, no checkpoint, crash
//!   recovery at the next start) while many connections charge, complete,
//!   refund and grant; twice. Afterwards no credit is lost or created.
//! - [`privilege_sweep`]: every function and table of the schemas creditgate
//!   owns, tried for real as `anon`, `authenticated` and `service_role`.
//! - Over HTTP, on a local stack of their own ([`HttpStack`]): [`hostile_input`]
//!   against every route, hostile [`tokens`], and [`sigkill`] of the function
//!   runtime and of the gateway under load.

mod http;
pub use http::{hostile_input, sigkill, tokens, HttpStack};

use crate::checks::{connect, sqlstate};
use crate::pg::Cluster;
use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use uuid::Uuid;

/// The crash test's own cluster: it is killed, so not the shared test cluster.
const CRASH_PG_PORT: u16 = 54352;
const SESSIONS: usize = 16;
const USERS: usize = 8;
const OPENING_CREDITS: i32 = 1_000_000;
/// Immediate shutdowns injected, and the load between them.
const CRASHES: usize = 2;
const LOAD_BETWEEN_CRASHES: Duration = Duration::from_millis(2_500);

/// The first of `bases` (tried in steps of `step`) at which every
/// `base + offset` can be bound on 127.0.0.1 now. Fixed ports in Linux's
/// ephemeral range (32768-60999, where Supabase's 5432x ports are) can be
/// taken for a minute by a client connection's TIME_WAIT: a server started
/// there fails with "Address already in use". So each run picks free ones.
pub(crate) fn free_ports(first_base: u16, step: u16, offsets: &[u16]) -> Result<u16> {
    for attempt in 0..40u16 {
        let base = first_base + attempt * step;
        let free = offsets.iter().all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok());
        if free {
            return Ok(base);
        }
    }
    bail!("no free ports from {first_base} in steps of {step}")
}

/// What the clients know: only results they received count as committed.
#[derive(Default)]
struct Ledger {
    /// Committed jobs: id -> owner and, once settled, what was kept.
    jobs: HashMap<Uuid, CrashJob>,
    /// Charges sent whose commit is unknown (the connection died): user, key, cost.
    unknown_charges: Vec<(Uuid, String, i32)>,
    /// Settlements sent whose outcome is unknown.
    unknown_settlements: Vec<Uuid>,
    /// Grants sent whose commit is unknown: user, key, amount.
    unknown_grants: Vec<(Uuid, String, i32)>,
    granted: HashMap<Uuid, i64>,
    operations: usize,
    connection_errors: usize,
}

struct CrashJob {
    user: Uuid,
    /// None while open; Some(credits kept) once settled.
    kept: Option<i32>,
}

type Shared = Arc<Mutex<Ledger>>;

fn lock(ledger: &Shared) -> Result<std::sync::MutexGuard<'_, Ledger>> {
    ledger.lock().map_err(|_| anyhow!("ledger lock poisoned"))
}

/// True for the errors of a dying or restarting server: the request's
/// outcome is unknown. Class 57 is operator intervention (57P01 admin
/// shutdown, 57P02 crash shutdown, 57P03 cannot connect now), class 08 a
/// connection exception; no SQLSTATE at all is a broken socket.
fn connection_lost(error: &tokio_postgres::Error) -> bool {
    match sqlstate(error) {
        None => true,
        Some(code) => code.starts_with("57") || code.starts_with("08"),
    }
}

pub fn postgres_crash() -> Result<()> {
    let dir = crate::project_root().join("target/devstack/crash-pg");
    let port = free_ports(CRASH_PG_PORT, 10, &[0])?;
    let mut cluster = Cluster::start(&dir, port, true)?;
    cluster.bootstrap("postgres")?;
    cluster.migrate("postgres")?;
    let url = cluster.url("postgres", "postgres");
    let runtime = tokio::runtime::Runtime::new()?;
    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::new_v4()).collect();
    runtime.block_on(open_accounts(&url, &users))?;

    let ledger: Shared = Arc::new(Mutex::new(Ledger::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let mut sessions = Vec::new();
    for session in 0..SESSIONS {
        let (url, users, ledger, stop) = (url.clone(), users.clone(), ledger.clone(), stop.clone());
        sessions.push(runtime.spawn(async move { load(session, &url, &users, &ledger, &stop).await }));
    }
    let mut recoveries = Vec::new();
    for _ in 0..CRASHES {
        std::thread::sleep(LOAD_BETWEEN_CRASHES);
        cluster.crash();
        let clock = Instant::now();
        cluster = Cluster::start(&dir, port, false).context("start after the immediate shutdown")?;
        recoveries.push(clock.elapsed());
    }
    std::thread::sleep(LOAD_BETWEEN_CRASHES);
    stop.store(true, Ordering::SeqCst);
    for session in sessions {
        runtime.block_on(session)??;
    }
    let summary = runtime.block_on(resolve_and_check(&url, &users, &ledger))?;
    eprintln!(
        "{CRASHES} immediate shutdowns under load from {SESSIONS} connections (recovery {:?}); {summary}",
        recoveries.iter().map(|d| format!("{:.1} s", d.as_secs_f64())).collect::<Vec<_>>()
    );
    drop(cluster);
    Ok(())
}

async fn open_accounts(url: &str, users: &[Uuid]) -> Result<()> {
    let admin = connect(url).await?;
    for user in users {
        admin
            .execute("INSERT INTO auth.users (id, email) VALUES ($1, $2)", &[user, &format!("crash-{user}@test.local")])
            .await?;
        admin
            .query_one("SELECT public.grant_credits($1, $2, 'opening', NULL, '{}'::jsonb)", &[user, &OPENING_CREDITS])
            .await?;
    }
    Ok(())
}

/// One connection's load until `stop`: charges (each with its own key), and
/// completes, refunds and grants. Reconnects whenever the server goes away.
async fn load(session: usize, url: &str, users: &[Uuid], ledger: &Shared, stop: &AtomicBool) -> Result<()> {
    let mut rng = StdRng::seed_from_u64(0xc4a5 + session as u64);
    let mut client: Option<Client> = None;
    let mut mine: Vec<(Uuid, Uuid, i32)> = Vec::new();
    let mut sequence = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let Some(connection) = client.as_ref() else {
            match connect(url).await {
                Ok(connection) => client = Some(connection),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            continue;
        };
        sequence += 1;
        let user = users[rng.gen_range(0..users.len())];
        let choice = rng.gen_range(0..100);
        let result = if choice < 60 || mine.is_empty() {
            let key = format!("crash-{session}-{sequence}");
            let cost = rng.gen_range(1..=9);
            let sent = connection
                .query_one(
                    "SELECT job_id FROM public.charge_credits($1, 'image', $2, $3, '{}'::jsonb, 900)",
                    &[&user, &cost, &key],
                )
                .await;
            match sent {
                Ok(row) => {
                    let job: Uuid = row.get(0);
                    lock(ledger)?.jobs.insert(job, CrashJob { user, kept: None });
                    mine.push((job, user, cost));
                    Ok(())
                }
                Err(error) => {
                    if connection_lost(&error) {
                        lock(ledger)?.unknown_charges.push((user, key, cost));
                    }
                    Err(error)
                }
            }
        } else if choice < 90 {
            let (job, owner, cost) = mine.swap_remove(rng.gen_range(0..mine.len()));
            let complete = choice < 75;
            let sent = if complete {
                connection
                    .query_one("SELECT refunded FROM public.complete_generation_job($1, NULL, $2)", &[&job, &(cost / 2)])
                    .await
            } else {
                connection
                    .query_one("SELECT public.refund_credits($1, $2, NULL, 'crash test')", &[&owner, &job])
                    .await
            };
            match sent {
                Ok(_) => {
                    let kept = if complete { cost / 2 } else { 0 };
                    if let Some(entry) = lock(ledger)?.jobs.get_mut(&job) {
                        entry.kept = Some(kept);
                    }
                    Ok(())
                }
                Err(error) => {
                    if connection_lost(&error) {
                        lock(ledger)?.unknown_settlements.push(job);
                    }
                    Err(error)
                }
            }
        } else {
            let key = format!("grant-{session}-{sequence}");
            let amount = rng.gen_range(1..=50);
            let sent = connection
                .query_one("SELECT public.grant_credits($1, $2, 'top-up', $3, '{}'::jsonb)", &[&user, &amount, &key])
                .await;
            match sent {
                Ok(_) => {
                    *lock(ledger)?.granted.entry(user).or_default() += i64::from(amount);
                    Ok(())
                }
                Err(error) => {
                    if connection_lost(&error) {
                        lock(ledger)?.unknown_grants.push((user, key, amount));
                    }
                    Err(error)
                }
            }
        };
        let mut shared = lock(ledger)?;
        shared.operations += 1;
        if let Err(error) = result {
            if !connection_lost(&error) {
                bail!("session {session}: unexpected error: {error:?}");
            }
            shared.connection_errors += 1;
            client = None;
        }
    }
    Ok(())
}

/// After the last recovery: resolves every unknown outcome as a client would
/// (a charge or grant is sent again with its key: a replay means it had
/// committed), releases every open hold through the sweeper, and checks that
/// no credit was lost or created.
async fn resolve_and_check(url: &str, users: &[Uuid], ledger: &Shared) -> Result<String> {
    let admin = connect(url).await?;
    let mut ledger = lock(ledger)?;
    let (mut charges_committed, mut charges_lost) = (0, 0);
    for (user, key, cost) in std::mem::take(&mut ledger.unknown_charges) {
        let stored = admin
            .query_opt("SELECT id FROM public.generation_jobs WHERE user_id = $1 AND idempotency_key = $2", &[&user, &key])
            .await?
            .map(|row| row.get::<_, Uuid>(0));
        let row = admin
            .query_one(
                "SELECT job_id, replayed FROM public.charge_credits($1, 'image', $2, $3, '{}'::jsonb, 900)",
                &[&user, &cost, &key],
            )
            .await
            .with_context(|| format!("charge {key} sent again"))?;
        let (job, replayed): (Uuid, bool) = (row.get(0), row.get(1));
        if replayed != stored.is_some() || stored.is_some_and(|stored| stored != job) {
            bail!("charge {key}: stored job {stored:?}, but sending it again returned {job} (replayed {replayed})");
        }
        if replayed {
            charges_committed += 1;
        } else {
            charges_lost += 1;
        }
        ledger.jobs.insert(job, CrashJob { user, kept: None });
    }
    let (mut grants_committed, mut grants_lost) = (0, 0);
    for (user, key, amount) in std::mem::take(&mut ledger.unknown_grants) {
        let stored = admin
            .query_opt("SELECT 1 FROM public.idempotency_keys WHERE user_id = $1 AND key = $2", &[&user, &key])
            .await?
            .is_some();
        admin
            .query_one("SELECT public.grant_credits($1, $2, 'top-up', $3, '{}'::jsonb)", &[&user, &amount, &key])
            .await
            .with_context(|| format!("grant {key} sent again"))?;
        if stored {
            grants_committed += 1;
        } else {
            grants_lost += 1;
        }
        *ledger.granted.entry(user).or_default() += i64::from(amount);
    }
    let unknown_settlements = std::mem::take(&mut ledger.unknown_settlements);
    for job in &unknown_settlements {
        let row = admin
            .query_one("SELECT status, captured_credits FROM public.generation_jobs WHERE id = $1", &[job])
            .await?;
        let (status, captured): (String, Option<i32>) = (row.get(0), row.get(1));
        if status != "pending" {
            if let Some(entry) = ledger.jobs.get_mut(job) {
                entry.kept = captured;
            }
        }
    }

    // Every open hold, past its deadline from the sweeper's point of view.
    let released: i32 = admin
        .query_one("SELECT creditgate.expire_stale_generation_jobs_at(clock_timestamp() + interval '2 days')", &[])
        .await?
        .get(0);
    for job in ledger.jobs.values_mut() {
        job.kept.get_or_insert(0);
    }

    let rows = admin
        .query(
            "SELECT id, status, captured_credits FROM public.generation_jobs WHERE user_id = ANY($1)",
            &[&users],
        )
        .await?;
    if rows.len() != ledger.jobs.len() {
        bail!("the database has {} jobs, the clients know of {}", rows.len(), ledger.jobs.len());
    }
    for row in &rows {
        let (id, status, captured): (Uuid, String, Option<i32>) = (row.get(0), row.get(1), row.get(2));
        let job = ledger.jobs.get(&id).ok_or_else(|| anyhow!("job {id} exists that no client was told of"))?;
        if status == "pending" || captured != job.kept {
            bail!("job {id}: {status}, kept {captured:?}; the clients expect {:?} kept", job.kept);
        }
    }
    for user in users {
        let balance: i32 = admin.query_one("SELECT credits FROM public.users WHERE id = $1", &[user]).await?.get(0);
        let kept: i64 =
            ledger.jobs.values().filter(|job| job.user == *user).map(|job| i64::from(job.kept.unwrap_or(0))).sum();
        let expected = i64::from(OPENING_CREDITS) + ledger.granted.get(user).copied().unwrap_or(0) - kept;
        if i64::from(balance) != expected {
            bail!("user {user}: balance {balance}, the clients' results say {expected}");
        }
    }
    let problems: i64 = admin.query_one("SELECT count(*) FROM public.verify_credit_ledger()", &[]).await?.get(0);
    if problems != 0 {
        bail!("verify_credit_ledger() reports {problems} problem(s) after recovery");
    }
    Ok(format!(
        "{} operations, {} cut off by the crashes; unknown charges resolved by key: {charges_committed} had \
         committed, {charges_lost} had not; unknown grants: {grants_committed} committed, {grants_lost} not; \
         {} unknown settlements read back; {released} open holds expired at the end; {} jobs; \
         every balance = opening + granted - kept; verify_credit_ledger() empty",
        ledger.operations,
        ledger.connection_errors,
        unknown_settlements.len(),
        ledger.jobs.len()
    ))
}

/// Every function in `public` and `creditgate`, and every creditgate table,
/// tried for real as each client role: a call or statement the role must not
/// make has to fail with 42501 (permission denied), and one it may make must
/// not. Derived from the catalog, so a function added later without its
/// REVOKE is caught even if no test names it. Rolled back: nothing changes.
pub fn privilege_sweep(cluster: &Cluster, database: &str) -> Result<()> {
    let url = cluster.url("postgres", database);
    tokio::runtime::Runtime::new()?.block_on(sweep(&url))
}

/// What a client role may execute in `public`: docs/rpc.md.
const CALLABLE: &[(&str, &[&str])] = &[
    ("anon", &[]),
    ("authenticated", &["get_my_credit_balance"]),
    (
        "service_role",
        &[
            "atomic_charge_credits",
            "charge_credits",
            "complete_generation_job",
            "refund_credits",
            "grant_credits",
            "get_credit_balance",
            "get_my_credit_balance",
            "expire_stale_generation_jobs",
            "verify_credit_ledger",
            "check_rate_limit",
            "apply_rate_limit",
            "charge_credits_with_limit",
            "cleanup_expired_rate_limits",
            "apply_rate_limits",
            "charge_credits_with_limits",
            // Lots, plans, events (docs/rpc.md, "Lots, plans and balance events").
            "get_credit_lots",
            "revoke_credit_lot",
            "upsert_credit_plan",
            "subscribe_credit_plan",
            "cancel_credit_plan",
            "get_credit_events",
            "set_credit_settings",
            "set_low_balance_threshold",
        ],
    ),
];
const TABLES: &[&str] = &[
    "users",
    "generation_jobs",
    "credit_ledger",
    "idempotency_keys",
    "rate_limits",
    "credit_settings",
    "credit_user_settings",
    "credit_plans",
    "credit_lots",
    "credit_lot_movements",
    "credit_plan_subscriptions",
    "credit_events",
];
/// Tables each role may SELECT (RLS then limits `authenticated` to its rows).
const READABLE: &[(&str, &[&str])] = &[
    ("anon", &[]),
    ("authenticated", &["users", "generation_jobs", "credit_ledger", "credit_lots", "credit_events"]),
    (
        "service_role",
        &[
            "users",
            "generation_jobs",
            "credit_ledger",
            "idempotency_keys",
            "rate_limits",
            "credit_settings",
            "credit_user_settings",
            "credit_plans",
            "credit_lots",
            "credit_lot_movements",
            "credit_plan_subscriptions",
            "credit_events",
        ],
    ),
];

async fn sweep(url: &str) -> Result<()> {
    let client = connect(url).await?;
    // Functions of the schemas creditgate owns, not those of extensions.
    let functions = client
        .query(
            "SELECT n.nspname, p.proname, p.oid::regprocedure::text, p.pronargs::int,
                    pg_catalog.pg_get_function_identity_arguments(p.oid)
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname IN ('public', 'creditgate') AND p.prokind = 'f'
               AND p.prorettype <> 'trigger'::regtype
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                               WHERE d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e')
             ORDER BY 1, 2, 3",
            &[],
        )
        .await?;
    if functions.len() < 20 {
        bail!("only {} functions found: are the migrations applied?", functions.len());
    }
    let mut tried = 0;
    let mut failures = Vec::new();
    for (role, callable) in CALLABLE {
        for function in &functions {
            let (schema, name, signature, arguments, identity): (String, String, String, i32, String) =
                (function.get(0), function.get(1), function.get(2), function.get(3), function.get(4));
            let may = schema == "public" && callable.contains(&name.as_str());
            // NULL for every argument, cast to its type: enough to reach the
            // privilege check, which comes before the function runs.
            let types: Vec<String> = split_arguments(&identity);
            let nulls: Vec<String> = types.iter().map(|t| format!("NULL::{t}")).collect();
            if nulls.len() != arguments as usize {
                failures.push(format!("{signature}: could not read its {arguments} argument types from {identity:?}"));
                continue;
            }
            let call = format!("SELECT {}.{}({})", quote(&schema), quote(&name), nulls.join(", "));
            let outcome = as_role(&client, role, &call).await?;
            tried += 1;
            let denied = outcome.as_deref() == Some("42501");
            let schema_denied = denied && schema == "creditgate";
            match (may, denied || schema_denied) {
                (true, true) => failures.push(format!("{role} may call {signature} but was refused")),
                (false, false) => failures.push(format!(
                    "{role} must not call {signature}, but it ran ({})",
                    outcome.as_deref().unwrap_or("no error")
                )),
                _ => {}
            }
        }
    }
    // Trigger functions cannot be called, only checked in the catalog.
    let triggers = client
        .query(
            "SELECT p.oid::regprocedure::text, r.role
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace,
                  unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r(role)
             WHERE n.nspname IN ('public', 'creditgate') AND p.prorettype = 'trigger'::regtype
               AND pg_catalog.has_function_privilege(r.role, p.oid, 'EXECUTE')",
            &[],
        )
        .await?;
    for row in triggers {
        failures.push(format!("{} may execute trigger function {}", row.get::<_, String>(1), row.get::<_, String>(0)));
    }
    for (role, readable) in READABLE {
        for table in TABLES {
            let statements = [
                (format!("SELECT count(*) FROM public.{table}"), readable.contains(table)),
                (format!("INSERT INTO public.{table} DEFAULT VALUES"), false),
                (format!("UPDATE public.{table} SET {} = {} WHERE false", first_column(table), first_column(table)), false),
                (format!("DELETE FROM public.{table} WHERE false"), false),
                (format!("TRUNCATE public.{table}"), false),
            ];
            for (statement, may) in statements {
                let outcome = as_role(&client, role, &statement).await?;
                tried += 1;
                let denied = outcome.as_deref() == Some("42501");
                if may == denied {
                    failures.push(format!(
                        "{role}: `{statement}` {} ({})",
                        if may { "was refused" } else { "was not refused" },
                        outcome.as_deref().unwrap_or("no error")
                    ));
                }
            }
        }
    }
    if !failures.is_empty() {
        bail!("{} of {tried} privilege checks failed:\n  {}", failures.len(), failures.join("\n  "));
    }
    eprintln!(
        "{tried} calls and statements tried as anon, authenticated and service_role over {} functions and {} tables: \
         each allowed or refused (42501) exactly as docs/rpc.md says",
        functions.len(),
        TABLES.len()
    );
    Ok(())
}

/// Model-based concurrency check of `charge_credits_with_limits`: sessions
/// charge users under two limits at once, a shared per-IP key and a per-user
/// key, listed in random order (so the canonical lock order is what keeps
/// them from deadlocking), with keyed retries (replays) and balances small
/// enough that charges fail with PT402. A model built from the answers
/// follows along: which charges opened a job, which replays returned which
/// job, how many charges each limit let through. Checked: no limit ever
/// passes its bound; a refusal names a refusing limit and opens nothing; at
/// the end each limit's spent room equals exactly the model's count of
/// charges it allowed (refusals, replays and PT402 spent nothing), every
/// balance is opening - charged, and `verify_credit_ledger()` is empty.
pub fn multi_limit_concurrency(cluster: &Cluster, database: &str) -> Result<()> {
    let url = cluster.url("postgres", database);
    tokio::runtime::Runtime::new()?.block_on(multi_limits(&url))
}

const MULTI_SESSIONS: usize = 12;
const MULTI_OPERATIONS: usize = 200;
const MULTI_USERS: usize = 4;
const MULTI_OPENING: i32 = 42;
const IP_LIMIT: i32 = 60;
const USER_LIMIT: i32 = 20;
const MULTI_WINDOW: i32 = 86_400;

#[derive(Default)]
struct MultiModel {
    /// Charges each limit key let through (a new job), and the jobs opened.
    allowed: HashMap<String, i32>,
    refused: usize,
    replays: usize,
    insufficient: usize,
    in_flight: usize,
    /// (user, idempotency key) -> job; user -> credits charged.
    keys: HashMap<(Uuid, String), Uuid>,
    charged: HashMap<Uuid, i64>,
}

async fn multi_limits(url: &str) -> Result<()> {
    let admin = connect(url).await?;
    let run = Uuid::new_v4();
    let ip_key = format!("creditgate:ip:model-{run}");
    let users: Vec<Uuid> = (0..MULTI_USERS).map(|_| Uuid::new_v4()).collect();
    for (n, user) in users.iter().enumerate() {
        admin
            .execute("INSERT INTO auth.users (id, email) VALUES ($1, $2)", &[user, &format!("multi-{n}-{user}@test.local")])
            .await?;
        admin
            .query_one("SELECT public.grant_credits($1, $2, 'opening', NULL, '{}'::jsonb)", &[user, &MULTI_OPENING])
            .await?;
    }
    let model = Arc::new(Mutex::new(MultiModel::default()));
    let mut sessions = Vec::new();
    for session in 0..MULTI_SESSIONS {
        let (url, users, model, ip_key) = (url.to_string(), users.clone(), model.clone(), ip_key.clone());
        sessions.push(tokio::spawn(async move {
            let client = connect(&url).await?;
            let mut rng = StdRng::seed_from_u64(0x6d75_6c74 + session as u64);
            for _ in 0..MULTI_OPERATIONS {
                let user = users[rng.gen_range(0..users.len())];
                multi_operate(&client, &mut rng, user, &ip_key, &model).await?;
            }
            anyhow::Ok(())
        }));
    }
    for session in sessions {
        session.await??;
    }

    let model = model.lock().map_err(|_| anyhow!("model lock poisoned"))?;
    let mut limits: Vec<(String, i32)> = vec![(ip_key.clone(), IP_LIMIT)];
    limits.extend(users.iter().map(|user| (format!("creditgate:user:{user}"), USER_LIMIT)));
    for (key, limit) in &limits {
        let remaining: i32 = admin
            .query_one(
                "SELECT remaining FROM creditgate.rate_limit_at($1, $2, $3, 1, false, clock_timestamp())",
                &[key, limit, &MULTI_WINDOW],
            )
            .await?
            .get(0);
        let allowed = model.allowed.get(key).copied().unwrap_or(0);
        if allowed > *limit || limit - remaining != allowed {
            bail!("limit {key}: {allowed} charges allowed by the model, {} spent in the database, limit {limit}", limit - remaining);
        }
    }
    for user in &users {
        let balance: i32 = admin.query_one("SELECT credits FROM public.users WHERE id = $1", &[user]).await?.get(0);
        let expected = i64::from(MULTI_OPENING) - model.charged.get(user).copied().unwrap_or(0);
        if i64::from(balance) != expected {
            bail!("user {user}: balance {balance}, the model says {expected}");
        }
        let jobs: i64 = admin
            .query_one("SELECT count(*) FROM public.generation_jobs WHERE user_id = $1", &[user])
            .await?
            .get(0);
        let modelled = model.allowed.get(&format!("creditgate:user:{user}")).copied().unwrap_or(0);
        if jobs != i64::from(modelled) {
            bail!("user {user}: {jobs} jobs in the database, {modelled} charges allowed in the model");
        }
    }
    let problems: i64 = admin.query_one("SELECT count(*) FROM public.verify_credit_ledger()", &[]).await?.get(0);
    if problems != 0 {
        bail!("verify_credit_ledger() found {problems} problem(s)");
    }
    eprintln!(
        "{} charge_credits_with_limits calls from {MULTI_SESSIONS} sessions on {MULTI_USERS} users under a shared ip limit \
         ({IP_LIMIT}) and per-user limits ({USER_LIMIT}): {} allowed through the ip limit, {} refused, {} replays, \
         {} PT402, {} PT409; every limit spent exactly what the model allowed; balances match; ledger sound",
        MULTI_SESSIONS * MULTI_OPERATIONS,
        model.allowed.get(&ip_key).copied().unwrap_or(0),
        model.refused,
        model.replays,
        model.insufficient,
        model.in_flight
    );
    Ok(())
}

async fn multi_operate(
    client: &Client,
    rng: &mut StdRng,
    user: Uuid,
    ip_key: &str,
    model: &Arc<Mutex<MultiModel>>,
) -> Result<()> {
    let user_key = format!("creditgate:user:{user}");
    let ip = serde_json::json!({"key": ip_key, "limit": IP_LIMIT, "window_seconds": MULTI_WINDOW});
    let per_user = serde_json::json!({"key": user_key, "limit": USER_LIMIT, "window_seconds": MULTI_WINDOW, "cost": 1});
    let limits = if rng.gen_bool(0.5) { serde_json::json!([ip, per_user]) } else { serde_json::json!([per_user, ip]) };
    // A small key pool per user: retries and races on one key happen. The
    // same key always carries the same request (cost from the key).
    let key_number: u32 = rng.gen_range(0..30);
    let keyed = rng.gen_bool(0.6);
    let key = keyed.then(|| format!("multi-{key_number}"));
    let cost = 1 + (key_number % 3) as i32;
    let result = client
        .query_one(
            "SELECT allowed, job_id, new_balance, replayed, limits
             FROM public.charge_credits_with_limits($1, 'image', $2, $3, $4)",
            &[&user, &cost, &limits, &key],
        )
        .await;
    let mut model = model.lock().map_err(|_| anyhow!("model lock poisoned"))?;
    let row = match result {
        Ok(row) => row,
        Err(error) => {
            match sqlstate(&error).as_deref() {
                Some("PT402") => model.insufficient += 1,
                Some("PT409") if keyed => model.in_flight += 1,
                _ => bail!("charge_credits_with_limits: unexpected error: {error:?}"),
            }
            return Ok(());
        }
    };
    let (allowed, job, balance, replayed, answered): (bool, Option<Uuid>, Option<i32>, bool, serde_json::Value) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    let entries = answered.as_array().ok_or_else(|| anyhow!("limits is not an array: {answered}"))?;
    let order: Vec<&str> = limits.as_array().into_iter().flatten().filter_map(|l| l["key"].as_str()).collect();
    let answered_order: Vec<&str> = entries.iter().filter_map(|e| e["key"].as_str()).collect();
    if order != answered_order {
        bail!("limits answered in the order {answered_order:?}, asked {order:?}");
    }
    for entry in entries {
        if entry["remaining"].as_i64().unwrap_or(-1) < 0 && entry["allowed"] == serde_json::json!(true) {
            bail!("an allowed limit with negative room: {entry}");
        }
    }
    match (allowed, job, replayed) {
        (true, Some(job), true) => {
            let key = key.ok_or_else(|| anyhow!("a replay without a key"))?;
            if model.keys.get(&(user, key.clone())) != Some(&job) {
                bail!("replay of {key} returned job {job}, the model has {:?}", model.keys.get(&(user, key.clone())));
            }
            model.replays += 1;
        }
        (true, Some(job), false) => {
            if balance.unwrap_or(-1) < 0 {
                bail!("a charge returned balance {balance:?}");
            }
            if let Some(key) = key {
                if model.keys.insert((user, key.clone()), job).is_some() {
                    bail!("key {key} charged twice");
                }
            }
            for key in [ip_key.to_string(), user_key.clone()] {
                let count = model.allowed.entry(key.clone()).or_default();
                *count += 1;
                let bound = if key == ip_key { IP_LIMIT } else { USER_LIMIT };
                if *count > bound {
                    bail!("limit {key} let through {count} charges, its limit is {bound}");
                }
            }
            *model.charged.entry(user).or_default() += i64::from(cost);
        }
        (false, None, false) if balance.is_none() => {
            let refusing = entries
                .iter()
                .any(|e| e["allowed"] == serde_json::json!(false) && e["retry_after_seconds"].as_i64().unwrap_or(0) > 0);
            if !refusing {
                bail!("a refusal without a refusing limit: {answered}");
            }
            model.refused += 1;
        }
        _ => bail!("charge_credits_with_limits returned allowed {allowed}, job {job:?}, replayed {replayed}, balance {balance:?}"),
    }
    Ok(())
}

/// pg_cron really runs creditgate's jobs in the local cluster: the sweeper
/// (every minute, scheduled by the migrations) and a test job running the
/// rate-limit cleanup every minute (its own schedule is every ten) each show
/// a `succeeded` run in `cron.job_run_details`, and no creditgate job has a
/// failed run. pg_cron 1.4 (Debian's for PostgreSQL 15) has no schedules in
/// seconds, so this polls for up to 75 s (a run is due within 60 s).
pub fn cron_runs(cluster: &Cluster, database: &str) -> Result<()> {
    if cluster.query(database, "SELECT count(*) FROM pg_extension WHERE extname = 'pg_cron'")? != "1" {
        bail!("pg_cron is not installed in {database}");
    }
    let version = cluster.query(database, "SELECT extversion FROM pg_extension WHERE extname = 'pg_cron'")?;
    cluster.query(
        database,
        "SELECT cron.schedule('creditgate-test-cleanup-every-minute', '* * * * *', 'SELECT public.cleanup_expired_rate_limits()')",
    )?;
    let started = Instant::now();
    let wanted = ["creditgate-expire-holds", "creditgate-test-cleanup-every-minute"];
    let outcome = loop {
        let failed = cluster.query(
            database,
            "SELECT coalesce(string_agg(j.jobname || ': ' || coalesce(d.return_message, ''), '; '), '')
             FROM cron.job_run_details d JOIN cron.job j ON j.jobid = d.jobid
             WHERE j.jobname LIKE 'creditgate-%' AND d.status = 'failed'",
        )?;
        if !failed.is_empty() {
            break Err(anyhow!("failed pg_cron runs: {failed}"));
        }
        let succeeded = cluster.query(
            database,
            "SELECT count(DISTINCT j.jobname) FROM cron.job_run_details d JOIN cron.job j ON j.jobid = d.jobid
             WHERE j.jobname IN ('creditgate-expire-holds', 'creditgate-test-cleanup-every-minute')
               AND d.status = 'succeeded'",
        )?;
        if succeeded == wanted.len().to_string() {
            break Ok(());
        }
        if started.elapsed() > Duration::from_secs(75) {
            break Err(anyhow!("no succeeded run of each of {wanted:?} within 75 s (pg_cron {version})"));
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    cluster.query(database, "SELECT cron.unschedule('creditgate-test-cleanup-every-minute')")?;
    outcome?;
    eprintln!(
        "pg_cron {version}: {} each ran and succeeded (after {:.0} s), no failed creditgate run",
        wanted.join(" and "),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Runs `sql` as `role` in a transaction that is rolled back; returns the
/// SQLSTATE it failed with ("42501" only for a privilege refusal), or None.
async fn as_role(client: &Client, role: &str, sql: &str) -> Result<Option<String>> {
    client.batch_execute("BEGIN").await?;
    client.batch_execute(&format!("SET LOCAL ROLE {role}")).await?;
    let outcome = client.batch_execute(sql).await;
    client.batch_execute("ROLLBACK").await?;
    Ok(match outcome {
        Ok(()) => None,
        // PostgreSQL's own refusal ("permission denied for function ...",
        // "... for schema ...", "... for table ..."), not a function raising
        // 42501 itself (get_my_credit_balance without a signed-in user).
        Err(error) => Some(match (sqlstate(&error), error.as_db_error().map(|db| db.message())) {
            (Some(code), Some(message)) if code == "42501" && message.starts_with("permission denied for") => code,
            (Some(code), Some(message)) if code == "42501" => format!("42501 raised by the function: {message}"),
            (Some(code), _) => code,
            (None, _) => format!("{error}"),
        }),
    })
}

/// Splits `pg_get_function_identity_arguments` output ("p_id uuid, p_n integer")
/// into argument types.
fn split_arguments(identity: &str) -> Vec<String> {
    if identity.trim().is_empty() {
        return Vec::new();
    }
    identity
        .split(", ")
        .map(|argument| {
            let argument = argument.trim();
            let argument = argument.strip_prefix("OUT ").or_else(|| argument.strip_prefix("IN ")).unwrap_or(argument);
            // "name type" or just "type"; types may contain spaces ("timestamp with time zone").
            match argument.split_once(' ') {
                Some((name, rest)) if name.starts_with("p_") || name.starts_with('_') => rest.to_string(),
                _ => argument.to_string(),
            }
        })
        .collect()
}

/// A column an UPDATE may name (not an identity column, which PostgreSQL
/// refuses to update before it checks privileges).
fn first_column(table: &str) -> &'static str {
    match table {
        "users" => "credits",
        "credit_ledger" => "description",
        "rate_limits" => "expires_at",
        "credit_settings" | "credit_user_settings" => "low_balance_threshold",
        "credit_plans" => "amount",
        "credit_lots" => "remaining",
        "credit_lot_movements" => "delta",
        "credit_plan_subscriptions" => "plan",
        "credit_events" => "payload",
        _ => "status",
    }
}

fn quote(identifier: &str) -> String {
    format!("\"{}\"", identifier.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::split_arguments;

    #[test]
    fn argument_types() {
        assert_eq!(split_arguments(""), Vec::<String>::new());
        assert_eq!(
            split_arguments("p_user_id uuid, p_now timestamp with time zone, p_metadata jsonb"),
            vec!["uuid", "timestamp with time zone", "jsonb"]
        );
        assert_eq!(split_arguments("regclass, text"), vec!["regclass", "text"]);
    }
}
