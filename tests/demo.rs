//! `portcullis demo` end to end: embedded broker, the gateway in-process, devices on `/mqtt`
//! and `/tunnel/telemetry`, a platform subscriber. Needs nothing installed.

use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_delivers_every_acknowledged_reading() {
    let report = portcullis::demo::run_with_report(Duration::from_secs(4), std::future::pending())
        .await
        .expect("the demo runs");
    // Devices stop only between readings, so every publish has its PUBACK or was never sent,
    // and the platform waits for all acknowledged ones: the counts match exactly.
    assert!(report.sent >= 4, "each device published: {report:?}");
    assert_eq!(report.received, report.sent, "{report:?}");
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
