//! The admin listener's accept loop. Not `axum::serve`: that has no cap on connections and no
//! timers, so a client without a token could hold half-sent requests open until the process
//! runs out of file descriptors, which the device listeners need. Here: a fixed number of
//! connections (more are closed at accept), a deadline for each request head, a lifetime for
//! each connection, and a bounded stop.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Operators, scripts and a Prometheus scraper: a few dozen at most.
pub const MAX_CONNECTIONS: usize = 64;
/// A request head must arrive within this.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection (keep-alive included) is closed after this; clients reconnect.
const LIFETIME: Duration = Duration::from_secs(120);
/// In-flight requests get this long to finish at stop.
const STOP_GRACE: Duration = Duration::from_secs(5);

pub async fn serve(tcp: TcpListener, app: Router, stop: CancellationToken) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            a = tcp.accept() => a,
        };
        let sock = match accepted {
            Ok((sock, _)) => sock,
            Err(e) => {
                // Out of descriptors, usually: give it a moment rather than spin.
                tracing::warn!("admin API accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("admin API: {MAX_CONNECTIONS} connections open; one more refused");
            continue;
        };
        let app = app.clone();
        let stop = stop.clone();
        tracker.spawn(async move {
            let _slot = slot;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT)
                .serve_connection(TokioIo::new(sock), TowerToHyperService::new(app));
            let mut conn = pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = tokio::time::sleep(LIFETIME) => {}
                () = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(STOP_GRACE, conn).await;
                }
            }
        });
    }
    tracker.close();
    let _ = tokio::time::timeout(STOP_GRACE, tracker.wait()).await;
}
