//! The live connections, indexed by what a ban can name: client ID, username, IP.
//!
//! Each relaying connection registers here (and is gone when its [`Registration`] drops). A ban,
//! whoever issues it, kicks exactly the connections it covers through this index: a ban on one
//! client ID wakes one connection, not every connection of the gateway. An admin's kick uses
//! the same path. The admin API lists connections from here.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

pub use crate::forward::Traffic;
use crate::policy::Subject;

/// How a device reached us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket over plain TCP (TLS, if any, ended at a proxy in front).
    Ws,
    /// WebSocket over TLS ended here.
    Wss,
    /// MQTT straight over TCP (a raw MQTT listener).
    Tcp,
    /// An HTTP push device (listed while it keeps uploading).
    Http,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Wss => "wss",
            Transport::Tcp => "tcp",
            Transport::Http => "http",
        }
    }
}

/// What an MQTT connection said in its CONNECT.
#[derive(Debug, Clone)]
pub struct MqttIdentity {
    pub client_id: Arc<str>,
    pub username: Option<Arc<str>>,
    /// 4 (3.1.1) or 5.
    pub proto_ver: u8,
    pub keepalive: u16,
}

/// One live connection.
#[derive(Debug)]
pub struct Client {
    pub id: u64,
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub transport: Transport,
    /// Where it is now: where it connected from, or where its resumable tunnel was last
    /// resumed from (changed under the index's lock, with the index).
    ip: Mutex<IpAddr>,
    pub connected_at: SystemTime,
    pub traffic: Traffic,
    /// An HTTP push device's serial.
    pub serial: Option<Arc<str>>,
    /// Set once, after the policy admitted the CONNECT (MQTT routes only).
    mqtt: OnceLock<MqttIdentity>,
    kick: CancellationToken,
    kick_reason: OnceLock<String>,
    /// Set when the kick is a session takeover (MQTT 5 DISCONNECT 0x8E, not 0x98).
    taken_over: std::sync::atomic::AtomicBool,
    /// Cancelled when the connection is gone (its registration dropped).
    gone: CancellationToken,
}

impl Client {
    pub fn mqtt(&self) -> Option<&MqttIdentity> {
        self.mqtt.get()
    }

    /// The address it is at now (IP bans kick it through this one).
    pub fn ip(&self) -> IpAddr {
        *self.ip.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether its kick was a session takeover.
    pub fn taken_over(&self) -> bool {
        self.taken_over.load(Relaxed)
    }

    /// Resolves when this connection is to be closed (a ban covering it, an admin's kick), with
    /// the reason. The first reason given wins.
    pub async fn kicked(&self) -> String {
        self.kick.cancelled().await;
        self.kick_reason.get().cloned().unwrap_or_default()
    }

    /// False if it was kicked already.
    fn kick(&self, reason: &str) -> bool {
        let first = self.kick_reason.set(reason.to_owned()).is_ok();
        self.kick.cancel();
        first
    }

    /// `pattern`: the regex of a regex ban, compiled once by the caller.
    fn covered_by(&self, subject: &Subject, pattern: Option<&regex::Regex>) -> bool {
        let matches = |v: &str| pattern.is_some_and(|re| re.is_match(v));
        match subject {
            Subject::ClientId(id) => self.mqtt().is_some_and(|m| m.client_id == *id),
            Subject::Username(u) => self
                .mqtt()
                .and_then(|m| m.username.as_ref())
                .is_some_and(|n| n == u),
            Subject::Ip(ip) => self.ip() == *ip,
            Subject::Cidr(net) => net.contains(&self.ip()),
            Subject::ClientIdRe(_) => self.mqtt().is_some_and(|m| matches(&m.client_id)),
            Subject::UsernameRe(_) => self
                .mqtt()
                .and_then(|m| m.username.as_deref())
                .is_some_and(matches),
            // HTTP push devices hold no connection to kick: their next upload is refused.
            Subject::Serial(_) => false,
        }
    }
}

/// What is known of a connection when it starts relaying.
pub struct Arrival {
    pub id: u64,
    pub listener: Arc<str>,
    pub route: Arc<str>,
    pub transport: Transport,
    pub ip: IpAddr,
    pub serial: Option<Arc<str>>,
}

#[derive(Default)]
/// Ordered maps throughout: connection ids in the order they came (the admin list), and
/// addresses so that a CIDR ban finds its own as a range.
struct Index {
    all: BTreeMap<u64, Arc<Client>>,
    by_client_id: BTreeMap<Arc<str>, Vec<u64>>,
    by_username: BTreeMap<Arc<str>, Vec<u64>>,
    by_ip: BTreeMap<IpAddr, Vec<u64>>,
}

fn add<K: Ord>(map: &mut BTreeMap<K, Vec<u64>>, key: K, id: u64) {
    map.entry(key).or_default().push(id);
}

fn forget<K: Ord>(map: &mut BTreeMap<K, Vec<u64>>, key: &K, id: u64) {
    if let Some(ids) = map.get_mut(key) {
        ids.retain(|i| *i != id);
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

/// The registry of live connections.
#[derive(Default)]
pub struct Clients {
    index: RwLock<Index>,
    /// Connections kicked since start.
    kicks: AtomicU64,
    /// Bytes of connections that have ended (live ones are added when asked).
    ended: Traffic,
}

impl Clients {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    // A poisoned lock means a panic elsewhere mid-operation; every operation here leaves the
    // maps consistent, so keep serving.
    fn read(&self) -> RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|e| e.into_inner())
    }

    /// A connection starts relaying; it is listed (and can be kicked) until the registration
    /// drops.
    pub fn register(self: &Arc<Self>, a: Arrival) -> Registration {
        let ip = a.ip.to_canonical();
        let client = Arc::new(Client {
            id: a.id,
            listener: a.listener,
            route: a.route,
            transport: a.transport,
            ip: Mutex::new(ip),
            connected_at: SystemTime::now(),
            traffic: Traffic::default(),
            serial: a.serial,
            mqtt: OnceLock::new(),
            kick: CancellationToken::new(),
            kick_reason: OnceLock::new(),
            taken_over: Default::default(),
            gone: CancellationToken::new(),
        });
        let mut index = self.write();
        index.all.insert(a.id, client.clone());
        add(&mut index.by_ip, ip, a.id);
        Registration {
            clients: self.clone(),
            client,
        }
    }

    /// Connections covered by `subject` are closed with `reason`; returns how many.
    pub fn kick_covered(&self, subject: &Subject, reason: &str) -> usize {
        let index = self.read();
        let ids: Vec<u64> = match subject {
            Subject::ClientId(id) => index.by_client_id.get(id).cloned().unwrap_or_default(),
            Subject::Username(u) => index.by_username.get(u).cloned().unwrap_or_default(),
            Subject::Ip(ip) => index.by_ip.get(ip).cloned().unwrap_or_default(),
            // A CIDR is a range of the ordered index: only its own addresses are visited.
            Subject::Cidr(net) => index
                .by_ip
                .range(net.network()..=net.broadcast())
                .flat_map(|(_, ids)| ids.iter().copied())
                .collect(),
            // A pattern names no key: every identified connection is a candidate (regex bans
            // are few, capped, and made by people).
            Subject::ClientIdRe(_) => index.by_client_id.values().flatten().copied().collect(),
            Subject::UsernameRe(_) => index.by_username.values().flatten().copied().collect(),
            Subject::Serial(_) => Vec::new(),
        };
        // A pattern that does not compile matches nothing (the ban list refuses those anyway).
        let pattern = subject
            .pattern()
            .and_then(|p| crate::policy::patterns::compile(p).ok());
        let mut kicked = 0;
        for client in ids.iter().filter_map(|id| index.all.get(id)) {
            if client.covered_by(subject, pattern.as_ref()) {
                if client.kick(reason) {
                    self.kicks.fetch_add(1, Relaxed);
                }
                kicked += 1;
            }
        }
        kicked
    }

    /// A new connection of `client_id` takes over: the `n` oldest connections of it other than
    /// `except` are closed as taken over. Resolves once they are gone (their policy slots
    /// free), or after `wait`, with how many were closed.
    pub async fn take_over(
        &self,
        client_id: &str,
        except: u64,
        n: u32,
        wait: std::time::Duration,
    ) -> usize {
        let victims: Vec<Arc<Client>> = {
            let index = self.read();
            index
                .by_client_id
                .get(client_id)
                .into_iter()
                .flatten()
                .filter(|id| **id != except)
                .filter_map(|id| index.all.get(id).cloned())
                .take(n as usize)
                .collect()
        };
        for v in &victims {
            v.taken_over.store(true, Relaxed);
            if v.kick("session taken over by a new connection") {
                self.kicks.fetch_add(1, Relaxed);
            }
        }
        let all_gone = futures_util::future::join_all(victims.iter().map(|v| v.gone.cancelled()));
        let _ = tokio::time::timeout(wait, all_gone).await;
        victims.len()
    }

    /// Kick every connection of this client ID; returns how many.
    pub fn kick_client_id(&self, client_id: &str, reason: &str) -> usize {
        self.kick_covered(&Subject::ClientId(client_id.into()), reason)
    }

    /// Live connections, in the order they connected.
    pub fn list(&self) -> Vec<Arc<Client>> {
        self.read().all.values().cloned().collect()
    }

    /// Connections kicked since start.
    pub fn kicks(&self) -> u64 {
        self.kicks.load(Relaxed)
    }

    /// Bytes relayed since start, `(up, down)`: ended connections and live ones.
    pub fn bytes(&self) -> (u64, u64) {
        let index = self.read();
        let live = index.all.values().map(|c| &c.traffic);
        let up = live.clone().map(Traffic::up).sum::<u64>() + self.ended.up();
        let down = live.map(Traffic::down).sum::<u64>() + self.ended.down();
        (up, down)
    }

    pub fn len(&self) -> usize {
        self.read().all.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A connection's place in the registry; dropping it removes the connection.
pub struct Registration {
    clients: Arc<Clients>,
    client: Arc<Client>,
}

impl Registration {
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }

    /// This connection takes over from `n` others of `client_id` (see [`Clients::take_over`]).
    pub async fn take_over(&self, client_id: &str, n: u32, wait: std::time::Duration) -> usize {
        self.clients
            .take_over(client_id, self.client.id, n, wait)
            .await
    }

    /// Its resumable tunnel was resumed from `ip`: listed, and kicked by IP bans, there now
    /// (not where the lost WebSocket came from).
    pub fn moved_to(&self, ip: IpAddr) {
        let (c, ip) = (&self.client, ip.to_canonical());
        let mut index = self.clients.write();
        let mut at = c.ip.lock().unwrap_or_else(|e| e.into_inner());
        if *at != ip {
            forget(&mut index.by_ip, &at, c.id);
            add(&mut index.by_ip, ip, c.id);
            *at = ip;
        }
    }

    /// The CONNECT was admitted: index the connection by client ID and username too. The caller
    /// checks for a ban once more after this, so that a ban issued meanwhile is not missed.
    pub fn identify(&self, mqtt: MqttIdentity) {
        let id = self.client.id;
        let mut index = self.clients.write();
        if self.client.mqtt.set(mqtt.clone()).is_err() {
            return;
        }
        add(&mut index.by_client_id, mqtt.client_id, id);
        if let Some(u) = mqtt.username {
            add(&mut index.by_username, u, id);
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let c = &self.client;
        let mut index = self.clients.write();
        index.all.remove(&c.id);
        // Under the lock, so that a reader summing live and ended bytes never counts twice.
        self.clients.ended.up.fetch_add(c.traffic.up(), Relaxed);
        self.clients.ended.down.fetch_add(c.traffic.down(), Relaxed);
        forget(&mut index.by_ip, &c.ip(), c.id);
        if let Some(m) = c.mqtt.get() {
            forget(&mut index.by_client_id, &m.client_id, c.id);
            if let Some(u) = &m.username {
                forget(&mut index.by_username, u, c.id);
            }
        }
        drop(index);
        // After the relay (and its policy session) ended: a takeover waiting on it may go on.
        c.gone.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arrive(clients: &Arc<Clients>, id: u64, ip: &str) -> Registration {
        clients.register(Arrival {
            id,
            listener: "main".into(),
            route: "mqtt".into(),
            transport: Transport::Ws,
            ip: ip.parse().unwrap(),
            serial: None,
        })
    }

    fn mqtt(id: &str, user: Option<&str>) -> MqttIdentity {
        MqttIdentity {
            client_id: id.into(),
            username: user.map(Into::into),
            proto_ver: 4,
            keepalive: 60,
        }
    }

    fn is_kicked(r: &Registration) -> bool {
        r.client().kick.is_cancelled()
    }

    #[test]
    fn a_ban_kicks_exactly_the_connections_it_covers() {
        let clients = Clients::new();
        let a = arrive(&clients, 1, "10.0.0.1");
        a.identify(mqtt("dev-a", Some("alice")));
        let b = arrive(&clients, 2, "10.0.0.2");
        b.identify(mqtt("dev-b", Some("bob")));
        let tunnel = arrive(&clients, 3, "10.0.1.7");

        assert_eq!(
            clients.kick_covered(&Subject::ClientId("dev-a".into()), "x"),
            1
        );
        assert!(is_kicked(&a) && !is_kicked(&b) && !is_kicked(&tunnel));

        assert_eq!(
            clients.kick_covered(&Subject::Username("bob".into()), "x"),
            1
        );
        assert!(is_kicked(&b) && !is_kicked(&tunnel));

        let net = Subject::Cidr("10.0.1.0/24".parse().unwrap());
        assert_eq!(clients.kick_covered(&net, "banned: test"), 1);
        assert!(is_kicked(&tunnel));
    }

    #[test]
    fn a_cidr_ban_visits_only_its_own_range() {
        let clients = Clients::new();
        let inside = arrive(&clients, 1, "2001:db8:1:2::7");
        let outside = arrive(&clients, 2, "2001:db8:1:3::7");
        let v4 = arrive(&clients, 3, "10.1.2.3");
        let net = Subject::Cidr("2001:db8:1:2::/64".parse().unwrap());
        assert_eq!(clients.kick_covered(&net, "x"), 1);
        assert!(is_kicked(&inside) && !is_kicked(&outside) && !is_kicked(&v4));
        assert_eq!(clients.kicks(), 1);
        // A second ban covering the same connection does not count it again.
        clients.kick_covered(&Subject::Ip("2001:db8:1:2::7".parse().unwrap()), "y");
        assert_eq!(clients.kicks(), 1);
    }

    #[test]
    fn an_ipv4_mapped_peer_is_covered_by_its_ipv4_ban() {
        let clients = Clients::new();
        let r = arrive(&clients, 1, "::ffff:192.0.2.9");
        let ban = Subject::Ip("192.0.2.9".parse().unwrap());
        assert_eq!(clients.kick_covered(&ban, "x"), 1);
        assert!(is_kicked(&r));
    }

    #[test]
    fn a_connection_leaves_every_index_when_it_ends() {
        let clients = Clients::new();
        let r = arrive(&clients, 1, "10.0.0.1");
        r.identify(mqtt("dev", Some("user")));
        drop(r);
        assert!(clients.is_empty());
        let index = clients.read();
        assert!(index.by_client_id.is_empty() && index.by_username.is_empty());
        assert!(index.by_ip.is_empty());
    }

    #[test]
    fn a_resumed_tunnel_is_found_at_its_new_address_only() {
        let clients = Clients::new();
        let r = arrive(&clients, 1, "10.0.0.1");
        let other = arrive(&clients, 2, "10.0.0.1");
        r.moved_to("::ffff:10.9.0.2".parse().unwrap());
        assert_eq!(r.client().ip(), "10.9.0.2".parse::<IpAddr>().unwrap());
        let old = Subject::Ip("10.0.0.1".parse().unwrap());
        assert_eq!(clients.kick_covered(&old, "x"), 1);
        assert!(is_kicked(&other) && !is_kicked(&r));
        let net = Subject::Cidr("10.9.0.0/16".parse().unwrap());
        assert_eq!(clients.kick_covered(&net, "y"), 1);
        assert!(is_kicked(&r));
        drop((r, other));
        assert!(clients.read().by_ip.is_empty());
    }

    #[tokio::test]
    async fn the_first_reason_is_the_one_told() {
        let clients = Clients::new();
        let r = arrive(&clients, 1, "10.0.0.1");
        r.identify(mqtt("dev", None));
        clients.kick_client_id("dev", "kicked by admin ops");
        clients.kick_covered(&Subject::Ip("10.0.0.1".parse().unwrap()), "later");
        assert_eq!(r.client().kicked().await, "kicked by admin ops");
    }
}
