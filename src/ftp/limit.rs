//! The cap on sockets to servers over all servers (`--max-total-connections`), on top of each
//! server's own cap: 1,000 servers must not mean 4,000 sockets, and the daemon's open file
//! descriptors stay below the cap plus a fixed few (FUSE, log, stdio).
//!
//! A connection counts [`SOCKETS_PER_CONNECTION`] = 2: its control socket and the data socket
//! it opens for a listing or a file transfer (at most one at a time). Counting both when the
//! connection opens keeps the bound exact without a second wait (and so without a deadlock
//! between connections each waiting for room for its data socket).
//!
//! Owns: the count of open connections (each holds a [`Permit`]), and the choice of
//! which idle connection to close when the cap is reached: the oldest idle one of the server
//! used least recently, so busy servers keep their warm connections.
//!
//! Invariants:
//! - at most `cap / 2` permits exist at once (a permit lives exactly as long as its
//!   connection), so at most `cap` sockets;
//! - waiting for a permit is bounded by the caller's deadline;
//! - lock order: a server's pool lock may be held while a permit is dropped (which takes this
//!   count's lock), so this module never takes a server's lock while holding the count's.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use crate::error::{Error, Kind, Result};
use crate::ftp::pool::Server;

/// Sockets a connection may hold at once: control and data.
pub const SOCKETS_PER_CONNECTION: usize = 2;

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
        *self.limit.lock() -= SOCKETS_PER_CONNECTION;
        self.limit.freed.notify_one();
    }
}

impl ConnLimit {
    /// At most `cap` sockets (at least one connection's worth).
    pub fn new(cap: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            cap: cap.max(SOCKETS_PER_CONNECTION),
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

    /// Sockets counted right now (two per open connection).
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
                if *open + SOCKETS_PER_CONNECTION <= self.cap {
                    *open += SOCKETS_PER_CONNECTION;
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
                        "{label}: all {} connections allowed (--max-total-connections {}) are in use",
                        self.cap / SOCKETS_PER_CONNECTION,
                        self.cap
                    ),
                ));
            }
            let open = self.lock();
            if *open + SOCKETS_PER_CONNECTION > self.cap {
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
        // Two connections.
        let limit = ConnLimit::new(4);
        let soon = || Instant::now() + Duration::from_millis(20);
        let a = limit.acquire("s", soon()).unwrap();
        let _b = limit.acquire("s", soon()).unwrap();
        assert_eq!(limit.open(), 4);
        let e = limit.acquire("s", soon()).err().unwrap();
        assert_eq!(e.kind, Kind::Busy);
        assert!(e.message.contains("--max-total-connections"));
        drop(a);
        assert_eq!(limit.open(), 2);
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
            2,
            "the waiter's permit was dropped with its thread"
        );
        assert_eq!(
            ConnLimit::new(1).cap(),
            2,
            "room for one connection at least"
        );
    }
}
