//! Hand-written servers that record exactly what the agent sends, byte for byte: a WebSocket
//! "gateway" that accepts the upgrade and then never answers (to see masking and pings, and to
//! play a dead path), and a TLS server that records whether any application byte arrived.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// What one connection to a raw peer carried.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// The HTTP request head, if one arrived.
    pub head: String,
    /// Bytes after the head (WebSocket frames), as received.
    pub after: Vec<u8>,
    /// TLS only: the handshake error, if it failed.
    pub tls_error: Option<String>,
    /// Every application byte received (head included).
    pub app_bytes: usize,
    /// TLS only: the client certificate presented (DER), if any.
    pub client_cert: Option<Vec<u8>>,
}

pub type Record = Arc<Mutex<Vec<Arc<Mutex<Seen>>>>>;

/// A plain-TCP WebSocket server that answers every upgrade with 101 and then only listens:
/// no pong, no data, no close. A path that went dead after the upgrade looks exactly so.
pub async fn silent_ws_server() -> (SocketAddr, Record) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let record = Record::default();
    let rec = record.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let seen = Arc::new(Mutex::new(Seen::default()));
            rec.lock().expect("record").push(seen.clone());
            tokio::spawn(async move {
                let Some(head) = read_head(&mut s, &seen).await else {
                    return;
                };
                let key = header(&head, "sec-websocket-key").unwrap_or_default();
                let answer = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                    derive_accept_key(key.as_bytes())
                );
                if s.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let mut seen = seen.lock().expect("seen");
                    seen.after.extend_from_slice(&buf[..n]);
                    seen.app_bytes += n;
                }
            });
        }
    });
    (addr, record)
}

/// A TLS server with `cert`/`key` that records each connection's handshake outcome and every
/// plaintext byte, and answers any request with 404. With `client_ca` (PEM), it requires a
/// client certificate issued by that CA.
pub async fn tls_sink(cert: &Path, key: &Path, client_ca: Option<&str>) -> (SocketAddr, Record) {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .expect("cert file")
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = PrivateKeyDer::from_pem_file(key).expect("key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            roots
                .add(CertificateDer::from_pem_slice(pem.as_bytes()).expect("CA PEM"))
                .expect("CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key).expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let record = Record::default();
    let rec = record.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let seen = Arc::new(Mutex::new(Seen::default()));
            rec.lock().expect("record").push(seen.clone());
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(s).await {
                    Ok(t) => {
                        seen.lock().expect("seen").client_cert = t
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .map(|c| c.to_vec());
                        t
                    }
                    Err(e) => {
                        seen.lock().expect("seen").tls_error = Some(e.to_string());
                        return;
                    }
                };
                if read_head(&mut tls, &seen).await.is_some() {
                    let _ = tls
                        .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                        .await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, record)
}

async fn read_head<S: AsyncRead + Unpin>(s: &mut S, seen: &Mutex<Seen>) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => {
                head.push(byte[0]);
                seen.lock().expect("seen").app_bytes += 1;
            }
            _ => return None,
        }
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    seen.lock().expect("seen").head = text.clone();
    Some(text)
}

/// A header's value from a request head (case-insensitive name).
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// Every connection recorded so far.
pub fn seen(record: &Record) -> Vec<Seen> {
    record
        .lock()
        .expect("record")
        .iter()
        .map(|s| s.lock().expect("seen").clone())
        .collect()
}

/// The WebSocket frames in `bytes` as (opcode, masked, payload length); stops at a partial frame.
pub fn frames(bytes: &[u8]) -> Vec<(u8, bool, usize)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 2 <= bytes.len() {
        let opcode = bytes[i] & 0x0f;
        let masked = bytes[i + 1] & 0x80 != 0;
        let (len, mut at) = match bytes[i + 1] & 0x7f {
            126 if i + 4 <= bytes.len() => (
                u16::from_be_bytes([bytes[i + 2], bytes[i + 3]]) as usize,
                i + 4,
            ),
            127 if i + 10 <= bytes.len() => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[i + 2..i + 10]);
                (u64::from_be_bytes(b) as usize, i + 10)
            }
            126 | 127 => break,
            n => (n as usize, i + 2),
        };
        if masked {
            at += 4;
        }
        if at + len > bytes.len() {
            break;
        }
        out.push((opcode, masked, len));
        i = at + len;
    }
    out
}
