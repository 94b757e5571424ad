//! PostgreSQL killed with an immediate shutdown (`pg_ctl -m immediate`:
//! SIGQUIT to the postmaster, no checkpoint, crash recovery at the next
//! start) while many connections charge, complete, refund and grant; twice.
//! Afterwards no credit is lost or created.

use crate::pg::Cluster;
use crate::support::{connect, free_ports, sqlstate};
use anyhow::{anyhow, bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use uuid::Uuid;

/// The crash test's own cluster (it is killed, so not the shared test
/// cluster), on a port shifted per checkout like the other test ports.
fn crash_pg_port() -> u16 {
    crate::testrun::test_pg_port() + CRASH_PORT_ABOVE_TEST_PG
}
/// 30 above the test cluster: never a multiple of 40 away from another
/// checkout's ports (those sit 0 and 89 to 99 above their cluster's).
const CRASH_PORT_ABOVE_TEST_PG: u16 = 30;
const SESSIONS: usize = 16;
const USERS: usize = 8;
const OPENING_CREDITS: i32 = 1_000_000;
/// Immediate shutdowns injected, and the load between them.
const CRASHES: usize = 2;
const LOAD_BETWEEN_CRASHES: Duration = Duration::from_millis(2_500);

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
    let port = free_ports(crash_pg_port(), 10, &[0])?;
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
// Every session has finished: nothing else takes the lock while it is held
// across these awaits.
#[allow(clippy::await_holding_lock)]
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
