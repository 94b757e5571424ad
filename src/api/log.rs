//! One structured JSON log line per request.
//!
//! What is logged: method, route template (`/jobs/:id`, never the id in the
//! path), status, error code, the user and job ids, whether a charge was a
//! replay, a generation's failure cause, and the duration. What is never
//! logged: tokens, keys, request bodies (prompts, metadata), IP addresses.

use serde_json::{json, Map, Value};

/// What the handler learned about a request while answering it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    pub route: &'static str,
    pub code: Option<&'static str>,
    pub user: Option<String>,
    pub job: Option<String>,
    pub replayed: Option<bool>,
    pub cause: Option<String>,
    /// A paid request without a usable client address: the IP limit was
    /// skipped (the address itself is never logged).
    pub ip_limit_skipped: bool,
}

impl Trace {
    /// The log line: `{"level":"info","msg":"credits request",...}`.
    pub fn line(&self, method: &str, status: u16, duration_ms: f64) -> String {
        let level = match status {
            500.. => "error",
            400.. => "warn",
            _ => "info",
        };
        let mut line = Map::new();
        line.insert("level".into(), level.into());
        line.insert("msg".into(), "credits request".into());
        // The method is echoed from the request: keep it short and plain.
        let method: String = method.chars().filter(char::is_ascii_alphabetic).take(10).collect();
        line.insert("method".into(), method.into());
        line.insert("route".into(), if self.route.is_empty() { "unmatched" } else { self.route }.into());
        line.insert("status".into(), status.into());
        let optional = [
            ("code", self.code.map(Value::from)),
            ("user", self.user.clone().map(Value::from)),
            ("job", self.job.clone().map(Value::from)),
            ("replayed", self.replayed.map(Value::from)),
            ("cause", self.cause.clone().map(Value::from)),
            ("ipLimit", self.ip_limit_skipped.then(|| Value::from("skipped: no client address"))),
        ];
        for (name, value) in optional {
            if let Some(value) = value {
                line.insert(name.into(), value);
            }
        }
        line.insert("durationMs".into(), json!((duration_ms.max(0.0) * 10.0).round() / 10.0));
        Value::Object(line).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_is_one_json_object_with_what_was_learned() {
        let trace = Trace {
            route: "/generate",
            code: Some("upstream"),
            user: Some("u1".into()),
            job: Some("j1".into()),
            replayed: Some(false),
            cause: Some("generator_timeout".into()),
            ip_limit_skipped: false,
        };
        let line = trace.line("POST", 502, 12.345);
        assert!(!line.contains('\n'));
        let value: Value = serde_json::from_str(&line).expect("json");
        assert_eq!(
            value,
            json!({"level": "error", "msg": "credits request", "method": "POST", "route": "/generate", "status": 502,
                   "code": "upstream", "user": "u1", "job": "j1", "replayed": false, "cause": "generator_timeout",
                   "durationMs": 12.3})
        );
    }

    #[test]
    fn levels_follow_the_status_and_absent_fields_are_left_out() {
        let trace = Trace::default();
        let ok: Value = serde_json::from_str(&trace.line("GET", 200, 1.0)).expect("json");
        assert_eq!(ok["level"], "info");
        assert_eq!(ok["route"], "unmatched");
        assert!(ok.get("user").is_none() && ok.get("code").is_none());
        let warn: Value = serde_json::from_str(&trace.line("GET", 429, 1.0)).expect("json");
        assert_eq!(warn["level"], "warn");
        let odd: Value = serde_json::from_str(&trace.line("G\"E\nT", 404, -5.0)).expect("json");
        assert_eq!(odd["method"], "GET");
        assert_eq!(odd["durationMs"], 0.0);
    }
}
