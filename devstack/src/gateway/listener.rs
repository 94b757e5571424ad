//! Keeps the schema cache fresh: loads it at start (retrying while the
//! database is not there yet), and listens on a dedicated connection for
//! `NOTIFY pgrst, 'reload schema'`, reconnecting when that connection drops
//! (and reloading then, since notifications may have been missed).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_postgres::{AsyncMessage, NoTls};

use super::app::AppState;
use super::db::pg_config;
use super::sql::ident;

/// Backoff between attempts, as PostgREST: doubling, capped at 32 s.
const RETRY_CAP: Duration = Duration::from_secs(32);

/// The `application_name` of the listening connection (to find it in
/// `pg_stat_activity`).
pub const LISTENER_APPLICATION_NAME: &str = "devstack-gateway-listener";

async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.changed() => true,
    }
}

fn next(d: Duration) -> Duration {
    (d * 2).min(RETRY_CAP)
}

/// Loads the schema cache until it succeeds once.
pub async fn initial_load(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(250);
    loop {
        match state.reload_schema_cache().await {
            Ok(()) => return,
            Err(e) => eprintln!("gateway: could not load the schema cache ({e}); retrying in {delay:?}"),
        }
        if sleep_or_stop(delay, &mut stop).await {
            return;
        }
        delay = next(delay);
    }
}

/// LISTENs on the configured channel until `stop` fires.
pub async fn listen(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut delay = Duration::from_millis(250);
    let mut connected_before = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut cfg = match pg_config(&state.config) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("gateway: listener disabled: {e}");
                return;
            }
        };
        cfg.application_name(LISTENER_APPLICATION_NAME);
        match cfg.connect(NoTls).await {
            Ok((client, mut connection)) => {
                let (tx, mut rx) = mpsc::unbounded_channel::<String>();
                let driver = tokio::spawn(async move {
                    while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                        match message {
                            Ok(AsyncMessage::Notification(n)) => {
                                if tx.send(n.payload().to_string()).is_err() {
                                    break;
                                }
                            }
                            Ok(_) => {}
                            Err(_) => break,
                        }
                    }
                });
                let listen_sql = format!("LISTEN {}", ident(&state.config.db_channel));
                if let Err(e) = client.batch_execute(&listen_sql).await {
                    eprintln!("gateway: LISTEN failed: {e}");
                    driver.abort();
                } else {
                    delay = Duration::from_millis(250);
                    if connected_before || state.schema_cache().is_none() {
                        // Notifications may have been lost while disconnected
                        // (or the database just came up): read the cache now.
                        let _ = state.reload_schema_cache().await;
                    }
                    connected_before = true;
                    loop {
                        tokio::select! {
                            message = rx.recv() => match message {
                                Some(payload) => handle_notification(&state, &payload).await,
                                None => break, // the connection is gone
                            },
                            _ = stop.changed() => {
                                driver.abort();
                                return;
                            }
                        }
                    }
                    eprintln!("gateway: the listener connection was lost; reconnecting");
                }
                drop(client);
            }
            Err(e) => {
                if connected_before {
                    eprintln!("gateway: listener cannot connect ({e}); retrying in {delay:?}");
                }
            }
        }
        if sleep_or_stop(delay, &mut stop).await {
            return;
        }
        delay = next(delay);
    }
}

async fn handle_notification(state: &AppState, payload: &str) {
    // PostgREST: '' reloads config and schema, 'reload schema' the schema;
    // 'reload config' has nothing to reload here (config comes from env).
    if payload.is_empty() || payload == "reload schema" {
        if let Err(e) = state.reload_schema_cache().await {
            eprintln!("gateway: schema cache reload failed: {e}");
        }
    }
}
