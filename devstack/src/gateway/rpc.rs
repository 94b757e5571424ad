//! `/rpc/<fn>`: choosing the function among its overloads by argument names
//! (PostgREST's `findProc`), and the SQL that calls it.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::cache::{closest, Routine, SchemaCache, Volatility};
use super::error::ApiError;
use super::request::{Action, ApiRequest, MediaType, Payload};
use super::sql::{ident, qualified, Sql};

/// The argument names a call is matched with: the query's plain arguments
/// for GET/HEAD, the payload's keys (or `?columns=`) for POST.
pub fn argument_keys(req: &ApiRequest) -> BTreeSet<String> {
    match req.action {
        Action::RoutineCall { read: None } => req.columns.clone(),
        _ => req.query.rpc_params.iter().map(|(k, _)| k.clone()).collect(),
    }
}

fn is_inv_post(req: &ApiRequest) -> bool {
    matches!(req.action, Action::RoutineCall { read: None })
}

/// Picks the function `name` of the request's schema that the arguments
/// match, or PostgREST's PGRST202 (404) / PGRST203 (300).
pub fn find_routine<'a>(cache: &'a SchemaCache, req: &ApiRequest, name: &str) -> Result<&'a Routine, ApiError> {
    let keys = argument_keys(req);
    let single_object = req.prefs.single_object;
    let inv_post = is_inv_post(req);
    let overloads = cache.routines(&req.schema, name);
    let content_type = &req.content_type;

    let matches_params = |r: &Routine| -> bool {
        if single_object {
            return r.params.len() == 1 && matches!(r.params[0].type_name.as_str(), "json" | "jsonb");
        }
        if r.params.is_empty() {
            return keys.is_empty()
                && !(inv_post && matches!(content_type, MediaType::OctetStream | MediaType::TextPlain | MediaType::TextXml));
        }
        let required: BTreeSet<String> = r.params.iter().filter(|p| p.required).map(|p| p.name.clone()).collect();
        let optional: BTreeSet<String> = r.params.iter().filter(|p| !p.required).map(|p| p.name.clone()).collect();
        if optional.is_empty() {
            keys == required
        } else if required.is_empty() {
            keys.is_subset(&optional)
        } else {
            keys.difference(&optional).cloned().collect::<BTreeSet<String>>() == required
        }
    };
    let single_unnamed = |r: &Routine| -> bool {
        match r.params.as_slice() {
            [p] if inv_post => matches!(
                (content_type, p.type_name.as_str()),
                (MediaType::Json, "json")
                    | (MediaType::Json, "jsonb")
                    | (MediaType::TextPlain, "text")
                    | (MediaType::TextXml, "xml")
                    | (MediaType::OctetStream, "bytea")
            ),
            _ => false,
        }
    };

    let mut matched: Vec<&Routine> = Vec::new();
    let mut fallback: Vec<&Routine> = Vec::new();
    for r in overloads {
        if matches_params(r) {
            matched.push(r);
        } else if single_unnamed(r) {
            fallback.push(r);
        }
    }
    match (matched.as_slice(), fallback.as_slice()) {
        ([], []) => Err(no_rpc(cache, req, name, &keys, overloads)),
        ([], [only]) => Ok(only),
        ([], many) => Err(ambiguous(many)),
        ([only], _) => Ok(only),
        (many, _) => Err(ambiguous(many)),
    }
}

fn ambiguous(procs: &[&Routine]) -> ApiError {
    let mut procs: Vec<&&Routine> = procs.iter().collect();
    procs.sort_by_key(|r| (r.params.len(), r.signature()));
    let list: Vec<String> = procs.iter().map(|r| r.signature()).collect();
    ApiError::full(
        300,
        "PGRST203",
        format!("Could not choose the best candidate function between: {}", list.join(", ")),
        None,
        Some(Value::String(
            "Try renaming the parameters or the function itself in the database so function overloading can be resolved"
                .into(),
        )),
    )
}

/// PGRST202 with PostgREST's message, details and "did you mean" hint.
fn no_rpc(cache: &SchemaCache, req: &ApiRequest, name: &str, keys: &BTreeSet<String>, overloads: &[Routine]) -> ApiError {
    let func = format!("{}.{}", req.schema, name);
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let prms = keys.join(", ");
    let prms_msg = format!("({prms})");
    let prms_det = format!(" with parameter{}{prms}", if keys.len() > 1 { "s " } else { " " });
    let fmt = |p: String| if keys.is_empty() { " without parameters".to_string() } else { p };
    let inv_post = is_inv_post(req);
    let single_object = req.prefs.single_object;
    let only_single = single_object
        || (inv_post && matches!(req.content_type, MediaType::TextPlain | MediaType::TextXml | MediaType::OctetStream));
    let message = format!(
        "Could not find the function {func}{} in the schema cache",
        if only_single { String::new() } else { fmt(prms_msg) }
    );
    let searched = if single_object {
        " with a single json/jsonb parameter".to_string()
    } else if inv_post {
        match req.content_type {
            MediaType::TextPlain => " with a single unnamed text parameter".to_string(),
            MediaType::TextXml => " with a single unnamed xml parameter".to_string(),
            MediaType::OctetStream => " with a single unnamed bytea parameter".to_string(),
            MediaType::Json => format!("{} or with a single unnamed json/jsonb parameter", fmt(prms_det)),
            _ => fmt(prms_det),
        }
    } else {
        fmt(prms_det)
    };
    let details = format!("Searched for the function {func}{searched}, but no matches were found in the schema cache.");
    let hint = if only_single {
        None
    } else if overloads.is_empty() {
        closest(name, cache.routine_names_in(&req.schema))
            .map(|n| format!("Perhaps you meant to call the function {}.{n}", req.schema))
    } else {
        let as_text = |names: Vec<&str>| {
            let mut names = names;
            names.sort_unstable();
            format!("({})", names.join(", "))
        };
        let given = as_text(keys.clone());
        let candidates: Vec<String> =
            overloads.iter().map(|r| as_text(r.params.iter().map(|p| p.name.as_str()).collect())).collect();
        closest(&given, candidates.iter().map(String::as_str))
            .map(|c| format!("Perhaps you meant to call the function {}.{name}{c}", req.schema))
    };
    ApiError::full(404, "PGRST202", message, Some(Value::String(details)), hint.map(Value::String))
}

/// `/rpc/f?v=1&v=2`: arguments as a JSON object; repeated values of a
/// variadic parameter become an array, others keep the last value.
fn json_rpc_params(routine: &Routine, pairs: &[(String, String)]) -> String {
    let mut obj = Map::new();
    for (k, v) in pairs {
        let variadic = routine.params.iter().any(|p| p.variadic && &p.name == k);
        if variadic {
            match obj.get_mut(k) {
                Some(Value::Array(items)) => items.push(Value::String(v.clone())),
                _ => {
                    obj.insert(k.clone(), Value::Array(vec![Value::String(v.clone())]));
                }
            }
        } else {
            obj.insert(k.clone(), Value::String(v.clone()));
        }
    }
    Value::Object(obj).to_string()
}

/// Whether the call runs in a read-only transaction: GET/HEAD always, POST
/// for STABLE and IMMUTABLE functions.
pub fn read_only(req: &ApiRequest, routine: &Routine) -> bool {
    match req.action {
        Action::RoutineCall { read: Some(_) } => true,
        _ => routine.volatility != Volatility::Volatile,
    }
}

/// The SQL of the call itself: rows `pgrst_call` (a `pgrst_scalar` column
/// for scalar results), the source of the read that follows.
pub fn call_sql(sql: &mut Sql, req: &ApiRequest, routine: &Routine) -> String {
    let func = qualified(&routine.schema, &routine.name);
    let scalar = routine.returns_scalar() || routine.returns_setof_scalar();
    let call_it = |argument: String| -> String {
        if scalar {
            format!("(SELECT {func}({argument}) pgrst_scalar) pgrst_call")
        } else {
            format!("{func}({argument}) pgrst_call")
        }
    };
    let returned = if scalar { "pgrst_call.pgrst_scalar" } else { "pgrst_call.*" };

    // The arguments' JSON (or raw body for a single unnamed parameter).
    let args_json = || -> Option<String> {
        match (&req.action, &req.payload) {
            (Action::RoutineCall { read: Some(_) }, _) => Some(json_rpc_params(routine, &req.query.rpc_params)),
            (_, Some(Payload::UrlEncoded(pairs))) => Some(json_rpc_params(routine, pairs)),
            (_, Some(Payload::Json { raw, .. })) => Some(raw.clone()),
            (_, Some(Payload::Raw(bytes))) => Some(String::from_utf8_lossy(bytes).into_owned()),
            (_, None) => Some("{}".to_string()),
        }
    };

    let one_positional = match routine.params.as_slice() {
        [p] => req.prefs.single_object || p.name.is_empty(),
        _ => false,
    };
    if one_positional {
        let p = &routine.params[0];
        let placeholder = match (&req.payload, p.type_name.as_str(), &req.action) {
            (Some(Payload::Raw(bytes)), "bytea", Action::RoutineCall { read: None }) => sql.bytes(bytes.clone()),
            _ => {
                let v = args_json().unwrap_or_default();
                format!("{}::{}", sql.value(&v), p.type_name)
            }
        };
        return format!("SELECT {returned} FROM {}", call_it(placeholder));
    }

    let keys = argument_keys(req);
    let specified: Vec<_> = routine.params.iter().filter(|p| keys.contains(&p.name)).collect();
    if specified.is_empty() {
        return format!("SELECT {returned} FROM {}", call_it(String::new()));
    }
    let body = args_json().unwrap_or_else(|| "{}".into());
    let is_array = body.trim_start().starts_with('[');
    let placeholder = sql.value(&body);
    let names: Vec<String> = specified.iter().map(|p| ident(&p.name)).collect();
    let typed: Vec<String> = specified.iter().map(|p| format!("{} {}", ident(&p.name), p.type_name)).collect();
    let args: Vec<String> = specified
        .iter()
        .map(|p| format!("{}{} := pgrst_body.{}", if p.variadic { "VARIADIC " } else { "" }, ident(&p.name), ident(&p.name)))
        .collect();
    let records = if is_array { "json_to_recordset" } else { "json_to_record" };
    format!(
        "SELECT {returned} FROM (SELECT {placeholder}::json AS json_data) pgrst_payload, \
         LATERAL (SELECT {} FROM {records}(pgrst_payload.json_data) AS _({}) LIMIT 1) pgrst_body, \
         LATERAL {}",
        names.join(", "),
        typed.join(", "),
        call_it(args.join(", "))
    )
}
