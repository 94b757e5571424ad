//! Who may do what: every function and table of the schemas creditgate
//! owns, tried for real as `anon`, `authenticated` and `service_role`.

use crate::pg::Cluster;
use crate::support::{connect, quote_ident, sqlstate};
use anyhow::{bail, Result};
use tokio_postgres::Client;
/// Every function in `public` and `creditgate`, and every creditgate table,
/// tried for real as each client role: a call or statement the role must not
/// make has to fail with 42501 (permission denied), and one it may make must
/// not. Derived from the catalog, so a function added later without its
/// REVOKE is caught even if no test names it. Rolled back: nothing changes.
pub fn privilege_sweep(cluster: &Cluster, database: &str) -> Result<()> {
    let url = cluster.url("postgres", database);
    tokio::runtime::Runtime::new()?.block_on(sweep(&url))
}

/// What a client role may execute in `public`: docs/rpc.md.
const CALLABLE: &[(&str, &[&str])] = &[
    ("anon", &[]),
    ("authenticated", &["get_my_credit_balance"]),
    (
        "service_role",
        &[
            "atomic_charge_credits",
            "charge_credits",
            "complete_generation_job",
            "refund_credits",
            "grant_credits",
            "get_credit_balance",
            "get_my_credit_balance",
            "expire_stale_generation_jobs",
            "verify_credit_ledger",
            "check_rate_limit",
            "apply_rate_limit",
            "charge_credits_with_limit",
            "cleanup_expired_rate_limits",
            "apply_rate_limits",
            "charge_credits_with_limits",
            "apply_token_bucket",
            "peek_rate_limit",
            "reset_rate_limit",
            "get_rate_limit_usage",
            "block_rate_limit_key",
            "unblock_rate_limit_key",
            // Lots, plans, events (docs/rpc.md, "Lots, plans and balance events").
            "get_credit_lots",
            "revoke_credit_lot",
            "upsert_credit_plan",
            "subscribe_credit_plan",
            "cancel_credit_plan",
            "get_credit_events",
            "set_credit_settings",
            "set_low_balance_threshold",
            // Stripe webhooks (docs/rpc.md, "Stripe").
            "process_stripe_event",
            // Webhooks out (docs/rpc.md, "Webhooks out").
            "claim_credit_event_deliveries",
            "record_credit_event_delivery",
        ],
    ),
];
const TABLES: &[&str] = &[
    "users",
    "generation_jobs",
    "credit_ledger",
    "idempotency_keys",
    "rate_limits",
    "credit_settings",
    "credit_user_settings",
    "credit_plans",
    "credit_lots",
    "credit_lot_movements",
    "credit_plan_subscriptions",
    "credit_events",
    "stripe_events",
    "credit_webhook_deliveries",
];
/// Tables each role may SELECT (RLS then limits `authenticated` to its rows).
const READABLE: &[(&str, &[&str])] = &[
    ("anon", &[]),
    ("authenticated", &["users", "generation_jobs", "credit_ledger", "credit_lots", "credit_events"]),
    // The service role reads every table.
    ("service_role", TABLES),
];

async fn sweep(url: &str) -> Result<()> {
    let client = connect(url).await?;
    // Functions of the schemas creditgate owns, not those of extensions.
    let functions = client
        .query(
            "SELECT n.nspname, p.proname, p.oid::regprocedure::text, p.pronargs::int,
                    pg_catalog.pg_get_function_identity_arguments(p.oid)
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname IN ('public', 'creditgate') AND p.prokind = 'f'
               AND p.prorettype <> 'trigger'::regtype
               AND NOT EXISTS (SELECT FROM pg_catalog.pg_depend d
                               WHERE d.objid = p.oid AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e')
             ORDER BY 1, 2, 3",
            &[],
        )
        .await?;
    if functions.len() < 20 {
        bail!("only {} functions found: are the migrations applied?", functions.len());
    }
    let mut tried = 0;
    let mut failures = Vec::new();
    for (role, callable) in CALLABLE {
        for function in &functions {
            let (schema, name, signature, arguments, identity): (String, String, String, i32, String) =
                (function.get(0), function.get(1), function.get(2), function.get(3), function.get(4));
            let may = schema == "public" && callable.contains(&name.as_str());
            // NULL for every argument, cast to its type: enough to reach the
            // privilege check, which comes before the function runs.
            let types: Vec<String> = split_arguments(&identity);
            let nulls: Vec<String> = types.iter().map(|t| format!("NULL::{t}")).collect();
            if nulls.len() != arguments as usize {
                failures.push(format!("{signature}: could not read its {arguments} argument types from {identity:?}"));
                continue;
            }
            let call = format!("SELECT {}.{}({})", quote_ident(&schema), quote_ident(&name), nulls.join(", "));
            let outcome = as_role(&client, role, &call).await?;
            tried += 1;
            let denied = outcome.as_deref() == Some("42501");
            let schema_denied = denied && schema == "creditgate";
            match (may, denied || schema_denied) {
                (true, true) => failures.push(format!("{role} may call {signature} but was refused")),
                (false, false) => failures.push(format!(
                    "{role} must not call {signature}, but it ran ({})",
                    outcome.as_deref().unwrap_or("no error")
                )),
                _ => {}
            }
        }
    }
    // Trigger functions cannot be called, only checked in the catalog.
    let triggers = client
        .query(
            "SELECT p.oid::regprocedure::text, r.role
             FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace,
                  unnest(ARRAY['anon', 'authenticated', 'service_role']) AS r(role)
             WHERE n.nspname IN ('public', 'creditgate') AND p.prorettype = 'trigger'::regtype
               AND pg_catalog.has_function_privilege(r.role, p.oid, 'EXECUTE')",
            &[],
        )
        .await?;
    for row in triggers {
        failures.push(format!("{} may execute trigger function {}", row.get::<_, String>(1), row.get::<_, String>(0)));
    }
    for (role, readable) in READABLE {
        for table in TABLES {
            let statements = [
                (format!("SELECT count(*) FROM public.{table}"), readable.contains(table)),
                (format!("INSERT INTO public.{table} DEFAULT VALUES"), false),
                (format!("UPDATE public.{table} SET {} = {} WHERE false", first_column(table), first_column(table)), false),
                (format!("DELETE FROM public.{table} WHERE false"), false),
                (format!("TRUNCATE public.{table}"), false),
            ];
            for (statement, may) in statements {
                let outcome = as_role(&client, role, &statement).await?;
                tried += 1;
                let denied = outcome.as_deref() == Some("42501");
                if may == denied {
                    failures.push(format!(
                        "{role}: `{statement}` {} ({})",
                        if may { "was refused" } else { "was not refused" },
                        outcome.as_deref().unwrap_or("no error")
                    ));
                }
            }
        }
    }
    if !failures.is_empty() {
        bail!("{} of {tried} privilege checks failed:\n  {}", failures.len(), failures.join("\n  "));
    }
    eprintln!(
        "{tried} calls and statements tried as anon, authenticated and service_role over {} functions and {} tables: \
         each allowed or refused (42501) exactly as docs/rpc.md says",
        functions.len(),
        TABLES.len()
    );
    Ok(())
}

/// Runs `sql` as `role` in a transaction that is rolled back; returns the
/// SQLSTATE it failed with ("42501" only for a privilege refusal), or None.
async fn as_role(client: &Client, role: &str, sql: &str) -> Result<Option<String>> {
    client.batch_execute("BEGIN").await?;
    client.batch_execute(&format!("SET LOCAL ROLE {role}")).await?;
    let outcome = client.batch_execute(sql).await;
    client.batch_execute("ROLLBACK").await?;
    Ok(match outcome {
        Ok(()) => None,
        // PostgreSQL's own refusal ("permission denied for function ...",
        // "... for schema ...", "... for table ..."), not a function raising
        // 42501 itself (get_my_credit_balance without a signed-in user).
        Err(error) => Some(match (sqlstate(&error), error.as_db_error().map(|db| db.message())) {
            (Some(code), Some(message)) if code == "42501" && message.starts_with("permission denied for") => code,
            (Some(code), Some(message)) if code == "42501" => format!("42501 raised by the function: {message}"),
            (Some(code), _) => code,
            (None, _) => format!("{error}"),
        }),
    })
}

/// Splits `pg_get_function_identity_arguments` output ("p_id uuid, p_n integer")
/// into argument types.
fn split_arguments(identity: &str) -> Vec<String> {
    if identity.trim().is_empty() {
        return Vec::new();
    }
    identity
        .split(", ")
        .map(|argument| {
            let argument = argument.trim();
            let argument = argument.strip_prefix("OUT ").or_else(|| argument.strip_prefix("IN ")).unwrap_or(argument);
            // "name type" or just "type"; types may contain spaces ("timestamp with time zone").
            match argument.split_once(' ') {
                Some((name, rest)) if name.starts_with("p_") || name.starts_with('_') => rest.to_string(),
                _ => argument.to_string(),
            }
        })
        .collect()
}

/// A column an UPDATE may name (not an identity column, which PostgreSQL
/// refuses to update before it checks privileges).
fn first_column(table: &str) -> &'static str {
    match table {
        "users" => "credits",
        "credit_ledger" => "description",
        "rate_limits" => "expires_at",
        "credit_settings" | "credit_user_settings" => "low_balance_threshold",
        "credit_plans" => "amount",
        "credit_lots" => "remaining",
        "credit_lot_movements" => "delta",
        "credit_plan_subscriptions" => "plan",
        "credit_events" => "payload",
        _ => "status",
    }
}


#[cfg(test)]
mod tests {
    use super::split_arguments;

    #[test]
    fn argument_types() {
        assert_eq!(split_arguments(""), Vec::<String>::new());
        assert_eq!(
            split_arguments("p_user_id uuid, p_now timestamp with time zone, p_metadata jsonb"),
            vec!["uuid", "timestamp with time zone", "jsonb"]
        );
        assert_eq!(split_arguments("regclass, text"), vec!["regclass", "text"]);
    }
}
