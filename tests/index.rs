//! The persistent listing index on real mounts and real servers: a remount with every server
//! stopped still shows the tree (offline), a listing changed while unmounted shows after
//! revalidation, `locate` (substring, glob, -i, --regex, -l, no match), `index` stopped and
//! resumed, and a truncated index file moved aside and rebuilt.

mod common;

use common::{
    BIN, FtpServer, Mount, MountOptions, TempDir, run_timeout, set_mtime, utc_secs, wait_until,
    write_file,
};
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

const CMD_LIMIT: Duration = Duration::from_secs(60);

struct Fixture {
    srv: FtpServer,
    srv2: FtpServer,
    root: PathBuf,
    index: PathBuf,
    dir: TempDir,
}

/// Two vsftpd servers: `pub/` on both, `docs/` and a deep path only on the first.
fn fixture() -> Fixture {
    let dir = TempDir::new("index");
    let root = dir.subdir("s1");
    let root2 = dir.subdir("s2");
    for (p, data) in [
        ("pub/README.txt", &b"hello"[..]),
        ("pub/debian-12.iso", b"iso"),
        ("docs/Guide.PDF", b"pdf"),
        ("deep/a/b/c/needle-42.dat", b"needle"),
    ] {
        write_file(&root.join(p), data);
        set_mtime(&root.join(p), utc_secs(2024, 1, 15, 12, 0, 0));
    }
    write_file(&root2.join("pub/only-on-two.txt"), b"two");
    let srv = FtpServer::vsftpd(&root);
    let srv2 = FtpServer::vsftpd(&root2);
    Fixture {
        index: dir.join("index.sqlite"),
        srv,
        srv2,
        root,
        dir,
    }
}

impl Fixture {
    fn list(&self) -> String {
        format!("{}\n{}\n", self.srv.line(), self.srv2.line())
    }

    fn opts(&self) -> MountOptions {
        MountOptions::default().arg("--index").arg_os(&self.index)
    }

    fn serverlist_file(&self) -> PathBuf {
        let p = self.dir.join("serverlist.txt");
        fs::write(&p, self.list()).unwrap();
        common::set_mode(&p, 0o600);
        p
    }

    fn locate(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("locate")
            .arg("--servers")
            .arg(self.serverlist_file())
            .arg("--index")
            .arg(&self.index)
            .args(args);
        run_timeout(&mut cmd, CMD_LIMIT)
    }

    fn crawl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(BIN);
        cmd.arg("index")
            .arg("--servers")
            .arg(self.serverlist_file())
            .arg("--index")
            .arg(&self.index)
            .args(args);
        run_timeout(&mut cmd, CMD_LIMIT)
    }
}

/// Every path under `root` (relative, `/`-separated), as `find` would list them.
fn walk(root: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo = vec![PathBuf::new()];
    // Bounded by the tree: each directory is read once.
    while let Some(rel) = todo.pop() {
        for e in fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let p = rel.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                todo.push(p.clone());
            }
            out.insert(p.to_string_lossy().into_owned());
        }
    }
    out
}

/// getxattr(2) of a UTF-8 value (panics on errors).
fn getxattr(p: &Path, name: &str) -> String {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = std::ffi::CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(
        n >= 0,
        "getxattr {}: {}",
        p.display(),
        std::io::Error::last_os_error()
    );
    buf.truncate(n as usize);
    String::from_utf8(buf).unwrap().trim_end().to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn remount_with_every_server_stopped_lists_the_tree_from_the_index_offline() {
    let mut f = fixture();
    let before = {
        let m = Mount::start(&f.list(), &f.opts());
        walk(m.path())
    };
    assert!(before.contains("deep/a/b/c/needle-42.dat"), "{before:?}");
    assert!(before.contains("pub/only-on-two.txt"));
    f.srv.stop();
    f.srv2.stop();
    let m = Mount::start(&f.list(), &f.opts());
    assert_eq!(walk(m.path()), before, "the same tree, from the index");
    let said = m.launch_output();
    assert!(said.contains("offline"), "{said}");
    // Marked offline where the merged view says where things come from.
    let servers = getxattr(&m.join("pub/README.txt"), "user.ftpcircle.servers");
    assert_eq!(servers, format!("{} (offline)", f.srv.addr()));
    let status = fs::read_to_string(m.join(".ftpcircle/status")).unwrap();
    assert!(status.contains("kept until"), "{status}");
    assert!(!status.contains("none (down since the mount)"), "{status}");
    // Contents cannot come from the index: reading is an error, not wrong data.
    assert!(fs::read(m.join("pub/README.txt")).is_err());
}

#[test]
fn a_listing_changed_while_unmounted_shows_after_revalidation() {
    let f = fixture();
    let opts = f.opts().arg("--cache-ttl").arg("1");
    {
        let m = Mount::start(&f.list(), &opts);
        walk(m.path());
    }
    write_file(&f.root.join("pub/new-file.txt"), b"new");
    fs::remove_file(f.root.join("pub/debian-12.iso")).unwrap();
    // Let the indexed listings grow older than the TTL.
    std::thread::sleep(Duration::from_millis(2500));
    let m = Mount::start(&f.list(), &opts);
    let pub_ = m.join("pub");
    let names = || -> BTreeSet<String> {
        fs::read_dir(&pub_)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let fresh = wait_until(Duration::from_secs(15), || {
        let n = names();
        n.contains("new-file.txt") && !n.contains("debian-12.iso")
    });
    assert!(fresh, "{:?}", names());
    assert_eq!(fs::read(pub_.join("new-file.txt")).unwrap(), b"new");
}

#[test]
fn locate_substring_glob_case_regex_long_and_no_match() {
    let f = fixture();
    {
        let m = Mount::start(&f.list(), &f.opts());
        walk(m.path());
    }
    // Substring: any part of the path.
    let o = f.locate(&["needle"]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(stdout(&o), "/deep/a/b/c/needle-42.dat\n");
    let o = f.locate(&["pub/"]);
    assert_eq!(
        stdout(&o),
        "/pub/README.txt\n/pub/debian-12.iso\n/pub/only-on-two.txt\n"
    );
    // Glob: over the whole path.
    assert_eq!(stdout(&f.locate(&["*.iso"])), "/pub/debian-12.iso\n");
    assert_eq!(
        stdout(&f.locate(&["/pub/*[0-9].iso"])),
        "/pub/debian-12.iso\n"
    );
    assert_eq!(
        f.locate(&["*.is"]).status.code(),
        Some(1),
        "a glob is anchored"
    );
    // Case.
    assert_eq!(f.locate(&["guide.pdf"]).status.code(), Some(1));
    assert_eq!(stdout(&f.locate(&["-i", "guide.pdf"])), "/docs/Guide.PDF\n");
    // Regular expression; several patterns.
    assert_eq!(
        stdout(&f.locate(&["--regex", r"needle-\d+\.dat$", "Guide"])),
        "/deep/a/b/c/needle-42.dat\n/docs/Guide.PDF\n"
    );
    // Long: kind, size, mtime, servers (the merged directory is on both).
    let long = stdout(&f.locate(&["-l", "--regex", "^/pub$|README"]));
    let lines: Vec<&str> = long.lines().collect();
    assert_eq!(lines.len(), 2, "{long}");
    assert!(lines[0].starts_with("d "), "{long}");
    assert!(
        lines[0].contains(&format!("{},{}", f.srv.addr(), f.srv2.addr())),
        "{long}"
    );
    assert!(lines[0].ends_with(" /pub"), "{long}");
    assert!(lines[1].starts_with("f "), "{long}");
    assert!(lines[1].contains(" 5 2024-01-15T"), "{long}");
    assert!(lines[1].ends_with(" /pub/README.txt"), "{long}");
    // Nothing: exit 1, nothing printed.
    let o = f.locate(&["no-such-name"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    // A bad regular expression is an error naming it.
    let o = f.locate(&["--regex", "("]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("pattern"),
        "{o:?}"
    );
}

#[test]
fn index_stopped_part_way_resumes_where_it_stopped() {
    let f = fixture();
    // The first server has 7 directories (root, pub, docs, deep, a, b, c) and the second 2.
    let o = f.crawl(&["--max-listings", "4"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("run it again"), "{err}");
    assert_eq!(
        f.locate(&["needle"]).status.code(),
        Some(1),
        "not reached yet"
    );
    let listed_before = f.srv.listing_count() + f.srv2.listing_count();
    let o = f.crawl(&[]);
    assert!(o.status.success(), "{o:?}");
    let listed = f.srv.listing_count() + f.srv2.listing_count() - listed_before;
    let err = String::from_utf8_lossy(&o.stderr);
    // The second run fetched only what the first left: 9 directories in all, 4 done.
    assert!(err.contains("5 listing(s) fetched"), "{err}");
    assert!(listed >= 5, "{listed}");
    assert_eq!(
        stdout(&f.locate(&["needle"])),
        "/deep/a/b/c/needle-42.dat\n"
    );
    // A complete crawl leaves nothing to resume: a third run within the TTL fetches nothing.
    let o = f.crawl(&[]);
    assert!(o.status.success(), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains(" 0 listing(s) fetched"), "{err}");
}

#[test]
fn a_truncated_index_is_moved_aside_and_rebuilt() {
    let f = fixture();
    // Enough directories that the file spans many pages.
    for i in 0..150 {
        write_file(&f.root.join(format!("many/d{i:03}/f.txt")), b"x");
    }
    let before = {
        let m = Mount::start(&f.list(), &f.opts());
        walk(m.path())
    };
    let len = fs::metadata(&f.index).unwrap().len();
    assert!(len > 16384, "{len}");
    fs::OpenOptions::new()
        .write(true)
        .open(&f.index)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let m = Mount::start(&f.list(), &f.opts());
    let said = m.launch_output();
    assert!(said.contains("moved aside"), "{said}");
    assert_eq!(walk(m.path()), before);
    drop(m);
    let aside = fs::read_dir(f.dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("index.sqlite.bad-")
        })
        .count();
    assert_eq!(aside, 1);
    // The rebuilt index serves locate.
    assert_eq!(
        stdout(&f.locate(&["many/d149/f.txt"])),
        "/many/d149/f.txt\n"
    );
}

#[test]
fn two_mounts_of_one_serverlist_share_the_index() {
    let f = fixture();
    let a = Mount::start(&f.list(), &f.opts());
    let b = Mount::start(&f.list(), &f.opts());
    let (ta, tb) = (walk(a.path()), walk(b.path()));
    assert_eq!(ta, tb);
    for m in [&a, &b] {
        let said = m.launch_output();
        assert!(!said.contains("moved aside"), "{said}");
    }
    drop(a);
    drop(b);
    assert_eq!(
        stdout(&f.locate(&["needle"])),
        "/deep/a/b/c/needle-42.dat\n"
    );
}
