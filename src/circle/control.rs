//! The control tree: a directory at the mount root (`.ftpcircle`, or `--control-dir NAME`)
//! that is reachable by path but never listed, so `find`, `grep -r`, `du` and `tar` never walk
//! into it:
//!
//! ```text
//! .ftpcircle/status           one row per server: state, since when, speed, connections, ...
//! .ftpcircle/status.json      the same as JSON, with each server's view
//! .ftpcircle/servers/<name>/  that server's own tree, unmerged (hidden copies included)
//! ```
//!
//! Owns: the control nodes (pinned in the inode table right after the root, see
//! [`super::inodes`]), the view names, and the text of the two status files.
//!
//! A server's view is a directory node like any other whose only source is that server: it
//! is refreshed, cached and forgotten by the same code as the merged tree (one listing cache,
//! one inode table), and paths below it are relative to it ([`DirRole::ViewRoot`]). A merge
//! of one server's listing has no conflicts, so every entry of that server is there, and a
//! read of a file in it reads that server's copy: the hidden copies are reachable byte-exact.
//!
//! Invariants:
//! - the control directory is in no listing: readdir of the root leaves out every entry of
//!   that name (a real one stays reachable in its server's view);
//! - control nodes are never refreshed, dropped or prefetched;
//! - view names are derived from the labels alone (stable across mounts of the same
//!   serverlist) and unique: `/` becomes `_`, and a repeated name gets `~<line>` appended;
//! - the status files are generated from memory (the pool's own records), never from the
//!   network, and without taking the inode table's lock (getattr generates them under it);
//!   each open sees one consistent snapshot.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU32;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::inodes::{DirData, DirRole, Node, NodeKind, Nodes};
use super::server_set::ServerSet;
use super::{Circle, ROOT};
use crate::backend::{Backend, Health};

/// Default name of the control directory.
pub const DEFAULT_NAME: &str = ".ftpcircle";

/// Pinned inodes, pushed in this order right after the root.
pub const CONTROL: u64 = ROOT + 1;
pub const SERVERS: u64 = ROOT + 2;
pub const STATUS: u64 = ROOT + 3;
pub const STATUS_JSON: u64 = ROOT + 4;
/// Server `s`'s view root is inode `VIEWS + s`.
pub const VIEWS: u64 = ROOT + 5;

/// The view directory name of every server, from its label (see the module doc).
pub fn view_names(backend: &dyn Backend) -> Vec<Vec<u8>> {
    let mut names: Vec<Vec<u8>> = Vec::with_capacity(backend.servers());
    let mut seen = std::collections::HashSet::new();
    for s in 0..backend.servers() {
        let mut name: Vec<u8> = backend
            .label(s)
            .bytes()
            .map(|b| if b == b'/' { b'_' } else { b })
            .collect();
        if name.is_empty() || name == b"." || name == b".." || !seen.insert(name.clone()) {
            name.extend_from_slice(format!("~{}", s + 1).as_bytes());
            seen.insert(name.clone());
        }
        names.push(name);
    }
    names
}

fn dir_node(parent: u64, name: &[u8], role: DirRole, sources: ServerSet, now: SystemTime) -> Node {
    Node {
        parent,
        name: name.into(),
        kind: NodeKind::Dir(Box::new(DirData {
            role,
            // Never prefetched below: a view is walked only when someone asks for it.
            prefetched_depth: if role == DirRole::Control { u8::MAX } else { 0 },
            ..DirData::default()
        })),
        size: 0,
        mtime: now,
        sources,
        idx: 0,
        opened: false,
        lookups: AtomicU32::new(0),
    }
}

fn file_node(parent: u64, name: &[u8], idx: u32, now: SystemTime) -> Node {
    Node {
        parent,
        name: name.into(),
        kind: NodeKind::File,
        size: 0,
        mtime: now,
        sources: ServerSet::default(),
        idx,
        opened: false,
        lookups: AtomicU32::new(0),
    }
}

/// Push the control tree right after the root and pin it.
pub(super) fn build(nodes: &mut Nodes, name: &[u8], views: &[Vec<u8>], now: SystemTime) {
    let none = ServerSet::default();
    let c = nodes.push(dir_node(ROOT, name, DirRole::Control, none.clone(), now));
    let s = nodes.push(dir_node(CONTROL, b"servers", DirRole::Control, none, now));
    let st = nodes.push(file_node(CONTROL, b"status", 1, now));
    let sj = nodes.push(file_node(CONTROL, b"status.json", 2, now));
    debug_assert_eq!((c, s, st, sj), (CONTROL, SERVERS, STATUS, STATUS_JSON));
    for (i, v) in views.iter().enumerate() {
        let ino = nodes.push(dir_node(
            SERVERS,
            v,
            DirRole::ViewRoot,
            ServerSet::from_list(&[i]),
            now,
        ));
        debug_assert_eq!(ino, VIEWS + i as u64);
    }
    // Children sorted by name, as lookups binary-search them.
    let mut by_name: Vec<(usize, &Vec<u8>)> = views.iter().enumerate().collect();
    by_name.sort_by(|a, b| a.1.cmp(b.1));
    let order: Vec<u64> = by_name.iter().map(|(i, _)| VIEWS + *i as u64).collect();
    for (idx, &ino) in order.iter().enumerate() {
        if let Some(n) = nodes.get_mut(ino) {
            n.idx = idx as u32;
        }
    }
    set_order(nodes, SERVERS, order);
    set_order(nodes, CONTROL, vec![SERVERS, STATUS, STATUS_JSON]);
    nodes.pin_all();
}

fn set_order(nodes: &mut Nodes, dir: u64, order: Vec<u64>) {
    if let Some(NodeKind::Dir(d)) = nodes.get_mut(dir).map(|n| &mut n.kind) {
        d.order = order.into();
    }
}

/// Is `ino` one of the generated status files?
pub fn is_generated(ino: u64) -> bool {
    ino == STATUS || ino == STATUS_JSON
}

/// One server's row, as both status files show it.
struct Row {
    label: String,
    view: String,
    health: Health,
    offline_since: Option<SystemTime>,
    /// A listing of it succeeded since the mount started.
    listed: bool,
    rtt: Option<Duration>,
    bytes_per_sec: Option<f64>,
}

impl Circle {
    /// The control directory's name at the mount root.
    pub fn control_name(&self) -> &[u8] {
        &self.opts.control_dir
    }

    /// When server `s` went offline (down or refusing our login), or `None` while it answers.
    /// Its last known entries stay in the merged tree for `--offline-keep` from then (see
    /// [`super::refresh`]); a server offline since the mount started reports the mount time.
    pub fn offline_since(&self, s: usize) -> Option<SystemTime> {
        let h = self.backend.health(s);
        h.state
            .offline()
            .then(|| h.since.unwrap_or(self.mounted_at))
    }

    /// Is `ino` in a server's view? Its files are never prefetched: the prefetch cache is
    /// keyed by path, and a view's copy of a path may be the one the merged tree hides.
    pub(super) fn in_view(&self, ino: u64) -> bool {
        self.nodes
            .read()
            .is_ok_and(|n| self.view_of(&n, ino).is_some())
    }

    /// The view of server `s`, relative to the mount root (`.ftpcircle/servers/<name>`).
    /// Takes no lock: the status files are generated under the table's lock.
    pub fn view_path(&self, s: usize) -> String {
        let name = self.view_names.get(s).map_or(&[][..], |n| &n[..]);
        format!(
            "{}/servers/{}",
            String::from_utf8_lossy(&self.opts.control_dir),
            String::from_utf8_lossy(name)
        )
    }

    fn rows(&self) -> Vec<Row> {
        (0..self.backend.servers())
            .map(|s| {
                let speed = self.backend.speed(s);
                Row {
                    label: self.backend.label(s).to_string(),
                    view: self.view_path(s),
                    health: self.backend.health(s),
                    offline_since: self.offline_since(s),
                    listed: self.listed.lock().is_ok_and(|l| l.contains(s)),
                    rtt: speed.rtt,
                    bytes_per_sec: speed.bytes_per_sec,
                }
            })
            .collect()
    }

    /// What happens to a server's entries, in words: listed, kept while offline, or none.
    fn entries_word(&self, r: &Row) -> String {
        match r.offline_since {
            None => "listed".into(),
            Some(_) if !r.listed => "none (down since the mount)".into(),
            Some(t) => format!("kept until {}", utc(t + self.opts.offline_keep)),
        }
    }

    /// The text of `.ftpcircle/status`: a header and one aligned row per server.
    pub fn status_text(&self) -> String {
        let header = [
            "LABEL",
            "STATE",
            "SINCE",
            "RTT",
            "THROUGHPUT",
            "CONNS",
            "LISTINGS",
            "BYTES",
            "ENTRIES",
            "VIEW",
            "LAST ERROR",
        ];
        let mut table: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
        for r in self.rows() {
            let h = &r.health;
            table.push(vec![
                r.label.clone(),
                h.state.word().into(),
                h.since.map_or_else(|| "mount".into(), utc),
                r.rtt
                    .map_or_else(|| "-".into(), |d| format!("{:.1}ms", d.as_secs_f64() * 1e3)),
                r.bytes_per_sec
                    .map_or_else(|| "-".into(), |b| format!("{}/s", human(b as u64))),
                format!("{}/{}", h.connections, h.budget),
                h.listings.to_string(),
                human(h.bytes),
                self.entries_word(&r),
                r.view.clone(),
                h.last_error.clone().unwrap_or_else(|| "-".into()),
            ]);
        }
        text_table(&table)
    }

    /// The text of `.ftpcircle/status.json`: `{"servers": [{"label", "state", "view", ...}]}`.
    pub fn status_json(&self) -> String {
        let mut out = String::from("{\"servers\": [");
        for (i, r) in self.rows().iter().enumerate() {
            let h = &r.health;
            if i > 0 {
                out.push(',');
            }
            let opt_str = |v: Option<String>| v.map_or_else(|| "null".into(), |s| json_str(&s));
            let _ = write!(
                out,
                "\n  {{\"label\": {}, \"state\": {}, \"view\": {}, \"since\": {}, \
                 \"offline_since\": {}, \"entries\": {}, \"last_error\": {}, \"rtt_ms\": {}, \
                 \"bytes_per_sec\": {}, \"connections\": {}, \"budget\": {}, \
                 \"listings\": {}, \"bytes\": {}}}",
                json_str(&r.label),
                json_str(h.state.word()),
                json_str(&r.view),
                opt_str(h.since.map(utc)),
                opt_str(r.offline_since.map(utc)),
                json_str(&self.entries_word(r)),
                opt_str(h.last_error.clone()),
                r.rtt.map_or_else(
                    || "null".into(),
                    |d| format!("{:.3}", d.as_secs_f64() * 1e3)
                ),
                r.bytes_per_sec
                    .map_or_else(|| "null".into(), |b| format!("{b:.0}")),
                h.connections,
                h.budget,
                h.listings,
                h.bytes,
            );
        }
        out.push_str("\n]}\n");
        out
    }

    /// The current text of a generated file.
    pub(super) fn generated(&self, ino: u64) -> Vec<u8> {
        match ino {
            STATUS => self.status_text().into_bytes(),
            STATUS_JSON => self.status_json().into_bytes(),
            _ => Vec::new(),
        }
    }
}

/// `2026-12-01T06:30:01Z`.
pub fn utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Days to civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// `1.5 MiB`, `512 B`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    format!("{v:.1} {}", UNITS[u])
}

/// Rows as an aligned plain-text table (the first row is the header): every column as wide
/// as its widest cell, two spaces between columns, the last column unpadded.
pub fn text_table(rows: &[Vec<String>]) -> String {
    let cols = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |cell| cell.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == cols {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A JSON string literal.
pub fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formats_known_instants() {
        assert_eq!(utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_705_290_300);
        assert_eq!(utc(t), "2024-01-15T03:45:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\nd\u{1}"), "\"a\\\"b\\\\c\\nd\\u0001\"");
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human(0), "0 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(3 * 1024 * 1024), "3.0 MiB");
    }
}
