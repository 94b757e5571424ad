//! Where the project is and how to call it: validated once, at construction.

use crate::error::CreditError;

/// Where the API is and how to authenticate: validated once, at construction.
#[derive(Clone, PartialEq, Eq)]
pub struct Config {
    rest_url: String,
    service_role_key: String,
}

impl std::fmt::Debug for Config {
    /// The key is a secret: never printed.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("rest_url", &self.rest_url)
            .field("service_role_key", &"<redacted>")
            .finish()
    }
}

/// Keys longer than this are not JWTs (Supabase's are ~220 chars; new-style
/// `sb_secret_...` keys are shorter).
const SERVICE_ROLE_KEY_CHARS_MAX: usize = 4096;

impl Config {
    /// `url` is the project URL (`https://<ref>.supabase.co`,
    /// `http://127.0.0.1:54321`), with or without `/rest/v1`.
    ///
    /// ```
    /// use creditgate::Config;
    /// let config = Config::new("http://127.0.0.1:54321/", "key").unwrap();
    /// assert_eq!(config.rest_url(), "http://127.0.0.1:54321/rest/v1");
    /// let config = Config::new("https://abc.supabase.co/rest/v1", "key").unwrap();
    /// assert_eq!(config.rest_url(), "https://abc.supabase.co/rest/v1");
    /// ```
    pub fn new(url: &str, service_role_key: &str) -> Result<Self, CreditError> {
        Ok(Config {
            rest_url: rest_url(url)?,
            service_role_key: check_key(service_role_key)?,
        })
    }

    /// The PostgREST root, ending in `/rest/v1` (no trailing slash).
    pub fn rest_url(&self) -> &str {
        &self.rest_url
    }

    /// The project URL itself, without `/rest/v1` (no trailing slash).
    pub fn project_url(&self) -> &str {
        self.rest_url.strip_suffix("/rest/v1").unwrap_or(&self.rest_url)
    }

    /// The headers every request carries. `apikey` is what Supabase's API
    /// gateway checks; `Authorization` is what PostgREST takes the role
    /// from. A new-style secret key (`sb_secret_...`) is not a JWT: it goes
    /// in `apikey` only, and the gateway gives PostgREST the role for it.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = vec![("apikey", self.service_role_key.clone())];
        if !self.service_role_key.starts_with("sb_") {
            headers.push(("Authorization", format!("Bearer {}", self.service_role_key)));
        }
        headers.push(("Accept", "application/json".to_owned()));
        headers.push(("Content-Type", "application/json".to_owned()));
        headers
    }
}

fn rest_url(url: &str) -> Result<String, CreditError> {
    let invalid = |why: &str| {
        CreditError::invalid_argument(
            "url",
            format!("url must be the project's http(s) URL, like https://<ref>.supabase.co: {why}"),
        )
    };
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(invalid("it is empty"));
    }
    let parsed = url::Url::parse(trimmed).map_err(|error| invalid(&error.to_string()))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(&format!("the scheme is {}", parsed.scheme())));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(invalid("it has no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("it has a query or fragment"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid(
            "it carries credentials; pass the key as serviceRoleKey",
        ));
    }
    let base = parsed.as_str().trim_end_matches('/');
    if base.ends_with("/rest/v1") {
        Ok(base.to_owned())
    } else {
        Ok(format!("{base}/rest/v1"))
    }
}

fn check_key(key: &str) -> Result<String, CreditError> {
    let field = "serviceRoleKey";
    if key.is_empty() {
        return Err(CreditError::invalid_argument(
            field,
            "serviceRoleKey must not be empty",
        ));
    }
    if key.chars().count() > SERVICE_ROLE_KEY_CHARS_MAX {
        return Err(CreditError::invalid_argument(
            field,
            format!("serviceRoleKey must be at most {SERVICE_ROLE_KEY_CHARS_MAX} characters"),
        ));
    }
    // It goes in a header: visible ASCII only (this also keeps the postgrest
    // crate's header insertion, which panics on invalid values, safe).
    if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err(CreditError::invalid_argument(
            field,
            "serviceRoleKey must be printable ASCII with no spaces (a JWT or an sb_secret_ key)",
        ));
    }
    Ok(key.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    const KEY: &str = "eyJhbGciOiJIUzI1NiJ9.e30.sig";

    fn config() -> Config {
        Config::new("http://127.0.0.1:54321", KEY).expect("valid config")
    }

    #[test]
    fn urls_are_accepted_with_or_without_rest_v1() {
        let cases = [
            ("http://127.0.0.1:54321", "http://127.0.0.1:54321/rest/v1"),
            ("http://127.0.0.1:54321/", "http://127.0.0.1:54321/rest/v1"),
            (
                "http://127.0.0.1:54321/rest/v1",
                "http://127.0.0.1:54321/rest/v1",
            ),
            (
                "http://127.0.0.1:54321/rest/v1/",
                "http://127.0.0.1:54321/rest/v1",
            ),
            (
                "  https://ABC.supabase.co  ",
                "https://abc.supabase.co/rest/v1",
            ),
            (
                "https://proxy.example/tenant",
                "https://proxy.example/tenant/rest/v1",
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                Config::new(input, KEY).expect(input).rest_url(),
                expected,
                "{input}"
            );
        }
    }

    #[test]
    fn bad_urls_are_refused_naming_url() {
        for bad in [
            "",
            "   ",
            "127.0.0.1:54321",
            "ftp://example.com",
            "http://",
            "https://x.supabase.co?x=1",
            "https://x.supabase.co#frag",
            "https://user:pw@x.supabase.co",
            "not a url",
        ] {
            let error = Config::new(bad, KEY).expect_err(bad);
            assert_eq!(error.code(), ErrorCode::InvalidArgument, "{bad}");
            assert_eq!(error.details()["field"], "url", "{bad}");
        }
    }

    #[test]
    fn bad_keys_are_refused_naming_the_key() {
        let too_long = "k".repeat(SERVICE_ROLE_KEY_CHARS_MAX + 1);
        for bad in ["", "has space", "new\nline", "naïve", too_long.as_str()] {
            let error = Config::new("http://localhost", bad).expect_err("bad key");
            assert_eq!(error.details()["field"], "serviceRoleKey");
        }
        assert!(Config::new("http://localhost", &"k".repeat(SERVICE_ROLE_KEY_CHARS_MAX)).is_ok());
    }

    #[test]
    fn the_key_never_appears_in_debug_output() {
        let printed = format!("{:?}", config());
        assert!(!printed.contains(KEY), "{printed}");
        assert!(printed.contains("<redacted>"));
    }
}
