//! The wasm module figures of `cargo dev bench` (with the HTTP ones, `--only
//! http`): for each of the two packages scripts/build-pkg.sh builds, the
//! npm client (pkg/, feature `client`) and the Edge Functions' module
//! (pkg-function/, feature `handler`):
//!
//! - bytes, raw and gzipped (-9), against the size budgets;
//! - in Deno (bench/http/instantiate.ts, fresh processes): the first import
//!   of the package's Deno entry (read, compile, instantiate, glue: what a
//!   cold start pays), and the medians of `WebAssembly.compile` and
//!   `WebAssembly.instantiate` of the same bytes.
//!
//! Sizes are deterministic for a given toolchain; the times are not, so they
//! are medians and never asserted.

use super::median;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::Path;
use std::process::Command;

/// Fresh Deno processes per package (each one import, then `REPEATS`
/// compiles and instantiations).
const PROCESSES: usize = 5;
const REPEATS: &str = "10";

/// The packages: label, directory under the root, gzipped budget in bytes.
pub const PACKAGES: [(&str, &str, u64); 2] = [
    ("npm client (pkg/)", "pkg", 120 * 1024),
    ("Edge Functions (pkg-function/)", "pkg-function", 150 * 1024),
];

#[derive(Serialize, Clone)]
pub struct Module {
    label: String,
    bytes: u64,
    gzip_bytes: u64,
    gzip_budget: u64,
    first_import_ms: f64,
    compile_ms: f64,
    instantiate_ms: f64,
}

impl Module {
    pub fn print(modules: &[Module]) {
        println!(
            "\nwasm modules (medians over {PROCESSES} Deno processes x {REPEATS}):\n{:<32} {:>9} {:>9} {:>9} {:>5} {:>11} {:>11} {:>12}",
            "package", "bytes", "gzip", "budget", "met?", "import ms", "compile ms", "instantiate"
        );
        for module in modules {
            println!(
                "{:<32} {:>9} {:>9} {:>9} {:>5} {:>11.1} {:>11.2} {:>9.2} ms",
                module.label,
                module.bytes,
                module.gzip_bytes,
                module.gzip_budget,
                if module.gzip_bytes <= module.gzip_budget { "yes" } else { "NO" },
                module.first_import_ms,
                module.compile_ms,
                module.instantiate_ms
            );
        }
    }

    /// The README table's row of this module: gzipped size against its
    /// budget, with the raw size and the Deno times beside it (no regimes).
    pub fn readme_row(&self) -> super::readme_table::Row {
        super::readme_table::Row {
            figure: format!("wasm, {}", self.label),
            versus: "size budget (gzipped)".to_string(),
            target: format!("<={} KB", self.gzip_budget / 1024),
            regimes: [
                format!(
                    "{} KB ({} KB raw; compile {:.1} ms, instantiate {:.2} ms in Deno)",
                    self.gzip_bytes / 1024,
                    self.bytes / 1024,
                    self.compile_ms,
                    self.instantiate_ms
                ),
                "-".to_string(),
            ],
            met: if self.gzip_bytes <= self.gzip_budget { "yes" } else { "**no**" }.to_string(),
        }
    }
}

/// Both packages, as built (the caller builds them first).
pub fn measure(root: &Path) -> Result<Vec<Module>> {
    PACKAGES.iter().map(|(label, dir, budget)| measure_one(root, label, &root.join(dir), *budget)).collect()
}

fn measure_one(root: &Path, label: &str, package: &Path, gzip_budget: u64) -> Result<Module> {
    let wasm = package.join("creditgate_bg.wasm");
    let bytes = std::fs::metadata(&wasm).with_context(|| format!("{}", wasm.display()))?.len();
    let gzip = Command::new("gzip").args(["-9", "-c"]).arg(&wasm).output().context("gzip")?;
    if !gzip.status.success() {
        bail!("gzip {}", wasm.display());
    }
    let mut first = Vec::new();
    let mut compile = Vec::new();
    let mut instantiate = Vec::new();
    for _ in 0..PROCESSES {
        let output = Command::new(crate::setup::deno())
            .args(["run", "--allow-read", "--no-prompt"])
            .arg(root.join("bench/http/instantiate.ts"))
            .arg(package)
            .arg(REPEATS)
            .env_remove("LD_LIBRARY_PATH")
            .output()
            .context("run deno")?;
        if !output.status.success() {
            bail!("bench/http/instantiate.ts {}: {}", package.display(), String::from_utf8_lossy(&output.stderr));
        }
        let figures: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        let number = |name: &str| figures[name].as_f64().with_context(|| format!("{name} in {figures}"));
        first.push(number("first_import_ms")?);
        compile.push(number("compile_ms_median")?);
        instantiate.push(number("instantiate_ms_median")?);
    }
    Ok(Module {
        label: label.to_string(),
        bytes,
        gzip_bytes: gzip.stdout.len() as u64,
        gzip_budget,
        first_import_ms: median(first),
        compile_ms: median(compile),
        instantiate_ms: median(instantiate),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_module_row_says_whether_it_is_within_budget() {
        let module = |gzip_bytes| Module {
            label: "npm client (pkg/)".into(),
            bytes: 400 * 1024,
            gzip_bytes,
            gzip_budget: 120 * 1024,
            first_import_ms: 8.0,
            compile_ms: 2.5,
            instantiate_ms: 0.2,
        };
        let over = module(181 * 1024).readme_row();
        assert_eq!(over.target, "<=120 KB");
        assert_eq!(over.met, "**no**");
        assert!(over.regimes[0].starts_with("181 KB (400 KB raw;"), "{}", over.regimes[0]);
        assert_eq!(module(120 * 1024).readme_row().met, "yes");
    }
}
