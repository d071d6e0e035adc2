//! Token checks: each algorithm, each way a token can be wrong, and the types of its claims.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde_json::json;

use super::*;
use crate::auth::issue::Signer;
use crate::config::{TokenAlg, TokenKey};

const NOW: u64 = 1_800_000_000;
const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn key_cfg(alg: TokenAlg, kid: Option<&str>, signer: &Signer) -> TokenKey {
    let toml = match alg {
        TokenAlg::HS256 => format!("alg = \"HS256\"\nsecret = \"{SECRET}\""),
        a => format!(
            "alg = \"{}\"\npublic_key_pem = \"\"\"\n{}\"\"\"",
            a.name(),
            signer.public_pem().unwrap_or_default()
        ),
    };
    let mut k: TokenKey = toml::from_str(&toml).expect("key config");
    k.kid = kid.map(str::to_owned);
    k
}

fn setup(alg: TokenAlg, kid: Option<&str>) -> (Signer, Vec<Key>) {
    let signer = match alg {
        TokenAlg::EdDSA => Signer::generate_ed25519().expect("ed25519"),
        TokenAlg::ES256 => Signer::generate_es256().expect("p256"),
        TokenAlg::HS256 => Signer::hs256(SECRET.as_bytes()),
    };
    let key = Key::load(&key_cfg(alg, kid, &signer)).expect("key loads");
    (signer, vec![key])
}

fn skew(secs: u64) -> ClaimRules {
    ClaimRules {
        skew: secs,
        ..ClaimRules::default()
    }
}

fn claims(sub: &str, exp: u64) -> serde_json::Value {
    json!({ "sub": sub, "exp": exp })
}

#[test]
fn each_algorithm_verifies_its_own_tokens() {
    for alg in [TokenAlg::EdDSA, TokenAlg::ES256, TokenAlg::HS256] {
        let (signer, keys) = setup(alg, None);
        let t = signer.sign(None, &claims("dev-1", NOW + 60)).expect("sign");
        let c = verify(&t, &keys, NOW, &skew(0)).expect("valid token");
        assert_eq!(&*c.sub, "dev-1", "{alg:?}");
        assert_eq!(c.exp, NOW + 60);
    }
}

#[test]
fn a_token_from_another_key_is_refused() {
    for alg in [TokenAlg::EdDSA, TokenAlg::ES256] {
        let (_, keys) = setup(alg, None);
        let (other, _) = setup(alg, None);
        let t = other.sign(None, &claims("dev-1", NOW + 60)).expect("sign");
        assert_eq!(
            verify(&t, &keys, NOW, &skew(0)),
            Err(TokenError::BadSignature)
        );
    }
    let (_, keys) = setup(TokenAlg::HS256, None);
    let t = Signer::hs256(b"another secret, also 32 bytes long!")
        .sign(None, &claims("dev-1", NOW + 60))
        .expect("sign");
    assert_eq!(
        verify(&t, &keys, NOW, &skew(0)),
        Err(TokenError::BadSignature)
    );
}

#[test]
fn expiry_and_not_before_with_skew() {
    let (s, keys) = setup(TokenAlg::EdDSA, None);
    let t = s.sign(None, &claims("d", NOW - 30)).expect("sign");
    assert_eq!(verify(&t, &keys, NOW, &skew(0)), Err(TokenError::Expired));
    assert!(verify(&t, &keys, NOW, &skew(31)).is_ok(), "within the skew");
    // Valid strictly before exp (+ skew): at exp itself, expired.
    assert_eq!(verify(&t, &keys, NOW, &skew(30)), Err(TokenError::Expired));
    let t = s
        .sign(
            None,
            &json!({"sub": "d", "exp": NOW + 600, "nbf": NOW + 100}),
        )
        .expect("sign");
    assert_eq!(
        verify(&t, &keys, NOW, &skew(60)),
        Err(TokenError::NotYetValid)
    );
    assert!(verify(&t, &keys, NOW, &skew(100)).is_ok());
}

#[test]
fn audience_issuer_and_an_unset_clock() {
    let (s, keys) = setup(TokenAlg::EdDSA, None);
    let rules = ClaimRules {
        skew: 0,
        audience: Some("portcullis".into()),
        issuer: Some("https://platform.example".into()),
    };
    let ok = [
        json!({"sub": "d", "exp": NOW + 60, "aud": "portcullis", "iss": "https://platform.example"}),
        json!({"sub": "d", "exp": NOW + 60, "aud": ["billing", "portcullis"], "iss": "https://platform.example"}),
    ];
    for c in ok {
        let t = s.sign(None, &c).expect("sign");
        assert!(verify(&t, &keys, NOW, &rules).is_ok(), "{c}");
    }
    let wrong = [
        json!({"sub": "d", "exp": NOW + 60, "iss": "https://platform.example"}),
        json!({"sub": "d", "exp": NOW + 60, "aud": "billing", "iss": "https://platform.example"}),
        json!({"sub": "d", "exp": NOW + 60, "aud": "portcullis"}),
        json!({"sub": "d", "exp": NOW + 60, "aud": "portcullis", "iss": "https://evil.example"}),
    ];
    for c in wrong {
        let t = s.sign(None, &c).expect("sign");
        assert_eq!(
            verify(&t, &keys, NOW, &rules),
            Err(TokenError::WrongAudience),
            "{c}"
        );
    }
    // A gateway that booted in 1970 judges no token (each would look unexpired).
    let t = s.sign(None, &claims("d", 100)).expect("sign");
    assert_eq!(verify(&t, &keys, 50, &skew(0)), Err(TokenError::ClockUnset));
}

#[test]
fn claims_of_the_wrong_type_fail_instead_of_skipping_their_check() {
    // CVE-2026-25537 in jsonwebtoken < 10.3: a string `nbf` or `exp` skipped the check.
    let (s, keys) = setup(TokenAlg::EdDSA, None);
    for bad in [
        json!({"sub": "d", "exp": "99999999999"}),
        json!({"sub": "d", "exp": NOW + 60, "nbf": "99999999999"}),
        json!({"sub": 42, "exp": NOW + 60}),
        json!({"sub": "d"}),
        json!({"exp": NOW + 60}),
        json!({"sub": "", "exp": NOW + 60}),
        json!({"sub": "a\nb", "exp": NOW + 60}),
        json!({"sub": "x".repeat(257), "exp": NOW + 60}),
        json!({"sub": "d", "exp": NOW + 60, "routes": "mqtt"}),
        json!(["not", "an", "object"]),
    ] {
        let t = s.sign(None, &bad).expect("sign");
        assert!(
            matches!(
                verify(&t, &keys, NOW, &skew(0)),
                Err(TokenError::Malformed(_))
            ),
            "{bad}"
        );
    }
}

#[test]
fn the_key_decides_the_algorithm_never_the_token() {
    let (s, keys) = setup(TokenAlg::EdDSA, None);
    let good = s.sign(None, &claims("d", NOW + 60)).expect("sign");
    let (_, payload_sig) = good.split_once('.').expect("dots");
    for alg in ["none", "HS256", "ES256", "RS256", "eddsa"] {
        let header = URL_SAFE_NO_PAD.encode(json!({"alg": alg}).to_string());
        let forged = format!("{header}.{payload_sig}");
        assert_eq!(
            verify(&forged, &keys, NOW, &skew(0)),
            Err(TokenError::UnknownKey),
            "{alg}"
        );
    }
    // An HS256 token whose secret is the EdDSA public key (the classic confusion) has no
    // HS256 key to be checked with.
    let pem = s.public_pem().unwrap_or_default();
    let forged = Signer::hs256(pem.as_bytes())
        .sign(None, &claims("d", NOW + 60))
        .expect("sign");
    assert_eq!(
        verify(&forged, &keys, NOW, &skew(0)),
        Err(TokenError::UnknownKey)
    );
}

#[test]
fn kid_picks_the_key_during_a_rotation() {
    let (old, mut keys) = setup(TokenAlg::EdDSA, Some("2026-11"));
    let (new, new_keys) = setup(TokenAlg::EdDSA, Some("2026-12"));
    keys.extend(new_keys);
    for (s, kid) in [(&old, "2026-11"), (&new, "2026-12")] {
        let t = s.sign(Some(kid), &claims("d", NOW + 60)).expect("sign");
        assert!(verify(&t, &keys, NOW, &skew(0)).is_ok(), "{kid}");
        // Without a kid, every key of the alg is tried.
        let t = s.sign(None, &claims("d", NOW + 60)).expect("sign");
        assert!(
            verify(&t, &keys, NOW, &skew(0)).is_ok(),
            "{kid} without kid"
        );
    }
    let t = old
        .sign(Some("2026-12"), &claims("d", NOW + 60))
        .expect("sign");
    assert_eq!(
        verify(&t, &keys, NOW, &skew(0)),
        Err(TokenError::BadSignature)
    );
    let t = old
        .sign(Some("2025"), &claims("d", NOW + 60))
        .expect("sign");
    assert_eq!(
        verify(&t, &keys, NOW, &skew(0)),
        Err(TokenError::UnknownKey)
    );
}

#[test]
fn malformed_tokens_never_panic() {
    let (s, keys) = setup(TokenAlg::HS256, None);
    let good = s.sign(None, &claims("d", NOW + 60)).expect("sign");
    // A validly signed token with `crit`, of any value: refused.
    let crit = |value: serde_json::Value| {
        let h = URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "crit": value}).to_string());
        let p = URL_SAFE_NO_PAD.encode(claims("d", NOW + 60).to_string());
        let input = format!("{h}.{p}");
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
        let sig = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, input.as_bytes()));
        format!("{input}.{sig}")
    };
    for value in [json!(["exp"]), json!(null)] {
        assert_eq!(
            verify(&crit(value), &keys, NOW, &skew(0)),
            Err(TokenError::Malformed(
                "critical header extensions are not supported"
            ))
        );
    }
    let crit = crit(json!(["exp"]));
    let long = "a".repeat(MAX_TOKEN_LEN + 1);
    let cases = [
        "",
        ".",
        "..",
        "...",
        "a.b",
        "a.b.c.d",
        "!!!.!!!.!!!",
        &good[..good.len() - 3],
        &format!("{good}="),
        &crit,
        &long,
        "e30.e30.",
        "\u{fffd}.\u{fffd}.\u{fffd}",
    ];
    for t in cases {
        assert!(verify(t, &keys, NOW, &skew(0)).is_err(), "{t:?}");
    }
    // Every truncation and every single-byte change of a good token is refused.
    for cut in 0..good.len() {
        assert!(verify(&good[..cut], &keys, NOW, &skew(0)).is_err());
    }
    let bytes = good.as_bytes();
    for i in 0..bytes.len() {
        let mut b = bytes.to_vec();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        if let Ok(t) = std::str::from_utf8(&b) {
            if t != good {
                assert!(verify(t, &keys, NOW, &skew(0)).is_err(), "byte {i} changed");
            }
        }
    }
}

#[test]
fn public_keys_of_another_kind_are_refused_by_name() {
    let ed = Signer::generate_ed25519().expect("ed");
    let mut k = key_cfg(TokenAlg::EdDSA, None, &ed);
    k.alg = TokenAlg::ES256;
    let err = Key::load(&k).err().unwrap_or_default();
    assert!(err.contains("not an ES256 public key"), "{err}");
    let mut k = key_cfg(TokenAlg::EdDSA, None, &ed);
    k.public_key_pem = Some("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n".into());
    assert!(Key::load(&k).is_err());
}
