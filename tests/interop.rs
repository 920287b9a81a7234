//! The interop matrix: the same tree, served by every kind of FTP server the
//! harness runs, mounted one server at a time, and checked the same way.
//!
//! [`SERVERS`] is the matrix: one line per server (a name, a constructor and
//! what that server can represent).  Adding a server is adding a line.  Each
//! row runs in its own thread; every check of every row is recorded (not
//! just the first failure) and printed as a table, with what `readlink` and
//! `realpath` give for each symlink case; the test fails if any check failed.
//!
//! Checks (each row): the exact `find` path set; `stat` size and mtime at the
//! precision the server's listing gives; symlinks to a file and to a
//! directory, relative and absolute, dangling, a loop, and one climbing above
//! the root (it must resolve inside the mount or not at all; so must every
//! symlink in the mount); names with spaces, a leading `-`, `#`, `*`, `?`, `[`, `]`,
//! `\\`, UTF-8 and Latin-1 bytes; a 0-byte file; `cp` of a multi-MiB file and preads at
//! pseudo-random offsets; `tar c` of the whole mount; EROFS for writes; and
//! afterwards, that the server saw a logged-in session and no write command.
//!
//! `FTPCIRCLE_INTEROP=name,name` runs only those rows.

mod common;

use common::fake::{FakeConfig, FakeFtp, FakeNode};
use common::ls_servers::LsFtpd;
use common::{
    FtpServer, Mount, MountOptions, TempDir, TestCert, check_fake_no_write_commands, mkdir_p,
    now_secs, pseudo_random_bytes, run_timeout, set_mtime, symlink, utc_secs, write_file,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::Duration;

/// Bound for one external command (find, cp, tar) on a mount.
const CMD_LIMIT: Duration = Duration::from_secs(120);
/// The multi-MiB file: 3 MiB and an odd tail, so no read lines up with it.
const BIG_LEN: usize = 3 * 1024 * 1024 + 12_345;
/// preads of the big file at pseudo-random offsets.
const PREADS: usize = 40;

// ---------------------------------------------------------------------------
// the matrix

/// How precisely a server's listing gives modification times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mtime {
    /// MLSD `modify=YYYYMMDDHHMMSS`.
    Second,
    /// Unix `ls -l`: `Mon DD HH:MM` for the last six months, `Mon DD  YYYY`
    /// (the day) for older files.
    UnixList,
    /// DOS/IIS `MM-DD-YY  HH:MMAM`.
    Minute,
}

/// What a server cannot represent is stated per row, with the reason.
#[derive(Clone, Copy, Debug)]
enum Support {
    Yes,
    No(&'static str),
}

struct Row {
    name: &'static str,
    start: fn(&Tree, &Path, &TestCert) -> Served,
    mtime: Mtime,
    symlinks: Support,
    /// Names with a backslash ([`BACKSLASH_NAMES`]).
    backslash: Support,
}

const SERVERS: &[Row] = &[
    Row {
        name: "proftpd",
        start: |t, r, _| Served::real(t, r, FtpServer::proftpd),
        mtime: Mtime::Second,
        symlinks: Support::Yes,
        backslash: Support::Yes,
    },
    Row {
        name: "proftpd-ftps",
        start: |t, r, c| Served::real(t, r, |r| FtpServer::proftpd_tls(r, c)),
        mtime: Mtime::Second,
        symlinks: Support::Yes,
        backslash: Support::Yes,
    },
    Row {
        name: "pure-ftpd",
        start: |t, r, _| Served::real(t, r, FtpServer::pureftpd),
        mtime: Mtime::Second,
        symlinks: Support::Yes,
        backslash: Support::No(
            "pure-ftpd answers RETR of any path with a backslash with 553 Prohibited \
             file name: such files are listed but cannot be read",
        ),
    },
    Row {
        name: "pure-ftpd-tls",
        start: |t, r, c| Served::real(t, r, |r| FtpServer::pureftpd_tls(r, c)),
        mtime: Mtime::Second,
        symlinks: Support::Yes,
        backslash: Support::No(
            "pure-ftpd answers RETR of any path with a backslash with 553 Prohibited \
             file name: such files are listed but cannot be read",
        ),
    },
    Row {
        name: "vsftpd-ftps",
        start: |t, r, c| Served::real(t, r, |r| FtpServer::vsftpd_tls(r, c)),
        mtime: Mtime::UnixList,
        symlinks: Support::Yes,
        backslash: Support::Yes,
    },
    Row {
        name: "vsftpd-implicit",
        start: |t, r, c| Served::real(t, r, |r| FtpServer::vsftpd_implicit_tls(r, c)),
        mtime: Mtime::UnixList,
        symlinks: Support::Yes,
        backslash: Support::Yes,
    },
    Row {
        name: "pyftpdlib",
        start: |t, r, _| Served::real(t, r, |r| FtpServer::pyftpdlib(r, "interop", "matrix")),
        mtime: Mtime::Second,
        symlinks: Support::No(
            "pyftpdlib's MLSD stats through symlinks (os.stat): a link is listed as its \
             target, a dangling one not at all, and it is not chrooted, so a link to \
             ../../etc/passwd would list the server host's file",
        ),
        backslash: Support::Yes,
    },
    Row {
        name: "inetutils-ftpd",
        start: |t, r, _| Served::ls(t, r, LsFtpd::inetutils),
        mtime: Mtime::UnixList,
        symlinks: Support::Yes,
        backslash: Support::Yes,
    },
    Row {
        name: "netkit-ftpd",
        start: |t, r, _| Served::ls(t, r, LsFtpd::netkit),
        mtime: Mtime::UnixList,
        symlinks: Support::Yes,
        backslash: Support::Yes,
    },
    Row {
        name: "dos-iis",
        start: |t, _, _| Served::dos(t),
        mtime: Mtime::Minute,
        symlinks: Support::No("a DOS/IIS LIST line has no symlink type"),
        backslash: Support::Yes,
    },
];

/// A running server of a row.
enum Served {
    Real(FtpServer),
    /// GNU inetutils or netkit ftpd (tests/common/ls_servers.rs).
    Ls(LsFtpd),
    Fake(FakeFtp),
}

impl Served {
    /// Writes the tree to `root` and starts a real server on it.
    fn real(tree: &Tree, root: &Path, start: impl FnOnce(&Path) -> FtpServer) -> Served {
        materialize(tree, root);
        Served::Real(start(root))
    }

    /// Writes the tree to `root` and starts an inetutils or netkit ftpd on it.
    fn ls(tree: &Tree, root: &Path, start: impl FnOnce(&Path) -> LsFtpd) -> Served {
        materialize(tree, root);
        Served::Ls(start(root))
    }

    /// The hand-written fake answering LIST with DOS/IIS lines for `tree`.
    fn dos(tree: &Tree) -> Served {
        let mut cfg = FakeConfig::new();
        let mut lines: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
        lines.insert(String::new(), Vec::new());
        for (path, node) in tree {
            let (parent, name) = split_last(path);
            let parent = lossy(parent);
            let line = match node {
                Node::Dir => {
                    lines.entry(lossy(path)).or_default();
                    dos_line(name, None, recent())
                }
                Node::File(data, mtime) => {
                    // The fake looks files up by their lossy UTF-8 name, which
                    // is what it makes of the Latin-1 bytes RETR sends too.
                    cfg = cfg.file(&lossy(path), data.as_slice().to_vec());
                    dos_line(name, Some(data.len()), *mtime)
                }
                Node::Link(_) => continue,
            };
            lines.entry(parent).or_default().push(line);
        }
        for (dir, l) in lines {
            cfg = cfg.raw_list(&dir, l);
        }
        // Raw listings replace the tree's own; keep only files in the tree.
        cfg.tree.retain(|_, n| matches!(n, FakeNode::File(_)));
        Served::Fake(FakeFtp::start(cfg))
    }

    fn line(&self) -> String {
        match self {
            Served::Real(s) => s.line(),
            Served::Ls(s) => s.line(),
            Served::Fake(f) => f.line(),
        }
    }

    /// After the mount is gone: the server saw a login and no write command.
    fn check_no_writes(&self) -> Result<String, String> {
        let r = match self {
            Served::Real(s) => s.check_no_write_commands(),
            Served::Ls(s) => s.check_no_write_commands(),
            Served::Fake(f) => check_fake_no_write_commands(f),
        };
        r.map(|()| "session seen, no write command".into())
    }
}

// ---------------------------------------------------------------------------
// the tree

#[derive(Clone, Debug)]
enum Node {
    Dir,
    File(Arc<Vec<u8>>, i64),
    Link(&'static [u8]),
}

type Tree = BTreeMap<Vec<u8>, Node>;

/// 2019-03-04 05:06:07 UTC: older than six months, so `ls -l` shows the year.
const OLD: i64 = 1_551_675_967;

/// Two days ago at hh:mm:37, so minute and second precision differ (the same
/// for every row).
fn recent() -> i64 {
    static RECENT: OnceLock<i64> = OnceLock::new();
    *RECENT.get_or_init(|| {
        let t = now_secs() - 2 * 86_400;
        t - t.rem_euclid(60) + 37
    })
}

/// The symlink cases: (name in `links/`, target, what it is).
const LINKS: &[(&str, &[u8], &str)] = &[
    ("rel_file", b"../dir/file.txt", "relative, to a file"),
    ("rel_dir", b"../dir", "relative, to a directory"),
    ("abs_file", b"/dir/file.txt", "absolute, to a file"),
    ("abs_dir", b"/dir", "absolute, to a directory"),
    ("dangling", b"../no/such/file", "dangling"),
    ("loop", b"loop", "a loop (to itself)"),
    (
        "escape",
        b"../../../../../../etc/passwd",
        "climbing above the root",
    ),
];

/// Files whose names are the point.
const NAMES: &[&[u8]] = &[
    b"names/with space.txt",
    b"names/-leading-dash.txt",
    b"names/#hash.txt",
    "names/ünïcödé ✓.txt".as_bytes(),
    b"names/caf\xe9-latin1.txt",
    b"names/dir with space/inner.txt",
    // What an `ls` behind LIST would split, take as an option or expand (issue 15), in
    // directory and file names, down to depth 6; `abc` is what the glob `a[b]c` matches.
    b"names/-dash dir/a[b]c/q?x */-f [1]#.txt",
    b"names/-dash dir/abc/decoy.txt",
];

/// Names with a backslash, where the server can serve them (`Row::backslash`).
const BACKSLASH_NAMES: &[&[u8]] = &[b"names/st*r q?/[x] #y\\z/]back\\slash\\.txt"];

fn tree(symlinks: bool, backslash: bool) -> Tree {
    let recent = recent();
    let mut t = Tree::new();
    let mut file = |path: &[u8], data: Vec<u8>, mtime: i64| {
        t.insert(path.to_vec(), Node::File(Arc::new(data), mtime));
    };
    file(b"top.txt", b"top of the tree\n".to_vec(), recent);
    file(b"empty.bin", Vec::new(), recent);
    file(b"big/big.bin", pseudo_random_bytes(7, BIG_LEN), recent);
    file(
        b"dir/file.txt",
        b"the file behind the links\n".to_vec(),
        OLD,
    );
    file(b"dir/sub/deep.txt", b"deep\n".to_vec(), recent);
    file(b"old/old.txt", b"old\n".to_vec(), OLD);
    let backslash_names = if backslash { BACKSLASH_NAMES } else { &[] };
    for (i, n) in NAMES.iter().chain(backslash_names).enumerate() {
        file(n, format!("name #{i}\n").into_bytes(), recent);
    }
    if symlinks {
        for (name, target, _) in LINKS {
            t.insert(format!("links/{name}").into_bytes(), Node::Link(target));
        }
    }
    // Every parent is a directory.
    let paths: Vec<Vec<u8>> = t.keys().cloned().collect();
    for p in paths {
        let mut parent = split_last(&p).0;
        while !parent.is_empty() {
            t.insert(parent.to_vec(), Node::Dir);
            parent = split_last(parent).0;
        }
    }
    t
}

fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn materialize(tree: &Tree, root: &Path) {
    mkdir_p(root);
    for (path, node) in tree {
        let p = root.join(OsStr::from_bytes(path));
        match node {
            Node::Dir => mkdir_p(&p),
            Node::File(data, _) => write_file(&p, data),
            Node::Link(target) => symlink(target, &p),
        }
    }
    // Times last: creating entries changes their directory's times only.
    for (path, node) in tree {
        if let Node::File(_, mtime) = node {
            set_mtime(&root.join(OsStr::from_bytes(path)), *mtime);
        }
    }
}

/// (year, month, day, hour, minute) of a UTC time.
fn civil(secs: i64) -> (i64, u32, u32, u32, u32) {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (
        year,
        month,
        day,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
    )
}

/// An IIS-style line: `03-04-19  05:06AM       <DIR>          name` or
/// `03-04-19  05:06AM                  123 name`.
fn dos_line(name: &[u8], size: Option<usize>, mtime: i64) -> Vec<u8> {
    let (y, mo, d, h, mi) = civil(mtime);
    let (h12, ampm) = match h {
        0 => (12, "AM"),
        1..=11 => (h, "AM"),
        12 => (12, "PM"),
        _ => (h - 12, "PM"),
    };
    let what = match size {
        None => format!("{:<14}", "<DIR>"),
        Some(n) => format!("{n:>20} "),
    };
    let mut l = format!(
        "{mo:02}-{d:02}-{:02}  {h12:02}:{mi:02}{ampm} {what}",
        y.rem_euclid(100)
    )
    .into_bytes();
    if size.is_none() {
        l.push(b' ');
    }
    l.extend_from_slice(name);
    l
}

// ---------------------------------------------------------------------------
// recording results

/// One row's results: (check, Ok(detail) / Err(failure)).
#[derive(Default)]
struct Results {
    rows: Vec<(String, Result<String, String>)>,
}

impl Results {
    fn record(&mut self, check: &str, r: Result<String, String>) {
        self.rows.push((check.to_string(), r));
    }

    /// Runs `f`, recording a panic inside it as a failure.
    fn run(&mut self, check: &str, f: impl FnOnce() -> Result<String, String>) {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|p| Err(format!("panicked: {}", panic_text(p))));
        self.record(check, r);
    }

    fn failures(&self) -> usize {
        self.rows.iter().filter(|(_, r)| r.is_err()).count()
    }
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<String>()
        .cloned()
        .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "(non-string panic)".into())
}

fn ensure(cond: bool, msg: impl FnOnce() -> String) -> Result<(), String> {
    if cond { Ok(()) } else { Err(msg()) }
}

// ---------------------------------------------------------------------------
// the checks

/// Runs every check for one row and returns the results.
fn run_row(row: &Row, cert: &TestCert) -> Results {
    let mut res = Results::default();
    let dir = TempDir::new(&format!("interop-{}", row.name));
    let with_links = matches!(row.symlinks, Support::Yes);
    let with_backslash = matches!(row.backslash, Support::Yes);
    let tree = tree(with_links, with_backslash);
    let served = (row.start)(&tree, &dir.join("root"), cert);
    let list = format!("{}\n", served.line());
    let m = Mount::start(&list, &MountOptions::ca(&cert.ca));
    let mnt = m.path().to_path_buf();
    let local = dir.subdir("local");

    res.run("find path set", || check_find(&mnt, &tree));
    res.run("stat size/mtime", || check_stat(&mnt, &tree, row.mtime));
    match row.symlinks {
        Support::Yes => {
            for (name, _, what) in LINKS {
                res.run(&format!("symlink {name} ({what})"), || {
                    check_link(&mnt, name)
                });
            }
        }
        Support::No(why) => {
            res.record("symlinks", Ok(format!("not representable: {why}")));
        }
    }
    res.run("every symlink stays inside", || {
        check_all_links_inside(&mnt)
    });
    res.run("odd names", || check_names(&mnt, &tree));
    if let Support::No(why) = row.backslash {
        res.record("backslash names", Ok(format!("not representable: {why}")));
    }
    res.run("0-byte file", || check_empty(&mnt));
    res.run("cp big file", || check_cp(&mnt, &tree, &local));
    res.run("pread at random offsets", || check_preads(&mnt, &tree));
    res.run("tar c whole mount", || check_tar(&mnt, &local));
    res.run("writes fail with EROFS", || check_erofs(&mnt));
    drop(m);
    res.record("server saw no write", served.check_no_writes());
    res
}

fn rel_bytes(mnt: &Path, p: &Path) -> Vec<u8> {
    p.strip_prefix(mnt)
        .unwrap_or(p)
        .as_os_str()
        .as_bytes()
        .to_vec()
}

fn show_set(s: &BTreeSet<Vec<u8>>) -> String {
    s.iter().map(|p| lossy(p)).collect::<Vec<_>>().join(", ")
}

/// The paths `find MNT -mindepth 1` prints, relative to the mount.
fn find_set(mnt: &Path) -> Result<BTreeSet<Vec<u8>>, String> {
    let out = run_timeout(
        Command::new("find")
            .arg(mnt)
            .args(["-mindepth", "1", "-print0"]),
        CMD_LIMIT,
    );
    ensure(out.status.success(), || {
        format!(
            "find failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let prefix = [mnt.as_os_str().as_bytes(), b"/"].concat();
    Ok(out
        .stdout
        .split(|&b| b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| p.strip_prefix(prefix.as_slice()).unwrap_or(p).to_vec())
        .collect())
}

fn check_find(mnt: &Path, tree: &Tree) -> Result<String, String> {
    let got = find_set(mnt)?;
    let want: BTreeSet<Vec<u8>> = tree.keys().cloned().collect();
    let missing: BTreeSet<_> = want.difference(&got).cloned().collect();
    let extra: BTreeSet<_> = got.difference(&want).cloned().collect();
    ensure(missing.is_empty() && extra.is_empty(), || {
        format!(
            "missing: [{}]; unexpected: [{}]",
            show_set(&missing),
            show_set(&extra)
        )
    })?;
    Ok(format!("{} paths", got.len()))
}

/// The listing's view of `t` at a server's precision.
fn listed_mtime(t: i64, precision: Mtime) -> i64 {
    match precision {
        Mtime::Second => t,
        Mtime::Minute => t - t.rem_euclid(60),
        Mtime::UnixList if now_secs() - t > 180 * 86_400 => t - t.rem_euclid(86_400),
        Mtime::UnixList => t - t.rem_euclid(60),
    }
}

fn check_stat(mnt: &Path, tree: &Tree, precision: Mtime) -> Result<String, String> {
    let mut wrong = Vec::new();
    let mut n = 0;
    for (path, node) in tree {
        let p = mnt.join(OsStr::from_bytes(path));
        let meta = match fs::symlink_metadata(&p) {
            Ok(m) => m,
            Err(e) => {
                wrong.push(format!("{}: lstat: {e}", lossy(path)));
                continue;
            }
        };
        n += 1;
        let ft = meta.file_type();
        match node {
            Node::Dir if !ft.is_dir() => wrong.push(format!("{}: not a directory", lossy(path))),
            Node::Link(_) if !ft.is_symlink() => {
                wrong.push(format!("{}: not a symlink ({ft:?})", lossy(path)))
            }
            Node::File(data, mtime) => {
                if !ft.is_file() {
                    wrong.push(format!("{}: not a regular file", lossy(path)));
                }
                if meta.len() != data.len() as u64 {
                    wrong.push(format!(
                        "{}: size {} want {}",
                        lossy(path),
                        meta.len(),
                        data.len()
                    ));
                }
                let want = listed_mtime(*mtime, precision);
                if meta.mtime() != want {
                    wrong.push(format!(
                        "{}: mtime {} want {want} ({precision:?} of {mtime})",
                        lossy(path),
                        meta.mtime()
                    ));
                }
            }
            _ => {}
        }
    }
    ensure(wrong.is_empty(), || wrong.join("; "))?;
    let how = match precision {
        Mtime::Second => "mtime to the second",
        Mtime::UnixList => "mtime to the minute (to the day for old files)",
        Mtime::Minute => "mtime to the minute",
    };
    Ok(format!("{n} entries, sizes exact, {how}"))
}

/// What readlink and realpath give for `links/NAME`, for the report.
fn link_facts(mnt: &Path, p: &Path) -> (String, Result<PathBuf, io::Error>) {
    let readlink = match fs::read_link(p) {
        Ok(t) => lossy(t.as_os_str().as_bytes()),
        Err(e) => format!("error: {e}"),
    };
    (readlink, fs::canonicalize(p).map(|r| shown(mnt, r)))
}

/// `r` as `MNT/...` when it is inside the mount.
fn shown(mnt: &Path, r: PathBuf) -> PathBuf {
    match r.strip_prefix(mnt) {
        Ok(rest) => Path::new("MNT").join(rest),
        Err(_) => r,
    }
}

fn describe(readlink: &str, real: &Result<PathBuf, io::Error>) -> String {
    let real = match real {
        Ok(r) => r.display().to_string(),
        Err(e) => format!("error: {e}"),
    };
    format!("readlink={readlink:?} realpath={real}")
}

fn check_link(mnt: &Path, name: &str) -> Result<String, String> {
    let mnt = &fs::canonicalize(mnt).map_err(|e| format!("realpath of the mount: {e}"))?;
    let p = mnt.join("links").join(name);
    let meta = fs::symlink_metadata(&p).map_err(|e| format!("lstat: {e}"))?;
    let (readlink, real) = link_facts(mnt, &p);
    let facts = describe(&readlink, &real);
    ensure(meta.file_type().is_symlink(), || {
        format!("not a symlink ({:?}); {facts}", meta.file_type())
    })?;
    let errno = |r: &Result<PathBuf, io::Error>| r.as_ref().err().and_then(|e| e.raw_os_error());
    let file_content = b"the file behind the links\n".as_slice();
    match name {
        "rel_file" | "abs_file" => {
            ensure(
                real.as_ref().ok() == Some(&Path::new("MNT").join("dir/file.txt")),
                || format!("should resolve to MNT/dir/file.txt; {facts}"),
            )?;
            let data = fs::read(&p).map_err(|e| format!("read through it: {e}; {facts}"))?;
            ensure(data == file_content, || format!("wrong content; {facts}"))?;
        }
        "rel_dir" | "abs_dir" => {
            ensure(
                real.as_ref().ok() == Some(&Path::new("MNT").join("dir")),
                || format!("should resolve to MNT/dir; {facts}"),
            )?;
            let names: BTreeSet<String> = fs::read_dir(&p)
                .map_err(|e| format!("readdir through it: {e}; {facts}"))?
                .map(|e| e.map(|e| lossy(e.file_name().as_bytes())))
                .collect::<Result<_, _>>()
                .map_err(|e| format!("readdir through it: {e}"))?;
            ensure(names.contains("file.txt") && names.contains("sub"), || {
                format!("listing through it: {names:?}; {facts}")
            })?;
        }
        "dangling" => {
            ensure(errno(&real) == Some(libc::ENOENT), || {
                format!("should not resolve (ENOENT); {facts}")
            })?;
        }
        "loop" => {
            ensure(errno(&real) == Some(libc::ELOOP), || {
                format!("should not resolve (ELOOP); {facts}")
            })?;
        }
        "escape" => {
            // Inside the mount or not at all.
            if let Ok(r) = &real {
                ensure(r.starts_with("MNT"), || {
                    format!("resolves OUTSIDE the mount; {facts}")
                })?;
            }
        }
        other => return Err(format!("no expectation for {other}")),
    }
    Ok(facts)
}

/// Every symlink in the mount resolves inside it or not at all.
fn check_all_links_inside(mnt: &Path) -> Result<String, String> {
    let mnt = &fs::canonicalize(mnt).map_err(|e| format!("realpath of the mount: {e}"))?;
    let mut todo = vec![mnt.to_path_buf()];
    let mut links = 0;
    let mut outside = Vec::new();
    let mut seen = 0;
    while let Some(d) = todo.pop() {
        let entries = fs::read_dir(&d).map_err(|e| format!("readdir {}: {e}", d.display()))?;
        for e in entries {
            let e = e.map_err(|e| format!("readdir {}: {e}", d.display()))?;
            seen += 1;
            ensure(seen < 10_000, || "runaway walk".into())?;
            let ft = e.file_type().map_err(|e| format!("file type: {e}"))?;
            let p = e.path();
            if ft.is_dir() {
                todo.push(p);
            } else if ft.is_symlink() {
                links += 1;
                if let Ok(r) = fs::canonicalize(&p)
                    && !r.starts_with(mnt)
                {
                    outside.push(format!("{} -> {}", lossy(&rel_bytes(mnt, &p)), r.display()));
                }
            }
        }
    }
    ensure(outside.is_empty(), || {
        format!("resolve outside the mount: {}", outside.join(", "))
    })?;
    Ok(format!("{links} symlinks checked"))
}

fn check_names(mnt: &Path, tree: &Tree) -> Result<String, String> {
    let backslash_names = BACKSLASH_NAMES.iter().filter(|n| tree.contains_key(**n));
    let names: Vec<&&[u8]> = NAMES.iter().chain(backslash_names).collect();
    for n in &names {
        let Some(Node::File(data, _)) = tree.get(**n) else {
            return Err(format!("{} not in the tree", lossy(n)));
        };
        let p = mnt.join(OsStr::from_bytes(n));
        let got = fs::read(&p).map_err(|e| format!("{}: {e}", lossy(n)))?;
        ensure(got == **data, || format!("{}: wrong content", lossy(n)))?;
    }
    Ok(format!("{} names read byte-exact", names.len()))
}

fn check_empty(mnt: &Path) -> Result<String, String> {
    let p = mnt.join("empty.bin");
    let meta = fs::metadata(&p).map_err(|e| format!("stat: {e}"))?;
    ensure(meta.len() == 0 && meta.is_file(), || {
        format!("size {} file={}", meta.len(), meta.is_file())
    })?;
    let data = fs::read(&p).map_err(|e| format!("read: {e}"))?;
    ensure(data.is_empty(), || format!("read {} bytes", data.len()))?;
    Ok("size 0, reads empty".into())
}

fn big(tree: &Tree) -> Arc<Vec<u8>> {
    match tree.get(b"big/big.bin".as_slice()) {
        Some(Node::File(d, _)) => Arc::clone(d),
        _ => panic!("big/big.bin not in the tree"),
    }
}

fn check_cp(mnt: &Path, tree: &Tree, local: &Path) -> Result<String, String> {
    let want = big(tree);
    let dst = local.join("big.bin");
    let out = run_timeout(
        Command::new("cp").arg(mnt.join("big/big.bin")).arg(&dst),
        CMD_LIMIT,
    );
    ensure(out.status.success(), || {
        format!("cp failed: {}", String::from_utf8_lossy(&out.stderr))
    })?;
    let got = fs::read(&dst).map_err(|e| format!("read the copy: {e}"))?;
    ensure(got.len() == want.len(), || {
        format!("copy has {} bytes, want {}", got.len(), want.len())
    })?;
    let first_diff = got.iter().zip(want.iter()).position(|(a, b)| a != b);
    ensure(first_diff.is_none(), || {
        format!("copy differs from byte {first_diff:?}")
    })?;
    Ok(format!("{} bytes byte-equal", got.len()))
}

fn check_preads(mnt: &Path, tree: &Tree) -> Result<String, String> {
    let want = big(tree);
    let f = fs::File::open(mnt.join("big/big.bin")).map_err(|e| format!("open: {e}"))?;
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for i in 0..PREADS {
        let len = (next() % (256 * 1024)) as usize + 1;
        // The last reads straddle and pass the end of the file.
        let off = if i + 3 >= PREADS {
            (want.len() - len / 2) as u64
        } else {
            next() % want.len() as u64
        };
        let mut buf = vec![0u8; len];
        let mut got = 0;
        while got < len {
            let n = f
                .read_at(&mut buf[got..], off + got as u64)
                .map_err(|e| format!("pread {len} at {off}: {e}"))?;
            if n == 0 {
                break;
            }
            got += n;
        }
        let start = (off as usize).min(want.len());
        let end = (start + len).min(want.len());
        ensure(buf[..got] == want[start..end], || {
            format!("pread {len} at {off}: {got} bytes, wrong or short")
        })?;
    }
    Ok(format!("{PREADS} preads byte-equal"))
}

/// `tar c` of the whole mount succeeds and archives every path `find` sees
/// (whether `find` sees the right ones is the "find path set" check).
fn check_tar(mnt: &Path, local: &Path) -> Result<String, String> {
    let out_file = local.join("mount.tar");
    let out = run_timeout(
        Command::new("tar")
            .arg("-cf")
            .arg(&out_file)
            .arg("-C")
            .arg(mnt)
            .arg("."),
        CMD_LIMIT,
    );
    ensure(out.status.success(), || {
        format!(
            "tar c exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let list = run_timeout(
        Command::new("tar")
            .args(["--quoting-style=literal", "-tf"])
            .arg(&out_file),
        CMD_LIMIT,
    );
    let members: BTreeSet<Vec<u8>> = list
        .stdout
        .split(|&b| b == b'\n')
        .filter_map(|l| l.strip_prefix(b"./"))
        .map(|l| l.strip_suffix(b"/").unwrap_or(l).to_vec())
        .filter(|l| !l.is_empty())
        .collect();
    let found = find_set(mnt)?;
    ensure(members == found, || {
        format!(
            "archive lacks [{}], has extra [{}]",
            show_set(&found.difference(&members).cloned().collect()),
            show_set(&members.difference(&found).cloned().collect())
        )
    })?;
    let size = fs::metadata(&out_file).map(|m| m.len()).unwrap_or(0);
    ensure(size > BIG_LEN as u64, || {
        format!("archive only {size} bytes")
    })?;
    Ok(format!("{} members, {size} bytes", members.len()))
}

fn check_erofs(mnt: &Path) -> Result<String, String> {
    let file = mnt.join("top.txt");
    let mut wrong = Vec::new();
    let mut n = 0;
    let mut expect = |what: &str, r: io::Result<()>| {
        n += 1;
        match r {
            Err(e) if e.raw_os_error() == Some(libc::EROFS) => {}
            Err(e) => wrong.push(format!("{what}: {e}")),
            Ok(()) => wrong.push(format!("{what}: succeeded")),
        }
    };
    expect("create", fs::File::create(mnt.join("new.txt")).map(|_| ()));
    expect("mkdir", fs::create_dir(mnt.join("newdir")));
    expect(
        "open for writing",
        fs::OpenOptions::new().write(true).open(&file).map(|_| ()),
    );
    expect(
        "append",
        fs::OpenOptions::new().append(true).open(&file).map(|_| ()),
    );
    expect("unlink", fs::remove_file(&file));
    expect("rmdir", fs::remove_dir(mnt.join("dir/sub")));
    expect("rename", fs::rename(&file, mnt.join("moved.txt")));
    expect(
        "symlink",
        std::os::unix::fs::symlink("top.txt", mnt.join("newlink")),
    );
    expect(
        "chmod",
        fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o600)),
    );
    let c = std::ffi::CString::new(file.as_os_str().as_bytes()).expect("path");
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::truncate(c.as_ptr(), 0) };
    expect(
        "truncate",
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        },
    );
    let n_checked = n;
    ensure(wrong.is_empty(), || wrong.join("; "))?;
    Ok(format!("{n_checked} write calls: EROFS"))
}

// ---------------------------------------------------------------------------
// the test

#[test]
fn fixture_helpers() {
    assert_eq!(OLD, utc_secs(2019, 3, 4, 5, 6, 7));
    assert_eq!(civil(OLD), (2019, 3, 4, 5, 6));
    assert_eq!(
        civil(utc_secs(2000, 2, 29, 23, 59, 1)),
        (2000, 2, 29, 23, 59)
    );
    assert_eq!(
        dos_line(b"x y", Some(12), OLD),
        b"03-04-19  05:06AM                   12 x y".to_vec()
    );
    assert_eq!(
        dos_line(b"d", None, utc_secs(2024, 1, 15, 15, 45, 0)),
        b"01-15-24  03:45PM <DIR>          d".to_vec()
    );
    assert_eq!(
        listed_mtime(OLD, Mtime::UnixList),
        utc_secs(2019, 3, 4, 0, 0, 0)
    );
    assert_eq!(listed_mtime(recent(), Mtime::Minute), recent() - 37);
}

#[test]
fn interop_matrix() {
    let only: Option<Vec<String>> = std::env::var("FTPCIRCLE_INTEROP")
        .ok()
        .map(|s| s.split(',').map(str::to_string).collect());
    let dir = TempDir::new("interop");
    let cert = TestCert::generate(&dir.subdir("cert"));
    let rows: Vec<&Row> = SERVERS
        .iter()
        .filter(|r| only.as_ref().is_none_or(|o| o.iter().any(|n| n == r.name)))
        .collect();
    assert!(!rows.is_empty(), "FTPCIRCLE_INTEROP selects no row");
    let results: Vec<(&str, Results)> = thread::scope(|s| {
        let handles: Vec<_> = rows
            .iter()
            .map(|row| {
                let cert = &cert;
                (row.name, s.spawn(move || run_row(row, cert)))
            })
            .collect();
        handles
            .into_iter()
            .map(|(name, h)| {
                let res = h.join().unwrap_or_else(|p| {
                    let mut r = Results::default();
                    r.record("start", Err(format!("panicked: {}", panic_text(p))));
                    r
                });
                (name, res)
            })
            .collect()
    });
    let mut report = String::from("\n==== interop matrix ====\n");
    let mut failed = 0;
    for (name, res) in &results {
        failed += res.failures();
        let _ = writeln!(report, "-- {name}: {} failed", res.failures());
        for (check, r) in &res.rows {
            let (mark, text) = match r {
                Ok(t) => ("ok  ", t),
                Err(t) => ("FAIL", t),
            };
            let _ = writeln!(report, "   {mark} {check}: {text}");
        }
    }
    eprintln!("{report}");
    assert_eq!(failed, 0, "{failed} interop checks failed:{report}");
}
