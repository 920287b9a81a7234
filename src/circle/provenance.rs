//! Provenance xattrs: where an entry of the merged tree comes from, answered from memory.
//!
//! | name | value |
//! |---|---|
//! | `user.ftpcircle.servers` | label of every server with this name, one per line, serverlist order; ` (offline)` after one that is down |
//! | `user.ftpcircle.mirrors` | labels of the servers whose copy is the one shown (the ones reads use) |
//! | `user.ftpcircle.conflicts` | `label<TAB>kind<TAB>size<TAB>mtime` per hidden copy; absent when none |
//! | `user.ftpcircle.url` | `ftp://host:port/path` (or `ftps://`) of the copy shown, no credentials |
//!
//! Owns: the names, their values, and the hidden copies of each directory (kept from its
//! last merge, [`Circle::keep_conflicts`]). The control directory and its files have none.
//!
//! Invariants: no network call; values never hold a user or a password (labels and URLs
//! are `host:port/base`); lines are joined by `\n` without a trailing one.

use super::control;
use super::inodes::NodeKind;
use super::merge::{Conflict, MergedKind};
use super::{Circle, lock_err};
use crate::error::{Error, Kind, Result};

pub const SERVERS: &str = "user.ftpcircle.servers";
pub const MIRRORS: &str = "user.ftpcircle.mirrors";
pub const CONFLICTS: &str = "user.ftpcircle.conflicts";
pub const URL: &str = "user.ftpcircle.url";

fn no_attr() -> Error {
    Error::new(Kind::NoAttr, "no such attribute")
}

/// Percent-encode a path for a URL: everything but unreserved characters and `/`.
pub fn url_escape(path: &[u8]) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// What the xattrs of one node are made of, copied out under the table's lock.
struct Facts {
    sources: Vec<usize>,
    hidden: Vec<Conflict>,
    /// The server whose tree `path` is relative to, for a node in a server's view.
    view: Option<usize>,
    path: Vec<u8>,
    dir: bool,
}

impl Circle {
    /// Remember the copies the last merge of directory `dir` hid (replacing earlier ones).
    pub(super) fn keep_conflicts(&self, dir: u64, conflicts: Vec<Conflict>) {
        let Ok(mut hidden) = self.hidden.lock() else {
            return;
        };
        if conflicts.is_empty() {
            hidden.remove(&dir);
        } else {
            hidden.insert(dir, conflicts);
        }
    }

    fn facts(&self, ino: u64) -> Result<Option<Facts>> {
        let nodes = self.nodes.read().map_err(|_| lock_err())?;
        let node = nodes.get(ino).ok_or_else(Error::not_found)?;
        // The control directory, `servers` and the status files have no provenance.
        if (control::CONTROL..control::VIEWS).contains(&ino) {
            return Ok(None);
        }
        let hidden = self
            .hidden
            .lock()
            .map_err(|_| lock_err())?
            .get(&node.parent)
            .map(|cs| {
                cs.iter()
                    .filter(|c| *c.name == *node.name)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        let view = self.view_of(&nodes, ino);
        Ok(Some(Facts {
            sources: node.sources.iter().collect(),
            hidden,
            view,
            path: Self::path_of(&nodes, ino),
            dir: matches!(node.kind, NodeKind::Dir(_)),
        }))
    }

    /// The server whose view `ino` is in (at or below its root), if any.
    pub(super) fn view_of(&self, nodes: &super::inodes::Nodes, mut ino: u64) -> Option<usize> {
        let views = control::VIEWS..control::VIEWS + self.backend.servers() as u64;
        // Bounded by the tree depth.
        for _ in 0..super::inodes::MAX_DEPTH {
            if views.contains(&ino) {
                return Some((ino - control::VIEWS) as usize);
            }
            if ino == super::ROOT {
                return None;
            }
            ino = nodes.get(ino)?.parent;
        }
        None
    }

    /// The names `listxattr` gives, each followed by a NUL.
    pub fn listxattr(&self, ino: u64) -> Result<Vec<u8>> {
        let Some(f) = self.facts(ino)? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for name in [SERVERS, MIRRORS, CONFLICTS, URL] {
            if name == CONFLICTS && f.hidden.is_empty() {
                continue;
            }
            out.extend_from_slice(name.as_bytes());
            out.push(0);
        }
        Ok(out)
    }

    /// The value of xattr `name` (ENODATA for any other name, or conflicts when none).
    pub fn getxattr(&self, ino: u64, name: &[u8]) -> Result<Vec<u8>> {
        let f = self.facts(ino)?.ok_or_else(no_attr)?;
        let label = |s: usize| self.backend.label(s).to_string();
        let value = match std::str::from_utf8(name).map_err(|_| no_attr())? {
            SERVERS => {
                let mut all = f.sources.clone();
                all.extend(f.hidden.iter().map(|c| c.hidden));
                all.sort_unstable();
                all.dedup();
                all.into_iter()
                    .map(|s| match self.offline_since(s) {
                        Some(_) => format!("{} (offline)", label(s)),
                        None => label(s),
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            }
            MIRRORS => f
                .sources
                .iter()
                .map(|&s| label(s))
                .collect::<Vec<_>>()
                .join("\n"),
            CONFLICTS if !f.hidden.is_empty() => f
                .hidden
                .iter()
                .map(|c| {
                    let kind = match c.kind {
                        MergedKind::File => "file",
                        MergedKind::Dir => "dir",
                        MergedKind::Symlink(_) => "symlink",
                    };
                    let mtime = c.mtime.map_or_else(|| "-".into(), control::utc);
                    format!("{}\t{kind}\t{}\t{mtime}", label(c.hidden), c.size)
                })
                .collect::<Vec<_>>()
                .join("\n"),
            URL => {
                let s = f.view.or(f.sources.first().copied()).ok_or_else(no_attr)?;
                let mut url = self.backend.url_root(s);
                url.push('/');
                url.push_str(&url_escape(&f.path));
                if f.dir && !f.path.is_empty() {
                    url.push('/');
                }
                url
            }
            _ => return Err(no_attr()),
        };
        Ok(value.into_bytes())
    }
}
