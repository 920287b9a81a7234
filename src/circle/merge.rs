//! The merge rules: how the listings of one directory on several servers become one directory.
//!
//! Servers are in serverlist order, which is their priority (first line first). For each name:
//! - the first server (by priority) that has the name decides its kind (directory, file or
//!   symlink) and, for files, its size and mtime;
//! - a directory on several servers is one directory whose contents are the union (the servers
//!   that have it are its sources, each listed later);
//! - a file on several servers with the same size is one file; those servers are mirrors and
//!   reads can be served by any of them (in priority order);
//! - everything else is a conflict: a later server's entry of another kind, a file of another
//!   size, or a symlink with another target is hidden. Conflicts are reported to the caller,
//!   which logs each once.
//!
//! A symlink whose target the server did not say (proftpd's MLSD `OS.unix=symlink`) is treated
//! as a file: the server follows it when we RETR it.

use std::collections::HashMap;
use std::time::SystemTime;

use crate::ftp::listing::{EntryKind, RawEntry};

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
    /// Servers holding it (priority order): all servers with the directory, or the mirrors of
    /// the file, or the one server of the symlink.
    pub sources: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub name: Vec<u8>,
    pub kept: usize,
    pub hidden: usize,
    pub why: &'static str,
}

fn kind_of(e: &RawEntry) -> MergedKind {
    match &e.kind {
        EntryKind::Dir => MergedKind::Dir,
        EntryKind::File => MergedKind::File,
        EntryKind::Symlink(t) if t.is_empty() => MergedKind::File,
        EntryKind::Symlink(t) => MergedKind::Symlink(t.clone()),
    }
}

/// Merge one directory's listings, given in priority order as (server, entries).
/// The result is sorted by name.
pub fn merge(listings: &[(usize, &[RawEntry])]) -> (Vec<Merged>, Vec<Conflict>) {
    let mut out: Vec<Merged> = Vec::new();
    let mut index: HashMap<&[u8], usize> = HashMap::new();
    let mut conflicts = Vec::new();
    for &(server, entries) in listings {
        for e in entries {
            let kind = kind_of(e);
            let Some(&i) = index.get(e.name.as_slice()) else {
                index.insert(&e.name, out.len());
                out.push(Merged {
                    name: e.name.clone(),
                    kind,
                    size: e.size,
                    mtime: e.mtime,
                    sources: vec![server],
                });
                continue;
            };
            let m = &mut out[i];
            let why = match (&m.kind, &kind) {
                (MergedKind::Dir, MergedKind::Dir) => None,
                (MergedKind::File, MergedKind::File) if m.size == e.size => None,
                (MergedKind::File, MergedKind::File) => Some("files of different sizes"),
                (MergedKind::Symlink(a), MergedKind::Symlink(b)) if a == b => {
                    // Same link on two servers: nothing to add, the first one serves it.
                    continue;
                }
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
                }),
            }
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    (out, conflicts)
}

/// Rewrite an absolute symlink target so that following it inside the mount reaches the same
/// place: `/pub/x` seen in `pub/a/link` on a server with base `/` becomes `../x`... relative to
/// the link's directory. Targets outside the server's base path, and relative ones, are kept.
pub fn rewrite_target(base: &[u8], link_dir: &[u8], target: &[u8]) -> Vec<u8> {
    if !target.starts_with(b"/") {
        return target.to_vec();
    }
    let base = trim_slashes(base);
    let t = trim_slashes(target);
    let inside = if base.is_empty() {
        t
    } else if t == base {
        &[][..]
    } else if t.len() > base.len() && t.starts_with(base) && t[base.len()] == b'/' {
        &t[base.len() + 1..]
    } else {
        return target.to_vec();
    };
    let depth = link_dir
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .count();
    let mut out = Vec::new();
    for _ in 0..depth {
        out.extend_from_slice(b"../");
    }
    out.extend_from_slice(inside);
    if out.is_empty() {
        out.push(b'.');
    } else if out.ends_with(b"/") {
        out.pop();
    }
    out
}

fn trim_slashes(p: &[u8]) -> &[u8] {
    let start = p.iter().position(|&b| b != b'/').unwrap_or(p.len());
    let end = p.iter().rposition(|&b| b != b'/').map_or(start, |i| i + 1);
    &p[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, size: u64) -> RawEntry {
        RawEntry {
            name: name.as_bytes().to_vec(),
            kind: EntryKind::File,
            size,
            mtime: None,
        }
    }
    fn d(name: &str) -> RawEntry {
        RawEntry {
            name: name.as_bytes().to_vec(),
            kind: EntryKind::Dir,
            size: 0,
            mtime: None,
        }
    }
    fn l(name: &str, target: &str) -> RawEntry {
        RawEntry {
            name: name.as_bytes().to_vec(),
            kind: EntryKind::Symlink(target.as_bytes().to_vec()),
            size: 0,
            mtime: None,
        }
    }

    fn names(m: &[Merged]) -> Vec<&str> {
        m.iter()
            .map(|e| std::str::from_utf8(&e.name).unwrap())
            .collect()
    }

    #[test]
    fn directories_union_and_are_sorted() {
        let a = [d("pub"), f("z.txt", 1)];
        let b = [d("pub"), f("a.txt", 2), d("docs")];
        let (m, c) = merge(&[(0, &a), (1, &b)]);
        assert_eq!(names(&m), ["a.txt", "docs", "pub", "z.txt"]);
        assert!(c.is_empty());
        let pub_ = m.iter().find(|e| e.name == b"pub").unwrap();
        assert_eq!(pub_.sources, [0, 1]);
        assert_eq!(m[0].sources, [1]);
    }

    #[test]
    fn same_size_files_are_mirrors() {
        let a = [f("big.iso", 100)];
        let b = [f("big.iso", 100)];
        let c = [f("big.iso", 100)];
        let (m, conflicts) = merge(&[(0, &a), (2, &c), (1, &b)]);
        assert_eq!(m.len(), 1);
        assert_eq!(
            m[0].sources,
            [0, 2, 1],
            "priority order is the listing order"
        );
        assert!(conflicts.is_empty());
    }

    #[test]
    fn different_sizes_first_server_wins() {
        let a = [f("x", 10)];
        let b = [f("x", 20)];
        let (m, c) = merge(&[(0, &a), (1, &b)]);
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
        let (m, c) = merge(&[(0, &a), (1, &b)]);
        assert_eq!(m[0].kind, MergedKind::File);
        assert_eq!(c[0].why, "a file and a directory of the same name");
        let (m, _) = merge(&[(1, &b), (0, &a)]);
        assert_eq!(m[0].kind, MergedKind::Dir, "order given is the priority");
        assert_eq!(m[0].sources, [1]);
    }

    #[test]
    fn symlinks_keep_targets_and_conflict_on_different_ones() {
        let a = [l("ln", "t1")];
        let b = [l("ln", "t1")];
        let c = [l("ln", "t2")];
        let (m, conf) = merge(&[(0, &a), (1, &b), (2, &c)]);
        assert_eq!(m[0].kind, MergedKind::Symlink(b"t1".to_vec()));
        assert_eq!(m[0].sources, [0]);
        assert_eq!(conf.len(), 1);
        assert_eq!(conf[0].hidden, 2);
    }

    #[test]
    fn symlink_with_unknown_target_is_a_file() {
        let a = [l("ln", "")];
        let (m, _) = merge(&[(0, &a)]);
        assert_eq!(m[0].kind, MergedKind::File);
    }

    #[test]
    fn absolute_targets_become_relative_inside_the_mount() {
        assert_eq!(rewrite_target(b"/", b"pub/a", b"/pub/x"), b"../../pub/x");
        assert_eq!(rewrite_target(b"/", b"", b"/pub/x"), b"pub/x");
        assert_eq!(
            rewrite_target(b"/mirror", b"d", b"/mirror/pub/x"),
            b"../pub/x"
        );
        assert_eq!(rewrite_target(b"/mirror", b"", b"/mirror"), b".");
        assert_eq!(
            rewrite_target(b"/mirror", b"d", b"/etc/passwd"),
            b"/etc/passwd"
        );
        assert_eq!(
            rewrite_target(b"/mirror", b"d", b"/mirrorx/a"),
            b"/mirrorx/a"
        );
        assert_eq!(rewrite_target(b"/", b"pub", b"rel/x"), b"rel/x");
    }
}
