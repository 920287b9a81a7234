//! The seam between the merged view and the network: what the filesystem needs from "the
//! servers", nothing about FTP. The real implementation is [`crate::ftp::pool::FtpBackend`];
//! unit tests of the merged view use an in-memory one.
//!
//! Paths here are relative to a server's root (its base path), as bytes, `/`-separated,
//! without leading slash; the root itself is the empty path.

use std::time::{Duration, SystemTime};

use crate::error::Result;

/// What a directory entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link with its target bytes; an empty target means unknown.
    Symlink(Vec<u8>),
}

/// One validated directory entry as reported by the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawEntry {
    /// The entry's name, byte-faithful; never empty, `.` or `..`, and without `/`, NUL, CR
    /// or LF (the network side checks).
    pub name: Vec<u8>,
    /// File, directory or symlink.
    pub kind: EntryKind,
    /// Size in bytes as reported (0 when not reported).
    pub size: u64,
    /// Modification time, when the server sent a usable one.
    pub mtime: Option<SystemTime>,
    /// How precisely the listing gave `mtime` (meaningless when `mtime` is `None`).
    pub mtime_precision: Precision,
}

/// How precisely a listing gives a modification time: two copies can only be compared at the
/// coarser precision of their two listings. Ordered from finest to coarsest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Precision {
    /// MLSD `modify` (fractions are ignored), long-ISO LIST with seconds.
    #[default]
    Second,
    /// Unix LIST `Mon DD HH:MM` (recent files), DOS/IIS LIST, long-ISO LIST without seconds.
    Minute,
    /// Unix LIST `Mon DD  YYYY` (files older than about six months): the day only.
    Day,
}

/// The symlinks of one directory as its `ls -l` listing gives them (each with its target).
pub type LinkTargets = Vec<RawEntry>;

/// A file hash a server can compute for us (FEAT `HASH`, draft-bryan-ftpext-hash, or proftpd
/// mod_digest's `XSHA256`/`XSHA1`/`XMD5`/`XCRC`), strongest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HashAlgo {
    Sha256,
    Sha1,
    Md5,
    Crc32,
}

impl HashAlgo {
    pub const ALL: [HashAlgo; 4] = [
        HashAlgo::Sha256,
        HashAlgo::Sha1,
        HashAlgo::Md5,
        HashAlgo::Crc32,
    ];

    /// One bit per algorithm, for sets of them.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }

    /// Length of the hash in hex digits.
    pub fn hex_len(self) -> usize {
        match self {
            HashAlgo::Sha256 => 64,
            HashAlgo::Sha1 => 40,
            HashAlgo::Md5 => 32,
            HashAlgo::Crc32 => 8,
        }
    }
}

/// What a server is doing, as the status file shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum State {
    /// Answering.
    #[default]
    Up,
    /// Not answering (refused, timed out, TLS failed): marked down, probed in the background.
    Down,
    /// Answering, but it refused our login.
    LoginRefused,
    /// Answering, but it said "too many connections": we use fewer for a while.
    Busy,
}

impl State {
    /// The word the status file and `user.ftpcircle.servers` use.
    pub fn word(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::LoginRefused => "login refused",
            State::Busy => "busy",
        }
    }

    /// Down or refusing us: nothing can be fetched from it now.
    pub fn offline(self) -> bool {
        matches!(self, State::Down | State::LoginRefused)
    }
}

/// A server's health and counters, from the network side's own records (no network call).
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub state: State,
    /// When it entered `state` (`None`: in it since the mount started).
    pub since: Option<SystemTime>,
    /// The last failure it caused, if any (never a password).
    pub last_error: Option<String>,
    /// Connections open to it now (idle and in use), and how many it may have.
    pub connections: usize,
    pub budget: usize,
    /// Listings fetched from it and bytes of files read from it.
    pub listings: u64,
    pub bytes: u64,
}

/// Who is waiting for a network call. Background work (prefetch) only uses a connection the
/// server has to spare and yields to any foreground request waiting for one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// A request the user is waiting for.
    Foreground,
    /// Prefetch: listings and small files fetched ahead of the user.
    Background,
}

/// How fast a server is, as measured so far (`None`: not measured yet). Read by the choice of
/// server for a read and by the status view.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Speed {
    /// Command round-trip time (EWMA).
    pub rtt: Option<Duration>,
    /// Throughput of one connection in bytes per second (EWMA, recent transfers weigh more).
    pub bytes_per_sec: Option<f64>,
}

pub trait Backend: Send + Sync {
    /// Number of servers; server indexes are `0..servers()` in priority order.
    fn servers(&self) -> usize;
    /// Human-readable name for logs and errors ("host:port/base"); never contains a password.
    fn label(&self, server: usize) -> &str;
    /// The server's base path as listed in serverlist.txt ("/" or "/pub/mirror").
    fn base(&self, server: usize) -> &[u8];
    /// The entries of one directory on one server (already validated: no `.`/`..`, no `/`).
    fn list(&self, server: usize, path: &[u8], prio: Priority) -> Result<Vec<RawEntry>>;
    /// The symlinks of directory `path`, with their targets, for a listing that named symlinks
    /// without their targets (proftpd's MLSD says `type=OS.unix=symlink`): the FTP backend
    /// asks for the directory's `ls -l` listing (STAT or LIST), whose lines read
    /// `name -> target`. Called at most once per listing fetched.
    fn symlink_targets(
        &self,
        _server: usize,
        _path: &[u8],
        _prio: Priority,
    ) -> Result<LinkTargets> {
        Ok(Vec::new())
    }
    /// The hash algorithms the server offers, as [`HashAlgo::bit`]s (0: none, or not known
    /// yet: learnt from FEAT at its first connection).
    fn hash_algos(&self, _server: usize) -> u8 {
        0
    }
    /// The hash of the whole file `path` with `algo`, as lowercase hex digits. Servers compute
    /// it by reading the whole file: only worth asking when it settles something.
    fn hash(
        &self,
        server: usize,
        _path: &[u8],
        algo: HashAlgo,
        _prio: Priority,
    ) -> Result<Vec<u8>> {
        Err(crate::error::Error::new(
            crate::error::Kind::Protocol,
            format!("{}: no {algo:?} hash command", self.label(server)),
        ))
    }
    /// The server is known not to answer right now: don't wait for it.
    fn is_down(&self, _server: usize) -> bool {
        false
    }
    /// The server's health and counters (see [`Health`]); answered from memory.
    fn health(&self, server: usize) -> Health {
        Health {
            state: if self.is_down(server) {
                State::Down
            } else {
                State::Up
            },
            ..Health::default()
        }
    }
    /// `ftp://host:port` (or `ftps://`) plus the base path, without a trailing `/`: the URL
    /// of the server's root, never with credentials.
    fn url_root(&self, server: usize) -> String {
        format!("ftp://{}", self.label(server))
    }
    /// The server's measured round-trip time and per-connection throughput.
    fn speed(&self, _server: usize) -> Speed {
        Speed::default()
    }
    /// Connections a background stream could take on the server now without taking its last
    /// one (segmented reads ask before opening another stream). Backends without connection
    /// limits have plenty.
    fn spare_connections(&self, _server: usize) -> usize {
        usize::MAX
    }
    /// A request the user waits for is waiting for one of the server's connections:
    /// background streams (of segmented reads) give theirs back between pieces.
    fn contended(&self, _server: usize) -> bool {
        false
    }
    /// Start streaming the file at `path` from byte `offset`.
    fn open(
        &self,
        server: usize,
        path: &[u8],
        offset: u64,
        prio: Priority,
    ) -> Result<Box<dyn ByteStream>>;
}

/// The bytes of one file from one offset onwards, as the server sends them.
pub trait ByteStream: Send {
    /// Read the next bytes; `Ok(0)` means the server ended the transfer.
    fn read(&mut self, buf: &mut [u8]) -> Result<usize>;
    /// The transfer delivered everything it should: read the server's final reply.
    fn finish(self: Box<Self>) -> Result<()>;
    /// Stop the transfer early (its data connection closed, its reply read); the connection
    /// is checked or dropped.
    fn abort(self: Box<Self>);
    /// Move up to `len` of the next bytes into `pipe` without copying them through user
    /// space ([`crate::splice`]). `None`: this stream cannot (TLS, not a socket); `Ok(0)`:
    /// nothing moved (the transfer ended or the pipe is full): go on with [`Self::read`].
    fn splice_to(&mut self, _pipe: &crate::splice::Pipe, _len: usize) -> Option<Result<usize>> {
        None
    }
    /// Could [`Self::splice_to`] move bytes at all?
    fn can_splice(&self) -> bool {
        false
    }
}
