//! The admin API from the outside: real TCP, the gateway's own HTTP/1.1 client, JSON answers.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use serde_json::Value;

pub const TOKEN: &str = "ops-token-0123456789abcdef";
pub const OTHER_TOKEN: &str = "ci-token-fedcba9876543210";

/// A tokens file (`ops` and `ci`) in a temp dir, and the `[admin]` table naming it.
pub struct AdminFiles {
    pub dir: tempfile::TempDir,
    pub tokens: PathBuf,
}

impl AdminFiles {
    pub fn new() -> AdminFiles {
        let dir = tempfile::tempdir().expect("tempdir");
        let tokens = dir.path().join("tokens");
        std::fs::write(
            &tokens,
            format!("# test tokens\nops:{TOKEN}\nci:{OTHER_TOKEN}\n"),
        )
        .expect("tokens file");
        AdminFiles { dir, tokens }
    }

    pub fn toml(&self) -> String {
        format!(
            "[admin]\nbind = \"127.0.0.1:0\"\ntokens_file = \"{}\"\n",
            self.tokens.display()
        )
    }

    /// A file holding `TOKEN` alone, for the CLI's `--token-file`.
    pub fn token_file(&self) -> PathBuf {
        let f = self.dir.path().join("token");
        std::fs::write(&f, format!("{TOKEN}\n")).expect("token file");
        f
    }
}

/// An answer: status, headers, JSON (`null` when the body is empty).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub json: Value,
}

/// `method path` with `token` (none if `None`) and a JSON body.
pub async fn call(
    addr: SocketAddr,
    token: Option<&str>,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Answer {
    let mut tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("admin API reachable");
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("admin"));
    if let Some(t) = token {
        let v = HeaderValue::from_str(&format!("Bearer {t}")).unwrap();
        headers.insert(http::header::AUTHORIZATION, v);
    }
    let payload = body.map(|b| b.to_string()).unwrap_or_default();
    let a = portcullis::http1::request(
        &mut tcp,
        method,
        path,
        &headers,
        payload.as_bytes(),
        Duration::from_secs(10),
    )
    .await
    .expect("an answer from the admin API");
    let json = if a.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&a.body)
            .unwrap_or(Value::String(String::from_utf8_lossy(&a.body).into_owned()))
    };
    Answer {
        status: a.status,
        headers: a.headers,
        json,
    }
}

/// As [`call`] with the `ops` token.
pub async fn ops(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Answer {
    call(addr, Some(TOKEN), method, path, body).await
}

/// The body as text (for `/metrics`).
pub async fn text(addr: SocketAddr, path: &str) -> String {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("admin"));
    let v = HeaderValue::from_str(&format!("Bearer {TOKEN}")).unwrap();
    headers.insert(http::header::AUTHORIZATION, v);
    let a = portcullis::http1::get(&mut tcp, path, &headers, Duration::from_secs(10))
        .await
        .expect("an answer");
    assert_eq!(a.status, 200, "{path}");
    String::from_utf8(a.body).expect("UTF-8")
}
