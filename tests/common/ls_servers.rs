//! GNU inetutils ftpd and netkit ftpd for the integration tests: the servers whose LIST and
//! STAT hand their argument to `ls` (so `LIST /pub/sub dir` lists `/pub/sub` and `dir`).
//!
//! How they run (see the README, "Tests"):
//! * binaries: Debian's `inetutils-ftpd` and `ftpd-ssl` (what the `ftpd` package installs),
//!   unpacked with proftpd and pure-ftpd by scripts/ftp-servers.sh (`apt-get download` +
//!   `dpkg -x`: they conflict with vsftpd as packages), see [`super::unpacked`];
//! * inetd mode: [`LsFtpd`] listens on 127.0.0.1 itself and starts one server process per
//!   connection with the connection on stdin/stdout. Neither server has a port option, and
//!   `-D` would bind every interface and detach;
//! * login: a dedicated user `ftpctest` whose home is the test tree, visible only to the
//!   server: each server process runs in a mount namespace of its own (`unshare -m`) where
//!   `/etc/passwd`, `/etc/shadow` and `/etc/pam.d` are bind mounts of files made here. No
//!   real user, and no real file under /etc, is touched. (Anonymous logins would be chrooted
//!   into the `ftp` user's home, where netkit ftpd finds no `/bin/ls` to run.) The user is
//!   not chrooted, so server paths are host paths: [`LsFtpd::line`] uses the tree as base;
//! * command log: both servers log only to syslog, so each connection goes through a relay
//!   here that passes every byte on unchanged and records each command with the first reply
//!   to it ([`Exchange`], as parsed from the other servers' logs). Data connections go to
//!   the server directly.
//!
//! Bounds: the accept loop and every relay thread poll a stop flag every [`TICK`]; a session
//! lasts at most [`SESSION_LIMIT`], the server at most [`SERVER_LIMIT`]; drop kills every
//! server process (with its `ls` children) and joins every thread.

use super::{Exchange, TempDir, kill_tree, run_ok, tail, wait_child};
use std::fs;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How often blocked accepts and reads wake up to check the stop flag.
const TICK: Duration = Duration::from_millis(50);
/// A relayed session never lives longer than this.
const SESSION_LIMIT: Duration = Duration::from_secs(600);
/// The accept loop ends after this long even if never stopped.
const SERVER_LIMIT: Duration = Duration::from_secs(900);
/// The start-up probe (greeting and login) must finish within this.
const PROBE_LIMIT: Duration = Duration::from_secs(10);
/// Most server processes alive at once (one per connection).
const MAX_SESSIONS: usize = 64;
/// Most log lines kept (commands and replies), so a runaway client cannot eat memory.
const MAX_LOG_LINES: usize = 200_000;

/// The login the servers accept; only valid inside their mount namespaces.
pub const LS_USER: &str = "ftpctest";
pub const LS_PASS: &str = "odd-names-pw";
/// Its uid/gid: no real user's (the tree is made world-readable for it).
const LS_UID: u32 = 64_999;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LsKind {
    /// GNU inetutils 2.4 ftpd (Debian `inetutils-ftpd`): FEAT, EPSV, no MLSD, STAT path 211.
    Inetutils,
    /// netkit ftpd 0.17 (Debian `ftpd` / `ftpd-ssl`): no FEAT, PASV only, STAT path 211.
    Netkit,
}

impl LsKind {
    pub fn name(self) -> &'static str {
        match self {
            LsKind::Inetutils => "inetutils-ftpd",
            LsKind::Netkit => "netkit-ftpd",
        }
    }

    /// (Debian package, binary inside it).
    fn package(self) -> (&'static str, &'static str) {
        match self {
            LsKind::Inetutils => ("inetutils-ftpd", "usr/sbin/ftpd"),
            LsKind::Netkit => ("ftpd-ssl", "usr/sbin/in.ftpd"),
        }
    }

    /// What its greeting says, to be sure the right program answers.
    fn greeting_mark(self) -> &'static str {
        match self {
            LsKind::Inetutils => "GNU inetutils",
            LsKind::Netkit => "Linux-ftpd",
        }
    }

    /// The unpacked binary (next to proftpd and pure-ftpd, see [`super::unpacked`]); runs
    /// scripts/ftp-servers.sh if a cache made before these servers were added lacks it.
    pub fn binary(self) -> PathBuf {
        let (_, bin) = self.package();
        let path = super::unpacked::servers_root().join(bin);
        if !path.is_file() {
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/ftp-servers.sh");
            let mut cmd = Command::new("bash");
            cmd.arg(script);
            if let Some(root) = super::unpacked::servers_root().parent() {
                cmd.env("FTPCIRCLE_SERVERS_DIR", root);
            }
            run_ok(&mut cmd, Duration::from_secs(600));
        }
        assert!(path.is_file(), "{} missing after unpacking", path.display());
        path
    }

    /// Where the libraries unpacked with the servers are (those not installed).
    fn lib_path() -> String {
        let r = super::unpacked::servers_root();
        format!(
            "{0}/usr/lib/x86_64-linux-gnu:{0}/lib/x86_64-linux-gnu",
            r.display()
        )
    }
}

/// The command log of one [`LsFtpd`]: every command with its first reply, and the raw text.
#[derive(Default)]
struct TapLog {
    exchanges: Vec<Exchange>,
    /// Session -> index in `exchanges` of its command still waiting for a reply.
    pending: Vec<(String, usize)>,
    text: Vec<String>,
}

impl TapLog {
    fn command(&mut self, session: &str, line: &str) {
        if self.text.len() >= MAX_LOG_LINES {
            return;
        }
        // The test password is no secret, but keep the log like the other servers'.
        let shown = if line.to_ascii_uppercase().starts_with("PASS ") {
            "PASS ****".to_string()
        } else {
            line.to_string()
        };
        self.text.push(format!("[{session}] <- {shown}"));
        self.pending.retain(|(s, _)| s != session);
        self.pending
            .push((session.to_string(), self.exchanges.len()));
        self.exchanges.push(Exchange {
            session: session.to_string(),
            command: shown,
            reply: None,
        });
    }

    /// One reply line; the last line of a reply (`NNN text`) answers the pending command.
    fn reply(&mut self, session: &str, line: &str) {
        if self.text.len() < MAX_LOG_LINES {
            self.text.push(format!("[{session}] -> {line}"));
        }
        let b = line.as_bytes();
        let last = b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ';
        if last && let Some(pos) = self.pending.iter().position(|(s, _)| s == session) {
            let (_, idx) = self.pending.remove(pos);
            self.exchanges[idx].reply = line.get(..3).and_then(|c| c.parse().ok());
        }
    }
}

/// Shared between the [`LsFtpd`] handle, its accept loop and its relay threads.
struct Shared {
    kind: LsKind,
    binary: PathBuf,
    /// passwd, shadow and pam.d made for the server's mount namespace; output file.
    passwd: PathBuf,
    shadow: PathBuf,
    pam: PathBuf,
    output: PathBuf,
    stop: AtomicBool,
    sessions: AtomicUsize,
    log: Mutex<TapLog>,
    children: Mutex<Vec<Child>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A GNU inetutils or netkit ftpd serving `root` on 127.0.0.1 to [`LS_USER`].
pub struct LsFtpd {
    pub kind: LsKind,
    pub port: u16,
    pub root: PathBuf,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
    // Namespace files and server output; removed after every process is gone.
    _work: TempDir,
}

impl LsFtpd {
    pub fn inetutils(root: &Path) -> LsFtpd {
        LsFtpd::start(LsKind::Inetutils, root)
    }

    pub fn netkit(root: &Path) -> LsFtpd {
        LsFtpd::start(LsKind::Netkit, root)
    }

    pub fn start(kind: LsKind, root: &Path) -> LsFtpd {
        let binary = kind.binary();
        super::make_world_readable(root);
        let root = fs::canonicalize(root).expect("canonical test root");
        let work = TempDir::new(kind.name());
        let passwd = work.join("passwd");
        let shadow = work.join("shadow");
        let pam = work.subdir("pam.d");
        // The host's users (no secrets in passwd) so `ls` shows owner names, plus ours.
        let mut users = fs::read_to_string("/etc/passwd").unwrap_or_default();
        users.push_str(&format!(
            "{LS_USER}:x:{LS_UID}:{LS_UID}:ftpcircle-fs test:{}:/bin/sh\n",
            root.display()
        ));
        fs::write(&passwd, users).expect("write passwd");
        // Only our user in shadow: no host password hash is copied anywhere.
        let hash = run_ok(
            Command::new("openssl").args(["passwd", "-6", "-salt", "ftpctest", LS_PASS]),
            Duration::from_secs(30),
        )
        .stdout;
        let hash = String::from_utf8_lossy(&hash).trim().to_string();
        fs::write(&shadow, format!("{LS_USER}:{hash}:20000:0:99999:7:::\n")).expect("shadow");
        super::set_mode(&shadow, 0o600);
        // netkit ftpd asks PAM (service "ftp"); pam_ftp first, as in Debian's own file, or it
        // answers USER with 550. inetutils ftpd checks shadow itself.
        fs::write(
            pam.join("ftp"),
            "auth sufficient pam_ftp.so\nauth required pam_unix.so\n\
             account required pam_permit.so\nsession required pam_permit.so\n",
        )
        .expect("pam.d/ftp");
        fs::copy(pam.join("ftp"), pam.join("other")).expect("pam.d/other");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("local_addr").port();
        let shared = Arc::new(Shared {
            kind,
            binary,
            passwd,
            shadow,
            pam,
            output: work.join("server.out"),
            stop: AtomicBool::new(false),
            sessions: AtomicUsize::new(0),
            log: Mutex::new(TapLog::default()),
            children: Mutex::new(Vec::new()),
            threads: Mutex::new(Vec::new()),
        });
        let acc = Arc::clone(&shared);
        let accept = thread::spawn(move || accept_loop(&acc, &listener));
        let server = LsFtpd {
            kind,
            port,
            root,
            shared,
            accept: Some(accept),
            _work: work,
        };
        if let Err(e) = server.probe() {
            panic!(
                "{} on port {port} does not serve: {e}\noutput:\n{}",
                kind.name(),
                tail(&super::read_lossy(&server.shared.output), 30)
            );
        }
        lock(&server.shared.log).exchanges.clear();
        lock(&server.shared.log).text.clear();
        server
    }

    /// Greeting from the right program and a login that works.
    fn probe(&self) -> Result<(), String> {
        let deadline = Instant::now() + PROBE_LIMIT;
        let s = TcpStream::connect(("127.0.0.1", self.port)).map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(PROBE_LIMIT))
            .map_err(|e| e.to_string())?;
        let mut w = s.try_clone().map_err(|e| e.to_string())?;
        let mut r = BufReader::new(s);
        let mut reply = || -> Result<String, String> {
            let mut all = String::new();
            for _ in 0..100 {
                if Instant::now() > deadline {
                    break;
                }
                let mut line = String::new();
                if r.read_line(&mut line).map_err(|e| e.to_string())? == 0 {
                    return Err(format!("connection closed after {all:?}"));
                }
                all.push_str(&line);
                let b = line.as_bytes();
                if b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && b[3] == b' ' {
                    return Ok(all);
                }
            }
            Err(format!("no complete reply: {all:?}"))
        };
        let hello = reply()?;
        if !hello.starts_with("220") || !hello.contains(self.kind.greeting_mark()) {
            return Err(format!("unexpected greeting {hello:?}"));
        }
        for (cmd, want) in [
            (format!("USER {LS_USER}"), "331"),
            (format!("PASS {LS_PASS}"), "230"),
            ("QUIT".to_string(), "221"),
        ] {
            w.write_all(format!("{cmd}\r\n").as_bytes())
                .map_err(|e| e.to_string())?;
            let got = reply()?;
            if !got.starts_with(want) {
                return Err(format!(
                    "{} answered {got:?}",
                    cmd.split(' ').next().unwrap_or("")
                ));
            }
        }
        Ok(())
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The serverlist line: the user is not chrooted, so the tree is the base path.
    pub fn line(&self) -> String {
        self.line_with_base("")
    }

    /// The serverlist line for `base` (`"/sub"`, "" for none) below the tree.
    pub fn line_with_base(&self, base: &str) -> String {
        format!(
            "{}{}{},{LS_USER},{LS_PASS},0",
            self.addr(),
            self.root.display(),
            base
        )
    }

    /// Every command received (PASS masked), with the first reply to it.
    pub fn exchanges(&self) -> Vec<Exchange> {
        lock(&self.shared.log).exchanges.clone()
    }

    pub fn commands(&self) -> Vec<String> {
        self.exchanges().into_iter().map(|e| e.command).collect()
    }

    /// The relayed protocol text, one line per command or reply line.
    pub fn commands_log(&self) -> String {
        lock(&self.shared.log).text.join("\n")
    }

    /// Number of accepted commands with this verb.
    pub fn count_verb(&self, verb: &str) -> usize {
        self.exchanges()
            .iter()
            .filter(|e| e.verb().eq_ignore_ascii_case(verb) && e.accepted())
            .count()
    }

    /// Number of directory listings the server served (LIST/NLST/MLSD/STAT path).
    pub fn listing_count(&self) -> usize {
        self.exchanges().iter().filter(|e| e.is_listing()).count()
    }

    /// Ok if the server saw a successful login and no write command (as
    /// [`super::FtpServer::check_no_write_commands`]).
    pub fn check_no_write_commands(&self) -> Result<(), String> {
        let ex = self.exchanges();
        if !ex
            .iter()
            .any(|e| e.verb() == "PASS" && e.reply == Some(230))
        {
            return Err(format!(
                "no successful login in the relay's log; cannot check it for writes:\n{}",
                self.commands_log()
            ));
        }
        let bad: Vec<String> = ex
            .into_iter()
            .filter(|e| super::is_write_verb(&e.verb()))
            .map(|e| e.command)
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("received write commands: {bad:?}"))
        }
    }

    /// Stops accepting, ends every session and kills every server process.
    pub fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        let threads: Vec<_> = lock(&self.shared.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        let children: Vec<_> = lock(&self.shared.children).drain(..).collect();
        for mut child in children {
            kill_tree(child.id() as i32);
            let _ = child.kill();
            let _ = wait_child(&mut child, Duration::from_secs(10));
        }
    }
}

impl Drop for LsFtpd {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- {} {} log (tail) ----\n{}\n---- output ----\n{}",
                self.kind.name(),
                self.addr(),
                tail(&self.commands_log(), 60),
                tail(&super::read_lossy(&self.shared.output), 20)
            );
        }
        self.stop();
    }
}

fn accept_loop(shared: &Arc<Shared>, listener: &TcpListener) {
    let started = Instant::now();
    let mut n = 0usize;
    while !shared.stop.load(Ordering::SeqCst) && started.elapsed() < SERVER_LIMIT {
        lock(&shared.children).retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        lock(&shared.threads).retain(|t| !t.is_finished());
        match listener.accept() {
            Ok((client, _)) => {
                n += 1;
                if shared.sessions.load(Ordering::SeqCst) >= MAX_SESSIONS {
                    let _ = (&client).write_all(b"421 Too many sessions in the test relay\r\n");
                    continue;
                }
                if let Err(e) = start_session(shared, client, n) {
                    eprintln!("{}: session {n}: {e}", shared.kind.name());
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => thread::sleep(TICK),
            Err(e) => {
                eprintln!("{}: accept: {e}", shared.kind.name());
                thread::sleep(TICK);
            }
        }
    }
}

/// Run inside the server's new mount namespace, as `sh -c SCRIPT sh PASSWD SHADOW PAM_D
/// SERVER`: first lazily unmount the namespace's copies of every FUSE mount (ours and anyone
/// else's: with private propagation a copy would outlive the real unmount and keep that
/// filesystem's daemon waiting for as long as the server runs), then put our user files in
/// place and become the server. Mountinfo escapes a space as `\040`, which `%b` decodes.
const NAMESPACE_SCRIPT: &str = r#"mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/shadow &&
    mount --bind "$3" /etc/pam.d && shift 3 && exec "$@""#;

/// One server process for one client, behind a relay.
fn start_session(shared: &Arc<Shared>, client: TcpStream, n: usize) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    // The server side is a TCP socket too: the servers read their own address from it
    // (getsockname) for PASV/EPSV replies and bind data ports on it.
    let inner = TcpListener::bind("127.0.0.1:0")?;
    let upstream = TcpStream::connect(inner.local_addr()?)?;
    let (server_side, _) = inner.accept()?;
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&shared.output)?;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(format!("{}{NAMESPACE_SCRIPT}", super::DROP_FUSE_COPIES_SH))
        .arg("sh")
        .arg(&shared.passwd)
        .arg(&shared.shadow)
        .arg(&shared.pam)
        .arg(&shared.binary)
        .env("LD_LIBRARY_PATH", LsKind::lib_path())
        .stdin(Stdio::from(OwnedFd::from(server_side.try_clone()?)))
        .stdout(Stdio::from(OwnedFd::from(server_side)))
        .stderr(Stdio::from(out))
        // Own process group: stop() kills the server with the `ls` it runs.
        .process_group(0);
    let child = cmd.spawn()?;
    lock(&shared.children).push(child);
    let session = format!("s{n}");
    shared.sessions.fetch_add(1, Ordering::SeqCst);
    let ends = Arc::new(AtomicUsize::new(0));
    for to_server in [true, false] {
        let (from, to) = if to_server {
            (client.try_clone()?, upstream.try_clone()?)
        } else {
            (upstream.try_clone()?, client.try_clone()?)
        };
        let sh = Arc::clone(shared);
        let session = session.clone();
        let ends = Arc::clone(&ends);
        let t = thread::spawn(move || {
            relay(&sh, &session, from, to, to_server);
            if ends.fetch_add(1, Ordering::SeqCst) == 1 {
                sh.sessions.fetch_sub(1, Ordering::SeqCst);
            }
        });
        lock(&shared.threads).push(t);
    }
    Ok(())
}

/// Copy `from` to `to` unchanged, logging each complete line; ends at EOF, on an error, on
/// stop or after [`SESSION_LIMIT`], then half-closes `to`.
fn relay(shared: &Shared, session: &str, mut from: TcpStream, mut to: TcpStream, commands: bool) {
    let started = Instant::now();
    let _ = from.set_read_timeout(Some(TICK));
    let _ = to.set_write_timeout(Some(Duration::from_secs(10)));
    let mut buf = [0u8; 16 * 1024];
    let mut line: Vec<u8> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) && started.elapsed() < SESSION_LIMIT {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        // Log before passing on: the next command cannot arrive before its reply is logged.
        for &b in &buf[..n] {
            if b == b'\n' {
                let text =
                    String::from_utf8_lossy(line.strip_suffix(b"\r").unwrap_or(&line)).into_owned();
                let mut log = lock(&shared.log);
                if commands {
                    log.command(session, &text);
                } else {
                    log.reply(session, &text);
                }
                line.clear();
            } else if line.len() < 64 * 1024 {
                line.push(b);
            }
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
    if shared.stop.load(Ordering::SeqCst) {
        let _ = from.shutdown(Shutdown::Both);
    }
}
