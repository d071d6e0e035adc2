//! Receiving side of the HAProxy PROXY protocol (v1 text and v2 binary).
//!
//! Runs on a freshly accepted TCP connection, *before* TLS, behind a load
//! balancer that prepends the real client address. Not one byte past the header
//! is read: what follows belongs to the TLS handshake (or HTTP).
//!
//! The version is configured, never auto-detected: honouring a header only when
//! one happens to be present would let any direct client forge its source
//! address. No timeout here; the caller bounds the whole accept phase.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Longest legal v1 line, CRLF included (spec section 2.1).
const V1_MAX_LEN: usize = 107;
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V2_FIXED_LEN: usize = 16;
/// Cap on the v2 variable part, so a peer can never make us allocate more.
const V2_MAX_PAYLOAD: usize = 2048;

/// Which PROXY protocol versions a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyVersion {
    V1,
    V2,
    Any,
}

/// What the header said. `None` = LOCAL / UNKNOWN / non-inet: use the TCP peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    pub source: Option<SocketAddr>,
    pub destination: Option<SocketAddr>,
}

const NO_ADDRESS: ProxyHeader = ProxyHeader {
    source: None,
    destination: None,
};

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("connection closed before the PROXY header was complete")]
    Truncated,
    #[error("not a PROXY protocol header")]
    NotProxy,
    #[error("PROXY protocol {0} header, but this listener accepts only {1}")]
    WrongVersion(&'static str, &'static str),
    #[error("malformed PROXY protocol header: {0}")]
    Malformed(&'static str),
    #[error("i/o error reading PROXY header: {0}")]
    Io(#[from] std::io::Error),
}

use ProxyError::Malformed;

/// Parse a complete v1 line (including CRLF). Pure.
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    if line.len() > V1_MAX_LEN {
        return Err(Malformed("v1 header longer than 107 bytes"));
    }
    let body = line
        .strip_suffix(b"\r\n")
        .ok_or(Malformed("v1 header not terminated by CRLF"))?;
    let body = body.strip_prefix(b"PROXY ").ok_or(ProxyError::NotProxy)?;
    // Only the final CRLF may end the line; a stray CR or LF inside means the
    // sender and we disagree on where the header stops.
    if body.iter().any(|&b| b == b'\r' || b == b'\n') {
        return Err(Malformed("v1 header contains a stray CR or LF"));
    }
    let body = std::str::from_utf8(body).map_err(|_| Malformed("v1 header is not ASCII"))?;
    // Splitting on a single space makes double spaces yield empty fields,
    // which then fail to parse: exactly one space is enforced for free.
    let mut fields = body.split(' ');
    let v6 = match fields.next() {
        // The spec says to ignore everything after UNKNOWN.
        Some("UNKNOWN") => return Ok(NO_ADDRESS),
        Some("TCP4") => false,
        Some("TCP6") => true,
        _ => return Err(Malformed("v1 header has an unknown protocol")),
    };
    let fields: Vec<&str> = fields.collect();
    let [src, dst, sport, dport] = fields[..] else {
        return Err(Malformed("v1 header needs exactly four address fields"));
    };
    Ok(ProxyHeader {
        source: Some(v1_endpoint(src, sport, v6)?),
        destination: Some(v1_endpoint(dst, dport, v6)?),
    })
}

fn v1_endpoint(ip: &str, port: &str, v6: bool) -> Result<SocketAddr, ProxyError> {
    let ip = if v6 {
        ip.parse::<Ipv6Addr>().map(IpAddr::V6)
    } else {
        ip.parse::<Ipv4Addr>().map(IpAddr::V4)
    };
    let ip = ip.map_err(|_| Malformed("v1 address is not valid for the declared protocol"))?;
    // u16::from_str alone would also accept a leading '+'.
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Malformed("v1 port is not a decimal number"));
    }
    let port = port
        .parse()
        .map_err(|_| Malformed("v1 port is out of range"))?;
    Ok(SocketAddr::new(ip, port))
}

/// The validated fixed 16-byte part of a v2 header.
struct V2Fixed {
    local: bool,
    family: u8,
    len: usize,
}

/// Checked on its own so `read_header` can reject a bad header (and an
/// oversize length) before allocating or waiting for the variable part.
fn parse_v2_fixed(fixed: &[u8; V2_FIXED_LEN]) -> Result<V2Fixed, ProxyError> {
    let [signature @ .., ver_cmd, family, len_hi, len_lo] = *fixed;
    if signature != V2_SIGNATURE {
        return Err(ProxyError::NotProxy);
    }
    if ver_cmd >> 4 != 2 {
        return Err(Malformed("unsupported v2 version"));
    }
    let local = match ver_cmd & 0x0F {
        0 => true,
        1 => false,
        _ => return Err(Malformed("unknown v2 command")),
    };
    let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
    if len > V2_MAX_PAYLOAD {
        return Err(Malformed("v2 header longer than 2048 bytes"));
    }
    Ok(V2Fixed { local, family, len })
}

/// Parse a complete v2 header (16 fixed bytes + len). Pure.
pub fn parse_v2(header: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let (fixed, payload) = header
        .split_first_chunk::<V2_FIXED_LEN>()
        .ok_or(Malformed("v2 header shorter than 16 bytes"))?;
    parse_v2_parts(fixed, payload)
}

fn parse_v2_parts(fixed: &[u8; V2_FIXED_LEN], payload: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let fixed = parse_v2_fixed(fixed)?;
    if payload.len() != fixed.len {
        return Err(Malformed("v2 length does not match the header size"));
    }
    // LOCAL (health checks from the proxy itself): the spec says to discard
    // the whole block, family included, and use the real endpoints.
    if fixed.local {
        return Ok(NO_ADDRESS);
    }
    let addr_len = match fixed.family {
        0x00 => 0,
        0x11 | 0x12 => 12,
        0x21 | 0x22 => 36,
        0x31 | 0x32 => 216,
        _ => return Err(Malformed("unknown v2 address family")),
    };
    let (addrs, tlvs) = payload.split_at_checked(addr_len).ok_or(Malformed(
        "v2 address block shorter than its family requires",
    ))?;
    check_tlvs(tlvs)?;
    let (source, destination) = v2_addrs(fixed.family, addrs).unzip();
    Ok(ProxyHeader {
        source,
        destination,
    })
}

/// Inet addresses from an address block already cut to its family's size
/// (src ip, dst ip, src port, dst port); `None` for UNSPEC and UNIX, whose
/// endpoints cannot be expressed as a `SocketAddr`.
fn v2_addrs(family: u8, addrs: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    if !matches!(family >> 4, 1 | 2) {
        return None;
    }
    let (ips, &[sp_hi, sp_lo, dp_hi, dp_lo]) = addrs.split_last_chunk::<4>()?;
    let (src, dst) = ips.split_at_checked(ips.len() / 2)?;
    let ip = |octets: &[u8]| {
        let v4 = <[u8; 4]>::try_from(octets).map(IpAddr::from);
        v4.or_else(|_| <[u8; 16]>::try_from(octets).map(IpAddr::from))
            .ok()
    };
    Some((
        SocketAddr::new(ip(src)?, u16::from_be_bytes([sp_hi, sp_lo])),
        SocketAddr::new(ip(dst)?, u16::from_be_bytes([dp_hi, dp_lo])),
    ))
}

/// TLVs are skipped, but a malformed chain means the sender's idea of the
/// header differs from ours, so it is rejected rather than ignored.
fn check_tlvs(mut tlvs: &[u8]) -> Result<(), ProxyError> {
    while !tlvs.is_empty() {
        let Some((&[_kind, len_hi, len_lo], rest)) = tlvs.split_first_chunk::<3>() else {
            return Err(Malformed("truncated v2 TLV"));
        };
        let len = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        tlvs = rest
            .get(len..)
            .ok_or(Malformed("v2 TLV overruns the header"))?;
    }
    Ok(())
}

/// `read_exact`, with EOF reported as the protocol-level `Truncated`.
async fn fill<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> Result<(), ProxyError> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Err(ProxyError::Truncated),
        Err(e) => Err(e.into()),
    }
}

/// Read and parse one header from the stream, reading no byte past it.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
    accept: ProxyVersion,
) -> Result<ProxyHeader, ProxyError> {
    // 8 bytes are safe to read unconditionally: every valid v1 line is at
    // least 15 bytes and every v2 header at least 16.
    let mut fixed = [0u8; V2_FIXED_LEN];
    fill(stream, &mut fixed[..8]).await?;
    if fixed.starts_with(b"PROXY ") {
        if accept == ProxyVersion::V2 {
            return Err(ProxyError::WrongVersion("v1", "v2"));
        }
        read_v1_line(stream, &fixed[..8]).await
    } else if fixed[..8] == V2_SIGNATURE[..8] {
        if accept == ProxyVersion::V1 {
            return Err(ProxyError::WrongVersion("v2", "v1"));
        }
        fill(stream, &mut fixed[8..]).await?;
        let len = parse_v2_fixed(&fixed)?.len; // bounded by V2_MAX_PAYLOAD
        let mut payload = vec![0u8; len];
        fill(stream, &mut payload).await?;
        parse_v2_parts(&fixed, &payload)
    } else {
        Err(ProxyError::NotProxy)
    }
}

/// v1 has no length prefix, so the only way to stop exactly at the CRLF is to
/// read one byte at a time. The cost (at most ~100 small reads) is fine: v1 is
/// rare, short and once per connection; a buffered reader would swallow the
/// TLS ClientHello that follows.
async fn read_v1_line<S: AsyncRead + Unpin>(
    stream: &mut S,
    first: &[u8],
) -> Result<ProxyHeader, ProxyError> {
    if first.contains(&b'\n') {
        return Err(Malformed("v1 header line too short"));
    }
    let mut line = Vec::with_capacity(V1_MAX_LEN);
    line.extend_from_slice(first);
    while line.len() < V1_MAX_LEN {
        let mut byte = [0u8; 1];
        fill(stream, &mut byte).await?;
        line.extend_from_slice(&byte);
        // Stop at the first LF either way: a bare LF is an error, and going on
        // to look for a later CRLF would read bytes that are not ours.
        if byte == [b'\n'] {
            return parse_v1(&line);
        }
    }
    Err(Malformed("v1 header has no CRLF within 107 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use ProxyVersion::{Any, V1, V2};

    const GET: &[u8] = b"GET / HTTP/1.1\r\n\r\n";
    // 192.0.2.1:12345 -> 198.51.100.2:443
    const V4_BLOCK: [u8; 12] = [192, 0, 2, 1, 198, 51, 100, 2, 0x30, 0x39, 0x01, 0xBB];
    const TLVS: [u8; 8] = [0x01, 0x00, 0x02, b'h', b'2', 0x04, 0x00, 0x00];

    fn hdr(src: &str, dst: &str) -> ProxyHeader {
        let (source, destination) = (src.parse().unwrap(), dst.parse().unwrap());
        ProxyHeader {
            source: Some(source),
            destination: Some(destination),
        }
    }

    fn v2(ver_cmd: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(payload.len()).unwrap().to_be_bytes();
        [&V2_SIGNATURE[..], &[ver_cmd, family], &len, payload].concat()
    }

    fn v6_block() -> Vec<u8> {
        let ip = |s: &str| s.parse::<Ipv6Addr>().unwrap().octets();
        [
            &ip("2001:db8::1")[..],
            &ip("2001:db8::2"),
            &[0x30, 0x39, 0x01, 0xBB],
        ]
        .concat()
    }

    fn malformed<T: std::fmt::Debug>(r: Result<T, ProxyError>) -> bool {
        matches!(r, Err(ProxyError::Malformed(_)))
    }

    /// Runs `read_header` over an in-memory reader; returns what it left unread.
    async fn read(input: &[u8], accept: ProxyVersion) -> (Result<ProxyHeader, ProxyError>, &[u8]) {
        let mut reader = input;
        let r = read_header(&mut reader, accept).await;
        (r, reader)
    }

    #[test]
    fn v1_tcp4_tcp6_unknown() {
        let v4 = parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.2 12345 443\r\n");
        assert_eq!(v4.unwrap(), hdr("192.0.2.1:12345", "198.51.100.2:443"));
        let v6 = parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 0 65535\r\n");
        assert_eq!(v6.unwrap(), hdr("[2001:db8::1]:0", "[2001:db8::2]:65535"));
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), NO_ADDRESS);
        let unknown = parse_v1(b"PROXY UNKNOWN ::1 ::2 1 2\r\n");
        assert_eq!(unknown.unwrap(), NO_ADDRESS);
    }

    #[test]
    fn v1_invalid() {
        for line in [
            &b"PROXY TCP4 192.0.2.256 198.51.100.2 1 2\r\n"[..], // bad IP
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 65536\r\n",    // port range
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 2\r\n",       // sign
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1  2\r\n",       // double space
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2 \r\n",       // trailing space
            b"PROXY TCP4 2001:db8::1 2001:db8::2 1 2\r\n",       // family mismatch
            b"PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",        // family mismatch
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\n",          // LF only
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1\r2\r\n",       // stray CR
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 2\r\n",        // not TCP
        ] {
            assert!(malformed(parse_v1(line)), "{line:?}");
        }
    }

    #[tokio::test]
    async fn v1_line_length_and_bare_lf() {
        let mut input = b"PROXY UNKNOWN ".to_vec();
        input.resize(200, b'x');
        input.extend_from_slice(b"\r\n");
        assert!(malformed(read(&input, V1).await.0));
        // Exactly 107 bytes ending in CRLF is still fine; 108 is not.
        let line = [&input[..105], b"\r\n"].concat();
        assert_eq!(read(&line, V1).await.0.unwrap(), NO_ADDRESS);
        assert!(malformed(parse_v1(&[&line[..104], b"yy\r\n"].concat())));
        // A bare LF stops reading right there, leaving what follows unread.
        let (r, rest) = read(b"PROXY TCP4 192.0.2.1 198.51.100.2 1 2\nGET", Any).await;
        assert!(malformed(r));
        assert_eq!(rest, b"GET");
    }

    #[test]
    fn v2_proxy_local_with_and_without_tlvs() {
        let v4 = hdr("192.0.2.1:12345", "198.51.100.2:443");
        let v6 = hdr("[2001:db8::1]:12345", "[2001:db8::2]:443");
        for (family, block, want) in [(0x11, V4_BLOCK.to_vec(), v4), (0x21, v6_block(), v6)] {
            assert_eq!(parse_v2(&v2(0x21, family, &block)).unwrap(), want);
            let with_tlvs = [&block[..], &TLVS].concat();
            assert_eq!(parse_v2(&v2(0x21, family, &with_tlvs)).unwrap(), want);
        }
        assert_eq!(parse_v2(&v2(0x21, 0x12, &V4_BLOCK)).unwrap(), v4); // UDP
        for (ver_cmd, family, payload) in [
            (0x21, 0x00, &[][..]),   // PROXY UNSPEC
            (0x21, 0x31, &[0; 216]), // PROXY UNIX
            (0x20, 0x00, &[]),       // LOCAL
            (0x20, 0x11, &V4_BLOCK), // LOCAL ignores any address block
        ] {
            assert_eq!(parse_v2(&v2(ver_cmd, family, payload)).unwrap(), NO_ADDRESS);
        }
    }

    #[test]
    fn v2_invalid() {
        let overrun = [&V4_BLOCK[..], &[0x01, 0x00, 0x05, b'a']].concat();
        let stub = [&V4_BLOCK[..], &[0x01, 0x00]].concat();
        for (ver_cmd, family, payload) in [
            (0x11, 0x11, &V4_BLOCK[..]),   // version 1
            (0x31, 0x11, &V4_BLOCK),       // version 3
            (0x22, 0x11, &V4_BLOCK),       // command 2
            (0x2F, 0x11, &V4_BLOCK),       // command F
            (0x21, 0x13, &V4_BLOCK),       // unknown family
            (0x21, 0x11, &V4_BLOCK[..11]), // address block too short
            (0x21, 0x21, &V4_BLOCK),       // IPv6 needs 36 bytes
            (0x21, 0x11, &overrun),        // TLV overruns the block
            (0x21, 0x11, &stub),           // TLV header cut short
            (0x21, 0x00, &[0; 2049]),      // over the cap
        ] {
            let r = parse_v2(&v2(ver_cmd, family, payload));
            assert!(malformed(r), "{ver_cmd:x} {family:x}");
        }
        // Fewer bytes than the length field announces.
        let short = [&V2_SIGNATURE[..], &[0x21, 0x11, 0, 12], &V4_BLOCK[..11]].concat();
        assert!(malformed(parse_v2(&short)));
        assert!(malformed(parse_v2(&short[..10])));
    }

    #[tokio::test]
    async fn read_header_leaves_following_bytes() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 12345 443\r\n".to_vec();
        let v2_tlv = v2(0x21, 0x11, &[&V4_BLOCK[..], &TLVS].concat());
        for (header, accept) in [(v1, V1), (v2_tlv.clone(), V2), (v2_tlv, Any)] {
            let input = [&header[..], GET].concat();
            let (r, rest) = read(&input, accept).await;
            assert_eq!(r.unwrap(), hdr("192.0.2.1:12345", "198.51.100.2:443"));
            assert_eq!(rest, GET);
        }
        // An oversize length is rejected before its payload is read.
        let oversize = [&V2_SIGNATURE[..], &[0x21, 0x11, 0xFF, 0xFF], GET].concat();
        let (r, rest) = read(&oversize, V2).await;
        assert!(malformed(r));
        assert_eq!(rest, GET);
    }

    #[tokio::test]
    async fn read_header_does_not_wait_for_more_bytes() {
        // The writer sends only the header and stays open: any attempt to read
        // past the header would block until the timeout.
        for (header, accept) in [
            (b"PROXY UNKNOWN\r\n".to_vec(), Any),
            (v2(0x20, 0x00, &[]), Any),
            (v2(0x21, 0x21, &v6_block()), V2),
        ] {
            let (mut client, mut server) = tokio::io::duplex(4096);
            client.write_all(&header).await.unwrap();
            let read = read_header(&mut server, accept);
            let r = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
            assert!(r.expect("read_header over-read").is_ok());
            client.write_all(GET).await.unwrap();
            drop(client);
            let mut rest = Vec::new();
            server.read_to_end(&mut rest).await.unwrap();
            assert_eq!(rest, GET);
        }
    }

    #[tokio::test]
    async fn wrong_version_not_proxy_truncated() {
        let v1 = b"PROXY UNKNOWN\r\n";
        let v2h = v2(0x21, 0x11, &V4_BLOCK);
        let bad_sig = [&v2h[..10], b"X", &v2h[11..]].concat();
        let r = read(v1, V2).await.0;
        assert!(matches!(r, Err(ProxyError::WrongVersion("v1", "v2"))));
        let r = read(&v2h, V1).await.0;
        assert!(matches!(r, Err(ProxyError::WrongVersion("v2", "v1"))));
        for input in [GET, &bad_sig] {
            assert!(matches!(
                read(input, Any).await.0,
                Err(ProxyError::NotProxy)
            ));
        }
        for cut in [&v1[..4], &v1[..12], &v2h[..10], &v2h[..20]] {
            let r = read(cut, Any).await.0;
            assert!(matches!(r, Err(ProxyError::Truncated)), "{cut:?}");
        }
    }
}
