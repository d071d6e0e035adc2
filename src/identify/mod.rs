//! Stage 3, identify: who is this device? `Session` facts → `Identity`.
//!
//! The client IP is the TCP peer (or the PROXY header's source) unless that peer is a trusted
//! proxy, in which case the one header the listener names is believed: `X-Forwarded-For`
//! (rightmost hop that is not itself a trusted proxy; the default), `CF-Connecting-IP` or
//! `X-Real-IP`. Only one, because a proxy passes the others through from the client untouched
//! (nginx forwards a client's own `CF-Connecting-IP`), and anyone can write those.

use std::net::IpAddr;
use std::path::Path;

use http::HeaderMap;
use ipnet::IpNet;

/// A set of CIDRs, checked on every connection: small, so a linear scan beats a trie.
#[derive(Debug, Clone, Default)]
pub struct CidrSet(Vec<IpNet>);

impl CidrSet {
    pub fn new(nets: impl IntoIterator<Item = IpNet>) -> Self {
        CidrSet(nets.into_iter().collect())
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// IPv4-mapped IPv6 peers (dual-stack sockets) compare as the IPv4 address they are.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// Read one CIDR (or bare address) per line; `#` starts a comment.
pub fn read_cidr_file(path: &Path) -> Result<Vec<IpNet>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut nets = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        let net = entry
            .parse::<IpNet>()
            .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
            .map_err(|_| format!("{} line {}: {entry:?} is not a CIDR", path.display(), i + 1))?;
        nets.push(net);
    }
    Ok(nets)
}

/// The forwarding header a listener believes from its trusted proxies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClientIpHeader {
    /// Appended by nginx, HAProxy, F5, ALB: the rightmost untrusted hop is the client.
    #[default]
    XForwardedFor,
    /// Set by Cloudflare's edge to the single client address.
    CfConnectingIp,
    /// Set by some nginx setups to the single client address.
    XRealIp,
}

/// Where the client IP came from, for logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpSource {
    Peer,
    ProxyProtocol,
    CfConnectingIp,
    XForwardedFor,
    XRealIp,
}

/// Who a connection's peer is before any header: the TCP peer, or the PROXY header's source.
#[derive(Debug, Clone, Copy)]
pub struct Origin {
    pub addr: IpAddr,
    pub source: IpSource,
}

/// The real client IP for a request that arrived from `origin`.
pub fn client_ip(
    origin: Origin,
    headers: &HeaderMap,
    trusted: &CidrSet,
    header: ClientIpHeader,
) -> (IpAddr, IpSource) {
    let peer = canonical(origin.addr);
    if !trusted.contains(peer) {
        return (peer, origin.source);
    }
    let believed = match header {
        ClientIpHeader::XForwardedFor => {
            rightmost_untrusted_forwarded(headers, trusted).map(|ip| (ip, IpSource::XForwardedFor))
        }
        ClientIpHeader::CfConnectingIp => {
            single_ip(headers, "cf-connecting-ip").map(|ip| (ip, IpSource::CfConnectingIp))
        }
        ClientIpHeader::XRealIp => {
            single_ip(headers, "x-real-ip").map(|ip| (ip, IpSource::XRealIp))
        }
    };
    believed.unwrap_or((peer, origin.source))
}

fn single_ip(headers: &HeaderMap, name: &str) -> Option<IpAddr> {
    // Two copies of a single-valued header mean someone is playing games: believe neither.
    let mut values = headers.get_all(name).iter();
    let value = values.next()?;
    if values.next().is_some() {
        return None;
    }
    parse_ip(value.to_str().ok()?)
}

/// Walk `X-Forwarded-For` from the right: each hop was appended by the proxy before it, so the
/// first hop (from the right) that is not one of our trusted proxies is the client. Anything to
/// its left was written by the client and may be forged.
fn rightmost_untrusted_forwarded(headers: &HeaderMap, trusted: &CidrSet) -> Option<IpAddr> {
    let mut last_trusted = None;
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .map(|v| v.to_str().ok())
        .collect::<Option<_>>()?;
    for hop in values.iter().rev().flat_map(|v| v.rsplit(',')) {
        let ip = parse_ip(hop)?;
        if !trusted.contains(ip) {
            return Some(ip);
        }
        last_trusted = Some(ip);
    }
    // Every hop is a trusted proxy: the leftmost is as close to the client as we can know.
    last_trusted
}

fn parse_ip(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    // Some proxies bracket IPv6 or append a port; accept those forms, nothing looser.
    let s = s
        .strip_prefix('[')
        .map_or(s, |rest| rest.split(']').next().unwrap_or(rest));
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    let (host, port) = s.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)
}

/// An HTTP push device's serial: the path's last segment (`/push/{serial}`), else the
/// configured header. Letters, digits, `.`, `_`, `-`, `:`; 1 to 128 of them: a serial ends
/// up in ban records, logs and collector headers, so nothing else is believed.
pub fn serial(
    path_rest: &str,
    headers: &HeaderMap,
    header: Option<&str>,
) -> Option<std::sync::Arc<str>> {
    let candidate = match path_rest {
        "" => headers.get(header?)?.to_str().ok()?,
        rest => rest,
    };
    let ok = (1..=128).contains(&candidate.len())
        && candidate
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    ok.then(|| candidate.into())
}

/// An upload's transaction id, from the header (an RFC 8941 string, quotes optional, as the
/// IETF draft and Stripe send it) or else the query parameter. `Some(Err)`: one came and is not
/// 1 to 255 visible ASCII characters.
pub fn transaction(
    headers: &HeaderMap,
    header: &str,
    query: Option<&str>,
    param: Option<&str>,
) -> Option<Result<String, ()>> {
    let raw: String = match headers.get(header) {
        Some(v) => v.to_str().map_err(|_| ()).map(str::to_owned).ok()?,
        None => {
            let (query, param) = (query?, param?);
            form_urlencoded::parse(query.as_bytes())
                .find(|(k, _)| k == param)
                .map(|(_, v)| v.into_owned())?
        }
    };
    let raw = raw.trim();
    let id = raw
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .unwrap_or(raw);
    let ok = (1..=255).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic());
    Some(if ok { Ok(id.to_owned()) } else { Err(()) })
}

#[cfg(test)]
mod tests;
