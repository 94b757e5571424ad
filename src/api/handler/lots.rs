//! The routes for lots, plans and balance events: a user's own lots and
//! events, and the service role's revoking and plan management (grants
//! with expiry, category and priority go through `/grant`).

use super::super::error::ApiError;
use super::super::http::{ApiRequest, ApiResponse};
use super::super::input;
use super::super::routes::Route;
use super::Api;
use crate::{PlanRequest, RevokeLotRequest, SubscribeRequest, UserId};
use serde_json::json;

impl Api {
    pub(super) async fn lots(&self, request: &ApiRequest, user: UserId) -> Result<ApiResponse, ApiError> {
        input::no_query(request)?;
        let lots = self.client.lots(&user).await?;
        Ok(ApiResponse::json(200, &json!({"lots": lots})))
    }

    pub(super) async fn events(&self, request: &ApiRequest, user: UserId) -> Result<ApiResponse, ApiError> {
        let query = input::events(request)?;
        let events = self.client.events(&user, query.after, query.limit).await?;
        let next_after = events.last().map_or(query.after, |event| event.id);
        Ok(ApiResponse::json(200, &json!({"events": events, "nextAfter": next_after})))
    }

    /// `/lots/:id/revoke`, `/plans`, `/plans/subscribe`, `/plans/cancel`.
    pub(super) async fn lots_service_route(&self, request: &ApiRequest, route: Route) -> Result<ApiResponse, ApiError> {
        input::no_query(request)?;
        let body = match route {
            Route::RevokeLot(lot_id) => {
                let mut map = input::body_object(request, false)?;
                map.insert("lotId".into(), json!(lot_id.to_string()));
                let revoke = RevokeLotRequest::from_json(&serde_json::Value::Object(map)).map_err(ApiError::from)?;
                let result = self.client.revoke_lot(&revoke).await?;
                json!({"lotId": lot_id.to_string(), "balance": result.balance})
            }
            Route::Plan => json!(self.client.upsert_plan(&input::service_body(request, PlanRequest::from_json)?).await?),
            Route::Subscribe => {
                json!(self.client.subscribe_plan(&input::service_body(request, SubscribeRequest::from_json)?).await?)
            }
            Route::Cancel => {
                let user = input::service_body(request, crate::user_field_from_json)?;
                json!({"userId": user.to_string(), "cancelled": self.client.cancel_plan(&user).await?})
            }
            _ => return Err(ApiError::route_not_found(&request.path)),
        };
        Ok(ApiResponse::json(200, &body))
    }
}
