//! `portcullis healthcheck URL`: one plain-HTTP GET, success iff the answer is 200.
//!
//! Container images of the gateway carry no curl; Docker's `HEALTHCHECK` and similar probes run
//! this instead. Only `http://` on purpose: the probe runs next to the process, on its own port.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GET `url`; `Err` says why it is not healthy.
pub async fn get(url: &str, timeout: Duration) -> Result<(), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err("only http:// URLs (the check runs beside the gateway)".into());
    }
    let host = uri.host().ok_or("the URL has no host")?;
    // An IPv6 literal comes bracketed from the URL; the resolver wants it bare.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let authority = uri.authority().map_or(host, |a| a.as_str());
    let work = async {
        let mut tcp = TcpStream::connect((host, port))
            .await
            .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        // The status line is all we need; a bounded read keeps a misbehaving server harmless.
        let mut head = [0u8; 256];
        let mut len = 0;
        while len < head.len() && !head[..len].contains(&b'\n') {
            match tcp.read(&mut head[len..]).await {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) => return Err(format!("cannot read the answer: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&head[..len]);
        let line = line.lines().next().unwrap_or("").trim().to_string();
        match line.split_whitespace().nth(1) {
            Some("200") => Ok(()),
            Some(_) => Err(format!("answered {line:?}")),
            None => Err(format!("not an HTTP answer: {line:?}")),
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}
