//! The function runner: every folder in supabase/functions/ with an
//! index.ts, served by one Deno process (devstack/functions/serve.ts) as
//! Supabase's edge runtime does, with the environment Supabase gives them.

use super::Options;
use crate::keys::{self, SigningKey};
use crate::support::{child_command, wait_for_port};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

/// A function's name, entrypoint, and whether the runtime checks its
/// caller's JWT (`[functions.<name>] verify_jwt` in supabase/config.toml; on
/// by default, as in Supabase).
#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    pub verify_jwt: bool,
    pub entrypoint: PathBuf,
}

/// Directories laid out as `supabase/` (a `config.toml`, `functions/<name>/index.ts`)
/// whose functions the stack serves beside the project's: the test runner
/// adds functions of its own this way (`CREDITGATE_EXTRA_FUNCTIONS`, paths
/// separated by `:`).
pub const EXTRA_FUNCTIONS_ENV: &str = "CREDITGATE_EXTRA_FUNCTIONS";

pub fn functions() -> Result<Vec<Function>> {
    let mut found = functions_in(&crate::project_root().join("supabase"))?;
    if let Some(extra) = std::env::var_os(EXTRA_FUNCTIONS_ENV) {
        for dir in std::env::split_paths(&extra).filter(|dir| !dir.as_os_str().is_empty()) {
            for function in functions_in(&dir)? {
                if !found.iter().any(|known| known.name == function.name) {
                    found.push(function);
                }
            }
        }
    }
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The functions of one `supabase/`-like directory.
fn functions_in(dir: &Path) -> Result<Vec<Function>> {
    let config_path = dir.join("config.toml");
    let config: toml::Value = match std::fs::read_to_string(&config_path) {
        Ok(text) => toml::from_str(&text).with_context(|| config_path.display().to_string())?,
        Err(_) => toml::Value::Table(Default::default()),
    };
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir.join("functions")) else {
        return Ok(found);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with('_') || name.starts_with('.') || !path.join("index.ts").exists() {
            continue;
        }
        let verify_jwt = config
            .get("functions")
            .and_then(|functions| functions.get(&name))
            .and_then(|function| function.get("verify_jwt"))
            .and_then(toml::Value::as_bool)
            .unwrap_or(true);
        found.push(Function { name, verify_jwt, entrypoint: path.join("index.ts") });
    }
    Ok(found)
}

pub(super) fn start_functions(options: &Options, functions: &[Function], signing_key: &SigningKey) -> Result<Option<Child>> {
    if functions.is_empty() {
        return Ok(None);
    }
    let root = crate::project_root();
    let log_path = options.data_dir.join("functions.log");
    std::fs::create_dir_all(&options.data_dir)?;
    let log = std::fs::File::create(&log_path)?;
    let mut command = child_command(crate::setup::deno());
    command
        .args(["run", "--allow-net", "--allow-read", "--allow-env", "--no-prompt"])
        .arg(root.join("devstack/functions/serve.ts"))
        .arg(options.functions_port.to_string())
        .args(functions.iter().map(|function| &function.entrypoint))
        .envs(function_env(options, signing_key)?)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    let mut child = command.spawn().context("start deno")?;
    wait_for_port(options.functions_port, Some(&mut child), Some(&log_path), Duration::from_secs(60))?;
    Ok(Some(child))
}

/// The environment Supabase gives every function (on a project with signing
/// keys and the new API keys), plus supabase/functions/.env.
pub fn function_env(options: &Options, signing_key: &SigningKey) -> Result<Vec<(String, String)>> {
    let mut env = vec![
        ("SUPABASE_URL".to_string(), options.api_url()),
        ("SUPABASE_ANON_KEY".to_string(), keys::anon_key()),
        ("SUPABASE_SERVICE_ROLE_KEY".to_string(), keys::service_role_key()),
        ("SUPABASE_PUBLISHABLE_KEYS".to_string(), json!({"default": keys::PUBLISHABLE_KEY}).to_string()),
        ("SUPABASE_SECRET_KEYS".to_string(), json!({"default": keys::SECRET_KEY}).to_string()),
        ("SUPABASE_JWKS".to_string(), signing_key.jwks().to_string()),
        (
            "SUPABASE_DB_URL".to_string(),
            format!("postgresql://postgres:postgres@127.0.0.1:{}/postgres", options.db_port),
        ),
        ("GENERATOR_URL".to_string(), format!("{}/devstack/generator", options.api_url())),
        // Webhooks out go to the stack's own receiver unless configured.
        ("CREDITGATE_WEBHOOK_URL".to_string(), format!("{}{}", options.api_url(), super::webhook_receiver::RECEIVER_PATH)),
        ("CREDITGATE_WEBHOOK_SECRET".to_string(), super::webhook_receiver::LOCAL_WEBHOOK_SECRET.to_string()),
    ];
    if let Ok(text) = std::fs::read_to_string(crate::project_root().join("supabase/functions/.env")) {
        for line in text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#')) {
            if let Some((name, value)) = line.split_once('=') {
                let (name, value) = (name.trim().to_string(), value.trim().trim_matches('"').to_string());
                match env.iter().position(|(known, _)| *known == name) {
                    Some(pos) => env[pos].1 = value,
                    None => env.push((name, value)),
                }
            }
        }
    }
    // The caller's environment wins, so tests can configure the function.
    for (name, value) in std::env::vars() {
        if let Some(pos) = env.iter().position(|(known, _)| *known == name) {
            env[pos].1 = value;
        } else if name.starts_with("CREDITGATE_") || name.starts_with("STRIPE_") || name == "GENERATOR_URL" {
            env.push((name, value));
        }
    }
    Ok(env)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_functions_are_served_without_the_runtime_jwt_check() {
        let found = functions_in(&crate::project_root().join("supabase")).unwrap();
        for name in ["credits", "stripe-webhook"] {
            let function = found.iter().find(|function| function.name == name).unwrap_or_else(|| panic!("{name} not found"));
            assert!(!function.verify_jwt, "{name}: verify_jwt = false in supabase/config.toml");
        }
    }
}
