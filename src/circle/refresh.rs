//! Directory refresh: make a directory's merged listing fresh. The listings of the directory
//! on every server holding it are fetched through the [`ListingCache`](super::cache) in
//! parallel on a bounded pool ([`LIST_WORKERS`] threads plus the caller), merged by the rules
//! of [`merge`](super::merge), and applied to the inode table.
//!
//! Owns: when a listing is fetched again (TTL, shorter after a failure), which servers a
//! directory asks (its sources, keeping those that failed this time), conflict logging, and
//! invalidation after a read found a file changed.
//!
//! Offline entries: a server whose listing fails keeps its last known entries of that
//! directory in the merged listing for `--offline-keep` after it went offline
//! ([`Circle::offline_entries`]), as long as the listing cache still holds them. They show
//! the server as offline ([`Circle::offline_since`]), and opening a file only down servers
//! hold fails at once (see [`super::handles`]). A server down since the mount has no known
//! entries unless the listing index has them: then it shows those, kept as if it had gone
//! offline when the mount started (see [`cache`]).
//!
//! With a listing index: a directory merged from a listing older than the TTL
//! ([`Origin::Stale`](cache::Origin::Stale)) is served at once and revalidated in the
//! background ([`REVALIDATE_WORKERS`] threads, each directory queued once at a time), when
//! it is visited: at once, or, for one the preload merged ([`super::preload`]), at its first
//! visit.
//!
//! Invariants:
//! - names that stay keep their inode (same kind); names that go are handed to the inode
//!   table to be dropped once the kernel lets go of them;
//! - a directory listed on no server because all failed is an error, never an empty directory;
//! - no lock of the table is held while listings are fetched.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::inodes::{DirRole, Node, NodeKind};
use super::merge::{self, Merged, MergedKind};
use super::server_set::ServerSet;
use super::{Circle, ROOT, cache, lock_err};
use crate::backend::{Priority, RawEntry};
use crate::error::{Error, Kind, Result};

/// Listings of one directory run on at most this many threads (plus the requesting one). A
/// silent server holds its thread for one `--timeout`, so 100 silent servers among 1,000 are
/// all waited out in parallel and startup takes about one timeout, not one per 128 of them.
pub const LIST_WORKERS: usize = 128;

/// Directories revalidated in the background at once (after a restart, as a walker visits
/// listings older than the TTL): each uses one spare connection per server holding it
/// (background priority), so 4 keep a server's default 4 connections busy without crowding
/// out the walker.
pub const REVALIDATE_WORKERS: usize = 4;

/// What [`Circle::merge_fetched`] does with a directory merged from stale index listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum OnStale {
    /// Revalidate it now (someone is visiting it).
    Revalidate,
    /// Revalidate it when it is first visited (it was preloaded, see [`super::preload`]).
    AtVisit,
}

impl Circle {
    /// Fetch the root listing of every server (in parallel, through the cache) and return the
    /// errors of those that failed, so startup can name them.
    pub fn check_servers(&self) -> Vec<Error> {
        let all = ServerSet::all(self.backend.servers());
        // Asked of the servers themselves, not of the index: this is to see who answers.
        let fetched = self.fetch_all(all, b"", Priority::Foreground, false);
        self.note_listed(&fetched);
        fetched
            .into_iter()
            .filter_map(|(_, f)| match (&f.result, &f.last_ok) {
                (Err(e), Some(_)) => Some(Error::new(
                    e.kind,
                    format!("{e}; showing its entries from the listing index, marked offline"),
                )),
                (Err(e), None) => Some(e.clone()),
                _ => None,
            })
            .collect()
    }

    /// Let stale directories be revalidated in the background (without this, e.g. in unit
    /// tests that do not want it, they are only refetched when their TTL runs out).
    pub fn start_revalidation(self: &Arc<Self>) {
        let _ = self.me.set(Arc::downgrade(self));
    }

    /// Refresh directory `ino` from its servers, not from the index, in the background (once
    /// at a time per directory).
    fn queue_revalidate(&self, ino: u64) {
        let Some(me) = self.me.get().cloned() else {
            return;
        };
        {
            let mut pending = self.revalidating.lock().unwrap_or_else(|p| p.into_inner());
            // Bounded by the directories the table holds; each leaves when its job ends.
            if !pending.insert(ino) {
                return;
            }
        }
        self.revalidators.spawn(move || {
            if let Some(c) = me.upgrade() {
                if let Err(e) = c.refresh_dir_with(ino, Priority::Background, false) {
                    log::debug!("revalidating a directory: {e}");
                }
                c.revalidating
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&ino);
            }
        });
    }

    /// Make sure the merged listing of directory `ino` is fresh, fetching if needed, then
    /// queue prefetch of `depth` levels of subdirectories below it.
    pub(super) fn refresh(&self, ino: u64, prio: Priority, depth: u8) -> Result<()> {
        self.refresh_dir(ino, prio)?;
        if self.opts.prefetch && depth > 0 {
            self.queue_subdirs(ino, depth);
        }
        Ok(())
    }

    fn dir_is_empty(&self, ino: u64) -> bool {
        self.nodes.read().is_ok_and(|nodes| {
            matches!(nodes.get(ino).map(|n| &n.kind), Some(NodeKind::Dir(d)) if d.order.is_empty())
        })
    }

    /// Make sure the merged listing of directory `ino` is fresh, fetching if needed.
    pub(super) fn refresh_dir(&self, ino: u64, prio: Priority) -> Result<()> {
        self.refresh_dir_with(ino, prio, true)
    }

    /// As [`refresh_dir`](Self::refresh_dir); `use_index: false` revalidates: the listings
    /// are fetched from the servers even when the directory looks fresh.
    fn refresh_dir_with(&self, ino: u64, prio: Priority, use_index: bool) -> Result<()> {
        let (path, servers) = {
            let nodes = self.nodes.read().map_err(|_| lock_err())?;
            let node = nodes.get(ino).ok_or_else(Error::not_found)?;
            let NodeKind::Dir(d) = &node.kind else {
                return Err(Error::new(Kind::NotDir, "not a directory"));
            };
            if d.role == DirRole::Control {
                return Ok(());
            }
            if use_index && d.expires.is_some_and(|e| Instant::now() < e) {
                // Preloaded from stale listings: this is the visit that revalidates it.
                if d.revalidate_on_visit.swap(false, Ordering::Relaxed) {
                    drop(nodes);
                    self.queue_revalidate(ino);
                }
                return Ok(());
            }
            (Self::path_of(&nodes, ino), node.sources.clone())
        };
        let fetched = self.fetch_all(servers, &path, prio, use_index);
        self.merge_fetched(ino, &path, &fetched, OnStale::Revalidate)
    }

    /// Merge the listings `fetched` of directory `ino` (at `path`) and apply the result to the
    /// table. A listing from the index older than the TTL is revalidated in the background,
    /// now or at the directory's first visit (`on_stale`).
    pub(super) fn merge_fetched(
        &self,
        ino: u64,
        path: &[u8],
        fetched: &[(usize, Arc<cache::Fetched>)],
        on_stale: OnStale,
    ) -> Result<()> {
        let mut ok = Vec::new();
        let mut first_err = None;
        let mut failed = ServerSet::default();
        let mut stale = false;
        // The merged listing is as old as its oldest part.
        let mut oldest = Instant::now();
        self.note_listed(fetched);
        for (server, f) in fetched {
            match f.origin {
                cache::Origin::Stale => stale = true,
                cache::Origin::Index => oldest = oldest.min(f.at),
                cache::Origin::Network => {}
            }
            match &f.result {
                Ok(entries) => ok.push((*server, &entries[..])),
                // The directory went away on that server: it contributes nothing.
                Err(e) if e.kind == Kind::NotFound => ok.push((*server, &[][..])),
                Err(e) => {
                    log::warn!("{e}");
                    failed.insert(*server);
                    first_err.get_or_insert_with(|| e.clone());
                    if let Some(entries) = self.offline_entries(*server, f) {
                        ok.push((*server, entries));
                    }
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
        let differ = |name: &[u8], a, b| self.mirrors.differ_in(path, name, a, b);
        let (merged, conflicts) = merge::merge(&ok, &differ);
        self.log_conflicts(path, &conflicts);
        self.keep_conflicts(ino, conflicts);
        let expires = if first_err.is_some() {
            Instant::now() + self.opts.ttl.min(cache::ERROR_TTL)
        } else {
            oldest + self.opts.ttl
        };
        let on_visit = stale && on_stale == OnStale::AtVisit;
        self.apply(ino, path, merged, failed, expires, on_visit)?;
        if stale && on_stale == OnStale::Revalidate {
            self.queue_revalidate(ino);
        }
        Ok(())
    }

    /// Remember the servers that gave entries: a listing, or one from the listing index
    /// (a server down since the mount whose entries the index has).
    fn note_listed(&self, fetched: &[(usize, Arc<cache::Fetched>)]) {
        if let Ok(mut l) = self.listed.lock() {
            for (server, _) in fetched
                .iter()
                .filter(|(_, f)| f.result.is_ok() || f.last_ok.is_some())
            {
                l.insert(*server);
            }
        }
    }

    /// The entries a failed listing of `server` keeps in the merged view: the last ones it
    /// gave, while it has been offline for less than `--offline-keep` (or, for a server not
    /// marked down, while that listing is younger than that). See the module doc.
    pub(super) fn offline_entries<'a>(
        &self,
        server: usize,
        f: &'a cache::Fetched,
    ) -> Option<&'a [RawEntry]> {
        let (at, entries) = f.last_ok.as_ref()?;
        let keep = self.opts.offline_keep;
        let offline_for = self
            .offline_since(server)
            .and_then(|t| t.elapsed().ok())
            .unwrap_or(Duration::MAX);
        (at.elapsed() < keep || offline_for < keep).then_some(&entries[..])
    }

    /// Fetch the listing of `path` from each server, in parallel when more than one must go to
    /// the network. Results are in the order of `servers` (priority order).
    pub(super) fn fetch_all(
        &self,
        servers: ServerSet,
        path: &[u8],
        prio: Priority,
        use_index: bool,
    ) -> Vec<(usize, Arc<cache::Fetched>)> {
        let backend = self.backend.as_ref();
        // What is here already (cached, or in the index: one lookup each) is taken at once;
        // only the rest is asked of the servers.
        let mut got: Vec<(usize, Option<Arc<cache::Fetched>>)> = servers
            .iter()
            .map(|s| {
                let here = if use_index {
                    self.cache.local(s, path)
                } else {
                    self.cache.fresh(&(s, path.into()))
                };
                (s, here)
            })
            .collect();
        let missing: Vec<usize> = got
            .iter()
            .filter(|(_, f)| f.is_none())
            .map(|&(s, _)| s)
            .collect();
        if missing.len() <= 1 {
            for (s, f) in got.iter_mut().filter(|(_, f)| f.is_none()) {
                *f = Some(self.cache.get_with(backend, *s, path, prio, use_index));
            }
        } else {
            let (cache, backend) = (Arc::clone(&self.cache), Arc::clone(&self.backend));
            let shared_path: Arc<[u8]> = path.into();
            let fetched = self.listers.map(missing.clone(), move |s| {
                cache.get_with(backend.as_ref(), s, &shared_path, prio, use_index)
            });
            let mut fetched = missing.into_iter().zip(fetched);
            for (s, f) in got.iter_mut().filter(|(_, f)| f.is_none()) {
                let job = fetched.next().filter(|(m, _)| m == s).and_then(|(_, f)| f);
                *f = Some(job.unwrap_or_else(|| {
                    Arc::new(cache::Fetched::new(
                        Instant::now(),
                        Err(Error::new(Kind::Protocol, "listing job panicked")),
                    ))
                }));
            }
        }
        got.into_iter().filter_map(|(s, f)| Some((s, f?))).collect()
    }

    pub(super) fn log_conflicts(&self, path: &[u8], conflicts: &[merge::Conflict]) {
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
    pub(super) fn apply(
        &self,
        dir: u64,
        path: &[u8],
        merged: Vec<Merged>,
        failed: ServerSet,
        expires: Instant,
        revalidate_on_visit: bool,
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
            let sources = ServerSet::from_list(&m.sources);
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
                    // Other copies serve it now: pages cached from the old ones must go.
                    if n.size != m.size || n.mtime != mtime || n.sources != sources {
                        n.opened = false;
                    }
                    n.size = m.size;
                    n.mtime = mtime;
                    n.sources = if matches!(n.kind, NodeKind::Dir(_)) {
                        sources.union_masked(&n.sources, &failed)
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
                    lookups: AtomicU32::new(0),
                }),
            };
            order.push(ino);
        }
        let gone: Vec<u64> = {
            let kept: HashSet<u64> = order.iter().copied().collect();
            old_order
                .iter()
                .copied()
                .filter(|c| !kept.contains(c))
                .collect()
        };
        if let Some(NodeKind::Dir(d)) = nodes.get_mut(dir).map(|n| &mut n.kind) {
            d.order = order.into();
            d.expires = Some(expires);
            d.prefetched_depth = 0;
            d.revalidate_on_visit = revalidate_on_visit.into();
        }
        // Nodes that left the listing go now unless the kernel still holds them (then at
        // their last `forget`).
        let mut held = Vec::new();
        for c in gone {
            if nodes.collect(c) == 0
                && let Some(n) = nodes.get(c)
            {
                held.push((dir, n.name.to_vec()));
            }
        }
        drop(nodes);
        // The kernel holds them: ask it to let go, so `forget` comes and they can be dropped.
        self.tell_gone(held);
        Ok(())
    }

    /// Forget the merged and per-server listings of the directory holding `ino`, and let its
    /// next open drop the pages the kernel cached of it.
    pub(super) fn invalidate_parent(&self, ino: u64, path: &[u8]) {
        let dir_path = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => &path[..i],
            None => &b""[..],
        };
        let Ok(mut nodes) = self.nodes.write() else {
            return;
        };
        // The pages the kernel cached may be of another version or another copy.
        if let Some(n) = nodes.get_mut(ino) {
            n.opened = false;
        }
        let parent = nodes.get(ino).map_or(ROOT, |n| n.parent);
        let servers = match nodes.get_mut(parent) {
            Some(Node {
                kind: NodeKind::Dir(d),
                sources,
                ..
            }) => {
                d.expires = None;
                sources.clone()
            }
            _ => return,
        };
        drop(nodes);
        for s in servers.iter() {
            self.cache.invalidate(s, dir_path);
        }
    }
}
