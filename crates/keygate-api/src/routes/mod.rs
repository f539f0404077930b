//! Route handlers, one file per resource, and the helpers they share.

mod applications;
mod integrations;
mod policies;
mod service_accounts;
mod sessions;
mod traces;

use keygate_store::{Cursor, PageRequest};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;

use crate::ApiState;
use crate::error::ApiError;

pub fn routes() -> OpenApiRouter<ApiState> {
    OpenApiRouter::new()
        .merge(applications::routes())
        .merge(integrations::routes())
        .merge(policies::routes())
        .merge(service_accounts::routes())
        .merge(sessions::routes())
        .merge(traces::routes())
}

/// `limit` (1–200, default 50) and an opaque `cursor`.
#[derive(Deserialize, IntoParams, Default)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 200;

pub fn page_request(limit: Option<u32>, cursor: Option<&str>) -> Result<PageRequest, ApiError> {
    let limit = limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::validation(
            "limit",
            format!("must be between 1 and {MAX_LIMIT}"),
        ));
    }
    let after = match cursor.filter(|c| !c.is_empty()) {
        Some(c) => Some(
            Cursor::decode(c)
                .ok_or_else(|| ApiError::validation("cursor", "is not a valid cursor"))?,
        ),
        None => None,
    };
    Ok(PageRequest { limit, after })
}

/// Checks a display name: present, trimmed, at most 200 characters.
pub fn check_name(field: &str, name: &str) -> Result<String, ApiError> {
    let name = name.trim();
    if name.is_empty() {
        return Err(ApiError::validation(field, "must not be empty"));
    }
    if name.chars().count() > 200 {
        return Err(ApiError::validation(
            field,
            "must be at most 200 characters",
        ));
    }
    Ok(name.to_owned())
}
