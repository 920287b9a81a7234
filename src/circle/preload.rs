//! Preload: right after a mount with a listing index, build the merged tree from the index in
//! the background, ahead of the first walker, so that a `find` after a restart finds every
//! directory already merged, as on a warm mount.
//!
//! Why: served one directory at a time on the walker's FUSE requests, each directory costs a
//! few SQLite lookups, a merge and an update of the table while `find` waits, and the prefetch
//! workers repeat that on the other directories, all of it competing for the two cores with
//! `find` and the kernel. Done once, by one thread, ahead of the walker, the walk costs what a
//! warm walk costs (plus the kernel creating its inodes).
//!
//! Owns: the preload thread and its order (depth-first in name order, the order `find` walks
//! in, so it stays ahead of a walker that starts at once), and its bound.
//!
//! Invariants:
//! - it never asks a server: a directory is merged only from listings that are here already
//!   ([`ListingCache::local`](super::cache::ListingCache::local): cached, or in the index);
//!   one with any listing only a server can give is left (with what lies below it) for the
//!   walker, as without a preload;
//! - listings older than the TTL are served as on a visit, but revalidated only when the
//!   directory is first visited (`revalidate_on_visit`): a preload never makes the servers
//!   list what nobody looked at;
//! - a directory someone merged already is not merged again (its children are still walked);
//! - while it runs, no directory prefetch is queued ([`Circle::queue_subdirs`]): the prefetch
//!   workers would merge the same directories from the index, competing with the preload and
//!   the walker for the cores (on two cores they merged most of the tree, at ten threads'
//!   cost); the prefetches asked for meanwhile are queued when it ends, and find work only
//!   where it stopped (its bound, or listings the index does not have);
//! - bounded: at most [`PRELOAD_SHARE`] of `--cache-entries` entries, and [`MAX_DEPTH`] levels;
//!   one thread, ending when done or when the mount goes away.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use super::inodes::{DirRole, MAX_DEPTH, NodeKind};
use super::refresh::OnStale;
use super::{Circle, ROOT};

/// The preload loads at most `--cache-entries / PRELOAD_SHARE` entries (100,000 by default):
/// every listing it merges also goes into the listing cache, and half of that cache is left
/// for what the user does meanwhile. 100,000 entries are about 0.3 s of one core.
pub const PRELOAD_SHARE: usize = 2;

/// What a preload did (for the log and tests).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PreloadStats {
    /// Directories merged by the preload.
    pub dirs: usize,
    /// Entries in them.
    pub entries: usize,
    /// Whether it stopped at its bound.
    pub bounded: bool,
}

impl PreloadStats {
    fn count(&mut self, merged: Option<usize>) {
        if let Some(n) = merged {
            self.dirs += 1;
            self.entries += n;
        }
    }
}

/// One directory being walked: its subdirectories, the next one to visit, and whether
/// everything below it was found listed so far.
struct Frame {
    ino: u64,
    subdirs: Vec<u64>,
    next: usize,
    complete: bool,
}

impl Circle {
    /// Preload the merged tree from the index on a thread of its own (nothing without an index
    /// or with `--cache-ttl 0`). Call after the root was listed.
    pub fn start_preload(self: &Arc<Self>) {
        if self.cache.index().is_none() || self.opts.ttl.is_zero() {
            return;
        }
        let weak = Arc::downgrade(self);
        let budget = self.opts.cache_entries / PRELOAD_SHARE;
        self.preloading.store(true, Ordering::Relaxed);
        let spawned = std::thread::Builder::new()
            .name("ftpc-preload".into())
            .spawn(move || {
                let start = Instant::now();
                let st = preload(&weak, budget);
                if let Some(c) = weak.upgrade() {
                    c.end_preload();
                }
                log::info!(
                    "preloaded {} directories ({} entries) from the listing index in {:?}{}",
                    st.dirs,
                    st.entries,
                    start.elapsed(),
                    if st.bounded {
                        ", stopped at its bound"
                    } else {
                        ""
                    }
                );
            });
        if let Err(e) = spawned {
            self.preloading.store(false, Ordering::Relaxed);
            log::warn!("cannot start the preload thread: {e}");
        }
    }

    /// Preload the tree (on the caller's thread), loading at most `budget` entries.
    pub fn preload(self: &Arc<Self>, budget: usize) -> PreloadStats {
        preload(&Arc::downgrade(self), budget)
    }

    /// Merge directory `ino` from what is here (see the module doc) unless it is merged
    /// already; its subdirectories and, if this merged it, its entry count; `None` if a
    /// server must be asked.
    fn preload_dir(&self, ino: u64) -> Option<(Vec<u64>, Option<usize>)> {
        let subdirs = |merged: bool| {
            let nodes = self.nodes.read().ok()?;
            let NodeKind::Dir(d) = &nodes.get(ino)?.kind else {
                return None;
            };
            let dirs = d
                .order
                .iter()
                .copied()
                .filter(|&c| matches!(nodes.get(c).map(|n| &n.kind), Some(NodeKind::Dir(_))))
                .collect();
            Some((dirs, merged.then_some(d.order.len())))
        };
        let (path, servers) = {
            let nodes = self.nodes.read().ok()?;
            let node = nodes.get(ino)?;
            let NodeKind::Dir(d) = &node.kind else {
                return None;
            };
            if d.role != DirRole::Listed {
                return None;
            }
            if d.expires.is_some_and(|e| Instant::now() < e) {
                drop(nodes);
                return subdirs(false);
            }
            (Self::path_of(&nodes, ino), node.sources.clone())
        };
        let fetched = servers
            .iter()
            .map(|s| Some((s, self.cache.local(s, &path)?)))
            .collect::<Option<Vec<_>>>()?;
        self.merge_fetched(ino, &path, &fetched, OnStale::AtVisit)
            .ok()?;
        subdirs(true)
    }

    /// Everything below `ino` is listed and fresh: no prefetch to queue for it.
    fn mark_listed_below(&self, ino: u64) {
        if let Ok(mut nodes) = self.nodes.write()
            && let Some(NodeKind::Dir(d)) = nodes.get_mut(ino).map(|n| &mut n.kind)
            && d.expires.is_some_and(|e| Instant::now() < e)
        {
            d.prefetched_depth = u8::MAX;
        }
    }
}

/// The preload walk (see the module doc). Holds the circle only while merging one directory,
/// so an unmount ends it.
fn preload(weak: &std::sync::Weak<Circle>, budget: usize) -> PreloadStats {
    let mut st = PreloadStats::default();
    let Some(c) = weak.upgrade() else {
        return st;
    };
    let Some((subdirs, n)) = c.preload_dir(ROOT) else {
        return st;
    };
    drop(c);
    st.count(n);
    let mut stack = vec![Frame {
        ino: ROOT,
        subdirs,
        next: 0,
        complete: true,
    }];
    // Bounded: each turn visits one directory or leaves one; each directory is visited once
    // (a tree), and the loaded entries are bounded by `budget`.
    while let Some(depth) = stack.len().checked_sub(1) {
        let top = &mut stack[depth];
        let Some(&child) = top.subdirs.get(top.next) else {
            let done = stack.pop().expect("the stack is not empty");
            let Some(c) = weak.upgrade() else {
                break;
            };
            if done.complete {
                c.mark_listed_below(done.ino);
            } else if let Some(parent) = stack.last_mut() {
                parent.complete = false;
            }
            continue;
        };
        top.next += 1;
        if st.entries >= budget || depth + 1 >= MAX_DEPTH {
            st.bounded |= st.entries >= budget;
            top.complete = false;
            if st.bounded {
                // Leave the rest to the walker; what is loaded stays.
                break;
            }
            continue;
        }
        let Some(c) = weak.upgrade() else {
            break;
        };
        match c.preload_dir(child) {
            Some((subdirs, n)) => {
                st.count(n);
                stack.push(Frame {
                    ino: child,
                    subdirs,
                    next: 0,
                    complete: true,
                });
            }
            None => top.complete = false,
        }
    }
    st
}
