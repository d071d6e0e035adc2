//! `/api/v1/monitor`: a sample every `[admin] monitor_interval_secs` (10 s by default), an hour
//! of them kept, oldest first. The dashboard's charts are drawn from these; counters are totals
//! since start, so the difference between two samples is a rate.
//!
//! The same tick feeds [`Offenders`]: who was discarded or struck, per ten minutes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::offenders::Offenders;
use super::{query, rfc3339, AdminState, ApiError};
use crate::gateway::Shared;

/// One sample.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Sample {
    /// RFC 3339.
    time: String,
    connections: usize,
    /// `ws`, `wss`, `tcp`, `http`.
    connections_by_transport: BTreeMap<&'static str, usize>,
    connections_by_route: BTreeMap<String, usize>,
    /// Publishes judged: forwarded plus discarded (retransmissions are not judged).
    messages_in: u64,
    /// Late publishes forwarded under `late = "forward"` included.
    messages_forwarded: u64,
    messages_discarded: u64,
    /// `early`, `late`, `rate_limited`, `not_authorized`.
    messages_discarded_by: BTreeMap<&'static str, u64>,
    bytes_in: u64,
    bytes_out: u64,
    bans_active: usize,
    /// Bans the policy issued since start.
    bans_issued: u64,
    strikes: u64,
    /// Routes with at least one healthy upstream, and routes in all.
    routes_healthy: usize,
    routes: usize,
}

/// The samples of the last hour, and the offenders tracked from them.
pub struct Monitor {
    samples: Mutex<VecDeque<(SystemTime, Sample)>>,
    keep: usize,
    pub offenders: Offenders,
}

impl Monitor {
    /// Take a sample every `every` while `shared` lives.
    pub fn spawn(shared: std::sync::Weak<Shared>, every: Duration) -> Arc<Monitor> {
        let every = every.max(Duration::from_secs(1));
        let keep = (3600 / every.as_secs()).max(1) as usize;
        let monitor = Arc::new(Monitor {
            samples: Mutex::new(VecDeque::with_capacity(keep)),
            keep,
            offenders: Offenders::default(),
        });
        let m = monitor.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        let live = super::stats::connections(&shared.clients.list());
        let by = BTreeMap::from([
            ("early", s.discarded_early),
            ("late", s.discarded_late),
            ("rate_limited", s.rate_limited),
            ("not_authorized", s.discarded_not_authorized),
        ]);
        let discarded: u64 = by.values().sum();
        let health = shared.route_health();
        let sample = Sample {
            time: rfc3339(now),
            connections: live.total,
            connections_by_transport: live.by_transport,
            connections_by_route: live.by_route,
            messages_in: s.forwarded + discarded,
            messages_forwarded: s.forwarded,
            messages_discarded: discarded,
            messages_discarded_by: by,
            bytes_in,
            bytes_out,
            bans_active: shared.bans.tally(now).active,
            bans_issued: s.bans_issued,
            strikes: s.strikes,
            routes_healthy: health.iter().filter(|(_, up)| *up).count(),
            routes: health.len(),
        };
        {
            let mut samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
            if samples.len() >= self.keep {
                samples.pop_front();
            }
            samples.push_back((now, sample));
        }
        self.offenders.record(shared.policy.stats(), now);
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
        (status = 200, description = "Samples every `[admin] monitor_interval_secs`, oldest first", body = Vec<Sample>),
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
