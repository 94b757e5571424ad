//! One request, one transaction: the role switch and the request GUCs set
//! with `set_config(..., true)`, the statement, then commit (or rollback
//! when the response must not keep its effects).

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

use super::config::Config;
use super::error::ApiError;
use super::sql::{ident, Param};

pub fn pg_config(config: &Config) -> anyhow::Result<tokio_postgres::Config> {
    let mut pg: tokio_postgres::Config = config
        .db_uri
        .parse()
        .map_err(|e| anyhow::anyhow!("PGRST_DB_URI is not a valid connection string: {e}"))?;
    if pg.get_application_name().is_none() {
        pg.application_name("devstack-gateway");
    }
    Ok(pg)
}

pub fn pool(config: &Config) -> anyhow::Result<Pool> {
    let manager = Manager::from_config(pg_config(config)?, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(config.db_pool)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(config.db_pool_acquisition_timeout))
        .create_timeout(Some(config.db_pool_acquisition_timeout))
        .build()
        .map_err(|e| anyhow::anyhow!("cannot build the connection pool: {e}"))
}

pub fn pool_error(e: PoolError) -> ApiError {
    match e {
        PoolError::Timeout(_) => ApiError::acquisition_timeout(),
        PoolError::Backend(e) => ApiError::connection(e.to_string()),
        other => ApiError::connection(other.to_string()),
    }
}

/// The transaction-local settings of a request (PostgREST's `setPgLocals`).
#[derive(Debug, Clone)]
pub struct Locals {
    pub search_path: Vec<String>,
    pub role_settings: Vec<(String, String)>,
    pub role: String,
    pub claims_json: String,
    pub method: String,
    pub path: String,
    pub headers_json: String,
    pub cookies_json: String,
}

/// What must hold of the result for the transaction to commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    None,
    /// `application/vnd.pgrst.object+json`: exactly one row.
    Singular,
    /// PUT: exactly one row written (else PGRST115).
    PutMatch,
}

#[derive(Debug, Clone)]
pub struct Statement {
    pub read_only: bool,
    pub sql: String,
    pub params: Vec<Param>,
    pub check: Check,
}

/// The one row every statement returns.
#[derive(Debug, Clone)]
pub struct ResultSet {
    pub total: Option<i64>,
    pub page_total: i64,
    pub body: String,
    pub guc_headers: Option<String>,
    pub guc_status: Option<String>,
}

/// Runs `stmt` as `locals.role`. `authenticated`: the role is not the
/// anonymous one (42501 is then 403, else 401).
pub async fn run(pool: &Pool, locals: &Locals, stmt: &Statement, authenticated: bool) -> Result<ResultSet, ApiError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client
        .build_transaction()
        .read_only(stmt.read_only)
        .start()
        .await
        .map_err(|e| ApiError::from_pg(&e, authenticated))?;

    let mut values: Vec<Param> = Vec::new();
    let mut setters: Vec<String> = Vec::new();
    {
        let mut param = |v: &str| -> String {
            values.push(Param::Unknown(Some(v.split('\0').next().unwrap_or_default().to_string())));
            format!("${}", values.len())
        };
        let search_path: Vec<String> = locals.search_path.iter().map(|s| ident(s)).collect();
        setters.push(format!("set_config('search_path', {}, true)", param(&search_path.join(", "))));
        // Role settings before the role itself, as PostgREST orders them.
        for (k, v) in &locals.role_settings {
            let (kp, vp) = (param(k), param(v));
            setters.push(format!("set_config({kp}, {vp}, true)"));
        }
        for (name, value) in [
            ("role", &locals.role),
            ("request.jwt.claims", &locals.claims_json),
            ("request.method", &locals.method),
            ("request.path", &locals.path),
            ("request.headers", &locals.headers_json),
            ("request.cookies", &locals.cookies_json),
        ] {
            setters.push(format!("set_config('{name}', {}, true)", param(value)));
        }
    }
    let locals_sql = format!("SELECT {}", setters.join(", "));
    let typed: Vec<(&(dyn ToSql + Sync), tokio_postgres::types::Type)> =
        values.iter().map(|p| (p as &(dyn ToSql + Sync), p.pg_type())).collect();
    tx.query_typed(&locals_sql, &typed).await.map_err(|e| ApiError::from_pg(&e, authenticated))?;

    let typed: Vec<(&(dyn ToSql + Sync), tokio_postgres::types::Type)> =
        stmt.params.iter().map(|p| (p as &(dyn ToSql + Sync), p.pg_type())).collect();
    let rows = tx.query_typed(&stmt.sql, &typed).await.map_err(|e| ApiError::from_pg(&e, authenticated))?;
    let result = match rows.first() {
        Some(row) => ResultSet {
            total: row.try_get(0).map_err(|e| ApiError::client(e.to_string()))?,
            page_total: row.try_get(1).map_err(|e| ApiError::client(e.to_string()))?,
            body: row.try_get::<_, Option<String>>(2).map_err(|e| ApiError::client(e.to_string()))?.unwrap_or_default(),
            guc_headers: row.try_get(3).map_err(|e| ApiError::client(e.to_string()))?,
            guc_status: row.try_get(4).map_err(|e| ApiError::client(e.to_string()))?,
        },
        None => ResultSet { total: Some(0), page_total: 0, body: String::new(), guc_headers: None, guc_status: None },
    };
    match stmt.check {
        Check::Singular if result.page_total != 1 => {
            let _ = tx.rollback().await;
            return Err(ApiError::singularity(result.page_total));
        }
        Check::PutMatch if result.page_total != 1 => {
            let _ = tx.rollback().await;
            return Err(ApiError::put_matching_pk());
        }
        _ => {}
    }
    tx.commit().await.map_err(|e| ApiError::from_pg(&e, authenticated))?;
    Ok(result)
}
