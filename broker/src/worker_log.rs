//! A worker's stderr, relayed into the broker's log.
//!
//! Each worker writes to a pipe of its own, never to the broker's stderr:
//! a compromised worker could otherwise forge broker log lines. The
//! broker reads the pipe on a thread and logs each line prefixed with the
//! worker and the mount's source, control characters stripped (no escape
//! sequences, no embedded newlines), cut to [`MAX_LINE`] bytes, and at most
//! [`LINES_PER_SECOND`] lines a second (a burst of [`BURST`]); what is
//! dropped is counted and said.

use std::io::Read;
use std::time::{Duration, Instant};

/// Longest line logged, in bytes; the rest of the line is dropped.
pub const MAX_LINE: usize = 1024;
/// Sustained lines per second.
pub const LINES_PER_SECOND: u32 = 50;
/// Lines allowed at once before the rate applies.
pub const BURST: u32 = 200;

/// Starts the thread that relays `stderr` of worker `pid`, serving
/// `source`, until the worker closes it (exits).
pub fn relay(stderr: impl Read + Send + 'static, pid: i32, source: &str) {
    let source = crate::sanitize::display(source.as_bytes());
    let spawned = std::thread::Builder::new()
        .name(format!("log-{pid}"))
        .spawn(move || {
            let mut limiter = Limiter::new(Instant::now());
            read_lines(stderr, |line| {
                let now = Instant::now();
                if let Some(dropped) = limiter.take_dropped(now) {
                    tracing::warn!(
                        "worker {pid} ({source}): {dropped} log lines dropped (rate limit)"
                    );
                }
                if limiter.allow(now) {
                    let text = clean(line);
                    tracing::info!("worker {pid} ({source}): {text}");
                }
            });
            if let Some(dropped) = limiter.take_dropped(Instant::now() + Duration::from_secs(2)) {
                tracing::warn!("worker {pid} ({source}): {dropped} log lines dropped (rate limit)");
            }
        });
    if let Err(e) = spawned {
        tracing::error!(pid, error = %e, "cannot start the worker's log relay; its log is lost");
    }
}

/// Calls `each` with every line of `input` (without its newline), a line
/// longer than [`MAX_LINE`] cut there and the rest of it skipped.
fn read_lines(mut input: impl Read, mut each: impl FnMut(&[u8])) {
    let mut line = Vec::with_capacity(MAX_LINE);
    let mut skipping = false;
    let mut buf = [0u8; 4096];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        for &b in buf.get(..n).unwrap_or(&[]) {
            if b == b'\n' {
                if !skipping {
                    each(&line);
                }
                line.clear();
                skipping = false;
            } else if !skipping {
                line.push(b);
                if line.len() >= MAX_LINE {
                    each(&line);
                    line.clear();
                    skipping = true;
                }
            }
        }
    }
    if !line.is_empty() && !skipping {
        each(&line);
    }
}

/// Lossy UTF-8 with every control character removed.
fn clean(line: &[u8]) -> String {
    String::from_utf8_lossy(line)
        .chars()
        .filter(|c| !c.is_control())
        .collect()
}

/// A token bucket: [`BURST`] tokens, refilled at [`LINES_PER_SECOND`].
struct Limiter {
    tokens: f64,
    last: Instant,
    dropped: u64,
    /// When the drop count was last reported.
    reported: Instant,
}

impl Limiter {
    fn new(now: Instant) -> Self {
        Self {
            tokens: f64::from(BURST),
            last: now,
            dropped: 0,
            reported: now,
        }
    }

    fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * f64::from(LINES_PER_SECOND)).min(f64::from(BURST));
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.dropped += 1;
            false
        }
    }

    /// The lines dropped since the last report, at most once a second.
    fn take_dropped(&mut self, now: Instant) -> Option<u64> {
        if self.dropped == 0
            || now.saturating_duration_since(self.reported) < Duration::from_secs(1)
        {
            return None;
        }
        self.reported = now;
        Some(std::mem::take(&mut self.dropped))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        read_lines(input, |l| out.push(l.to_vec()));
        out
    }

    #[test]
    fn lines_are_split_cut_and_cleaned() {
        assert_eq!(
            lines(b"a\nb\n\nc"),
            vec![b"a".to_vec(), b"b".to_vec(), vec![], b"c".to_vec()]
        );
        let mut long = vec![b'x'; 3 * MAX_LINE];
        long.extend_from_slice(b"\nnext\n");
        let got = lines(&long);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_LINE);
        assert_eq!(got[1], b"next");
        assert_eq!(clean(b"\x1b[31mINFO\r forged\x07"), "[31mINFO forged");
    }

    #[test]
    fn rate_is_limited_and_drops_are_counted() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let allowed = (0..1000).filter(|_| l.allow(t0)).count();
        assert_eq!(allowed, BURST as usize);
        assert_eq!(l.take_dropped(t0), None, "reported at most once a second");
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(l.take_dropped(t1), Some(1000 - u64::from(BURST)));
        let allowed = (0..1000).filter(|_| l.allow(t1)).count();
        assert_eq!(allowed, LINES_PER_SECOND as usize);
    }
}
