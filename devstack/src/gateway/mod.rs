//! A PostgREST-compatible HTTP gateway (PostgREST v12 behaviour, as
//! Supabase runs it), for the local stack: no PostgREST binary can be
//! installed here, and creditgate talks to its SQL through PostgREST.
//!
//! Configured by PostgREST's own variables (`PGRST_DB_URI`,
//! `PGRST_DB_SCHEMAS`, `PGRST_DB_ANON_ROLE`, `PGRST_JWT_SECRET`,
//! `PGRST_SERVER_HOST`, `PGRST_SERVER_PORT`, ...), it serves `/rpc/<fn>`,
//! `/<table>` and `/` at its root, like PostgREST behind Supabase's Kong
//! (which strips `/rest/v1`).
//!
//! - [`config`]: the variables and their defaults.
//! - [`jwt`]: HS256/384/512 verification, role selection.
//! - [`request`], [`params`]: reading a request (routes, profiles, Prefer,
//!   Accept, payload, the query-string grammar).
//! - [`rpc`], [`tables`], [`sql`]: the SQL of calls, reads and writes.
//! - [`db`]: one transaction per request, role switch and request GUCs.
//! - [`cache`], [`listener`]: the schema cache and `NOTIFY pgrst` reloads.
//! - [`error`]: `{code,message,details,hint}` and the SQLSTATE status table.
//! - [`server`]: HTTP, CORS, body limit, graceful shutdown.

// `ApiError` carries a JSON body and headers; it is built at most once per
// request, so boxing it would only add noise.
#![allow(clippy::result_large_err)]

pub mod app;
pub mod cache;
pub mod config;
pub mod db;
pub mod error;
pub mod jwt;
pub mod listener;
pub mod params;
pub mod request;
pub mod rpc;
pub mod server;
pub mod sql;
pub mod tables;

pub use config::Config;
pub use server::{serve_with_shutdown, spawn, GatewayHandle};

/// Serves on `listener` until the process ends.
pub async fn serve(config: Config, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    serve_with_shutdown(config, listener, std::future::pending::<()>()).await
}

/// `cargo dev gateway`: PostgREST's variables from the environment, serve
/// until SIGINT or SIGTERM.
pub fn main() -> anyhow::Result<()> {
    let config = Config::from_env()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let address = config.bind_address();
        let listener = tokio::net::TcpListener::bind(&address)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
        eprintln!("gateway: listening on http://{}", listener.local_addr()?);
        serve_with_shutdown(config, listener, shutdown_signal()).await
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
