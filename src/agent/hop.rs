//! Who answered: the gateway, or a hop in front of it, judged by the answer's headers.
//!
//! The gateway marks every HTTP answer with [`crate::probe::MARKER_HEADER`]. A proxy that relays
//! it usually puts its own `Server` in (nginx does), and one that answers by itself (a 413, a 502,
//! a challenge) has no marker at all. Names are what the products call themselves.

use http::HeaderMap;

/// Who produced an answer with these headers, in words.
pub fn answered_by(headers: &HeaderMap) -> String {
    let gateway = headers.contains_key(crate::probe::MARKER_HEADER);
    match (gateway, intermediary(headers)) {
        (true, None) => "the gateway".into(),
        (true, Some(hop)) => format!("the gateway (relayed by {hop})"),
        (false, Some(hop)) => hop,
        (false, None) => "a hop in front of the gateway (it does not name itself)".into(),
    }
}

/// The intermediary that names itself in `Server` or `Via`, if any.
pub fn intermediary(headers: &HeaderMap) -> Option<String> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if headers.contains_key("cf-ray") {
        return Some("Cloudflare".into());
    }
    if let Some(server) = get("server") {
        return Some(product(server));
    }
    get("via").map(|via| format!("a proxy (Via: {})", clip(via)))
}

/// A `Server` value as the product an admin knows.
pub fn product(server: &str) -> String {
    let lower = server.to_ascii_lowercase();
    let known = [
        ("cloudflare", "Cloudflare"),
        ("bigip", "F5 BIG-IP"),
        ("big-ip", "F5 BIG-IP"),
        ("awselb", "AWS load balancer"),
        ("nginx", "nginx"),
        ("openresty", "nginx"),
        ("caddy", "Caddy"),
        ("envoy", "Envoy"),
        ("haproxy", "HAProxy"),
        ("traefik", "Traefik"),
        ("squid", "squid"),
    ];
    match known.iter().find(|(needle, _)| lower.contains(needle)) {
        Some((_, name)) => format!("{name} ({})", clip(server)),
        None => format!("a proxy ({})", clip(server)),
    }
}

fn clip(s: &str) -> String {
    s.chars().take(60).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_marker_says_the_gateway_and_server_names_the_relay() {
        assert_eq!(
            answered_by(&headers(&[("x-portcullis", "gateway")])),
            "the gateway"
        );
        assert_eq!(
            answered_by(&headers(&[
                ("x-portcullis", "gateway"),
                ("server", "nginx/1.22.1")
            ])),
            "the gateway (relayed by nginx (nginx/1.22.1))"
        );
        assert_eq!(
            answered_by(&headers(&[("server", "awselb/2.0")])),
            "AWS load balancer (awselb/2.0)"
        );
        assert_eq!(
            answered_by(&headers(&[("cf-ray", "x"), ("server", "cloudflare")])),
            "Cloudflare"
        );
        assert!(answered_by(&headers(&[])).starts_with("a hop in front"));
        assert_eq!(
            answered_by(&headers(&[("via", "1.1 Caddy")])),
            "a proxy (Via: 1.1 Caddy)"
        );
    }
}
