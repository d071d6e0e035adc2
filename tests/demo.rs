//! `portcullis demo` end to end: embedded broker, the gateway in-process, devices on `/mqtt`, a
//! legacy device through the agent to `/tunnel/telemetry`, three abusers, a platform
//! subscriber. Needs nothing installed.

use std::time::Duration;

/// The abusers are all banned within about 6 s of the start; this leaves a margin for a
/// loaded machine.
const RUN: Duration = Duration::from_secs(8);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_delivers_every_acknowledged_reading_and_bans_the_abusers() {
    let report = portcullis::demo::run_with_report(RUN, std::future::pending())
        .await
        .expect("the demo runs");
    // Devices stop only between readings, so every publish has its PUBACK or was never sent,
    // and the platform waits for all acknowledged ones: the counts match exactly. None of the
    // well-behaved readings was discarded, however busy the abusers kept the gateway.
    assert!(report.sent >= 4, "each device published: {report:?}");
    assert_eq!(report.received, report.sent, "{report:?}");

    // The legacy device's plain MQTT got through the agent's tunnel.
    let meter = report.devices.iter().find(|d| d.device == "meter-4");
    assert!(meter.is_some_and(|m| m.received >= 1), "{report:?}");
    assert!(report.agent.tunnels_opened >= 1, "{:?}", report.agent);
    // Halfway, the demo's load balancer cut the tunnel: resumed, and the meter never
    // reconnected (a broken MQTT session fails the demo: its device has no reconnect).
    let a = &report.agent;
    assert_eq!((a.drops, a.resumed, a.resume_failures), (1, 1, 0), "{a:?}");
    assert_eq!(a.tunnels_opened, 1, "{a:?}");

    let names: Vec<_> = report.abusers.iter().map(|a| a.device).collect();
    assert_eq!(names, ["chatty-5", "flood-6", "flapper-7"], "{report:?}");
    for a in &report.abusers {
        assert!(a.banned(), "{} was not banned: {report:?}", a.device);
        // Only what the gateway forwarded reached the platform.
        assert!(a.delivered < a.acknowledged || a.acknowledged == 0, "{a:?}");
    }
    assert!(
        report.abusers[0].kicked && report.abusers[1].kicked,
        "{report:?}"
    );

    let p = &report.policy;
    assert!(p.bans_issued >= 3, "{p:?}");
    assert!(p.discarded_early > 0, "{p:?}");
    assert!(p.rate_limited > 0, "{p:?}");
    assert!(p.refused_connect_rate > 0, "{p:?}");
    assert!(p.refused_banned >= 3, "{p:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_stops_early_when_asked() {
    let started = std::time::Instant::now();
    let stop = tokio::time::sleep(Duration::from_secs(2));
    portcullis::demo::run(Duration::from_secs(60), stop)
        .await
        .expect("the demo runs");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}
