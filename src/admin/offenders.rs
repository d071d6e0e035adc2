//! `/api/v1/offenders`: the devices discarded or struck most in the last hour, and why.
//!
//! The policy keeps per-device totals since the device was last forgotten; the monitor's tick
//! turns them into counts per ten minutes here. Only devices that have offended are tracked
//! (a device with all-zero totals needs no baseline), a device the policy forgot is dropped
//! once its offences are an hour old, and at most [`MAX_TRACKED`] are held.

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
/// Devices tracked at most (each about 200 bytes): beyond it new offenders wait for room.
const MAX_TRACKED: usize = 200_000;

/// Early, late, rate-limited, not authorized, strikes.
type Counts = [u64; 5];

fn counts(d: &DeviceSnapshot) -> Counts {
    [
        d.early,
        d.late_discarded,
        d.rate_limited,
        d.not_authorized,
        d.strikes,
    ]
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
        stats.each_device(|id, d| {
            let now_counts = counts(&d);
            let tracked = devices.get_key_value(id).map(|(k, _)| Arc::ptr_eq(k, id));
            let track = match tracked {
                None if now_counts == [0; 5] || devices.len() >= MAX_TRACKED => return,
                None => devices.entry(Arc::clone(id)).or_default(),
                // The policy forgot the device and saw it anew: a new entry, whose key is a
                // new allocation (ours keeps the old one alive), with totals from zero. Its
                // offences of the last hour stay.
                Some(false) => {
                    let old = devices.remove(id).unwrap_or_default();
                    let fresh = Track {
                        seen: [0; 5],
                        buckets: old.buckets,
                    };
                    devices.entry(Arc::clone(id)).or_insert(fresh)
                }
                Some(true) => match devices.get_mut(id) {
                    Some(t) => t,
                    None => return,
                },
            };
            let delta: Counts =
                std::array::from_fn(|i| now_counts[i].saturating_sub(track.seen[i]));
            if delta != [0; 5] {
                track.add(bucket, &delta);
            }
            track.seen = now_counts;
        });
        // A device the policy forgot is kept while it has offences in the last hour.
        devices.retain(|id, t| t.recent(bucket) != [0; 5] || stats.device(id).is_some());
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
            let serial = crate::policy::serial_of_key(&id).map(Arc::<str>::from);
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
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    #[test]
    fn offences_are_counted_once_across_ticks_a_forgotten_device_and_forwarded_late_ones() {
        let stats = Stats::default();
        let o = Offenders::default();
        let device = |stats: &Stats, id: &str| stats.device_entry(&Arc::from(id)).1;
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000 * BUCKET_SECS);
        let quiet = device(&stats, "quiet");
        quiet.forwarded.fetch_add(10, Relaxed);
        let d = device(&stats, "meter-1");
        d.early.fetch_add(1, Relaxed);
        d.strikes.fetch_add(1, Relaxed);
        // Late but forwarded (`late = "forward"`): no offence.
        d.late.fetch_add(5, Relaxed);
        o.record(&stats, t0);
        o.record(&stats, t0 + Duration::from_secs(10));
        let top = o.top(10, t0);
        assert_eq!(top.len(), 1, "a device without offences is not listed");
        assert_eq!(top[0].1, [1, 0, 0, 0, 1]);
        // More of them later: only the growth is added.
        d.early.fetch_add(2, Relaxed);
        d.late_discarded.fetch_add(1, Relaxed);
        o.record(&stats, t0 + Duration::from_secs(700));
        assert_eq!(
            o.top(10, t0 + Duration::from_secs(700))[0].1,
            [3, 1, 0, 0, 1]
        );
        // Forgotten by the policy and seen anew, with one early publish: counted on top.
        drop(d);
        stats.devices.remove("meter-1");
        let d = device(&stats, "meter-1");
        d.early.fetch_add(1, Relaxed);
        o.record(&stats, t0 + Duration::from_secs(800));
        assert_eq!(
            o.top(10, t0 + Duration::from_secs(800))[0].1,
            [4, 1, 0, 0, 1]
        );
        // Forgotten for good: kept while its offences are within the hour, then dropped.
        drop(d);
        stats.devices.remove("meter-1");
        o.record(&stats, t0 + Duration::from_secs(900));
        assert_eq!(o.top(10, t0 + Duration::from_secs(900)).len(), 1);
        o.record(&stats, t0 + Duration::from_secs(2 * 3600));
        assert!(o.top(10, t0 + Duration::from_secs(2 * 3600)).is_empty());
        assert!(o.devices.lock().unwrap().is_empty());
    }

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
