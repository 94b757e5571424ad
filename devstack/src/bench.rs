//! `cargo dev bench`: creditgate measured against the seed, in one run, on
//! one PostgreSQL cluster.
//!
//! Every figure is a ratio against a baseline measured in the same run, with
//! repeated runs and medians, because other work shares this machine. The
//! two sides of a ratio alternate (A B, B A, A B, ...) so that a slow patch
//! hurts both. Benchmarks never fail on timing: a missed target is printed,
//! and the exit code is non-zero only when something could not be measured.
//!
//! The cluster (target/devstack/bench, port 54342 or the next free one) holds:
//! - `seed`: the seed's SQL (bench/seed_baseline.sql), the baseline;
//! - `creditgate`: bootstrap + the migrations;
//! - `growth_empty` / `growth_full`: creditgate, empty and after a long life
//!   (bench/growth_fill.sql: a million ledger rows, 100 000 rate-limit keys,
//!   100 000 lots).
//!
//! Every bench user has three lots of different priority and expiry
//! (bench/harness_creditgate.sql), so charges spend from lots in order.
//!
//! SQL level: pgbench with the custom scripts in bench/ (8 clients,
//! 2 threads), every figure in two disk regimes ([`Regime`]): as configured
//! (each commit waits for its WAL flush) and CPU-bound (`synchronous_commit
//! = off` on both sides' databases, standing in for a fast disk). A target
//! holds only if it holds in both. The HTTP level and the wasm figures are
//! in [`http`]. A full run rewrites the README's benchmark table
//! ([`readme_table`]).

mod http;
mod readme_table;
mod module;

use crate::pg::Cluster;
use crate::support::{free_ports, pg_prove, pgtap_files};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The bench cluster's first port to try (see [`free_ports`]): beside
/// `cargo dev up` (54322) and the test cluster
/// ([`crate::testrun::test_pg_port`], 24332 shifted per checkout).
pub const BENCH_PG_PORT: u16 = 54342;
/// pgbench clients and threads (the figures for this 2-core machine).
const CLIENTS: u32 = 8;
const THREADS: u32 = 2;
/// Users the charges spread over, and identifiers the rate limits spread over.
const USERS: u32 = 1000;
const IDENTIFIERS: u32 = 10_000;
/// The growth database's size.
const GROWTH_LEDGER_ROWS: u32 = 1_000_000;
const GROWTH_RATE_LIMIT_KEYS: u32 = 100_000;
const GROWTH_LOTS: u32 = 100_000;

/// The two disk regimes every SQL figure is measured in, both sides alike.
#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Regime {
    /// As configured: fsync and synchronous_commit on, commits wait for the disk.
    Durable,
    /// `synchronous_commit = off` for both databases of a ratio: no commit
    /// waits for its flush, so the figure is the SQL's CPU cost.
    CpuBound,
}

impl Regime {
    const ALL: [Regime; 2] = [Regime::Durable, Regime::CpuBound];

    fn label(self) -> &'static str {
        match self {
            Regime::Durable => "as configured",
            Regime::CpuBound => "CPU-bound",
        }
    }

    fn synchronous_commit(self) -> &'static str {
        match self {
            Regime::Durable => "on",
            Regime::CpuBound => "off",
        }
    }
}

#[derive(Clone)]
struct Options {
    runs: usize,
    seconds: u32,
    growth_rows: u32,
    growth_keys: u32,
    growth_lots: u32,
    only: Option<String>,
    regimes: Vec<Regime>,
    quick: bool,
    analyze: bool,
    http: bool,
    patch: Option<PathBuf>,
    patch_check: Option<PathBuf>,
    extra: bool,
}

/// `cargo dev bench`'s options.
#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Runs per series (default 3; 1 with --quick); the figure is the median.
    #[arg(long, value_name = "N")]
    runs: Option<usize>,
    /// Seconds per pgbench run (default 5; 3 with --quick).
    #[arg(long, value_name = "S", value_parser = clap::value_parser!(u32).range(1..))]
    seconds: Option<u32>,
    /// 1 run of 3 s each, a smaller growth database: checks the bench itself.
    #[arg(long)]
    quick: bool,
    /// Only the metrics whose name contains NAME (`--only http`: only HTTP and wasm).
    #[arg(long, value_name = "NAME")]
    only: Option<String>,
    /// Only this disk regime (default: both; the README table needs both).
    #[arg(long, value_enum)]
    regime: Option<Regime>,
    /// Also the metrics beyond the (growth of the combined call).
    #[arg(long)]
    extra: bool,
    /// pg_stat_statements (track = all) and a report of where the time goes.
    #[arg(long)]
    analyze: bool,
    /// Skip the HTTP and wasm figures.
    #[arg(long)]
    no_http: bool,
    /// Apply FILE (SQL) after the migrations in every creditgate database:
    /// measures a proposed change (bench/proposals/).
    #[arg(long, value_name = "FILE")]
    patch: Option<PathBuf>,
    /// No bench: the migrations plus FILE, then the pgTAP suite and the
    /// model-based concurrency test against the result.
    #[arg(long, value_name = "FILE")]
    patch_check: Option<PathBuf>,
}

impl BenchArgs {
    fn options(self) -> Result<Options> {
        let canonical = |path: Option<PathBuf>| -> Result<Option<PathBuf>> {
            path.map(|path| std::fs::canonicalize(&path).with_context(|| format!("{}", path.display()))).transpose()
        };
        if self.runs == Some(0) {
            bail!("--runs must be at least 1");
        }
        Ok(Options {
            runs: self.runs.unwrap_or(if self.quick { 1 } else { 3 }),
            seconds: self.seconds.unwrap_or(if self.quick { 3 } else { 5 }),
            growth_rows: if self.quick { 100_000 } else { GROWTH_LEDGER_ROWS },
            growth_keys: if self.quick { 10_000 } else { GROWTH_RATE_LIMIT_KEYS },
            growth_lots: if self.quick { 10_000 } else { GROWTH_LOTS },
            only: self.only,
            regimes: self.regime.map_or(Regime::ALL.to_vec(), |regime| vec![regime]),
            quick: self.quick,
            analyze: self.analyze,
            http: !self.no_http,
            patch: canonical(self.patch)?,
            patch_check: canonical(self.patch_check)?,
            extra: self.extra,
        })
    }
}

pub fn main(args: BenchArgs) -> Result<()> {
    let options = args.options()?;
    crate::setup::ensure(crate::setup::Need::Database)?;
    if let Some(patch) = &options.patch_check {
        return check_patch(patch);
    }
    let started = Instant::now();
    let root = crate::project_root();
    let dir = root.join("target/devstack/bench");
    let mut report = Report::new(&options);
    let http_only = options.only.as_deref() == Some("http");
    if !http_only {
        measure_sql(&dir, &options, &mut report)?;
    }
    let http_wanted = options.http && (options.only.is_none() || http_only);
    if http_wanted {
        eprintln!("\nbench: HTTP and wasm");
        match http::measure(&root, &options) {
            Ok(figures) => report.http = Some(figures),
            Err(error) => {
                eprintln!("bench: HTTP and wasm figures not measured: {error:#}");
                report.http_missing = Some(format!("{error:#}"));
            }
        }
    }
    report.seconds_total = started.elapsed().as_secs_f64();
    report.patch = options.patch.as_ref().map(|path| path.display().to_string());
    report.print();
    // Only a run of everything, in both regimes, as the defaults measure it,
    // rewrites the README's table.
    if options.only.is_none() && options.patch.is_none() && !options.quick && options.regimes.len() == 2 {
        match readme_table::write(&root.join("README.md"), &report.readme_rows(), &report.table_note()) {
            Ok(()) => eprintln!("README.md: benchmark table rewritten"),
            Err(error) => eprintln!("README.md: benchmark table not rewritten: {error:#}"),
        }
    }
    let path = root.join("target/devstack/bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    eprintln!("\nwritten: {}", path.display());
    if !report.errors.is_empty() {
        bail!("{} metric(s) could not be measured", report.errors.len());
    }
    Ok(())
}

/// The SQL-level figures: pgbench on the bench cluster.
fn measure_sql(dir: &Path, options: &Options, report: &mut Report) -> Result<()> {
    let root = crate::project_root();
    let cluster = start_cluster(dir, options.analyze)?;
    let bench = Bench { cluster: &cluster, root, options: options.clone() };

    eprintln!("bench: loading the databases");
    bench.load()?;
    if options.analyze {
        cluster.query("postgres", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements WITH SCHEMA public")?;
        cluster.query("postgres", "SELECT public.pg_stat_statements_reset()")?;
    }
    for scenario in scenarios() {
        if scenario.extra && !options.extra {
            continue;
        }
        if let Some(only) = &options.only {
            if !scenario.name.contains(only.as_str()) {
                continue;
            }
        }
        if scenario.growth && !bench.growth_loaded() {
            bench.load_growth()?;
        }
        for regime in &options.regimes {
            eprintln!("\nbench: {} ({})", scenario.name, regime.label());
            let measured = bench.set_regime(&scenario, *regime).and_then(|()| bench.measure(&scenario, *regime));
            match measured {
                Ok(metric) => report.metrics.push(metric),
                Err(error) => {
                    eprintln!("bench: {} ({}) could not be measured: {error:#}", scenario.name, regime.label());
                    report.errors.push(format!("{} ({}): {error:#}", scenario.name, regime.label()));
                }
            }
        }
        bench.set_regime(&scenario, Regime::Durable)?;
    }
    if options.analyze {
        bench.analyze()?;
    }
    Ok(())
}

/// `--patch-check`: a proposed change must keep every behaviour the tests
/// pin down. Migrations, then the patch, then pgTAP and the concurrency test.
fn check_patch(patch: &Path) -> Result<()> {
    let root = crate::project_root();
    let port = free_ports(BENCH_PG_PORT + 1, 10, &[0])?;
    let cluster = Cluster::start(&root.join("target/devstack/bench-check"), port, true)?;
    cluster.bootstrap("postgres")?;
    cluster.migrate("postgres")?;
    cluster.run_file("postgres", patch)?;
    let files = pgtap_files(&root.join("supabase/tests/database"))?;
    let status = pg_prove(&cluster, "postgres", &files)?;
    let concurrency = crate::db_checks::model::concurrency(&cluster, "postgres");
    if let Err(error) = &concurrency {
        eprintln!("the concurrency test fails: {error:#}");
    }
    if !status.success() {
        bail!("pgTAP fails with {} applied", patch.display());
    }
    concurrency.with_context(|| format!("the concurrency test fails with {} applied", patch.display()))?;
    println!("{}: pgTAP and the concurrency test pass with it applied", patch.display());
    Ok(())
}

/// A fresh cluster with the bench's settings: checkpoints far apart (each
/// run starts with an explicit CHECKPOINT instead), durability untouched
/// (fsync and synchronous_commit stay on: commits wait for the disk).
fn start_cluster(dir: &Path, analyze: bool) -> Result<Cluster> {
    let port = free_ports(BENCH_PG_PORT, 10, &[0])?;
    let mut cluster = Cluster::start(dir, port, true)?;
    let conf = cluster.data_dir().join("postgresql.conf");
    let mut text = std::fs::read_to_string(&conf)?;
    text.push_str("\n# cargo dev bench\nmax_wal_size = '8GB'\ncheckpoint_timeout = '30min'\n");
    if analyze {
        let preload = if text.contains("pg_cron") { "pg_cron,pg_stat_statements" } else { "pg_stat_statements" };
        text.push_str(&format!(
            "shared_preload_libraries = '{preload}'\npg_stat_statements.track = all\n"
        ));
    }
    std::fs::write(&conf, text)?;
    cluster.stop();
    Cluster::start(dir, port, false)
}

struct Bench<'a> {
    cluster: &'a Cluster,
    root: PathBuf,
    options: Options,
}

/// One side of a ratio: a pgbench script on a database, with its variables.
#[derive(Clone)]
struct Series {
    label: &'static str,
    database: &'static str,
    script: &'static str,
    defines: Vec<(&'static str, String)>,
    /// Settlement series: open jobs to create before each run.
    settles: bool,
}

struct Scenario {
    name: &'static str,
    what: &'static str,
    creditgate: Series,
    baseline: Series,
    /// The target ratio (creditgate / baseline) and the one to aim for.
    target: Option<f64>,
    aim: Option<f64>,
    growth: bool,
    /// Beyond the list: only with --extra.
    extra: bool,
}

fn series(label: &'static str, database: &'static str, script: &'static str, defines: &[(&'static str, u32)]) -> Series {
    Series {
        label,
        database,
        script,
        defines: defines.iter().map(|(k, v)| (*k, v.to_string())).collect(),
        settles: false,
    }
}

fn settling(mut series: Series) -> Series {
    series.settles = true;
    series
}

fn scenarios() -> Vec<Scenario> {
    let users = &[("users", USERS)][..];
    let hot = &[("users", 1)][..];
    vec![
        Scenario {
            name: "charge, 1000 users",
            what: "atomic_charge_credits with a fresh idempotency key, random user of 1000 (3 lots each on creditgate)",
            creditgate: series("creditgate", "creditgate", "charge.pgbench", users),
            baseline: series("seed", "seed", "charge.pgbench", users),
            target: Some(1.0),
            aim: Some(1.3),
            growth: false,
            extra: false,
        },
        Scenario {
            name: "charge, one hot user",
            what: "atomic_charge_credits with a fresh idempotency key, always the same user (3 lots)",
            creditgate: series("creditgate", "creditgate", "charge.pgbench", hot),
            baseline: series("seed", "seed", "charge.pgbench", hot),
            target: Some(1.0),
            aim: Some(1.3),
            growth: false,
            extra: false,
        },
        Scenario {
            name: "rate limit, 10000 ids",
            what: "check_rate_limit 100/min, random identifier of 10000 (mostly allowed)",
            creditgate: series("creditgate", "creditgate", "check_rate_limit.pgbench", &[("ids", IDENTIFIERS)]),
            baseline: series("seed", "seed", "check_rate_limit.pgbench", &[("ids", IDENTIFIERS)]),
            target: Some(2.0),
            aim: None,
            growth: false,
            extra: false,
        },
        Scenario {
            name: "rate limit, one id",
            what: "check_rate_limit 100/min, always the same identifier (mostly denied)",
            creditgate: series("creditgate", "creditgate", "check_rate_limit.pgbench", &[("ids", 1)]),
            baseline: series("seed", "seed", "check_rate_limit.pgbench", &[("ids", 1)]),
            target: Some(3.0),
            aim: None,
            growth: false,
            extra: false,
        },
        Scenario {
            name: "paid request, one call",
            what: "charge_credits_with_limits (user + IP limits) vs apply_rate_limit x2 then charge_credits (three transactions), creditgate both",
            creditgate: series("one call", "creditgate", "paid_request.pgbench", users),
            baseline: series("3 calls", "creditgate", "paid_request_calls.pgbench", users),
            target: Some(1.3),
            aim: None,
            growth: false,
            extra: false,
        },
        Scenario {
            name: "growth, charge",
            what: "charge.pgbench (1000 users) with 1M ledger rows, 100k rate-limit keys and 100k lots vs an empty database",
            creditgate: series("grown", "growth_full", "charge.pgbench", users),
            baseline: series("empty", "growth_empty", "charge.pgbench", users),
            target: Some(0.9),
            aim: None,
            growth: true,
            extra: false,
        },
        Scenario {
            name: "refund",
            what: "refund_credits of an open one-credit job (1000 users)",
            creditgate: settling(series("creditgate", "creditgate", "refund.pgbench", &[])),
            baseline: settling(series("seed", "seed", "refund.pgbench", &[])),
            target: None,
            aim: None,
            growth: false,
            extra: true,
        },
        Scenario {
            name: "complete",
            what: "complete_generation_job (full capture) vs the seed's refund_credits, its only settlement",
            creditgate: settling(series("creditgate", "creditgate", "complete.pgbench", &[])),
            baseline: settling(series("seed refund", "seed", "refund.pgbench", &[])),
            target: None,
            aim: None,
            growth: false,
            extra: true,
        },
        Scenario {
            name: "limit+charge, one call",
            what: "charge_credits_with_limit (one limit) vs apply_rate_limit then charge_credits (two transactions)",
            creditgate: series("one call", "creditgate", "charge_with_limit.pgbench", users),
            baseline: series("two calls", "creditgate", "limit_then_charge.pgbench", users),
            target: None,
            aim: None,
            growth: false,
            extra: true,
        },
        Scenario {
            name: "growth, paid request",
            what: "paid_request.pgbench (1000 users) in the grown database vs empty",
            creditgate: series("grown", "growth_full", "paid_request.pgbench", users),
            baseline: series("empty", "growth_empty", "paid_request.pgbench", users),
            target: Some(0.9),
            aim: None,
            growth: true,
            extra: true,
        },
    ]
}

/// One pgbench run's figures.
#[derive(Serialize, Clone, Copy)]
struct Run {
    tps: f64,
    latency_ms: f64,
    transactions: u64,
}

#[derive(Serialize)]
struct Metric {
    name: String,
    regime: Regime,
    what: String,
    creditgate_label: String,
    baseline_label: String,
    creditgate_runs: Vec<Run>,
    baseline_runs: Vec<Run>,
    creditgate_tps: f64,
    baseline_tps: f64,
    ratio: f64,
    target: Option<f64>,
    aim: Option<f64>,
    met: Option<bool>,
}

impl Bench<'_> {
    fn bench_file(&self, name: &str) -> PathBuf {
        self.root.join("bench").join(name)
    }

    /// psql -f `file` on `database` as one transaction, with psql variables.
    fn psql_file(&self, database: &str, file: &str, variables: &[(&str, String)]) -> Result<()> {
        let mut command = self.cluster.psql(database);
        command.arg("--single-transaction");
        for (name, value) in variables {
            command.arg("-v").arg(format!("{name}={value}"));
        }
        let output = command.arg("-f").arg(self.bench_file(file)).output()?;
        if !output.status.success() {
            bail!("{file} on {database}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    }

    fn create_database(&self, database: &str) -> Result<()> {
        self.cluster.create_supabase_database(database)
    }

    fn load_creditgate(&self, database: &str) -> Result<()> {
        self.create_database(database)?;
        self.cluster.migrate(database).with_context(|| format!("migrations on {database}"))?;
        if let Some(patch) = &self.options.patch {
            self.cluster.run_file(database, patch).with_context(|| format!("{} on {database}", patch.display()))?;
        }
        self.psql_file(database, "harness_common.sql", &[])?;
        self.psql_file(database, "harness_creditgate.sql", &[("users", USERS.to_string())])?;
        self.vacuum(database)
    }

    fn load(&self) -> Result<()> {
        let clock = Instant::now();
        self.create_database("seed")?;
        self.cluster
            .run_file("seed", &self.bench_file("seed_baseline.sql"))
            .context("the seed's SQL does not load")?;
        self.psql_file("seed", "harness_common.sql", &[])?;
        self.psql_file("seed", "harness_seed.sql", &[("users", USERS.to_string())])?;
        self.vacuum("seed")?;
        self.load_creditgate("creditgate")?;
        eprintln!("bench: seed and creditgate loaded in {:.1} s", clock.elapsed().as_secs_f64());
        Ok(())
    }

    fn growth_loaded(&self) -> bool {
        self.cluster
            .query("postgres", "SELECT count(*) FROM pg_database WHERE datname IN ('growth_empty', 'growth_full')")
            .map(|count| count == "2")
            .unwrap_or(false)
    }

    fn load_growth(&self) -> Result<()> {
        let clock = Instant::now();
        self.load_creditgate("growth_empty")?;
        self.load_creditgate("growth_full")?;
        let rows = self.options.growth_rows - self.options.growth_rows % USERS;
        self.psql_file(
            "growth_full",
            "growth_fill.sql",
            &[
                ("users", USERS.to_string()),
                ("rows", rows.to_string()),
                ("keys", self.options.growth_keys.to_string()),
                ("lots", (self.options.growth_lots - self.options.growth_lots % USERS).to_string()),
            ],
        )?;
        self.vacuum("growth_full")?;
        let problems = self.cluster.query("growth_full", "SELECT count(*) FROM public.verify_credit_ledger()")?;
        if problems != "0" {
            bail!("the grown database's ledger does not reconcile: {problems} problem(s)");
        }
        let sizes = self.cluster.query(
            "growth_full",
            "SELECT (SELECT count(*) FROM public.credit_ledger) || ' ledger rows, '
                 || (SELECT count(*) FROM public.rate_limits) || ' rate-limit keys, '
                 || (SELECT count(*) FROM public.credit_lots) || ' lots, '
                 || pg_size_pretty(pg_database_size(current_database()))",
        )?;
        eprintln!("bench: growth databases loaded in {:.1} s ({sizes})", clock.elapsed().as_secs_f64());
        Ok(())
    }

    fn vacuum(&self, database: &str) -> Result<()> {
        self.cluster.query(database, "VACUUM ANALYZE")?;
        Ok(())
    }

    /// Both databases of `scenario` in `regime`: new sessions (each pgbench
    /// run connects afresh) get its synchronous_commit.
    fn set_regime(&self, scenario: &Scenario, regime: Regime) -> Result<()> {
        for database in [scenario.creditgate.database, scenario.baseline.database] {
            self.cluster.query(
                "postgres",
                &format!("ALTER DATABASE {database} SET synchronous_commit = {}", regime.synchronous_commit()),
            )?;
        }
        Ok(())
    }

    fn measure(&self, scenario: &Scenario, regime: Regime) -> Result<Metric> {
        let mut creditgate_runs = Vec::new();
        let mut baseline_runs = Vec::new();
        for round in 0..self.options.runs {
            // Alternate which side goes first, so drift hurts both alike.
            let order: [(&Series, &mut Vec<Run>); 2] = if round % 2 == 0 {
                [(&scenario.creditgate, &mut creditgate_runs), (&scenario.baseline, &mut baseline_runs)]
            } else {
                [(&scenario.baseline, &mut baseline_runs), (&scenario.creditgate, &mut creditgate_runs)]
            };
            for (series, runs) in order {
                let previous = runs.last().map(|run: &Run| run.tps);
                let run = self.run_series(series, previous)?;
                eprintln!(
                    "  {:<12} run {}: {:>9.1} tps  {:>7.2} ms",
                    series.label,
                    round + 1,
                    run.tps,
                    run.latency_ms
                );
                runs.push(run);
            }
        }
        let creditgate_tps = median(creditgate_runs.iter().map(|run| run.tps).collect());
        let baseline_tps = median(baseline_runs.iter().map(|run| run.tps).collect());
        let ratio = if baseline_tps > 0.0 { creditgate_tps / baseline_tps } else { 0.0 };
        Ok(Metric {
            name: scenario.name.to_string(),
            regime,
            what: scenario.what.to_string(),
            creditgate_label: scenario.creditgate.label.to_string(),
            baseline_label: scenario.baseline.label.to_string(),
            creditgate_runs,
            baseline_runs,
            creditgate_tps,
            baseline_tps,
            ratio,
            target: scenario.target,
            aim: scenario.aim,
            met: scenario.target.map(|target| ratio >= target),
        })
    }

    /// One pgbench run of `series`; a settlement series first gets enough
    /// open jobs (1.5 times what the previous run used), and a run that used
    /// them all is repeated with more, so no transaction ever finds none.
    fn run_series(&self, series: &Series, previous_tps: Option<f64>) -> Result<Run> {
        let seconds = f64::from(self.options.seconds);
        let mut jobs = previous_tps.map_or(4000.0 * seconds, |tps| tps * seconds * 1.5).max(2000.0) as i64;
        loop {
            if series.settles {
                self.cluster
                    .query(series.database, &format!("SELECT bench.make_jobs({jobs}, {USERS})"))
                    .with_context(|| format!("open jobs on {}", series.database))?;
                self.cluster.query(series.database, "VACUUM ANALYZE bench.jobs")?;
            }
            self.cluster.query(series.database, "CHECKPOINT")?;
            let run = self.pgbench(series)?;
            if !series.settles {
                return Ok(run);
            }
            let used: i64 = self
                .cluster
                .query(series.database, "SELECT last_value FROM bench.jobs_next")?
                .parse()
                .context("bench.jobs_next")?;
            if used < jobs {
                return Ok(run);
            }
            eprintln!("  ({} used all {jobs} open jobs: again with more)", series.label);
            jobs *= 3;
        }
    }

    fn pgbench(&self, series: &Series) -> Result<Run> {
        let mut command = Command::new(crate::pg::bin_dir().join("pgbench"));
        command
            .env("PGPASSWORD", crate::pg::PASSWORD)
            .args(["-n", "-M", "prepared"])
            .args(["-c", &CLIENTS.to_string(), "-j", &THREADS.to_string()])
            .args(["-T", &self.options.seconds.to_string()])
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &self.cluster.port().to_string()])
            .arg("-f")
            .arg(self.bench_file(series.script));
        for (name, value) in &series.defines {
            command.arg("-D").arg(format!("{name}={value}"));
        }
        command.arg(series.database);
        let output = command.output().context("run pgbench")?;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            bail!("pgbench {} on {} failed ({}):\n{stderr}\n{stdout}", series.script, series.database, output.status);
        }
        parse_pgbench(&stdout).with_context(|| format!("pgbench output:\n{stdout}\n{stderr}"))
    }

    /// With --analyze: where each database's time went, statement by statement.
    fn analyze(&self) -> Result<()> {
        for database in ["creditgate", "seed"] {
            let report = self.cluster.query(
                "postgres",
                &format!("SELECT rpad(round(s.total_exec_time)::text, 9) || rpad(s.calls::text, 10)
                        || rpad(round((s.total_exec_time / greatest(s.calls, 1) * 1000)::numeric, 1)::text, 8)
                        || rpad(s.wal_records::text, 10)
                        || left(regexp_replace(s.query, '\\s+', ' ', 'g'), 110)
                 FROM public.pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid
                 WHERE d.datname = '{database}'
                 ORDER BY s.total_exec_time DESC LIMIT 40"
                ),
            )?;
            println!("\n== {database}: top statements (total ms, calls, us/call, WAL records, query)\n{report}");
        }
        Ok(())
    }
}

fn target_text(target: Option<f64>, aim: Option<f64>) -> String {
    match (target, aim) {
        (Some(target), Some(aim)) => format!(">={target:.1}x ({aim:.1}x)"),
        (Some(target), None) => format!(">={target:.1}x"),
        _ => "report".to_string(),
    }
}

fn parse_pgbench(stdout: &str) -> Result<Run> {
    let number_after = |prefix: &str| -> Option<f64> {
        stdout.lines().find_map(|line| {
            let rest = line.trim().strip_prefix(prefix)?;
            rest.split_whitespace().next()?.parse().ok()
        })
    };
    let tps = number_after("tps = ").context("no tps line")?;
    let latency_ms = number_after("latency average = ").unwrap_or(0.0);
    let transactions = number_after("number of transactions actually processed: ").unwrap_or(0.0) as u64;
    if let Some(failed) = number_after("number of failed transactions: ") {
        if failed > 0.0 {
            bail!("{failed} failed transactions");
        }
    }
    Ok(Run { tps, latency_ms, transactions })
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let middle = values.len() / 2;
    if values.len() % 2 == 1 {
        values[middle]
    } else {
        (values[middle - 1] + values[middle]) / 2.0
    }
}

#[derive(Serialize)]
struct Report {
    settings: serde_json::Value,
    /// The SQL applied after the migrations (--patch), if any.
    patch: Option<String>,
    metrics: Vec<Metric>,
    http: Option<http::Figures>,
    http_missing: Option<String>,
    errors: Vec<String>,
    seconds_total: f64,
}

impl Report {
    fn new(options: &Options) -> Report {
        Report {
            settings: serde_json::json!({
                "clients": CLIENTS,
                "threads": THREADS,
                "runs": options.runs,
                "seconds_per_run": options.seconds,
                "users": USERS,
                "identifiers": IDENTIFIERS,
                "growth_ledger_rows": options.growth_rows,
                "growth_rate_limit_keys": options.growth_keys,
                "growth_lots": options.growth_lots,
                "regimes": options.regimes.iter().map(|regime| regime.label()).collect::<Vec<_>>(),
                "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
                "postgres": "15 (fsync on; synchronous_commit on, or off for both sides in the CPU-bound regime)",
            }),
            patch: None,
            metrics: Vec::new(),
            http: None,
            http_missing: None,
            errors: Vec::new(),
            seconds_total: 0.0,
        }
    }

    fn print(&self) {
        println!(
            "\ncreditgate bench: pgbench -c {CLIENTS} -j {THREADS}, {} run(s) x {} s per series, medians",
            self.settings["runs"], self.settings["seconds_per_run"]
        );
        if let Some(patch) = &self.patch {
            println!("creditgate with {patch} applied after the migrations");
        }
        if !self.metrics.is_empty() {
            self.print_metrics();
        }
        if let Some(http) = &self.http {
            http.print();
        } else if let Some(missing) = &self.http_missing {
            println!("\nHTTP and wasm: not measured: {missing}");
        }
        for error in &self.errors {
            println!("NOT MEASURED: {error}");
        }
        println!("(bench took {:.0} s)", self.seconds_total);
    }

    /// The README table's rows: one per SQL figure, its two regimes side by
    /// side. The HTTP and module figures add their rows here too (each part
    /// of the bench returns its own `Vec<readme_table::Row>`).
    fn readme_rows(&self) -> Vec<readme_table::Row> {
        let mut rows: Vec<readme_table::Row> = Vec::new();
        for metric in &self.metrics {
            let cell = format!(
                "{:.2}x ({:.0} / {:.0})",
                metric.ratio, metric.creditgate_tps, metric.baseline_tps
            );
            let column = match metric.regime {
                Regime::Durable => 0,
                Regime::CpuBound => 1,
            };
            let index = match rows.iter().position(|row| row.figure == metric.name) {
                Some(index) => index,
                None => {
                    rows.push(readme_table::Row {
                        figure: metric.name.clone(),
                        versus: format!("{} vs {}", metric.creditgate_label, metric.baseline_label),
                        target: target_text(metric.target, metric.aim),
                        regimes: [String::from("-"), String::from("-")],
                        met: String::new(),
                    });
                    rows.len() - 1
                }
            };
            rows[index].regimes[column] = cell;
        }
        for row in &mut rows {
            let verdicts: Vec<Option<bool>> =
                self.metrics.iter().filter(|metric| metric.name == row.figure).map(|metric| metric.met).collect();
            row.met = if verdicts.iter().any(|met| met.is_none()) {
                "-".to_string()
            } else if verdicts.len() == 2 && verdicts.iter().all(|met| *met == Some(true)) {
                "yes".to_string()
            } else {
                "**no**".to_string()
            };
        }
        if let Some(http) = &self.http {
            rows.extend(http.readme_rows());
        }
        rows
    }

    fn table_note(&self) -> String {
        let load = std::fs::read_to_string("/proc/loadavg")
            .ok()
            .and_then(|text| text.split_whitespace().next().map(str::to_string))
            .unwrap_or_else(|| "?".to_string());
        format!(
            "pgbench -c {CLIENTS} -j {THREADS}, {} runs x {} s per side and regime, medians; {} CPUs, load average {load} at the end; the bench took {:.0} s",
            self.settings["runs"], self.settings["seconds_per_run"], self.settings["cpus"], self.seconds_total
        )
    }

    fn print_metrics(&self) {
        println!(
            "{:<24} {:<13} {:>15} {:>21} {:>7} {:>13} {:>5}",
            "metric", "regime", "creditgate tps", "baseline tps", "ratio", "target", "met?"
        );
        for metric in &self.metrics {
            let target = target_text(metric.target, metric.aim);
            let met = match metric.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            };
            let baseline = format!("{:.0} ({})", metric.baseline_tps, metric.baseline_label);
            let creditgate = if metric.creditgate_label == "creditgate" {
                format!("{:.0}", metric.creditgate_tps)
            } else {
                format!("{:.0} ({})", metric.creditgate_tps, metric.creditgate_label)
            };
            println!(
                "{:<24} {:<13} {:>15} {:>21} {:>6.2}x {:>13} {:>5}",
                metric.name,
                metric.regime.label(),
                creditgate,
                baseline,
                metric.ratio,
                target,
                met
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pgbench_15_output() {
        let out = "transaction type: bench/charge.pgbench\nscaling factor: 1\nquery mode: prepared\n\
                   number of clients: 8\nnumber of threads: 2\nmaximum number of tries: 1\nduration: 3 s\n\
                   number of transactions actually processed: 5123\nnumber of failed transactions: 0 (0.000%)\n\
                   latency average = 4.687 ms\ninitial connection time = 12.345 ms\n\
                   tps = 1706.812345 (without initial connection time)\n";
        let run = parse_pgbench(out).unwrap();
        assert_eq!(run.transactions, 5123);
        assert!((run.tps - 1706.812345).abs() < 1e-9);
        assert!((run.latency_ms - 4.687).abs() < 1e-9);
        let failed = out.replace("failed transactions: 0 (0.000%)", "failed transactions: 3 (0.1%)");
        assert!(parse_pgbench(&failed).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
    }
}
