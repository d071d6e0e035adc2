//! `/api/v1/banned`: list, add, remove. A ban is EMQX's record (`as`, `who`, `by`, `reason`,
//! `at`, `until`), so its users' scripts carry over; unlike EMQX, an `until` in the past is an
//! error, a duplicate is a 409, and every kind of ban kicks the connections it covers.

use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{body, page_of, paging, query, AdminState, ApiError, Caller, PageMeta};
use crate::policy::{Ban, BanList, BanSource};
use crate::store::{Record, KINDS};

/// The kinds of ban, for the OpenAPI document (the handlers read `as` as text, so that a bad
/// one is answered in our words).
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
#[allow(dead_code)]
pub enum BanKind {
    Clientid,
    Username,
    Peerhost,
    PeerhostNet,
    ClientidRe,
    UsernameRe,
    Serial,
}

/// Filters of `GET /api/v1/banned`; all optional, combined with AND.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BannedQuery {
    /// `clientid`, `username`, `peerhost`, `peerhost_net`, `clientid_re`, `username_re` or `serial`.
    #[serde(rename = "as")]
    #[param(rename = "as", value_type = Option<BanKind>)]
    kind: Option<String>,
    /// Exactly this value.
    who: Option<String>,
    /// A substring of the value.
    like_who: Option<String>,
    /// Exactly this issuer (`admin:ops`), or a prefix ending in `:` (`portcullis:`).
    by: Option<String>,
    /// From 1.
    #[param(minimum = 1)]
    page: Option<usize>,
    /// 1 to 10000; default 100.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// A page of bans.
#[derive(Serialize, ToSchema)]
pub struct BannedPage {
    data: Vec<Record>,
    meta: PageMeta,
}

/// A ban to add. `by` is not given: it is `admin:` and the name of the caller's token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewBan {
    /// `clientid`, `username`, `peerhost` (an IP), `peerhost_net` (a CIDR), `clientid_re` or
    /// `username_re` (a regex matched anywhere in the value: anchor it for the whole value).
    #[serde(rename = "as")]
    #[schema(rename = "as", value_type = BanKind)]
    kind: String,
    /// The value, IP, CIDR or pattern, as `as` says.
    #[schema(min_length = 1, max_length = 1024)]
    who: String,
    #[serde(default)]
    reason: Option<String>,
    /// RFC 3339, in the future; absent (and no `for_secs`): until removed.
    #[serde(default)]
    until: Option<String>,
    /// Instead of `until`: this many seconds from now, by the gateway's clock (the dashboard
    /// sends this, so a browser's wrong clock cannot shorten or lengthen a ban).
    #[serde(default)]
    #[schema(minimum = 1, maximum = 315360000)]
    for_secs: Option<u64>,
}

/// The longest `for_secs`: ten years (longer is "until removed").
const MAX_FOR_SECS: u64 = 315_360_000;

/// A duplicate's answer: the error, and the ban already in force.
#[derive(Serialize, ToSchema)]
pub struct Conflict {
    code: &'static str,
    message: String,
    ban: Record,
}

#[utoipa::path(
    get, path = "/api/v1/banned", operation_id = "list_banned", params(BannedQuery),
    responses(
        (status = 200, description = "Bans in force, oldest first", body = BannedPage),
        (status = 400, description = "A bad parameter, named", body = ApiError),
        (status = 401, description = "No or an unknown token", body = ApiError),
    )
)]
pub async fn list(
    State(state): State<AdminState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<BannedPage>, ApiError> {
    let q: BannedQuery = query(raw)?;
    let (page, limit) = paging(q.page, q.limit)?;
    if let Some(kind) = &q.kind {
        check_kind(kind)?;
    }
    // Filtered on the bans themselves, and only the page made into records: with 10,000 bans
    // a record each (two times formatted, four strings) was most of the answer's cost.
    let matches = |b: &Ban| {
        let who = || crate::store::subject_words(&b.subject).1;
        q.kind.as_deref().is_none_or(|k| b.subject.kind() == k)
            && q.who.as_deref().is_none_or(|w| who() == w)
            && q.like_who.as_deref().is_none_or(|w| who().contains(w))
            && q.by.as_deref().is_none_or(|want| {
                let by = b.source.by();
                match want.strip_suffix(':') {
                    Some(prefix) => by.split(':').next() == Some(prefix),
                    None => by == want,
                }
            })
    };
    let all: Vec<Ban> = state
        .shared
        .bans
        .list(SystemTime::now())
        .into_iter()
        .filter(matches)
        .collect();
    let (bans, meta) = page_of(all, page, limit);
    let data = bans.iter().map(Record::of).collect();
    Ok(Json(BannedPage { data, meta }))
}

#[utoipa::path(
    post, path = "/api/v1/banned", operation_id = "add_ban", request_body = NewBan,
    responses(
        (status = 201, description = "Banned, on disk (with a store), and every connection it covers kicked", body = Record),
        (status = 400, description = "A bad field, named", body = ApiError),
        (status = 401, description = "No or an unknown token", body = ApiError),
        (status = 409, description = "A ban on that subject is in force already", body = Conflict),
        (status = 413, description = "A body over 2 MiB", body = ApiError),
        (status = 500, description = "Enforced, but the store could not write it down", body = ApiError),
    )
)]
pub async fn add(
    State(state): State<AdminState>,
    Extension(Caller(caller)): Extension<Caller>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let new: NewBan = body(&super::bytes(raw)?)?;
    if new.who.is_empty() || new.who.len() > 1024 {
        return Err(ApiError::bad_request("who: must be 1 to 1024 bytes"));
    }
    let reason = new.reason.unwrap_or_default();
    if reason.len() > 1024 {
        return Err(ApiError::bad_request("reason: at most 1024 bytes"));
    }
    let now = SystemTime::now();
    let until = match (new.until, new.for_secs) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "for_secs: give until or for_secs, not both",
            ))
        }
        (None, Some(secs)) if !(1..=MAX_FOR_SECS).contains(&secs) => {
            return Err(ApiError::bad_request(format!(
                "for_secs: must be between 1 and {MAX_FOR_SECS} (ten years)"
            )))
        }
        (None, Some(secs)) => Some(super::rfc3339(now + std::time::Duration::from_secs(secs))),
        (until, None) => until,
    };
    let record = Record {
        kind: new.kind,
        who: new.who,
        by: BanSource::Admin(caller.clone()).by(),
        reason,
        at: super::rfc3339(now),
        until,
    };
    let ban = record.to_ban().map_err(ApiError::bad_request)?;
    if !ban.active(now) {
        return Err(ApiError::bad_request("until: is in the past"));
    }
    match state.shared.bans.insert_new(ban.clone(), now) {
        Ok(Ok(())) => {}
        Ok(Err(existing)) => {
            let conflict = Conflict {
                code: "ALREADY_EXISTS",
                message: format!(
                    "{} {} is banned already (remove it first to change it)",
                    record.kind, record.who
                ),
                ban: Record::of(&existing),
            };
            return Ok((StatusCode::CONFLICT, Json(conflict)).into_response());
        }
        Err(e) => return Err(ApiError::bad_request(e.to_string())),
    }
    // Confirmed only once it is on disk: a restart, even kill -9, enforces it again.
    state
        .shared
        .bans
        .flush()
        .await
        .map_err(|e| ApiError::internal(format!("banned in memory, not on disk: {e}")))?;
    tracing::info!(admin = %caller, subject = %ban.subject, "ban added");
    Ok((StatusCode::CREATED, Json(Record::of(&ban))).into_response())
}

#[utoipa::path(
    delete, path = "/api/v1/banned/{as}/{who}", operation_id = "remove_ban",
    params(
        ("as" = BanKind, Path, description = "The kind of ban"),
        ("who" = String, Path, description = "The value, percent-encoded (a client ID may hold `/`: `%2F`)"),
    ),
    responses(
        (status = 204, description = "Lifted, and on disk (with a store)"),
        (status = 400, description = "A bad kind or value, named", body = ApiError),
        (status = 401, description = "No or an unknown token", body = ApiError),
        (status = 404, description = "No such ban", body = ApiError),
        (status = 500, description = "Lifted, but the store could not write it down", body = ApiError),
    )
)]
pub async fn remove(
    State(state): State<AdminState>,
    Extension(Caller(caller)): Extension<Caller>,
    params: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let (kind, who) = super::path(params)?;
    let subject = crate::store::subject(&kind, &who).map_err(ApiError::bad_request)?;
    let removed = state.shared.bans.remove(&subject);
    state
        .shared
        .bans
        .flush()
        .await
        .map_err(|e| ApiError::internal(format!("lifted in memory, not on disk: {e}")))?;
    match removed {
        Some(b) if b.active(SystemTime::now()) => {
            tracing::info!(admin = %caller, subject = %subject, "ban lifted");
            Ok(StatusCode::NO_CONTENT)
        }
        _ => Err(ApiError::not_found(format!("no ban on {kind} {who}"))),
    }
}

fn check_kind(kind: &str) -> Result<(), ApiError> {
    match kind {
        k if KINDS.contains(&k) => Ok(()),
        _ => Err(ApiError::bad_request(format!(
            "as: {kind:?} is not one of {}",
            KINDS.join(", ")
        ))),
    }
}
