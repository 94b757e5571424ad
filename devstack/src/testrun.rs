//! `cargo dev test`: every test the project has, on a fresh private cluster.
//!
//! Suites run in order; a failing suite does not stop the others, so one run
//! shows everything that is wrong. The last line is `N passed, N failed`
//! (suites), and the exit code is non-zero if any failed.

use crate::pg::Cluster;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The test cluster's port: not 54322, so tests can run beside `cargo dev up`.
pub const TEST_PG_PORT: u16 = 54332;

pub fn main(args: &[String]) -> Result<()> {
    let only: Vec<&str> = args.iter().map(String::as_str).collect();
    crate::setup::ensure(crate::setup::Need::Everything)?;
    let mut run = Run::default();
    let root = crate::project_root();
    let dir = root.join("target/devstack/test-pg");
    let cluster = Cluster::start(&dir, TEST_PG_PORT, true)?;

    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| name.starts_with(o));
    if wanted("db") {
        run.suite("db: migrations on a fresh database, three times over", || fresh_migrations(&cluster));
        run.suite("db: pgTAP (supabase/tests/database)", || {
            pg_prove(&cluster, "fresh", &root.join("supabase/tests/database"))
        });
        run.suite("db: legacy upgrade (tests/upgrade)", || legacy_upgrade(&cluster));
        run.suite("db: concurrency", || crate::checks::concurrency(&cluster, "fresh"));
    }
    run.finish()
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

/// The schema of `database` as text, for comparing runs.
fn schema_dump(cluster: &Cluster, database: &str) -> Result<String> {
    let output = Command::new(crate::pg::bin_dir().join("pg_dump"))
        .env("PGPASSWORD", crate::pg::PASSWORD)
        .args(["--schema-only", "--no-owner", "-h", "127.0.0.1", "-U", "postgres"])
        .args(["-p", &cluster.port().to_string(), database])
        .output()?;
    if !output.status.success() {
        bail!("pg_dump: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8_lossy(&output.stdout).to_string())
}

/// Fresh database: migrations apply, and a second and third run change nothing.
fn fresh_migrations(cluster: &Cluster) -> Result<()> {
    cluster.create_supabase_database("fresh")?;
    let applied = cluster.migrate("fresh")?;
    eprintln!("applied {} migrations", applied.len());
    let first = schema_dump(cluster, "fresh")?;
    for round in 2..=3 {
        cluster.migrate("fresh").with_context(|| format!("migration run {round}"))?;
        let again = schema_dump(cluster, "fresh")?;
        if again != first {
            bail!("migration run {round} changed the schema:\n{}", diff(&first, &again));
        }
        eprintln!("run {round}: no error, schema unchanged");
    }
    Ok(())
}

/// Legacy database: the fixture, then the migrations twice, then its checks.
fn legacy_upgrade(cluster: &Cluster) -> Result<()> {
    let root = crate::project_root();
    cluster.create_supabase_database("legacy")?;
    cluster.run_file("legacy", &root.join("tests/upgrade/fixture.sql"))?;
    cluster.migrate("legacy").context("first migration run over the legacy schema")?;
    let first = schema_dump(cluster, "legacy")?;
    cluster.migrate("legacy").context("second migration run over the legacy schema")?;
    let again = schema_dump(cluster, "legacy")?;
    if again != first {
        bail!("the second run changed the upgraded schema:\n{}", diff(&first, &again));
    }
    pg_prove(cluster, "legacy", &root.join("tests/upgrade"))
}

/// Runs every `NN-*.sql` pgTAP file in `dir` with pg_prove.
fn pg_prove(cluster: &Cluster, database: &str, dir: &Path) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            let name = path.file_name().and_then(|name| name.to_str()).unwrap_or("");
            name.ends_with(".sql") && name.starts_with(|c: char| c.is_ascii_digit())
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no pgTAP files in {}", dir.display());
    }
    let status = Command::new("pg_prove")
        .env("PGPASSWORD", crate::pg::PASSWORD)
        .args(["-h", "127.0.0.1", "-U", "postgres", "-p", &cluster.port().to_string(), "-d", database])
        .args(&files)
        .status()?;
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
