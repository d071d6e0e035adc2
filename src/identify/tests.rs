use super::*;
use http::HeaderValue;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn peer(s: &str) -> Origin {
    Origin {
        addr: ip(s),
        source: IpSource::Peer,
    }
}

fn xff(p: &str, h: &HeaderMap, t: &CidrSet) -> (IpAddr, IpSource) {
    client_ip(peer(p), h, t, ClientIpHeader::XForwardedFor)
}

fn trusted() -> CidrSet {
    CidrSet::new([
        "10.0.0.0/8".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ])
}

const ALL: [ClientIpHeader; 3] = [
    ClientIpHeader::XForwardedFor,
    ClientIpHeader::CfConnectingIp,
    ClientIpHeader::XRealIp,
];

#[test]
fn untrusted_peer_headers_are_ignored() {
    let h = headers(&[
        ("x-forwarded-for", "1.2.3.4"),
        ("cf-connecting-ip", "5.6.7.8"),
        ("x-real-ip", "9.9.9.9"),
    ]);
    for header in ALL {
        let got = client_ip(peer("203.0.113.9"), &h, &trusted(), header);
        assert_eq!(got, (ip("203.0.113.9"), IpSource::Peer), "{header:?}");
    }
}

#[test]
fn only_the_configured_header_is_believed() {
    let h = headers(&[
        ("x-forwarded-for", "1.2.3.4"),
        ("cf-connecting-ip", "5.6.7.8"),
        ("x-real-ip", "9.9.9.9"),
    ]);
    let t = trusted();
    let cf = client_ip(peer("10.1.1.1"), &h, &t, ClientIpHeader::CfConnectingIp);
    assert_eq!(cf, (ip("5.6.7.8"), IpSource::CfConnectingIp));
    let real = client_ip(peer("10.1.1.1"), &h, &t, ClientIpHeader::XRealIp);
    assert_eq!(real, (ip("9.9.9.9"), IpSource::XRealIp));
    // Behind nginx (XFF), a client's own CF-Connecting-IP passed through is not believed.
    assert_eq!(
        xff("10.1.1.1", &h, &t),
        (ip("1.2.3.4"), IpSource::XForwardedFor)
    );
}

#[test]
fn xff_rightmost_untrusted_hop_is_the_client() {
    // The device forged "6.6.6.6"; our LB (10.0.0.2) appended the real 1.2.3.4.
    let h = headers(&[("x-forwarded-for", "6.6.6.6, 1.2.3.4, 10.0.0.2")]);
    assert_eq!(
        xff("10.0.0.1", &h, &trusted()),
        (ip("1.2.3.4"), IpSource::XForwardedFor)
    );
    // Split over two header lines, same answer.
    let h = headers(&[
        ("x-forwarded-for", "6.6.6.6"),
        ("x-forwarded-for", "1.2.3.4"),
    ]);
    assert_eq!(xff("10.0.0.1", &h, &trusted()).0, ip("1.2.3.4"));
}

#[test]
fn xff_all_trusted_gives_leftmost() {
    let h = headers(&[("x-forwarded-for", "10.9.9.9, 10.0.0.2")]);
    assert_eq!(xff("10.0.0.1", &h, &trusted()).0, ip("10.9.9.9"));
}

#[test]
fn garbage_in_xff_falls_back_to_the_peer() {
    let h = headers(&[
        ("x-forwarded-for", "1.2.3.4, bogus"),
        ("x-real-ip", "7.7.7.7"),
    ]);
    assert_eq!(
        xff("10.0.0.1", &h, &trusted()),
        (ip("10.0.0.1"), IpSource::Peer)
    );
    let h = headers(&[("x-forwarded-for", "nonsense")]);
    assert_eq!(
        xff("10.0.0.1", &h, &trusted()),
        (ip("10.0.0.1"), IpSource::Peer)
    );
}

#[test]
fn duplicated_single_value_header_is_not_believed() {
    let h = headers(&[
        ("cf-connecting-ip", "5.6.7.8"),
        ("cf-connecting-ip", "6.6.6.6"),
    ]);
    let got = client_ip(
        peer("10.0.0.1"),
        &h,
        &trusted(),
        ClientIpHeader::CfConnectingIp,
    );
    assert_eq!(got, (ip("10.0.0.1"), IpSource::Peer));
}

#[test]
fn ipv6_and_port_forms() {
    let h = headers(&[("x-forwarded-for", "[2001:db9::1]:443")]);
    assert_eq!(xff("2001:db8::5", &h, &trusted()).0, ip("2001:db9::1"));
    let h = headers(&[("x-forwarded-for", "1.2.3.4:5555")]);
    assert_eq!(xff("10.0.0.1", &h, &trusted()).0, ip("1.2.3.4"));
}

#[test]
fn ipv4_mapped_peer_is_matched_as_ipv4() {
    let h = headers(&[("x-forwarded-for", "8.8.8.8")]);
    assert_eq!(xff("::ffff:10.0.0.1", &h, &trusted()).0, ip("8.8.8.8"));
}

#[test]
fn no_trusted_proxies_means_the_peer() {
    let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
    assert_eq!(xff("10.0.0.1", &h, &CidrSet::default()).0, ip("10.0.0.1"));
}

#[test]
fn proxy_protocol_origin_is_kept_when_no_header_applies() {
    let origin = Origin {
        addr: ip("203.0.113.7"),
        source: IpSource::ProxyProtocol,
    };
    let h = headers(&[("x-forwarded-for", "1.2.3.4")]);
    let got = client_ip(origin, &h, &trusted(), ClientIpHeader::XForwardedFor);
    assert_eq!(got, (ip("203.0.113.7"), IpSource::ProxyProtocol));
}

#[test]
fn cidr_file_parses_comments_and_names_bad_lines() {
    let dir = std::env::temp_dir().join(format!("portcullis-cidr-{}", std::process::id()));
    std::fs::write(
        &dir,
        "# cloudflare\n173.245.48.0/20\n\n2400:cb00::/32 # v6\n1.2.3.4\n",
    )
    .unwrap();
    assert_eq!(read_cidr_file(&dir).unwrap().len(), 3);
    std::fs::write(&dir, "173.245.48.0/20\nnot-an-ip\n").unwrap();
    let e = read_cidr_file(&dir).unwrap_err();
    assert!(e.contains("line 2") && e.contains("not-an-ip"), "{e}");
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn serials_from_path_or_header_only_in_their_alphabet() {
    let mut h = HeaderMap::new();
    assert_eq!(
        serial("AB-12.x:y_z", &h, None).as_deref(),
        Some("AB-12.x:y_z")
    );
    assert_eq!(serial("", &h, Some("x-serial")), None);
    h.insert("x-serial", "SN9".parse().unwrap());
    assert_eq!(serial("", &h, Some("x-serial")).as_deref(), Some("SN9"));
    assert_eq!(
        serial("PATH1", &h, Some("x-serial")).as_deref(),
        Some("PATH1")
    );
    for bad in ["a/b", "a b", "é", "a%2f", &"x".repeat(129)] {
        assert_eq!(serial(bad, &h, None), None, "{bad:?}");
    }
}

#[test]
fn transaction_ids_from_header_quoted_or_not_else_query() {
    let mut h = HeaderMap::new();
    let t = |h: &HeaderMap, q| transaction(h, "idempotency-key", q, Some("txid"));
    assert_eq!(t(&h, None), None);
    assert_eq!(t(&h, Some("a=1&txid=t%2D1")), Some(Ok("t-1".into())));
    h.insert("idempotency-key", "\"8e03978e-40d5\"".parse().unwrap());
    assert_eq!(t(&h, Some("txid=other")), Some(Ok("8e03978e-40d5".into())));
    h.insert("idempotency-key", "plain-key".parse().unwrap());
    assert_eq!(t(&h, None), Some(Ok("plain-key".into())));
    h.insert("idempotency-key", "has space".parse().unwrap());
    assert_eq!(t(&h, None), Some(Err(())));
    h.insert("idempotency-key", "k".repeat(256).parse().unwrap());
    assert_eq!(t(&h, None), Some(Err(())));
}
