//! The HTTP CONNECT exchange with a corporate proxy, with Basic auth, and its refusals in
//! terms an admin can act on (a 407 is an authentication problem, not "connection failed").

use std::fmt;

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::proxy::ProxyUrl;

/// Why a CONNECT failed, in terms an admin can act on.
#[derive(Debug)]
pub enum ConnectError {
    /// 407 (also tinyproxy's 401 on wrong credentials: a CONNECT is answered by the proxy only).
    AuthRequired {
        status: u16,
        sent_credentials: bool,
    },
    /// The proxy answered, but not 2xx.
    Refused {
        status: u16,
        reason: String,
    },
    Io(std::io::Error),
    Malformed(String),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::AuthRequired { status, sent_credentials: true } => write!(
                f,
                "proxy authentication failed ({status}): the proxy rejected the user name or password"
            ),
            ConnectError::AuthRequired { status, sent_credentials: false } => write!(
                f,
                "proxy authentication required ({status}): set proxy.username and proxy.password (or user:pass@ in the proxy URL)"
            ),
            ConnectError::Refused { status, reason } => {
                write!(f, "the proxy refused CONNECT: {status} {reason}")
            }
            ConnectError::Io(e) => write!(f, "proxy connection failed: {e}"),
            ConnectError::Malformed(m) => write!(f, "the proxy's answer is not HTTP: {m}"),
        }
    }
}

/// The longest CONNECT answer head we read; real ones are ~100 bytes.
const MAX_HEAD: usize = 8 * 1024;

/// Send `CONNECT host:port` on `tcp` (already connected to `proxy`) and read the answer head.
/// On success the stream is a raw pipe to the gateway.
pub async fn connect(
    tcp: &mut TcpStream,
    proxy: &ProxyUrl,
    host: &str,
    port: u16,
    user_agent: &str,
) -> Result<(), ConnectError> {
    let target = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let mut req =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {user_agent}\r\n");
    let sent_credentials = proxy.username.is_some();
    if let Some(user) = &proxy.username {
        let pass = proxy.password.as_ref().map_or("", |p| p.expose());
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        req.push_str(&format!("Proxy-Authorization: Basic {token}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .map_err(ConnectError::Io)?;

    // Read exactly the head: a byte past it would belong to the tunnel.
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() >= MAX_HEAD {
            return Err(ConnectError::Malformed(format!(
                "no end of head within {MAX_HEAD} bytes"
            )));
        }
        match tcp.read(&mut byte).await.map_err(ConnectError::Io)? {
            0 => {
                return Err(ConnectError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the proxy closed the connection before answering",
                )))
            }
            _ => head.push(byte[0]),
        }
    }
    answer(&head, sent_credentials)
}

/// What a proxy's whole answer head to CONNECT means: a pipe (2xx), a credentials problem
/// (407, or 401 from tinyproxy), another refusal, or not HTTP at all.
pub fn answer(head: &[u8], sent_credentials: bool) -> Result<(), ConnectError> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(ConnectError::Malformed("incomplete head".into()))
        }
        Err(e) => return Err(ConnectError::Malformed(e.to_string())),
    }
    let status = resp.code.unwrap_or(0);
    match status {
        200..=299 => Ok(()),
        407 | 401 => Err(ConnectError::AuthRequired {
            status,
            sent_credentials,
        }),
        _ => Err(ConnectError::Refused {
            status,
            reason: resp.reason.unwrap_or("").to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fuzz target: any answer a proxy could send. A pipe is opened only on an HTTP 2xx
    /// status line; 401 and 407 are credential problems, whatever else the head says.
    #[test]
    fn fuzz_a_proxy_answer_opens_a_pipe_only_on_2xx() {
        bolero::check!()
            .with_type::<(Option<u16>, Vec<u8>)>()
            .for_each(|(status, rest)| {
                let head = match status {
                    Some(code) => {
                        [format!("HTTP/1.1 {} X\r\n", code % 1000).as_bytes(), rest].concat()
                    }
                    None => rest.clone(),
                };
                match answer(&head, true) {
                    Ok(()) => {
                        assert!(head.starts_with(b"HTTP/1."));
                        assert_eq!(
                            head.get(9),
                            Some(&b'2'),
                            "{:?}",
                            String::from_utf8_lossy(&head)
                        );
                    }
                    Err(ConnectError::AuthRequired { status, .. }) => {
                        assert!(status == 401 || status == 407)
                    }
                    Err(_) => {}
                }
            });
    }

    #[test]
    fn answers() {
        assert!(answer(b"HTTP/1.1 200 Connection established\r\n\r\n", false).is_ok());
        assert!(matches!(
            answer(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", true),
            Err(ConnectError::AuthRequired {
                status: 407,
                sent_credentials: true
            })
        ));
        assert!(matches!(
            answer(b"HTTP/1.1 403 Forbidden\r\n\r\n", false),
            Err(ConnectError::Refused { status: 403, .. })
        ));
        assert!(matches!(
            answer(b"SSH-2.0-OpenSSH\r\n\r\n", false),
            Err(ConnectError::Malformed(_))
        ));
    }
}
