//! The persistent listing index: every listing fetched, remembered on disk, so a restarted
//! mount serves its tree at once, a server down at mount time still shows its entries, and
//! `ftpcircle-fs locate` searches all servers without mounting.
//!
//! Owns: the index file (SQLite, one per serverlist, under `$XDG_CACHE_HOME/ftpcircle/`), its
//! schema, checking it at open (a corrupt, truncated or foreign file is moved aside and
//! rebuilt), the background writer, and the encoding of one listing.
//!
//! Layout: a `servers` table (identity `user@host:port/base`, never a password) and a
//! `listings` table with one row per (server, directory): when it was fetched and its entries
//! as one checksummed blob. One row per listing, not per entry, keeps the file small (about
//! 30 bytes per entry) and a directory one B-tree lookup away.
//!
//! Invariants:
//! - nothing is written on the caller's thread: [`Index::record`] queues (bounded, dropping
//!   when full: the index is a cache; only a crawl waits for room instead) and one writer
//!   thread writes batches in one transaction;
//! - a listing read back is exactly the one written, or nothing: every blob carries a checksum
//!   and a blob that does not decode is dropped, never served;
//! - the entries of a server no longer in the serverlist, or whose identity changed (host,
//!   port, user, base path), are deleted when a mount or `index` opens the file;
//! - two processes may share the file: SQLite's WAL mode and a busy timeout serialise writers.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

pub mod crawl;
pub mod locate;

use crate::backend::{EntryKind, Precision, RawEntry};
use crate::serverlist::ServerSpec;

/// Bumped whenever the schema or the blob encoding changes; a file of another version is moved
/// aside and rebuilt (it is only a cache).
pub const SCHEMA_VERSION: i64 = 1;
/// SQLite `application_id` of our files ("FTPc"), so a foreign SQLite file is not taken for ours.
const APPLICATION_ID: i64 = 0x4654_5063;
/// Listings waiting for the writer at most: about 10 seconds of a fast crawl. When full, new
/// listings are not recorded (a later fetch records them) rather than holding a FUSE reply.
const QUEUE: usize = 4096;
/// The writer commits at least this often while listings come in, and at most this many
/// listings per transaction: one fsync per batch instead of one per listing.
const BATCH_TIME: Duration = Duration::from_millis(200);
const BATCH_MAX: usize = 1000;
/// Another process holding the write lock is waited for this long before a batch is dropped.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The identity of a server in the index: what makes its listings its own. No password.
pub fn ident(spec: &ServerSpec) -> String {
    format!("{}@{}{}", spec.user, spec.addr_string(), spec.base)
}

/// The default index file of a serverlist: `$XDG_CACHE_HOME/ftpcircle/index-<hash>.sqlite`
/// (`~/.cache` without XDG_CACHE_HOME), the hash being of the serverlist's absolute path, so
/// each serverlist has its own.
pub fn default_path(serverlist: &Path) -> Result<PathBuf, String> {
    let cache = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(h) => PathBuf::from(h).join(".cache"),
            None => {
                return Err("no $XDG_CACHE_HOME or $HOME for the listing index; give --index FILE or --no-index".into());
            }
        },
    };
    let abs = std::fs::canonicalize(serverlist).unwrap_or_else(|_| serverlist.to_path_buf());
    let hash = fnv64(std::os::unix::ffi::OsStrExt::as_bytes(abs.as_os_str()));
    Ok(cache
        .join("ftpcircle")
        .join(format!("index-{:016x}.sqlite", hash)))
}

/// One directory listing as read back from the index.
pub struct Stored {
    pub entries: Vec<RawEntry>,
    /// How long ago it was fetched from its server.
    pub age: Duration,
}

/// Counters of the writer and the readers, for logs and tests.
#[derive(Default)]
pub struct Stats {
    pub written: AtomicU64,
    pub dropped: AtomicU64,
    pub failed: AtomicU64,
    /// Listings looked up ([`Index::listing`]).
    pub reads: AtomicU64,
}

enum Job {
    Put {
        server: i64,
        path: Box<[u8]>,
        at: i64,
        n: usize,
        data: Vec<u8>,
    },
    Forget {
        server: i64,
        path: Box<[u8]>,
    },
    Sync(Arc<(Mutex<bool>, Condvar)>),
}

/// An open index, for a mount or a crawl: reads on the caller's thread, writes on its own.
pub struct Index {
    path: PathBuf,
    read: Mutex<Connection>,
    /// Database id of each server, by its position in the serverlist.
    ids: Vec<i64>,
    tx: Mutex<Option<SyncSender<Job>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    pub stats: Arc<Stats>,
    /// Wait for room in the queue instead of dropping (a crawl, where no reply waits).
    wait_when_full: std::sync::atomic::AtomicBool,
}

pub(crate) fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn sql_err(path: &Path, e: rusqlite::Error) -> String {
    format!("listing index {}: {e}", path.display())
}

/// Open `path` and check it is a healthy index of our schema. `Err(why)` means the file is not
/// usable as it is (corrupt, truncated, foreign, other version).
fn open_checked(path: &Path, flags: OpenFlags) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(path, flags).map_err(|e| e.to_string())?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let tables: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if tables == 0 && app == 0 {
        // A new, empty file: the caller creates the schema.
        return Ok(conn);
    }
    if app != APPLICATION_ID {
        return Err("not an ftpcircle-fs listing index".into());
    }
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if version != SCHEMA_VERSION {
        return Err(format!(
            "schema version {version}, this ftpcircle-fs uses {SCHEMA_VERSION}"
        ));
    }
    // Reads every page: finds truncation and damaged B-trees (about 0.1 s per 50 MB).
    let check: String = conn
        .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!("damaged: {check}"));
    }
    Ok(conn)
}

fn create_schema(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(&format!(
        "PRAGMA application_id = {APPLICATION_ID};
         PRAGMA user_version = {SCHEMA_VERSION};
         CREATE TABLE IF NOT EXISTS servers(
             id INTEGER PRIMARY KEY, ident TEXT UNIQUE NOT NULL, label TEXT NOT NULL);
         CREATE TABLE IF NOT EXISTS listings(
             server INTEGER NOT NULL, path BLOB NOT NULL, fetched INTEGER NOT NULL,
             n INTEGER NOT NULL, data BLOB NOT NULL, PRIMARY KEY(server, path));
         CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
    ))
}

/// Move a bad index (and its WAL files) aside as `FILE.bad-UNIXTIME`; returns the new name.
fn move_aside(path: &Path) -> Result<PathBuf, String> {
    let aside = PathBuf::from(format!("{}.bad-{}", path.display(), now_secs()));
    std::fs::rename(path, &aside).map_err(|e| format!("moving {} aside: {e}", path.display()))?;
    for ext in ["-wal", "-shm"] {
        let side = PathBuf::from(format!("{}{ext}", path.display()));
        if side.exists() {
            let _ = std::fs::rename(&side, format!("{}{ext}", aside.display()));
        }
    }
    Ok(aside)
}

impl Index {
    /// Open (or create) the index at `path` for the servers of a serverlist, in order. A file
    /// that fails the checks is moved aside (the warning says where) and a new one is made.
    /// Entries of servers not in `servers` are deleted. Returns the index and the warnings for
    /// the user.
    pub fn open(path: &Path, servers: &[ServerSpec]) -> Result<(Index, Vec<String>), String> {
        let mut warnings = Vec::new();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| format!("listing index directory {}: {e}", dir.display()))?;
        }
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE;
        let conn = match open_checked(path, flags) {
            Ok(c) => c,
            Err(why) => {
                let aside = move_aside(path)?;
                let w = format!(
                    "listing index {} unusable ({why}); moved aside to {} and rebuilt",
                    path.display(),
                    aside.display()
                );
                log::warn!("{w}");
                warnings.push(w);
                open_checked(path, flags)
                    .map_err(|e| format!("listing index {}: {e}", path.display()))?
            }
        };
        let setup = || -> rusqlite::Result<Vec<i64>> {
            conn.pragma_update(None, "journal_mode", "WAL")?;
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            create_schema(&conn)?;
            let tx = conn.unchecked_transaction()?;
            let mut ids: Vec<i64> = Vec::with_capacity(servers.len());
            for s in servers {
                tx.execute(
                    "INSERT INTO servers(ident, label) VALUES (?1, ?2)
                     ON CONFLICT(ident) DO UPDATE SET label = excluded.label",
                    params![ident(s), s.label()],
                )?;
                ids.push(tx.query_row(
                    "SELECT id FROM servers WHERE ident = ?1",
                    [ident(s)],
                    |r| r.get(0),
                )?);
            }
            // Servers removed from the list, or changed (another identity): their entries go.
            let keep: String = ids
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",");
            tx.execute(
                &format!("DELETE FROM listings WHERE server NOT IN ({keep})"),
                [],
            )?;
            tx.execute(&format!("DELETE FROM servers WHERE id NOT IN ({keep})"), [])?;
            tx.commit()?;
            Ok(ids)
        };
        let ids = setup().map_err(|e| sql_err(path, e))?;
        let wconn = Connection::open(path).map_err(|e| sql_err(path, e))?;
        wconn
            .busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| sql_err(path, e))?;
        let _ = wconn.pragma_update(None, "synchronous", "NORMAL");
        let (tx, rx) = sync_channel(QUEUE);
        let stats = Arc::new(Stats::default());
        let st = Arc::clone(&stats);
        let writer = std::thread::Builder::new()
            .name("ftpc-index".into())
            .spawn(move || write_loop(wconn, rx, &st))
            .map_err(|e| format!("cannot start the index writer: {e}"))?;
        Ok((
            Index {
                path: path.to_path_buf(),
                read: Mutex::new(conn),
                ids,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(writer)),
                stats,
                wait_when_full: std::sync::atomic::AtomicBool::new(false),
            },
            warnings,
        ))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored listing of `path` on server `server`, with its age; `None` when there is
    /// none or it does not decode (then it is dropped from the file).
    pub fn listing(&self, server: usize, path: &[u8]) -> Option<Stored> {
        let id = *self.ids.get(server)?;
        self.stats.reads.fetch_add(1, Ordering::Relaxed);
        let row: Option<(i64, Vec<u8>)> = {
            let conn = self.read.lock().unwrap_or_else(|p| p.into_inner());
            conn.prepare_cached(
                "SELECT fetched, data FROM listings WHERE server = ?1 AND path = ?2",
            )
            .and_then(|mut st| {
                st.query_row(params![id, path], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            })
            .unwrap_or_else(|e| {
                log::warn!("listing index {}: {e}", self.path.display());
                None
            })
        };
        let (fetched, data) = row?;
        match decode(&data) {
            Some(entries) => {
                let age = (now_secs() - fetched).max(0) as u64;
                // A time in the future (clock moved back) is not trusted as fresh.
                let age = if fetched > now_secs() + 60 {
                    u64::MAX / 4
                } else {
                    age
                };
                Some(Stored {
                    entries,
                    age: Duration::from_secs(age),
                })
            }
            None => {
                log::warn!(
                    "listing index {}: the listing of /{} on server {} does not decode; dropped",
                    self.path.display(),
                    String::from_utf8_lossy(path),
                    server
                );
                self.forget(server, path);
                None
            }
        }
    }

    /// For a crawl: a full queue makes [`record`](Self::record) wait (the writer empties it
    /// within a batch) instead of dropping the listing.
    pub fn wait_when_full(&self) {
        self.wait_when_full.store(true, Ordering::Relaxed);
    }

    fn send(&self, job: Job) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tx) = tx else { return };
        if self.wait_when_full.load(Ordering::Relaxed) {
            let _ = tx.send(job);
            return;
        }
        match tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Disconnected(_)) => {}
        }
    }

    /// Remember a listing just fetched (queued; written by the writer thread).
    pub fn record(&self, server: usize, path: &[u8], entries: &[RawEntry]) {
        self.record_at(server, path, entries, now_secs());
    }

    pub(crate) fn record_at(&self, server: usize, path: &[u8], entries: &[RawEntry], at: i64) {
        let Some(&id) = self.ids.get(server) else {
            return;
        };
        self.send(Job::Put {
            server: id,
            path: path.into(),
            at,
            n: entries.len(),
            data: encode(entries),
        });
    }

    /// Forget a listing (the directory is gone, or a read found it out of date).
    pub fn forget(&self, server: usize, path: &[u8]) {
        let Some(&id) = self.ids.get(server) else {
            return;
        };
        self.send(Job::Forget {
            server: id,
            path: path.into(),
        });
    }

    /// Wait until everything queued so far is written (bounded by one batch's busy timeout).
    pub fn flush(&self) {
        let done = Arc::new((Mutex::new(false), Condvar::new()));
        {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            let Some(tx) = tx.as_ref() else { return };
            if tx.send(Job::Sync(Arc::clone(&done))).is_err() {
                return;
            }
        }
        let (m, cv) = &*done;
        let mut g = m.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + BUSY_TIMEOUT * 4;
        while !*g && Instant::now() < deadline {
            g = cv
                .wait_timeout(g, Duration::from_millis(100))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// A value in the `meta` table (the crawl's bookkeeping).
    pub fn meta(&self, key: &str) -> Option<i64> {
        let conn = self.read.lock().unwrap_or_else(|p| p.into_inner());
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()
            .ok()
            .flatten()
    }

    /// Set (`Some`) or delete (`None`) a `meta` value, at once (after a [`flush`](Self::flush)).
    pub fn set_meta(&self, key: &str, value: Option<i64>) -> Result<(), String> {
        self.flush();
        let conn = self.read.lock().unwrap_or_else(|p| p.into_inner());
        let r = match value {
            Some(v) => conn.execute(
                "INSERT INTO meta(key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, v],
            ),
            None => conn.execute("DELETE FROM meta WHERE key = ?1", [key]),
        };
        r.map(|_| ()).map_err(|e| sql_err(&self.path, e))
    }

    /// When the stored listing was fetched (unix seconds), without decoding it.
    pub fn fetched_at(&self, server: usize, path: &[u8]) -> Option<i64> {
        let id = *self.ids.get(server)?;
        let conn = self.read.lock().unwrap_or_else(|p| p.into_inner());
        conn.prepare_cached("SELECT fetched FROM listings WHERE server = ?1 AND path = ?2")
            .and_then(|mut st| st.query_row(params![id, path], |r| r.get(0)).optional())
            .ok()
            .flatten()
    }

    /// Stop the writer after it wrote everything queued.
    pub fn close(&self) {
        self.flush();
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = h.join();
        }
    }
}

impl Drop for Index {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(conn: Connection, rx: Receiver<Job>, stats: &Stats) {
    // Bounded: each turn handles one batch; ends when every sender is gone.
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        let until = Instant::now() + BATCH_TIME;
        while batch.len() < BATCH_MAX {
            let left = until.saturating_duration_since(Instant::now());
            // A `Sync` ends the batch at once: someone waits for it.
            if left.is_zero() || matches!(batch.last(), Some(Job::Sync(_))) {
                break;
            }
            match rx.recv_timeout(left) {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        let n = batch
            .iter()
            .filter(|j| matches!(j, Job::Put { .. }))
            .count() as u64;
        match write_batch(&conn, &batch) {
            Ok(()) => stats.written.fetch_add(n, Ordering::Relaxed),
            Err(e) => {
                log::warn!(
                    "listing index: a batch of {} listing(s) not written: {e}",
                    batch.len()
                );
                stats.failed.fetch_add(n, Ordering::Relaxed)
            }
        };
        for j in batch {
            if let Job::Sync(done) = j {
                *done.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
                done.1.notify_all();
            }
        }
    }
}

fn write_batch(conn: &Connection, batch: &[Job]) -> rusqlite::Result<()> {
    let tx = conn.unchecked_transaction()?;
    {
        let mut put = tx.prepare_cached(
            "INSERT INTO listings(server, path, fetched, n, data) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT(server, path) DO UPDATE SET fetched = excluded.fetched,
             n = excluded.n, data = excluded.data",
        )?;
        let mut del = tx.prepare_cached("DELETE FROM listings WHERE server = ?1 AND path = ?2")?;
        for j in batch {
            match j {
                Job::Put {
                    server,
                    path,
                    at,
                    n,
                    data,
                } => {
                    put.execute(params![server, &path[..], at, *n as i64, data])?;
                }
                Job::Forget { server, path } => {
                    del.execute(params![server, &path[..]])?;
                }
                Job::Sync(_) => {}
            }
        }
    }
    tx.commit()
}

/// Read-only access for `locate`: every stored listing, decoded.
pub struct Reader {
    conn: Connection,
    /// (id, ident, label) of the servers in the file.
    pub servers: Vec<(i64, String, String)>,
}

impl Reader {
    /// Open an index read-only; a missing or unusable file is an error naming the problem.
    pub fn open(path: &Path) -> Result<Reader, String> {
        if !path.exists() {
            return Err(format!(
                "no listing index at {} (mount once, or run `ftpcircle-fs index`)",
                path.display()
            ));
        }
        let conn = open_checked_fast(path)
            .map_err(|e| format!("listing index {}: {e}", path.display()))?;
        let servers = conn
            .prepare("SELECT id, ident, label FROM servers ORDER BY id")
            .and_then(|mut st| {
                st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(|e| sql_err(path, e))?;
        Ok(Reader { conn, servers })
    }

    /// Call `f(server_id, directory, entries)` for every stored listing. A listing that does
    /// not decode is skipped.
    pub fn for_each(&self, mut f: impl FnMut(i64, &[u8], &[RawEntry])) -> Result<(), String> {
        let mut st = self
            .conn
            .prepare("SELECT server, path, data FROM listings")
            .map_err(|e| e.to_string())?;
        let mut rows = st.query([]).map_err(|e| e.to_string())?;
        while let Some(r) = rows.next().map_err(|e| e.to_string())? {
            let server: i64 = r.get(0).map_err(|e| e.to_string())?;
            let path = r
                .get_ref(1)
                .map_err(|e| e.to_string())?
                .as_blob()
                .unwrap_or(b"");
            let data = r
                .get_ref(2)
                .map_err(|e| e.to_string())?
                .as_blob()
                .unwrap_or(b"");
            if let Some(entries) = decode(data) {
                f(server, path, &entries);
            }
        }
        Ok(())
    }

    /// Listings and entries stored.
    pub fn counts(&self) -> (u64, u64) {
        self.conn
            .query_row(
                "SELECT count(*), coalesce(sum(n), 0) FROM listings",
                [],
                |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
            )
            .unwrap_or((0, 0))
    }
}

/// Open read-only and check the header and version, not every page (`locate` must be quick;
/// a blob that does not decode is skipped anyway).
fn open_checked_fast(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| e.to_string())?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(|e| e.to_string())?;
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if app != APPLICATION_ID || version != SCHEMA_VERSION {
        return Err("not an ftpcircle-fs listing index of this version".into());
    }
    Ok(conn)
}

// ---- the encoding of one listing ----------------------------------------------------------
//
// varint(count), then per entry: kind byte (0 file, 1 dir, 2 symlink; +4 when an mtime
// follows; precision in bits 3-4), varint(name length), name, varint(size),
// [zigzag varint(mtime seconds)], [varint(target length), target]; then the FNV-1a 64 hash of
// everything before it, little endian.

fn fnv64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*pos)?;
        *pos += 1;
        v |= ((byte & 0x7f) as u64) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn get_bytes<'a>(b: &'a [u8], pos: &mut usize) -> Option<&'a [u8]> {
    let len = usize::try_from(get_varint(b, pos)?).ok()?;
    let end = pos.checked_add(len)?;
    let s = b.get(*pos..end)?;
    *pos = end;
    Some(s)
}

pub fn encode(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * 24 + 16);
    put_varint(&mut out, entries.len() as u64);
    for e in entries {
        let kind: u8 = match e.kind {
            EntryKind::File => 0,
            EntryKind::Dir => 1,
            EntryKind::Symlink(_) => 2,
        };
        let prec: u8 = match e.mtime_precision {
            Precision::Second => 0,
            Precision::Minute => 1,
            Precision::Day => 2,
        };
        let secs = e.mtime.map(|t| match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_secs() as i64,
            Err(e) => -(e.duration().as_secs() as i64),
        });
        out.push(kind | if secs.is_some() { 4 } else { 0 } | (prec << 3));
        put_varint(&mut out, e.name.len() as u64);
        out.extend_from_slice(&e.name);
        put_varint(&mut out, e.size);
        if let Some(s) = secs {
            put_varint(&mut out, ((s << 1) ^ (s >> 63)) as u64);
        }
        if let EntryKind::Symlink(t) = &e.kind {
            put_varint(&mut out, t.len() as u64);
            out.extend_from_slice(t);
        }
    }
    let h = fnv64(&out);
    out.extend_from_slice(&h.to_le_bytes());
    out
}

/// Decode a listing; `None` when the checksum or any field is wrong.
pub fn decode(data: &[u8]) -> Option<Vec<RawEntry>> {
    let body_len = data.len().checked_sub(8)?;
    let (body, sum) = data.split_at(body_len);
    if fnv64(body).to_le_bytes() != sum {
        return None;
    }
    let mut pos = 0;
    let count = usize::try_from(get_varint(body, &mut pos)?).ok()?;
    // Each entry takes at least 3 bytes: a count beyond that is a lie.
    if count > body.len() / 3 + 1 {
        return None;
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let k = *body.get(pos)?;
        pos += 1;
        let name = get_bytes(body, &mut pos)?.to_vec();
        if name.is_empty() || name.contains(&b'/') || name.contains(&0) {
            return None;
        }
        let size = get_varint(body, &mut pos)?;
        let mtime = if k & 4 != 0 {
            let z = get_varint(body, &mut pos)?;
            let s = ((z >> 1) as i64) ^ -((z & 1) as i64);
            Some(if s >= 0 {
                UNIX_EPOCH.checked_add(Duration::from_secs(s as u64))?
            } else {
                UNIX_EPOCH.checked_sub(Duration::from_secs(s.unsigned_abs()))?
            })
        } else {
            None
        };
        let mtime_precision = match (k >> 3) & 3 {
            0 => Precision::Second,
            1 => Precision::Minute,
            2 => Precision::Day,
            _ => return None,
        };
        let kind = match k & 3 {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink(get_bytes(body, &mut pos)?.to_vec()),
            _ => return None,
        };
        out.push(RawEntry {
            name,
            kind,
            size,
            mtime,
            mtime_precision,
        });
    }
    (pos == body.len()).then_some(out)
}

#[cfg(test)]
mod tests;
