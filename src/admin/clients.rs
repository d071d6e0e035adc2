//! `/api/v1/clients`: the live connections, and a kick.

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{page_of, paging, query, rfc3339, AdminState, ApiError, Caller, PageMeta};
use crate::gateway::clients::Client;

/// Filters of `GET /api/v1/clients`; all optional, combined with AND.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ClientsQuery {
    clientid: Option<String>,
    username: Option<String>,
    ip_address: Option<String>,
    like_clientid: Option<String>,
    like_username: Option<String>,
    route: Option<String>,
    /// `ws`, `wss`, `tcp` or `http` (push devices).
    #[param(pattern = "^(ws|wss|tcp|http)$")]
    transport: Option<String>,
    #[param(minimum = 1)]
    page: Option<usize>,
    /// 1 to 10000; default 100.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// A live connection. MQTT fields are null on raw tunnels and before CONNECT was admitted.
#[derive(Serialize, ToSchema)]
pub struct ClientView {
    /// The gateway's connection id.
    id: u64,
    clientid: Option<String>,
    username: Option<String>,
    /// An HTTP push device's serial (transport `http`).
    serial: Option<String>,
    /// The client IP (believed from a header only behind a trusted proxy).
    ip_address: String,
    listener: String,
    route: String,
    transport: &'static str,
    /// 4 (MQTT 3.1.1) or 5.
    proto_ver: Option<u8>,
    keepalive: Option<u16>,
    /// RFC 3339.
    connected_at: String,
    /// The device's publishes (all its connections, since it was last seen idle).
    messages: Option<Messages>,
    /// Device → upstream.
    bytes_in: u64,
    /// Upstream → device.
    bytes_out: u64,
}

#[derive(Serialize, ToSchema)]
#[schema(as = PublishCounts)]
pub struct Messages {
    forwarded: u64,
    discarded_early: u64,
    /// Late publishes, discarded or (with `late = "forward"`) forwarded.
    late: u64,
    /// Late publishes discarded (all of `late`, unless `late = "forward"`).
    discarded_late: u64,
    discarded_rate_limited: u64,
    /// Publishes outside the class's `publish_topics`.
    discarded_not_authorized: u64,
}

#[derive(Serialize, ToSchema)]
pub struct ClientsPage {
    data: Vec<ClientView>,
    meta: PageMeta,
}

/// What a kick did.
#[derive(Serialize, ToSchema)]
pub struct Kicked {
    kicked: usize,
    note: &'static str,
}

#[utoipa::path(
    get, path = "/api/v1/clients", operation_id = "list_clients", params(ClientsQuery),
    responses(
        (status = 200, description = "Live connections, oldest first", body = ClientsPage),
        (status = 400, description = "A bad parameter, named", body = ApiError),
        (status = 401, description = "No or an unknown token", body = ApiError),
    )
)]
pub async fn list(
    State(state): State<AdminState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<ClientsPage>, ApiError> {
    let q: ClientsQuery = query(raw)?;
    let (page, limit) = paging(q.page, q.limit)?;
    if let Some(t) = q.transport.as_deref() {
        if !["ws", "wss", "tcp", "http"].contains(&t) {
            return Err(ApiError::bad_request(
                "transport: must be ws, wss, tcp or http",
            ));
        }
    }
    let is =
        |want: &Option<String>, have: Option<&str>| want.as_deref().is_none_or(|w| have == Some(w));
    let like = |want: &Option<String>, have: Option<&str>| {
        want.as_deref()
            .is_none_or(|w| have.is_some_and(|h| h.contains(w)))
    };
    let matching: Vec<Arc<Client>> = state
        .shared
        .clients
        .list()
        .into_iter()
        .filter(|c| {
            let id = c.mqtt().map(|m| &*m.client_id);
            let user = c.mqtt().and_then(|m| m.username.as_deref());
            let ip = c.ip().to_string();
            is(&q.clientid, id)
                && is(&q.username, user)
                && is(&q.ip_address, Some(&ip))
                && like(&q.like_clientid, id)
                && like(&q.like_username, user)
                && is(&q.route, Some(&c.route))
                && is(&q.transport, Some(c.transport.as_str()))
        })
        .collect();
    let (clients, meta) = page_of(matching, page, limit);
    let stats = state.shared.policy.stats();
    let data = clients
        .iter()
        .map(|c| {
            let mqtt = c.mqtt();
            let key = match (mqtt, &c.serial) {
                (Some(m), _) => Some(m.client_id.clone()),
                (None, Some(serial)) => Some(crate::policy::serial_key(serial)),
                (None, None) => None,
            };
            let device = key.and_then(|k| stats.device(&k));
            ClientView {
                id: c.id,
                clientid: mqtt.map(|m| m.client_id.to_string()),
                username: mqtt.and_then(|m| m.username.as_deref().map(String::from)),
                serial: c.serial.as_deref().map(String::from),
                ip_address: c.ip().to_string(),
                listener: c.listener.to_string(),
                route: c.route.to_string(),
                transport: c.transport.as_str(),
                proto_ver: mqtt.map(|m| m.proto_ver),
                keepalive: mqtt.map(|m| m.keepalive),
                connected_at: rfc3339(c.connected_at),
                messages: device.map(|d| Messages {
                    forwarded: d.forwarded,
                    discarded_early: d.early,
                    late: d.late,
                    discarded_late: d.late_discarded,
                    discarded_rate_limited: d.rate_limited,
                    discarded_not_authorized: d.not_authorized,
                }),
                bytes_in: c.traffic.up(),
                bytes_out: c.traffic.down(),
            }
        })
        .collect();
    Ok(Json(ClientsPage { data, meta }))
}

#[utoipa::path(
    delete, path = "/api/v1/clients/{clientid}", operation_id = "kick_client",
    params(("clientid" = String, Path, description = "Percent-encoded (`/` is `%2F`)")),
    responses(
        (status = 200, description = "Every connection of that client ID closed", body = Kicked),
        (status = 400, description = "The path is not valid UTF-8 once decoded", body = ApiError),
        (status = 401, description = "No or an unknown token", body = ApiError),
        (status = 404, description = "No live connection with that client ID", body = ApiError),
    )
)]
pub async fn kick(
    State(state): State<AdminState>,
    Extension(Caller(caller)): Extension<Caller>,
    param: Result<Path<String>, PathRejection>,
) -> Result<Json<Kicked>, ApiError> {
    let clientid = super::path(param)?;
    let reason = format!("kicked by admin {caller}");
    let kicked = state.shared.clients.kick_client_id(&clientid, &reason);
    if kicked == 0 {
        return Err(ApiError::not_found(format!(
            "no live connection with client ID {clientid:?}"
        )));
    }
    tracing::info!(admin = %caller, clientid, kicked, "client kicked");
    Ok(Json(Kicked {
        kicked,
        note: "a kick without a ban is usually followed by a reconnect: ban the client ID to keep it out",
    }))
}
