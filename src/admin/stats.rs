//! `/api/v1/stats` (counters now) and `/api/v1/monitor` (10 s samples of the last hour).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{query, rfc3339, AdminState, ApiError};
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
    /// HTTP push uploads by outcome (`delivered`, `replayed`, `conflict`, …), with `[push]`.
    /// Push devices are among `connections` (transport `http`) while they keep uploading.
    #[serde(skip_serializing_if = "Option::is_none")]
    push_uploads: Option<BTreeMap<String, u64>>,
}

#[derive(Serialize, ToSchema)]
pub struct Connections {
    total: usize,
    by_transport: BTreeMap<String, usize>,
    by_route: BTreeMap<String, usize>,
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
    let mut by_transport = BTreeMap::new();
    let mut by_route = BTreeMap::new();
    let live = shared.clients.list();
    for c in &live {
        *by_transport
            .entry(c.transport.as_str().to_owned())
            .or_default() += 1;
        *by_route.entry(c.route.to_string()).or_default() += 1;
    }
    let tally = shared.bans.tally(SystemTime::now());
    let active_by_as = tally
        .by_kind
        .iter()
        .map(|(k, n)| (k.to_string(), *n))
        .collect();
    Stats {
        connections: Connections {
            total: live.len(),
            by_transport,
            by_route,
        },
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
        push_uploads: shared
            .push
            .as_ref()
            .map(|p| p.stats.outcomes().map(|(o, n)| (o.to_owned(), n)).collect()),
    }
}

/// One 10 s sample.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Sample {
    /// RFC 3339.
    time: String,
    connections: usize,
    /// Counters are totals since start: the difference between samples is the rate.
    messages_forwarded: u64,
    messages_discarded: u64,
    bytes_in: u64,
    bytes_out: u64,
    bans_active: usize,
}

/// The samples of the last hour, oldest first.
#[derive(Default)]
pub struct Monitor {
    samples: Mutex<VecDeque<(SystemTime, Sample)>>,
}

pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const KEEP: usize = 360;

impl Monitor {
    /// Take a sample every 10 s while `shared` lives.
    pub fn spawn(shared: std::sync::Weak<Shared>) -> Arc<Monitor> {
        let monitor = Arc::new(Monitor::default());
        let m = monitor.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SAMPLE_EVERY);
            loop {
                tick.tick().await;
                let Some(shared) = shared.upgrade() else {
                    return;
                };
                m.record(&shared);
            }
        });
        monitor
    }

    fn record(&self, shared: &Shared) {
        let s = shared.policy.stats().snapshot();
        let (bytes_in, bytes_out) = shared.clients.bytes();
        let now = SystemTime::now();
        let sample = Sample {
            time: rfc3339(now),
            connections: shared.clients.len(),
            messages_forwarded: s.forwarded,
            messages_discarded: s.discarded_early
                + s.discarded_late
                + s.rate_limited
                + s.discarded_not_authorized,
            bytes_in,
            bytes_out,
            bans_active: shared.bans.tally(now).active,
        };
        let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() == KEEP {
            samples.pop_front();
        }
        samples.push_back((now, sample));
    }

    fn latest(&self, secs: u64) -> Vec<Sample> {
        let since = SystemTime::now() - Duration::from_secs(secs);
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .iter()
            .filter(|(t, _)| *t >= since)
            .map(|(_, s)| s.clone())
            .collect()
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct MonitorQuery {
    /// Seconds back from now, 10 to 3600; default 3600.
    #[param(minimum = 10, maximum = 3600)]
    latest: Option<u64>,
}

#[utoipa::path(
    get, path = "/api/v1/monitor", operation_id = "monitor", params(MonitorQuery),
    responses(
        (status = 200, description = "Samples every 10 s, oldest first", body = Vec<Sample>),
        (status = 400, description = "A bad parameter, named", body = ApiError),
        (status = 401, description = "No or an unknown token", body = ApiError),
    )
)]
pub async fn monitor(
    State(state): State<AdminState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Sample>>, ApiError> {
    let q: MonitorQuery = query(raw)?;
    let latest = q.latest.unwrap_or(3600);
    if !(10..=3600).contains(&latest) {
        return Err(ApiError::bad_request("latest: must be between 10 and 3600"));
    }
    Ok(Json(state.monitor.latest(latest)))
}
