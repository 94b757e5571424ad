//! The API's configuration, read once from the function's environment.
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `SUPABASE_URL`, `SUPABASE_SERVICE_ROLE_KEY` | (set by Supabase) | where the RPCs go, and the key they use |
//! | `SUPABASE_SECRET_KEYS` | (set by Supabase) | JSON `{name: key}`: these `sb_secret_` keys are the service role too |
//! | `CREDITGATE_JWT_SECRET` (or `SUPABASE_JWT_SECRET`, `JWT_SECRET`) | unset | verify callers' HS256 JWTs here; unset: trust the runtime's `verify_jwt` (see `auth.rs`) |
//! | `CREDITGATE_PRICES` | `{"image":10,"text":1}` | credits per operation, the only prices there are |
//! | `CREDITGATE_USER_LIMIT` | `5/60` | paid requests per user: `<limit>/<window seconds>`, several comma-separated (`5/60,100/86400`), or `off` |
//! | `CREDITGATE_IP_LIMIT` | `30/60` | paid requests per client IP, the same way |
//! | `CREDITGATE_OPERATION_LIMITS` | `{}` | per operation and user: JSON `{"image": "5/60,50/86400"}` |
//! | `CREDITGATE_HOLD_SECONDS` | `900` | how long a `/charge` hold lasts before the sweeper refunds it |
//! | `GENERATOR_URL` | unset (`/generate` answers 502) | the AI provider `/generate` calls |
//! | `CREDITGATE_GENERATOR_KEY` | unset | sent to the generator as `Authorization: Bearer` |
//! | `CREDITGATE_GENERATOR_TIMEOUT_MS` | `20000` | after this, the generation counts as failed and is refunded |
//! | `CREDITGATE_WEBHOOK_URL` | unset (`/webhooks/deliver` answers 502) | where balance events are POSTed (`webhooks.rs`) |
//! | `CREDITGATE_WEBHOOK_SECRET` | (required with the URL) | signs them: `Creditgate-Signature: t=...,v1=...` |
//! | `CREDITGATE_WEBHOOK_TIMEOUT_MS` | `5000` | an answer later than this is a failed attempt (retried) |
//!
//! A malformed value is an error at start-up (the function does not serve
//! with a configuration nobody meant), naming the variable.

use crate::error::CreditError;
use crate::config::Config;
use super::keys::{parse_jwks, PublicKey};
use crate::{Concurrency, Cost, HoldSeconds, Limit, Operation, WindowSeconds, LIMITS_PER_CALL_MAX};
use serde_json::Value;
use std::collections::BTreeMap;

/// The price list used when `CREDITGATE_PRICES` is not set.
pub const DEFAULT_PRICES: [(&str, u32); 2] = [("image", 10), ("text", 1)];
/// The operation `/generate` pays for when the body names none.
pub const DEFAULT_GENERATE_OPERATION: &str = "image";
pub const DEFAULT_USER_LIMIT: &str = "5/60";
pub const DEFAULT_IP_LIMIT: &str = "30/60";
pub const DEFAULT_GENERATOR_TIMEOUT_MS: u32 = 20_000;
/// A generator that takes over two minutes is down, not slow; and a
/// timeout under 100 ms would fail every generation.
pub const GENERATOR_TIMEOUT_MS_MIN: u32 = 100;
pub const GENERATOR_TIMEOUT_MS_MAX: u32 = 120_000;
pub const DEFAULT_WEBHOOK_TIMEOUT_MS: u32 = 5_000;
pub const WEBHOOK_TIMEOUT_MS_MIN: u32 = 100;
pub const WEBHOOK_TIMEOUT_MS_MAX: u32 = 30_000;
/// A webhook secret shorter than this is guessable.
pub const WEBHOOK_SECRET_BYTES_MIN: usize = 16;
/// A `/generate` hold outlives the generator's timeout by this much, so a
/// hold whose refund could not be made (the database went away) is expired
/// by the sweeper soon after, never while the generation may still finish.
pub const GENERATE_HOLD_MARGIN_SECONDS: u32 = 60;
/// Price lists are short: one entry per kind of paid work.
pub const PRICES_MAX: usize = 100;
/// HS256 secrets shorter than this are guessable; Supabase requires 32.
pub const JWT_SECRET_BYTES_MIN: usize = 32;
/// Where a Supabase project publishes its signing keys, under `SUPABASE_URL`.
pub const JWKS_PATH: &str = "/auth/v1/.well-known/jwks.json";
/// The client is the hop the last proxy appended: Supabase's edge, in front
/// of every function, appends the address it saw (see the README).
pub const DEFAULT_TRUSTED_PROXY_HOPS: u8 = 1;
pub const TRUSTED_PROXY_HOPS_MAX: i64 = 10;

/// A rate limit: `limit` requests per `window_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitPolicy {
    pub limit: Limit,
    pub window_seconds: WindowSeconds,
}

impl LimitPolicy {
    /// Parses `<limit>/<window seconds>` (`5/60`); `off` is `None`.
    ///
    /// ```
    /// use creditgate::api::LimitPolicy;
    /// let policy = LimitPolicy::parse("X", "10/3600").unwrap().unwrap();
    /// assert_eq!((policy.limit.get(), policy.window_seconds.get()), (10, 3600));
    /// assert_eq!(LimitPolicy::parse("X", "off").unwrap(), None);
    /// assert!(LimitPolicy::parse("X", "10 per minute").is_err());
    /// ```
    pub fn parse(variable: &str, text: &str) -> Result<Option<LimitPolicy>, CreditError> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        let bad = |why: String| invalid(variable, format!("{variable} must be <limit>/<window seconds> (like 5/60) or off: {why}"));
        let (limit, window) = text.split_once('/').ok_or_else(|| bad(format!("got {text:?}")))?;
        let number = |part: &str| -> Result<i64, CreditError> {
            let part = part.trim();
            if part.is_empty() || part.len() > 10 || !part.bytes().all(|byte| byte.is_ascii_digit()) {
                return Err(bad(format!("{part:?} is not a whole number")));
            }
            part.parse::<i64>().map_err(|_| bad(format!("{part:?} is not a whole number")))
        };
        let limit = Limit::new(number(limit)?).map_err(|error| bad(error.message().to_owned()))?;
        let window_seconds = WindowSeconds::new(number(window)?).map_err(|error| bad(error.message().to_owned()))?;
        Ok(Some(LimitPolicy { limit, window_seconds }))
    }
}

impl LimitPolicy {
    /// Parses one or more comma-separated `<limit>/<window seconds>`
    /// (`5/60,100/86400`), or `off` (none). Two limits with the same window
    /// are refused: one of them could never matter, and their RateLimit
    /// policy names would be the same.
    ///
    /// ```
    /// use creditgate::api::LimitPolicy;
    /// let both = LimitPolicy::parse_list("X", "5/60, 100/86400").unwrap();
    /// assert_eq!(both.iter().map(|p| p.window_seconds.get()).collect::<Vec<_>>(), [60, 86400]);
    /// assert!(LimitPolicy::parse_list("X", "off").unwrap().is_empty());
    /// assert!(LimitPolicy::parse_list("X", "5/60,10/60").is_err());
    /// ```
    pub fn parse_list(variable: &str, text: &str) -> Result<Vec<LimitPolicy>, CreditError> {
        if text.trim().eq_ignore_ascii_case("off") {
            return Ok(Vec::new());
        }
        let mut policies: Vec<LimitPolicy> = Vec::new();
        for part in text.split(',') {
            let policy = LimitPolicy::parse(variable, part)?
                .ok_or_else(|| invalid(variable, format!("{variable}: off cannot be one of several limits")))?;
            if policies.iter().any(|known| known.window_seconds == policy.window_seconds) {
                return Err(invalid(
                    variable,
                    format!("{variable} has two limits per {} s: give each window once", policy.window_seconds.get()),
                ));
            }
            policies.push(policy);
        }
        if policies.len() > LIMITS_PER_CALL_MAX {
            return Err(invalid(variable, format!("{variable} has more than {LIMITS_PER_CALL_MAX} limits")));
        }
        Ok(policies)
    }
}

/// What a limit of the function is per: the user, the client address, or
/// the user's requests of one operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicyKind {
    User,
    Ip,
    Operation(String),
    /// Open holds at once, per user (`CREDITGATE_USER_CONCURRENCY`, a plan's `concurrency`).
    Concurrency,
    /// Units (tokens) per window, per user (`CREDITGATE_UNIT_LIMIT`, a plan's `units`).
    Units,
}

impl PolicyKind {
    /// `details.policy` of a 429: `user`, `ip` or `operation`.
    pub fn as_str(&self) -> &'static str {
        match self {
            PolicyKind::User => "user",
            PolicyKind::Ip => "ip",
            PolicyKind::Operation(_) => "operation",
            PolicyKind::Concurrency => "concurrency",
            PolicyKind::Units => "units",
        }
    }

    /// The RateLimit policy name's base: `user`, `ip`, `op-<operation>`.
    fn base(&self) -> String {
        match self {
            PolicyKind::User | PolicyKind::Ip | PolicyKind::Concurrency | PolicyKind::Units => self.as_str().to_owned(),
            PolicyKind::Operation(operation) => format!("op-{operation}"),
        }
    }
}

/// One limit the function applies, with its RateLimit policy name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPolicy {
    pub kind: PolicyKind,
    /// Distinct among the policies of a request: the base alone when the
    /// kind has one window (`user`, as before several were possible), else
    /// the base and the window (`user-60`, `user-86400`).
    pub name: String,
    pub policy: LimitPolicy,
    /// The plan whose limit this is, when a subscribed plan's replaced the default.
    pub plan: Option<String>,
}

/// The named policies of one kind, in the configured order.
///
/// ```
/// use creditgate::api::{policy_names, LimitPolicy, PolicyKind};
/// let one = LimitPolicy::parse_list("X", "5/60").unwrap();
/// assert_eq!(policy_names(PolicyKind::User, &one)[0].name, "user");
/// let two = LimitPolicy::parse_list("X", "5/60,100/86400").unwrap();
/// let names: Vec<String> = policy_names(PolicyKind::Ip, &two).into_iter().map(|p| p.name).collect();
/// assert_eq!(names, ["ip-60", "ip-86400"]);
/// ```
pub fn policy_names(kind: PolicyKind, policies: &[LimitPolicy]) -> Vec<NamedPolicy> {
    let base = kind.base();
    policies
        .iter()
        .map(|policy| NamedPolicy {
            kind: kind.clone(),
            name: if policies.len() == 1 { base.clone() } else { format!("{base}-{}", policy.window_seconds.get()) },
            policy: *policy,
            plan: None,
        })
        .collect()
}

/// A secret from the environment: compared and used, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Where `/generate` sends its work.
#[derive(Clone, PartialEq, Eq)]
pub struct GeneratorSettings {
    pub url: String,
    pub key: Option<String>,
    pub timeout_ms: u32,
}

impl std::fmt::Debug for GeneratorSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratorSettings")
            .field("url", &self.url)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("timeout_ms", &self.timeout_ms)
            .finish()
    }
}

/// Where balance events are delivered (`webhooks.rs`).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSettings {
    pub url: String,
    pub secret: Secret,
    pub timeout_ms: u32,
}

impl std::fmt::Debug for WebhookSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookSettings").field("url", &self.url).field("timeout_ms", &self.timeout_ms).finish()
    }
}

/// Everything the API needs to know, checked once.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// The project URL and service-role key the RPCs use.
    pub config: Config,
    /// Tokens that are the service role when presented exactly (the
    /// service-role key, `sb_secret_` keys): secrets, so never printed.
    pub service_keys: ExactKeys,
    /// Tokens that are anonymous when presented exactly (the anon key,
    /// `sb_publishable_` keys).
    pub anonymous_keys: ExactKeys,
    /// The legacy HS256 JWT secret, if this project still has one.
    pub jwt_secret: Option<Secret>,
    /// `SUPABASE_JWKS`: the project's public signing keys, inline.
    pub jwks: Vec<PublicKey>,
    /// Where the JWKS is fetched from (`None`: never fetched).
    pub jwks_url: Option<String>,
    /// The `iss` every user token must carry, if set.
    pub jwt_issuer: Option<String>,
    /// Which `X-Forwarded-For` hop, counted from the right, is the client.
    pub trusted_proxy_hops: u8,
    pub prices: BTreeMap<String, Cost>,
    /// Per user (`CREDITGATE_USER_LIMIT`), per client address
    /// (`CREDITGATE_IP_LIMIT`), per operation and user
    /// (`CREDITGATE_OPERATION_LIMITS`); empty: off.
    pub user_limits: Vec<LimitPolicy>,
    pub ip_limits: Vec<LimitPolicy>,
    pub operation_limits: BTreeMap<String, Vec<LimitPolicy>>,
    /// At most this many paid requests running (open holds) per user
    /// (`CREDITGATE_USER_CONCURRENCY`); `None`: off.
    pub user_concurrency: Option<Concurrency>,
    /// Units (tokens) per window per user (`CREDITGATE_UNIT_LIMIT`); a
    /// request reserves its `units` estimate, completion corrects it.
    pub unit_limits: Vec<LimitPolicy>,
    /// `CREDITGATE_PLAN_LIMITS=on`: a subscribed plan's limits replace these
    /// defaults, resolved in the charge's transaction.
    pub plan_limits: bool,
    pub hold_seconds: HoldSeconds,
    pub generator: Option<GeneratorSettings>,
    pub webhook: Option<WebhookSettings>,
}

/// Keys that mean a caller when presented exactly.
#[derive(Clone, PartialEq, Eq)]
pub struct ExactKeys(pub Vec<String>);

impl std::fmt::Debug for ExactKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExactKeys(<{} redacted>)", self.0.len())
    }
}

fn invalid(variable: &str, message: impl Into<String>) -> CreditError {
    CreditError::invalid_argument(variable, message).with_detail("variable", variable)
}

impl Settings {
    /// Reads the settings from the function's environment variables.
    pub fn from_env(env: &BTreeMap<String, String>) -> Result<Settings, CreditError> {
        let env = Env(env);
        let service_role_key = env.required("SUPABASE_SERVICE_ROLE_KEY")?;
        let config = Config::new(env.required("SUPABASE_URL")?, service_role_key).map_err(|error| {
            let variable = if error.details()["field"] == "url" { "SUPABASE_URL" } else { "SUPABASE_SERVICE_ROLE_KEY" };
            invalid(variable, error.message())
        })?;
        let (service_keys, anonymous_keys) = env.exact_keys(service_role_key)?;
        let limits = |name: &str, default: &str| LimitPolicy::parse_list(name, env.get(name).unwrap_or(default));
        let prices = match env.get("CREDITGATE_PRICES") {
            None => DEFAULT_PRICES
                .into_iter()
                .map(|(name, cost)| Ok((name.to_owned(), Cost::new(i64::from(cost))?)))
                .collect::<Result<_, CreditError>>()?,
            Some(text) => parse_prices(text)?,
        };
        let user_limits = limits("CREDITGATE_USER_LIMIT", DEFAULT_USER_LIMIT)?;
        let ip_limits = limits("CREDITGATE_IP_LIMIT", DEFAULT_IP_LIMIT)?;
        let operation_limits = match env.get("CREDITGATE_OPERATION_LIMITS") {
            None => BTreeMap::new(),
            Some(text) => parse_operation_limits(text, &prices)?,
        };
        let unit_limits = limits("CREDITGATE_UNIT_LIMIT", "off")?;
        let user_concurrency = match env.get("CREDITGATE_USER_CONCURRENCY") {
            None => None,
            Some(off) if off.trim().eq_ignore_ascii_case("off") => None,
            Some(_) => Some(Concurrency::new(env.number("CREDITGATE_USER_CONCURRENCY", 0, 1, 1000)?)?),
        };
        check_limits_per_request(&user_limits, &ip_limits, &operation_limits,
            unit_limits.len() + usize::from(user_concurrency.is_some()))?;
        let plan_limits = match env.get("CREDITGATE_PLAN_LIMITS").map(str::trim) {
            None => false,
            Some(on) if on.eq_ignore_ascii_case("on") => true,
            Some(off) if off.eq_ignore_ascii_case("off") => false,
            Some(_) => return Err(invalid("CREDITGATE_PLAN_LIMITS", "CREDITGATE_PLAN_LIMITS must be on or off")),
        };
        Ok(Settings {
            service_keys,
            anonymous_keys,
            jwt_secret: env.jwt_secret()?,
            jwks: env.jwks()?,
            jwks_url: match env.get("CREDITGATE_JWKS_URL") {
                Some(off) if off.eq_ignore_ascii_case("off") => None,
                Some(text) => Some(http_url("CREDITGATE_JWKS_URL", text)?),
                None => Some(format!("{}{JWKS_PATH}", config.project_url())),
            },
            jwt_issuer: env.get("CREDITGATE_JWT_ISSUER").map(str::to_owned),
            trusted_proxy_hops: env.number("CREDITGATE_TRUSTED_PROXY_HOPS", DEFAULT_TRUSTED_PROXY_HOPS.into(), 1, TRUSTED_PROXY_HOPS_MAX)?
                as u8,
            prices,
            user_limits,
            ip_limits,
            operation_limits,
            user_concurrency,
            unit_limits,
            plan_limits,
            hold_seconds: HoldSeconds::new(env.number("CREDITGATE_HOLD_SECONDS", 900, 1, i64::from(HoldSeconds::MAX))?)?,
            generator: env.generator()?,
            webhook: env.webhook()?,
            config,
        })
    }

    /// Every limit a paid request for `operation` is counted against, named:
    /// the user's, the client address's (when `with_ip`), the operation's.
    pub fn policies(&self, operation: &Operation, with_ip: bool) -> Vec<NamedPolicy> {
        let mut named = policy_names(PolicyKind::User, &self.user_limits);
        if with_ip {
            named.extend(policy_names(PolicyKind::Ip, &self.ip_limits));
        }
        if let Some(limits) = self.operation_limits.get(operation.as_str()) {
            named.extend(policy_names(PolicyKind::Operation(operation.as_str().to_owned()), limits));
        }
        named
    }

    /// The price of `operation`, or `invalid_argument` listing the known ones.
    pub fn price(&self, operation: &Operation) -> Result<Cost, CreditError> {
        self.prices.get(operation.as_str()).copied().ok_or_else(|| {
            let known: Vec<&str> = self.prices.keys().map(String::as_str).collect();
            CreditError::invalid_argument(
                "operation",
                format!("operation must be one of {}", known.join(", ")),
            )
            .with_detail("known", known)
        })
    }
}

/// The function's environment, read one setting at a time. Blank values
/// count as unset.
struct Env<'e>(&'e BTreeMap<String, String>);

impl Env<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(|value| value.trim()).filter(|value| !value.is_empty())
    }

    fn required(&self, name: &str) -> Result<&str, CreditError> {
        self.get(name).ok_or_else(|| invalid(name, format!("{name} must be set (Supabase sets it for every function)")))
    }

    /// A whole number from `min` to `max`, `default` when unset.
    fn number(&self, name: &str, default: i64, min: i64, max: i64) -> Result<i64, CreditError> {
        let Some(text) = self.get(name) else { return Ok(default) };
        let value = whole_number(name, text)?;
        if !(min..=max).contains(&value) {
            return Err(invalid(name, format!("{name} must be from {min} to {max}")));
        }
        Ok(value)
    }

    /// The service role's keys and the anonymous ones (see `auth.rs`).
    fn exact_keys(&self, service_role_key: &str) -> Result<(ExactKeys, ExactKeys), CreditError> {
        let mut service = vec![service_role_key.to_owned()];
        service.extend(named_keys(self.get("SUPABASE_SECRET_KEYS"), "SUPABASE_SECRET_KEYS")?);
        let mut anonymous: Vec<String> = self.get("SUPABASE_ANON_KEY").map(str::to_owned).into_iter().collect();
        anonymous.extend(named_keys(self.get("SUPABASE_PUBLISHABLE_KEYS"), "SUPABASE_PUBLISHABLE_KEYS")?);
        // A key listed as both is the service role's: never downgrade it.
        anonymous.retain(|key| !service.contains(key));
        Ok((ExactKeys(service), ExactKeys(anonymous)))
    }

    /// The legacy HS256 secret, from the first of its names that is set.
    fn jwt_secret(&self) -> Result<Option<Secret>, CreditError> {
        let found = ["CREDITGATE_JWT_SECRET", "SUPABASE_JWT_SECRET", "JWT_SECRET"]
            .into_iter()
            .find_map(|name| self.get(name).map(|secret| (name, secret)));
        match found {
            Some((name, secret)) if secret.len() < JWT_SECRET_BYTES_MIN => {
                Err(invalid(name, format!("{name} must be at least {JWT_SECRET_BYTES_MIN} bytes")))
            }
            Some((_, secret)) => Ok(Some(Secret(secret.to_owned()))),
            None => Ok(None),
        }
    }

    fn jwks(&self) -> Result<Vec<PublicKey>, CreditError> {
        let Some(text) = self.get("SUPABASE_JWKS") else { return Ok(Vec::new()) };
        serde_json::from_str::<Value>(text)
            .map_err(|error| error.to_string())
            .and_then(|value| parse_jwks(&value))
            .map_err(|why| invalid("SUPABASE_JWKS", format!("SUPABASE_JWKS must be a JSON Web Key Set: {why}")))
    }

    fn generator(&self) -> Result<Option<GeneratorSettings>, CreditError> {
        let Some(url) = self.get("GENERATOR_URL") else { return Ok(None) };
        http_url("GENERATOR_URL", url)?;
        let timeout_ms = self.number(
            "CREDITGATE_GENERATOR_TIMEOUT_MS",
            DEFAULT_GENERATOR_TIMEOUT_MS.into(),
            GENERATOR_TIMEOUT_MS_MIN.into(),
            GENERATOR_TIMEOUT_MS_MAX.into(),
        )? as u32;
        let key = self.get("CREDITGATE_GENERATOR_KEY").map(str::to_owned);
        if key.as_deref().is_some_and(|key| !key.bytes().all(|byte| byte.is_ascii_graphic())) {
            return Err(invalid("CREDITGATE_GENERATOR_KEY", "CREDITGATE_GENERATOR_KEY must be printable ASCII"));
        }
        Ok(Some(GeneratorSettings { url: url.to_owned(), key, timeout_ms }))
    }
}

impl Env<'_> {
    fn webhook(&self) -> Result<Option<WebhookSettings>, CreditError> {
        let Some(url) = self.get("CREDITGATE_WEBHOOK_URL") else { return Ok(None) };
        let url = http_url("CREDITGATE_WEBHOOK_URL", url)?;
        let secret = self.get("CREDITGATE_WEBHOOK_SECRET").ok_or_else(|| {
            invalid("CREDITGATE_WEBHOOK_SECRET", "CREDITGATE_WEBHOOK_SECRET must be set with CREDITGATE_WEBHOOK_URL")
        })?;
        if secret.len() < WEBHOOK_SECRET_BYTES_MIN {
            return Err(invalid(
                "CREDITGATE_WEBHOOK_SECRET",
                format!("CREDITGATE_WEBHOOK_SECRET must be at least {WEBHOOK_SECRET_BYTES_MIN} bytes"),
            ));
        }
        let timeout_ms = self.number(
            "CREDITGATE_WEBHOOK_TIMEOUT_MS",
            DEFAULT_WEBHOOK_TIMEOUT_MS.into(),
            WEBHOOK_TIMEOUT_MS_MIN.into(),
            WEBHOOK_TIMEOUT_MS_MAX.into(),
        )? as u32;
        Ok(Some(WebhookSettings { url, secret: Secret(secret.to_owned()), timeout_ms }))
    }
}

/// `{"name": "key", ...}` (Supabase's `SUPABASE_SECRET_KEYS` and
/// `SUPABASE_PUBLISHABLE_KEYS`): the keys, empty ones skipped.
fn named_keys(text: Option<&str>, variable: &str) -> Result<Vec<String>, CreditError> {
    let Some(text) = text else { return Ok(Vec::new()) };
    let keys: BTreeMap<String, String> = serde_json::from_str(text)
        .map_err(|_| invalid(variable, format!("{variable} must be a JSON object of name: key")))?;
    Ok(keys.into_values().filter(|key| !key.is_empty()).collect())
}

/// An absolute `http(s)` URL.
fn http_url(variable: &str, text: &str) -> Result<String, CreditError> {
    let parsed =
        url::Url::parse(text).map_err(|error| invalid(variable, format!("{variable} must be an http(s) URL: {error}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(variable, format!("{variable} must be an http(s) URL")));
    }
    Ok(text.to_owned())
}

fn whole_number(variable: &str, text: &str) -> Result<i64, CreditError> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|byte| byte.is_ascii_digit()) {
        return Err(invalid(variable, format!("{variable} must be a whole number, got {text:?}")));
    }
    text.parse().map_err(|_| invalid(variable, format!("{variable} must be a whole number, got {text:?}")))
}

/// `{"image": "5/60,50/86400", "text": "60/60"}`: limits per operation and
/// user, for operations of the price list.
fn parse_operation_limits(
    text: &str,
    prices: &BTreeMap<String, Cost>,
) -> Result<BTreeMap<String, Vec<LimitPolicy>>, CreditError> {
    let variable = "CREDITGATE_OPERATION_LIMITS";
    let bad = |why: String| {
        invalid(variable, format!("{variable} must be a JSON object of operation: limits, like {{\"image\":\"5/60,50/86400\"}}: {why}"))
    };
    let value: Value = serde_json::from_str(text).map_err(|error| bad(error.to_string()))?;
    let Value::Object(map) = value else {
        return Err(bad("not an object".into()));
    };
    let mut limits = BTreeMap::new();
    for (operation, policies) in map {
        if !prices.contains_key(&operation) {
            return Err(bad(format!("{operation:?} is not an operation of CREDITGATE_PRICES")));
        }
        let Value::String(policies) = policies else {
            return Err(bad(format!("the limits of {operation:?} must be a string like \"5/60\"")));
        };
        let policies = LimitPolicy::parse_list(variable, &policies)?;
        if !policies.is_empty() {
            limits.insert(operation, policies);
        }
    }
    Ok(limits)
}

/// One paid request names its user's limits, its client address's and its
/// operation's in one `charge_credits_with_limits` call, which takes at most
/// [`LIMITS_PER_CALL_MAX`]: a configuration that could exceed it is refused
/// at start-up rather than failing requests.
fn check_limits_per_request(
    user: &[LimitPolicy],
    ip: &[LimitPolicy],
    operations: &BTreeMap<String, Vec<LimitPolicy>>,
    others: usize,
) -> Result<(), CreditError> {
    let most = operations.values().map(Vec::len).max().unwrap_or(0);
    // `others`: the unit limits' windows and the concurrency limit.
    let total = user.len() + ip.len() + most + others;
    if total > LIMITS_PER_CALL_MAX {
        let variable = if most > 0 { "CREDITGATE_OPERATION_LIMITS" } else { "CREDITGATE_IP_LIMIT" };
        return Err(invalid(
            variable,
            format!(
                "a paid request could be counted against {total} limits ({} per user, {} per address, up to {most} per \
                 operation); one call takes at most {LIMITS_PER_CALL_MAX}",
                user.len(),
                ip.len()
            ),
        )
        .with_detail("limits", total)
        .with_detail("max", LIMITS_PER_CALL_MAX));
    }
    Ok(())
}

/// `{"image": 10, "text": 1}`: names are operations, values costs.
fn parse_prices(text: &str) -> Result<BTreeMap<String, Cost>, CreditError> {
    let variable = "CREDITGATE_PRICES";
    let bad = |why: String| invalid(variable, format!("{variable} must be a JSON object of operation: credits, like {{\"image\":10}}: {why}"));
    let value: Value = serde_json::from_str(text).map_err(|error| bad(error.to_string()))?;
    let Value::Object(map) = value else {
        return Err(bad("not an object".into()));
    };
    if map.is_empty() || map.len() > PRICES_MAX {
        return Err(bad(format!("it must list 1 to {PRICES_MAX} operations")));
    }
    let mut prices = BTreeMap::new();
    for (name, cost) in map {
        let operation = Operation::new(name.clone()).map_err(|error| bad(error.message().to_owned()))?;
        let cost = cost
            .as_i64()
            .ok_or_else(|| bad(format!("the price of {name:?} must be a whole number")))
            .and_then(|cost| Cost::new(cost).map_err(|error| bad(format!("{name:?}: {}", error.message()))))?;
        prices.insert(operation.as_str().to_owned(), cost);
    }
    Ok(prices)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = [
            ("SUPABASE_URL", "http://127.0.0.1:54321"),
            ("SUPABASE_SERVICE_ROLE_KEY", "service-key"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        for (name, value) in pairs {
            env.insert((*name).to_owned(), (*value).to_owned());
        }
        env
    }

    fn variable_of(result: Result<Settings, CreditError>) -> String {
        let error = result.expect_err("should be refused");
        error.details()["variable"].as_str().unwrap_or_default().to_owned()
    }

    #[test]
    fn defaults_are_sane() {
        let settings = Settings::from_env(&env(&[])).expect("valid");
        assert_eq!(settings.prices.get("image").map(|c| c.get()), Some(10));
        assert_eq!(settings.prices.get("text").map(|c| c.get()), Some(1));
        assert_eq!(windows(&settings.user_limits), [(5, 60)]);
        assert_eq!(windows(&settings.ip_limits), [(30, 60)]);
        assert!(settings.operation_limits.is_empty());
        assert_eq!(settings.hold_seconds.get(), 900);
        assert_eq!(settings.jwt_secret, None);
        assert_eq!(settings.jwks_url.as_deref(), Some("http://127.0.0.1:54321/auth/v1/.well-known/jwks.json"));
        assert_eq!(settings.trusted_proxy_hops, 1);
        assert_eq!(settings.generator, None);
        assert_eq!(settings.config.rest_url(), "http://127.0.0.1:54321/rest/v1");
    }

    #[test]
    fn the_supabase_variables_are_required() {
        let mut missing_url = env(&[]);
        missing_url.remove("SUPABASE_URL");
        assert_eq!(variable_of(Settings::from_env(&missing_url)), "SUPABASE_URL");
        let mut missing_key = env(&[]);
        missing_key.remove("SUPABASE_SERVICE_ROLE_KEY");
        assert_eq!(variable_of(Settings::from_env(&missing_key)), "SUPABASE_SERVICE_ROLE_KEY");
        assert_eq!(variable_of(Settings::from_env(&env(&[("SUPABASE_URL", "ftp://x")]))), "SUPABASE_URL");
    }

    #[test]
    fn the_jwt_secret_is_taken_in_order_and_must_be_long() {
        let secret = "s".repeat(32);
        let settings = Settings::from_env(&env(&[("JWT_SECRET", &secret)])).expect("valid");
        assert_eq!(settings.jwt_secret.as_ref().map(Secret::expose), Some(secret.as_str()));
        let ours = "o".repeat(40);
        let settings = Settings::from_env(&env(&[("JWT_SECRET", &secret), ("CREDITGATE_JWT_SECRET", &ours)])).expect("valid");
        assert_eq!(settings.jwt_secret.as_ref().map(Secret::expose), Some(ours.as_str()));
        assert_eq!(variable_of(Settings::from_env(&env(&[("SUPABASE_JWT_SECRET", &"s".repeat(31))]))), "SUPABASE_JWT_SECRET");
        assert!(!format!("{settings:?}").contains(&secret), "secrets are never printed");
        assert!(!format!("{settings:?}").contains("service-key"));
    }

    #[test]
    fn prices_come_from_json() {
        let settings = Settings::from_env(&env(&[("CREDITGATE_PRICES", r#"{"video": 50, "tts": 2}"#)])).expect("valid");
        assert_eq!(settings.prices.len(), 2);
        assert_eq!(settings.prices["video"].get(), 50);
        for bad in [
            "[]",
            "{}",
            "not json",
            r#"{"image": 0}"#,
            r#"{"image": -5}"#,
            r#"{"image": 1.5}"#,
            r#"{"image": "10"}"#,
            r#"{"image": 2147483648}"#,
            r#"{"": 1}"#,
        ] {
            assert_eq!(variable_of(Settings::from_env(&env(&[("CREDITGATE_PRICES", bad)]))), "CREDITGATE_PRICES", "{bad}");
        }
    }

    #[test]
    fn an_unknown_operation_lists_the_known_ones() {
        let settings = Settings::from_env(&env(&[])).expect("valid");
        let error = settings.price(&Operation::new("video").expect("valid")).expect_err("unknown");
        assert_eq!(error.details()["field"], "operation");
        assert_eq!(error.details()["known"], serde_json::json!(["image", "text"]));
        assert_eq!(settings.price(&Operation::new("text").expect("valid")).map(Cost::get), Ok(1));
    }

    #[test]
    fn concurrency_unit_and_plan_limits_are_read_and_checked() {
        let settings = Settings::from_env(&env(&[])).expect("valid");
        assert_eq!((settings.user_concurrency, settings.unit_limits.is_empty(), settings.plan_limits), (None, true, false));
        let settings = Settings::from_env(&env(&[
            ("CREDITGATE_USER_CONCURRENCY", "2"),
            ("CREDITGATE_UNIT_LIMIT", "100000/60,1000000/86400"),
            ("CREDITGATE_PLAN_LIMITS", "on"),
        ]))
        .expect("valid");
        assert_eq!(settings.user_concurrency.map(Concurrency::get), Some(2));
        assert_eq!(windows(&settings.unit_limits), [(100_000, 60), (1_000_000, 86_400)]);
        assert!(settings.plan_limits);
        for (variable, bad) in [("CREDITGATE_USER_CONCURRENCY", "0"), ("CREDITGATE_USER_CONCURRENCY", "1001"),
                                ("CREDITGATE_USER_CONCURRENCY", "two"), ("CREDITGATE_UNIT_LIMIT", "0/60"),
                                ("CREDITGATE_PLAN_LIMITS", "yes")] {
            assert_eq!(variable_of(Settings::from_env(&env(&[(variable, bad)]))), variable, "{variable}={bad}");
        }
        assert_eq!(Settings::from_env(&env(&[("CREDITGATE_USER_CONCURRENCY", "off")])).expect("valid").user_concurrency, None);
    }

    #[test]
    fn limits_parse_and_can_be_turned_off() {
        let settings =
            Settings::from_env(&env(&[("CREDITGATE_USER_LIMIT", "2/1"), ("CREDITGATE_IP_LIMIT", "OFF")])).expect("valid");
        assert_eq!(windows(&settings.user_limits), [(2, 1)]);
        assert!(settings.ip_limits.is_empty());
        for bad in ["0/60", "5/0", "5/86401", "5", "5/", "/60", "-1/60", "five/60", "5/60/1", "99999999999/60",
                    "5/60,", "5/60,off", "5/60,10/60", ","] {
            assert_eq!(variable_of(Settings::from_env(&env(&[("CREDITGATE_USER_LIMIT", bad)]))), "CREDITGATE_USER_LIMIT", "{bad}");
        }
        assert!(Settings::from_env(&env(&[("CREDITGATE_IP_LIMIT", "1/86400")])).is_ok());
    }

    fn windows(policies: &[LimitPolicy]) -> Vec<(u32, u32)> {
        policies.iter().map(|p| (p.limit.get(), p.window_seconds.get())).collect()
    }

    #[test]
    fn limits_take_several_windows() {
        let settings = Settings::from_env(&env(&[
            ("CREDITGATE_USER_LIMIT", "5/60,100/86400"),
            ("CREDITGATE_IP_LIMIT", " 30/60 , 1000/3600 "),
        ]))
        .expect("valid");
        assert_eq!(windows(&settings.user_limits), [(5, 60), (100, 86400)]);
        assert_eq!(windows(&settings.ip_limits), [(30, 60), (1000, 3600)]);
    }

    #[test]
    fn operation_limits_are_per_operation_of_the_price_list() {
        let settings = Settings::from_env(&env(&[(
            "CREDITGATE_OPERATION_LIMITS",
            r#"{"image": "5/60,50/86400", "text": "60/60"}"#,
        )]))
        .expect("valid");
        assert_eq!(windows(&settings.operation_limits["image"]), [(5, 60), (50, 86400)]);
        assert_eq!(windows(&settings.operation_limits["text"]), [(60, 60)]);
        for bad in [
            r#"{"video": "5/60"}"#,
            r#"{"image": 5}"#,
            r#"{"image": "5/60,6/60"}"#,
            r#"["image"]"#,
            "not json",
        ] {
            assert_eq!(
                variable_of(Settings::from_env(&env(&[("CREDITGATE_OPERATION_LIMITS", bad)]))),
                "CREDITGATE_OPERATION_LIMITS",
                "{bad}"
            );
        }
        let off = Settings::from_env(&env(&[("CREDITGATE_OPERATION_LIMITS", r#"{"image": "off"}"#)])).expect("valid");
        assert!(off.operation_limits.is_empty());
    }

    #[test]
    fn a_configuration_that_could_exceed_16_limits_per_call_is_refused() {
        let windows = |count: u32| (1..=count).map(|window| format!("1/{window}")).collect::<Vec<_>>().join(",");
        let (user, ip) = (windows(6), windows(5));
        let fits = format!(r#"{{"image": "{}"}}"#, windows(5));
        assert!(Settings::from_env(&env(&[
            ("CREDITGATE_USER_LIMIT", &user),
            ("CREDITGATE_IP_LIMIT", &ip),
            ("CREDITGATE_OPERATION_LIMITS", &fits)
        ]))
        .is_ok(), "6 + 5 + 5 = 16");
        let over = format!(r#"{{"image": "{}", "text": "1/60"}}"#, windows(6));
        let error = Settings::from_env(&env(&[
            ("CREDITGATE_USER_LIMIT", &user),
            ("CREDITGATE_IP_LIMIT", &ip),
            ("CREDITGATE_OPERATION_LIMITS", &over),
        ]))
        .expect_err("6 + 5 + 6 = 17");
        assert_eq!(error.details()["variable"], "CREDITGATE_OPERATION_LIMITS");
        assert_eq!(error.details()["limits"], 17);
        assert_eq!(
            variable_of(Settings::from_env(&env(&[("CREDITGATE_USER_LIMIT", &windows(17))]))),
            "CREDITGATE_USER_LIMIT"
        );
    }

    #[test]
    fn policies_are_named_distinctly_per_window() {
        let settings = Settings::from_env(&env(&[
            ("CREDITGATE_USER_LIMIT", "5/60,100/86400"),
            ("CREDITGATE_OPERATION_LIMITS", r#"{"image": "2/60"}"#),
        ]))
        .expect("valid");
        let image = Operation::new("image").expect("valid");
        let names: Vec<(String, &str)> =
            settings.policies(&image, true).into_iter().map(|p| (p.name, p.kind.as_str())).collect();
        assert_eq!(
            names,
            [
                ("user-60".to_owned(), "user"),
                ("user-86400".to_owned(), "user"),
                ("ip".to_owned(), "ip"),
                ("op-image".to_owned(), "operation"),
            ]
        );
        let text = Operation::new("text").expect("valid");
        assert_eq!(settings.policies(&text, false).len(), 2, "no address, no operation limit for text");
    }

    #[test]
    fn the_generator_timeout_is_bounded() {
        let generator = |timeout: &str| {
            Settings::from_env(&env(&[("GENERATOR_URL", "http://127.0.0.1:1/gen"), ("CREDITGATE_GENERATOR_TIMEOUT_MS", timeout)]))
        };
        assert_eq!(generator("100").expect("valid").generator.map(|g| g.timeout_ms), Some(100));
        assert_eq!(generator("120000").expect("valid").generator.map(|g| g.timeout_ms), Some(120_000));
        for bad in ["99", "120001", "1.5", "abc", "-1"] {
            assert_eq!(variable_of(generator(bad)), "CREDITGATE_GENERATOR_TIMEOUT_MS", "{bad}");
        }
        assert_eq!(variable_of(Settings::from_env(&env(&[("GENERATOR_URL", "not a url")]))), "GENERATOR_URL");
        let default = Settings::from_env(&env(&[("GENERATOR_URL", "https://gen.example/v1")])).expect("valid");
        assert_eq!(default.generator.map(|g| g.timeout_ms), Some(DEFAULT_GENERATOR_TIMEOUT_MS));
    }

    #[test]
    fn new_style_secret_keys_are_service_keys_too() {
        let settings =
            Settings::from_env(&env(&[("SUPABASE_SECRET_KEYS", r#"{"default": "sb_secret_abc", "empty": ""}"#)])).expect("valid");
        assert_eq!(settings.service_keys.0, vec!["service-key".to_owned(), "sb_secret_abc".to_owned()]);
        assert!(!format!("{settings:?}").contains("sb_secret_abc"));
        assert_eq!(variable_of(Settings::from_env(&env(&[("SUPABASE_SECRET_KEYS", "[1]")]))), "SUPABASE_SECRET_KEYS");
    }

    #[test]
    fn signing_keys_proxy_hops_and_issuer_are_read() {
        let jwks = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"eA","y":"eQ","kid":"k1"}]}"#;
        let settings = Settings::from_env(&env(&[
            ("SUPABASE_JWKS", jwks),
            ("CREDITGATE_JWKS_URL", "off"),
            ("CREDITGATE_TRUSTED_PROXY_HOPS", "2"),
            ("CREDITGATE_JWT_ISSUER", "https://abc.supabase.co/auth/v1"),
            ("SUPABASE_PUBLISHABLE_KEYS", r#"{"web": "sb_publishable_x"}"#),
        ]))
        .expect("valid");
        assert_eq!(settings.jwks.len(), 1);
        assert_eq!(settings.jwks_url, None);
        assert_eq!(settings.trusted_proxy_hops, 2);
        assert_eq!(settings.anonymous_keys.0, vec!["sb_publishable_x".to_owned()]);
        for (name, bad) in [
            ("SUPABASE_JWKS", "not json"),
            ("SUPABASE_JWKS", r#"{"no": "keys"}"#),
            ("CREDITGATE_JWKS_URL", "ftp://x/jwks"),
            ("CREDITGATE_TRUSTED_PROXY_HOPS", "0"),
            ("CREDITGATE_TRUSTED_PROXY_HOPS", "11"),
            ("CREDITGATE_TRUSTED_PROXY_HOPS", "one"),
            ("SUPABASE_PUBLISHABLE_KEYS", "sb_publishable_x"),
        ] {
            assert_eq!(variable_of(Settings::from_env(&env(&[(name, bad)]))), name, "{bad}");
        }
        // A key listed as secret and as publishable stays the service role's.
        let both = Settings::from_env(&env(&[("SUPABASE_PUBLISHABLE_KEYS", r#"{"oops": "service-key"}"#)])).expect("valid");
        assert!(both.anonymous_keys.0.is_empty());
    }

    #[test]
    fn the_hold_is_bounded() {
        assert_eq!(Settings::from_env(&env(&[("CREDITGATE_HOLD_SECONDS", "60")])).expect("valid").hold_seconds.get(), 60);
        for bad in ["0", "86401", "x"] {
            assert_eq!(variable_of(Settings::from_env(&env(&[("CREDITGATE_HOLD_SECONDS", bad)]))), "CREDITGATE_HOLD_SECONDS");
        }
    }
}
