//! Strikes → bans, and ban escalation.
//!
//! The client ID is always the first subject (the seed's order): its strikes are counted in a
//! sliding window and it is banned when they reach the threshold. A struck-out client ID is
//! then recorded against its username and its IP; when enough *distinct* client IDs struck out
//! under one of those within the window, that subject is banned too (an abuser rotating client
//! IDs). An IP also collects strikes of its own from connect floods at accept.
//!
//! Every per-subject structure is bounded by the threshold it counts towards (≤ `MAX_SET`), is
//! emptied when it fires, and is swept once its newest entry leaves the window.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use governor::clock::Clock;
use ipnet::{IpNet, Ipv6Net};

use super::bans::{Ban, BanSource, Subject};
use super::key::DeviceKey;
use super::stats::{inc, DeviceCounters};
use super::types::Identity;
use super::Policy;

/// Times (policy nanoseconds) of a subject's strikes inside the window, oldest first.
#[derive(Debug, Default)]
pub(crate) struct StrikeWindow(VecDeque<u64>);

impl StrikeWindow {
    /// Records a strike; true when it makes `threshold` strikes within `window`, in which case
    /// the window starts over (the ban that follows is the consequence; the next ban needs a
    /// full new set of strikes).
    ///
    /// A strike counts while `now − t < window`: it expires exactly `window` after it happened.
    pub(crate) fn hit(&mut self, now: u64, window: u64, threshold: usize) -> bool {
        while self
            .0
            .front()
            .is_some_and(|&t| now.saturating_sub(t) >= window)
        {
            self.0.pop_front();
        }
        self.0.push_back(now);
        if self.0.len() >= threshold {
            self.0.clear();
            return true;
        }
        false
    }

    pub(crate) fn live(&self, now: u64, window: u64) -> bool {
        self.0
            .back()
            .is_some_and(|&t| now.saturating_sub(t) < window)
    }
}

/// Distinct client IDs (hashed) that struck out under one username or IP, with when.
#[derive(Debug, Default)]
pub(crate) struct IdSet(Vec<(u64, u64)>);

impl IdSet {
    /// Records `id` as struck out at `now`; true when `min` distinct IDs did within `window`,
    /// in which case the set starts over.
    pub(crate) fn add(&mut self, id: u64, now: u64, window: u64, min: usize) -> bool {
        self.0.retain(|&(_, t)| now.saturating_sub(t) < window);
        match self.0.iter_mut().find(|(h, _)| *h == id) {
            Some(entry) => entry.1 = now,
            None => self.0.push((id, now)),
        }
        if self.0.len() >= min {
            self.0.clear();
            return true;
        }
        false
    }

    pub(crate) fn live(&self, now: u64, window: u64) -> bool {
        self.0.iter().any(|&(_, t)| now.saturating_sub(t) < window)
    }
}

/// How many times a subject was banned recently, to double the next ban.
#[derive(Debug, Default)]
pub(crate) struct Escalation {
    count: u32,
    /// When to forget: `max_ban` after the last ban ended.
    pub(crate) forget_at: u64,
}

/// The key under which an address is rate-limited, struck and banned: IPv4 as is (IPv4-mapped
/// IPv6 included), IPv6 by its /64. One IPv6 host usually owns a whole /64 and can rotate
/// addresses inside it at will, so a per-address rule would never bite.
pub(crate) fn ip_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !(u128::from(u64::MAX));
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// The ban subject for an [`ip_key`].
pub(crate) fn ip_subject(key: IpAddr) -> Subject {
    match key {
        IpAddr::V6(v6) => match Ipv6Net::new(v6, 64) {
            Ok(net) => Subject::Cidr(IpNet::V6(net.trunc())),
            Err(_) => Subject::Ip(key),
        },
        v4 => Subject::Ip(v4),
    }
}

impl<C: Clock + Clone> Policy<C> {
    /// A strike against a client ID (early publish, over a rate, reconnecting too fast),
    /// counted on `device` too when it has counters (a flooding device is struck on every
    /// publish over its rate: the session's own counters, never a map lookup).
    /// Returns the widest ban it led to, if any.
    pub(crate) fn strike_client(
        &self,
        id: &Identity,
        key: &DeviceKey,
        device: Option<&DeviceCounters>,
        now: u64,
        rule: BanSource,
        why: &str,
    ) -> Option<Ban> {
        inc(&self.stats.strikes);
        if let Some(d) = device {
            inc(&d.strikes);
        }
        let r = &self.rules;
        // `get_mut` first: a device being struck usually already has a window, and `entry`
        // would clone the key (two atomic operations) on every strike.
        let out = match self.client_strikes.get_mut(key) {
            Some(mut w) => w.hit(now, r.window, r.threshold),
            None => {
                self.client_strikes
                    .entry(key.clone())
                    .or_default()
                    .hit(now, r.window, r.threshold)
            }
        };
        if !out {
            return None;
        }
        let mut widest = self.issue_ban(
            id.device_subject(),
            now,
            rule.clone(),
            format!(
                "{} strikes within {}s, last: {why}",
                r.threshold,
                r.window / 1_000_000_000
            ),
        );
        let hash = key.hash();
        if let Some(user) = &id.username {
            let fired = self.username_ids.entry(Arc::clone(user)).or_default().add(
                hash,
                now,
                r.window,
                r.username_min,
            );
            if fired {
                let reason = format!(
                    "{} client IDs under this username struck out within {}s",
                    r.username_min,
                    r.window / 1_000_000_000
                );
                widest = self
                    .issue_ban(
                        Subject::Username(Arc::clone(user)),
                        now,
                        rule.clone(),
                        reason,
                    )
                    .or(widest);
            }
        }
        let key = ip_key(id.ip);
        let fired = self
            .ip_ids
            .entry(key)
            .or_default()
            .add(hash, now, r.window, r.ip_min);
        if fired {
            let reason = format!(
                "{} client IDs from this address struck out within {}s",
                r.ip_min,
                r.window / 1_000_000_000
            );
            widest = self
                .issue_ban(ip_subject(key), now, rule, reason)
                .or(widest);
        }
        widest
    }

    /// A strike against an address (a connect flood at accept, before any CONNECT).
    pub(crate) fn strike_ip(&self, key: IpAddr, now: u64) -> Option<Ban> {
        let r = &self.rules;
        let reason = format!(
            "connect flood: {} connect-rate violations within {}s",
            r.threshold,
            r.window / 1_000_000_000
        );
        self.strike_address(key, now, BanSource::Rate, reason)
    }

    /// A strike against an address, banned as `source` for `reason` at the threshold.
    pub(crate) fn strike_address(
        &self,
        key: IpAddr,
        now: u64,
        source: BanSource,
        reason: String,
    ) -> Option<Ban> {
        inc(&self.stats.strikes);
        let r = &self.rules;
        let out = self
            .ip_strikes
            .entry(key)
            .or_default()
            .hit(now, r.window, r.threshold);
        if !out {
            return None;
        }
        self.issue_ban(ip_subject(key), now, source, reason)
    }

    /// Bans `subject` for the escalated duration: `ban · 2^k` for the k-th ban in a row,
    /// capped at `max_ban`; the count is forgotten `max_ban` after the last ban ends. A ban
    /// already in force that lasts at least as long (an admin's permanent ban, a CIDR covering
    /// the address) is left alone and nothing is issued.
    fn issue_ban(
        &self,
        subject: Subject,
        now: u64,
        source: BanSource,
        reason: String,
    ) -> Option<Ban> {
        let r = &self.rules;
        let wall = self.wall.now();
        // Holding the escalation entry while reading the ban list is fine: the ban list never
        // calls back into the policy, so the lock order is always escalation → bans.
        let mut esc = self.escalation.entry(subject.clone()).or_default();
        if esc.forget_at <= now {
            esc.count = 0;
        }
        let factor = 1u64.checked_shl(esc.count).unwrap_or(u64::MAX);
        let nanos = r.ban.saturating_mul(factor).min(r.max_ban);
        let expires = wall.checked_add(Duration::from_nanos(nanos))?;
        if let Some(existing) = self.bans.get(&subject, wall) {
            if existing.expires.is_none_or(|t| t >= expires) {
                return None;
            }
        }
        let ban = Ban {
            subject,
            reason,
            source,
            created: wall,
            expires: Some(expires),
        };
        self.bans.insert(ban.clone(), wall).ok()?;
        esc.count = esc.count.saturating_add(1);
        esc.forget_at = now.saturating_add(nanos).saturating_add(r.max_ban);
        inc(&self.stats.bans_issued);
        Some(ban)
    }
}
