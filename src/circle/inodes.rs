//! The inode table: every node the merged view knows (directories, files, symlinks), by inode
//! number, with its name, parent, attributes and the servers holding it.
//!
//! Owns: inode numbers, the nodes, and dropping them. The kernel holds a reference for every
//! lookup reply (and readdirplus entry) until it sends `forget`; a node whose count is zero
//! and that is no longer in its directory's merged listing (a name that went away, or changed
//! kind) is dropped with whatever hangs below it, unless the kernel still holds any of that.
//!
//! The kernel keeps a name it once looked up until memory is short, even after the name went
//! away on the server (it asks again only when that very name is used). So when a name the
//! kernel holds leaves a listing, the adapter is told ([`Circle::watch_gone`]) and invalidates
//! the kernel's entry; the kernel then forgets the inode and the node can go.
//!
//! Invariants:
//! - a number stays with its node while the kernel holds it or the node is listed; it is given
//!   to a new node only after both ended (so the kernel never sees two nodes under one number);
//! - a node's parent exists while the node does (a subtree goes as a whole);
//! - memory is bounded by the current merged listings plus what the kernel holds: a mount
//!   whose servers keep renaming directories does not grow;
//! - reference counts change under the table's shared lock (atomics); nodes are dropped only
//!   under its exclusive lock, after checking the counts.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Instant, SystemTime};

use super::server_set::ServerSet;
use super::{Circle, ROOT};

/// What a node is; a directory carries its merged listing.
pub(super) enum NodeKind {
    Dir(Box<DirData>),
    File,
    Symlink(Box<[u8]>),
}

#[derive(Default)]
pub(super) struct DirData {
    /// The children's inodes sorted by name: the order readdir (and so `find`/`grep -r`) uses,
    /// and the index for lookups (binary search on the names).
    pub(super) order: Box<[u64]>,
    /// When the merged listing must be refreshed; `None` until it was first listed.
    pub(super) expires: Option<Instant>,
    /// How many levels below this directory have been queued for prefetch already
    /// ([`u8::MAX`]: everything below is listed, see [`super::preload`]).
    pub(super) prefetched_depth: u8,
    /// Merged from index listings older than the TTL by the preload, not visited since: the
    /// first visit queues its revalidation (see [`super::refresh`]).
    pub(super) revalidate_on_visit: AtomicBool,
    /// A merged directory, a directory of the control tree, or the root of a server's view.
    pub(super) role: DirRole,
}

/// What a directory node stands for (see [`super::control`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum DirRole {
    /// A directory of the tree: its children come from its servers' listings.
    #[default]
    Listed,
    /// A directory of the control tree: fixed children, never listed on a server.
    Control,
    /// The root of one server's own tree (`.ftpcircle/servers/<name>`): paths below it are
    /// relative to it, and its only source is that server.
    ViewRoot,
}

pub(super) struct Node {
    pub(super) parent: u64,
    pub(super) name: Box<[u8]>,
    pub(super) kind: NodeKind,
    pub(super) size: u64,
    pub(super) mtime: SystemTime,
    /// Servers holding it (see `merge::Merged::sources`).
    pub(super) sources: ServerSet,
    /// Position in the parent's `order`.
    pub(super) idx: u32,
    /// Opened since it was last listed with another size or mtime: the kernel keeps its pages
    /// (FOPEN_KEEP_CACHE), so prefetching it again would be wasted.
    pub(super) opened: bool,
    /// References the kernel holds (lookup replies not yet forgotten). Counted under the
    /// table's shared lock, checked under its exclusive one before the node is dropped.
    pub(super) lookups: AtomicU32,
}

/// Names waiting to be invalidated in the kernel: 4096 (about 100 KiB) covers a directory
/// tree replaced under a walker; beyond that the kernel keeps stale names until memory is short.
pub const GONE_QUEUE: usize = 4096;

/// Sends (directory, name) of names to invalidate in the kernel.
pub(super) type GoneSender = SyncSender<(u64, Vec<u8>)>;

/// Bound on the parent chain walked from a node (deeper trees are cut there).
pub(super) const MAX_DEPTH: usize = 4096;

/// The inode table: inode `i` is `list[i - 1]`; `None` is a free slot (listed in `free`).
/// A node is dropped when the kernel holds no reference to it or anything below it and it is
/// not in its parent's current listing; its number may then be given to a new node (the
/// kernel forgot it, so nothing can confuse the two).
pub(super) struct Nodes {
    list: Vec<Option<Node>>,
    free: Vec<u64>,
    live: usize,
    /// Inodes `1..=pinned` (the root and the control tree) are never dropped and count as
    /// listed, though the control directory is in no listing.
    pinned: u64,
}

impl Nodes {
    pub(super) fn new() -> Self {
        Nodes {
            list: Vec::new(),
            free: Vec::new(),
            live: 0,
            pinned: ROOT,
        }
    }

    /// Pin every node pushed so far (the root and the control tree).
    pub(super) fn pin_all(&mut self) {
        self.pinned = self.list.len() as u64;
    }

    pub(super) fn is_pinned(&self, ino: u64) -> bool {
        ino <= self.pinned
    }

    pub(super) fn get(&self, ino: u64) -> Option<&Node> {
        self.list.get((ino as usize).checked_sub(1)?)?.as_ref()
    }

    pub(super) fn get_mut(&mut self, ino: u64) -> Option<&mut Node> {
        self.list.get_mut((ino as usize).checked_sub(1)?)?.as_mut()
    }

    pub(super) fn push(&mut self, node: Node) -> u64 {
        self.live += 1;
        if let Some(ino) = self.free.pop()
            && let Some(slot) = self.list.get_mut(ino as usize - 1)
        {
            *slot = Some(node);
            return ino;
        }
        self.list.push(Some(node));
        self.list.len() as u64
    }

    /// Nodes that are not pinned (the root and the control tree are).
    pub(super) fn len_unpinned(&self) -> usize {
        self.live.saturating_sub(self.pinned as usize)
    }

    /// The child of `dir` called `name`, by binary search of its name-sorted order.
    pub(super) fn child(&self, dir: &DirData, name: &[u8]) -> Option<u64> {
        let i = dir
            .order
            .binary_search_by(|&c| self.get(c).map_or(&[][..], |n| &n.name[..]).cmp(name))
            .ok()?;
        dir.order.get(i).copied()
    }

    /// The root and every node still in its parent's current listing: how many, and the
    /// total size of the files among them (for statfs).
    pub(super) fn totals(&self) -> (u64, u64) {
        // Whether a node is in the merged tree: listed in its directory, and its directory is
        // too, up to the root. The control directory and the per-server views below it are
        // pinned nodes, so nothing under them counts. Memoised: one pass, whatever the depth.
        let mut merged: Vec<Option<bool>> = vec![None; self.list.len()];
        let mut chain = Vec::new();
        let (mut entries, mut bytes) = (0u64, 0u64);
        for i in 0..self.list.len() {
            let ino = i as u64 + 1;
            let Some(node) = self.get(ino) else { continue };
            let mut cur = ino;
            let known = loop {
                if let Some(k) = merged[cur as usize - 1] {
                    break k;
                }
                if cur == super::ROOT {
                    break true;
                }
                if self.is_pinned(cur) || !self.is_listed(cur) || chain.len() > self.list.len() {
                    break false;
                }
                chain.push(cur);
                cur = self.get(cur).map_or(super::ROOT, |n| n.parent);
            };
            for c in chain.drain(..) {
                merged[c as usize - 1] = Some(known);
            }
            merged[i] = Some(known || ino == super::ROOT);
            if known {
                entries += 1;
                if matches!(node.kind, NodeKind::File) {
                    bytes = bytes.saturating_add(node.size);
                }
            }
        }
        (entries, bytes)
    }

    /// Is `ino` in its parent's current listing?
    fn is_listed(&self, ino: u64) -> bool {
        if self.is_pinned(ino) {
            return true;
        }
        let Some(n) = self.get(ino) else {
            return false;
        };
        matches!(self.get(n.parent).map(|p| &p.kind),
            Some(NodeKind::Dir(d)) if d.order.get(n.idx as usize) == Some(&ino))
    }

    /// The nodes of the subtree at `ino` (itself first).
    fn subtree(&self, ino: u64) -> Vec<u64> {
        let mut out = vec![ino];
        let mut i = 0;
        // Bounded by the number of nodes: each is visited once (a tree, no cycles).
        while let Some(&x) = out.get(i) {
            if let Some(Node {
                kind: NodeKind::Dir(d),
                ..
            }) = self.get(x)
            {
                out.extend(d.order.iter().filter(|&&c| c != x));
            }
            i += 1;
        }
        out
    }

    /// Drop the unlisted subtree `ino` belongs to, if the kernel holds no node of it. Returns
    /// how many nodes were dropped.
    pub(super) fn collect(&mut self, ino: u64) -> usize {
        // Walk up to the top of the unlisted subtree (a listed node hangs off the root).
        let mut top = ino;
        for _ in 0..MAX_DEPTH {
            if top == ROOT {
                return 0;
            }
            if !self.is_listed(top) {
                break;
            }
            top = self.get(top).map_or(ROOT, |n| n.parent);
        }
        if top == ROOT {
            return 0;
        }
        let all = self.subtree(top);
        let held = all.iter().any(|&x| {
            self.get(x)
                .is_some_and(|n| n.lookups.load(Ordering::Relaxed) > 0)
        });
        if held {
            return 0;
        }
        for &x in &all {
            if let Some(slot) = self.list.get_mut(x as usize - 1)
                && slot.take().is_some()
            {
                self.free.push(x);
                self.live -= 1;
            }
        }
        all.len()
    }
}

impl Circle {
    /// The kernel dropped `n` references to `ino` (FUSE forget): once it holds none, the node
    /// is dropped if it left its directory's listing, with its unreferenced subtree.
    pub fn forget(&self, ino: u64, n: u64) {
        let Ok(mut nodes) = self.nodes.write() else {
            return;
        };
        let Some(node) = nodes.get(ino) else {
            return;
        };
        let left = node.lookups.load(Ordering::Relaxed) as u64;
        node.lookups
            .store(left.saturating_sub(n) as u32, Ordering::Relaxed);
        if left <= n {
            nodes.collect(ino);
        }
    }

    /// The node's path relative to the servers' roots ("" for the root and for the root of a
    /// server's view).
    pub(super) fn path_of(nodes: &Nodes, mut ino: u64) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        // Bounded by the tree depth; a malformed parent chain stops at the first missing node.
        for _ in 0..MAX_DEPTH {
            if ino == ROOT {
                break;
            }
            let Some(node) = nodes.get(ino) else {
                break;
            };
            if let NodeKind::Dir(d) = &node.kind
                && d.role == DirRole::ViewRoot
            {
                break;
            }
            parts.push(&node.name);
            ino = node.parent;
        }
        parts.reverse();
        parts.join(&b'/')
    }

    /// Names the kernel may still hold that left their directory's listing, as (directory,
    /// name), for the adapter to invalidate. At most [`GONE_QUEUE`] wait; more are dropped
    /// (the kernel then keeps those until memory is short, as it would without this).
    pub fn watch_gone(&self) -> Receiver<(u64, Vec<u8>)> {
        let (tx, rx) = sync_channel(GONE_QUEUE);
        if let Ok(mut g) = self.gone.lock() {
            *g = Some(tx);
        }
        rx
    }

    pub(super) fn tell_gone(&self, held: Vec<(u64, Vec<u8>)>) {
        if held.is_empty() {
            return;
        }
        let Ok(g) = self.gone.lock() else {
            return;
        };
        let Some(tx) = g.as_ref() else {
            return;
        };
        for item in held {
            match tx.try_send(item) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    log::debug!("invalidation queue full: the kernel keeps a stale name");
                }
                Err(TrySendError::Disconnected(_)) => break,
            }
        }
    }
}
