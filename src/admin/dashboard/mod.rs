//! The dashboard: pages over the admin API, served by the admin listener at `/`.
//!
//! Everything it shows comes from the same `/api/v1` calls a script makes; the pages are
//! static files embedded in the binary (`assets/`, with uPlot vendored from npm under
//! `assets/vendor/`), so there is no build step and nothing is fetched from the internet.
//!
//! Login: a form posts one of the admin tokens; a session cookie comes back (see `sessions`).
//! Only the login page and its stylesheet are served without a session.

pub mod sessions;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use include_dir::{include_dir, Dir};
use serde::Serialize;

use super::tokens::Tokens;
use super::{AdminState, ApiError};

static ASSETS: Dir<'_> = include_dir!("$CARGO_MANIFEST_DIR/src/admin/dashboard/assets");

/// Files served before login: the login page needs its stylesheet.
const PUBLIC: &[&str] = &["app.css"];
/// A login form is a token and a few bytes of encoding.
const MAX_LOGIN_BODY: usize = 4096;

/// The dashboard's routes; they check the session themselves (pages redirect to the login
/// rather than answer JSON).
pub fn routes() -> Router<AdminState> {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/dashboard/session", get(session))
        .route("/assets/{*file}", get(asset))
        // Browsers ask for it on every page; a 401 each time would count as a refused token.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

async fn index(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if state.sessions.caller(&headers, &state.tokens).is_none() {
        return see_other("/login", None);
    }
    file("index.html").unwrap_or_else(|| ApiError::internal("index.html missing").into_response())
}

async fn login_page(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    if state.sessions.caller(&headers, &state.tokens).is_some() {
        return see_other("/", None);
    }
    login_form(StatusCode::OK, None)
}

/// The login page, with a refusal said on it (our words only: nothing the client sent).
fn login_form(status: StatusCode, refusal: Option<&str>) -> Response {
    let page = ASSETS
        .get_file("login.html")
        .and_then(|f| f.contents_utf8())
        .unwrap_or("login.html missing");
    let page = match refusal {
        Some(why) => page.replace(
            "<!-- refusal -->",
            &format!("<p class=\"refusal\" role=\"alert\">{why}</p>"),
        ),
        None => page.to_owned(),
    };
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        page,
    )
        .into_response()
}

async fn login(State(state): State<AdminState>, req: Request) -> Response {
    if cross_site(req.headers()) {
        return super::csrf_refused();
    }
    let Ok(body) = axum::body::to_bytes(req.into_body(), MAX_LOGIN_BODY).await else {
        return login_form(
            StatusCode::PAYLOAD_TOO_LARGE,
            Some("The form was too large."),
        );
    };
    let token = form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    if state.tokens.check(&token).is_none() {
        let refused = &state.shared.admin_unauthorized;
        refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // Counted above; a line each would let anyone fill the log.
        tracing::debug!("dashboard login refused: not a token of admin.tokens_file");
        return login_form(
            StatusCode::UNAUTHORIZED,
            Some("That token is not one of admin.tokens_file."),
        );
    }
    let Some(cookie) = state.sessions.open(Tokens::digest(&token)) else {
        return ApiError::internal("no randomness for a session").into_response();
    };
    see_other("/", Some(sessions::set_cookie(&cookie)))
}

async fn logout(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    let Some(caller) = state.sessions.caller(&headers, &state.tokens) else {
        return see_other("/login", Some(sessions::clear_cookie()));
    };
    if cross_site(&headers) || !sessions::csrf_ok(&headers, &caller) {
        return super::csrf_refused();
    }
    state.sessions.close(&headers);
    see_other("/login", Some(sessions::clear_cookie()))
}

#[derive(Serialize)]
struct SessionView {
    /// The token's name.
    name: String,
    /// To send back as `x-csrf-token` on every request that changes something.
    csrf: String,
    monitor_interval_secs: u64,
}

async fn session(State(state): State<AdminState>, headers: HeaderMap) -> Response {
    match state.sessions.caller(&headers, &state.tokens) {
        Some(c) => Json(SessionView {
            name: c.name.to_string(),
            csrf: c.csrf.to_string(),
            monitor_interval_secs: state.monitor_interval_secs,
        })
        .into_response(),
        None => super::unauthorized("log in first"),
    }
}

async fn asset(
    State(state): State<AdminState>,
    headers: HeaderMap,
    Path(name): Path<String>,
) -> Response {
    let public = PUBLIC.contains(&name.as_str());
    if !public && state.sessions.caller(&headers, &state.tokens).is_none() {
        return super::unauthorized("log in first");
    }
    // Only the page files are served at the top: `assets/x.html` is not a second entrance.
    if name.ends_with(".html") {
        return ApiError::not_found("no such file").into_response();
    }
    file(&name).unwrap_or_else(|| ApiError::not_found("no such file").into_response())
}

/// An embedded file, typed by its extension; the name must be the file's own, spelled as it
/// is (a lookup by path also takes `x.html/` or `./x.html`).
fn file(name: &str) -> Option<Response> {
    let f = ASSETS.get_file(name)?;
    if f.path().to_str() != Some(name) {
        return None;
    }
    let kind = match name.rsplit_once('.').map(|(_, ext)| ext) {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("png") => "image/png",
        Some("svg") => "image/svg+xml",
        _ => "text/plain; charset=utf-8",
    };
    let mut r = Response::new(Body::from(f.contents()));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    Some(r)
}

/// A form posted from another site's page (browsers say so in `Sec-Fetch-Site`): another site
/// may not log a browser in or out.
fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site" || v.as_bytes() == b"same-site")
}

fn see_other(to: &'static str, cookie: Option<String>) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response();
    if let Some(v) = cookie.and_then(|c| HeaderValue::from_str(&c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// On every admin answer: no framing, no sniffing, no referrer, no caching, and scripts and
/// styles from this origin only (the pages build their DOM from text, never from HTML).
pub async fn security_headers(req: Request, next: Next) -> Response {
    let is_get = req.method() == Method::GET;
    let mut r = next.run(req).await;
    let h = r.headers_mut();
    let fixed = [
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    ];
    for (name, value) in fixed {
        h.insert(name, HeaderValue::from_static(value));
    }
    if is_get && !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}
