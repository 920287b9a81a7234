//! A small hand-written FTP server for faults real servers won't produce.
//!
//! One [`FakeFtp`] listens on `127.0.0.1:<ephemeral>`; each control connection
//! runs in its own thread, passive data connections use ephemeral ports on
//! 127.0.0.1 too. What it serves and how it misbehaves is a [`FakeConfig`],
//! which can be changed while the server runs ([`FakeFtp::configure`]): a
//! session reads the config each time it needs it, so e.g. switching
//! `hang_on_list` on makes already-open connections hang on their next LIST.
//!
//! Protocol subset: USER, PASS, SYST, FEAT, OPTS, TYPE, MODE, STRU, PWD, CWD,
//! CDUP, NOOP, EPSV, PASV, REST, SIZE, LIST, NLST, RETR, ABOR, QUIT, and with
//! [`FakeConfig::hash_crc32`] HASH and XCRC (CRC-32 of the whole file). Anything
//! else (MLSD, STOR, DELE, ...) gets `502` (after being logged). Listings are
//! in vsftpd's `ls -l` format, or the raw lines given in
//! [`FakeConfig::raw_lists`].
//!
//! Every command line received (as sent, CR/LF stripped only at the end of
//! the line) is appended to an in-memory log ([`FakeFtp::commands`]).
//!
//! Bounds: every blocking read or write has a short timeout and re-checks
//! whether the server was stopped; a session ends after [`IDLE_LIMIT`] without
//! a command, after [`SESSION_LIMIT`] or [`MAX_COMMANDS`], and a hang ends
//! when the client closes the connection or after [`HANG_LIMIT`]. The accept
//! loop ends on [`FakeFtp::stop`] / drop or after [`SERVER_LIMIT`]. So every
//! thread ends by itself shortly after the test is done with the server.

use std::collections::{BTreeMap, HashMap};
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often blocked reads/writes wake up to check for stop().
const TICK: Duration = Duration::from_millis(50);
/// A session without any command for this long is closed.
pub const IDLE_LIMIT: Duration = Duration::from_secs(120);
/// A session never lives longer than this.
pub const SESSION_LIMIT: Duration = Duration::from_secs(600);
/// Commands per session at most.
pub const MAX_COMMANDS: usize = 1_000_000;
/// A hang (hang_after_greeting / hang_on_list) lasts at most this long.
pub const HANG_LIMIT: Duration = Duration::from_secs(120);
/// The accept loop ends after this long even if never stopped.
pub const SERVER_LIMIT: Duration = Duration::from_secs(900);
/// How long a data command waits for the client's passive connection.
const DATA_ACCEPT_LIMIT: Duration = Duration::from_secs(5);
/// A data write that makes no progress for this long gives up.
const DATA_STALL_LIMIT: Duration = Duration::from_secs(60);
/// Longest command line accepted.
const MAX_LINE: usize = 64 * 1024;

/// One thing in the served tree.
#[derive(Clone, Debug)]
pub enum FakeNode {
    File(Arc<Vec<u8>>),
    Dir,
    /// A symlink with its target (listed as `name -> target`, not followed by RETR).
    Link(String),
}

/// What the fake serves and how it misbehaves.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// Path (no leading slash, `/`-separated) -> node. Parent directories of
    /// any path exist implicitly.
    pub tree: BTreeMap<String, FakeNode>,
    /// Directory path ("" for the root) -> LIST lines sent verbatim instead of
    /// the generated listing (each line followed by CRLF). The directory then
    /// exists even if nothing in `tree` is below it. RETR still serves `tree`.
    pub raw_lists: BTreeMap<String, Arc<Vec<Vec<u8>>>>,
    /// `Some((user, pass))`: only that login is accepted (530 otherwise).
    /// `None`: any USER/PASS is accepted.
    pub login: Option<(String, String)>,
    /// `false`: FEAT does not list `REST STREAM` and REST answers
    /// `502 REST not implemented`.
    pub rest_supported: bool,
    /// ABOR during a transfer: `true` answers `426` then `226`, `false` just `226`.
    pub abor_426: bool,
    /// Accept, send 220, then never answer anything on new connections.
    pub hang_after_greeting: bool,
    /// Stop answering on LIST/NLST/MLSD (the connection stays open, silent).
    pub hang_on_list: bool,
    /// More simultaneous control connections than this get
    /// `421 Too many connections` and are closed.
    pub max_connections: Option<usize>,
    /// RETR sends at most this many bytes from the requested offset, then
    /// closes the data connection and replies `426 Connection closed; transfer
    /// aborted` (or `226` with `drop_retr_lie_226`).
    pub drop_retr_after: Option<u64>,
    /// With `drop_retr_after`: claim success (`226`) after the short transfer.
    pub drop_retr_lie_226: bool,
    /// With `drop_retr_after`: after a cut-short transfer the whole server
    /// dies (as [`FakeFtp::stop`]: connects refused, sessions closed) until
    /// [`FakeFtp::restart`].
    pub die_after_drop: bool,
    /// Path -> size reported in listings and SIZE (RETR still sends the real
    /// bytes, then 226): "listing says N bytes, RETR sends fewer".
    pub lie_size: BTreeMap<String, u64>,
    /// FEAT offers `HASH CRC32` and `XCRC`, and both commands answer the CRC-32
    /// of the whole file (as proftpd's mod_digest does).
    pub hash_crc32: bool,
    /// LIST/NLST with a path answer (226) one `ls: cannot access 'WORD': No such
    /// file or directory` line per word of the path, as an `ls` that got it
    /// mangled; without a path they list the working directory as usual.
    pub list_path_errors: bool,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            tree: BTreeMap::new(),
            raw_lists: BTreeMap::new(),
            login: None,
            rest_supported: true,
            abor_426: true,
            hang_after_greeting: false,
            hang_on_list: false,
            max_connections: None,
            drop_retr_after: None,
            drop_retr_lie_226: false,
            die_after_drop: false,
            lie_size: BTreeMap::new(),
            hash_crc32: false,
            list_path_errors: false,
        }
    }
}

impl FakeConfig {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a file (parent directories are implied).
    pub fn file(mut self, path: &str, data: impl Into<Vec<u8>>) -> Self {
        self.tree
            .insert(norm(path), FakeNode::File(Arc::new(data.into())));
        self
    }

    /// Adds an (empty unless filled) directory.
    pub fn dir(mut self, path: &str) -> Self {
        self.tree.insert(norm(path), FakeNode::Dir);
        self
    }

    /// Adds a symlink `path -> target`.
    pub fn link(mut self, path: &str, target: &str) -> Self {
        self.tree
            .insert(norm(path), FakeNode::Link(target.to_string()));
        self
    }

    /// LIST of `dir` sends exactly these lines.
    pub fn raw_list(mut self, dir: &str, lines: Vec<Vec<u8>>) -> Self {
        self.raw_lists.insert(norm(dir), Arc::new(lines));
        self
    }

    /// Only this login is accepted.
    pub fn login(mut self, user: &str, pass: &str) -> Self {
        self.login = Some((user.to_string(), pass.to_string()));
        self
    }
}

/// A vsftpd-style LIST line for a file (`size` is text so tests can send
/// `-5` or absurd numbers).
pub fn file_line(name: &[u8], size: &str) -> Vec<u8> {
    line_for(b'-', "rw-r--r--", 1, size, name, None)
}

/// A vsftpd-style LIST line for a directory.
pub fn dir_line(name: &[u8]) -> Vec<u8> {
    line_for(b'd', "rwxr-xr-x", 2, "4096", name, None)
}

/// A vsftpd-style LIST line for a symlink.
pub fn link_line(name: &[u8], target: &[u8]) -> Vec<u8> {
    let size = target.len().to_string();
    line_for(b'l', "rwxrwxrwx", 1, &size, name, Some(target))
}

fn line_for(
    kind: u8,
    perms: &str,
    links: u32,
    size: &str,
    name: &[u8],
    target: Option<&[u8]>,
) -> Vec<u8> {
    let mut l = vec![kind];
    l.extend_from_slice(
        format!("{perms} {links:>4} 0        0    {size:>12} Jan 15  2024 ").as_bytes(),
    );
    l.extend_from_slice(name);
    if let Some(t) = target {
        l.extend_from_slice(b" -> ");
        l.extend_from_slice(t);
    }
    l
}

fn norm(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// State shared by the server handle, the acceptor and the sessions.
struct Shared {
    cfg: Mutex<FakeConfig>,
    log: Mutex<Vec<String>>,
    /// Control connections currently open (for max_connections).
    live: AtomicUsize,
    /// Control connections accepted so far.
    accepted: AtomicUsize,
    /// Bumped by stop(): sessions of an older generation end.
    generation: AtomicU64,
    /// Set by a session to take the whole server down (die_after_drop).
    dead: AtomicBool,
    /// Control sockets of live sessions, shut down by stop().
    socks: Mutex<HashMap<usize, TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running (or stopped) fake server. Dropping it stops it.
pub struct FakeFtp {
    port: u16,
    shared: Arc<Shared>,
    acceptor: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
}

impl FakeFtp {
    /// Binds 127.0.0.1:0 and starts serving `cfg`.
    pub fn start(cfg: FakeConfig) -> FakeFtp {
        let listener = TcpListener::bind("127.0.0.1:0").expect("fake ftp: bind 127.0.0.1:0");
        let port = listener.local_addr().expect("local_addr").port();
        let mut fake = FakeFtp {
            port,
            shared: Arc::new(Shared {
                cfg: Mutex::new(cfg),
                log: Mutex::new(Vec::new()),
                live: AtomicUsize::new(0),
                accepted: AtomicUsize::new(0),
                generation: AtomicU64::new(0),
                dead: AtomicBool::new(false),
                socks: Mutex::new(HashMap::new()),
            }),
            acceptor: None,
        };
        fake.spawn_acceptor(listener);
        fake
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`, as it appears in serverlist lines and log messages.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Serverlist line, anonymous, plain FTP.
    pub fn line(&self) -> String {
        format!("{},,,0", self.addr())
    }

    /// Serverlist line with a login.
    pub fn line_with_login(&self, user: &str, pass: &str) -> String {
        format!("{},{user},{pass},0", self.addr())
    }

    /// Changes the configuration of the running server.
    pub fn configure(&self, f: impl FnOnce(&mut FakeConfig)) {
        f(&mut lock(&self.shared.cfg));
    }

    /// Every command line received so far, in arrival order.
    pub fn commands(&self) -> Vec<String> {
        lock(&self.shared.log).clone()
    }

    /// Upper-cased verbs of every command received so far.
    pub fn verbs(&self) -> Vec<String> {
        self.commands()
            .iter()
            .map(|c| verb_of(c.as_bytes()))
            .collect()
    }

    /// Control connections accepted so far (including refused ones).
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Control connections open right now.
    pub fn live_connections(&self) -> usize {
        self.shared.live.load(Ordering::SeqCst)
    }

    pub fn is_running(&self) -> bool {
        self.acceptor
            .as_ref()
            .is_some_and(|(_, h)| !h.is_finished())
    }

    /// Simulates the server going down: stops listening (connects are
    /// refused) and closes every open control connection.
    pub fn stop(&mut self) {
        if let Some((stop, handle)) = self.acceptor.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = handle.join();
        }
        kill_sessions(&self.shared);
    }

    /// Comes back on the same port (bounded retries while the port is freed).
    pub fn restart(&mut self) {
        if self.is_running() {
            return;
        }
        self.stop();
        self.shared.dead.store(false, Ordering::SeqCst);
        let mut last = None;
        for _ in 0..100 {
            match TcpListener::bind(("127.0.0.1", self.port)) {
                Ok(l) => {
                    self.spawn_acceptor(l);
                    return;
                }
                Err(e) => last = Some(e),
            }
            thread::sleep(TICK);
        }
        panic!(
            "fake ftp: cannot bind 127.0.0.1:{} again: {last:?}",
            self.port
        );
    }

    fn spawn_acceptor(&mut self, listener: TcpListener) {
        listener
            .set_nonblocking(true)
            .expect("fake ftp: nonblocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::clone(&self.shared);
        let flag = Arc::clone(&stop);
        let generation = shared.generation.load(Ordering::SeqCst);
        let handle = thread::spawn(move || {
            let deadline = Instant::now() + SERVER_LIMIT;
            while !flag.load(Ordering::SeqCst) && Instant::now() < deadline {
                if shared.dead.load(Ordering::SeqCst) {
                    // Dropping the listener refuses further connects.
                    kill_sessions(&shared);
                    return;
                }
                match listener.accept() {
                    Ok((stream, _)) => {
                        let shared = Arc::clone(&shared);
                        thread::spawn(move || run_session(shared, stream, generation));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        self.acceptor = Some((stop, handle));
    }
}

impl Drop for FakeFtp {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Ends every open session (their generation is over) and closes their sockets.
fn kill_sessions(shared: &Shared) {
    shared.generation.fetch_add(1, Ordering::SeqCst);
    for (_, s) in lock(&shared.socks).drain() {
        let _ = s.shutdown(Shutdown::Both);
    }
}

/// CRC-32 (IEEE 802.3, as in zlib), with the usual 256-entry table.
pub fn crc32(data: &[u8]) -> u32 {
    let mut table = [0u32; 256];
    for (i, t) in table.iter_mut().enumerate() {
        let mut c = i as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xEDB8_8320
            } else {
                c >> 1
            };
        }
        *t = c;
    }
    !data.iter().fold(!0u32, |crc, &b| {
        table[((crc ^ u32::from(b)) & 0xff) as usize] ^ (crc >> 8)
    })
}

fn verb_of(line: &[u8]) -> String {
    // Skip telnet IAC IP / DM and other non-letters some clients send before ABOR.
    let start = line
        .iter()
        .position(|b| b.is_ascii_alphabetic())
        .unwrap_or(line.len());
    let rest = &line[start..];
    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    String::from_utf8_lossy(&rest[..end]).to_ascii_uppercase()
}

/// Decrements the live count when the session ends.
struct LiveGuard {
    shared: Arc<Shared>,
    id: usize,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.shared.live.fetch_sub(1, Ordering::SeqCst);
        lock(&self.shared.socks).remove(&self.id);
    }
}

fn run_session(shared: Arc<Shared>, stream: TcpStream, generation: u64) {
    let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
    let live = shared.live.fetch_add(1, Ordering::SeqCst) + 1;
    if let Ok(clone) = stream.try_clone() {
        lock(&shared.socks).insert(id, clone);
    }
    let _guard = LiveGuard {
        shared: Arc::clone(&shared),
        id,
    };
    if stream.set_nonblocking(false).is_err()
        || stream.set_read_timeout(Some(TICK)).is_err()
        || stream
            .set_write_timeout(Some(Duration::from_secs(5)))
            .is_err()
    {
        return;
    }
    let _ = stream.set_nodelay(true);
    let (max, hang) = {
        let cfg = lock(&shared.cfg);
        (cfg.max_connections, cfg.hang_after_greeting)
    };
    let mut s = Session {
        shared,
        ctrl: stream,
        generation,
        inbuf: Vec::new(),
        cwd: String::new(),
        user: None,
        logged_in: false,
        rest: 0,
        pasv: None,
        started: Instant::now(),
    };
    if max.is_some_and(|m| live > m) {
        s.reply("421 Too many connections");
        return;
    }
    s.reply("220 fake ftp ready");
    if hang {
        s.hang();
        return;
    }
    s.serve();
}

enum Sent {
    /// Everything was written.
    Done,
    /// The client sent ABOR during the transfer (the ABOR line was consumed).
    Aborted,
    /// The data connection broke (client closed it) or the server stopped.
    Broken,
}

struct Session {
    shared: Arc<Shared>,
    ctrl: TcpStream,
    generation: u64,
    inbuf: Vec<u8>,
    cwd: String,
    user: Option<String>,
    logged_in: bool,
    rest: u64,
    pasv: Option<TcpListener>,
    started: Instant,
}

impl Session {
    fn stopped(&self) -> bool {
        self.shared.generation.load(Ordering::SeqCst) != self.generation
            || self.started.elapsed() > SESSION_LIMIT
    }

    fn cfg(&self) -> MutexGuard<'_, FakeConfig> {
        lock(&self.shared.cfg)
    }

    fn reply(&mut self, text: &str) -> bool {
        let mut msg = text.as_bytes().to_vec();
        msg.extend_from_slice(b"\r\n");
        self.ctrl.write_all(&msg).is_ok()
    }

    fn log(&self, line: &[u8]) {
        lock(&self.shared.log).push(String::from_utf8_lossy(line).into_owned());
    }

    /// Takes one complete line out of the input buffer, if there is one.
    fn take_line(&mut self) -> Option<Vec<u8>> {
        let pos = self.inbuf.iter().position(|&b| b == b'\n')?;
        let mut line: Vec<u8> = self.inbuf.drain(..=pos).collect();
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        Some(line)
    }

    /// The next command line; `None` on EOF, error, stop or deadline.
    fn next_line(&mut self, limit: Duration) -> Option<Vec<u8>> {
        let deadline = Instant::now() + limit;
        let mut buf = [0u8; 4096];
        loop {
            if let Some(l) = self.take_line() {
                return Some(l);
            }
            if self.stopped() || Instant::now() >= deadline || self.inbuf.len() > MAX_LINE {
                return None;
            }
            match self.ctrl.read(&mut buf) {
                Ok(0) => return None,
                Ok(n) => self.inbuf.extend_from_slice(&buf[..n]),
                Err(e) if is_timeout(&e) => {}
                Err(_) => return None,
            }
        }
    }

    /// Never answer again: log whatever arrives until the client goes away.
    fn hang(&mut self) {
        let deadline = Instant::now() + HANG_LIMIT;
        while Instant::now() < deadline {
            match self.next_line(deadline - Instant::now()) {
                Some(line) => self.log(&line),
                None => return,
            }
        }
    }

    fn serve(&mut self) {
        for _ in 0..MAX_COMMANDS {
            let Some(line) = self.next_line(IDLE_LIMIT) else {
                return;
            };
            self.log(&line);
            if !self.command(&line) {
                return;
            }
        }
    }

    /// Handles one command; `false` ends the session.
    fn command(&mut self, line: &[u8]) -> bool {
        let verb = verb_of(line);
        let arg = match line.iter().position(|&b| b == b' ') {
            Some(i) => String::from_utf8_lossy(&line[i + 1..]).into_owned(),
            None => String::new(),
        };
        let open = matches!(
            verb.as_str(),
            "USER" | "PASS" | "QUIT" | "FEAT" | "SYST" | "NOOP" | "OPTS"
        );
        if !open && !self.logged_in {
            return self.reply("530 Please login with USER and PASS.");
        }
        match verb.as_str() {
            "USER" => {
                self.user = Some(arg);
                self.logged_in = false;
                self.reply("331 Please specify the password.")
            }
            "PASS" => {
                let ok = match &self.cfg().login {
                    Some((u, p)) => self.user.as_deref() == Some(u.as_str()) && arg == *p,
                    None => self.user.is_some(),
                };
                if ok {
                    self.logged_in = true;
                    self.reply("230 Login successful.")
                } else {
                    self.reply("530 Login incorrect.")
                }
            }
            "SYST" => self.reply("215 UNIX Type: L8"),
            "FEAT" => {
                let rest = self.cfg().rest_supported;
                let mut text = String::from("211-Features:\r\n EPSV\r\n PASV\r\n SIZE\r\n");
                if rest {
                    text.push_str(" REST STREAM\r\n");
                }
                if self.cfg().hash_crc32 {
                    text.push_str(" HASH CRC32*\r\n XCRC\r\n");
                }
                text.push_str("211 End");
                self.reply(&text)
            }
            "OPTS" => self.reply("200 OK."),
            "TYPE" | "MODE" | "STRU" => self.reply("200 OK."),
            "NOOP" => self.reply("200 NOOP ok."),
            "PWD" | "XPWD" => {
                let text = format!("257 \"/{}\" is the current directory", self.cwd);
                self.reply(&text)
            }
            "CWD" | "CDUP" => {
                let target = if verb == "CDUP" {
                    self.resolve("..")
                } else {
                    self.resolve(&arg)
                };
                if matches!(self.node(&target), Some(FakeNode::Dir)) {
                    self.cwd = target;
                    self.reply("250 Directory successfully changed.")
                } else {
                    self.reply("550 Failed to change directory.")
                }
            }
            "EPSV" | "PASV" => self.passive(&verb),
            "REST" => {
                if !self.cfg().rest_supported {
                    return self.reply("502 REST not implemented");
                }
                match arg.trim().parse::<u64>() {
                    Ok(n) => {
                        self.rest = n;
                        let text = format!("350 Restart position accepted ({n}).");
                        self.reply(&text)
                    }
                    Err(_) => self.reply("501 Bad REST argument."),
                }
            }
            "HASH" | "XCRC" if self.cfg().hash_crc32 => {
                let path = self.resolve(&arg);
                let Some(FakeNode::File(data)) = self.node(&path) else {
                    return self.reply("550 No such file.");
                };
                let crc = crc32(&data);
                if verb == "HASH" {
                    let end = data.len().saturating_sub(1);
                    self.reply(&format!(
                        "213-Computing CRC32 digest\r\n213 CRC32 0-{end} {crc:08X} {arg}"
                    ))
                } else {
                    self.reply(&format!("250-Computing CRC32 digest\r\n250 {crc:08X}"))
                }
            }
            "SIZE" => {
                let path = self.resolve(&arg);
                match (self.node(&path), self.listed_size(&path)) {
                    (Some(FakeNode::File(_)), Some(n)) => self.reply(&format!("213 {n}")),
                    _ => self.reply("550 Could not get file size."),
                }
            }
            "LIST" | "NLST" | "MLSD" => {
                if self.cfg().hang_on_list {
                    self.hang();
                    return false;
                }
                if verb == "MLSD" {
                    return self.reply("500 Unknown command.");
                }
                self.list(&arg, verb == "NLST")
            }
            "RETR" => self.retr(&arg),
            "ABOR" => self.reply("225 No transfer to ABOR."),
            "QUIT" => {
                self.reply("221 Goodbye.");
                false
            }
            _ => self.reply("502 Command not implemented."),
        }
    }

    fn resolve(&self, arg: &str) -> String {
        if arg.starts_with('/') {
            norm(arg)
        } else {
            norm(&format!("{}/{arg}", self.cwd))
        }
    }

    fn node(&self, path: &str) -> Option<FakeNode> {
        if path.is_empty() {
            return Some(FakeNode::Dir);
        }
        let cfg = self.cfg();
        if let Some(n) = cfg.tree.get(path) {
            return Some(n.clone());
        }
        let prefix = format!("{path}/");
        let implied = cfg.raw_lists.contains_key(path)
            || cfg
                .tree
                .range(prefix.clone()..)
                .next()
                .is_some_and(|(k, _)| k.starts_with(&prefix))
            || cfg.raw_lists.keys().any(|k| k.starts_with(&prefix));
        implied.then_some(FakeNode::Dir)
    }

    fn listed_size(&self, path: &str) -> Option<u64> {
        let cfg = self.cfg();
        if let Some(n) = cfg.lie_size.get(path) {
            return Some(*n);
        }
        match cfg.tree.get(path) {
            Some(FakeNode::File(d)) => Some(d.len() as u64),
            _ => None,
        }
    }

    /// The generated listing of directory `dir`: (name, node) of its children.
    fn children(&self, dir: &str) -> BTreeMap<String, FakeNode> {
        let cfg = self.cfg();
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        let mut out = BTreeMap::new();
        let keys = cfg
            .tree
            .iter()
            .map(|(k, v)| (k.as_str(), Some(v)))
            .chain(cfg.raw_lists.keys().map(|k| (k.as_str(), None)));
        for (key, node) in keys {
            let Some(rest) = key.strip_prefix(&prefix) else {
                continue;
            };
            if rest.is_empty() {
                continue;
            }
            let (name, leaf) = match rest.split_once('/') {
                Some((first, _)) => (first, false),
                None => (rest, true),
            };
            match (leaf, node) {
                (true, Some(n)) => {
                    out.insert(name.to_string(), n.clone());
                }
                _ => {
                    out.entry(name.to_string()).or_insert(FakeNode::Dir);
                }
            }
        }
        out
    }

    fn passive(&mut self, verb: &str) -> bool {
        self.pasv = None;
        let l = match TcpListener::bind("127.0.0.1:0") {
            Ok(l) => l,
            Err(_) => return self.reply("425 Cannot open passive connection."),
        };
        let port = match l.local_addr() {
            Ok(a) => a.port(),
            Err(_) => return self.reply("425 Cannot open passive connection."),
        };
        self.pasv = Some(l);
        if verb == "EPSV" {
            self.reply(&format!("229 Entering Extended Passive Mode (|||{port}|)"))
        } else {
            self.reply(&format!(
                "227 Entering Passive Mode (127,0,0,1,{},{}).",
                port / 256,
                port % 256
            ))
        }
    }

    /// The client's data connection on the pending passive listener.
    fn accept_data(&mut self) -> Option<TcpStream> {
        let l = self.pasv.take()?;
        l.set_nonblocking(true).ok()?;
        let deadline = Instant::now() + DATA_ACCEPT_LIMIT;
        while Instant::now() < deadline && !self.stopped() {
            match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(false).ok()?;
                    s.set_write_timeout(Some(TICK)).ok()?;
                    s.set_read_timeout(Some(TICK)).ok()?;
                    return Some(s);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    thread::sleep(Duration::from_millis(5))
                }
                Err(_) => return None,
            }
        }
        None
    }

    fn list(&mut self, arg: &str, names_only: bool) -> bool {
        self.rest = 0;
        // Drop `ls` options ("-a", "-la") in front of the path.
        let mut path_arg = arg.trim_start();
        while path_arg.starts_with('-') {
            path_arg = path_arg
                .split_once(' ')
                .map(|x| x.1.trim_start())
                .unwrap_or("");
        }
        let path = self.resolve(path_arg);
        let mangled = self.cfg().list_path_errors && !path_arg.is_empty();
        let lines: Arc<Vec<Vec<u8>>> = match self.node(&path) {
            _ if mangled => Arc::new(
                path_arg
                    .split(' ')
                    .map(|w| {
                        format!("ls: cannot access '{w}': No such file or directory").into_bytes()
                    })
                    .collect(),
            ),
            Some(FakeNode::Dir) => {
                let raw = self.cfg().raw_lists.get(&path).cloned();
                match raw {
                    Some(lines) if !names_only => lines,
                    _ => Arc::new(
                        self.children(&path)
                            .into_iter()
                            .map(|(name, node)| {
                                let child = if path.is_empty() {
                                    name.clone()
                                } else {
                                    format!("{path}/{name}")
                                };
                                self.entry_line(&child, &name, &node, names_only)
                            })
                            .collect(),
                    ),
                }
            }
            Some(node) => {
                let name = path.rsplit('/').next().unwrap_or("").to_string();
                Arc::new(vec![self.entry_line(&path, &name, &node, names_only)])
            }
            None => {
                self.pasv = None;
                return self.reply("550 No such file or directory.");
            }
        };
        let Some(mut data) = self.accept_data() else {
            return self.reply("425 Failed to establish connection.");
        };
        if !self.reply("150 Here comes the directory listing.") {
            return false;
        }
        let mut bytes = Vec::with_capacity(lines.iter().map(|l| l.len() + 2).sum());
        for l in lines.iter() {
            bytes.extend_from_slice(l);
            bytes.extend_from_slice(b"\r\n");
        }
        let sent = self.send(&mut data, &bytes);
        drop(data);
        self.after_transfer(sent, "226 Directory send OK.")
    }

    fn entry_line(&self, path: &str, name: &str, node: &FakeNode, names_only: bool) -> Vec<u8> {
        if names_only {
            return name.as_bytes().to_vec();
        }
        match node {
            FakeNode::Dir => dir_line(name.as_bytes()),
            FakeNode::Link(t) => link_line(name.as_bytes(), t.as_bytes()),
            FakeNode::File(d) => {
                let size = self.listed_size(path).unwrap_or(d.len() as u64);
                file_line(name.as_bytes(), &size.to_string())
            }
        }
    }

    fn retr(&mut self, arg: &str) -> bool {
        let offset = std::mem::take(&mut self.rest);
        let path = self.resolve(arg);
        let Some(FakeNode::File(content)) = self.node(&path) else {
            self.pasv = None;
            return self.reply("550 Failed to open file.");
        };
        let (drop_after, lie_226, die) = {
            let cfg = self.cfg();
            (
                cfg.drop_retr_after,
                cfg.drop_retr_lie_226,
                cfg.die_after_drop,
            )
        };
        let Some(mut data) = self.accept_data() else {
            return self.reply("425 Failed to establish connection.");
        };
        let total = content.len() as u64;
        let start = offset.min(total) as usize;
        let mut end = content.len();
        let mut dropped = false;
        if let Some(n) = drop_after
            && (end - start) as u64 > n
        {
            end = start + n as usize;
            dropped = true;
        }
        let name = path.rsplit('/').next().unwrap_or("");
        if !self.reply(&format!(
            "150 Opening BINARY mode data connection for {name} ({total} bytes)."
        )) {
            return false;
        }
        let sent = self.send(&mut data, &content[start..end]);
        let _ = data.shutdown(Shutdown::Write);
        drop(data);
        if dropped && die {
            self.shared.dead.store(true, Ordering::SeqCst);
            kill_sessions(&self.shared);
            return false;
        }
        match sent {
            Sent::Done if dropped && !lie_226 => {
                self.reply("426 Connection closed; transfer aborted.")
            }
            other => self.after_transfer(other, "226 Transfer complete."),
        }
    }

    /// The final reply(s) after a data transfer.
    fn after_transfer(&mut self, sent: Sent, done: &str) -> bool {
        match sent {
            Sent::Done => self.reply(done),
            Sent::Aborted => self.reply_abort(),
            Sent::Broken => {
                if self.stopped() {
                    return false;
                }
                // Usually the client closed the data connection because it is
                // aborting: give its ABOR a moment to arrive.
                let deadline = Instant::now() + Duration::from_secs(1);
                while Instant::now() < deadline {
                    if self.poll_abor() {
                        return self.reply_abort();
                    }
                    thread::sleep(Duration::from_millis(10));
                }
                self.reply("426 Connection closed; transfer aborted.")
            }
        }
    }

    fn reply_abort(&mut self) -> bool {
        if self.cfg().abor_426 && !self.reply("426 Connection closed; transfer aborted.") {
            return false;
        }
        self.reply("226 ABOR successful.")
    }

    /// Reads what the client sent on the control connection without blocking;
    /// true (and the line consumed and logged) if the first pending command is ABOR.
    fn poll_abor(&mut self) -> bool {
        let mut buf = [0u8; 4096];
        if self.ctrl.set_nonblocking(true).is_ok() {
            for _ in 0..16 {
                match self.ctrl.read(&mut buf) {
                    Ok(n) if n > 0 => self.inbuf.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let _ = self.ctrl.set_nonblocking(false);
        }
        let Some(pos) = self.inbuf.iter().position(|&b| b == b'\n') else {
            return false;
        };
        if verb_of(&self.inbuf[..pos]) != "ABOR" {
            return false;
        }
        if let Some(line) = self.take_line() {
            self.log(&line);
        }
        true
    }

    /// Writes `bytes` to the data connection, watching for ABOR and stop().
    fn send(&mut self, data: &mut TcpStream, bytes: &[u8]) -> Sent {
        let mut off = 0;
        let mut stall = Instant::now() + DATA_STALL_LIMIT;
        while off < bytes.len() {
            if self.stopped() {
                return Sent::Broken;
            }
            if self.poll_abor() {
                return Sent::Aborted;
            }
            let end = bytes.len().min(off + 64 * 1024);
            match data.write(&bytes[off..end]) {
                Ok(0) => return Sent::Broken,
                Ok(n) => {
                    off += n;
                    stall = Instant::now() + DATA_STALL_LIMIT;
                }
                Err(e) if is_timeout(&e) || e.kind() == io::ErrorKind::Interrupted => {
                    if Instant::now() > stall {
                        return Sent::Broken;
                    }
                }
                Err(_) => return Sent::Broken,
            }
        }
        Sent::Done
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}
