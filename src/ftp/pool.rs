//! A capped pool of logged-in connections per server, and the [`Backend`] built on it.
//!
//! Owns: how many connections each server gets (`--max-connections`), reuse of idle ones,
//! retiring connections that saw an error, and mapping merged-tree paths to server paths
//! (the base path from serverlist.txt).
//!
//! Invariants:
//! - at most `max` connections per server exist at once (idle + leased);
//! - waiting for a connection is bounded by the network timeout;
//! - a connection is returned to the pool only after a clean reply; one that saw an error or an
//!   aborted transfer that did not end cleanly is dropped; an idle one is NOOP-checked before
//!   reuse once it has been idle for a while.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use crate::backend::{Backend, ByteStream};
use crate::error::{Error, Kind, Result};
use crate::ftp::conn::{Conn, Endpoint, Transfer};
use crate::ftp::listing::{self, RawEntry};

/// An idle connection older than this is NOOP-checked before reuse: servers drop idle control
/// connections (vsftpd after 300 s by default), and a check costs one round trip, not a login.
const IDLE_CHECK_AFTER: Duration = Duration::from_secs(15);

pub struct Server {
    pub ep: Endpoint,
    base: Vec<u8>,
    max: usize,
    state: Mutex<PoolState>,
    freed: Condvar,
}

struct PoolState {
    idle: Vec<Conn>,
    leased: usize,
}

/// A connection taken from the pool; goes back on drop unless marked broken.
pub struct Lease {
    server: Arc<Server>,
    conn: Option<Conn>,
    /// True when the connection came from the idle list (so a failure may just be staleness).
    reused: bool,
}

impl Server {
    pub fn new(ep: Endpoint, max: usize) -> Arc<Server> {
        let base = ep.spec.base.as_bytes().to_vec();
        Arc::new(Server {
            ep,
            base,
            max: max.max(1),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                leased: 0,
            }),
            freed: Condvar::new(),
        })
    }

    pub fn label(&self) -> &str {
        &self.ep.label
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
    pub fn acquire(self: &Arc<Self>) -> Result<Lease> {
        let deadline = Instant::now() + self.ep.timeout;
        let mut st = self.lock();
        loop {
            if let Some(mut conn) = st.idle.pop() {
                st.leased += 1;
                drop(st);
                if conn.last_used.elapsed() < IDLE_CHECK_AFTER || conn.noop(self.label()).is_ok() {
                    return Ok(self.lease(Some(conn), true));
                }
                // Stale: replace it with a fresh connection under the same slot.
                return self.connect_into_slot();
            }
            if st.leased < self.max {
                st.leased += 1;
                drop(st);
                return self.connect_into_slot();
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::new(
                    Kind::Network,
                    format!(
                        "{}: timed out waiting for one of {} connections",
                        self.label(),
                        self.max
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
    fn connect_into_slot(self: &Arc<Self>) -> Result<Lease> {
        match Conn::open(&self.ep) {
            Ok(conn) => Ok(self.lease(Some(conn), false)),
            Err(e) => {
                self.lock().leased -= 1;
                self.freed.notify_one();
                Err(e)
            }
        }
    }

    fn lease(self: &Arc<Self>, conn: Option<Conn>, reused: bool) -> Lease {
        Lease {
            server: Arc::clone(self),
            conn,
            reused,
        }
    }

    /// Run `op` on a pooled connection. A failure on a reused connection is retried once on a
    /// fresh one (the server may have closed it while idle); any failure drops the connection,
    /// except a plain "no such file" reply, after which the connection is still in sync.
    fn with_conn<T>(self: &Arc<Self>, mut op: impl FnMut(&mut Conn) -> Result<T>) -> Result<T> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut lease = self.acquire()?;
            let conn = lease.conn_mut()?;
            match op(conn) {
                Ok(v) => return Ok(v),
                Err(e) if e.kind == Kind::NotFound => return Err(e),
                Err(e) => {
                    lease.discard();
                    if !(lease.reused && attempts == 1 && e.kind == Kind::Network) {
                        return Err(e);
                    }
                    log::debug!(
                        "{}: retrying on a fresh connection after: {e}",
                        self.label()
                    );
                }
            }
        }
    }
}

impl Lease {
    fn conn_mut(&mut self) -> Result<&mut Conn> {
        self.conn
            .as_mut()
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
        self.server.freed.notify_one();
    }
}

/// The network side of the filesystem: every server of serverlist.txt, in priority order.
pub struct FtpBackend {
    servers: Vec<Arc<Server>>,
}

impl FtpBackend {
    pub fn new(servers: Vec<Arc<Server>>) -> Self {
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

    fn base(&self, s: usize) -> &[u8] {
        self.servers.get(s).map_or(b"/", |srv| srv.base.as_slice())
    }

    fn list(&self, s: usize, path: &[u8]) -> Result<Vec<RawEntry>> {
        let server = self.server(s)?;
        let spath = server.server_path(path);
        let (format, lines) = server.with_conn(|c| c.list_dir(server.label(), &spath))?;
        let parsed = listing::parse_listing(&lines, format, SystemTime::now());
        for skip in &parsed.skipped {
            log::debug!(
                "{}: listing of /{}: skipped {:?}: {}",
                server.label(),
                String::from_utf8_lossy(path),
                String::from_utf8_lossy(&skip.line),
                skip.reason
            );
        }
        Ok(parsed.entries)
    }

    fn open(&self, s: usize, path: &[u8], offset: u64) -> Result<Box<dyn ByteStream>> {
        let server = self.server(s)?;
        let spath = server.server_path(path);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut lease = server.acquire()?;
            let reused = lease.reused;
            match lease.conn_mut()?.retr(server.label(), &spath, offset) {
                Ok(xfer) => {
                    return Ok(Box::new(FtpStream {
                        lease,
                        xfer: Some(xfer),
                    }));
                }
                Err(e) if e.kind == Kind::NotFound => return Err(e),
                Err(e) => {
                    lease.discard();
                    if !(reused && attempts == 1 && e.kind == Kind::Network) {
                        return Err(e);
                    }
                }
            }
        }
    }
}

/// A RETR in progress on a leased connection.
struct FtpStream {
    lease: Lease,
    xfer: Option<Transfer>,
}

impl ByteStream for FtpStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        use std::io::Read;
        let label = self.lease.server.label().to_string();
        let Some(xfer) = self.xfer.as_mut() else {
            return Ok(0);
        };
        match xfer.read(buf) {
            Ok(n) => Ok(n),
            Err(e) => {
                // The data connection broke: the control connection's state is unknown.
                self.xfer = None;
                self.lease.discard();
                let what = match e.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        "timed out".to_string()
                    }
                    _ => e.to_string(),
                };
                Err(Error::new(
                    Kind::Network,
                    format!("{label}: reading data: {what}"),
                ))
            }
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
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
}

impl FtpStream {
    fn abort_now(&mut self) {
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
