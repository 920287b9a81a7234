//! Reading one open file: one streaming RETR per open file while reads are sequential.
//!
//! Owns: which server serves the bytes (first reachable source by priority, then the next
//! mirror on failure, continuing at the same offset with REST), the splice check when bytes of
//! a second copy follow bytes of a first one, the data stream, a buffer of recently received
//! chunks, and read-ahead.
//!
//! Splices: the first server that delivers bytes of an open file is its reference. Another
//! copy takes over only after it proved to be the same file: where both servers offer a common
//! hash command the two hashes must agree ([`Mirrors::compare_by_hash`]), and in every case the
//! new copy's last [`OVERLAP`] bytes before the splice point (the transfer starts that much
//! earlier) must equal the bytes already received. A mismatch fails the read with EIO and marks
//! the two copies different for the life of the mount (see [`crate::circle::mirrors`]).
//!
//! How: the stream lives in the shared state. Whoever takes it out reads the next chunk from
//! the network (a FUSE request, or the read-ahead pump of a big file) while the others wait on
//! a condition variable or answer from the buffer. Read-ahead runs as short jobs on a pool shared
//! by all open files (no thread per file). Requests arrive slightly out of order (the
//! kernel sends several reads of one file at once), so a request a little behind the stream is
//! answered from the buffer, and one a little ahead by reading forward; anything else aborts
//! the transfer and starts a new one at the requested offset.
//!
//! Zero copy: a request that starts where a plain (not TLS) transfer stands is answered by
//! splicing its bytes from the data socket to /dev/fuse ([`SpliceSink`], [`crate::splice`]),
//! without copying them into the buffer; only the last [`OVERLAP`] bytes are read here, as the
//! witness. Such a file gets no read-ahead jobs: the socket's own buffer reads ahead. Bytes
//! that a request overtaking another skips over go to the buffer for that other request.
//!
//! Invariants:
//! - bytes returned are always the file's bytes at the requested offsets: a transfer that ends
//!   before the listed size, or goes on past it, is an error, never short or wrong data;
//! - bytes of a copy are only joined to bytes of another copy after the splice check passed
//!   (hashes where offered, and the overlap always); copies known to differ are never joined;
//! - reads past the listed size return nothing (the size is known from the listing);
//! - memory per open file is bounded by [`KEEP_BYTES`] plus one chunk in flight;
//! - every wait is bounded: network calls by `--timeout`, waits for another thread's chunk by
//!   the `max_wait` given at open.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::{Backend, ByteStream, Priority};
use crate::circle::choice;
use crate::circle::mirrors::Mirrors;
use crate::circle::segments::{Handover, SegmentContext, Segmented};
use crate::error::{Error, Kind, Result};
use crate::splice::Pipe;
use crate::workers::Workers;

/// Unit of network reads and of the buffer. 1 MiB matches the largest FUSE read (256 pages
/// with FUSE_MAX_PAGES), so a sequential request is usually served by one chunk.
const CHUNK: usize = 1024 * 1024;
/// How far the pump reads ahead of the furthest requested byte: 16 MiB covers the bandwidth-
/// delay product of a 700 MiB/s link at 20 ms RTT, so the network never waits for the reader.
const READAHEAD: u64 = 16 * 1024 * 1024;
/// Bytes kept per open file: the read-ahead plus 8 MiB behind it for out-of-order and small
/// backward reads (the kernel's readahead window is at most a few MiB).
const KEEP_BYTES: usize = READAHEAD as usize + 8 * 1024 * 1024;
/// A request this far ahead of the stream is reached by reading forward: at any plausible
/// link speed reading 4 MiB costs less than the 3+ round trips of a stop, REST and RETR.
const SKIP_FORWARD: u64 = 4 * 1024 * 1024;
/// A request starting this far past the end of the last one still continues a sequential
/// read: the kernel's readahead has a few 128 KiB requests in flight at once.
const SEQ_GAP: u64 = 256 * 1024;
/// Files larger than this get read-ahead; smaller ones arrive in a chunk or two and a job
/// would cost more than it saves.
const PUMP_MIN_SIZE: u64 = 2 * CHUNK as u64;
/// Chunks one read-ahead job pulls before it gives its worker to the next open file: 4 MiB
/// keeps the per-job overhead negligible and lets a few workers serve many big open files.
const PUMP_TURN_CHUNKS: usize = 4;
/// Bytes compared at a splice: 4 KiB is one page of the file, a few microseconds on the wire,
/// and two different builds of a file agree on 4 KiB of the same place only by accident
/// (headers aside, which is why the overlap ends right at the splice point when it can).
pub const OVERLAP: usize = 4096;

struct Active {
    server: usize,
    stream: Box<dyn ByteStream>,
    /// Offset of the next byte the stream delivers.
    pos: u64,
    /// Opened at 0 on a server without REST: reach any offset by reading forward.
    no_rest: bool,
    /// The stream is a segmented read ([`crate::circle::segments`]) of several copies.
    segmented: bool,
    /// Where and when the transfer started, and the time spent waiting on it: how fast it
    /// goes alone is what it delivered over the time the pulls waited for it (a stream that
    /// waits for its reader, as a fast one on loopback does, is not the bottleneck).
    start: u64,
    opened: Instant,
    pulling: Duration,
}

/// Where a read reply can go without its bytes passing through the daemon's memory: the FUSE
/// adapter's /dev/fuse, through a pipe ([`crate::splice`]).
pub trait SpliceSink {
    /// A reply of `len` bytes starts: the pipe to put them in (anything that must precede
    /// them already in it), or None if this reply cannot go that way.
    fn begin(&mut self, len: usize) -> Option<&Pipe>;
    /// All `len` bytes are in the pipe: send the reply.
    fn commit(&mut self) -> std::io::Result<()>;
    /// The reply will not be sent: the bytes put in the pipe after `begin`, back.
    fn take_back(&mut self) -> std::io::Result<Vec<u8>>;
}

/// How a read was answered.
pub enum Served {
    /// With these bytes (the caller replies).
    Data(Data),
    /// Through the [`SpliceSink`]: the reply is sent.
    Sent,
}

/// Bytes for a read reply: a slice of a buffered chunk (no copy) or assembled bytes.
pub enum Data {
    Shared(Arc<Vec<u8>>, std::ops::Range<usize>),
    Owned(Vec<u8>),
}

impl Data {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            Data::Shared(chunk, range) => chunk.get(range.clone()).unwrap_or(&[]),
            Data::Owned(v) => v,
        }
    }
}

#[derive(Default)]
struct Chunks {
    list: VecDeque<(u64, Arc<Vec<u8>>)>,
    bytes: usize,
    /// Buffers of evicted chunks, reused so a new chunk needs no fresh zeroed allocation.
    spare: Vec<Vec<u8>>,
}

impl Chunks {
    fn push(&mut self, off: u64, data: Vec<u8>) {
        self.bytes += data.len();
        self.list.push_back((off, Arc::new(data)));
        while self.bytes > KEEP_BYTES {
            match self.list.pop_front() {
                Some((_, d)) => {
                    self.bytes -= d.len();
                    // Two spare buffers are enough to keep one pull and one reply going.
                    if self.spare.len() < 2
                        && let Ok(v) = Arc::try_unwrap(d)
                    {
                        self.spare.push(v);
                    }
                }
                None => break,
            }
        }
    }

    /// The whole of `[off, off + len)` if one chunk holds it.
    fn slice(&self, off: u64, len: usize) -> Option<Data> {
        self.list.iter().rev().find_map(|(start, data)| {
            let from = off.checked_sub(*start)? as usize;
            (from + len <= data.len()).then(|| Data::Shared(Arc::clone(data), from..from + len))
        })
    }

    /// A buffer of exactly `len` bytes: a recycled one when possible.
    fn buffer(&mut self, len: usize) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut v) => {
                v.resize(len, 0);
                v
            }
            None => vec![0u8; len],
        }
    }

    /// Copy into `out` the buffered bytes starting at `off`; returns how many.
    fn copy(&self, off: u64, want: usize, out: &mut Vec<u8>) -> usize {
        for (start, data) in self.list.iter().rev() {
            let end = start + data.len() as u64;
            if off >= *start && off < end {
                let from = (off - start) as usize;
                let n = want.min(data.len() - from);
                if out.capacity() == 0 {
                    out.reserve_exact(want);
                }
                out.extend_from_slice(&data[from..from + n]);
                return n;
            }
        }
        0
    }
}

#[derive(Default)]
struct State {
    /// The transfer, when nobody is reading from it.
    active: Option<Active>,
    /// Someone took the transfer out and is reading a chunk, or opening a new one.
    busy: bool,
    chunks: Chunks,
    /// Servers that failed for this file since it was opened.
    failed: Vec<usize>,
    /// Servers whose bytes of this file were received and agree with each other: the first one
    /// to deliver, then every copy that passed the splice check.
    agreed: Vec<usize>,
    /// The last bytes received (up to OVERLAP) and their offset: what a new copy is checked
    /// against at a splice.
    witness: Option<(u64, Vec<u8>)>,
    /// Furthest byte any request asked for: the pump reads up to this plus READAHEAD.
    want_end: u64,
    closed: bool,
    /// A read-ahead job is queued or running for this file.
    pump_running: bool,
    /// When a request last used this file (for the idle reaper).
    last_read: Option<Instant>,
    /// End of the last request, and the bytes requested back to back up to it: reads are
    /// sequential (and worth a segmented read) once that passes the trigger.
    seq_end: u64,
    seq_run: u64,
    /// An error that ends the read being served (copies found different in a segmented read).
    fatal: Option<Error>,
    /// Replies went from the socket straight to the kernel ([`Shared::splice`]): the socket's
    /// own buffer reads ahead, and a read-ahead job would only take the bytes out of that path.
    spliced: bool,
    /// Bytes sent that way (logged at close).
    spliced_bytes: u64,
}

struct Shared {
    backend: Arc<dyn Backend>,
    /// Where read-ahead jobs run (shared by all open files).
    pumps: Arc<Workers>,
    path: Vec<u8>,
    size: u64,
    sources: Vec<usize>,
    max_wait: Duration,
    mirrors: Arc<Mirrors>,
    segments: Arc<SegmentContext>,
    st: Mutex<State>,
    cv: Condvar,
}

pub struct OpenFile {
    pub ino: u64,
    shared: Arc<Shared>,
}

/// What every open file of a mount shares.
pub struct Context {
    pub backend: Arc<dyn Backend>,
    /// Where read-ahead jobs run.
    pub pumps: Arc<Workers>,
    /// Copies found different, file hashes.
    pub mirrors: Arc<Mirrors>,
    /// Upper bound for waiting on another request's chunk.
    pub max_wait: Duration,
    /// Segmented reads: options, pool, memory bound.
    pub segments: Arc<SegmentContext>,
}

impl OpenFile {
    pub fn new(ctx: &Context, ino: u64, path: Vec<u8>, size: u64, sources: Vec<usize>) -> Self {
        OpenFile {
            ino,
            shared: Arc::new(Shared {
                backend: Arc::clone(&ctx.backend),
                pumps: Arc::clone(&ctx.pumps),
                path,
                size,
                sources,
                max_wait: ctx.max_wait,
                mirrors: Arc::clone(&ctx.mirrors),
                segments: Arc::clone(&ctx.segments),
                st: Mutex::new(State::default()),
                cv: Condvar::new(),
            }),
        }
    }

    /// Start with the whole file already here (prefetched); no transfer will be needed.
    pub fn seed(&self, data: Vec<u8>) {
        if data.len() as u64 == self.shared.size {
            self.shared.lock().chunks.push(0, data);
        }
    }

    pub fn path(&self) -> &[u8] {
        &self.shared.path
    }

    /// Read up to `len` bytes at `off`.
    pub fn read(&self, off: u64, len: usize) -> Result<Data> {
        match self.read_into(off, len, None)? {
            Served::Data(d) => Ok(d),
            Served::Sent => unreachable!("no sink to send through"),
        }
    }

    /// Read up to `len` bytes at `off`; where the bytes come straight off a plain transfer,
    /// send them through `sink` without copying them here.
    pub fn read_into(
        &self,
        off: u64,
        len: usize,
        mut sink: Option<&mut dyn SpliceSink>,
    ) -> Result<Served> {
        let sh = &self.shared;
        if off >= sh.size || len == 0 {
            return Ok(Served::Data(Data::Owned(Vec::new())));
        }
        let end = sh.size.min(off.saturating_add(len as u64));
        let want = (end - off) as usize;
        // Allocated only when the reply has to be assembled: most requests are a slice of one
        // buffered chunk, and an allocation of this size per request costs an mmap and a munmap
        // (with its TLB shootdown on every core).
        let mut out = Vec::new();
        let deadline = Instant::now() + sh.max_wait;
        let mut st = sh.lock();
        st.want_end = st.want_end.max(end);
        st.last_read = Some(Instant::now());
        // The kernel sends a sequential reader's requests a little out of order: starting
        // up to a chunk behind the last end or SEQ_GAP ahead of it is still back to back. Only
        // the new bytes a request asks for count (a jump does not).
        if off <= st.seq_end + SEQ_GAP && end + CHUNK as u64 >= st.seq_end {
            st.seq_run += end.saturating_sub(st.seq_end).min(end - off);
        } else {
            st.seq_run = 0;
        }
        st.seq_end = st.seq_end.max(end);
        if st.seq_run == 0 {
            st.seq_end = end;
        }
        sh.kick_pump(&mut st);
        // Every turn copies buffered bytes, pulls a chunk, opens a stream (a failure marks a
        // server failed, and `open_at` fails once all have) or waits with the deadline.
        while out.len() < want {
            if let Some(e) = st.fatal.take() {
                return Err(e);
            }
            if out.is_empty()
                && let Some(data) = st.chunks.slice(off, want)
            {
                drop(st);
                sh.cv.notify_all();
                return Ok(Served::Data(data));
            }
            let cur = off + out.len() as u64;
            if st.chunks.copy(cur, want - out.len(), &mut out) > 0 {
                continue;
            }
            if st.busy {
                if Instant::now() >= deadline {
                    return Err(Error::new(
                        Kind::Timeout,
                        format!("{}: no data within {:?}", sh.display(), sh.max_wait),
                    ));
                }
                st = sh.wait(st, deadline);
                continue;
            }
            let usable = st
                .active
                .as_ref()
                .is_some_and(|a| a.pos <= cur && (cur - a.pos <= SKIP_FORWARD || a.no_rest));
            if usable
                && out.is_empty()
                && let Some(to) = sink.as_deref_mut()
                && sh.splice_ready(&st, cur, want)
            {
                // The kernel's requests overtake each other: the bytes before this one go to
                // the buffer (for the request that asks for them), then this one is spliced.
                let gap = st.active.as_ref().map_or(0, |a| cur - a.pos);
                if gap > 0 {
                    st = sh.pull_upto(st, gap as usize);
                    continue;
                }
                let (g, outcome) = sh.splice(st, cur, want, to);
                st = g;
                match outcome? {
                    None => {
                        drop(st);
                        sh.cv.notify_all();
                        return Ok(Served::Sent);
                    }
                    // Taken the ordinary way from here on, for this request.
                    Some(back) => {
                        out = back;
                        sink = None;
                    }
                }
            } else if usable {
                st = sh.pull(st);
            } else {
                st = sh.reopen(st, cur)?;
            }
        }
        // Data was consumed: the pump may read further ahead now.
        sh.kick_pump(&mut st);
        drop(st);
        sh.cv.notify_all();
        Ok(Served::Data(Data::Owned(out)))
    }

    /// Abort the transfer if no request used the file for `idle`: an open file nobody reads
    /// (an editor, `less` left open, a stalled program) must not hold one of the server's few
    /// connections. A later read starts a new transfer at its offset (REST).
    pub fn reap_if_idle(&self, idle: Duration) -> bool {
        let sh = &self.shared;
        let mut st = sh.lock();
        if st.busy || st.active.is_none() || st.last_read.is_some_and(|t| t.elapsed() < idle) {
            return false;
        }
        let active = st.active.take();
        drop(st);
        if let Some(a) = active {
            a.stream.abort();
        }
        true
    }

    /// Stop any transfer in progress and the pump (on release).
    pub fn close(&self) {
        let sh = &self.shared;
        let mut st = sh.lock();
        st.closed = true;
        if st.spliced_bytes > 0 {
            log::debug!(
                "{}: {} bytes went from the socket to the kernel without a copy (zero copy)",
                sh.display(),
                st.spliced_bytes
            );
        }
        let active = st.active.take();
        drop(st);
        sh.cv.notify_all();
        if let Some(a) = active {
            a.stream.abort();
        }
    }
}

/// What a new copy is checked against (a snapshot of the state, taken with the lock).
struct Splice {
    agreed: Vec<usize>,
    witness: Option<(u64, Vec<u8>)>,
}

impl Splice {
    /// The witness a copy on `server` must match before it serves bytes, if it is a splice.
    fn needs_check(&self, server: usize) -> Option<(u64, &[u8])> {
        if self.agreed.is_empty() || self.agreed.contains(&server) {
            return None;
        }
        self.witness.as_ref().map(|(off, w)| (*off, &w[..]))
    }
}

impl State {
    /// Remember the last bytes received as the witness for a later splice; bytes that continue
    /// the current witness extend it (up to OVERLAP).
    fn note_witness(&mut self, start: u64, data: &[u8]) {
        let tail = &data[data.len().saturating_sub(OVERLAP)..];
        let tail_off = start + (data.len() - tail.len()) as u64;
        match &mut self.witness {
            Some((off, w)) if tail.len() < OVERLAP && *off + w.len() as u64 == start => {
                w.extend_from_slice(tail);
                let cut = w.len().saturating_sub(OVERLAP);
                w.drain(..cut);
                *off += cut as u64;
            }
            _ => self.witness = Some((tail_off, tail.to_vec())),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>, deadline: Instant) -> MutexGuard<'a, State> {
        let left = deadline.saturating_duration_since(Instant::now());
        self.cv
            .wait_timeout(st, left)
            .unwrap_or_else(|p| p.into_inner())
            .0
    }

    fn display(&self) -> String {
        format!("/{}", String::from_utf8_lossy(&self.path))
    }

    /// Take the transfer, read one chunk without holding the lock, put everything back.
    fn pull<'a>(&'a self, st: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.pull_upto(st, CHUNK)
    }

    /// [`Self::pull`] of at most `most` bytes.
    fn pull_upto<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        most: usize,
    ) -> MutexGuard<'a, State> {
        let Some(mut active) = st.active.take() else {
            return st;
        };
        st.busy = true;
        let want = most.min(CHUNK).min((self.size - active.pos) as usize);
        let buf = st.chunks.buffer(want);
        let handover = self.segment_due(&st, &active);
        drop(st);
        if let Some(sources) = handover {
            self.segment(&mut active, sources);
        }
        let start = active.pos;
        let began = Instant::now();
        let (data, res) = read_chunk(&mut active, self.size, buf);
        active.pulling += began.elapsed();
        let mut st = self.lock();
        st.busy = false;
        if !data.is_empty() {
            if st.agreed.is_empty() {
                st.agreed.push(active.server);
            }
            st.note_witness(start, &data);
            // Keep what arrived even if the transfer broke: the next copy resumes right here.
            st.chunks.push(start, data);
        }
        self.settle(st, active, res)
    }

    /// Put the transfer back after bytes were taken from it (`res`: how that went): finished
    /// at the end of the file, aborted on close or failure (the server marked failed for this
    /// file), else ready for the next request.
    fn settle<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        active: Active,
        res: Result<()>,
    ) -> MutexGuard<'a, State> {
        match res {
            Ok(()) => {
                if active.pos >= self.size {
                    drop(st);
                    finish(active, self);
                    st = self.lock();
                } else if st.closed {
                    drop(st);
                    active.stream.abort();
                    st = self.lock();
                } else {
                    st.active = Some(active);
                }
            }
            Err(e) if e.kind == Kind::Mismatch => {
                // Copies found different mid-read: this read fails (EIO); they are marked.
                st.fatal = Some(e);
                drop(st);
                active.stream.abort();
                st = self.lock();
            }
            Err(e) => {
                log::warn!(
                    "{}: {e} at byte {}; trying another copy",
                    self.display(),
                    active.pos
                );
                st.failed.push(active.server);
                drop(st);
                active.stream.abort();
                st = self.lock();
            }
        }
        self.cv.notify_all();
        st
    }

    /// Can `[off, off + want)` go from the transfer's socket straight into the reply? The
    /// transfer is at `off` or a little before it, is one plain stream (not segmented, not
    /// TLS), the reply is more than the bytes kept as witness, and the transfer is not about
    /// to become segmented. The last CHUNK of a file goes the ordinary way: the reply that
    /// ends the file must see the transfer end right there ([`finish`]) before it leaves, and
    /// a file of a chunk or less is then read whole by its first request and its transfer
    /// finished, not stopped at close (a finished transfer needs no stop, see
    /// [`crate::ftp::conn::Conn::abort`]).
    fn splice_ready(&self, st: &State, off: u64, want: usize) -> bool {
        want > 2 * OVERLAP
            && off + ((want + CHUNK) as u64) < self.size
            && st.active.as_ref().is_some_and(|a| {
                a.pos <= off
                    && off - a.pos <= SKIP_FORWARD
                    && !a.segmented
                    && a.stream.can_splice()
                    && self.segment_due(st, a).is_none()
            })
    }

    /// Serve `[off, off + want)` from the transfer's socket into the reply without copying
    /// it here ([`SpliceSink`]); the transfer is at `off` ([`Self::splice_ready`]). The last
    /// OVERLAP bytes are read the ordinary way: they are the witness for a later splice
    /// check. The transfer is handed back before the reply goes to the kernel, so the next
    /// request's bytes come off the socket while this one's are copied into the page cache.
    /// Returns None once the reply is sent; else the bytes of `[off, ..)` that were taken
    /// (possibly none), for the caller to go on the ordinary way.
    fn splice<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        off: u64,
        want: usize,
        sink: &mut dyn SpliceSink,
    ) -> (MutexGuard<'a, State>, Result<Option<Vec<u8>>>) {
        let Some(mut active) = st.active.take() else {
            return (st, Ok(Some(Vec::new())));
        };
        st.busy = true;
        drop(st);
        let began = Instant::now();
        let body = want - OVERLAP;
        let mut moved = 0;
        let mut tail = Vec::new();
        let mut res = Ok(());
        let mut complete = false;
        if let Some(pipe) = sink.begin(want) {
            // Bounded: each turn moves at least one byte or ends the loop.
            while moved < body {
                match active.stream.splice_to(pipe, body - moved) {
                    Some(Ok(n)) if n > 0 => moved += n,
                    Some(Ok(_)) | None => break,
                    Some(Err(e)) => {
                        res = Err(e);
                        break;
                    }
                }
            }
            active.pos += moved as u64;
            if moved == body && res.is_ok() {
                let (t, r) = read_chunk(&mut active, self.size, vec![0u8; OVERLAP]);
                tail = t;
                res = r;
                complete = res.is_ok() && pipe.put(&tail).is_ok();
            }
        }
        active.pulling += began.elapsed();
        // Everything that went into the pipe and will not be sent, back in order (any part of
        // the tail that went in dropped, then the tail); None if the pipe would not give it.
        let back = if complete {
            None
        } else {
            match sink.take_back() {
                Ok(mut back) if back.len() >= moved => {
                    back.truncate(moved);
                    back.extend_from_slice(&tail);
                    Some(back)
                }
                _ => None,
            }
        };
        let mut st = self.lock();
        st.busy = false;
        if moved + tail.len() > 0 && st.agreed.is_empty() {
            st.agreed.push(active.server);
        }
        if complete {
            st.note_witness(off + body as u64, &tail);
            st.spliced = true;
            st.spliced_bytes += want as u64;
            drop(self.settle(st, active, res));
            let sent = sink.commit().map_err(|e| {
                // The transfer is fine (it is past these bytes); only this reply is lost.
                Error::new(
                    Kind::Protocol,
                    format!("{}: sending a read reply: {e}", self.display()),
                )
            });
            return (self.lock(), sent.map(|()| None));
        }
        match back {
            Some(back) => {
                if !back.is_empty() {
                    st.note_witness(off, &back);
                }
                (self.settle(st, active, res), Ok(Some(back)))
            }
            // The pipe would not give its bytes back: they are gone, so the transfer cannot go
            // on from where it is; a new one starts at `off`.
            None => {
                drop(st);
                active.stream.abort();
                self.cv.notify_all();
                (self.lock(), Ok(Some(Vec::new())))
            }
        }
    }

    /// Should the transfer become a segmented read now? The copies to use if so: the file is
    /// big enough, its reads are sequential, the transfer alone is not already fast, the stream is at the end of the witness (so the
    /// first splice can be checked) and there is another copy or connection to use.
    fn segment_due(&self, st: &State, active: &Active) -> Option<Vec<usize>> {
        let opts = &self.segments.opts;
        let ran = active.opened.elapsed();
        let alone =
            active.pos.saturating_sub(active.start) as f64 / active.pulling.as_secs_f64().max(1e-6);
        let ready = opts.enabled
            && ran >= opts.judge_after
            && alone < opts.fast_alone
            && opts.max_streams > 1
            && !active.segmented
            && !active.no_rest
            && st.seq_run >= opts.trigger
            && self.size.saturating_sub(active.pos) >= opts.min_rest
            && st
                .witness
                .as_ref()
                .is_some_and(|(off, w)| *off + w.len() as u64 == active.pos && !w.is_empty());
        if !ready {
            return None;
        }
        let sources = self
            .sources
            .iter()
            .copied()
            .filter(|&s| {
                s == active.server
                    || (!st.failed.contains(&s)
                        && !st
                            .agreed
                            .iter()
                            .any(|&a| a != s && self.mirrors.differ(&self.path, a, s)))
            })
            .collect::<Vec<usize>>();
        // One copy and no connection to spare: a segmented read would be one stream anyway.
        if sources.len() < 2 && self.backend.spare_connections(active.server) == 0 {
            return None;
        }
        log::debug!(
            "{}: the transfer did {:.1} MB/s while read (under {:.0}): segmenting",
            self.display(),
            alone / 1e6,
            opts.fast_alone / 1e6
        );
        Some(sources)
    }

    /// Turn the transfer into a segmented read (it becomes the first of its streams).
    fn segment(&self, active: &mut Active, sources: Vec<usize>) {
        let witness = self
            .lock()
            .witness
            .as_ref()
            .map(|(_, w)| w.clone())
            .unwrap_or_default();
        let placeholder: Box<dyn ByteStream> = Box::new(Ended);
        let stream = std::mem::replace(&mut active.stream, placeholder);
        let seg = Segmented::start(
            &self.backend,
            &self.segments,
            &self.mirrors,
            Handover {
                path: self.path.clone(),
                size: self.size,
                sources,
                stream,
                server: active.server,
                pos: active.pos,
                witness,
                max_wait: self.max_wait,
            },
        );
        active.stream = Box::new(seg);
        active.segmented = true;
    }

    /// Abort the current transfer and open one at `offset`.
    fn reopen<'a>(
        &'a self,
        mut st: MutexGuard<'a, State>,
        offset: u64,
    ) -> Result<MutexGuard<'a, State>> {
        let old = st.active.take();
        let failed = st.failed.clone();
        let splice = Splice {
            agreed: st.agreed.clone(),
            witness: st.witness.clone(),
        };
        st.busy = true;
        drop(st);
        if let Some(a) = old {
            a.stream.abort();
        }
        let res = self.open_at(&failed, offset, &splice);
        let mut st = self.lock();
        st.busy = false;
        self.cv.notify_all();
        match res {
            Ok((active, newly_failed)) => {
                st.failed.extend(newly_failed);
                if !st.agreed.is_empty() && !st.agreed.contains(&active.server) {
                    st.agreed.push(active.server);
                }
                st.active = Some(active);
                Ok(st)
            }
            Err(e) => {
                // Nothing left: forget the failures so a later read may try again from the top.
                st.failed.clear();
                Err(e)
            }
        }
    }

    /// Open a stream at `offset` from the first source by priority that has not failed and is
    /// not known to differ from the copies already read. A server without REST is skipped while
    /// another copy can start at the offset; if none can, the first such server is read from
    /// the start and the bytes before `offset` discarded.
    ///
    /// A copy other than those already read must pass the splice check first: then the stream
    /// returned starts at the end of the witness bytes, not at `offset` (the caller reads
    /// forward or opens again, from a copy that now agrees).
    fn open_at(
        &self,
        failed: &[usize],
        offset: u64,
        splice: &Splice,
    ) -> Result<(Active, Vec<usize>)> {
        let mut newly_failed = Vec::new();
        let mut no_rest = Vec::new();
        let mut last_err = None;
        let ranked = choice::rank(self.backend.as_ref(), &self.sources, self.size);
        let usable = ranked.into_iter().filter(|&s| {
            !failed.contains(&s)
                && !splice
                    .agreed
                    .iter()
                    .any(|&a| a != s && self.mirrors.differ(&self.path, a, s))
        });
        for server in usable {
            let check = splice.needs_check(server);
            let at = check.map_or(offset, |(w_off, _)| w_off);
            match self.open_checked(server, at, false, check, &splice.agreed) {
                Ok(active) => return Ok((active, newly_failed)),
                Err(e) if e.kind == Kind::NoRest => no_rest.push(server),
                Err(e) if e.kind == Kind::Mismatch => return Err(e),
                Err(e) => {
                    log::warn!("{}: {e}", self.display());
                    newly_failed.push(server);
                    last_err = Some(e);
                }
            }
        }
        for server in no_rest {
            log::debug!(
                "{}: {} has no REST: reading from the start up to {offset}",
                self.display(),
                self.backend.label(server)
            );
            let check = splice.needs_check(server);
            match self.open_checked(server, 0, true, check, &splice.agreed) {
                Ok(active) => return Ok((active, newly_failed)),
                Err(e) if e.kind == Kind::Mismatch => return Err(e),
                Err(e) => {
                    newly_failed.push(server);
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| {
            Error::new(
                Kind::Unavailable,
                format!("{}: no server could deliver it", self.display()),
            )
        }))
    }

    /// More to read ahead: the transfer is open and not yet READAHEAD past the furthest
    /// requested byte.
    fn ahead_due(&self, st: &State) -> bool {
        st.active.as_ref().is_some_and(|a| {
            (!st.spliced || a.segmented)
                && a.pos < self.size
                && a.pos < st.want_end.saturating_add(READAHEAD)
        })
    }

    /// Queue a read-ahead job for a big file if there is work and none is queued already.
    fn kick_pump(self: &Arc<Self>, st: &mut State) {
        if self.size > PUMP_MIN_SIZE && !st.pump_running && !st.closed && self.ahead_due(st) {
            st.pump_running = true;
            let sh = Arc::clone(self);
            self.pumps.spawn(move || sh.pump());
        }
    }

    /// Open a stream from `server` at `at`; for a splice (`check`: the witness offset and
    /// bytes), check the copy before handing the stream out.
    fn open_checked(
        &self,
        server: usize,
        at: u64,
        no_rest: bool,
        check: Option<(u64, &[u8])>,
        agreed: &[usize],
    ) -> Result<Active> {
        let stream = self
            .backend
            .open(server, &self.path, at, Priority::Foreground)?;
        let mut active = Active {
            server,
            stream,
            pos: at,
            no_rest,
            segmented: false,
            start: at,
            opened: Instant::now(),
            pulling: Duration::ZERO,
        };
        if let Some((w_off, witness)) = check
            && let Err(e) = self.check_splice(&mut active, agreed, w_off, witness)
        {
            active.stream.abort();
            return Err(e);
        }
        Ok(active)
    }

    /// The splice check of a new copy, whose stream `active` starts at or before `w_off`:
    /// hashes where both servers offer one, then the bytes at `w_off` must be `witness`.
    /// Leaves the stream right after the witness. A mismatch marks the copies different.
    fn check_splice(
        &self,
        active: &mut Active,
        agreed: &[usize],
        w_off: u64,
        witness: &[u8],
    ) -> Result<()> {
        let server = active.server;
        let mismatch = |how: &str| {
            for &a in agreed {
                self.mirrors.mark_different(&self.path, a, server);
            }
            let first = agreed.first().map_or("?", |&a| self.backend.label(a));
            let msg = format!(
                "{}: the copies on {first} and {} differ ({how}): not joining them; \
                 they are no longer treated as mirrors",
                self.display(),
                self.backend.label(server)
            );
            log::warn!("{msg}");
            Err(Error::new(Kind::Mismatch, msg))
        };
        if let Some(&a) = agreed.first()
            && self
                .mirrors
                .compare_by_hash(self.backend.as_ref(), &self.path, self.size, a, server)
                == Some(false)
        {
            return mismatch("different hashes");
        }
        // Bounded by the file size: each turn reads at least one byte or fails.
        let mut buf = Vec::new();
        while active.pos < w_off {
            buf.resize(CHUNK.min((w_off - active.pos) as usize), 0);
            let (data, res) = read_chunk(active, self.size, buf);
            res?;
            buf = data;
        }
        let (got, res) = read_chunk(active, self.size, vec![0u8; witness.len()]);
        res?;
        if got != witness {
            return mismatch(&format!(
                "{} bytes before the splice at byte {} are not the same",
                witness.len(),
                w_off + witness.len() as u64
            ));
        }
        log::info!(
            "{}: continuing on {} from byte {} (the last {} bytes agree)",
            self.display(),
            self.backend.label(server),
            active.pos,
            witness.len()
        );
        Ok(())
    }

    /// One read-ahead turn for one big open file: pull up to PUMP_TURN_CHUNKS chunks while
    /// the transfer is behind READAHEAD past the furthest requested byte, then queue another
    /// turn behind other files' if there is more. Never opens or restarts transfers (the
    /// requests do that); a request that is pulling itself ends the turn.
    fn pump(self: Arc<Self>) {
        let mut st = self.lock();
        for _ in 0..PUMP_TURN_CHUNKS {
            if st.closed || st.busy || !self.ahead_due(&st) {
                break;
            }
            st = self.pull(st);
        }
        st.pump_running = false;
        if !st.busy {
            self.kick_pump(&mut st);
        }
    }
}

/// A stream with nothing in it (stands in for a moment while the transfer is handed over).
struct Ended;

impl ByteStream for Ended {
    fn read(&mut self, _buf: &mut [u8]) -> Result<usize> {
        Ok(0)
    }
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
    fn abort(self: Box<Self>) {}
}

/// The transfer delivered the listed size: it must end now. More bytes mean the file grew on
/// the server since it was listed: the bytes so far may mix versions, so that is an error.
fn finish(mut active: Active, sh: &Shared) {
    let mut probe = [0u8; 1];
    match active.stream.read(&mut probe) {
        Ok(0) => {
            if let Err(e) = active.stream.finish() {
                log::debug!("{}: after the full read: {e}", sh.display());
            }
        }
        Ok(_) => {
            log::warn!(
                "{}: {} sends more than the {} bytes listed: the file changed",
                sh.display(),
                sh.backend.label(active.server),
                sh.size
            );
            active.stream.abort();
            let mut st = sh.lock();
            st.chunks = Chunks::default();
            st.failed.push(active.server);
        }
        Err(e) => log::debug!("{}: at end of transfer: {e}", sh.display()),
    }
}

/// Fill `buf` (CHUNK bytes or what is left of the file) with the next bytes of the stream.
/// Returns the bytes that arrived (all of `buf`, or fewer if the transfer broke) and how the
/// transfer fared; `active.pos` advances by the bytes returned.
fn read_chunk(active: &mut Active, size: u64, mut buf: Vec<u8>) -> (Vec<u8>, Result<()>) {
    let want = buf.len();
    let mut got = 0;
    let mut res = Ok(());
    while got < want {
        match active.stream.read(&mut buf[got..]) {
            Ok(0) => {
                res = Err(Error::new(
                    Kind::Stale,
                    format!(
                        "transfer ended at byte {} of {size} listed",
                        active.pos + got as u64
                    ),
                ));
                break;
            }
            Ok(n) => got += n,
            Err(e) => {
                res = Err(e);
                break;
            }
        }
    }
    buf.truncate(got);
    active.pos += got as u64;
    (buf, res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_witness_is_the_last_bytes_received() {
        let mut st = State::default();
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        st.note_witness(0, &data);
        let (off, w) = st.witness.clone().unwrap();
        assert_eq!((off, w.len()), (10_000 - OVERLAP as u64, OVERLAP));
        assert_eq!(w, &data[10_000 - OVERLAP..]);
        // Small pieces that continue it slide it forward, keeping OVERLAP bytes.
        st.note_witness(10_000, &[1, 2, 3]);
        let (off, w) = st.witness.clone().unwrap();
        assert_eq!(off, 10_003 - OVERLAP as u64);
        assert_eq!(w.len(), OVERLAP);
        assert_eq!(&w[OVERLAP - 3..], &[1, 2, 3]);
        assert_eq!(&w[..OVERLAP - 3], &data[10_003 - OVERLAP..]);
        // A piece elsewhere (after a seek) starts a new witness, however short.
        st.note_witness(50_000, &[9; 10]);
        assert_eq!(st.witness, Some((50_000, vec![9; 10])));
        st.note_witness(50_010, &[8; 5]);
        let (off, w) = st.witness.clone().unwrap();
        assert_eq!((off, w.len()), (50_000, 15));
    }
}
