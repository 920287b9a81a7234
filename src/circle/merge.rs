//! The merge rules: how the listings of one directory on several servers become one directory.
//!
//! Servers are in serverlist order, which is their priority (first line first). For each name:
//! - the first server (by priority) that has the name decides its kind (directory, file or
//!   symlink) and, for files, its size and mtime;
//! - a directory on several servers is one directory whose contents are the union (the servers
//!   that have it are its sources, each listed later);
//! - a file on several servers is one file only where the copies are the same file (see
//!   [`same_file`]): same size and same modification time at the precision both listings give,
//!   and not found different by content since the mount started (a failed splice check or
//!   different hashes, see [`crate::circle::mirrors`]). Those servers are mirrors and reads can
//!   be served by any of them (in priority order);
//! - everything else is a conflict: a later server's entry of another kind, a file that is not
//!   the same file, or a symlink with another target is hidden. Conflicts are reported to the
//!   caller, which logs each once.
//!
//! Symlinks reach the merge with their target: the listing cache resolves the targets that an
//! MLSD listing leaves out (proftpd's `OS.unix=symlink`) with one LIST of the directory. A
//! symlink whose target still is unknown is left out of the directory (see the README).
//!
//! [`rewrite_target`] makes every symlink target a relative path that stays inside the mount.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::backend::{EntryKind, Precision, RawEntry};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MergedKind {
    Dir,
    File,
    Symlink(Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    pub name: Vec<u8>,
    pub kind: MergedKind,
    pub size: u64,
    pub mtime: Option<SystemTime>,
    /// How precisely the first server's listing gave `mtime`.
    pub mtime_precision: Precision,
    /// Servers holding it (priority order): all servers with the directory, or the mirrors of
    /// the file, or the servers with the same symlink (the first one's is shown).
    pub sources: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub name: Vec<u8>,
    pub kept: usize,
    pub hidden: usize,
    pub why: &'static str,
    /// The hidden entry as its server lists it.
    pub kind: MergedKind,
    pub size: u64,
    pub mtime: Option<SystemTime>,
}

/// Are two listed files copies of the same file? Same size, and the same modification time at
/// the coarser precision of the two listings. A copy listed without a usable time cannot be
/// told apart by time: size alone decides (the splice check still guards reads).
pub fn same_file(a: &RawEntry, b: &RawEntry) -> bool {
    a.size == b.size
        && match (a.mtime, b.mtime) {
            (Some(ta), Some(tb)) => {
                Precision::same_time(ta, a.mtime_precision, tb, b.mtime_precision)
            }
            _ => true,
        }
}

/// Merge one directory's listings, given in priority order as (server, entries).
/// `differ(name, a, b)`: the copies of `name` on servers `a` and `b` were found different by
/// content (they are never mirrors). The result is sorted by name.
pub fn merge(
    listings: &[(usize, &[RawEntry])],
    differ: &dyn Fn(&[u8], usize, usize) -> bool,
) -> (Vec<Merged>, Vec<Conflict>) {
    let mut out: Vec<Merged> = Vec::new();
    // For each merged name: its index in `out` and the entry that decided it.
    let mut index: HashMap<&[u8], (usize, &RawEntry)> = HashMap::new();
    let mut conflicts = Vec::new();
    for &(server, entries) in listings {
        for e in entries {
            let kind = match &e.kind {
                EntryKind::Dir => MergedKind::Dir,
                EntryKind::File => MergedKind::File,
                // Unknown target even after the LIST: left out (see the module doc).
                EntryKind::Symlink(t) if t.is_empty() => continue,
                EntryKind::Symlink(t) => MergedKind::Symlink(t.clone()),
            };
            let Some(&(i, first)) = index.get(e.name.as_slice()) else {
                index.insert(&e.name, (out.len(), e));
                out.push(Merged {
                    name: e.name.clone(),
                    kind,
                    size: e.size,
                    mtime: e.mtime,
                    mtime_precision: e.mtime_precision,
                    sources: vec![server],
                });
                continue;
            };
            let m = &mut out[i];
            let why = match (&m.kind, &kind) {
                (MergedKind::Dir, MergedKind::Dir) => None,
                (MergedKind::File, MergedKind::File) if first.size != e.size => {
                    Some("files of different sizes")
                }
                (MergedKind::File, MergedKind::File) if !same_file(first, e) => {
                    Some("files of different modification times")
                }
                (MergedKind::File, MergedKind::File)
                    if m.sources.iter().any(|&s| differ(&e.name, s, server)) =>
                {
                    Some("files of the same size and time but different contents")
                }
                (MergedKind::File, MergedKind::File) => None,
                // Same link on two servers: the same entry, the first one serves it.
                (MergedKind::Symlink(a), MergedKind::Symlink(b)) if a == b => None,
                (MergedKind::Symlink(_), MergedKind::Symlink(_)) => {
                    Some("symlinks with different targets")
                }
                _ => Some("a file and a directory of the same name"),
            };
            match why {
                None => {
                    if !m.sources.contains(&server) {
                        m.sources.push(server);
                    }
                }
                Some(why) => conflicts.push(Conflict {
                    name: e.name.clone(),
                    kept: m.sources[0],
                    hidden: server,
                    why,
                    kind,
                    size: e.size,
                    mtime: e.mtime,
                }),
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, conflicts)
}

/// Rewrite a symlink target listed by a server so that, followed inside the mount, it reaches
/// the same place and can never leave the mount. The result is relative to the link's
/// directory, lexically normalised (no `.`, no `..` after a name), and its leading `..` climb
/// at most to the mount root, so no walk of it by the kernel goes above the mount.
///
/// - `base`: the server's base path ("/" or "/pub/mirror"); `link_dir`: the directory holding
///   the link, relative to the mount root ("" for the root, no `.`/`..` components).
/// - A relative target is resolved from `link_dir`; `..` at the mount root stays at the root,
///   as in a chroot (`../../../../etc/passwd` from `pub` is the mount's `etc/passwd`).
/// - An absolute target is resolved on the server, `..` at `/` staying at `/`: inside the base
///   path it lands where it points; outside the base path it is read as if the base were the
///   root of a chroot (`/etc/passwd` with base `/pub/mirror` is the mount's `etc/passwd`),
///   which in practice leaves it dangling inside the mount.
/// - A trailing `/` (the target must be a directory) is kept; a target that resolves to the
///   link's own directory is `.`.
pub fn rewrite_target(base: &[u8], link_dir: &[u8], target: &[u8]) -> Vec<u8> {
    let comps = |p: &'_ [u8]| -> Vec<Vec<u8>> {
        p.split(|&b| b == b'/')
            .filter(|c| !c.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    };
    let dir = comps(link_dir);
    let to = if target.starts_with(b"/") {
        let on_server = walk(Vec::new(), target);
        let base = walk(Vec::new(), base);
        match on_server.strip_prefix(base.as_slice()) {
            Some(inside) => inside.to_vec(),
            None => on_server,
        }
    } else {
        walk(dir.clone(), target)
    };
    let common = dir.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = Vec::new();
    for _ in common..dir.len() {
        out.extend_from_slice(b"../");
    }
    for c in &to[common..] {
        out.extend_from_slice(c);
        out.push(b'/');
    }
    if out.is_empty() {
        return b".".to_vec();
    }
    if !target.ends_with(b"/") || to.len() <= common {
        out.pop();
    }
    out
}

/// Apply the components of `path` to the directory `at` (components below a root), lexically:
/// `.` and empty components are skipped, `..` drops the last component and stays at the root.
fn walk(mut at: Vec<Vec<u8>>, path: &[u8]) -> Vec<Vec<u8>> {
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                at.pop();
            }
            name => at.push(name.to_vec()),
        }
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn f(name: &str, size: u64) -> RawEntry {
        RawEntry {
            name: name.as_bytes().to_vec(),
            kind: EntryKind::File,
            size,
            mtime: None,
            mtime_precision: Precision::Second,
        }
    }
    /// A file listed with an mtime of `secs` at `precision`.
    fn ft(name: &str, size: u64, secs: u64, precision: Precision) -> RawEntry {
        RawEntry {
            mtime: Some(UNIX_EPOCH + Duration::from_secs(secs)),
            mtime_precision: precision,
            ..f(name, size)
        }
    }
    fn d(name: &str) -> RawEntry {
        RawEntry {
            kind: EntryKind::Dir,
            ..f(name, 0)
        }
    }
    fn l(name: &str, target: &str) -> RawEntry {
        RawEntry {
            kind: EntryKind::Symlink(target.as_bytes().to_vec()),
            ..f(name, 0)
        }
    }

    fn names(m: &[Merged]) -> Vec<&str> {
        m.iter()
            .map(|e| std::str::from_utf8(&e.name).unwrap())
            .collect()
    }

    fn no_differ() -> impl Fn(&[u8], usize, usize) -> bool {
        |_: &[u8], _, _| false
    }

    #[test]
    fn directories_union_and_are_sorted() {
        let a = [d("pub"), f("z.txt", 1)];
        let b = [d("pub"), f("a.txt", 2), d("docs")];
        let (m, c) = merge(&[(0, &a), (1, &b)], &no_differ());
        assert_eq!(names(&m), ["a.txt", "docs", "pub", "z.txt"]);
        assert!(c.is_empty());
        let pub_ = m.iter().find(|e| e.name == b"pub").unwrap();
        assert_eq!(pub_.sources, [0, 1]);
        assert_eq!(m[0].sources, [1]);
    }

    #[test]
    fn same_size_files_without_times_are_mirrors() {
        let a = [f("big.iso", 100)];
        let b = [f("big.iso", 100)];
        let c = [f("big.iso", 100)];
        let (m, conflicts) = merge(&[(0, &a), (2, &c), (1, &b)], &no_differ());
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[0].sources,
            [0, 2, 1],
            "priority order is the listing order"
        );
        assert!(conflicts.is_empty());
    }

    /// 2024-01-15 03:45:00 UTC.
    const T: u64 = 1_705_290_300;

    #[test]
    fn mirrors_need_the_same_time_at_the_coarser_precision() {
        use Precision::*;
        let mirrors = |a: RawEntry, b: RawEntry| {
            let (m, c) = merge(&[(0, &[a][..]), (1, &[b][..])], &no_differ());
            assert_eq!(m.len(), 1);
            match (m[0].sources.as_slice(), c.as_slice()) {
                ([0, 1], []) => true,
                ([0], [c]) => {
                    assert_eq!((c.kept, c.hidden), (0, 1));
                    assert_eq!(c.why, "files of different modification times");
                    false
                }
                other => panic!("{other:?}"),
            }
        };
        // MLSD against MLSD: to the second.
        assert!(mirrors(
            ft("x", 5, T + 7, Second),
            ft("x", 5, T + 7, Second)
        ));
        assert!(!mirrors(
            ft("x", 5, T + 7, Second),
            ft("x", 5, T + 8, Second)
        ));
        // MLSD against a recent Unix LIST (or DOS LIST): to the minute.
        assert!(mirrors(ft("x", 5, T + 59, Second), ft("x", 5, T, Minute)));
        assert!(mirrors(ft("x", 5, T, Minute), ft("x", 5, T + 59, Second)));
        assert!(!mirrors(ft("x", 5, T + 60, Second), ft("x", 5, T, Minute)));
        assert!(!mirrors(ft("x", 5, T - 1, Second), ft("x", 5, T, Minute)));
        // An old file in a Unix LIST: to the day (midnight UTC stands for the whole day).
        let midnight = T - 3 * 3600 - 45 * 60;
        assert!(mirrors(ft("x", 5, T, Second), ft("x", 5, midnight, Day)));
        assert!(mirrors(ft("x", 5, midnight, Day), ft("x", 5, T, Minute)));
        assert!(mirrors(
            ft("x", 5, midnight + 86_399, Second),
            ft("x", 5, midnight, Day)
        ));
        assert!(!mirrors(
            ft("x", 5, midnight + 86_400, Second),
            ft("x", 5, midnight, Day)
        ));
        assert!(!mirrors(
            ft("x", 5, midnight - 1, Minute),
            ft("x", 5, midnight, Day)
        ));
        // Without a time on either side, size alone decides.
        assert!(mirrors(f("x", 5), ft("x", 5, T, Second)));
        assert!(mirrors(ft("x", 5, T, Day), f("x", 5)));
    }

    #[test]
    fn a_third_copy_is_compared_with_the_one_that_decided() {
        use Precision::*;
        let a = [ft("x", 5, T, Minute)];
        let b = [ft("x", 5, T + 30, Second)];
        let c = [ft("x", 5, T + 90, Second)];
        let (m, conf) = merge(&[(0, &a), (1, &b), (2, &c)], &no_differ());
        assert_eq!(m[0].sources, [0, 1]);
        assert_eq!(m[0].mtime, a[0].mtime, "the first server's time is shown");
        assert_eq!(m[0].mtime_precision, Minute);
        assert_eq!(conf.len(), 1);
        assert_eq!(conf[0].hidden, 2);
    }

    #[test]
    fn copies_found_different_are_never_mirrors_again() {
        let a = [f("x", 5), f("y", 5)];
        let b = [f("x", 5), f("y", 5)];
        let c = [f("x", 5)];
        let differ = |name: &[u8], p: usize, q: usize| name == b"x" && (p, q) == (0, 1);
        let (m, conf) = merge(&[(0, &a), (1, &b), (2, &c)], &differ);
        let x = m.iter().find(|e| e.name == b"x").unwrap();
        assert_eq!(x.sources, [0, 2], "only the pair found different is split");
        let y = m.iter().find(|e| e.name == b"y").unwrap();
        assert_eq!(y.sources, [0, 1], "other files of the pair stay mirrors");
        assert_eq!(conf.len(), 1);
        assert_eq!((conf[0].kept, conf[0].hidden), (0, 1));
        assert_eq!(
            conf[0].why,
            "files of the same size and time but different contents"
        );
        // Server 2 differs from server 1 only: it is compared with every source.
        let differ = |_: &[u8], p: usize, q: usize| (p, q) == (1, 2);
        let (m, _) = merge(&[(0, &a), (1, &b), (2, &c)], &differ);
        assert_eq!(m.iter().find(|e| e.name == b"x").unwrap().sources, [0, 1]);
    }

    #[test]
    fn different_sizes_first_server_wins() {
        let a = [f("x", 10)];
        let b = [f("x", 20)];
        let (m, c) = merge(&[(0, &a), (1, &b)], &no_differ());
        assert_eq!(m[0].size, 10);
        assert_eq!(m[0].sources, [0]);
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].kept, c[0].hidden), (0, 1));
        assert_eq!(c[0].why, "files of different sizes");
    }

    #[test]
    fn file_versus_directory_first_server_decides() {
        let a = [f("clash", 5)];
        let b = [d("clash")];
        let (m, c) = merge(&[(0, &a), (1, &b)], &no_differ());
        assert_eq!(m[0].kind, MergedKind::File);
        assert_eq!(c[0].why, "a file and a directory of the same name");
        let (m, _) = merge(&[(1, &b), (0, &a)], &no_differ());
        assert_eq!(m[0].kind, MergedKind::Dir, "order given is the priority");
        assert_eq!(m[0].sources, [1]);
    }

    #[test]
    fn symlinks_keep_targets_and_conflict_on_different_ones() {
        let a = [l("ln", "t1")];
        let b = [l("ln", "t1")];
        let c = [l("ln", "t2")];
        let (m, conf) = merge(&[(0, &a), (1, &b), (2, &c)], &no_differ());
        assert_eq!(m[0].kind, MergedKind::Symlink(b"t1".to_vec()));
        assert_eq!(
            m[0].sources,
            [0, 1],
            "the same link on two servers: both hold it"
        );
        assert_eq!(conf.len(), 1);
        assert_eq!(conf[0].hidden, 2);
    }

    #[test]
    fn symlink_with_unknown_target_is_left_out() {
        let a = [l("ln", ""), f("other", 1)];
        let b = [f("ln", 3)];
        let (m, c) = merge(&[(0, &a)], &no_differ());
        assert_eq!(names(&m), ["other"]);
        assert!(c.is_empty());
        // Another server's entry of that name is not hidden by it.
        let (m, c) = merge(&[(0, &a), (1, &b)], &no_differ());
        assert_eq!(names(&m), ["ln", "other"]);
        assert_eq!(
            (m[0].kind.clone(), m[0].sources.clone()),
            (MergedKind::File, vec![1])
        );
        assert!(c.is_empty());
    }

    fn rw(base: &str, dir: &str, target: &str) -> String {
        String::from_utf8(rewrite_target(
            base.as_bytes(),
            dir.as_bytes(),
            target.as_bytes(),
        ))
        .unwrap()
    }

    #[test]
    fn absolute_targets_inside_the_base_become_relative() {
        assert_eq!(rw("/", "pub/a", "/pub/x"), "../x");
        assert_eq!(rw("/", "pub/a", "/other/x"), "../../other/x");
        assert_eq!(rw("/", "", "/pub/x"), "pub/x");
        assert_eq!(rw("/mirror", "d", "/mirror/pub/x"), "../pub/x");
        assert_eq!(rw("/mirror/", "d", "//mirror//pub/./x"), "../pub/x");
        assert_eq!(rw("/mirror", "", "/mirror"), ".");
        assert_eq!(rw("/mirror", "a/b", "/mirror"), "../..");
        assert_eq!(rw("/mirror", "a/b", "/mirror/a"), "..");
        assert_eq!(rw("/mirror", "a/b", "/mirror/a/b/c"), "c");
        assert_eq!(rw("/", "a", "/"), "..");
        assert_eq!(rw("/", "a", "/a/sub/"), "sub/", "a trailing slash is kept");
    }

    #[test]
    fn absolute_targets_outside_the_base_stay_inside_the_mount() {
        // Read as if the base were the root of a chroot.
        assert_eq!(rw("/mirror", "d", "/etc/passwd"), "../etc/passwd");
        assert_eq!(rw("/mirror", "", "/etc/passwd"), "etc/passwd");
        assert_eq!(rw("/mirror", "d", "/mirrorx/a"), "../mirrorx/a");
        assert_eq!(rw("/pub/mirror", "d", "/pub/other/x"), "../pub/other/x");
        // `..` at the server's root stays there.
        assert_eq!(rw("/mirror", "d", "/../../etc/passwd"), "../etc/passwd");
        assert_eq!(rw("/", "d", "/../../etc/passwd"), "../etc/passwd");
        // Leaving the base with `..` is leaving it.
        assert_eq!(rw("/mirror", "", "/mirror/../etc/shadow"), "etc/shadow");
    }

    #[test]
    fn relative_targets_cannot_climb_above_the_mount_root() {
        assert_eq!(rw("/", "pub", "rel/x"), "rel/x");
        assert_eq!(rw("/", "pub/a", "../x"), "../x");
        assert_eq!(rw("/", "pub/a", "../../x"), "../../x");
        assert_eq!(rw("/", "pub/a", "../../../x"), "../../x");
        assert_eq!(
            rw("/", "pub", "../../../../../../etc/passwd"),
            "../etc/passwd"
        );
        assert_eq!(rw("/", "", "../../etc/passwd"), "etc/passwd");
        assert_eq!(rw("/", "", ".."), ".");
        assert_eq!(rw("/", "a/b", "../../.."), "../..");
        assert_eq!(rw("/mirror", "a", "../.."), "..", "the base plays no part");
        // Normalised: `.`, empty components and a climb back down.
        assert_eq!(rw("/", "pub", "./x//y/./"), "x/y/");
        assert_eq!(rw("/", "pub", "x/../../pub/y"), "y");
        assert_eq!(rw("/", "pub", "x/../../../../pub/y"), "y");
        assert_eq!(rw("/", "pub", "."), ".");
        assert_eq!(rw("/", "a/b", "c/../.."), "..");
        // Names are bytes, never decoded; `...` and `.x` are names.
        assert_eq!(rw("/", "", "..."), "...");
        assert_eq!(rw("/", "d", "../.x"), "../.x");
        assert_eq!(
            rewrite_target(b"/", b"d", b"../caf\xe9"),
            b"../caf\xe9".to_vec()
        );
    }

    /// Follow `target` from `dir` as the kernel would through plain directories, without any
    /// clamping: `None` if it climbs above the mount root.
    fn follow(dir: &str, target: &str) -> Option<Vec<String>> {
        let mut at: Vec<String> = dir
            .split('/')
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        for c in target.split('/') {
            match c {
                "" | "." => {}
                ".." => {
                    at.pop()?;
                }
                name => at.push(name.to_string()),
            }
        }
        Some(at)
    }

    /// Where a target should lead under the documented rules (`..` stops at each root).
    fn model(base: &str, dir: &str, target: &str) -> Vec<String> {
        let clamp = |start: Vec<String>, p: &str| {
            let mut at = start;
            for c in p.split('/') {
                match c {
                    "" | "." => {}
                    ".." => {
                        at.pop();
                    }
                    name => at.push(name.to_string()),
                }
            }
            at
        };
        if let Some(abs) = target.strip_prefix('/') {
            let on_server = clamp(Vec::new(), abs);
            let base = clamp(Vec::new(), base);
            if on_server.starts_with(&base) {
                on_server[base.len()..].to_vec()
            } else {
                on_server
            }
        } else {
            clamp(follow(dir, "").unwrap(), target)
        }
    }

    #[test]
    fn every_rewritten_target_resolves_inside_the_mount() {
        // Every target of up to 4 components from this alphabet, relative and absolute, from
        // link directories of several depths, under several base paths.
        let alphabet = ["a", "b", "..", ".", ""];
        let mut targets = vec![String::new()];
        for len in 1..=4u32 {
            for n in 0..alphabet.len().pow(len) {
                let mut parts = Vec::new();
                let mut k = n;
                for _ in 0..len {
                    parts.push(alphabet[k % alphabet.len()]);
                    k /= alphabet.len();
                }
                targets.push(parts.join("/"));
            }
        }
        let mut checked = 0;
        for base in ["/", "/a", "/a/b", "/m"] {
            for dir in ["", "a", "a/b", "b/a/a"] {
                for t in &targets {
                    for target in [t.clone(), format!("/{t}")] {
                        if target.is_empty() {
                            continue;
                        }
                        let out = rw(base, dir, &target);
                        assert!(!out.starts_with('/'), "{base} {dir} {target} -> {out}");
                        let lands = follow(dir, &out).unwrap_or_else(|| {
                            panic!("{base} {dir} {target} -> {out} leaves the mount")
                        });
                        assert_eq!(
                            lands,
                            model(base, dir, &target),
                            "{base} {dir} {target} -> {out}"
                        );
                        checked += 1;
                    }
                }
            }
        }
        assert!(checked > 10_000, "{checked}");
    }
}
