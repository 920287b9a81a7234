//! Which copy of a file to read first: the measured choice of server.
//!
//! Owns: the order in which the identical copies of a file are tried, from the figures the
//! backend measures ([`Backend::speed`]: round trip and per-connection throughput).
//!
//! Rules:
//! - servers known to be down go last (they fail at once anyway, and may be back);
//! - big files: the highest throughput first; small files (up to [`SMALL_BY_RTT`]): the lowest
//!   round trip first, since a small file costs round trips, not bandwidth (and the fastest to
//!   answer are spread over by `grep -r` across mirrors as their round trips vary);
//! - a figure near the best one is as good as the best: the first such server in serverlist
//!   order goes first (throughput at least half the best; a round trip at most twice the
//!   best or within [`RTT_SLACK`] of it), so noise between equal mirrors never reorders them;
//! - among those, a server with a connection to spare goes before a busy one (its requests
//!   would wait for a connection while an equal mirror has one free): this spreads the load;
//! - a server not measured yet counts as good as the best measured one, so it is tried in its
//!   serverlist place and gets measured, instead of never being tried.
//!
//! Invariants: the result is a permutation of the sources given; with no figures at all it is
//! serverlist order (today's behaviour).

use std::time::Duration;

use crate::backend::Backend;

/// Files up to 1 MiB are ranked by round trip: at 25 MB/s 1 MiB takes 40 ms, the order of a
/// few round trips to a distant server.
pub const SMALL_BY_RTT: u64 = 1 << 20;
/// Throughputs within a factor of 2 are a tie: measurements on a shared link vary that much
/// between transfers, and flapping between equal mirrors would only cost connections.
const TIE: f64 = 2.0;
/// Round trips within 2 ms of the best are a tie too: on a LAN or loopback they are all noise.
const RTT_SLACK: Duration = Duration::from_millis(2);

/// `sources` (server indexes in serverlist order) in the order to try them for a file of
/// `size` bytes.
pub fn rank(backend: &dyn Backend, sources: &[usize], size: u64) -> Vec<usize> {
    let by_rtt = size <= SMALL_BY_RTT;
    // (server, figure): seconds of round trip (lower is better) or bytes per second.
    let mut left: Vec<(usize, Option<f64>)> = sources
        .iter()
        .map(|&s| {
            let sp = backend.speed(s);
            let f = if by_rtt {
                sp.rtt.map(|d| d.as_secs_f64())
            } else {
                sp.bytes_per_sec
            };
            (s, f)
        })
        .collect();
    let better = |a: f64, b: f64| if by_rtt { a < b } else { a > b };
    let near = |f: f64, best: f64| {
        if by_rtt {
            f <= best * TIE || f <= best + RTT_SLACK.as_secs_f64()
        } else {
            f >= best / TIE
        }
    };
    let (mut up, down): (Vec<_>, Vec<_>) = left.drain(..).partition(|&(s, _)| !backend.is_down(s));
    let mut order = Vec::with_capacity(sources.len());
    // Each turn moves one server to `order`: bounded by the number of sources.
    while !up.is_empty() {
        let best = up
            .iter()
            .filter_map(|&(_, f)| f)
            .fold(None, |m: Option<f64>, v| match m {
                Some(m) if !better(v, m) => Some(m),
                _ => Some(v),
            });
        let good = |f: Option<f64>| match (f, best) {
            (Some(f), Some(best)) => near(f, best),
            _ => true,
        };
        // Among the good ones, one with a connection to spare first: a busy server's requests
        // would wait for a connection while an equal mirror has one free (spreads the load).
        let pick = up
            .iter()
            .position(|&(s, f)| good(f) && backend.spare_connections(s) > 0)
            .or_else(|| up.iter().position(|&(_, f)| good(f)))
            .unwrap_or(0);
        order.push(up.remove(pick).0);
    }
    order.extend(down.into_iter().map(|(s, _)| s));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{ByteStream, Priority, RawEntry, Speed};
    use crate::error::Result;

    struct Figures(Vec<Speed>, Vec<bool>);

    /// Figures, and servers with no connection to spare.
    struct Busy(Figures, Vec<usize>);

    impl Backend for Busy {
        fn servers(&self) -> usize {
            self.0.servers()
        }
        fn label(&self, s: usize) -> &str {
            self.0.label(s)
        }
        fn base(&self, s: usize) -> &[u8] {
            self.0.base(s)
        }
        fn list(&self, s: usize, p: &[u8], prio: Priority) -> Result<Vec<RawEntry>> {
            self.0.list(s, p, prio)
        }
        fn speed(&self, s: usize) -> Speed {
            self.0.speed(s)
        }
        fn spare_connections(&self, s: usize) -> usize {
            if self.1.contains(&s) { 0 } else { 4 }
        }
        fn open(&self, s: usize, p: &[u8], o: u64, q: Priority) -> Result<Box<dyn ByteStream>> {
            self.0.open(s, p, o, q)
        }
    }

    #[test]
    fn a_busy_server_goes_after_an_equal_one_with_room() {
        let figures = || Figures(vec![sp(Some(1), Some(50.0)); 3], vec![false; 3]);
        let b = Busy(figures(), vec![0]);
        assert_eq!(rank(&b, &[0, 1, 2], BIG), vec![1, 2, 0]);
        assert_eq!(rank(&b, &[0, 1, 2], 10), vec![1, 2, 0]);
        // All busy: serverlist order again.
        let all = Busy(figures(), vec![0, 1, 2]);
        assert_eq!(rank(&all, &[0, 1, 2], BIG), vec![0, 1, 2]);
    }

    impl Backend for Figures {
        fn servers(&self) -> usize {
            self.0.len()
        }
        fn label(&self, _s: usize) -> &str {
            "s"
        }
        fn base(&self, _s: usize) -> &[u8] {
            b"/"
        }
        fn list(&self, _s: usize, _p: &[u8], _prio: Priority) -> Result<Vec<RawEntry>> {
            Ok(Vec::new())
        }
        fn speed(&self, s: usize) -> Speed {
            self.0[s]
        }
        fn is_down(&self, s: usize) -> bool {
            self.1[s]
        }
        fn open(&self, _s: usize, _p: &[u8], _o: u64, _q: Priority) -> Result<Box<dyn ByteStream>> {
            Err(crate::error::Error::not_found())
        }
    }

    fn sp(rtt_ms: Option<u64>, mbps: Option<f64>) -> Speed {
        Speed {
            rtt: rtt_ms.map(Duration::from_millis),
            bytes_per_sec: mbps.map(|m| m * 1e6),
        }
    }

    const BIG: u64 = 100 << 20;

    #[test]
    fn unmeasured_servers_keep_serverlist_order() {
        let b = Figures(vec![Speed::default(); 3], vec![false; 3]);
        assert_eq!(rank(&b, &[0, 1, 2], BIG), vec![0, 1, 2]);
        assert_eq!(rank(&b, &[0, 1, 2], 10), vec![0, 1, 2]);
    }

    #[test]
    fn big_files_go_to_the_fastest_small_ones_to_the_nearest() {
        let b = Figures(
            vec![
                sp(Some(2), Some(5.0)),
                sp(Some(40), Some(100.0)),
                sp(Some(10), Some(20.0)),
            ],
            vec![false; 3],
        );
        assert_eq!(rank(&b, &[0, 1, 2], BIG), vec![1, 2, 0]);
        assert_eq!(rank(&b, &[0, 1, 2], 4096), vec![0, 2, 1]);
        // Only the sources given, in that order.
        assert_eq!(rank(&b, &[0, 2], BIG), vec![2, 0]);
    }

    #[test]
    fn near_figures_tie_and_serverlist_order_decides() {
        let b = Figures(
            vec![sp(Some(1), Some(20.0)), sp(Some(0), Some(35.0))],
            vec![false; 2],
        );
        assert_eq!(rank(&b, &[0, 1], BIG), vec![0, 1]);
        // Loopback round trips (0.1 vs 1 ms) are noise: a tie.
        assert_eq!(rank(&b, &[0, 1], 10), vec![0, 1]);
    }

    #[test]
    fn unmeasured_count_as_the_best_and_down_go_last() {
        // s0 slow, s1 not measured yet: s1 is tried first (as good as the best known).
        let b = Figures(
            vec![sp(None, Some(5.0)), Speed::default(), sp(None, Some(50.0))],
            vec![false; 3],
        );
        assert_eq!(rank(&b, &[0, 1, 2], BIG), vec![1, 2, 0]);
        let down = Figures(
            vec![sp(None, Some(50.0)), sp(None, Some(5.0))],
            vec![true, false],
        );
        assert_eq!(rank(&down, &[0, 1], BIG), vec![1, 0]);
    }
}
