//! Request bodies and query strings, parsed strictly.
//!
//! A body is JSON object text of at most [`BODY_BYTES_MAX`] bytes; unknown
//! fields, wrong types, out-of-range numbers and malformed UUIDs are each a
//! 400 `invalid_argument` naming the field, before anything is sent to the
//! database (so nothing changes). Values are the crate's validated types.

use super::error::{cut, ApiError};
use super::http::{ApiRequest, BODY_BYTES_MAX, HEADER_CHARS_MAX};
use crate::{CompleteRequest, GrantRequest, IdempotencyKey, JobId, Metadata, Operation, Reason, Weight, PAGE_DEFAULT, PAGE_MAX};
use serde_json::{Map, Value};

/// Prompts are instructions for a generator, not documents.
pub const PROMPT_CHARS_MAX: usize = 4000;
/// `metadata.creditgate` is the API's own record on the job (the route, the
/// prompt's digest); a client may not write it.
pub const RESERVED_METADATA_KEY: &str = "creditgate";

/// The body as a JSON object. An empty body is `{}` when `empty_ok`.
pub fn body_object(request: &ApiRequest, empty_ok: bool) -> Result<Map<String, Value>, ApiError> {
    if request.body.len() > BODY_BYTES_MAX {
        return Err(ApiError::payload_too_large(BODY_BYTES_MAX));
    }
    if request.body.iter().all(u8::is_ascii_whitespace) {
        return if empty_ok {
            Ok(Map::new())
        } else {
            Err(ApiError::invalid("body", "the request needs a JSON object body"))
        };
    }
    let value: Value = serde_json::from_slice(&request.body)
        .map_err(|error| ApiError::invalid("body", format!("the body is not valid JSON: {error}")))?;
    match value {
        Value::Object(map) => Ok(map),
        other => Err(ApiError::invalid("body", format!("the body must be a JSON object, got {}", crate::values::type_name(&other)))),
    }
}

/// Refuses fields outside `known`, naming the first unknown one.
fn only(map: &Map<String, Value>, known: &[&str]) -> Result<(), ApiError> {
    match map.keys().find(|key| !known.contains(&key.as_str())) {
        None => Ok(()),
        Some(unknown) => Err(ApiError::invalid(
            &cut(unknown, 64),
            format!("unknown field {:?}; this route takes {}", cut(unknown, 64), known.join(", ")),
        )),
    }
}

/// A present, non-null field.
fn field<'m>(map: &'m Map<String, Value>, name: &str) -> Option<&'m Value> {
    map.get(name).filter(|value| !value.is_null())
}

fn string<'m>(map: &'m Map<String, Value>, name: &str) -> Result<Option<&'m str>, ApiError> {
    match field(map, name) {
        None => Ok(None),
        Some(Value::String(text)) => Ok(Some(text)),
        Some(other) => Err(ApiError::invalid(name, format!("{name} must be a string, got {}", crate::values::type_name(other)))),
    }
}

/// The client's metadata, with the API's own record under `creditgate`.
fn metadata(map: &Map<String, Value>, ours: Map<String, Value>) -> Result<Metadata, ApiError> {
    let mut merged = match field(map, "metadata") {
        None => Map::new(),
        Some(Value::Object(theirs)) => {
            if theirs.contains_key(RESERVED_METADATA_KEY) {
                return Err(ApiError::invalid(
                    "metadata",
                    format!("metadata.{RESERVED_METADATA_KEY} is reserved for the API's own record"),
                ));
            }
            theirs.clone()
        }
        Some(other) => {
            return Err(ApiError::invalid("metadata", format!("metadata must be a JSON object, got {}", crate::values::type_name(other))));
        }
    };
    merged.insert(RESERVED_METADATA_KEY.into(), Value::Object(ours));
    Metadata::new(Value::Object(merged)).map_err(ApiError::from)
}

/// The `Idempotency-Key` header, if any.
pub fn idempotency_key(request: &ApiRequest) -> Result<Option<IdempotencyKey>, ApiError> {
    match request.header("idempotency-key") {
        None => Ok(None),
        Some(key) if key.len() > HEADER_CHARS_MAX => Err(ApiError::invalid("Idempotency-Key", "Idempotency-Key is too long")),
        Some(key) => IdempotencyKey::new(key).map(Some).map_err(|error| {
            ApiError::invalid("Idempotency-Key", error.message().replace("idempotencyKey", "Idempotency-Key"))
        }),
    }
}

/// `POST /charge`: `{operation, metadata?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct ChargeBody {
    pub operation: Operation,
    pub metadata: Metadata,
    /// The units (tokens) estimate the unit limits reserve.
    pub units: Option<Weight>,
}

pub fn charge(request: &ApiRequest) -> Result<ChargeBody, ApiError> {
    let map = body_object(request, false)?;
    only(&map, &["operation", "metadata", "units"])?;
    let operation = string(&map, "operation")?.ok_or_else(|| ApiError::invalid("operation", "operation is required"))?;
    let mut ours = Map::new();
    ours.insert("route".into(), "charge".into());
    let units = units(&map, &mut ours)?;
    Ok(ChargeBody { operation: Operation::new(operation)?, metadata: metadata(&map, ours)?, units })
}

/// The optional `units` estimate (1 to 1000000), also recorded with the
/// job's metadata (`ours`), so a retry with another estimate is another
/// request (`idempotency_key_reused`), not a replay.
fn units(map: &Map<String, Value>, ours: &mut Map<String, Value>) -> Result<Option<Weight>, ApiError> {
    let Some(value) = map.get("units") else { return Ok(None) };
    let number = value
        .as_i64()
        .filter(|_| value.is_i64() || value.is_u64())
        .ok_or_else(|| ApiError::invalid("units", "units must be a whole number from 1 to 1000000"))?;
    let units = Weight::new(number).map_err(|_| ApiError::invalid("units", "units must be a whole number from 1 to 1000000"))?;
    ours.insert("units".into(), units.get().into());
    Ok(Some(units))
}

/// `POST /generate`: `{prompt, operation?, metadata?}`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateBody {
    pub prompt: String,
    pub operation: Operation,
    pub metadata: Metadata,
    pub units: Option<Weight>,
}

pub fn generate(request: &ApiRequest, default_operation: &str) -> Result<GenerateBody, ApiError> {
    let map = body_object(request, false)?;
    only(&map, &["prompt", "operation", "metadata", "units"])?;
    let prompt = string(&map, "prompt")?.ok_or_else(|| ApiError::invalid("prompt", "prompt is required"))?;
    let chars = prompt.chars().count();
    if prompt.trim().is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty"));
    }
    if chars > PROMPT_CHARS_MAX {
        return Err(ApiError::invalid("prompt", format!("prompt must be at most {PROMPT_CHARS_MAX} characters, got {chars}"))
            .with_detail("max", PROMPT_CHARS_MAX as u64));
    }
    if prompt.contains('\0') {
        return Err(ApiError::invalid("prompt", "prompt must not contain NUL characters"));
    }
    let operation = Operation::new(string(&map, "operation")?.unwrap_or(default_operation))?;
    // A retry with the same Idempotency-Key must be the same request: the
    // prompt's digest is part of what the database compares.
    let mut ours = Map::new();
    ours.insert("route".into(), "generate".into());
    ours.insert("promptSha256".into(), sha256_hex(prompt.as_bytes()).into());
    let units = units(&map, &mut ours)?;
    Ok(GenerateBody { prompt: prompt.to_owned(), operation, metadata: metadata(&map, ours)?, units })
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).iter().map(|byte| format!("{byte:02x}")).collect()
}

/// `POST /jobs/:id/complete`: `{resultUrl?, actualCost?}`.
pub fn complete(request: &ApiRequest, job_id: JobId) -> Result<CompleteRequest, ApiError> {
    let mut map = body_object(request, true)?;
    only(&map, &["resultUrl", "actualCost", "actualUnits"])?;
    map.insert("jobId".into(), Value::String(job_id.to_string()));
    CompleteRequest::from_json(&Value::Object(map)).map_err(ApiError::from)
}

/// `POST /jobs/:id/refund`: `{reason?}`.
pub fn refund(request: &ApiRequest) -> Result<Reason, ApiError> {
    let map = body_object(request, true)?;
    only(&map, &["reason"])?;
    Reason::new(string(&map, "reason")?.unwrap_or("refunded by the service")).map_err(ApiError::from)
}

/// `POST /grant`: `{userId, amount, reason, idempotencyKey?, metadata?}`;
/// the key may come as the `Idempotency-Key` header instead (not both, unless equal).
pub fn grant(request: &ApiRequest) -> Result<GrantRequest, ApiError> {
    let mut map = body_object(request, false)?;
    only(&map, &crate::GRANT_FIELDS)?;
    if let Some(header) = idempotency_key(request)? {
        match string(&map, "idempotencyKey")? {
            Some(body) if body != header.as_str() => {
                return Err(ApiError::invalid(
                    "idempotencyKey",
                    "the Idempotency-Key header and the body's idempotencyKey differ",
                ));
            }
            _ => {
                map.insert("idempotencyKey".into(), Value::String(header.as_str().to_owned()));
            }
        }
    }
    GrantRequest::from_json(&Value::Object(map)).map_err(ApiError::from)
}

/// The query string's parameters, refusing unknown and repeated ones.
fn query_params(query: &str, known: &[&str]) -> Result<Vec<(String, String)>, ApiError> {
    let mut params: Vec<(String, String)> = Vec::new();
    for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
        if !known.contains(&name.as_ref()) {
            let shown = cut(&name, 64);
            let takes = if known.is_empty() { "no parameters".to_owned() } else { known.join(", ") };
            return Err(ApiError::invalid(&shown, format!("unknown query parameter {shown:?}; this route takes {takes}")));
        }
        if params.iter().any(|(seen, _)| *seen == name) {
            return Err(ApiError::invalid(&name, format!("{name} is given more than once")));
        }
        params.push((name.into_owned(), value.into_owned()));
    }
    Ok(params)
}

fn whole(name: &str, text: &str, min: u64, max: u64) -> Result<u64, ApiError> {
    let out_of_range = || ApiError::invalid(name, format!("{name} must be a whole number from {min} to {max}, got {:?}", cut(text, 40)))
        .with_detail("min", min)
        .with_detail("max", max);
    if text.is_empty() || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(out_of_range());
    }
    match text.parse::<u64>() {
        Ok(value) if (min..=max).contains(&value) => Ok(value),
        _ => Err(out_of_range()),
    }
}

/// No query parameters at all.
pub fn no_query(request: &ApiRequest) -> Result<(), ApiError> {
    query_params(&request.query, &[]).map(|_| ())
}

/// `?limit` (1 to 100, default 20).
pub fn page_limit(request: &ApiRequest) -> Result<u32, ApiError> {
    let params = query_params(&request.query, &["limit"])?;
    match params.first() {
        None => Ok(PAGE_DEFAULT),
        Some((_, value)) => Ok(whole("limit", value, 1, u64::from(PAGE_MAX))? as u32),
    }
}

/// `GET /limits/usage?prefix&limit` as the JSON `limitUsage` takes:
/// `{"prefix", "limit"}` (`limit`: rows, 1 to 1000, default 100).
pub fn usage_query(request: &ApiRequest) -> Result<Value, ApiError> {
    let params = query_params(&request.query, &["prefix", "limit"])?;
    let mut query = Map::new();
    for (name, value) in params {
        let value = match name.as_str() {
            "limit" => Value::from(whole("limit", &value, 1, u64::from(crate::USAGE_ROWS_MAX))?),
            _ => Value::from(value),
        };
        query.insert(name, value);
    }
    Ok(Value::Object(query))
}

/// `GET /ledger?limit&before`: `before` is an entry id; the page holds the
/// entries with smaller ids, newest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LedgerQuery {
    pub limit: u32,
    pub before: Option<i64>,
}

/// `GET /events?after&limit`: events after an id (0: from the first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventsQuery {
    pub after: i64,
    pub limit: u32,
}

pub fn events(request: &ApiRequest) -> Result<EventsQuery, ApiError> {
    let params = query_params(&request.query, &["after", "limit"])?;
    let mut query = EventsQuery { after: 0, limit: PAGE_DEFAULT };
    for (name, value) in &params {
        match name.as_str() {
            "limit" => query.limit = whole("limit", value, 1, u64::from(PAGE_MAX))? as u32,
            _ => query.after = whole("after", value, 0, i64::MAX as u64)? as i64,
        }
    }
    Ok(query)
}

/// A service route's body, parsed by the request type's own `from_json`.
pub fn service_body<T>(request: &ApiRequest, parse: fn(&Value) -> Result<T, crate::CreditError>) -> Result<T, ApiError> {
    let map = body_object(request, false)?;
    parse(&Value::Object(map)).map_err(ApiError::from)
}

pub fn ledger(request: &ApiRequest) -> Result<LedgerQuery, ApiError> {
    let params = query_params(&request.query, &["limit", "before"])?;
    let mut query = LedgerQuery { limit: PAGE_DEFAULT, before: None };
    for (name, value) in &params {
        match name.as_str() {
            "limit" => query.limit = whole("limit", value, 1, u64::from(PAGE_MAX))? as u32,
            _ => query.before = Some(whole("before", value, 1, i64::MAX as u64)? as i64),
        }
    }
    Ok(query)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ActualCost;
    use serde_json::json;

    const USER: &str = "9b2d1c0e-8f1a-4c2b-9d3e-5f6a7b8c9d0e";
    const JOB: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

    fn post(body: &str) -> ApiRequest {
        ApiRequest::new("POST", "/credits/x").with_body(body)
    }

    fn field_of(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        let error = result.expect_err("should be refused");
        assert_eq!((error.status, error.code), (400, "invalid_argument"), "{error:?}");
        error.details["field"].as_str().unwrap_or_default().to_owned()
    }

    #[test]
    fn a_charge_body_parses_with_our_record_in_metadata() {
        let body = charge(&post(r#"{"operation": "image", "metadata": {"model": "flux"}}"#)).expect("valid");
        assert_eq!(body.operation.as_str(), "image");
        assert_eq!(Value::Object(body.metadata.as_map().clone()), json!({"model": "flux", "creditgate": {"route": "charge"}}));
    }

    #[test]
    fn malformed_bodies_are_400_naming_body() {
        for bad in ["", "   ", "{", "not json", "[1]", "\"x\"", "5", "null", "{\"operation\": \"image\"} trailing", "\u{0}"] {
            assert_eq!(field_of(charge(&post(bad))), "body", "{bad:?}");
        }
        let error = charge(&post("{")).expect_err("invalid");
        assert!(error.message.starts_with("the body is not valid JSON"), "{}", error.message);
    }

    #[test]
    fn unknown_fields_and_wrong_types_are_named() {
        assert_eq!(field_of(charge(&post(r#"{"operation": "image", "cost": 0}"#))), "cost");
        assert_eq!(field_of(charge(&post(r#"{"operation": "image", "userId": "x"}"#))), "userId");
        assert_eq!(field_of(charge(&post(r#"{"operation": 5}"#))), "operation");
        assert_eq!(field_of(charge(&post(r#"{}"#))), "operation");
        assert_eq!(field_of(charge(&post(r#"{"operation": ""}"#))), "operation");
        assert_eq!(field_of(charge(&post(r#"{"operation": "image", "metadata": [1]}"#))), "metadata");
        assert_eq!(field_of(charge(&post(r#"{"operation": "image", "metadata": {"creditgate": 1}}"#))), "metadata");
    }

    #[test]
    fn the_body_bound_is_413_exactly_past_it() {
        let padding = |total: usize| {
            let base = r#"{"operation": "image", "metadata": {"p": ""}}"#;
            let fill = "x".repeat(total - base.len());
            format!(r#"{{"operation": "image", "metadata": {{"p": "{fill}"}}}}"#)
        };
        let at_max = padding(BODY_BYTES_MAX);
        assert_eq!(at_max.len(), BODY_BYTES_MAX);
        // At the bound it is read (and then refused for metadata's own bound).
        assert_eq!(field_of(charge(&post(&at_max))), "metadata");
        let past = padding(BODY_BYTES_MAX + 1);
        let error = charge(&post(&past)).expect_err("too large");
        assert_eq!((error.status, error.code), (413, "payload_too_large"));
    }

    #[test]
    fn generate_needs_a_bounded_prompt_and_records_its_digest() {
        let body = generate(&post(r#"{"prompt": "a cat"}"#), "image").expect("valid");
        assert_eq!(body.operation.as_str(), "image");
        assert_eq!(
            body.metadata.as_map()["creditgate"]["promptSha256"],
            json!(sha256_hex(b"a cat"))
        );
        assert_eq!(body.metadata.as_map()["creditgate"]["promptSha256"].as_str().map(str::len), Some(64));
        let other = generate(&post(r#"{"prompt": "a dog"}"#), "image").expect("valid");
        assert_ne!(body.metadata, other.metadata, "a different prompt is a different request");
        let text = generate(&post(r#"{"prompt": "a cat", "operation": "text"}"#), "image").expect("valid");
        assert_eq!(text.operation.as_str(), "text");
        assert_eq!(field_of(generate(&post(r#"{}"#), "image")), "prompt");
        assert_eq!(field_of(generate(&post(r#"{"prompt": "  "}"#), "image")), "prompt");
        assert_eq!(field_of(generate(&post(r#"{"prompt": 7}"#), "image")), "prompt");
        let at_max = json!({"prompt": "p".repeat(PROMPT_CHARS_MAX)}).to_string();
        assert!(generate(&post(&at_max), "image").is_ok());
        let past = json!({"prompt": "p".repeat(PROMPT_CHARS_MAX + 1)}).to_string();
        assert_eq!(field_of(generate(&post(&past), "image")), "prompt");
    }

    #[test]
    fn sha256_matches_a_known_vector() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn complete_takes_an_optional_body() {
        let job = JobId::parse("jobId", JOB).expect("uuid");
        let units = complete(&post(r#"{"actualUnits": 0}"#), job).expect("valid");
        assert_eq!(units.actual_units.map(crate::ActualUnits::get), Some(0));
        assert_eq!(field_of(complete(&post(r#"{"actualUnits": -1}"#), job)), "actualUnits");
        assert_eq!(field_of(complete(&post(r#"{"actualUnits": 1000001}"#), job)), "actualUnits");
        let charged = charge(&post(r#"{"operation": "text", "units": 4000}"#)).expect("valid");
        assert_eq!(charged.units.map(Weight::get), Some(4000));
        for bad in [r#"{"operation": "text", "units": 0}"#, r#"{"operation": "text", "units": 1.5}"#,
                    r#"{"operation": "text", "units": "9"}"#, r#"{"operation": "text", "units": 1000001}"#] {
            assert_eq!(field_of(charge(&post(bad))), "units", "{bad}");
        }
        let bare = complete(&post(""), job).expect("valid");
        assert_eq!((bare.job_id, bare.result_url, bare.actual_cost), (job, None, None));
        let full = complete(&post(r#"{"resultUrl": "https://r/1.png", "actualCost": 3}"#), job).expect("valid");
        assert_eq!(full.actual_cost.map(ActualCost::get), Some(3));
        assert_eq!(field_of(complete(&post(r#"{"actualCost": -1}"#), job)), "actualCost");
        assert_eq!(field_of(complete(&post(r#"{"actualCost": 1e300}"#), job)), "actualCost");
        assert_eq!(field_of(complete(&post(r#"{"actualCost": 99999999999999999999999}"#), job)), "actualCost");
        assert_eq!(field_of(complete(&post(r#"{"jobId": "x"}"#), job)), "jobId");
    }

    #[test]
    fn refund_has_a_default_reason() {
        assert_eq!(refund(&post("")).expect("valid").as_str(), "refunded by the service");
        assert_eq!(refund(&post(r#"{"reason": "bad output"}"#)).expect("valid").as_str(), "bad output");
        assert_eq!(field_of(refund(&post(r#"{"reason": 1}"#))), "reason");
        assert_eq!(field_of(refund(&post(r#"{"amount": 1}"#))), "amount");
    }

    #[test]
    fn grant_takes_the_key_from_the_header_or_the_body() {
        let body = json!({"userId": USER, "amount": 50, "reason": "purchase"}).to_string();
        let from_header = grant(&post(&body).with_header("Idempotency-Key", "evt_1")).expect("valid");
        assert_eq!(from_header.idempotency_key.map(|k| k.as_str().to_owned()), Some("evt_1".to_owned()));
        let both = json!({"userId": USER, "amount": 50, "reason": "purchase", "idempotencyKey": "evt_1"}).to_string();
        assert!(grant(&post(&both).with_header("Idempotency-Key", "evt_1")).is_ok());
        assert_eq!(field_of(grant(&post(&both).with_header("Idempotency-Key", "evt_2"))), "idempotencyKey");
        assert_eq!(field_of(grant(&post(&json!({"userId": "nope", "amount": 1, "reason": "r"}).to_string()))), "userId");
        assert_eq!(field_of(grant(&post(&json!({"userId": USER, "amount": 2147483648_i64, "reason": "r"}).to_string()))), "amount");
        assert_eq!(field_of(grant(&post(&json!({"userId": USER, "amount": "5", "reason": "r"}).to_string()))), "amount");
    }

    #[test]
    fn idempotency_keys_are_bounded() {
        let request = |key: &str| ApiRequest::new("POST", "/").with_header("Idempotency-Key", key);
        assert!(idempotency_key(&request(&"k".repeat(255))).expect("valid").is_some());
        assert_eq!(field_of(idempotency_key(&request(&"k".repeat(256)))), "Idempotency-Key");
        assert_eq!(field_of(idempotency_key(&request(""))), "Idempotency-Key");
        assert_eq!(idempotency_key(&ApiRequest::new("POST", "/")).expect("absent"), None);
    }

    #[test]
    fn ledger_queries_are_strict() {
        let query = |q: &str| ledger(&ApiRequest::new("GET", &format!("/credits/ledger?{q}")));
        assert_eq!(query(""), Ok(LedgerQuery { limit: 20, before: None }));
        assert_eq!(query("limit=5&before=42"), Ok(LedgerQuery { limit: 5, before: Some(42) }));
        assert_eq!(query("limit=100"), Ok(LedgerQuery { limit: 100, before: None }));
        assert_eq!(query(&format!("before={}", i64::MAX)), Ok(LedgerQuery { limit: 20, before: Some(i64::MAX) }));
        for (bad, field) in [
            ("limit=0", "limit"),
            ("limit=101", "limit"),
            ("limit=-1", "limit"),
            ("limit=1.5", "limit"),
            ("limit=", "limit"),
            ("limit=99999999999999999999999", "limit"),
            ("before=0", "before"),
            ("before=9223372036854775808", "before"),
            ("before=abc", "before"),
            ("limit=5&limit=6", "limit"),
            ("offset=5", "offset"),
        ] {
            assert_eq!(field_of(query(bad)), field, "{bad}");
        }
    }

    #[test]
    fn other_routes_take_no_query() {
        assert!(no_query(&ApiRequest::new("GET", "/credits/balance")).is_ok());
        assert_eq!(field_of(no_query(&ApiRequest::new("GET", "/credits/balance?user=x"))), "user");
        assert_eq!(page_limit(&ApiRequest::new("GET", "/credits/jobs?limit=3")), Ok(3));
    }
}
