//! Broker → device: find packet boundaries and the few packets we act on, without buffering
//! the rest. A PUBLISH of any size streams through in the pieces it arrives in; only small
//! control packets (acks, PINGRESP, CONNACK) are held until complete, so memory stays bounded
//! whatever the broker sends.

/// Largest packet we capture whole: acks and CONNACK with properties are far below this.
const MAX_CAPTURE: usize = 1024;

#[derive(Debug, PartialEq, Eq)]
pub enum Piece<'a> {
    /// Bytes to pass to the device unchanged.
    Pass(&'a [u8]),
    /// A whole control packet to look at (and usually pass on).
    Control(&'a [u8]),
}

#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

#[derive(Debug, Default)]
pub struct Scanner {
    header: [u8; 5],
    header_len: usize,
    /// Body bytes left in the current packet.
    remaining: usize,
    /// `Some` while capturing a control packet.
    capture: Option<Vec<u8>>,
}

fn interesting(first_byte: u8) -> bool {
    // CONNACK 2, PUBACK 4, PUBREC 5, PUBCOMP 7, SUBACK 9, PINGRESP 13, DISCONNECT 14.
    matches!(first_byte >> 4, 2 | 4 | 5 | 7 | 9 | 13 | 14)
}

impl Scanner {
    /// True between packets: the only place a locally made packet may be inserted.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.remaining == 0 && self.capture.is_none()
    }

    /// Split `data` into pieces, in order, calling `out` for each.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        mut out: impl FnMut(Piece<'_>),
    ) -> Result<(), Malformed> {
        while !data.is_empty() {
            if self.remaining > 0 {
                let n = self.remaining.min(data.len());
                let (body, rest) = data.split_at(n);
                self.remaining -= n;
                match &mut self.capture {
                    Some(buf) => {
                        buf.extend_from_slice(body);
                        if self.remaining == 0 {
                            if let Some(buf) = self.capture.take() {
                                out(Piece::Control(&buf));
                            }
                        }
                    }
                    None => out(Piece::Pass(body)),
                }
                data = rest;
                continue;
            }
            // Fixed header: type byte + 1..4 varint bytes.
            let (&b, rest) = data.split_first().ok_or(Malformed)?;
            data = rest;
            if self.header_len >= self.header.len() {
                return Err(Malformed);
            }
            self.header[self.header_len] = b;
            self.header_len += 1;
            if self.header_len == 1 {
                continue;
            }
            if b & 0x80 != 0 {
                if self.header_len == 5 {
                    return Err(Malformed);
                }
                continue;
            }
            let mut len = 0usize;
            for (i, byte) in self.header[1..self.header_len].iter().enumerate() {
                len |= ((byte & 0x7f) as usize) << (7 * i);
            }
            let header = &self.header[..self.header_len];
            self.header_len = 0;
            self.remaining = len;
            if interesting(header[0]) && len <= MAX_CAPTURE {
                let mut buf = Vec::with_capacity(header.len() + len);
                buf.extend_from_slice(header);
                if len == 0 {
                    out(Piece::Control(&buf));
                } else {
                    self.capture = Some(buf);
                }
            } else {
                out(Piece::Pass(header));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(s: &mut Scanner, data: &[u8]) -> Vec<(bool, Vec<u8>)> {
        let mut v = Vec::new();
        s.feed(data, |p| match p {
            Piece::Pass(b) => v.push((false, b.to_vec())),
            Piece::Control(b) => v.push((true, b.to_vec())),
        })
        .unwrap();
        v
    }

    #[test]
    fn publishes_pass_and_acks_are_captured() {
        let mut s = Scanner::default();
        let mut stream = vec![0x30, 3, 0, 1, b't']; // PUBLISH qos0, topic "t"
        stream.extend([0x40, 2, 0, 7]); // PUBACK 7
        stream.extend([0xd0, 0]); // PINGRESP
        let pieces = run(&mut s, &stream);
        let passed: Vec<u8> = pieces
            .iter()
            .filter(|p| !p.0)
            .flat_map(|p| p.1.clone())
            .collect();
        assert_eq!(passed, vec![0x30, 3, 0, 1, b't']);
        let controls: Vec<Vec<u8>> = pieces.iter().filter(|p| p.0).map(|p| p.1.clone()).collect();
        assert_eq!(controls, vec![vec![0x40, 2, 0, 7], vec![0xd0, 0]]);
        assert!(s.at_boundary());
    }

    #[test]
    fn byte_by_byte_gives_the_same_packets() {
        let mut stream = vec![0x30, 130, 1]; // PUBLISH, remaining 130
        stream.extend(std::iter::repeat_n(7u8, 130));
        stream.extend([0x50, 2, 1, 2]); // PUBREC 258
        let mut s = Scanner::default();
        let mut passed = Vec::new();
        let mut controls = Vec::new();
        for (i, b) in stream.iter().enumerate() {
            for (control, bytes) in run(&mut s, std::slice::from_ref(b)) {
                if control {
                    controls.push(bytes);
                } else {
                    passed.extend(bytes);
                }
            }
            let boundary = i == 132 || i == stream.len() - 1;
            assert_eq!(s.at_boundary(), boundary, "after byte {i}");
        }
        assert_eq!(passed.len(), 133);
        assert_eq!(controls, vec![vec![0x50, 2, 1, 2]]);
    }

    /// Fuzz target: whatever the broker sends, in whatever pieces, the scanner passes on
    /// exactly those bytes in order (captured control packets included) until it calls
    /// something malformed, and never holds more than one small packet.
    #[test]
    fn fuzz_scanner_passes_every_byte_in_order() {
        bolero::check!()
            .with_type::<(Vec<u8>, Vec<u8>)>()
            .for_each(|(data, cuts)| {
                let mut s = Scanner::default();
                let mut out = Vec::new();
                let mut rest = &data[..];
                let mut cuts = cuts.iter().map(|c| usize::from(*c) + 1);
                while !rest.is_empty() {
                    let n = cuts.next().unwrap_or(rest.len()).min(rest.len());
                    let fed = s.feed(&rest[..n], |p| match p {
                        Piece::Pass(b) | Piece::Control(b) => out.extend_from_slice(b),
                    });
                    rest = &rest[n..];
                    if fed.is_err() {
                        return;
                    }
                    assert!(s
                        .capture
                        .as_ref()
                        .is_none_or(|c| c.len() <= MAX_CAPTURE + 5));
                }
                // Everything fed is out, except a packet still being captured or a header.
                let held = s.capture.as_ref().map_or(0, Vec::len) + s.header_len;
                assert_eq!(&data[..out.len()], &out[..]);
                assert_eq!(out.len() + held, data.len());
            });
    }

    #[test]
    fn a_five_byte_length_is_malformed() {
        let mut s = Scanner::default();
        assert_eq!(
            s.feed(&[0x30, 0xff, 0xff, 0xff, 0xff, 0x7f], |_| {}),
            Err(Malformed)
        );
    }
}
