//! `/api/v1/stats`: counters since start, and what is in force now.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{AdminState, ApiError};
use crate::gateway::clients::Client;
use crate::gateway::Shared;

#[derive(Serialize, ToSchema)]
pub struct Stats {
    connections: Connections,
    /// Publishes judged by the policy, by verdict.
    messages: Messages,
    /// Connections refused, by stage and reason.
    refused: Refused,
    bans: Bans,
    /// A reconnect storm is on: per-client connect strikes are suspended.
    storm_active: bool,
    /// Each route, and whether it has a healthy upstream now.
    upstreams: BTreeMap<String, bool>,
    /// HTTP push uploads by outcome (`delivered`, `replayed`, `conflict`, …), with `[push]`.
    /// Push devices are among `connections` (transport `http`) while they keep uploading.
    #[serde(skip_serializing_if = "Option::is_none")]
    push_uploads: Option<BTreeMap<String, u64>>,
}

#[derive(Serialize, ToSchema)]
pub struct Connections {
    pub(super) total: usize,
    pub(super) by_transport: BTreeMap<&'static str, usize>,
    pub(super) by_route: BTreeMap<String, usize>,
}

/// The live connections counted by transport and by route (stats and monitor samples).
pub(super) fn connections(live: &[Arc<Client>]) -> Connections {
    let mut by_transport = BTreeMap::new();
    let mut by_route = BTreeMap::new();
    for c in live {
        *by_transport.entry(c.transport.as_str()).or_default() += 1;
        *by_route.entry(c.route.to_string()).or_default() += 1;
    }
    Connections {
        total: live.len(),
        by_transport,
        by_route,
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = Verdicts)]
pub struct Messages {
    forwarded: u64,
    retransmits: u64,
    discarded_early: u64,
    discarded_late: u64,
    /// Outside the class's `publish_topics`.
    discarded_not_authorized: u64,
    /// SUBSCRIBE filters outside the class's `subscribe_topics` (refused in the SUBACK).
    subscriptions_refused: u64,
    late_forwarded: u64,
    discarded_rate_limited: u64,
}

#[derive(Serialize, ToSchema)]
pub struct Refused {
    accept_banned: u64,
    accept_rate_limited: u64,
    listener_rate_limited: u64,
    connect_banned: u64,
    connect_unknown_device: u64,
    connect_rate_limited: u64,
    connect_too_many: u64,
    /// Upgrades refused by device authentication, by reason: missing, invalid, expired,
    /// forbidden (not for this route), revoked.
    auth: BTreeMap<String, u64>,
}

#[derive(Serialize, ToSchema)]
pub struct Bans {
    active: usize,
    /// Bans in force by `as`.
    active_by_as: BTreeMap<String, usize>,
    /// Bans in force by `by` (`portcullis:rate`, `admin:ops`, `file`, …).
    active_by_by: BTreeMap<String, usize>,
    /// Issued by the policy since start.
    issued_by_policy: u64,
    strikes: u64,
    /// Connections closed because a ban came to cover them, or an admin kicked them.
    kicks: u64,
}

#[utoipa::path(
    get, path = "/api/v1/stats", operation_id = "stats",
    responses(
        (status = 200, description = "Counters since start, and what is in force now", body = Stats),
        (status = 401, description = "No or an unknown token", body = ApiError),
    )
)]
pub async fn stats(State(state): State<AdminState>) -> Json<Stats> {
    Json(collect(&state.shared))
}

fn collect(shared: &Shared) -> Stats {
    let s = shared.policy.stats().snapshot();
    let tally = shared.bans.tally(SystemTime::now());
    let active_by_as = tally
        .by_kind
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    Stats {
        connections: connections(&shared.clients.list()),
        messages: Messages {
            forwarded: s.forwarded,
            retransmits: s.retransmits,
            discarded_early: s.discarded_early,
            discarded_not_authorized: s.discarded_not_authorized,
            subscriptions_refused: s.subscriptions_refused,
            discarded_late: s.discarded_late,
            late_forwarded: s.late_forwarded,
            discarded_rate_limited: s.rate_limited,
        },
        refused: Refused {
            accept_banned: s.accept_banned,
            accept_rate_limited: s.accept_rate_limited,
            listener_rate_limited: s.listener_rate_limited,
            connect_banned: s.refused_banned,
            connect_unknown_device: s.refused_unknown,
            connect_rate_limited: s.refused_connect_rate,
            connect_too_many: s.refused_too_many,
            auth: crate::auth::Refusal::LABELS
                .iter()
                .zip(&shared.auth_stats.refused)
                .map(|(l, n)| (l.to_string(), n.load(std::sync::atomic::Ordering::Relaxed)))
                .collect(),
        },
        bans: Bans {
            active: tally.active,
            active_by_as,
            active_by_by: tally.by_source,
            issued_by_policy: s.bans_issued,
            strikes: s.strikes,
            kicks: shared.clients.kicks(),
        },
        storm_active: s.storm_active,
        upstreams: shared.route_health().into_iter().collect(),
        push_uploads: shared
            .push
            .as_ref()
            .map(|p| p.stats.outcomes().map(|(o, n)| (o.to_owned(), n)).collect()),
    }
}
