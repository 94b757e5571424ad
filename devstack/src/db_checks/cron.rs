//! pg_cron runs creditgate's sweeper and cleanup in the local cluster.

use crate::pg::Cluster;
use anyhow::{anyhow, bail, Result};
use std::time::{Duration, Instant};
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
