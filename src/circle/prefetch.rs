//! Prefetch: fetch what a walker (`find`, `grep -r`, `cp -r`) will ask for next, in parallel,
//! before it asks, within each server's connection budget (background priority: a prefetch
//! never takes a connection a user request is waiting for, and leaves one spare).
//!
//! - Directory listings: when a directory is listed, its subdirectories are queued, and theirs
//!   in turn, down to [`DIR_DEPTH`] levels below the directory the user touched. The queue is a
//!   stack (children pushed in reverse name order), so prefetch runs depth-first in the same
//!   order as `find`, just ahead of it.
//! - Small files: when a small file is opened, the next [`FILES_AHEAD`] small files in
//!   directory order (continuing into the next sibling directories already listed) are
//!   fetched whole into a bounded cache; `grep -r` reads files one after another in exactly
//!   that order, so they are already here when it opens them.
//!
//! Owns: that policy (the `impl Circle` part below: what is queued when a directory is listed
//! or a small file opened, and running the jobs), the job queue, the workers and the cache of
//! prefetched files.
//!
//! Bounded: the queue holds at most [`QUEUE_CAP`] jobs (the oldest are dropped), the file cache
//! at most [`FILE_CACHE_BYTES`], workers are a fixed set of at most [`MAX_WORKERS`] threads.
//! `--no-prefetch` switches it all off.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::inodes::{NodeKind, Nodes};
use super::{Circle, ROOT};
use crate::backend::{Backend, Priority};
use crate::error::{Error, Kind, Result};

/// Levels of subdirectories listed ahead of what the user touched. Two levels keep every
/// server's connections busy for trees with a handful of subdirectories per directory while
/// never listing a whole server because someone ran `ls` at the top.
pub const DIR_DEPTH: u8 = 2;
/// Small files fetched ahead of the one being opened: enough to cover ~3 round trips per file
/// on every connection of 3 servers.
pub const FILES_AHEAD: usize = 16;
/// Only files up to this size are prefetched whole; bigger ones are streamed on demand.
pub const SMALL_FILE_MAX: u64 = 256 * 1024;
/// Bound on prefetched file bytes held in memory at once.
pub const FILE_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Prefetch threads at most, whatever the number of servers: 16 keep the spare connections of
/// a handful of servers busy; beyond that the walker's own requests are the bottleneck.
pub const MAX_WORKERS: usize = 16;
/// Bound on queued jobs (a job is an inode number and a tag: 16 bytes).
pub const QUEUE_CAP: usize = 100_000;
/// Bound on directory prefetches held back while the preload runs (16 bytes each): a walker
/// visits a few thousand directories in the second or so a preload takes at most.
pub const DEFERRED_CAP: usize = 10_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Job {
    /// List this directory (merged, all its servers); `depth` more levels below it.
    Dir { ino: u64, depth: u8 },
    /// Fetch this small file whole.
    File { ino: u64 },
}

pub struct Queue {
    jobs: Mutex<VecDeque<Job>>,
    cv: Condvar,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            jobs: Mutex::new(VecDeque::new()),
            cv: Condvar::new(),
        }
    }
}

impl Queue {
    /// Push jobs to the front, keeping their order (so they are taken first, in order).
    pub fn push_front(&self, jobs: &[Job]) {
        if jobs.is_empty() {
            return;
        }
        let mut q = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        for job in jobs.iter().rev() {
            q.push_front(*job);
        }
        q.truncate(QUEUE_CAP);
        drop(q);
        self.cv.notify_all();
    }

    /// The next job, waiting up to `wait` for one.
    pub fn pop(&self, wait: Duration) -> Option<Job> {
        let mut q = self.jobs.lock().unwrap_or_else(|p| p.into_inner());
        if q.is_empty() {
            q = self
                .cv
                .wait_timeout(q, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        q.pop_front()
    }
}

enum Slot {
    Loading,
    Ready(Arc<Vec<u8>>),
}

/// Small files fetched ahead, by path, until opened (then the kernel's page cache has them).
/// Keyed by path, not inode: an inode number freed by `forget` may come back for another file.
#[derive(Default)]
pub struct FileCache {
    inner: Mutex<FileCacheInner>,
    cv: Condvar,
}

#[derive(Default)]
struct FileCacheInner {
    slots: HashMap<Box<[u8]>, Slot>,
    /// Ready paths in arrival order, for eviction.
    order: VecDeque<Box<[u8]>>,
    bytes: usize,
}

impl FileCache {
    fn lock(&self) -> MutexGuard<'_, FileCacheInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claim `path` for loading; false if it is loading or loaded already, or the cache is full.
    pub fn begin(&self, path: &[u8]) -> bool {
        let mut c = self.lock();
        if c.slots.contains_key(path) || c.bytes >= FILE_CACHE_BYTES {
            return false;
        }
        c.slots.insert(path.into(), Slot::Loading);
        true
    }

    /// Store the result of a load started with `begin` (None: it failed; forget it).
    pub fn complete(&self, path: &[u8], data: Option<Vec<u8>>) {
        let mut c = self.lock();
        match data {
            Some(d) => {
                c.bytes += d.len();
                c.order.push_back(path.into());
                c.slots.insert(path.into(), Slot::Ready(Arc::new(d)));
                // Bounded by the number of ready entries.
                while c.bytes > FILE_CACHE_BYTES {
                    let Some(old) = c.order.pop_front() else {
                        break;
                    };
                    if let Some(Slot::Ready(d)) = c.slots.remove(&old) {
                        c.bytes -= d.len();
                    }
                }
            }
            None => {
                c.slots.remove(path);
            }
        }
        drop(c);
        self.cv.notify_all();
    }

    /// Take the prefetched bytes of `path`, waiting (up to `max_wait`) if they are on the way.
    pub fn take(&self, path: &[u8], max_wait: Duration) -> Option<Arc<Vec<u8>>> {
        let deadline = Instant::now() + max_wait;
        let mut c = self.lock();
        loop {
            match c.slots.get(path) {
                None => return None,
                Some(Slot::Ready(_)) => {
                    let Some(Slot::Ready(d)) = c.slots.remove(path) else {
                        return None;
                    };
                    c.bytes -= d.len();
                    c.order.retain(|p| &p[..] != path);
                    return Some(d);
                }
                Some(Slot::Loading) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return None;
                    }
                    c = self
                        .cv
                        .wait_timeout(c, deadline - now)
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                }
            }
        }
    }

    /// Bytes held (for tests and statistics).
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }
}

// ---- the policy: what the merged view queues, and the workers that run it ----

impl Circle {
    /// Start `workers` prefetch threads (none if prefetch is off). They end within a second
    /// of the last reference to the circle going away.
    pub fn start_prefetch(self: &Arc<Self>, workers: usize) {
        if !self.opts.prefetch {
            return;
        }
        for _ in 0..workers.min(MAX_WORKERS) {
            let weak = Arc::downgrade(self);
            let queue = Arc::clone(&self.queue);
            let spawned = std::thread::Builder::new()
                .name("ftpc-prefetch".into())
                .spawn(move || {
                    // Ends when the circle is gone (unmounted).
                    while weak.strong_count() > 0 {
                        let Some(job) = queue.pop(Duration::from_secs(1)) else {
                            continue;
                        };
                        let Some(circle) = weak.upgrade() else {
                            break;
                        };
                        circle.run_job(job);
                    }
                });
            if let Err(e) = spawned {
                log::warn!("cannot start a prefetch thread: {e}");
            }
        }
    }

    pub(super) fn run_job(&self, job: Job) {
        match job {
            Job::Dir { ino, depth } => {
                if let Err(e) = self.refresh(ino, Priority::Background, depth) {
                    log::debug!("prefetch of a directory: {e}");
                }
            }
            Job::File { ino } => self.prefetch_file(ino),
        }
    }

    /// Fetch a small file whole into the prefetch cache.
    pub(super) fn prefetch_file(&self, ino: u64) {
        let Ok((path, size, sources)) = self.file_info(ino) else {
            return;
        };
        // Opened by the user meanwhile: it is being read, or the kernel has it cached.
        if self
            .nodes
            .read()
            .is_ok_and(|n| n.get(ino).is_some_and(|n| n.opened))
        {
            return;
        }
        if size > SMALL_FILE_MAX || self.in_view(ino) || !self.prefetched.begin(&path) {
            return;
        }
        let mut data = None;
        // The measured choice: small files from the copy with the lowest round trip.
        for s in super::choice::rank(self.backend.as_ref(), &sources, size) {
            match fetch_whole(self.backend.as_ref(), s, &path, size) {
                Ok(d) => {
                    data = Some(d);
                    break;
                }
                Err(e) => log::debug!("prefetch of /{}: {e}", String::from_utf8_lossy(&path)),
            }
        }
        self.prefetched.complete(&path, data);
    }

    /// Queue the small files the walker will open after `ino`: the rest of its directory in
    /// name order, then the files of the next sibling directories already listed.
    pub(super) fn queue_files_after(&self, ino: u64) {
        let Ok(nodes) = self.nodes.read() else {
            return;
        };
        let mut jobs = Vec::new();
        let small = |c: &u64| {
            nodes.get(*c).is_some_and(|n| {
                matches!(n.kind, NodeKind::File) && n.size <= SMALL_FILE_MAX && !n.opened
            })
        };
        let dir_order = |d: u64| match nodes.get(d).map(|n| &n.kind) {
            Some(NodeKind::Dir(dd)) if dd.expires.is_some() => Some(&dd.order),
            _ => None,
        };
        let Some(node) = nodes.get(ino) else {
            return;
        };
        let parent = node.parent;
        if let Some(order) = dir_order(parent) {
            let rest = order.get(node.idx as usize + 1..).unwrap_or(&[]);
            jobs.extend(rest.iter().filter(|c| small(c)).take(FILES_AHEAD));
        }
        if jobs.len() < FILES_AHEAD
            && parent != ROOT
            && let Some(p) = nodes.get(parent)
            && let Some(siblings) = dir_order(p.parent)
        {
            // Two next sibling directories cover the next few leaf directories of a tree.
            let next = siblings.get(p.idx as usize + 1..).unwrap_or(&[]);
            for &sib in next.iter().take(2) {
                if let Some(order) = dir_order(sib) {
                    let room = FILES_AHEAD - jobs.len();
                    jobs.extend(order.iter().filter(|c| small(c)).take(room));
                }
            }
        }
        drop(nodes);
        let jobs: Vec<Job> = jobs.into_iter().map(|ino| Job::File { ino }).collect();
        self.queue.push_front(&jobs);
    }

    /// The preload ended: queue the directory prefetches held back meanwhile, in the order
    /// they were asked for (so the walker's latest directory comes first). Those whose
    /// subtrees the preload merged queue nothing.
    pub(super) fn end_preload(&self) {
        self.preloading
            .store(false, std::sync::atomic::Ordering::Relaxed);
        let deferred =
            std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|p| p.into_inner()));
        for (ino, depth) in deferred {
            self.queue_subdirs(ino, depth);
        }
    }

    /// Queue the subdirectories of `ino` for listing (each `depth - 1` levels further), unless
    /// that was done already for at least this depth since the last refresh (or the preload
    /// found everything below listed: `prefetched_depth` is then `u8::MAX`).
    pub(super) fn queue_subdirs(&self, ino: u64, depth: u8) {
        // The preload is merging what the index has, ahead of the walker: prefetch workers
        // doing the same would only compete with both for the cores. What the walker asked
        // for meanwhile is queued when the preload ends (for what it did not reach).
        if self.preloading.load(std::sync::atomic::Ordering::Relaxed) {
            let mut deferred = self.deferred.lock().unwrap_or_else(|p| p.into_inner());
            if deferred.len() < DEFERRED_CAP {
                deferred.push((ino, depth));
            }
            return;
        }
        // Every lookup comes here: decide under the shared lock, write only when there is work.
        let done = |nodes: &Nodes| {
            !matches!(nodes.get(ino).map(|n| &n.kind),
                Some(NodeKind::Dir(d)) if d.prefetched_depth < depth)
        };
        if self.nodes.read().map_or(true, |n| done(&n)) {
            return;
        }
        let Ok(mut nodes) = self.nodes.write() else {
            return;
        };
        let order = match nodes.get_mut(ino).map(|n| &mut n.kind) {
            Some(NodeKind::Dir(d)) if d.prefetched_depth < depth => {
                d.prefetched_depth = depth;
                d.order.clone()
            }
            _ => return,
        };
        let now = Instant::now();
        let jobs: Vec<Job> = order
            .iter()
            .filter(|&&c| match nodes.get(c).map(|n| &n.kind) {
                Some(NodeKind::Dir(d)) => {
                    d.expires.is_none_or(|e| now >= e) || d.prefetched_depth < depth - 1
                }
                _ => false,
            })
            .map(|&c| Job::Dir {
                ino: c,
                depth: depth - 1,
            })
            .collect();
        drop(nodes);
        self.queue.push_front(&jobs);
    }
}

/// Read a small file whole from one server (background priority), checking it has exactly the
/// listed size.
fn fetch_whole(backend: &dyn Backend, server: usize, path: &[u8], size: u64) -> Result<Vec<u8>> {
    let mut stream = backend.open(server, path, 0, Priority::Background)?;
    let mut data = vec![0u8; size as usize];
    let mut got = 0;
    while got < data.len() {
        let n = stream.read(&mut data[got..])?;
        if n == 0 {
            stream.abort();
            return Err(Error::new(
                Kind::Stale,
                format!("transfer ended at byte {got} of {size} listed"),
            ));
        }
        got += n;
    }
    let mut probe = [0u8; 1];
    if stream.read(&mut probe)? != 0 {
        stream.abort();
        return Err(Error::new(Kind::Stale, "more bytes than listed"));
    }
    stream.finish()?;
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u64) -> Vec<u8> {
        format!("dir/f{n}").into_bytes()
    }

    #[test]
    fn queue_is_a_stack_that_keeps_batch_order() {
        let q = Queue::default();
        q.push_front(&[Job::Dir { ino: 1, depth: 1 }, Job::Dir { ino: 2, depth: 1 }]);
        q.push_front(&[Job::File { ino: 3 }]);
        let got: Vec<_> = (0..3).filter_map(|_| q.pop(Duration::ZERO)).collect();
        assert_eq!(
            got,
            [
                Job::File { ino: 3 },
                Job::Dir { ino: 1, depth: 1 },
                Job::Dir { ino: 2, depth: 1 }
            ]
        );
        assert_eq!(q.pop(Duration::from_millis(1)), None);
    }

    #[test]
    fn file_cache_single_flight_and_bound() {
        let c = FileCache::default();
        assert!(c.begin(&k(7)));
        assert!(!c.begin(&k(7)), "a second load of the same file is refused");
        c.complete(&k(7), Some(vec![1, 2, 3]));
        assert_eq!(c.bytes(), 3);
        assert_eq!(
            c.take(&k(7), Duration::ZERO).unwrap().as_slice(),
            &[1, 2, 3]
        );
        assert_eq!(c.bytes(), 0);
        assert!(c.take(&k(7), Duration::ZERO).is_none());
        // Failed loads are forgotten.
        assert!(c.begin(&k(8)));
        c.complete(&k(8), None);
        assert!(c.take(&k(8), Duration::ZERO).is_none());
        // A full cache refuses new loads (back-pressure on prefetch)...
        for i in 0..4u64 {
            assert!(c.begin(&k(100 + i)));
            c.complete(&k(100 + i), Some(vec![0; FILE_CACHE_BYTES / 4]));
        }
        assert_eq!(c.bytes(), FILE_CACHE_BYTES);
        assert!(!c.begin(&k(200)));
        // ...and a load that overshoots the bound evicts the oldest.
        assert!(c.take(&k(101), Duration::ZERO).is_some());
        assert!(c.begin(&k(201)));
        c.complete(&k(201), Some(vec![0; FILE_CACHE_BYTES / 2]));
        assert!(c.bytes() <= FILE_CACHE_BYTES);
        assert!(c.take(&k(100), Duration::ZERO).is_none(), "oldest evicted");
        assert!(c.take(&k(201), Duration::ZERO).is_some());
    }

    #[test]
    fn waiting_take_sees_a_load_that_completes() {
        let c = Arc::new(FileCache::default());
        assert!(c.begin(&k(1)));
        let c2 = Arc::clone(&c);
        let t = std::thread::spawn(move || c2.take(&k(1), Duration::from_secs(5)));
        std::thread::sleep(Duration::from_millis(20));
        c.complete(&k(1), Some(vec![9]));
        assert_eq!(t.join().unwrap().unwrap().as_slice(), &[9]);
    }
}
