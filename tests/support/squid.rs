//! A real squid (HTTP CONNECT proxy) as a subprocess on an ephemeral port, in a tempdir.
//!
//! squid rather than tinyproxy: tinyproxy 1.11 (Debian 12) answers a CONNECT with *wrong*
//! credentials with 401, not 407, and its config refuses passwords with characters such as
//! `@`, `:` or `#`, which are exactly the ones whose percent-decoding needs testing. squid
//! answers 407 to both missing and wrong credentials, as RFC 9110 says.
//!
//! Basic auth uses squid's `basic_ncsa_auth` with an htpasswd line made by `openssl passwd`.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use super::{free_port, require_binary};

pub struct Squid {
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

#[derive(Default)]
pub struct SquidOptions<'a> {
    /// Require Basic auth with this user and password.
    pub auth: Option<(&'a str, &'a str)>,
    /// Refuse CONNECT to any port but 443 (answered 403), as many corporate proxies do.
    pub only_port_443: bool,
}

impl Squid {
    pub async fn spawn(options: SquidOptions<'_>) -> Squid {
        let bin = require_binary("squid");
        let dir = tempfile::tempdir().expect("tempdir");
        // Started as root, squid drops to the `proxy` user: it must be able to write here.
        set_mode(dir.path(), 0o777);
        let d = dir.path().display().to_string();
        let mut access = String::new();
        if let Some((user, pass)) = options.auth {
            let hash = Command::new(require_binary("openssl"))
                .args(["passwd", "-apr1", pass])
                .output()
                .expect("openssl passwd");
            assert!(hash.status.success(), "openssl passwd failed");
            let line = format!("{user}:{}", String::from_utf8_lossy(&hash.stdout).trim());
            let passwd = dir.path().join("passwd");
            std::fs::write(&passwd, format!("{line}\n")).expect("write passwd");
            set_mode(&passwd, 0o644);
            access.push_str(&format!(
                "auth_param basic program {} {d}/passwd\nauth_param basic children 2 startup=1 idle=1\nauth_param basic realm portcullis-test\nacl authed proxy_auth REQUIRED\n",
                require_binary_in("/usr/lib/squid", "basic_ncsa_auth"),
            ));
        }
        if options.only_port_443 {
            access.push_str("acl tls_port port 443\nhttp_access deny CONNECT !tls_port\n");
        }
        access.push_str(if options.auth.is_some() {
            "http_access allow authed\nhttp_access deny all\n"
        } else {
            "http_access allow localhost\nhttp_access deny all\n"
        });
        // A free port can be taken by someone else before squid binds it: retry a few times.
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join("squid.conf");
            std::fs::write(
                &conf,
                format!(
                    "http_port 127.0.0.1:{port}\npid_filename {d}/squid.pid\ncache_log {d}/cache.log\naccess_log stdio:{d}/access.log\ncache deny all\ncache_mem 8 MB\ncoredump_dir {d}\nshutdown_lifetime 0 seconds\npinger_enable off\n{access}"
                ),
            )
            .expect("write squid.conf");
            set_mode(&conf, 0o644);
            let mut child = Command::new(&bin)
                .arg("-N")
                .arg("-f")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn squid");
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            let ours = child.id().to_string();
            let pid_file = dir.path().join("squid.pid");
            let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
            loop {
                // squid writes its pid file once configured; "our pid and the port accepts"
                // means the port is squid's.
                let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
                if pid.trim() == ours && TcpStream::connect(addr).await.is_ok() {
                    return Squid { addr, child, dir };
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken (or a config error: see cache.log below)
                }
                if tokio::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let log = std::fs::read_to_string(dir.path().join("cache.log")).unwrap_or_default();
        panic!("squid did not start; cache.log:\n{log}");
    }

    /// `http://host:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// squid's access log (a line per finished transaction: status, method, target, user).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Wait (up to 10 s) for an access-log line containing every one of `parts`.
    pub async fn wait_for_log(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let log = self.access_log();
            if let Some(line) = log.lines().find(|l| parts.iter().all(|p| l.contains(p))) {
                return line.to_string();
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no squid access-log line with {parts:?}; log:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Squid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

fn require_binary_in(dir: &str, name: &str) -> String {
    let p = std::path::Path::new(dir).join(name);
    assert!(
        p.is_file(),
        "{} is missing: apt-get install squid",
        p.display()
    );
    p.display().to_string()
}
