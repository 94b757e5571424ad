//! Tables and views: reads (`GET /t?select=..&col=op.v&order=..`) and the
//! cheap writes (POST insert/upsert, PATCH, DELETE, PUT), as SQL.

use serde_json::Value;

use super::cache::SchemaCache;
use super::error::ApiError;
use super::params::Operation;
use super::request::{ApiRequest, Mutation, Payload, Representation, Resolution};
use super::sql::{ident, order_sql, qualified, select_sql, where_sql, wrap, Handler, Range, Sql};

/// The read statement: rows of `"schema"."table"` filtered, ordered and
/// paged, the count when asked for, and the body in `handler`'s format.
pub fn read_sql(sql: &mut Sql, req: &ApiRequest, table: &str, handler: Handler, count: bool, range: Range) -> String {
    let qt = qualified(&req.schema, table);
    let select = select_sql(sql, &qt, &req.query.select);
    let filter = where_sql(sql, &qt, &req.query.filters, &req.query.logic);
    let order = order_sql(sql, &qt, &req.query.order);
    let source = format!("SELECT {select} FROM {qt}{filter}{order}{}", range.sql());
    let count_sql = count.then(|| {
        let filter = where_sql(sql, &qt, &req.query.filters, &req.query.logic);
        format!("SELECT 1 FROM {qt}{filter}")
    });
    wrap(&source, count_sql.as_deref(), false, &super::sql::handler_sql(handler, None), "SELECT * FROM pgrst_source")
}

/// The payload as a JSON array of objects (an object becomes `[object]`).
fn payload_array(req: &ApiRequest) -> String {
    match &req.payload {
        Some(Payload::Json { raw, is_array: true, .. }) => raw.clone(),
        Some(Payload::Json { raw, is_array: false, .. }) => format!("[{raw}]"),
        _ => "[]".to_string(),
    }
}

/// The payload as one JSON object (the first of an array).
fn payload_object(req: &ApiRequest) -> String {
    match &req.payload {
        Some(Payload::Json { raw, is_array: true, .. }) => match serde_json::from_str::<Value>(raw) {
            Ok(Value::Array(items)) => items.into_iter().next().map(|v| v.to_string()).unwrap_or_else(|| "{}".into()),
            _ => "{}".to_string(),
        },
        Some(Payload::Json { raw, .. }) => raw.clone(),
        _ => "{}".to_string(),
    }
}

/// PGRST204 for a payload key the table does not have (when it is known).
fn check_columns(cache: &SchemaCache, req: &ApiRequest, table: &str) -> Result<(), ApiError> {
    if let Some(t) = cache.table(&req.schema, table) {
        if let Some(missing) = req.columns.iter().find(|c| !t.columns.contains(c)) {
            return Err(ApiError::column_not_found(table, missing));
        }
    }
    Ok(())
}

/// A write statement. `handler` is the body format (None unless
/// `return=representation`).
pub fn mutation_sql(
    sql: &mut Sql,
    cache: &SchemaCache,
    req: &ApiRequest,
    table: &str,
    mutation: Mutation,
    handler: Handler,
) -> Result<String, ApiError> {
    let qt = qualified(&req.schema, table);
    let full = req.prefs.representation == Some(Representation::Full);
    let returning = if full { format!(" RETURNING {qt}.*") } else { " RETURNING 1".to_string() };
    let cols: Vec<String> = req.columns.iter().map(|c| ident(c)).collect();
    let source = match mutation {
        Mutation::Create => {
            check_columns(cache, req, table)?;
            let body = sql.value(&payload_array(req));
            let conflict = on_conflict_sql(cache, req, table, &cols);
            if cols.is_empty() {
                format!("INSERT INTO {qt} SELECT FROM json_array_elements({body}::json){conflict}{returning}")
            } else {
                format!(
                    "INSERT INTO {qt}({c}) SELECT {c} FROM json_populate_recordset(NULL::{qt}, {body}::json) _{conflict}{returning}",
                    c = cols.join(", ")
                )
            }
        }
        Mutation::Update => {
            check_columns(cache, req, table)?;
            if cols.is_empty() {
                // Nothing to set: nothing changes (PostgREST answers 204).
                format!("SELECT {qt}.* FROM {qt} WHERE false")
            } else {
                let body = sql.value(&payload_object(req));
                let sets: Vec<String> = cols.iter().map(|c| format!("{c} = pgrst_body.{c}")).collect();
                let filter = mutation_where(sql, req, &qt);
                format!(
                    "UPDATE {qt} SET {} FROM (SELECT * FROM json_populate_record(NULL::{qt}, {body}::json)) pgrst_body{filter}{returning}",
                    sets.join(", ")
                )
            }
        }
        Mutation::Delete => {
            let filter = mutation_where(sql, req, &qt);
            format!("DELETE FROM {qt}{filter}{returning}")
        }
        Mutation::SingleUpsert => {
            check_columns(cache, req, table)?;
            let pk = cache.table(&req.schema, table).map(|t| t.primary_key.clone()).unwrap_or_default();
            let filters = &req.query.filters;
            let eq_only = filters.iter().all(|f| {
                !f.expr.negated
                    && f.field.json_path.is_empty()
                    && matches!(f.expr.operation, Operation::Quant { op: "=", quantifier: None, .. })
            });
            let mut filter_cols: Vec<&str> = filters.iter().map(|f| f.field.name.as_str()).collect();
            filter_cols.sort_unstable();
            let mut pk_sorted: Vec<&str> = pk.iter().map(String::as_str).collect();
            pk_sorted.sort_unstable();
            if pk.is_empty() || !eq_only || !req.query.logic.is_empty() || filter_cols != pk_sorted {
                return Err(ApiError::invalid_filters());
            }
            let body = sql.value(&payload_array(req));
            let conds: Vec<String> = filters
                .iter()
                .filter_map(|f| match &f.expr.operation {
                    Operation::Quant { value, .. } => Some(format!("_.{} = {}", ident(&f.field.name), sql.value(value))),
                    _ => None,
                })
                .collect();
            let pk_cols: Vec<String> = pk.iter().map(|c| ident(c)).collect();
            let sets: Vec<String> = cols.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect();
            let action = if sets.is_empty() { "NOTHING".to_string() } else { format!("UPDATE SET {}", sets.join(", ")) };
            format!(
                "INSERT INTO {qt}({c}) SELECT {c} FROM json_populate_recordset(NULL::{qt}, {body}::json) _ WHERE {w} \
                 ON CONFLICT ({pkc}) DO {action}{returning}",
                c = cols.join(", "),
                w = conds.join(" AND "),
                pkc = pk_cols.join(", ")
            )
        }
    };
    let rows_from = if full {
        let select = select_sql(sql, "pgrst_source", &req.query.select);
        format!("SELECT {select} FROM pgrst_source")
    } else {
        "SELECT * FROM pgrst_source".to_string()
    };
    Ok(wrap(&source, None, false, &super::sql::handler_sql(handler, None), &rows_from))
}

/// Filters of PATCH/DELETE; with `limit`, only the first rows in `order`.
fn mutation_where(sql: &mut Sql, req: &ApiRequest, qt: &str) -> String {
    let filter = where_sql(sql, qt, &req.query.filters, &req.query.logic);
    if req.range == Range::ALL {
        return filter;
    }
    let order = order_sql(sql, qt, &req.query.order);
    format!(" WHERE {qt}.ctid IN (SELECT {qt}.ctid FROM {qt}{filter}{order}{})", req.range.sql())
}

/// `ON CONFLICT` for `Prefer: resolution=...`, on `?on_conflict=` columns
/// or the primary key; nothing when neither is known.
fn on_conflict_sql(cache: &SchemaCache, req: &ApiRequest, table: &str, cols: &[String]) -> String {
    let Some(resolution) = req.prefs.resolution else { return String::new() };
    let target: Vec<String> = match &req.query.on_conflict {
        Some(c) => c.clone(),
        None => cache.table(&req.schema, table).map(|t| t.primary_key.clone()).unwrap_or_default(),
    };
    if target.is_empty() {
        return String::new();
    }
    let target: Vec<String> = target.iter().map(|c| ident(c)).collect();
    match resolution {
        Resolution::IgnoreDuplicates => format!(" ON CONFLICT ({}) DO NOTHING", target.join(", ")),
        Resolution::MergeDuplicates if cols.is_empty() => format!(" ON CONFLICT ({}) DO NOTHING", target.join(", ")),
        Resolution::MergeDuplicates => {
            let sets: Vec<String> = cols.iter().map(|c| format!("{c} = EXCLUDED.{c}")).collect();
            format!(" ON CONFLICT ({}) DO UPDATE SET {}", target.join(", "), sets.join(", "))
        }
    }
}

/// Whether the resolution preference applies (PostgREST reports it only
/// with a primary key or `on_conflict`).
pub fn resolution_applies(cache: &SchemaCache, req: &ApiRequest, table: &str) -> bool {
    req.query.on_conflict.is_some()
        || cache.table(&req.schema, table).map(|t| !t.primary_key.is_empty()).unwrap_or(false)
}
