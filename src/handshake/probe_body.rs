//! `POST /probe`: read and count the body, keeping none of it, up to the limit.

use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::reply::{json, text, Body};
use super::upgrade::{probe_hello, probe_refused, BANNED};
use super::Router;

/// Judged like an upgrade (a client IP from a trusted proxy's header meets the bans and connect
/// rate), then admitted against the probe's caps; the session slot is held until the body is
/// read. A body that stalls for 10 s is given up (a total deadline would call a slow link a
/// small limit).
pub(super) async fn count(req: Request<Incoming>, router: &Router) -> Response<Body> {
    const STALL: std::time::Duration = std::time::Duration::from_secs(10);
    let Some(gate) = &router.inputs.probe else {
        return text(StatusCode::NOT_FOUND, "not found\n");
    };
    let (caller, believed) = router.caller(&req);
    if believed && !(router.inputs.admit)(caller.ip) {
        return text(StatusCode::FORBIDDEN, BANNED);
    }
    let _slot = match gate.admit() {
        Ok(slot) => slot,
        Err(refusal) => return probe_refused(refusal),
    };
    let view = probe_hello(req.headers(), caller, router);
    let limit = gate.settings.max_body_size;
    let mut body = req.into_body();
    let mut received = 0usize;
    let outcome = loop {
        match tokio::time::timeout(STALL, body.frame()).await {
            Ok(Some(Ok(frame))) => {
                received += frame.data_ref().map_or(0, |d| d.len());
                // Read on a little past the limit, so the client is not reset before it reads
                // the 413 (a close with unread data sends RST), but no further.
                if received > limit.saturating_add(64 * 1024) {
                    break Err(StatusCode::PAYLOAD_TOO_LARGE);
                }
            }
            Ok(None) if received > limit => break Err(StatusCode::PAYLOAD_TOO_LARGE),
            Ok(None) => break Ok(()),
            Ok(Some(Err(_))) | Err(_) => break Err(StatusCode::BAD_REQUEST),
        }
    };
    match outcome {
        Ok(()) => json(&crate::probe::BodyReceipt { received, view }),
        Err(StatusCode::PAYLOAD_TOO_LARGE) => text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "probe: body over [probe] max_body_size\n",
        ),
        Err(status) => text(status, "probe: the body broke off or stalled for 10 s\n"),
    }
}
