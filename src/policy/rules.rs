//! The non-class settings (connect limits, strikes, storms), validated and converted to the
//! units the policy computes in: nanoseconds on its monotonic clock, governor quotas.

use std::num::NonZeroU32;

use governor::Quota;

use crate::config::policy::{LateAction, PolicyConfig};

/// Strike and distinct-ID sets hold at most this many entries per subject; a larger threshold
/// would let one abusive subject cost unbounded memory before it is banned.
pub(crate) const MAX_SET: u32 = 1_000;
/// Storm detection holds one hash per distinct device up to `min_devices`.
const MAX_STORM_DEVICES: u32 = 1_000_000;

#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) late_forward: bool,
    pub(crate) per_ip: Quota,
    pub(crate) per_client: Quota,
    pub(crate) per_listener: Quota,
    pub(crate) threshold: usize,
    pub(crate) window: u64,
    pub(crate) ban: u64,
    pub(crate) max_ban: u64,
    pub(crate) username_min: usize,
    pub(crate) ip_min: usize,
    pub(crate) storm_min: usize,
    pub(crate) storm_window: u64,
    pub(crate) storm_hold: u64,
}

pub(crate) fn compile(cfg: &PolicyConfig) -> Result<Rules, String> {
    let c = &cfg.connects;
    let s = &cfg.strikes;
    let st = &cfg.storm;
    let nz = |key: &str, v: u32| NonZeroU32::new(v).ok_or_else(|| format!("{key}: must be > 0"));
    let positive = |key: &str, v: u64| {
        if v > 0 {
            Ok(secs(v))
        } else {
            Err(format!("{key}: must be > 0"))
        }
    };
    let bounded = |key: &str, v: u32, min: u32, max: u32| {
        if (min..=max).contains(&v) {
            Ok(v as usize)
        } else {
            Err(format!("{key}: must be between {min} and {max} (got {v})"))
        }
    };
    let per_ip = Quota::per_second(nz("policy.connects.per_ip_per_sec", c.per_ip_per_sec)?)
        .allow_burst(nz("policy.connects.per_ip_burst", c.per_ip_burst)?);
    // EMQX's flapping rule is "N connects in a minute": the burst is the whole minute's count.
    let per_client = Quota::per_minute(nz(
        "policy.connects.per_client_per_minute",
        c.per_client_per_minute,
    )?);
    let per_listener = Quota::per_second(nz(
        "policy.connects.per_listener_per_sec",
        c.per_listener_per_sec,
    )?)
    .allow_burst(nz(
        "policy.connects.per_listener_burst",
        c.per_listener_burst,
    )?);
    let ban = positive("policy.strikes.ban_secs", s.ban_secs)?;
    let max_ban = positive("policy.strikes.max_ban_secs", s.max_ban_secs)?;
    if max_ban < ban {
        return Err(format!(
            "policy.strikes.max_ban_secs: must be >= ban_secs ({})",
            s.ban_secs
        ));
    }
    Ok(Rules {
        late_forward: cfg.late == LateAction::Forward,
        per_ip,
        per_client,
        per_listener,
        threshold: bounded("policy.strikes.threshold", s.threshold, 1, MAX_SET)?,
        window: positive("policy.strikes.window_secs", s.window_secs)?,
        ban,
        max_ban,
        username_min: bounded(
            "policy.strikes.username_min_client_ids",
            s.username_min_client_ids,
            1,
            MAX_SET,
        )?,
        ip_min: bounded(
            "policy.strikes.ip_min_client_ids",
            s.ip_min_client_ids,
            1,
            MAX_SET,
        )?,
        // One device must never be a storm by itself, so at least two distinct IDs.
        storm_min: bounded(
            "policy.storm.min_devices",
            st.min_devices,
            2,
            MAX_STORM_DEVICES,
        )?,
        storm_window: positive("policy.storm.window_secs", st.window_secs)?,
        storm_hold: positive("policy.storm.hold_secs", st.hold_secs)?,
    })
}

pub(crate) fn secs(s: u64) -> u64 {
    s.saturating_mul(1_000_000_000)
}
