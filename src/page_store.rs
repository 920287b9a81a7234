//! Putting bytes read with direct I/O into the kernel's page cache (FUSE_NOTIFY_STORE).
//!
//! Owns: one worker thread and a few pipes, through which store messages go to /dev/fuse;
//! per file read with direct I/O ([`Target`]), the parts of pages a reply covered only in
//! part, until the page is whole.
//!
//! Why: the first open of a big file reads with direct I/O ([`crate::fuse`]): each read of
//! the caller's buffer reaches the daemon whole, a third of the round trips of the kernel's
//! read-ahead. Direct I/O bypasses the page cache, so every reply's bytes are also stored
//! there, and the next open of the file reads from memory as before. Storing copies the
//! bytes into the cache (about as long as the reply itself takes), so it runs on its own
//! thread, beside the FUSE thread that goes on with the next read.
//!
//! Invariants:
//! - a FUSE thread never waits long for a store: with [`IN_FLIGHT`] stores queued it waits at
//!   most [`WAIT`], then the bytes are not stored (a later read fetches them again). A store
//!   can wait for a page the kernel has locked for a read that a FUSE thread must answer, so
//!   an unbounded wait could deadlock;
//! - bytes are stored only after their reply went out, and only bytes that were replied:
//!   what the cache holds is what a read returned;
//! - only whole pages are stored (or the last page of the file, to its end): the kernel
//!   marks no other page valid, so a part of one would be a store for nothing.

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use crate::circle::reader::Data;
use crate::splice::Pipe;
use crate::workers::Workers;

/// Size of `struct fuse_out_header` (len: u32, error: i32, unique: u64), which starts every
/// reply and notification on /dev/fuse.
pub const OUT_HEADER: usize = 16;
/// A store notification's headers: `fuse_out_header` and `struct fuse_notify_store_out`
/// (nodeid: u64, offset: u64, size: u32, padding: u32).
pub const STORE_HEADERS: usize = OUT_HEADER + 24;
/// The `error` field of a FUSE_NOTIFY_STORE notification.
const FUSE_NOTIFY_STORE: i32 = 4;
/// Stores queued at most: 8 replies of up to 512 KiB, 4 MiB of pages held.
pub const IN_FLIGHT: usize = 8;
/// The longest a FUSE thread waits for a queued store to finish before it gives up storing
/// (long enough to ride out a busy moment of a 2-core machine, as right after a mount).
const WAIT: Duration = Duration::from_millis(100);

/// The header of a reply (`unique` != 0) or notification (`unique` == 0, its code in `error`)
/// of `total` bytes in all.
pub fn out_header(total: usize, error: i32, unique: u64) -> Option<[u8; OUT_HEADER]> {
    let total = u32::try_from(total).ok()?;
    let mut h = [0u8; OUT_HEADER];
    h[..4].copy_from_slice(&total.to_ne_bytes());
    h[4..8].copy_from_slice(&error.to_ne_bytes());
    h[8..].copy_from_slice(&unique.to_ne_bytes());
    Some(h)
}

/// The headers of a FUSE_NOTIFY_STORE of `len` bytes at `offset` of inode `ino`.
pub fn store_headers(ino: u64, offset: u64, len: usize) -> Option<[u8; STORE_HEADERS]> {
    let out = out_header(STORE_HEADERS.checked_add(len)?, FUSE_NOTIFY_STORE, 0)?;
    let mut h = [0u8; STORE_HEADERS];
    h[..OUT_HEADER].copy_from_slice(&out);
    h[16..24].copy_from_slice(&ino.to_ne_bytes());
    h[24..32].copy_from_slice(&offset.to_ne_bytes());
    h[32..36].copy_from_slice(&u32::try_from(len).ok()?.to_ne_bytes());
    Some(h)
}

/// The kernel's page size, the unit the page cache is filled in.
const PAGE: u64 = 4096;
/// Partial pages kept per open file at most (a sequential reader leaves one at a time).
const MAX_EDGES: usize = 64;

/// One file read with direct I/O: where its bytes go in the page cache, and what is known
/// of the pages its replies covered only in part.
///
/// The kernel marks a stored page valid only when a store fills it from its start (to its
/// end, or to the end of the file). A program whose buffer does not start on a page (a
/// `Vec` does not) gets replies that start and end inside pages, so each reply's first and
/// last partial page is kept here until the neighbouring reply brings the rest, and then
/// stored whole.
pub struct Target {
    ino: u64,
    size: u64,
    stored: AtomicU64,
    /// Page offset -> the bytes known of it, `lo..hi` within the page.
    edges: Mutex<HashMap<u64, Partial>>,
}

struct Partial {
    bytes: Vec<u8>,
    lo: usize,
    hi: usize,
}

impl Target {
    pub fn new(ino: u64, size: u64) -> Arc<Target> {
        Arc::new(Target {
            ino,
            size,
            stored: AtomicU64::new(0),
            edges: Mutex::new(HashMap::new()),
        })
    }

    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// Bytes stored in the page cache so far.
    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// `[off, off + len)` as the part in a first page it does not fill from the page's
    /// start, whole pages (the last may end at the end of the file), and the part in a last
    /// page it does not fill.
    pub fn split(&self, off: u64, len: usize) -> (usize, usize, usize) {
        let into = off % PAGE;
        let head = if into == 0 {
            0
        } else {
            len.min((PAGE - into) as usize)
        };
        let rest = len - head;
        let end = off + len as u64;
        let tail = if end >= self.size {
            0
        } else {
            rest % PAGE as usize
        };
        (head, rest - tail, tail)
    }

    /// Bytes at `off` lying within one page: kept; the page's offset and bytes once it is
    /// whole.
    fn edge(&self, off: u64, bytes: &[u8]) -> Option<(u64, Vec<u8>)> {
        let page = off - off % PAGE;
        let page_len = PAGE.min(self.size.saturating_sub(page)) as usize;
        let lo = (off - page) as usize;
        let hi = lo + bytes.len();
        if bytes.is_empty() || hi > page_len {
            return None;
        }
        let mut edges = self.edges.lock().unwrap_or_else(|p| p.into_inner());
        if edges.len() >= MAX_EDGES && !edges.contains_key(&page) {
            edges.clear();
        }
        let p = edges.entry(page).or_insert_with(|| Partial {
            bytes: vec![0; page_len],
            lo,
            hi,
        });
        p.bytes[lo..hi].copy_from_slice(bytes);
        if hi >= p.lo && lo <= p.hi {
            p.lo = p.lo.min(lo);
            p.hi = p.hi.max(hi);
        } else {
            // Not next to what is known: keep the newer part only.
            (p.lo, p.hi) = (lo, hi);
        }
        if p.lo == 0 && p.hi == page_len {
            return edges.remove(&page).map(|p| (page, p.bytes));
        }
        None
    }
}

/// What a queued store holds.
enum Job {
    /// A whole store message (headers and `len` bytes) in a pipe.
    Pipe(Pipe, usize),
    /// Bytes `range` of `data`, which go at `offset` of the file.
    Bytes {
        offset: u64,
        data: Data,
        range: std::ops::Range<usize>,
    },
}

struct State {
    queued: usize,
    /// Pipes free for the next store messages.
    pipes: Vec<Pipe>,
    /// Stores given up because the queue stayed full (reported at debug level).
    skipped: u64,
}

struct Inner {
    device: Arc<OnceLock<OwnedFd>>,
    st: Mutex<State>,
    cv: Condvar,
}

/// The store queue of a session.
#[derive(Clone)]
pub struct Stores {
    inner: Arc<Inner>,
    worker: Arc<Workers>,
}

impl Stores {
    /// Stores for the session whose /dev/fuse `device` will hold.
    pub fn new(device: Arc<OnceLock<OwnedFd>>) -> Self {
        Stores {
            inner: Arc::new(Inner {
                device,
                st: Mutex::new(State {
                    queued: 0,
                    pipes: Vec::new(),
                    skipped: 0,
                }),
                cv: Condvar::new(),
            }),
            worker: Arc::new(Workers::new("page-store", 1)),
        }
    }

    /// A slot in the queue (waiting at most [`WAIT`] for one), with a pipe for a store
    /// message if `pipe`; None: give up storing this time.
    fn slot(&self, pipe: bool) -> Option<Option<Pipe>> {
        let inner = &self.inner;
        let st = inner.st.lock().unwrap_or_else(|p| p.into_inner());
        let (mut st, _) = inner
            .cv
            .wait_timeout_while(st, WAIT, |st| st.queued >= IN_FLIGHT)
            .unwrap_or_else(|p| p.into_inner());
        if st.queued >= IN_FLIGHT {
            st.skipped += 1;
            if st.skipped.is_power_of_two() {
                log::debug!(
                    "{} page-cache stores given up: the store queue stayed full",
                    st.skipped
                );
            }
            return None;
        }
        let p = if pipe {
            match st.pipes.pop() {
                Some(p) => Some(p),
                None => Some(Pipe::new().ok()?),
            }
        } else {
            None
        };
        st.queued += 1;
        Some(p)
    }

    /// Store the `len` bytes that `data` holds, replied at `off` of `t` (the pipe is empty
    /// after): whole pages moved into a store message without copying, the parts of pages at
    /// either end kept until their page is whole.
    pub fn store_pipe(&self, t: &Arc<Target>, off: u64, data: &Pipe, len: usize) {
        let (head, mid, tail) = t.split(off, len);
        let res = (|| -> std::io::Result<()> {
            if head > 0 {
                let bytes = data.take(head)?;
                self.store_edge(t, off, &bytes);
            }
            if mid > 0 {
                let at = off + head as u64;
                match self.slot(true).flatten() {
                    Some(pipe) => {
                        let filled = store_headers(t.ino, at, mid)
                            .ok_or_else(|| std::io::Error::other("too many bytes for one store"))
                            .and_then(|h| pipe.put(&h))
                            .and_then(|()| data.move_to(&pipe, mid));
                        match filled {
                            Ok(()) => self.queue(Job::Pipe(pipe, mid), t),
                            Err(e) => {
                                pipe.clear();
                                self.done(Some(pipe));
                                return Err(e);
                            }
                        }
                    }
                    None => data.discard(mid)?,
                }
            }
            if tail > 0 {
                let bytes = data.take(tail)?;
                self.store_edge(t, off + (head + mid) as u64, &bytes);
            }
            Ok(())
        })();
        if let Err(e) = res {
            log::debug!("storing {len} bytes in the page cache: {e}");
            data.clear();
        }
    }

    /// Store the bytes of `data`, replied at `off` of `t` the ordinary way.
    pub fn store_bytes(&self, t: &Arc<Target>, off: u64, data: Data) {
        let bytes = data.as_slice();
        let (head, mid, tail) = t.split(off, bytes.len());
        if head > 0 {
            self.store_edge(t, off, &bytes[..head]);
        }
        if tail > 0 {
            let at = head + mid;
            self.store_edge(t, off + at as u64, &bytes[at..]);
        }
        if mid > 0 && self.slot(false).is_some() {
            let job = Job::Bytes {
                offset: off + head as u64,
                data,
                range: head..head + mid,
            };
            self.queue(job, t);
        }
    }

    /// Part of a page: stored once the page is whole.
    fn store_edge(&self, t: &Arc<Target>, off: u64, bytes: &[u8]) {
        if let Some((page, whole)) = t.edge(off, bytes)
            && self.slot(false).is_some()
        {
            let range = 0..whole.len();
            let job = Job::Bytes {
                offset: page,
                data: Data::Owned(whole),
                range,
            };
            self.queue(job, t);
        }
    }

    fn queue(&self, job: Job, t: &Arc<Target>) {
        let me = self.clone();
        let t = Arc::clone(t);
        self.worker.spawn(move || {
            let pipe = me.run(job, &t);
            me.done(pipe);
        });
    }

    /// Write one store to /dev/fuse; the pipe it came in, emptied, for the next.
    fn run(&self, job: Job, t: &Target) -> Option<Pipe> {
        let device = self.inner.device.get();
        let (res, len, pipe) = match job {
            Job::Pipe(p, len) => {
                let res = match device {
                    Some(d) => p.send_to(d.as_fd(), STORE_HEADERS + len),
                    None => Err(std::io::ErrorKind::NotConnected.into()),
                };
                (res, len, Some(p))
            }
            Job::Bytes {
                offset,
                data,
                range,
            } => {
                let bytes = &data.as_slice()[range];
                let res = match device {
                    Some(d) => write_store(d.as_fd(), t.ino, offset, bytes),
                    None => Err(std::io::ErrorKind::NotConnected.into()),
                };
                (res, bytes.len(), None)
            }
        };
        match res {
            Ok(()) => {
                t.stored.fetch_add(len as u64, Ordering::Relaxed);
            }
            Err(e) => {
                log::debug!("storing {len} bytes in the page cache: {e}");
                if let Some(p) = &pipe {
                    p.clear();
                }
            }
        }
        pipe
    }

    fn done(&self, pipe: Option<Pipe>) {
        let mut st = self.inner.st.lock().unwrap_or_else(|p| p.into_inner());
        st.queued -= 1;
        if let Some(p) = pipe {
            st.pipes.push(p);
        }
        drop(st);
        self.inner.cv.notify_one();
    }
}

/// One FUSE_NOTIFY_STORE of `data` at `offset` of `ino`, written whole.
fn write_store(device: BorrowedFd, ino: u64, offset: u64, data: &[u8]) -> std::io::Result<()> {
    let h = store_headers(ino, offset, data.len())
        .ok_or_else(|| std::io::Error::other("too many bytes for one store"))?;
    let iov = [
        libc::iovec {
            iov_base: h.as_ptr() as *mut libc::c_void,
            iov_len: h.len(),
        },
        libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        },
    ];
    // SAFETY: both iovecs point to live buffers of the lengths given; /dev/fuse only reads them.
    let n = unsafe { libc::writev(device.as_raw_fd(), iov.as_ptr(), 2) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_headers_follow_the_kernel_layout() {
        let h = store_headers(0x42, 1 << 33, 4096).unwrap();
        assert_eq!(u32::from_ne_bytes(h[0..4].try_into().unwrap()), 40 + 4096);
        assert_eq!(i32::from_ne_bytes(h[4..8].try_into().unwrap()), 4);
        assert_eq!(u64::from_ne_bytes(h[8..16].try_into().unwrap()), 0);
        assert_eq!(u64::from_ne_bytes(h[16..24].try_into().unwrap()), 0x42);
        assert_eq!(u64::from_ne_bytes(h[24..32].try_into().unwrap()), 1 << 33);
        assert_eq!(u32::from_ne_bytes(h[32..36].try_into().unwrap()), 4096);
        assert_eq!(&h[36..], &[0; 4]);
        assert!(store_headers(1, 0, usize::MAX).is_none());
    }

    #[test]
    fn a_full_queue_gives_up_after_a_short_wait_and_frees_its_slots() {
        let stores = Stores::new(Arc::new(OnceLock::new()));
        let held: Vec<Pipe> = (0..IN_FLIGHT)
            .map(|_| stores.slot(true).flatten().unwrap())
            .collect();
        let t = std::time::Instant::now();
        assert!(stores.slot(true).is_none(), "one store more than IN_FLIGHT");
        assert!(t.elapsed() >= WAIT);
        for p in held {
            stores.done(Some(p));
        }
        assert!(stores.slot(true).flatten().is_some());
    }

    #[test]
    fn replies_split_into_page_parts_and_whole_pages() {
        let t = Target::new(1, 10 * PAGE + 100);
        // Aligned, whole pages: all of it goes at once.
        assert_eq!(t.split(0, 8192), (0, 8192, 0));
        // A buffer 16 bytes into a page: the ends are parts of pages.
        assert_eq!(t.split(4080, 8192), (16, 4096, 4080));
        // Within one page.
        assert_eq!(t.split(100, 50), (50, 0, 0));
        // The end of the file ends the last page.
        assert_eq!(
            t.split(8 * PAGE, 2 * PAGE as usize + 100),
            (0, 2 * PAGE as usize + 100, 0)
        );
        assert_eq!(
            t.split(8 * PAGE + 16, 2 * PAGE as usize + 84),
            (4080, 4196, 0)
        );
    }

    #[test]
    fn partial_pages_are_stored_once_whole_and_only_with_the_right_bytes() {
        let size = 3 * PAGE + 10;
        let file: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        let t = Target::new(1, size);
        let part = |a: u64, b: u64| t.edge(a, &file[a as usize..b as usize]);
        // The end of one reply, then the start of the next: whole.
        assert_eq!(part(PAGE + 16, 2 * PAGE), None);
        let (at, page) = part(PAGE, PAGE + 16).expect("the page is whole");
        assert_eq!(at, PAGE);
        assert_eq!(page, &file[PAGE as usize..2 * PAGE as usize]);
        // Two parts that leave a gap never make a page.
        assert_eq!(part(0, 10), None);
        assert_eq!(part(20, PAGE), None);
        assert_eq!(part(10, 15), None);
        // The last page is whole at the end of the file.
        let (at, page) = part(3 * PAGE, size).expect("the last page ends the file");
        assert_eq!(
            (at, page.as_slice()),
            (3 * PAGE, &file[3 * PAGE as usize..])
        );
        // A part crossing a page is not an edge.
        assert_eq!(part(2 * PAGE - 5, 2 * PAGE + 5), None);
    }
}
