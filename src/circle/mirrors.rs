//! What the mount learns, while it runs, about whether copies of one file on two servers are
//! the same file: the pairs of copies found different, and the file hashes servers gave us.
//!
//! The listings decide who is a mirror of whom first (same size and time, see
//! [`crate::circle::merge`]); this is the evidence from the bytes themselves, gathered where
//! it matters, when a read splices bytes of a second copy onto bytes of a first one:
//! - the splice check: the new copy's bytes just before the splice offset must equal the bytes
//!   already received ([`crate::circle::reader`]);
//! - hashes: where both servers offer a common hash command, both hashes are compared first.
//!
//! Owns: the set of (file, server, server) found different, and a cache of hashes.
//!
//! Invariants:
//! - a pair found different stays different for the life of the mount (the merge hides the
//!   later copy, the reader never splices the two); at most [`MAX_DIFFERENT`] pairs are kept,
//!   beyond that a new pair is only guarded by the splice check of each read (an EIO again,
//!   never mixed bytes);
//! - a hash is asked at most once per (server, file, size) within [`HASH_TTL`]; hashes are only
//!   asked for files up to [`HASH_MAX_SIZE`], so the server answers well within the timeout.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lru::LruCache;

use crate::backend::{Backend, HashAlgo, Priority};

/// Pairs of copies found different that are remembered: about 100 bytes each, so at most
/// 10 MB; a mount that finds that many differing mirrors has bigger problems.
pub const MAX_DIFFERENT: usize = 100_000;
/// A server hashes at disk speed (a few hundred MB/s): 512 MiB takes one to a few seconds,
/// within the default timeout. Bigger files rely on the splice check alone.
pub const HASH_MAX_SIZE: u64 = 512 * 1024 * 1024;
/// A hash is reused for further splices of the same file for this long; a file replaced on the
/// server is not judged by its old hash for longer.
pub const HASH_TTL: Duration = Duration::from_secs(60);
/// Hashes remembered (one per server and file).
const HASH_ENTRIES: usize = 4096;

/// (server, file, size, algorithm).
type HashKey = (usize, Box<[u8]>, u64, HashAlgo);
/// When it was asked, and the hash (`None`: the server gave none).
type HashEntry = (Instant, Option<Vec<u8>>);
/// (file, server, server) with the lower server first.
type Pair = (Box<[u8]>, usize, usize);

pub struct Mirrors {
    different: Mutex<HashSet<Pair>>,
    hashes: Mutex<LruCache<HashKey, HashEntry>>,
}

impl Default for Mirrors {
    fn default() -> Self {
        Mirrors {
            different: Mutex::new(HashSet::new()),
            hashes: Mutex::new(LruCache::new(
                std::num::NonZeroUsize::new(HASH_ENTRIES).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
        }
    }
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Mirrors {
    /// The copies of `path` on servers `a` and `b` differ: never mirrors again.
    pub fn mark_different(&self, path: &[u8], a: usize, b: usize) {
        let (a, b) = pair(a, b);
        let mut set = self.different.lock().unwrap_or_else(|p| p.into_inner());
        if set.len() < MAX_DIFFERENT {
            set.insert((path.into(), a, b));
        }
    }

    /// [`Self::differ`] for `name` in directory `dir` (paths relative to the servers' roots).
    /// Without any pair found different (the common case) it costs one lock, no allocation.
    pub fn differ_in(&self, dir: &[u8], name: &[u8], a: usize, b: usize) -> bool {
        let (a, b) = pair(a, b);
        let set = self.different.lock().unwrap_or_else(|p| p.into_inner());
        if set.is_empty() {
            return false;
        }
        let full = if dir.is_empty() {
            name.to_vec()
        } else {
            [dir, name].join(&b'/')
        };
        set.contains(&(full.into(), a, b))
    }

    /// Were the copies of `path` on `a` and `b` found different?
    pub fn differ(&self, path: &[u8], a: usize, b: usize) -> bool {
        let (a, b) = pair(a, b);
        let set = self.different.lock().unwrap_or_else(|p| p.into_inner());
        !set.is_empty() && set.contains(&(Box::from(path), a, b))
    }

    /// Compare the copies of `path` (of `size` bytes) on `a` and `b` by their hashes, where both
    /// servers offer a common algorithm (the strongest is used). `Some(true)`: same hash;
    /// `Some(false)`: different (marked so); `None`: no common algorithm, too big, or a server
    /// did not answer.
    pub fn compare_by_hash(
        &self,
        backend: &dyn Backend,
        path: &[u8],
        size: u64,
        a: usize,
        b: usize,
    ) -> Option<bool> {
        if size > HASH_MAX_SIZE {
            return None;
        }
        let common = backend.hash_algos(a) & backend.hash_algos(b);
        let algo = HashAlgo::ALL.into_iter().find(|h| common & h.bit() != 0)?;
        // Both servers read the whole file: ask them at the same time.
        let (ha, hb) = std::thread::scope(|scope| {
            let other = scope.spawn(|| self.hash(backend, b, path, size, algo));
            let ha = self.hash(backend, a, path, size, algo);
            (ha, other.join().ok().flatten())
        });
        let (ha, hb) = (ha?, hb?);
        let same = ha == hb;
        log::info!(
            "/{}: {algo:?} on {} and {}: {}",
            String::from_utf8_lossy(path),
            backend.label(a),
            backend.label(b),
            if same { "same" } else { "different contents" }
        );
        if !same {
            self.mark_different(path, a, b);
        }
        Some(same)
    }

    /// The hash of `path` on `server`, cached; `None` if the server did not give one.
    fn hash(
        &self,
        backend: &dyn Backend,
        server: usize,
        path: &[u8],
        size: u64,
        algo: HashAlgo,
    ) -> Option<Vec<u8>> {
        let key: HashKey = (server, path.into(), size, algo);
        {
            let mut cache = self.hashes.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, h)) = cache.get(&key)
                && at.elapsed() < HASH_TTL
            {
                return h.clone();
            }
        }
        let h = match backend.hash(server, path, algo, Priority::Foreground) {
            Ok(h) => Some(h),
            Err(e) => {
                log::debug!("{e}");
                None
            }
        };
        self.hashes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .put(key, (Instant::now(), h.clone()));
        h
    }
}
