//! The story of one HTTP push request, top to bottom:
//!
//! ```text
//! identify ──► redirect ──► policy ──────────► transaction ──► policy ────► forward
//! serial,      307 by       bans (serial, IP),  replay, 409,    rhythm and   collector,
//! client IP    serial       device rules,       422, or claim   rate         record, answer
//!                           connect rate
//! ```
//!
//! A check-in (`GET /checkin/{serial}`) takes the same first three steps, then is answered with
//! the time and the update service's answer. Every refusal's status lives in
//! `error::PushRefusal`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::PushRefusal;
use crate::forward::push::{self, Claim, Metered, Outcome, Push, PushDevice, Ticket};
use crate::gateway::clients::{Arrival, Transport};
use crate::gateway::Shared;
use crate::handshake::{marked, Body, Caller};
use crate::policy::{Decision, Reason, Verdict};

/// Marks a replayed answer (a common header for it; Stripe's name).
const REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Says why an accepted upload was not delivered.
const DISCARDED: HeaderName = HeaderName::from_static("x-portcullis-discarded");
/// What the collector learns of the device.
const SERIAL: HeaderName = HeaderName::from_static("x-portcullis-serial");
const TRANSACTION: HeaderName = HeaderName::from_static("x-portcullis-transaction");
/// The longest a delivery may take, however slowly its body keeps coming.
pub fn max_delivery(settings: &crate::config::PushSettings) -> Duration {
    Duration::from_secs(settings.collector_timeout_secs.saturating_mul(10))
}

/// Bodies up to this size (by `Content-Length`) are read whole before the collector is
/// contacted; larger and chunked ones are streamed.
const BUFFERED_BODY: u64 = 64 * 1024;
/// The gateway's UTC time to the microsecond, for devices that set their clock by it.
const TIME: HeaderName = HeaderName::from_static("x-portcullis-time");

/// `/push…` or `/checkin…`, from a caller the router identified and admitted.
pub async fn serve(
    shared: Arc<Shared>,
    push: Arc<Push>,
    req: Request<Incoming>,
    caller: Caller,
) -> Response<Body> {
    let answer = story(&shared, &push, req, caller).await;
    match answer {
        Ok(response) => response,
        Err(refusal) => {
            push.stats.count(refusal.label());
            tracing::debug!(ip = %caller.ip, status = refusal.status().as_u16(), "push refused: {refusal}");
            refuse(&refusal)
        }
    }
}

async fn story(
    shared: &Arc<Shared>,
    push: &Arc<Push>,
    req: Request<Incoming>,
    caller: Caller,
) -> Result<Response<Body>, PushRefusal> {
    let settings = push.settings();
    let path = req.uri().path();
    let (checkin, rest) = match path.strip_prefix("/checkin") {
        Some(rest) => (true, rest),
        None => (false, path.strip_prefix("/push").unwrap_or(path)),
    };
    let expected = if checkin { Method::GET } else { Method::POST };
    if req.method() != expected {
        return Err(PushRefusal::Method(if checkin { "GET" } else { "POST" }));
    }

    // 1. identify: the serial (the client IP the router found).
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let header = settings.serial_header.as_deref();
    let serial =
        crate::identify::serial(rest, req.headers(), header).ok_or(PushRefusal::NoSerial)?;

    // 2. redirect: a serial that belongs elsewhere goes there before anything else is done.
    let target = req.uri().path_and_query().map_or(path, |p| p.as_str());
    if let Some(location) = push.redirects().location(&serial, target) {
        push.stats.count("redirected");
        return Ok(redirect(&location));
    }

    // 3. policy: bans (serial, then IP), device rules, connect rate; once per device.
    let device = push.device(&shared.policy, &serial, caller.ip, || {
        shared.clients.register(Arrival {
            id: crate::listener::next_conn_id(),
            listener: "push".into(),
            route: settings.route.as_str().into(),
            transport: Transport::Http,
            ip: caller.ip,
            serial: Some(serial.clone()),
        })
    })?;
    // Its own statement: the device's lock must be released before `forget` takes the map's
    // (the map is always locked first).
    let banned = shared.policy.banned(&push::lock(&device).session);
    if let Some(ban) = banned {
        push.forget(&serial);
        return Err(PushRefusal::banned(&ban));
    }
    if checkin {
        return checkin_answer(shared, push, req, caller, &serial, &device).await;
    }

    // 4. the transaction: on record, in flight, or ours to deliver.
    if let Some(announced) = content_length(&req).filter(|n| *n > settings.max_body_size) {
        // Read on (and drop) what is coming, within reason: a proxy in front that streams the
        // body (nginx with request buffering off) would otherwise be reset mid-send and turn
        // the 413 into a 502.
        if announced <= settings.max_body_size.saturating_mul(2) {
            let stall = Duration::from_secs(settings.body_stall_secs);
            let (body, _) = Metered::new(req.into_body(), announced, stall);
            tokio::spawn(push::drain(body));
        }
        return Err(PushRefusal::TooLarge);
    }
    let txid = match crate::identify::transaction(
        req.headers(),
        &settings.idempotency_header,
        req.uri().query(),
        settings.idempotency_query.as_deref(),
    ) {
        Some(Ok(id)) => Some(id),
        Some(Err(())) => return Err(PushRefusal::BadTransaction),
        None if settings.require_idempotency_key => {
            return Err(PushRefusal::NoTransaction(
                settings.idempotency_header.clone(),
            ))
        }
        None => None,
    };
    let ticket = match &txid {
        Some(id) => match push.ledger.claim(format!("{serial}\u{0}{id}")).await {
            Claim::Go(ticket) => Some(ticket),
            Claim::Busy(secs) => return Err(PushRefusal::InFlight(secs)),
            Claim::Done(outcome) => {
                let Some(fingerprint) = push::fingerprint(req.into_body(), &settings).await else {
                    return Err(PushRefusal::BodyBroken);
                };
                let same = outcome.fingerprint.is_empty() || fingerprint == outcome.fingerprint;
                if !same {
                    return Err(PushRefusal::BodyMismatch);
                }
                push.stats.count("replayed");
                return Ok(answer(&outcome, true));
            }
        },
        None => None,
    };

    // 5 and 6 run apart from this request (and are waited for at shutdown), so that a device
    // that leaves mid-answer cannot cut a delivery from its record.
    let upload = Upload {
        shared: shared.clone(),
        push: push.clone(),
        req,
        caller,
        serial,
        txid,
        ticket,
    };
    push.tasks
        .spawn(judge_and_deliver(upload, device))
        .await
        .unwrap_or(Err(PushRefusal::CollectorFailed))
}

/// A new transaction, claimed, on its way to the rhythm check and a collector.
struct Upload {
    shared: Arc<Shared>,
    push: Arc<Push>,
    req: Request<Incoming>,
    caller: Caller,
    serial: Arc<str>,
    txid: Option<String>,
    ticket: Option<Ticket>,
}

/// Steps 5 and 6. The policy judges rhythm and rate, for a new transaction only: a retry of
/// a delivered one is not a new sample. Then the upload is forwarded, delivered once, its
/// outcome on record before the device hears it. An upload judged and then not delivered
/// gives its rhythm sample back, so its retry is not "early" against itself.
async fn judge_and_deliver(
    u: Upload,
    device: Arc<std::sync::Mutex<PushDevice>>,
) -> Result<Response<Body>, PushRefusal> {
    let (decision, before, after) = {
        let session = &mut push::lock(&device).session;
        let before = session.rhythm_mark();
        let decision = u.shared.policy.on_upload(session);
        (decision, before, session.rhythm_mark())
    };
    if let Some(ban) = &decision.ban {
        tracing::info!(serial = %u.serial, reason = %ban.reason, "push device banned");
    }
    let outcome = match decision.verdict {
        Verdict::Discard(reason) => discard(u, reason).await,
        Verdict::Forward => deliver(u).await,
    };
    if outcome.is_err() {
        push::lock(&device).session.give_back_sample(before, after);
    }
    outcome
}

/// An accepted upload the policy discarded (out of rhythm): read, acknowledged, not delivered.
/// Over the rate it is refused instead (429), and stays retryable.
async fn discard(u: Upload, reason: Reason) -> Result<Response<Body>, PushRefusal> {
    if matches!(reason, Reason::MessageRate | Reason::ByteRate) {
        return Err(PushRefusal::RateLimited(1));
    }
    let settings = u.push.settings();
    let Some(fingerprint) = push::fingerprint(u.req.into_body(), &settings).await else {
        return Err(PushRefusal::BodyBroken);
    };
    let word = match reason {
        Reason::Early => "early",
        _ => "late",
    };
    let outcome = Outcome {
        status: settings.discard_status,
        content_type: Some("text/plain; charset=utf-8".into()),
        discarded: Some(word.into()),
        body: Bytes::from(format!("accepted and discarded: {reason}\n")),
        fingerprint,
        at: push::ledger::unix_ms(SystemTime::now()),
    };
    Ok(settle(&u.push, u.ticket, &outcome, "discarded").await)
}

/// Send the upload to a collector, record the outcome, answer it. A collector that fails
/// (no connection, 5xx, no answer in time) leaves nothing recorded: the ticket is dropped and
/// the upload stays retryable.
async fn deliver(u: Upload) -> Result<Response<Body>, PushRefusal> {
    let Upload {
        shared,
        push,
        req,
        caller,
        serial,
        txid,
        ticket,
    } = u;
    let settings = push.settings();
    let pool = shared
        .pool(&settings.route)
        .ok_or(PushRefusal::CollectorFailed)?;
    let (mut parts, body) = req.into_parts();
    let (metered, report) = Metered::upload(body, &settings);
    let progress = metered.progress();
    forwarded_headers(&mut parts.headers, caller, &serial, txid.as_deref());
    let small = content_length_of(&parts.headers).is_some_and(|n| n <= BUFFERED_BODY);
    let body = match small {
        // Read whole first (as nginx's proxy_request_buffering does): a device trickling its
        // body over GPRS does not hold a collector connection meanwhile, and the collector
        // gets the request in one write.
        true => match metered.collect().await {
            Ok(whole) => crate::handshake::full(whole.to_bytes()),
            Err(_) => {
                let fault = push::lock(&report).as_ref().and_then(|r| r.fault);
                return Err(push::BodyFault::refusal(fault));
            }
        },
        false => metered.boxed_unsync(),
    };
    let upstream = Request::from_parts(parts, body);
    let started = Instant::now();
    let exchange = async {
        let (response, conn) = push
            .collectors
            .send(&pool, serial.as_bytes(), upstream)
            .await?;
        let status = response.status();
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body = read_answer(response.into_body(), settings.max_answer_size).await;
        Ok::<_, crate::error::Error>((status, content_type, body, conn))
    };
    // The collector's time runs from the body's last progress: a large upload over a slow
    // link is not cut for being slow, a collector that stops reading or answering is. The
    // whole delivery is capped too, so a transaction's mark cannot be held for ever.
    let timeout = Duration::from_secs(settings.collector_timeout_secs);
    tokio::pin!(exchange);
    let result = tokio::select! {
        r = &mut exchange => Ok(r),
        () = progress.stalled_for(timeout) => Err(()),
        () = tokio::time::sleep(max_delivery(&settings)) => Err(()),
    };
    push.stats
        .collector_seconds
        .observe(started.elapsed().as_secs_f64());
    let report = push::lock(&report).take();
    let (status, content_type, body, conn) = match result {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            // The device's body stopped short (and the request with it), or the collector failed.
            if let Some(fault) = report.and_then(|r| r.fault) {
                return Err(push::BodyFault::refusal(Some(fault)));
            }
            tracing::warn!(serial = %serial, side = %e.side(), "push not delivered: {e}");
            return Err(PushRefusal::CollectorFailed);
        }
        Err(_) => {
            tracing::warn!(serial = %serial, "push not delivered: no collector answer within {timeout:?}");
            return Err(PushRefusal::CollectorFailed);
        }
    };
    if status.is_server_error() {
        return Err(PushRefusal::CollectorError(status.as_u16()));
    }
    let whole = report.as_ref().is_some_and(|r| r.fault.is_none());
    if whole && body.is_ok() {
        push.collectors.give_back(conn);
    }
    let body = body.unwrap_or_else(|n| {
        Bytes::from(format!(
            "collector answer of {n} bytes or more is over push.max_answer_size; its status is kept\n"
        ))
    });
    let outcome = Outcome {
        status: status.as_u16(),
        content_type: content_type.and_then(|v| v.to_str().ok().map(str::to_owned)),
        discarded: None,
        body,
        // A collector that answered before reading the whole body: any retry replays it.
        fingerprint: report.and_then(|r| r.fingerprint).unwrap_or_default(),
        at: push::ledger::unix_ms(SystemTime::now()),
    };
    Ok(settle(&push, ticket, &outcome, "delivered").await)
}

/// Put the outcome on record (before the device hears it), count it, answer it.
async fn settle(
    push: &Push,
    ticket: Option<Ticket>,
    outcome: &Outcome,
    counted: &str,
) -> Response<Body> {
    if let Some(ticket) = ticket {
        ticket.complete(outcome).await;
    }
    push.stats.count(counted);
    answer(outcome, false)
}

/// `GET /checkin/{serial}`: counted against the device's rate; answered with the time and the
/// update service's answer (streamed: it may carry firmware).
async fn checkin_answer(
    shared: &Shared,
    push: &Push,
    req: Request<Incoming>,
    caller: Caller,
    serial: &Arc<str>,
    device: &std::sync::Mutex<PushDevice>,
) -> Result<Response<Body>, PushRefusal> {
    let decision: Decision = shared.policy.on_checkin(&mut push::lock(device).session);
    if decision.verdict != Verdict::Forward {
        return Err(PushRefusal::RateLimited(1));
    }
    push.stats
        .checkins
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let settings = push.settings();
    let now = SystemTime::now();
    let mut response = match settings
        .checkin_route
        .as_deref()
        .and_then(|r| shared.pool(r))
    {
        None => marked(
            StatusCode::OK,
            "application/json",
            Bytes::from(format!("{{\"serial\":\"{serial}\"}}\n")),
        ),
        Some(pool) => {
            let (mut parts, _) = req.into_parts();
            forwarded_headers(&mut parts.headers, caller, serial, None);
            // A check-in carries no body: none is announced to the update service either.
            parts.headers.remove(header::CONTENT_LENGTH);
            parts.headers.remove(header::TRANSFER_ENCODING);
            let upstream = Request::from_parts(parts, crate::handshake::full(Bytes::new()));
            let timeout = Duration::from_secs(settings.collector_timeout_secs);
            let sent = tokio::time::timeout(
                timeout,
                push.collectors.send(&pool, serial.as_bytes(), upstream),
            )
            .await;
            let (answer, _conn) = match sent {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    tracing::warn!(serial = %serial, "check-in not answered: {e}");
                    return Err(PushRefusal::CollectorFailed);
                }
                Err(_) => return Err(PushRefusal::CollectorFailed),
            };
            let (mut parts, body) = answer.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            Response::from_parts(parts, body.map_err(Into::into).boxed_unsync())
        }
    };
    let h = response.headers_mut();
    let time = chrono::DateTime::<chrono::Utc>::from(now);
    if let Ok(v) = HeaderValue::from_str(&time.format("%a, %d %b %Y %H:%M:%S GMT").to_string()) {
        h.insert(header::DATE, v);
    }
    if let Ok(v) = HeaderValue::from_str(&time.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()) {
        h.insert(TIME, v);
    }
    Ok(response)
}

/// What the collector learns: the client IP, the scheme, the serial, the transaction.
fn forwarded_headers(h: &mut http::HeaderMap, caller: Caller, serial: &str, txid: Option<&str>) {
    strip_hop_by_hop(h);
    // Ours replace whatever the device wrote: a collector must be able to believe them.
    for name in [
        "forwarded",
        "x-forwarded-for",
        "x-forwarded-host",
        "x-forwarded-proto",
        "x-forwarded-port",
        "x-real-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "x-portcullis-serial",
        "x-portcullis-transaction",
    ] {
        h.remove(name);
    }
    if let Ok(v) = HeaderValue::from_str(&caller.ip.to_string()) {
        h.insert("x-forwarded-for", v);
    }
    let proto = if caller.tls { "https" } else { "http" };
    h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    if let Ok(v) = HeaderValue::from_str(serial) {
        h.insert(SERIAL, v);
    }
    if let Some(v) = txid.and_then(|t| HeaderValue::from_str(t).ok()) {
        h.insert(TRANSACTION, v);
    }
}

fn strip_hop_by_hop(h: &mut http::HeaderMap) {
    // Connection may name more hop-by-hop headers.
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        h.remove(n);
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
        HeaderName::from_static("keep-alive"),
    ] {
        h.remove(n);
    }
}

/// The collector's answer, whole, up to `max` bytes; `Err(n)` once it passes `max`.
async fn read_answer(mut body: Incoming, max: usize) -> Result<Bytes, usize> {
    let mut out = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Some(data) = frame.data_ref() {
            if out.len() + data.len() > max {
                return Err(out.len() + data.len());
            }
            out.extend_from_slice(data);
        }
    }
    Ok(out.freeze())
}

fn answer(outcome: &Outcome, replayed: bool) -> Response<Body> {
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::OK);
    let mut r = marked(status, "application/octet-stream", outcome.body.clone());
    let h = r.headers_mut();
    match outcome.content_type.as_deref().map(HeaderValue::from_str) {
        Some(Ok(ct)) => {
            h.insert(header::CONTENT_TYPE, ct);
        }
        _ => {
            h.remove(header::CONTENT_TYPE);
        }
    }
    if let Some(v) = outcome
        .discarded
        .as_deref()
        .and_then(|d| HeaderValue::from_str(d).ok())
    {
        h.insert(DISCARDED, v);
    }
    if replayed {
        h.insert(REPLAYED, HeaderValue::from_static("true"));
    }
    r
}

fn redirect(location: &str) -> Response<Body> {
    let mut r = marked(
        StatusCode::TEMPORARY_REDIRECT,
        "text/plain; charset=utf-8",
        Bytes::from_static(b"moved: see Location\n"),
    );
    if let Ok(v) = HeaderValue::from_str(location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}

fn refuse(refusal: &PushRefusal) -> Response<Body> {
    let text = format!("{refusal}\n");
    let mut r = marked(
        refusal.status(),
        "text/plain; charset=utf-8",
        Bytes::from(text),
    );
    let h = r.headers_mut();
    if let Some(v) = refusal
        .retry_after()
        .and_then(|s| HeaderValue::from_str(&s.to_string()).ok())
    {
        h.insert(header::RETRY_AFTER, v);
    }
    if let PushRefusal::Method(m) = refusal {
        if let Ok(v) = HeaderValue::from_str(m) {
            h.insert(header::ALLOW, v);
        }
    }
    r
}

fn content_length<B>(req: &Request<B>) -> Option<u64> {
    content_length_of(req.headers())
}

fn content_length_of(h: &http::HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}
