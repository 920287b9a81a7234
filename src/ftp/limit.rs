//! The cap on open connections over all servers (`--max-total-connections`), on top of each
//! server's own cap: 1,000 servers must not mean 4,000 sockets.
//!
//! Owns: the count of open control connections (each holds a [`Permit`]), and the choice of
//! which idle connection to close when the cap is reached: the oldest idle one of the server
//! used least recently, so busy servers keep their warm connections.
//!
//! Invariants:
//! - at most `cap` permits exist at once (a permit lives exactly as long as its connection);
//! - waiting for a permit is bounded by the caller's deadline;
//! - lock order: a server's pool lock may be held while a permit is dropped (which takes this
//!   count's lock), so this module never takes a server's lock while holding the count's.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Kind, Result};
use crate::ftp::pool::Server;

/// How often a waiter looks again for an idle connection to close elsewhere (a connection
/// that goes idle on another server does not wake it).
const RECHECK: Duration = Duration::from_millis(50);

pub struct ConnLimit {
    cap: usize,
    open: Mutex<usize>,
    freed: Condvar,
    servers: Mutex<Vec<Weak<Server>>>,
}

/// One open connection's share of the cap; released on drop.
pub struct Permit {
    limit: Arc<ConnLimit>,
}

impl Drop for Permit {
    fn drop(&mut self) {
        *self.limit.lock() -= 1;
        self.limit.freed.notify_one();
    }
}

impl ConnLimit {
    pub fn new(cap: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            cap: cap.max(1),
            open: Mutex::new(0),
            freed: Condvar::new(),
            servers: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, usize> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Connections open right now.
    pub fn open(&self) -> usize {
        *self.lock()
    }

    /// Make `server` a candidate for closing idle connections.
    pub(crate) fn register(&self, server: &Arc<Server>) {
        let mut servers = self.servers.lock().unwrap_or_else(|p| p.into_inner());
        servers.retain(|w| w.strong_count() > 0);
        servers.push(Arc::downgrade(server));
    }

    /// A permit for one more connection: at once while under the cap, else after closing an
    /// idle connection somewhere, else when one closes, until `deadline`.
    pub fn acquire(self: &Arc<Self>, label: &str, deadline: Instant) -> Result<Permit> {
        // Bounded: each turn takes a permit, closes an idle connection (finitely many), or
        // waits at most RECHECK until the deadline.
        loop {
            {
                let mut open = self.lock();
                if *open < self.cap {
                    *open += 1;
                    return Ok(Permit {
                        limit: Arc::clone(self),
                    });
                }
            }
            if self.close_one_idle() {
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    Kind::Busy,
                    format!(
                        "{label}: all {} connections allowed (--max-total-connections) are in use",
                        self.cap
                    ),
                ));
            }
            let open = self.lock();
            if *open >= self.cap {
                let _ = self
                    .freed
                    .wait_timeout(open, (deadline - now).min(RECHECK))
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
    }

    /// Close the oldest idle connection of the least recently used server that has one.
    fn close_one_idle(&self) -> bool {
        let servers: Vec<Arc<Server>> = self
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter_map(Weak::upgrade)
            .collect();
        let victim = servers
            .iter()
            .filter_map(|s| s.idle_since().map(|t| (t, s)))
            .min_by_key(|(t, _)| *t);
        match victim {
            Some((_, s)) => s.close_oldest_idle(),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_capped_and_come_back_on_drop() {
        let limit = ConnLimit::new(2);
        let soon = || Instant::now() + Duration::from_millis(20);
        let a = limit.acquire("s", soon()).unwrap();
        let _b = limit.acquire("s", soon()).unwrap();
        assert_eq!(limit.open(), 2);
        let e = limit.acquire("s", soon()).err().unwrap();
        assert_eq!(e.kind, Kind::Busy);
        assert!(e.message.contains("--max-total-connections"));
        drop(a);
        assert_eq!(limit.open(), 1);
        let l2 = Arc::clone(&limit);
        // A waiter gets the permit freed while it waits.
        let held = limit.acquire("s", soon()).unwrap();
        let t = std::thread::spawn(move || {
            l2.acquire("s", Instant::now() + Duration::from_secs(20))
                .is_ok()
        });
        std::thread::sleep(Duration::from_millis(10));
        drop(held);
        assert!(t.join().unwrap());
        assert_eq!(
            limit.open(),
            1,
            "the waiter's permit was dropped with its thread"
        );
    }
}
