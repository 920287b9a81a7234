//! Open files and open directories, by handle.
//!
//! Owns: the handle numbers, the open files (each an [`OpenFile`]) and the directory handles
//! (a directory's entries as of opendir, `.` and `..` first), the read-only check on open, and
//! counting readdirplus entries as kernel references.
//!
//! Invariants:
//! - `open` for writing fails with EROFS before anything else;
//! - `open` does no network work (at most a bounded wait for a prefetch of this very file);
//! - a readdirplus entry handed to the kernel names a node that exists now (one that went away
//!   since opendir is looked up again by name, or left out);
//! - a handle not given out, or released, is EBADF.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::inodes::NodeKind;
use super::reader::{Context, Data, OpenFile, Served, SpliceSink};
use super::{Circle, DirEntry, control, lock_err, prefetch};
use crate::error::{Error, Kind, Result};

/// Read-ahead of big open files runs on at most this many threads: each keeps one transfer
/// streaming, and 8 parallel streams fill any link this daemon is likely to sit on.
pub const READAHEAD_WORKERS: usize = 8;

/// An open directory: its inode and its entries as of opendir.
pub(super) type DirHandle = (u64, Arc<[DirEntry]>);

impl Circle {
    pub(super) fn file_info(&self, ino: u64) -> Result<(Vec<u8>, u64, Vec<usize>)> {
        let nodes = self.nodes.read().map_err(|_| lock_err())?;
        let node = nodes.get(ino).ok_or_else(Error::not_found)?;
        match node.kind {
            NodeKind::File => {}
            NodeKind::Dir(_) => return Err(Error::new(Kind::IsDir, "is a directory")),
            NodeKind::Symlink(_) => return Err(Error::new(Kind::IsSymlink, "is a symlink")),
        }
        let sources = node.sources.iter().collect();
        Ok((Self::path_of(&nodes, ino), node.size, sources))
    }

    /// Open a directory: its entries as of now, `.` and `..` first, for [`Self::readdir_at`].
    pub fn opendir(&self, ino: u64) -> Result<u64> {
        let entries = self.readdir(ino)?;
        let mut all = Vec::with_capacity(entries.len() + 2);
        for (name, id) in [(&b"."[..], ino), (&b".."[..], self.parent_of(ino))] {
            if let Ok(attr) = self.getattr(id) {
                all.push(DirEntry {
                    name: name.to_vec(),
                    attr,
                });
            }
        }
        all.extend(entries);
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.dirs
            .lock()
            .map_err(|_| lock_err())?
            .insert(fh, (ino, all.into()));
        Ok(fh)
    }

    /// Hand the entries of an open directory from position `offset` to `add` (with the
    /// offset of the entry after it) until it returns true (the reply is full). With `plus`
    /// each entry handed out (but `.` and `..`) is a kernel reference, as a lookup is; an entry
    /// whose node went away since opendir is looked up again by name, or skipped if gone.
    pub fn readdir_at(
        &self,
        fh: u64,
        offset: u64,
        plus: bool,
        mut add: impl FnMut(u64, &DirEntry) -> bool,
    ) -> Result<()> {
        let (dir, entries) = self
            .dirs
            .lock()
            .map_err(|_| lock_err())?
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::new(Kind::BadHandle, "bad directory handle"))?;
        let nodes = self.nodes.read().map_err(|_| lock_err())?;
        for (i, e) in entries.iter().enumerate().skip(offset as usize) {
            let next = i as u64 + 1;
            if !plus || i < 2 && (e.name == b"." || e.name == b"..") {
                if add(next, e) {
                    break;
                }
                continue;
            }
            let same = nodes
                .get(e.attr.ino)
                .is_some_and(|n| n.parent == dir && *n.name == *e.name);
            let ino = if same {
                Some(e.attr.ino)
            } else {
                match nodes.get(dir).map(|n| &n.kind) {
                    Some(NodeKind::Dir(d)) => nodes.child(d, &e.name),
                    _ => None,
                }
            };
            let Some((ino, node)) = ino.and_then(|i| nodes.get(i).map(|n| (i, n))) else {
                continue;
            };
            let fresh = DirEntry {
                name: e.name.clone(),
                attr: self.attr_of(ino, node),
            };
            if add(next, &fresh) {
                break;
            }
            node.lookups.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        if let Ok(mut d) = self.dirs.lock() {
            d.remove(&fh);
        }
    }

    /// Open a file for reading; no network round trip (at most a wait for a prefetch of this
    /// very file that is on its way). Returns the file handle, and whether the file was opened
    /// before with the same size and mtime (so pages the kernel cached then are still right).
    /// Any open for writing fails with EROFS (`flags` as open(2) takes them).
    pub fn open(&self, ino: u64, flags: i32) -> Result<(u64, bool)> {
        if flags & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(Error::new(Kind::ReadOnly, "read-only file system"));
        }
        if control::is_generated(ino) {
            let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
            let text: Arc<[u8]> = self.generated(ino).into();
            self.generated
                .lock()
                .map_err(|_| lock_err())?
                .insert(fh, text);
            return Ok((fh, false));
        }
        let (path, size, sources) = self.file_info(ino)?;
        // Only down servers hold it (entries kept while offline): fail now, naming them,
        // rather than let the kernel serve pages it cached before the outage.
        if !sources.is_empty() && sources.iter().all(|&s| self.backend.is_down(s)) {
            let labels: Vec<&str> = sources.iter().map(|&s| self.backend.label(s)).collect();
            return Err(Error::new(
                Kind::Unavailable,
                format!(
                    "/{}: only on {}, which is down",
                    String::from_utf8_lossy(&path),
                    labels.join(", ")
                ),
            ));
        }
        let mut keep_cache = false;
        if let Ok(mut nodes) = self.nodes.write()
            && let Some(n) = nodes.get_mut(ino)
        {
            keep_cache = n.opened;
            n.opened = true;
        }
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let ctx = Context {
            backend: Arc::clone(&self.backend),
            pumps: Arc::clone(&self.readahead),
            mirrors: Arc::clone(&self.mirrors),
            max_wait: self.opts.max_wait,
            segments: Arc::clone(&self.segments),
        };
        let file = OpenFile::new(&ctx, ino, path, size, sources);
        if self.opts.prefetch && size <= prefetch::SMALL_FILE_MAX && !self.in_view(ino) {
            if let Some(data) = self.prefetched.take(file.path(), self.opts.max_wait)
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

    /// Is `ino` a generated file (a status file)? Its size changes between stat and read, so
    /// the adapter opens it with direct I/O (reads go by the snapshot, not the size).
    pub fn is_generated(&self, ino: u64) -> bool {
        control::is_generated(ino)
    }

    pub fn read(&self, fh: u64, off: u64, len: usize) -> Result<Data> {
        match self.read_into(fh, off, len, None)? {
            Served::Data(d) => Ok(d),
            Served::Sent => unreachable!("no sink to send through"),
        }
    }

    /// Read, sending the bytes through `sink` where they come straight off a plain transfer
    /// ([`OpenFile::read_into`]).
    pub fn read_into(
        &self,
        fh: u64,
        off: u64,
        len: usize,
        sink: Option<&mut dyn SpliceSink>,
    ) -> Result<Served> {
        if let Some(text) = self.generated.lock().map_err(|_| lock_err())?.get(&fh) {
            let start = (off as usize).min(text.len());
            let end = start.saturating_add(len).min(text.len());
            return Ok(Served::Data(Data::Owned(text[start..end].to_vec())));
        }
        let file = self
            .files
            .lock()
            .map_err(|_| lock_err())?
            .get(&fh)
            .cloned()
            .ok_or_else(|| Error::new(Kind::BadHandle, "bad file handle"))?;
        let res = file.read_into(off, len, sink);
        if let Err(e) = &res
            && matches!(
                e.kind,
                Kind::Stale | Kind::Unavailable | Kind::Protocol | Kind::Mismatch
            )
        {
            // The file may have changed on the server: list its directory again next time.
            self.invalidate_parent(file.ino, file.path());
        }
        res
    }

    pub fn release(&self, fh: u64) {
        if let Ok(mut g) = self.generated.lock()
            && g.remove(&fh).is_some()
        {
            return;
        }
        let file = self.files.lock().ok().and_then(|mut f| f.remove(&fh));
        if let Some(file) = file {
            file.close();
        }
    }
}
