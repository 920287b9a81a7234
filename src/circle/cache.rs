//! Per (server, directory) listing cache: an LRU bounded by the total number of directory
//! entries it holds (`--cache-entries`), each listing with a TTL, and single-flight fetching
//! (concurrent requests for the same listing wait for the one in flight).
//!
//! The merged tree keeps what it needs of a listing after merging, so this cache only has to
//! remember recent listings: for a directory re-merged after one of its servers failed, and to
//! join concurrent requests. Bounding it by entries, not listings, bounds its memory (about
//! 100 bytes per entry) whatever the directory sizes.
//!
//! Invariants:
//! - within one TTL a listing is fetched from its server at most once (unless evicted by the
//!   LRU bound);
//! - a failed fetch is cached too, but only for [`ERROR_TTL`], so a server that is down is not
//!   asked again by every lookup, yet comes back soon;
//! - a failed fetch carries the last listing that server gave of that directory
//!   ([`Fetched::last_ok`]), so the merged view can keep a down server's entries for a while
//!   (`--offline-keep`); it costs its entries against the bound like any listing;
//! - a waiter never waits longer than the fetch itself is allowed to take (bounded by the
//!   network timeouts) plus a margin.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::backend::{Backend, Priority};
use crate::backend::{EntryKind, RawEntry};
use crate::error::{Error, Kind, Result};

/// How long a failed listing is remembered: long enough that one `ls` of a merged directory
/// does not retry a dead server for each name, short enough to notice it coming back.
pub const ERROR_TTL: Duration = Duration::from_secs(5);

pub type Key = (usize, Box<[u8]>);

pub struct Fetched {
    pub at: Instant,
    pub result: Result<Arc<[RawEntry]>>,
    /// After a failure: the last listing this server gave of this directory, and when, if
    /// still cached (the entries of a server that went down).
    pub last_ok: Option<LastOk>,
}

/// A listing that succeeded earlier: when it was fetched, and its entries.
pub type LastOk = (Instant, Arc<[RawEntry]>);

impl Fetched {
    /// What this fetch says was last known to be there: its own entries, or those it carries.
    fn known(&self) -> Option<LastOk> {
        match &self.result {
            Ok(e) => Some((self.at, Arc::clone(e))),
            Err(_) => self.last_ok.clone(),
        }
    }
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

struct Lru {
    map: LruCache<Key, Arc<Fetched>>,
    /// Directory entries held in all cached listings.
    entries: usize,
    cap: usize,
}

impl Lru {
    fn len_of(f: &Fetched) -> usize {
        // An error or empty listing still costs a slot.
        f.result.as_ref().map_or(1, |e| e.len().max(1))
            + f.last_ok.as_ref().map_or(0, |(_, e)| e.len())
    }

    fn put(&mut self, key: Key, f: Arc<Fetched>) {
        self.entries += Self::len_of(&f);
        if let Some(old) = self.map.put(key, f) {
            self.entries -= Self::len_of(&old);
        }
        // Bounded: each turn removes one listing.
        while self.entries > self.cap {
            match self.map.pop_lru() {
                Some((_, old)) => self.entries -= Self::len_of(&old),
                None => break,
            }
        }
    }

    fn pop(&mut self, key: &Key) {
        if let Some(old) = self.map.pop(key) {
            self.entries -= Self::len_of(&old);
        }
    }
}

pub struct ListingCache {
    ttl: Duration,
    /// Upper bound for a waiter: the fetch itself is bounded by the network timeouts.
    max_wait: Duration,
    lru: Mutex<Lru>,
    flights: Mutex<HashMap<Key, Arc<Flight>>>,
    fetches: AtomicU64,
}

impl ListingCache {
    /// `entries`: bound on directory entries held, summed over all cached listings.
    pub fn new(ttl: Duration, entries: usize, max_wait: Duration) -> Self {
        ListingCache {
            ttl,
            max_wait,
            lru: Mutex::new(Lru {
                map: LruCache::unbounded(),
                entries: 0,
                cap: entries.max(1),
            }),
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
        lru.map.get(key).filter(|f| f.fresh(self.ttl)).cloned()
    }

    /// The last listing of `key` that succeeded, if still cached (whatever its age).
    pub fn last_known(&self, key: &Key) -> Option<LastOk> {
        let lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        lru.map.peek(key).and_then(|f| f.known())
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
            let result = backend
                .list(server, path, prio)
                .and_then(|entries| with_targets(backend, server, path, prio, entries))
                .map(Arc::from);
            let last_ok = match result {
                Ok(_) => None,
                Err(_) => self.last_known(&key),
            };
            let fetched = Arc::new(Fetched {
                at: Instant::now(),
                result,
                last_ok,
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
            // A listing that started before its server was marked down may still be waiting
            // out its timeout; nobody else has to wait with it.
            if backend.is_down(server) {
                return Arc::new(Fetched {
                    at: now,
                    result: Err(Error::new(
                        Kind::Unavailable,
                        format!("{}: marked down", backend.label(server)),
                    )),
                    last_ok: self.last_known(&key),
                });
            }
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
                    last_ok: self.last_known(&key),
                });
            }
            // Wake up now and then to notice the server being marked down.
            let nap = (deadline - now).min(Duration::from_millis(100));
            done = flight
                .cv
                .wait_timeout(done, nap)
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

/// Fill in the symlink targets a listing left out, with one more listing of the directory
/// (see [`Backend::symlink_targets`]), only when there is a symlink without target. That
/// listing also brings the symlinks the first one left out altogether (proftpd's MLSD skips
/// links whose target does not exist: dangling ones, loops). A link whose target it does not
/// give either stays without one (the merge leaves it out); a failure of that listing is the
/// listing's failure (retried after [`ERROR_TTL`]).
fn with_targets(
    backend: &dyn Backend,
    server: usize,
    path: &[u8],
    prio: Priority,
    mut entries: Vec<RawEntry>,
) -> Result<Vec<RawEntry>> {
    let unknown = |e: &RawEntry| matches!(&e.kind, EntryKind::Symlink(t) if t.is_empty());
    if !entries.iter().any(unknown) {
        return Ok(entries);
    }
    let mut links: HashMap<Vec<u8>, RawEntry> = backend
        .symlink_targets(server, path, prio)?
        .into_iter()
        .filter(|e| matches!(&e.kind, EntryKind::Symlink(t) if !t.is_empty()))
        .map(|e| (e.name.clone(), e))
        .collect();
    for e in entries.iter_mut() {
        let listed = links.remove(&e.name);
        if !unknown(e) {
            continue;
        }
        match listed {
            Some(link) => e.kind = link.kind,
            None => log::info!(
                "{}: /{}: the server does not say where symlink {:?} points; leaving it out",
                backend.label(server),
                String::from_utf8_lossy(path),
                String::from_utf8_lossy(&e.name)
            ),
        }
    }
    let mut missing: Vec<RawEntry> = links.into_values().collect();
    missing.sort_by(|a, b| a.name.cmp(&b.name));
    entries.extend(missing);
    Ok(entries)
}
