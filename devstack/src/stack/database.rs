//! The stack's database: migrations as `supabase db push` tracks them, the
//! demo user, and the sweeper that releases expired holds.

use super::{DEMO_CREDITS, DEMO_EMAIL, DEMO_USER_ID};
use crate::pg::Cluster;
use crate::support::quote_literal;
use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;

/// How often the sweeper releases expired holds and old rate-limit state.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

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
                "INSERT INTO supabase_migrations.schema_migrations (version, name) VALUES ({}, {})",
                quote_literal(version),
                quote_literal(name)
            ),
        )?;
        applied.push(path);
    }
    Ok(applied)
}

pub(super) fn ensure_demo_user(cluster: &Cluster) -> Result<()> {
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

pub(super) async fn sweep(url: String) -> Result<()> {
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
