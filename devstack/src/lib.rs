//! creditgate's local stack and drivers.
//!
//! - [`pg`]: an embedded, Supabase-compatible PostgreSQL cluster.
//! - [`gateway`]: a PostgREST-compatible HTTP gateway (PostgREST v12 behaviour).
//! - [`stack`]: `cargo dev up`, everything `supabase start` serves on :54321
//!   (the stack, its front proxy, function runner and fake generator).
//! - [`keys`]: the local JWT keys, and signing and verifying JWTs.
//! - [`testrun`]: `cargo dev test`, every test the project has; its database
//!   checks beyond pgTAP are in [`db_checks`], its HTTP ones in [`http_checks`].
//! - [`bench`]: `cargo dev bench`.
//! - [`setup`]: installs what a fresh machine is missing.
//! - [`support`]: the plumbing these share (child processes, ports, a stack
//!   served on a thread, pgTAP files, SQL quoting).

pub mod bench;
pub mod db_checks;
pub mod gateway;
pub mod http_checks;
pub mod keys;
pub mod pg;
pub mod setup;
pub mod stack;
pub mod support;
pub mod testrun;

/// The project's root folder (the workspace holding `supabase/`).
pub fn project_root() -> std::path::PathBuf {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// This program's own binary, for starting it again as a child (`gateway`,
/// `up`). While a rebuild replaces the file, `/proc/self/exe` names the old,
/// deleted one: the path is read back without that mark.
pub fn devstack_exe() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    let text = exe.to_string_lossy();
    Ok(match text.strip_suffix(" (deleted)") {
        Some(path) => std::path::PathBuf::from(path),
        None => exe,
    })
}
