//! The device agent in-process (`portcullis::agent::Agent`), from TOML text, plus the pin of a
//! test certificate computed independently of the agent's own code.

use std::net::SocketAddr;

use portcullis::agent::{Agent, AgentConfig, StatusSnapshot};
use tokio::net::TcpStream;

use super::certs::Ca;
use super::ws::{self, toml_path};
use super::TestGateway;

/// The name on the test gateways' certificates.
pub const GW: &str = "gw.example.test";

pub struct TestAgent {
    agent: Option<Agent>,
    /// The local address of each `[[tunnel]]`, in order.
    pub addrs: Vec<SocketAddr>,
}

impl TestAgent {
    pub async fn start(toml: &str) -> TestAgent {
        let config = parse(toml);
        let agent = Agent::start(config).await.expect("agent starts");
        let addrs = agent.local_addrs().to_vec();
        TestAgent {
            agent: Some(agent),
            addrs,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    pub fn status(&self) -> StatusSnapshot {
        self.agent.as_ref().expect("agent running").status()
    }

    pub async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addr())
            .await
            .expect("agent accepts")
    }

    pub async fn shutdown(&mut self) {
        if let Some(a) = self.agent.take() {
            a.shutdown().await;
        }
    }
}

pub fn parse(toml: &str) -> AgentConfig {
    AgentConfig::parse(toml, None).unwrap_or_else(|e| panic!("agent config: {e}\n{toml}"))
}

/// One tunnel from an ephemeral local port to `url`, with `tunnel_lines` added to the
/// `[[tunnel]]` table and `sections` after it. Unless `sections` has its own `[proxy]`, the
/// environment's proxy variables are ignored, so a CI machine's HTTPS_PROXY cannot interfere.
pub fn config(url: &str, tunnel_lines: &str, sections: &str) -> String {
    let proxy = if sections.contains("[proxy]") {
        ""
    } else {
        "[proxy]\nfrom_env = false\n"
    };
    format!(
        "status_interval_secs = 0\n[[tunnel]]\nlisten = \"127.0.0.1:0\"\nurl = \"{url}\"\n{tunnel_lines}\n{proxy}{sections}\n"
    )
}

/// `sha256//<base64>` of the SPKI in a PEM certificate, by hand: DER-walk to the
/// SubjectPublicKeyInfo, SHA-256 with ring, base64 with the base64 crate. Independent of the
/// agent's webpki-based extraction, so a test can catch a wrong one.
pub fn pin_of_pem(pem: &str) -> String {
    use base64::Engine as _;
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).expect("PEM");
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version, serial, sigAlg,
    // issuer, validity, subject, subjectPublicKeyInfo, ... }, ... }
    let (_, cert_body) = der_element(&der);
    let (_, tbs_body) = der_element(cert_body);
    let mut rest = tbs_body;
    let mut fields = Vec::new();
    while !rest.is_empty() {
        let (whole, _) = der_element(rest);
        fields.push(whole);
        rest = &rest[whole.len()..];
    }
    // With the explicit [0] version (tag 0xa0), the SPKI is the 7th field, else the 6th.
    let spki = if fields[0][0] == 0xa0 {
        fields[6]
    } else {
        fields[5]
    };
    let digest = ring::digest::digest(&ring::digest::SHA256, spki);
    format!(
        "sha256//{}",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// One DER TLV at the start of `b`: (the whole element, its contents).
fn der_element(b: &[u8]) -> (&[u8], &[u8]) {
    let (len, header) = match b[1] {
        n if n < 0x80 => (n as usize, 2),
        n => {
            let count = (n & 0x7f) as usize;
            let len = b[2..2 + count]
                .iter()
                .fold(0usize, |acc, x| (acc << 8) | *x as usize);
            (len, 2 + count)
        }
    };
    (&b[..header + len], &b[header..header + len])
}

/// A gateway with its own TLS listener (certificate for [`GW`] from a fresh CA), and the
/// `[tls]` lines an agent needs to trust it while dialing it by IP.
pub struct TlsGateway {
    pub gw: TestGateway,
    pub trust: String,
    pub ca: Ca,
    pub leaf_pem: String,
    _dir: tempfile::TempDir,
}

pub async fn tls_gateway(routes: &[(&str, SocketAddr)]) -> TlsGateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::new();
    let leaf = ca.leaf(dir.path(), "gw", &[GW]);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca.pem).expect("write CA");
    let listener = format!(
        "tls = {{ certificates = [{{ cert = {}, key = {} }}] }}",
        toml_path(&leaf.cert),
        toml_path(&leaf.key)
    );
    let gw = TestGateway::start(&ws::config(&listener, routes)).await;
    TlsGateway {
        gw,
        trust: format!("[tls]\nca_file = {}\n", toml_path(&ca_file)),
        ca,
        leaf_pem: leaf.pem,
        _dir: dir,
    }
}

impl TlsGateway {
    /// `wss://127.0.0.1:<port>/tunnel/{route}`.
    pub fn url(&self, route: &str) -> String {
        format!("wss://127.0.0.1:{}/tunnel/{route}", self.gw.addr().port())
    }

    /// An agent config for `route` with SNI [`GW`], trusting the CA, plus `sections`.
    pub fn config(&self, route: &str, sections: &str) -> String {
        config(
            &self.url(route),
            &format!("sni = \"{GW}\""),
            &format!("{}{sections}", self.trust),
        )
    }
}
