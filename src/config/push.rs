//! `[push]`: HTTP push uploads and check-ins. Absent: `/push` and `/checkin` answer 404.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushSettings {
    /// The route (`protocol = "http"`) whose collectors receive uploads.
    pub route: String,
    /// The route of the update service that answers check-ins. Absent: a check-in answers
    /// the time only.
    #[serde(default)]
    pub checkin_route: Option<String>,
    /// A header carrying the serial, for devices that post to `/push` (and `/checkin`) with
    /// no serial in the path. A serial in the path wins.
    #[serde(default)]
    pub serial_header: Option<String>,
    /// The transaction id's header (IETF draft-ietf-httpapi-idempotency-key-header).
    #[serde(default = "default_idempotency_header")]
    pub idempotency_header: String,
    /// A query parameter accepted instead, for devices that cannot set headers.
    #[serde(default)]
    pub idempotency_query: Option<String>,
    /// An upload without a transaction id is refused (400). With `false` it is forwarded
    /// without the exactly-once guarantee.
    #[serde(default = "yes")]
    pub require_idempotency_key: bool,
    /// Largest upload body in bytes (as sent: gzip is not inflated here).
    #[serde(default = "default_max_body")]
    pub max_body_size: u64,
    /// Largest collector answer kept for replays; a larger one is replaced, for every sender
    /// alike, by a short note keeping its status.
    #[serde(default = "default_max_answer")]
    pub max_answer_size: usize,
    /// How long an outcome is kept for replays.
    #[serde(default = "default_retention")]
    pub retention_secs: u64,
    /// How long an in-flight mark holds off a retry if its gateway dies mid-flight.
    #[serde(default = "default_lease")]
    pub lease_secs: u64,
    /// The collector's whole answer must come within this.
    #[serde(default = "default_timeout")]
    pub collector_timeout_secs: u64,
    /// A body that sends nothing for this long is given up.
    #[serde(default = "default_stall")]
    pub body_stall_secs: u64,
    /// The status an out-of-rhythm upload gets: accepted and discarded (seed rule).
    #[serde(default = "default_discard_status")]
    pub discard_status: u16,
    /// A push device silent this long starts over (its next upload only arms the rhythm).
    #[serde(default = "default_idle")]
    pub device_idle_secs: u64,
    /// Completed outcomes kept when there is no `[store]` (and at most 64 MiB of them): the
    /// oldest go first, counted.
    #[serde(default = "default_memory_records")]
    pub max_records_in_memory: usize,
    /// Push devices known at once (each holds a policy session until `device_idle_secs`);
    /// past it a new device gets 503.
    #[serde(default = "default_max_devices")]
    pub max_devices: usize,
    /// Customer tags: name → serial patterns (regex), for redirect rules to name.
    #[serde(default)]
    pub customers: BTreeMap<String, Vec<String>>,
    /// Tried in order; the first that matches answers 307. Reloaded on SIGHUP.
    #[serde(default)]
    pub redirect: Vec<RedirectRule>,
}

/// Serials matching `serials` (a regex) or tagged `customer` are sent to `to`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedirectRule {
    #[serde(default)]
    pub serials: Option<String>,
    #[serde(default)]
    pub customer: Option<String>,
    /// Base URLs (`https://eu.example.com`); the device's path and query are appended.
    /// Several: round robin.
    pub to: Vec<String>,
}

fn yes() -> bool {
    true
}
fn default_idempotency_header() -> String {
    "Idempotency-Key".into()
}
fn default_max_body() -> u64 {
    8 << 20
}
fn default_max_answer() -> usize {
    64 << 10
}
fn default_retention() -> u64 {
    86_400
}
fn default_lease() -> u64 {
    60
}
fn default_timeout() -> u64 {
    30
}
fn default_stall() -> u64 {
    30
}
fn default_discard_status() -> u16 {
    202
}
fn default_idle() -> u64 {
    3_600
}
fn default_memory_records() -> usize {
    100_000
}
fn default_max_devices() -> usize {
    100_000
}

impl PushSettings {
    /// `Err((key, why))`; `routes` says which routes exist and whether each is HTTP.
    pub fn check(
        &self,
        is_http_route: impl Fn(&str) -> Option<bool>,
    ) -> Result<(), (String, String)> {
        let key = |k: &str| format!("push.{k}");
        for (k, route) in [
            ("route", Some(&self.route)),
            ("checkin_route", self.checkin_route.as_ref()),
        ] {
            let Some(route) = route else { continue };
            match is_http_route(route) {
                None => return Err((key(k), format!("no route named {route:?}"))),
                Some(false) => {
                    return Err((
                        key(k),
                        format!("routes.{route} must have protocol = \"http\" (its upstreams are HTTP collectors)"),
                    ))
                }
                Some(true) => {}
            }
        }
        for (k, name) in [
            ("idempotency_header", Some(&self.idempotency_header)),
            ("serial_header", self.serial_header.as_ref()),
        ] {
            if let Some(name) = name {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err((key(k), format!("{name:?} is not a header name")));
                }
            }
        }
        if !(1..=1 << 30).contains(&self.max_body_size) {
            return Err((
                key("max_body_size"),
                "must be between 1 byte and 1 GiB".into(),
            ));
        }
        if !(1..=16 << 20).contains(&self.max_answer_size) {
            return Err((
                key("max_answer_size"),
                "must be between 1 byte and 16 MiB".into(),
            ));
        }
        for (k, v, max) in [
            ("retention_secs", self.retention_secs, 30 * 86_400),
            ("lease_secs", self.lease_secs, 3_600),
            ("collector_timeout_secs", self.collector_timeout_secs, 3_600),
            ("body_stall_secs", self.body_stall_secs, 3_600),
            ("device_idle_secs", self.device_idle_secs, 30 * 86_400),
        ] {
            if !(1..=max).contains(&v) {
                return Err((key(k), format!("must be between 1 and {max}")));
            }
        }
        for (k, v) in [
            ("max_records_in_memory", self.max_records_in_memory),
            ("max_devices", self.max_devices),
        ] {
            if !(1..=10_000_000).contains(&v) {
                return Err((key(k), "must be between 1 and 10000000".into()));
            }
        }
        if self.lease_secs < self.collector_timeout_secs {
            return Err((
                key("lease_secs"),
                "must be at least push.collector_timeout_secs, or a slow delivery could be made twice".into(),
            ));
        }
        if !(200..=299).contains(&self.discard_status) {
            return Err((
                key("discard_status"),
                "must be a 2xx status: the upload is accepted, then discarded".into(),
            ));
        }
        for (name, patterns) in &self.customers {
            for (i, p) in patterns.iter().enumerate() {
                if let Err(e) = regex::Regex::new(p) {
                    return Err((key(&format!("customers.{name}[{i}]")), e.to_string()));
                }
            }
        }
        for (i, r) in self.redirect.iter().enumerate() {
            let rk = |k: &str| key(&format!("redirect[{i}].{k}"));
            match (&r.serials, &r.customer) {
                (None, None) => {
                    return Err((rk("serials"), "name serials (a regex) or a customer".into()))
                }
                (Some(p), _) => {
                    if let Err(e) = regex::Regex::new(p) {
                        return Err((rk("serials"), e.to_string()));
                    }
                }
                _ => {}
            }
            if let Some(c) = &r.customer {
                if !self.customers.contains_key(c) {
                    return Err((
                        rk("customer"),
                        format!("no [push.customers] entry named {c:?}"),
                    ));
                }
            }
            if r.to.is_empty() {
                return Err((rk("to"), "at least one base URL".into()));
            }
            for (j, url) in r.to.iter().enumerate() {
                let ok = (url.starts_with("https://") || url.starts_with("http://"))
                    && url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some())
                    && !url.contains(['?', '#']);
                if !ok {
                    return Err((
                        rk(&format!("to[{j}]")),
                        format!("{url:?} is not an http(s) base URL without query"),
                    ));
                }
            }
        }
        Ok(())
    }
}
