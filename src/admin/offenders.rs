//! `/api/v1/offenders`: the devices discarded or struck most in the last hour, and why.
//!
//! The policy keeps per-device totals since the device was last forgotten; the monitor's tick
//! turns them into counts per ten minutes here. Only devices that have offended are tracked
//! (a device with all-zero totals needs no baseline), and a device the policy forgot is
//! forgotten here too, so this holds no more than the policy's own device map.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{query, AdminState, ApiError};
use crate::policy::{DeviceSnapshot, Stats, Subject};
use crate::store::Record;

/// Ten minutes per bucket, six buckets: an offence counts for 50 to 60 minutes.
const BUCKET_SECS: u64 = 600;
const BUCKETS: usize = 6;

/// Early, late, rate-limited, not authorized, strikes.
type Counts = [u64; 5];

fn counts(d: &DeviceSnapshot) -> Counts {
    [d.early, d.late, d.rate_limited, d.not_authorized, d.strikes]
}

#[derive(Default)]
struct Track {
    /// The device's totals at the last tick.
    seen: Counts,
    /// (bucket number, counts in it); a ring indexed by bucket number.
    buckets: [(u64, [u32; 5]); BUCKETS],
}

impl Track {
    fn add(&mut self, bucket: u64, delta: &Counts) {
        let slot = &mut self.buckets[(bucket % BUCKETS as u64) as usize];
        if slot.0 != bucket {
            *slot = (bucket, [0; 5]);
        }
        for (c, d) in slot.1.iter_mut().zip(delta) {
            *c = c.saturating_add(u32::try_from(*d).unwrap_or(u32::MAX));
        }
    }

    /// Counts in the buckets of the last hour.
    fn recent(&self, bucket: u64) -> Counts {
        let mut sum = [0u64; 5];
        for (b, c) in &self.buckets {
            if *b + (BUCKETS as u64) > bucket && *b <= bucket {
                for (s, n) in sum.iter_mut().zip(c) {
                    *s += u64::from(*n);
                }
            }
        }
        sum
    }
}

#[derive(Default)]
pub struct Offenders {
    devices: Mutex<HashMap<Arc<str>, Track>>,
}

fn bucket_of(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) / BUCKET_SECS
}

impl Offenders {
    /// One tick: what each device's totals grew by since the last one.
    pub fn record(&self, stats: &Stats, now: SystemTime) {
        let bucket = bucket_of(now);
        let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let mut present = 0usize;
        stats.each_device(|id, d| {
            let now_counts = counts(&d);
            if now_counts == [0; 5] && !devices.contains_key(id) {
                return;
            }
            present += 1;
            let track = devices.entry(Arc::clone(id)).or_default();
            // Totals only grow while the policy keeps the device; smaller means it was
            // forgotten and seen anew, so everything it has now is new.
            let base = if now_counts.iter().zip(&track.seen).any(|(n, s)| n < s) {
                [0; 5]
            } else {
                track.seen
            };
            let delta: Counts = std::array::from_fn(|i| now_counts[i] - base[i]);
            if delta != [0; 5] {
                track.add(bucket, &delta);
            }
            track.seen = now_counts;
        });
        // A device the policy forgot: its baseline is gone there, so it goes here.
        if devices.len() > present {
            devices.retain(|id, _| stats.device(id).is_some());
        }
    }

    /// The `limit` worst of the last hour, worst first: by discards plus strikes.
    fn top(&self, limit: usize, now: SystemTime) -> Vec<(Arc<str>, Counts)> {
        let bucket = bucket_of(now);
        let devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
        let mut all: Vec<(Arc<str>, Counts)> = devices
            .iter()
            .map(|(id, t)| (Arc::clone(id), t.recent(bucket)))
            .filter(|(_, c)| *c != [0; 5])
            .collect();
        drop(devices);
        let total = |c: &Counts| c.iter().sum::<u64>();
        all.sort_unstable_by(|a, b| total(&b.1).cmp(&total(&a.1)).then(a.0.cmp(&b.0)));
        all.truncate(limit);
        all
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct OffendersQuery {
    /// 1 to 1000; default 20.
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
}

/// A device's offences in the last hour (50 to 60 minutes: ten-minute steps).
#[derive(Serialize, ToSchema)]
pub struct Offender {
    /// The MQTT client ID (null for an HTTP push device).
    clientid: Option<String>,
    /// An HTTP push device's serial (null for an MQTT device).
    serial: Option<String>,
    /// Discards plus strikes: the order of the list.
    total: u64,
    discarded_early: u64,
    discarded_late: u64,
    discarded_rate_limited: u64,
    discarded_not_authorized: u64,
    /// Strikes against the client ID (each discard above is one, reconnecting too fast too).
    strikes: u64,
    /// A ban on this client ID (or serial) in force now, if any.
    ban: Option<Record>,
}

#[utoipa::path(
    get, path = "/api/v1/offenders", operation_id = "offenders", params(OffendersQuery),
    responses(
        (status = 200, description = "The devices with the most discards and strikes in the last hour, worst first", body = Vec<Offender>),
        (status = 400, description = "A bad parameter, named", body = ApiError),
        (status = 401, description = "No or an unknown token", body = ApiError),
    )
)]
pub async fn offenders(
    State(state): State<AdminState>,
    RawQuery(raw): RawQuery,
) -> Result<Json<Vec<Offender>>, ApiError> {
    let q: OffendersQuery = query(raw)?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request("limit: must be between 1 and 1000"));
    }
    let now = SystemTime::now();
    let top = state.monitor.offenders.top(limit, now);
    let bans = &state.shared.bans;
    let list = top
        .into_iter()
        .map(|(id, c)| {
            // The policy names a push device by its serial behind a prefix no client ID has.
            let serial = id.strip_prefix("\0serial:").map(Arc::<str>::from);
            let subject = match &serial {
                Some(s) => Subject::Serial(Arc::clone(s)),
                None => Subject::ClientId(Arc::clone(&id)),
            };
            let ban = bans.get_exact(&subject, now).map(|b| Record::of(&b));
            Offender {
                clientid: serial.is_none().then(|| id.to_string()),
                serial: serial.map(|s| s.to_string()),
                total: c.iter().sum(),
                discarded_early: c[0],
                discarded_late: c[1],
                discarded_rate_limited: c[2],
                discarded_not_authorized: c[3],
                strikes: c[4],
                ban,
            }
        })
        .collect();
    Ok(Json(list))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offence_counts_for_the_hour_and_then_not() {
        let mut t = Track::default();
        t.add(100, &[1, 0, 0, 0, 1]);
        t.add(103, &[0, 2, 0, 0, 0]);
        assert_eq!(t.recent(103), [1, 2, 0, 0, 1]);
        assert_eq!(t.recent(105), [1, 2, 0, 0, 1]);
        // Bucket 100 is six buckets old at 106: gone; 103 stays until 109.
        assert_eq!(t.recent(106), [0, 2, 0, 0, 0]);
        assert_eq!(t.recent(109), [0; 5]);
        // A bucket number reused by the ring starts from zero.
        t.add(109, &[0, 0, 3, 0, 0]);
        assert_eq!(t.recent(109), [0, 0, 3, 0, 0]);
    }
}
