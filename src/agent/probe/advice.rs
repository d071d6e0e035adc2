//! What to change, per product, for each thing a path can break. When the probe could tell
//! which product a hop is (from `Server`, `Via`, `cf-ray`), only its advice is given.

/// The fixes for one problem: (product name as [`crate::agent::hop::product`] spells it, fix).
type Fixes = &'static [(&'static str, &'static str)];

const UPGRADE: Fixes = &[
    ("nginx", "nginx: in the location, `proxy_http_version 1.1; proxy_set_header Upgrade $http_upgrade; proxy_set_header Connection \"upgrade\";` (profiles/nginx.conf)"),
    ("HAProxy", "HAProxy: `mode http`, and no `http-request del-header` of Upgrade or Connection (profiles/haproxy.cfg)"),
    ("Caddy", "Caddy: `reverse_proxy` passes upgrades by itself; remove any `header_up -Upgrade` / `-Connection` (profiles/Caddyfile)"),
    ("F5 BIG-IP", "F5: attach a WebSocket profile to the virtual server (profiles/f5-bigip.tmsh)"),
    ("Cloudflare", "Cloudflare: Network > WebSockets: On"),
    ("AWS load balancer", "AWS: use an ALB (HTTP/1.1 target group) or an NLB; a Classic ELB in HTTP mode drops upgrades"),
    ("Envoy", "Envoy: `upgrade_configs: [{upgrade_type: websocket}]` on the http_connection_manager (profiles/envoy.yaml)"),
    ("Traefik", "Traefik passes upgrades by itself: check middlewares that rewrite headers (profiles/traefik-dynamic.yml)"),
];

const IDLE: Fixes = &[
    ("nginx", "nginx: `proxy_read_timeout 3600s; proxy_send_timeout 3600s;` in the WebSocket location"),
    ("HAProxy", "HAProxy: `timeout tunnel 1h` (it replaces client/server timeouts after the upgrade)"),
    ("Caddy", "Caddy: remove short `read_timeout`/`stream_timeout` settings on the reverse_proxy transport"),
    ("F5 BIG-IP", "F5: raise the TCP profile's idle-timeout above the ping interval (e.g. 300)"),
    ("Cloudflare", "Cloudflare cuts idle WebSockets at ~100 s and this cannot be raised: keep [websocket] ping_interval_secs below it (25 s)"),
    ("AWS load balancer", "AWS ALB: raise the idle timeout (`idle_timeout`, default 60 s) above the ping interval"),
    ("Envoy", "Envoy: raise `stream_idle_timeout` / the route's `idle_timeout`, and set the route `timeout: 0s`"),
    ("Traefik", "Traefik: raise `respondingTimeouts.readTimeout` / `idleTimeout` on the entrypoint"),
];

const BODY: Fixes = &[
    ("nginx", "nginx: `client_max_body_size 16m;` in the /push/ (and /probe) location"),
    ("HAProxy", "HAProxy: remove the body-size deny rule (`req.body_size`) or raise `tune.bufsize` limits"),
    ("Caddy", "Caddy: raise `request_body { max_size 16MB }`"),
    ("F5 BIG-IP", "F5: raise the HTTP profile's maximum request size, or the ASM policy's body limit"),
    ("Cloudflare", "Cloudflare: bodies above your plan's limit (100 MB Free/Pro) are refused: keep push batches below it"),
    ("AWS load balancer", "AWS: an AWS WAF body-size rule on the ALB? (the ALB itself has no small body limit)"),
    ("Envoy", "Envoy: raise the buffer filter's `max_request_bytes`"),
    ("Traefik", "Traefik: raise the buffering middleware's `maxRequestBodyBytes`"),
];

const FRAME: Fixes = &[
    ("F5 BIG-IP", "F5: the WebSocket profile or ASM WebSocket security limits the frame/message size: raise it"),
    ("Cloudflare", "Cloudflare limits WebSocket messages (1 MiB on some plans): keep [websocket] max_message_size below it"),
];

pub fn upgrade(hops: &[String]) -> String {
    pick(
        UPGRADE,
        hops,
        "the proxy in front of the gateway does not pass the WebSocket upgrade",
    )
}

pub fn idle(hops: &[String]) -> String {
    pick(IDLE, hops, "a hop on the way closes silent connections")
}

pub fn body(hops: &[String]) -> String {
    pick(BODY, hops, "a hop on the way limits request bodies")
}

pub fn frame(hops: &[String]) -> String {
    pick(
        FRAME,
        hops,
        "a hop on the way limits WebSocket message size",
    )
}

/// The fixes of the products among `hops`, or all of them when none was recognised.
fn pick(fixes: Fixes, hops: &[String], what: &str) -> String {
    let named: Vec<&str> = fixes
        .iter()
        .filter(|(product, _)| hops.iter().any(|h| h.starts_with(product)))
        .map(|(_, fix)| *fix)
        .collect();
    if !named.is_empty() {
        return named.join("; ");
    }
    let all: Vec<&str> = fixes.iter().map(|(_, fix)| *fix).collect();
    format!(
        "{what} (it does not name itself); depending on what it is: {}",
        all.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recognised_hop_gets_only_its_own_advice() {
        let hops = vec!["nginx (nginx/1.22.1)".to_string()];
        let a = idle(&hops);
        assert!(a.starts_with("nginx: `proxy_read_timeout"), "{a}");
        assert!(!a.contains("HAProxy"), "{a}");
        let unknown = idle(&[]);
        assert!(
            unknown.contains("nginx") && unknown.contains("HAProxy"),
            "{unknown}"
        );
    }
}
