//! Admission: at accept (IP, listener) and at CONNECT (identity).

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use governor::clock::Clock;
use governor::RateLimiter;

use super::bans::{Ban, BanSource, Subject};
use super::key::DeviceKey;
use super::rates::{ClassQuotas, DeviceRates};
use super::session::Session;
use super::stats::{inc, DeviceCounters};
use super::strikes::ip_key;
use super::types::{Admit, Identity, Refusal};
use super::Policy;

impl<C: Clock + Clone> Policy<C> {
    /// Accept stage, before TLS: IP/CIDR ban, then the per-address connect-attempt rate.
    /// A rate violation is a strike against the address (a flood before any CONNECT ends in an
    /// IP ban) unless a reconnect storm is on. IPv6 addresses are limited by their /64.
    pub fn admit_ip(&self, ip: IpAddr) -> Admit {
        if let Some(ban) = self.bans.get(&Subject::Ip(ip), self.wall.now()) {
            inc(&self.stats.accept_banned);
            return Admit::Banned(ban);
        }
        let key = ip_key(ip);
        if self.per_ip.check_key(&key).is_err() {
            inc(&self.stats.accept_rate_limited);
            let now = self.now();
            if !self.storm_on(now) {
                // A ban issued here reaches the gateway through its BanList (see `BanList`).
                let _ = self.strike_ip(key, now);
            }
            return Admit::RateLimited;
        }
        Admit::Ok
    }

    /// Accepts per second on the named listener. The limiter for a name is created on its
    /// first call, so pass the listener names from the config (not anything a peer sent).
    pub fn admit_listener(&self, listener: &str) -> bool {
        let ok = match self.listeners.get(listener) {
            Some(l) => l.check().is_ok(),
            None => self
                .listeners
                .entry(listener.into())
                .or_insert_with(|| {
                    RateLimiter::direct_with_clock(self.rules.per_listener, self.clock.clone())
                })
                .check()
                .is_ok(),
        };
        if !ok {
            inc(&self.stats.listener_rate_limited);
        }
        ok
    }

    /// CONNECT read. In order: bans (client ID, username, IP/CIDR), the device rules (unknown
    /// devices), the per-client connect rate (a violation is a strike unless a storm is on),
    /// and the class's concurrent-connection limit. Every CONNECT that reaches the rate check
    /// consumes a cell, refused or not, as EMQX counts flapping (PR #9045).
    pub fn on_connect(&self, id: &Identity) -> Result<Session, Refusal> {
        if let Some(ban) = self.identity_ban(id) {
            inc(&self.stats.refused_banned);
            return Err(Refusal::Banned(ban));
        }
        let Some(resolved) = self.live.resolve(&id.client_id) else {
            inc(&self.stats.refused_unknown);
            return Err(Refusal::UnknownDevice);
        };
        let now = self.now();
        let state = id.state_key();
        let over = self
            .clock
            .pinned(now, || self.per_client.check_key(&state).is_err());
        if over {
            inc(&self.stats.refused_connect_rate);
            if !self.storm_on(now) {
                let key = DeviceKey::new(Arc::clone(&state), &self.hasher);
                // Not yet admitted: its counters, if it has any, from the map (a CONNECT path).
                let device = self
                    .stats
                    .devices
                    .get(&state)
                    .map(|d| Arc::clone(d.value()));
                let why = "reconnecting too fast";
                let _ =
                    self.strike_client(id, &key, device.as_deref(), now, BanSource::Flapping, why);
            }
            return Err(Refusal::ConnectRate);
        }
        let class = &resolved.class;
        let (interned, device) = self.stats.device_entry(&state);
        if device.connections.fetch_add(1, Relaxed) >= class.max_connections {
            device.connections.fetch_sub(1, Relaxed);
            inc(&self.stats.refused_too_many);
            return Err(Refusal::TooManyConnections);
        }
        device.touch(now);
        let rates = self.device_rates(&device, class.index, &resolved.quotas, now);
        let key = DeviceKey::new(interned, &self.hasher);
        let r = &self.rules;
        if self
            .storm
            .connected(key.hash(), now, r.storm_min, r.storm_window, r.storm_hold)
        {
            inc(&self.stats.storms);
            self.stats.storm_active.store(true, Relaxed);
        }
        Ok(Session {
            id: id.clone(),
            generation: resolved.generation,
            class: Arc::clone(class),
            key,
            device,
            rates,
            last_accepted: None,
        })
    }

    /// The device's rate limiters for a connection of class `class` with quotas `q`: the
    /// entry's own, created now if it has none yet, or recreated (full) if they were made for
    /// another class or other quotas (the current connection's class wins; see `rates`).
    pub(super) fn device_rates(
        &self,
        device: &DeviceCounters,
        class: usize,
        q: &ClassQuotas,
        now: u64,
    ) -> Arc<DeviceRates> {
        let mut slot = device.rates();
        match &*slot {
            Some(r) if r.enforces(class, q) => Arc::clone(r),
            _ => {
                let r = Arc::new(DeviceRates::new(class, q, self.clock.device_clock(), now));
                *slot = Some(Arc::clone(&r));
                r
            }
        }
    }

    /// How many connections of `id` must close before it can be admitted, if its class takes
    /// over rather than refuses: the oldest go. `None`: refuse (or nothing to take over).
    pub fn takeover_needed(&self, id: &Identity) -> Option<u32> {
        let resolved = self.live.resolve(&id.client_id)?;
        // A banned identity takes nothing over: `on_connect` refuses it first thing.
        if !resolved.class.takeover || self.identity_ban(id).is_some() {
            return None;
        }
        let device = self.stats.devices.get(&id.state_key())?;
        let live = device.connections.load(Relaxed);
        let max = resolved.class.max_connections;
        (live >= max).then(|| live - max + 1)
    }

    /// Whether this connection's identity is banned now, e.g. by an admin or a peer gateway
    /// after it connected: the gateway kicks it.
    pub fn banned(&self, s: &Session) -> Option<Ban> {
        self.identity_ban(&s.id)
    }

    /// Client ID first, then username, then IP (exact or CIDR): the seed's subject order,
    /// which also decides which ban a refused device is told about.
    fn identity_ban(&self, id: &Identity) -> Option<Ban> {
        let now = self.wall.now();
        self.bans
            .get(&id.device_subject(), now)
            .or_else(|| {
                let user = id.username.as_ref()?;
                self.bans.get(&Subject::Username(Arc::clone(user)), now)
            })
            .or_else(|| self.bans.get(&Subject::Ip(id.ip), now))
    }
}
