//! Database checks that pgTAP cannot express: many sessions at once.
//!
//! The concurrency check runs sessions in parallel that mix charges, replays,
//! completes (full and partial), refunds, grants and expiries on a few users,
//! then settles whatever is still open and compares every balance with a
//! model built only from what the calls returned:
//!
//! `balance = opening + granted (first time per key) - captured (completes)`
//!
//! Any error other than the expected business errors fails the check (a
//! deadlock, a unique violation, an overflow), and so does a non-empty
//! `verify_credit_ledger()` (which also finds a job settled twice) or a
//! negative balance.

use crate::pg::Cluster;
use anyhow::{bail, Context, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

const SESSIONS: usize = 16;
const OPERATIONS_PER_SESSION: usize = 250;
const USERS: usize = 4;
const OPENING_CREDITS: i32 = 2_000;
/// Idempotency keys per user: small, so that retries and conflicts happen.
const KEYS_PER_USER: u32 = 40;

/// SQLSTATEs a caller is expected to meet under contention.
const EXPECTED: &[&str] = &["PT402", "PT404", "PT409", "PT422"];

#[derive(Default)]
struct Model {
    /// (user, key) pairs granted at least once: a key counts once.
    grant_keys: std::collections::HashSet<(Uuid, u32)>,
    granted: HashMap<Uuid, i64>,
    captured: HashMap<Uuid, i64>,
    operations: usize,
    business_errors: usize,
}

pub fn concurrency(cluster: &Cluster, database: &str) -> Result<()> {
    let url = cluster.url("postgres", database);
    tokio::runtime::Runtime::new()?.block_on(run(url))
}

async fn connect(url: &str) -> Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

async fn run(url: String) -> Result<()> {
    let admin = connect(&url).await?;
    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::new_v4()).collect();
    for (n, user) in users.iter().enumerate() {
        admin
            .execute(
                "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
                &[user, &format!("concurrency-{n}-{user}@test.local")],
            )
            .await?;
        admin
            .query_one(
                "SELECT public.grant_credits($1, $2, 'opening', NULL, '{}'::jsonb)",
                &[user, &OPENING_CREDITS],
            )
            .await?;
    }
    let model = Arc::new(Mutex::new(Model::default()));
    let mut sessions = Vec::new();
    for session in 0..SESSIONS {
        let url = url.clone();
        let users = users.clone();
        let model = model.clone();
        sessions.push(tokio::spawn(async move {
            let client = connect(&url).await?;
            let mut rng = StdRng::seed_from_u64(session as u64);
            for _ in 0..OPERATIONS_PER_SESSION {
                let user = users[rng.gen_range(0..users.len())];
                operate(&client, &mut rng, user, &model).await?;
            }
            anyhow::Ok(())
        }));
    }
    for session in sessions {
        session.await??;
    }

    // Settle whatever is still open, so the model's final balances are exact.
    for user in &users {
        let open = admin
            .query(
                "SELECT id FROM public.generation_jobs WHERE user_id = $1 AND status = 'pending'",
                &[user],
            )
            .await?;
        for row in open {
            let job: Uuid = row.get(0);
            admin
                .query_one("SELECT public.refund_credits($1, $2, NULL, 'settle')", &[user, &job])
                .await
                .with_context(|| format!("final refund of {job}"))?;
        }
    }

    let problems = admin.query("SELECT * FROM public.verify_credit_ledger()", &[]).await?;
    if !problems.is_empty() {
        bail!("verify_credit_ledger() found {} problem(s)", problems.len());
    }
    let model = model.lock().map_err(|_| anyhow::anyhow!("model lock poisoned"))?;
    for user in &users {
        let balance: i32 = admin
            .query_one("SELECT credits FROM public.users WHERE id = $1", &[user])
            .await?
            .get(0);
        let expected = i64::from(OPENING_CREDITS) + model.granted.get(user).copied().unwrap_or(0)
            - model.captured.get(user).copied().unwrap_or(0);
        if i64::from(balance) != expected || balance < 0 {
            bail!("user {user}: balance {balance}, the model says {expected}");
        }
    }
    let ledger_rows: i64 = admin.query_one("SELECT count(*) FROM public.credit_ledger", &[]).await?.get(0);
    eprintln!(
        "{} operations from {SESSIONS} sessions on {USERS} users ({} expected business errors), \
         {ledger_rows} ledger rows; balances match the model; ledger sound",
        model.operations, model.business_errors
    );
    Ok(())
}

/// One random operation; business errors are counted, others fail the check.
async fn operate(client: &Client, rng: &mut StdRng, user: Uuid, model: &Mutex<Model>) -> Result<()> {
    let choice = rng.gen_range(0..100);
    let outcome: Result<(), tokio_postgres::Error> = async {
        match choice {
            // Charge with a key from a small pool: the same key always carries
            // the same request, so a repeat is a replay, never a conflict.
            0..=34 => {
                let key_number = rng.gen_range(0..KEYS_PER_USER);
                let key = format!("charge-{key_number}");
                let cost = 1 + (key_number % 7) as i32;
                let hold_seconds = if key_number % 5 == 0 { 1 } else { 900 };
                client
                    .query_one(
                        "SELECT * FROM public.charge_credits($1, 'image', $2, $3, '{}'::jsonb, $4)",
                        &[&user, &cost, &key, &hold_seconds],
                    )
                    .await?;
            }
            // Charge without a key: always a new job.
            35..=49 => {
                let cost = rng.gen_range(1..=9);
                client
                    .query_one("SELECT * FROM public.charge_credits($1, 'text', $2)", &[&user, &cost])
                    .await?;
            }
            // Complete a pending job, sometimes below its hold.
            50..=64 => {
                if let Some((job, cost)) = pending_job(client, user).await? {
                    let actual = if rng.gen_bool(0.5) { cost } else { rng.gen_range(0..=cost) };
                    let row = client
                        .query_one(
                            "SELECT * FROM public.complete_generation_job($1, 'https://r/x', $2)",
                            &[&job, &actual],
                        )
                        .await?;
                    let refunded: i32 = row.try_get("refunded")?;
                    let mut model = model.lock().expect("model lock");
                    *model.captured.entry(user).or_default() += i64::from(cost - refunded);
                }
            }
            // Refund a pending job (the whole hold).
            65..=79 => {
                if let Some((job, cost)) = pending_job(client, user).await? {
                    client
                        .query_one(
                            "SELECT public.refund_credits($1, $2, $3, 'failed')",
                            &[&user, &job, &cost],
                        )
                        .await?;
                }
            }
            // Grant, idempotent by key: only the first use of a key counts.
            80..=89 => {
                let key_number = rng.gen_range(0..KEYS_PER_USER);
                let amount = 5 + key_number as i32;
                let key = format!("grant-{key_number}");
                client
                    .query_one(
                        "SELECT public.grant_credits($1, $2, 'top-up', $3, '{}'::jsonb)",
                        &[&user, &amount, &key],
                    )
                    .await?;
                let mut model = model.lock().expect("model lock");
                if model.grant_keys.insert((user, key_number)) {
                    *model.granted.entry(user).or_default() += i64::from(amount);
                }
            }
            // The sweeper.
            _ => {
                client.query_one("SELECT public.expire_stale_generation_jobs()", &[]).await?;
            }
        }
        Ok(())
    }
    .await;
    let mut model = model.lock().map_err(|_| anyhow::anyhow!("model lock poisoned"))?;
    model.operations += 1;
    match outcome {
        Ok(()) => Ok(()),
        Err(error) => {
            let state = error.as_db_error().map(|db| db.code().code().to_string());
            match state.as_deref() {
                Some(code) if EXPECTED.contains(&code) => {
                    model.business_errors += 1;
                    Ok(())
                }
                _ => bail!("unexpected error: {error:?}"),
            }
        }
    }
}

async fn pending_job(client: &Client, user: Uuid) -> Result<Option<(Uuid, i32)>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT id, cost FROM public.generation_jobs
              WHERE user_id = $1 AND status = 'pending' ORDER BY random() LIMIT 1",
            &[&user],
        )
        .await?;
    Ok(row.map(|row| (row.get(0), row.get(1))))
}
