//! `/api/v1/devices/{clientid}`: the class a client ID gets, and an admin's override of it,
//! applied from the device's next publish on (live sessions included). Overrides live in
//! memory: lasting ones belong in `[policy.devices]`, reloaded on SIGHUP. Also the classes
//! themselves (`/api/v1/classes`) and the overrides in force (`/api/v1/overrides`).

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{body, page_of, paging, query, AdminState, ApiError, Caller, PageMeta};
use crate::config::policy::DeviceClass;

#[derive(Serialize, ToSchema)]
pub struct DeviceView {
    clientid: String,
    class: String,
    /// Set through this API (else from `[policy]` devices, prefixes or the default class).
    overridden: bool,
    /// The class's settings: T (`push_interval_secs`), E (`tolerance_secs`), rates, limits.
    settings: DeviceClass,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassOverride {
    /// A class of `[policy.classes]`.
    #[schema(min_length = 1)]
    class: String,
}

fn view(state: &AdminState, clientid: &str) -> Result<DeviceView, ApiError> {
    let v = state.shared.policy.class_of(clientid).ok_or_else(|| {
        ApiError::not_found(format!(
            "{clientid:?} matches no device rule and unknown devices are refused"
        ))
    })?;
    Ok(DeviceView {
        clientid: clientid.to_owned(),
        class: v.class,
        overridden: v.overridden,
        settings: v.settings,
    })
}

#[utoipa::path(
    get, path = "/api/v1/devices/{clientid}", operation_id = "get_device",
    params(("clientid" = String, Path, description = "Percent-encoded (`/` is `%2F`)")),
    responses(
        (status = 200, description = "The class this client ID gets now", body = DeviceView),
        (status = 400, description = "The path is not valid UTF-8 once decoded", body = ApiError),
        (status = 401, description = "No or an unknown token", body = ApiError),
        (status = 404, description = "No class: unknown devices are refused", body = ApiError),
    )
)]
pub async fn get(
    State(state): State<AdminState>,
    param: Result<Path<String>, PathRejection>,
) -> Result<Json<DeviceView>, ApiError> {
    let clientid = super::path(param)?;
    Ok(Json(view(&state, &clientid)?))
}

#[utoipa::path(
    put, path = "/api/v1/devices/{clientid}", operation_id = "override_device",
    params(("clientid" = String, Path, description = "Percent-encoded (`/` is `%2F`)")),
    request_body = ClassOverride,
    responses(
        (status = 200, description = "In force from the device's next publish", body = DeviceView),
        (status = 400, description = "No such class, or a bad body, named", body = ApiError),
        (status = 401, description = "No or an unknown token", body = ApiError),
        (status = 413, description = "A body over 2 MiB", body = ApiError),
    )
)]
pub async fn put(
    State(state): State<AdminState>,
    Extension(Caller(caller)): Extension<Caller>,
    param: Result<Path<String>, PathRejection>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Json<DeviceView>, ApiError> {
    let clientid = super::path(param)?;
    let o: ClassOverride = body(&super::bytes(raw)?)?;
    if clientid.is_empty() || clientid.len() > 1024 {
        return Err(ApiError::bad_request("clientid: must be 1 to 1024 bytes"));
    }
    state
        .shared
        .policy
        .set_override(&clientid, &o.class)
        .map_err(ApiError::bad_request)?;
    tracing::info!(admin = %caller, clientid, class = o.class, "class override set");
    Ok(Json(view(&state, &clientid)?))
}

#[utoipa::path(
    delete, path = "/api/v1/devices/{clientid}", operation_id = "clear_device_override",
    params(("clientid" = String, Path, description = "Percent-encoded (`/` is `%2F`)")),
    responses(
        (status = 204, description = "Back to the class `[policy]` gives it, from its next publish"),
        (status = 400, description = "The path is not valid UTF-8 once decoded", body = ApiError),
        (status = 401, description = "No or an unknown token", body = ApiError),
        (status = 404, description = "No override for that client ID", body = ApiError),
    )
)]
pub async fn delete(
    State(state): State<AdminState>,
    Extension(Caller(caller)): Extension<Caller>,
    param: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let clientid = super::path(param)?;
    if !state.shared.policy.clear_override(&clientid) {
        return Err(ApiError::not_found(format!("no override for {clientid:?}")));
    }
    tracing::info!(admin = %caller, clientid, "class override cleared");
    Ok(StatusCode::NO_CONTENT)
}

/// A class of `[policy.classes]`.
#[derive(Serialize, ToSchema)]
pub struct ClassView {
    name: String,
    settings: DeviceClass,
}

#[utoipa::path(
    get, path = "/api/v1/classes", operation_id = "list_classes",
    responses(
        (status = 200, description = "Every class in force, by name", body = Vec<ClassView>),
        (status = 401, description = "No or an unknown token", body = ApiError),
    )
)]
pub async fn classes(State(state): State<AdminState>) -> Json<Vec<ClassView>> {
    let all = state.shared.policy.classes();
    Json(
        all.into_iter()
            .map(|(name, settings)| ClassView { name, settings })
            .collect(),
    )
}

/// Filters of `GET /api/v1/overrides`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OverridesQuery {
    /// A substring of the client ID.
    like_clientid: Option<String>,
    /// Exactly this class.
    class: Option<String>,
    #[param(minimum = 1)]
    page: Option<usize>,
    /// 1 to 10000; default 100.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

#[derive(Serialize, ToSchema)]
pub struct OverrideView {
    clientid: String,
    class: String,
}

#[derive(Serialize, ToSchema)]
pub struct OverridesPage {
    data: Vec<OverrideView>,
    meta: PageMeta,
}

#[utoipa::path(
    get, path = "/api/v1/overrides", operation_id = "list_overrides", params(OverridesQuery),
    responses(
        (status = 200, description = "The per-device class overrides in force, by client ID", body = OverridesPage),
        (status = 400, description = "A bad parameter, named", body = ApiError),
        (status = 401, description = "No or an unknown token", body = ApiError),
    )
)]
pub async fn overrides(
    State(state): State<AdminState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<OverridesPage>, ApiError> {
    let q: OverridesQuery = query(raw)?;
    let (page, limit) = paging(q.page, q.limit)?;
    let matching: Vec<_> = state
        .shared
        .policy
        .overrides()
        .into_iter()
        .filter(|(id, class)| {
            q.like_clientid.as_deref().is_none_or(|w| id.contains(w))
                && q.class.as_deref().is_none_or(|c| **class == *c)
        })
        .collect();
    let (items, meta) = page_of(matching, page, limit);
    let data = items
        .into_iter()
        .map(|(id, class)| OverrideView {
            clientid: id.to_string(),
            class: class.to_string(),
        })
        .collect();
    Ok(Json(OverridesPage { data, meta }))
}
