//! The merged view against an in-memory backend: listing counts, negative lookups, inode
//! stability, reads with failover, REST fallback, short and changed transfers. No kernel mount
//! and no network: the FTP side has its own tests against real servers (tests/).

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;
use crate::backend::ByteStream;
use crate::ftp::listing::{EntryKind, RawEntry};

#[derive(Default)]
struct MockServer {
    dirs: HashMap<Vec<u8>, Vec<RawEntry>>,
    files: HashMap<Vec<u8>, Vec<u8>>,
    /// Streams end (as if the connection dropped) after this many bytes.
    drop_after: Option<usize>,
    no_rest: bool,
    down: bool,
}

#[derive(Default)]
struct Mock {
    servers: Vec<MockServer>,
    lists: Mutex<HashMap<(usize, Vec<u8>), usize>>,
    opens: Mutex<Vec<(usize, u64)>>,
}

impl Mock {
    fn lists_of(&self, s: usize, path: &[u8]) -> usize {
        let l = self.lists.lock().unwrap();
        l.get(&(s, path.to_vec())).copied().unwrap_or(0)
    }
    fn total_lists(&self) -> usize {
        self.lists.lock().unwrap().values().sum()
    }
}

struct MockStream {
    data: Vec<u8>,
    pos: usize,
    /// Bytes left before the stream "drops".
    budget: Option<usize>,
}

impl ByteStream for MockStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut n = buf.len().min(self.data.len() - self.pos).min(7919);
        if let Some(b) = self.budget.as_mut() {
            if *b == 0 {
                return Err(Error::new(Kind::Network, "connection reset"));
            }
            n = n.min(*b);
            *b -= n;
        }
        buf[..n].copy_from_slice(&self.data[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
    fn finish(self: Box<Self>) -> Result<()> {
        Ok(())
    }
    fn abort(self: Box<Self>) {}
}

impl Backend for Mock {
    fn servers(&self) -> usize {
        self.servers.len()
    }
    fn label(&self, s: usize) -> &str {
        ["s0", "s1", "s2"].get(s).copied().unwrap_or("s?")
    }
    fn base(&self, _s: usize) -> &[u8] {
        b"/"
    }
    fn is_down(&self, s: usize) -> bool {
        self.servers[s].down
    }
    fn list(&self, s: usize, path: &[u8], _prio: Priority) -> Result<Vec<RawEntry>> {
        *self
            .lists
            .lock()
            .unwrap()
            .entry((s, path.to_vec()))
            .or_default() += 1;
        let srv = &self.servers[s];
        if srv.down {
            return Err(Error::new(Kind::Timeout, "timed out"));
        }
        srv.dirs.get(path).cloned().ok_or_else(Error::not_found)
    }
    fn open(
        &self,
        s: usize,
        path: &[u8],
        offset: u64,
        _prio: Priority,
    ) -> Result<Box<dyn ByteStream>> {
        self.opens.lock().unwrap().push((s, offset));
        let srv = &self.servers[s];
        if srv.down {
            return Err(Error::new(Kind::Unavailable, "down"));
        }
        if offset > 0 && srv.no_rest {
            return Err(Error::new(Kind::NoRest, "no REST"));
        }
        let data = srv.files.get(path).cloned().ok_or_else(Error::not_found)?;
        Ok(Box::new(MockStream {
            data,
            pos: offset as usize,
            budget: srv.drop_after,
        }))
    }
}

fn file(name: &str, size: usize) -> RawEntry {
    RawEntry {
        name: name.into(),
        kind: EntryKind::File,
        size: size as u64,
        mtime: None,
    }
}
fn dir(name: &str) -> RawEntry {
    RawEntry {
        name: name.into(),
        kind: EntryKind::Dir,
        size: 0,
        mtime: None,
    }
}

fn bytes(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

fn circle(mock: Mock, ttl: Duration) -> (Arc<Mock>, Circle) {
    let mock = Arc::new(mock);
    let c = Circle::new(
        Arc::clone(&mock) as Arc<dyn Backend>,
        Options {
            ttl,
            cache_entries: 10_000,
            max_wait: Duration::from_secs(5),
            prefetch: false,
        },
    );
    (mock, c)
}

/// Two servers: `pub` on both (merged), a mirrored 3 MB file, a file only on s1.
fn two_servers() -> Mock {
    let big = bytes(3_000_000, 7);
    let mut s0 = MockServer::default();
    s0.dirs.insert(b"".to_vec(), vec![dir("pub")]);
    s0.dirs.insert(
        b"pub".to_vec(),
        vec![file("big.bin", big.len()), file("a", 1)],
    );
    s0.files.insert(b"pub/big.bin".to_vec(), big.clone());
    s0.files.insert(b"pub/a".to_vec(), b"A".to_vec());
    let mut s1 = MockServer::default();
    s1.dirs.insert(b"".to_vec(), vec![dir("pub"), dir("docs")]);
    s1.dirs.insert(
        b"pub".to_vec(),
        vec![file("big.bin", big.len()), file("b", 2)],
    );
    s1.dirs.insert(b"docs".to_vec(), vec![]);
    s1.files.insert(b"pub/big.bin".to_vec(), big);
    s1.files.insert(b"pub/b".to_vec(), b"BB".to_vec());
    Mock {
        servers: vec![s0, s1],
        ..Default::default()
    }
}

fn read_all(c: &Circle, ino: u64) -> Result<Vec<u8>> {
    let (fh, _) = c.open(ino)?;
    let mut out = Vec::new();
    // Bounded by the file size: each turn reads at least one byte or ends.
    loop {
        let d = c.read(fh, out.len() as u64, 128 * 1024)?;
        if d.as_slice().is_empty() {
            break;
        }
        out.extend_from_slice(d.as_slice());
    }
    c.release(fh);
    Ok(out)
}

fn names(c: &Circle, ino: u64) -> Vec<String> {
    c.readdir(ino)
        .unwrap()
        .iter()
        .map(|e| String::from_utf8_lossy(&e.name).into_owned())
        .collect()
}

#[test]
fn one_listing_per_directory_per_server_within_the_ttl() {
    let (mock, c) = circle(two_servers(), Duration::from_secs(60));
    assert_eq!(names(&c, ROOT), ["docs", "pub"]);
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(names(&c, pub_), ["a", "b", "big.bin"]);
    // Lookups of names that do not exist are answered from the cached listings.
    for _ in 0..10 {
        assert_eq!(c.lookup(pub_, b"nope").unwrap_err().kind, Kind::NotFound);
        assert_eq!(c.lookup(ROOT, b"nope").unwrap_err().kind, Kind::NotFound);
    }
    names(&c, ROOT);
    names(&c, pub_);
    assert_eq!(mock.lists_of(0, b""), 1);
    assert_eq!(mock.lists_of(1, b""), 1);
    assert_eq!(mock.lists_of(0, b"pub"), 1);
    assert_eq!(mock.lists_of(1, b"pub"), 1);
    // docs is only on s1: s0 is never asked for it.
    let docs = c.lookup(ROOT, b"docs").unwrap().ino;
    names(&c, docs);
    assert_eq!(mock.lists_of(0, b"docs"), 0);
    assert_eq!(mock.total_lists(), 5);
    assert_eq!(c.listing_fetches(), 5);
}

#[test]
fn inodes_stay_stable_across_refreshes() {
    let (mock, c) = circle(two_servers(), Duration::ZERO);
    let a = c.lookup(ROOT, b"pub").unwrap().ino;
    let big = c.lookup(a, b"big.bin").unwrap().ino;
    for _ in 0..3 {
        assert_eq!(c.lookup(ROOT, b"pub").unwrap().ino, a);
        assert_eq!(c.lookup(a, b"big.bin").unwrap().ino, big);
    }
    assert!(mock.lists_of(0, b"pub") >= 3, "TTL 0 lists every time");
}

#[test]
fn mirrored_file_reads_whole_and_fails_over_mid_transfer() {
    let mut m = two_servers();
    m.servers[0].drop_after = Some(1_000_000);
    let expected = m.servers[1].files[&b"pub/big.bin"[..]].clone();
    let (mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let big = c.lookup(pub_, b"big.bin").unwrap();
    assert_eq!(big.size, 3_000_000);
    assert_eq!(read_all(&c, big.ino).unwrap(), expected);
    let opens = mock.opens.lock().unwrap().clone();
    assert_eq!(opens[0], (0, 0), "first by priority");
    assert!(
        opens
            .iter()
            .any(|&(s, off)| s == 1 && off > 0 && off <= 1_000_000),
        "continued on the mirror at the offset reached: {opens:?}"
    );
}

#[test]
fn short_transfer_without_mirror_is_an_error_not_short_data() {
    let mut m = two_servers();
    m.servers[0].drop_after = Some(500);
    let (_mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    // "a" is 1 byte: fine. Make a bigger single-copy file by lying about the size.
    let a = c.lookup(pub_, b"a").unwrap().ino;
    assert_eq!(read_all(&c, a).unwrap(), b"A");
    let mut m = two_servers();
    m.servers[0].dirs.get_mut(&b"pub"[..]).unwrap()[1] = file("a", 10);
    let (_mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let a = c.lookup(pub_, b"a").unwrap().ino;
    let err = read_all(&c, a).unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
}

#[test]
fn file_longer_than_listed_is_an_error() {
    let mut m = two_servers();
    m.servers[0]
        .files
        .insert(b"pub/a".to_vec(), b"AAAA".to_vec());
    let (_mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let a = c.lookup(pub_, b"a").unwrap().ino;
    assert_eq!(read_all(&c, a).unwrap_err().errno(), libc::EIO);
}

#[test]
fn no_rest_reads_forward_from_the_start() {
    let mut m = two_servers();
    m.servers[0].no_rest = true;
    m.servers[1].down = true;
    let expected = m.servers[0].files[&b"pub/big.bin"[..]].clone();
    let (mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let big = c.lookup(pub_, b"big.bin").unwrap().ino;
    let (fh, _) = c.open(big).unwrap();
    let got = c.read(fh, 2_000_000, 1000).unwrap();
    assert_eq!(got.as_slice(), &expected[2_000_000..2_001_000]);
    c.release(fh);
    let opens = mock.opens.lock().unwrap().clone();
    assert!(opens.contains(&(0, 0)), "fell back to offset 0: {opens:?}");
}

#[test]
fn no_rest_prefers_a_copy_that_can_resume() {
    let mut m = two_servers();
    m.servers[0].no_rest = true;
    let expected = m.servers[1].files[&b"pub/big.bin"[..]].clone();
    let (mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let big = c.lookup(pub_, b"big.bin").unwrap().ino;
    let (fh, _) = c.open(big).unwrap();
    let got = c.read(fh, 2_500_000, 1000).unwrap();
    assert_eq!(got.as_slice(), &expected[2_500_000..2_501_000]);
    let opens = mock.opens.lock().unwrap().clone();
    assert_eq!(opens, [(0, 2_500_000), (1, 2_500_000)]);
}

#[test]
fn a_down_server_leaves_the_others_visible() {
    let mut m = two_servers();
    m.servers[1].down = true;
    let (_mock, c) = circle(m, Duration::from_secs(60));
    assert_eq!(names(&c, ROOT), ["pub"]);
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(names(&c, pub_), ["a", "big.bin"]);
}

#[test]
fn all_servers_down_from_the_start_is_an_empty_root() {
    let mut m = two_servers();
    m.servers[0].down = true;
    m.servers[1].down = true;
    let (_mock, c) = circle(m, Duration::from_secs(60));
    assert!(c.readdir(ROOT).unwrap().is_empty(), "empty, not EIO");
    assert_eq!(c.lookup(ROOT, b"pub").unwrap_err().errno(), libc::ENOENT);
}

#[test]
fn absolute_symlinks_point_inside_the_mount() {
    let mut m = two_servers();
    m.servers[0]
        .dirs
        .get_mut(&b"pub"[..])
        .unwrap()
        .push(RawEntry {
            name: b"ln".to_vec(),
            kind: EntryKind::Symlink(b"/pub/a".to_vec()),
            size: 6,
            mtime: None,
        });
    let (_mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let ln = c.lookup(pub_, b"ln").unwrap();
    assert_eq!(ln.kind, FileKind::Symlink);
    assert_eq!(c.readlink(ln.ino).unwrap(), b"../pub/a");
}

#[test]
fn keep_cache_only_after_an_open_of_the_same_version() {
    let (_mock, c) = circle(two_servers(), Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let a = c.lookup(pub_, b"a").unwrap().ino;
    let (fh, keep) = c.open(a).unwrap();
    assert!(!keep, "first open: nothing cached yet");
    c.release(fh);
    let (fh, keep) = c.open(a).unwrap();
    assert!(keep, "same size and mtime: keep the kernel's pages");
    c.release(fh);
}
