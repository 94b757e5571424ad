//! From an HTTP request to what it asks for (PostgREST's `ApiRequest.hs`):
//! the resource and action, the schema (profiles), the query string, the
//! range, the preferences, the media types and the payload.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::config::Config;
use super::error::ApiError;
use super::params::{self, QueryParams};
use super::sql::Range;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resource {
    Root,
    Relation(String),
    Routine(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    Create,
    Update,
    SingleUpsert,
    Delete,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    RelationRead { headers_only: bool },
    RelationMut(Mutation),
    RelationInfo,
    /// `read`: GET/HEAD (`Some(headers_only)`) or POST (`None`).
    RoutineCall { read: Option<bool> },
    RoutineInfo,
    SchemaRead { headers_only: bool },
    SchemaInfo,
}

impl Action {
    pub fn is_rpc_read(&self) -> bool {
        matches!(self, Action::RoutineCall { read: Some(_) })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaType {
    Json,
    ArrayJsonStrip,
    Singular { strip_nulls: bool },
    Csv,
    TextPlain,
    TextXml,
    OctetStream,
    UrlEncoded,
    OpenApi,
    GeoJson,
    Any,
    Other(String),
}

impl MediaType {
    pub fn parse(raw: &str) -> MediaType {
        let mut parts = raw.split(';');
        let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
        let params: Vec<(String, String)> = parts
            .filter_map(|p| p.split_once('='))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().trim_matches('"').to_string()))
            .collect();
        let stripped = params.iter().any(|(k, v)| k == "nulls" && v == "stripped");
        match essence.as_str() {
            "application/json" => MediaType::Json,
            "application/geo+json" => MediaType::GeoJson,
            "text/csv" => MediaType::Csv,
            "text/plain" => MediaType::TextPlain,
            "text/xml" => MediaType::TextXml,
            "application/openapi+json" => MediaType::OpenApi,
            "application/x-www-form-urlencoded" => MediaType::UrlEncoded,
            "application/octet-stream" => MediaType::OctetStream,
            "application/vnd.pgrst.object+json" | "application/vnd.pgrst.object" => {
                MediaType::Singular { strip_nulls: stripped }
            }
            "application/vnd.pgrst.array+json" | "application/vnd.pgrst.array" => {
                if stripped {
                    MediaType::ArrayJsonStrip
                } else {
                    MediaType::Json
                }
            }
            "*/*" => MediaType::Any,
            _ => MediaType::Other(raw.trim().to_string()),
        }
    }

    pub fn mime(&self) -> String {
        match self {
            MediaType::Json => "application/json".into(),
            MediaType::ArrayJsonStrip => "application/vnd.pgrst.array+json;nulls=stripped".into(),
            MediaType::Singular { strip_nulls: true } => "application/vnd.pgrst.object+json;nulls=stripped".into(),
            MediaType::Singular { strip_nulls: false } => "application/vnd.pgrst.object+json".into(),
            MediaType::Csv => "text/csv".into(),
            MediaType::TextPlain => "text/plain".into(),
            MediaType::TextXml => "text/xml".into(),
            MediaType::OctetStream => "application/octet-stream".into(),
            MediaType::UrlEncoded => "application/x-www-form-urlencoded".into(),
            MediaType::OpenApi => "application/openapi+json".into(),
            MediaType::GeoJson => "application/geo+json".into(),
            MediaType::Any => "*/*".into(),
            MediaType::Other(s) => s.clone(),
        }
    }

    /// The `Content-Type` of a response in this media type.
    pub fn content_type(&self) -> String {
        match self {
            MediaType::OctetStream | MediaType::Other(_) => self.mime(),
            _ => format!("{}; charset=utf-8", self.mime()),
        }
    }
}

/// `Accept`, most preferred first (by `q`, stable).
pub fn parse_accept(header: Option<&str>) -> Vec<MediaType> {
    let Some(header) = header else { return vec![MediaType::Any] };
    let mut entries: Vec<(f32, usize, MediaType)> = header
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
        .map(|(i, e)| {
            let mut q = 1.0f32;
            let mut kept = Vec::new();
            for (n, part) in e.split(';').enumerate() {
                let part = part.trim();
                if n > 0 {
                    if let Some(v) = part.strip_prefix("q=") {
                        q = v.parse().unwrap_or(1.0);
                        continue;
                    }
                }
                kept.push(part);
            }
            (q, i, MediaType::parse(&kept.join(";")))
        })
        .collect();
    entries.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap_or(std::cmp::Ordering::Equal).then(a.1.cmp(&b.1)));
    if entries.is_empty() {
        return vec![MediaType::Any];
    }
    entries.into_iter().map(|(_, _, m)| m).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Representation {
    Full,
    HeadersOnly,
    Minimal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Exact,
    Planned,
    Estimated,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolution {
    MergeDuplicates,
    IgnoreDuplicates,
}

/// The `Prefer` header(s).
#[derive(Debug, Clone, Default)]
pub struct Preferences {
    pub resolution: Option<Resolution>,
    pub representation: Option<Representation>,
    pub single_object: bool,
    pub count: Option<Count>,
    pub missing_default: Option<bool>,
    pub handling_strict: Option<bool>,
    pub invalid: Vec<String>,
}

impl Preferences {
    pub fn parse<'a>(values: impl Iterator<Item = &'a str>) -> Preferences {
        let mut p = Preferences::default();
        for pref in values.flat_map(|v| v.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
            // The first value of each kind wins, as in PostgREST.
            match pref {
                "resolution=merge-duplicates" => {
                    p.resolution.get_or_insert(Resolution::MergeDuplicates);
                }
                "resolution=ignore-duplicates" => {
                    p.resolution.get_or_insert(Resolution::IgnoreDuplicates);
                }
                "return=representation" => {
                    p.representation.get_or_insert(Representation::Full);
                }
                "return=minimal" => {
                    p.representation.get_or_insert(Representation::Minimal);
                }
                "return=headers-only" => {
                    p.representation.get_or_insert(Representation::HeadersOnly);
                }
                "params=single-object" => p.single_object = true,
                "count=exact" => {
                    p.count.get_or_insert(Count::Exact);
                }
                "count=planned" => {
                    p.count.get_or_insert(Count::Planned);
                }
                "count=estimated" => {
                    p.count.get_or_insert(Count::Estimated);
                }
                "missing=default" => {
                    p.missing_default.get_or_insert(true);
                }
                "missing=null" => {
                    p.missing_default.get_or_insert(false);
                }
                "handling=strict" => {
                    p.handling_strict.get_or_insert(true);
                }
                "handling=lenient" => {
                    p.handling_strict.get_or_insert(false);
                }
                // Accepted but not applied: transactions always commit
                // (PostgREST's default `db-tx-end = commit`).
                "tx=commit" | "tx=rollback" => {}
                other if other.starts_with("max-affected=") => {}
                other => p.invalid.push(other.to_string()),
            }
        }
        p
    }

    /// Counting is done for `exact`, and for `planned`/`estimated` too (this
    /// gateway has no planner estimate; it counts exactly).
    pub fn should_count(&self) -> bool {
        self.count.is_some()
    }

    fn count_value(&self) -> Option<&'static str> {
        self.count.map(|c| match c {
            Count::Exact => "count=exact",
            Count::Planned => "count=planned",
            Count::Estimated => "count=estimated",
        })
    }

    fn handling_value(&self) -> Option<&'static str> {
        self.handling_strict.map(|s| if s { "handling=strict" } else { "handling=lenient" })
    }

    /// `Preference-Applied` for a read or a call (count, handling, params).
    pub fn applied_read(&self, with_params: bool) -> Option<String> {
        let mut v: Vec<&str> = Vec::new();
        if with_params && self.single_object {
            v.push("params=single-object");
        }
        v.extend(self.count_value());
        v.extend(self.handling_value());
        (!v.is_empty()).then(|| v.join(", "))
    }

    /// `Preference-Applied` for a write.
    pub fn applied_write(&self, resolution_applies: bool) -> Option<String> {
        let mut v: Vec<&str> = Vec::new();
        if resolution_applies {
            v.extend(self.resolution.map(|r| match r {
                Resolution::MergeDuplicates => "resolution=merge-duplicates",
                Resolution::IgnoreDuplicates => "resolution=ignore-duplicates",
            }));
        }
        v.extend(self.missing_default.map(|m| if m { "missing=default" } else { "missing=null" }));
        v.extend(self.representation.map(|r| match r {
            Representation::Full => "return=representation",
            Representation::Minimal => "return=minimal",
            Representation::HeadersOnly => "return=headers-only",
        }));
        v.extend(self.count_value());
        v.extend(self.handling_value());
        (!v.is_empty()).then(|| v.join(", "))
    }
}

/// The request body, parsed as its `Content-Type` says.
#[derive(Debug, Clone)]
pub enum Payload {
    /// A JSON object or array of objects (`raw` as sent), and its keys.
    Json { raw: String, keys: BTreeSet<String>, is_array: bool },
    /// `application/x-www-form-urlencoded` pairs.
    UrlEncoded(Vec<(String, String)>),
    /// `text/plain`, `text/xml` or `application/octet-stream` for a function
    /// with a single unnamed parameter.
    Raw(Vec<u8>),
}

/// Everything the planner needs from one HTTP request.
#[derive(Debug, Clone)]
pub struct ApiRequest {
    pub method: String,
    pub path: String,
    pub resource: Resource,
    pub action: Action,
    pub schema: String,
    pub negotiated_by_profile: bool,
    pub query: QueryParams,
    pub range: Range,
    pub range_requested: bool,
    pub prefs: Preferences,
    pub payload: Option<Payload>,
    /// Keys of the payload (or `?columns=`), sorted.
    pub columns: BTreeSet<String>,
    pub accept: Vec<MediaType>,
    pub content_type: MediaType,
    /// `request.headers`: lowercased names (cookies excluded).
    pub headers_json: String,
    /// `request.cookies`
    pub cookies_json: String,
}

/// The parts of an HTTP request the gateway reads.
pub struct RawRequest<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub headers: &'a [(String, String)],
    pub body: &'a [u8],
}

impl RawRequest<'_> {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn headers_named<'b>(&'b self, name: &'b str) -> impl Iterator<Item = &'b str> + 'b {
        self.headers.iter().filter(move |(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

pub fn resource_of(path: &str) -> Result<Resource, ApiError> {
    let segments: Vec<String> = path
        .split('/')
        .skip(1)
        .map(|s| params::percent_decode(s, false))
        .collect();
    match segments.as_slice() {
        [] => Ok(Resource::Root),
        [only] if only.is_empty() => Ok(Resource::Root),
        [table] => Ok(Resource::Relation(table.clone())),
        [rpc, name] if rpc == "rpc" => Ok(Resource::Routine(name.clone())),
        _ => Err(ApiError::not_found()),
    }
}

fn action_of(resource: &Resource, method: &str) -> Result<Action, ApiError> {
    Ok(match (resource, method) {
        (Resource::Routine(_), "HEAD") => Action::RoutineCall { read: Some(true) },
        (Resource::Routine(_), "GET") => Action::RoutineCall { read: Some(false) },
        (Resource::Routine(_), "POST") => Action::RoutineCall { read: None },
        (Resource::Routine(_), "OPTIONS") => Action::RoutineInfo,
        (Resource::Routine(_), m) => return Err(ApiError::invalid_rpc_method(m)),
        (Resource::Relation(_), "HEAD") => Action::RelationRead { headers_only: true },
        (Resource::Relation(_), "GET") => Action::RelationRead { headers_only: false },
        (Resource::Relation(_), "POST") => Action::RelationMut(Mutation::Create),
        (Resource::Relation(_), "PUT") => Action::RelationMut(Mutation::SingleUpsert),
        (Resource::Relation(_), "PATCH") => Action::RelationMut(Mutation::Update),
        (Resource::Relation(_), "DELETE") => Action::RelationMut(Mutation::Delete),
        (Resource::Relation(_), "OPTIONS") => Action::RelationInfo,
        (Resource::Root, "HEAD") => Action::SchemaRead { headers_only: true },
        (Resource::Root, "GET") => Action::SchemaRead { headers_only: false },
        (Resource::Root, "OPTIONS") => Action::SchemaInfo,
        (_, m) => return Err(ApiError::unsupported_method(m)),
    })
}

fn schema_of(config: &Config, raw: &RawRequest) -> Result<(String, bool), ApiError> {
    let header = match raw.method {
        "DELETE" | "PATCH" | "POST" | "PUT" => "Content-Profile",
        _ => "Accept-Profile",
    };
    match raw.header(header) {
        Some(p) if config.db_schemas.iter().any(|s| s == p) => Ok((p.to_string(), true)),
        Some(_) => Err(ApiError::unacceptable_schema(&config.db_schemas)),
        None => Ok((
            config.db_schemas.first().cloned().unwrap_or_else(|| "public".into()),
            config.db_schemas.len() != 1,
        )),
    }
}

/// `Range: 0-9` (GET only), intersected with `limit`/`offset`.
fn range_of(raw: &RawRequest, qp: &QueryParams, action: Action) -> Result<(Range, bool), ApiError> {
    let header = if raw.method == "GET" { raw.header("Range").and_then(parse_range_header) } else { None };
    if let Some((lower, Some(upper))) = header {
        if upper < lower {
            return Err(ApiError::invalid_range(Value::String(
                "The lower boundary must be lower than or equal to the upper boundary in the Range header.".into(),
            )));
        }
    }
    let negative_limit =
        || ApiError::invalid_range(Value::String("Limit should be greater than or equal to zero.".into()));
    let offset = qp.offset.unwrap_or(0).max(0);
    if let Some(l) = qp.limit {
        if l < 0 {
            return Err(negative_limit());
        }
    }
    let limit_upper = qp.limit.map(|l| offset.saturating_add(l).saturating_sub(1));
    let (h_lower, h_upper) = header.unwrap_or((0, None));
    let lower = h_lower.max(offset);
    let upper = match (h_upper, limit_upper) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let limit_zero = qp.limit == Some(0);
    if let Some(u) = upper {
        if u < lower && !limit_zero {
            return Err(negative_limit());
        }
    }
    let requested = header.is_some() || qp.limit.is_some() || qp.offset.is_some();
    match action {
        Action::RelationMut(Mutation::Update) | Action::RelationMut(Mutation::Delete)
            if (qp.limit.is_some() || qp.offset.is_some()) && qp.order.is_empty() =>
        {
            return Err(ApiError::limit_no_order())
        }
        Action::RelationMut(Mutation::SingleUpsert) if qp.limit.is_some() || qp.offset.is_some() => {
            return Err(ApiError::put_limit())
        }
        _ => {}
    }
    let range = if limit_zero {
        Range { offset: lower, limit: Some(0) }
    } else {
        Range { offset: lower, limit: upper.map(|u| u.saturating_sub(lower).saturating_add(1)) }
    };
    Ok((range, requested))
}

fn parse_range_header(v: &str) -> Option<(i64, Option<i64>)> {
    let (l, u) = v.trim().split_once('-')?;
    if l.is_empty() || !l.bytes().all(|b| b.is_ascii_digit()) || !u.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let lower = l.parse().ok()?;
    let upper = if u.is_empty() { None } else { Some(u.parse().ok()?) };
    Some((lower, upper))
}

fn payload_of(
    raw: &RawRequest,
    action: Action,
    content_type: &MediaType,
    qp: &QueryParams,
) -> Result<(Option<Payload>, BTreeSet<String>), ApiError> {
    let parse = match action {
        Action::RelationMut(Mutation::Delete) => false,
        Action::RelationMut(_) => true,
        Action::RoutineCall { read: None } => true,
        _ => false,
    };
    if !parse {
        return Ok((None, BTreeSet::new()));
    }
    let is_proc = matches!(action, Action::RoutineCall { .. });
    let columns_param = match action {
        Action::RelationMut(Mutation::Create) | Action::RelationMut(Mutation::Update) | Action::RoutineCall { .. } => {
            qp.columns.clone()
        }
        _ => None,
    };
    let payload = match content_type {
        MediaType::Json => {
            let text = std::str::from_utf8(raw.body).map_err(|_| ApiError::invalid_body("Empty or invalid json"))?;
            if let Some(cols) = &columns_param {
                let is_array = text.trim_start().starts_with('[');
                let keys: BTreeSet<String> = cols.iter().cloned().collect();
                return Ok((Some(Payload::Json { raw: text.to_string(), keys: keys.clone(), is_array }), keys));
            }
            let value: Value = if text.is_empty() && is_proc {
                Value::Object(Map::new())
            } else {
                serde_json::from_str(text).map_err(|_| ApiError::invalid_body("Empty or invalid json"))?
            };
            json_payload(text, &value).ok_or_else(|| ApiError::invalid_body("All object keys must match"))?
        }
        MediaType::UrlEncoded => {
            let text = String::from_utf8_lossy(raw.body);
            let pairs: Vec<(String, String)> = params::split_query(&text)
                .into_iter()
                .map(|(k, v)| (k, v.unwrap_or_default()))
                .collect();
            if is_proc {
                Payload::UrlEncoded(pairs)
            } else {
                let mut obj = Map::new();
                for (k, v) in &pairs {
                    obj.insert(k.clone(), Value::String(v.clone()));
                }
                let raw_json = Value::Object(obj).to_string();
                Payload::Json { raw: raw_json, keys: pairs.into_iter().map(|(k, _)| k).collect(), is_array: false }
            }
        }
        MediaType::TextPlain | MediaType::TextXml | MediaType::OctetStream if is_proc => Payload::Raw(raw.body.to_vec()),
        other => return Err(ApiError::invalid_body(format!("Content-Type not acceptable: {}", other.mime()))),
    };
    let keys = match &payload {
        Payload::Json { keys, .. } => keys.clone(),
        Payload::UrlEncoded(pairs) => pairs.iter().map(|(k, _)| k.clone()).collect(),
        Payload::Raw(_) => BTreeSet::new(),
    };
    Ok((Some(payload), keys))
}

/// PostgREST's `payloadAttributes`: an object, or an array of objects with
/// the same keys; anything else is treated as an empty array.
fn json_payload(raw: &str, value: &Value) -> Option<Payload> {
    match value {
        Value::Object(o) => Some(Payload::Json { raw: raw.to_string(), keys: o.keys().cloned().collect(), is_array: false }),
        Value::Array(items) => match items.first() {
            None => Some(Payload::Json { raw: "[]".into(), keys: BTreeSet::new(), is_array: true }),
            Some(Value::Object(first)) => {
                let keys: BTreeSet<String> = first.keys().cloned().collect();
                let uniform = items.iter().all(|i| match i {
                    Value::Object(o) => o.len() == keys.len() && o.keys().all(|k| keys.contains(k)),
                    _ => false,
                });
                uniform.then(|| Payload::Json { raw: raw.to_string(), keys, is_array: true })
            }
            Some(_) => None,
        },
        _ => Some(Payload::Json { raw: "[]".into(), keys: BTreeSet::new(), is_array: true }),
    }
}

fn cookies_of(raw: &RawRequest) -> String {
    let mut map = Map::new();
    for header in raw.headers_named("cookie") {
        for pair in header.split(';') {
            let pair = pair.trim();
            if pair.is_empty() {
                continue;
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            map.insert(k.trim().to_string(), Value::String(v.trim().to_string()));
        }
    }
    Value::Object(map).to_string()
}

fn headers_of(raw: &RawRequest) -> String {
    let mut map = Map::new();
    for (k, v) in raw.headers {
        let k = k.to_ascii_lowercase();
        if k == "cookie" {
            continue;
        }
        map.insert(k, Value::String(v.clone()));
    }
    Value::Object(map).to_string()
}

impl ApiRequest {
    /// Interprets `raw` as PostgREST's `userApiRequest` does, in its order:
    /// resource, schema, action, query string, range, payload.
    pub fn build(config: &Config, raw: &RawRequest) -> Result<ApiRequest, ApiError> {
        let resource = resource_of(raw.path)?;
        let (schema, negotiated_by_profile) = schema_of(config, raw)?;
        let action = action_of(&resource, raw.method)?;
        let name = match &resource {
            Resource::Relation(n) | Resource::Routine(n) => n.clone(),
            Resource::Root => String::new(),
        };
        let query = params::parse(raw.query, action.is_rpc_read(), &name, &schema)?;
        let (range, range_requested) = range_of(raw, &query, action)?;
        let content_type = raw.header("Content-Type").map(MediaType::parse).unwrap_or(MediaType::Json);
        let (payload, columns) = payload_of(raw, action, &content_type, &query)?;
        let prefs = Preferences::parse(raw.headers_named("Prefer"));
        if prefs.handling_strict == Some(true) && !prefs.invalid.is_empty() {
            return Err(ApiError::invalid_preferences(&prefs.invalid));
        }
        Ok(ApiRequest {
            method: raw.method.to_string(),
            path: raw.path.to_string(),
            resource,
            action,
            schema,
            negotiated_by_profile,
            query,
            range,
            range_requested,
            prefs,
            payload,
            columns,
            accept: parse_accept(raw.header("Accept")),
            content_type,
            headers_json: headers_of(raw),
            cookies_json: cookies_of(raw),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw<'a>(method: &'a str, path: &'a str, query: &'a str, headers: &'a [(String, String)], body: &'a [u8]) -> RawRequest<'a> {
        RawRequest { method, path, query, headers, body }
    }

    #[test]
    fn routes_like_postgrest() {
        assert_eq!(resource_of("/").unwrap(), Resource::Root);
        assert_eq!(resource_of("/items").unwrap(), Resource::Relation("items".into()));
        assert_eq!(resource_of("/rpc/f").unwrap(), Resource::Routine("f".into()));
        assert_eq!(resource_of("/a/b/c").unwrap_err().status, 404);
        assert_eq!(action_of(&Resource::Routine("f".into()), "DELETE").unwrap_err().code(), Some("PGRST101"));
        assert_eq!(action_of(&Resource::Root, "TRACE").unwrap_err().code(), Some("PGRST117"));
    }

    #[test]
    fn sorts_accept_by_quality() {
        let a = parse_accept(Some("text/csv;q=0.5, application/vnd.pgrst.object+json"));
        assert_eq!(a[0], MediaType::Singular { strip_nulls: false });
        assert_eq!(a[1], MediaType::Csv);
    }

    #[test]
    fn computes_ranges() {
        let config = Config::new("postgresql://");
        let h = vec![("Range".to_string(), "1-1".to_string())];
        let r = ApiRequest::build(&config, &raw("GET", "/t", "limit=5&offset=0", &h, b"")).unwrap();
        assert_eq!(r.range, Range { offset: 1, limit: Some(1) });
        let e = ApiRequest::build(&config, &raw("GET", "/t", "limit=-1", &[], b"")).unwrap_err();
        assert_eq!(e.status, 416);
        let h = vec![("Range".to_string(), "5-2".to_string())];
        assert_eq!(ApiRequest::build(&config, &raw("GET", "/t", "", &h, b"")).unwrap_err().code(), Some("PGRST103"));
    }

    #[test]
    fn checks_json_payloads() {
        let config = Config::new("postgresql://");
        let e = ApiRequest::build(&config, &raw("POST", "/rpc/f", "", &[], b"{oops")).unwrap_err();
        assert_eq!((e.status, e.code()), (400, Some("PGRST102")));
        let e = ApiRequest::build(&config, &raw("POST", "/t", "", &[], br#"[{"a":1},{"b":2}]"#)).unwrap_err();
        assert_eq!(e.body["message"], "All object keys must match");
        let ok = ApiRequest::build(&config, &raw("POST", "/rpc/f", "", &[], b"")).unwrap();
        assert!(ok.columns.is_empty());
    }
}
