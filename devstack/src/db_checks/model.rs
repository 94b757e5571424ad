//! Database checks that pgTAP cannot express: many sessions at once.
//!
//! The concurrency check is model-based. Sessions run in parallel on a few
//! users and mix every operation a caller has: keyed charges (a small key pool,
//! so replays and races on one key happen), a key reused for a different
//! request, unkeyed charges, full and partial completes, refunds, keyed grants,
//! rate-limited charges (`charge_credits_with_limit`), the sweeper, balance
//! reads, and holds of one second that expire while the test runs. A model
//! built only from what the calls returned follows along:
//!
//! - jobs: who owns each, its cost, and whether it is open, completed (and what
//!   was kept) or refunded; a key maps to one job, whoever replays it;
//! - grants: a key counts once;
//! - rate limits: per user, how many limited charges were allowed and denied.
//!
//! Checked during the run: a replay returns the key's job; a new charge never
//! reuses a key already charged; a job is never settled twice; a complete
//! returns exactly the unused part; no returned balance is negative; only the
//! business errors a call can meet occur (anything else, a deadlock, a unique
//! violation, `user_not_found`, fails the check).
//! Checked at the end: the database has exactly the model's jobs, each in the
//! model's state (an open one may have expired, only past its deadline); after
//! settling what is still open, every balance equals
//! `opening + granted - kept`; a user's limited charges allowed are at most the
//! limit, and exactly the limit once one was denied (a denial consumed nothing,
//! a failed charge gave its unit back); `verify_credit_ledger()` is empty.

use crate::pg::Cluster;
use crate::support::{connect, sqlstate};
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio_postgres::Client;
use uuid::Uuid;

const SESSIONS: usize = 16;
const OPERATIONS_PER_SESSION: usize = 500;
const USERS: usize = 5;
/// Small, with small grants, so that charges run out of credits at times.
const OPENING_CREDITS: i32 = 40;
/// Idempotency keys per user: small, so that retries and races happen.
const KEYS_PER_USER: u32 = 40;
/// The rate limit on each user's limited charges: per day, so the whole run
/// is one window and every allowed charge counts against it.
const LIMIT: i32 = 60;
const LIMIT_WINDOW_SECONDS: i32 = 86_400;

#[derive(Clone, Copy, PartialEq, Debug)]
enum JobState {
    Open,
    Completed { kept: i32 },
    Refunded,
}

struct Job {
    user: Uuid,
    cost: i32,
    expires_at: DateTime<Utc>,
    state: JobState,
}

#[derive(Default)]
struct Model {
    jobs: HashMap<Uuid, Job>,
    /// Open jobs per user, for completes and refunds to pick from.
    open: HashMap<Uuid, Vec<Uuid>>,
    /// (user, key) -> the job the key charged; and how many calls said "new".
    keys: HashMap<(Uuid, String), Uuid>,
    new_charges_per_key: HashMap<(Uuid, String), u32>,
    grant_keys: HashSet<(Uuid, u32)>,
    granted: HashMap<Uuid, i64>,
    limit_allowed: HashMap<Uuid, i32>,
    limit_denied: HashMap<Uuid, i32>,
    /// Calls per operation, and business errors per (operation, code).
    calls: BTreeMap<&'static str, usize>,
    business_errors: BTreeMap<String, usize>,
}

impl Model {
    fn opened(&mut self, job: Uuid, user: Uuid, cost: i32, expires_at: DateTime<Utc>) -> Result<()> {
        if self.jobs.contains_key(&job) {
            bail!("job {job} was returned as new twice");
        }
        self.jobs.insert(job, Job { user, cost, expires_at, state: JobState::Open });
        self.open.entry(user).or_default().push(job);
        Ok(())
    }

    /// Records a charge made with `key`; `replayed` as the database said.
    fn keyed(&mut self, user: Uuid, key: &str, job: Uuid, replayed: bool) -> Result<()> {
        let entry = (user, key.to_string());
        if let Some(known) = self.keys.get(&entry) {
            if *known != job {
                bail!("key {key} of user {user} returned job {job}, but it charged job {known}");
            }
        }
        self.keys.insert(entry.clone(), job);
        if !replayed {
            let count = self.new_charges_per_key.entry(entry).or_default();
            *count += 1;
            if *count > 1 {
                bail!("key {key} of user {user} charged twice (the second time as new)");
            }
        }
        Ok(())
    }

    fn settled(&mut self, job_id: Uuid, state: JobState) -> Result<()> {
        let job = self.jobs.get_mut(&job_id).ok_or_else(|| anyhow!("settled unknown job {job_id}"))?;
        if job.state != JobState::Open {
            bail!("job {job_id} settled twice: {:?}, then {state:?}", job.state);
        }
        job.state = state;
        let user = job.user;
        if let Some(open) = self.open.get_mut(&user) {
            open.retain(|id| *id != job_id);
        }
        Ok(())
    }

    fn pick_open(&self, user: Uuid, rng: &mut StdRng) -> Option<(Uuid, i32)> {
        let open = self.open.get(&user)?;
        if open.is_empty() {
            return None;
        }
        let job = open[rng.gen_range(0..open.len())];
        Some((job, self.jobs[&job].cost))
    }

    fn kept(&self, user: Uuid) -> i64 {
        self.jobs
            .values()
            .filter(|job| job.user == user)
            .map(|job| match job.state {
                JobState::Completed { kept } => i64::from(kept),
                _ => 0,
            })
            .sum()
    }
}

type Shared = Arc<Mutex<Model>>;

fn lock(model: &Shared) -> Result<std::sync::MutexGuard<'_, Model>> {
    model.lock().map_err(|_| anyhow!("model lock poisoned"))
}

pub fn concurrency(cluster: &Cluster, database: &str) -> Result<()> {
    let url = cluster.url("postgres", database);
    tokio::runtime::Runtime::new()?.block_on(run(url))
}

// Every session has finished: nothing else takes the lock while it is held
// across these awaits.
#[allow(clippy::await_holding_lock)]
async fn run(url: String) -> Result<()> {
    let admin = connect(&url).await?;
    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::new_v4()).collect();
    for (n, user) in users.iter().enumerate() {
        admin
            .execute(
                "INSERT INTO auth.users (id, email) VALUES ($1, $2)",
                &[user, &format!("model-{n}-{user}@test.local")],
            )
            .await?;
        admin
            .query_one("SELECT public.grant_credits($1, $2, 'opening', NULL, '{}'::jsonb)", &[user, &OPENING_CREDITS])
            .await?;
    }
    let model: Shared = Arc::new(Mutex::new(Model::default()));
    let mut sessions = Vec::new();
    for session in 0..SESSIONS {
        let url = url.clone();
        let users = users.clone();
        let model = model.clone();
        sessions.push(tokio::spawn(async move {
            let client = connect(&url).await?;
            let mut rng = StdRng::seed_from_u64(0x6372_6564 + session as u64);
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

    // Let the one-second holds pass their deadline, then sweep.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    admin.query_one("SELECT public.expire_stale_generation_jobs()", &[]).await?;
    let mut model = lock(&model)?;
    check_jobs(&admin, &users, &model).await?;

    // Settle what is still open (a refund each), so balances are exact.
    let still_open: Vec<(Uuid, Uuid)> =
        model.jobs.iter().filter(|(_, job)| job.state == JobState::Open).map(|(id, job)| (*id, job.user)).collect();
    let mut expired = 0;
    for (job, user) in still_open {
        let status: String =
            admin.query_one("SELECT status FROM public.generation_jobs WHERE id = $1", &[&job]).await?.get(0);
        if status == "pending" {
            admin
                .query_one("SELECT public.refund_credits($1, $2, NULL, 'settle')", &[&user, &job])
                .await
                .with_context(|| format!("final refund of {job}"))?;
        } else {
            expired += 1;
        }
        model.settled(job, JobState::Refunded)?;
    }

    let problems = admin.query("SELECT problem, details::text FROM public.verify_credit_ledger()", &[]).await?;
    if let Some(row) = problems.first() {
        bail!(
            "verify_credit_ledger() found {} problem(s), the first: {} {}",
            problems.len(),
            row.get::<_, String>(0),
            row.get::<_, String>(1)
        );
    }
    for user in &users {
        let balance: i32 =
            admin.query_one("SELECT credits FROM public.users WHERE id = $1", &[user]).await?.get(0);
        let expected =
            i64::from(OPENING_CREDITS) + model.granted.get(user).copied().unwrap_or(0) - model.kept(*user);
        if i64::from(balance) != expected || balance < 0 {
            bail!("user {user}: balance {balance}, the model says {expected}");
        }
        let allowed = model.limit_allowed.get(user).copied().unwrap_or(0);
        let denied = model.limit_denied.get(user).copied().unwrap_or(0);
        if allowed > LIMIT || (denied > 0 && allowed != LIMIT) {
            bail!("user {user}: {allowed} limited charges allowed and {denied} denied, with a limit of {LIMIT}");
        }
    }
    let ledger_rows: i64 = admin.query_one("SELECT count(*) FROM public.credit_ledger", &[]).await?.get(0);
    let total: usize = model.calls.values().sum();
    let limited: (i32, i32) =
        (model.limit_allowed.values().sum(), model.limit_denied.values().sum());
    eprintln!(
        "{total} operations from {SESSIONS} sessions on {USERS} users: {:?}\n\
         business errors (expected): {:?}\n\
         {} jobs ({expired} expired while the test ran), {ledger_rows} ledger rows, \
         limited charges {} allowed / {} denied; every job and balance matches the model; ledger sound",
        model.calls,
        model.business_errors,
        model.jobs.len(),
        limited.0,
        limited.1
    );
    Ok(())
}

/// The database has exactly the model's jobs, each in the model's state; an
/// open job may have expired, but only past its deadline.
async fn check_jobs(admin: &Client, users: &[Uuid], model: &Model) -> Result<()> {
    let rows = admin
        .query(
            "SELECT id, user_id, status, cost, captured_credits, expires_at, clock_timestamp()
             FROM public.generation_jobs WHERE user_id = ANY($1)",
            &[&users],
        )
        .await?;
    if rows.len() != model.jobs.len() {
        bail!("the database has {} jobs for these users, the model {}", rows.len(), model.jobs.len());
    }
    for row in rows {
        let id: Uuid = row.get(0);
        let status: String = row.get(2);
        let cost: i32 = row.get(3);
        let captured: Option<i32> = row.get(4);
        let expires_at: DateTime<Utc> = row.get(5);
        let now: DateTime<Utc> = row.get(6);
        let job = model.jobs.get(&id).ok_or_else(|| anyhow!("job {id} is in the database, not in the model"))?;
        let user: Uuid = row.get(1);
        let consistent = user == job.user
            && cost == job.cost
            && expires_at == job.expires_at
            && match job.state {
                JobState::Open => status == "pending" || (status == "expired" && job.expires_at <= now),
                JobState::Completed { kept } => status == "completed" && captured == Some(kept),
                JobState::Refunded => status == "failed" && captured == Some(0),
            };
        if !consistent {
            bail!(
                "job {id}: the database says {status} (cost {cost}, kept {captured:?}), the model {:?} (cost {})",
                job.state,
                job.cost
            );
        }
    }
    Ok(())
}

/// One random operation. Each arm lists the business errors it may meet;
/// any other error fails the check.
async fn operate(client: &Client, rng: &mut StdRng, user: Uuid, model: &Shared) -> Result<()> {
    let choice = rng.gen_range(0..100);
    let (name, allowed_errors): (&'static str, &[&str]) = match choice {
        0..=21 => ("charge with key", &["PT402", "PT409"]),
        22..=25 => ("key reused, other request", &["PT409", "PT422"]),
        26..=33 => ("charge without key", &["PT402"]),
        34..=45 => ("complete", &["PT409"]),
        46..=55 => ("refund", &["PT409"]),
        56..=64 => ("grant with key", &["PT409"]),
        65..=84 => ("charge with rate limit", &["PT402"]),
        85..=91 => ("sweeper", &[]),
        _ => ("balance", &[]),
    };
    let outcome: Result<(), OpError> = async {
        match name {
            // The same key always carries the same request: a repeat is a replay.
            "charge with key" => {
                let key_number = rng.gen_range(0..KEYS_PER_USER);
                let key = format!("charge-{key_number}");
                let cost = 1 + (key_number % 7) as i32;
                let hold_seconds = if key_number.is_multiple_of(5) { 1 } else { 900 };
                let row = client
                    .query_one(
                        "SELECT job_id, new_balance, replayed, expires_at
                         FROM public.charge_credits($1, 'image', $2, $3, '{}'::jsonb, $4)",
                        &[&user, &cost, &key, &hold_seconds],
                    )
                    .await?;
                let (job, balance, replayed, expires_at): (Uuid, i32, bool, DateTime<Utc>) =
                    (row.get(0), row.get(1), row.get(2), row.get(3));
                non_negative(balance)?;
                let mut model = lock(model)?;
                model.keyed(user, &key, job, replayed)?;
                if !replayed {
                    model.opened(job, user, cost, expires_at)?;
                }
            }
            // A key already charged, with another cost: refused, nothing charged.
            "key reused, other request" => {
                let used = {
                    let model = lock(model)?;
                    model
                        .keys
                        .keys()
                        .filter(|(owner, _)| *owner == user)
                        .map(|(_, key)| key.clone())
                        .nth(rng.gen_range(0..KEYS_PER_USER as usize))
                };
                if let Some(key) = used {
                    let key_number: u32 = key.trim_start_matches("charge-").parse().unwrap_or(0);
                    let other_cost = 100 + (key_number % 7) as i32;
                    let hold_seconds = if key_number.is_multiple_of(5) { 1 } else { 900 };
                    let row = client
                        .query_one(
                            "SELECT job_id FROM public.charge_credits($1, 'image', $2, $3, '{}'::jsonb, $4)",
                            &[&user, &other_cost, &key, &hold_seconds],
                        )
                        .await?;
                    let job: Uuid = row.get(0);
                    return Err(OpError::Check(anyhow!(
                        "key {key} reused for a different request was accepted (job {job})"
                    )));
                }
            }
            "charge without key" => {
                let cost = rng.gen_range(1..=9);
                let row = client
                    .query_one(
                        "SELECT job_id, new_balance, replayed, expires_at FROM public.charge_credits($1, 'text', $2)",
                        &[&user, &cost],
                    )
                    .await?;
                non_negative(row.get(1))?;
                if row.get::<_, bool>(2) {
                    return Err(OpError::Check(anyhow!("a charge without a key said it was a replay")));
                }
                lock(model)?.opened(row.get(0), user, cost, row.get(3))?;
            }
            // Complete an open job, half the time below its hold.
            "complete" => {
                let picked = lock(model)?.pick_open(user, rng);
                if let Some((job, cost)) = picked {
                    let actual = if rng.gen_bool(0.5) { cost } else { rng.gen_range(0..=cost) };
                    let row = client
                        .query_one(
                            "SELECT status, new_balance, refunded FROM public.complete_generation_job($1, 'https://r/x', $2)",
                            &[&job, &actual],
                        )
                        .await?;
                    let (status, balance, refunded): (String, i32, i32) = (row.get(0), row.get(1), row.get(2));
                    non_negative(balance)?;
                    // A hold past its deadline answers status expired (all of
                    // it back, kept by the call): it stays Open in the model,
                    // which accepts an expired job past its deadline.
                    if status == "expired" && refunded == cost {
                        return Ok(());
                    }
                    if status != "completed" || refunded != cost - actual {
                        return Err(OpError::Check(anyhow!(
                            "complete of {job} (hold {cost}, actual {actual}) returned {status}, refunded {refunded}"
                        )));
                    }
                    lock(model)?.settled(job, JobState::Completed { kept: actual })?;
                }
            }
            "refund" => {
                let picked = lock(model)?.pick_open(user, rng);
                if let Some((job, cost)) = picked {
                    let balance: i32 = client
                        .query_one("SELECT public.refund_credits($1, $2, $3, 'failed')", &[&user, &job, &cost])
                        .await?
                        .get(0);
                    non_negative(balance)?;
                    // A refund of a hold past its deadline returns the balance
                    // and leaves the job expired (no error): Open in the model.
                    let status: String = client
                        .query_one("SELECT status FROM public.generation_jobs WHERE id = $1", &[&job])
                        .await?
                        .get(0);
                    if status == "expired" {
                        return Ok(());
                    }
                    lock(model)?.settled(job, JobState::Refunded)?;
                }
            }
            // Grants are idempotent by key: only the first use of a key counts.
            "grant with key" => {
                let key_number = rng.gen_range(0..KEYS_PER_USER);
                let amount = 1 + (key_number % 5) as i32;
                let key = format!("grant-{key_number}");
                let balance: i32 = client
                    .query_one(
                        "SELECT public.grant_credits($1, $2, 'top-up', $3, '{}'::jsonb)",
                        &[&user, &amount, &key],
                    )
                    .await?
                    .get(0);
                non_negative(balance)?;
                let mut model = lock(model)?;
                if model.grant_keys.insert((user, key_number)) {
                    *model.granted.entry(user).or_default() += i64::from(amount);
                }
            }
            "charge with rate limit" => {
                let cost = rng.gen_range(1..=5);
                let limit_key = format!("model:{user}");
                let row = client
                    .query_one(
                        "SELECT allowed, job_id, new_balance, expires_at, remaining, retry_after_seconds
                         FROM public.charge_credits_with_limit($1, 'limited', $2, $3, $4, $5)",
                        &[&user, &cost, &limit_key, &LIMIT, &LIMIT_WINDOW_SECONDS],
                    )
                    .await?;
                let allowed: bool = row.get(0);
                let job: Option<Uuid> = row.get(1);
                let retry_after: i32 = row.get(5);
                let mut model = lock(model)?;
                match (allowed, job) {
                    (true, Some(job)) => {
                        non_negative(row.get(2))?;
                        model.opened(job, user, cost, row.get(3))?;
                        *model.limit_allowed.entry(user).or_default() += 1;
                    }
                    (false, None) if retry_after > 0 => {
                        *model.limit_denied.entry(user).or_default() += 1;
                    }
                    _ => {
                        return Err(OpError::Check(anyhow!(
                            "charge_credits_with_limit returned allowed {allowed}, job {job:?}, retry after {retry_after}"
                        )))
                    }
                }
            }
            "sweeper" => {
                client.query_one("SELECT public.expire_stale_generation_jobs()", &[]).await?;
            }
            _ => {
                let balance: i32 =
                    client.query_one("SELECT public.get_credit_balance($1)", &[&user]).await?.get(0);
                non_negative(balance)?;
            }
        }
        Ok(())
    }
    .await;
    let mut model = lock(model)?;
    *model.calls.entry(name).or_default() += 1;
    match outcome {
        Ok(()) => Ok(()),
        Err(OpError::Check(error)) => Err(error.context(format!("operation {name:?}"))),
        Err(OpError::Database(error)) => match sqlstate(&error) {
            Some(code) if allowed_errors.contains(&code.as_str()) => {
                *model.business_errors.entry(format!("{name}: {code}")).or_default() += 1;
                Ok(())
            }
            _ => bail!("operation {name:?}: unexpected error: {error:?}"),
        },
    }
}

fn non_negative(balance: i32) -> Result<(), OpError> {
    if balance < 0 {
        return Err(OpError::Check(anyhow!("a call returned a negative balance: {balance}")));
    }
    Ok(())
}

enum OpError {
    Database(tokio_postgres::Error),
    Check(anyhow::Error),
}

impl From<tokio_postgres::Error> for OpError {
    fn from(error: tokio_postgres::Error) -> Self {
        OpError::Database(error)
    }
}

impl From<anyhow::Error> for OpError {
    fn from(error: anyhow::Error) -> Self {
        OpError::Check(error)
    }
}
