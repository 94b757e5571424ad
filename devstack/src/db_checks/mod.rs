//! Database checks of `cargo dev test db` that pgTAP cannot express:
//!
//! - [`model`]: many sessions mixing every operation, checked against a model;
//! - [`limits_model`]: charges under two shared rate limits, and under weighted rate, unit and
//!   concurrency limits with settlements and a token bucket, against models;
//! - [`lots_model`]: credit lots (spending order, settlements, expiry, revokes), against a model;
//! - [`crash`]: PostgreSQL's immediate shutdown under charges, twice;
//! - [`privileges`]: every function and table tried as each client role;
//! - [`cron`]: pg_cron runs the sweeper and the cleanup.

pub mod crash;
pub mod cron;
pub mod limits_model;
pub mod lots_model;
pub mod model;
pub mod privileges;
