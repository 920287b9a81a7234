//! Shared integration-test harness for ftpcircle-fs.
//!
//! * real FTP servers on loopback (vsftpd plain / explicit FTPS / implicit
//!   FTPS, pyftpdlib with a user account), started per test and killed on drop;
//! * a throw-away CA + server certificate made with the `openssl` CLI;
//! * [`Mount`]: runs the binary under test against a serverlist and unmounts
//!   on drop;
//! * temp dirs, mountinfo parsing and process helpers with bounded waits.
//!
//! Every wait in here is bounded both in time and in iterations.  Set
//! `FTPCIRCLE_KEEP_TMP=1` to keep the temp dirs of a run for inspection.

// Each test crate uses a different subset of this module.
#![allow(dead_code)]

pub mod fake;
pub mod ls_servers;
pub mod unpacked;

pub use unpacked::{parse_proftpd_log, parse_pureftpd_log};

use std::ffi::OsString;
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_ftpcircle-fs");
/// Debian's python (has python3-pyftpdlib); `python3` on PATH may be another one.
pub const PYTHON: &str = "/usr/bin/python3";
pub const VSFTPD: &str = "/usr/sbin/vsftpd";
/// The pyftpdlib launcher shared with scripts/demo.sh.
pub const PYFTPD_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pyftpd.py");

/// How long a server may take to answer its first "220".
const SERVER_START_LIMIT: Duration = Duration::from_secs(10);
/// How long `ftpcircle-fs MNT` may take to return / the -f mount to appear.
const MOUNT_LIMIT: Duration = Duration::from_secs(30);
/// How long unmounting and daemon exit may take.
const UNMOUNT_LIMIT: Duration = Duration::from_secs(10);
/// Poll interval of every wait loop.
const POLL: Duration = Duration::from_millis(50);

fn iterations(limit: Duration) -> u32 {
    (limit.as_millis() / POLL.as_millis()) as u32 + 1
}

/// Shell lines for a server started in a new mount namespace (`unshare -m`): that namespace
/// begins with copies of every FUSE mount on the machine, and a copy keeps the kernel's FUSE
/// connection alive, so a daemon would not see its own mount go away. Lazily unmount them.
pub const DROP_FUSE_COPIES_SH: &str = r#"mounts=$(cat /proc/self/mountinfo)
printf '%s\n' "$mounts" | while read -r _ _ _ _ target rest; do
    case " $rest" in *" - fuse"*) umount -l "$(printf '%b' "$target")" 2>/dev/null ;; esac
done
"#;

// ---------------------------------------------------------------------------
// temp dirs and files

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique directory under `std::env::temp_dir()`, mode 755, removed on drop
/// (after lazily unmounting anything still mounted below it).
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "ftpcircle-test-{}-{}-{}",
            std::process::id(),
            n,
            tag
        ));
        if path.exists() {
            // Left over from an earlier run whose pid was the same.
            for m in mounts_under(&path) {
                lazy_unmount(&m);
            }
            let _ = fs::remove_dir_all(&path);
        }
        fs::create_dir_all(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
        set_mode(&path, 0o755);
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.path.join(p)
    }

    /// Creates (mode 755) and returns a subdirectory.
    pub fn subdir(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        mkdir_p(&p);
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::env::var_os("FTPCIRCLE_KEEP_TMP").is_some() {
            eprintln!("FTPCIRCLE_KEEP_TMP: keeping {}", self.path.display());
            return;
        }
        // Never let remove_dir_all walk into a live FUSE mount.
        for m in mounts_under(&self.path) {
            lazy_unmount(&m);
        }
        let _ = fs::remove_dir_all(&self.path);
    }
}

pub fn set_mode(p: &Path, mode: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {:o} {}: {e}", mode, p.display()));
}

/// `mkdir -p` with every created directory mode 755.
pub fn mkdir_p(p: &Path) {
    let mut missing = Vec::new();
    let mut cur = Some(p);
    while let Some(c) = cur {
        if c.exists() {
            break;
        }
        missing.push(c.to_path_buf());
        cur = c.parent();
    }
    for d in missing.iter().rev() {
        match fs::create_dir(d) {
            Ok(()) => set_mode(d, 0o755),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => panic!("mkdir {}: {e}", d.display()),
        }
    }
}

/// Writes a file (mode 644), creating parent directories (mode 755).
pub fn write_file(p: &Path, data: &[u8]) {
    if let Some(parent) = p.parent() {
        mkdir_p(parent);
    }
    fs::write(p, data).unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    set_mode(p, 0o644);
}

/// A path from raw bytes (for non-UTF-8 names).
pub fn bpath(bytes: &[u8]) -> &Path {
    Path::new(std::ffi::OsStr::from_bytes(bytes))
}

/// Creates a symlink `p -> target`, creating parent directories.
pub fn symlink(target: &[u8], p: &Path) {
    if let Some(parent) = p.parent() {
        mkdir_p(parent);
    }
    std::os::unix::fs::symlink(OsString::from_vec(target.to_vec()), p)
        .unwrap_or_else(|e| panic!("symlink {}: {e}", p.display()));
}

/// Sets atime and mtime of a file or directory (not following nothing: the
/// path must not be a symlink) to `secs` since the epoch.
pub fn set_mtime(p: &Path, secs: i64) {
    let t = epoch_to_system_time(secs);
    let f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    f.set_times(fs::FileTimes::new().set_accessed(t).set_modified(t))
        .unwrap_or_else(|e| panic!("set_times {}: {e}", p.display()));
}

pub fn epoch_to_system_time(secs: i64) -> SystemTime {
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs as u64)
    } else {
        SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .expect("clock before 1970")
        .as_secs() as i64
}

/// Seconds since the epoch of a UTC civil date/time (proleptic Gregorian).
pub fn utc_secs(year: i64, month: u32, day: u32, hour: u32, min: u32, sec: u32) -> i64 {
    assert!((1..=12).contains(&month) && (1..=31).contains(&day));
    // Shift the year so that it starts in March: Feb 29 is then the last day.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let m = i64::from(month);
    let month_from_march = if m > 2 { m - 3 } else { m + 9 };
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    days * 86_400 + i64::from(hour) * 3600 + i64::from(min) * 60 + i64::from(sec)
}

/// Makes every directory below `root` 755 and every file 644 (symlinks are
/// left alone), so vsftpd's anonymous user can read everything and write
/// nothing.
pub fn make_world_readable(root: &Path) {
    let meta = fs::symlink_metadata(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
    if meta.file_type().is_symlink() {
        return;
    }
    if meta.is_dir() {
        set_mode(root, 0o755);
        let entries = fs::read_dir(root).unwrap_or_else(|e| panic!("{}: {e}", root.display()));
        for e in entries {
            make_world_readable(&e.expect("read_dir entry").path());
        }
    } else {
        set_mode(root, 0o644);
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), for large test files.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------
// processes

/// A port that was free a moment ago (bind 127.0.0.1:0, read, drop).
pub fn pick_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Pids of all live descendants of `root` (from /proc/*/stat).
pub fn descendants(root: i32) -> Vec<i32> {
    let mut children: std::collections::HashMap<i32, Vec<i32>> = Default::default();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // "pid (comm) state ppid ...": comm may contain spaces and parens.
            let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) else {
                continue;
            };
            let mut fields = after.split_whitespace();
            let state = fields.next();
            let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
            if let (Some(st), Some(ppid)) = (state, ppid)
                && st != "Z"
            {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if let Some(kids) = children.get(&p) {
            for k in kids {
                if !out.contains(k) && out.len() < 10_000 {
                    out.push(*k);
                    todo.push(*k);
                }
            }
        }
    }
    out
}

/// SIGKILLs `root`, its process group and all its descendants.  `root` is
/// stopped first so that it cannot fork while its tree is collected.
pub fn kill_tree(root: i32) {
    send_signal(root, libc::SIGSTOP);
    let tree = descendants(root);
    send_signal(-root, libc::SIGKILL);
    send_signal(root, libc::SIGKILL);
    for p in tree {
        send_signal(p, libc::SIGKILL);
    }
}

pub fn send_signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Runs `cmd` to completion with stdin from /dev/null and stdout/stderr
/// captured, killing it and panicking if it takes longer than `limit`.
pub fn run_timeout(cmd: &mut Command, limit: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let desc = format!("{cmd:?}");
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(res) => res.unwrap_or_else(|e| panic!("waiting for {desc}: {e}")),
        Err(_) => {
            send_signal(pid, libc::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(10));
            panic!("{desc} did not finish within {limit:?}");
        }
    }
}

/// [`run_timeout`] and assert exit status 0.
pub fn run_ok(cmd: &mut Command, limit: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let out = run_timeout(cmd, limit);
    assert!(
        out.status.success(),
        "{desc} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Waits for a child to exit, at most `limit`.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    for _ in 0..iterations(limit) {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st),
            Ok(None) => thread::sleep(POLL),
            Err(_) => return None,
        }
    }
    None
}

fn read_lossy(p: &Path) -> String {
    fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------
// mountinfo

/// Decodes the `\ooo` escapes the kernel uses in /proc/self/mountinfo.
pub fn unescape_mountinfo(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b[i] == b'\\'
            && i + 4 <= b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        let value = if octal {
            b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'))
        } else {
            256
        };
        if let Ok(v) = u8::try_from(value) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// One line of /proc/self/mountinfo.
#[derive(Debug, Clone)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub options: String,
    pub fs_type: String,
    pub source: String,
}

pub fn mount_entries() -> Vec<MountEntry> {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let Some(sep) = fields.iter().position(|f| *f == "-") else {
            continue;
        };
        if fields.len() < 6 || sep + 2 >= fields.len() {
            continue;
        }
        out.push(MountEntry {
            mount_point: PathBuf::from(OsString::from_vec(unescape_mountinfo(fields[4]))),
            options: fields[5].to_string(),
            fs_type: fields[sep + 1].to_string(),
            source: fields[sep + 2].to_string(),
        });
    }
    out
}

pub fn mount_entry(p: &Path) -> Option<MountEntry> {
    mount_entries()
        .into_iter()
        .rev()
        .find(|m| m.mount_point == p)
}

pub fn is_mountpoint(p: &Path) -> bool {
    mount_entry(p).is_some()
}

/// Mount points at or below `p`, deepest first.
pub fn mounts_under(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mount_entries()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|m| m.starts_with(p))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
    v.dedup();
    v
}

pub fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    for _ in 0..iterations(limit) {
        if cond() {
            return true;
        }
        thread::sleep(POLL);
    }
    cond()
}

/// `fusermount3 -u`, falling back to `fusermount3 -u -z` and `umount -l`
/// (lazy, for a busy mount); bounded.
pub fn lazy_unmount(p: &Path) {
    let limit = Duration::from_secs(10);
    for attempt in [
        vec!["fusermount3", "-u"],
        vec!["fusermount3", "-u", "-z"],
        vec!["umount", "-l"],
    ] {
        if !is_mountpoint(p) {
            return;
        }
        let mut cmd = Command::new(attempt[0]);
        cmd.args(&attempt[1..]).arg(p);
        let _ = run_timeout(&mut cmd, limit);
    }
}

// ---------------------------------------------------------------------------
// TLS test certificate

/// A throw-away CA and a server certificate for CN=localhost with
/// SAN DNS:localhost, IP:127.0.0.1, IP:::1, made with the openssl CLI.
#[derive(Debug, Clone)]
pub struct TestCert {
    /// The CA certificate to trust (`--ca-file`, `curl --cacert`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    pub fn generate(dir: &Path) -> TestCert {
        mkdir_p(dir);
        let limit = Duration::from_secs(60);
        let ca = dir.join("ca.pem");
        let ca_key = dir.join("ca.key");
        let key = dir.join("server.key");
        let csr = dir.join("server.csr");
        let cert = dir.join("server.pem");
        let ext = dir.join("server.ext");
        run_ok(
            Command::new("openssl")
                .args(["req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048"])
                .arg("-keyout")
                .arg(&ca_key)
                .arg("-out")
                .arg(&ca)
                .args(["-days", "3", "-subj", "/CN=ftpcircle-fs test CA"])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
            limit,
        );
        run_ok(
            Command::new("openssl")
                .args(["req", "-new", "-nodes", "-newkey", "rsa:2048"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr)
                .args(["-subj", "/CN=localhost"]),
            limit,
        );
        fs::write(
            &ext,
            "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1\n\
             basicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature,keyEncipherment\n\
             extendedKeyUsage=serverAuth\n",
        )
        .expect("write ext file");
        let serial = format!("0x{:x}{:08x}", std::process::id(), now_secs() as u32);
        run_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-in"])
                .arg(&csr)
                .arg("-CA")
                .arg(&ca)
                .arg("-CAkey")
                .arg(&ca_key)
                .args(["-set_serial", &serial, "-days", "3", "-extfile"])
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
            limit,
        );
        for p in [&ca, &cert] {
            set_mode(p, 0o644);
        }
        for p in [&ca_key, &key] {
            set_mode(p, 0o600);
        }
        TestCert { ca, cert, key }
    }
}

// ---------------------------------------------------------------------------
// FTP servers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    /// vsftpd, plain FTP, anonymous, LIST only (no MLSD).
    Vsftpd,
    /// vsftpd, explicit FTPS (AUTH TLS) required, anonymous.
    VsftpdTls,
    /// vsftpd, implicit FTPS, anonymous.
    VsftpdImplicitTls,
    /// pyftpdlib, plain FTP, user account, MLSD available.
    Pyftpdlib,
    /// proftpd, plain FTP, anonymous, MLSD.
    Proftpd,
    /// proftpd with mod_tls, explicit FTPS required, anonymous, MLSD.
    ProftpdTls,
    /// pure-ftpd, plain FTP, one virtual user, MLSD.
    PureFtpd,
    /// pure-ftpd, TLS required on control and data, one virtual user, MLSD.
    PureFtpdTls,
}

impl ServerKind {
    /// Whether the serverlist line asks for explicit FTPS (AUTH TLS).
    pub fn explicit_tls(self) -> bool {
        matches!(
            self,
            ServerKind::VsftpdTls | ServerKind::ProftpdTls | ServerKind::PureFtpdTls
        )
    }
}

/// One command a server received and the first reply it sent to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub session: String,
    pub command: String,
    pub reply: Option<u16>,
}

impl Exchange {
    /// Upper-cased command verb.
    pub fn verb(&self) -> String {
        self.command
            .split(' ')
            .next()
            .unwrap_or("")
            .to_ascii_uppercase()
    }

    pub fn arg(&self) -> &str {
        self.command.split_once(' ').map(|x| x.1).unwrap_or("")
    }

    /// A positive preliminary or completion reply (1xx/2xx).
    pub fn accepted(&self) -> bool {
        matches!(self.reply, Some(100..=299))
    }

    /// A directory listing the server accepted: LIST, NLST, MLSD or
    /// `STAT <path>`.
    pub fn is_listing(&self) -> bool {
        let verb = self.verb();
        let listing = match verb.as_str() {
            "LIST" | "NLST" | "MLSD" => true,
            "STAT" => !self.arg().trim().is_empty(),
            _ => false,
        };
        listing && self.accepted()
    }
}

/// FTP verbs that change something on a server: the one list every test
/// checks server logs against (tests/common/fake.rs must hold the same list;
/// tests/servers.rs checks that it does).
pub const WRITE_VERBS: &[&str] = &[
    "STOR", "STOU", "APPE", "DELE", "MKD", "XMKD", "RMD", "XRMD", "RNFR", "RNTO", "SITE", "MFMT",
    "MFF", "SMNT",
];

/// Whether `verb` (any case) is in [`WRITE_VERBS`].
pub fn is_write_verb(verb: &str) -> bool {
    WRITE_VERBS.iter().any(|w| w.eq_ignore_ascii_case(verb))
}

/// `Ok` if the fake server saw a login (a PASS) and no command in
/// [`WRITE_VERBS`]: the fake's counterpart of
/// [`FtpServer::check_no_write_commands`].
pub fn check_fake_no_write_commands(fake: &fake::FakeFtp) -> Result<(), String> {
    let verbs = fake.verbs();
    if !verbs.iter().any(|v| v == "PASS") {
        return Err(format!(
            "no PASS in the fake's log; cannot check it for writes: {verbs:?}"
        ));
    }
    let bad: Vec<&String> = verbs.iter().filter(|v| is_write_verb(v)).collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("received write commands: {bad:?}"))
    }
}

thread_local! {
    /// Extra vsftpd.conf lines for the next vsftpd started on this thread
    /// ([`FtpServer::vsftpd_rate`]).
    static VSFTPD_EXTRA: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A real FTP server on loopback, killed (with its whole process group) and
/// reaped on drop.
pub struct FtpServer {
    pub kind: ServerKind,
    /// "127.0.0.1" or "::1".
    pub host: String,
    pub port: u16,
    pub root: PathBuf,
    /// Login for pyftpdlib; `None` = anonymous.
    pub user: Option<(String, String)>,
    log: PathBuf,
    output: PathBuf,
    child: Option<Child>,
    /// pure-ftpd's log receiver (stops after the server is killed).
    syslog: Option<unpacked::SyslogSink>,
    // Config, logs, empty chroot dir.  Dropped after the process is killed.
    work: TempDir,
}

enum StartError {
    /// The process exited; its output file tells why.
    Exited(ExitStatus),
    /// The port was taken by someone else: try another one.
    PortBusy(String),
    Fatal(String),
}

impl FtpServer {
    /// Plain vsftpd, anonymous read-only, on 127.0.0.1.
    pub fn vsftpd(root: &Path) -> FtpServer {
        Self::start_vsftpd(root, ServerKind::Vsftpd, None, "127.0.0.1")
    }

    /// Plain vsftpd whose every connection sends at most `bytes_per_sec`
    /// (`anon_max_rate`), like public mirrors that cap each connection.
    pub fn vsftpd_rate(root: &Path, bytes_per_sec: u64) -> FtpServer {
        VSFTPD_EXTRA.with(|e| *e.borrow_mut() = vec![format!("anon_max_rate={bytes_per_sec}")]);
        let srv = Self::start_vsftpd(root, ServerKind::Vsftpd, None, "127.0.0.1");
        VSFTPD_EXTRA.with(|e| e.borrow_mut().clear());
        srv
    }

    /// vsftpd requiring explicit FTPS (AUTH TLS, protected data channel,
    /// TLS session reuse on data connections), anonymous read-only.
    pub fn vsftpd_tls(root: &Path, cert: &TestCert) -> FtpServer {
        Self::start_vsftpd(root, ServerKind::VsftpdTls, Some(cert), "127.0.0.1")
    }

    /// vsftpd speaking implicit FTPS (TLS from the first byte).
    pub fn vsftpd_implicit_tls(root: &Path, cert: &TestCert) -> FtpServer {
        Self::start_vsftpd(root, ServerKind::VsftpdImplicitTls, Some(cert), "127.0.0.1")
    }

    /// Plain vsftpd on [::1]; `None` if IPv6 loopback is unavailable.
    pub fn vsftpd_v6(root: &Path) -> Option<FtpServer> {
        if TcpListener::bind("[::1]:0").is_err() {
            return None;
        }
        Some(Self::start_vsftpd(root, ServerKind::Vsftpd, None, "::1"))
    }

    /// pyftpdlib (tests/pyftpd.py) with one read-only ("elr") account.
    /// An empty `user` means anonymous.
    pub fn pyftpdlib(root: &Path, user: &str, pass: &str) -> FtpServer {
        Self::pyftpdlib_many(root, user, pass, &[], &[])
    }

    /// One pyftpdlib process that also listens on `also_hosts` (same port) and also accepts
    /// the accounts `also_users` (name, root; same password): many cheap "servers".
    pub fn pyftpdlib_many(
        root: &Path,
        user: &str,
        pass: &str,
        also_hosts: &[String],
        also_users: &[(String, PathBuf)],
    ) -> FtpServer {
        make_world_readable(root);
        for (_, home) in also_users {
            make_world_readable(home);
        }
        let work = TempDir::new("pyftpd");
        let log = work.join("pyftpd.log");
        let output = work.join("pyftpd.out");
        let login = if user.is_empty() {
            None
        } else {
            Some((user.to_string(), pass.to_string()))
        };
        let token = format!(
            "ftpcircle-test-{}-{} pyftpdlib ready",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let make = |port: u16| {
            let mut cmd = Command::new(PYTHON);
            cmd.arg(PYFTPD_SCRIPT)
                .args(["--banner", &token])
                .arg("--root")
                .arg(root)
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                .arg("--log")
                .arg(&log);
            for h in also_hosts {
                cmd.args(["--also-host", h]);
            }
            for (name, home) in also_users {
                let mut spec = OsString::from(format!("{name}="));
                spec.push(home);
                cmd.arg("--also-user").arg(spec);
            }
            match &login {
                Some((u, p)) => {
                    cmd.args(["--user", u, "--password", p]);
                }
                None => {
                    cmd.arg("--anonymous");
                }
            }
            cmd
        };
        let (port, child) = start_with_retries(&make, &output, &log, |port, child| {
            wait_banner("127.0.0.1", port, &token, child)
        });
        FtpServer {
            kind: ServerKind::Pyftpdlib,
            host: "127.0.0.1".into(),
            port,
            root: root.to_path_buf(),
            user: login,
            log,
            output,
            child: Some(child),
            syslog: None,
            work,
        }
    }

    fn start_vsftpd(
        root: &Path,
        kind: ServerKind,
        cert: Option<&TestCert>,
        host: &str,
    ) -> FtpServer {
        make_world_readable(root);
        let work = TempDir::new("vsftpd");
        let empty = work.subdir("empty");
        let log = work.join("vsftpd.log");
        let output = work.join("vsftpd.out");
        let token = format!(
            "ftpcircle-test-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let conf_path = work.join("vsftpd.conf");
        let make = |port: u16| {
            let mut conf = vec![
                "background=NO".to_string(),
                format!("listen_port={port}"),
                "anonymous_enable=YES".into(),
                "no_anon_password=YES".into(),
                format!("anon_root={}", root.display()),
                "anon_world_readable_only=YES".into(),
                "local_enable=NO".into(),
                "write_enable=NO".into(),
                "anon_upload_enable=NO".into(),
                "anon_mkdir_write_enable=NO".into(),
                "anon_other_write_enable=NO".into(),
                "seccomp_sandbox=NO".into(),
                format!("secure_chroot_dir={}", empty.display()),
                "pasv_enable=YES".into(),
                "port_enable=YES".into(),
                "connect_from_port_20=NO".into(),
                "use_localtime=NO".into(),
                "force_dot_files=YES".into(),
                "hide_ids=NO".into(),
                "dirmessage_enable=NO".into(),
                "ls_recurse_enable=NO".into(),
                "tcp_wrappers=NO".into(),
                "max_clients=0".into(),
                "max_per_ip=0".into(),
                "idle_session_timeout=120".into(),
                "data_connection_timeout=60".into(),
                "xferlog_enable=YES".into(),
                "xferlog_std_format=NO".into(),
                "log_ftp_protocol=YES".into(),
                "syslog_enable=NO".into(),
                format!("vsftpd_log_file={}", log.display()),
                format!("ftpd_banner={token}"),
            ];
            if host.contains(':') {
                conf.push("listen=NO".into());
                conf.push("listen_ipv6=YES".into());
                conf.push(format!("listen_address6={host}"));
            } else {
                conf.push("listen=YES".into());
                conf.push("listen_ipv6=NO".into());
                conf.push(format!("listen_address={host}"));
            }
            if let Some(cert) = cert {
                conf.extend([
                    "ssl_enable=YES".to_string(),
                    "allow_anon_ssl=YES".into(),
                    "force_anon_logins_ssl=YES".into(),
                    "force_anon_data_ssl=YES".into(),
                    "force_local_logins_ssl=YES".into(),
                    "force_local_data_ssl=YES".into(),
                    "require_ssl_reuse=YES".into(),
                    "ssl_sslv2=NO".into(),
                    "ssl_sslv3=NO".into(),
                    "ssl_tlsv1=YES".into(),
                    // vsftpd 3.0.3's default is DES-CBC3-SHA, which modern
                    // TLS stacks refuse.
                    "ssl_ciphers=HIGH".into(),
                    format!("rsa_cert_file={}", cert.cert.display()),
                    format!("rsa_private_key_file={}", cert.key.display()),
                ]);
                if kind == ServerKind::VsftpdImplicitTls {
                    conf.push("implicit_ssl=YES".into());
                }
            }
            VSFTPD_EXTRA.with(|e| conf.extend(e.borrow().iter().cloned()));
            let mut text = conf.join("\n");
            text.push('\n');
            fs::write(&conf_path, text).expect("write vsftpd.conf");
            let mut cmd = Command::new(VSFTPD);
            cmd.arg(&conf_path);
            cmd
        };
        let ca = cert.map(|c| c.ca.clone());
        let (port, child) = start_with_retries(&make, &output, &log, |port, child| {
            if kind == ServerKind::VsftpdImplicitTls {
                wait_implicit_tls(port, ca.as_deref().expect("cert"), child)
            } else {
                wait_banner(host, port, &token, child)
            }
        });
        FtpServer {
            kind,
            host: host.to_string(),
            port,
            root: root.to_path_buf(),
            user: None,
            log,
            output,
            child: Some(child),
            syslog: None,
            work,
        }
    }

    /// `host:port` as written in a serverlist (`[::1]:port` for IPv6).
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The serverlist line for this server.
    pub fn line(&self) -> String {
        self.line_with_base("")
    }

    /// The serverlist line with a base path suffix (`"/sub"`; "" for none).
    pub fn line_with_base(&self, base: &str) -> String {
        let (user, pass) = match &self.user {
            Some((u, p)) => (csv_field(u), csv_field(p)),
            None => (String::new(), String::new()),
        };
        let tls = match self.kind {
            ServerKind::VsftpdImplicitTls => "implicit",
            k if k.explicit_tls() => "1",
            _ => "0",
        };
        format!("{}{},{},{},{}", self.addr(), base, user, pass, tls)
    }

    /// URL prefix for curl (`ftp://` or `ftps://` for implicit TLS).
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.kind == ServerKind::VsftpdImplicitTls {
            "ftps"
        } else {
            "ftp"
        };
        format!(
            "{scheme}://{}/{}",
            self.addr(),
            path.trim_start_matches('/')
        )
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The raw protocol log of the server.
    pub fn commands_log(&self) -> String {
        read_lossy(&self.log)
    }

    /// Every command received, with the first reply to it.
    pub fn exchanges(&self) -> Vec<Exchange> {
        let text = self.commands_log();
        match self.kind {
            ServerKind::Pyftpdlib => parse_pyftpdlib_log(&text),
            ServerKind::Proftpd | ServerKind::ProftpdTls => parse_proftpd_log(&text),
            ServerKind::PureFtpd | ServerKind::PureFtpdTls => parse_pureftpd_log(&text),
            ServerKind::Vsftpd | ServerKind::VsftpdTls | ServerKind::VsftpdImplicitTls => {
                parse_vsftpd_log(&text)
            }
        }
    }

    /// Every command received (as sent, PASS masked by pyftpdlib).
    pub fn commands(&self) -> Vec<String> {
        self.exchanges().into_iter().map(|e| e.command).collect()
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

    /// Whether the log shows a successful login (reply 230).  vsftpd logs
    /// the 230 from another process than the USER it answers, so for it any
    /// logged 230 reply counts.
    pub fn saw_login(&self) -> bool {
        let exchanges = self.exchanges();
        let paired = exchanges.iter().any(|e| e.reply == Some(230));
        let vsftpd = matches!(
            self.kind,
            ServerKind::Vsftpd | ServerKind::VsftpdTls | ServerKind::VsftpdImplicitTls
        );
        let unpaired = vsftpd
            && self
                .commands_log()
                .contains("FTP response: Client \"127.0.0.1\", \"230 ");
        exchanges.iter().any(|e| e.verb() == "USER") && (paired || unpaired)
    }

    /// `Ok` if this server saw a logged-in session (so its log is read and
    /// parsed at all) and received no command in [`WRITE_VERBS`].
    pub fn check_no_write_commands(&self) -> Result<(), String> {
        if !self.saw_login() {
            return Err(format!(
                "no successful login in the server's log; cannot check it for writes:\n{}",
                self.commands_log()
            ));
        }
        let bad: Vec<String> = self
            .exchanges()
            .into_iter()
            .filter(|e| is_write_verb(&e.verb()))
            .map(|e| e.command)
            .collect();
        if bad.is_empty() {
            Ok(())
        } else {
            Err(format!("received write commands: {bad:?}"))
        }
    }

    /// Panics unless [`FtpServer::check_no_write_commands`] is `Ok`.
    pub fn assert_no_write_commands(&self, name: &str) {
        if let Err(e) = self.check_no_write_commands() {
            panic!("{name}: {e}");
        }
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Starts a [`FtpServer::stop`]ped vsftpd again, on the same port with the same
    /// configuration (a server that comes back). Panics if it does not answer.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running server");
        let conf_path = self.work.join("vsftpd.conf");
        let conf = fs::read_to_string(&conf_path).expect("vsftpd.conf (restart is for vsftpd)");
        let token = conf
            .lines()
            .find_map(|l| l.strip_prefix("ftpd_banner="))
            .expect("banner line")
            .to_string();
        let mut last = String::new();
        // The port may still be held for a moment by the old process's sockets.
        for _attempt in 0..10 {
            let out = fs::File::create(&self.output).expect("create server output file");
            let err = out.try_clone().expect("dup output file");
            let oops = out.try_clone().expect("dup output file");
            let mut child = Command::new(VSFTPD)
                .arg(&conf_path)
                .stdin(oops)
                .stdout(out)
                .stderr(err)
                .process_group(0)
                .spawn()
                .expect("spawn vsftpd");
            match wait_banner(&self.host, self.port, &token, &mut child) {
                Ok(()) => {
                    self.child = Some(child);
                    return;
                }
                Err(_) => {
                    kill_tree(child.id() as i32);
                    let _ = child.kill();
                    let _ = wait_child(&mut child, Duration::from_secs(5));
                    last = read_lossy(&self.output);
                    thread::sleep(Duration::from_millis(500));
                }
            }
        }
        panic!("vsftpd did not come back on port {}: {last}", self.port);
    }

    /// Kills the server and every process it started (vsftpd runs each
    /// session in processes of their own session), then reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            kill_tree(child.id() as i32);
            let _ = child.kill();
            let _ = wait_child(&mut child, Duration::from_secs(10));
        }
    }
}

impl Drop for FtpServer {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "---- {:?} server {} log (tail) ----\n{}\n---- output ----\n{}",
                self.kind,
                self.addr(),
                tail(&self.commands_log(), 60),
                tail(&read_lossy(&self.output), 20)
            );
        }
        self.stop();
    }
}

/// Quotes a CSV field if needed (`pa,ss"word` -> `"pa,ss""word"`).
pub fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) || s.starts_with(' ') || s.ends_with(' ') {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn start_with_retries(
    make: &dyn Fn(u16) -> Command,
    output: &Path,
    log: &Path,
    wait: impl Fn(u16, &mut Child) -> Result<(), StartError>,
) -> (u16, Child) {
    let mut last = String::new();
    for _attempt in 0..5 {
        let port = pick_port();
        let out = fs::File::create(output).expect("create server output file");
        let err = out.try_clone().expect("dup output file");
        // vsftpd writes its "500 OOPS" start-up errors to fd 0.
        let oops = out.try_clone().expect("dup output file");
        let mut cmd = make(port);
        cmd.stdin(oops)
            .stdout(out)
            .stderr(err)
            // Own process group, so drop can kill the per-session children too.
            .process_group(0);
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {desc}: {e}"));
        let result = wait(port, &mut child);
        if result.is_ok() {
            return (port, child);
        }
        kill_tree(child.id() as i32);
        let _ = child.kill();
        let _ = wait_child(&mut child, Duration::from_secs(5));
        let text = read_lossy(output);
        let msg = match result {
            Ok(()) => unreachable!(),
            Err(StartError::PortBusy(m)) => m,
            Err(StartError::Exited(st)) if text.contains("bind") || text.contains("in use") => {
                format!("exited with {st}")
            }
            Err(StartError::Exited(st)) => panic!(
                "{desc} exited with {st} during start-up\noutput:\n{text}\nlog:\n{}",
                tail(&read_lossy(log), 30)
            ),
            Err(StartError::Fatal(m)) => panic!(
                "{desc} failed to start: {m}\noutput:\n{text}\nlog:\n{}",
                tail(&read_lossy(log), 30)
            ),
        };
        last = format!("{desc}: {msg}\noutput:\n{text}");
    }
    panic!("server did not start after 5 attempts; last: {last}");
}

/// Waits until `host:port` sends a 220 greeting containing `token`.
fn wait_banner(host: &str, port: u16, token: &str, child: &mut Child) -> Result<(), StartError> {
    let addr: SocketAddr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
    .parse()
    .expect("socket address");
    let deadline = Instant::now() + SERVER_START_LIMIT;
    let mut last = String::from("no connection");
    for _ in 0..iterations(SERVER_START_LIMIT) {
        if Instant::now() > deadline {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(StartError::Exited(st));
        }
        match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            Ok(stream) => {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let mut line = String::new();
                let mut reader = BufReader::new(stream);
                match reader.read_line(&mut line) {
                    Ok(_) if line.starts_with("220") && line.contains(token) => return Ok(()),
                    Ok(_) if line.starts_with("220") => {
                        // Someone else's server answered on our port.
                        return Err(StartError::PortBusy(format!("foreign server: {line:?}")));
                    }
                    Ok(_) => last = format!("greeting {line:?}"),
                    Err(e) => last = format!("reading greeting: {e}"),
                }
            }
            Err(e) => last = format!("connect: {e}"),
        }
        thread::sleep(POLL);
    }
    Err(StartError::Fatal(format!(
        "no 220 greeting within {SERVER_START_LIMIT:?} ({last})"
    )))
}

/// Implicit FTPS: the greeting is inside TLS, so probe with curl, which also
/// proves the certificate chains to our fresh CA (i.e. it is our server).
fn wait_implicit_tls(port: u16, ca: &Path, child: &mut Child) -> Result<(), StartError> {
    let mut last = String::new();
    let deadline = Instant::now() + SERVER_START_LIMIT;
    for _ in 0..iterations(SERVER_START_LIMIT) {
        if Instant::now() > deadline {
            break;
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(StartError::Exited(st));
        }
        let out = run_timeout(
            curl()
                .args(["--max-time", "3", "--cacert"])
                .arg(ca)
                .arg(format!("ftps://127.0.0.1:{port}/"))
                .arg("-o")
                .arg("/dev/null"),
            Duration::from_secs(10),
        );
        if out.status.success() {
            return Ok(());
        }
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        thread::sleep(POLL * 2);
    }
    Err(StartError::Fatal(format!(
        "implicit FTPS server not reachable: {last}"
    )))
}

/// Parses vsftpd's `log_ftp_protocol=YES` log.
pub fn parse_vsftpd_log(text: &str) -> Vec<Exchange> {
    let mut out: Vec<Exchange> = Vec::new();
    // Index in `out` of the command of each session still awaiting a reply.
    let mut pending: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        let Some(pid_start) = line.find("[pid ") else {
            continue;
        };
        let rest = &line[pid_start + 5..];
        let Some(pid_end) = rest.find(']') else {
            continue;
        };
        let session = rest[..pid_end].to_string();
        let quoted = |marker: &str| -> Option<String> {
            let i = line.find(marker)?;
            let after = &line[i + marker.len()..];
            let j = after.find("\", \"")?;
            let s = &after[j + 4..];
            Some(s.strip_suffix('"').unwrap_or(s).to_string())
        };
        if let Some(cmd) = quoted("FTP command: Client \"") {
            pending.retain(|(s, _)| *s != session);
            pending.push((session.clone(), out.len()));
            out.push(Exchange {
                session,
                command: cmd,
                reply: None,
            });
        } else if let Some(resp) = quoted("FTP response: Client \"")
            && let Some(pos) = pending.iter().position(|(s, _)| *s == session)
        {
            let (_, idx) = pending.remove(pos);
            out[idx].reply = resp.get(..3).and_then(|c| c.parse().ok());
        }
    }
    out
}

/// Parses the DEBUG log of tests/pyftpd.py
/// (`<date> <time> 127.0.0.1:PORT-[user] <- CMD` / `-> 226 ...`).
pub fn parse_pyftpdlib_log(text: &str) -> Vec<Exchange> {
    let mut out: Vec<Exchange> = Vec::new();
    let mut pending: Vec<(String, usize)> = Vec::new();
    for line in text.lines() {
        let mut parts = line.splitn(3, ' ');
        let (Some(_date), Some(_time), Some(rest)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Some(dash) = rest.find("-[") else {
            continue;
        };
        let session = rest[..dash].to_string();
        if session.contains(' ') {
            continue;
        }
        let Some(close) = rest[dash..].find("] ") else {
            continue;
        };
        let msg = &rest[dash + close + 2..];
        if let Some(cmd) = msg.strip_prefix("<- ") {
            pending.retain(|(s, _)| *s != session);
            pending.push((session.clone(), out.len()));
            out.push(Exchange {
                session,
                command: cmd.to_string(),
                reply: None,
            });
        } else if let Some(resp) = msg.strip_prefix("-> ")
            && let Some(pos) = pending.iter().position(|(s, _)| *s == session)
        {
            let (_, idx) = pending.remove(pos);
            out[idx].reply = resp.get(..3).and_then(|c| c.parse().ok());
        }
    }
    out
}

/// curl with proxies disabled and quiet-but-show-errors output.
pub fn curl() -> Command {
    let mut cmd = Command::new("curl");
    cmd.args(["--silent", "--show-error", "--noproxy", "*"]);
    for v in [
        "ftp_proxy",
        "FTP_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
    ] {
        cmd.env_remove(v);
    }
    cmd
}

// ---------------------------------------------------------------------------
// mounts of the binary under test

/// A mount of ftpcircle-fs over a temp mount point.  Drop unmounts it and
/// waits (bounded) for the daemon to exit; if the test is panicking it also
/// prints the daemon's log.
pub struct Mount {
    pub mnt: PathBuf,
    pub serverlist: PathBuf,
    pub log_file: PathBuf,
    /// The `-f` child, for [`Mount::foreground`].
    child: Option<Child>,
    daemon_pids: Vec<i32>,
    done: Arc<AtomicBool>,
    launch_out: PathBuf,
    // Last field: removed after the unmount in Drop.
    dir: TempDir,
}

/// Extra knobs for [`Mount`].
#[derive(Debug, Clone, Default)]
pub struct MountOptions {
    pub ca_file: Option<PathBuf>,
    pub args: Vec<OsString>,
    /// Permission bits of the serverlist file (default 600, as users are told).
    pub list_mode: Option<u32>,
    /// Environment of the binary: `(name, Some(value))` sets, `None` removes.
    pub envs: Vec<(OsString, Option<OsString>)>,
    /// Only the arguments given: no `--log-file` and `-v` from the harness, so
    /// everything the binary logs goes to [`Mount::launch_output`]; and no
    /// inherited `RUST_LOG`.
    pub bare: bool,
}

impl MountOptions {
    pub fn ca(ca: &Path) -> MountOptions {
        MountOptions {
            ca_file: Some(ca.to_path_buf()),
            ..MountOptions::default()
        }
    }

    /// See [`MountOptions::bare`].
    pub fn bare() -> MountOptions {
        MountOptions {
            bare: true,
            ..MountOptions::default()
        }
    }

    pub fn arg(self, a: &str) -> MountOptions {
        self.arg_os(a)
    }

    /// An argument that is a path (or any other OS string).
    pub fn arg_os(mut self, a: impl AsRef<std::ffi::OsStr>) -> MountOptions {
        self.args.push(a.as_ref().to_os_string());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> MountOptions {
        self.envs.push((k.into(), Some(v.into())));
        self
    }

    pub fn env_remove(mut self, k: &str) -> MountOptions {
        self.envs.push((k.into(), None));
        self
    }

    /// The serverlist file gets these permission bits.
    pub fn list_mode(mut self, mode: u32) -> MountOptions {
        self.list_mode = Some(mode);
        self
    }
}

impl Mount {
    /// Writes `serverlist` to a file and runs `ftpcircle-fs --servers F ...
    /// MNT` (daemon mode); asserts exit status 0 and that MNT is mounted
    /// when it returns.
    pub fn start(serverlist: &str, opts: &MountOptions) -> Mount {
        let mut m = Mount::prepare(serverlist, opts);
        let out = fs::File::create(&m.launch_out).expect("create launch output");
        let err = out.try_clone().expect("dup");
        let mut cmd = m.command(opts);
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
        let status = match wait_child(&mut child, MOUNT_LIMIT) {
            Some(st) => st,
            None => {
                let _ = child.kill();
                let _ = wait_child(&mut child, Duration::from_secs(5));
                panic!(
                    "{desc} did not return within {MOUNT_LIMIT:?}\n{}",
                    m.diagnostics()
                );
            }
        };
        assert!(
            status.success(),
            "{desc} exited with {status}\n{}",
            m.diagnostics()
        );
        assert!(
            is_mountpoint(&m.mnt),
            "{desc} exited 0 but {} is not in /proc/self/mountinfo\n{}",
            m.mnt.display(),
            m.diagnostics()
        );
        m.daemon_pids = daemon_pids(&m.mnt);
        m.start_watchdog();
        m
    }

    /// Like [`Mount::start`] but runs with `-f` as a child process and waits
    /// until the mount point appears in /proc/self/mountinfo.
    pub fn foreground(serverlist: &str, opts: &MountOptions) -> Mount {
        let mut m = Mount::prepare(serverlist, opts);
        let out = fs::File::create(&m.launch_out).expect("create launch output");
        let err = out.try_clone().expect("dup");
        let mut cmd = m.command(opts);
        cmd.arg("-f");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let desc = format!("{cmd:?}");
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
        let mut exited = None;
        let ready = wait_until(MOUNT_LIMIT, || {
            if let Ok(Some(st)) = child.try_wait() {
                exited = Some(st);
                return true;
            }
            is_mountpoint(&m.mnt)
        });
        if let Some(st) = exited {
            panic!(
                "{desc} exited with {st} before mounting\n{}",
                m.diagnostics()
            );
        }
        if !ready {
            let _ = child.kill();
            let _ = wait_child(&mut child, Duration::from_secs(5));
            lazy_unmount(&m.mnt);
            panic!(
                "{desc}: mount did not appear within {MOUNT_LIMIT:?}\n{}",
                m.diagnostics()
            );
        }
        m.daemon_pids = vec![child.id() as i32];
        m.child = Some(child);
        m.start_watchdog();
        m
    }

    fn prepare(serverlist: &str, opts: &MountOptions) -> Mount {
        let dir = TempDir::new("mount");
        let mnt = dir.subdir("mnt");
        let serverlist_path = dir.join("serverlist.txt");
        fs::write(&serverlist_path, serverlist).expect("write serverlist");
        // It holds passwords: keep it private, as users are told to.
        set_mode(&serverlist_path, opts.list_mode.unwrap_or(0o600));
        Mount {
            mnt,
            serverlist: serverlist_path,
            log_file: dir.join("ftpcircle-fs.log"),
            child: None,
            daemon_pids: Vec::new(),
            done: Arc::new(AtomicBool::new(false)),
            launch_out: dir.join("launch.out"),
            dir,
        }
    }

    fn command(&self, opts: &MountOptions) -> Command {
        let mut cmd = Command::new(BIN);
        cmd.arg("--servers").arg(&self.serverlist);
        if let Some(ca) = &opts.ca_file {
            cmd.arg("--ca-file").arg(ca);
        }
        if opts.bare {
            cmd.env_remove("RUST_LOG");
        } else {
            cmd.arg("--log-file").arg(&self.log_file).arg("-v");
        }
        // The listing index goes with the mount's temp dir, not to the user's ~/.cache.
        cmd.env("XDG_CACHE_HOME", self.dir.join("cache"));
        cmd.args(&opts.args);
        cmd.arg(&self.mnt);
        for (k, v) in &opts.envs {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }

    /// Kills everything and lazily unmounts if the test hangs on the mount
    /// (a hung FUSE request would otherwise block the test forever).
    fn start_watchdog(&self) {
        let limit = std::env::var("FTPCIRCLE_TEST_WATCHDOG_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(300u64);
        let done = Arc::clone(&self.done);
        let mnt = self.mnt.clone();
        let mut pids = self.daemon_pids.clone();
        thread::spawn(move || {
            let step = Duration::from_millis(200);
            for _ in 0..(limit * 5) {
                if done.load(Ordering::SeqCst) {
                    return;
                }
                thread::sleep(step);
            }
            if done.load(Ordering::SeqCst) {
                return;
            }
            eprintln!(
                "watchdog: mount {} still in use after {limit}s; killing the daemon",
                mnt.display()
            );
            pids.extend(daemon_pids(&mnt));
            for pid in pids {
                send_signal(pid, libc::SIGKILL);
            }
            lazy_unmount(&mnt);
        });
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// `MNT/rel`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.mnt.join(rel)
    }

    /// What `ftpcircle-fs MNT` printed (stdout and stderr) until it returned
    /// (for -f mounts: everything so far).  With [`MountOptions::bare`] that
    /// is its whole log unless the test passed `--log-file`.
    pub fn launch_output(&self) -> String {
        read_lossy(&self.launch_out)
    }

    /// The daemon's --log-file contents.
    pub fn log(&self) -> String {
        read_lossy(&self.log_file)
    }

    /// Pids of the process(es) serving the mount.
    pub fn pids(&self) -> Vec<i32> {
        let mut v = self.daemon_pids.clone();
        for p in daemon_pids(&self.mnt) {
            if !v.contains(&p) {
                v.push(p);
            }
        }
        v
    }

    fn diagnostics(&self) -> String {
        format!(
            "---- launch output ----\n{}\n---- {} (tail) ----\n{}",
            tail(&read_lossy(&self.launch_out), 40),
            self.log_file.display(),
            tail(&self.log(), 200)
        )
    }

    /// For [`Mount::foreground`] mounts: sends `sig` to the `-f` process and
    /// waits (bounded) for it to exit.  Returns its exit status, or `None`
    /// if it did not exit in time.
    pub fn signal_foreground(&mut self, sig: i32, limit: Duration) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("not a foreground mount");
        send_signal(child.id() as i32, sig);
        let st = wait_child(child, limit);
        if st.is_some() {
            self.child = None;
        }
        st
    }

    /// Unmounts now (also done by drop).
    pub fn unmount(&mut self) {
        self.done.store(true, Ordering::SeqCst);
        let pids = self.pids();
        if let Some(mut child) = self.child.take() {
            // Foreground: the documented clean shutdown is SIGTERM.
            send_signal(child.id() as i32, libc::SIGTERM);
            if wait_child(&mut child, UNMOUNT_LIMIT).is_none() {
                lazy_unmount(&self.mnt);
                let _ = child.kill();
                let _ = wait_child(&mut child, Duration::from_secs(5));
            }
        }
        lazy_unmount(&self.mnt);
        let gone = wait_until(UNMOUNT_LIMIT, || {
            pids.iter().all(|p| !pid_serves(*p, &self.mnt))
        });
        if !gone {
            eprintln!(
                "ftpcircle-fs for {} did not exit within {UNMOUNT_LIMIT:?} after unmount; killing it",
                self.mnt.display()
            );
            for p in &pids {
                if pid_serves(*p, &self.mnt) {
                    send_signal(*p, libc::SIGKILL);
                }
            }
        }
        wait_until(UNMOUNT_LIMIT, || !is_mountpoint(&self.mnt));
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!("{}", self.diagnostics());
        }
        self.unmount();
    }
}

/// Live (non-zombie) ftpcircle-fs processes with `mnt` on their command line.
pub fn daemon_pids(mnt: &Path) -> Vec<i32> {
    let me = std::process::id() as i32;
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return out;
    };
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid != me && pid_serves(pid, mnt) {
            out.push(pid);
        }
    }
    out
}

fn pid_serves(pid: i32, mnt: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_ours = args.first().is_some_and(|a| a.ends_with(b"ftpcircle-fs"))
        || fs::read_link(format!("/proc/{pid}/exe"))
            .map(|p| p.as_os_str().as_bytes().ends_with(b"ftpcircle-fs"))
            .unwrap_or(false);
    is_ours && args.iter().any(|a| *a == mnt.as_os_str().as_bytes())
}
