//! Every shipped profile is a valid config (certificate files are stand-ins).

use std::path::Path;

use portcullis::Config;

fn check(name: &str, extra_files: &[&str]) -> (Config, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    for f in extra_files {
        let p = dir.path().join(f);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, "stand-in").unwrap();
    }
    let config = Config::load(&dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
    (config, dir)
}

#[test]
fn quickstart_is_valid() {
    let (c, _dir) = check("quickstart.toml", &[]);
    assert_eq!(c.listeners.len(), 1);
    assert!(c.routes.contains_key("mqtt"));
}

#[test]
fn cloudflare_profile_trusts_only_cloudflare_ranges() {
    let (c, _dir) = check("cloudflare.toml", &["certs/origin.pem", "certs/origin.key"]);
    let l = &c.listeners[0];
    assert_eq!(
        l.client_ip_header,
        portcullis::identify::ClientIpHeader::CfConnectingIp
    );
    let file = l.trusted_proxies_file.as_ref().unwrap();
    let nets = portcullis::identify::read_cidr_file(file).unwrap();
    let set = portcullis::identify::CidrSet::new(nets.iter().copied());
    assert!(set.contains("172.64.1.1".parse().unwrap()));
    assert!(set.contains("2606:4700::1".parse().unwrap()));
    assert!(!set.contains("10.0.0.1".parse().unwrap()));
    assert!(!set.contains("172.16.0.1".parse().unwrap()));
}

#[test]
fn f5_profile_believes_x_forwarded_for_only_from_the_big_ip() {
    let (c, _dir) = check("f5-bigip.toml", &[]);
    let l = &c.listeners[0];
    assert_eq!(
        l.client_ip_header,
        portcullis::identify::ClientIpHeader::XForwardedFor
    );
    assert!(!l.trusted_proxies.is_empty());
    assert!(
        !l.accept_unmasked_frames,
        "RFC 6455 unless the admin says otherwise"
    );
}

#[test]
fn aws_alb_profile_trusts_the_alb_subnets() {
    let (c, _dir) = check("aws-alb.toml", &[]);
    assert!(!c.listeners[0].trusted_proxies.is_empty());
    assert!(c.listeners[0].tls.is_none(), "the ALB terminates TLS");
}

#[test]
fn aws_nlb_profile_requires_proxy_v2_from_the_vpc_and_terminates_tls() {
    let (c, _dir) = check("aws-nlb.toml", &["certs/gateway.pem", "certs/gateway.key"]);
    let l = &c.listeners[0];
    assert_eq!(l.proxy_protocol, portcullis::config::ProxyProtocolMode::V2);
    assert!(!l.proxy_protocol_from.is_empty());
    assert!(l.tls.is_some(), "the NLB passes TLS through");
}
