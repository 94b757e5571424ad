//! The request pipeline (PostgREST's `App.hs` + `Plan.hs` + `Response.hs`):
//! authenticate, interpret, plan the SQL, run it, shape the response.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Map, Value};

use super::cache::SchemaCache;
use super::config::Config;
use super::db::{self, Check, Locals, ResultSet, Statement};
use super::error::ApiError;
use super::jwt::{self, AuthResult};
use super::request::{Action, ApiRequest, MediaType, Mutation, RawRequest, Representation, Resource};
use super::rpc;
use super::sql::{handler_sql, order_sql, select_sql, where_sql, wrap, Handler, Range, Sql};
use super::tables;

/// A response, ready to send.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub status_text: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl Resp {
    pub fn from_error(e: ApiError) -> Resp {
        let mut headers = vec![("Content-Type".to_string(), "application/json; charset=utf-8".to_string())];
        headers.extend(e.headers);
        Resp { status: e.status, status_text: e.status_text, headers, body: Bytes::from(e.body.to_string()) }
    }
}

/// The shared state of a running gateway.
pub struct AppState {
    pub config: Config,
    pub pool: deadpool_postgres::Pool,
    cache: RwLock<Option<Arc<SchemaCache>>>,
    reload_lock: tokio::sync::Mutex<()>,
    last_demand_reload: Mutex<Option<Instant>>,
}

/// A function that is not in the cache triggers a reload at most this often
/// (a safety net for a missed NOTIFY that a client cannot turn into load).
const DEMAND_RELOAD_INTERVAL: Duration = Duration::from_secs(2);

impl AppState {
    pub fn new(config: Config) -> anyhow::Result<AppState> {
        let pool = db::pool(&config)?;
        Ok(AppState {
            config,
            pool,
            cache: RwLock::new(None),
            reload_lock: tokio::sync::Mutex::new(()),
            last_demand_reload: Mutex::new(None),
        })
    }

    pub fn schema_cache(&self) -> Option<Arc<SchemaCache>> {
        self.cache.read().ok().and_then(|c| c.clone())
    }

    /// Reads the schema cache again and swaps it in.
    pub async fn reload_schema_cache(&self) -> anyhow::Result<()> {
        let _guard = self.reload_lock.lock().await;
        let mut client = self.pool.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        let fresh = SchemaCache::load(&mut client, &self.config.db_schemas).await?;
        if let Ok(mut slot) = self.cache.write() {
            *slot = Some(Arc::new(fresh));
        }
        Ok(())
    }

    /// The safety net: reload for an unknown function, rate-limited.
    async fn demand_reload(&self) -> bool {
        {
            let Ok(mut last) = self.last_demand_reload.lock() else { return false };
            if last.map(|t| t.elapsed() < DEMAND_RELOAD_INTERVAL).unwrap_or(false) {
                return false;
            }
            *last = Some(Instant::now());
        }
        self.reload_schema_cache().await.is_ok()
    }
}

fn now_seconds() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Serves one request.
pub async fn handle(state: &AppState, raw: &RawRequest<'_>) -> Resp {
    match respond(state, raw).await {
        Ok(r) => r,
        Err(e) => Resp::from_error(e),
    }
}

async fn respond(state: &AppState, raw: &RawRequest<'_>) -> Result<Resp, ApiError> {
    let config = &state.config;
    let token = jwt::bearer_token(raw.header("Authorization").map(str::as_bytes));
    let auth = jwt::authenticate(config, token, now_seconds())?;
    let cache = state.schema_cache().ok_or_else(ApiError::no_schema_cache)?;
    let req = ApiRequest::build(config, raw)?;
    let authenticated = Some(&auth.role) != config.db_anon_role.as_ref();
    match (&req.resource, req.action) {
        (Resource::Routine(name), Action::RoutineCall { .. }) => {
            call_routine(state, &cache, &req, &auth, authenticated, name).await
        }
        (Resource::Routine(name), Action::RoutineInfo) => {
            let routine = find_routine(state, &cache, &req, name).await?;
            let allow = if routine.volatility == super::cache::Volatility::Volatile {
                "OPTIONS,POST"
            } else {
                "OPTIONS,GET,HEAD,POST"
            };
            Ok(info(allow))
        }
        (Resource::Relation(table), Action::RelationRead { headers_only }) => {
            read_table(state, &cache, &req, &auth, authenticated, table, headers_only).await
        }
        (Resource::Relation(table), Action::RelationMut(m)) => {
            mutate_table(state, &cache, &req, &auth, authenticated, table, m).await
        }
        (Resource::Relation(table), Action::RelationInfo) => match cache.table(&req.schema, table) {
            Some(t) => {
                let mut allow = vec!["OPTIONS,GET,HEAD"];
                if t.insertable {
                    allow.push("POST");
                }
                if t.insertable && t.updatable && !t.primary_key.is_empty() {
                    allow.push("PUT");
                }
                if t.updatable {
                    allow.push("PATCH");
                }
                if t.deletable {
                    allow.push("DELETE");
                }
                Ok(info(&allow.join(",")))
            }
            None => Err(ApiError::not_found()),
        },
        (Resource::Root, Action::SchemaRead { headers_only }) => root(state, &cache, &req, headers_only),
        (Resource::Root, Action::SchemaInfo) => Ok(info("OPTIONS,GET,HEAD")),
        _ => Err(ApiError::not_found()),
    }
}

fn info(allow: &str) -> Resp {
    Resp {
        status: 200,
        status_text: None,
        headers: vec![
            ("Access-Control-Allow-Origin".into(), "*".into()),
            ("Allow".into(), allow.into()),
        ],
        body: Bytes::new(),
    }
}

async fn find_routine(
    state: &AppState,
    cache: &Arc<SchemaCache>,
    req: &ApiRequest,
    name: &str,
) -> Result<super::cache::Routine, ApiError> {
    match rpc::find_routine(cache, req, name) {
        Ok(r) => Ok(r.clone()),
        Err(e) if e.code() == Some("PGRST202") && state.demand_reload().await => {
            let fresh = state.schema_cache().ok_or_else(ApiError::no_schema_cache)?;
            rpc::find_routine(&fresh, req, name).cloned().map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// PostgREST's `negotiateContent`: the first acceptable media type that has
/// a handler; 406 when none has.
fn negotiate(req: &ApiRequest) -> Result<(Handler, MediaType), ApiError> {
    for mt in &req.accept {
        let picked = match mt {
            MediaType::Singular { strip_nulls } => Some((Handler::Single { strip_nulls: *strip_nulls }, mt.clone())),
            MediaType::ArrayJsonStrip => Some((Handler::Json { strip_nulls: true }, mt.clone())),
            MediaType::Json | MediaType::Any => Some((Handler::Json { strip_nulls: false }, MediaType::Json)),
            MediaType::Csv => Some((Handler::Csv, MediaType::Csv)),
            _ => None,
        };
        if let Some(p) = picked {
            return Ok(p);
        }
    }
    Err(ApiError::media_type(&req.accept.iter().map(MediaType::mime).collect::<Vec<_>>()))
}

fn locals(state: &AppState, cache: &SchemaCache, req: &ApiRequest, auth: &AuthResult) -> Locals {
    let mut search_path = vec![req.schema.clone()];
    search_path.extend(state.config.db_extra_search_path.iter().cloned());
    Locals {
        search_path,
        role_settings: cache.role_settings.get(&auth.role).cloned().unwrap_or_default(),
        role: auth.role.clone(),
        claims_json: Value::Object(auth.claims.clone()).to_string(),
        method: req.method.clone(),
        path: req.path.clone(),
        headers_json: req.headers_json.clone(),
        cookies_json: req.cookies_json.clone(),
    }
}

/// The top-level range, capped by `db-max-rows`.
fn capped(state: &AppState, range: Range) -> Range {
    match state.config.db_max_rows {
        Some(max) => Range { offset: range.offset, limit: Some(range.limit.map(|l| l.min(max)).unwrap_or(max)) },
        None => range,
    }
}

fn content_headers(req: &ApiRequest, media: &MediaType) -> Vec<(String, String)> {
    let mut h = vec![("Content-Type".to_string(), media.content_type())];
    if req.negotiated_by_profile {
        h.push(("Content-Profile".to_string(), req.schema.clone()));
    }
    h
}

/// `Content-Range` and the status of a read (PostgREST's `rangeStatusHeader`).
fn range_status(range: Range, page_total: i64, total: Option<i64>) -> (u16, String) {
    let lower = range.offset;
    let upper = lower.saturating_add(page_total).saturating_sub(1);
    let range_text = if total != Some(0) && lower <= upper { format!("{lower}-{upper}") } else { "*".to_string() };
    let total_text = total.map(|t| t.to_string()).unwrap_or_else(|| "*".to_string());
    let status = match total {
        None => 200,
        Some(t) if lower > t => 416,
        Some(t) if upper.saturating_sub(lower).saturating_add(1) < t => 206,
        Some(_) => 200,
    };
    (status, format!("{range_text}/{total_text}"))
}

/// A read's body: PostgREST's out-of-range error on a 416, nothing for a
/// HEAD (or a GET-like `read` RPC asking for headers only), else the rows.
fn read_body(status: u16, headers_only: bool, range: Range, rs: &db::ResultSet) -> Bytes {
    if status == 416 {
        out_of_bounds(range, rs.total)
    } else if headers_only {
        Bytes::new()
    } else {
        Bytes::from(rs.body.clone())
    }
}

fn out_of_bounds(range: Range, total: Option<i64>) -> Bytes {
    let e = ApiError::invalid_range(Value::String(format!(
        "An offset of {} was requested, but there are only {} rows.",
        range.offset,
        total.unwrap_or(0)
    )));
    Bytes::from(e.body.to_string())
}

/// `response.status` / `response.headers` set by the SQL override the
/// response (headers the SQL sets replace the gateway's of the same name).
fn apply_gucs(rs: &ResultSet, status: u16, headers: Vec<(String, String)>) -> Result<(u16, Vec<(String, String)>), ApiError> {
    let status = match &rs.guc_status {
        None => status,
        Some(s) => {
            let digits: String = s.trim().chars().take_while(|c| c.is_ascii_digit()).collect();
            digits.parse::<u16>().ok().filter(|s| (100..=999).contains(s)).ok_or_else(ApiError::guc_status)?
        }
    };
    let guc_headers: Vec<(String, String)> = match &rs.guc_headers {
        None => Vec::new(),
        Some(raw) => {
            let parsed: Value = serde_json::from_str(raw).map_err(|_| ApiError::guc_headers())?;
            let Value::Array(items) = parsed else { return Err(ApiError::guc_headers()) };
            let mut out = Vec::new();
            for item in items {
                match item {
                    Value::Object(o) if o.len() == 1 => {
                        for (k, v) in o {
                            match v {
                                Value::String(s) => out.push((k, s)),
                                _ => return Err(ApiError::guc_headers()),
                            }
                        }
                    }
                    _ => return Err(ApiError::guc_headers()),
                }
            }
            out
        }
    };
    let mut merged: Vec<(String, String)> = headers
        .into_iter()
        .filter(|(k, _)| !guc_headers.iter().any(|(g, _)| g.eq_ignore_ascii_case(k)))
        .collect();
    merged.extend(guc_headers);
    Ok((status, merged))
}

async fn call_routine(
    state: &AppState,
    cache: &Arc<SchemaCache>,
    req: &ApiRequest,
    auth: &AuthResult,
    authenticated: bool,
    name: &str,
) -> Result<Resp, ApiError> {
    let routine = find_routine(state, cache, req, name).await?;
    let (handler, media) = negotiate(req)?;
    let headers_only = matches!(req.action, Action::RoutineCall { read: Some(true) });
    let handler = if headers_only { Handler::None } else { handler };
    let range = capped(state, req.range);
    let count = req.prefs.should_count();

    let mut sql = Sql::default();
    let call = rpc::call_sql(&mut sql, req, &routine);
    let select = select_sql(&mut sql, "pgrst_source", &req.query.select);
    let filter = where_sql(&mut sql, "pgrst_source", &req.query.filters, &req.query.logic);
    let order = order_sql(&mut sql, "pgrst_source", &req.query.order);
    let rows_from = format!("SELECT {select} FROM pgrst_source{filter}{order}{}", range.sql());
    let count_sql = count.then(|| {
        let filter = where_sql(&mut sql, "pgrst_source", &req.query.filters, &req.query.logic);
        format!("SELECT 1 FROM pgrst_source{filter}")
    });
    let text = wrap(&call, count_sql.as_deref(), routine.returns_single(), &handler_sql(handler, Some(&routine)), &rows_from);
    let stmt = Statement {
        read_only: rpc::read_only(req, &routine),
        sql: text,
        params: sql.params,
        check: if matches!(media, MediaType::Singular { .. }) { Check::Singular } else { Check::None },
    };
    let rs = db::run(&state.pool, &locals(state, cache, req, auth), &stmt, authenticated).await?;

    let (status, content_range) = range_status(range, rs.page_total, rs.total);
    let mut headers = vec![("Content-Range".to_string(), content_range)];
    headers.extend(req.prefs.applied_read(true).map(|v| ("Preference-Applied".to_string(), v)));
    let (status, headers, body) = if routine.returns_void() {
        (204, headers, Bytes::new())
    } else {
        headers.extend(content_headers(req, &media));
        (status, headers, read_body(status, headers_only, range, &rs))
    };
    let (status, headers) = apply_gucs(&rs, status, headers)?;
    Ok(Resp { status, status_text: None, headers, body })
}

async fn read_table(
    state: &AppState,
    cache: &Arc<SchemaCache>,
    req: &ApiRequest,
    auth: &AuthResult,
    authenticated: bool,
    table: &str,
    headers_only: bool,
) -> Result<Resp, ApiError> {
    let (handler, media) = negotiate(req)?;
    let handler = if headers_only { Handler::None } else { handler };
    let range = capped(state, req.range);
    let mut sql = Sql::default();
    let text = tables::read_sql(&mut sql, req, table, handler, req.prefs.should_count(), range);
    let stmt = Statement {
        read_only: true,
        sql: text,
        params: sql.params,
        check: if matches!(media, MediaType::Singular { .. }) { Check::Singular } else { Check::None },
    };
    let rs = db::run(&state.pool, &locals(state, cache, req, auth), &stmt, authenticated).await?;
    let (status, content_range) = range_status(range, rs.page_total, rs.total);
    let location = if req.query.canonical.is_empty() {
        format!("/{table}")
    } else {
        format!("/{table}?{}", req.query.canonical)
    };
    let mut headers = vec![("Content-Range".to_string(), content_range), ("Content-Location".to_string(), location)];
    headers.extend(content_headers(req, &media));
    headers.extend(req.prefs.applied_read(false).map(|v| ("Preference-Applied".to_string(), v)));
    let body = read_body(status, headers_only, range, &rs);
    let (status, headers) = apply_gucs(&rs, status, headers)?;
    Ok(Resp { status, status_text: None, headers, body })
}

async fn mutate_table(
    state: &AppState,
    cache: &Arc<SchemaCache>,
    req: &ApiRequest,
    auth: &AuthResult,
    authenticated: bool,
    table: &str,
    mutation: Mutation,
) -> Result<Resp, ApiError> {
    let (handler, media) = negotiate(req)?;
    let full = req.prefs.representation == Some(Representation::Full);
    let body_handler = if full { handler } else { Handler::None };
    let mut sql = Sql::default();
    let text = tables::mutation_sql(&mut sql, cache, req, table, mutation, body_handler)?;
    let check = if mutation == Mutation::SingleUpsert {
        Check::PutMatch
    } else if matches!(handler, Handler::Single { .. }) {
        Check::Singular
    } else {
        Check::None
    };
    let stmt = Statement { read_only: false, sql: text, params: sql.params, check };
    let rs = db::run(&state.pool, &locals(state, cache, req, auth), &stmt, authenticated).await?;
    let n = rs.page_total;
    let count = req.prefs.should_count().then_some(n);
    let content_range = |lower: i64, upper: i64| {
        let range_text = if count != Some(0) && lower <= upper { format!("{lower}-{upper}") } else { "*".into() };
        format!("{range_text}/{}", count.map(|c| c.to_string()).unwrap_or_else(|| "*".into()))
    };
    let resolution_applies = mutation == Mutation::Create && tables::resolution_applies(cache, req, table);
    let applied = req.prefs.applied_write(resolution_applies);
    let mut headers: Vec<(String, String)> = Vec::new();
    let status = match mutation {
        Mutation::Create => {
            headers.push(("Content-Range".into(), content_range(1, 0)));
            201
        }
        Mutation::Update => {
            headers.push(("Content-Range".into(), content_range(0, n - 1)));
            if full {
                200
            } else {
                204
            }
        }
        Mutation::Delete => {
            headers.push(("Content-Range".into(), content_range(1, 0)));
            if full {
                200
            } else {
                204
            }
        }
        Mutation::SingleUpsert => {
            if full {
                200
            } else {
                204
            }
        }
    };
    headers.extend(applied.map(|v| ("Preference-Applied".to_string(), v)));
    let body = if full {
        headers.extend(content_headers(req, &media));
        Bytes::from(rs.body.clone())
    } else {
        Bytes::new()
    };
    let (status, headers) = apply_gucs(&rs, status, headers)?;
    Ok(Resp { status, status_text: None, headers, body })
}

/// `GET /`: a small OpenAPI (Swagger 2.0) description of what is exposed.
fn root(state: &AppState, cache: &SchemaCache, req: &ApiRequest, headers_only: bool) -> Result<Resp, ApiError> {
    let acceptable = req.accept.iter().any(|m| matches!(m, MediaType::OpenApi | MediaType::Json | MediaType::Any));
    if !acceptable {
        return Err(ApiError::media_type(&req.accept.iter().map(MediaType::mime).collect::<Vec<_>>()));
    }
    let mut paths = Map::new();
    paths.insert(
        "/".into(),
        json!({"get": {"tags": ["Introspection"], "summary": "OpenAPI description (this document)",
                "produces": ["application/openapi+json", "application/json"],
                "responses": {"200": {"description": "OK"}}}}),
    );
    let mut definitions = Map::new();
    let mut tables: Vec<_> = cache.tables.values().filter(|t| t.schema == req.schema).collect();
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    for t in tables {
        let mut ops = Map::new();
        ops.insert("get".into(), json!({"tags": [t.name], "responses": {"200": {"description": "OK"}}}));
        if t.insertable {
            ops.insert("post".into(), json!({"tags": [t.name], "responses": {"201": {"description": "Created"}}}));
        }
        if t.updatable {
            ops.insert("patch".into(), json!({"tags": [t.name], "responses": {"204": {"description": "No Content"}}}));
        }
        if t.deletable {
            ops.insert("delete".into(), json!({"tags": [t.name], "responses": {"204": {"description": "No Content"}}}));
        }
        paths.insert(format!("/{}", t.name), Value::Object(ops));
        let props: Map<String, Value> = t.columns.iter().map(|c| (c.clone(), json!({}))).collect();
        definitions.insert(t.name.clone(), json!({"type": "object", "properties": props}));
    }
    let mut routines: Vec<_> = cache.routines.iter().filter(|((s, _), _)| *s == req.schema).collect();
    routines.sort_by(|a, b| a.0 .1.cmp(&b.0 .1));
    for ((_, name), overloads) in routines {
        let params: Vec<Value> = overloads
            .first()
            .map(|r| r.params.iter().map(|p| json!({"name": p.name, "format": p.type_name, "required": p.required})).collect())
            .unwrap_or_default();
        paths.insert(
            format!("/rpc/{name}"),
            json!({"post": {"tags": ["(rpc) ".to_string() + name], "parameters": params,
                    "responses": {"200": {"description": "OK"}}}}),
        );
    }
    let doc = json!({
        "swagger": "2.0",
        "info": {"title": "PostgREST API", "description": "creditgate devstack gateway (PostgREST v12 compatible)", "version": "12.2.3"},
        "host": format!("{}", state.config.bind_address()),
        "basePath": "/",
        "schemes": ["http"],
        "consumes": ["application/json", "application/vnd.pgrst.object+json", "text/csv"],
        "produces": ["application/json", "application/vnd.pgrst.object+json", "text/csv"],
        "paths": paths,
        "definitions": definitions,
    });
    let mut headers = vec![("Content-Type".to_string(), MediaType::OpenApi.content_type())];
    if req.negotiated_by_profile {
        headers.push(("Content-Profile".to_string(), req.schema.clone()));
    }
    let body = if headers_only { Bytes::new() } else { Bytes::from(doc.to_string()) };
    Ok(Resp { status: 200, status_text: None, headers, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range_like_postgrest() {
        assert_eq!(range_status(Range::ALL, 2, None), (200, "0-1/*".to_string()));
        assert_eq!(range_status(Range { offset: 1, limit: Some(1) }, 1, Some(2)), (206, "1-1/2".to_string()));
        assert_eq!(range_status(Range::ALL, 0, None), (200, "*/*".to_string()));
        assert_eq!(range_status(Range::ALL, 0, Some(0)), (200, "*/0".to_string()));
        assert_eq!(range_status(Range { offset: 10, limit: None }, 0, Some(5)).0, 416);
    }
}
