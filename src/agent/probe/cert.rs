//! The issuer and subject of the certificate the device sees, read from its DER with a small,
//! bounded walker: enough to say "issued by Cloudflare" without an X.509 library on devices.

/// `(issuer, subject)` as "CN=…, O=…", or `None` when the DER is not what we expect.
pub fn names(der: &[u8]) -> Option<(String, String)> {
    let (_, cert, _) = element(der)?; // Certificate SEQUENCE
    let (_, tbs, _) = element(cert)?; // TBSCertificate SEQUENCE
    let mut rest = tbs;
    let (tag, _, after) = element(rest)?;
    if tag == 0xA0 {
        rest = after; // [0] version
    }
    let (_, _, rest) = element(rest)?; // serialNumber
    let (_, _, rest) = element(rest)?; // signature AlgorithmIdentifier
    let (_, issuer, rest) = element(rest)?;
    let (_, _, rest) = element(rest)?; // validity
    let (_, subject, _) = element(rest)?;
    Some((describe(issuer), describe(subject)))
}

/// CN and O of a Name (SEQUENCE OF SET OF SEQUENCE { OID, value }).
fn describe(mut name: &[u8]) -> String {
    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0A];
    let (mut cn, mut o) = (None, None);
    while let Some((_, set, rest)) = element(name) {
        name = rest;
        let mut attrs = set;
        while let Some((_, attr, rest)) = element(attrs) {
            attrs = rest;
            let Some((0x06, oid, value)) = element(attr) else {
                continue;
            };
            let Some((_, text, _)) = element(value) else {
                continue;
            };
            let text = String::from_utf8_lossy(text)
                .chars()
                .take(80)
                .collect::<String>();
            if oid == CN {
                cn = Some(text);
            } else if oid == O {
                o = Some(text);
            }
        }
    }
    match (cn, o) {
        (Some(cn), Some(o)) => format!("CN={cn}, O={o}"),
        (Some(cn), None) => format!("CN={cn}"),
        (None, Some(o)) => format!("O={o}"),
        (None, None) => "(no CN or O)".into(),
    }
}

/// One DER element: `(tag, content, rest)`. Lengths beyond the input are refused.
fn element(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7F) as usize;
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let len = b[..n]
            .iter()
            .fold(0usize, |acc, &x| (acc << 8) | x as usize);
        b = &b[n..];
        len
    };
    if b.len() < len {
        return None;
    }
    Some((tag, &b[..len], &b[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_and_subject_of_a_real_certificate() {
        use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "Edge CA");
        ca.distinguished_name
            .push(DnType::OrganizationName, "Example WAF Inc");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut leaf = CertificateParams::new(vec!["gw.example.com".to_string()]).unwrap();
        leaf.distinguished_name
            .push(DnType::CommonName, "gw.example.com");
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        let (issuer, subject) = names(cert.der()).expect("parsed");
        assert_eq!(issuer, "CN=Edge CA, O=Example WAF Inc");
        assert_eq!(subject, "CN=gw.example.com");
    }

    #[test]
    fn garbage_and_truncation_give_none_not_a_panic() {
        assert_eq!(names(&[]), None);
        assert_eq!(names(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        assert_eq!(names(&[0x30, 0x03, 0x30, 0x01]), None);
        for n in 0..64u8 {
            let junk: Vec<u8> = (0..n).map(|i| i.wrapping_mul(37)).collect();
            let _ = names(&junk);
        }
    }
}
