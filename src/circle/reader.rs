//! Reading one open file: one streaming RETR per open file while reads are sequential.
//!
//! Owns: which server serves the bytes (first reachable source by priority, then the next
//! mirror on failure, continuing at the same offset with REST), the data stream, and a small
//! buffer of recently received chunks.
//!
//! Why the buffer: the kernel issues reads of one file from several FUSE threads at once
//! (async read + readahead), so requests arrive slightly out of order. Keeping the last few
//! MiB lets a request that is a little behind the stream be answered from memory, and a
//! request a little ahead be served by reading forward, instead of aborting the RETR and
//! starting a new one (which costs several round trips).
//!
//! Invariants:
//! - bytes returned are always the file's bytes at the requested offsets: a stream that ends
//!   before the listed size is an error, never short data;
//! - reads past the listed size return nothing (the size is known from the listing);
//! - every network wait is bounded by the connection timeouts underneath.

use std::collections::VecDeque;
use std::sync::Mutex;

use crate::backend::{Backend, ByteStream};
use crate::error::{Error, Kind, Result};

/// Unit of network reads and of the buffer: 256 KiB is two FUSE reads of 128 KiB and large
/// enough that per-chunk overhead is negligible next to the copy.
const CHUNK: usize = 256 * 1024;
/// Recently received bytes kept per open file. 8 MiB covers the kernel's readahead window
/// (up to a few MiB with max_pages) several times over.
const KEEP_BYTES: usize = 8 * 1024 * 1024;
/// A request this far ahead of the stream is reached by reading forward: at any plausible
/// link speed reading 4 MiB costs less than the 3+ round trips of ABOR, REST and RETR.
const SKIP_FORWARD: u64 = 4 * 1024 * 1024;

struct Active {
    server: usize,
    stream: Box<dyn ByteStream>,
    pos: u64,
}

#[derive(Default)]
struct Chunks {
    list: VecDeque<(u64, Vec<u8>)>,
    bytes: usize,
}

impl Chunks {
    fn push(&mut self, off: u64, data: Vec<u8>) {
        self.bytes += data.len();
        self.list.push_back((off, data));
        while self.bytes > KEEP_BYTES {
            match self.list.pop_front() {
                Some((_, d)) => self.bytes -= d.len(),
                None => break,
            }
        }
    }

    /// Copy into `out` the bytes starting at `off` that are buffered; returns how many.
    fn copy(&self, off: u64, want: usize, out: &mut Vec<u8>) -> usize {
        for (start, data) in self.list.iter().rev() {
            let end = start + data.len() as u64;
            if off >= *start && off < end {
                let from = (off - start) as usize;
                let n = want.min(data.len() - from);
                out.extend_from_slice(&data[from..from + n]);
                return n;
            }
        }
        0
    }
}

struct State {
    active: Option<Active>,
    chunks: Chunks,
    /// Servers that failed for this file since it was opened.
    failed: Vec<usize>,
}

pub struct OpenFile {
    pub ino: u64,
    path: Vec<u8>,
    size: u64,
    sources: Vec<usize>,
    state: Mutex<State>,
}

impl OpenFile {
    pub fn new(ino: u64, path: Vec<u8>, size: u64, sources: Vec<usize>) -> Self {
        OpenFile {
            ino,
            path,
            size,
            sources,
            state: Mutex::new(State {
                active: None,
                chunks: Chunks::default(),
                failed: Vec::new(),
            }),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Read up to `len` bytes at `off`.
    pub fn read(&self, backend: &dyn Backend, off: u64, len: usize) -> Result<Vec<u8>> {
        if off >= self.size || len == 0 {
            return Ok(Vec::new());
        }
        let end = self.size.min(off.saturating_add(len as u64));
        let want = (end - off) as usize;
        let mut out = Vec::with_capacity(want);
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // Each turn either copies buffered bytes or pulls one chunk; a pull that fails marks
        // a server failed, so the number of turns is bounded by size/CHUNK + servers.
        while out.len() < want {
            let cur = off + out.len() as u64;
            let n = st.chunks.copy(cur, want - out.len(), &mut out);
            if n > 0 {
                continue;
            }
            self.pull(backend, &mut st, cur)?;
        }
        Ok(out)
    }

    /// Make the stream deliver the chunk that contains `cur`, restarting it if needed.
    fn pull(&self, backend: &dyn Backend, st: &mut State, cur: u64) -> Result<()> {
        let usable = matches!(&st.active, Some(a) if a.pos <= cur && cur - a.pos <= SKIP_FORWARD);
        if !usable {
            if let Some(a) = st.active.take() {
                a.stream.abort();
            }
            st.active = Some(self.start(backend, st, cur)?);
        }
        let Some(active) = st.active.as_mut() else {
            return Err(Error::new(Kind::Unavailable, "no stream"));
        };
        let start = active.pos;
        match read_chunk(active, self.size) {
            Ok(data) => {
                st.chunks.push(start, data);
                if st.active.as_ref().is_some_and(|a| a.pos >= self.size)
                    && let Some(a) = st.active.take()
                {
                    // Everything arrived: read the final reply so the connection is reusable.
                    if let Err(e) = a.stream.finish() {
                        log::debug!("{}: after full read: {e}", self.display());
                    }
                }
                Ok(())
            }
            Err(e) => {
                let server = active.server;
                st.active = None;
                log::warn!("{}: {e}; trying another copy", self.display());
                st.failed.push(server);
                Ok(())
            }
        }
    }

    /// Open a stream at `offset` from the first source (by priority) that has not failed.
    fn start(&self, backend: &dyn Backend, st: &mut State, offset: u64) -> Result<Active> {
        let mut last_err = None;
        for &server in &self.sources {
            if st.failed.contains(&server) {
                continue;
            }
            match backend.open(server, &self.path, offset) {
                Ok(stream) => {
                    return Ok(Active {
                        server,
                        stream,
                        pos: offset,
                    });
                }
                Err(e) => {
                    log::warn!("{}: {e}", self.display());
                    st.failed.push(server);
                    last_err = Some(e);
                }
            }
        }
        // Nothing left: forget the failures so a later read may try again from the top.
        st.failed.clear();
        Err(last_err.unwrap_or_else(|| {
            Error::new(
                Kind::Unavailable,
                format!("{}: no server could deliver it", self.display()),
            )
        }))
    }

    fn display(&self) -> String {
        format!("/{}", String::from_utf8_lossy(&self.path))
    }

    /// Stop any transfer in progress (on release).
    pub fn close(&self) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(a) = st.active.take() {
            a.stream.abort();
        }
    }
}

/// Read the next chunk (up to CHUNK bytes, never past `size`) from the stream.
fn read_chunk(active: &mut Active, size: u64) -> Result<Vec<u8>> {
    let want = CHUNK.min((size - active.pos) as usize);
    let mut buf = vec![0u8; want];
    let mut got = 0;
    while got < want {
        let n = active.stream.read(&mut buf[got..])?;
        if n == 0 {
            return Err(Error::new(
                Kind::Protocol,
                format!(
                    "transfer ended at byte {} of {size}",
                    active.pos + got as u64
                ),
            ));
        }
        got += n;
    }
    active.pos += got as u64;
    Ok(buf)
}
