//! The model-based concurrency check of credit lots (docs/rpc.md, "Lots").
//!
//! Sessions run in parallel on a few users and mix grants (random priorities,
//! categories, and expiries of one to three seconds or none), charges that
//! span lots (holds of one second, which expire while the test runs, or of
//! fifteen minutes), full and partial completes, refunds, revokes of random
//! lots, the sweeper and balance reads. Lots expire while charges draw from
//! them and while holds keep their credits.
//!
//! The model then replays each user's ledger in id order (per user, the order
//! in which the changes committed: every change holds the user's row) with
//! the spending rules, from nothing but each lot's terms:
//!
//! - a grant opens its lot with `granted`;
//! - a charge draws by priority, soonest expiry (never last), oldest: its
//!   movements must be exactly the model's draws, lot by lot, in order;
//! - a settlement gives back to the lots its charge drew, drawn last first,
//!   each at most what it gave: its movements must be exactly that;
//! - a `lot_expiry` takes all that remains of one lot, whose expiry has
//!   passed; a `lot_revocation` takes all that remains of one revoked lot.
//!
//! Checked at the end, after the last expiry and a sweep: every lot's
//! `remaining` equals the model's, every balance equals the sum of the model's
//! lots, every lot past its expiry or revoked is empty, no call met an error
//! it should not (a deadlock, say), and `verify_credit_ledger()` is empty.

use crate::support::{connect, sqlstate};
use crate::pg::Cluster;
use anyhow::{anyhow, bail, Context, Result};
use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use tokio_postgres::Client;
use uuid::Uuid;

const SESSIONS: usize = 12;
const OPERATIONS_PER_SESSION: usize = 250;
const USERS: usize = 4;

pub fn lots_concurrency(cluster: &Cluster, database: &str) -> Result<()> {
    let url = cluster.url("postgres", database);
    tokio::runtime::Runtime::new()?.block_on(run(url))
}

#[derive(Default)]
struct Shared {
    /// Open jobs per user (job, cost): a settling session takes the job out.
    open: HashMap<Uuid, Vec<(Uuid, i32)>>,
    calls: BTreeMap<&'static str, usize>,
    business_errors: BTreeMap<String, usize>,
}

async fn run(url: String) -> Result<()> {
    let admin = connect(&url).await?;
    let users: Vec<Uuid> = (0..USERS).map(|_| Uuid::new_v4()).collect();
    for (n, user) in users.iter().enumerate() {
        admin
            .execute("INSERT INTO auth.users (id, email) VALUES ($1, $2)", &[user, &format!("lots-{n}-{user}@test.local")])
            .await?;
        admin.query_one("SELECT public.grant_credits($1, 30, 'opening')", &[user]).await?;
    }
    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut sessions = Vec::new();
    for session in 0..SESSIONS {
        let (url, users, shared) = (url.clone(), users.clone(), shared.clone());
        sessions.push(tokio::spawn(async move {
            let client = connect(&url).await?;
            let mut rng = StdRng::seed_from_u64(0x6c6f_7473 + session as u64);
            for _ in 0..OPERATIONS_PER_SESSION {
                let user = users[rng.gen_range(0..users.len())];
                operate(&client, &mut rng, user, &shared).await?;
            }
            anyhow::Ok(())
        }));
    }
    for session in sessions {
        session.await??;
    }

    // Past every expiry (lots: at most 3 s; holds: 1 s), settle what is open, sweep.
    tokio::time::sleep(std::time::Duration::from_millis(3_200)).await;
    let open: Vec<(Uuid, Uuid)> = {
        let shared = shared.lock().map_err(|_| anyhow!("poisoned"))?;
        shared.open.iter().flat_map(|(user, jobs)| jobs.iter().map(|(job, _)| (*user, *job))).collect()
    };
    for (user, job) in open {
        admin
            .query_one("SELECT public.refund_credits($1, $2, NULL, 'settle')", &[&user, &job])
            .await
            .with_context(|| format!("final refund of {job}"))?;
    }
    admin.query_one("SELECT public.expire_stale_generation_jobs()", &[]).await?;

    let mut entries_checked: BTreeMap<String, usize> = BTreeMap::new();
    let mut lots_checked = 0;
    for user in &users {
        let (entries, lots) = replay(&admin, *user).await.with_context(|| format!("user {user}"))?;
        for (kind, count) in entries {
            *entries_checked.entry(kind).or_default() += count;
        }
        lots_checked += lots;
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
    let shared = shared.lock().map_err(|_| anyhow!("poisoned"))?;
    eprintln!(
        "{} operations from {SESSIONS} sessions on {USERS} users: {:?}\nbusiness errors (expected): {:?}\n\
         ledger entries replayed by the model: {entries_checked:?}; {lots_checked} lots: every movement, every \
         lot's remaining and every balance match the model; verify_credit_ledger() empty",
        shared.calls.values().sum::<usize>(),
        shared.calls,
        shared.business_errors
    );
    Ok(())
}

/// One random operation; each arm lists the business errors it may meet.
async fn operate(client: &Client, rng: &mut StdRng, user: Uuid, shared: &Arc<Mutex<Shared>>) -> Result<()> {
    let choice = rng.gen_range(0..100);
    let (name, allowed): (&'static str, &[&str]) = match choice {
        0..=24 => ("grant", &[]),
        25..=54 => ("charge", &["PT402"]),
        55..=66 => ("complete", &[]),
        67..=76 => ("refund", &[]),
        77..=81 => ("revoke", &[]),
        82..=89 => ("sweeper", &[]),
        _ => ("balance", &[]),
    };
    let outcome: Result<(), tokio_postgres::Error> = async {
        match name {
            "grant" => {
                let amount: i32 = rng.gen_range(1..=10);
                let priority: i32 = [0, 10, 50, 50, 90][rng.gen_range(0..5)];
                let category = ["paid", "promotional", "gift"][rng.gen_range(0..3)];
                // Expiry in 1 to 3 s (in ms), or never.
                let expires_in_ms: Option<f64> =
                    if rng.gen_bool(0.6) { Some(rng.gen_range(1_000..3_000) as f64) } else { None };
                client
                    .query_one(
                        "SELECT public.grant_credits($1, $2, 'lots model', NULL, '{}'::jsonb,
                           clock_timestamp() + $3::float8 * interval '1 millisecond', $4, $5)",
                        &[&user, &amount, &expires_in_ms, &category, &priority],
                    )
                    .await?;
            }
            "charge" => {
                let cost: i32 = rng.gen_range(1..=12);
                let hold: i32 = if rng.gen_bool(0.25) { 1 } else { 900 };
                let row = client
                    .query_one(
                        "SELECT job_id FROM public.charge_credits($1, 'image', $2, NULL, '{}'::jsonb, $3)",
                        &[&user, &cost, &hold],
                    )
                    .await?;
                let job: Uuid = row.get(0);
                if let Ok(mut shared) = shared.lock() {
                    shared.open.entry(user).or_default().push((job, cost));
                }
            }
            "complete" | "refund" => {
                let picked = shared.lock().ok().and_then(|mut shared| {
                    let jobs = shared.open.entry(user).or_default();
                    (!jobs.is_empty()).then(|| jobs.swap_remove(rng.gen_range(0..jobs.len())))
                });
                if let Some((job, cost)) = picked {
                    if name == "complete" {
                        let actual: i32 = rng.gen_range(0..=cost);
                        client
                            .query_one("SELECT * FROM public.complete_generation_job($1, NULL, $2)", &[&job, &actual])
                            .await?;
                    } else {
                        client.query_one("SELECT public.refund_credits($1, $2, NULL, 'failed')", &[&user, &job]).await?;
                    }
                }
            }
            "revoke" => {
                let lot: Option<Uuid> = client
                    .query_opt("SELECT id FROM public.credit_lots WHERE user_id = $1 ORDER BY random() LIMIT 1", &[&user])
                    .await?
                    .map(|row| row.get(0));
                if let Some(lot) = lot {
                    client.query_one("SELECT public.revoke_credit_lot($1, 'model')", &[&lot]).await?;
                }
            }
            "sweeper" => {
                client.query_one("SELECT public.expire_stale_generation_jobs()", &[]).await?;
            }
            _ => {
                client.query_one("SELECT public.get_credit_balance($1)", &[&user]).await?;
            }
        }
        Ok(())
    }
    .await;
    let mut shared = shared.lock().map_err(|_| anyhow!("poisoned"))?;
    *shared.calls.entry(name).or_default() += 1;
    match outcome {
        Ok(()) => Ok(()),
        Err(error) => match sqlstate(&error) {
            Some(code) if allowed.contains(&code.as_str()) => {
                *shared.business_errors.entry(format!("{name}: {code}")).or_default() += 1;
                Ok(())
            }
            _ => bail!("operation {name:?}: unexpected error: {error:?}"),
        },
    }
}

struct Lot {
    priority: i32,
    expires_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    granted: i32,
    remaining: i32,
    grant_entry: Option<i64>,
    revoked: bool,
}

/// Replays the user's ledger with the spending rules; returns the entries
/// checked by kind (charges spanning lots and settlements into expired or
/// revoked lots counted apart) and the number of lots.
async fn replay(admin: &Client, user: Uuid) -> Result<(BTreeMap<String, usize>, usize)> {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    let lots_rows = admin
        .query(
            "SELECT id, priority, expires_at, created_at, granted, remaining, grant_entry_id, revoked_at IS NOT NULL
             FROM public.credit_lots WHERE user_id = $1",
            &[&user],
        )
        .await?;
    let mut db_remaining: HashMap<Uuid, i32> = HashMap::new();
    let mut terms: HashMap<Uuid, Lot> = HashMap::new();
    let mut opened_by: HashMap<i64, Vec<Uuid>> = HashMap::new();
    for row in &lots_rows {
        let id: Uuid = row.get(0);
        let lot = Lot {
            priority: row.get(1),
            expires_at: row.get(2),
            created_at: row.get(3),
            granted: row.get(4),
            remaining: 0,
            grant_entry: row.get(6),
            revoked: row.get(7),
        };
        db_remaining.insert(id, row.get(5));
        match lot.grant_entry {
            Some(entry) => opened_by.entry(entry).or_default().push(id),
            None => bail!("lot {id} has no grant entry (only the upgrade opens such lots)"),
        }
        terms.insert(id, lot);
    }
    let mut movements: HashMap<i64, Vec<(Uuid, i32)>> = HashMap::new();
    for row in admin
        .query(
            "SELECT m.ledger_id, m.lot_id, m.delta FROM public.credit_lot_movements m
             JOIN public.credit_ledger l ON l.id = m.ledger_id WHERE l.user_id = $1 ORDER BY m.id",
            &[&user],
        )
        .await?
    {
        movements.entry(row.get(0)).or_default().push((row.get(1), row.get(2)));
    }
    let entries = admin
        .query(
            "SELECT id, entry_type, delta, job_id, created_at FROM public.credit_ledger WHERE user_id = $1 ORDER BY id",
            &[&user],
        )
        .await?;
    // The charge draws of each job, in drawing order.
    let mut draws: HashMap<Uuid, Vec<(Uuid, i32)>> = HashMap::new();
    let mut balance: i64 = 0;
    for row in &entries {
        let (id, entry_type, delta, job, at): (i64, String, i32, Option<Uuid>, DateTime<Utc>) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        let recorded = movements.remove(&id).unwrap_or_default();
        balance += i64::from(delta);
        *kinds.entry(entry_type.clone()).or_default() += 1;
        if entry_type == "charge" && recorded.len() > 1 {
            *kinds.entry("charge spanning lots".into()).or_default() += 1;
        }
        let expected: Vec<(Uuid, i32)> = match entry_type.as_str() {
            "grant" => {
                let opened = opened_by.get(&id).cloned().unwrap_or_default();
                if opened.len() != 1 || terms[&opened[0]].granted != delta {
                    bail!("grant entry {id} of {delta}: lots opened {opened:?}");
                }
                terms.get_mut(&opened[0]).map(|lot| lot.remaining = delta);
                Vec::new()
            }
            "charge" => {
                let mut order: Vec<(&Uuid, &Lot)> = terms.iter().filter(|(_, lot)| lot.remaining > 0).collect();
                order.sort_by(|(a_id, a), (b_id, b)| {
                    (a.priority, a.expires_at.is_none(), a.expires_at, a.created_at, *a_id)
                        .cmp(&(b.priority, b.expires_at.is_none(), b.expires_at, b.created_at, *b_id))
                });
                let mut left = -delta;
                let mut drawn = Vec::new();
                for (lot_id, lot) in order {
                    if left == 0 {
                        break;
                    }
                    let take = left.min(lot.remaining);
                    drawn.push((*lot_id, -take));
                    left -= take;
                }
                if left > 0 {
                    bail!("charge entry {id}: the model's lots lack {left} credits");
                }
                let job = job.ok_or_else(|| anyhow!("charge entry {id} without a job"))?;
                draws.insert(job, drawn.iter().map(|(lot, take)| (*lot, -take)).collect());
                drawn
            }
            "refund" | "expiry" | "completion" => {
                let job = job.ok_or_else(|| anyhow!("settlement entry {id} without a job"))?;
                let mut left = delta;
                let mut given = Vec::new();
                for (lot, took) in draws.get(&job).map(|d| d.iter().rev().cloned().collect::<Vec<_>>()).unwrap_or_default()
                {
                    if left == 0 {
                        break;
                    }
                    let give = left.min(took);
                    given.push((lot, give));
                    left -= give;
                }
                if left != 0 {
                    bail!("settlement entry {id} returns {delta}, the job's draws cover only {}", delta - left);
                }
                given
            }
            "lot_expiry" | "lot_revocation" => {
                let (lot_id, taken) =
                    *recorded.first().ok_or_else(|| anyhow!("{entry_type} entry {id} moves no lot"))?;
                let lot = &terms[&lot_id];
                if recorded.len() != 1 || taken != delta || lot.remaining != -delta {
                    bail!(
                        "{entry_type} entry {id} takes {delta} from lot {lot_id}, which holds {} in the model",
                        lot.remaining
                    );
                }
                if entry_type == "lot_expiry" && !lot.expires_at.is_some_and(|expiry| expiry <= at) {
                    bail!("lot_expiry entry {id} at {at} for lot {lot_id} expiring {:?}", lot.expires_at);
                }
                if entry_type == "lot_revocation" && !lot.revoked {
                    bail!("lot_revocation entry {id} for lot {lot_id}, which is not revoked");
                }
                recorded.clone()
            }
            other => bail!("unexpected entry type {other} (entry {id})"),
        };
        if recorded != expected {
            bail!("entry {id} ({entry_type} {delta}): movements {recorded:?}, the model says {expected:?}");
        }
        for (lot_id, moved) in expected {
            let lot = terms.get_mut(&lot_id).ok_or_else(|| anyhow!("entry {id} moves unknown lot {lot_id}"))?;
            lot.remaining += moved;
            if lot.remaining < 0 {
                bail!("entry {id} takes lot {lot_id} below zero in the model");
            }
        }
    }
    if !movements.is_empty() {
        bail!("movements of entries not in the user's ledger: {:?}", movements.keys().collect::<Vec<_>>());
    }
    let now: DateTime<Utc> = admin.query_one("SELECT clock_timestamp()", &[]).await?.get(0);
    let mut sum: i64 = 0;
    for (id, lot) in &terms {
        let stored = db_remaining[id];
        if stored != lot.remaining {
            bail!("lot {id}: remaining {stored}, the model says {}", lot.remaining);
        }
        if lot.remaining > 0 && (lot.revoked || lot.expires_at.is_some_and(|expiry| expiry <= now)) {
            bail!("lot {id} is expired or revoked but still holds {}", lot.remaining);
        }
        sum += i64::from(lot.remaining);
    }
    let credits: i32 = admin.query_one("SELECT credits FROM public.users WHERE id = $1", &[&user]).await?.get(0);
    if i64::from(credits) != sum || i64::from(credits) != balance {
        bail!("balance {credits}, the model's lots hold {sum}, the ledger sums to {balance}");
    }
    Ok((kinds, terms.len()))
}
