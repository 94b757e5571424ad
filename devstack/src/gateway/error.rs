//! PostgREST's error responses: `{code, message, details, hint}` bodies,
//! PGRSTnnn codes and the SQLSTATE -> HTTP status table of its `Error.hs`.

use serde_json::{json, Value};

/// An error response, ready to send.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    /// A custom reason phrase (from `RAISE SQLSTATE 'PGRST'`'s `status_text`).
    pub status_text: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

fn body(code: &str, message: impl Into<String>, details: Option<Value>, hint: Option<Value>) -> Value {
    json!({
        "code": code,
        "message": message.into(),
        "details": details.unwrap_or(Value::Null),
        "hint": hint.unwrap_or(Value::Null),
    })
}

fn text(v: impl Into<String>) -> Option<Value> {
    Some(Value::String(v.into()))
}

impl ApiError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> ApiError {
        ApiError { status, status_text: None, headers: Vec::new(), body: body(code, message, None, None) }
    }

    pub fn full(
        status: u16,
        code: &str,
        message: impl Into<String>,
        details: Option<Value>,
        hint: Option<Value>,
    ) -> ApiError {
        ApiError { status, status_text: None, headers: Vec::new(), body: body(code, message, details, hint) }
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> ApiError {
        self.headers.push((name.to_string(), value.into()));
        self
    }

    pub fn code(&self) -> Option<&str> {
        self.body.get("code").and_then(Value::as_str)
    }

    // --- ApiRequestError (PGRST1xx) -------------------------------------

    /// 404 with an empty object body: an unknown path (PostgREST's `NotFound`).
    pub fn not_found() -> ApiError {
        ApiError { status: 404, status_text: None, headers: Vec::new(), body: json!({}) }
    }

    /// PGRST100: a query parameter that does not parse.
    pub fn query_param(message: impl Into<String>, details: impl Into<String>) -> ApiError {
        ApiError::full(400, "PGRST100", message, text(details), None)
    }

    /// PGRST101: a method other than GET/HEAD/POST/OPTIONS on /rpc.
    pub fn invalid_rpc_method(method: &str) -> ApiError {
        ApiError::new(405, "PGRST101", format!("Cannot use the {method} method on RPC"))
    }

    /// PGRST102: an unparseable or unacceptable body.
    pub fn invalid_body(message: impl Into<String>) -> ApiError {
        ApiError::new(400, "PGRST102", message)
    }

    /// PGRST102 with 413: the body exceeds the gateway's limit (PostgREST
    /// itself has no limit; the code says "invalid body", the status why).
    pub fn body_too_large(limit: usize) -> ApiError {
        ApiError::new(413, "PGRST102", format!("Request body too large: the limit is {limit} bytes"))
    }

    /// PGRST103: an unsatisfiable range.
    pub fn invalid_range(details: Value) -> ApiError {
        ApiError::full(416, "PGRST103", "Requested range not satisfiable", Some(details), None)
    }

    /// PGRST105: PUT filters that are not exactly the primary key.
    pub fn invalid_filters() -> ApiError {
        ApiError::new(405, "PGRST105", "Filters must include all and only primary key columns with 'eq' operators")
    }

    /// PGRST106: a profile header naming a schema that is not exposed.
    pub fn unacceptable_schema(schemas: &[String]) -> ApiError {
        ApiError::new(406, "PGRST106", format!("The schema must be one of the following: {}", schemas.join(", ")))
    }

    /// PGRST107: no acceptable media type.
    pub fn media_type(mimes: &[String]) -> ApiError {
        ApiError::new(406, "PGRST107", format!("None of these media types are available: {}", mimes.join(", ")))
    }

    /// PGRST108: a filter/order/limit on a resource that is not embedded.
    pub fn not_embedded(resource: &str) -> ApiError {
        ApiError::full(
            400,
            "PGRST108",
            format!("'{resource}' is not an embedded resource in this request"),
            None,
            text(format!("Verify that '{resource}' is included in the 'select' query parameter.")),
        )
    }

    /// PGRST109: limit on PATCH/DELETE without an order.
    pub fn limit_no_order() -> ApiError {
        ApiError::full(
            400,
            "PGRST109",
            "A 'limit' was applied without an explicit 'order'",
            None,
            text("Apply an 'order' using unique column(s)"),
        )
    }

    /// PGRST111: a malformed `response.headers` GUC.
    pub fn guc_headers() -> ApiError {
        ApiError::new(
            500,
            "PGRST111",
            "response.headers guc must be a JSON array composed of objects with a single key and a string value",
        )
    }

    /// PGRST112: a malformed `response.status` GUC.
    pub fn guc_status() -> ApiError {
        ApiError::new(500, "PGRST112", "response.status guc must be a valid status code")
    }

    /// PGRST114: limit/offset on PUT.
    pub fn put_limit() -> ApiError {
        ApiError::new(400, "PGRST114", "limit/offset querystring parameters are not allowed for PUT")
    }

    /// PGRST115: PUT payload primary key differs from the URL's.
    pub fn put_matching_pk() -> ApiError {
        ApiError::new(400, "PGRST115", "Payload values do not match URL in primary key column(s)")
    }

    /// PGRST116: `application/vnd.pgrst.object+json` and not exactly one row.
    pub fn singularity(rows: i64) -> ApiError {
        ApiError::full(
            406,
            "PGRST116",
            "JSON object requested, multiple (or no) rows returned",
            text(format!("The result contains {rows} rows")),
            None,
        )
    }

    /// PGRST117: an HTTP method PostgREST does not serve.
    pub fn unsupported_method(method: &str) -> ApiError {
        ApiError::new(405, "PGRST117", format!("Unsupported HTTP method: {method}"))
    }

    /// PGRST121: `RAISE SQLSTATE 'PGRST'` with unparseable JSON.
    pub fn pgrst_parse(details: String, message_side: bool) -> ApiError {
        let hint = if message_side {
            "MESSAGE must be a JSON object with obligatory keys: 'code', 'message' and optional keys: 'details', 'hint'."
        } else {
            "DETAIL must be a JSON object with obligatory keys: 'status', 'headers' and optional key: 'status_text'."
        };
        ApiError::full(
            500,
            "PGRST121",
            "Could not parse JSON in the \"RAISE SQLSTATE 'PGRST'\" error",
            text(details),
            text(hint),
        )
    }

    /// PGRST122: unknown preferences with `Prefer: handling=strict`.
    pub fn invalid_preferences(prefs: &[String]) -> ApiError {
        ApiError::full(
            400,
            "PGRST122",
            "Invalid preferences given with handling=strict",
            text(format!("Invalid preferences: {}", prefs.join(", "))),
            None,
        )
    }

    /// PGRST123: aggregates are disabled (PostgREST's default).
    pub fn aggregates_not_allowed() -> ApiError {
        ApiError::new(400, "PGRST123", "Use of aggregate functions is not allowed")
    }

    // --- SchemaCacheError (PGRST2xx) ------------------------------------

    /// PGRST200: embedding (not supported by this gateway: no relationship
    /// is ever found, which is what PostgREST answers for an unknown one).
    pub fn no_relationship(parent: &str, child: &str, schema: &str) -> ApiError {
        ApiError::full(
            400,
            "PGRST200",
            format!("Could not find a relationship between '{parent}' and '{child}' in the schema cache"),
            text(format!(
                "Searched for a foreign key relationship between '{parent}' and '{child}' in the schema '{schema}', but no matches were found."
            )),
            None,
        )
    }

    /// PGRST204: a payload column the table does not have.
    pub fn column_not_found(relation: &str, column: &str) -> ApiError {
        ApiError::new(400, "PGRST204", format!("Could not find the '{column}' column of '{relation}' in the schema cache"))
    }

    // --- Connection / auth ----------------------------------------------

    /// PGRST000: the database cannot be reached.
    pub fn connection(details: String) -> ApiError {
        ApiError::full(503, "PGRST000", "Database connection error. Retrying the connection.", text(details), None)
    }

    /// PGRST001: the connection broke during the request.
    pub fn client(details: String) -> ApiError {
        ApiError::full(503, "PGRST001", "Database client error. Retrying the connection.", text(details), None)
    }

    /// PGRST002: no schema cache yet.
    pub fn no_schema_cache() -> ApiError {
        ApiError::new(503, "PGRST002", "Could not query the database for the schema cache. Retrying.")
    }

    /// PGRST003: the pool had no free connection in time.
    pub fn acquisition_timeout() -> ApiError {
        ApiError::new(504, "PGRST003", "Timed out acquiring connection from connection pool.")
    }

    /// PGRST300: a token was sent but no secret is configured.
    pub fn jwt_secret_missing() -> ApiError {
        ApiError::new(500, "PGRST300", "Server lacks JWT secret")
    }

    /// PGRST301: an invalid token, with PostgREST's `WWW-Authenticate`.
    pub fn jwt_invalid(message: &str) -> ApiError {
        ApiError::new(401, "PGRST301", message).with_header(
            "WWW-Authenticate",
            format!("Bearer error=\"invalid_token\", error_description={}", haskell_show(message)),
        )
    }

    /// PGRST302: no token and no anonymous role.
    pub fn jwt_required() -> ApiError {
        ApiError::new(401, "PGRST302", "Anonymous access is disabled").with_header("WWW-Authenticate", "Bearer")
    }

    /// An error raised by PostgreSQL, mapped as PostgREST's `pgErrorStatus`.
    pub fn from_db(db: &tokio_postgres::error::DbError, authenticated: bool) -> ApiError {
        let code = db.code().code();
        let message = db.message();
        if code == "PGRST" {
            return raise_pgrst(message, db.detail());
        }
        let status = pg_error_status(code, message, authenticated);
        let mut err = ApiError {
            status,
            status_text: None,
            headers: Vec::new(),
            body: json!({
                "code": code,
                "message": message,
                "details": db.detail(),
                "hint": db.hint(),
            }),
        };
        if status == 401 {
            err.headers.push(("WWW-Authenticate".into(), "Bearer".into()));
        }
        err
    }

    /// Any error from the database client: a server error is mapped by its
    /// SQLSTATE, anything else means the connection is unusable.
    pub fn from_pg(e: &tokio_postgres::Error, authenticated: bool) -> ApiError {
        match e.as_db_error() {
            Some(db) => ApiError::from_db(db, authenticated),
            None => ApiError::client(e.to_string()),
        }
    }
}

/// PostgREST's SQLSTATE -> HTTP status table (`Error.hs`, `pgErrorStatus`).
pub fn pg_error_status(code: &str, message: &str, authenticated: bool) -> u16 {
    let starts = |p: &str| code.starts_with(p);
    match code {
        _ if starts("08") => 503,
        _ if starts("09") => 500,
        _ if starts("0L") => 403,
        _ if starts("0P") => 403,
        "23503" => 409,
        "23505" => 409,
        "25006" => 405,
        "21000" => {
            if message.ends_with("requires a WHERE clause") {
                400
            } else {
                500
            }
        }
        _ if starts("25") => 500,
        _ if starts("28") => 403,
        _ if starts("2D") => 500,
        _ if starts("38") => 500,
        _ if starts("39") => 500,
        _ if starts("3B") => 500,
        _ if starts("40") => 500,
        "53400" => 500,
        _ if starts("53") => 503,
        _ if starts("54") => 500,
        _ if starts("55") => 500,
        "57P01" => 503,
        _ if starts("57") => 500,
        _ if starts("58") => 500,
        _ if starts("F0") => 500,
        _ if starts("HV") => 500,
        "P0001" => 400,
        _ if starts("P0") => 500,
        _ if starts("XX") => 500,
        "42883" => {
            if message.starts_with("function xmlagg(") {
                406
            } else {
                404
            }
        }
        "42P01" => 404,
        "42P17" => 500,
        "42501" => {
            if authenticated {
                403
            } else {
                401
            }
        }
        _ if starts("PT") => code[2..].parse::<u16>().ok().filter(|s| (100..=999).contains(s)).unwrap_or(500),
        _ => 400,
    }
}

/// `RAISE SQLSTATE 'PGRST' USING MESSAGE = '{json}', DETAIL = '{json}'`:
/// full control of the response, as PostgREST allows.
fn raise_pgrst(message: &str, detail: Option<&str>) -> ApiError {
    let Ok(Value::Object(msg)) = serde_json::from_str::<Value>(message) else {
        return ApiError::pgrst_parse(format!("Invalid JSON value for MESSAGE: '{message}'"), true);
    };
    let (Some(code), Some(text_message)) = (msg.get("code"), msg.get("message").and_then(Value::as_str)) else {
        return ApiError::pgrst_parse(format!("Invalid JSON value for MESSAGE: '{message}'"), true);
    };
    let Some(detail) = detail else {
        return ApiError::pgrst_parse("DETAIL is missing in the RAISE statement".into(), false);
    };
    let parsed = match serde_json::from_str::<Value>(detail) {
        Ok(Value::Object(d)) => {
            let status = d.get("status").and_then(Value::as_u64).filter(|s| (100..=999).contains(s));
            let headers = d.get("headers").and_then(Value::as_object);
            match (status, headers) {
                (Some(s), Some(h)) => Some((s as u16, d.get("status_text").cloned(), h.clone())),
                _ => None,
            }
        }
        _ => None,
    };
    let Some((status, status_text, headers)) = parsed else {
        return ApiError::pgrst_parse(format!("Invalid JSON value for DETAIL: '{detail}'"), false);
    };
    let as_text = |v: Option<&Value>| match v {
        Some(Value::String(s)) => Value::String(s.clone()),
        _ => Value::Null,
    };
    let code_text = match code {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    ApiError {
        status,
        status_text: status_text.and_then(|v| v.as_str().map(String::from)),
        headers: headers
            .iter()
            .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
            .collect(),
        body: json!({
            "code": code_text,
            "message": text_message,
            "details": as_text(msg.get("details")),
            "hint": as_text(msg.get("hint")),
        }),
    }
}

/// Haskell's `show` of a Text (PostgREST puts it in `WWW-Authenticate`).
pub fn haskell_show(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => out.push_str(&format!("\\{}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_matches_postgrest() {
        assert_eq!(pg_error_status("PT402", "", true), 402);
        assert_eq!(pg_error_status("PT40A", "", true), 500);
        assert_eq!(pg_error_status("P0001", "", true), 400);
        assert_eq!(pg_error_status("P0004", "", true), 500);
        assert_eq!(pg_error_status("23505", "", true), 409);
        assert_eq!(pg_error_status("23503", "", true), 409);
        assert_eq!(pg_error_status("23502", "", true), 400);
        assert_eq!(pg_error_status("42501", "", false), 401);
        assert_eq!(pg_error_status("42501", "", true), 403);
        assert_eq!(pg_error_status("42883", "", true), 404);
        assert_eq!(pg_error_status("42P01", "", true), 404);
        assert_eq!(pg_error_status("57014", "", true), 500);
        assert_eq!(pg_error_status("57P01", "", true), 503);
        assert_eq!(pg_error_status("25006", "", true), 405);
        assert_eq!(pg_error_status("22012", "", true), 400);
        assert_eq!(pg_error_status("53400", "", true), 500);
        assert_eq!(pg_error_status("53300", "", true), 503);
        assert_eq!(pg_error_status("21000", "UPDATE requires a WHERE clause", true), 400);
        assert_eq!(pg_error_status("21000", "more than one row", true), 500);
    }

    #[test]
    fn raise_pgrst_gives_full_control() {
        let e = raise_pgrst(
            r#"{"code":"123","message":"ABC","details":"DEF","hint":"XYZ"}"#,
            Some(r#"{"status":332,"status_text":"My Custom Status","headers":{"X-Header":"str"}}"#),
        );
        assert_eq!(e.status, 332);
        assert_eq!(e.status_text.as_deref(), Some("My Custom Status"));
        assert_eq!(e.headers, vec![("X-Header".to_string(), "str".to_string())]);
        assert_eq!(e.body["details"], "DEF");
        let bad = raise_pgrst("INVALID", Some("{}"));
        assert_eq!(bad.code(), Some("PGRST121"));
        assert_eq!(raise_pgrst(r#"{"code":"1","message":"m"}"#, None).body["details"], "DETAIL is missing in the RAISE statement");
    }

    #[test]
    fn shows_like_haskell() {
        assert_eq!(haskell_show("JWT expired"), "\"JWT expired\"");
        assert_eq!(haskell_show("a\"b"), "\"a\\\"b\"");
    }
}
