//! Segmented reads: the rest of a big, sequentially read file fetched as pieces from all its
//! identical copies at once, and from several connections per server where the server has
//! connections to spare, handed to the reader in order.
//!
//! Owns: the pieces of one file ahead of its reader, the streams fetching them (which server,
//! which connection, which piece), the splice check between pieces of different servers, and
//! the memory those pieces take.
//!
//! How: [`Segmented`] is a [`ByteStream`] the reader ([`crate::circle::reader`]) swaps in for
//! its single transfer once reads are sequential, so everything the reader does (buffering,
//! read-ahead, the idle reaper, close) works unchanged. It starts with that transfer as its
//! first stream and opens more: round robin over the copies by measured speed
//! ([`crate::circle::choice`]), one more per server at a time while the server has a
//! connection to spare ([`Backend::spare_connections`]: never its last one) and up to
//! `max_streams`. Each stream fetches one piece per job on a pool shared by all open files (no
//! thread per stream), then takes the next piece:
//! - the piece right after the one it fetched, if nobody has it: it keeps streaming (no stop);
//! - else the first free piece of the window (stop, then REST + RETR there), so a faster stream
//!   takes more pieces (dynamic assignment);
//! - a piece the reader waits for that made no progress for [`STALL_AFTER`] is fetched a
//!   second time by another stream (a parked one, or a new one on another copy); the first
//!   copy to arrive is used;
//! - a stream that fails gives its piece back (fetched by another copy: failover per piece);
//!   its server is not used for this file again. With no copy left the read fails.
//!
//! Splices: a piece fetched by a new transfer starts [`OVERLAP`] bytes early; when the reader
//! reaches a piece from another server than the bytes before it, those bytes must equal the
//! last bytes it received, or the read fails with EIO and the copies are marked different
//! ([`Mirrors::mark_different`]). A piece that continues its stream's previous piece comes
//! from the same server as that piece.
//!
//! Invariants:
//! - the reader gets the bytes of the file in order, each byte from a copy checked against the
//!   bytes before it at every change of server;
//! - per file at most `window` pieces are taken or waiting for the reader, plus one second
//!   fetch of a stalled piece: `(window + 1) * piece` bytes (52 MiB with the defaults);
//! - over all files, pieces beyond the one each reader waits for hold at most
//!   [`GLOBAL_BYTES`]; so the total is at most `GLOBAL_BYTES + files * piece`;
//! - streams beyond the first only use connections the server has to spare (background
//!   priority), and give them back between pieces when a request the user waits for needs one
//!   ([`Backend::contended`]);
//! - every wait of the reader is bounded by `max_wait`; every network call by `--timeout`.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::backend::{Backend, ByteStream, Priority};
use crate::circle::choice;
use crate::circle::mirrors::Mirrors;
use crate::circle::reader::OVERLAP;
use crate::error::{Error, Kind, Result};
use crate::workers::Workers;

/// Piece size: 4 MiB takes 160 ms at a 25 MB/s per-connection cap, so the stop + REST + RETR
/// of a stream moving to a piece further on (a few round trips) costs a few percent, and a
/// stalled piece is small enough to fetch again.
pub const PIECE: u64 = 4 << 20;
/// Pieces per file taken or waiting for the reader: 12 (48 MiB) keeps 8 streams busy with
/// slack for the slow ones, and bounds the file's memory.
pub const WINDOW_PIECES: usize = 12;
/// Bytes of pieces ahead of their readers, over all open files (the piece each reader waits
/// for is not counted, so every file always makes progress).
pub const GLOBAL_BYTES: u64 = 256 << 20;
/// Only a file with at least this much left to read is segmented: below it one stream is done
/// in about a second even at 25 MB/s, and more connections would cost more than they save.
pub const MIN_REST: u64 = 32 << 20;
/// Reads are sequential once this many bytes were requested back to back: a few requests of
/// the kernel's readahead (random preads, a zip central directory, `tail -c` of less than
/// MIN_REST, never start a segmented read). Low, because a slow first copy serves it alone.
pub const SEQUENTIAL_TRIGGER: u64 = 512 << 10;
/// A transfer is judged after running this long (a 25 MB/s stream has delivered 2.5 MB by
/// then, a loopback one a hundred): long enough that its first round trips do not count much.
pub const JUDGE_AFTER: Duration = Duration::from_millis(100);
/// A transfer that delivers this much alone (1.6 Gbit/s) is held back by the link or the CPU,
/// not by a per-connection cap: more streams would only add stops, copies and contention
/// (measured on loopback: a cold cp fell from 0.5x to 0.17x curl when segmented).
pub const FAST_ALONE: f64 = 200e6;
/// A piece the reader waits for without a byte arriving for this long is fetched again
/// elsewhere: long against a 1 ms round trip or a 160 ms piece, short against `--timeout`.
pub const STALL_AFTER: Duration = Duration::from_secs(1);
/// Threads fetching pieces, shared by all open files. 8 serve one file at 8 streams; more
/// streams than that just wait their turn between pieces (a piece is a short job). Kept small
/// so the daemon's threads stay under 200 whatever the servers (tests/many_servers.rs).
pub const SEGMENT_WORKERS: usize = 8;
/// Default `--max-streams-per-file`.
pub const DEFAULT_MAX_STREAMS: usize = 8;
/// A piece reports progress (and learns if it is still wanted) every 256 KiB.
const PROGRESS_STEP: usize = 256 << 10;
/// A stream a quarter as fast as the fastest of its file is dropped after its piece, and a
/// piece the reader waits for that its stream would finish SLOW_FACTOR times later than the
/// fastest stream could fetch all of it is fetched again by a faster one: a 5 MB/s mirror must
/// not hold up 100 MB/s ones, while equal mirrors (rates within noise) are never dropped.
const SLOW_FACTOR: f64 = 4.0;
/// A stream's rate is measured over at least this much fetching (several pieces if need
/// be): a server that caps each connection's speed often lets the first few MB of a new
/// transfer out at once (vsftpd's `*_max_rate` does), and a rate taken from that burst alone
/// made 100 MB/s streams look four times slower than a fresh one and get dropped.
const RATE_SPAN: Duration = Duration::from_millis(100);
/// A piece is judged slow only after its stream had it this long: a stream on a fast copy
/// fetches a whole piece in that time (4 MiB at 20 MB/s), connecting included.
const SLOW_JUDGE: Duration = Duration::from_millis(200);
/// How often a waiting reader looks for stalled pieces.
const WAIT_TICK: Duration = Duration::from_millis(100);

/// The switch and caps (command line), and the sizes (tests shrink them).
#[derive(Clone, Copy, Debug)]
pub struct SegmentOptions {
    pub enabled: bool,
    pub max_streams: usize,
    pub piece: u64,
    pub window: usize,
    pub min_rest: u64,
    pub trigger: u64,
    pub judge_after: Duration,
    pub fast_alone: f64,
}

impl Default for SegmentOptions {
    fn default() -> Self {
        SegmentOptions {
            enabled: true,
            max_streams: DEFAULT_MAX_STREAMS,
            piece: PIECE,
            window: WINDOW_PIECES,
            min_rest: MIN_REST,
            trigger: SEQUENTIAL_TRIGGER,
            judge_after: JUDGE_AFTER,
            fast_alone: FAST_ALONE,
        }
    }
}

/// What all segmented files share: the pool, the global memory bound, counters.
pub struct SegmentContext {
    pub opts: SegmentOptions,
    pub pool: Workers,
    used: Mutex<u64>,
    stats: Mutex<SegmentStats>,
}

/// Counters for tests and logs.
#[derive(Clone, Debug, Default)]
pub struct SegmentStats {
    /// Pieces handed to readers, per server.
    pub pieces: Vec<u64>,
    /// Pieces fetched a second time because the first fetch stalled.
    pub takeovers: u64,
    /// Splices between servers checked (and passed).
    pub splices_checked: u64,
    /// Most piece bytes one file held at once.
    pub peak_file_bytes: u64,
    /// Most piece bytes held over all files at once.
    pub peak_global_bytes: u64,
    /// Files that were segmented.
    pub files: u64,
    /// Streams dropped as too slow next to the fastest of their file.
    pub dropped: u64,
}

impl SegmentContext {
    pub fn new(opts: SegmentOptions) -> Self {
        SegmentContext {
            opts,
            pool: Workers::new("ftpc-segment", SEGMENT_WORKERS),
            used: Mutex::new(0),
            stats: Mutex::new(SegmentStats::default()),
        }
    }

    pub fn stats(&self) -> SegmentStats {
        self.stats.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn stat(&self, f: impl FnOnce(&mut SegmentStats)) {
        f(&mut self.stats.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Charge `n` bytes of pieces; `force`: the piece a reader waits for, always allowed.
    fn charge(&self, n: u64, force: bool) -> bool {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        if !force && *used + n > GLOBAL_BYTES {
            return false;
        }
        *used += n;
        let now = *used;
        drop(used);
        self.stat(|s| s.peak_global_bytes = s.peak_global_bytes.max(now));
        true
    }

    fn refund(&self, n: u64) {
        let mut used = self.used.lock().unwrap_or_else(|p| p.into_inner());
        *used = used.saturating_sub(n);
    }
}

enum PState {
    Free,
    Taken {
        by: u64,
        last_progress: Instant,
        /// When `by` started on it, and the bytes it has so far (how fast it goes).
        since: Instant,
        got: u64,
    },
    Done {
        data: Vec<u8>,
        server: usize,
        /// The bytes before the piece from the same transfer (`None`: the transfer continued
        /// from the previous piece, same server).
        prefix: Option<Vec<u8>>,
    },
}

struct Piece {
    start: u64,
    len: u64,
    state: PState,
    /// A second stream fetching it because the first stalled.
    second: Option<u64>,
    /// Bytes charged to the global bound.
    charged: u64,
}

struct Slot {
    id: u64,
    server: usize,
    /// The transfer and the offset of its next byte, while no job reads it.
    conn: Option<(Box<dyn ByteStream>, u64)>,
    /// A job is queued or running for it.
    running: bool,
    /// It opened a transfer at least once (a new stream not yet connected counts against the
    /// server's spare connections).
    opened: bool,
    /// A piece (by start) it must fetch next: a stalled one.
    assigned: Option<u64>,
    prio: Priority,
    /// Bytes per second over its last [`RATE_SPAN`] of fetching (None before that).
    rate: Option<f64>,
    /// Bytes and fetching time toward the next rate.
    measuring: (u64, Duration),
    /// When it last received bytes (a stalled stream's rate says nothing any more).
    alive: Instant,
}

impl Slot {
    /// `bytes` fetched in `took`: a new rate once [`RATE_SPAN`] of fetching is together.
    fn measured(&mut self, bytes: u64, took: Duration) {
        self.measuring.0 += bytes;
        self.measuring.1 += took;
        let (bytes, time) = self.measuring;
        if time >= RATE_SPAN {
            self.rate = Some(bytes as f64 / time.as_secs_f64());
            self.measuring = (0, Duration::ZERO);
        }
    }
}

struct St {
    /// Offset of the next byte for the reader: inside the front piece.
    next: u64,
    pieces: VecDeque<Piece>,
    slots: Vec<Slot>,
    next_id: u64,
    /// Servers that failed for this file.
    failed: Vec<usize>,
    /// Servers whose streams were dropped as too slow: no new streams there while faster
    /// ones run.
    slow: Vec<usize>,
    /// The last bytes the reader got (up to OVERLAP) and the server they came from.
    tail: Vec<u8>,
    tail_server: usize,
    error: Option<Error>,
    closed: bool,
}

struct Seg {
    backend: Arc<dyn Backend>,
    ctx: Arc<SegmentContext>,
    mirrors: Arc<Mirrors>,
    path: Vec<u8>,
    size: u64,
    sources: Vec<usize>,
    primary: usize,
    max_wait: Duration,
    st: Mutex<St>,
    cv: Condvar,
}

/// The segmented transfer of one file, as one in-order stream.
pub struct Segmented {
    seg: Arc<Seg>,
}

/// What the reader hands over when it switches a file to segmented reads.
pub struct Handover {
    pub path: Vec<u8>,
    pub size: u64,
    /// Copies usable for this file (not failed, not known to differ), serverlist order.
    pub sources: Vec<usize>,
    /// The transfer so far, its server, and the offset of its next byte.
    pub stream: Box<dyn ByteStream>,
    pub server: usize,
    pub pos: u64,
    /// The last bytes the reader received, ending at `pos`.
    pub witness: Vec<u8>,
    pub max_wait: Duration,
}

impl Segmented {
    pub fn start(
        backend: &Arc<dyn Backend>,
        ctx: &Arc<SegmentContext>,
        mirrors: &Arc<Mirrors>,
        h: Handover,
    ) -> Segmented {
        let seg = Arc::new(Seg {
            backend: Arc::clone(backend),
            ctx: Arc::clone(ctx),
            mirrors: Arc::clone(mirrors),
            path: h.path,
            size: h.size,
            sources: h.sources,
            primary: h.server,
            max_wait: h.max_wait,
            st: Mutex::new(St {
                next: h.pos,
                pieces: VecDeque::new(),
                slots: vec![Slot {
                    id: 0,
                    server: h.server,
                    conn: Some((h.stream, h.pos)),
                    running: true,
                    opened: true,
                    assigned: None,
                    prio: Priority::Foreground,
                    rate: None,
                    measuring: (0, Duration::ZERO),
                    alive: Instant::now(),
                }],
                next_id: 1,
                failed: Vec::new(),
                slow: Vec::new(),
                tail: h.witness,
                tail_server: h.server,
                error: None,
                closed: false,
            }),
            cv: Condvar::new(),
        });
        ctx.stat(|s| s.files += 1);
        log::info!(
            "{}: segmented read from byte {} ({} copies)",
            seg.display(),
            h.pos,
            seg.sources.len()
        );
        let mut st = seg.lock();
        seg.fill(&mut st);
        let mut spawn = vec![0];
        spawn.extend(seg.more_streams(&mut st));
        drop(st);
        for id in spawn {
            seg.spawn(id);
        }
        Segmented { seg }
    }
}

impl ByteStream for Segmented {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.seg.read(buf)
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.seg.close();
        Ok(())
    }

    fn abort(self: Box<Self>) {
        self.seg.close();
    }
}

impl Drop for Segmented {
    fn drop(&mut self) {
        self.seg.close();
    }
}

impl Seg {
    fn lock(&self) -> MutexGuard<'_, St> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn display(&self) -> String {
        format!("/{}", String::from_utf8_lossy(&self.path))
    }

    fn spawn(self: &Arc<Self>, id: u64) {
        let seg = Arc::clone(self);
        self.ctx.pool.spawn(move || seg.run(id));
    }

    /// Add free pieces up to the window (pieces start at multiples of the piece size from the
    /// first one, the last one ends at the file's end).
    fn fill(&self, st: &mut St) {
        let piece = self.ctx.opts.piece.max(1);
        while st.pieces.len() < self.ctx.opts.window.max(1) {
            let start = st.pieces.back().map_or(st.next, |p| p.start + p.len);
            if start >= self.size {
                break;
            }
            // The first piece ends on a piece boundary of the file, the others are whole.
            let end = (start / piece + 1) * piece;
            st.pieces.push_back(Piece {
                start,
                len: end.min(self.size) - start,
                state: PState::Free,
                second: None,
                charged: 0,
            });
        }
    }

    /// The rate of the fastest stream that is not stalled (0 if none is known).
    fn best_rate(st: &St) -> f64 {
        st.slots
            .iter()
            .filter(|s| !s.running || s.alive.elapsed() < STALL_AFTER)
            .filter_map(|s| s.rate)
            .fold(0.0, f64::max)
    }

    fn held_bytes(st: &St) -> u64 {
        st.pieces
            .iter()
            .map(|p| match p.state {
                PState::Free => 0,
                _ => p.len + if p.second.is_some() { p.len } else { 0 },
            })
            .sum()
    }

    /// The copies to open streams on, best first: not failed for this file, not down, not
    /// known to differ from the copy the file was read from so far.
    fn usable(&self, st: &St) -> Vec<usize> {
        let ranked = choice::rank(self.backend.as_ref(), &self.sources, self.size);
        ranked
            .into_iter()
            .filter(|&s| {
                !st.failed.contains(&s)
                    && (st.slots.is_empty() || !st.slow.contains(&s))
                    && !self.backend.is_down(s)
                    && (s == self.primary || !self.mirrors.differ(&self.path, self.primary, s))
            })
            .collect()
    }

    /// New streams to start: round robin over the copies by rank, while a server has a
    /// connection to spare and the file is under `max_streams`. With no
    /// stream left at all, one foreground stream on the best copy (the read must go on).
    fn more_streams(&self, st: &mut St) -> Vec<u64> {
        if st.closed || st.error.is_some() {
            return Vec::new();
        }
        let usable = self.usable(st);
        let max = self.ctx.opts.max_streams.max(1);
        let mut new = Vec::new();
        if st.slots.is_empty() {
            if let Some(&s) = usable.first() {
                new.push(self.add_slot(st, s, Priority::Foreground));
            }
            return new;
        }
        let count = |st: &St, s: usize| st.slots.iter().filter(|x| x.server == s).count();
        // What each server can take now: its spare connections less the streams of this file
        // still connecting there (they are not counted by the server yet).
        let mut room: Vec<usize> = usable
            .iter()
            .map(|&s| {
                if self.backend.contended(s) {
                    return 0;
                }
                let connecting = st
                    .slots
                    .iter()
                    .filter(|x| x.server == s && !x.opened)
                    .count();
                self.backend.spare_connections(s).saturating_sub(connecting)
            })
            .collect();
        // Round robin: the servers with the fewest streams first, best first among equals.
        // Bounded: each turn adds a stream or ends.
        while st.slots.len() < max {
            let pick = (0..usable.len())
                .filter(|&i| room[i] > 0)
                .min_by_key(|&i| (count(st, usable[i]), i));
            let Some(i) = pick else { break };
            room[i] -= 1;
            new.push(self.add_slot(st, usable[i], Priority::Background));
        }
        new
    }

    fn add_slot(&self, st: &mut St, server: usize, prio: Priority) -> u64 {
        let id = st.next_id;
        st.next_id += 1;
        st.slots.push(Slot {
            id,
            server,
            conn: None,
            running: true,
            opened: false,
            assigned: None,
            prio,
            rate: None,
            measuring: (0, Duration::ZERO),
            alive: Instant::now(),
        });
        id
    }

    /// Parked background streams of servers where a foreground request waits for a
    /// connection give it back (the transfers are aborted by the caller, without the lock).
    fn yield_parked(&self, st: &mut St) -> Vec<Box<dyn ByteStream>> {
        let mut freed = Vec::new();
        let mut i = 0;
        // Bounded: each turn removes a slot or moves on.
        while i < st.slots.len() {
            let s = &st.slots[i];
            if !s.running
                && s.prio == Priority::Background
                && st.slots.len() > 1
                && self.backend.contended(s.server)
            {
                if let Some((c, _)) = st.slots.remove(i).conn {
                    freed.push(c);
                }
            } else {
                i += 1;
            }
        }
        freed
    }

    /// Jobs for parked streams: there may be a free piece now.
    fn wake_parked(&self, st: &mut St) -> Vec<u64> {
        if !st.pieces.iter().any(|p| matches!(p.state, PState::Free)) {
            return Vec::new();
        }
        st.slots
            .iter_mut()
            .filter(|s| !s.running)
            .map(|s| {
                s.running = true;
                s.id
            })
            .collect()
    }

    /// The piece stream `id` fetches next (its start and length), marked taken; `None`: no work
    /// for it now (it parks).
    fn choose(&self, st: &mut St, id: u64) -> Option<(u64, u64)> {
        self.fill(st);
        let slot = st.slots.iter_mut().find(|s| s.id == id)?;
        let assigned = slot.assigned.take();
        let at = slot.conn.as_ref().map(|(_, p)| *p);
        if let Some(start) = assigned
            && let Some(p) = st.pieces.iter_mut().find(|p| p.start == start)
            && matches!(p.state, PState::Taken { .. })
            && p.second.is_none()
        {
            p.second = Some(id);
            return Some((p.start, p.len));
        }
        let front = st.pieces.front().map(|p| p.start);
        // Keep streaming into the next piece when it is free, else the first free piece.
        let idx = at
            .and_then(|at| {
                st.pieces
                    .iter()
                    .position(|p| p.start == at && matches!(p.state, PState::Free))
            })
            .or_else(|| {
                st.pieces
                    .iter()
                    .position(|p| matches!(p.state, PState::Free))
            })?;
        let p = &mut st.pieces[idx];
        let force = Some(p.start) == front;
        if !self.ctx.charge(p.len, force) {
            return None;
        }
        p.charged = p.len;
        p.state = PState::Taken {
            by: id,
            last_progress: Instant::now(),
            since: Instant::now(),
            got: 0,
        };
        let taken = (p.start, p.len);
        let held = Self::held_bytes(st);
        self.ctx
            .stat(|s| s.peak_file_bytes = s.peak_file_bytes.max(held));
        Some(taken)
    }

    /// One job of stream `id`: fetch one piece, hand it in, queue the next job (or park).
    fn run(self: Arc<Self>, id: u64) {
        let mut st = self.lock();
        let Some(i) = st.slots.iter().position(|s| s.id == id) else {
            return;
        };
        let best = Self::best_rate(&st);
        let too_slow = st.slots[i]
            .rate
            .is_some_and(|r| r * SLOW_FACTOR < best && st.slots.len() > 1);
        // A request the user waits for needs a connection of this server: give ours back.
        let yield_it = st.slots[i].prio == Priority::Background
            && st.slots.len() > 1
            && self.backend.contended(st.slots[i].server);
        if st.closed || st.error.is_some() || too_slow || yield_it {
            let slot = st.slots.remove(i);
            if too_slow {
                log::info!(
                    "{}: dropping a stream from {} ({:.1} MB/s; the fastest does {:.1} MB/s)",
                    self.display(),
                    self.backend.label(slot.server),
                    slot.rate.unwrap_or(0.0) / 1e6,
                    best / 1e6
                );
                if !st.slow.contains(&slot.server) {
                    st.slow.push(slot.server);
                }
                self.ctx.stat(|s| s.dropped += 1);
            }
            let more = if too_slow {
                self.more_streams(&mut st)
            } else {
                Vec::new()
            };
            drop(st);
            if let Some((c, _)) = slot.conn {
                c.abort();
            }
            for id in more {
                self.spawn(id);
            }
            return;
        }
        let Some((start, len)) = self.choose(&mut st, id) else {
            if let Some(s) = st.slots.iter_mut().find(|s| s.id == id) {
                s.running = false;
            }
            return;
        };
        let Some(slot) = st.slots.iter_mut().find(|s| s.id == id) else {
            return;
        };
        let (server, prio) = (slot.server, slot.prio);
        let conn = slot.conn.take();
        drop(st);
        let continuing = matches!(&conn, Some((_, at)) if *at == start);
        let (mut stream, prefix_len) = match conn {
            Some((c, at)) if at == start => (c, 0usize),
            other => {
                if let Some((c, _)) = other {
                    c.abort();
                }
                let at = start.saturating_sub(OVERLAP as u64);
                match self.backend.open(server, &self.path, at, prio) {
                    Ok(c) => (c, (start - at) as usize),
                    Err(e) => return self.failed(id, server, start, e, false),
                }
            }
        };
        if let Some(s) = self.lock().slots.iter_mut().find(|s| s.id == id) {
            s.opened = true;
        }
        let total = prefix_len + len as usize;
        let fetch_started = Instant::now();
        let mut buf = vec![0u8; total];
        let mut got = 0;
        while got < total {
            let n = PROGRESS_STEP.min(total - got);
            if let Err(e) = read_full(stream.as_mut(), &mut buf[got..got + n], start, self.size) {
                stream.abort();
                return self.failed(id, server, start, e, continuing);
            }
            got += n;
            let mut st = self.lock();
            if let Some(s) = st.slots.iter_mut().find(|s| s.id == id) {
                s.alive = Instant::now();
            }
            let wanted = !st.closed
                && st.error.is_none()
                && st.pieces.iter_mut().any(|p| {
                    if p.start != start {
                        return false;
                    }
                    match &mut p.state {
                        PState::Taken {
                            by,
                            last_progress,
                            got: done,
                            ..
                        } => {
                            if *by == id {
                                *last_progress = Instant::now();
                                *done = got as u64;
                            }
                            *by == id || p.second == Some(id)
                        }
                        _ => false,
                    }
                });
            if !wanted {
                // Someone else delivered it (or the file closed): this transfer is elsewhere.
                if let Some(s) = st.slots.iter_mut().find(|s| s.id == id) {
                    s.running = false;
                    s.measured(got as u64, fetch_started.elapsed());
                }
                let more = self.wake_parked(&mut st);
                drop(st);
                stream.abort();
                self.respawn(id, more);
                return;
            }
        }
        let prefix = (prefix_len > 0).then(|| buf.drain(..prefix_len).collect::<Vec<u8>>());
        let mut st = self.lock();
        let mut handed_in = false;
        if let Some(p) = st.pieces.iter_mut().find(|p| p.start == start)
            && matches!(p.state, PState::Taken { .. })
        {
            p.state = PState::Done {
                data: buf,
                server,
                prefix,
            };
            p.second = None;
            handed_in = true;
        }
        let mut spawn = Vec::new();
        if let Some(s) = st.slots.iter_mut().find(|s| s.id == id) {
            s.measured(total as u64, fetch_started.elapsed());
            if handed_in {
                s.conn = Some((stream, start + len));
                spawn.push(id);
            } else {
                s.running = false;
                drop(st);
                stream.abort();
                st = self.lock();
                if let Some(s) = st.slots.iter_mut().find(|s| s.id == id) {
                    s.running = true;
                    spawn.push(id);
                }
            }
        }
        spawn.extend(self.more_streams(&mut st));
        drop(st);
        self.cv.notify_all();
        for id in spawn {
            self.spawn(id);
        }
    }

    fn respawn(self: &Arc<Self>, id: u64, more: Vec<u64>) {
        let mut st = self.lock();
        let mut spawn = more;
        let closed = st.closed;
        if let Some(s) = st.slots.iter_mut().find(|s| s.id == id)
            && !closed
        {
            s.running = true;
            spawn.push(id);
        }
        drop(st);
        for id in spawn {
            self.spawn(id);
        }
    }

    /// Stream `id` on `server` failed on the piece at `start`. A transfer that continued from
    /// an earlier piece may just have sat idle too long: it is dropped and the stream opens a
    /// fresh one. Otherwise the server is not used for this file again, and the piece goes to
    /// another stream (or stays with its second fetch).
    fn failed(self: &Arc<Self>, id: u64, server: usize, start: u64, e: Error, continuing: bool) {
        let mut st = self.lock();
        if !continuing {
            log::warn!(
                "{}: piece at byte {start} from {}: {e}; fetching it from another copy",
                self.display(),
                self.backend.label(server)
            );
            if !st.failed.contains(&server) {
                st.failed.push(server);
            }
        } else {
            log::debug!("{}: {e}; starting a new transfer", self.display());
        }
        let mut refund = 0;
        if let Some(p) = st.pieces.iter_mut().find(|p| p.start == start) {
            if p.second == Some(id) {
                p.second = None;
            } else if let PState::Taken { by, .. } = p.state
                && by == id
            {
                if let Some(second) = p.second.take() {
                    p.state = PState::Taken {
                        by: second,
                        last_progress: Instant::now(),
                        since: Instant::now(),
                        got: 0,
                    };
                } else {
                    p.state = PState::Free;
                    refund = p.charged;
                    p.charged = 0;
                }
            }
        }
        self.ctx.refund(refund);
        let mut spawn = Vec::new();
        if continuing {
            if let Some(s) = st.slots.iter_mut().find(|s| s.id == id) {
                s.running = true;
                spawn.push(id);
            }
        } else {
            st.slots.retain(|s| s.id != id);
        }
        spawn.extend(self.wake_parked(&mut st));
        spawn.extend(self.more_streams(&mut st));
        if st.slots.is_empty() && st.error.is_none() {
            st.error = Some(Error::new(
                Kind::Unavailable,
                format!(
                    "{}: no copy could deliver the piece at byte {start} (last: {e})",
                    self.display()
                ),
            ));
        }
        drop(st);
        self.cv.notify_all();
        for id in spawn {
            self.spawn(id);
        }
    }

    /// The front piece stalled: let another stream fetch it too. A parked stream (on another
    /// server first) takes it; else a new stream on another copy with a connection to spare.
    fn take_over(self: &Arc<Self>, st: &mut St) -> Option<u64> {
        let front = st.pieces.front()?;
        let PState::Taken {
            by,
            last_progress,
            since,
            got,
        } = front.state
        else {
            return None;
        };
        if front.second.is_some() {
            return None;
        }
        let stalled = last_progress.elapsed() >= STALL_AFTER;
        // Slow: its stream would need longer for the rest than the fastest stream for all of
        // it, by SLOW_FACTOR (a 5 MB/s mirror holding a piece 100 MB/s streams wait for).
        let best = Self::best_rate(st);
        let elapsed = since.elapsed().as_secs_f64();
        let slow = best > 0.0
            && elapsed >= SLOW_JUDGE.as_secs_f64()
            && (front.len.saturating_sub(got) as f64) / (got as f64 / elapsed).max(1.0)
                > SLOW_FACTOR * front.len as f64 / best;
        if !stalled && !slow {
            return None;
        }
        let start = front.start;
        let holder = st.slots.iter().find(|s| s.id == by).map(|s| s.server);
        // For a slow piece only a fast stream helps; for a stalled one any other.
        let fast_enough =
            |rate: Option<f64>| stalled || rate.is_some_and(|r| r * SLOW_FACTOR >= best);
        // A parked stream, another server's first, the fastest first.
        let parked = st
            .slots
            .iter()
            .filter(|s| !s.running && fast_enough(s.rate))
            .max_by(|a, b| {
                (Some(a.server) != holder, a.rate.unwrap_or(0.0))
                    .partial_cmp(&(Some(b.server) != holder, b.rate.unwrap_or(0.0)))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|s| s.id);
        // Another server first, even one dropped as slow (the fast one may be what stalls).
        let spare = || {
            choice::rank(self.backend.as_ref(), &self.sources, self.size)
                .into_iter()
                .filter(|&s| {
                    !st.failed.contains(&s)
                        && !self.backend.is_down(s)
                        && (s == self.primary || !self.mirrors.differ(&self.path, self.primary, s))
                        && self.backend.spare_connections(s) > 0
                        && !self.backend.contended(s)
                        && (stalled || (Some(s) != holder && !st.slow.contains(&s)))
                })
                .min_by_key(|&s| (Some(s) == holder, st.slow.contains(&s)))
        };
        let (id, spawn) = match parked {
            Some(id) => (id, true),
            None => match spare() {
                Some(server) => (self.add_slot(st, server, Priority::Background), true),
                None => {
                    // Nothing idle: the fastest running stream takes it as its next piece.
                    let fastest = st
                        .slots
                        .iter()
                        .filter(|s| s.running && s.id != by && s.assigned.is_none())
                        .filter(|s| s.alive.elapsed() < STALL_AFTER)
                        .filter(|s| s.rate.is_some_and(|r| r * SLOW_FACTOR >= best))
                        .max_by(|a, b| {
                            a.rate
                                .partial_cmp(&b.rate)
                                .unwrap_or(std::cmp::Ordering::Equal)
                        })?;
                    (fastest.id, false)
                }
            },
        };
        let slot = st.slots.iter_mut().find(|s| s.id == id)?;
        slot.assigned = Some(start);
        slot.running = true;
        log::info!(
            "{}: the piece at byte {start} is {}; fetching it from {} too",
            self.display(),
            if stalled { "stalled" } else { "slow" },
            self.backend.label(slot.server)
        );
        self.ctx.stat(|s| s.takeovers += 1);
        spawn.then_some(id)
    }

    /// The reader's side: the next bytes in order, waiting (bounded) for their piece.
    fn read(self: &Arc<Self>, buf: &mut [u8]) -> Result<usize> {
        let deadline = Instant::now() + self.max_wait;
        let mut st = self.lock();
        let freed = self.yield_parked(&mut st);
        if !freed.is_empty() {
            drop(st);
            for c in freed {
                c.abort();
            }
            st = self.lock();
        }
        // Bounded: every turn returns, or waits with the deadline.
        loop {
            if let Some(e) = &st.error {
                return Err(e.clone());
            }
            if st.next >= self.size || buf.is_empty() {
                return Ok(0);
            }
            self.fill(&mut st);
            let Some(front) = st.pieces.front() else {
                return Ok(0);
            };
            let (start, done_by) = match &front.state {
                PState::Done { server, .. } => (front.start, Some(*server)),
                _ => (front.start, None),
            };
            if let Some(server) = done_by {
                let s = &mut *st;
                if server != s.tail_server && s.next == start {
                    // A splice: the transfer's bytes before the piece must be ours.
                    let prefix = match &mut s.pieces[0].state {
                        PState::Done { prefix, .. } => prefix.take(),
                        _ => None,
                    };
                    let Some(pre) = prefix else {
                        // Not fetched with an overlap: fetch it again with one.
                        s.pieces[0].state = PState::Free;
                        self.ctx.refund(std::mem::take(&mut s.pieces[0].charged));
                        let spawn = self.wake_parked(s);
                        drop(st);
                        for id in spawn {
                            self.spawn(id);
                        }
                        st = self.lock();
                        continue;
                    };
                    let n = pre.len().min(s.tail.len());
                    if pre[pre.len() - n..] != s.tail[s.tail.len() - n..] {
                        return Err(self.mismatch(s, server, start));
                    }
                    self.ctx.stat(|x| x.splices_checked += 1);
                    s.tail_server = server;
                }
                let PState::Done { data, .. } = &s.pieces[0].state else {
                    continue;
                };
                let from = (s.next - start) as usize;
                let n = buf.len().min(data.len() - from);
                let new = &data[from..from + n];
                buf[..n].copy_from_slice(new);
                // The reader's tail: the last OVERLAP bytes it got.
                s.tail
                    .extend_from_slice(&new[new.len().saturating_sub(OVERLAP)..]);
                let cut = s.tail.len().saturating_sub(OVERLAP);
                s.tail.drain(..cut);
                let piece_end = start + data.len() as u64;
                s.next += n as u64;
                let mut spawn = Vec::new();
                if s.next >= piece_end {
                    if let Some(p) = s.pieces.pop_front() {
                        self.ctx.stat(|x| {
                            if x.pieces.len() <= server {
                                x.pieces.resize(server + 1, 0);
                            }
                            x.pieces[server] += 1;
                        });
                        self.ctx.refund(p.charged);
                    }
                    self.fill(s);
                    spawn = self.wake_parked(s);
                }
                drop(st);
                for id in spawn {
                    self.spawn(id);
                }
                return Ok(n);
            }
            let mut spawn = Vec::new();
            if let Some(id) = self.take_over(&mut st) {
                spawn.push(id);
            }
            if matches!(st.pieces.front().map(|p| &p.state), Some(PState::Free)) {
                spawn.extend(self.wake_parked(&mut st));
                if spawn.is_empty() && st.slots.iter().all(|s| !s.running) {
                    spawn.extend(self.more_streams(&mut st));
                }
            }
            if !spawn.is_empty() {
                drop(st);
                for id in spawn {
                    self.spawn(id);
                }
                st = self.lock();
                continue;
            }
            let freed = self.yield_parked(&mut st);
            if !freed.is_empty() {
                drop(st);
                for c in freed {
                    c.abort();
                }
                st = self.lock();
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    Kind::Timeout,
                    format!(
                        "{}: no data at byte {} within {:?}",
                        self.display(),
                        st.next,
                        self.max_wait
                    ),
                ));
            }
            let wait = (deadline - now).min(WAIT_TICK);
            st = self
                .cv
                .wait_timeout(st, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The piece at `start` from `server` does not continue the bytes before it.
    fn mismatch(&self, st: &mut St, server: usize, start: u64) -> Error {
        let before = st.tail_server;
        self.mirrors.mark_different(&self.path, before, server);
        if before != self.primary {
            self.mirrors
                .mark_different(&self.path, self.primary, server);
        }
        let msg = format!(
            "{}: the copies on {} and {} differ (the {} bytes before byte {start} are not the \
             same): not joining them; they are no longer treated as mirrors",
            self.display(),
            self.backend.label(before),
            self.backend.label(server),
            st.tail.len()
        );
        log::warn!("{msg}");
        let e = Error::new(Kind::Mismatch, msg);
        st.error = Some(e.clone());
        e
    }

    /// Stop every stream and free the pieces (on close, finish or abort of the reader's
    /// transfer).
    fn close(&self) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        st.closed = true;
        let conns: Vec<_> = st.slots.iter_mut().filter_map(|s| s.conn.take()).collect();
        let refund: u64 = st.pieces.iter().map(|p| p.charged).sum();
        st.pieces.clear();
        st.slots.retain(|s| s.running);
        drop(st);
        self.ctx.refund(refund);
        self.cv.notify_all();
        for (c, _) in conns {
            c.abort();
        }
    }
}

/// Fill `buf` from the stream; a transfer that ends early is an error.
fn read_full(stream: &mut dyn ByteStream, buf: &mut [u8], start: u64, size: u64) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match stream.read(&mut buf[got..])? {
            0 => {
                return Err(Error::new(
                    Kind::Stale,
                    format!("transfer ended early (piece at byte {start} of {size})"),
                ));
            }
            n => got += n,
        }
    }
    Ok(())
}
