//! A real nginx, HAProxy or Caddy in front of the gateway, run from the **shipped profile** in
//! `profiles/` with only the local facts replaced (port, certificate, the gateway's address),
//! and optionally broken on purpose the way admins break them.
//!
//! Every replacement must find its text in the profile: a profile edit that breaks the test's
//! assumptions fails loudly here instead of testing something else.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::certs::Leaf;
use super::{free_port, require_binary, tls_client};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Product {
    Nginx,
    Haproxy,
    Caddy,
}

/// How the edge is misconfigured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// As shipped.
    None,
    /// The WebSocket upgrade headers are not passed to the gateway.
    NoUpgrade,
    /// Idle connections are cut after 6 s.
    IdleCut6s,
    /// Request bodies over 1 KiB are refused.
    Body1KiB,
}

pub struct Edge {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Edge {
    /// `product` on an ephemeral loopback port, TLS with `leaf` (issued by `ca_pem`) for
    /// localhost, proxying to `gateway`.
    pub async fn spawn(
        product: Product,
        fault: Fault,
        leaf: &Leaf,
        ca_pem: &str,
        gateway: SocketAddr,
    ) -> Edge {
        let dir = tempfile::tempdir().expect("tempdir");
        // A free port can be taken by someone else before the edge binds it (another test's
        // edge, say): retry, and believe the port is ours only when the edge that answers
        // there carries this instance's marker.
        for attempt in 0..5 {
            let port = free_port();
            let marker = format!("{}-{port}-{attempt}", std::process::id());
            let site = Site {
                fault,
                port,
                leaf,
                gateway,
                dir: dir.path(),
                marker: &marker,
            };
            let mut cmd = command(product, &site);
            let mut child = cmd
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {product:?}: {e}"));
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                if TcpStream::connect(addr).await.is_ok() {
                    if answers_with(addr, ca_pem, &marker).await {
                        return Edge {
                            addr,
                            child,
                            _dir: dir,
                        };
                    }
                    eprintln!("{product:?}: another server holds {addr}; retrying");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    eprintln!("{product:?} exited ({status}); retrying on another port");
                    break;
                }
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "{product:?} never listened on {addr}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        panic!("{product:?} did not start");
    }
}

impl Drop for Edge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Does the edge at `addr` put `marker` on its answers?
async fn answers_with(addr: SocketAddr, ca_pem: &str, marker: &str) -> bool {
    let work = async {
        let config = tls_client::default_client(ca_pem);
        let mut tls = tls_client::try_connect(addr, config, "localhost")
            .await
            .ok()?;
        let request = "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        tls.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        let _ = tls.take(64 * 1024).read_to_end(&mut answer).await;
        Some(String::from_utf8_lossy(&answer).to_ascii_lowercase())
    };
    match tokio::time::timeout(Duration::from_secs(10), work).await {
        Ok(Some(answer)) => answer.contains(&format!("x-edge-instance: {marker}")),
        _ => false,
    }
}

fn profile(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("profiles")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Replace every `from` with `to`; the profile must contain it.
fn swap(text: String, from: &str, to: &str) -> String {
    assert!(
        text.contains(from),
        "the profile no longer contains {from:?}"
    );
    text.replace(from, to)
}

/// What every edge's config is made from.
#[derive(Clone, Copy)]
struct Site<'a> {
    fault: Fault,
    port: u16,
    leaf: &'a Leaf,
    gateway: SocketAddr,
    dir: &'a Path,
    /// Put on every answer, so the test knows the edge on the port is this one.
    marker: &'a str,
}

fn command(product: Product, site: &Site) -> Command {
    match product {
        Product::Nginx => nginx(site),
        Product::Haproxy => haproxy(site),
        Product::Caddy => caddy(site),
    }
}

fn nginx(site: &Site) -> Command {
    let Site {
        fault,
        port,
        leaf,
        gateway,
        dir,
        marker,
    } = *site;
    let mut p = profile("nginx.conf");
    p = swap(
        p,
        "listen 443 ssl;",
        &format!("listen 127.0.0.1:{port} ssl;\n    add_header X-Edge-Instance {marker} always;"),
    );
    p = swap(
        p,
        "/etc/nginx/certs/gw.pem",
        &leaf.cert.display().to_string(),
    );
    p = swap(
        p,
        "/etc/nginx/certs/gw.key",
        &leaf.key.display().to_string(),
    );
    p = swap(p, "server 127.0.0.1:8080 ", &format!("server {gateway} "));
    p = match fault {
        Fault::None => p,
        Fault::NoUpgrade => {
            let p = swap(p, "proxy_set_header Upgrade $http_upgrade;", "");
            swap(p, "proxy_set_header Connection $connection_upgrade;", "")
        }
        Fault::IdleCut6s => swap(p, "proxy_read_timeout 3600s;", "proxy_read_timeout 6s;"),
        Fault::Body1KiB => swap(p, "client_max_body_size 16m;", "client_max_body_size 1k;"),
    };
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nerror_log {d}/error.log info;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 256; }}\nhttp {{\n    access_log {d}/access.log;\n    client_body_temp_path {d}/client_body;\n\
         proxy_temp_path {d}/proxy;\n    fastcgi_temp_path {d}/fastcgi;\n    uwsgi_temp_path {d}/uwsgi;\n    scgi_temp_path {d}/scgi;\n{p}\n}}\n"
    );
    let file = write(dir, "nginx.conf", &conf);
    let mut cmd = Command::new(require_binary("nginx"));
    cmd.arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(file)
        .arg("-e")
        .arg(dir.join("error.log"));
    cmd
}

fn haproxy(site: &Site) -> Command {
    let Site {
        fault,
        port,
        leaf,
        gateway,
        dir,
        marker,
    } = *site;
    // HAProxy takes the certificate and key in one file.
    let cert = std::fs::read_to_string(&leaf.cert).expect("leaf cert");
    let key = std::fs::read_to_string(&leaf.key).expect("leaf key");
    let combined = write(dir, "gw.pem", &format!("{cert}\n{key}"));
    let mut p = profile("haproxy.cfg");
    p = swap(
        p,
        "bind :443 ssl crt /etc/haproxy/gw.pem",
        &format!("bind 127.0.0.1:{port} ssl crt {}", combined.display()),
    );
    p = swap(
        p,
        "server gw1 10.0.0.10:8080 check",
        &format!("server gw1 {gateway} check"),
    );
    p = swap(
        p,
        "  option forwardfor\n",
        &format!("  option forwardfor\n  http-response set-header X-Edge-Instance {marker}\n"),
    );
    p = match fault {
        Fault::None => p,
        Fault::NoUpgrade => swap(
            p,
            "  option forwardfor\n",
            "  option forwardfor\n  http-request del-header Upgrade\n  http-request del-header Connection\n",
        ),
        Fault::IdleCut6s => swap(p, "timeout tunnel 1h", "timeout tunnel 6s"),
        Fault::Body1KiB => swap(
            p,
            "  #   http-request deny deny_status 413 if { req.hdr_val(content-length) gt 16777216 }",
            "  http-request deny deny_status 413 if { req.hdr_val(content-length) gt 1024 }",
        ),
    };
    let file = write(dir, "haproxy.cfg", &p);
    let mut cmd = Command::new(require_binary("haproxy"));
    cmd.arg("-db").arg("-f").arg(file);
    cmd
}

fn caddy(site: &Site) -> Command {
    let Site {
        fault,
        port,
        leaf,
        gateway,
        dir,
        marker,
    } = *site;
    let d = dir.display();
    let mut p = profile("Caddyfile");
    // Our own certificate instead of automatic HTTPS, and nothing on ports 80/443 or the admin
    // endpoint (2019), which other tests or the machine may hold.
    p = swap(
        p,
        "gw.example.com {",
        &format!(
            "{{\n\tadmin off\n\tauto_https disable_redirects\n\thttp_port {}\n\tstorage file_system {d}/data\n}}\n\n\
             https://localhost:{port} {{\n\ttls {} {}\n\theader X-Edge-Instance {marker}",
            free_port(),
            leaf.cert.display(),
            leaf.key.display()
        ),
    );
    p = swap(
        p,
        "reverse_proxy 10.0.0.10:8080 10.0.0.11:8080 {",
        &format!("reverse_proxy {gateway} {{"),
    );
    p = match fault {
        Fault::None => p,
        Fault::NoUpgrade => swap(
            p,
            "lb_policy least_conn",
            "lb_policy least_conn\n\t\t\theader_up -Upgrade\n\t\t\theader_up -Connection",
        ),
        Fault::IdleCut6s => {
            panic!("Caddy has no idle timeout on upgraded connections to break")
        }
        Fault::Body1KiB => {
            let p = swap(p, "max_size 16MiB", "max_size 1KiB");
            swap(p, "> 16777216", "> 1024")
        }
    };
    let file = write(dir, "Caddyfile", &p);
    let mut cmd = Command::new(require_binary("caddy"));
    cmd.args(["run", "--adapter", "caddyfile", "--config"])
        .arg(file)
        .env("HOME", dir)
        .env("XDG_DATA_HOME", dir.join("data"))
        .env("XDG_CONFIG_HOME", dir.join("config"));
    cmd
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path
}
