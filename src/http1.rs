//! One plain HTTP/1.1 request and its answer, over any stream: the probe's POSTs on a stream the
//! dialer opened (proxy and TLS done), `portcullis healthcheck`'s GET, and the admin CLI's
//! JSON requests. Bounded: a head of 16 KiB, a body of 64 KiB (8 MiB for the admin CLI: a page
//! of 10,000 bans is about 2 MiB), all within one deadline.

use std::time::Duration;

use http::HeaderMap;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// An answer: status, headers, and a bounded body.
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 64 * 1024;
/// The admin CLI's answers: its own gateway's admin API.
const MAX_ADMIN_BODY: usize = 8 << 20;

/// `GET path`, then the answer.
pub async fn get<S>(
    stream: &mut S,
    path: &str,
    headers: &HeaderMap,
    timeout: Duration,
) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let head = head("GET", path, headers, "");
    exchange(stream, head, Body::Filler(0), MAX_BODY, timeout).await
}

/// `POST path` with `len` bytes of body and `headers`, then the answer. A proxy that refuses a
/// large body early may answer before the body is sent: the answer is read all the same.
pub async fn post<S>(
    stream: &mut S,
    path: &str,
    headers: &HeaderMap,
    len: usize,
    timeout: Duration,
) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let body = format!("Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n");
    let head = head("POST", path, headers, &body);
    exchange(stream, head, Body::Filler(len), MAX_BODY, timeout).await
}

/// `method path` with a JSON `body` (none if empty), then the answer.
pub async fn request<S>(
    stream: &mut S,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let extra = if body.is_empty() {
        String::new()
    } else {
        format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        )
    };
    let head = head(method, path, headers, &extra);
    exchange(stream, head, Body::Bytes(body), MAX_ADMIN_BODY, timeout).await
}

/// What follows the head.
enum Body<'a> {
    /// This many filler bytes (the probe's body-size check).
    Filler(usize),
    Bytes(&'a [u8]),
}

fn head(method: &str, path: &str, headers: &HeaderMap, extra: &str) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\n");
    for (name, value) in headers {
        if let Ok(v) = value.to_str() {
            head.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    head.push_str(extra);
    head.push_str("Connection: close\r\n\r\n");
    head
}

/// Send `head` and the body, then read an answer of at most `max` body bytes, within `timeout`.
async fn exchange<S>(
    stream: &mut S,
    head: String,
    body: Body<'_>,
    max: usize,
    timeout: Duration,
) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let work = async {
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("cannot send the request: {e}"))?;
        match body {
            Body::Bytes(b) => {
                stream
                    .write_all(b)
                    .await
                    .map_err(|e| format!("cannot send the request: {e}"))?;
            }
            Body::Filler(len) => {
                let chunk = vec![0x5Au8; 64 * 1024];
                let mut sent = 0;
                while sent < len {
                    let n = chunk.len().min(len - sent);
                    // A refusal mid-body shows up as a write error; the answer may still be
                    // readable.
                    if stream.write_all(&chunk[..n]).await.is_err() {
                        break;
                    }
                    sent += n;
                }
            }
        }
        let _ = stream.flush().await;
        read_answer(stream, max).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("no answer within {} s", timeout.as_secs()))?
}

async fn read_answer<S: AsyncRead + Unpin>(stream: &mut S, max: usize) -> Result<Answer, String> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream
            .read(&mut chunk)
            .await
            .map_err(|e| format!("the connection broke before an answer: {e}"))?;
        if n == 0 {
            return Err("the connection closed without an answer".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut slots = [httparse::EMPTY_HEADER; 64];
        let mut parsed = httparse::Response::new(&mut slots);
        match parsed.parse(&buf) {
            Ok(httparse::Status::Complete(at)) => {
                let status = parsed.code.unwrap_or(0);
                let mut headers = HeaderMap::new();
                for h in parsed.headers.iter() {
                    if let (Ok(name), Ok(value)) = (
                        http::HeaderName::from_bytes(h.name.as_bytes()),
                        http::HeaderValue::from_bytes(h.value),
                    ) {
                        headers.append(name, value);
                    }
                }
                let chunked = headers
                    .get(http::header::TRANSFER_ENCODING)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
                let rest = buf[at..].to_vec();
                let body = if chunked {
                    read_chunked(stream, rest, max).await
                } else {
                    let want = headers
                        .get(http::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<usize>().ok())
                        .unwrap_or(max)
                        .min(max);
                    read_at_least(stream, rest, want).await
                };
                return Ok(Answer {
                    status,
                    headers,
                    body,
                });
            }
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => return Err("an answer head over 16 KiB".into()),
            Err(e) => return Err(format!("not an HTTP answer: {e}")),
        }
    }
}

/// Read until `buf` holds `want` bytes (or the stream ends), then cut it there.
async fn read_at_least<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut buf: Vec<u8>,
    want: usize,
) -> Vec<u8> {
    let mut chunk = [0u8; 4096];
    while buf.len() < want {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    buf.truncate(want);
    buf
}

/// A chunked body, decoded, up to `max` (a hop may re-chunk the gateway's answer).
async fn read_chunked<S: AsyncRead + Unpin>(
    stream: &mut S,
    mut raw: Vec<u8>,
    max: usize,
) -> Vec<u8> {
    let mut body = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut at = 0;
    loop {
        match httparse::parse_chunk_size(&raw[at..]) {
            Ok(httparse::Status::Complete((header, size))) => {
                let size = usize::try_from(size).unwrap_or(usize::MAX);
                if size == 0 || body.len() >= max {
                    return body;
                }
                let start = at + header;
                // The chunk's data and its CRLF.
                let end = start.saturating_add(size).saturating_add(2);
                while raw.len() < end.min(start + max + 2) {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            body.extend_from_slice(raw.get(start..).unwrap_or_default());
                            body.truncate(max);
                            return body;
                        }
                        Ok(n) => raw.extend_from_slice(&chunk[..n]),
                    }
                }
                let data_end = (start + size).min(raw.len());
                body.extend_from_slice(&raw[start..data_end]);
                body.truncate(max);
                at = end.min(raw.len());
            }
            Ok(httparse::Status::Partial) if raw.len() - at < 1024 => {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return body,
                    Ok(n) => raw.extend_from_slice(&chunk[..n]),
                }
            }
            _ => return body,
        }
    }
}
