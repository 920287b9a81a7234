//! Security properties, each checked on a real mount against real servers:
//!
//! * the mount is read-only all the way down: every write-side system call
//!   answers EROFS and no server ever receives a command that changes it;
//! * FTPS is verified: an unknown CA or a certificate for another name is
//!   refused with an error naming the server, and a TLS server never sees a
//!   command in plaintext;
//! * passwords stay secret: not in logs at any verbosity, not in error
//!   messages, not on any command line; a world-readable server list with
//!   literal passwords is warned about;
//! * only the mounting user sees the mount unless `-o allow_other` is given.

mod common;

use common::{
    FtpServer, Mount, MountOptions, TempDir, TestCert, csv_field, daemon_pids, is_write_verb,
    mkdir_p, run_ok, run_timeout, set_mode, write_file,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{CString, OsStr};
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

const CMD_LIMIT: Duration = Duration::from_secs(60);

/// The password of the account on the pyftpdlib server: a comma and quotes,
/// so the serverlist field must be quoted (`"S3cr3t-p4ss,""x"""`).
const PW: &str = "S3cr3t-p4ss,\"x\"";
/// A variant the server does not accept.
const PW_WRONG: &str = "S3cr3t-p4ss,\"y\"";
/// The distinctive part of both: finding it anywhere counts as a leak, even
/// if the quoting around it was mangled on the way.
const PW_CORE: &str = "S3cr3t-p4ss";
const PW_USER: &str = "keeper";
const PW_ENV: &str = "FTPC_TEST_PW";

const NOBODY: u32 = 65534;

// ---------------------------------------------------------------------------
// launches: common::Mount with nothing but what each test passes

/// Mount options with no harness logging (everything goes to the launch
/// output, i.e. stderr), no inherited `RUST_LOG` or [`PW_ENV`], and the
/// serverlist file with permission bits `mode`.
fn bare(mode: u32) -> MountOptions {
    MountOptions::bare().list_mode(mode).env_remove(PW_ENV)
}

// ---------------------------------------------------------------------------
// small helpers

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn names(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| {
            e.expect("dir entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("NUL in path")
}

fn cstr(s: &str) -> CString {
    CString::new(s).expect("NUL in string")
}

/// A libc return value as a Result (errno captured right away).
fn sys(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `open(2)`; a descriptor that should not have been handed out is closed.
fn open_raw(p: &Path, flags: libc::c_int) -> io::Result<libc::c_int> {
    let c = cpath(p);
    // SAFETY: c is a valid NUL-terminated path; the mode is a plain integer.
    let r = sys(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644 as libc::c_uint) });
    if let Ok(fd) = r {
        // SAFETY: fd was just returned by open and is owned here only.
        unsafe { libc::close(fd) };
    }
    r
}

/// Collects "what: result" for every call that did not fail with EROFS.
#[derive(Default)]
struct Verdicts {
    checked: usize,
    wrong: Vec<String>,
}

impl Verdicts {
    fn expect_erofs<T: std::fmt::Debug>(&mut self, what: &str, r: io::Result<T>) {
        self.checked += 1;
        match r {
            Ok(v) => self
                .wrong
                .push(format!("{what}: succeeded ({v:?}) on a read-only mount")),
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
            Err(e) => self.wrong.push(format!(
                "{what}: want EROFS, got {e} ({:?})",
                e.raw_os_error()
            )),
        }
    }
}

/// What is on a server's disk: path -> (kind, size, mode, mtime).
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (String, u64, u32, i64)> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        assert!(out.len() < 100_000, "runaway snapshot");
        for e in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.expect("entry").path();
            let m = fs::symlink_metadata(&p).expect("lstat");
            let kind = if m.is_dir() {
                todo.push(p.clone());
                "dir"
            } else if m.file_type().is_symlink() {
                "link"
            } else {
                "file"
            };
            let rel = p.strip_prefix(root).expect("below root").to_path_buf();
            out.insert(rel, (kind.to_string(), m.len(), m.mode(), m.mtime()));
        }
    }
    out
}

/// Asserts the server saw a logged-in session and never received a command
/// that changes anything; and, belt and braces, that no line of the raw log
/// has a write command either, in case a line did not parse.
fn assert_no_write_commands(name: &str, server: &FtpServer) {
    server.assert_no_write_commands(name);
    for line in server.commands_log().lines() {
        let cmd = if let Some(i) = line.find("FTP command: Client \"") {
            line[i..].split_once("\", \"").map(|x| x.1)
        } else {
            line.split_once("] <- ").map(|x| x.1)
        };
        if let Some(cmd) = cmd {
            let verb = cmd.split([' ', '"']).next().unwrap_or("");
            assert!(
                !is_write_verb(verb),
                "{name} log has a write-side command: {line}"
            );
        }
    }
}

/// One vsftpd process's lines in a `log_ftp_protocol` log.
#[derive(Default, Debug)]
struct VsftpdProc {
    /// It logged `CONNECT`: the pre-login process of a new connection.
    connect: bool,
    /// `[pid N] [user] ...`: a post-login process.
    logged_in: bool,
    commands: Vec<String>,
}

/// Groups a vsftpd log by process. vsftpd handles a connection in one process
/// until login, then in a new process (a different pid) after it.
fn vsftpd_procs(log: &str) -> BTreeMap<u32, VsftpdProc> {
    let mut procs: BTreeMap<u32, VsftpdProc> = BTreeMap::new();
    for line in log.lines() {
        let Some(i) = line.find("[pid ") else {
            continue;
        };
        let rest = &line[i + 5..];
        let Some((pid, rest)) = rest.split_once(']') else {
            continue;
        };
        let Ok(pid) = pid.trim().parse::<u32>() else {
            continue;
        };
        let rest = rest.trim_start();
        let first_line = !procs.contains_key(&pid);
        let p = procs.entry(pid).or_default();
        if first_line {
            p.connect = rest.starts_with("CONNECT:");
            p.logged_in = rest.starts_with('[');
        }
        if let Some(j) = rest.find("FTP command: Client \"")
            && let Some((_, cmd)) = rest[j..].split_once("\", \"")
        {
            p.commands
                .push(cmd.strip_suffix('"').unwrap_or(cmd).to_string());
        }
    }
    procs
}

/// For an explicit-FTPS vsftpd: every connection's first command is
/// `AUTH TLS`, and every connection that logs in asks for protected data
/// connections (PROT P) first. Returns how many connections sent commands.
fn assert_tls_before_anything(name: &str, server: &FtpServer) -> usize {
    let log = server.commands_log();
    let procs = vsftpd_procs(&log);
    let mut sessions = 0;
    let mut protected_logins = 0;
    let mut transferring_sessions = 0;
    let is_verb = |c: &str, verbs: &[&str]| {
        let verb = c.split(' ').next().unwrap_or("").to_ascii_uppercase();
        verbs.contains(&verb.as_str())
    };
    for (pid, p) in &procs {
        if p.connect {
            let Some(first) = p.commands.first() else {
                continue;
            };
            sessions += 1;
            assert!(
                first.eq_ignore_ascii_case("AUTH TLS"),
                "{name}: connection of pid {pid} began with {first:?}, not AUTH TLS \
                 (commands: {:?})\n{log}",
                p.commands
            );
            if let Some(user) = p.commands.iter().position(|c| is_verb(c, &["USER"])) {
                assert!(
                    p.commands[..user]
                        .iter()
                        .any(|c| c.eq_ignore_ascii_case("PROT P")),
                    "{name}: pid {pid} logged in without PROT P: {:?}",
                    p.commands
                );
                protected_logins += 1;
            }
        } else if p.logged_in {
            // vsftpd serves the connection in a new process after login.
            if p.commands
                .iter()
                .any(|c| is_verb(c, &["LIST", "NLST", "MLSD", "RETR"]))
            {
                transferring_sessions += 1;
            }
        } else {
            assert!(
                p.commands.is_empty(),
                "{name}: pid {pid} sent commands but neither connected nor logged in: {p:?}"
            );
        }
    }
    assert!(
        transferring_sessions <= protected_logins,
        "{name}: {transferring_sessions} sessions transferred data but only \
         {protected_logins} logins followed PROT P\n{log}"
    );
    sessions
}

/// A certificate for CN/SAN `wronghost`, signed by `base`'s CA (whose key
/// TestCert::generate leaves next to it as ca.key).
fn wrong_host_cert(base: &TestCert, dir: &Path) -> TestCert {
    mkdir_p(dir);
    let ca_key = base.ca.with_file_name("ca.key");
    assert!(ca_key.exists(), "{} missing", ca_key.display());
    let key = dir.join("wronghost.key");
    let csr = dir.join("wronghost.csr");
    let cert = dir.join("wronghost.pem");
    let ext = dir.join("wronghost.ext");
    let limit = Duration::from_secs(60);
    run_ok(
        Command::new("openssl")
            .args(["req", "-new", "-nodes", "-newkey", "rsa:2048", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&csr)
            .args(["-subj", "/CN=wronghost"]),
        limit,
    );
    fs::write(
        &ext,
        "subjectAltName=DNS:wronghost\n\
         basicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\n\
         extendedKeyUsage=serverAuth\n",
    )
    .expect("write ext");
    run_ok(
        Command::new("openssl")
            .args(["x509", "-req", "-in"])
            .arg(&csr)
            .arg("-CA")
            .arg(&base.ca)
            .arg("-CAkey")
            .arg(&ca_key)
            .args(["-set_serial", "0x5eed0bad", "-days", "3", "-extfile"])
            .arg(&ext)
            .arg("-out")
            .arg(&cert),
        limit,
    );
    set_mode(&key, 0o600);
    set_mode(&cert, 0o644);
    TestCert {
        ca: base.ca.clone(),
        cert,
        key,
    }
}

/// Per-mount and super-block options of the mount at `mnt`.
fn mount_options(mnt: &Path) -> (String, String) {
    let text = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let want = mnt.as_os_str().as_bytes();
    for line in text.lines().rev() {
        let f: Vec<&str> = line.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            continue;
        };
        if f.len() > 5 && sep + 3 < f.len() && common::unescape_mountinfo(f[4]) == want {
            return (f[5].to_string(), f[sep + 3].to_string());
        }
    }
    panic!("{} not in /proc/self/mountinfo", mnt.display());
}

fn has_option(opts: &str, name: &str) -> bool {
    opts.split(',').any(|o| o == name)
}

/// Runs `args` as uid/gid 65534 with no supplementary groups.
fn as_nobody(args: &[&OsStr]) -> std::process::Output {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..]).uid(NOBODY).gid(NOBODY);
    run_timeout(&mut cmd, CMD_LIMIT)
}

fn setpriv_nobody(args: &[&OsStr]) -> std::process::Output {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .args(args);
    run_timeout(&mut cmd, CMD_LIMIT)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn assert_no_secret(what: &str, hay: &str) {
    for secret in [PW, PW_WRONG, PW_CORE] {
        assert!(
            !hay.contains(secret),
            "{what} contains the password ({secret:?}):\n{hay}"
        );
    }
}

/// Lines of `stderr` that warn about `list`'s permissions.
fn permission_warnings(stderr: &str, list: &Path) -> Vec<String> {
    let list = list.display().to_string();
    stderr
        .lines()
        .filter(|l| {
            let lower = l.to_ascii_lowercase();
            l.contains(&list)
                && (lower.contains("chmod")
                    || lower.contains("permission")
                    || lower.contains("readable"))
        })
        .map(str::to_string)
        .collect()
}

/// A pyftpdlib server whose one account is `keeper` / [`PW`].
fn password_server(dir: &TempDir) -> FtpServer {
    let root = dir.join("pyroot");
    write_file(&root.join("vault/ledger.txt"), b"balance: 42\n");
    write_file(&root.join("vault/deep/notes.txt"), b"notes\n");
    FtpServer::pyftpdlib(&root, PW_USER, PW)
}

fn password_line(server: &FtpServer, pass_field: &str) -> String {
    format!("{},{PW_USER},{pass_field},0\n", server.addr())
}

/// The login was accepted (so the password really travelled).
fn assert_logged_in(server: &FtpServer) {
    let ex = server.exchanges();
    assert!(
        ex.iter()
            .any(|e| e.verb() == "PASS" && e.reply == Some(230)),
        "no successful login on the pyftpdlib server:\n{}",
        server.commands_log()
    );
}

// ---------------------------------------------------------------------------
// (a) read-only

#[test]
fn every_write_call_answers_erofs_and_servers_see_no_write_command() {
    let dir = TempDir::new("erofs");
    let cert = TestCert::generate(&dir.join("cert"));
    let r1 = dir.join("r1");
    write_file(&r1.join("pub/readme.txt"), b"readme from vsftpd\n");
    mkdir_p(&r1.join("pub/emptydir"));
    write_file(&r1.join("docs/guide.txt"), b"guide\n");
    let r2 = dir.join("r2");
    write_file(&r2.join("data/report.txt"), b"report from pyftpdlib\n");
    mkdir_p(&r2.join("data/sub"));
    write_file(&r2.join("top.txt"), b"top\n");
    let r3 = dir.join("r3");
    write_file(&r3.join("tls/secure.txt"), b"over FTPS\n");
    mkdir_p(&r3.join("tls/inner"));

    let vs = FtpServer::vsftpd(&r1);
    let py = FtpServer::pyftpdlib(&r2, "writer", "wr1te-pass");
    let tls = FtpServer::vsftpd_tls(&r3, &cert);
    let roots = [&r1, &r2, &r3];
    let before: Vec<_> = roots.iter().map(|r| snapshot(r)).collect();

    let list = format!("{}\n{}\n{}\n", vs.line(), py.line(), tls.line());
    let m = Mount::start(&list, &MountOptions::ca(&cert.ca));
    // Touch every server first, so each has logged in and listed.
    let files = ["pub/readme.txt", "data/report.txt", "tls/secure.txt"];
    let contents: Vec<Vec<u8>> = files.iter().map(|f| read(&m.join(f))).collect();
    assert_eq!(contents[0], b"readme from vsftpd\n");
    assert_eq!(contents[1], b"report from pyftpdlib\n");
    assert_eq!(contents[2], b"over FTPS\n");
    let dirs = ["pub/emptydir", "data/sub", "tls/inner", "docs"];
    for d in dirs {
        assert!(fs::metadata(m.join(d)).expect("stat dir").is_dir(), "{d}");
    }

    let mut v = Verdicts::default();
    let times = [
        libc::timeval {
            tv_sec: 1_000_000,
            tv_usec: 0,
        },
        libc::timeval {
            tv_sec: 1_000_000,
            tv_usec: 0,
        },
    ];
    for (i, rel) in files.iter().enumerate() {
        let f = m.join(rel);
        let c = cpath(&f);
        let new = |tag: &str| m.join(format!("{}.{tag}{i}", rel));
        for (what, flags) in [
            ("open O_WRONLY", libc::O_WRONLY),
            ("open O_RDWR", libc::O_RDWR),
            ("open O_WRONLY|O_APPEND", libc::O_WRONLY | libc::O_APPEND),
            ("open O_RDWR|O_APPEND", libc::O_RDWR | libc::O_APPEND),
            ("open O_WRONLY|O_TRUNC", libc::O_WRONLY | libc::O_TRUNC),
            ("open O_RDONLY|O_TRUNC", libc::O_RDONLY | libc::O_TRUNC),
        ] {
            v.expect_erofs(&format!("{what} {rel}"), open_raw(&f, flags));
        }
        for (what, flags) in [
            ("create", libc::O_CREAT | libc::O_WRONLY | libc::O_EXCL),
            ("creat", libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC),
            ("open O_CREAT|O_RDONLY", libc::O_CREAT | libc::O_RDONLY),
        ] {
            v.expect_erofs(&format!("{what} next to {rel}"), open_raw(&new("c"), flags));
        }
        let fifo = cpath(&new("fifo"));
        // SAFETY: valid path; mode/dev are plain integers.
        let rc = unsafe { libc::mknod(fifo.as_ptr(), libc::S_IFIFO | 0o644, 0) };
        v.expect_erofs(&format!("mknod fifo next to {rel}"), sys(rc));
        // SAFETY: valid paths.
        let rc = unsafe { libc::unlink(c.as_ptr()) };
        v.expect_erofs(&format!("unlink {rel}"), sys(rc));
        let to = cpath(&new("renamed"));
        // SAFETY: valid paths.
        let rc = unsafe { libc::rename(c.as_ptr(), to.as_ptr()) };
        v.expect_erofs(&format!("rename {rel}"), sys(rc));
        // Across servers too (the target directory is another server's).
        let across = cpath(&m.join(format!("docs/moved{i}")));
        // SAFETY: valid paths.
        let rc = unsafe { libc::rename(c.as_ptr(), across.as_ptr()) };
        v.expect_erofs(&format!("rename {rel} to docs/"), sys(rc));
        let hard = cpath(&new("hard"));
        // SAFETY: valid paths.
        let rc = unsafe { libc::link(c.as_ptr(), hard.as_ptr()) };
        v.expect_erofs(&format!("link {rel}"), sys(rc));
        let soft = cpath(&new("soft"));
        let target = cstr("readme.txt");
        // SAFETY: valid paths.
        let rc = unsafe { libc::symlink(target.as_ptr(), soft.as_ptr()) };
        v.expect_erofs(&format!("symlink next to {rel}"), sys(rc));
        // SAFETY: valid path.
        let rc = unsafe { libc::chmod(c.as_ptr(), 0o600) };
        v.expect_erofs(&format!("chmod {rel}"), sys(rc));
        // SAFETY: valid path.
        let rc = unsafe { libc::chown(c.as_ptr(), NOBODY, NOBODY) };
        v.expect_erofs(&format!("chown {rel}"), sys(rc));
        // SAFETY: valid path.
        let rc = unsafe { libc::truncate(c.as_ptr(), 0) };
        v.expect_erofs(&format!("truncate {rel}"), sys(rc));
        // SAFETY: valid path and a two-element timeval array.
        let rc = unsafe { libc::utimes(c.as_ptr(), times.as_ptr()) };
        v.expect_erofs(&format!("utimes {rel}"), sys(rc));
        // SAFETY: valid path; null times means "now".
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) };
        v.expect_erofs(&format!("utimensat(now) {rel}"), sys(rc));
        let name = cstr("user.ftpcircle");
        // SAFETY: valid path, name and a 1-byte value.
        let rc = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
        v.expect_erofs(&format!("setxattr {rel}"), sys(rc));
        // SAFETY: valid path and name.
        let rc = unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) };
        v.expect_erofs(&format!("removexattr {rel}"), sys(rc));

        // The same through a descriptor opened read-only.
        let file = fs::File::open(&f).expect("open read-only");
        let fd = std::os::fd::AsRawFd::as_raw_fd(&file);
        // SAFETY: fd is open for the lifetime of `file`.
        let rc = unsafe { libc::fchmod(fd, 0o600) };
        v.expect_erofs(&format!("fchmod {rel}"), sys(rc));
        // SAFETY: as above.
        let rc = unsafe { libc::fchown(fd, NOBODY, NOBODY) };
        v.expect_erofs(&format!("fchown {rel}"), sys(rc));
        // SAFETY: as above; null times means "now".
        let rc = unsafe { libc::futimens(fd, std::ptr::null()) };
        v.expect_erofs(&format!("futimens {rel}"), sys(rc));
        // SAFETY: as above, with a valid name and 1-byte value.
        let rc = unsafe { libc::fsetxattr(fd, name.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
        v.expect_erofs(&format!("fsetxattr {rel}"), sys(rc));
        // SAFETY: as above.
        let rc = unsafe { libc::fremovexattr(fd, name.as_ptr()) };
        v.expect_erofs(&format!("fremovexattr {rel}"), sys(rc));
        // std's write-side APIs agree.
        v.expect_erofs(
            &format!("std create next to {rel}"),
            fs::File::create(new("std")),
        );
        v.expect_erofs(
            &format!("std append {rel}"),
            fs::OpenOptions::new().append(true).open(&f),
        );
        v.expect_erofs(
            &format!("std set_permissions {rel}"),
            fs::set_permissions(&f, fs::Permissions::from_mode(0o777)),
        );
    }
    for (i, rel) in dirs.iter().enumerate() {
        let d = m.join(rel);
        let c = cpath(&d);
        let sub = cpath(&d.join("newdir"));
        // SAFETY: valid path.
        let rc = unsafe { libc::mkdir(sub.as_ptr(), 0o755) };
        v.expect_erofs(&format!("mkdir in {rel}"), sys(rc));
        // SAFETY: valid path.
        let rc = unsafe { libc::rmdir(c.as_ptr()) };
        v.expect_erofs(&format!("rmdir {rel}"), sys(rc));
        let to = cpath(&m.join(format!("renamed-dir{i}")));
        // SAFETY: valid paths.
        let rc = unsafe { libc::rename(c.as_ptr(), to.as_ptr()) };
        v.expect_erofs(&format!("rename dir {rel}"), sys(rc));
        // SAFETY: valid path.
        let rc = unsafe { libc::chmod(c.as_ptr(), 0o700) };
        v.expect_erofs(&format!("chmod dir {rel}"), sys(rc));
        // SAFETY: valid path.
        let rc = unsafe { libc::chown(c.as_ptr(), NOBODY, NOBODY) };
        v.expect_erofs(&format!("chown dir {rel}"), sys(rc));
        // SAFETY: valid path; null times means "now".
        let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) };
        v.expect_erofs(&format!("utimensat dir {rel}"), sys(rc));
        let name = cstr("user.ftpcircle");
        // SAFETY: valid path, name and a 1-byte value.
        let rc = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
        v.expect_erofs(&format!("setxattr dir {rel}"), sys(rc));
        // SAFETY: valid path and name.
        let rc = unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) };
        v.expect_erofs(&format!("removexattr dir {rel}"), sys(rc));
        v.expect_erofs(
            &format!("create in {rel}"),
            open_raw(&d.join("new.txt"), libc::O_CREAT | libc::O_WRONLY),
        );
    }
    // At the root of the mount.
    let root = m.path();
    v.expect_erofs("mkdir at root", fs::create_dir(root.join("newtop")));
    v.expect_erofs("create at root", fs::File::create(root.join("new.txt")));
    v.expect_erofs(
        "chmod root",
        fs::set_permissions(root, fs::Permissions::from_mode(0o700)),
    );
    let rc = {
        let c = cpath(root);
        // SAFETY: valid path.
        unsafe { libc::chown(c.as_ptr(), NOBODY, NOBODY) }
    };
    v.expect_erofs("chown root", sys(rc));

    assert!(v.checked > 100, "only {} calls checked", v.checked);
    assert!(
        v.wrong.is_empty(),
        "{} of {} write-side calls did not answer EROFS:\n{}",
        v.wrong.len(),
        v.checked,
        v.wrong.join("\n")
    );

    // Nothing changed, neither in the mount nor on the servers' disks.
    for (rel, want) in files.iter().zip(&contents) {
        assert_eq!(&read(&m.join(rel)), want, "{rel} changed");
    }
    let top = names(m.path());
    let want: BTreeSet<String> = ["data", "docs", "pub", "tls", "top.txt"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(top, want, "top level of the mount changed");
    for (r, b) in roots.iter().zip(&before) {
        assert_eq!(&snapshot(r), b, "{} changed on disk", r.display());
    }
    drop(m);

    for (name, server) in [("vsftpd", &vs), ("pyftpdlib", &py), ("vsftpd FTPS", &tls)] {
        assert_no_write_commands(name, server);
    }
    assert_tls_before_anything("vsftpd FTPS", &tls);
}

// ---------------------------------------------------------------------------
// (b) TLS

#[test]
fn ftps_without_ca_file_is_refused_with_certificate_error_then_works_with_it() {
    let dir = TempDir::new("tls-ca");
    let cert = TestCert::generate(&dir.join("cert"));
    let plain_root = dir.join("plain");
    write_file(&plain_root.join("plain/hello.txt"), b"hello in clear\n");
    let tls_root = dir.join("tls");
    write_file(&tls_root.join("secure/secret.txt"), b"only over TLS\n");
    let plain = FtpServer::vsftpd(&plain_root);
    let tls = FtpServer::vsftpd_tls(&tls_root, &cert);
    let label = format!("localhost:{}", tls.port);
    let list = format!("{}\n{label},,,1\n", plain.line());

    // Without --ca-file: the test CA is unknown, the server must be refused.
    let mut run = Mount::start(&list, &bare(0o600).arg("-v"));
    assert_eq!(read(&run.join("plain/hello.txt")), b"hello in clear\n");
    let top = names(&run.mnt);
    assert!(
        !top.contains("secure"),
        "files of an unverified server are listed: {top:?}"
    );
    let err = run.launch_output();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(&label)).collect();
    assert!(
        !lines.is_empty(),
        "stderr does not name the FTPS server {label}:\n{err}"
    );
    eprintln!("error lines naming {label}: {lines:#?}");
    let lower = lines.join("\n").to_ascii_lowercase();
    assert!(
        lower.contains("certificate")
            || lower.contains("unknownissuer")
            || lower.contains("unknown issuer"),
        "the error for {label} does not mention the certificate:\n{err}"
    );
    // Retrying later must not fall back to anything weaker either.
    assert!(fs::metadata(run.join("secure")).is_err());
    run.unmount();
    drop(run);
    // The server saw the attempt (so the count below is not vacuous) ...
    assert!(
        tls.commands().iter().any(|c| c.starts_with("AUTH ")),
        "the FTPS server's log shows no connection attempt:\n{}",
        tls.commands_log()
    );
    // ... and served nothing.
    assert_eq!(
        tls.listing_count(),
        0,
        "the unverified server served a listing:\n{}",
        tls.commands_log()
    );

    // With --ca-file: readable.
    let m = Mount::start(&list, &MountOptions::ca(&cert.ca));
    assert_eq!(read(&m.join("secure/secret.txt")), b"only over TLS\n");
    assert_eq!(read(&m.join("plain/hello.txt")), b"hello in clear\n");
    drop(m);

    let sessions = assert_tls_before_anything("vsftpd FTPS", &tls);
    assert!(sessions >= 2, "only {sessions} FTPS connections logged");
    assert_no_write_commands("vsftpd FTPS", &tls);
}

#[test]
fn ftps_server_never_sees_plaintext_commands_in_any_session() {
    let dir = TempDir::new("tls-sessions");
    let cert = TestCert::generate(&dir.join("cert"));
    let root = dir.join("root");
    let mut expected = Vec::new();
    for d in 0..4 {
        for f in 0..3 {
            let rel = format!("d{d}/f{f}.txt");
            let data = format!("file {d}/{f}\n").repeat(100 + d * 10 + f);
            write_file(&root.join(&rel), data.as_bytes());
            expected.push((rel, data.into_bytes()));
        }
    }
    let tls = FtpServer::vsftpd_tls(&root, &cert);
    let list = format!("localhost:{},,,1\n", tls.port);
    let m = Mount::start(
        &list,
        &MountOptions::ca(&cert.ca).arg("--cache-ttl").arg("0"),
    );
    // Parallel readers, so the pool opens several connections.
    thread::scope(|s| {
        for chunk in expected.chunks(3) {
            let m = &m;
            s.spawn(move || {
                for _ in 0..3 {
                    for (rel, data) in chunk {
                        assert_eq!(&read(&m.join(rel)), data, "{rel}");
                    }
                }
            });
        }
    });
    drop(m);
    let sessions = assert_tls_before_anything("vsftpd FTPS", &tls);
    assert!(sessions >= 1, "no FTPS connection logged");
    assert!(
        tls.count_verb("RETR") >= expected.len(),
        "fewer RETRs than files:\n{}",
        tls.commands_log()
    );
    assert_no_write_commands("vsftpd FTPS", &tls);
}

#[test]
fn certificate_for_another_host_name_is_refused() {
    let dir = TempDir::new("tls-name");
    let ca = TestCert::generate(&dir.join("cert"));
    let wrong = wrong_host_cert(&ca, &dir.join("wrong"));
    let plain_root = dir.join("plain");
    write_file(&plain_root.join("plain/hello.txt"), b"hello\n");
    let tls_root = dir.join("tls");
    write_file(
        &tls_root.join("wrongsrv/secret.txt"),
        b"must not be listed\n",
    );
    let plain = FtpServer::vsftpd(&plain_root);
    let tls = FtpServer::vsftpd_tls(&tls_root, &wrong);
    let label = format!("localhost:{}", tls.port);
    let list = format!("{}\n{label},,,1\n", plain.line());

    let run = Mount::start(
        &list,
        &bare(0o600).arg("--ca-file").arg_os(&ca.ca).arg("-v"),
    );
    assert_eq!(read(&run.join("plain/hello.txt")), b"hello\n");
    let top = names(&run.mnt);
    assert!(
        !top.contains("wrongsrv"),
        "files of a server with a certificate for another name are listed: {top:?}"
    );
    assert!(fs::metadata(run.join("wrongsrv/secret.txt")).is_err());
    let err = run.launch_output();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains(&label)).collect();
    assert!(
        !lines.is_empty(),
        "stderr does not name the FTPS server {label}:\n{err}"
    );
    eprintln!("error lines naming {label}: {lines:#?}");
    let lower = lines.join("\n").to_ascii_lowercase();
    assert!(
        lower.contains("notvalidforname")
            || lower.contains("not valid for name")
            || lower.contains("not valid for")
            || lower.contains("name mismatch")
            || lower.contains("does not match"),
        "the error for {label} does not say the name does not match:\n{err}"
    );
    drop(run);

    let ex = tls.exchanges();
    // The server saw the connection (so the checks below are not vacuous).
    assert!(
        ex.iter()
            .any(|e| e.command.eq_ignore_ascii_case("AUTH TLS")),
        "the FTPS server's log shows no connection attempt:\n{}",
        tls.commands_log()
    );
    let after_tls: Vec<&str> = ex
        .iter()
        .filter(|e| !e.command.eq_ignore_ascii_case("AUTH TLS"))
        .map(|e| e.command.as_str())
        .collect();
    assert!(
        after_tls.is_empty(),
        "commands reached the server past a failed verification: {after_tls:?}"
    );
    assert_eq!(tls.listing_count(), 0);
    assert_tls_before_anything("vsftpd FTPS (wrong name)", &tls);
}

// ---------------------------------------------------------------------------
// (c) passwords

#[test]
fn password_is_in_no_log_at_any_verbosity() {
    let dir = TempDir::new("pw-logs");
    let server = password_server(&dir);
    let list = password_line(&server, &csv_field(PW));
    assert!(list.contains("\"S3cr3t-p4ss,\"\"x\"\"\""), "{list}");

    // -vvv into a log file.
    let log = dir.join("vvv.log");
    let mut run = Mount::start(
        &list,
        &bare(0o600).arg("-vvv").arg("--log-file").arg_os(&log),
    );
    assert_eq!(read(&run.join("vault/ledger.txt")), b"balance: 42\n");
    assert_eq!(read(&run.join("vault/deep/notes.txt")), b"notes\n");
    run.unmount();
    let log_text = fs::read_to_string(&log).expect("read log");
    assert!(
        log_text.contains("TRACE") || log_text.contains("DEBUG"),
        "-vvv log has no debug/trace lines:\n{log_text}"
    );
    assert_no_secret("-vvv --log-file", &log_text);
    assert_no_secret("stderr of -vvv --log-file", &run.launch_output());
    drop(run);

    // RUST_LOG=trace into a log file.
    let log = dir.join("trace.log");
    let mut run = Mount::start(
        &list,
        &bare(0o600)
            .env("RUST_LOG", "trace")
            .arg("--log-file")
            .arg_os(&log),
    );
    assert_eq!(read(&run.join("vault/ledger.txt")), b"balance: 42\n");
    run.unmount();
    let log_text = fs::read_to_string(&log).expect("read log");
    assert!(
        log_text.contains("DEBUG"),
        "RUST_LOG=trace log has no debug lines:\n{log_text}"
    );
    assert_no_secret("RUST_LOG=trace --log-file", &log_text);
    assert_no_secret("stderr of RUST_LOG=trace --log-file", &run.launch_output());
    drop(run);

    // RUST_LOG=trace -vvv in the foreground, everything on stderr.
    let mut run = Mount::foreground(&list, &bare(0o600).env("RUST_LOG", "trace").arg("-vvv"));
    assert_eq!(read(&run.join("vault/ledger.txt")), b"balance: 42\n");
    assert_eq!(read(&run.join("vault/deep/notes.txt")), b"notes\n");
    run.unmount();
    let err = run.launch_output();
    assert!(err.contains("DEBUG"), "no debug lines on stderr:\n{err}");
    assert_no_secret("stderr of RUST_LOG=trace -vvv -f", &err);
    drop(run);

    assert_logged_in(&server);
    assert_no_write_commands("pyftpdlib", &server);
}

#[test]
fn wrong_password_error_names_server_but_not_password() {
    let dir = TempDir::new("pw-wrong");
    let server = password_server(&dir);
    let other_root = dir.join("other");
    write_file(&other_root.join("other/ok.txt"), b"ok\n");
    let other = FtpServer::vsftpd(&other_root);
    let label = server.addr();
    let list = format!(
        "{}\n{}",
        other.line(),
        password_line(&server, &csv_field(PW_WRONG))
    );

    // Default log target (stderr), most verbose.
    let run = Mount::start(&list, &bare(0o600).env("RUST_LOG", "trace").arg("-vvv"));
    assert_eq!(read(&run.join("other/ok.txt")), b"ok\n");
    assert!(
        !names(&run.mnt).contains("vault"),
        "listed a server we could not log in to"
    );
    let err = run.launch_output();
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.contains(&label) && !l.contains(" TRACE "))
        .collect();
    assert!(
        !lines.is_empty(),
        "no error on stderr names the server {label}:\n{err}"
    );
    eprintln!("error lines naming {label}: {lines:#?}");
    let lower = lines.join("\n").to_ascii_lowercase();
    assert!(
        lower.contains("login") || lower.contains("530") || lower.contains("auth"),
        "the error for {label} does not say the login failed:\n{err}"
    );
    assert_no_secret("stderr with a wrong password", &err);
    drop(run);

    // And in a log file.
    let log = dir.join("wrong.log");
    let mut run = Mount::start(
        &list,
        &bare(0o600).arg("-vvv").arg("--log-file").arg_os(&log),
    );
    let _ = fs::metadata(run.join("vault"));
    run.unmount();
    assert_no_secret(
        "log with a wrong password",
        &fs::read_to_string(&log).unwrap_or_default(),
    );
    assert_no_secret(
        "stderr with a wrong password and a log file",
        &run.launch_output(),
    );
    drop(run);

    let ex = server.exchanges();
    assert!(
        ex.iter()
            .any(|e| e.verb() == "PASS" && e.reply == Some(530)),
        "the server did not refuse a password:\n{}",
        server.commands_log()
    );
    assert!(
        !ex.iter()
            .any(|e| e.verb() == "PASS" && e.reply == Some(230))
    );
}

#[test]
fn password_is_on_no_command_line() {
    let dir = TempDir::new("pw-ps");
    let server = password_server(&dir);
    let list = password_line(&server, &csv_field(PW));
    let run = Mount::start(&list, &bare(0o600));
    assert_eq!(read(&run.join("vault/ledger.txt")), b"balance: 42\n");
    assert_logged_in(&server);

    let daemons = daemon_pids(&run.mnt);
    assert!(!daemons.is_empty(), "no daemon serves the mount");
    for pid in &daemons {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        assert!(
            !text(&cmdline).contains(PW_CORE),
            "daemon {pid}'s command line contains the password"
        );
    }
    // The tests' own pyftpdlib servers (this one and those of tests running
    // in parallel, also from other checkouts on the same machine) get the
    // password as an argument: that is the harness, not the program under test.
    let is_harness = |cmdline: &str| cmdline.contains("/tests/pyftpd.py");
    let mut leaks = Vec::new();
    for e in fs::read_dir("/proc").expect("/proc").flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(cmdline) = fs::read(e.path().join("cmdline"))
            && text(&cmdline).contains(PW_CORE)
            && !is_harness(&text(&cmdline))
        {
            leaks.push(format!("{pid}: {}", text(&cmdline).replace('\0', " ")));
        }
    }
    assert!(leaks.is_empty(), "password on command lines: {leaks:?}");
    let ps = run_ok(Command::new("ps").args(["-eo", "pid=,args="]), CMD_LIMIT);
    let leaks: Vec<String> = text(&ps.stdout)
        .lines()
        .filter(|l| l.contains(PW_CORE) && !is_harness(l))
        .map(str::to_string)
        .collect();
    assert!(leaks.is_empty(), "password in `ps -eo args`: {leaks:?}");
}

#[test]
fn world_readable_serverlist_with_password_is_warned_about() {
    let dir = TempDir::new("pw-mode");
    let server = password_server(&dir);
    let list = password_line(&server, &csv_field(PW));

    for mode in [0o644, 0o640, 0o604] {
        let run = Mount::start(&list, &bare(mode));
        assert_eq!(read(&run.join("vault/ledger.txt")), b"balance: 42\n");
        let err = run.launch_output();
        let warnings = permission_warnings(&err, &run.serverlist);
        assert!(
            !warnings.is_empty(),
            "mode {mode:03o}: no warning on stderr naming {} and its permissions:\n{err}",
            run.serverlist.display()
        );
        assert_no_secret("the permission warning", &err);
    }

    let run = Mount::start(&list, &bare(0o600));
    assert_eq!(read(&run.join("vault/ledger.txt")), b"balance: 42\n");
    let err = run.launch_output();
    let warnings = permission_warnings(&err, &run.serverlist);
    assert!(
        warnings.is_empty(),
        "mode 600: unexpected permission warning: {warnings:?}"
    );
}

#[test]
fn world_readable_serverlist_warning_reaches_stderr_with_log_file() {
    // With --log-file the user still runs the command in a terminal; a
    // warning about exposed passwords only in the log file goes unseen.
    let dir = TempDir::new("pw-mode-log");
    let server = password_server(&dir);
    let list = password_line(&server, &csv_field(PW));
    let log = dir.join("mode.log");
    let run = Mount::start(&list, &bare(0o644).arg("--log-file").arg_os(&log));
    assert_eq!(read(&run.join("vault/ledger.txt")), b"balance: 42\n");
    let err = run.launch_output();
    let log_text = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !permission_warnings(&err, &run.serverlist).is_empty(),
        "with --log-file the permission warning is not on stderr\nstderr:\n{err}\nlog:\n{log_text}"
    );
}

#[test]
fn env_password_reference_works_without_permission_warning() {
    let dir = TempDir::new("pw-env");
    let server = password_server(&dir);
    let list = password_line(&server, &format!("env:{PW_ENV}"));
    assert!(!list.contains(PW_CORE));
    let run = Mount::start(&list, &bare(0o644).env(PW_ENV, PW).arg("-vvv"));
    assert_eq!(read(&run.join("vault/ledger.txt")), b"balance: 42\n");
    assert_eq!(read(&run.join("vault/deep/notes.txt")), b"notes\n");
    let err = run.launch_output();
    let warnings = permission_warnings(&err, &run.serverlist);
    assert!(
        warnings.is_empty(),
        "warned about a list that holds only a reference: {warnings:?}"
    );
    assert_no_secret("stderr with an env: reference", &err);
    for pid in daemon_pids(&run.mnt) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        assert!(!text(&cmdline).contains(PW_CORE));
    }
    drop(run);
    assert_logged_in(&server);
}

// ---------------------------------------------------------------------------
// (d) who can see the mount

fn one_file_server(dir: &TempDir) -> FtpServer {
    let root = dir.join("root");
    write_file(&root.join("pub/visible.txt"), b"for everyone?\n");
    FtpServer::vsftpd(&root)
}

#[test]
fn other_users_cannot_see_the_mount_by_default() {
    let dir = TempDir::new("private");
    let server = one_file_server(&dir);
    let m = Mount::start(&format!("{}\n", server.line()), &MountOptions::default());
    let (per_mount, super_opts) = mount_options(m.path());
    assert!(
        !has_option(&per_mount, "allow_other") && !has_option(&super_opts, "allow_other"),
        "allow_other without -o allow_other: {per_mount} / {super_opts}"
    );
    assert!(has_option(&per_mount, "ro"), "not mounted ro: {per_mount}");

    // Control: nobody can reach the directory that holds the mount point,
    // so a failure below is the mount's doing.
    let parent = m.path().parent().expect("parent");
    let out = as_nobody(&[OsStr::new("ls"), parent.as_os_str()]);
    assert!(
        out.status.success(),
        "uid 65534 cannot list {}: {}",
        parent.display(),
        text(&out.stderr)
    );

    let file = m.join("pub/visible.txt");
    for out in [
        setpriv_nobody(&[OsStr::new("ls"), m.path().as_os_str()]),
        as_nobody(&[OsStr::new("ls"), m.path().as_os_str()]),
        as_nobody(&[OsStr::new("cat"), file.as_os_str()]),
        as_nobody(&[OsStr::new("stat"), m.path().as_os_str()]),
    ] {
        assert!(!out.status.success(), "uid 65534 got in");
        let err = text(&out.stderr);
        assert!(err.contains("Permission denied"), "{err}");
        assert!(!text(&out.stdout).contains("visible"));
    }
    // The owner (root) still can.
    assert_eq!(read(&file), b"for everyone?\n");
}

#[test]
fn allow_other_lets_other_users_read() {
    let dir = TempDir::new("allow-other");
    let server = one_file_server(&dir);
    let m = Mount::start(
        &format!("{}\n", server.line()),
        &MountOptions::default().arg("-o").arg("allow_other"),
    );
    let (per_mount, super_opts) = mount_options(m.path());
    assert!(
        has_option(&super_opts, "allow_other") || has_option(&per_mount, "allow_other"),
        "-o allow_other not in mountinfo: {per_mount} / {super_opts}"
    );
    let out = setpriv_nobody(&[OsStr::new("ls"), m.join("pub").as_os_str()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("visible.txt"));
    let file = m.join("pub/visible.txt");
    let out = as_nobody(&[OsStr::new("cat"), file.as_os_str()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(out.stdout, b"for everyone?\n");
    // Still read-only for them.
    let out = as_nobody(&[OsStr::new("touch"), file.as_os_str()]);
    assert!(!out.status.success());
}
