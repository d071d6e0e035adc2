//! Upstream pools from config only (never a destination the device names), balanced and health
//! checked by pingora-load-balancing under our own runtime.

use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use pingora_load_balancing::health_check::TcpHealthCheck;
use pingora_load_balancing::selection::{Consistent, RoundRobin};
use pingora_load_balancing::{Backend, LoadBalancer};
use tokio::net::TcpStream;

use crate::config::{Balance, RouteConfig, RouteProtocol};
use crate::error::{Error, Kind, Result};

/// How many distinct upstreams one device connection tries before giving up.
const MAX_TRIES: usize = 3;
/// Bounds the ketama ring walk when looking for a healthy backend.
const MAX_SELECT_STEPS: usize = 256;

enum Balancer {
    Consistent(LoadBalancer<Consistent>),
    RoundRobin(LoadBalancer<RoundRobin>),
}

/// Every route by name, as the config gives them; swapped whole by a reload.
pub type Routes = std::collections::HashMap<String, Arc<Pool>>;

pub struct Pool {
    pub name: String,
    /// MQTT routes get the MQTT-aware relay and the device policy.
    pub mqtt: bool,
    /// HTTP collectors (`protocol = "http"`): reached only through `/push` and `/checkin`,
    /// never as a raw tunnel, which would bypass the transaction records.
    pub http: bool,
    balancer: Balancer,
    connect_timeout: Duration,
    health_interval: Duration,
}

impl Pool {
    /// Resolve the upstreams (blocking DNS: call at start or reload, not per connection).
    pub fn new(
        name: &str,
        cfg: &RouteConfig,
        protocol: RouteProtocol,
    ) -> std::result::Result<Arc<Pool>, String> {
        let addrs = cfg.upstreams.iter().map(String::as_str);
        let err = |e: std::io::Error| format!("routes.{name}.upstreams: {e}");
        let mut balancer = match cfg.balance {
            Balance::Consistent => {
                Balancer::Consistent(LoadBalancer::try_from_iter(addrs).map_err(err)?)
            }
            Balance::RoundRobin => {
                Balancer::RoundRobin(LoadBalancer::try_from_iter(addrs).map_err(err)?)
            }
        };
        let mut check = TcpHealthCheck::new();
        check.peer_template.options.connection_timeout = Some(cfg.connect_timeout());
        match &mut balancer {
            Balancer::Consistent(lb) => lb.set_health_check(check),
            Balancer::RoundRobin(lb) => lb.set_health_check(check),
        }
        Ok(Arc::new(Pool {
            name: name.to_string(),
            mqtt: protocol == RouteProtocol::Mqtt,
            http: protocol == RouteProtocol::Http,
            balancer,
            connect_timeout: cfg.connect_timeout(),
            health_interval: Duration::from_secs(cfg.health_check_interval_secs),
        }))
    }

    /// The healthy upstream for `key` (consistent hashing or the next in turn), other than
    /// those already `tried`.
    pub fn select(&self, key: &[u8], tried: &[SocketAddr]) -> Option<SocketAddr> {
        let accept =
            |b: &Backend, healthy: bool| healthy && inet(b).is_some_and(|a| !tried.contains(&a));
        let backend = match &self.balancer {
            Balancer::Consistent(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
            Balancer::RoundRobin(lb) => lb.select_with(key, MAX_SELECT_STEPS, accept),
        };
        backend.as_ref().and_then(inet)
    }

    /// Whether `/tunnel/{route}` may reach it.
    pub fn carries_streams(&self) -> bool {
        !self.http
    }

    pub fn any_healthy(&self) -> bool {
        let backends = match &self.balancer {
            Balancer::Consistent(lb) => lb.backends(),
            Balancer::RoundRobin(lb) => lb.backends(),
        };
        backends.get_backend().iter().any(|b| backends.ready(b))
    }

    /// Connect to the upstream chosen for `key` (consistent hashing keeps a device on its broker),
    /// falling over to the next healthy one when a connect fails.
    pub async fn connect(&self, key: &[u8]) -> Result<(TcpStream, SocketAddr)> {
        let mut tried = Vec::with_capacity(MAX_TRIES);
        let mut failures = Vec::new();
        while tried.len() < MAX_TRIES {
            let Some(addr) = self.select(key, &tried) else {
                break;
            };
            tried.push(addr);
            match self.connect_to(addr).await {
                Ok(stream) => return Ok((stream, addr)),
                Err(e) => failures.push(e),
            }
        }
        let detail = if failures.is_empty() {
            format!("route {}: no healthy upstream", self.name)
        } else {
            format!(
                "route {}: every upstream tried failed ({})",
                self.name,
                failures.join("; ")
            )
        };
        Err(Error::upstream(Kind::NoUpstream, detail))
    }

    /// A connection to `addr` (one this pool selected), within the connect timeout.
    pub async fn connect_to(&self, addr: SocketAddr) -> std::result::Result<TcpStream, String> {
        match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Ok(Err(e)) => Err(format!("{addr}: {e}")),
            Err(_) => Err(format!(
                "{addr}: connect timed out after {:?}",
                self.connect_timeout
            )),
        }
    }

    /// Health checks run until the pool is dropped (a reload replaces it).
    pub fn spawn_health_checks(self: &Arc<Self>) {
        let weak: Weak<Pool> = Arc::downgrade(self);
        let interval = self.health_interval;
        tokio::spawn(async move {
            while let Some(pool) = weak.upgrade() {
                match &pool.balancer {
                    Balancer::Consistent(lb) => lb.backends().run_health_check(true).await,
                    Balancer::RoundRobin(lb) => lb.backends().run_health_check(true).await,
                }
                drop(pool);
                tokio::time::sleep(interval).await;
            }
        });
    }
}

fn inet(b: &Backend) -> Option<SocketAddr> {
    b.addr.as_inet().copied()
}
