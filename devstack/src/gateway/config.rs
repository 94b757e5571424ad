//! The gateway's configuration, read from PostgREST's own environment
//! variables (names and defaults as PostgREST v12 documents them).

use std::time::Duration;

/// One step of `jwt-role-claim-key` (`.role`, `."https://x".roles[0]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimPathStep {
    Key(String),
    Index(usize),
}

/// Everything the gateway needs; build it with [`Config::from_env`] or
/// [`Config::new`] and adjust the public fields.
#[derive(Debug, Clone)]
pub struct Config {
    /// `PGRST_DB_URI` (default `postgresql://`): the gateway logs in as this
    /// user (the `authenticator`) and switches role per request.
    pub db_uri: String,
    /// `PGRST_DB_SCHEMAS` (default `public`): the first one is the default,
    /// the others are selected with `Accept-Profile` / `Content-Profile`.
    pub db_schemas: Vec<String>,
    /// `PGRST_DB_ANON_ROLE`: the role of requests without a JWT. Unset: such
    /// requests are refused (401 PGRST302), as PostgREST does.
    pub db_anon_role: Option<String>,
    /// `PGRST_DB_EXTRA_SEARCH_PATH` (default `public`): appended to the
    /// request schema in `search_path`.
    pub db_extra_search_path: Vec<String>,
    /// `PGRST_DB_MAX_ROWS`: an upper bound on rows returned by a read.
    pub db_max_rows: Option<i64>,
    /// `PGRST_DB_POOL` (default 10).
    pub db_pool: usize,
    /// `PGRST_DB_POOL_ACQUISITION_TIMEOUT` in seconds (default 10).
    pub db_pool_acquisition_timeout: Duration,
    /// `PGRST_DB_CHANNEL` (default `pgrst`).
    pub db_channel: String,
    /// `PGRST_DB_CHANNEL_ENABLED` (default true).
    pub db_channel_enabled: bool,
    /// `PGRST_JWT_SECRET`: a plain secret (base64 when
    /// `PGRST_JWT_SECRET_IS_BASE64` is true), or a JWK or JWK set as JSON
    /// (HS256 `oct` and ES256 P-256 keys; see [`crate::keys::KeySet`]).
    pub jwt_secret: Option<Vec<u8>>,
    /// `PGRST_JWT_AUD`: when set, a token's `aud` must contain it.
    pub jwt_aud: Option<String>,
    /// `PGRST_JWT_ROLE_CLAIM_KEY` (default `.role`).
    pub jwt_role_claim_key: Vec<ClaimPathStep>,
    /// `PGRST_SERVER_HOST` (default `!4`: every IPv4 interface, as PostgREST).
    pub server_host: String,
    /// `PGRST_SERVER_PORT` (default 3000).
    pub server_port: u16,
    /// Largest accepted request body, in bytes (not a PostgREST setting:
    /// PostgREST leaves this to the proxy in front of it). Bigger -> 413.
    /// `GATEWAY_MAX_BODY_BYTES`, default 1 MiB.
    pub max_body_bytes: usize,
}

/// 1 MiB: far above any creditgate call, small enough that a client cannot
/// make the gateway buffer arbitrary amounts of memory.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

impl Config {
    /// PostgREST's defaults with the given database URI.
    pub fn new(db_uri: impl Into<String>) -> Config {
        Config {
            db_uri: db_uri.into(),
            db_schemas: vec!["public".to_string()],
            db_anon_role: None,
            db_extra_search_path: vec!["public".to_string()],
            db_max_rows: None,
            db_pool: 10,
            db_pool_acquisition_timeout: Duration::from_secs(10),
            db_channel: "pgrst".to_string(),
            db_channel_enabled: true,
            jwt_secret: None,
            jwt_aud: None,
            jwt_role_claim_key: vec![ClaimPathStep::Key("role".to_string())],
            server_host: "!4".to_string(),
            server_port: 3000,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
        }
    }

    /// Reads PostgREST's environment variables (`PGRST_*`).
    pub fn from_env() -> anyhow::Result<Config> {
        Config::from_lookup(|name| std::env::var(name).ok())
    }

    /// Like [`Config::from_env`], from any variable source (for tests).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Config> {
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let mut config = Config::new(get("PGRST_DB_URI").unwrap_or_else(|| "postgresql://".into()));
        if let Some(v) = get("PGRST_DB_SCHEMAS").or_else(|| get("PGRST_DB_SCHEMA")) {
            let schemas = split_commas(&v);
            anyhow::ensure!(!schemas.is_empty(), "PGRST_DB_SCHEMAS names no schema");
            config.db_schemas = schemas;
        }
        config.db_anon_role = get("PGRST_DB_ANON_ROLE");
        if let Some(v) = lookup("PGRST_DB_EXTRA_SEARCH_PATH") {
            config.db_extra_search_path = split_commas(&v);
        }
        if let Some(v) = get("PGRST_DB_MAX_ROWS").or_else(|| get("PGRST_MAX_ROWS")) {
            config.db_max_rows = Some(parse_number(&v, "PGRST_DB_MAX_ROWS")?);
        }
        if let Some(v) = get("PGRST_DB_POOL") {
            let size: i64 = parse_number(&v, "PGRST_DB_POOL")?;
            anyhow::ensure!(size >= 1, "PGRST_DB_POOL must be at least 1");
            config.db_pool = size as usize;
        }
        if let Some(v) = get("PGRST_DB_POOL_ACQUISITION_TIMEOUT") {
            let secs: i64 = parse_number(&v, "PGRST_DB_POOL_ACQUISITION_TIMEOUT")?;
            config.db_pool_acquisition_timeout = Duration::from_secs(secs.max(1) as u64);
        }
        if let Some(v) = get("PGRST_DB_CHANNEL") {
            config.db_channel = v;
        }
        if let Some(v) = get("PGRST_DB_CHANNEL_ENABLED") {
            config.db_channel_enabled = parse_bool(&v, "PGRST_DB_CHANNEL_ENABLED")?;
        }
        if let Some(secret) = get("PGRST_JWT_SECRET") {
            let is_base64 = match get("PGRST_JWT_SECRET_IS_BASE64") {
                Some(v) => parse_bool(&v, "PGRST_JWT_SECRET_IS_BASE64")?,
                None => false,
            };
            config.jwt_secret = Some(if is_base64 {
                decode_base64_secret(&secret)?
            } else {
                secret.into_bytes()
            });
        }
        config.jwt_aud = get("PGRST_JWT_AUD");
        if let Some(v) = get("PGRST_JWT_ROLE_CLAIM_KEY").or_else(|| get("PGRST_ROLE_CLAIM_KEY")) {
            config.jwt_role_claim_key = parse_claim_path(&v)?;
        }
        if let Some(v) = get("PGRST_SERVER_HOST") {
            config.server_host = v;
        }
        if let Some(v) = get("PGRST_SERVER_PORT") {
            let port: i64 = parse_number(&v, "PGRST_SERVER_PORT")?;
            config.server_port = u16::try_from(port)
                .map_err(|_| anyhow::anyhow!("PGRST_SERVER_PORT out of range: {port}"))?;
        }
        if let Some(v) = get("GATEWAY_MAX_BODY_BYTES") {
            let bytes: i64 = parse_number(&v, "GATEWAY_MAX_BODY_BYTES")?;
            anyhow::ensure!(bytes > 0, "GATEWAY_MAX_BODY_BYTES must be positive");
            config.max_body_bytes = bytes as usize;
        }
        Ok(config)
    }

    /// The address to bind: PostgREST's special host names mapped to
    /// addresses (`!4`/`*4` any IPv4, `!6`/`*6`/`*` any IPv6, else the name).
    pub fn bind_address(&self) -> String {
        let host = match self.server_host.as_str() {
            "!4" | "*4" => "0.0.0.0",
            "!6" | "*6" | "*" => "[::]",
            other if other.contains(':') && !other.starts_with('[') => {
                return format!("[{other}]:{}", self.server_port)
            }
            other => other,
        };
        format!("{host}:{}", self.server_port)
    }
}

fn split_commas(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

fn parse_number(v: &str, name: &str) -> anyhow::Result<i64> {
    v.trim().parse::<i64>().map_err(|_| anyhow::anyhow!("{name}: not an integer: {v:?}"))
}

fn parse_bool(v: &str, name: &str) -> anyhow::Result<bool> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Ok(true),
        "false" | "off" | "no" | "0" => Ok(false),
        _ => anyhow::bail!("{name}: not a boolean: {v:?}"),
    }
}

fn decode_base64_secret(v: &str) -> anyhow::Result<Vec<u8>> {
    use base64::Engine;
    let cleaned: String = v.chars().filter(|c| !c.is_whitespace()).collect();
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cleaned.trim_end_matches('=')))
        .map_err(|e| anyhow::anyhow!("PGRST_JWT_SECRET is not valid base64: {e}"))
}

/// Parses PostgREST's JSPath syntax: `.key`, `."quoted key"`, `[0]`.
pub fn parse_claim_path(v: &str) -> anyhow::Result<Vec<ClaimPathStep>> {
    let chars: Vec<char> = v.trim().chars().collect();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                if chars.get(i) == Some(&'"') {
                    i += 1;
                    let start = i;
                    while i < chars.len() && chars[i] != '"' {
                        i += 1;
                    }
                    anyhow::ensure!(i < chars.len(), "unterminated quote in role claim key {v:?}");
                    steps.push(ClaimPathStep::Key(chars[start..i].iter().collect()));
                    i += 1;
                } else {
                    let start = i;
                    while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                        i += 1;
                    }
                    anyhow::ensure!(i > start, "empty key in role claim key {v:?}");
                    steps.push(ClaimPathStep::Key(chars[start..i].iter().collect()));
                }
            }
            '[' => {
                i += 1;
                let start = i;
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
                anyhow::ensure!(i < chars.len(), "unterminated index in role claim key {v:?}");
                let text: String = chars[start..i].iter().collect();
                let index = text
                    .parse::<usize>()
                    .map_err(|_| anyhow::anyhow!("bad index {text:?} in role claim key {v:?}"))?;
                steps.push(ClaimPathStep::Index(index));
                i += 1;
            }
            _ => anyhow::bail!("role claim key must start with '.': {v:?}"),
        }
    }
    anyhow::ensure!(!steps.is_empty(), "empty role claim key");
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let owned: Vec<(String, String)> =
            pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| owned.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn defaults_are_postgrests() {
        let c = Config::from_lookup(vars(&[])).unwrap();
        assert_eq!(c.db_schemas, vec!["public"]);
        assert_eq!(c.server_port, 3000);
        assert_eq!(c.bind_address(), "0.0.0.0:3000");
        assert_eq!(c.db_extra_search_path, vec!["public"]);
        assert!(c.db_anon_role.is_none());
    }

    #[test]
    fn reads_the_pgrst_variables() {
        let c = Config::from_lookup(vars(&[
            ("PGRST_DB_URI", "postgres://authenticator:postgres@127.0.0.1:5432/postgres"),
            ("PGRST_DB_SCHEMAS", "api, other"),
            ("PGRST_DB_ANON_ROLE", "anon"),
            ("PGRST_JWT_SECRET", "secret"),
            ("PGRST_SERVER_HOST", "127.0.0.1"),
            ("PGRST_SERVER_PORT", "54321"),
        ]))
        .unwrap();
        assert_eq!(c.db_schemas, vec!["api", "other"]);
        assert_eq!(c.db_anon_role.as_deref(), Some("anon"));
        assert_eq!(c.jwt_secret.as_deref(), Some(&b"secret"[..]));
        assert_eq!(c.bind_address(), "127.0.0.1:54321");
    }

    #[test]
    fn rejects_a_bad_port() {
        assert!(Config::from_lookup(vars(&[("PGRST_SERVER_PORT", "70000")])).is_err());
        assert!(Config::from_lookup(vars(&[("PGRST_SERVER_PORT", "x")])).is_err());
    }

    #[test]
    fn parses_role_claim_paths() {
        assert_eq!(parse_claim_path(".role").unwrap(), vec![ClaimPathStep::Key("role".into())]);
        assert_eq!(
            parse_claim_path(".\"https://x.io\".roles[1]").unwrap(),
            vec![
                ClaimPathStep::Key("https://x.io".into()),
                ClaimPathStep::Key("roles".into()),
                ClaimPathStep::Index(1)
            ]
        );
        assert!(parse_claim_path("role").is_err());
    }
}
