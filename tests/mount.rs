//! Integration tests over real mounts of ftpcircle-fs.
//!
//! Each test builds its own servers and mount (unique ports and temp dirs),
//! so the tests are independent and can run in parallel.  The fixture is
//! described once as data ([`Spec`]); the files on the servers' disks *and*
//! the expected merged view ([`merge`]) are both computed from it.

mod common;

use common::{
    BIN, FtpServer, Mount, MountOptions, TempDir, TestCert, bpath, is_mountpoint, mkdir_p,
    now_secs, pseudo_random_bytes, run_ok, run_timeout, set_mtime, symlink, utc_secs, write_file,
};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const NEEDLE: &[u8] = b"zebra-needle-7731";
const S3_USER: &str = "circle";
const S3_PASS: &str = "pa,ss\"word";
const CMD_LIMIT: Duration = Duration::from_secs(120);
const EROFS: i32 = libc::EROFS;

// ---------------------------------------------------------------------------
// fixture description and merge model

#[derive(Debug, Clone)]
enum Node {
    File { data: Vec<u8>, mtime: Option<i64> },
    Dir(Tree),
    Link(Vec<u8>),
}

type Tree = BTreeMap<Vec<u8>, Node>;

fn split(path: &[u8]) -> Vec<&[u8]> {
    path.split(|b| *b == b'/')
        .filter(|c| !c.is_empty())
        .collect()
}

fn put(tree: &mut Tree, path: &[u8], node: Node) {
    let parts = split(path);
    let (last, dirs) = parts.split_last().expect("empty path");
    let mut cur = tree;
    for d in dirs {
        let entry = cur
            .entry(d.to_vec())
            .or_insert_with(|| Node::Dir(Tree::new()));
        cur = match entry {
            Node::Dir(t) => t,
            _ => panic!("fixture: {} is not a directory", String::from_utf8_lossy(d)),
        };
    }
    match (cur.get_mut(*last), node) {
        (Some(Node::Dir(_)), Node::Dir(_)) => {}
        (Some(_), _) => panic!("fixture: duplicate {}", path.escape_ascii()),
        (None, node) => {
            cur.insert(last.to_vec(), node);
        }
    }
}

fn file(tree: &mut Tree, path: &[u8], data: &[u8]) {
    put(
        tree,
        path,
        Node::File {
            data: data.to_vec(),
            mtime: None,
        },
    );
}

fn file_at(tree: &mut Tree, path: &[u8], data: &[u8], mtime: i64) {
    put(
        tree,
        path,
        Node::File {
            data: data.to_vec(),
            mtime: Some(mtime),
        },
    );
}

fn dir(tree: &mut Tree, path: &[u8]) {
    put(tree, path, Node::Dir(Tree::new()));
}

fn link(tree: &mut Tree, path: &[u8], target: &[u8]) {
    put(tree, path, Node::Link(target.to_vec()));
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn lookup<'a>(tree: &'a Tree, path: &[u8]) -> Option<&'a Node> {
    let parts = split(path);
    let (last, dirs) = parts.split_last()?;
    let mut cur = tree;
    for d in dirs {
        match cur.get(*d)? {
            Node::Dir(t) => cur = t,
            _ => return None,
        }
    }
    cur.get(*last)
}

/// The fixture: three servers' trees (priority order) and the times used.
struct Spec {
    s1: Tree,
    s2: Tree,
    s3: Tree,
    mirror: Vec<u8>,
    /// Recent mtime of S1's pub/readme.txt, a whole minute (vsftpd LIST
    /// shows hours:minutes for recent files).
    s1_recent: i64,
    /// Recent mtime of S3's pub/s3only.txt, odd seconds (MLSD is exact).
    s3_recent: i64,
}

fn spec() -> Spec {
    let now = now_secs();
    let s1_recent = (now - 3 * 3600) / 60 * 60;
    let s3_recent = now - 3600 - 17;
    let mirror = pseudo_random_bytes(1, 3 * 1024 * 1024 + 4321);
    // Mirrors are copies of the same size and time (to the minute for vsftpd's LIST).
    let mirror_time = (now - 7200) / 60 * 60;

    let mut s1 = Tree::new();
    file_at(&mut s1, b"pub/readme.txt", b"S1 readme\n", s1_recent);
    file_at(
        &mut s1,
        b"pub/common/a.txt",
        b"common a, mirrored on S1 and S3\n",
        mirror_time,
    );
    file(
        &mut s1,
        b"pub/common/target.txt",
        &cat(&[b"link target on S1 ", NEEDLE, b"\n"]),
    );
    link(&mut s1, b"pub/link", b"common/target.txt");
    file_at(&mut s1, b"pub/mirror.bin", &mirror, mirror_time);
    file(
        &mut s1,
        b"pub/clash",
        b"clash: this file on S1 wins over S3's directory\n",
    );
    file(&mut s1, b"pub/sized.txt", b"sized: S1 wins\n");
    file_at(
        &mut s1,
        b"pub/old.txt",
        b"old file on vsftpd\n",
        utc_secs(2021, 3, 4, 10, 20, 30),
    );
    file(&mut s1, b"pub/with space.txt", b"a name with spaces\n");
    dir(&mut s1, b"pub/emptydir");
    file(
        &mut s1,
        b"dir with space/inner file.txt",
        &cat(&[b"inner ", NEEDLE, b"\n"]),
    );

    let mut s2 = Tree::new();
    file(&mut s2, b"pub/s2only.txt", b"only on S2 (FTPS)\n");
    file_at(&mut s2, b"pub/mirror.bin", &mirror, mirror_time);
    file(
        &mut s2,
        b"pub/sized.txt",
        &cat(&[b"sized: the S2 copy is longer and hidden ", NEEDLE, b"\n"]),
    );
    file(&mut s2, b"pub/dirwins/x.txt", b"x from S2's directory\n");
    file_at(
        &mut s2,
        b"docs/guide.txt",
        &cat(&[b"the guide mentions ", NEEDLE, b" once\n"]),
        utc_secs(2022, 7, 8, 9, 10, 11),
    );
    file(&mut s2, b"docs/notes.txt", b"nothing to find here\n");
    file(
        &mut s2,
        b"docs/deep/er/more.txt",
        &cat(&[NEEDLE, b" deep down\n"]),
    );
    file(
        &mut s2,
        b"docs/tls-only.bin",
        &pseudo_random_bytes(2, 300_000),
    );

    let mut s3 = Tree::new();
    file_at(&mut s3, b"pub/s3only.txt", b"only on S3\n", s3_recent);
    file(
        &mut s3,
        b"pub/readme.txt",
        b"S3 readme: longer, hidden by S1's copy\n",
    );
    file_at(
        &mut s3,
        b"pub/common/a.txt",
        b"common a, mirrored on S1 and S3\n",
        mirror_time,
    );
    file(
        &mut s3,
        b"pub/common/b.txt",
        &cat(&[b"common b from S3 ", NEEDLE, b"\n"]),
    );
    file(
        &mut s3,
        b"pub/clash/inside.txt",
        &cat(&[b"hidden inside S3's clash dir ", NEEDLE, b"\n"]),
    );
    file(
        &mut s3,
        b"pub/dirwins",
        &cat(&[b"a file on S3, hidden by S2's directory ", NEEDLE, b"\n"]),
    );
    file(&mut s3, b"pub/caf\xe9.txt", b"latin-1 name\n");
    file_at(
        &mut s3,
        b"pub/old3.txt",
        b"old file on pyftpdlib\n",
        utc_secs(2021, 3, 4, 5, 6, 7),
    );
    file(
        &mut s3,
        b"sub/only-in-sub.txt",
        &cat(&[b"base path root file ", NEEDLE, b"\n"]),
    );
    file(&mut s3, b"sub/nested/x.txt", b"x\n");
    file(
        &mut s3,
        b"sub/pub/fromsub.txt",
        b"merged into pub through the base path\n",
    );

    Spec {
        s1,
        s2,
        s3,
        mirror,
        s1_recent,
        s3_recent,
    }
}

/// Writes a tree to disk under `root`.
fn materialize(tree: &Tree, root: &Path) {
    mkdir_p(root);
    for (name, node) in tree {
        let p = root.join(bpath(name));
        match node {
            Node::File { data, mtime } => {
                write_file(&p, data);
                if let Some(t) = mtime {
                    set_mtime(&p, *t);
                }
            }
            Node::Dir(t) => materialize(t, &p),
            Node::Link(target) => symlink(target, &p),
        }
    }
}

/// The merged view.
#[derive(Debug, Clone)]
enum Merged {
    File(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Merged>),
    Link(Vec<u8>),
}

/// The merge rules, applied to trees given in priority order: names are the
/// union; the highest-priority server having a name decides its kind; a
/// directory merges the same path of every server where it is a directory;
/// a file is the highest-priority server's copy (mirrors of the same size
/// are one file, other sizes are hidden).
fn merge(trees: &[&Tree]) -> BTreeMap<Vec<u8>, Merged> {
    let names: BTreeSet<&Vec<u8>> = trees.iter().flat_map(|t| t.keys()).collect();
    let mut out = BTreeMap::new();
    for name in names {
        let owners: Vec<&Node> = trees.iter().filter_map(|t| t.get(name)).collect();
        let merged = match owners[0] {
            Node::Dir(_) => {
                let subs: Vec<&Tree> = owners
                    .iter()
                    .filter_map(|n| match n {
                        Node::Dir(t) => Some(t),
                        _ => None,
                    })
                    .collect();
                Merged::Dir(merge(&subs))
            }
            Node::File { data, .. } => Merged::File(data.clone()),
            Node::Link(t) => Merged::Link(t.clone()),
        };
        out.insert(name.clone(), merged);
    }
    out
}

/// Every path of the merged view, relative with a leading "/" ("" = root).
fn all_paths(tree: &BTreeMap<Vec<u8>, Merged>, prefix: &[u8], out: &mut BTreeSet<Vec<u8>>) {
    for (name, node) in tree {
        let p = cat(&[prefix, b"/", name]);
        out.insert(p.clone());
        if let Merged::Dir(t) = node {
            all_paths(t, &p, out);
        }
    }
}

fn expected_find(merged: &BTreeMap<Vec<u8>, Merged>) -> BTreeSet<Vec<u8>> {
    let mut out = BTreeSet::new();
    out.insert(Vec::new());
    all_paths(merged, b"", &mut out);
    out
}

/// Regular files (in the merged view) whose contents contain `needle`.
fn expected_grep(
    tree: &BTreeMap<Vec<u8>, Merged>,
    prefix: &[u8],
    needle: &[u8],
    out: &mut BTreeSet<Vec<u8>>,
) {
    for (name, node) in tree {
        let p = cat(&[prefix, b"/", name]);
        match node {
            Merged::File(data) if contains(data, needle) => {
                out.insert(p);
            }
            Merged::Dir(t) => expected_grep(t, &p, needle, out),
            _ => {}
        }
    }
}

/// Directory paths of the merged view ("" = root).
fn merged_dirs(tree: &BTreeMap<Vec<u8>, Merged>, prefix: &[u8], out: &mut Vec<Vec<u8>>) {
    if prefix.is_empty() {
        out.push(Vec::new());
    }
    for (name, node) in tree {
        if let Merged::Dir(t) = node {
            let p = cat(&[prefix, b"/", name]);
            out.push(p.clone());
            merged_dirs(t, &p, out);
        }
    }
}

fn server_dirs(tree: &Tree, prefix: &[u8], out: &mut Vec<Vec<u8>>) {
    if prefix.is_empty() {
        out.push(Vec::new());
    }
    for (name, node) in tree {
        if let Node::Dir(t) = node {
            let p = cat(&[prefix, b"/", name]);
            out.push(p.clone());
            server_dirs(t, &p, out);
        }
    }
}

/// (directories of `tree` visible as directories in the merged view,
/// directories of `tree` hidden by a higher-priority file).
fn visible_and_hidden_dirs(tree: &Tree, merged: &BTreeMap<Vec<u8>, Merged>) -> (usize, usize) {
    let mut mine = Vec::new();
    server_dirs(tree, b"", &mut mine);
    let mut md = Vec::new();
    merged_dirs(merged, b"", &mut md);
    let md: BTreeSet<Vec<u8>> = md.into_iter().collect();
    let visible = mine.iter().filter(|p| md.contains(*p)).count();
    (visible, mine.len() - visible)
}

fn merged_file<'a>(tree: &'a BTreeMap<Vec<u8>, Merged>, path: &[u8]) -> &'a [u8] {
    let parts = split(path);
    let (last, dirs) = parts.split_last().expect("path");
    let mut cur = tree;
    for d in dirs {
        match cur.get(*d) {
            Some(Merged::Dir(t)) => cur = t,
            other => panic!("model: {} is {other:?}", d.escape_ascii()),
        }
    }
    match cur.get(*last) {
        Some(Merged::File(data)) => data,
        other => panic!("model: {} is {other:?}", path.escape_ascii()),
    }
}

fn merged_link<'a>(tree: &'a BTreeMap<Vec<u8>, Merged>, path: &[u8]) -> &'a [u8] {
    let parts = split(path);
    let (last, dirs) = parts.split_last().expect("path");
    let mut cur = tree;
    for d in dirs {
        match cur.get(*d) {
            Some(Merged::Dir(t)) => cur = t,
            other => panic!("model: {} is {other:?}", d.escape_ascii()),
        }
    }
    match cur.get(*last) {
        Some(Merged::Link(target)) => target,
        other => panic!("model: {} is {other:?}", path.escape_ascii()),
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn show(paths: &BTreeSet<Vec<u8>>) -> String {
    paths
        .iter()
        .map(|p| format!("  {}\n", p.escape_ascii()))
        .collect()
}

fn assert_same_paths(what: &str, got: &BTreeSet<Vec<u8>>, want: &BTreeSet<Vec<u8>>) {
    if got != want {
        let missing: BTreeSet<Vec<u8>> = want.difference(got).cloned().collect();
        let extra: BTreeSet<Vec<u8>> = got.difference(want).cloned().collect();
        panic!(
            "{what}: mismatch\nmissing:\n{}unexpected:\n{}",
            show(&missing),
            show(&extra)
        );
    }
}

// ---------------------------------------------------------------------------
// running fixture

/// Servers + mount for the full three-server fixture.  Field order is drop
/// order: unmount first, then stop the servers, then remove the files.
struct Fixture {
    mount: Mount,
    s1: FtpServer,
    s2: FtpServer,
    s3: FtpServer,
    spec: Spec,
    _cert: TestCert,
    _dir: TempDir,
}

impl Fixture {
    fn start(extra_args: &[&str]) -> Fixture {
        let spec = spec();
        let dir = TempDir::new("fixture");
        let roots: Vec<PathBuf> = ["s1", "s2", "s3"].iter().map(|n| dir.join(n)).collect();
        materialize(&spec.s1, &roots[0]);
        materialize(&spec.s2, &roots[1]);
        materialize(&spec.s3, &roots[2]);
        let cert = TestCert::generate(&dir.join("cert"));
        let s1 = FtpServer::vsftpd(&roots[0]);
        let s2 = FtpServer::vsftpd_tls(&roots[1], &cert);
        let s3 = FtpServer::pyftpdlib(&roots[2], S3_USER, S3_PASS);
        let serverlist = format!(
            "# ftpcircle-fs test serverlist\n\n{}\n# FTPS (explicit)\n{}\n\n{}\n",
            s1.line(),
            s2.line(),
            s3.line()
        );
        let mut opts = MountOptions::ca(&cert.ca);
        for a in extra_args {
            opts = opts.arg(a);
        }
        let mount = Mount::start(&serverlist, &opts);
        Fixture {
            mount,
            s1,
            s2,
            s3,
            spec,
            _cert: cert,
            _dir: dir,
        }
    }

    fn merged(&self) -> BTreeMap<Vec<u8>, Merged> {
        merge(&[&self.spec.s1, &self.spec.s2, &self.spec.s3])
    }

    fn mnt(&self) -> &Path {
        self.mount.path()
    }

    fn at(&self, rel: &[u8]) -> PathBuf {
        self.mnt().join(bpath(rel))
    }

    fn servers(&self) -> [(&str, &FtpServer, &Tree); 3] {
        [
            ("S1 vsftpd", &self.s1, &self.spec.s1),
            ("S2 vsftpd FTPS", &self.s2, &self.spec.s2),
            ("S3 pyftpdlib", &self.s3, &self.spec.s3),
        ]
    }
}

/// `find MNT -print0` as a set of paths relative to MNT ("" = MNT itself).
fn find_paths(mnt: &Path, extra: &[&str]) -> BTreeSet<Vec<u8>> {
    let out = run_ok(
        Command::new("find").args(extra).arg(mnt).arg("-print0"),
        CMD_LIMIT,
    );
    assert!(
        out.stderr.is_empty(),
        "find printed errors:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    strip_all(mnt, out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()))
}

fn strip_all<'a>(mnt: &Path, paths: impl Iterator<Item = &'a [u8]>) -> BTreeSet<Vec<u8>> {
    let prefix = mnt.as_os_str().as_bytes();
    paths
        .map(|p| {
            p.strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{} is not under the mount", p.escape_ascii()))
                .to_vec()
        })
        .collect()
}

fn read(p: &Path) -> Vec<u8> {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut v = Vec::new();
    f.read_to_end(&mut v)
        .unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    v
}

fn mtime(p: &Path) -> i64 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .mtime()
}

fn listings(f: &Fixture) -> Vec<usize> {
    f.servers()
        .iter()
        .map(|(_, s, _)| s.listing_count())
        .collect()
}

// ---------------------------------------------------------------------------
// tests

#[test]
fn find_lists_exactly_the_merged_tree() {
    let f = Fixture::start(&[]);
    let got = find_paths(f.mnt(), &[]);
    assert_same_paths("find MNT", &got, &expected_find(&f.merged()));
}

#[test]
fn grep_finds_needle_only_in_visible_files() {
    let f = Fixture::start(&[]);
    let out = run_timeout(
        Command::new("grep")
            .arg("-rlZ")
            .arg(OsStr::from_bytes(NEEDLE))
            .arg(f.mnt()),
        CMD_LIMIT,
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "grep failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "grep printed errors:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = strip_all(
        f.mnt(),
        out.stdout.split(|b| *b == 0).filter(|p| !p.is_empty()),
    );
    let mut want = BTreeSet::new();
    expected_grep(&f.merged(), b"", NEEDLE, &mut want);
    // Sanity of the fixture itself: hidden copies contain the needle too.
    assert!(!want.contains(b"/pub/sized.txt".as_slice()));
    assert!(!want.contains(b"/pub/clash/inside.txt".as_slice()));
    assert!(want.contains(b"/docs/deep/er/more.txt".as_slice()));
    assert_same_paths("grep -rl NEEDLE MNT", &got, &want);
}

#[test]
fn cp_copies_files_byte_exact() {
    let f = Fixture::start(&[]);
    let merged = f.merged();
    let dest = TempDir::new("cp-dest");
    let files: [&[u8]; 7] = [
        b"pub/mirror.bin",     // S1 + S2 mirror, 3 MiB
        b"docs/tls-only.bin",  // only on S2: over FTPS
        b"pub/common/b.txt",   // only on S3
        b"pub/with space.txt", // S1, space in name
        b"pub/caf\xe9.txt",    // S3, latin-1 name
        b"pub/sized.txt",      // S1's copy wins
        b"pub/readme.txt",     // S1's copy wins over S3's
    ];
    let mut cmd = Command::new("cp");
    for rel in files {
        cmd.arg(f.at(rel));
    }
    cmd.arg(dest.path());
    run_ok(&mut cmd, CMD_LIMIT);
    for rel in files {
        let name = split(rel).last().copied().expect("name");
        let got = fs::read(dest.join(bpath(name))).expect("read copy");
        let want = merged_file(&merged, rel);
        assert!(
            got == want,
            "{}: copy differs ({} bytes, want {})",
            rel.escape_ascii(),
            got.len(),
            want.len()
        );
    }
    assert_eq!(
        merged_file(&merged, b"pub/mirror.bin"),
        f.spec.mirror.as_slice()
    );

    // A whole directory tree, served over FTPS only.
    run_ok(
        Command::new("cp")
            .arg("-r")
            .arg(f.at(b"docs"))
            .arg(dest.join("docs")),
        CMD_LIMIT,
    );
    let Some(Node::Dir(docs)) = lookup(&f.spec.s2, b"docs") else {
        panic!("fixture: docs")
    };
    compare_tree(docs, &dest.join("docs"));
}

fn compare_tree(tree: &Tree, on_disk: &Path) {
    let names: BTreeSet<Vec<u8>> = fs::read_dir(on_disk)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    let want: BTreeSet<Vec<u8>> = tree.keys().cloned().collect();
    assert_same_paths(&on_disk.display().to_string(), &names, &want);
    for (name, node) in tree {
        let p = on_disk.join(bpath(name));
        match node {
            Node::File { data, .. } => assert!(read(&p) == *data, "{} differs", p.display()),
            Node::Dir(t) => compare_tree(t, &p),
            Node::Link(_) => {}
        }
    }
}

#[test]
fn merge_rules_pick_the_right_copy() {
    let f = Fixture::start(&[]);
    // File on S1 vs directory on S3: S1's file.
    let clash = fs::symlink_metadata(f.at(b"pub/clash")).expect("stat clash");
    assert!(clash.is_file(), "pub/clash should be S1's file");
    assert_eq!(
        read(&f.at(b"pub/clash")),
        b"clash: this file on S1 wins over S3's directory\n"
    );
    // Directory on S2 vs file on S3: S2's directory.
    assert!(fs::metadata(f.at(b"pub/dirwins")).expect("stat").is_dir());
    assert_eq!(
        read(&f.at(b"pub/dirwins/x.txt")),
        b"x from S2's directory\n"
    );
    // Different sizes: the highest-priority copy.
    assert_eq!(read(&f.at(b"pub/sized.txt")), b"sized: S1 wins\n");
    assert_eq!(read(&f.at(b"pub/readme.txt")), b"S1 readme\n");
    // Union of pub/common from S1 and S3 (a.txt mirrored: listed once).
    let mut names: Vec<Vec<u8>> = fs::read_dir(f.at(b"pub/common"))
        .expect("read_dir pub/common")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    names.sort();
    let want: Vec<Vec<u8>> = vec![b"a.txt".to_vec(), b"b.txt".to_vec(), b"target.txt".to_vec()];
    assert_eq!(names, want);
    // Top level is the union of all three servers.
    let mut top: Vec<Vec<u8>> = fs::read_dir(f.mnt())
        .expect("read_dir root")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    top.sort();
    let want: Vec<Vec<u8>> = f.merged().keys().cloned().collect();
    assert_eq!(top, want);
}

#[test]
fn stat_reports_sizes_mtimes_and_read_only_modes() {
    let f = Fixture::start(&[]);
    let merged = f.merged();
    // Sizes: one file per server kind, winners of conflicts.
    for rel in [
        b"pub/mirror.bin".as_slice(),
        b"pub/sized.txt",
        b"pub/readme.txt",
        b"pub/clash",
        b"docs/tls-only.bin",
        b"pub/common/b.txt",
        b"pub/caf\xe9.txt",
    ] {
        let m = fs::metadata(f.at(rel)).unwrap_or_else(|e| panic!("{}: {e}", rel.escape_ascii()));
        assert_eq!(
            m.len(),
            merged_file(&merged, rel).len() as u64,
            "size of {}",
            rel.escape_ascii()
        );
    }
    // Empty file directory still a directory.
    assert!(fs::metadata(f.at(b"pub/emptydir")).expect("stat").is_dir());

    // vsftpd LIST, recent file: hours and minutes (the fixture uses a whole minute).
    assert_eq!(
        mtime(&f.at(b"pub/readme.txt")),
        f.spec.s1_recent,
        "S1 recent mtime"
    );
    // vsftpd LIST, old file: the date only.  Plain and FTPS.
    let day = utc_secs(2021, 3, 4, 0, 0, 0);
    let got = mtime(&f.at(b"pub/old.txt"));
    assert!(
        (day..day + 86_400).contains(&got),
        "S1 pub/old.txt mtime {got} not on 2021-03-04 UTC"
    );
    let day = utc_secs(2022, 7, 8, 0, 0, 0);
    let got = mtime(&f.at(b"docs/guide.txt"));
    assert!(
        (day..day + 86_400).contains(&got),
        "S2 docs/guide.txt mtime {got} not on 2022-07-08 UTC"
    );
    // pyftpdlib MLSD: exact seconds.
    assert_eq!(
        mtime(&f.at(b"pub/old3.txt")),
        utc_secs(2021, 3, 4, 5, 6, 7),
        "S3 (MLSD) old mtime"
    );
    assert_eq!(
        mtime(&f.at(b"pub/s3only.txt")),
        f.spec.s3_recent,
        "S3 (MLSD) recent mtime"
    );

    // st_blocks: du sees data.
    let du = run_ok(Command::new("du").arg("-s").arg(f.at(b"pub")), CMD_LIMIT);
    let kib: u64 = String::from_utf8_lossy(&du.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .expect("du output");
    assert!(kib >= 3 * 1024, "du -s pub = {kib} KiB, want >= 3 MiB");
    let m = fs::metadata(f.at(b"pub/mirror.bin")).expect("stat mirror");
    assert!(
        m.blocks() * 512 >= m.len(),
        "st_blocks {} too small",
        m.blocks()
    );

    // Directories: nlink >= 2, r-x for everyone.
    for rel in [
        b"".as_slice(),
        b"pub",
        b"docs",
        b"pub/common",
        b"pub/emptydir",
    ] {
        let p = if rel.is_empty() {
            f.mnt().to_path_buf()
        } else {
            f.at(rel)
        };
        let m = fs::metadata(&p).expect("stat dir");
        assert!(m.is_dir(), "{} not a dir", p.display());
        assert!(m.nlink() >= 2, "{} nlink {}", p.display(), m.nlink());
        assert_eq!(
            m.mode() & 0o555,
            0o555,
            "{} mode {:o}",
            p.display(),
            m.mode()
        );
    }
    // Files: r--r--r-- or r-xr-xr-x, never writable.
    for rel in [
        b"pub/readme.txt".as_slice(),
        b"docs/guide.txt",
        b"pub/s3only.txt",
        b"pub/mirror.bin",
    ] {
        let m = fs::metadata(f.at(rel)).expect("stat file");
        assert!(m.is_file());
        let mode = m.permissions().mode() & 0o7777;
        assert!(
            mode == 0o444 || mode == 0o555,
            "{} mode {mode:o}",
            rel.escape_ascii()
        );
    }
}

#[test]
fn symlinks_are_symlinks_and_can_be_followed() {
    let f = Fixture::start(&[]);
    let l = f.at(b"pub/link");
    let m = fs::symlink_metadata(&l).expect("lstat link");
    assert!(m.file_type().is_symlink(), "pub/link is not a symlink");
    assert_eq!(
        fs::read_link(&l).expect("readlink"),
        bpath(merged_link(&f.merged(), b"pub/link"))
    );
    assert_eq!(read(&l), merged_file(&f.merged(), b"pub/common/target.txt"));
    let via_cat = run_ok(Command::new("cat").arg(&l), CMD_LIMIT).stdout;
    assert_eq!(via_cat, merged_file(&f.merged(), b"pub/common/target.txt"));
    assert!(fs::metadata(&l).expect("stat through link").is_file());
    // find -L follows it without errors and sees the same paths.
    let got = find_paths(f.mnt(), &["-L"]);
    assert_same_paths("find -L MNT", &got, &expected_find(&f.merged()));
}

fn expect_erofs<T: std::fmt::Debug>(what: &str, r: std::io::Result<T>) {
    match r {
        Ok(v) => panic!("{what}: succeeded ({v:?}) on a read-only mount"),
        Err(e) => assert_eq!(
            e.raw_os_error(),
            Some(EROFS),
            "{what}: want EROFS, got {e} ({:?})",
            e.raw_os_error()
        ),
    }
}

fn libc_path(p: &Path) -> std::ffi::CString {
    std::ffi::CString::new(p.as_os_str().as_bytes()).expect("nul in path")
}

#[test]
fn writes_fail_with_erofs() {
    let f = Fixture::start(&[]);
    let readme = f.at(b"pub/readme.txt");
    let before = read(&readme);

    expect_erofs("create", fs::File::create(f.at(b"pub/new.txt")));
    expect_erofs("create at root", fs::File::create(f.at(b"new.txt")));
    expect_erofs(
        "open existing for write",
        fs::OpenOptions::new().write(true).open(&readme),
    );
    expect_erofs(
        "open for append",
        fs::OpenOptions::new().append(true).open(&readme),
    );
    expect_erofs("mkdir", fs::create_dir(f.at(b"pub/newdir")));
    expect_erofs("mkdir at root", fs::create_dir(f.at(b"newtop")));
    expect_erofs("rm", fs::remove_file(&readme));
    expect_erofs("rmdir", fs::remove_dir(f.at(b"pub/emptydir")));
    expect_erofs("mv", fs::rename(&readme, f.at(b"pub/readme2.txt")));
    expect_erofs("mv dir", fs::rename(f.at(b"docs"), f.at(b"docs2")));
    expect_erofs(
        "chmod",
        fs::set_permissions(&readme, fs::Permissions::from_mode(0o644)),
    );
    expect_erofs("chown", std::os::unix::fs::chown(&readme, Some(0), Some(0)));
    expect_erofs("ln", fs::hard_link(&readme, f.at(b"pub/hard.txt")));
    expect_erofs(
        "ln -s",
        std::os::unix::fs::symlink("readme.txt", f.at(b"pub/soft")),
    );
    let file = fs::File::open(&readme).expect("open read-only");
    expect_erofs(
        "touch (futimens)",
        file.set_modified(std::time::SystemTime::now()),
    );
    let c = libc_path(&readme);
    // SAFETY: c is a valid NUL-terminated path.
    let rc = unsafe { libc::truncate(c.as_ptr(), 0) };
    expect_erofs(
        "truncate",
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        },
    );
    // SAFETY: valid path, null times = now.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), std::ptr::null(), 0) };
    expect_erofs(
        "touch (utimensat)",
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        },
    );
    // The command-line tools agree.
    for args in [
        vec!["touch".to_string(), readme.display().to_string()],
        vec!["mkdir".into(), f.at(b"pub/x").display().to_string()],
        vec![
            "truncate".into(),
            "-s0".into(),
            readme.display().to_string(),
        ],
    ] {
        let out = run_timeout(Command::new(&args[0]).args(&args[1..]), CMD_LIMIT);
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Read-only file system"), "{args:?}: {err}");
    }
    // Nothing changed.
    assert_eq!(read(&readme), before);
    for rel in [
        b"pub/new.txt".as_slice(),
        b"new.txt",
        b"pub/newdir",
        b"newtop",
        b"pub/readme2.txt",
        b"docs2",
        b"pub/hard.txt",
        b"pub/soft",
        b"pub/x",
    ] {
        assert!(
            fs::symlink_metadata(f.at(rel)).is_err(),
            "{} appeared",
            rel.escape_ascii()
        );
    }
    assert!(
        fs::metadata(f.at(b"pub/emptydir"))
            .expect("emptydir")
            .is_dir()
    );
    // No server was asked to change anything (each log shows a login first,
    // so this is not vacuous).
    for (name, server, _) in f.servers() {
        server.assert_no_write_commands(name);
    }
}

#[test]
fn latin1_name_is_byte_faithful() {
    let f = Fixture::start(&[]);
    let name: &[u8] = b"caf\xe9.txt";
    let names: Vec<Vec<u8>> = fs::read_dir(f.at(b"pub"))
        .expect("read_dir pub")
        .map(|e| e.expect("entry").file_name().as_bytes().to_vec())
        .collect();
    assert!(
        names.iter().any(|n| n == name),
        "pub/ has no entry with bytes caf\\xe9.txt: {:?}",
        names
            .iter()
            .map(|n| n.escape_ascii().to_string())
            .collect::<Vec<_>>()
    );
    assert!(
        !names
            .iter()
            .any(|n| n.as_slice() == "caf\u{e9}.txt".as_bytes()),
        "name was re-encoded as UTF-8"
    );
    let p = f.at(b"pub/caf\xe9.txt");
    assert_eq!(read(&p), b"latin-1 name\n");
    assert_eq!(fs::metadata(&p).expect("stat").len(), 13);
}

#[test]
fn listings_are_cached_within_ttl() {
    let f = Fixture::start(&["--cache-ttl", "600"]);
    let merged = f.merged();
    let want = expected_find(&merged);
    assert_same_paths("find #1", &find_paths(f.mnt(), &[]), &want);
    let first = listings(&f);
    assert_same_paths("find #2", &find_paths(f.mnt(), &[]), &want);
    // stat every entry too (find -ls), and list a few directories again.
    run_ok(Command::new("find").arg(f.mnt()).arg("-ls"), CMD_LIMIT);
    run_ok(
        Command::new("ls")
            .arg("-laR")
            .arg(f.at(b"pub"))
            .arg(f.at(b"docs")),
        CMD_LIMIT,
    );
    let second = listings(&f);
    for (i, (name, server, tree)) in f.servers().iter().enumerate() {
        let (visible, hidden) = visible_and_hidden_dirs(tree, &merged);
        // Listing commands per argument, for the failure message.
        let mut exchanges: BTreeMap<String, usize> = BTreeMap::new();
        for e in server.exchanges().iter().filter(|e| e.is_listing()) {
            *exchanges.entry(e.command.clone()).or_default() += 1;
        }
        assert!(
            first[i] >= visible && first[i] <= visible + hidden,
            "{name}: {} listings for the first find, want one per directory \
             ({visible} visible + at most {hidden} hidden): {exchanges:?}",
            first[i]
        );
        assert_eq!(
            second[i], first[i],
            "{name}: listings repeated within the TTL: {exchanges:?}"
        );
    }
}

#[test]
fn listings_are_refreshed_after_ttl() {
    let f = Fixture::start(&["--cache-ttl", "1"]);
    let merged = f.merged();
    let want = expected_find(&merged);
    assert_same_paths("find #1", &find_paths(f.mnt(), &[]), &want);
    let first = listings(&f);
    std::thread::sleep(Duration::from_millis(2500));
    assert_same_paths("find #2", &find_paths(f.mnt(), &[]), &want);
    let second = listings(&f);
    for (i, (name, _, tree)) in f.servers().iter().enumerate() {
        let (visible, _) = visible_and_hidden_dirs(tree, &merged);
        assert!(
            second[i] >= first[i] + visible,
            "{name}: {} -> {} listings; after the TTL every directory \
             ({visible}) should be listed again",
            first[i],
            second[i]
        );
    }
}

#[test]
fn bad_serverlist_exits_2_naming_file_and_line() {
    let dir = TempDir::new("badlist");
    let mnt = dir.subdir("mnt");
    let cases: [(&str, &str, usize); 3] = [
        (
            "bad-tls",
            "# comment\n127.0.0.1:2121,,,0\n127.0.0.1:2122,,,maybe\n",
            3,
        ),
        (
            "bad-port",
            "# a\n\n127.0.0.1:2121,,,0\n127.0.0.1:99999,,,0\n",
            4,
        ),
        ("bad-address", "\n[::1:2121,,,0\n", 2),
    ];
    for (name, text, line) in cases {
        let list = dir.join(format!("{name}.txt"));
        fs::write(&list, text).expect("write serverlist");
        let out = run_timeout(
            Command::new(BIN)
                .arg("--servers")
                .arg(&list)
                .args(["--timeout", "2"])
                .arg(&mnt),
            Duration::from_secs(30),
        );
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mounted = is_mountpoint(&mnt);
        if mounted {
            common::lazy_unmount(&mnt);
        }
        assert!(!mounted, "{name}: mounted despite a bad serverlist");
        assert_eq!(out.status.code(), Some(2), "{name}: status; output:\n{all}");
        let want = format!("{}:{line}", list.display());
        assert!(
            all.contains(&want),
            "{name}: output does not name {want}:\n{all}"
        );
    }
    // A missing serverlist is an error too.
    let missing = dir.join("does-not-exist.txt");
    let out = run_timeout(
        Command::new(BIN).arg("--servers").arg(&missing).arg(&mnt),
        Duration::from_secs(30),
    );
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "missing serverlist accepted");
    assert!(all.contains("does-not-exist.txt"), "{all}");
    assert!(!is_mountpoint(&mnt));
}

#[test]
fn base_path_becomes_the_server_root() {
    let spec = spec();
    let dir = TempDir::new("basepath");
    materialize(&spec.s1, &dir.join("s1"));
    materialize(&spec.s3, &dir.join("s3"));
    let s1 = FtpServer::vsftpd(&dir.join("s1"));
    let s3 = FtpServer::pyftpdlib(&dir.join("s3"), S3_USER, S3_PASS);
    let serverlist = format!("{}\n{}\n", s1.line(), s3.line_with_base("/sub"));
    let mount = Mount::start(&serverlist, &MountOptions::default());
    let Some(Node::Dir(sub)) = lookup(&spec.s3, b"sub") else {
        panic!("fixture: sub")
    };
    let merged = merge(&[&spec.s1, sub]);
    let got = find_paths(mount.path(), &[]);
    assert_same_paths("find MNT (S3 based at /sub)", &got, &expected_find(&merged));
    assert!(!got.contains(b"/sub".as_slice()));
    assert_eq!(
        read(&mount.join("only-in-sub.txt")),
        merged_file(&merged, b"only-in-sub.txt")
    );
    assert_eq!(
        read(&mount.join("pub/fromsub.txt")),
        b"merged into pub through the base path\n"
    );
    drop(mount);
    drop((s1, s3));
}

#[test]
fn implicit_ftps_server() {
    let dir = TempDir::new("implicit");
    let cert = TestCert::generate(&dir.join("cert"));
    let root = dir.join("root");
    write_file(&root.join("shared/implicit.txt"), b"over implicit FTPS\n");
    let big = pseudo_random_bytes(3, 200_000);
    write_file(&root.join("shared/big.bin"), &big);
    let server = FtpServer::vsftpd_implicit_tls(&root, &cert);
    let mount = Mount::start(&format!("{}\n", server.line()), &MountOptions::ca(&cert.ca));
    assert_eq!(
        read(&mount.join("shared/implicit.txt")),
        b"over implicit FTPS\n"
    );
    assert!(
        read(&mount.join("shared/big.bin")) == big,
        "big.bin differs"
    );
}

#[test]
fn ipv6_server_address() {
    let dir = TempDir::new("v6");
    let root = dir.join("root");
    write_file(&root.join("shared/v6.txt"), b"over IPv6 loopback\n");
    let Some(server) = FtpServer::vsftpd_v6(&root) else {
        eprintln!("SKIP: no IPv6 loopback on this machine");
        return;
    };
    assert!(server.line().starts_with("[::1]:"));
    let mount = Mount::start(&format!("{}\n", server.line()), &MountOptions::default());
    assert_eq!(read(&mount.join("shared/v6.txt")), b"over IPv6 loopback\n");
    let found = find_paths(mount.path(), &[]);
    let want: BTreeSet<Vec<u8>> = [&b""[..], b"/shared", b"/shared/v6.txt"]
        .iter()
        .map(|p| p.to_vec())
        .collect();
    assert_same_paths("find MNT ([::1] server)", &found, &want);
}

#[test]
fn daemon_exits_after_fusermount_u() {
    let dir = TempDir::new("daemon-exit");
    let root = dir.join("root");
    write_file(&root.join("pub/hello.txt"), b"hello\n");
    let server = FtpServer::vsftpd(&root);
    let mut mount = Mount::start(&format!("{}\n", server.line()), &MountOptions::default());
    assert_eq!(read(&mount.join("pub/hello.txt")), b"hello\n");
    let pids = mount.pids();
    assert!(!pids.is_empty(), "no ftpcircle-fs process serves the mount");
    run_ok(
        Command::new("fusermount3").arg("-u").arg(mount.path()),
        CMD_LIMIT,
    );
    assert!(!is_mountpoint(mount.path()));
    let exited = common::wait_until(Duration::from_secs(10), || {
        common::daemon_pids(mount.path()).is_empty()
    });
    assert!(
        exited,
        "daemon {pids:?} still running 10 s after fusermount3 -u"
    );
    mount.unmount();
}

fn single_server_foreground(sig: i32) {
    let dir = TempDir::new("fg");
    let root = dir.join("root");
    write_file(&root.join("pub/hello.txt"), b"hello\n");
    let server = FtpServer::vsftpd(&root);
    let mut mount = Mount::foreground(&format!("{}\n", server.line()), &MountOptions::default());
    assert_eq!(read(&mount.join("pub/hello.txt")), b"hello\n");
    let mnt = mount.path().to_path_buf();
    let status = mount.signal_foreground(sig, Duration::from_secs(15));
    let status =
        status.unwrap_or_else(|| panic!("-f process did not exit within 15 s of signal {sig}"));
    assert!(!is_mountpoint(&mnt), "still mounted after signal {sig}");
    assert!(status.success(), "exit status after signal {sig}: {status}");
}

#[test]
fn foreground_unmounts_cleanly_on_sigterm() {
    single_server_foreground(libc::SIGTERM);
}

#[test]
fn foreground_unmounts_cleanly_on_sigint() {
    single_server_foreground(libc::SIGINT);
}
