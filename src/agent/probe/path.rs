//! The checks of the path itself: name resolution, the dial, the certificate, the gateway's
//! view of a plain request, the upgrade, the headers the hops changed, and the client IP.

use std::time::Instant;

use http::HeaderMap;

use super::session::Session;
use super::{advice, cert, ms, Probe};
use crate::agent::dial::{GatewayStream, Route, Trace};
use crate::agent::hop;
use crate::http1;
use crate::probe::{BodyReceipt, Hello, MARKER_HEADER};

/// Client-IP headers the gateway can be told to believe (`client_ip_header`).
const BELIEVABLE: [&str; 3] = ["x-forwarded-for", "cf-connecting-ip", "x-real-ip"];

impl Probe<'_> {
    /// Direct or through a proxy, and the name that has to resolve here.
    pub(super) async fn dns(&mut self) -> bool {
        let (host, port, what) = match self.connector.route(&self.target) {
            Route::Direct { why } => {
                self.report.ok("route", format!("direct ({why})"));
                (
                    self.target.url.host.clone(),
                    self.target.url.port,
                    "gateway",
                )
            }
            Route::Via { proxy, from } => {
                self.report.ok(
                    "route",
                    format!("via proxy {proxy} (from {from}); it resolves the gateway's name"),
                );
                (proxy.host.clone(), proxy.port, "proxy")
            }
        };
        let started = Instant::now();
        let lookup = tokio::net::lookup_host((host.as_str(), port));
        let resolved = tokio::time::timeout(self.timeout, lookup).await;
        match resolved {
            Ok(Ok(addrs)) => {
                let addrs: Vec<String> = addrs.map(|a| a.ip().to_string()).collect();
                self.report.ok(
                    "dns",
                    format!(
                        "{what} {host} -> {} in {} ms",
                        addrs.join(", "),
                        ms(started)
                    ),
                );
                true
            }
            Ok(Err(e)) => {
                self.report.fail(
                    "dns",
                    format!("cannot resolve the {what} {host}: {e}"),
                    "check the name, and the DNS server this network gives devices (or reach the gateway through the proxy: HTTPS_PROXY)",
                );
                false
            }
            Err(_) => {
                self.report.fail(
                    "dns",
                    format!("no answer for {host} within {} s", self.timeout.as_secs()),
                    "the DNS server does not answer: check the network's resolver",
                );
                false
            }
        }
    }

    /// The dial up to TLS, the certificate the device sees, and `POST /probe`: the request as
    /// the gateway got it. `Err(())` when the dial itself failed (nothing further can work);
    /// `Ok(None)` when the POST did not get through (the WebSocket may still).
    pub(super) async fn gateway_view(&mut self) -> Result<Option<Hello>, ()> {
        let mut trace = Trace::default();
        let opened = self.connector.open(&self.target, &mut trace).await;
        self.record_trace(&trace);
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                self.record_dial_error(&e);
                return Err(());
            }
        };
        self.certificate(&stream);
        let Some(headers) = self.device_headers() else {
            return Err(());
        };
        let path = crate::probe::PATH;
        let answer = http1::post(&mut stream, path, &headers, 16, self.timeout).await;
        let a = match answer {
            Ok(a) => a,
            Err(e) => {
                self.report.fail(
                    "gateway",
                    format!("POST /probe: {e}"),
                    "something between here and the gateway drops plain HTTP requests",
                );
                return Ok(None);
            }
        };
        self.note_hop(&a.headers);
        let ours = a.headers.contains_key(MARKER_HEADER);
        if a.status == 200 && ours {
            return match serde_json::from_slice::<BodyReceipt>(&a.body) {
                Ok(receipt) => {
                    self.report.ok("gateway", "POST /probe reached the gateway");
                    Ok(Some(receipt.view))
                }
                Err(e) => {
                    self.report.fail(
                        "gateway",
                        format!("the gateway's answer does not parse: {e}"),
                        "is the gateway the same version as this probe?",
                    );
                    Ok(None)
                }
            };
        }
        let by = hop::answered_by(&a.headers);
        let fix = match (a.status, ours) {
            (404, true) => "the gateway has the probe endpoint off: [probe] enabled = true".into(),
            (429 | 503, true) => {
                "the gateway's probe budget is used up: wait a minute ([probe] sessions_per_minute, max_sessions)".into()
            }
            (403, true) => "the gateway refuses this client IP (banned or connecting too often)".into(),
            (404, false) => format!("{by} does not pass /probe to the gateway: route /probe (like /mqtt, /tunnel/, /push/) to it"),
            (401 | 403, false) => format!("{by} refuses the request: a WAF rule or bot check on the gateway's paths (exempt /mqtt, /tunnel/, /push/, /probe)"),
            (413, false) => advice::body(&self.hops),
            _ => format!("unexpected answer from {by}"),
        };
        self.report.fail(
            "gateway",
            format!("POST /probe answered {} by {by}", a.status),
            fix,
        );
        Ok(None)
    }

    /// The WebSocket upgrade on `/probe`, with the MQTT subprotocol offered, and the hello.
    pub(super) async fn upgrade(&mut self) -> Option<Session> {
        let mut trace = Trace::default();
        let opened = Session::open(&self.connector, &self.target, &mut trace, self.timeout).await;
        let (session, response) = match opened {
            Ok(x) => x,
            Err(e) => {
                self.record_dial_error(&e);
                return None;
            }
        };
        self.note_hop(response.headers());
        let proto = response
            .headers()
            .get(http::header::SEC_WEBSOCKET_PROTOCOL)
            .and_then(|v| v.to_str().ok());
        match proto {
            Some(p) if p.eq_ignore_ascii_case(crate::probe::SUBPROTOCOL) => self
                .report
                .ok("upgrade", "101 Switching Protocols, subprotocol mqtt echoed"),
            _ => self.report.fail(
                "upgrade",
                "101, but the answer names no subprotocol: the path strips Sec-WebSocket-Protocol, and MQTT clients that require `mqtt` will hang up",
                advice::upgrade(&self.hops),
            ),
        }
        let added = self.headers(&session.sent_headers, &session.hello, response.headers());
        self.tls_end(&session.hello);
        self.client_ip(&session.hello, &added);
        Some(session)
    }

    /// Which request headers the hops added or stripped, and which they added to the answer.
    /// Returns the names the hops added.
    fn headers(&mut self, sent: &HeaderMap, hello: &Hello, answer: &HeaderMap) -> Vec<String> {
        let mut seen: Vec<&str> = hello.headers.iter().map(|(n, _)| n.as_str()).collect();
        seen.dedup();
        let added: Vec<&str> = seen
            .iter()
            .copied()
            .filter(|n| !sent.contains_key(*n))
            .collect();
        let stripped: Vec<&str> = sent
            .keys()
            .map(|n| n.as_str())
            .filter(|n| !seen.contains(n))
            .collect();
        const OURS: [&str; 7] = [
            "upgrade",
            "connection",
            "sec-websocket-accept",
            "sec-websocket-protocol",
            "date",
            "content-length",
            MARKER_HEADER,
        ];
        let answer_added: Vec<&str> = answer
            .keys()
            .map(|n| n.as_str())
            .filter(|n| !OURS.contains(n))
            .collect();
        let list = |v: &[&str]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        let detail = format!(
            "request: added {}; stripped {}; answer: added {}",
            list(&added),
            list(&stripped),
            list(&answer_added)
        );
        let lost: Vec<&str> = stripped
            .iter()
            .copied()
            .filter(|n| {
                matches!(
                    *n,
                    "authorization" | "user-agent" | "sec-websocket-protocol"
                )
            })
            .collect();
        if lost.is_empty() {
            self.report.ok("headers", detail);
        } else {
            self.report.warn(
                "headers",
                detail,
                format!("the path drops {}: devices that rely on them fail (a token in Authorization, Cloudflare's bot rules on User-Agent)", lost.join(", ")),
            );
        }
        added.into_iter().map(str::to_string).collect()
    }

    /// Where TLS ends: at the gateway, or at a hop in front (whose certificate the device sees).
    fn tls_end(&mut self, hello: &Hello) {
        let detail = match (self.target.url.tls, hello.tls_at_gateway) {
            (true, true) => "TLS ends at the gateway: the certificate above is the gateway's",
            (true, false) => "TLS ends in front of the gateway: the certificate above is that hop's (pin a key or CA you control, never a WAF's rotating leaf)",
            (false, true) => "ws:// to a hop that speaks TLS to the gateway",
            (false, false) => "no TLS on this path: traffic is in clear (use wss://)",
        };
        self.report.ok("tls end", detail);
    }

    /// The client IP the gateway believes, and whether it should believe a header a hop added.
    fn client_ip(&mut self, hello: &Hello, added: &[String]) {
        let carried: Vec<&str> = added
            .iter()
            .map(String::as_str)
            .filter(|n| BELIEVABLE.contains(n))
            .collect();
        let ip = &hello.client_ip;
        if hello.ip_source == "peer" && !carried.is_empty() {
            let bits = if ip.contains(':') { 128 } else { 32 };
            self.report.warn(
                "client ip",
                format!("the gateway believes {ip}, its TCP peer: the proxy in front, not the device (the path adds {})", carried.join(", ")),
                format!("on the gateway's listener: trusted_proxies = [\"{ip}/{bits}\"] (the proxy's address or network) and client_ip_header = \"{}\"", carried[0]),
            );
        } else {
            let how = match hello.ip_source.as_str() {
                "peer" => "the TCP peer; no proxy on the way added a client-IP header".to_string(),
                "proxy-protocol" => {
                    "from the PROXY protocol header of a trusted load balancer".to_string()
                }
                other => format!("from {other}, set by a trusted proxy"),
            };
            self.report
                .ok("client ip", format!("the gateway believes {ip} ({how})"));
        }
    }

    /// The certificate the device sees: issued by whom, and to whom.
    fn certificate(&mut self, stream: &GatewayStream) {
        let GatewayStream::Tls(tls) = stream else {
            return;
        };
        let (_, conn) = tls.get_ref();
        let Some(leaf) = conn.peer_certificates().and_then(|c| c.first()) else {
            return;
        };
        match cert::names(leaf.as_ref()) {
            Some((issuer, subject)) => self.report.ok(
                "cert",
                format!("the device sees {subject}, issued by {issuer}"),
            ),
            None => self.report.warn(
                "cert",
                "the certificate could not be read",
                "none needed if tls passed",
            ),
        }
    }
}
