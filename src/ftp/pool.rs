//! A capped pool of logged-in connections per server, and the [`Backend`] built on it.
//!
//! Owns: how many connections each server gets (`--max-connections`), reuse of idle ones,
//! retiring connections that saw an error, mapping merged-tree paths to server paths
//! (the base path from serverlist.txt), and what a listing means: a LIST or STAT by path
//! that failed or gave no readable line is tried once more from inside the directory
//! (CWD + LIST, for servers whose `ls` split the path), and a listing none of whose lines
//! can be read is an error, never an empty directory.
//!
//! Every connection also holds a permit of the global cap ([`ConnLimit`],
//! `--max-total-connections`); at the cap, the idle connections of the least recently used
//! servers are closed first.
//!
//! Health: a server whose fresh connection fails (refused, timed out, TLS or login error), or
//! that stops answering on an open one, is marked *down*: calls to it fail at once instead of
//! waiting out the timeout again, and it is retried in the background with exponential backoff
//! (1 s doubling to 30 s): one scheduler thread finds due servers and runs their probes on a
//! pool of [`PROBE_WORKERS`] threads, whatever the number of servers. When it answers, it is *up* again and the
//! merged view picks its entries up at the next refresh of each directory.
//!
//! Busy servers: a 421 or a 530 "too many connections" lowers that server's connection budget
//! to what it accepted and retries after a short backoff (bounded by the timeout) instead of
//! failing; the budget grows back by one every [`BUDGET_RECOVERY`].
//!
//! Invariants:
//! - at most `budget <= max` connections per server exist at once (idle + leased);
//! - every connection holds a permit of the global cap for exactly as long as it exists
//!   (`Pooled`), so all servers together stay within `--max-total-connections`;
//! - waiting for a connection is bounded by the network timeout;
//! - a connection is returned to the pool only after a clean reply; one that saw an error or an
//!   aborted transfer that did not end cleanly is dropped; an idle one is NOOP-checked before
//!   reuse once it has been idle for a while.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use crate::backend::{Backend, ByteStream, HashAlgo, Health, LinkTargets, Priority, Speed, State};
use crate::error::{Error, Kind, Result};
use crate::ftp::conn::{self, Conn, Endpoint, Transfer};
use crate::ftp::limit::{ConnLimit, Permit};
use crate::ftp::listing::{self, Format, Listing, RawEntry};
use crate::ftp::speed::{self, Meter};
use crate::workers::Workers;

/// An idle connection older than this is NOOP-checked before reuse: servers drop idle control
/// connections (vsftpd after 300 s by default), and a check costs one round trip, not a login.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(15);
/// First retry of a down server after 1 s (a restart is quick), doubling up to 30 s so a
/// server that stays away costs one connection attempt per 30 s.
const PROBE_FIRST: Duration = Duration::from_secs(1);
const PROBE_MAX: Duration = Duration::from_secs(30);
/// How often the probe scheduler looks for servers due a probe: well under PROBE_FIRST.
const PROBE_TICK: Duration = Duration::from_millis(250);
/// A server that answered "too many connections" gets one more connection back per minute
/// without complaint.
const BUDGET_RECOVERY: Duration = Duration::from_secs(60);
/// Probes of down servers run on at most this many threads. A probe of a silent server holds
/// its thread for one `--timeout`, so 100 such servers are each retried every ~2 minutes at
/// worst (10 s timeout) instead of every 30 s: fine for servers that are away anyway.
pub const PROBE_WORKERS: usize = 8;

/// A logged-in connection and its share of the global cap (released when it is dropped).
pub struct Pooled {
    conn: Conn,
    _permit: Permit,
}

impl std::ops::Deref for Pooled {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl std::ops::DerefMut for Pooled {
    fn deref_mut(&mut self) -> &mut Conn {
        &mut self.conn
    }
}

pub struct Server {
    pub ep: Endpoint,
    base: Vec<u8>,
    max: usize,
    limit: Arc<ConnLimit>,
    state: Mutex<PoolState>,
    freed: Condvar,
    /// Listings fetched and file bytes received (for the status file).
    listings: AtomicU64,
    bytes: AtomicU64,
    /// Measured round trip and per-connection throughput.
    meter: Meter,
}

struct PoolState {
    /// Oldest first; reuse takes the newest.
    idle: Vec<Pooled>,
    /// When a connection was last asked for: the least recently used server loses its idle
    /// connections first when the global cap is reached.
    last_active: Instant,
    leased: usize,
    /// Connections we may have at once: `max`, lowered while the server says it is busy.
    budget: usize,
    last_busy: Option<Instant>,
    down: Option<Down>,
    /// The server refused REST once: don't ask it for offsets again.
    no_rest: bool,
    /// Hash algorithms its FEAT offers (HASH or X-commands), from its last new connection.
    hash_algos: u8,
    /// Foreground requests waiting for a connection: background work yields to them.
    fg_waiting: usize,
    /// When it last came back up (`None`: up since the mount, or never up).
    up_since: Option<SystemTime>,
    /// When it last said "too many connections" after a quiet spell.
    busy_since: Option<SystemTime>,
    /// The last failure it caused.
    last_error: Option<String>,
}

struct Down {
    since: Instant,
    /// `since` on the wall clock, for the status file.
    at: SystemTime,
    /// It refused our login (rather than not answering).
    auth: bool,
    next_probe: Instant,
    backoff: Duration,
    reason: String,
    /// A probe is queued or running.
    probing: bool,
}

/// A connection taken from the pool; goes back on drop unless marked broken.
pub struct Lease {
    server: Arc<Server>,
    conn: Option<Pooled>,
    /// True when the connection came from the idle list (so a failure may just be staleness).
    reused: bool,
}

impl Server {
    /// A server with at most `max` connections of its own, all counted against `limit`.
    pub fn new(ep: Endpoint, max: usize, limit: &Arc<ConnLimit>) -> Arc<Server> {
        let base = ep.spec.base.as_bytes().to_vec();
        let server = Arc::new(Server {
            ep,
            base,
            max: max.max(1),
            limit: Arc::clone(limit),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                last_active: Instant::now(),
                leased: 0,
                budget: max.max(1),
                last_busy: None,
                down: None,
                no_rest: false,
                hash_algos: 0,
                fg_waiting: 0,
                up_since: None,
                busy_since: None,
                last_error: None,
            }),
            freed: Condvar::new(),
            listings: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            meter: Meter::default(),
        });
        limit.register(&server);
        server
    }

    /// When this server was last used, if it has an idle connection to give up.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        let st = self.lock();
        (!st.idle.is_empty()).then_some(st.last_active)
    }

    /// Close the oldest idle connection (for the global cap); false if there was none.
    pub(crate) fn close_oldest_idle(&self) -> bool {
        let mut st = self.lock();
        if st.idle.is_empty() {
            return false;
        }
        let conn = st.idle.remove(0);
        drop(st);
        // Dropping it closes the socket and releases its permit; a slot is free here too.
        drop(conn);
        self.freed.notify_all();
        true
    }

    pub fn label(&self) -> &str {
        &self.ep.label
    }

    /// Hand the connection's last timed round trip to the meter.
    fn take_rtt(&self, conn: &mut Conn) {
        if let Some(d) = conn.rtt_sample.take() {
            self.meter.rtt_sample(self.label(), d);
        }
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The path on the server for a path relative to its root in the merged tree.
    pub fn server_path(&self, rel: &[u8]) -> Vec<u8> {
        let mut p = self.base.clone();
        if !rel.is_empty() {
            if p.last() != Some(&b'/') {
                p.push(b'/');
            }
            p.extend_from_slice(rel);
        }
        p
    }

    /// Take a connection: an idle one, or a new one while under the cap, or wait (bounded).
    /// Background requests leave one connection of the budget to foreground ones and never take
    /// one while a foreground request is waiting.
    pub fn acquire(self: &Arc<Self>, prio: Priority) -> Result<Lease> {
        let deadline = Instant::now() + self.ep.timeout;
        let mut st = self.lock();
        if let Some(d) = &st.down {
            return Err(Error::new(
                Kind::Unavailable,
                format!(
                    "{}: marked down {}s ago ({}); retrying in the background",
                    self.label(),
                    d.since.elapsed().as_secs(),
                    d.reason
                ),
            ));
        }
        st.last_active = Instant::now();
        if st.budget < self.max && st.last_busy.is_some_and(|t| t.elapsed() > BUDGET_RECOVERY) {
            st.budget += 1;
            st.last_busy = Some(Instant::now());
        }
        let fg = prio == Priority::Foreground;
        if fg {
            st.fg_waiting += 1;
        }
        let res = self.acquire_locked(st, prio, deadline);
        if fg {
            self.lock().fg_waiting -= 1;
        }
        res
    }

    fn acquire_locked(
        self: &Arc<Self>,
        mut st: MutexGuard<'_, PoolState>,
        prio: Priority,
        deadline: Instant,
    ) -> Result<Lease> {
        let fg = prio == Priority::Foreground;
        loop {
            // Background work may use all but one connection, and only with nobody waiting.
            let allowed = fg || (st.fg_waiting == 0 && st.leased + 1 < st.budget.max(2));
            if allowed && let Some(mut conn) = st.idle.pop() {
                st.leased += 1;
                drop(st);
                if conn.last_used.elapsed() < IDLE_CHECK_AFTER || conn.noop(self.label()).is_ok() {
                    self.take_rtt(&mut conn);
                    return Ok(self.lease(Some(conn), true));
                }
                // Stale: replace it with a fresh connection under the same slot (its permit
                // goes first, so a full global cap has room for the new one).
                drop(conn);
                return self.connect_into_slot(deadline);
            }
            if allowed && st.leased < st.budget {
                st.leased += 1;
                drop(st);
                return self.connect_into_slot(deadline);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    Kind::Network,
                    format!(
                        "{}: timed out waiting for one of {} connections",
                        self.label(),
                        st.budget
                    ),
                ));
            }
            st = self
                .freed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// Open a connection for a slot already counted in `leased`; frees the slot on failure.
    /// Waiting for room under the global cap is not the server's fault: it is not marked.
    fn connect_into_slot(self: &Arc<Self>, deadline: Instant) -> Result<Lease> {
        let opened = self
            .limit
            .acquire(self.label(), deadline)
            .map_err(|e| (e, false))
            .and_then(|permit| {
                Conn::open(&self.ep)
                    .map(|conn| Pooled {
                        conn,
                        _permit: permit,
                    })
                    .map_err(|e| (e, true))
            });
        match opened {
            Ok(mut conn) => {
                self.take_rtt(&mut conn);
                let mut st = self.lock();
                st.hash_algos = conn.feats.hash_cmd | conn.feats.x_hash;
                drop(st);
                Ok(self.lease(Some(conn), false))
            }
            Err((e, false)) => {
                self.lock().leased -= 1;
                self.freed.notify_one();
                Err(e)
            }
            Err((e, true)) => {
                self.lock().leased -= 1;
                self.freed.notify_one();
                self.note_failure(&e, true);
                Err(e)
            }
        }
    }

    /// Record what a failure says about the server: down, or busy, or nothing.
    /// `fresh`: the failure happened on a new connection (not a possibly stale idle one).
    fn note_failure(&self, e: &Error, fresh: bool) {
        let mut st = self.lock();
        st.last_error = Some(e.message.clone());
        match e.kind {
            Kind::Busy => {
                if st.budget == self.max {
                    st.busy_since = Some(SystemTime::now());
                }
                // Keep what the server accepted; at least one so we can still make progress.
                st.budget = (st.leased + st.idle.len()).max(1).min(self.max);
                st.last_busy = Some(Instant::now());
                log::info!(
                    "{}: server busy ({e}); using at most {} connection(s) for a while",
                    self.label(),
                    st.budget
                );
            }
            Kind::Timeout | Kind::Auth => self.mark_down(&mut st, e),
            Kind::Network if fresh => self.mark_down(&mut st, e),
            _ => {}
        }
    }

    fn mark_down(&self, st: &mut PoolState, e: &Error) {
        if st.down.is_some() {
            return;
        }
        // Named once, when the state changes; the prober logs when it comes back.
        log::warn!(
            "{}: marked down: {e}; retrying in the background",
            self.label()
        );
        st.idle.clear();
        let backoff = if e.kind == Kind::Auth {
            PROBE_MAX
        } else {
            PROBE_FIRST
        };
        st.down = Some(Down {
            since: Instant::now(),
            at: SystemTime::now(),
            auth: e.kind == Kind::Auth,
            next_probe: Instant::now() + backoff,
            backoff,
            reason: e.message.clone(),
            probing: false,
        });
    }

    /// Connections background work could take now, one of the budget always left over
    /// (the same rule as [`Self::acquire`] applies to background requests).
    pub fn spare(&self) -> usize {
        let st = self.lock();
        if st.down.is_some() || st.fg_waiting > 0 {
            return 0;
        }
        st.budget.max(2).saturating_sub(st.leased + 1)
    }

    /// Its state and counters for the status file.
    pub fn health(&self) -> Health {
        let st = self.lock();
        let (state, since) = match &st.down {
            Some(d) if d.auth => (State::LoginRefused, Some(d.at)),
            Some(d) => (State::Down, Some(d.at)),
            None if st.budget < self.max => (State::Busy, st.busy_since),
            None => (State::Up, st.up_since),
        };
        Health {
            state,
            since,
            last_error: st
                .down
                .as_ref()
                .map(|d| d.reason.clone())
                .or_else(|| st.last_error.clone()),
            connections: st.leased + st.idle.len(),
            budget: st.budget,
            listings: self.listings.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
        }
    }

    /// Is the server marked down right now?
    pub fn is_down(&self) -> bool {
        self.lock().down.is_some()
    }

    /// Down, its backoff has passed and no probe is on the way: claim the probe.
    fn claim_probe(&self) -> bool {
        let mut st = self.lock();
        match st.down.as_mut() {
            Some(d) if !d.probing && Instant::now() >= d.next_probe => {
                d.probing = true;
                true
            }
            _ => false,
        }
    }

    /// Try a fresh login (after [`Self::claim_probe`]): up again, or down with a longer backoff.
    fn probe(self: &Arc<Self>) {
        let deadline = Instant::now() + self.ep.timeout;
        let opened = self
            .limit
            .acquire(self.label(), deadline)
            .and_then(|permit| {
                Conn::open(&self.ep).map(|conn| Pooled {
                    conn,
                    _permit: permit,
                })
            });
        match opened {
            Ok(mut conn) => {
                self.take_rtt(&mut conn);
                let mut st = self.lock();
                st.down = None;
                st.up_since = Some(SystemTime::now());
                if st.leased + st.idle.len() < st.budget {
                    st.idle.push(conn);
                }
                drop(st);
                log::warn!("{}: answering again; back in the merged tree", self.label());
                self.freed.notify_all();
            }
            Err(e) => {
                let mut st = self.lock();
                if let Some(d) = st.down.as_mut() {
                    d.probing = false;
                    // No room under the global cap says nothing about the server.
                    if e.kind != Kind::Busy {
                        d.backoff = (d.backoff * 2).min(PROBE_MAX);
                        d.reason = e.message.clone();
                        d.auth = e.kind == Kind::Auth;
                    }
                    d.next_probe = Instant::now() + d.backoff;
                    log::debug!("{}: still down: {e}", self.label());
                }
            }
        }
    }

    fn lease(self: &Arc<Self>, conn: Option<Pooled>, reused: bool) -> Lease {
        Lease {
            server: Arc::clone(self),
            conn,
            reused,
        }
    }

    /// Run `op` on a pooled connection. A failure on a reused connection is retried once on a
    /// fresh one (the server may have closed it while idle), unless it timed out; a "busy" reply
    /// is retried after a backoff within the timeout. Any failure drops the connection except a
    /// plain "no such file" reply, after which the connection is still in sync.
    fn with_conn<T>(
        self: &Arc<Self>,
        prio: Priority,
        op: impl FnMut(&mut Conn) -> Result<T>,
    ) -> Result<T> {
        self.with_lease(prio, op).map(|(_lease, v)| v)
    }

    /// Like [`Self::with_conn`], but hands back the lease with the result, for results (a
    /// transfer) that keep using the connection.
    fn with_lease<T>(
        self: &Arc<Self>,
        prio: Priority,
        mut op: impl FnMut(&mut Conn) -> Result<T>,
    ) -> Result<(Lease, T)> {
        let deadline = Instant::now() + self.ep.timeout;
        let mut busy_wait = Duration::from_millis(100);
        let mut stale_retry_done = false;
        // Bounded: each turn either returns, uses up the one stale retry, or sleeps a growing
        // backoff until the deadline.
        loop {
            let mut lease = match self.acquire(prio) {
                Ok(l) => l,
                Err(e) if e.kind == Kind::Busy && Instant::now() + busy_wait < deadline => {
                    std::thread::sleep(busy_wait);
                    busy_wait *= 2;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let reused = lease.reused;
            let conn = lease.conn_mut()?;
            match op(conn) {
                Ok(v) => return Ok((lease, v)),
                Err(e) if e.kind == Kind::NotFound => return Err(e),
                Err(e) => {
                    lease.discard();
                    drop(lease);
                    if reused && !stale_retry_done && e.kind == Kind::Network {
                        stale_retry_done = true;
                        log::debug!(
                            "{}: retrying on a fresh connection after: {e}",
                            self.label()
                        );
                        continue;
                    }
                    self.note_failure(&e, !reused || e.kind != Kind::Network);
                    if e.kind == Kind::Busy && Instant::now() + busy_wait < deadline {
                        std::thread::sleep(busy_wait);
                        busy_wait *= 2;
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }
}

impl Lease {
    fn conn_mut(&mut self) -> Result<&mut Conn> {
        self.conn
            .as_deref_mut()
            .ok_or_else(|| Error::new(Kind::Network, "connection already closed"))
    }

    /// Drop the connection instead of returning it to the pool.
    fn discard(&mut self) {
        self.conn = None;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let mut st = self.server.lock();
        st.leased -= 1;
        if let Some(conn) = self.conn.take() {
            st.idle.push(conn);
        }
        drop(st);
        // All waiters: a background one cannot use a slot a foreground one is waiting for.
        self.server.freed.notify_all();
    }
}

/// The network side of the filesystem: every server of serverlist.txt, in priority order.
pub struct FtpBackend {
    servers: Vec<Arc<Server>>,
}

impl FtpBackend {
    /// Also starts the probe scheduler (one thread for all servers, probes on a pool of
    /// [`PROBE_WORKERS`]); it ends within a second of the backend being dropped.
    pub fn new(servers: Vec<Arc<Server>>) -> Self {
        let weak: Vec<Weak<Server>> = servers.iter().map(Arc::downgrade).collect();
        let spawned = std::thread::Builder::new()
            .name("ftpc-probe".into())
            .spawn(move || {
                let probes = Workers::new("ftpc-probe", PROBE_WORKERS);
                // Ends when every server is gone (the backend was dropped).
                loop {
                    let mut alive = false;
                    for server in weak.iter().filter_map(Weak::upgrade) {
                        alive = true;
                        if server.claim_probe() {
                            probes.spawn(move || server.probe());
                        }
                    }
                    if !alive {
                        break;
                    }
                    std::thread::sleep(PROBE_TICK);
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the prober thread: {e}");
        }
        FtpBackend { servers }
    }

    fn server(&self, s: usize) -> Result<&Arc<Server>> {
        self.servers
            .get(s)
            .ok_or_else(|| Error::new(Kind::Invalid, format!("no server #{s}")))
    }
}

impl Backend for FtpBackend {
    fn servers(&self) -> usize {
        self.servers.len()
    }

    fn label(&self, s: usize) -> &str {
        self.servers.get(s).map_or("?", |srv| srv.label())
    }

    fn is_down(&self, s: usize) -> bool {
        self.servers.get(s).is_some_and(|srv| srv.is_down())
    }

    fn spare_connections(&self, s: usize) -> usize {
        self.servers.get(s).map_or(0, |srv| srv.spare())
    }

    fn contended(&self, s: usize) -> bool {
        self.servers
            .get(s)
            .is_some_and(|srv| srv.lock().fg_waiting > 0)
    }

    fn health(&self, s: usize) -> Health {
        self.servers
            .get(s)
            .map(|srv| srv.health())
            .unwrap_or_default()
    }

    fn url_root(&self, s: usize) -> String {
        let Some(srv) = self.servers.get(s) else {
            return String::new();
        };
        let spec = &srv.ep.spec;
        let scheme = if spec.tls == crate::serverlist::Tls::Plain {
            "ftp"
        } else {
            "ftps"
        };
        let base = spec.base.trim_end_matches('/');
        format!(
            "{scheme}://{}{}",
            spec.addr_string(),
            crate::circle::provenance::url_escape(base.as_bytes())
        )
    }

    fn speed(&self, s: usize) -> Speed {
        self.servers
            .get(s)
            .map_or_else(Speed::default, |srv| srv.meter.get())
    }

    fn base(&self, s: usize) -> &[u8] {
        self.servers.get(s).map_or(b"/", |srv| srv.base.as_slice())
    }

    fn list(&self, s: usize, path: &[u8], prio: Priority) -> Result<Vec<RawEntry>> {
        let server = self.server(s)?;
        server.listings.fetch_add(1, Ordering::Relaxed);
        let label = server.label();
        let spath = server.server_path(path);
        let list = |allow_stat, from_inside| {
            server.with_conn(prio, |c| c.list_dir(label, &spath, allow_stat, from_inside))
        };
        let first = match list(true, false) {
            // That connection was dropped (out of step); a data-connection listing has no limit.
            Err(e) if e.kind == Kind::TooLarge => list(false, false),
            res => res,
        };
        // A LIST or STAT with a path the server's `ls` took apart fails or answers only with
        // error lines: list once more from inside the directory (a MLSD path is never split,
        // and an odd path was listed from inside already).
        let by_path = |format| format == Format::List && !conn::list_from_inside(&spath);
        let parsed = match first {
            Ok((format, lines)) => {
                let parsed = listing::parse_listing(&lines, format, SystemTime::now());
                if by_path(format) && unreadable(&parsed) {
                    log::debug!(
                        "{label}: nothing readable in the listing of {}; listing it from inside",
                        String::from_utf8_lossy(&spath)
                    );
                    let (format, lines) = list(false, true)?;
                    listing::parse_listing(&lines, format, SystemTime::now())
                } else {
                    parsed
                }
            }
            Err(e)
                if matches!(e.kind, Kind::NotFound | Kind::Protocol) && by_path(Format::List) =>
            {
                log::debug!("{e}; listing it from inside");
                let (format, lines) = list(false, true)?;
                listing::parse_listing(&lines, format, SystemTime::now())
            }
            Err(e) => return Err(e),
        };
        entries_of(label, path, parsed)
    }

    fn hash_algos(&self, s: usize) -> u8 {
        self.servers.get(s).map_or(0, |srv| srv.lock().hash_algos)
    }

    fn hash(&self, s: usize, path: &[u8], algo: HashAlgo, prio: Priority) -> Result<Vec<u8>> {
        let server = self.server(s)?;
        let spath = server.server_path(path);
        // Not through `with_conn`: a hash that takes longer than the timeout (a big file on a
        // slow disk) says nothing about the server's health, so it must not mark it down.
        // The connection may be out of step after a failure: it is dropped.
        let mut lease = server.acquire(prio)?;
        let res = lease.conn_mut()?.file_hash(server.label(), &spath, algo);
        if res.is_err() {
            lease.discard();
        }
        res
    }

    fn symlink_targets(&self, s: usize, path: &[u8], prio: Priority) -> Result<LinkTargets> {
        let server = self.server(s)?;
        let spath = server.server_path(path);
        let list = |allow_stat| {
            server.with_conn(prio, |c| {
                c.list_dir_long(server.label(), &spath, allow_stat)
            })
        };
        let lines = match list(true) {
            Err(e) if e.kind == Kind::TooLarge => list(false)?,
            res => res?,
        };
        let parsed = listing::parse_listing(&lines, listing::Format::List, SystemTime::now());
        Ok(parsed
            .entries
            .into_iter()
            .filter(|e| matches!(&e.kind, listing::EntryKind::Symlink(t) if !t.is_empty()))
            .collect())
    }

    fn open(
        &self,
        s: usize,
        path: &[u8],
        offset: u64,
        prio: Priority,
    ) -> Result<Box<dyn ByteStream>> {
        let server = self.server(s)?;
        if offset > 0 && server.lock().no_rest {
            return Err(Error::new(
                Kind::NoRest,
                format!("{}: server does not support REST", server.label()),
            ));
        }
        let spath = server.server_path(path);
        match server.with_lease(prio, |conn| conn.retr(server.label(), &spath, offset)) {
            Ok((lease, xfer)) => Ok(Box::new(FtpStream {
                lease,
                xfer: Some(xfer),
                sample_bytes: 0,
                sample_wait: Duration::ZERO,
            })),
            Err(e) => {
                if e.kind == Kind::NoRest {
                    server.lock().no_rest = true;
                }
                Err(e)
            }
        }
    }
}

/// A listing whose lines were all rejected: not an empty directory but one we could not read.
fn unreadable(parsed: &Listing) -> bool {
    parsed.entries.is_empty() && !parsed.skipped.is_empty()
}

/// The entries of a parsed listing of `/path` (relative to the server's base), or an error
/// naming the server and the first bad line when no line could be read: the merged directory
/// then keeps the other servers' entries and logs the error at warning level.
fn entries_of(label: &str, path: &[u8], parsed: Listing) -> Result<Vec<RawEntry>> {
    let shown = String::from_utf8_lossy(path);
    if unreadable(&parsed)
        && let Some(first) = parsed.skipped.first()
    {
        return Err(Error::new(
            Kind::Protocol,
            format!(
                "{label}: listing of /{shown}: none of its {} lines could be read (first: {:?}: {})",
                parsed.skipped.len(),
                String::from_utf8_lossy(&first.line),
                first.reason
            ),
        ));
    }
    for skip in &parsed.skipped {
        log::debug!(
            "{label}: listing of /{shown}: skipped {:?}: {}",
            String::from_utf8_lossy(&skip.line),
            skip.reason
        );
    }
    Ok(parsed.entries)
}

/// A RETR in progress on a leased connection.
struct FtpStream {
    lease: Lease,
    xfer: Option<Transfer>,
    /// Bytes read and time spent waiting in reads since the last throughput sample.
    sample_bytes: u64,
    sample_wait: Duration,
}

impl FtpStream {
    /// `n` bytes arrived in a read or splice that started at `started`.
    fn count(&mut self, n: usize, started: Instant) {
        self.lease
            .server
            .bytes
            .fetch_add(n as u64, Ordering::Relaxed);
        self.sample_wait += started.elapsed();
        self.sample_bytes += n as u64;
        if self.sample_bytes >= speed::THROUGHPUT_SAMPLE_BYTES || n == 0 {
            self.report();
        }
    }

    /// The data connection broke: the control connection's state is unknown, so it goes too;
    /// a server that stops sending mid-transfer is treated like one that hangs.
    fn broken(&mut self, e: &std::io::Error) -> Error {
        self.xfer = None;
        self.lease.discard();
        let err = crate::ftp::conn::net_err(self.lease.server.label(), "reading data", e);
        self.lease.server.note_failure(&err, true);
        err
    }

    /// The plain TCP data socket, if the transfer is one (TLS bytes must be decrypted here).
    fn socket(&self) -> Option<&std::net::TcpStream> {
        match self.xfer.as_ref()?.get_ref() {
            suppaftp::DataStream::Tcp(s) => Some(s),
            _ => None,
        }
    }

    /// Give the meter what was read since the last sample.
    fn report(&mut self) {
        let server = &self.lease.server;
        server
            .meter
            .throughput_sample(server.label(), self.sample_bytes, self.sample_wait);
        self.sample_bytes = 0;
        self.sample_wait = Duration::ZERO;
    }
}

impl ByteStream for FtpStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        use std::io::Read;
        let Some(xfer) = self.xfer.as_mut() else {
            return Ok(0);
        };
        let started = Instant::now();
        match xfer.read(buf) {
            Ok(n) => {
                self.count(n, started);
                Ok(n)
            }
            Err(e) => Err(self.broken(&e)),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.report();
        let label = self.lease.server.label().to_string();
        let Some(xfer) = self.xfer.take() else {
            return Ok(());
        };
        let res = self.lease.conn_mut()?.finish(&label, xfer);
        if res.is_err() {
            self.lease.discard();
        }
        res
    }

    fn abort(mut self: Box<Self>) {
        self.abort_now();
    }

    fn can_splice(&self) -> bool {
        self.socket().is_some()
    }

    fn splice_to(&mut self, pipe: &crate::splice::Pipe, len: usize) -> Option<Result<usize>> {
        use std::os::fd::AsFd;
        let socket = self.socket()?;
        let started = Instant::now();
        let res = pipe.fill_from(socket.as_fd(), len);
        Some(match res {
            Ok(n) => {
                self.count(n, started);
                Ok(n)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(self.broken(&e)),
        })
    }
}

impl FtpStream {
    fn abort_now(&mut self) {
        self.report();
        let label = self.lease.server.label().to_string();
        if let Some(xfer) = self.xfer.take() {
            let ok = match self.lease.conn_mut() {
                Ok(conn) => conn.abort(&label, xfer).is_ok(),
                Err(_) => false,
            };
            if !ok {
                self.lease.discard();
            }
        }
    }
}

impl Drop for FtpStream {
    fn drop(&mut self) {
        self.abort_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(lines: &[&[u8]]) -> Listing {
        listing::parse_listing(lines, Format::List, SystemTime::now())
    }

    #[test]
    fn an_all_garbage_listing_is_an_error_not_an_empty_directory() {
        let garbage = parse(&[
            b"/pub/sub: No such file or directory",
            b"dir: No such file or directory",
        ]);
        let err = entries_of("srv:21", b"pub/sub dir", garbage).unwrap_err();
        assert_eq!(err.kind, Kind::Protocol);
        assert_eq!(err.errno(), libc::EIO);
        assert_eq!(err.log_level(), log::Level::Warn);
        assert!(
            err.message.starts_with("srv:21: listing of /pub/sub dir:"),
            "{err}"
        );
        assert!(
            err.message
                .contains("\"/pub/sub: No such file or directory\""),
            "{err}"
        );
    }

    #[test]
    fn empty_and_partly_readable_listings_are_listings() {
        assert_eq!(entries_of("s", b"d", parse(&[])).unwrap(), vec![]);
        // `total`, `.` and `..` are skipped by design: still an empty directory.
        let dots = parse(&[
            b"total 0",
            b"drwxr-xr-x 2 0 0 4096 Jan 01 2024 .",
            b"drwxr-xr-x 2 0 0 4096 Jan 01 2024 ..",
        ]);
        assert_eq!(entries_of("s", b"d", dots).unwrap(), vec![]);
        let mixed = parse(&[b"garbage", b"-rw-r--r-- 1 0 0 5 Jan 01 2024 ok.txt"]);
        let entries = entries_of("s", b"d", mixed).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].name, b"ok.txt");
    }
}
