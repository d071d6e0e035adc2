//! Corporate HTTP proxies: which proxy (config, then `https_proxy` / `HTTPS_PROXY`) and who is
//! exempt (`NO_PROXY`). The CONNECT exchange itself is in [`super::connect`].
//!
//! Only `http://` proxies (the CONNECT request itself in clear, as every corporate proxy
//! expects); NTLM / Negotiate are not spoken.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;
use percent_encoding::percent_decode_str;

use super::config::{ProxySettings, Secret};

/// A parsed proxy URL, credentials percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// `http://host:port`, with the user name but never the password.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.username {
            Some(u) => write!(f, "http://{u}:***@{}:{}", self.host, self.port),
            None => write!(f, "http://{}:{}", self.host, self.port),
        }
    }
}

impl ProxyUrl {
    /// `[http://][user[:pass]@]host:port[/]`. Percent escapes in user and password are decoded
    /// (`%40` is `@`, `%23` is `#`), so a password with those characters survives.
    pub fn parse(url: &str) -> Result<ProxyUrl, String> {
        let rest = match url.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(format!(
                    "proxy scheme {scheme:?} is not supported: use an http:// proxy (CONNECT)"
                ))
            }
            None => url,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        // The host part ends at the last '@': a raw '@' in a password is common enough.
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        // Errors name the URL without its credentials: they end up in logs.
        let shown = match userinfo {
            Some(_) => format!(
                "{}://***@{hostport}",
                url.split("://").next().unwrap_or("http")
            ),
            None => url.to_string(),
        };
        let url = shown;
        if hostport.contains('/') {
            return Err(format!("proxy URL {url:?}: nothing may follow host:port"));
        }
        let (host, port) = split_host_port(hostport).ok_or_else(|| {
            format!("proxy URL {url:?}: name host:port (e.g. http://proxy.corp:3128)")
        })?;
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| {
                    format!("proxy URL {url:?}: credentials are not UTF-8 after %-decoding")
                })
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(decode(user)?), Some(Secret::new(decode(pass)?))),
                None => (Some(decode(u)?), None),
            },
        };
        Ok(ProxyUrl {
            host,
            port,
            username,
            password,
        })
    }
}

/// `host:port` or `[v6]:port`.
fn split_host_port(s: &str) -> Option<(String, u16)> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        (h, p)
    } else {
        s.rsplit_once(':')?
    };
    let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
    (!host.is_empty()).then(|| (host.to_string(), port))
}

/// The proxy decision for one gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Direct { why: String },
    Via { proxy: ProxyUrl, from: &'static str },
}

/// The proxy settings after config and environment are combined.
#[derive(Debug, Clone, Default)]
pub struct ProxyPlan {
    https: Option<(ProxyUrl, &'static str)>,
    http: Option<(ProxyUrl, &'static str)>,
    no_proxy: Vec<NoProxy>,
    no_proxy_from: &'static str,
}

impl ProxyPlan {
    /// Combine `[proxy]` with the environment (`env` looks a variable up). The config wins.
    pub fn resolve(
        settings: &ProxySettings,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<ProxyPlan, String> {
        let env = |names: &[&'static str]| -> Option<(String, &'static str)> {
            if !settings.from_env {
                return None;
            }
            names
                .iter()
                .find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (v, *n)))
        };
        let parse_env =
            |names: &[&'static str]| -> Result<Option<(ProxyUrl, &'static str)>, String> {
                match env(names) {
                    None => Ok(None),
                    Some((v, name)) => ProxyUrl::parse(v.trim())
                        .map(|p| Some((p, name)))
                        .map_err(|e| format!("{name}: {e}")),
                }
            };
        let (mut https, mut http) = match &settings.url {
            Some(u) => {
                let p = ProxyUrl::parse(u).map_err(|e| format!("proxy.url: {e}"))?;
                (Some((p.clone(), "proxy.url")), Some((p, "proxy.url")))
            }
            // curl reads the lower-case name first; plain http only from lower case (CGI).
            None => (
                parse_env(&["https_proxy", "HTTPS_PROXY"])?,
                parse_env(&["http_proxy"])?,
            ),
        };
        for (p, _) in https.iter_mut().chain(http.iter_mut()) {
            if let Some(u) = &settings.username {
                p.username = Some(u.clone());
            }
            if let Some(pw) = &settings.password {
                p.password = Some(pw.clone());
            }
        }
        let (list, no_proxy_from) = match &settings.no_proxy {
            Some(list) => (list.clone(), "proxy.no_proxy"),
            None => match env(&["no_proxy", "NO_PROXY"]) {
                Some((v, name)) => (v.split(',').map(str::to_string).collect(), name),
                None => (Vec::new(), ""),
            },
        };
        Ok(ProxyPlan {
            https,
            http,
            no_proxy: list.iter().filter_map(|e| NoProxy::parse(e)).collect(),
            no_proxy_from,
        })
    }

    /// How to reach `host:port` (`tls`: a wss:// gateway).
    pub fn route(&self, host: &str, port: u16, tls: bool) -> Route {
        let chosen = if tls { &self.https } else { &self.http };
        let Some((proxy, from)) = chosen else {
            return Route::Direct {
                why: "no proxy configured".into(),
            };
        };
        if let Some(rule) = self.no_proxy.iter().find(|r| r.matches(host, port)) {
            return Route::Direct {
                why: format!("{} matches {rule} in {}", host, self.no_proxy_from),
            };
        }
        Route::Via {
            proxy: proxy.clone(),
            from,
        }
    }
}

/// One `NO_PROXY` entry, curl's semantics: `*`, a domain (matching itself and subdomains; a
/// leading dot is optional), an IP, a CIDR; any of them with `:port`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxy {
    All,
    Domain(String, Option<u16>),
    Net(IpNet, Option<u16>),
}

impl fmt::Display for NoProxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (what, port) = match self {
            NoProxy::All => return f.write_str("*"),
            NoProxy::Domain(d, p) => (d.clone(), p),
            NoProxy::Net(n, p) if n.prefix_len() == n.max_prefix_len() => (n.addr().to_string(), p),
            NoProxy::Net(n, p) => (n.to_string(), p),
        };
        match port {
            Some(p) => write!(f, "{what}:{p}"),
            None => f.write_str(&what),
        }
    }
}

impl NoProxy {
    fn parse(entry: &str) -> Option<NoProxy> {
        let e = entry.trim();
        if e.is_empty() {
            return None;
        }
        if e == "*" {
            return Some(NoProxy::All);
        }
        let (body, port) = match split_host_port(e) {
            // "::1" also splits on its last ':'; only a valid address or name keeps the split.
            Some((h, p)) if h.parse::<IpAddr>().is_ok() || !h.contains(':') => (h, Some(p)),
            _ => (
                e.trim_start_matches('[').trim_end_matches(']').to_string(),
                None,
            ),
        };
        if let Ok(net) = body.parse::<IpNet>() {
            return Some(NoProxy::Net(net, port));
        }
        if let Ok(ip) = body.parse::<IpAddr>() {
            return Some(NoProxy::Net(IpNet::from(ip), port));
        }
        let domain = body.trim_start_matches('.').trim_start_matches("*.");
        Some(NoProxy::Domain(domain.to_ascii_lowercase(), port))
    }

    fn matches(&self, host: &str, port: u16) -> bool {
        let port_ok = |p: &Option<u16>| p.is_none_or(|p| p == port);
        match self {
            NoProxy::All => true,
            NoProxy::Net(net, p) => {
                port_ok(p) && host.parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip))
            }
            NoProxy::Domain(d, p) => {
                let h = host.trim_end_matches('.').to_ascii_lowercase();
                port_ok(p)
                    && (h == *d
                        || (h.len() > d.len()
                            && h.ends_with(d.as_str())
                            && h.as_bytes()[h.len() - d.len() - 1] == b'.'))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn plan(settings: &str, env: &[(&str, &str)]) -> Result<ProxyPlan, String> {
        let settings: ProxySettings = toml::from_str(settings).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProxyPlan::resolve(&settings, |k| env.get(k).cloned())
    }

    fn via(p: &ProxyPlan, host: &str) -> Option<String> {
        match p.route(host, 443, true) {
            Route::Via { proxy, from } => Some(format!("{proxy} ({from})")),
            Route::Direct { .. } => None,
        }
    }

    #[test]
    fn urls_decode_credentials_and_never_print_the_password() {
        let p = ProxyUrl::parse("http://alice:p%40ss%3Aw%23rd@proxy.corp:3128/").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.corp", 3128));
        assert_eq!(p.username.as_deref(), Some("alice"));
        assert_eq!(p.password.as_ref().unwrap().expose(), "p@ss:w#rd");
        assert_eq!(p.to_string(), "http://alice:***@proxy.corp:3128");
        // A raw '@' in the password: the host starts after the last '@'.
        let p = ProxyUrl::parse("bob:a@b@10.0.0.1:8080").unwrap();
        assert_eq!(
            (p.username.as_deref(), p.password.unwrap().expose()),
            (Some("bob"), "a@b")
        );
        let p = ProxyUrl::parse("http://[::1]:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("::1", 3128));
        assert!(ProxyUrl::parse("https://proxy:3128")
            .unwrap_err()
            .contains("not supported"));
        assert!(ProxyUrl::parse("http://proxy")
            .unwrap_err()
            .contains("host:port"));
        assert!(ProxyUrl::parse("http://proxy:0").is_err());
        assert!(ProxyUrl::parse("http://u:%FF@proxy:1")
            .unwrap_err()
            .contains("UTF-8"));
    }

    #[test]
    fn environment_lower_case_first_config_wins() {
        let env = [
            ("HTTPS_PROXY", "http://upper:1"),
            ("https_proxy", "http://lower:2"),
        ];
        assert_eq!(
            via(&plan("", &env).unwrap(), "gw").unwrap(),
            "http://lower:2 (https_proxy)"
        );
        let env = [("HTTPS_PROXY", "http://upper:1")];
        assert_eq!(
            via(&plan("", &env).unwrap(), "gw").unwrap(),
            "http://upper:1 (HTTPS_PROXY)"
        );
        assert_eq!(
            via(&plan("url = \"http://conf:3\"", &env).unwrap(), "gw").unwrap(),
            "http://conf:3 (proxy.url)"
        );
        assert_eq!(via(&plan("from_env = false", &env).unwrap(), "gw"), None);
        // Config credentials override the URL's; the password stays hidden.
        let p = plan(
            "url = \"http://a:b@conf:3\"\nusername = \"u\"\npassword = \"pw\"",
            &[],
        )
        .unwrap();
        assert_eq!(via(&p, "gw").unwrap(), "http://u:***@conf:3 (proxy.url)");
        // ws:// gateways use http_proxy only (upper case HTTP_PROXY is attacker-settable in CGI).
        let p = plan(
            "",
            &[("HTTP_PROXY", "http://x:1"), ("https_proxy", "http://y:2")],
        )
        .unwrap();
        assert!(matches!(p.route("gw", 80, false), Route::Direct { .. }));
        assert!(plan("", &[("https_proxy", "socks5://x:1")])
            .unwrap_err()
            .starts_with("https_proxy:"));
    }

    #[test]
    fn no_proxy_follows_curl() {
        let env = [
            ("https_proxy", "http://p:1"),
            (
                "NO_PROXY",
                "localhost, .corp.example,10.0.0.0/8,192.168.1.7,gw.other:8443,::1",
            ),
        ];
        let p = plan("", &env).unwrap();
        for direct in [
            "localhost",
            "corp.example",
            "a.b.corp.example",
            "10.2.3.4",
            "192.168.1.7",
            "::1",
            "LOCALHOST",
        ] {
            assert_eq!(via(&p, direct), None, "{direct}");
        }
        for proxied in [
            "evilcorp.example",
            "corp.example.com",
            "11.0.0.1",
            "192.168.1.8",
            "gw.other",
            "::2",
        ] {
            assert!(via(&p, proxied).is_some(), "{proxied}");
        }
        assert!(matches!(
            p.route("gw.other", 8443, true),
            Route::Direct { .. }
        ));
        match p.route("10.1.1.1", 443, true) {
            Route::Direct { why } => assert_eq!(why, "10.1.1.1 matches 10.0.0.0/8 in NO_PROXY"),
            other => panic!("{other:?}"),
        }
        let all = plan("", &[("https_proxy", "http://p:1"), ("no_proxy", "*")]).unwrap();
        assert_eq!(via(&all, "anything"), None);
        let conf = plan("no_proxy = [\"gw\"]", &env).unwrap();
        assert_eq!(via(&conf, "gw"), None);
        assert!(
            via(&conf, "localhost").is_some(),
            "the config list replaces NO_PROXY"
        );
    }
}
