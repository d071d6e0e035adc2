//! The checks of what the path carries once it is open: frame types and pings, latency, the
//! largest message, the largest HTTP body, and how long a silent WebSocket lives.

use std::time::Duration;

use super::session::{Session, Silence};
use super::{advice, bytes, Probe};
use crate::agent::dial::Trace;
use crate::agent::hop;
use crate::http1;
use crate::probe::{Hello, MARKER_HEADER};

/// Push batches are rarely above this: a path narrower than it breaks uploads; a wider one
/// that stops short of the gateway's own cap is worth a warning only.
const PUSH_BATCH: usize = 1 << 20;

impl Probe<'_> {
    /// Text frames both ways, and a ping answered with its pong.
    pub(super) async fn frames(&mut self, ws: &mut Session) {
        let text = ws.echo_text("portcullis probe", self.timeout).await;
        let ping = ws.ping(self.timeout).await;
        match (text, ping) {
            (Ok(()), Ok(())) => self.report.ok(
                "frames",
                "text frames pass both ways; a ping is answered with its pong",
            ),
            (Err(e), _) => {
                self.report
                    .fail("frames", format!("text frame: {e}"), advice::frame(&self.hops))
            }
            (_, Err(e)) => self.report.fail(
                "frames",
                format!("ping/pong: {e}"),
                "a hop on the way swallows WebSocket control frames: the gateway's keep-alive pings cannot work through it",
            ),
        }
    }

    /// Round-trip latency, then binary echoes of growing size: the largest message that passes.
    pub(super) async fn messages(&mut self, mut ws: Session) {
        match ws.latency(10, self.timeout).await {
            Ok((p50, max)) => self.report.ok(
                "latency",
                format!("1-byte echo round trip: median {p50} µs, max {max} µs over 10"),
            ),
            Err(e) => {
                self.report.fail("latency", e, advice::frame(&self.hops));
                return;
            }
        }
        let cap = self.args.max_message.min(ws.hello.max_message_size);
        let sizes = [1usize, 1 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20];
        let mut largest = 0;
        for size in sizes.into_iter().filter(|s| *s <= cap) {
            if let Err(e) = ws.echo_binary(size, self.timeout).await {
                self.report.fail(
                    "messages",
                    format!(
                        "a {} binary message did not come back ({e}); the largest that did: {}",
                        bytes(size),
                        bytes(largest)
                    ),
                    advice::frame(&self.hops),
                );
                return;
            }
            largest = size;
        }
        ws.close().await;
        self.report.ok(
            "messages",
            format!(
                "binary echo up to {} passes (the largest tried)",
                bytes(largest)
            ),
        );
    }

    /// `POST /probe` with bodies of growing size: what HTTP push can send through this path.
    pub(super) async fn bodies(&mut self, view: &Hello) {
        let cap = self.args.max_body.min(view.max_body_size);
        let sizes = [1usize << 10, 64 << 10, 1 << 20, 8 << 20, 16 << 20];
        let mut largest = 0;
        for size in sizes.into_iter().filter(|s| *s <= cap) {
            let mut trace = Trace::default();
            let mut stream = match self.connector.open(&self.target, &mut trace).await {
                Ok(s) => s,
                Err(e) => {
                    let why = format!("cannot reconnect: {e}");
                    return self.report.warn("bodies", why, "run the probe again");
                }
            };
            let Some(headers) = self.device_headers() else {
                return;
            };
            // A slow link needs time for a large body: 2 s per MiB on top of the step timeout.
            let timeout = self.timeout + Duration::from_secs((size >> 20) as u64 * 2);
            let answer =
                http1::post(&mut stream, crate::probe::PATH, &headers, size, timeout).await;
            let a = match answer {
                Ok(a) => a,
                Err(e) => {
                    // No answer is not a limit: a slow or lossy link looks the same.
                    let why = format!(
                        "a {} body got no answer ({e}); the largest that passed: {}",
                        bytes(size),
                        bytes(largest)
                    );
                    return self.report.warn(
                        "bodies",
                        why,
                        "inconclusive: a slow link, or a hop that drops large bodies silently; try again, or from a faster network",
                    );
                }
            };
            let ours = a.headers.contains_key(MARKER_HEADER);
            if a.status == 200 && ours {
                largest = size;
                continue;
            }
            self.note_hop(&a.headers);
            let by = hop::answered_by(&a.headers);
            let detail = format!(
                "a {} body was answered {} by {by}; the largest that passed: {}",
                bytes(size),
                a.status,
                bytes(largest)
            );
            let fix = match (ours, a.status) {
                // The gateway's own answers: its cap, its rate, or a stalled body.
                (true, 413) => "the gateway's own [probe] max_body_size".into(),
                (true, _) => format!("the gateway answered {}: run the probe again", a.status),
                (false, _) => advice::body(&self.hops),
            };
            if !ours && size <= PUSH_BATCH {
                self.report.fail("bodies", detail, fix);
            } else {
                self.report.warn("bodies", detail, fix);
            }
            return;
        }
        self.report.ok(
            "bodies",
            format!(
                "HTTP bodies up to {} pass (the largest tried)",
                bytes(largest)
            ),
        );
    }

    /// Silent WebSockets held for growing times, all at once: how long the path lets one live,
    /// against the gateway's ping interval.
    pub(super) async fn idle(&mut self, view: &Hello) {
        if self.args.quick {
            return self.report.skip("idle", "--quick");
        }
        let max = self
            .args
            .idle_max_secs
            .min(view.max_session_secs.saturating_sub(5))
            .max(1);
        let mut steps: Vec<u64> = [2u64, 4, 8, 15, 30, 45, 60, 90, 120, 180, 240]
            .into_iter()
            .filter(|s| *s < max)
            .collect();
        steps.push(max);
        let checks = steps.iter().map(|secs| {
            let silence = Duration::from_secs(*secs);
            Session::survives_silence(&self.connector, &self.target, silence, self.timeout)
        });
        let results = futures_util::future::join_all(checks).await;
        let ping = view.ping_interval_secs;
        let verdict = IdleVerdict::judge(steps.iter().copied().zip(results));
        match verdict {
            IdleVerdict::Inconclusive(why) => self.report.warn(
                "idle",
                format!("inconclusive: {why}"),
                "run the probe again when fewer probes run at once ([probe] max_sessions on the gateway)",
            ),
            IdleVerdict::Lived(max) if max < ping => self.report.warn(
                "idle",
                format!("a silent WebSocket survived {max} s, the longest tried, which is less than the gateway's {ping} s ping interval"),
                format!("run again with --idle-max-secs above {ping} to know whether quiet devices stay up"),
            ),
            IdleVerdict::Lived(max) => self.report.ok(
                "idle",
                format!("a silent WebSocket survived {max} s (the longest tried); the gateway pings every {ping} s"),
            ),
            IdleVerdict::Cut { lived, died, how } if lived >= ping => self.report.ok(
                "idle",
                format!("the path cuts a silent WebSocket after {lived}–{died} s ({how}); the gateway pings every {ping} s, which keeps devices up"),
            ),
            IdleVerdict::Cut { lived, died, how } => self.report.fail(
                "idle",
                format!("the path cuts a silent WebSocket after {lived}–{died} s ({how}), but the gateway pings only every {ping} s: quiet devices are cut"),
                format!(
                    "{}; or lower the gateway's [websocket] ping_interval_secs below {}",
                    advice::idle(&self.hops),
                    lived.max(1)
                ),
            ),
        }
    }
}

/// What the silent sessions say about the path's idle cut.
#[derive(Debug, PartialEq, Eq)]
enum IdleVerdict {
    /// Every session lived; the longest silence tried.
    Lived(u64),
    /// The shortest silence that was cut, and the longest shorter one that lived (0: none).
    Cut { lived: u64, died: u64, how: String },
    /// Sessions that never opened leave the answer open.
    Inconclusive(String),
}

impl IdleVerdict {
    fn judge(results: impl IntoIterator<Item = (u64, Silence)>) -> IdleVerdict {
        let mut lived = Vec::new();
        let mut cut: Option<(u64, String)> = None;
        for (secs, r) in results {
            match r {
                Silence::Survived => lived.push(secs),
                Silence::NotOpened(e) => {
                    return IdleVerdict::Inconclusive(format!(
                        "a {secs} s session did not open ({e})"
                    ))
                }
                Silence::Cut(how) => {
                    if cut.as_ref().is_none_or(|(d, _)| secs < *d) {
                        cut = Some((secs, how));
                    }
                }
            }
        }
        match cut {
            None => IdleVerdict::Lived(lived.into_iter().max().unwrap_or(0)),
            // Only silences shorter than the first cut bound it from below: a longer one that
            // lived means the cut was not the path's rule (a blip), and says nothing here.
            Some((died, how)) => IdleVerdict::Cut {
                lived: lived.into_iter().filter(|s| *s < died).max().unwrap_or(0),
                died,
                how,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cut() -> Silence {
        Silence::Cut("TCP closed".into())
    }

    #[test]
    fn the_cut_lies_between_the_longest_shorter_survivor_and_the_first_death() {
        let v = IdleVerdict::judge([
            (2, Silence::Survived),
            (4, Silence::Survived),
            (8, cut()),
            (12, cut()),
        ]);
        assert_eq!(
            v,
            IdleVerdict::Cut {
                lived: 4,
                died: 8,
                how: "TCP closed".into()
            }
        );
        // A longer silence that lived does not raise the lower bound past the first death.
        let v = IdleVerdict::judge([(2, Silence::Survived), (8, cut()), (120, Silence::Survived)]);
        assert_eq!(
            v,
            IdleVerdict::Cut {
                lived: 2,
                died: 8,
                how: "TCP closed".into()
            }
        );
        let v = IdleVerdict::judge([(2, cut()), (4, cut())]);
        assert_eq!(
            v,
            IdleVerdict::Cut {
                lived: 0,
                died: 2,
                how: "TCP closed".into()
            }
        );
        assert_eq!(
            IdleVerdict::judge([(2, Silence::Survived), (8, Silence::Survived)]),
            IdleVerdict::Lived(8)
        );
    }

    #[test]
    fn a_session_that_never_opened_is_not_a_cut() {
        let v = IdleVerdict::judge([
            (2, Silence::Survived),
            (4, Silence::NotOpened("HTTP 503".into())),
        ]);
        assert!(matches!(v, IdleVerdict::Inconclusive(w) if w.contains("503")));
    }
}
