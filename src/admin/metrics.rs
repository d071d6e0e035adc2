//! `GET /metrics`: OpenMetrics text through `prometheus-client`. The counters already live in
//! the policy, the registry of clients and the ban list (atomics bumped on the hot path); a
//! scrape reads them into a registry made for that scrape, so nothing is counted twice and no
//! global state exists (tests run gateways side by side).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::{AdminState, ApiError};
use crate::gateway::Shared;

type Labels = Vec<(&'static str, String)>;

fn counter(reg: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, u64)>) {
    let family = Family::<Labels, Counter>::default();
    for (labels, v) in rows {
        family.get_or_create(&labels).inc_by(v);
    }
    reg.register(name, help, family);
}

fn gauge(reg: &mut Registry, name: &str, help: &str, rows: Vec<(Labels, i64)>) {
    let family = Family::<Labels, Gauge>::default();
    for (labels, v) in rows {
        family.get_or_create(&labels).set(v);
    }
    reg.register(name, help, family);
}

fn l(pairs: &[(&'static str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
}

/// Resumable tunnels (`[resume]`): held, parked, resumed, failures, replay, time to resume.
fn resume_metrics(reg: &mut Registry, lot: &crate::forward::resume::lot::Lot) {
    let s = &lot.stats;
    let n = |c: &std::sync::atomic::AtomicU64| vec![(vec![], c.load(Relaxed))];
    let held = vec![(vec![], lot.len() as i64)];
    gauge(
        reg,
        "resumable_tunnels",
        "Resumable tunnels held (live or parked)",
        held,
    );
    counter(
        reg,
        "resume_parked",
        "Resumable tunnels whose WebSocket dropped (parked for a resume)",
        n(&s.parked),
    );
    counter(
        reg,
        "resume_resumed",
        "Tunnels resumed on a new WebSocket",
        n(&s.resumed),
    );
    let rows = s
        .failures()
        .map(|(reason, v)| (l(&[("reason", reason)]), v))
        .collect();
    counter(
        reg,
        "resume_failures",
        "Resumes refused or tunnels not resumed, by reason",
        rows,
    );
    counter(
        reg,
        "resume_bytes_replayed",
        "Bytes sent again to the agent after a resume",
        n(&s.bytes_replayed),
    );
    let micros = s.resume_micros.load(Relaxed);
    counter(
        reg,
        "resume_wait_microseconds",
        "Time from drops to their resumes, summed (divide by resume_resumed for the mean)",
        vec![(vec![], micros)],
    );
}

/// Every metric, as of now. The README's table lists them.
pub fn render(shared: &Shared) -> Result<String, std::fmt::Error> {
    let mut reg = Registry::with_prefix("portcullis");
    let s = shared.policy.stats().snapshot();

    let mut active: BTreeMap<(String, String, &'static str), i64> = BTreeMap::new();
    for c in shared.clients.list() {
        let key = (
            c.listener.to_string(),
            c.route.to_string(),
            c.transport.as_str(),
        );
        *active.entry(key).or_default() += 1;
    }
    let rows = active
        .into_iter()
        .map(|((listener, route, transport), n)| {
            let labels = l(&[
                ("listener", &listener),
                ("route", &route),
                ("transport", transport),
            ]);
            (labels, n)
        })
        .collect();
    gauge(
        &mut reg,
        "connections_active",
        "Connections relaying now",
        rows,
    );

    let publish = |verdict, reason, v| (l(&[("verdict", verdict), ("reason", reason)]), v);
    counter(
        &mut reg,
        "publishes",
        "Device publishes by the policy's verdict and its reason",
        vec![
            publish(
                "forwarded",
                "in_rhythm",
                s.forwarded.saturating_sub(s.late_forwarded),
            ),
            publish("forwarded", "late", s.late_forwarded),
            publish("forwarded", "retransmit", s.retransmits),
            publish("discarded", "early", s.discarded_early),
            publish("discarded", "not_authorized", s.discarded_not_authorized),
            publish("discarded", "late", s.discarded_late),
            publish("discarded", "rate_limited", s.rate_limited),
        ],
    );
    counter(
        &mut reg,
        "subscriptions_refused",
        "SUBSCRIBE filters outside the class's subscribe_topics (refused in the SUBACK)",
        vec![(vec![], s.subscriptions_refused)],
    );
    let refused = |stage, reason, v| (l(&[("stage", stage), ("reason", reason)]), v);
    counter(
        &mut reg,
        "refused",
        "Connections refused, by stage (accept, connect) and reason",
        vec![
            refused("accept", "banned", s.accept_banned),
            refused("accept", "rate_limited", s.accept_rate_limited),
            refused("accept", "listener_rate_limited", s.listener_rate_limited),
            refused("connect", "banned", s.refused_banned),
            refused("connect", "unknown_device", s.refused_unknown),
            refused("connect", "rate_limited", s.refused_connect_rate),
            refused("connect", "too_many_connections", s.refused_too_many),
        ],
    );
    let (bytes_in, bytes_out) = shared.clients.bytes();
    counter(
        &mut reg,
        "bytes",
        "Bytes relayed: in is device to upstream, out is upstream to device",
        vec![
            (l(&[("direction", "in")]), bytes_in),
            (l(&[("direction", "out")]), bytes_out),
        ],
    );

    let tally = shared.bans.tally(SystemTime::now());
    let rows = tally
        .by_kind
        .into_iter()
        .map(|(k, n)| (l(&[("as", k)]), n as i64))
        .collect();
    gauge(&mut reg, "bans_active", "Bans in force, by kind", rows);
    let rows = shared
        .bans
        .issued()
        .into_iter()
        .map(|(by, n)| (l(&[("by", by)]), n))
        .collect();
    counter(
        &mut reg,
        "bans_issued",
        "Bans issued since start, by issuer",
        rows,
    );
    counter(
        &mut reg,
        "kicks",
        "Live connections closed by a ban covering them or an admin's kick",
        vec![(vec![], shared.clients.kicks())],
    );
    counter(
        &mut reg,
        "strikes",
        "Policy strikes",
        vec![(vec![], s.strikes)],
    );
    counter(
        &mut reg,
        "storms",
        "Reconnect storms detected",
        vec![(vec![], s.storms)],
    );
    let rows = shared
        .route_health()
        .into_iter()
        .map(|(route, healthy)| (l(&[("route", &route)]), i64::from(healthy)))
        .collect();
    gauge(
        &mut reg,
        "upstream_healthy",
        "1 if a route has a healthy upstream",
        rows,
    );
    counter(
        &mut reg,
        "admin_unauthorized",
        "Admin API requests refused for a missing or unknown token",
        vec![(vec![], shared.admin_unauthorized.load(Relaxed))],
    );
    let a = &shared.auth_stats;
    let rows = crate::auth::Refusal::LABELS
        .iter()
        .zip(&a.refused)
        .map(|(reason, n)| (l(&[("reason", reason)]), n.load(Relaxed)))
        .collect();
    counter(
        &mut reg,
        "auth_refused",
        "WebSocket upgrades (and raw MQTT CONNECTs) refused by device authentication",
        rows,
    );
    let rows = ["token", "certificate"]
        .iter()
        .zip(&a.accepted)
        .map(|(method, n)| (l(&[("method", method)]), n.load(Relaxed)))
        .collect();
    counter(
        &mut reg,
        "auth_accepted",
        "Devices that proved their identity, by method",
        rows,
    );
    if let Some(c) = shared.bans.cluster() {
        let up = vec![(vec![], i64::from(c.connected()))];
        gauge(
            &mut reg,
            "redis_connected",
            "1 while the cluster's Redis is reachable",
            up,
        );
        let n = vec![(vec![], c.resyncs())];
        counter(&mut reg, "redis_resyncs", "Full ban resyncs with Redis", n);
        let n = vec![(vec![], c.outages())];
        counter(
            &mut reg,
            "redis_outages",
            "Times Redis was lost or unreachable",
            n,
        );
    }
    if let Some(lot) = &shared.resume {
        resume_metrics(&mut reg, lot);
    }
    let rows = shared
        .timings
        .handshakes()
        .into_iter()
        .map(|(outcome, n)| (l(&[("outcome", outcome)]), n))
        .collect();
    counter(
        &mut reg,
        "handshakes",
        "Connections by how their handshake ended: upgraded, answered (health, probe), refused",
        rows,
    );
    reg.register_with_unit(
        "policy_decision",
        "Time to judge one publish (one in 64 is timed)",
        prometheus_client::registry::Unit::Seconds,
        shared.timings.decision.clone(),
    );
    if let Some(h) = shared.bans.commit_seconds() {
        reg.register_with_unit(
            "store_commit",
            "Time per ban store commit, fsync included",
            prometheus_client::registry::Unit::Seconds,
            h,
        );
    }
    if let Some(push) = &shared.push {
        push_metrics(&mut reg, push);
    }
    gauge(
        &mut reg,
        "build_info",
        "The running build",
        vec![(l(&[("version", env!("CARGO_PKG_VERSION"))]), 1)],
    );

    let mut out = String::new();
    encode(&mut out, &reg)?;
    Ok(out)
}

/// HTTP push: uploads by outcome, check-ins, transactions in flight, devices known, the
/// records' health, collector answer times. (Collector health: `upstream_healthy{route}`.)
fn push_metrics(reg: &mut Registry, push: &crate::forward::push::Push) {
    let rows = push
        .stats
        .outcomes()
        .map(|(outcome, n)| (l(&[("outcome", outcome)]), n))
        .collect();
    counter(
        reg,
        "push_uploads",
        "HTTP push uploads by outcome: delivered, replayed, conflict (409), mismatch (422), discarded, redirected, refusals",
        rows,
    );
    let n = push.stats.checkins.load(Relaxed);
    counter(
        reg,
        "push_checkins",
        "Check-ins answered",
        vec![(vec![], n)],
    );
    let flights = vec![(vec![], push.ledger.in_flight() as i64)];
    gauge(
        reg,
        "push_in_flight",
        "Transactions being delivered by this gateway",
        flights,
    );
    let devices = vec![(vec![], push.devices() as i64)];
    gauge(
        reg,
        "push_devices",
        "Push devices known (uploaded within device_idle_secs)",
        devices,
    );
    let n = vec![(vec![], push.ledger.evicted.load(Relaxed))];
    counter(
        reg,
        "push_records_evicted",
        "Outcomes dropped before their retention (no [store], over max_records_in_memory)",
        n,
    );
    let n = vec![(vec![], push.ledger.redis_fallbacks.load(Relaxed))];
    counter(
        reg,
        "push_redis_fallbacks",
        "Transactions this gateway arbitrated alone because Redis could not be asked",
        n,
    );
    reg.register_with_unit(
        "push_collector",
        "Time from sending an upload to a collector to its whole answer",
        prometheus_client::registry::Unit::Seconds,
        push.stats.collector_seconds.clone(),
    );
}

pub async fn scrape(State(state): State<AdminState>) -> Response {
    match render(&state.shared) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => ApiError::internal("metrics could not be encoded").into_response(),
    }
}
