//! The merged view: every server's tree as one read-only tree. Knows nothing of fuser (the
//! adapter in `crate::fuse` turns these results into replies) and nothing of FTP (it talks to a
//! [`Backend`]).
//!
//! Owns: the [`Circle`] type and what it answers directly from the inode table (attributes,
//! lookups, directory entries, symlink targets). Each other job has its own file:
//!
//! | file | owns |
//! |---|---|
//! | [`inodes`] | the inode table: nodes, numbers, `forget` and dropping unreferenced nodes |
//! | [`refresh`] | keeping a directory's merged listing fresh: fetch from all its servers (in parallel, on a bounded pool), merge, apply to the table |
//! | [`merge`] | the merge rules (which copy wins, mirror identity, conflicts, symlink targets) |
//! | [`mirrors`] | copies found different by content, and file hashes |
//! | [`cache`] | the per-(server, directory) listing cache and single-flight fetching |
//! | [`server_set`] | the set of servers holding a node |
//! | [`prefetch`] | what to fetch ahead of a walker (policy), its queue, workers and file cache |
//! | [`preload`] | after a restart, the merged tree built from the listing index ahead of the first walker |
//! | [`handles`] | open files and open directories (`.`/`..`, readdirplus references, EROFS) |
//! | [`reader`] | reading one open file: streaming, failover, read-ahead |
//! | [`choice`] | which copy to read first, by measured speed |
//! | [`segments`] | segmented reads of big files from several copies and connections at once |
//! | [`reaper`] | freeing the connections of open files nobody reads |
//! | [`control`] | the control directory (`.ftpcircle`): status files and each server's own view |
//! | [`provenance`] | the `user.ftpcircle.*` xattrs: servers, mirrors, hidden copies, URL |
//!
//! Invariants:
//! - a name keeps its inode number while it stays listed with the same kind, and for as long
//!   as the kernel holds it; a number is given to another node only after the kernel forgot
//!   it and it left its directory's listing (see [`inodes`]);
//! - a lookup of a name that does not exist is answered from the parent's merged listing,
//!   without a network round trip while the listing is fresh;
//! - `open` does no network work: the size and the servers holding the file are known;
//! - the merged view's locks are never held across network calls.

pub mod cache;
pub mod choice;
pub mod control;
pub mod handles;
pub mod inodes;
pub mod merge;
pub mod mirrors;
pub mod prefetch;
pub mod preload;
pub mod provenance;
pub mod reader;
pub mod reaper;
pub mod refresh;
pub mod segments;
pub mod server_set;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, SystemTime};

use crate::backend::{Backend, Priority};
use crate::error::{Error, Kind, Result};
use crate::workers::Workers;
use cache::ListingCache;
use handles::{DirHandle, READAHEAD_WORKERS};
use inodes::{Node, NodeKind, Nodes};
use prefetch::{FileCache, Queue};
use reader::OpenFile;
use refresh::LIST_WORKERS;
use server_set::ServerSet;

pub const ROOT: u64 = 1;

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
    /// Segmented reads of big files (see [`segments`]).
    pub segments: segments::SegmentOptions,
    /// How long the last known entries of a server that stopped answering stay in the
    /// merged tree, marked offline (see [`refresh`]).
    pub offline_keep: Duration,
    /// Name of the control directory at the mount root (see [`control`]).
    pub control_dir: Vec<u8>,
    /// The persistent listing index (see [`crate::index`]), if any.
    pub index: Option<Arc<crate::index::Index>>,
}

/// A down server's last known entries stay for an hour: long enough to ride out a restart or
/// a network blip without `find` missing files, short enough that a server taken away for good
/// leaves the tree the same day.
pub const DEFAULT_OFFLINE_KEEP: Duration = Duration::from_secs(3600);

pub struct Circle {
    backend: Arc<dyn Backend>,
    opts: Options,
    cache: Arc<ListingCache>,
    /// Runs the listings of one directory on many servers in parallel.
    listers: Workers,
    /// Runs read-ahead of big open files.
    readahead: Arc<Workers>,
    /// Segmented reads: their pool, memory bound and counters.
    segments: Arc<segments::SegmentContext>,
    nodes: RwLock<Nodes>,
    files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    /// Open directories: the directory and its entries (`.` and `..` first) as of opendir.
    dirs: Mutex<HashMap<u64, DirHandle>>,
    next_fh: AtomicU64,
    mounted_at: SystemTime,
    conflicts_logged: Mutex<HashSet<Vec<u8>>>,
    /// Copies found different by content, and file hashes (see [`mirrors`]).
    mirrors: Arc<mirrors::Mirrors>,
    /// Where names the kernel holds that left their listing are sent (see [`inodes`]).
    gone: Mutex<Option<inodes::GoneSender>>,
    queue: Arc<Queue>,
    prefetched: FileCache,
    /// Revalidates directories served from stale index listings (see [`refresh`]).
    revalidators: Workers,
    revalidating: Mutex<HashSet<u64>>,
    /// The preload is building the tree from the index: it is the prefetch meanwhile (see
    /// [`preload`]).
    preloading: AtomicBool,
    /// Directory prefetches asked for while the preload ran, queued when it ends.
    deferred: Mutex<Vec<(u64, u8)>>,
    /// Itself, for background jobs (set by [`Circle::start_revalidation`]).
    me: OnceLock<Weak<Circle>>,
    /// The copies each directory's last merge hid, by directory (see [`provenance`]).
    hidden: Mutex<HashMap<u64, Vec<merge::Conflict>>>,
    /// Open generated files (the status files): the snapshot each open read.
    generated: Mutex<HashMap<u64, Arc<[u8]>>>,
    /// Servers that gave a listing since the mount started (the others have nothing known).
    listed: Mutex<ServerSet>,
    /// The name of each server's view (see [`control`]).
    view_names: Vec<Vec<u8>>,
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
        let mut nodes = Nodes::new();
        let root = nodes.push(Node {
            parent: ROOT,
            name: Box::from(&b""[..]),
            kind: NodeKind::Dir(Box::default()),
            size: 0,
            mtime: now,
            sources: ServerSet::all(backend.servers()),
            idx: 0,
            opened: false,
            lookups: AtomicU32::new(0),
        });
        debug_assert_eq!(root, ROOT);
        let view_names = control::view_names(backend.as_ref());
        control::build(&mut nodes, &opts.control_dir, &view_names, now);
        Circle {
            cache: Arc::new(ListingCache::new(
                opts.ttl,
                opts.cache_entries,
                opts.max_wait,
                opts.index.clone(),
            )),
            revalidators: Workers::new("ftpc-revalidate", refresh::REVALIDATE_WORKERS),
            revalidating: Mutex::default(),
            preloading: AtomicBool::new(false),
            deferred: Mutex::default(),
            me: OnceLock::new(),

            listers: Workers::new("ftpc-list", LIST_WORKERS),
            readahead: Arc::new(Workers::new("ftpc-readahead", READAHEAD_WORKERS)),
            segments: Arc::new(segments::SegmentContext::new(opts.segments)),
            backend,
            opts,
            nodes: RwLock::new(nodes),
            files: Mutex::new(HashMap::new()),
            dirs: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            mounted_at: now,
            conflicts_logged: Mutex::new(HashSet::new()),
            mirrors: Arc::default(),
            gone: Mutex::new(None),
            queue: Arc::new(Queue::default()),
            prefetched: FileCache::default(),
            hidden: Mutex::new(HashMap::new()),
            generated: Mutex::new(HashMap::new()),
            listed: Mutex::new(ServerSet::default()),
            view_names,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.opts.ttl
    }

    /// What segmented reads did so far.
    pub fn segment_stats(&self) -> segments::SegmentStats {
        self.segments.stats()
    }

    /// Listing commands sent so far (all servers).
    pub fn listing_fetches(&self) -> u64 {
        self.cache.fetches()
    }

    pub fn getattr(&self, ino: u64) -> Result<Attr> {
        let nodes = self.nodes.read().map_err(|_| lock_err())?;
        let node = nodes.get(ino).ok_or_else(Error::not_found)?;
        Ok(self.attr_of(ino, node))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> Result<Attr> {
        let control = parent == ROOT && name == self.opts.control_dir.as_slice();
        if !control {
            self.refresh(parent, Priority::Foreground, prefetch::DIR_DEPTH)?;
        }
        let nodes = self.nodes.read().map_err(|_| lock_err())?;
        let ino = match &nodes.get(parent).ok_or_else(Error::not_found)?.kind {
            // Reachable by name, in no listing (see [`control`]).
            _ if control => control::CONTROL,
            NodeKind::Dir(d) => nodes.child(d, name).ok_or_else(Error::not_found)?,
            _ => return Err(Error::new(Kind::NotDir, "not a directory")),
        };
        let node = nodes.get(ino).ok_or_else(Error::not_found)?;
        // The adapter hands this to the kernel, which holds it until it sends `forget`.
        node.lookups.fetch_add(1, Ordering::Relaxed);
        Ok(self.attr_of(ino, node))
    }

    /// All entries of a directory (without `.` and `..`), sorted by name.
    pub fn readdir(&self, ino: u64) -> Result<Vec<DirEntry>> {
        self.refresh(ino, Priority::Foreground, prefetch::DIR_DEPTH)?;
        let nodes = self.nodes.read().map_err(|_| lock_err())?;
        let NodeKind::Dir(d) = &nodes.get(ino).ok_or_else(Error::not_found)?.kind else {
            return Err(Error::new(Kind::NotDir, "not a directory"));
        };
        // A real entry of the control directory's name is shown in its server's view only.
        let hide: &[u8] = if ino == ROOT {
            &self.opts.control_dir
        } else {
            b""
        };
        Ok(d.order
            .iter()
            .filter_map(|&child| {
                let node = nodes.get(child)?;
                if *node.name == *hide {
                    return None;
                }
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

    /// Number of inodes in the table (live nodes and ones the kernel still holds), the root
    /// counted but not the control tree.
    pub fn inode_count(&self) -> u64 {
        self.nodes
            .read()
            .map(|n| n.len_unpinned() as u64 + 1)
            .unwrap_or(0)
    }

    /// The merged tree known so far (for statfs): entries still listed in their directory
    /// (the root included) and the total size of the files among them.
    pub fn tree_totals(&self) -> (u64, u64) {
        self.nodes.read().map(|n| n.totals()).unwrap_or((0, 0))
    }

    fn attr_of(&self, ino: u64, node: &Node) -> Attr {
        let (kind, perm, nlink, size) = match &node.kind {
            NodeKind::Dir(_) => (FileKind::Dir, 0o555, 2, 0),
            NodeKind::File if control::is_generated(ino) => {
                (FileKind::File, 0o444, 1, self.generated(ino).len() as u64)
            }
            NodeKind::File => (FileKind::File, 0o444, 1, node.size),
            NodeKind::Symlink(t) => (FileKind::Symlink, 0o777, 1, t.len() as u64),
        };
        Attr {
            ino,
            kind,
            size,
            mtime: if control::is_generated(ino) {
                SystemTime::now()
            } else {
                node.mtime
            },
            perm,
            nlink,
        }
    }
}

#[cfg(test)]
mod tests;
