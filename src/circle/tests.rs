//! The merged view against an in-memory backend: listing counts, negative lookups, inode
//! stability, reads with failover, REST fallback, short and changed transfers. No kernel mount
//! and no network: the FTP side has its own tests against real servers (tests/).

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;
use crate::backend::{ByteStream, HashAlgo, LinkTargets};
use crate::backend::{EntryKind, RawEntry};

#[derive(Default)]
struct MockServer {
    dirs: HashMap<Vec<u8>, Vec<RawEntry>>,
    files: HashMap<Vec<u8>, Vec<u8>>,
    /// Streams end (as if the connection dropped) after this many bytes.
    drop_after: Option<usize>,
    no_rest: bool,
    down: bool,
    /// Directory -> its `ls -l` symlink targets (name, target), for listings that name
    /// symlinks without target (proftpd's MLSD).
    link_targets: HashMap<Vec<u8>, LinkTargets>,
    /// Hash algorithms offered ([`HashAlgo::bit`]s).
    hash_algos: u8,
    /// Each stream delivers at most this many bytes per second.
    rate: Option<u64>,
    /// ... after its first this many bytes, which come at once (vsftpd's rate limit lets a
    /// new transfer's first socket buffer out unthrottled).
    burst: usize,
    /// A stream that gets past this offset hangs this long, then fails (a stalled server).
    stall: Option<(u64, Duration)>,
    /// Connections to spare for background streams (`None`: plenty).
    spare: Option<usize>,
    /// A foreground request waits for a connection of this server.
    contended: bool,
}

type Listings = HashMap<(usize, Vec<u8>), Vec<RawEntry>>;

#[derive(Default)]
struct Mock {
    servers: Vec<MockServer>,
    lists: Mutex<HashMap<(usize, Vec<u8>), usize>>,
    /// Listings that replace `MockServer::dirs` (for servers whose tree changes).
    changed: Mutex<Listings>,
    opens: Mutex<Vec<(usize, u64)>>,
    /// (server, directory) of every `symlink_targets` call.
    target_lists: Mutex<Vec<(usize, Vec<u8>)>>,
    /// (server, path) of every hash asked.
    hashes: Mutex<Vec<(usize, Vec<u8>)>>,
    /// Servers that went down after the start (`MockServer::down` is down from the start).
    went_down: Mutex<std::collections::HashSet<usize>>,
}

impl Mock {
    fn set_down(&self, s: usize, down: bool) {
        let mut d = self.went_down.lock().unwrap();
        if down {
            d.insert(s);
        } else {
            d.remove(&s);
        }
    }
    fn down(&self, s: usize) -> bool {
        self.servers[s].down || self.went_down.lock().unwrap().contains(&s)
    }
    fn change(&self, s: usize, path: &str, entries: Vec<RawEntry>) {
        let mut c = self.changed.lock().unwrap();
        c.insert((s, path.as_bytes().to_vec()), entries);
    }
    fn lists_of(&self, s: usize, path: &[u8]) -> usize {
        let l = self.lists.lock().unwrap();
        l.get(&(s, path.to_vec())).copied().unwrap_or(0)
    }
    fn total_lists(&self) -> usize {
        self.lists.lock().unwrap().values().sum()
    }
}

struct MockStream {
    data: Arc<Vec<u8>>,
    pos: usize,
    /// Bytes left before the stream "drops".
    budget: Option<usize>,
    rate: Option<u64>,
    /// Bytes this stream still delivers unthrottled.
    burst: usize,
    stall: Option<(u64, Duration)>,
}

impl ByteStream for MockStream {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize> {
        if let Some((at, hang)) = self.stall
            && self.pos as u64 >= at
        {
            std::thread::sleep(hang);
            return Err(Error::new(Kind::Timeout, "stalled"));
        }
        let mut n = buf.len().min(self.data.len() - self.pos).min(7919);
        if let Some(rate) = self.rate
            && self.burst == 0
        {
            std::thread::sleep(Duration::from_secs_f64(n as f64 / rate as f64));
        }
        self.burst = self.burst.saturating_sub(n);
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
        self.down(s)
    }
    fn spare_connections(&self, s: usize) -> usize {
        self.servers[s].spare.unwrap_or(usize::MAX)
    }
    fn contended(&self, s: usize) -> bool {
        self.servers[s].contended
    }
    fn list(&self, s: usize, path: &[u8], _prio: Priority) -> Result<Vec<RawEntry>> {
        *self
            .lists
            .lock()
            .unwrap()
            .entry((s, path.to_vec()))
            .or_default() += 1;
        let srv = &self.servers[s];
        if self.down(s) {
            return Err(Error::new(Kind::Timeout, "timed out"));
        }
        if let Some(l) = self.changed.lock().unwrap().get(&(s, path.to_vec())) {
            return Ok(l.clone());
        }
        srv.dirs.get(path).cloned().ok_or_else(Error::not_found)
    }
    fn hash_algos(&self, s: usize) -> u8 {
        self.servers[s].hash_algos
    }
    fn hash(&self, s: usize, path: &[u8], algo: HashAlgo, _prio: Priority) -> Result<Vec<u8>> {
        self.hashes.lock().unwrap().push((s, path.to_vec()));
        let srv = &self.servers[s];
        if srv.down || srv.hash_algos & algo.bit() == 0 {
            return Err(Error::new(Kind::Protocol, "no hash"));
        }
        let data = srv.files.get(path).ok_or_else(Error::not_found)?;
        // Not a real SHA-256: any function of all the bytes serves the test (FNV-1a).
        let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Ok(format!("{h:016x}").into_bytes())
    }
    fn symlink_targets(&self, s: usize, path: &[u8], _prio: Priority) -> Result<LinkTargets> {
        self.target_lists.lock().unwrap().push((s, path.to_vec()));
        let srv = &self.servers[s];
        if srv.down {
            return Err(Error::new(Kind::Timeout, "timed out"));
        }
        Ok(srv.link_targets.get(path).cloned().unwrap_or_default())
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
        if self.down(s) {
            return Err(Error::new(
                Kind::Unavailable,
                format!("{}: marked down", self.label(s)),
            ));
        }
        if offset > 0 && srv.no_rest {
            return Err(Error::new(Kind::NoRest, "no REST"));
        }
        let data = srv.files.get(path).cloned().ok_or_else(Error::not_found)?;
        Ok(Box::new(MockStream {
            data: Arc::new(data),
            pos: offset as usize,
            budget: srv.drop_after,
            rate: srv.rate,
            burst: srv.burst,
            stall: srv.stall,
        }))
    }
}

fn file(name: &str, size: usize) -> RawEntry {
    RawEntry {
        name: name.into(),
        kind: EntryKind::File,
        size: size as u64,
        mtime: None,
        mtime_precision: Default::default(),
    }
}
fn dir(name: &str) -> RawEntry {
    RawEntry {
        name: name.into(),
        kind: EntryKind::Dir,
        size: 0,
        mtime: None,
        mtime_precision: Default::default(),
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
            segments: Default::default(),
            offline_keep: super::DEFAULT_OFFLINE_KEEP,
            control_dir: b".ftpcircle".to_vec(),
            index: None,
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
    let (fh, _) = c.open(ino, libc::O_RDONLY)?;
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

/// The names of `ino` once they are `want` (a background revalidation replaced the listing),
/// or as they are after 5 s.
fn names_soon(c: &Circle, ino: u64, want: &[&str]) -> Vec<String> {
    let mut seen = names(c, ino);
    // Bounded: 100 turns of 50 ms.
    for _ in 0..100 {
        if seen == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        seen = names(c, ino);
    }
    seen
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
    let (fh, _) = c.open(big, libc::O_RDONLY).unwrap();
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
    let (fh, _) = c.open(big, libc::O_RDONLY).unwrap();
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
            mtime_precision: Default::default(),
        });
    let (_mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let ln = c.lookup(pub_, b"ln").unwrap();
    assert_eq!(ln.kind, FileKind::Symlink);
    assert_eq!(c.readlink(ln.ino).unwrap(), b"a");
}

#[test]
fn keep_cache_only_after_an_open_of_the_same_version() {
    let (_mock, c) = circle(two_servers(), Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let a = c.lookup(pub_, b"a").unwrap().ino;
    let (fh, keep) = c.open(a, libc::O_RDONLY).unwrap();
    assert!(!keep, "first open: nothing cached yet");
    c.release(fh);
    let (fh, keep) = c.open(a, libc::O_RDONLY).unwrap();
    assert!(keep, "same size and mtime: keep the kernel's pages");
    c.release(fh);
}

fn link(name: &str, target: &str) -> RawEntry {
    RawEntry {
        kind: EntryKind::Symlink(target.into()),
        ..file(name, 0)
    }
}

/// proftpd: MLSD names symlinks without target; its `ls -l` listing gives them.
fn proftpd_like() -> Mock {
    let mut s0 = MockServer::default();
    s0.dirs.insert(
        b"".to_vec(),
        vec![dir("pub"), dir("plain"), link("top", "")],
    );
    s0.dirs.insert(
        b"pub".to_vec(),
        vec![
            file("f", 1),
            link("rel", ""),
            link("abs", ""),
            link("evil", ""),
            link("lost", ""),
            link("given", "f"),
        ],
    );
    s0.dirs.insert(b"plain".to_vec(), vec![file("x", 1)]);
    // As proftpd's STAT gives them: with targets, and with the links its MLSD left out.
    s0.link_targets.insert(
        b"pub".to_vec(),
        vec![
            link("rel", "f"),
            link("abs", "/pub/f"),
            link("evil", "../../../../../../etc/passwd"),
            link("given", "other"),
            link("dangling", "nowhere"),
            link("f", "a file in MLSD: not taken from here"),
        ],
    );
    s0.link_targets
        .insert(b"".to_vec(), vec![link("top", "pub")]);
    Mock {
        servers: vec![s0],
        ..Default::default()
    }
}

#[test]
fn symlinks_without_target_are_resolved_with_one_listing_per_directory() {
    let (mock, c) = circle(proftpd_like(), Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(names(&c, ROOT), ["plain", "pub", "top"]);
    assert_eq!(
        names(&c, pub_),
        ["abs", "dangling", "evil", "f", "given", "rel"]
    );
    let target = |name: &[u8]| {
        let a = c.lookup(pub_, name).unwrap();
        assert_eq!(a.kind, FileKind::Symlink, "{name:?}");
        assert_eq!(a.size, c.readlink(a.ino).unwrap().len() as u64);
        String::from_utf8(c.readlink(a.ino).unwrap()).unwrap()
    };
    assert_eq!(target(b"rel"), "f");
    assert_eq!(target(b"abs"), "f");
    assert_eq!(target(b"evil"), "../etc/passwd", "stays inside the mount");
    assert_eq!(target(b"given"), "f", "a target MLSD gave is kept");
    assert_eq!(
        target(b"dangling"),
        "nowhere",
        "a link MLSD left out is added"
    );
    assert_eq!(c.lookup(pub_, b"f").unwrap().kind, FileKind::File);
    // Unresolvable: left out, never a file that gives EIO.
    assert_eq!(c.lookup(pub_, b"lost").unwrap_err().kind, Kind::NotFound);
    let top = c.lookup(ROOT, b"top").unwrap();
    assert_eq!(c.readlink(top.ino).unwrap(), b"pub");
    // Cached like the listing: more lookups and readdirs cost nothing.
    for _ in 0..5 {
        names(&c, pub_);
        target(b"rel");
    }
    let calls = mock.target_lists.lock().unwrap().clone();
    assert_eq!(calls, [(0, b"".to_vec()), (0, b"pub".to_vec())]);
    // A directory whose listing has every target costs no extra listing.
    let plain = c.lookup(ROOT, b"plain").unwrap().ino;
    assert_eq!(names(&c, plain), ["x"]);
    assert_eq!(mock.lists_of(0, b"plain"), 1);
    assert_eq!(mock.target_lists.lock().unwrap().len(), 2);
}

#[test]
fn symlink_targets_are_fetched_again_with_the_listing() {
    let (mock, c) = circle(proftpd_like(), Duration::ZERO);
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    for _ in 0..3 {
        names(&c, pub_);
    }
    let lists = mock.lists_of(0, b"pub");
    let targets = mock
        .target_lists
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, p)| p == b"pub")
        .count();
    assert_eq!(targets, lists, "one target listing per listing, no more");
}

#[test]
fn errors_carry_the_errno_posix_tools_expect() {
    let (_mock, c) = circle(two_servers(), Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let a = c.lookup(pub_, b"a").unwrap().ino;
    let errno = |r: Result<()>| r.unwrap_err().errno();
    // A path through a file.
    assert_eq!(errno(c.lookup(a, b"x").map(drop)), libc::ENOTDIR);
    assert_eq!(errno(c.readdir(a).map(drop)), libc::ENOTDIR);
    // A directory opened as a file.
    assert_eq!(errno(c.open(pub_, libc::O_RDONLY).map(drop)), libc::EISDIR);
    // A handle never given out, or released.
    assert_eq!(errno(c.read(9999, 0, 10).map(drop)), libc::EBADF);
    let (fh, _) = c.open(a, libc::O_RDONLY).unwrap();
    c.release(fh);
    assert_eq!(errno(c.read(fh, 0, 10).map(drop)), libc::EBADF);
    // A name that does not exist, and readlink of a file.
    assert_eq!(errno(c.lookup(pub_, b"nope").map(drop)), libc::ENOENT);
    assert_eq!(errno(c.readlink(a).map(drop)), libc::EINVAL);
}

#[test]
fn two_hundred_servers_merge_and_the_last_one_serves_its_file() {
    let n = 200;
    let mut servers = Vec::new();
    for i in 0..n {
        let mut s = MockServer::default();
        let mut pub_ = vec![file("common", 3)];
        if i == n - 1 {
            pub_.push(file("only-last", 4));
            s.files.insert(b"pub/only-last".to_vec(), b"last".to_vec());
        }
        s.dirs.insert(b"".to_vec(), vec![dir("pub")]);
        s.dirs.insert(b"pub".to_vec(), pub_);
        s.files.insert(b"pub/common".to_vec(), b"abc".to_vec());
        servers.push(s);
    }
    let (mock, c) = circle(
        Mock {
            servers,
            ..Default::default()
        },
        Duration::from_secs(60),
    );
    assert!(c.check_servers().is_empty());
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(names(&c, pub_), ["common", "only-last"]);
    for s in [0, 64, 150, n - 1] {
        assert_eq!(mock.lists_of(s, b"pub"), 1, "server {s} listed once");
    }
    let last = c.lookup(pub_, b"only-last").unwrap().ino;
    assert_eq!(read_all(&c, last).unwrap(), b"last");
    assert_eq!(mock.opens.lock().unwrap().last(), Some(&(n - 1, 0)));
}

fn one_server(root: Vec<RawEntry>, dirs: &[(&str, Vec<RawEntry>)]) -> Mock {
    let mut s0 = MockServer::default();
    s0.dirs.insert(b"".to_vec(), root);
    for (p, e) in dirs {
        s0.dirs.insert(p.as_bytes().to_vec(), e.clone());
    }
    Mock {
        servers: vec![s0],
        ..Default::default()
    }
}

#[test]
fn forget_drops_nodes_that_left_their_listing_and_keeps_held_ones() {
    let m = one_server(vec![dir("a")], &[("a", vec![file("x", 1)])]);
    // TTL 0: every call lists again, so a change on the server shows at once.
    let (mock, c) = circle(m, Duration::ZERO);
    let gone = c.watch_gone();
    let a = c.lookup(ROOT, b"a").unwrap().ino;
    let x = c.lookup(a, b"x").unwrap().ino;
    assert_eq!(c.inode_count(), 3);
    mock.change(0, "", vec![dir("b")]);
    assert_eq!(names(&c, ROOT), ["b"]);
    // The adapter is told to invalidate the name the kernel still holds.
    assert_eq!(gone.try_recv().ok(), Some((ROOT, b"a".to_vec())));
    assert!(gone.try_recv().is_err(), "x did not leave its listing");
    // `a` left the listing but the kernel holds it (and `x`): both stay, same numbers.
    assert_eq!(c.inode_count(), 4);
    assert_eq!(c.getattr(a).unwrap().ino, a);
    assert_eq!(c.getattr(x).unwrap().kind, FileKind::File);
    c.forget(x, 1);
    assert_eq!(c.inode_count(), 4, "a is still held, so its subtree stays");
    c.forget(a, 1);
    assert_eq!(c.inode_count(), 2, "root and b");
    assert_eq!(c.getattr(a).unwrap_err().kind, Kind::NotFound);
    assert_eq!(c.getattr(x).unwrap_err().kind, Kind::NotFound);
    // A node still listed is never dropped by forget; its number stays.
    let b = c.lookup(ROOT, b"b").unwrap().ino;
    c.forget(b, 1);
    assert_eq!(c.lookup(ROOT, b"b").unwrap().ino, b);
    assert_eq!(c.inode_count(), 2);
}

#[test]
fn a_server_renaming_directories_in_a_loop_keeps_the_table_flat() {
    let m = one_server(vec![dir("d0")], &[]);
    let (mock, c) = circle(m, Duration::ZERO);
    for i in 0..200 {
        let name = format!("d{i}");
        mock.change(0, &name, vec![file("f", 1), dir("sub")]);
        let d = c.lookup(ROOT, name.as_bytes()).unwrap().ino;
        let f = c.lookup(d, b"f").unwrap().ino;
        assert_eq!(names(&c, d), ["f", "sub"]);
        // The kernel lets go; then the server renames the directory.
        c.forget(f, 1);
        c.forget(d, 1);
        mock.change(0, "", vec![dir(&format!("d{}", i + 1))]);
        assert_eq!(names(&c, ROOT).len(), 1);
        assert!(c.inode_count() <= 5, "turn {i}: {} nodes", c.inode_count());
    }
}

#[test]
fn readdirplus_entries_are_references_and_plain_readdir_ones_are_not() {
    let m = one_server(vec![dir("a"), file("f", 1)], &[("a", vec![])]);
    let (mock, c) = circle(m, Duration::ZERO);
    let fh = c.opendir(ROOT).unwrap();
    let mut got = Vec::new();
    c.readdir_at(fh, 0, true, |next, e| {
        got.push((
            next,
            String::from_utf8_lossy(&e.name).into_owned(),
            e.attr.ino,
        ));
        false
    })
    .unwrap();
    c.releasedir(fh);
    let listed: Vec<&str> = got.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(listed, [".", "..", "a", "f"]);
    assert_eq!((got[0].2, got[1].2), (ROOT, ROOT));
    assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), [1, 2, 3, 4]);
    let a = got[2].2;
    // Resuming at an offset skips what was handed out.
    let fh = c.opendir(ROOT).unwrap();
    let mut rest = Vec::new();
    c.readdir_at(fh, 3, false, |_, e| {
        rest.push(e.name.clone());
        false
    })
    .unwrap();
    assert_eq!(rest, [b"f".to_vec()]);
    // A full reply stops the walk, and only what was added counts.
    mock.change(0, "", vec![]);
    assert!(names(&c, ROOT).is_empty());
    assert_eq!(c.getattr(a).unwrap().ino, a, "held through readdirplus");
    c.forget(a, 1);
    assert_eq!(c.getattr(a).unwrap_err().kind, Kind::NotFound);
    assert_eq!(
        c.readdir_at(fh, 0, false, |_, _| true).map(|_| ()),
        Ok(()),
        "the open handle still has its snapshot"
    );
    c.releasedir(fh);
    let e = c.readdir_at(fh, 0, false, |_, _| false).unwrap_err();
    assert_eq!(e.errno(), libc::EBADF);
}

#[test]
fn opening_for_writing_is_erofs_and_dot_dot_of_a_subdirectory_is_its_parent() {
    let (_, c) = circle(two_servers(), Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let a = c.lookup(pub_, b"a").unwrap().ino;
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_WRONLY | libc::O_TRUNC] {
        assert_eq!(c.open(a, flags).unwrap_err().errno(), libc::EROFS);
    }
    assert!(c.open(a, libc::O_RDONLY).is_ok());
    let fh = c.opendir(pub_).unwrap();
    let mut dots = Vec::new();
    c.readdir_at(fh, 0, false, |_, e| {
        dots.push((e.name.clone(), e.attr.ino, e.attr.kind));
        dots.len() == 2
    })
    .unwrap();
    assert_eq!(
        dots,
        [
            (b".".to_vec(), pub_, FileKind::Dir),
            (b"..".to_vec(), ROOT, FileKind::Dir)
        ]
    );
    assert_eq!(
        c.read(9999, 0, 1).err().map(|e| e.errno()),
        Some(libc::EBADF)
    );
}

/// Two servers with `pub/x.bin` of the same size: s0's copy is `x`, s1's is `other`; s0's
/// transfers break after 1 MB.
fn two_copies(x: Vec<u8>, other: Vec<u8>) -> Mock {
    assert_eq!(x.len(), other.len());
    let mut m = Mock::default();
    for (i, data) in [x, other].into_iter().enumerate() {
        let mut srv = MockServer::default();
        srv.dirs.insert(b"".to_vec(), vec![dir("pub")]);
        srv.dirs
            .insert(b"pub".to_vec(), vec![file("x.bin", data.len())]);
        srv.files.insert(b"pub/x.bin".to_vec(), data);
        if i == 0 {
            srv.drop_after = Some(1_000_000);
        }
        m.servers.push(srv);
    }
    m
}

/// Read the whole file in 128 KiB requests; what arrived and how it ended.
fn read_until_error(c: &Circle, ino: u64) -> (Vec<u8>, Result<()>) {
    let (fh, _) = c.open(ino, libc::O_RDONLY).unwrap();
    let mut out = Vec::new();
    // Bounded by the file size: each turn reads at least one byte, ends or fails.
    let res = loop {
        match c.read(fh, out.len() as u64, 128 * 1024) {
            Ok(d) if d.as_slice().is_empty() => break Ok(()),
            Ok(d) => out.extend_from_slice(d.as_slice()),
            Err(e) => break Err(e),
        }
    };
    c.release(fh);
    (out, res)
}

#[test]
fn splicing_a_copy_checks_the_bytes_just_before_the_splice() {
    let data = bytes(3_000_000, 7);
    let (mock, c) = circle(
        two_copies(data.clone(), data.clone()),
        Duration::from_secs(60),
    );
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let x = c.lookup(pub_, b"x.bin").unwrap().ino;
    assert_eq!(read_all(&c, x).unwrap(), data);
    let opens = mock.opens.lock().unwrap().clone();
    assert_eq!(opens[0], (0, 0));
    let on_s1: Vec<u64> = opens.iter().filter(|o| o.0 == 1).map(|o| o.1).collect();
    assert_eq!(
        on_s1,
        [1_000_000 - reader::OVERLAP as u64],
        "the mirror starts {} bytes before the splice: {opens:?}",
        reader::OVERLAP
    );
}

#[test]
fn splicing_a_copy_with_other_bytes_fails_and_never_mixes() {
    let data = bytes(3_000_000, 7);
    let other = bytes(3_000_000, 8);
    let (mock, c) = circle(two_copies(data.clone(), other), Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let x = c.lookup(pub_, b"x.bin").unwrap().ino;
    let (got, res) = read_until_error(&c, x);
    let err = res.unwrap_err();
    assert_eq!(
        (err.kind, err.errno()),
        (Kind::Mismatch, libc::EIO),
        "{err}"
    );
    assert!(
        got.len() <= 1_000_000 && data.starts_with(&got),
        "{} bytes before the error, not all from the first copy",
        got.len()
    );
    // Never mirrors again: the merge now hides s1's copy, reads never go there.
    let before = mock.opens.lock().unwrap().len();
    let x = c.lookup(pub_, b"x.bin").unwrap().ino;
    let (got, res) = read_until_error(&c, x);
    assert!(
        res.is_err(),
        "s0 still breaks after 1 MB and has no mirror now"
    );
    assert!(data.starts_with(&got));
    let opens = mock.opens.lock().unwrap()[before..].to_vec();
    assert!(opens.iter().all(|o| o.0 == 0), "{opens:?}");
    assert!(c.mirrors.differ(b"pub/x.bin", 1, 0));
}

#[test]
fn hashes_refute_copies_that_agree_at_the_splice() {
    // The copies differ far from the splice: the overlap alone cannot tell.
    let data = bytes(3_000_000, 7);
    let mut other = data.clone();
    other[2_500_000] ^= 1;
    let sha = HashAlgo::Sha256.bit();
    let mut m = two_copies(data.clone(), other.clone());
    m.servers[0].hash_algos = sha | HashAlgo::Md5.bit();
    m.servers[1].hash_algos = sha;
    let (mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let x = c.lookup(pub_, b"x.bin").unwrap().ino;
    let (got, res) = read_until_error(&c, x);
    assert_eq!(res.unwrap_err().kind, Kind::Mismatch);
    assert!(data.starts_with(&got));
    let mut asked = mock.hashes.lock().unwrap().clone();
    asked.sort();
    assert_eq!(
        asked,
        [(0, b"pub/x.bin".to_vec()), (1, b"pub/x.bin".to_vec())]
    );

    // Without a common algorithm the splice check is all there is, and a difference away
    // from the splice point goes unseen (the documented limit).
    let mut m = two_copies(data.clone(), other.clone());
    m.servers[0].hash_algos = HashAlgo::Md5.bit();
    m.servers[1].hash_algos = sha;
    let (mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let x = c.lookup(pub_, b"x.bin").unwrap().ino;
    assert_eq!(read_all(&c, x).unwrap(), other);
    assert!(mock.hashes.lock().unwrap().is_empty());
}

#[test]
fn equal_hashes_are_asked_once_and_reused() {
    let data = bytes(3_000_000, 7);
    let mut m = two_copies(data.clone(), data.clone());
    m.servers[0].hash_algos = HashAlgo::Sha1.bit();
    m.servers[1].hash_algos = HashAlgo::Sha1.bit();
    let (mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let x = c.lookup(pub_, b"x.bin").unwrap().ino;
    for _ in 0..3 {
        assert_eq!(read_all(&c, x).unwrap(), data);
    }
    assert_eq!(mock.hashes.lock().unwrap().len(), 2, "one per server");
}

#[test]
fn a_splice_onto_a_copy_without_rest_reads_up_to_the_overlap() {
    let data = bytes(3_000_000, 7);
    let mut m = two_copies(data.clone(), data.clone());
    m.servers[1].no_rest = true;
    let (_mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let x = c.lookup(pub_, b"x.bin").unwrap().ino;
    assert_eq!(read_all(&c, x).unwrap(), data);

    let mut other = data.clone();
    other[1_000_000 - 10] ^= 0xff;
    let mut m = two_copies(data.clone(), other);
    m.servers[1].no_rest = true;
    let (_mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let x = c.lookup(pub_, b"x.bin").unwrap().ino;
    let (got, res) = read_until_error(&c, x);
    assert_eq!(res.unwrap_err().kind, Kind::Mismatch);
    assert!(data.starts_with(&got));
}

// Segmented reads: small pieces and thresholds so a few MiB exercise them.

const SEG_FILE: usize = 6 << 20;

fn seg_opts(max_streams: usize) -> segments::SegmentOptions {
    segments::SegmentOptions {
        enabled: true,
        max_streams,
        piece: 64 << 10,
        window: 8,
        min_rest: 1 << 20,
        trigger: 256 << 10,
        // The mock is as fast as memory: segment it anyway.
        judge_after: Duration::ZERO,
        fast_alone: f64::INFINITY,
    }
}

/// `n` servers with the same big file `pub/seg.bin`.
fn mirrors_of(n: usize, data: &[u8]) -> Mock {
    let servers = (0..n)
        .map(|_| {
            let mut s = MockServer::default();
            s.dirs.insert(b"".to_vec(), vec![dir("pub")]);
            s.dirs
                .insert(b"pub".to_vec(), vec![file("seg.bin", data.len())]);
            s.files.insert(b"pub/seg.bin".to_vec(), data.to_vec());
            s
        })
        .collect();
    Mock {
        servers,
        ..Default::default()
    }
}

fn seg_circle(mock: Mock, max_streams: usize) -> (Arc<Mock>, Circle, u64) {
    let mock = Arc::new(mock);
    let c = Circle::new(
        Arc::clone(&mock) as Arc<dyn Backend>,
        Options {
            ttl: Duration::from_secs(60),
            cache_entries: 10_000,
            max_wait: Duration::from_secs(5),
            prefetch: false,
            segments: seg_opts(max_streams),
            offline_keep: super::DEFAULT_OFFLINE_KEEP,
            control_dir: b".ftpcircle".to_vec(),
            index: None,
        },
    );
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let ino = c.lookup(pub_, b"seg.bin").unwrap().ino;
    (mock, c, ino)
}

/// Streams opened per server (REST offsets), from the mock's log.
fn opens_per_server(mock: &Mock, n: usize) -> Vec<usize> {
    let opens = mock.opens.lock().unwrap();
    (0..n)
        .map(|s| opens.iter().filter(|o| o.0 == s).count())
        .collect()
}

#[test]
fn a_big_sequential_read_takes_pieces_from_every_mirror_in_order() {
    let data = bytes(SEG_FILE, 3);
    let (mock, c, ino) = seg_circle(mirrors_of(3, &data), 6);
    assert!(read_all(&c, ino).unwrap() == data, "bytes differ");
    let st = c.segment_stats();
    assert_eq!(st.files, 1, "{st:?}");
    assert_eq!(st.pieces.len(), 3, "{st:?}");
    assert!(st.pieces.iter().all(|&p| p > 0), "every mirror: {st:?}");
    assert!(st.splices_checked > 0, "{st:?}");
    // Bounds: the window plus one second fetch, per file and (one file) overall.
    let bound = (8 + 1) * (64 << 10);
    assert!(st.peak_file_bytes <= bound, "{st:?}");
    assert!(st.peak_global_bytes <= bound, "{st:?}");
    assert!(opens_per_server(&mock, 3).iter().all(|&n| n > 0));
}

#[test]
fn faster_streams_take_more_pieces() {
    let data = bytes(SEG_FILE, 4);
    let mut m = mirrors_of(2, &data);
    m.servers[0].rate = Some(1_500_000);
    m.servers[1].rate = Some(15_000_000);
    // One stream per server: s0's (the first, by serverlist order) and one on s1.
    let (_mock, c, ino) = seg_circle(m, 2);
    assert!(read_all(&c, ino).unwrap() == data, "bytes differ");
    let st = c.segment_stats();
    assert!(
        st.pieces[1] > 2 * st.pieces[0],
        "the 10x faster stream should take most pieces: {st:?}"
    );
    assert!(
        st.dropped >= 1,
        "the slow mirror's stream is dropped: {st:?}"
    );
}

#[test]
fn a_fast_start_does_not_get_equal_mirrors_dropped() {
    let data = bytes(SEG_FILE, 8);
    let mut m = mirrors_of(2, &data);
    // Two equal mirrors capped at 6 MB/s per connection, each new transfer's first 256 KiB
    // (four pieces) at once: judged by those, a fresh stream looks a hundred times faster
    // than the others.
    for s in &mut m.servers {
        s.rate = Some(6_000_000);
        s.burst = 256 << 10;
    }
    let (_mock, c, ino) = seg_circle(m, 4);
    assert!(read_all(&c, ino).unwrap() == data, "bytes differ");
    let st = c.segment_stats();
    assert_eq!(st.dropped, 0, "equal mirrors: no stream is slow {st:?}");
    assert!(st.pieces[0] > 0 && st.pieces[1] > 0, "{st:?}");
}

#[test]
fn a_stalled_piece_is_taken_over_and_a_failing_mirror_costs_no_bytes() {
    let data = bytes(SEG_FILE, 5);
    let mut m = mirrors_of(2, &data);
    // s1's streams hang for 3 s once past 2 MiB, then fail; the reader takes its piece over
    // after STALL_AFTER (1 s) instead of waiting.
    m.servers[1].stall = Some((2 << 20, Duration::from_secs(3)));
    m.servers[0].rate = Some(40_000_000);
    let (_mock, c, ino) = seg_circle(m, 4);
    assert!(read_all(&c, ino).unwrap() == data, "bytes differ");
    let st = c.segment_stats();
    assert!(st.takeovers >= 1, "{st:?}");
    assert!(st.pieces[0] > 0 && st.pieces[1] > 0, "{st:?}");
}

#[test]
fn pieces_fail_over_to_another_copy() {
    let data = bytes(SEG_FILE, 6);
    let mut m = mirrors_of(3, &data);
    // Every stream of s1 breaks after 100 KB: its pieces come from s0 and s2.
    m.servers[1].drop_after = Some(100_000);
    let (_mock, c, ino) = seg_circle(m, 6);
    assert!(read_all(&c, ino).unwrap() == data, "bytes differ");
    let st = c.segment_stats();
    assert!(st.pieces[0] > 0 && st.pieces[2] > 0, "{st:?}");
}

#[test]
fn a_mirror_with_other_bytes_fails_the_read_with_eio_and_is_marked() {
    let data = bytes(SEG_FILE, 7);
    let mut other = data.clone();
    for b in &mut other[512 << 10..] {
        *b ^= 0x5a;
    }
    let mut m = mirrors_of(2, &data);
    m.servers[1].files.insert(b"pub/seg.bin".to_vec(), other);
    let (_mock, c, ino) = seg_circle(m, 4);
    let (got, res) = read_until_error(&c, ino);
    let err = res.unwrap_err();
    assert_eq!(err.errno(), libc::EIO, "{err}");
    assert!(
        got[..] == data[..got.len()],
        "bytes before the error are s0's"
    );
    assert!(c.mirrors.differ(b"pub/seg.bin", 0, 1));
}

#[test]
fn no_stream_takes_a_servers_last_connection() {
    let data = bytes(SEG_FILE, 8);
    let mut m = mirrors_of(2, &data);
    m.servers[1].spare = Some(0);
    let (mock, c, ino) = seg_circle(m, 6);
    assert!(read_all(&c, ino).unwrap() == data, "bytes differ");
    assert_eq!(opens_per_server(&mock, 2)[1], 0, "s1 had nothing to spare");
    assert!(opens_per_server(&mock, 2)[0] > 1, "more streams on s0");
}

#[test]
fn a_server_where_users_wait_gets_no_background_stream() {
    let data = bytes(SEG_FILE, 11);
    let mut m = mirrors_of(2, &data);
    m.servers[1].contended = true;
    let (mock, c, ino) = seg_circle(m, 6);
    assert!(read_all(&c, ino).unwrap() == data, "bytes differ");
    assert_eq!(
        opens_per_server(&mock, 2)[1],
        0,
        "s1's connections are wanted"
    );
    assert!(c.segment_stats().pieces[0] > 0);
}

#[test]
fn random_preads_stay_small_and_right() {
    let data = bytes(SEG_FILE, 9);
    let (mock, c, ino) = seg_circle(mirrors_of(2, &data), 6);
    let (fh, _) = c.open(ino, libc::O_RDONLY).unwrap();
    let mut x: u64 = 12345;
    for _ in 0..50 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let off = (x >> 33) % (SEG_FILE as u64 - 4096);
        let d = c.read(fh, off, 4096).unwrap();
        assert!(d.as_slice() == &data[off as usize..off as usize + 4096]);
    }
    c.release(fh);
    assert_eq!(c.segment_stats().files, 0, "no fan-out for random reads");
    assert_eq!(opens_per_server(&mock, 2)[1], 0, "one copy served them");
}

#[test]
fn segmented_reads_switched_off_use_one_stream() {
    let data = bytes(SEG_FILE, 10);
    let mock = Arc::new(mirrors_of(2, &data));
    let mut opts = seg_opts(6);
    opts.enabled = false;
    let c = Circle::new(
        Arc::clone(&mock) as Arc<dyn Backend>,
        Options {
            ttl: Duration::from_secs(60),
            cache_entries: 10_000,
            max_wait: Duration::from_secs(5),
            prefetch: false,
            segments: opts,
            offline_keep: super::DEFAULT_OFFLINE_KEEP,
            control_dir: b".ftpcircle".to_vec(),
            index: None,
        },
    );
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let ino = c.lookup(pub_, b"seg.bin").unwrap().ino;
    assert!(read_all(&c, ino).unwrap() == data);
    assert_eq!(c.segment_stats().files, 0);
    assert_eq!(*mock.opens.lock().unwrap(), vec![(0, 0)]);
}

// ---- with the listing index --------------------------------------------------------------

fn index_in(name: &str) -> Arc<crate::index::Index> {
    let dir = std::env::temp_dir().join(format!("ftpc-circle-ix-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let specs = crate::serverlist::parse(
        std::path::Path::new("list"),
        b"127.0.0.1:2121,u,p,0\n127.0.0.2:2121,u,p,0\n",
    )
    .unwrap();
    Arc::new(
        crate::index::Index::open(&dir.join("ix.sqlite"), &specs)
            .unwrap()
            .0,
    )
}

fn circle_ix(
    mock: Mock,
    ttl: Duration,
    ix: &Arc<crate::index::Index>,
    revalidate: bool,
) -> (Arc<Mock>, Arc<Circle>) {
    let mock = Arc::new(mock);
    let c = Arc::new(Circle::new(
        Arc::clone(&mock) as Arc<dyn Backend>,
        Options {
            ttl,
            cache_entries: 10_000,
            max_wait: Duration::from_secs(5),
            prefetch: false,
            offline_keep: super::DEFAULT_OFFLINE_KEEP,
            control_dir: b".ftpcircle".to_vec(),
            index: Some(Arc::clone(ix)),
            segments: Default::default(),
        },
    ));
    if revalidate {
        c.start_revalidation();
    }
    (mock, c)
}

/// Walk the tree once (so every listing is fetched and recorded), then wait for the writer.
fn walk_and_record(c: &Circle, ix: &crate::index::Index) {
    assert_eq!(names(c, ROOT), ["docs", "pub"]);
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(names(c, pub_), ["a", "b", "big.bin"]);
    let docs = c.lookup(ROOT, b"docs").unwrap().ino;
    assert!(names(c, docs).is_empty());
    ix.flush();
}

#[test]
fn a_restart_within_the_ttl_serves_the_tree_from_the_index_without_fetching() {
    let ix = index_in("restart");
    let (mock, c) = circle_ix(two_servers(), Duration::from_secs(60), &ix, true);
    walk_and_record(&c, &ix);
    assert!(mock.total_lists() >= 5);
    drop(c);
    let (mock, c) = circle_ix(two_servers(), Duration::from_secs(60), &ix, true);
    walk_and_record(&c, &ix);
    assert_eq!(mock.total_lists(), 0, "everything came from the index");
    // Files are still read from the servers.
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let a = c.lookup(pub_, b"a").unwrap().ino;
    assert_eq!(read_all(&c, a).unwrap(), b"A");
}

#[test]
fn stale_listings_are_served_at_once_and_revalidated_once_in_the_background() {
    let ix = index_in("stale");
    let old = crate::index::now_secs() - 3600;
    ix.record_at(0, b"", &[dir("pub")], old);
    ix.record_at(0, b"pub", &[file("a", 1), file("gone", 5)], old);
    ix.record_at(1, b"", &[dir("pub"), dir("docs")], old);
    ix.record_at(1, b"pub", &[file("b", 2)], old);
    ix.flush();
    // Without revalidation: the stale tree, and nothing fetched to show it.
    let (mock, c) = circle_ix(two_servers(), Duration::from_secs(60), &ix, false);
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(names(&c, pub_), ["a", "b", "gone"]);
    assert_eq!(mock.total_lists(), 0);
    drop(c);
    // With it: the new listing replaces the old one soon after the visit, fetched once.
    let (mock, c) = circle_ix(two_servers(), Duration::from_secs(60), &ix, true);
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(
        names_soon(&c, pub_, &["a", "b", "big.bin"]),
        ["a", "b", "big.bin"]
    );
    for _ in 0..20 {
        names(&c, pub_);
    }
    assert_eq!(mock.lists_of(0, b"pub"), 1);
    assert_eq!(mock.lists_of(1, b"pub"), 1);
    // And the index has the new listing.
    ix.flush();
    let got = ix.listing(0, b"pub").unwrap();
    assert_eq!(got.entries, [file("big.bin", 3_000_000), file("a", 1)]);
}

#[test]
fn a_server_down_at_start_shows_its_indexed_entries_marked_offline() {
    let ix = index_in("offline");
    let (_, c) = circle_ix(two_servers(), Duration::from_secs(60), &ix, true);
    walk_and_record(&c, &ix);
    drop(c);
    let mut mock = two_servers();
    mock.servers[0].down = true;
    let (_, c) = circle_ix(mock, Duration::from_secs(60), &ix, true);
    let errors = c.check_servers();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].to_string().contains("offline"), "{}", errors[0]);
    assert!(c.offline_since(0).is_some());
    assert!(c.offline_since(1).is_none());
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    // `a` is only on the server that is down: still listed, from the index.
    assert_eq!(names(&c, pub_), ["a", "b", "big.bin"]);
    // Without the index, the same server down shows only the other one.
    let mut mock = two_servers();
    mock.servers[0].down = true;
    let (_, c) = circle(mock, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(names(&c, pub_), ["b", "big.bin"]);
}

fn index_reads(ix: &crate::index::Index) -> u64 {
    ix.stats.reads.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn a_preload_builds_the_tree_from_the_index_so_a_walk_reads_neither_servers_nor_index() {
    let ix = index_in("preload");
    let (_, c) = circle_ix(two_servers(), Duration::from_secs(60), &ix, true);
    walk_and_record(&c, &ix);
    drop(c);
    let (mock, c) = circle_ix(two_servers(), Duration::from_secs(60), &ix, true);
    let st = c.preload(1_000);
    // root (docs, pub), pub (a, b, big.bin), docs (empty).
    assert_eq!(
        st,
        super::preload::PreloadStats {
            dirs: 3,
            entries: 5,
            bounded: false
        }
    );
    assert_eq!(mock.total_lists(), 0, "a preload never asks a server");
    let reads = index_reads(&ix);
    walk_and_record(&c, &ix);
    assert_eq!(index_reads(&ix), reads, "the walk found everything merged");
    assert_eq!(mock.total_lists(), 0);
    // A second preload finds it all merged and merges nothing again.
    assert_eq!(c.preload(1_000).dirs, 0);
    assert_eq!(index_reads(&ix), reads);
}

#[test]
fn a_preload_leaves_unindexed_directories_and_what_is_past_its_bound_to_the_walker() {
    let ix = index_in("preload-partial");
    let at = crate::index::now_secs();
    ix.record_at(0, b"", &[dir("pub")], at);
    ix.record_at(1, b"", &[dir("pub"), dir("docs")], at);
    ix.record_at(0, b"pub", &[file("a", 1)], at);
    // `pub` on server 1 and `docs` are not in the index.
    ix.flush();
    let (mock, c) = circle_ix(two_servers(), Duration::from_secs(60), &ix, true);
    let st = c.preload(1_000);
    assert_eq!((st.dirs, st.entries, st.bounded), (1, 2, false));
    assert_eq!(mock.total_lists(), 0);
    // The walker lists them itself, once each.
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(names(&c, pub_), ["a", "b", "big.bin"]);
    assert_eq!(mock.lists_of(1, b"pub"), 1);
    assert_eq!(
        mock.lists_of(0, b"pub"),
        0,
        "server 0's came from the index"
    );
    // A bound of one entry stops after the root.
    let (_, c) = circle_ix(two_servers(), Duration::from_secs(60), &ix, true);
    let st = c.preload(1);
    assert_eq!((st.dirs, st.entries, st.bounded), (1, 2, true));
}

#[test]
fn directory_prefetch_waits_for_the_end_of_the_preload() {
    let ix = index_in("preload-prefetch");
    let (_, mut c) = circle_ix(two_servers(), Duration::from_secs(60), &ix, false);
    // Prefetch on, without workers: what is queued stays in the queue.
    let c = Arc::get_mut(&mut c).unwrap();
    c.opts.prefetch = true;
    c.preloading
        .store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(names(c, ROOT), ["docs", "pub"]);
    assert_eq!(
        c.queue.pop(Duration::ZERO),
        None,
        "nothing queued meanwhile"
    );
    // When it ends (here without having merged anything), what the visit asked for is
    // queued: both subdirectories of the root.
    c.end_preload();
    let mut queued = Vec::new();
    while let Some(super::prefetch::Job::Dir { ino, .. }) = c.queue.pop(Duration::ZERO) {
        queued.push(ino);
    }
    let docs = c.lookup(ROOT, b"docs").unwrap().ino;
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(queued, [docs, pub_]);
}

#[test]
fn a_preload_of_stale_listings_revalidates_each_directory_only_once_visited() {
    let ix = index_in("preload-stale");
    let old = crate::index::now_secs() - 3600;
    ix.record_at(0, b"", &[dir("pub")], old);
    ix.record_at(0, b"pub", &[file("a", 1), file("gone", 5)], old);
    ix.record_at(1, b"", &[dir("pub"), dir("docs")], old);
    ix.record_at(1, b"pub", &[file("b", 2)], old);
    ix.record_at(1, b"docs", &[file("old", 1)], old);
    ix.flush();
    let (mock, c) = circle_ix(two_servers(), Duration::from_secs(60), &ix, true);
    assert_eq!(c.preload(1_000).dirs, 3);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mock.total_lists(), 0, "nothing revalidated before a visit");
    // Visiting `pub` (and the root, to look it up) serves the stale listing at once and
    // revalidates those two, once.
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(names(&c, pub_), ["a", "b", "gone"], "served at once");
    assert_eq!(
        names_soon(&c, pub_, &["a", "b", "big.bin"]),
        ["a", "b", "big.bin"]
    );
    for _ in 0..5 {
        names(&c, pub_);
    }
    assert_eq!(mock.lists_of(0, b"pub"), 1);
    assert_eq!(mock.lists_of(1, b"pub"), 1);
    assert_eq!(mock.lists_of(1, b""), 1);
    assert_eq!(mock.lists_of(1, b"docs"), 0, "not visited: not revalidated");
}

// ---------------------------------------------------------------------------
// seeing into the merge: offline entries, the control tree, provenance

#[test]
fn a_down_servers_last_entries_stay_marked_offline_and_unreadable() {
    let (mock, c) = circle(two_servers(), Duration::ZERO);
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(names(&c, pub_), ["a", "b", "big.bin"]);
    mock.set_down(1, true);
    // Still listed (a listing of `pub` went to the down server and failed)...
    assert_eq!(names(&c, pub_), ["a", "b", "big.bin"]);
    assert_eq!(names(&c, ROOT), ["docs", "pub"]);
    assert!(
        mock.lists_of(1, b"pub") >= 2,
        "the down server was asked again"
    );
    // ... marked offline...
    assert!(c.offline_since(1).is_some());
    assert!(c.offline_since(0).is_none());
    let b = c.lookup(pub_, b"b").unwrap().ino;
    assert_eq!(
        c.getxattr(b, provenance::SERVERS.as_bytes()).unwrap(),
        b"s1 (offline)"
    );
    // ... and a file only it holds fails at once, naming it; a mirrored one is still read.
    let err = read_all(&c, b).unwrap_err();
    assert_eq!(err.errno(), libc::EIO);
    assert!(err.message.contains("s1"), "{err}");
    let big = c.lookup(pub_, b"big.bin").unwrap().ino;
    assert_eq!(read_all(&c, big).unwrap().len(), 3_000_000);
    // The status file says so.
    let status = c.status_text();
    let row = status.lines().find(|l| l.starts_with("s1")).unwrap();
    assert!(row.contains("down") && row.contains("kept until"), "{row}");
    // Back: read again, no longer offline.
    mock.set_down(1, false);
    assert_eq!(names(&c, pub_), ["a", "b", "big.bin"]);
    assert_eq!(read_all(&c, b).unwrap(), b"BB");
    assert_eq!(
        c.getxattr(b, provenance::SERVERS.as_bytes()).unwrap(),
        b"s1"
    );
}

#[test]
fn offline_entries_go_after_the_keep_time_and_a_server_down_since_the_start_has_none() {
    let mock = Arc::new(two_servers());
    let c = Circle::new(
        Arc::clone(&mock) as Arc<dyn Backend>,
        Options {
            ttl: Duration::ZERO,
            cache_entries: 10_000,
            max_wait: Duration::from_secs(5),
            prefetch: false,
            offline_keep: Duration::ZERO,
            control_dir: b".ftpcircle".to_vec(),
            index: None,
            segments: Default::default(),
        },
    );
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    assert_eq!(names(&c, pub_), ["a", "b", "big.bin"]);
    mock.set_down(1, true);
    assert_eq!(
        names(&c, pub_),
        ["a", "big.bin"],
        "nothing kept with a zero keep"
    );

    let mut m = two_servers();
    m.servers[1].down = true;
    let (_mock, c) = circle(m, Duration::ZERO);
    assert_eq!(names(&c, ROOT), ["pub"]);
    let json = c.status_json();
    assert!(json.contains("\"state\": \"down\""), "{json}");
}

#[test]
fn the_control_directory_is_reachable_but_never_listed() {
    let mut m = two_servers();
    // A real entry of that name on s1: only in s1's view.
    m.servers[1]
        .dirs
        .get_mut(&b""[..])
        .unwrap()
        .push(dir(".ftpcircle"));
    m.servers[1]
        .dirs
        .insert(b".ftpcircle".to_vec(), vec![file("real", 2)]);
    let (_mock, c) = circle(m, Duration::from_secs(60));
    assert_eq!(names(&c, ROOT), ["docs", "pub"]);
    let ctl = c.lookup(ROOT, b".ftpcircle").unwrap();
    assert_eq!(ctl.kind, FileKind::Dir);
    assert_eq!(names(&c, ctl.ino), ["servers", "status", "status.json"]);
    let servers = c.lookup(ctl.ino, b"servers").unwrap().ino;
    assert_eq!(names(&c, servers), ["s0", "s1"]);
    let s1 = c.lookup(servers, b"s1").unwrap().ino;
    assert_eq!(names(&c, s1), [".ftpcircle", "docs", "pub"]);
    let s1_pub = c.lookup(s1, b"pub").unwrap().ino;
    assert_eq!(names(&c, s1_pub), ["b", "big.bin"]);
    let b = c.lookup(s1_pub, b"b").unwrap().ino;
    assert_eq!(read_all(&c, b).unwrap(), b"BB");
    let real = c.lookup(s1, b".ftpcircle").unwrap().ino;
    assert_eq!(names(&c, real), ["real"]);
    // The status files: their size is their text's.
    let status = c.lookup(ctl.ino, b"status").unwrap();
    let text = read_all(&c, status.ino).unwrap();
    assert!(
        text.starts_with(b"LABEL"),
        "{}",
        String::from_utf8_lossy(&text)
    );
    assert_eq!(c.getattr(status.ino).unwrap().size, text.len() as u64);
    let json = read_all(&c, c.lookup(ctl.ino, b"status.json").unwrap().ino).unwrap();
    let json = String::from_utf8(json).unwrap();
    assert!(
        json.contains("\"view\": \".ftpcircle/servers/s1\""),
        "{json}"
    );
    // The control tree has no provenance, and survives the kernel forgetting it.
    assert!(c.listxattr(ctl.ino).unwrap().is_empty());
    c.forget(ctl.ino, 1);
    c.forget(servers, 1);
    assert_eq!(c.lookup(ROOT, b".ftpcircle").unwrap().ino, ctl.ino);
    assert_eq!(names(&c, servers), ["s0", "s1"]);
}

#[test]
fn provenance_of_merged_mirrored_and_conflicting_entries() {
    let mut m = two_servers();
    // `a` on s1 too, bigger: s0's is shown, s1's hidden.
    m.servers[1]
        .dirs
        .get_mut(&b"pub"[..])
        .unwrap()
        .push(file("a", 5));
    m.servers[1]
        .files
        .insert(b"pub/a".to_vec(), b"AAAAA".to_vec());
    let (_mock, c) = circle(m, Duration::from_secs(60));
    let pub_ = c.lookup(ROOT, b"pub").unwrap().ino;
    let get = |ino: u64, name: &str| {
        c.getxattr(ino, name.as_bytes())
            .map(|v| String::from_utf8(v).unwrap())
    };
    let big = c.lookup(pub_, b"big.bin").unwrap().ino;
    assert_eq!(get(big, provenance::SERVERS).unwrap(), "s0\ns1");
    assert_eq!(get(big, provenance::MIRRORS).unwrap(), "s0\ns1");
    assert_eq!(get(big, provenance::URL).unwrap(), "ftp://s0/pub/big.bin");
    assert_eq!(
        get(big, provenance::CONFLICTS).unwrap_err().errno(),
        libc::ENODATA
    );
    let a = c.lookup(pub_, b"a").unwrap().ino;
    assert_eq!(get(a, provenance::SERVERS).unwrap(), "s0\ns1");
    assert_eq!(get(a, provenance::MIRRORS).unwrap(), "s0");
    assert_eq!(get(a, provenance::CONFLICTS).unwrap(), "s1\tfile\t5\t-");
    let names: Vec<u8> = c.listxattr(a).unwrap();
    assert_eq!(
        names,
        b"user.ftpcircle.servers\0user.ftpcircle.mirrors\0user.ftpcircle.conflicts\0user.ftpcircle.url\0"
    );
    assert_eq!(get(pub_, provenance::SERVERS).unwrap(), "s0\ns1");
    assert_eq!(get(pub_, provenance::URL).unwrap(), "ftp://s0/pub/");
    assert_eq!(
        get(a, "user.ftpcircle.other").unwrap_err().errno(),
        libc::ENODATA
    );
    // The hidden copy, byte-exact, in s1's view; its URL is s1's.
    let ctl = c.lookup(ROOT, b".ftpcircle").unwrap().ino;
    let servers = c.lookup(ctl, b"servers").unwrap().ino;
    let s1 = c.lookup(servers, b"s1").unwrap().ino;
    let s1_pub = c.lookup(s1, b"pub").unwrap().ino;
    let hidden = c.lookup(s1_pub, b"a").unwrap().ino;
    assert_eq!(read_all(&c, hidden).unwrap(), b"AAAAA");
    assert_eq!(get(hidden, provenance::URL).unwrap(), "ftp://s1/pub/a");
    assert_eq!(get(hidden, provenance::MIRRORS).unwrap(), "s1");
}

#[test]
fn view_names_are_readable_unique_and_stable() {
    struct Labels(Vec<&'static str>);
    impl Backend for Labels {
        fn servers(&self) -> usize {
            self.0.len()
        }
        fn label(&self, s: usize) -> &str {
            self.0[s]
        }
        fn base(&self, _s: usize) -> &[u8] {
            b"/"
        }
        fn list(&self, _s: usize, _p: &[u8], _prio: Priority) -> Result<Vec<RawEntry>> {
            Ok(Vec::new())
        }
        fn open(&self, _: usize, _: &[u8], _: u64, _: Priority) -> Result<Box<dyn ByteStream>> {
            Err(Error::not_found())
        }
    }
    let b = Labels(vec!["h:21", "h:21/pub/x", "h:21", "[::1]:2121"]);
    let names: Vec<String> = control::view_names(&b)
        .into_iter()
        .map(|n| String::from_utf8(n).unwrap())
        .collect();
    assert_eq!(names, ["h:21", "h:21_pub_x", "h:21~3", "[::1]:2121"]);
}

#[test]
fn a_views_copy_never_comes_from_the_prefetch_cache_of_the_merged_path() {
    // `x` on both servers, same size, other times and bytes: a conflict s0 wins.
    let at = |secs| Some(std::time::UNIX_EPOCH + Duration::from_secs(secs));
    let mut s0 = MockServer::default();
    s0.dirs.insert(
        b"".to_vec(),
        vec![
            file("a", 1),
            RawEntry {
                mtime: at(1_000_000),
                ..file("x", 3)
            },
        ],
    );
    s0.files.insert(b"a".to_vec(), b"a".to_vec());
    s0.files.insert(b"x".to_vec(), b"AAA".to_vec());
    let mut s1 = MockServer::default();
    s1.dirs.insert(
        b"".to_vec(),
        vec![RawEntry {
            mtime: at(2_000_000),
            ..file("x", 3)
        }],
    );
    s1.files.insert(b"x".to_vec(), b"BBB".to_vec());
    let mock = Arc::new(Mock {
        servers: vec![s0, s1],
        ..Default::default()
    });
    let c = Arc::new(Circle::new(
        Arc::clone(&mock) as Arc<dyn Backend>,
        Options {
            ttl: Duration::from_secs(60),
            cache_entries: 10_000,
            max_wait: Duration::from_secs(5),
            prefetch: true,
            offline_keep: super::DEFAULT_OFFLINE_KEEP,
            control_dir: b".ftpcircle".to_vec(),
            index: None,
            segments: Default::default(),
        },
    ));
    c.start_prefetch(2);
    let x = c.lookup(ROOT, b"x").unwrap().ino;
    // Opening `a` queues the merged `x` for prefetch: wait (bounded) until it was fetched.
    let a = c.lookup(ROOT, b"a").unwrap().ino;
    assert_eq!(read_all(&c, a).unwrap(), b"a");
    let fetched = |n| {
        mock.opens
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.0 == 0)
            .count()
            >= n
    };
    for _ in 0..200 {
        if fetched(2) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(fetched(2), "the merged x was not prefetched");
    let ctl = c.lookup(ROOT, b".ftpcircle").unwrap().ino;
    let servers = c.lookup(ctl, b"servers").unwrap().ino;
    let s1 = c.lookup(servers, b"s1").unwrap().ino;
    let vx = c.lookup(s1, b"x").unwrap().ino;
    assert_eq!(read_all(&c, vx).unwrap(), b"BBB");
    assert_eq!(read_all(&c, x).unwrap(), b"AAA");
    assert_eq!(read_all(&c, vx).unwrap(), b"BBB");
}

/// statfs counts the merged tree known so far: not the control directory, not the
/// per-server views, however far they were walked.
#[test]
fn tree_totals_count_the_merged_tree_only() {
    let (_m, c) = circle(two_servers(), Duration::from_secs(60));
    let pub_dir = c.lookup(ROOT, b"pub").unwrap().ino;
    c.readdir(pub_dir).unwrap();
    c.lookup(ROOT, b"docs").unwrap();
    // root, pub, docs, pub/big.bin, pub/a, pub/b
    let merged = c.tree_totals();
    assert_eq!(merged, (6, 3_000_000 + 1 + 2));
    // Walk the first server's view completely.
    let view = super::control::VIEWS;
    for e in c.readdir(view).unwrap() {
        if e.attr.kind == FileKind::Dir {
            c.readdir(e.attr.ino).unwrap();
        }
    }
    assert!(c.inode_count() > 6, "the view's nodes exist");
    assert_eq!(c.tree_totals(), merged);
}
