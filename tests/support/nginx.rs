//! A real nginx terminating TLS in front of the gateway, as a subprocess in a tempdir.
//!
//! Single process, not daemonised, every path (pid, logs, temp dirs) inside the tempdir, so it
//! needs nothing from /etc or /var and dies with the test (killed on drop).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use super::certs::Leaf;
use super::{free_port, require_binary};

pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx on an ephemeral port: TLS with `leaf`, every request proxied (WebSocket upgrades
    /// included) to `upstream` over plain HTTP/1.1, appending the peer to X-Forwarded-For.
    pub async fn spawn(leaf: &Leaf, upstream: SocketAddr) -> Nginx {
        Self::spawn_with(leaf, upstream, "", "").await
    }

    /// As [`Nginx::spawn`], with extra directives for the `server` and its `location`.
    pub async fn spawn_with(
        leaf: &Leaf,
        upstream: SocketAddr,
        server_extra: &str,
        location_extra: &str,
    ) -> Nginx {
        require_binary("nginx");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().display();
        // A free port can be taken by someone else before nginx binds it: retry a few times.
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join("nginx.conf");
            let pid_file = dir.path().join("nginx.pid");
            let _ = std::fs::remove_file(&pid_file);
            std::fs::write(
                &conf,
                format!(
                    r#"
daemon off;
master_process off;
worker_processes 1;
error_log {d}/error.log info;
pid {pid};
events {{ worker_connections 128; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name gw.example.test localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        {server_extra}
        location / {{
            {location_extra}
            proxy_pass http://{upstream};
            proxy_http_version 1.1;
            proxy_set_header Host $host;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection "upgrade";
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_read_timeout 3600s;
        }}
    }}
}}
"#,
                    pid = pid_file.display(),
                    cert = leaf.cert.display(),
                    key = leaf.key.display(),
                ),
            )
            .expect("write nginx.conf");
            let mut child = spawn_nginx(dir.path());
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            // nginx writes its pid file only after binding its listen sockets, so "our pid in
            // the file and the port accepts" means the port is nginx's, not someone else's.
            let ours = child.id().to_string();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
                if pid.trim() == ours && TcpStream::connect(addr).await.is_ok() {
                    return Nginx { addr, child, dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken (or a config error: see the log below)
                }
                if tokio::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
        panic!("nginx did not start; error.log:\n{log}");
    }

    /// Kill nginx outright (SIGKILL): every connection through it drops without a close.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start a killed nginx again on the same port, with the same config.
    pub async fn restart(&mut self) {
        let pid_file = self.dir.path().join("nginx.pid");
        let _ = std::fs::remove_file(&pid_file);
        let child = spawn_nginx(self.dir.path());
        let ours = child.id().to_string();
        self.child = child;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if pid.trim() == ours && TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not restart on {}: {}",
                self.addr,
                self.error_log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// nginx's error log so far (for failure messages).
    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

fn spawn_nginx(dir: &std::path::Path) -> Child {
    Command::new(require_binary("nginx"))
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nginx")
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
