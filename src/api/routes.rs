//! Which route a method and path name.
//!
//! The function is served at `/functions/v1/credits` and sees its path as
//! `/credits/...` (Supabase strips `/functions/v1`); both prefixes are
//! stripped here, so the same handler works behind any of them.

use super::error::ApiError;
use crate::{JobId, LotId};

/// The routes, with what their path carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `POST /charge`: hold credits for an operation (a user).
    Charge,
    /// `POST /generate`: limit, charge, generate, complete or refund (a user).
    Generate,
    /// `GET /balance` (a user).
    Balance,
    /// `GET /jobs` (a user's latest jobs).
    Jobs,
    /// `GET /jobs/:id` (a user's own job, or any job for the service role).
    Job(JobId),
    /// `GET /ledger?limit&before` (a user's own entries, newest first).
    Ledger,
    /// `POST /jobs/:id/complete` (the service role).
    Complete(JobId),
    /// `POST /jobs/:id/refund` (the service role).
    Refund(JobId),
    /// `POST /grant` (the service role): opens a lot.
    Grant,
    /// `POST /limits/peek` `{key, limit, windowSeconds}` (the service role).
    PeekLimit,
    /// `POST /limits/reset` `{key}` (the service role).
    ResetLimit,
    /// `GET /limits/usage?prefix&limit` (the service role).
    LimitUsage,
    /// `POST /limits/block` `{key, until?, reason}` (the service role).
    BlockLimitKey,
    /// `POST /limits/unblock` `{key}` (the service role).
    UnblockLimitKey,
    /// `GET /lots` (a user's own lots, spendable first in spending order).
    Lots,
    /// `GET /events?after&limit` (a user's own balance events, oldest first).
    Events,
    /// `POST /lots/:id/revoke` (the service role).
    RevokeLot(LotId),
    /// `POST /plans` (the service role): create or change a plan.
    Plan,
    /// `POST /plans/subscribe` (the service role).
    Subscribe,
    /// `POST /plans/cancel` (the service role).
    Cancel,
    /// `POST /webhooks/deliver` (the service role): one drain of the webhook queue.
    DeliverWebhooks,
}

impl Route {
    /// The route's template, for logs: `/jobs/:id`, never the id itself.
    pub fn template(self) -> &'static str {
        match self {
            Route::Charge => "/charge",
            Route::Generate => "/generate",
            Route::Balance => "/balance",
            Route::Jobs => "/jobs",
            Route::Job(_) => "/jobs/:id",
            Route::Ledger => "/ledger",
            Route::Complete(_) => "/jobs/:id/complete",
            Route::Refund(_) => "/jobs/:id/refund",
            Route::Grant => "/grant",
            Route::PeekLimit => "/limits/peek",
            Route::ResetLimit => "/limits/reset",
            Route::LimitUsage => "/limits/usage",
            Route::BlockLimitKey => "/limits/block",
            Route::UnblockLimitKey => "/limits/unblock",
            Route::Lots => "/lots",
            Route::Events => "/events",
            Route::RevokeLot(_) => "/lots/:id/revoke",
            Route::Plan => "/plans",
            Route::Subscribe => "/plans/subscribe",
            Route::Cancel => "/plans/cancel",
            Route::DeliverWebhooks => "/webhooks/deliver",
        }
    }

    /// Whether only the service role may call it.
    pub fn service_only(self) -> bool {
        matches!(
            self,
            Route::Complete(_)
                | Route::Refund(_)
                | Route::Grant
                | Route::PeekLimit
                | Route::ResetLimit
                | Route::LimitUsage
                | Route::BlockLimitKey
                | Route::UnblockLimitKey
                | Route::RevokeLot(_)
                | Route::Plan
                | Route::Subscribe
                | Route::Cancel
                | Route::DeliverWebhooks
        )
    }

    /// Whether it spends credits (and so is rate-limited and fails closed).
    pub fn paid(self) -> bool {
        matches!(self, Route::Charge | Route::Generate)
    }
}

/// The path below the function: `/functions/v1/credits/jobs/x` -> `/jobs/x`.
pub fn relative_path(path: &str) -> &str {
    let path = path.strip_prefix("/functions/v1").unwrap_or(path);
    match path.strip_prefix("/credits") {
        Some(rest) if rest.is_empty() || rest.starts_with('/') => rest,
        _ => path,
    }
}

/// The route for `method` and `path`; 404 for no route, 405 for a route
/// that does not take the method, 400 for a malformed job id.
///
/// ```
/// use creditgate::api::{route, Route};
/// assert_eq!(route("POST", "/credits/charge"), Ok(Route::Charge));
/// assert_eq!(route("GET", "/credits/charge").unwrap_err().status, 405);
/// assert_eq!(route("GET", "/credits/jobs/not-a-uuid").unwrap_err().status, 400);
/// ```
pub fn route(method: &str, path: &str) -> Result<Route, ApiError> {
    let relative = relative_path(path);
    let trimmed = relative.trim_end_matches('/');
    let segments: Vec<&str> = trimmed.split('/').skip(1).collect();
    let (route, allowed) = match segments.as_slice() {
        ["charge"] => (Route::Charge, "POST"),
        ["generate"] => (Route::Generate, "POST"),
        ["grant"] => (Route::Grant, "POST"),
        ["balance"] => (Route::Balance, "GET"),
        ["ledger"] => (Route::Ledger, "GET"),
        ["jobs"] => (Route::Jobs, "GET"),
        ["jobs", id] => (Route::Job(job_id(id)?), "GET"),
        ["jobs", id, "complete"] => (Route::Complete(job_id(id)?), "POST"),
        ["jobs", id, "refund"] => (Route::Refund(job_id(id)?), "POST"),
        ["limits", "peek"] => (Route::PeekLimit, "POST"),
        ["limits", "reset"] => (Route::ResetLimit, "POST"),
        ["limits", "usage"] => (Route::LimitUsage, "GET"),
        ["limits", "block"] => (Route::BlockLimitKey, "POST"),
        ["limits", "unblock"] => (Route::UnblockLimitKey, "POST"),
        ["lots"] => (Route::Lots, "GET"),
        ["lots", id, "revoke"] => (Route::RevokeLot(uuid_segment(id, "lotId", LotId::parse)?), "POST"),
        ["events"] => (Route::Events, "GET"),
        ["plans"] => (Route::Plan, "POST"),
        ["plans", "subscribe"] => (Route::Subscribe, "POST"),
        ["plans", "cancel"] => (Route::Cancel, "POST"),
        ["webhooks", "deliver"] => (Route::DeliverWebhooks, "POST"),
        _ => return Err(ApiError::route_not_found(path)),
    };
    // HEAD is GET without a body; the runtime drops the body.
    let takes = method == allowed || (allowed == "GET" && method == "HEAD");
    if takes {
        Ok(route)
    } else {
        Err(ApiError::method_not_allowed(method, allowed))
    }
}

fn job_id(segment: &str) -> Result<JobId, ApiError> {
    uuid_segment(segment, "jobId", JobId::parse)
}

/// A path segment holding an id: a percent-encoded UUID is still a UUID;
/// anything else is not.
fn uuid_segment<T>(segment: &str, field: &str, parse: fn(&str, &str) -> Result<T, crate::CreditError>) -> Result<T, ApiError> {
    let decoded: String = percent_decode(segment).unwrap_or_default();
    parse(field, &decoded).map_err(ApiError::from)
}

fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = text.get(index + 1..index + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            index += 3;
        } else {
            out.push(bytes[index]);
            index += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const JOB: &str = "0f0e0d0c-0b0a-4908-8706-050403020100";

    fn job() -> JobId {
        JobId::parse("jobId", JOB).expect("uuid")
    }

    #[test]
    fn lot_and_plan_routes_are_the_service_roles_and_ids_are_checked() {
        for route in [Route::RevokeLot(LotId::parse("lotId", JOB).expect("uuid")), Route::Plan, Route::Subscribe, Route::Cancel] {
            assert!(route.service_only(), "{route:?}");
            assert!(!route.paid());
        }
        assert!(!Route::Lots.service_only() && !Route::Events.service_only());
        let bad = route("POST", "/credits/lots/nope/revoke").expect_err("not a uuid");
        assert_eq!((bad.status, bad.details["field"].as_str()), (400, Some("lotId")));
        assert_eq!(route("GET", "/credits/plans").expect_err("POST only").status, 405);
    }

    #[test]
    fn every_route_under_every_prefix() {
        for prefix in ["", "/credits", "/functions/v1/credits"] {
            let cases = [
                ("POST", "/charge", Route::Charge),
                ("POST", "/generate", Route::Generate),
                ("POST", "/grant", Route::Grant),
                ("GET", "/balance", Route::Balance),
                ("GET", "/ledger", Route::Ledger),
                ("GET", "/jobs", Route::Jobs),
                ("GET", &format!("/jobs/{JOB}"), Route::Job(job())),
                ("POST", &format!("/jobs/{JOB}/complete"), Route::Complete(job())),
                ("POST", &format!("/jobs/{JOB}/refund"), Route::Refund(job())),
                ("GET", "/balance/", Route::Balance),
                ("POST", "/limits/peek", Route::PeekLimit),
                ("POST", "/limits/reset", Route::ResetLimit),
                ("GET", "/limits/usage", Route::LimitUsage),
                ("POST", "/limits/block", Route::BlockLimitKey),
                ("POST", "/limits/unblock", Route::UnblockLimitKey),
                ("HEAD", "/balance", Route::Balance),
                ("GET", "/lots", Route::Lots),
                ("GET", "/events", Route::Events),
                ("POST", &format!("/lots/{JOB}/revoke"), Route::RevokeLot(LotId::parse("lotId", JOB).expect("uuid"))),
                ("POST", "/plans", Route::Plan),
                ("POST", "/plans/subscribe", Route::Subscribe),
                ("POST", "/plans/cancel", Route::Cancel),
                ("POST", "/webhooks/deliver", Route::DeliverWebhooks),
            ];
            for (method, path, expected) in cases {
                let path = format!("{prefix}{path}");
                assert_eq!(route(method, &path), Ok(expected), "{method} {path}");
            }
        }
    }

    #[test]
    fn unknown_paths_are_404() {
        for path in ["/", "/credits", "/credits/", "/credits/charges", "/credits/jobs/x/y/z", "/creditsX/charge", "/other/charge"] {
            let error = route("GET", path).expect_err(path);
            assert_eq!((error.status, error.code), (404, "route_not_found"), "{path}");
        }
    }

    #[test]
    fn wrong_methods_are_405_with_allow() {
        let cases = [("GET", "/credits/charge", "POST"), ("DELETE", "/credits/balance", "GET"), ("PUT", "/credits/grant", "POST")];
        for (method, path, allow) in cases {
            let error = route(method, path).expect_err(path);
            assert_eq!((error.status, error.code), (405, "method_not_allowed"));
            assert_eq!(error.headers, vec![("allow".to_owned(), allow.to_owned())]);
        }
        assert_eq!(route("GET", &format!("/credits/jobs/{JOB}/refund")).expect_err("GET").status, 405);
    }

    #[test]
    fn job_ids_must_be_uuids() {
        for bad in ["x", "1", "0f0e0d0c-0b0a-4908-8706-05040302010", "%ZZ", "%00"] {
            let error = route("GET", &format!("/credits/jobs/{bad}")).expect_err(bad);
            assert_eq!((error.status, error.code), (400, "invalid_argument"), "{bad}");
            assert_eq!(error.details["field"], "jobId");
        }
        let upper = route("GET", &format!("/credits/jobs/{}", JOB.to_uppercase()));
        assert_eq!(upper, Ok(Route::Job(job())));
        let encoded = route("GET", &format!("/credits/jobs/{}", JOB.replace('-', "%2D")));
        assert_eq!(encoded, Ok(Route::Job(job())));
    }

    #[test]
    fn templates_never_carry_ids() {
        assert_eq!(Route::Complete(job()).template(), "/jobs/:id/complete");
        assert!(Route::Grant.service_only() && Route::Refund(job()).service_only());
        assert!(Route::BlockLimitKey.service_only() && Route::LimitUsage.service_only() && !Route::LimitUsage.paid());
        assert!(!Route::Charge.service_only() && Route::Charge.paid() && Route::Generate.paid());
        assert!(!Route::Balance.paid());
        assert!(Route::DeliverWebhooks.service_only() && !Route::DeliverWebhooks.paid());
        assert_eq!(route("GET", "/credits/webhooks/deliver").expect_err("POST only").status, 405);
    }
}
