use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::backend::{EntryKind, Precision, RawEntry};
use crate::serverlist::{self, ServerSpec};

fn specs(lines: &str) -> Vec<ServerSpec> {
    serverlist::parse(Path::new("test-list"), lines.as_bytes()).unwrap()
}

fn two() -> Vec<ServerSpec> {
    specs("127.0.0.1:2121,alice,secret1,0\n127.0.0.2:2121/pub,bob,secret2,0\n")
}

fn entry(name: &str, kind: EntryKind, size: u64, mtime: Option<u64>) -> RawEntry {
    RawEntry {
        name: name.into(),
        kind,
        size,
        mtime: mtime.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
        mtime_precision: Precision::Minute,
    }
}

fn sample() -> Vec<RawEntry> {
    vec![
        entry("a.txt", EntryKind::File, 12345, Some(1_700_000_000)),
        entry("dir", EntryKind::Dir, 0, None),
        entry("link", EntryKind::Symlink(b"../x".to_vec()), 4, Some(5)),
        RawEntry {
            name: b"\xc3\xa9t\xc3\xa9 \xff".to_vec(),
            ..entry("x", EntryKind::File, u64::MAX, Some(0))
        },
    ]
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ftpc-index-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d.join("index.sqlite")
}

#[test]
fn encoding_round_trips_and_rejects_damage() {
    let e = sample();
    let data = encode(&e);
    assert_eq!(decode(&data).unwrap(), e);
    assert_eq!(decode(&encode(&[])).unwrap(), vec![]);
    // Every single flipped byte and every truncation is detected.
    for i in 0..data.len() {
        let mut bad = data.clone();
        bad[i] ^= 0x21;
        assert!(decode(&bad).is_none(), "flip at {i}");
        assert!(decode(&data[..i]).is_none(), "truncated at {i}");
    }
}

#[test]
fn write_read_back_and_age() {
    let path = tmp("rw");
    let (ix, warnings) = Index::open(&path, &two()).unwrap();
    assert!(warnings.is_empty());
    assert!(ix.listing(0, b"").is_none());
    ix.record(0, b"", &sample());
    ix.record(1, b"sub/dir", &sample()[..1]);
    ix.record_at(1, b"old", &sample()[1..2], now_secs() - 3600);
    ix.flush();
    let got = ix.listing(0, b"").unwrap();
    assert_eq!(got.entries, sample());
    assert!(got.age < Duration::from_secs(5));
    assert_eq!(ix.listing(1, b"sub/dir").unwrap().entries, sample()[..1]);
    assert!(
        ix.listing(1, b"").is_none(),
        "servers do not share listings"
    );
    assert!(ix.listing(1, b"old").unwrap().age >= Duration::from_secs(3600));
    ix.forget(0, b"");
    ix.flush();
    assert!(ix.listing(0, b"").is_none());
    drop(ix);
    // Read back by a new process: same entries; no password anywhere in the file.
    let (ix, _) = Index::open(&path, &two()).unwrap();
    assert_eq!(ix.listing(1, b"sub/dir").unwrap().entries, sample()[..1]);
    drop(ix);
    let bytes = std::fs::read(&path).unwrap();
    let hay = String::from_utf8_lossy(&bytes);
    assert!(hay.contains("alice@127.0.0.1:2121/"));
    assert!(!hay.contains("secret1") && !hay.contains("secret2"));
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.counts(), (2, 2));
}

#[test]
fn removed_or_changed_servers_lose_their_entries() {
    let path = tmp("servers");
    let (ix, _) = Index::open(&path, &two()).unwrap();
    ix.record(0, b"", &sample());
    ix.record(1, b"", &sample());
    ix.flush();
    drop(ix);
    // Server 2 changed its base path (another identity); server 1 moved to position 1.
    let changed = specs("127.0.0.2:2121/other,bob,secret2,0\n127.0.0.1:2121,alice,pw,1\n");
    let (ix, _) = Index::open(&path, &changed).unwrap();
    assert!(
        ix.listing(0, b"").is_none(),
        "a changed server starts empty"
    );
    assert_eq!(ix.listing(1, b"").unwrap().entries, sample());
    drop(ix);
    let r = Reader::open(&path).unwrap();
    assert_eq!(r.counts(), (1, 4), "the old server's entries are deleted");
    assert_eq!(r.servers.len(), 2);
}

#[test]
fn other_schema_version_is_moved_aside() {
    let path = tmp("version");
    drop(Index::open(&path, &two()).unwrap());
    {
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
    }
    let (ix, warnings) = Index::open(&path, &two()).unwrap();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("schema version"), "{warnings:?}");
    ix.record(0, b"", &sample());
    ix.flush();
    assert_eq!(ix.listing(0, b"").unwrap().entries, sample());
}

#[test]
fn garbage_and_truncated_files_are_moved_aside_and_rebuilt() {
    let path = tmp("corrupt");
    std::fs::File::create(&path)
        .unwrap()
        .write_all(&[0x5a; 10000])
        .unwrap();
    let (ix, warnings) = Index::open(&path, &two()).unwrap();
    assert_eq!(warnings.len(), 1);
    assert!(warnings[0].contains("moved aside"), "{warnings:?}");
    // Fill it with enough listings to span many pages, then cut the file in half.
    for i in 0..300 {
        ix.record(0, format!("d{i}").as_bytes(), &sample());
    }
    drop(ix);
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > 8192, "{len}");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let (ix, warnings) = Index::open(&path, &two()).unwrap();
    assert_eq!(warnings.len(), 1, "truncation must be detected");
    assert!(
        ix.listing(0, b"d1").is_none(),
        "nothing served from the bad file"
    );
    let dir = path.parent().unwrap();
    let aside = std::fs::read_dir(dir)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .contains(".bad-")
        })
        .count();
    assert!(aside >= 1);
}

#[test]
fn a_damaged_blob_is_never_served() {
    let path = tmp("blob");
    let (ix, _) = Index::open(&path, &two()).unwrap();
    ix.record(0, b"x", &sample());
    ix.flush();
    {
        let c = Connection::open(&path).unwrap();
        c.execute(
            "UPDATE listings SET data = substr(data, 1, length(data) - 1) || x'00'",
            [],
        )
        .unwrap();
    }
    assert!(ix.listing(0, b"x").is_none());
}

#[test]
fn meta_values() {
    let path = tmp("meta");
    let (ix, _) = Index::open(&path, &two()).unwrap();
    assert_eq!(ix.meta("crawl"), None);
    ix.set_meta("crawl", Some(42)).unwrap();
    assert_eq!(ix.meta("crawl"), Some(42));
    ix.set_meta("crawl", None).unwrap();
    assert_eq!(ix.meta("crawl"), None);
}
