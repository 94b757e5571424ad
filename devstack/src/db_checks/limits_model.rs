//! Charges under two shared rate limits at once
//! (`charge_credits_with_limits`), many sessions, checked against a model.

use crate::pg::Cluster;
use crate::support::{connect, sqlstate};
use anyhow::{anyhow, bail, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_postgres::Client;
use uuid::Uuid;
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

// Every session has finished: nothing else takes the lock while it is held
// across these awaits.
#[allow(clippy::await_holding_lock)]
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

/// Model-based concurrency check of the other limit kinds in
/// `charge_credits_with_limits`, many sessions at once: every charge names
/// a per-user rate limit with weights (1 to 3), a per-user unit limit
/// (`"units": true`, a random estimate), a concurrency limit of
/// [`KINDS_CONCURRENCY`], in random order; sessions also complete open jobs
/// with random actual units (below and above the estimate), refund them,
/// and take from a token bucket with weights. Checked during the run: no
/// snapshot ever shows a user with more than [`KINDS_CONCURRENCY`] open
/// holds; a concurrency refusal reports that many open, a rate refusal
/// names a refusing limit with a wait and less room than it asked, a bucket refusal has fewer tokens
/// left than it asked for. At the end: each rate limit spent exactly the
/// weights the model allowed (at most its limit), each unit window holds
/// exactly what the model says (estimates of open and expired holds,
/// actual units of completed ones, nothing of refunded ones), the bucket
/// gave out at most its capacity, balances match and the ledger is sound.
pub fn limit_kinds_concurrency(cluster: &Cluster, database: &str) -> Result<()> {
    let url = cluster.url("postgres", database);
    tokio::runtime::Runtime::new()?.block_on(limit_kinds(&url))
}

const KINDS_SESSIONS: usize = 10;
const KINDS_OPERATIONS: usize = 120;
const KINDS_USERS: usize = 3;
const KINDS_CONCURRENCY: i64 = 2;
const KINDS_RATE_LIMIT: i32 = 150;
const KINDS_UNIT_LIMIT: i32 = 5_000;
const KINDS_BUCKET: i32 = 40;

#[derive(Default)]
struct KindsModel {
    /// user -> weights the rate limit allowed; units counted now; credits charged.
    weights: HashMap<Uuid, i64>,
    units: HashMap<Uuid, i64>,
    charged: HashMap<Uuid, i64>,
    /// Open jobs: job -> (user, estimate, cost).
    open: HashMap<Uuid, (Uuid, i64, i64)>,
    bucket_taken: i64,
    concurrency_refusals: usize,
    rate_refusals: usize,
    corrections: usize,
}

// Every session has finished: nothing else takes the lock while it is held
// across these awaits.
#[allow(clippy::await_holding_lock)]
async fn limit_kinds(url: &str) -> Result<()> {
    let admin = connect(url).await?;
    let run = Uuid::new_v4();
    let bucket_key = format!("model-bucket-{run}");
    let users: Vec<Uuid> = (0..KINDS_USERS).map(|_| Uuid::new_v4()).collect();
    for (n, user) in users.iter().enumerate() {
        admin
            .execute("INSERT INTO auth.users (id, email) VALUES ($1, $2)", &[user, &format!("kinds-{n}-{user}@test.local")])
            .await?;
        admin.query_one("SELECT public.grant_credits($1, 100000, 'opening', NULL, '{}'::jsonb)", &[user]).await?;
    }
    let model = Arc::new(Mutex::new(KindsModel::default()));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A watcher: no snapshot may show more open holds than allowed.
    let watcher = {
        let (url, users, done) = (url.to_string(), users.clone(), done.clone());
        tokio::spawn(async move {
            let client = connect(&url).await?;
            let mut looks = 0usize;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let most: i64 = client
                    .query_one(
                        "SELECT coalesce(max(n), 0) FROM (SELECT count(*) AS n FROM public.generation_jobs
                         WHERE user_id = ANY($1) AND status = 'pending' AND expires_at > clock_timestamp() GROUP BY user_id) c",
                        &[&users],
                    )
                    .await?
                    .get(0);
                if most > KINDS_CONCURRENCY {
                    bail!("a snapshot shows {most} open holds of one user, the concurrency limit is {KINDS_CONCURRENCY}");
                }
                looks += 1;
                tokio::time::sleep(std::time::Duration::from_millis(2)).await;
            }
            anyhow::Ok(looks)
        })
    };
    let mut sessions = Vec::new();
    for session in 0..KINDS_SESSIONS {
        let (url, users, model, bucket_key) = (url.to_string(), users.clone(), model.clone(), bucket_key.clone());
        sessions.push(tokio::spawn(async move {
            let client = connect(&url).await?;
            let mut rng = StdRng::seed_from_u64(0x6b69_6e64 + session as u64);
            for _ in 0..KINDS_OPERATIONS {
                let user = users[rng.gen_range(0..users.len())];
                kinds_operate(&client, &mut rng, user, &bucket_key, &model).await?;
            }
            anyhow::Ok(())
        }));
    }
    let mut failure = None;
    for session in sessions {
        if let Err(error) = session.await.map_err(anyhow::Error::from).and_then(|result| result) {
            failure.get_or_insert(error);
        }
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let looks = watcher.await??;
    if let Some(error) = failure {
        return Err(error);
    }

    let model = model.lock().map_err(|_| anyhow!("model lock poisoned"))?;
    for user in &users {
        for (key, limit, expected) in [
            (format!("creditgate:user:{user}"), KINDS_RATE_LIMIT, model.weights.get(user).copied().unwrap_or(0)),
            (format!("creditgate:units:user:{user}"), KINDS_UNIT_LIMIT, model.units.get(user).copied().unwrap_or(0)),
        ] {
            let remaining: i32 = admin
                .query_one(
                    "SELECT remaining FROM creditgate.rate_limit_at($1, $2, 86400, 1, false, clock_timestamp())",
                    &[&key, &limit],
                )
                .await?
                .get(0);
            if i64::from(limit - remaining) != expected {
                bail!("{key}: {} counted in the database, the model says {expected}", limit - remaining);
            }
        }
        if model.weights.get(user).copied().unwrap_or(0) > i64::from(KINDS_RATE_LIMIT) {
            bail!("user {user}: the rate limit let more weight through than its limit");
        }
        let balance: i32 = admin.query_one("SELECT credits FROM public.users WHERE id = $1", &[user]).await?.get(0);
        let expected = 100_000 - model.charged.get(user).copied().unwrap_or(0);
        if i64::from(balance) != expected {
            bail!("user {user}: balance {balance}, the model says {expected}");
        }
    }
    if model.bucket_taken > i64::from(KINDS_BUCKET) {
        bail!("the token bucket gave out {} of a capacity of {KINDS_BUCKET}", model.bucket_taken);
    }
    let problems: i64 = admin.query_one("SELECT count(*) FROM public.verify_credit_ledger()", &[]).await?.get(0);
    if problems != 0 {
        bail!("verify_credit_ledger() found {problems} problem(s)");
    }
    eprintln!(
        "{} operations from {KINDS_SESSIONS} sessions on {KINDS_USERS} users under weighted rate, unit and concurrency \
         ({KINDS_CONCURRENCY}) limits and a token bucket: {} concurrency refusals, {} rate/unit refusals, {} unit \
         corrections, {} tokens taken, {looks} snapshots never above the concurrency limit; every window holds what the \
         model says; balances match; ledger sound",
        KINDS_SESSIONS * KINDS_OPERATIONS,
        model.concurrency_refusals,
        model.rate_refusals,
        model.corrections,
        model.bucket_taken
    );
    Ok(())
}

async fn kinds_operate(
    client: &Client,
    rng: &mut StdRng,
    user: Uuid,
    bucket_key: &str,
    model: &Arc<Mutex<KindsModel>>,
) -> Result<()> {
    let choice = rng.gen_range(0..10);
    if choice < 2 {
        // Settle one of the user's open jobs: complete with actual units
        // below or above the estimate, or refund.
        let job = {
            let model = model.lock().map_err(|_| anyhow!("model lock poisoned"))?;
            let jobs: Vec<Uuid> = model.open.iter().filter(|(_, (owner, _, _))| *owner == user).map(|(job, _)| *job).collect();
            if jobs.is_empty() {
                return Ok(());
            }
            jobs[rng.gen_range(0..jobs.len())]
        };
        // Taken out of the model first: no other session settles it.
        let Some((_, estimate, cost)) = model.lock().map_err(|_| anyhow!("model lock poisoned"))?.open.remove(&job) else {
            return Ok(());
        };
        if rng.gen_bool(0.7) {
            let actual = rng.gen_range(0..=2 * estimate) as i32;
            client.query_one("SELECT status FROM public.complete_generation_job($1, NULL, NULL, $2)", &[&job, &actual]).await?;
            let mut model = model.lock().map_err(|_| anyhow!("model lock poisoned"))?;
            *model.units.entry(user).or_default() += i64::from(actual) - estimate;
            model.corrections += 1;
        } else {
            client.query_one("SELECT public.refund_credits($1, $2, NULL, 'model')", &[&user, &job]).await?;
            let mut model = model.lock().map_err(|_| anyhow!("model lock poisoned"))?;
            *model.units.entry(user).or_default() -= estimate;
            *model.charged.entry(user).or_default() -= cost;
        }
        return Ok(());
    }
    if choice < 3 {
        let weight: i32 = rng.gen_range(1..=3);
        let row = client
            .query_one("SELECT allowed, remaining FROM public.apply_token_bucket($1, $2, 0.00001, $3)", &[
                &bucket_key,
                &KINDS_BUCKET,
                &weight,
            ])
            .await?;
        let (allowed, remaining): (bool, i32) = (row.get(0), row.get(1));
        let mut model = model.lock().map_err(|_| anyhow!("model lock poisoned"))?;
        if allowed {
            model.bucket_taken += i64::from(weight);
        } else if remaining >= weight {
            bail!("the token bucket refused {weight} with {remaining} left");
        }
        return Ok(());
    }
    let weight: i32 = rng.gen_range(1..=3);
    let estimate: i32 = rng.gen_range(1..=400);
    let cost: i32 = rng.gen_range(1..=5);
    let mut entries = vec![
        serde_json::json!({"key": format!("creditgate:user:{user}"), "limit": KINDS_RATE_LIMIT, "window_seconds": 86400, "cost": weight}),
        serde_json::json!({"key": format!("creditgate:units:user:{user}"), "limit": KINDS_UNIT_LIMIT, "window_seconds": 86400,
                           "cost": estimate, "units": true}),
        serde_json::json!({"key": format!("creditgate:user:{user}"), "concurrency": KINDS_CONCURRENCY}),
    ];
    // Random order: the canonical lock order keeps them from deadlocking.
    for i in (1..entries.len()).rev() {
        entries.swap(i, rng.gen_range(0..=i));
    }
    let limits = serde_json::Value::Array(entries);
    let row = client
        .query_one(
            "SELECT allowed, job_id, limits FROM public.charge_credits_with_limits($1, 'text', $2, $3, NULL, '{}', 600)",
            &[&user, &cost, &limits],
        )
        .await?;
    let (allowed, job, answered): (bool, Option<Uuid>, serde_json::Value) = (row.get(0), row.get(1), row.get(2));
    let entries = answered.as_array().ok_or_else(|| anyhow!("limits is not an array: {answered}"))?;
    let mut model = model.lock().map_err(|_| anyhow!("model lock poisoned"))?;
    match (allowed, job) {
        (true, Some(job)) => {
            *model.weights.entry(user).or_default() += i64::from(weight);
            *model.units.entry(user).or_default() += i64::from(estimate);
            *model.charged.entry(user).or_default() += i64::from(cost);
            model.open.insert(job, (user, i64::from(estimate), i64::from(cost)));
        }
        (false, None) => {
            let concurrency = entries.iter().find(|e| e["concurrency"] == serde_json::json!(true));
            let refused_by_concurrency = concurrency.is_some_and(|e| e["allowed"] == serde_json::json!(false));
            let rate_refusal = entries.iter().any(|e| {
                e["concurrency"] != serde_json::json!(true)
                    && e["allowed"] == serde_json::json!(false)
                    && e["retry_after_seconds"].as_i64().unwrap_or(0) > 0
            });
            // A refusing window had less room than the request asked of it.
            for e in entries.iter().filter(|e| e["concurrency"] != serde_json::json!(true) && e["allowed"] == serde_json::json!(false)) {
                let asked = if e["units"] == serde_json::json!(true) { estimate } else { weight };
                if e["remaining"].as_i64().unwrap_or(i64::MAX) >= i64::from(asked) {
                    bail!("a window refused {asked} with room for it: {e}");
                }
            }
            if refused_by_concurrency {
                let open = concurrency.and_then(|e| e["open"].as_i64()).unwrap_or(-1);
                if open < KINDS_CONCURRENCY {
                    bail!("a concurrency refusal with {open} open of {KINDS_CONCURRENCY}: {answered}");
                }
                model.concurrency_refusals += 1;
            } else if rate_refusal {
                model.rate_refusals += 1;
            } else {
                bail!("a refusal no limit justifies: {answered}");
            }
        }
        _ => bail!("charge_credits_with_limits returned allowed {allowed}, job {job:?}"),
    }
    Ok(())
}
