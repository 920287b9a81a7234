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
//!   network timeouts) plus a margin;
//! - with a listing index ([`crate::index`]), a listing not in memory is looked up there
//!   first: one younger than the TTL is used as if just fetched (its age counts), an older one
//!   fetched before this mount started is served marked [`Origin::Stale`] (the caller
//!   revalidates it in the background; an expired listing this mount fetched itself is
//!   fetched again first, as without an index; `--cache-ttl 0` never serves one); every
//!   listing fetched is recorded (queued, never written here); a failed fetch with no listing
//!   in memory carries the indexed one as its [`Fetched::last_ok`], dated no earlier than the
//!   cache's creation (the mount), so a server down at mount time shows its indexed entries
//!   for `--offline-keep` like one that went down later;
//! - [`ListingCache::local`] gives what is here (cached, or served from the index by the same
//!   rules) and never asks a server nor waits for a fetch: the preload and the first pass of
//!   a directory refresh use it, so only what is missing goes to the network.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::backend::{Backend, Priority};
use crate::backend::{EntryKind, RawEntry};
use crate::error::{Error, Kind, Result};
use crate::index::Index;

/// How long a failed listing is remembered: long enough that one `ls` of a merged directory
/// does not retry a dead server for each name, short enough to notice it coming back.
pub const ERROR_TTL: Duration = Duration::from_secs(5);

pub type Key = (usize, Box<[u8]>);

/// Where a listing came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Origin {
    /// Fetched from the server (or its failure).
    #[default]
    Network,
    /// From the index, younger than the TTL.
    Index,
    /// From the index, older than the TTL: to be revalidated.
    Stale,
}

/// A listing that succeeded earlier: when it was fetched, and its entries.
pub type LastOk = (Instant, Arc<[RawEntry]>);

pub struct Fetched {
    /// When it was fetched from its server (for index listings: now minus their age).
    pub at: Instant,
    pub result: Result<Arc<[RawEntry]>>,
    pub origin: Origin,
    /// After a failure: the last listing this server gave of this directory, and when, if
    /// still cached or in the index (the entries of a server that went down).
    pub last_ok: Option<LastOk>,
}

impl Fetched {
    pub fn new(at: Instant, result: Result<Arc<[RawEntry]>>) -> Fetched {
        Fetched {
            at,
            result,
            origin: Origin::Network,
            last_ok: None,
        }
    }

    /// What this fetch says was last known to be there: its own entries, or those it carries.
    fn known(&self) -> Option<LastOk> {
        match &self.result {
            Ok(e) => Some((self.at, Arc::clone(e))),
            Err(_) => self.last_ok.clone(),
        }
    }

    fn fresh(&self, ttl: Duration) -> bool {
        let ttl = match (&self.result, &self.origin) {
            (_, Origin::Stale) => return false,
            (Err(_), _) => ttl.min(ERROR_TTL),
            (Ok(_), _) => ttl,
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
    index: Option<Arc<Index>>,
    /// Listings invalidated since their last fetch: the index's copy is out of date too.
    bypass: Mutex<std::collections::HashSet<Key>>,
    /// When this cache was made (the mount): the earliest date of an indexed `last_ok`.
    created: Instant,
}

impl ListingCache {
    /// `entries`: bound on directory entries held, summed over all cached listings.
    pub fn new(
        ttl: Duration,
        entries: usize,
        max_wait: Duration,
        index: Option<Arc<Index>>,
    ) -> Self {
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
            index,
            bypass: Mutex::default(),
            created: Instant::now(),
        }
    }

    pub fn index(&self) -> Option<&Arc<Index>> {
        self.index.as_ref()
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

    /// A failed fetch of `key`, carrying what was last known of it.
    fn failed(&self, key: &Key, at: Instant, e: Error) -> Fetched {
        Fetched {
            last_ok: self.last_known(key).or_else(|| self.indexed(key)),
            ..Fetched::new(at, Err(e))
        }
    }

    /// The index's listing of `key` as a [`LastOk`] (dated no earlier than the mount), unless
    /// invalidated since.
    fn indexed(&self, key: &Key) -> Option<LastOk> {
        let ix = self.index.as_ref()?;
        if self
            .bypass
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
        {
            return None;
        }
        let stored = ix.listing(key.0, &key.1)?;
        let at = Instant::now()
            .checked_sub(stored.age)
            .map_or(self.created, |at| at.max(self.created));
        Some((at, Arc::from(stored.entries)))
    }

    /// The listing of `path` on `server`: cached if fresh, else from the index, else fetched
    /// once for all callers.
    pub fn get(
        &self,
        backend: &dyn Backend,
        server: usize,
        path: &[u8],
        prio: Priority,
    ) -> Arc<Fetched> {
        self.get_with(backend, server, path, prio, true)
    }

    /// As [`get`](Self::get); `use_index: false` skips the index's copy (to revalidate it, or
    /// to see whether the server answers).
    pub fn get_with(
        &self,
        backend: &dyn Backend,
        server: usize,
        path: &[u8],
        prio: Priority,
        use_index: bool,
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
            let fetched = Arc::new(self.load(backend, &key, prio, use_index));
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
                return Arc::new(self.failed(
                    &key,
                    now,
                    Error::new(
                        Kind::Unavailable,
                        format!("{}: marked down", backend.label(server)),
                    ),
                ));
            }
            if now >= deadline {
                return Arc::new(self.failed(
                    &key,
                    now,
                    Error::new(
                        Kind::Network,
                        format!(
                            "{}: listing still running after {:?}",
                            backend.label(server),
                            self.max_wait
                        ),
                    ),
                ));
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

    /// The index's copy of `key` as a listing, if it may be served: younger than the TTL
    /// ([`Origin::Index`]), or older but fetched before this mount started ([`Origin::Stale`]:
    /// to be revalidated). Never with `--cache-ttl 0`, nor after an invalidation.
    fn indexed_listing(&self, key: &Key) -> Option<Fetched> {
        let ix = self.index.as_deref()?;
        // `--cache-ttl 0` means "always ask": the index only stands in for a failed server.
        if self.ttl.is_zero()
            || self
                .bypass
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(key)
        {
            return None;
        }
        let stored = ix.listing(key.0, &key.1)?;
        // Stale-while-revalidate is for what earlier mounts left. A listing fetched since
        // this mount started (by it, or by another mount sharing the file) is fetched
        // again once expired, before it is used, as without an index.
        // (Ages are whole seconds, so "before" needs a second more to be sure.)
        if stored.age >= self.ttl && stored.age <= self.created.elapsed() + Duration::from_secs(1) {
            return None;
        }
        let now = Instant::now();
        let result = Ok(Arc::from(stored.entries));
        Some(match now.checked_sub(stored.age) {
            Some(at) if stored.age < self.ttl => Fetched {
                at,
                result,
                origin: Origin::Index,
                last_ok: None,
            },
            at => Fetched {
                at: at.unwrap_or(now),
                result,
                origin: Origin::Stale,
                last_ok: None,
            },
        })
    }

    /// The listing of `path` on `server` if it is here without asking the server: cached and
    /// fresh, or in the index (then cached, as [`get`](Self::get) would). Never fetches, never
    /// waits for a fetch in flight; `None` when only the server can tell.
    pub fn local(&self, server: usize, path: &[u8]) -> Option<Arc<Fetched>> {
        let key: Key = (server, path.into());
        if let Some(f) = self.fresh(&key) {
            return Some(f);
        }
        let fetched = Arc::new(self.indexed_listing(&key)?);
        let mut lru = self.lru.lock().unwrap_or_else(|p| p.into_inner());
        // A fetch that landed meanwhile is newer than the index's copy: keep it.
        if let Some(f) = lru.map.get(&key).filter(|f| f.fresh(self.ttl)) {
            return Some(Arc::clone(f));
        }
        lru.put(key, Arc::clone(&fetched));
        Some(fetched)
    }

    /// The leader's work: the index's copy if usable, else the server (recorded in the index);
    /// a failure carries the last known listing (see [`Fetched::last_ok`]).
    fn load(&self, backend: &dyn Backend, key: &Key, prio: Priority, use_index: bool) -> Fetched {
        let (server, path) = (key.0, &key.1[..]);
        if use_index && let Some(f) = self.indexed_listing(key) {
            return f;
        }
        let index = self.index.as_deref();
        self.fetches.fetch_add(1, Ordering::Relaxed);
        let result = backend
            .list(server, path, prio)
            .and_then(|entries| with_targets(backend, server, path, prio, entries));
        let now = Instant::now();
        let Some(ix) = index else {
            return match result {
                Ok(entries) => Fetched::new(now, Ok(Arc::from(entries))),
                Err(e) => self.failed(key, now, e),
            };
        };
        match result {
            Ok(entries) => {
                ix.record(server, path, &entries);
                self.bypass
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(key);
                Fetched::new(now, Ok(Arc::from(entries)))
            }
            Err(e) if e.kind == Kind::NotFound => {
                ix.forget(server, path);
                Fetched::new(now, Err(e))
            }
            Err(e) => self.failed(key, now, e),
        }
    }

    /// Forget a listing (after a read found the file changed on the server).
    pub fn invalidate(&self, server: usize, path: &[u8]) {
        let key: Key = (server, path.into());
        self.lru.lock().unwrap_or_else(|p| p.into_inner()).pop(&key);
        if let Some(ix) = &self.index {
            ix.forget(server, path);
            let mut bypass = self.bypass.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded: the index forgets these too, so the set is only a guard until then.
            if bypass.len() >= 10_000 {
                bypass.clear();
            }
            bypass.insert(key);
        }
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
