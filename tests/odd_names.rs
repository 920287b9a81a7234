//! Names an `ls` behind LIST would split or expand (issue 15): spaces, a leading `-`, `*`,
//! `?`, `[`, `]`, `#` and `\` in directory and file names at depth >= 2, on real mounts of
//! GNU inetutils ftpd and netkit ftpd (whose LIST and STAT run `ls` on their argument), and
//! of vsftpd and pyftpdlib for comparison. Plus: a listing no line of which can be read is
//! an error for that server, and the directory keeps the other servers' entries.

mod common;

use common::fake::{FakeConfig, FakeFtp};
use common::ls_servers::{LsFtpd, LsKind};
use common::{
    Exchange, FtpServer, Mount, MountOptions, TempDir, curl, mkdir_p, run_ok, write_file,
};
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const CMD_LIMIT: Duration = Duration::from_secs(120);

/// Files (path, content) of the odd tree; every directory holds at least one file except
/// [`EMPTY_DIRS`]. Decoys (`abc`, `qax`, `star`, `pub/sub`) are what a glob or a split
/// argument would list instead.
const FILES: &[(&str, &str)] = &[
    ("pub/plain.txt", "plain\n"),
    ("pub/sub dir/a file.txt", "space dir, space file\n"),
    ("pub/sub dir/-dash dir/-dash file", "leading dashes\n"),
    ("pub/sub/decoy-sub.txt", "decoy: first word of 'sub dir'\n"),
    ("pub/-/-", "dash alone\n"),
    ("pub/st*r/f*le.txt", "star\n"),
    ("pub/star/decoy-star.txt", "decoy: st*r matches star\n"),
    ("pub/q?x/wh?t.txt", "question\n"),
    ("pub/qax/decoy-qax.txt", "decoy: q?x matches qax\n"),
    ("pub/a[b]c/x[1].txt", "brackets\n"),
    ("pub/abc/decoy-abc.txt", "decoy: a[b]c matches abc\n"),
    ("pub/br]ace/cl]ose.txt", "closing bracket\n"),
    ("pub/h#sh/#tag.txt", "hash\n"),
    ("pub/back\\sl/back\\file.txt", "backslash\n"),
    (
        "pub/all -*?[]#\\ mixed/deeper dir/-f *?[]#\\.txt",
        "everything at depth four\n",
    ),
    (
        "pub/sub dir/-dash dir/st*r q?/[x] #y\\z/deep file.txt",
        "depth six\n",
    ),
];
const EMPTY_DIRS: &[&str] = &["pub/empty [dir]", "pub/sub dir/empty -x"];

fn build_tree(root: &Path) {
    for (path, data) in FILES {
        write_file(&root.join(path), data.as_bytes());
    }
    for d in EMPTY_DIRS {
        mkdir_p(&root.join(d));
    }
}

/// Every path `find MNT` must print, relative to MNT ("" = MNT).
fn expected_find() -> BTreeSet<String> {
    let mut set = BTreeSet::from([String::new()]);
    for p in FILES
        .iter()
        .map(|(p, _)| *p)
        .chain(EMPTY_DIRS.iter().copied())
    {
        let mut acc = String::new();
        for part in p.split('/') {
            acc.push('/');
            acc.push_str(part);
            set.insert(acc.clone());
        }
    }
    set
}

fn directories() -> usize {
    expected_find().len() - FILES.len()
}

fn find(mnt: &Path) -> BTreeSet<String> {
    let out = run_ok(Command::new("find").arg(mnt).arg("-print0"), CMD_LIMIT);
    assert!(
        out.stderr.is_empty(),
        "find printed errors:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = mnt.as_os_str().as_bytes();
    out.stdout
        .split(|b| *b == 0)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let rel = p.strip_prefix(prefix).expect("path under the mount");
            String::from_utf8(rel.to_vec()).expect("UTF-8 path")
        })
        .collect()
}

/// An argument an `ls` could split, take as an option or expand.
fn splittable(arg: &str) -> bool {
    arg.contains([' ', '*', '?', '[', ']', '#', '\\']) || arg.split('/').any(|c| c.starts_with('-'))
}

/// One server under test, whatever runs it.
enum Srv {
    Ftp(FtpServer),
    Ls(LsFtpd),
}

impl Srv {
    fn line(&self) -> String {
        match self {
            Srv::Ftp(s) => s.line(),
            Srv::Ls(s) => s.line(),
        }
    }

    fn exchanges(&self) -> Vec<Exchange> {
        match self {
            Srv::Ftp(s) => s.exchanges(),
            Srv::Ls(s) => s.exchanges(),
        }
    }

    fn log(&self) -> String {
        match self {
            Srv::Ftp(s) => s.commands_log(),
            Srv::Ls(s) => s.commands_log(),
        }
    }
}

fn opts() -> MountOptions {
    // A TTL far beyond the test: every directory is listed exactly once.
    MountOptions::default().arg("--cache-ttl").arg("3600")
}

/// Mount `srv` alone over the odd tree: `find` gives exactly the tree, `cat` every file's
/// content, every directory is listed once, and no listing command carries a path an `ls`
/// could take apart. Prints what the server was sent for the odd directories.
fn odd_names_on(name: &str, start: impl FnOnce(&Path) -> Srv) {
    let dir = TempDir::new("odd");
    let root = dir.subdir("root");
    build_tree(&root);
    let srv = start(&root);
    let m = Mount::start(&format!("{}\n", srv.line()), &opts());

    let got = find(m.path());
    let want = expected_find();
    let missing: Vec<_> = want.difference(&got).collect();
    let extra: Vec<_> = got.difference(&want).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{name}: find: missing {missing:#?}\nextra {extra:#?}\nmount log:\n{}",
        m.log()
    );
    for (path, data) in FILES {
        let got = fs::read(m.join(path)).unwrap_or_else(|e| panic!("{name}: cat {path}: {e}"));
        assert_eq!(
            String::from_utf8_lossy(&got),
            *data,
            "{name}: content of {path}"
        );
    }

    let ex = srv.exchanges();
    let listings: Vec<&Exchange> = ex.iter().filter(|e| e.is_listing()).collect();
    let stat_211 = listings
        .iter()
        .filter(|e| e.verb() == "STAT" && e.reply == Some(211))
        .count();
    let split: Vec<&&Exchange> = listings
        .iter()
        .filter(|e| e.verb() != "MLSD" && splittable(e.arg()))
        .collect();
    assert!(
        split.is_empty(),
        "{name}: listings with a path an ls could take apart: {split:#?}"
    );
    assert_eq!(
        listings.len(),
        directories(),
        "{name}: one listing per directory expected; listings: {listings:#?}\nserver log:\n{}",
        srv.log()
    );
    let cwds = ex
        .iter()
        .filter(|e| e.verb() == "CWD" && e.accepted())
        .count();
    let mut verbs: Vec<String> = listings
        .iter()
        .map(|e| {
            if e.arg().is_empty() {
                e.verb()
            } else {
                format!("{} <path>", e.verb())
            }
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    verbs.sort();
    let refused: BTreeSet<String> = ex
        .iter()
        .filter(|e| !e.accepted() && !matches!(e.reply, Some(300..=399)))
        .map(|e| format!("{} -> {:?}", e.verb(), e.reply))
        .collect();
    eprintln!(
        "REPORT {name}: {} directories, {} listings ({}), {cwds} CWD, {stat_211} STAT answered 211, \
         refused: {refused:?}",
        directories(),
        listings.len(),
        verbs.join(", ")
    );
    assert!(
        !m.log().contains("WARN"),
        "{name}: warnings in the mount log:\n{}",
        m.log()
    );
    drop(m);
    drop(srv);
}

#[test]
fn odd_names_on_inetutils_ftpd() {
    odd_names_on("inetutils-ftpd", |root| Srv::Ls(LsFtpd::inetutils(root)));
}

#[test]
fn odd_names_on_netkit_ftpd() {
    odd_names_on("netkit-ftpd", |root| Srv::Ls(LsFtpd::netkit(root)));
}

#[test]
fn odd_names_on_vsftpd() {
    odd_names_on("vsftpd", |root| Srv::Ftp(FtpServer::vsftpd(root)));
}

#[test]
fn odd_names_on_pyftpdlib() {
    odd_names_on("pyftpdlib", |root| {
        Srv::Ftp(FtpServer::pyftpdlib(root, "odd", "names"))
    });
}

/// All four servers on one tree, merged: the same exact `find` and contents (every file is
/// a mirror on four servers).
#[test]
fn odd_names_merged_across_four_servers() {
    let dir = TempDir::new("odd-merged");
    let root = dir.subdir("root");
    build_tree(&root);
    let servers = [
        Srv::Ls(LsFtpd::inetutils(&root)),
        Srv::Ls(LsFtpd::netkit(&root)),
        Srv::Ftp(FtpServer::vsftpd(&root)),
        Srv::Ftp(FtpServer::pyftpdlib(&root, "odd", "names")),
    ];
    let list: String = servers.iter().map(|s| format!("{}\n", s.line())).collect();
    let m = Mount::start(&list, &opts());
    let got = find(m.path());
    assert_eq!(got, expected_find(), "{}", m.log());
    for (path, data) in FILES {
        let got = fs::read(m.join(path)).unwrap_or_else(|e| panic!("cat {path}: {e}"));
        assert_eq!(String::from_utf8_lossy(&got), *data, "content of {path}");
    }
    assert!(!m.log().contains("WARN"), "{}", m.log());
}

/// The harness' servers really are the kind issue 15 is about: `LIST <path>` with a space
/// lists the two halves (error lines only), `LIST` after CWD lists the directory.
#[test]
fn ls_servers_split_list_arguments() {
    for kind in [LsKind::Inetutils, LsKind::Netkit] {
        let dir = TempDir::new("split");
        let root = dir.subdir("root");
        write_file(&root.join("pub/sub dir/a file.txt"), b"a\n");
        let srv = LsFtpd::start(kind, &root);
        let base = format!("ftp://{}", srv.addr());
        let user = format!(
            "{}:{}",
            common::ls_servers::LS_USER,
            common::ls_servers::LS_PASS
        );
        let path = format!("{}/pub/sub dir", srv.root.display());
        let by_path = run_ok(
            curl()
                .args(["--user", &user, "--ftp-method", "nocwd", "-X"])
                .arg(format!("LIST {path}"))
                .arg(format!("{base}/")),
            CMD_LIMIT,
        );
        let text = String::from_utf8_lossy(&by_path.stdout);
        assert!(
            text.contains("No such file or directory") && !text.contains("a file.txt"),
            "{kind:?}: LIST {path:?} gave:\n{text}"
        );
        let inside = run_ok(
            curl()
                .args(["--user", &user, "--ftp-method", "singlecwd"])
                .arg(format!(
                    "{base}/%2F{}/",
                    path.trim_start_matches('/').replace(' ', "%20")
                )),
            CMD_LIMIT,
        );
        let text = String::from_utf8_lossy(&inside.stdout);
        assert!(
            text.contains("a file.txt"),
            "{kind:?}: CWD + LIST gave:\n{text}"
        );
        assert!(
            srv.count_verb("CWD") >= 1,
            "{kind:?}: curl did not CWD:\n{}",
            srv.commands_log()
        );
    }
}

/// A server whose listing of a directory is all garbage: that server fails for that
/// directory (warning naming it and the first bad line), the directory still shows the
/// other server's entries, and other directories of the bad server still work.
#[test]
fn all_garbage_listing_is_an_error_and_others_still_show() {
    let dir = TempDir::new("garbage");
    let root = dir.subdir("root");
    write_file(&root.join("pub/common/from-vsftpd.txt"), b"v\n");
    let vs = FtpServer::vsftpd(&root);
    let fake = FakeFtp::start(
        FakeConfig::new()
            .file("pub/common/from-fake.txt", b"f\n".to_vec())
            .file("pub/fine/ok.txt", b"ok\n".to_vec())
            .raw_list(
                "pub/common",
                vec![
                    b"/pub/common: No such file or directory zz-first-bad".to_vec(),
                    b"something else entirely".to_vec(),
                ],
            ),
    );
    let list = format!("{}\n{}\n", fake.line(), vs.line());
    let m = Mount::start(&list, &opts());
    let names: BTreeSet<Vec<u8>> = fs::read_dir(m.join("pub/common"))
        .expect("readdir pub/common")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([b"from-vsftpd.txt".to_vec()]),
        "{}",
        m.log()
    );
    assert_eq!(
        fs::read(m.join("pub/common/from-vsftpd.txt")).unwrap(),
        b"v\n"
    );
    assert_eq!(fs::read(m.join("pub/fine/ok.txt")).unwrap(), b"ok\n");
    let log = m.log();
    assert!(
        log.lines().any(|l| l.contains("WARN")
            && l.contains(&fake.addr())
            && l.contains("zz-first-bad")
            && l.contains("pub/common")),
        "no warning naming {} and the first bad line:\n{log}",
        fake.addr()
    );
    // The listing by path read nothing, so it was tried once more from inside.
    let cmds = fake.commands();
    assert!(
        cmds.iter().any(|c| c == "CWD /pub/common"),
        "no retry from inside: {cmds:#?}"
    );
    // Only that server's part is missing: the fake alone shows the error as EIO.
    let alone = Mount::start(&format!("{}\n", fake.line()), &opts());
    let err = fs::read_dir(alone.join("pub/common")).map(|rd| rd.count());
    assert_eq!(
        err.as_ref().map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO)),
        "{err:?}"
    );
}

/// A server whose LIST with a path answers only `ls` error lines (its `ls` got the path
/// mangled) while CWD + LIST works: every directory is listed once more from inside, and
/// the mount shows the whole tree.
#[test]
fn path_listing_of_only_error_lines_is_retried_from_inside() {
    let mut cfg = FakeConfig::new()
        .file("top.txt", b"top\n".to_vec())
        .file("pub/docs/readme.txt", b"readme\n".to_vec())
        .file("pub/empty-not/x.bin", b"x".to_vec());
    cfg.list_path_errors = true;
    let fake = FakeFtp::start(cfg);
    let m = Mount::start(&format!("{}\n", fake.line()), &opts());
    let got = find(m.path());
    let want: BTreeSet<String> = [
        "",
        "/top.txt",
        "/pub",
        "/pub/docs",
        "/pub/docs/readme.txt",
        "/pub/empty-not",
        "/pub/empty-not/x.bin",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(got, want, "{}", m.log());
    assert_eq!(
        fs::read(m.join("pub/docs/readme.txt")).unwrap(),
        b"readme\n"
    );
    let cmds = fake.commands();
    for dir in ["/", "/pub", "/pub/docs", "/pub/empty-not"] {
        assert!(
            cmds.iter().any(|c| *c == format!("LIST {dir}")),
            "no LIST {dir}: {cmds:#?}"
        );
        assert!(
            cmds.iter().any(|c| *c == format!("CWD {dir}")),
            "no CWD {dir} after the failed LIST: {cmds:#?}"
        );
    }
    assert!(!m.log().contains("WARN"), "{}", m.log());
}
