//! Putting bytes read with direct I/O into the kernel's page cache (FUSE_NOTIFY_STORE).
//!
//! Owns: one worker thread and a few pipes, through which store messages go to /dev/fuse.
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
//!   what the cache holds is what a read returned.

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
    let out = out_header(STORE_HEADERS + len, FUSE_NOTIFY_STORE, 0)?;
    let mut h = [0u8; STORE_HEADERS];
    h[..OUT_HEADER].copy_from_slice(&out);
    h[16..24].copy_from_slice(&ino.to_ne_bytes());
    h[24..32].copy_from_slice(&offset.to_ne_bytes());
    h[32..36].copy_from_slice(&u32::try_from(len).ok()?.to_ne_bytes());
    Some(h)
}

/// What a queued store holds.
enum Job {
    /// A whole store message (headers and `len` bytes) in a pipe.
    Pipe(Pipe, usize),
    /// Bytes replied the ordinary way.
    Bytes { ino: u64, offset: u64, data: Data },
}

/// A counter of the bytes of one open file stored in the page cache.
pub type Stored = Arc<AtomicU64>;

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

    /// A pipe to build a store message in, or None (store nothing): hand it to
    /// [`Stores::send`] filled, or back with [`Stores::unused`].
    pub fn pipe(&self) -> Option<Pipe> {
        self.slot(true).flatten()
    }

    /// The pipe from [`Stores::pipe`] was not used.
    pub fn unused(&self, pipe: Pipe) {
        pipe.clear();
        self.done(Some(pipe));
    }

    /// Queue the store of `len` bytes that `pipe` holds (after their headers); `stored`
    /// counts them once they are in.
    pub fn send(&self, pipe: Pipe, len: usize, stored: Stored) {
        self.queue(Job::Pipe(pipe, len), stored);
    }

    /// Queue a store of `data`, replied at `offset` of `ino` the ordinary way.
    pub fn send_bytes(&self, ino: u64, offset: u64, data: Data, stored: Stored) {
        if data.as_slice().is_empty() || self.slot(false).is_none() {
            return;
        }
        self.queue(Job::Bytes { ino, offset, data }, stored);
    }

    fn queue(&self, job: Job, stored: Stored) {
        let me = self.clone();
        self.worker.spawn(move || {
            let pipe = me.run(job, &stored);
            me.done(pipe);
        });
    }

    /// Write one store to /dev/fuse; the pipe it came in, emptied, for the next.
    fn run(&self, job: Job, stored: &Stored) -> Option<Pipe> {
        let device = self.inner.device.get();
        let (res, len, pipe) = match job {
            Job::Pipe(p, len) => {
                let res = match device {
                    Some(d) => p.send_to(d.as_fd(), STORE_HEADERS + len),
                    None => Err(std::io::ErrorKind::NotConnected.into()),
                };
                (res, len, Some(p))
            }
            Job::Bytes { ino, offset, data } => {
                let data = data.as_slice();
                let res = match device {
                    Some(d) => write_store(d.as_fd(), ino, offset, data),
                    None => Err(std::io::ErrorKind::NotConnected.into()),
                };
                (res, data.len(), None)
            }
        };
        match res {
            Ok(()) => {
                stored.fetch_add(len as u64, Ordering::Relaxed);
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
        let held: Vec<Pipe> = (0..IN_FLIGHT).map(|_| stores.pipe().unwrap()).collect();
        let t = std::time::Instant::now();
        assert!(
            stores.pipe().is_none(),
            "a fifth store while four are queued"
        );
        assert!(t.elapsed() >= WAIT);
        for p in held {
            stores.unused(p);
        }
        assert!(stores.pipe().is_some());
    }
}
