//! The merged view: every server's tree as one read-only tree. Knows nothing of fuser (the
//! adapter in `crate::fuse` turns these results into replies) and nothing of FTP (it talks to a
//! [`Backend`]).
//!
//! Owns: the inode table, directory refresh (the listings of one directory are fetched from all
//! servers that have it, in parallel, through the [`ListingCache`]), the merge (see
//! [`merge`] for the rules), attributes, and open files.
//!
//! Invariants:
//! - inode numbers are allocated on first discovery and never reused: a name keeps its inode
//!   for the life of the mount while it stays listed with the same kind (a name that changes
//!   kind, or disappears from its directory and comes back later, gets a new one);
//! - a lookup of a name that does not exist is answered from the parent's merged listing,
//!   without a network round trip while the listing is fresh;
//! - `open` does no network work: the size and the servers holding the file are known.

pub mod cache;
pub mod merge;
pub mod prefetch;
pub mod reader;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use crate::backend::{Backend, Priority};
use crate::error::{Error, Kind, Result};
use cache::ListingCache;
use merge::{Merged, MergedKind};
use prefetch::{FileCache, Job, Queue};
use reader::{Data, OpenFile};

pub const ROOT: u64 = 1;

/// An open file whose transfer nobody read for this long gives its connection back: long
/// enough for any program reading steadily (even `less` paging), short enough that a few idle
/// open files don't keep a server's 4 connections from listings and other reads.
const IDLE_TRANSFER: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Dir,
    File,
    Symlink,
}

/// Attributes as the filesystem reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: FileKind,
    pub size: u64,
    pub mtime: SystemTime,
    pub perm: u16,
    pub nlink: u32,
}

#[derive(Clone, Debug)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub attr: Attr,
}

pub struct Options {
    /// How long listings (and so attributes) are trusted.
    pub ttl: Duration,
    /// Bound on directory entries held by the per-server listing cache.
    pub cache_entries: usize,
    /// Upper bound for waiting on a listing another request is fetching.
    pub max_wait: Duration,
    /// Fetch listings and small files ahead of the walker (see [`prefetch`]).
    pub prefetch: bool,
}

/// At most this many servers: a node's sources are a bit set in one u64.
pub const MAX_SERVERS: usize = 64;

/// The servers holding a node, as a bit set (bit i = server i). Iterating yields ascending
/// server indexes, which is priority order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Sources(u64);

impl Sources {
    fn from_list(list: &[usize]) -> Self {
        Sources(
            list.iter()
                .filter(|&&s| s < MAX_SERVERS)
                .fold(0, |acc, &s| acc | 1 << s),
        )
    }

    fn all(n: usize) -> Self {
        Sources(if n >= MAX_SERVERS {
            u64::MAX
        } else {
            (1u64 << n) - 1
        })
    }

    fn insert(&mut self, s: usize) {
        if s < MAX_SERVERS {
            self.0 |= 1 << s;
        }
    }

    fn iter(self) -> impl Iterator<Item = usize> {
        (0..MAX_SERVERS).filter(move |&s| self.0 & (1 << s) != 0)
    }

    fn first(self) -> Option<usize> {
        (self.0 != 0).then(|| self.0.trailing_zeros() as usize)
    }
}

enum NodeKind {
    Dir(Box<DirData>),
    File,
    Symlink(Box<[u8]>),
}

#[derive(Default)]
struct DirData {
    /// The children's inodes sorted by name: the order readdir (and so `find`/`grep -r`) uses,
    /// and the index for lookups (binary search on the names).
    order: Box<[u64]>,
    /// When the merged listing must be refreshed; `None` until it was first listed.
    expires: Option<Instant>,
    /// How many levels below this directory have been queued for prefetch already.
    prefetched_depth: u8,
}

struct Node {
    parent: u64,
    name: Box<[u8]>,
    kind: NodeKind,
    size: u64,
    mtime: SystemTime,
    /// Servers holding it (see `merge::Merged::sources`).
    sources: Sources,
    /// Position in the parent's `order`.
    idx: u32,
    /// Opened since it was last listed with another size or mtime: the kernel keeps its pages
    /// (FOPEN_KEEP_CACHE), so prefetching it again would be wasted.
    opened: bool,
}

/// The inode table: inode `i` is `list[i - 1]`. Inodes are never reused, so a node that left
/// its directory stays here (the kernel may still refer to it) until unmount.
struct Nodes {
    list: Vec<Node>,
}

impl Nodes {
    fn get(&self, ino: u64) -> Option<&Node> {
        self.list.get((ino as usize).checked_sub(1)?)
    }

    fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.list.get_mut((ino as usize).checked_sub(1)?)
    }

    fn push(&mut self, node: Node) -> u64 {
        self.list.push(node);
        self.list.len() as u64
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    /// The child of `dir` called `name`, by binary search of its name-sorted order.
    fn child(&self, dir: &DirData, name: &[u8]) -> Option<u64> {
        let i = dir
            .order
            .binary_search_by(|&c| self.get(c).map_or(&[][..], |n| &n.name[..]).cmp(name))
            .ok()?;
        dir.order.get(i).copied()
    }
}

pub struct Circle {
    backend: Arc<dyn Backend>,
    opts: Options,
    cache: ListingCache,
    nodes: RwLock<Nodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    next_fh: AtomicU64,
    mounted_at: SystemTime,
    conflicts_logged: Mutex<HashSet<Vec<u8>>>,
    queue: Arc<Queue>,
    prefetched: FileCache,
}

fn lock_err() -> Error {
    Error::new(Kind::Protocol, "internal lock poisoned")
}

impl Circle {
    pub fn new(backend: Arc<dyn Backend>, mut opts: Options) -> Self {
        // Without a cache, whatever prefetch fetched would be stale before anyone asked for it.
        if opts.ttl.is_zero() {
            opts.prefetch = false;
        }
        let now = SystemTime::now();
        let mut nodes = Nodes { list: Vec::new() };
        let root = nodes.push(Node {
            parent: ROOT,
            name: Box::from(&b""[..]),
            kind: NodeKind::Dir(Box::default()),
            size: 0,
            mtime: now,
            sources: Sources::all(backend.servers()),
            idx: 0,
            opened: false,
        });
        debug_assert_eq!(root, ROOT);
        Circle {
            cache: ListingCache::new(opts.ttl, opts.cache_entries, opts.max_wait),
            backend,
            opts,
            nodes: RwLock::new(nodes),
            files: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mounted_at: now,
            conflicts_logged: Mutex::new(HashSet::new()),
            queue: Arc::new(Queue::default()),
            prefetched: FileCache::default(),
        }
    }

    /// Start the thread that frees the connections of open files nobody reads (see
    /// [`reader::OpenFile::reap_if_idle`]). It ends within a second of the circle going away.
    pub fn start_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let spawned = std::thread::Builder::new()
            .name("ftpc-reaper".into())
            .spawn(move || {
                while let Some(circle) = weak.upgrade() {
                    let files: Vec<Arc<OpenFile>> = circle
                        .files
                        .lock()
                        .map(|f| f.values().cloned().collect())
                        .unwrap_or_default();
                    drop(circle);
                    for f in files {
                        if f.reap_if_idle(IDLE_TRANSFER) {
                            log::debug!("freed the connection of an idle open file");
                        }
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the idle-transfer reaper: {e}");
        }
    }

    /// Start `workers` prefetch threads (none if prefetch is off). They end within a second
    /// of the last reference to the circle going away.
    pub fn start_prefetch(self: &Arc<Self>, workers: usize) {
        if !self.opts.prefetch {
            return;
        }
        for _ in 0..workers {
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

    fn run_job(&self, job: Job) {
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
    fn prefetch_file(&self, ino: u64) {
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
        if size > prefetch::SMALL_FILE_MAX || !self.prefetched.begin(ino) {
            return;
        }
        let mut data = None;
        for s in sources {
            match fetch_whole(self.backend.as_ref(), s, &path, size) {
                Ok(d) => {
                    data = Some(d);
                    break;
                }
                Err(e) => log::debug!("prefetch of /{}: {e}", String::from_utf8_lossy(&path)),
            }
        }
        self.prefetched.complete(ino, data);
    }

    /// Queue the small files the walker will open after `ino`: the rest of its directory in
    /// name order, then the files of the next sibling directories already listed.
    fn queue_files_after(&self, ino: u64) {
        let Ok(nodes) = self.nodes.read() else {
            return;
        };
        let mut jobs = Vec::new();
        let small = |c: &u64| {
            nodes.get(*c).is_some_and(|n| {
                matches!(n.kind, NodeKind::File) && n.size <= prefetch::SMALL_FILE_MAX && !n.opened
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
            jobs.extend(rest.iter().filter(|c| small(c)).take(prefetch::FILES_AHEAD));
        }
        if jobs.len() < prefetch::FILES_AHEAD
            && parent != ROOT
            && let Some(p) = nodes.get(parent)
            && let Some(siblings) = dir_order(p.parent)
        {
            // Two next sibling directories cover the next few leaf directories of a tree.
            let next = siblings.get(p.idx as usize + 1..).unwrap_or(&[]);
            for &sib in next.iter().take(2) {
                if let Some(order) = dir_order(sib) {
                    let room = prefetch::FILES_AHEAD - jobs.len();
                    jobs.extend(order.iter().filter(|c| small(c)).take(room));
                }
            }
        }
        drop(nodes);
        let jobs: Vec<Job> = jobs.into_iter().map(|ino| Job::File { ino }).collect();
        self.queue.push_front(&jobs);
    }

    fn file_info(&self, ino: u64) -> Result<(Vec<u8>, u64, Vec<usize>)> {
        let nodes = self.nodes.read().map_err(|_| lock_err())?;
        let node = nodes.get(ino).ok_or_else(Error::not_found)?;
        match node.kind {
            NodeKind::File => {}
            NodeKind::Dir(_) => return Err(Error::new(Kind::Invalid, "is a directory")),
            NodeKind::Symlink(_) => return Err(Error::new(Kind::Invalid, "is a symlink")),
        }
        let sources = node.sources.iter().collect();
        Ok((Self::path_of(&nodes, ino), node.size, sources))
    }

    pub fn ttl(&self) -> Duration {
        self.opts.ttl
    }

    /// Listing commands sent so far (all servers).
    pub fn listing_fetches(&self) -> u64 {
        self.cache.fetches()
    }

    /// Fetch the root listing of every server (in parallel, through the cache) and return the
    /// errors of those that failed, so startup can name them.
    pub fn check_servers(&self) -> Vec<Error> {
        let all = Sources::all(self.backend.servers());
        self.fetch_all(all, b"", Priority::Foreground)
            .into_iter()
            .filter_map(|(_, f)| f.result.as_ref().err().cloned())
            .collect()
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let nodes = self.nodes.read().map_err(|_| lock_err())?;
        let node = nodes.get(ino).ok_or_else(Error::not_found)?;
        Ok(self.attr_of(ino, node))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        self.refresh(parent, Priority::Foreground, prefetch::DIR_DEPTH)?;
        let nodes = self.nodes.read().map_err(|_| lock_err())?;
        let ino = match &nodes.get(parent).ok_or_else(Error::not_found)?.kind {
            NodeKind::Dir(d) => nodes.child(d, name).ok_or_else(Error::not_found)?,
            _ => return Err(Error::new(Kind::NotFound, "not a directory")),
        };
        let node = nodes.get(ino).ok_or_else(Error::not_found)?;
        Ok(self.attr_of(ino, node))
    }

    /// All entries of a directory (without `.` and `..`), sorted by name.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        self.refresh(ino, Priority::Foreground, prefetch::DIR_DEPTH)?;
        let nodes = self.nodes.read().map_err(|_| lock_err())?;
        let NodeKind::Dir(d) = &nodes.get(ino).ok_or_else(Error::not_found)?.kind else {
            return Err(Error::new(Kind::Invalid, "not a directory"));
        };
        Ok(d.order
            .iter()
            .filter_map(|&child| {
                let node = nodes.get(child)?;
                Some(DirEntry {
                    name: node.name.to_vec(),
                    attr: self.attr_of(child, node),
                })
            })
            .collect())
    }

    pub fn parent_of(&self, ino: u64) -> u64 {
        self.nodes
            .read()
            .ok()
            .and_then(|n| n.get(ino).map(|node| node.parent))
            .unwrap_or(ROOT)
    }

    pub fn readlink(&self, ino: u64) -> Result<Vec<u8>> {
        let nodes = self.nodes.read().map_err(|_| lock_err())?;
        match &nodes.get(ino).ok_or_else(Error::not_found)?.kind {
            NodeKind::Symlink(t) => Ok(t.to_vec()),
            _ => Err(Error::new(Kind::Invalid, "not a symlink")),
        }
    }

    /// Open a file for reading; no network round trip (at most a wait for a prefetch of this
    /// very file that is on its way). Returns the file handle, and whether the file was opened
    /// before with the same size and mtime (so pages the kernel cached then are still right).
    pub fn open(&self, ino: u64) -> Result<(u64, bool)> {
        let (path, size, sources) = self.file_info(ino)?;
        let mut keep_cache = false;
        if let Ok(mut nodes) = self.nodes.write()
            && let Some(n) = nodes.get_mut(ino)
        {
            keep_cache = n.opened;
            n.opened = true;
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let file = OpenFile::new(
            Arc::clone(&self.backend),
            ino,
            path,
            size,
            sources,
            self.opts.max_wait,
        );
        if self.opts.prefetch && size <= prefetch::SMALL_FILE_MAX {
            if let Some(data) = self.prefetched.take(ino, self.opts.max_wait)
                && data.len() as u64 == size
            {
                file.seed(Arc::unwrap_or_clone(data));
            }
            self.queue_files_after(ino);
        }
        self.files
            .lock()
            .map_err(|_| lock_err())?
            .insert(fh, Arc::new(file));
        Ok((fh, keep_cache))
    }

    pub fn read(&self, fh: u64, off: u64, len: usize) -> Result<Data> {
        let file = self
            .files
            .lock()
            .map_err(|_| lock_err())?
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::new(Kind::Invalid, "bad file handle"))?;
        let res = file.read(off, len);
        if let Err(e) = &res
            && matches!(e.kind, Kind::Stale | Kind::Unavailable | Kind::Protocol)
        {
            // The file may have changed on the server: list its directory again next time.
            self.invalidate_parent(file.ino, file.path());
        }
        res
    }

    /// Forget the merged and per-server listings of the directory holding `ino`.
    fn invalidate_parent(&self, ino: u64, path: &[u8]) {
        let dir_path = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => &path[..i],
            None => &b""[..],
        };
        let Ok(mut nodes) = self.nodes.write() else {
            return;
        };
        let parent = nodes.get(ino).map_or(ROOT, |n| n.parent);
        let servers = match nodes.get_mut(parent) {
            Some(Node {
                kind: NodeKind::Dir(d),
                sources,
                ..
            }) => {
                d.expires = None;
                *sources
            }
            _ => return,
        };
        drop(nodes);
        for s in servers.iter() {
            self.cache.invalidate(s, dir_path);
        }
    }

    pub fn release(&self, fh: u64) {
        let file = self.files.lock().ok().and_then(|mut f| f.remove(&fh));
        if let Some(file) = file {
            file.close();
        }
    }

    /// Number of known inodes (for statfs).
    pub fn inode_count(&self) -> u64 {
        self.nodes.read().map(|n| n.len() as u64).unwrap_or(0)
    }

    fn attr_of(&self, ino: u64, node: &Node) -> Attr {
        let (kind, perm, nlink, size) = match &node.kind {
            NodeKind::Dir(_) => (FileKind::Dir, 0o555, 2, 0),
            NodeKind::File => (FileKind::File, 0o444, 1, node.size),
            NodeKind::Symlink(t) => (FileKind::Symlink, 0o777, 1, t.len() as u64),
        };
        Attr {
            ino,
            kind,
            size,
            mtime: node.mtime,
            perm,
            nlink,
        }
    }

    /// The node's path relative to the servers' roots ("" for the root).
    fn path_of(nodes: &Nodes, mut ino: u64) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        // Bounded by the tree depth; a malformed parent chain stops at the first missing node.
        for _ in 0..4096 {
            if ino == ROOT {
                break;
            }
            let Some(node) = nodes.get(ino) else {
                break;
            };
            parts.push(&node.name);
            ino = node.parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }

    /// Make sure the merged listing of directory `ino` is fresh, fetching if needed, then
    /// queue prefetch of `depth` levels of subdirectories below it.
    fn refresh(&self, ino: u64, prio: Priority, depth: u8) -> Result<()> {
        self.refresh_dir(ino, prio)?;
        if self.opts.prefetch && depth > 0 {
            self.queue_subdirs(ino, depth);
        }
        Ok(())
    }

    /// Queue the subdirectories of `ino` for listing (each `depth - 1` levels further), unless
    /// that was done already for at least this depth since the last refresh.
    fn queue_subdirs(&self, ino: u64, depth: u8) {
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

    /// Make sure the merged listing of directory `ino` is fresh, fetching if needed.
    fn refresh_dir(&self, ino: u64, prio: Priority) -> Result<()> {
        let (path, servers) = {
            let nodes = self.nodes.read().map_err(|_| lock_err())?;
            let node = nodes.get(ino).ok_or_else(Error::not_found)?;
            let NodeKind::Dir(d) = &node.kind else {
                return Err(Error::new(Kind::NotFound, "not a directory"));
            };
            if d.expires.is_some_and(|e| Instant::now() < e) {
                return Ok(());
            }
            (Self::path_of(&nodes, ino), node.sources)
        };
        let fetched = self.fetch_all(servers, &path, prio);
        let mut ok = Vec::new();
        let mut first_err = None;
        let mut failed = Sources::default();
        for (server, f) in &fetched {
            match &f.result {
                Ok(entries) => ok.push((*server, &entries[..])),
                // The directory went away on that server: it contributes nothing.
                Err(e) if e.kind == Kind::NotFound => ok.push((*server, &[][..])),
                Err(e) => {
                    log::warn!("{e}");
                    failed.insert(*server);
                    first_err.get_or_insert_with(|| e.clone());
                }
            }
        }
        if ok.is_empty()
            && let Some(e) = first_err.clone()
        {
            // No server answered for the root before any ever did: the mount is simply empty
            // until one does (`ls` shows nothing rather than EIO); retried on the next access.
            if ino == ROOT && self.dir_is_empty(ROOT) {
                return Ok(());
            }
            return Err(e);
        }
        let (merged, conflicts) = merge::merge(&ok);
        self.log_conflicts(&path, &conflicts);
        let expires = Instant::now()
            + if first_err.is_some() {
                self.opts.ttl.min(cache::ERROR_TTL)
            } else {
                self.opts.ttl
            };
        self.apply(ino, &path, merged, failed, expires)
    }

    fn dir_is_empty(&self, ino: u64) -> bool {
        self.nodes.read().is_ok_and(|nodes| {
            matches!(nodes.get(ino).map(|n| &n.kind), Some(NodeKind::Dir(d)) if d.order.is_empty())
        })
    }

    /// Fetch the listing of `path` from each server, in parallel when more than one must go to
    /// the network. Results are in the order of `servers` (priority order).
    fn fetch_all(
        &self,
        servers: Sources,
        path: &[u8],
        prio: Priority,
    ) -> Vec<(usize, Arc<cache::Fetched>)> {
        let backend = self.backend.as_ref();
        let missing = servers
            .iter()
            .filter(|&s| self.cache.fresh(&(s, path.into())).is_none())
            .count();
        if missing <= 1 {
            return servers
                .iter()
                .map(|s| (s, self.cache.get(backend, s, path, prio)))
                .collect();
        }
        std::thread::scope(|scope| {
            let handles: Vec<_> = servers
                .iter()
                .map(|s| {
                    (
                        s,
                        scope.spawn(move || self.cache.get(backend, s, path, prio)),
                    )
                })
                .collect();
            handles
                .into_iter()
                .map(|(s, h)| {
                    let f = h.join().unwrap_or_else(|_| {
                        Arc::new(cache::Fetched {
                            at: Instant::now(),
                            result: Err(Error::new(Kind::Protocol, "listing thread panicked")),
                        })
                    });
                    (s, f)
                })
                .collect()
        })
    }

    fn log_conflicts(&self, path: &[u8], conflicts: &[merge::Conflict]) {
        if conflicts.is_empty() {
            return;
        }
        let Ok(mut logged) = self.conflicts_logged.lock() else {
            return;
        };
        for c in conflicts {
            let mut full = path.to_vec();
            if !full.is_empty() {
                full.push(b'/');
            }
            full.extend_from_slice(&c.name);
            if logged.insert(full.clone()) {
                log::info!(
                    "conflict at /{}: {}; keeping the copy on {} (listed first), hiding the one on {}",
                    String::from_utf8_lossy(&full),
                    c.why,
                    self.backend.label(c.kept),
                    self.backend.label(c.hidden)
                );
            }
        }
    }

    /// Replace the children of `dir` with `merged`, keeping inode numbers of names that stay.
    /// `failed`: servers whose listing of `dir` failed this time. A child that stays keeps them
    /// among its sources, so its own next refresh asks them again rather than settling for a
    /// listing without them for a whole TTL.
    fn apply(
        &self,
        dir: u64,
        path: &[u8],
        merged: Vec<Merged>,
        failed: Sources,
        expires: Instant,
    ) -> Result<()> {
        let mut nodes = self.nodes.write().map_err(|_| lock_err())?;
        let old_order = match nodes.get_mut(dir).map(|n| &mut n.kind) {
            Some(NodeKind::Dir(d)) => std::mem::take(&mut d.order),
            _ => return Err(Error::not_found()),
        };
        // Names that stay keep their inode (if their kind is unchanged).
        let names: Vec<(Box<[u8]>, u64)> = old_order
            .iter()
            .filter_map(|&c| nodes.get(c).map(|n| (n.name.clone(), c)))
            .collect();
        let old: HashMap<&[u8], u64> = names.iter().map(|(n, c)| (&n[..], *c)).collect();
        let mut order = Vec::with_capacity(merged.len());
        // `merged` is sorted by name, so `order` is too.
        for (idx, m) in merged.into_iter().enumerate() {
            let idx = idx as u32;
            let sources = Sources::from_list(&m.sources);
            let mtime = m.mtime.unwrap_or(self.mounted_at);
            let kind = match m.kind {
                MergedKind::Dir => NodeKind::Dir(Box::default()),
                MergedKind::File => NodeKind::File,
                MergedKind::Symlink(t) => {
                    let base = self.backend.base(sources.first().unwrap_or(0));
                    NodeKind::Symlink(merge::rewrite_target(base, path, &t).into())
                }
            };
            let existing = old.get(m.name.as_slice()).copied().filter(|&ino| {
                nodes.get(ino).is_some_and(|n| {
                    std::mem::discriminant(&n.kind) == std::mem::discriminant(&kind)
                })
            });
            let ino = match existing.and_then(|ino| nodes.get_mut(ino).map(|n| (ino, n))) {
                Some((ino, n)) => {
                    if n.size != m.size || n.mtime != mtime {
                        n.opened = false;
                    }
                    n.size = m.size;
                    n.mtime = mtime;
                    n.sources = if matches!(n.kind, NodeKind::Dir(_)) {
                        Sources(sources.0 | (n.sources.0 & failed.0))
                    } else {
                        sources
                    };
                    n.idx = idx;
                    // A directory keeps its own children and expiry.
                    if !matches!(n.kind, NodeKind::Dir(_)) {
                        n.kind = kind;
                    }
                    ino
                }
                None => nodes.push(Node {
                    parent: dir,
                    name: m.name.into(),
                    kind,
                    size: m.size,
                    mtime,
                    sources,
                    idx,
                    opened: false,
                }),
            };
            order.push(ino);
        }
        if let Some(NodeKind::Dir(d)) = nodes.get_mut(dir).map(|n| &mut n.kind) {
            d.order = order.into();
            d.expires = Some(expires);
            d.prefetched_depth = 0;
        }
        Ok(())
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
mod tests;
