//! The admin API: its own listener (loopback by default), JSON in and out, every request behind
//! a bearer token (or, from the dashboard's pages, a session cookie and a CSRF header). Bans,
//! live clients, device classes and overrides, counters, offenders, Prometheus metrics, the
//! OpenAPI document, which is generated from the handlers below so that it cannot drift from
//! them, and the dashboard at `/`.
//!
//! Errors are `{ "code": "…", "message": "…" }`, the message naming the field at fault.

mod banned;
pub mod cli;
mod clients;
mod dashboard;
mod devices;
pub(crate) mod metrics;
mod monitor;
mod offenders;
mod server;
pub use server::MAX_CONNECTIONS;
mod stats;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::config::AdminSettings;
use crate::gateway::Shared;
use tokens::Tokens;

/// Everything the handlers see.
#[derive(Clone)]
pub struct AdminState {
    pub shared: Arc<Shared>,
    pub tokens: Arc<Tokens>,
    pub monitor: Arc<monitor::Monitor>,
    pub sessions: Arc<dashboard::sessions::Sessions>,
    pub monitor_interval_secs: u64,
}

/// The name of the token a request came with (`by = "admin:NAME"`).
#[derive(Clone)]
pub struct Caller(pub Arc<str>);

/// An error answer: an HTTP status and `{ code, message }`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// Machine-readable: `BAD_REQUEST`, `UNAUTHORIZED`, `NOT_FOUND`, `ALREADY_EXISTS`, `INTERNAL`.
    code: &'static str,
    /// For a person; names the field at fault.
    message: String,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "BAD_REQUEST", message)
    }
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
    pub fn internal(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", message)
    }
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let mut r = (status, Json(self)).into_response();
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"portcullis\""),
            );
        }
        r
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "portcullis admin API",
        description = "Bans, live clients, counters. Every request needs `Authorization: Bearer <token>`."
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ApiError))
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The routes and the OpenAPI document describing them, built together; with the dashboard's
/// pages in front when `dashboard` is on.
fn router(state: AdminState, dashboard: bool) -> Router {
    let (router, api) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(banned::list, banned::add))
        .routes(routes!(banned::remove))
        .routes(routes!(clients::list))
        .routes(routes!(clients::kick))
        .routes(routes!(devices::get, devices::put, devices::delete))
        .routes(routes!(devices::classes))
        .routes(routes!(devices::overrides))
        .routes(routes!(stats::stats))
        .routes(routes!(monitor::monitor))
        .routes(routes!(offenders::offenders))
        .split_for_parts();
    let doc = api.to_pretty_json().unwrap_or_default();
    let api = router
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { ([(header::CONTENT_TYPE, "application/json")], doc) }
            }),
        )
        .route("/metrics", axum::routing::get(metrics::scrape))
        .fallback(|| async { ApiError::not_found("no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "this endpoint does not take that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .layer(axum::middleware::from_fn(refuse_large_bodies))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authenticate,
        ));
    let pages = match dashboard {
        true => dashboard::routes(),
        false => Router::new(),
    };
    pages
        .merge(api)
        .layer(axum::middleware::from_fn(dashboard::security_headers))
        .with_state(state)
}

/// Largest request body (a ban, an override: a few hundred bytes in practice).
pub const MAX_BODY: usize = 2 << 20;

/// A body announced over [`MAX_BODY`] is refused before a byte of it is read (the extractor's
/// own limit only trips once that much has arrived, which a slow client can make take long).
async fn refuse_large_bodies(req: Request, next: Next) -> Response {
    let announced = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY as u64) {
        let message = format!("body: over {MAX_BODY} bytes");
        return ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "TOO_LARGE", message).into_response();
    }
    next.run(req).await
}

/// No token, a malformed header or an unknown token: 401, and the handler never runs. Without
/// an `Authorization` header, a dashboard session's cookie will do, and a request that changes
/// something must then carry the session's CSRF token too (a bearer token needs none: no other
/// site's page can make a browser send one).
async fn authenticate(State(state): State<AdminState>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")));
    let name = match presented {
        Some(bearer) => bearer.map(str::trim).and_then(|t| state.tokens.check(t)),
        None => match state.sessions.caller(req.headers(), &state.tokens) {
            Some(c) => {
                let safe = matches!(*req.method(), Method::GET | Method::HEAD);
                if !safe && !dashboard::sessions::csrf_ok(req.headers(), &c) {
                    return csrf_refused();
                }
                Some(c.name)
            }
            None => None,
        },
    };
    let Some(name) = name else {
        let refused = &state.shared.admin_unauthorized;
        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return unauthorized(match presented {
            Some(Some(_)) => "the token is not one of admin.tokens_file",
            _ => "an Authorization: Bearer <token> header is required",
        });
    };
    req.extensions_mut().insert(Caller(name));
    next.run(req).await
}

fn unauthorized(message: &str) -> Response {
    ApiError::new(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", message).into_response()
}

/// A session's request that changes something, without the session's CSRF token.
fn csrf_refused() -> Response {
    let message =
        "x-csrf-token: missing or wrong (the dashboard sends it; scripts use a bearer token)";
    ApiError::new(StatusCode::FORBIDDEN, "FORBIDDEN", message).into_response()
}

/// The running admin listener.
pub struct AdminServer {
    pub local_addr: SocketAddr,
    /// As configured at start (port 0 stays 0 here; `local_addr` has the port bound): a
    /// reload changes only the tokens.
    pub settings: AdminSettings,
    pub tokens: Arc<Tokens>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl AdminServer {
    /// Bind `settings.bind` and serve until [`AdminServer::stop`].
    pub async fn start(settings: &AdminSettings, shared: Arc<Shared>) -> Result<Self, String> {
        let tokens = Arc::new(Tokens::load(&settings.tokens_file)?);
        let tcp = tokio::net::TcpListener::bind(settings.bind)
            .await
            .map_err(|e| format!("admin.bind {}: {e}", settings.bind))?;
        let local_addr = tcp
            .local_addr()
            .map_err(|e| format!("admin.bind {}: {e}", settings.bind))?;
        if !local_addr.ip().is_loopback() {
            tracing::warn!(%local_addr, "the admin API listens beyond loopback: keep it behind a firewall");
        }
        let every = std::time::Duration::from_secs(settings.monitor_interval_secs);
        let monitor = monitor::Monitor::spawn(Arc::downgrade(&shared), every);
        let state = AdminState {
            shared,
            tokens: tokens.clone(),
            monitor,
            sessions: Arc::default(),
            monitor_interval_secs: settings.monitor_interval_secs,
        };
        let app = router(state, settings.dashboard);
        let stop = CancellationToken::new();
        let until = stop.clone();
        let task = tokio::spawn(server::serve(tcp, app, until));
        tracing::info!(addr = %local_addr, "admin API listening");
        Ok(AdminServer {
            local_addr,
            settings: settings.clone(),
            tokens,
            stop,
            task,
        })
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// `page` and `limit` of a list, checked: page ≥ 1, limit 1–10000 (default 100).
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct PageMeta {
    pub page: usize,
    pub limit: usize,
    /// Matching items, on every page.
    pub count: usize,
    pub hasnext: bool,
}

pub fn paging(page: Option<usize>, limit: Option<usize>) -> Result<(usize, usize), ApiError> {
    let page = page.unwrap_or(1);
    let limit = limit.unwrap_or(100);
    if page == 0 {
        return Err(ApiError::bad_request("page: must be 1 or more"));
    }
    if !(1..=10_000).contains(&limit) {
        return Err(ApiError::bad_request("limit: must be between 1 and 10000"));
    }
    Ok((page, limit))
}

/// One page of `items`, and its meta.
pub fn page_of<T>(items: Vec<T>, page: usize, limit: usize) -> (Vec<T>, PageMeta) {
    let count = items.len();
    let start = (page - 1).saturating_mul(limit);
    let data: Vec<T> = items.into_iter().skip(start).take(limit).collect();
    let hasnext = start.saturating_add(limit) < count;
    (
        data,
        PageMeta {
            page,
            limit,
            count,
            hasnext,
        },
    )
}

/// A query string into `T`: unknown parameters refused by name, a bad value named by its key.
pub fn query<T: serde::de::DeserializeOwned>(raw: Option<String>) -> Result<T, ApiError> {
    let pairs = form_urlencoded::parse(raw.as_deref().unwrap_or("").as_bytes());
    let de = serde_urlencoded::Deserializer::new(pairs);
    serde_path_to_error::deserialize(de).map_err(|e| named("query", e.path(), e.inner()))
}

/// `where: key: what` (the key left out when serde does not know it).
fn named(place: &str, path: &serde_path_to_error::Path, e: &dyn std::fmt::Display) -> ApiError {
    let key = path.to_string();
    if key.is_empty() || key == "." {
        ApiError::bad_request(format!("{place}: {e}"))
    } else {
        ApiError::bad_request(format!("{key}: {e}"))
    }
}

/// A JSON object into `T`; the error names the field. (serde would also take an array for a
/// struct, field by position: refused, since nobody means that.)
pub fn body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ApiError::bad_request(format!("body: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("body: must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| named("body", e.path(), e.inner()))
}

/// Path parameters, or a JSON 400 saying which part of the path is wrong.
pub fn path<T>(
    p: Result<axum::extract::Path<T>, axum::extract::rejection::PathRejection>,
) -> Result<T, ApiError> {
    p.map(|axum::extract::Path(t)| t)
        .map_err(|e| ApiError::bad_request(format!("path: {}", e.body_text())))
}

/// A request body, or a JSON error (413 when over the limit).
pub fn bytes(
    b: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<axum::body::Bytes, ApiError> {
    b.map_err(|e| {
        let status = e.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "TOO_LARGE",
            _ => "BAD_REQUEST",
        };
        ApiError::new(status, code, format!("body: {}", e.body_text()))
    })
}

/// RFC 3339, UTC, milliseconds.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}
