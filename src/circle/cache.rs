//! Per (server, directory) listing cache: an LRU bounded by entries, each entry with a TTL, and
//! single-flight fetching (concurrent requests for the same listing wait for the one in flight).
//!
//! Invariants:
//! - within one TTL a listing is fetched from its server at most once (unless evicted by the
//!   LRU bound);
//! - a failed fetch is cached too, but only for [`ERROR_TTL`], so a server that is down is not
//!   asked again by every lookup, yet comes back soon;
//! - a waiter never waits longer than the fetch itself is allowed to take (bounded by the
//!   network timeouts) plus a margin.

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::backend::{Backend, Priority};
use crate::error::{Error, Kind, Result};
use crate::ftp::listing::RawEntry;

/// How long a failed listing is remembered: long enough that one `ls` of a merged directory
/// does not retry a dead server for each name, short enough to notice it coming back.
pub const ERROR_TTL: Duration = Duration::from_secs(5);

pub type Key = (usize, Box<[u8]>);

pub struct Fetched {
    pub at: Instant,
    pub result: Result<Arc<[RawEntry]>>,
}

impl Fetched {
    fn fresh(&self, ttl: Duration) -> bool {
        let ttl = if self.result.is_ok() {
            ttl
        } else {
            ttl.min(ERROR_TTL)
        };
        self.at.elapsed() < ttl
    }
}

struct Flight {
    done: Mutex<Option<Arc<Fetched>>>,
    cv: Condvar,
}

pub struct ListingCache {
    ttl: Duration,
    /// Upper bound for a waiter: the fetch itself is bounded by the network timeouts.
    max_wait: Duration,
    lru: Mutex<LruCache<Key, Arc<Fetched>>>,
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    fetches: AtomicU64,
}

impl ListingCache {
    pub fn new(ttl: Duration, entries: usize, max_wait: Duration) -> Self {
        let cap = NonZeroUsize::new(entries.max(1)).unwrap_or(NonZeroUsize::MIN);
        ListingCache {
            ttl,
            max_wait,
            lru: Mutex::new(LruCache::new(cap)),
            flights: Mutex::new(HashMap::new()),
            fetches: AtomicU64::new(0),
        }
    }

    /// Listings fetched from servers so far (for tests and statistics).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(Ordering::Relaxed)
    }

    /// A cached listing that is still fresh, without fetching.
    pub fn fresh(&self, key: &Key) -> Option<Arc<Fetched>> {
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        lru.get(key).filter(|f| f.fresh(self.ttl)).cloned()
    }

    /// The listing of `path` on `server`: cached if fresh, else fetched once for all callers.
    pub fn get(
        &self,
        backend: &dyn Backend,
        server: usize,
        path: &[u8],
        prio: Priority,
    ) -> Arc<Fetched> {
        let key: Key = (server, path.into());
        if let Some(f) = self.fresh(&key) {
            return f;
        }
        let (flight, leader) = {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            // Re-check under the flights lock: a flight may have landed in between.
            if let Some(f) = self.fresh(&key) {
                return f;
            }
            match flights.get(&key) {
                Some(f) => (Arc::clone(f), false),
                None => {
                    let f = Arc::new(Flight {
                        done: Mutex::new(None),
                        cv: Condvar::new(),
                    });
                    flights.insert(key.clone(), Arc::clone(&f));
                    (f, true)
                }
            }
        };
        if leader {
            self.fetches.fetch_add(1, Ordering::Relaxed);
            let result = backend.list(server, path, prio).map(Arc::from);
            let fetched = Arc::new(Fetched {
                at: Instant::now(),
                result,
            });
            self.lru
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .put(key.clone(), Arc::clone(&fetched));
            self.flights
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            *flight.done.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&fetched));
            flight.cv.notify_all();
            return fetched;
        }
        let deadline = Instant::now() + self.max_wait;
        let mut done = flight.done.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(f) = done.as_ref() {
                return Arc::clone(f);
            }
            let now = Instant::now();
            if now >= deadline {
                return Arc::new(Fetched {
                    at: now,
                    result: Err(Error::new(
                        Kind::Network,
                        format!(
                            "{}: listing still running after {:?}",
                            backend.label(server),
                            self.max_wait
                        ),
                    )),
                });
            }
            done = flight
                .cv
                .wait_timeout(done, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Forget a listing (after a read found the file changed on the server).
    pub fn invalidate(&self, server: usize, path: &[u8]) {
        let key: Key = (server, path.into());
        self.lru.lock().unwrap_or_else(|p| p.into_inner()).pop(&key);
    }
}
