//! Installs what a fresh machine of this kind is missing, and nothing else.
//!
//! Every step first checks whether its tool is already there, so a warm
//! machine pays only for the checks. Sources: Debian's packages, crates.io and
//! the npm registry (the registries reachable on this machine kind; GitHub
//! downloads are not, so nothing here may fall back to them: wasm-pack must
//! find a wasm-opt and a wasm-bindgen-cli of the locked version on PATH).

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// What a command needs.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Need {
    /// PostgreSQL with the extensions Supabase ships: the database tests.
    Database,
    /// The above plus the wasm toolchain and Deno: `cargo dev up`.
    Stack,
    /// Everything, browsers included: `cargo dev test`.
    Everything,
}

pub fn main() -> Result<()> {
    ensure(Need::Everything)
}

/// Debian packages: (a file the package installs, the package).
const APT_DATABASE: &[(&str, &str)] = &[
    ("/usr/lib/postgresql/15/bin/postgres", "postgresql-15"),
    ("/usr/lib/postgresql/15/bin/pgbench", "postgresql-contrib"),
    ("/usr/share/postgresql/15/extension/pgtap.control", "postgresql-15-pgtap"),
    ("/usr/lib/postgresql/15/lib/pg_cron.so", "postgresql-15-cron"),
    ("/usr/share/postgresql/15/extension/plpgsql_check.control", "postgresql-15-plpgsql-check"),
    ("/usr/bin/pg_prove", "libtap-parser-sourcehandler-pgtap-perl"),
    ("/usr/bin/psql", "postgresql-client-15"),
];
const APT_BROWSER: &[(&str, &str)] = &[
    ("/usr/bin/chromium", "chromium"),
    ("/usr/bin/chromedriver", "chromium-driver"),
];

/// Installs what `need` requires and is missing.
pub fn ensure(need: Need) -> Result<()> {
    let mut apt: Vec<&str> = missing(APT_DATABASE);
    if need >= Need::Everything {
        apt.extend(missing(APT_BROWSER));
    }
    apt_install(&apt)?;
    if need >= Need::Stack {
        ensure_wasm_toolchain()?;
        ensure_npm_packages()?;
    }
    Ok(())
}

fn missing(packages: &[(&'static str, &'static str)]) -> Vec<&'static str> {
    packages
        .iter()
        .filter(|(file, _)| !Path::new(file).exists())
        .map(|(_, package)| *package)
        .collect()
}

fn apt_install(packages: &[&str]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    eprintln!("setup: apt-get install {}", packages.join(" "));
    run(Command::new("apt-get").arg("update").arg("-qq"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

fn ensure_wasm_toolchain() -> Result<()> {
    let targets = output(Command::new("rustup").args(["target", "list", "--installed"]))?;
    if !targets.lines().any(|line| line.trim() == "wasm32-unknown-unknown") {
        eprintln!("setup: rustup target add wasm32-unknown-unknown");
        run(Command::new("rustup").args(["target", "add", "wasm32-unknown-unknown"]))?;
    }
    if output(Command::new("wasm-pack").arg("--version")).is_err() {
        eprintln!("setup: cargo install wasm-pack");
        run(Command::new("cargo").args(["install", "wasm-pack", "--locked"]))?;
    }
    // wasm-bindgen-cli must equal the wasm-bindgen in Cargo.lock, or wasm-pack
    // tries to download one (and fails here). Installed without --locked: with
    // it, a pinned dependency is missing from the reachable index.
    let wanted = locked_version("wasm-bindgen")?;
    let have = output(Command::new("wasm-bindgen").arg("--version")).unwrap_or_default();
    if !have.split_whitespace().any(|word| word == wanted) {
        eprintln!("setup: cargo install wasm-bindgen-cli --version {wanted}");
        run(Command::new("cargo").args(["install", "wasm-bindgen-cli", "--force", "--version", &wanted]))?;
    }
    Ok(())
}

/// The version of `package` in the workspace's Cargo.lock.
fn locked_version(package: &str) -> Result<String> {
    let lock = std::fs::read_to_string(crate::project_root().join("Cargo.lock"))?;
    let lock: toml::Value = toml::from_str(&lock)?;
    lock.get("package")
        .and_then(|packages| packages.as_array())
        .into_iter()
        .flatten()
        .find(|entry| entry.get("name").and_then(|name| name.as_str()) == Some(package))
        .and_then(|entry| entry.get("version")?.as_str().map(str::to_string))
        .with_context(|| format!("{package} is not in Cargo.lock"))
}

/// The project's npm tools (Deno, binaryen's wasm-opt, supabase-js,
/// playwright-core), from package-lock.json.
fn ensure_npm_packages() -> Result<()> {
    let root = crate::project_root();
    let lock = root.join("package-lock.json");
    let installed = root.join("node_modules/.package-lock.json");
    let fresh = match (std::fs::metadata(&lock), std::fs::metadata(&installed)) {
        (Ok(lock), Ok(installed)) => installed.modified()? >= lock.modified()?,
        _ => false,
    };
    if !fresh {
        eprintln!("setup: npm ci");
        run(Command::new("npm").args(["ci", "--no-audit", "--no-fund"]).current_dir(&root))?;
    }
    Ok(())
}

/// The path of Deno from the npm package `deno`.
pub fn deno() -> std::path::PathBuf {
    crate::project_root().join("node_modules/@deno/linux-x64-glibc/deno")
}

/// A PATH with the project's npm tools (wasm-opt, deno) first.
pub fn tool_path() -> String {
    let root = crate::project_root();
    let deno_dir = root.join("node_modules/@deno/linux-x64-glibc");
    let bin = root.join("node_modules/.bin");
    let path = std::env::var("PATH").unwrap_or_default();
    format!("{}:{}:{path}", bin.display(), deno_dir.display())
}

pub fn run(command: &mut Command) -> Result<()> {
    let status = command.status().with_context(|| format!("run {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed: {status}");
    }
    Ok(())
}

fn output(command: &mut Command) -> Result<String> {
    let output = command.output().with_context(|| format!("run {command:?}"))?;
    if !output.status.success() {
        bail!("{command:?} failed: {}", output.status);
    }
    Ok(String::from_utf8_lossy(&output.stdout).to_string())
}
