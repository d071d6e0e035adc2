//! `portcullis healthcheck URL`: one plain-HTTP GET, success iff the answer is 200.
//!
//! Container images of the gateway carry no curl; Docker's `HEALTHCHECK` and similar probes run
//! this instead. Only `http://` on purpose: the probe runs next to the process, on its own port.

use std::time::Duration;

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
    let mut tcp = tokio::time::timeout(timeout, TcpStream::connect((host, port)))
        .await
        .map_err(|_| format!("no connection within {} s", timeout.as_secs()))?
        .map_err(|e| format!("cannot connect to {host}:{port}: {e}"))?;
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(authority) {
        headers.insert(http::header::HOST, v);
    }
    let answer = crate::http1::get(&mut tcp, path, &headers, timeout).await?;
    match answer.status {
        200 => Ok(()),
        status => Err(format!("answered {status}")),
    }
}
