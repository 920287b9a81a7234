//! Seeing into the merge, over real mounts and real servers: the provenance xattrs, the
//! control directory (absent from every listing, present by path), the status files through
//! a server going down and coming back, every hidden copy through its server's view, and
//! `ftpcircle-fs check` against good, down, wrong-password and bad-certificate servers.

mod common;

use common::{
    BIN, FtpServer, Mount, MountOptions, TempDir, TestCert, pick_port, run_timeout, set_mtime,
    utc_secs, write_file,
};
use std::ffi::CString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const TIMEOUT: u64 = 2;
/// A read of a file only a down server holds must fail, not hang: well under one listing of a
/// silent server (3 x timeout + 2 s).
const NO_HANG: Duration = Duration::from_secs(3 * TIMEOUT + 2);
/// A server's change of state shows within this (probes back off up to 30 s).
const STATE_LIMIT: Duration = Duration::from_secs(45);
const CMD_LIMIT: Duration = Duration::from_secs(60);
/// pyftpdlib answers a wrong password after 3 s: the check waits longer than that.
const CHECK_TIMEOUT: u64 = 6;

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in path")
}

/// getxattr(2): the value, or the errno.
fn getxattr(p: &Path, name: &str) -> Result<String, i32> {
    let (path, name) = (c_path(p), CString::new(name).expect("name"));
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(n as usize);
    Ok(String::from_utf8(buf).expect("utf-8 value"))
}

/// listxattr(2): the names.
fn listxattr(p: &Path) -> Result<Vec<String>, i32> {
    let path = c_path(p);
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: a valid NUL-terminated path and a buffer of the length given.
    let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error().raw_os_error().unwrap_or(0));
    }
    buf.truncate(n as usize);
    Ok(buf
        .split(|&b| b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

fn setxattr(p: &Path, name: &str) -> i32 {
    let (path, name) = (c_path(p), CString::new(name).expect("name"));
    // SAFETY: valid NUL-terminated strings and a value of the length given.
    let r = unsafe { libc::setxattr(path.as_ptr(), name.as_ptr(), b"x".as_ptr().cast(), 1, 0) };
    if r < 0 {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

fn removexattr(p: &Path, name: &str) -> i32 {
    let (path, name) = (c_path(p), CString::new(name).expect("name"));
    // SAFETY: valid NUL-terminated strings.
    let r = unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) };
    if r < 0 {
        io::Error::last_os_error().raw_os_error().unwrap_or(0)
    } else {
        0
    }
}

fn read(p: &Path) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(p)?.read_to_end(&mut buf)?;
    Ok(buf)
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()))
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// A vsftpd serving `files`, each dated 2024-01-15 12:00 UTC (so copies of the same size on
/// two servers are mirrors).
struct Vs {
    srv: FtpServer,
    _dir: TempDir,
}

fn vsftpd(files: &[(&str, &[u8])]) -> Vs {
    let dir = TempDir::new("vis-vs");
    let root = dir.subdir("root");
    for (p, data) in files {
        write_file(&root.join(p), data);
        set_mtime(&root.join(p), utc_secs(2024, 1, 15, 12, 0, 0));
    }
    Vs {
        srv: FtpServer::vsftpd(&root),
        _dir: dir,
    }
}

/// The `"state"` of `label` in status.json.
fn state_of(json: &str, label: &str) -> Option<String> {
    let row = json
        .lines()
        .find(|l| l.contains(&format!("\"label\": \"{label}\"")))?;
    let rest = &row[row.find("\"state\": \"")? + 10..];
    Some(rest[..rest.find('"')?].to_string())
}

/// The `"view"` of `label` in status.json.
fn view_of(json: &str, label: &str) -> Option<String> {
    let row = json
        .lines()
        .find(|l| l.contains(&format!("\"label\": \"{label}\"")))?;
    let rest = &row[row.find("\"view\": \"")? + 9..];
    Some(rest[..rest.find('"')?].to_string())
}

fn status_json(m: &Mount) -> String {
    String::from_utf8(read(&m.join(".ftpcircle/status.json")).expect("read status.json"))
        .expect("utf-8")
}

fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    for _ in 0..(limit.as_millis() / 250 + 1) {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    cond()
}

#[test]
fn xattrs_control_directory_and_hidden_copies() {
    let a = vsftpd(&[
        ("docs/only-a.txt", b"only on a\n"),
        ("docs/animals.txt", b"short\n"),
        ("pub/mirror.bin", b"0123456789"),
    ]);
    let b = vsftpd(&[("pub/mirror.bin", b"0123456789")]);
    let hidden = b"the bigger copy on c, hidden in the merged tree\n";
    let c = vsftpd(&[
        ("docs/animals.txt", hidden),
        (".ftpcircle/real.txt", b"a real entry of that name\n"),
    ]);
    let (la, lb, lc) = (a.srv.addr(), b.srv.addr(), c.srv.addr());
    let list = format!("{}\n{}\n{}\n", a.srv.line(), b.srv.line(), c.srv.line());
    let m = Mount::start(&list, &MountOptions::default());

    // A file on one server.
    let only = m.join("docs/only-a.txt");
    assert_eq!(getxattr(&only, "user.ftpcircle.servers"), Ok(la.clone()));
    assert_eq!(getxattr(&only, "user.ftpcircle.mirrors"), Ok(la.clone()));
    assert_eq!(
        getxattr(&only, "user.ftpcircle.url"),
        Ok(format!("ftp://{la}/docs/only-a.txt"))
    );
    assert_eq!(
        getxattr(&only, "user.ftpcircle.conflicts"),
        Err(libc::ENODATA)
    );
    assert_eq!(
        listxattr(&only),
        Ok(vec![
            "user.ftpcircle.servers".into(),
            "user.ftpcircle.mirrors".into(),
            "user.ftpcircle.url".into()
        ])
    );
    // A mirrored file: both servers serve it.
    let mirror = m.join("pub/mirror.bin");
    assert_eq!(
        getxattr(&mirror, "user.ftpcircle.servers"),
        Ok(format!("{la}\n{lb}"))
    );
    assert_eq!(
        getxattr(&mirror, "user.ftpcircle.mirrors"),
        Ok(format!("{la}\n{lb}"))
    );
    // A conflicting file: a's copy is shown, c's is hidden and described.
    let animals = m.join("docs/animals.txt");
    assert_eq!(read(&animals).expect("read animals"), b"short\n");
    assert_eq!(
        getxattr(&animals, "user.ftpcircle.servers"),
        Ok(format!("{la}\n{lc}"))
    );
    assert_eq!(getxattr(&animals, "user.ftpcircle.mirrors"), Ok(la.clone()));
    // The time as c's listing gives it: vsftpd lists a file of 2024 to the day.
    let conflicts = getxattr(&animals, "user.ftpcircle.conflicts").expect("conflicts");
    let fields: Vec<&str> = conflicts.split('\t').collect();
    assert_eq!(fields.len(), 4, "{conflicts:?}");
    assert_eq!(
        fields[..3],
        [lc.as_str(), "file", &hidden.len().to_string()]
    );
    assert!(fields[3].starts_with("2024-01-15T"), "{conflicts:?}");
    assert!(
        listxattr(&animals)
            .expect("listxattr")
            .contains(&"user.ftpcircle.conflicts".to_string())
    );
    // A merged directory: every server with it.
    assert_eq!(
        getxattr(&m.join("pub"), "user.ftpcircle.servers"),
        Ok(format!("{la}\n{lb}"))
    );
    // Unknown names, and any change.
    assert_eq!(getxattr(&only, "user.ftpcircle.nope"), Err(libc::ENODATA));
    assert_eq!(getxattr(&only, "user.other"), Err(libc::ENODATA));
    assert_eq!(setxattr(&only, "user.ftpcircle.url"), libc::EROFS);
    assert_eq!(removexattr(&only, "user.ftpcircle.url"), libc::EROFS);

    // The control directory: in no listing, there by path.
    assert!(!names(m.path()).contains(&".ftpcircle".to_string()));
    let ls = run_timeout(Command::new("ls").arg("-a").arg(m.path()), CMD_LIMIT);
    let ls = String::from_utf8_lossy(&ls.stdout);
    assert!(!ls.contains(".ftpcircle"), "ls -a: {ls}");
    let find = run_timeout(Command::new("find").arg(m.path()), CMD_LIMIT);
    assert!(find.status.success(), "find: {find:?}");
    let find = String::from_utf8_lossy(&find.stdout);
    assert!(find.contains("only-a.txt"), "find: {find}");
    assert!(!find.contains(".ftpcircle"), "find walked into it: {find}");
    let ctl = m.join(".ftpcircle");
    assert!(ctl.is_dir());
    assert_eq!(names(&ctl), ["servers", "status", "status.json"]);
    let status = String::from_utf8(read(&ctl.join("status")).expect("status")).expect("utf-8");
    for l in [&la, &lb, &lc] {
        let row = status
            .lines()
            .find(|r| r.starts_with(l.as_str()))
            .unwrap_or_else(|| panic!("no row for {l}: {status}"));
        assert!(row.contains(" up "), "{row}");
    }
    let json = status_json(&m);
    for l in [&la, &lb, &lc] {
        assert_eq!(state_of(&json, l).as_deref(), Some("up"), "{json}");
    }

    // c's own tree: the hidden copy byte-exact, and its real `.ftpcircle`.
    let view = PathBuf::from(view_of(&json, &lc).expect("view of c"));
    assert!(view.starts_with(".ftpcircle/servers"), "{view:?}");
    assert_eq!(names(&m.join(&view)), [".ftpcircle", "docs"]);
    assert_eq!(
        read(&m.join(&view).join("docs/animals.txt")).expect("hidden copy"),
        hidden
    );
    assert_eq!(
        read(&m.join(&view).join(".ftpcircle/real.txt")).expect("real .ftpcircle"),
        b"a real entry of that name\n"
    );
    assert_eq!(
        getxattr(
            &m.join(&view).join("docs/animals.txt"),
            "user.ftpcircle.url"
        ),
        Ok(format!("ftp://{lc}/docs/animals.txt"))
    );
    // The view of a has only a's files.
    let view_a = PathBuf::from(view_of(&json, &la).expect("view of a"));
    assert_eq!(names(&m.join(&view_a).join("pub")), ["mirror.bin"]);
    assert_eq!(
        names(&m.join(".ftpcircle/servers")).len(),
        3,
        "one view per server"
    );
}

#[test]
fn control_dir_can_be_renamed() {
    let a = vsftpd(&[("f.txt", b"f\n")]);
    let m = Mount::start(
        &format!("{}\n", a.srv.line()),
        &MountOptions::default().arg("--control-dir").arg("_circle"),
    );
    assert!(m.join("_circle/status").is_file());
    assert!(!m.join(".ftpcircle").exists());
    assert_eq!(names(m.path()), ["f.txt"]);
}

#[test]
fn a_down_server_keeps_its_entries_and_comes_back() {
    let a = vsftpd(&[("shared/a.txt", b"a\n")]);
    let mut b = vsftpd(&[("shared/b.txt", b"b\n"), ("only-b/b2.txt", b"b2\n")]);
    // A server that never answers: down since the mount, nothing known of it.
    let dead_port = pick_port();
    let dead = format!("127.0.0.1:{dead_port}");
    let (la, lb) = (a.srv.addr(), b.srv.addr());
    let list = format!("{}\n{}\n{dead},,,0\n", a.srv.line(), b.srv.line());
    let m = Mount::start(
        &list,
        &MountOptions::default()
            .arg("--timeout")
            .arg(&TIMEOUT.to_string())
            .arg("--cache-ttl")
            .arg("1")
            .arg("--no-prefetch"),
    );
    assert_eq!(names(&m.join("shared")), ["a.txt", "b.txt"]);
    assert_eq!(names(&m.join("only-b")), ["b2.txt"]);
    let json = status_json(&m);
    assert_eq!(state_of(&json, &la).as_deref(), Some("up"), "{json}");
    assert_eq!(state_of(&json, &lb).as_deref(), Some("up"), "{json}");
    assert_eq!(state_of(&json, &dead).as_deref(), Some("down"), "{json}");
    let row = json.lines().find(|l| l.contains(&dead)).expect("dead row");
    assert!(row.contains("down since the mount"), "{row}");

    b.srv.stop();
    // Listings notice it (the cache lives one second).
    let mut last = String::new();
    let down = poll(STATE_LIMIT, || {
        let _ = fs::read_dir(m.join("shared")).map(|d| d.count());
        last = status_json(&m);
        state_of(&last, &lb).as_deref() == Some("down")
    });
    assert!(down, "b not down in status.json: {last}");
    // Its entries are still there, marked offline.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(names(&m.join("shared")), ["a.txt", "b.txt"]);
    assert_eq!(names(&m.join("only-b")), ["b2.txt"]);
    assert_eq!(
        getxattr(&m.join("only-b/b2.txt"), "user.ftpcircle.servers"),
        Ok(format!("{lb} (offline)"))
    );
    // Reading what only b holds fails with EIO, at once.
    let t = Instant::now();
    let err = read(&m.join("only-b/b2.txt")).expect_err("read from a down server");
    let took = t.elapsed();
    assert_eq!(err.raw_os_error(), Some(libc::EIO), "{err}");
    assert!(took < NO_HANG, "the read hung for {took:?}");
    assert_eq!(read(&m.join("shared/a.txt")).expect("a is up"), b"a\n");
    let log = m.log();
    assert!(
        log.lines().any(|l| l.contains(&lb) && l.contains("down")),
        "the log does not name the down server:\n{log}"
    );

    b.srv.restart();
    let mut last = String::new();
    let back = poll(STATE_LIMIT, || {
        let _ = fs::read_dir(m.join("only-b")).map(|d| d.count());
        last = status_json(&m);
        state_of(&last, &lb).as_deref() == Some("up")
            && read(&m.join("only-b/b2.txt")).ok().as_deref() == Some(&b"b2\n"[..])
    });
    assert!(back, "b not back: {last}");
    assert_eq!(
        getxattr(&m.join("only-b/b2.txt"), "user.ftpcircle.servers"),
        Ok(lb.clone())
    );
}

/// `ftpcircle-fs check` on one serverlist: (exit code, stdout).
fn check(list: &str, extra: &[&str]) -> (Option<i32>, String) {
    let dir = TempDir::new("vis-check");
    let path = dir.join("serverlist.txt");
    fs::write(&path, list).expect("write serverlist");
    let mut cmd = Command::new(BIN);
    cmd.arg("check")
        .arg("--timeout")
        .arg(CHECK_TIMEOUT.to_string())
        .args(extra)
        .arg(&path);
    let out = run_timeout(&mut cmd, CMD_LIMIT);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn row<'a>(out: &'a str, label: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(label))
        .unwrap_or_else(|| panic!("no row for {label}:\n{out}"))
}

#[test]
fn check_reports_good_down_wrong_password_and_bad_certificate() {
    let good = vsftpd(&[("one.txt", b"1\n"), ("two/t.txt", b"2\n")]);
    let dead = format!("127.0.0.1:{}", pick_port());
    let pdir = TempDir::new("vis-py");
    let proot = pdir.subdir("root");
    write_file(&proot.join("p.txt"), b"p\n");
    let py = FtpServer::pyftpdlib(&proot, "circle", "right-pw-3317");
    let wrong = format!("{}:{},circle,wrong-pw-9921,0", py.host, py.port);
    let cdir = TempDir::new("vis-cert");
    let cert = TestCert::generate(cdir.path());
    let tdir = TempDir::new("vis-tls");
    let troot = tdir.subdir("root");
    write_file(&troot.join("t.txt"), b"t\n");
    let tls = FtpServer::vsftpd_tls(&troot, &cert);

    let (code, out) = check(&format!("{}\n", good.srv.line()), &[]);
    assert_eq!(code, Some(0), "{out}");
    let r = row(&out, &good.srv.addr());
    assert!(r.contains("yes") && r.contains(" ok "), "{r}");
    assert!(
        r.contains("STAT") || r.contains("LIST") || r.contains("MLSD"),
        "{r}"
    );
    assert!(r.split_whitespace().any(|c| c == "2"), "two entries: {r}");

    let (code, out) = check(&format!("{dead},,,0\n"), &[]);
    assert_eq!(code, Some(1), "{out}");
    assert!(row(&out, &dead).contains(" no "), "{out}");

    let (code, out) = check(&format!("{wrong}\n"), &[]);
    assert_eq!(code, Some(1), "{out}");
    let r = row(&out, &format!("{}:{}", py.host, py.port));
    assert!(r.contains("refused"), "{r}");
    assert!(!out.contains("wrong-pw-9921"), "password printed: {out}");

    // The server's certificate is from a CA the check does not trust...
    let tls_line = format!("{}\n", tls.line());
    let (code, out) = check(&tls_line, &[]);
    assert_eq!(code, Some(1), "{out}");
    let r = row(&out, &tls.addr());
    assert!(r.contains("FAILED"), "{r}");
    // ... and verified with it.
    let ca = cert.ca.to_string_lossy().into_owned();
    let (code, out) = check(&tls_line, &["--ca-file", &ca]);
    assert_eq!(code, Some(0), "{out}");
    assert!(row(&out, &tls.addr()).contains("verified"), "{out}");

    // All at once, in parallel, as JSON.
    let all = format!("{}\n{dead},,,0\n{wrong}\n{}", good.srv.line(), tls_line);
    let (code, out) = check(&all, &["--json"]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.starts_with("{\"servers\": ["), "{out}");
    assert_eq!(out.matches("\"usable\": true").count(), 1, "{out}");
    assert_eq!(out.matches("\"usable\": false").count(), 3, "{out}");

    let (code, out) = check("this is not,a serverlist\n", &[]);
    assert_eq!(code, Some(2), "{out}");
}

#[test]
fn a_refused_login_shows_in_the_status_without_the_password() {
    let a = vsftpd(&[("a.txt", b"a\n")]);
    let pdir = TempDir::new("vis-py");
    let proot = pdir.subdir("root");
    write_file(&proot.join("p.txt"), b"p\n");
    let py = FtpServer::pyftpdlib(&proot, "circle", "right-pw-7713");
    let label = format!("{}:{}", py.host, py.port);
    let list = format!("{}\n{label},circle,wrong-pw-4417,0\n", a.srv.line());
    // pyftpdlib answers a wrong password after 3 s: the timeout must be longer.
    let m = Mount::start(
        &list,
        &MountOptions::default()
            .arg("--timeout")
            .arg(&CHECK_TIMEOUT.to_string()),
    );
    assert_eq!(names(m.path()), ["a.txt"]);
    let json = status_json(&m);
    assert_eq!(
        state_of(&json, &label).as_deref(),
        Some("login refused"),
        "{json}"
    );
    let text = String::from_utf8(read(&m.join(".ftpcircle/status")).expect("status")).unwrap();
    assert!(
        text.lines()
            .any(|l| l.starts_with(&label) && l.contains("login refused")),
        "{text}"
    );
    assert!(
        !json.contains("wrong-pw") && !text.contains("wrong-pw"),
        "{json}\n{text}"
    );
}
