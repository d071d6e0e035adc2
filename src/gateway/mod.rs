//! The running gateway: listeners, route pools, reload and graceful shutdown.

pub mod bans;
pub mod clients;
pub mod timings;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::net::IpAddr;

use crate::config::policy::{MqttSettings, PolicyConfig};
use crate::config::{Config, ShutdownSettings, WebSocketSettings};
use crate::forward::probe::ProbeGate;
use crate::forward::Pool;
use crate::listener::{self, Listener, ListenerCtx};
use crate::pipeline;
use crate::policy::{Admit, Ban, BanError, BanList, Policy, Subject};
use crate::shutdown::{self, Drain, DrainTrigger};

use crate::forward::Routes;

/// What every connection can see. Reload swaps the routes; live tunnels keep their upstream.
pub struct Shared {
    routes: RwLock<Arc<Routes>>,
    /// Device authentication: keys and modes, rebuilt (key files re-read) on reload.
    auth: RwLock<Option<Arc<crate::auth::Authenticator>>>,
    /// Accepted and refused authentications, across reloads.
    pub auth_stats: Arc<crate::auth::AuthStats>,
    websocket: RwLock<Arc<WebSocketSettings>>,
    pub drain: Drain,
    pub policy: Policy,
    pub policy_config: PolicyConfig,
    pub mqtt: MqttSettings,
    /// Every ban, whoever issued it, is announced to the live connections through this.
    pub bans: Arc<bans::AnnouncedBans>,
    /// `/probe`, unless `[probe] enabled = false`.
    pub probe: Option<Arc<ProbeGate>>,
    /// HTTP push and check-ins, with `[push]`.
    pub push: Option<Arc<crate::forward::push::Push>>,
    /// The live connections, by what a ban can name.
    pub clients: Arc<clients::Clients>,
    /// Admin API requests refused for a missing or unknown token.
    pub admin_unauthorized: std::sync::atomic::AtomicU64,
    /// Handshakes by outcome, the policy's decision time.
    pub timings: timings::Timings,
    /// Resumable tunnels, unless `[resume] enabled = false`.
    pub resume: Option<Arc<crate::forward::resume::lot::Lot>>,
}

impl Shared {
    /// Before TLS, before a byte is read: listener accept rate, then the peer's IP bans and
    /// connect rate. A trusted proxy's own address is not judged: its clients are, once known.
    pub fn admit_at_accept(&self, ctx: &ListenerCtx, ip: IpAddr) -> bool {
        if !self.policy.admit_listener(&ctx.name) {
            tracing::debug!(listener = %ctx.name, %ip, "accept rate exceeded; refused");
            return false;
        }
        if ctx.is_proxy_peer(ip) {
            return true;
        }
        self.admit_ip(ip)
    }

    /// IP bans and connect rate for a client IP (the peer, PROXY source or believed header).
    pub fn admit_ip(&self, ip: IpAddr) -> bool {
        match self.policy.admit_ip(ip) {
            Admit::Ok => true,
            Admit::Banned(ban) => {
                tracing::debug!(%ip, reason = %ban.reason, "banned IP refused");
                false
            }
            Admit::RateLimited => {
                tracing::debug!(%ip, "connect rate exceeded; refused");
                false
            }
        }
    }

    pub fn has_route(&self, name: &str) -> bool {
        self.routes().contains_key(name)
    }

    pub fn pool(&self, name: &str) -> Option<Arc<Pool>> {
        self.routes().get(name).cloned()
    }

    /// Each route, and whether it has a healthy upstream.
    pub fn route_health(&self) -> Vec<(String, bool)> {
        let mut all: Vec<(String, bool)> = self
            .routes()
            .iter()
            .map(|(name, pool)| (name.clone(), pool.any_healthy()))
            .collect();
        all.sort();
        all
    }

    pub fn any_upstream_healthy(&self) -> bool {
        self.routes().values().any(|p| p.any_healthy())
    }

    pub fn websocket(&self) -> Arc<WebSocketSettings> {
        self.websocket.read().map(|g| g.clone()).unwrap_or_default()
    }

    /// The reason of a ban on a proven identity (a revocation), if any.
    pub fn revoked(&self, identity: &str) -> Option<String> {
        self.policy.revoked(identity).map(|b| b.reason)
    }

    /// A refused authentication, from `ip` when the client's own address is known: logged,
    /// and a failure is a strike against the address unless `strikes` is off.
    pub fn auth_refused(&self, ip: Option<IpAddr>, refusal: &crate::auth::Refusal, strikes: bool) {
        tracing::info!(?ip, "authentication refused: {refusal}");
        let Some(ip) = ip.filter(|_| strikes && refusal.is_failure()) else {
            return;
        };
        if let Some(ban) = self.policy.on_auth_failure(ip) {
            tracing::warn!(%ip, reason = %ban.reason, "address banned");
        }
    }

    /// Keys and auth modes now (`None`: nothing asks devices to authenticate).
    pub fn auth(&self) -> Option<Arc<crate::auth::Authenticator>> {
        self.auth.read().ok().and_then(|g| g.clone())
    }

    /// The route table now (a reload swaps it whole).
    pub fn routes(&self) -> Arc<Routes> {
        self.routes.read().map(|g| g.clone()).unwrap_or_default()
    }
}

fn build_routes(config: &Config) -> Result<Routes, String> {
    let mut routes = HashMap::new();
    for (name, cfg) in &config.routes {
        let pool = Pool::new(name, cfg, config.route_protocol(name))?;
        pool.spawn_health_checks();
        routes.insert(name.clone(), pool);
    }
    Ok(routes)
}

pub struct Gateway {
    shared: Arc<Shared>,
    listeners: Vec<Arc<ListenerCtx>>,
    trigger: DrainTrigger,
    stop_accepting: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
    shutdown: ShutdownSettings,
    admin: Option<crate::admin::AdminServer>,
}

/// The lot of resumable tunnels, named after this node.
fn resume_lot(config: &Config) -> Option<Arc<crate::forward::resume::lot::Lot>> {
    use crate::forward::resume::lot::{Lot, LotSettings};
    let r = &config.resume;
    if !r.enabled {
        return None;
    }
    let node = r
        .node
        .clone()
        .or_else(|| config.cluster.as_ref().and_then(|c| c.node_name().ok()))
        .or_else(|| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
            let host = host.trim();
            let ok = (1..=64).contains(&host.len())
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
            ok.then(|| host.to_owned())
        })
        .unwrap_or_else(|| "gateway".into());
    Some(Arc::new(Lot::new(LotSettings {
        node,
        window: r.window_bytes,
        grace: Duration::from_secs(r.grace_secs),
        max_sessions: r.max_sessions,
    })))
}

impl Gateway {
    /// Bind every listener and start serving.
    pub async fn start(config: Config) -> Result<Gateway, String> {
        let routes = build_routes(&config)?;
        let (trigger, drain) =
            shutdown::channel(Duration::from_secs(config.shutdown.drain_window_secs));
        let clients = clients::Clients::new();
        let (bans, store) = open_bans(&config, clients.clone()).await?;
        let bans = Arc::new(bans);
        let push = match &config.push {
            Some(settings) => Some(Arc::new(open_push(settings, &config, store.as_ref())?)),
            None => None,
        };
        if let Some(settings) = &config.cluster {
            bans.join_cluster(crate::cluster::join(settings, &bans).await?);
        }
        let policy = Policy::new(&config.policy, bans.clone(), Default::default())
            .map_err(|e| format!("policy: {e}"))?;
        let auth_stats = Arc::new(crate::auth::AuthStats::default());
        let auth = crate::auth::Authenticator::from_config(&config, auth_stats.clone())?;
        let shared = Arc::new(Shared {
            routes: RwLock::new(Arc::new(routes)),
            auth: RwLock::new(auth.map(Arc::new)),
            auth_stats,
            websocket: RwLock::new(Arc::new(config.websocket.clone())),
            drain,
            policy,
            policy_config: config.policy.clone(),
            mqtt: config.mqtt.clone(),
            bans,
            probe: ProbeGate::new(&config.probe).map(Arc::new),
            push,
            clients,
            admin_unauthorized: Default::default(),
            timings: Default::default(),
            resume: resume_lot(&config),
        });
        spawn_sweeper(Arc::downgrade(&shared));
        let mut bound = Vec::new();
        for l in &config.listeners {
            bound.push(listener::bind(l).await?);
        }
        let admin = match &config.admin {
            Some(settings) => {
                Some(crate::admin::AdminServer::start(settings, shared.clone()).await?)
            }
            None => None,
        };
        let gw = Gateway {
            admin,
            listeners: bound.iter().map(|l| l.ctx.clone()).collect(),
            shared,
            trigger,
            stop_accepting: CancellationToken::new(),
            hard_stop: CancellationToken::new(),
            tracker: TaskTracker::new(),
            shutdown: config.shutdown.clone(),
        };
        for l in bound {
            tracing::info!(listener = %l.ctx.name, addr = %l.ctx.local_addr, kind = ?l.ctx.kind, tls = l.ctx.is_tls(), "listening");
            tokio::spawn(accept_loop(
                l,
                gw.shared.clone(),
                gw.stop_accepting.clone(),
                gw.hard_stop.clone(),
                gw.tracker.clone(),
            ));
        }
        Ok(gw)
    }

    /// The admin API's address, if `[admin]` is configured.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr)
    }

    /// The bound addresses, in config order (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners.iter().map(|l| l.local_addr).collect()
    }

    /// Swap certificates, trusted proxies, routes, WebSocket settings, `[policy]` classes and
    /// devices (at each session's next publish) and admin tokens. Listener addresses
    /// and kinds need a restart. Live tunnels are untouched.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        // Everything that can fail happens before anything is swapped: all or nothing.
        // Listeners are matched by name; a different set would hand one listener another's
        // certificates or trusted proxies, so it is refused whole.
        let running: Vec<&str> = self.listeners.iter().map(|l| l.name.as_str()).collect();
        let wanted: Vec<String> = config.listeners.iter().map(|l| l.display_name()).collect();
        if running != wanted {
            return Err(format!(
                "the set of listeners changed ({running:?} → {wanted:?}): restart to apply; nothing was reloaded"
            ));
        }
        let mut prepared = Vec::with_capacity(self.listeners.len());
        for cfg in &config.listeners {
            prepared.push(ListenerCtx::prepare_reload(cfg)?);
        }
        let routes = build_routes(config)?;
        // [auth]: key files re-read (rotation: the new key joins, the old one leaves).
        let auth = crate::auth::Authenticator::from_config(config, self.shared.auth_stats.clone())?;
        // [policy] classes and devices: compiled now, in force from each session's next publish.
        let classes = self.shared.policy.prepare_classes(&config.policy)?;
        // [push] redirect rules (and the other settings but the records' lease and retention).
        let push = match (&self.shared.push, &config.push) {
            (Some(_), Some(settings)) => {
                Some((settings, crate::forward::push::Push::prepare(settings)?))
            }
            (None, None) => None,
            _ => {
                tracing::warn!("[push] was added or removed: restart to apply");
                None
            }
        };
        // Tokens last among the checks: a token file that does not parse keeps the old tokens.
        if let (Some(admin), Some(settings)) = (&self.admin, &config.admin) {
            for key in settings.changed_needing_restart(&admin.settings) {
                tracing::warn!("admin.{key} changed: restart to apply");
            }
            let n = admin.tokens.reload_from(&settings.tokens_file)?;
            tracing::info!(tokens = n, "admin tokens reloaded");
        }
        for (ctx, p) in self.listeners.iter().zip(prepared) {
            ctx.apply(p);
        }
        for id in self.shared.policy.apply_classes(classes) {
            tracing::warn!(clientid = %id, "class override dropped: its class is gone");
        }
        if let (Some(running), Some((settings, redirects))) = (&self.shared.push, push) {
            running.apply(settings, redirects);
        }
        if let Ok(mut g) = self.shared.auth.write() {
            *g = auth.map(Arc::new);
        }
        if let Ok(mut g) = self.shared.routes.write() {
            *g = Arc::new(routes);
        }
        if let Ok(mut g) = self.shared.websocket.write() {
            *g = Arc::new(config.websocket.clone());
        }
        tracing::info!("configuration reloaded");
        Ok(())
    }

    /// Device authentications accepted and refused.
    pub fn auth_stats(&self) -> &crate::auth::AuthStats {
        &self.shared.auth_stats
    }

    /// Resumable tunnels, unless `[resume]` is off.
    pub fn resume(&self) -> Option<&crate::forward::resume::lot::Lot> {
        self.shared.resume.as_deref()
    }

    /// `/metrics` as the admin API would answer it now.
    pub fn metrics_text(&self) -> String {
        crate::admin::metrics::render(&self.shared).unwrap_or_default()
    }

    /// The policy (for its counters).
    pub fn policy(&self) -> &Policy {
        &self.shared.policy
    }

    /// Add a ban (as an admin would) and kick whoever it covers.
    pub async fn ban(&self, ban: Ban) -> Result<(), String> {
        let subject = ban.subject.clone();
        self.shared
            .bans
            .insert(ban, std::time::SystemTime::now())
            .map_err(|e| e.to_string())?;
        // With a store, the ban is on disk before this says so.
        self.shared
            .bans
            .flush()
            .await
            .map_err(|e| BanError::NotPersisted(subject, e).to_string())
    }

    /// Lift the ban on exactly `subject`: `Ok(None)` if there was none. With a store, the
    /// removal is on disk before this returns.
    pub async fn unban(&self, subject: &Subject) -> Result<Option<Ban>, String> {
        let removed = self.shared.bans.remove(subject);
        self.shared.bans.flush().await?;
        Ok(removed)
    }

    /// Connections still open (handshaking or relaying).
    pub fn open_connections(&self) -> usize {
        self.tracker.len()
    }

    /// Stop accepting, close every device at its jittered moment, wait for them (bounded).
    pub async fn shutdown(self) {
        self.stop_accepting.cancel();
        self.trigger.start();
        self.tracker.close();
        let open = self.tracker.len();
        tracing::info!(
            open,
            window_secs = self.shutdown.drain_window_secs,
            "draining"
        );
        let timeout = Duration::from_secs(self.shutdown.drain_timeout_secs);
        if tokio::time::timeout(timeout, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(left = self.tracker.len(), "drain timeout: closing the rest");
        }
        self.hard_stop.cancel();
        self.tracker.wait().await;
        // No admin change after this (it could not be written down), then the gateway's own bans
        // of the last moments are written down and the store closed.
        if let Some(admin) = self.admin {
            admin.stop().await;
        }
        if let Some(push) = &self.shared.push {
            // Deliveries under way finish (bounded by the collector timeout) and are recorded.
            push.tasks.close();
            let bound = crate::pipeline::upload::max_delivery(&push.settings());
            if tokio::time::timeout(bound, push.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    left = push.tasks.len(),
                    "push deliveries still under way at shutdown"
                );
            }
            push.ledger.close().await;
        }
        self.shared.bans.close().await;
        if let Some(cluster) = self.shared.bans.cluster() {
            cluster.stop();
        }
    }
}

/// The ban list, with every unexpired ban of the store and the bootstrap file in force before
/// a listener is bound (so no device slips in before its ban is known).
async fn open_bans(
    config: &Config,
    clients: Arc<clients::Clients>,
) -> Result<(bans::AnnouncedBans, Option<crate::store::BanStore>), String> {
    let Some(settings) = config.store.clone() else {
        tracing::info!(
            "bans are kept in memory only: a restart forgets them (set [store] dir to keep them)"
        );
        let bans = bans::AnnouncedBans::new(clients, config.policy.max_regex_bans);
        return Ok((bans, None));
    };
    let now = std::time::SystemTime::now();
    // Opening checks the file's integrity and the bootstrap file is committed: blocking work.
    let (store, stored, file) = tokio::task::spawn_blocking(move || {
        let store = crate::store::BanStore::open(&settings.dir)?;
        let stored = store.load(now)?;
        let file = match &settings.bootstrap_file {
            Some(f) => crate::store::read_bootstrap(f, now)?,
            None => Vec::new(),
        };
        Ok::<_, String>((store, stored, file))
    })
    .await
    .map_err(|e| format!("opening the ban store: {e}"))??;
    let bans = bans::AnnouncedBans::persistent(&store, clients, config.policy.max_regex_bans);
    let restored = bans.restore(stored, now);
    // A ban already on record on exactly that subject (an admin's, say) is not replaced.
    let merged: Vec<Ban> = file
        .into_iter()
        .filter(|b| bans.get_exact(&b.subject, now).is_none())
        .collect();
    let count = bans.restore(merged.clone(), now);
    // Restored bans are already on record; the file's new ones are written now, in one commit.
    let s = store.clone();
    tokio::task::spawn_blocking(move || s.put(&merged))
        .await
        .map_err(|e| format!("writing the bootstrap bans: {e}"))??;
    tracing::info!(store = %store.path().display(), restored, from_bootstrap_file = count, "bans loaded");
    Ok((bans, Some(store)))
}

/// HTTP push: its transaction records in the store's file (memory only without a store), and
/// arbitrated through Redis in a cluster.
fn open_push(
    settings: &crate::config::PushSettings,
    config: &Config,
    store: Option<&crate::store::BanStore>,
) -> Result<crate::forward::push::Push, String> {
    use crate::forward::push::{Ledger, Push, RedisLedger};
    let disk = match store {
        Some(s) => Some(crate::store::UploadStore::open(s)?),
        None => {
            tracing::info!(
                max = settings.max_records_in_memory,
                "push transaction records are kept in memory only: a restart forgets them (set [store] dir to keep them)"
            );
            None
        }
    };
    let redis = config.cluster.as_ref().map(RedisLedger::new).transpose()?;
    Push::new(settings, Ledger::new(disk, redis, settings))
}

/// Keyed limiter state, strike windows and expired bans are swept so that memory stays bounded
/// however many distinct devices and addresses come by.
fn spawn_sweeper(shared: std::sync::Weak<Shared>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            shared.policy.sweep();
            if let Some(push) = &shared.push {
                push.sweep();
            }
        }
    });
}

async fn accept_loop(
    listener: Listener,
    shared: Arc<Shared>,
    stop: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (tcp, peer, slot) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        if !shared.admit_at_accept(&listener.ctx, peer.ip()) {
            // Closed before TLS, before a byte is read.
            continue;
        }
        let ctx = listener.ctx.clone();
        let shared = shared.clone();
        let hard_stop = hard_stop.clone();
        tracker.spawn(async move {
            tokio::select! {
                () = pipeline::serve(tcp, peer, slot, ctx, shared) => {}
                () = hard_stop.cancelled() => {}
            }
        });
    }
}

/// Run until `shutdown` resolves, reloading on SIGHUP when the config came from a file.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<(), String> {
    let source = config.source.clone();
    let gw = Gateway::start(config).await?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot install SIGHUP handler: {e}"))?;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = hup.recv() => match &source {
                Some(path) => match Config::load(path).map_err(|e| e.to_string()).and_then(|c| gw.reload(&c)) {
                    Ok(()) => {}
                    Err(e) => tracing::error!("reload failed, keeping the running config: {e}"),
                },
                None => tracing::warn!("SIGHUP: no config file to reload"),
            },
        }
    }
    gw.shutdown().await;
    Ok(())
}
