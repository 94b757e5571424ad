//! The values requests carry, each a newtype that cannot be built invalid:
//! a [`Cost`] is never 0, an [`IdempotencyKey`] is never longer than the SQL
//! accepts, a [`ResultUrl`] is an http(s) URL. The bounds are the SQL's
//! (`creditgate.limits()`), stated here once for Rust and JS.

use crate::error::CreditError;
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// The largest single charge or grant: the SQL's `cost_credits_max()`, so
/// that no two of them can overflow an `integer`.
pub const CREDITS_MAX: u32 = 1_000_000_000;
/// The largest rate limit per window: the SQL's `rate_limit_max()`.
pub const RATE_LIMIT_MAX: u32 = 1_000_000;
/// Operation names are short labels (`"image_generation"`); longer ones are
/// rejected: the SQL's limit, and an index bound.
pub const OPERATION_CHARS_MAX: usize = 64;
/// Keys longer than 255 chars are rejected: Stripe's limit, and an index bound.
pub const IDEMPOTENCY_KEY_CHARS_MAX: usize = 255;
/// A rate-limit key (`"user:<uuid>:generate"`) shares the idempotency key's bound.
pub const LIMIT_KEY_CHARS_MAX: usize = 255;
/// Reasons are for people reading the ledger, not for documents.
pub const REASON_CHARS_MAX: usize = 500;
/// A result URL is a URL: 2048 chars is the de facto limit browsers share.
pub const RESULT_URL_CHARS_MAX: usize = 2048;
/// Metadata is copied into the job and the ledger row: at most 4096 bytes
/// as PostgreSQL prints the jsonb (the SQL's `metadata_bytes_max()`).
pub const METADATA_BYTES_MAX: usize = 4096;
/// A hold lasts at most a day: past that, a job is lost, not slow.
pub const HOLD_SECONDS_MAX: u32 = 86_400;
/// A lot's category (`paid`, `promotional`, `allowance` or the caller's
/// own word) is a short lowercase label: the SQL's `lot_category_length_max()`.
pub const CATEGORY_CHARS_MAX: usize = 32;
/// A lot's priority: 0 (spent first) to 100.
pub const PRIORITY_MAX: u32 = 100;
/// A plan's name: the SQL's `plan_name_length_max()`.
pub const PLAN_CHARS_MAX: usize = 64;
/// How often a plan's allowance comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub fn parse(text: &str) -> Result<Period, CreditError> {
        match text {
            "day" => Ok(Period::Day),
            "week" => Ok(Period::Week),
            "month" => Ok(Period::Month),
            _ => Err(CreditError::invalid_argument("period", format!("period must be day, week or month, got {}", quote(text)))),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// Pages of the ledger, the jobs list and the events: this many rows unless
/// asked, at most `PAGE_MAX`.
pub const PAGE_DEFAULT: u32 = 20;
pub const PAGE_MAX: u32 = 100;
/// The most limits one call may check (`charge_credits_with_limits`).
pub const LIMITS_PER_CALL_MAX: usize = 16;
/// Rate-limit windows go from 1 s to a day (docs/design.md, "Rate limits").
pub const WINDOW_SECONDS_MAX: u32 = 86_400;
/// A token bucket refills at 0.00001 (about one a day) to 1 000 000 tokens a second.
pub const REFILL_PER_SECOND_MIN: f64 = 0.00001;
pub const REFILL_PER_SECOND_MAX: f64 = 1_000_000.0;
/// The most rows one usage read returns.
pub const USAGE_ROWS_MAX: u32 = 1000;

// -----------------------------------------------------------------------------
// Values
// -----------------------------------------------------------------------------

macro_rules! uuid_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $name(Uuid);

        impl $name {
            /// Parses a UUID in any of its textual forms; `field` names it in the error.
            pub fn parse(field: &str, text: &str) -> Result<Self, CreditError> {
                if text.is_empty() {
                    return Err(CreditError::invalid_argument(field, format!("{field} must not be empty")));
                }
                Uuid::try_parse(text).map($name).map_err(|_| {
                    CreditError::invalid_argument(field, format!("{field} must be a UUID, got {}", quote(text)))
                })
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Serialize for $name {
            /// As its text: what JS and PostgREST carry.
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.collect_str(self)
            }
        }

        impl std::fmt::Display for $name {
            /// The lowercase hyphenated form PostgreSQL prints.
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_newtype!(
    /// A user's id: `auth.users.id`.
    UserId
);
uuid_newtype!(
    /// A job's id, as `charge` returned it.
    JobId
);
uuid_newtype!(
    /// A lot's id, as `lots` lists it.
    LotId
);

/// What a piece of text may contain.
#[derive(Clone, Copy)]
enum TextRule {
    /// A name or key: no control characters, not blank.
    Name,
    /// Prose: anything PostgreSQL's `text` can hold (no NUL), not blank.
    Prose,
}

fn check_text(
    field: &str,
    text: &str,
    chars_max: usize,
    rule: TextRule,
) -> Result<(), CreditError> {
    if text.trim().is_empty() {
        return Err(CreditError::invalid_argument(
            field,
            format!("{field} must not be empty"),
        ));
    }
    let chars = text.chars().count();
    if chars > chars_max {
        return Err(CreditError::invalid_argument(
            field,
            format!("{field} must be at most {chars_max} characters, got {chars}"),
        )
        .with_detail("max", chars_max as u64));
    }
    let bad = match rule {
        TextRule::Name => text.chars().any(char::is_control),
        TextRule::Prose => text.contains('\0'),
    };
    if bad {
        return Err(CreditError::invalid_argument(
            field,
            match rule {
                TextRule::Name => format!("{field} must not contain control characters"),
                TextRule::Prose => format!("{field} must not contain NUL characters"),
            },
        ));
    }
    Ok(())
}

macro_rules! text_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $rule:expr) => {
        text_newtype!($(#[$doc])* $name, $field, $max, $rule, |_text: &str| Ok(()));
    };
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr, $rule:expr, $extra:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// The wire name of the field, used in error messages.
            pub const FIELD: &'static str = $field;

            pub fn new(text: impl Into<String>) -> Result<Self, CreditError> {
                let text = text.into();
                check_text($field, &text, $max, $rule)?;
                let extra: fn(&str) -> Result<(), CreditError> = $extra;
                extra(&text)?;
                Ok($name(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

text_newtype!(
    /// What the credits pay for (`"image_generation"`): 1 to 64 chars, no control characters.
    Operation, "operation", OPERATION_CHARS_MAX, TextRule::Name
);
text_newtype!(
    /// A client-chosen key making a request safe to retry: 1 to 255 chars.
    ///
    /// ```
    /// use creditgate::IdempotencyKey;
    /// assert!(IdempotencyKey::new("k".repeat(255)).is_ok());
    /// assert!(IdempotencyKey::new("k".repeat(256)).is_err());
    /// ```
    IdempotencyKey, "idempotencyKey", IDEMPOTENCY_KEY_CHARS_MAX, TextRule::Name
);
text_newtype!(
    /// What a rate limit counts (`"user:<id>:generate"`): 1 to 255 chars,
    /// not starting with [`RESERVED_KEY_PREFIX`].
    ///
    /// ```
    /// use creditgate::LimitKey;
    /// assert!(LimitKey::new("ip:198.51.100.9").is_ok());
    /// assert!(LimitKey::new("creditgate:ip:198.51.100.9").is_err());
    /// ```
    LimitKey, "key", LIMIT_KEY_CHARS_MAX, TextRule::Name,
    |text: &str| {
        if text.starts_with(RESERVED_KEY_PREFIX) {
            return Err(CreditError::invalid_argument(
                "key",
                format!("keys starting with {RESERVED_KEY_PREFIX:?} are reserved for creditgate's own limits"),
            ));
        }
        Ok(())
    }
);

/// The prefix of the Edge Function's own rate-limit keys: callers' keys
/// cannot start with it (here and in SQL), so they never share a counter.
pub const RESERVED_KEY_PREFIX: &str = "creditgate:";

impl LimitKey {
    /// One of creditgate's own keys: [`RESERVED_KEY_PREFIX`] + `suffix`.
    pub fn reserved(suffix: &str) -> Result<LimitKey, CreditError> {
        let text = format!("{RESERVED_KEY_PREFIX}{suffix}");
        check_text("key", &text, LIMIT_KEY_CHARS_MAX, TextRule::Name)?;
        Ok(LimitKey(text))
    }

    /// Any key, [`RESERVED_KEY_PREFIX`] included: what the operator's tools
    /// (peek, reset, block, unblock) take, so the Edge Function's own
    /// `creditgate:user:...` and `creditgate:ip:...` keys can be reset or
    /// blocked. The SQL still refuses what it must (blocking
    /// `creditgate:check:` keys).
    ///
    /// ```
    /// use creditgate::LimitKey;
    /// assert!(LimitKey::any("creditgate:ip:198.51.100.9").is_ok());
    /// assert!(LimitKey::any("").is_err());
    /// ```
    pub fn any(text: impl Into<String>) -> Result<LimitKey, CreditError> {
        let text = text.into();
        check_text("key", &text, LIMIT_KEY_CHARS_MAX, TextRule::Name)?;
        Ok(LimitKey(text))
    }
}
text_newtype!(
    /// What kind of credits a lot holds: `paid`, `promotional`,
    /// `allowance`, or a word of the caller's (1 to 32 chars, a lowercase
    /// letter then lowercase letters, digits, `_` or `-`).
    ///
    /// ```
    /// use creditgate::Category;
    /// assert!(Category::new("promo-2026").is_ok());
    /// assert!(Category::new("Paid").is_err());
    /// ```
    Category, "category", CATEGORY_CHARS_MAX, TextRule::Name,
    |text: &str| {
        let mut chars = text.chars();
        let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
        if !(first_ok && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')) {
            return Err(CreditError::invalid_argument(
                "category",
                "category must start with a lowercase letter and hold only lowercase letters, digits, _ and -",
            ));
        }
        Ok(())
    }
);
text_newtype!(
    /// A plan's name (`"pro"`): 1 to 64 chars.
    PlanName, "plan", PLAN_CHARS_MAX, TextRule::Name
);
text_newtype!(
    /// An instant, as ISO 8601 / RFC 3339 with a date, a time and an offset
    /// (`2026-12-31T23:59:59Z`, `2026-12-31T23:59:59.5+01:00`).
    ///
    /// ```
    /// use creditgate::Timestamp;
    /// assert!(Timestamp::new("2026-12-31T23:59:59Z").is_ok());
    /// assert!(Timestamp::new("next tuesday").is_err());
    /// ```
    Timestamp, "timestamp", 40, TextRule::Name,
    |text: &str| {
        if is_rfc3339(text) {
            Ok(())
        } else {
            Err(CreditError::invalid_argument("timestamp", format!("expected an ISO 8601 instant like 2026-12-31T23:59:59Z, got {}", quote(text))))
        }
    }
);

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, with fields in range.
fn is_rfc3339(text: &str) -> bool {
    let bytes = text.as_bytes();
    let digits = |from: usize, to: usize| -> Option<u32> {
        let part = text.get(from..to)?;
        part.bytes().all(|b| b.is_ascii_digit()).then(|| part.parse().ok())?
    };
    let date_time = bytes.len() >= 20
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && matches!(bytes[10], b'T' | b't' | b' ')
        && bytes[13] == b':'
        && bytes[16] == b':';
    if !date_time {
        return false;
    }
    let (Some(year), Some(month), Some(day), Some(hour), Some(minute), Some(second)) =
        (digits(0, 4), digits(5, 7), digits(8, 10), digits(11, 13), digits(14, 16), digits(17, 19))
    else {
        return false;
    };
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix('.') {
        let length = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if length == 0 || length > 9 {
            return false;
        }
        rest = &fraction[length..];
    }
    let offset_ok = match rest {
        "Z" | "z" => true,
        _ => {
            rest.len() == 6
                && matches!(rest.as_bytes()[0], b'+' | b'-')
                && rest.as_bytes()[3] == b':'
                && digits(text.len() - 5, text.len() - 3).is_some_and(|h| h <= 23)
                && digits(text.len() - 2, text.len()).is_some_and(|m| m <= 59)
        }
    };
    offset_ok && (1..=9999).contains(&year) && (1..=12).contains(&month) && (1..=31).contains(&day)
        && hour <= 23 && minute <= 59 && second <= 60
}

text_newtype!(
    /// Why credits moved, for the ledger: 1 to 500 chars.
    Reason, "reason", REASON_CHARS_MAX, TextRule::Prose
);
text_newtype!(
    /// Where a completed job's result lives: an `http(s)` URL of 1 to 2048
    /// chars (never `javascript:` or `data:`, which a page would run).
    ///
    /// ```
    /// use creditgate::ResultUrl;
    /// assert!(ResultUrl::new("https://cdn.example/1.png").is_ok());
    /// assert!(ResultUrl::new("javascript:alert(1)").is_err());
    /// ```
    ResultUrl, "resultUrl", RESULT_URL_CHARS_MAX, TextRule::Name,
    |text: &str| {
        let scheme = text.split_once(':').map(|(scheme, _)| scheme.to_ascii_lowercase());
        let authority = text.split_once(':').is_some_and(|(_, rest)| rest.starts_with("//") && rest.len() > 2);
        if !(matches!(scheme.as_deref(), Some("http" | "https")) && authority) {
            return Err(CreditError::invalid_argument("resultUrl", "resultUrl must be an http(s) URL"));
        }
        Ok(())
    }
);

pub(crate) fn check_int(field: &str, value: i64, min: u32, max: u32) -> Result<u32, CreditError> {
    if value < i64::from(min) || value > i64::from(max) {
        return Err(CreditError::invalid_argument(
            field,
            format!("{field} must be an integer from {min} to {max}, got {value}"),
        )
        .with_detail("min", min)
        .with_detail("max", max));
    }
    // In range, so it fits.
    Ok(value as u32)
}

macro_rules! int_newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal, $min:expr, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(u32);

        impl $name {
            pub const FIELD: &'static str = $field;
            pub const MIN: u32 = $min;
            pub const MAX: u32 = $max;

            pub fn new(value: i64) -> Result<Self, CreditError> {
                check_int($field, value, $min, $max).map($name)
            }

            pub fn get(self) -> u32 {
                self.0
            }
        }
    };
}

int_newtype!(
    /// Credits a charge holds: 1 to 1000000000. Zero and negative costs are
    /// rejected: a negative cost would mint credits.
    ///
    /// ```
    /// use creditgate::Cost;
    /// assert!(Cost::new(0).is_err());
    /// assert_eq!(Cost::new(1).map(Cost::get), Ok(1));
    /// assert!(Cost::new(1_000_000_000).is_ok());
    /// assert!(Cost::new(1_000_000_001).is_err());
    /// ```
    Cost, "cost", 1, CREDITS_MAX
);
int_newtype!(
    /// Credits a grant adds: 1 to 1000000000.
    Amount, "amount", 1, CREDITS_MAX
);
int_newtype!(
    /// What a completed job really cost: 0 up to the hold (the SQL checks the hold).
    ActualCost, "actualCost", 0, CREDITS_MAX
);
int_newtype!(
    /// How long a charge's hold lasts before the sweeper refunds it: 1 s to a day.
    HoldSeconds, "holdSeconds", 1, HOLD_SECONDS_MAX
);
int_newtype!(
    /// A lot's priority: 0 to 100, lower is spent first.
    Priority, "priority", 0, PRIORITY_MAX
);
int_newtype!(
    /// How much of a plan period's expiring allowance carries into the next: 0 to 1000000000.
    RolloverMax, "rolloverMax", 0, CREDITS_MAX
);
int_newtype!(
    /// How much a rate limit allows per window: 1 to 1000000.
    Limit, "limit", 1, RATE_LIMIT_MAX
);
int_newtype!(
    /// A rate-limit window: 1 s to a day.
    WindowSeconds, "windowSeconds", 1, WINDOW_SECONDS_MAX
);
int_newtype!(
    /// How much one request weighs against a limit: at least 1 (and at most
    /// the limit, checked by [`LimitRequest`]).
    Weight, "weight", 1, RATE_LIMIT_MAX
);
int_newtype!(
    /// The units (tokens) a completed job really used, 0 to 1000000: the
    /// unit limits its charge reserved an estimate in are corrected to it.
    ActualUnits, "actualUnits", 0, RATE_LIMIT_MAX
);
int_newtype!(
    /// A concurrency limit: at most this many open holds (paid requests
    /// running) per user, 1 to 1000.
    Concurrency, "concurrency", 1, 1000
);

/// A small JSON object stored with a job or ledger row.
#[derive(Debug, Clone, PartialEq)]
pub struct Metadata(Map<String, Value>);

impl Metadata {
    pub const FIELD: &'static str = "metadata";

    pub fn new(value: Value) -> Result<Self, CreditError> {
        let Value::Object(map) = value else {
            return Err(CreditError::invalid_argument(
                Self::FIELD,
                format!("metadata must be a JSON object, got {}", type_name(&value)),
            ));
        };
        let bytes = jsonb_text_bytes(&Value::Object(map.clone()));
        if bytes > METADATA_BYTES_MAX {
            return Err(CreditError::invalid_argument(
                Self::FIELD,
                format!("metadata must be at most {METADATA_BYTES_MAX} bytes of JSON, got {bytes}"),
            )
            .with_detail("max", METADATA_BYTES_MAX as u64));
        }
        if contains_nul(&Value::Object(map.clone())) {
            return Err(CreditError::invalid_argument(
                Self::FIELD,
                "metadata must not contain NUL characters (PostgreSQL's jsonb cannot hold them)",
            ));
        }
        Ok(Metadata(map))
    }

    pub fn as_map(&self) -> &Map<String, Value> {
        &self.0
    }
}

/// The length of `value` as PostgreSQL prints a jsonb (`{"a": 1, "b": [1, 2]}`:
/// a space after every `:` and `,`), which is what the SQL's bound measures.
/// Number formatting may differ by a few bytes; the SQL has the last word.
pub fn jsonb_text_bytes(value: &Value) -> usize {
    let separators = |count: usize| count.saturating_sub(1) * 2;
    match value {
        Value::Array(items) => {
            2 + items.iter().map(jsonb_text_bytes).sum::<usize>() + separators(items.len())
        }
        Value::Object(map) => {
            2 + map
                .iter()
                .map(|(key, item)| json_string_bytes(key) + 2 + jsonb_text_bytes(item))
                .sum::<usize>()
                + separators(map.len())
        }
        Value::String(text) => json_string_bytes(text),
        other => other.to_string().len(),
    }
}

fn json_string_bytes(text: &str) -> usize {
    serde_json::to_string(text)
        .map(|quoted| quoted.len())
        .unwrap_or(usize::MAX / 4)
}

fn contains_nul(value: &Value) -> bool {
    match value {
        Value::String(text) => text.contains('\0'),
        Value::Array(items) => items.iter().any(contains_nul),
        Value::Object(map) => map
            .iter()
            .any(|(key, item)| key.contains('\0') || contains_nul(item)),
        _ => false,
    }
}

pub(crate) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(crate) fn describe(value: &Value) -> String {
    let text = value.to_string();
    if text.chars().count() > 40 {
        format!("{}…", text.chars().take(40).collect::<String>())
    } else {
        text
    }
}

/// Quotes user text for a message, cut short and with controls escaped.
pub(crate) fn quote(text: &str) -> String {
    let short: String = text.chars().take(60).collect();
    let mut out = format!("{short:?}");
    if short.len() < text.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The migrations, concatenated: where the SQL states each limit once,
    /// as `creditgate.<name>() ... AS $$ SELECT <n> $$`.
    fn migrations() -> String {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/supabase/migrations");
        let mut files: Vec<_> = std::fs::read_dir(dir).expect("the migrations").flatten().map(|entry| entry.path()).collect();
        files.sort();
        files.iter().map(|path| std::fs::read_to_string(path).expect("readable")).collect()
    }

    fn sql_limit(sql: &str, name: &str) -> u64 {
        let start = sql.find(&format!("FUNCTION creditgate.{name}()")).unwrap_or_else(|| panic!("creditgate.{name}() is defined"));
        let body = &sql[start..];
        let open = body.find("$$").expect("a body") + 2;
        let close = open + body[open..].find("$$").expect("its end");
        let text = body[open..close].trim();
        let number = text.strip_prefix("SELECT").unwrap_or_else(|| panic!("{name}: {text}")).trim();
        number.trim_end_matches(|c: char| !c.is_ascii_digit()).parse().unwrap_or_else(|_| panic!("{name}: {text}"))
    }

    /// Every bound Rust checks before a request is sent is the one the SQL
    /// enforces, and the TypeScript types say the same numbers.
    #[test]
    fn the_rust_limits_are_the_sql_limits() {
        let sql = migrations();
        let pairs: [(&str, u64); 11] = [
            ("cost_credits_max", u64::from(CREDITS_MAX)),
            ("idempotency_key_length_max", IDEMPOTENCY_KEY_CHARS_MAX as u64),
            ("operation_type_length_max", OPERATION_CHARS_MAX as u64),
            ("metadata_bytes_max", METADATA_BYTES_MAX as u64),
            ("reason_length_max", REASON_CHARS_MAX as u64),
            ("result_url_length_max", RESULT_URL_CHARS_MAX as u64),
            ("hold_seconds_max", u64::from(HOLD_SECONDS_MAX)),
            ("rate_limit_max", u64::from(RATE_LIMIT_MAX)),
            ("window_seconds_max", u64::from(WINDOW_SECONDS_MAX)),
            ("rate_limit_key_length_max", LIMIT_KEY_CHARS_MAX as u64),
            ("rate_limits_per_call_max", LIMITS_PER_CALL_MAX as u64),
        ];
        for (name, rust) in pairs {
            assert_eq!(sql_limit(&sql, name), rust, "creditgate.{name}() and the Rust constant");
        }
        let typescript = include_str!("js_client.rs");
        for phrase in [
            format!("from 1 to {CREDITS_MAX}"),
            format!("1 to {OPERATION_CHARS_MAX} chars"),
            format!("1 to {IDEMPOTENCY_KEY_CHARS_MAX} chars"),
            format!("at most {METADATA_BYTES_MAX} bytes"),
            format!("1 to {HOLD_SECONDS_MAX}"),
            format!("at most {RESULT_URL_CHARS_MAX} chars"),
            format!("1 to {REASON_CHARS_MAX} chars"),
            format!("1 to {LIMIT_KEY_CHARS_MAX} chars"),
            format!("1 to {RATE_LIMIT_MAX}"),
            format!("1 to {WINDOW_SECONDS_MAX} seconds"),
        ] {
            assert!(typescript.contains(&phrase), "the TypeScript types say {phrase:?}");
        }
    }
}
