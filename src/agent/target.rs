//! Where a tunnel goes: a checked gateway URL (no credentials or query in it: URLs are logged
//! on the way), the TLS server name and the Host header.

use std::fmt;

use http::Uri;

use super::config::TunnelConfig;

/// A checked gateway URL: `ws`/`wss`, a host, a path; no credentials, no query.
#[derive(Debug, Clone)]
pub struct GatewayUrl {
    pub uri: Uri,
    pub tls: bool,
    pub host: String,
    pub port: u16,
}

impl GatewayUrl {
    pub fn parse(url: &str) -> Result<GatewayUrl, String> {
        let uri: Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        let tls = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(format!("{url:?}: the scheme must be wss:// (or ws://)")),
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{url:?} names no host"))?;
        if authority.as_str().contains('@') {
            return Err(
                "no credentials in the URL (proxies and WAFs log URLs): use device.token".into(),
            );
        }
        if uri.query().is_some() {
            return Err(
                "no query string: URLs are logged on the way; credentials go in device.token"
                    .into(),
            );
        }
        if matches!(uri.path(), "" | "/") {
            return Err(format!("{url:?} names no path: use /tunnel/{{route}}"));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
        Ok(GatewayUrl {
            host: host.to_string(),
            uri,
            tls,
            port,
        })
    }
}

impl fmt::Display for GatewayUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.uri)
    }
}

/// Where one tunnel goes.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: GatewayUrl,
    pub sni: String,
    pub host: Option<String>,
}

impl Target {
    pub fn new(t: &TunnelConfig) -> Result<Target, String> {
        let url = GatewayUrl::parse(&t.url)?;
        Ok(Target {
            sni: t.sni.clone().unwrap_or_else(|| url.host.clone()),
            host: t.host.clone(),
            url,
        })
    }
}
