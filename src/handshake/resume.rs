//! The resumption headers of a `/tunnel` upgrade (the protocol is in `forward::resume`): an
//! offer opens a resumable tunnel, a token claims a parked one. Without a `[resume]` lot an
//! offer is ignored (today's tunnel) and a token is refused like any unknown one.

use std::sync::Arc;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};

use bytes::Bytes;

use super::reply::{marked, text, Body};
use super::Target;
use crate::forward::resume::lot::{Identity, Lot, Resumption};
use crate::forward::resume::tokens::Refusal;
use crate::forward::resume::{DEFAULT_WINDOW, NODE, OFFER, RECEIVED, REFUSED, TOKEN, WINDOW};

/// The headers to add to the 101.
pub(super) type Answer = Vec<(HeaderName, HeaderValue)>;

/// What the agent may say its replay buffer is; anything else is taken as the default.
const PEER_WINDOWS: std::ops::RangeInclusive<usize> = 4096..=(64 << 20);

/// Resumption as this upgrade asks for it: `None` for a plain tunnel, or the refusal to send.
#[allow(clippy::result_large_err)] // the refusal is the response, sent at once
pub(super) fn negotiate(
    headers: &HeaderMap,
    target: &Target,
    device: Option<&crate::auth::Authenticated>,
    lot: Option<&Arc<Lot>>,
) -> Result<Option<(Resumption, Answer)>, Response<Body>> {
    let Target::Tunnel { route } = target else {
        return Ok(None);
    };
    let identity: Identity = (route.clone(), device.map(|d| d.identity.to_string()));
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(token) = header(TOKEN) {
        let Some(peer_received) = header(RECEIVED).and_then(|n| n.parse::<u64>().ok()) else {
            return Err(text(
                StatusCode::BAD_REQUEST,
                "a resume needs x-portcullis-received: the bytes received so far\n",
            ));
        };
        let Some(lot) = lot else {
            return Err(refused(Refusal::Unknown, "(resumption is off here)"));
        };
        return match lot.claim(token, identity) {
            Ok((next, inbox)) => {
                let answer = answer(lot, &next, false);
                Ok(Some((
                    Resumption::Resume {
                        inbox,
                        peer_received,
                    },
                    answer,
                )))
            }
            Err(refusal) => Err(refused(refusal, &lot.settings.node)),
        };
    }
    let (Some(lot), Some("1")) = (lot, header(OFFER)) else {
        return Ok(None);
    };
    let peer_window = header(WINDOW)
        .and_then(|n| n.parse::<usize>().ok())
        .filter(|n| PEER_WINDOWS.contains(n))
        .unwrap_or(DEFAULT_WINDOW);
    match lot.open(identity) {
        Ok((token, lease)) => {
            let answer = answer(lot, &token, true);
            Ok(Some((Resumption::Fresh { lease, peer_window }, answer)))
        }
        // Not resumable, but the tunnel itself is fine: today's tunnel.
        Err(refusal) => {
            lot.fail(refusal.label());
            tracing::warn!(
                reason = refusal.label(),
                "resumption offered but not granted"
            );
            Ok(None)
        }
    }
}

fn answer(lot: &Lot, token: &str, window: bool) -> Answer {
    let mut answer = Vec::new();
    let mut add = |name: &'static str, value: &str| {
        if let Ok(v) = HeaderValue::from_str(value) {
            answer.push((HeaderName::from_static(name), v));
        }
    };
    add(TOKEN, token);
    add(NODE, &lot.settings.node);
    if window {
        add(WINDOW, &lot.settings.window.to_string());
    }
    answer
}

/// 409: this node cannot resume that tunnel; the agent closes the device's connection.
fn refused(refusal: Refusal, node: &str) -> Response<Body> {
    let why = match refusal {
        Refusal::Unknown => format!(
            "node {node} holds no tunnel for that token: a wrong or spent token, a tunnel that \
             ended (its grace period passed), another node (keep devices on their node: see \
             the README), or a restart"
        ),
        Refusal::Identity => "the token belongs to another device: that tunnel is ended".into(),
        Refusal::Full | Refusal::NoRandomness => "no new token could be issued".into(),
    };
    let body = Bytes::from(format!("resume refused: {why}\n"));
    let mut r = marked(StatusCode::CONFLICT, "text/plain; charset=utf-8", body);
    r.headers_mut()
        .insert(REFUSED, HeaderValue::from_static(refusal.label()));
    r
}
