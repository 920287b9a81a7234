//! How fast one server is, measured as the mount runs: its command round-trip time and the
//! throughput of one connection, each an exponentially weighted moving average (EWMA) so recent
//! samples count more.
//!
//! Owns: the two averages of one server and when to log them. The pool feeds it: a round trip
//! per one-line command timed on a control connection (`TYPE I` at login, `NOOP` checks), and a
//! throughput sample per stretch of a RETR ([`THROUGHPUT_SAMPLE_BYTES`] at a time, and the rest
//! when the transfer ends).
//!
//! Invariants:
//! - a throughput sample is bytes over the time spent *waiting inside reads* of the data
//!   connection, so a reader that pauses (the page cache is full, read-ahead is ahead) does not
//!   make the server look slow; a sample that is too small to say anything (under
//!   [`MIN_SAMPLE_BYTES`] or [`MIN_SAMPLE_TIME`]) is dropped;
//! - a figure is logged at info level when it moved by a factor of [`LOG_FACTOR`] or more since
//!   it was last logged (and the first time), never per sample.

use std::sync::Mutex;
use std::time::Duration;

pub use crate::backend::Speed;

/// Weight of a new sample: 0.3 means a sample's weight halves after two newer ones, so a
/// server that slowed down shows it after two or three transfers.
const ALPHA: f64 = 0.3;
/// A long transfer reports every 4 MiB, so a 1 GiB copy updates the figure as it goes
/// (about every 0.16 s at 25 MB/s).
pub const THROUGHPUT_SAMPLE_BYTES: u64 = 4 << 20;
/// Samples smaller than 64 KiB or shorter than 2 ms mostly measure latency and buffers.
pub const MIN_SAMPLE_BYTES: u64 = 64 << 10;
pub const MIN_SAMPLE_TIME: Duration = Duration::from_millis(2);
/// "Changed by a lot": by half or double.
const LOG_FACTOR: f64 = 2.0;

#[derive(Default)]
struct State {
    rtt: Option<f64>,
    rate: Option<f64>,
    logged_rtt: Option<f64>,
    logged_rate: Option<f64>,
}

/// The measured speed of one server.
#[derive(Default)]
pub struct Meter {
    state: Mutex<State>,
}

fn ewma(old: Option<f64>, sample: f64) -> f64 {
    match old {
        Some(v) => v + ALPHA * (sample - v),
        None => sample,
    }
}

/// Moved by [`LOG_FACTOR`] or more since `logged` (or never logged).
fn moved(logged: Option<f64>, now: f64) -> bool {
    match logged {
        None => true,
        Some(l) if l <= 0.0 || now <= 0.0 => l != now,
        Some(l) => now / l >= LOG_FACTOR || l / now >= LOG_FACTOR,
    }
}

impl Meter {
    /// The current figures.
    pub fn get(&self) -> Speed {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Speed {
            rtt: st.rtt.map(Duration::from_secs_f64),
            bytes_per_sec: st.rate,
        }
    }

    /// One command's round trip.
    pub fn rtt_sample(&self, label: &str, d: Duration) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let v = ewma(st.rtt, d.as_secs_f64());
        st.rtt = Some(v);
        if moved(st.logged_rtt, v) {
            st.logged_rtt = Some(v);
            log::info!("{label}: round trip now {:.1} ms", v * 1000.0);
        }
    }

    /// `bytes` of a transfer that took `waited` of waiting for the network. Small samples are
    /// ignored (see the module invariants).
    pub fn throughput_sample(&self, label: &str, bytes: u64, waited: Duration) {
        if bytes < MIN_SAMPLE_BYTES || waited < MIN_SAMPLE_TIME {
            return;
        }
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let v = ewma(st.rate, bytes as f64 / waited.as_secs_f64());
        st.rate = Some(v);
        if moved(st.logged_rate, v) {
            st.logged_rate = Some(v);
            log::info!(
                "{label}: throughput per connection now {:.2} MB/s",
                v / 1_000_000.0
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averages_weight_recent_samples_more() {
        let m = Meter::default();
        assert_eq!(m.get(), Speed::default());
        m.throughput_sample("s", 1 << 20, Duration::from_millis(100));
        let first = m.get().bytes_per_sec.unwrap();
        assert!((first - 10_485_760.0).abs() < 1.0, "{first}");
        // Twice as fast now: the average moves towards it, by ALPHA of the gap.
        m.throughput_sample("s", 1 << 20, Duration::from_millis(50));
        let second = m.get().bytes_per_sec.unwrap();
        assert!((second - first * 1.3).abs() < 1.0, "{second}");
        // Repeated fast samples converge on the new speed.
        for _ in 0..30 {
            m.throughput_sample("s", 1 << 20, Duration::from_millis(50));
        }
        let later = m.get().bytes_per_sec.unwrap();
        assert!((later - 2.0 * first).abs() < first * 0.01, "{later}");
    }

    #[test]
    fn tiny_samples_are_ignored() {
        let m = Meter::default();
        m.throughput_sample("s", 1000, Duration::from_millis(100));
        m.throughput_sample("s", 1 << 20, Duration::from_micros(10));
        assert_eq!(m.get().bytes_per_sec, None);
    }

    #[test]
    fn round_trips_average_too() {
        let m = Meter::default();
        m.rtt_sample("s", Duration::from_millis(10));
        m.rtt_sample("s", Duration::from_millis(20));
        let rtt = m.get().rtt.unwrap();
        assert!(
            (rtt.as_secs_f64() - 0.013).abs() < 1e-9,
            "{rtt:?} should be 10 + 0.3 * 10 ms"
        );
    }

    #[test]
    fn only_big_moves_are_logged() {
        assert!(moved(None, 1.0));
        assert!(!moved(Some(1.0), 1.9));
        assert!(moved(Some(1.0), 2.0));
        assert!(moved(Some(1.0), 0.5));
        assert!(!moved(Some(1.0), 0.6));
    }
}
