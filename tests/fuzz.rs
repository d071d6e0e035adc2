//! Fuzz targets (bolero, stable Rust): every parser that reads what a peer or an operator
//! wrote. Under `cargo test` each runs for about a second of random inputs; `benches/fuzz.sh`
//! runs each for minutes (`BOLERO_RANDOM_TEST_TIME_MS`) and reports the inputs tried.
//!
//! Each asserts a property where one exists, not only "no panic": what the framer hands out is
//! exactly the bytes it was given, packet by packet; a SUBSCRIBE rebuilt with all its filters
//! is the same packet; a PROXY header that parses prints back to one that parses the same; a
//! client IP is the peer unless a trusted peer's header named it; no random token verifies.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use http::{HeaderMap, HeaderName, HeaderValue};
use portcullis::identify::{self, CidrSet, ClientIpHeader, IpSource, Origin};
use portcullis::listener::proxy_protocol;
use portcullis::mqtt::server::{self, DevicePacket, Framer, Version};

/// Inputs tried per target, printed at the end (`--nocapture`) for the long runs' report.
fn report(name: &str, n: &AtomicU64) {
    eprintln!("fuzz {name}: {} inputs", n.load(Relaxed));
}

/// The fixed header's length (type byte and remaining-length varint) of a whole packet.
fn header_len(packet: &[u8]) -> usize {
    1 + packet[1..]
        .iter()
        .position(|b| b & 0x80 == 0)
        .map_or(0, |i| i + 1)
}

#[test]
fn mqtt_framer_hands_out_exactly_the_bytes_it_was_given() {
    static N: AtomicU64 = AtomicU64::new(0);
    bolero::check!()
        .with_type::<(Vec<u8>, Vec<u8>)>()
        .for_each(|(data, cuts)| {
            N.fetch_add(1, Relaxed);
            let mut framer = Framer::new(4096);
            let mut out = Vec::new();
            let mut rest = &data[..];
            let mut cuts = cuts.iter().map(|c| usize::from(*c) + 1);
            let mut failed = false;
            while !rest.is_empty() && !failed {
                let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                framer.push(&rest[..n]);
                rest = &rest[n..];
                loop {
                    match framer.next_packet() {
                        Ok(Some(p)) => {
                            // Every packet it hands out parses as far as its own lengths go,
                            // and the device parser never panics on it, in either version.
                            assert!(p.len() <= 4096 + 5);
                            for v in [Version::V311, Version::V5] {
                                let _ = server::parse_device(&p, v);
                            }
                            out.extend_from_slice(&p);
                        }
                        Ok(None) => break,
                        Err(_) => {
                            failed = true;
                            break;
                        }
                    }
                }
            }
            // What came out is a prefix of what went in, byte for byte.
            assert_eq!(&data[..out.len()], &out[..]);
            assert!(out.len() + framer.buffered() <= data.len());
        });
    report("mqtt_framer", &N);
}

/// A packet around `body`: one of the types a device sends (flags right for most), and a
/// remaining length that matches. Random bytes alone almost never frame; these reach the
/// parsers' insides.
fn framed(kind: u8, body: &[u8]) -> Vec<u8> {
    const FIRST: [u8; 10] = [0x10, 0x30, 0x32, 0x34, 0x3b, 0x40, 0x62, 0x82, 0xa2, 0xe0];
    support::raw_mqtt::packet(FIRST[usize::from(kind) % FIRST.len()], body)
}

#[test]
fn device_packets_parse_without_panic_and_subscribes_rebuild_identically() {
    static N: AtomicU64 = AtomicU64::new(0);
    bolero::check!()
        .with_type::<(Option<u8>, Vec<u8>)>()
        .for_each(|(kind, raw)| {
            N.fetch_add(1, Relaxed);
            let packet = kind.map(|k| framed(k, raw));
            let bytes = packet.as_deref().unwrap_or(raw);
            for v in [Version::V311, Version::V5] {
                match server::parse_device(bytes, v) {
                    Ok(DevicePacket::Publish(p)) => {
                        // The layout stays inside the packet.
                        assert!(p.payload_len <= bytes.len());
                        assert!(p.topic.len() < bytes.len());
                    }
                    Ok(DevicePacket::Subscribe) => {
                        let parts = server::subscribe_parts(bytes, v).expect("a parsed SUBSCRIBE");
                        assert!(!parts.is_empty());
                        let all = vec![true; parts.len()];
                        let rebuilt = parts.keeping(&all);
                        // The same body (a non-minimal length varint is re-encoded minimally).
                        assert_eq!(
                            &rebuilt[header_len(&rebuilt)..],
                            &bytes[header_len(bytes)..]
                        );
                        let codes = vec![0x80; parts.len()];
                        let suback = server::suback(parts.packet_id, &codes, v);
                        assert_eq!(server::suback_id(&suback), Some(parts.packet_id));
                    }
                    _ => {}
                }
                // The broker-side parsers, on the same bytes: no panic.
                let _ = server::parse_broker(bytes, v);
                let _ = server::suback_merged(bytes, v, &[true, false, true], 0x87);
            }
        });
    report("device_packets", &N);
}

#[test]
fn proxy_headers_that_parse_print_back_to_the_same_header() {
    static N: AtomicU64 = AtomicU64::new(0);
    bolero::check!().for_each(|bytes: &[u8]| {
        N.fetch_add(1, Relaxed);
        if let Ok(h) = proxy_protocol::parse_v1(bytes) {
            if let (Some(s), Some(d)) = (h.source, h.destination) {
                let family = if s.is_ipv4() { "TCP4" } else { "TCP6" };
                let line = format!(
                    "PROXY {family} {} {} {} {}\r\n",
                    s.ip(),
                    d.ip(),
                    s.port(),
                    d.port()
                );
                let again = proxy_protocol::parse_v1(line.as_bytes()).expect("re-parse");
                assert_eq!((again.source, again.destination), (Some(s), Some(d)));
            }
        }
        if let Ok(h) = proxy_protocol::parse_v2(bytes) {
            // Addresses come from inside the header's own length.
            assert!(bytes.len() >= 16);
            let _ = h.source.map(|a: SocketAddr| a.port());
        }
    });
    report("proxy_protocol", &N);
}

#[test]
fn a_client_ip_is_the_peer_unless_a_trusted_peer_named_another() {
    static N: AtomicU64 = AtomicU64::new(0);
    bolero::check!()
        .with_type::<(bool, u8, String, String)>()
        .for_each(|(peer_trusted, which, value, second)| {
            N.fetch_add(1, Relaxed);
            let peer: IpAddr = if *peer_trusted {
                "10.0.0.1".parse().expect("ip")
            } else {
                "198.51.100.1".parse().expect("ip")
            };
            let trusted = CidrSet::new(["10.0.0.0/8".parse().expect("net")]);
            let (name, header) = match which % 3 {
                0 => ("x-forwarded-for", ClientIpHeader::XForwardedFor),
                1 => ("cf-connecting-ip", ClientIpHeader::CfConnectingIp),
                _ => ("x-real-ip", ClientIpHeader::XRealIp),
            };
            let mut headers = HeaderMap::new();
            for v in [value, second] {
                if let Ok(v) = HeaderValue::from_str(v) {
                    headers.append(HeaderName::from_static(name), v);
                }
            }
            let origin = Origin {
                addr: peer,
                source: IpSource::Peer,
            };
            let (ip, source) = identify::client_ip(origin, &headers, &trusted, header);
            if !*peer_trusted || source == IpSource::Peer {
                assert_eq!((ip, source), (peer, IpSource::Peer));
            } else {
                // A believed address is one the header spelled out.
                let text: String = headers
                    .get_all(name)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .collect::<Vec<_>>()
                    .join(",")
                    .to_ascii_lowercase();
                let shown = ip.to_string();
                let bare = shown.trim_start_matches("::ffff:");
                assert!(
                    text.contains(bare) || text.contains(&shown),
                    "{ip} from {text:?}"
                );
            }
        });
    report("client_ip", &N);
}

#[test]
fn push_serials_and_transaction_ids_keep_their_alphabet() {
    static N: AtomicU64 = AtomicU64::new(0);
    bolero::check!()
        .with_type::<(String, String)>()
        .for_each(|(path, header)| {
            N.fetch_add(1, Relaxed);
            let mut headers = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(header) {
                headers.insert("x-serial", v.clone());
                headers.insert("idempotency-key", v);
            }
            if let Some(s) = identify::serial(path, &headers, Some("x-serial")) {
                assert!((1..=128).contains(&s.len()));
                assert!(s
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b)));
            }
            if let Some(Ok(id)) =
                identify::transaction(&headers, "idempotency-key", Some(path), Some("txid"))
            {
                assert!((1..=255).contains(&id.len()));
                assert!(id.bytes().all(|b| b.is_ascii_graphic()));
            }
        });
    report("push_ids", &N);
}

#[test]
fn no_random_token_verifies() {
    use portcullis::auth::Authenticator;
    use portcullis::config::Config;
    static N: AtomicU64 = AtomicU64::new(0);
    let text = "[[listener]]\nbind = \"127.0.0.1:0\"\nauth = \"token\"\n[routes.mqtt]\nupstreams = [\"127.0.0.1:1883\"]\n[[auth.key]]\nalg = \"HS256\"\nsecret = \"0123456789abcdef0123456789abcdef\"\n";
    let config = Config::parse(text, None).expect("config");
    let auth = Authenticator::from_config(&config, Default::default())
        .expect("keys")
        .expect("auth");
    // Keys hold ring's verifiers, opaque to unwind-safety analysis; a panic ends the test.
    let auth = std::panic::AssertUnwindSafe(auth);
    let now = portcullis::auth::now_secs();
    bolero::check!().for_each(|bytes: &[u8]| {
        N.fetch_add(1, Relaxed);
        assert!(refuses(&auth, bytes, now));
    });
    report("device_token", &N);
}

/// Whether `auth` refuses `bytes` as a bearer token (bytes that are no header value: yes).
fn refuses(
    auth: &std::panic::AssertUnwindSafe<portcullis::auth::Authenticator>,
    bytes: &[u8],
    now: u64,
) -> bool {
    use portcullis::auth::Presented;
    use portcullis::config::AuthMode;
    let Ok(token) = std::str::from_utf8(bytes) else {
        return true;
    };
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
        headers.insert(http::header::AUTHORIZATION, v);
    }
    let p = Presented {
        headers: &headers,
        tls_cert: None,
        peer: [127, 0, 0, 1].into(),
    };
    auth.authenticate(AuthMode::Token, "mqtt", &p, now, |_| None)
        .is_err()
}

#[test]
fn any_config_text_is_accepted_or_refused_without_panic() {
    static N: AtomicU64 = AtomicU64::new(0);
    // Mutations of a real config reach deeper than random bytes, which TOML refuses at once.
    let base = include_str!("../profiles/quickstart.toml");
    bolero::check!()
        .with_type::<(u16, String)>()
        .for_each(|(at, insert)| {
            N.fetch_add(1, Relaxed);
            let mut text = base.to_string();
            let mut at = usize::from(*at) % (text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.insert_str(at, insert);
            if let Err(e) = portcullis::config::Config::parse(&text, None) {
                assert!(!e.to_string().is_empty());
            }
            let _ = portcullis::config::Config::parse(insert, None);
        });
    report("config", &N);
}

#[test]
fn agent_urls_never_carry_credentials() {
    use portcullis::agent::proxy::ProxyUrl;
    use portcullis::agent::target::GatewayUrl;
    static N: AtomicU64 = AtomicU64::new(0);
    bolero::check!().with_type::<String>().for_each(|url| {
        N.fetch_add(1, Relaxed);
        for candidate in [url.clone(), format!("wss://{url}"), format!("http://{url}")] {
            if let Ok(g) = GatewayUrl::parse(&candidate) {
                let shown = format!("{g:?}");
                assert!(
                    !candidate.contains('@') || !shown.contains('@'),
                    "{candidate}"
                );
            }
            let _ = ProxyUrl::parse(&candidate);
        }
    });
    report("agent_urls", &N);
}

#[test]
fn a_ban_record_that_parses_round_trips() {
    use portcullis::store::{Record, KINDS};
    static N: AtomicU64 = AtomicU64::new(0);
    // What the admin API's POST /banned, the store file and the bootstrap CSV all become.
    bolero::check!()
        .with_type::<(u8, String, String, Option<String>)>()
        .for_each(|(kind, who, by, until)| {
            N.fetch_add(1, Relaxed);
            let record = Record {
                kind: KINDS[usize::from(*kind) % KINDS.len()].to_string(),
                who: who.clone(),
                by: by.clone(),
                reason: String::new(),
                at: "2026-12-02T10:00:00Z".into(),
                until: until.clone(),
            };
            if let Ok(ban) = record.to_ban() {
                let again = Record::of(&ban)
                    .to_ban()
                    .expect("a ban's own record parses");
                assert_eq!(again.subject, ban.subject.clone().canonical());
                assert_eq!(again.expires, ban.expires);
            }
        });
    report("ban_records", &N);
}
