//! Segmented reads over real mounts: big files read in pieces from several rate-limited vsftpd
//! mirrors at once (each connection capped with `anon_max_rate`, as public mirrors do).
//!
//! Checked: the copy is byte-equal; every mirror's log shows RETRs; a mirror killed in the
//! middle of a read costs no byte; random preads of a big file are right. No timing is
//! asserted (speed is measured by scripts/bench.sh); every wait is bounded.

mod common;

use common::{FtpServer, Mount, MountOptions, TempDir, pseudo_random_bytes, write_file};
use std::fs;
use std::io::Read;
use std::os::unix::fs::FileExt;

const MIB: usize = 1024 * 1024;
/// Big enough to be segmented (more than 32 MiB left after the first 4 MiB).
const SIZE: usize = 48 * MIB;
/// Per connection: 48 MiB over one stream would take 6 s; over 8 streams under a second.
const RATE: u64 = 8_000_000;

/// `n` vsftpd mirrors of one root holding `big.bin` (the same file, so identical copies).
fn mirrors(n: usize, rate: u64) -> (TempDir, Vec<u8>, Vec<FtpServer>) {
    let dir = TempDir::new("segmented");
    let root = dir.subdir("root");
    let data = pseudo_random_bytes(9, SIZE);
    write_file(&root.join("big.bin"), &data);
    let servers = (0..n)
        .map(|_| FtpServer::vsftpd_rate(&root, rate))
        .collect();
    (dir, data, servers)
}

fn serverlist(servers: &[FtpServer]) -> String {
    servers.iter().map(|s| s.line() + "\n").collect()
}

fn opts() -> MountOptions {
    MountOptions::default()
        .arg("--timeout")
        .arg("3")
        .arg("--max-connections")
        .arg("4")
}

fn retrs(s: &FtpServer) -> usize {
    s.count_verb("RETR")
}

fn same(got: &[u8], want: &[u8]) -> bool {
    got.len() == want.len() && got == want
}

#[test]
fn a_big_file_comes_from_every_mirror_byte_equal() {
    let (_dir, data, servers) = mirrors(3, RATE);
    let m = Mount::start(&serverlist(&servers), &opts());
    let got = fs::read(m.path().join("big.bin")).expect("read big.bin");
    assert!(same(&got, &data), "the copy differs from the source");
    for (i, s) in servers.iter().enumerate() {
        assert!(retrs(s) > 0, "mirror {i} served no RETR:\n{}", m.log());
        s.assert_no_write_commands("mirror");
    }
    // The measurements the choice of server uses are logged (info, `-v`).
    let log = m.log();
    assert!(log.contains("throughput per connection now"), "{log}");
    assert!(log.contains("round trip now"), "{log}");
}

#[test]
fn a_mirror_killed_mid_read_costs_no_byte() {
    let (_dir, data, mut servers) = mirrors(3, RATE / 2);
    let m = Mount::start(&serverlist(&servers), &opts());
    let mut f = fs::File::open(m.path().join("big.bin")).expect("open");
    let mut got = vec![0u8; 12 * MIB];
    f.read_exact(&mut got).expect("first 12 MiB");
    // Mirror 1 goes away with its transfers in flight.
    assert!(retrs(&servers[1]) > 0, "mirror 1 was not used yet");
    servers[1].stop();
    f.read_to_end(&mut got)
        .expect("the rest, from the other mirrors");
    assert!(same(&got, &data), "the copy differs from the source");
    assert!(retrs(&servers[2]) > 0);
}

#[test]
fn random_preads_of_a_big_mirrored_file_are_right() {
    let (_dir, data, servers) = mirrors(2, 50_000_000);
    let m = Mount::start(&serverlist(&servers), &opts());
    let f = fs::File::open(m.path().join("big.bin")).expect("open");
    let mut x: u64 = 0x9e37_79b9;
    for _ in 0..200 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let off = ((x >> 20) % (SIZE as u64 - 4096)) as usize;
        let mut buf = [0u8; 4096];
        f.read_exact_at(&mut buf, off as u64).expect("pread");
        assert!(buf[..] == data[off..off + 4096], "pread at {off}");
    }
    drop(f);
    for s in &servers {
        s.assert_no_write_commands("mirror");
    }
}

/// The number in the daemon's "N bytes went from the socket to the kernel without a copy"
/// line for `name` (debug log), if any.
fn zero_copy_bytes(log: &str, name: &str) -> Option<u64> {
    log.lines()
        .filter(|l| l.contains(name) && l.contains("(zero copy)"))
        .find_map(|l| {
            let key = format!("{name}: ");
            let at = l.find(&key)? + key.len();
            l[at..].split_whitespace().next()?.parse().ok()
        })
}

#[test]
fn plain_transfers_go_from_socket_to_kernel_without_a_copy_and_stay_exact() {
    let dir = TempDir::new("zerocopy");
    let root = dir.subdir("root");
    let data = pseudo_random_bytes(21, 24 * MIB);
    write_file(&root.join("plain.bin"), &data);
    let cert = common::TestCert::generate(&dir.subdir("cert"));
    let plain = FtpServer::vsftpd(&root);
    let tls_root = dir.subdir("tls");
    write_file(&tls_root.join("tls.bin"), &data);
    let tls = FtpServer::vsftpd_tls(&tls_root, &cert);
    let list = format!("{}\n{}\n", plain.line(), tls.line());
    // -v twice with the harness's own: debug, where the zero-copy line is.
    let m = Mount::start(&list, &MountOptions::ca(&cert.ca).arg("-v"));
    // A sequential copy (the kernel's requests overtake each other now and then: the bytes
    // they skip go through the buffer), then preads here and there, then the same file again.
    let got = fs::read(m.path().join("plain.bin")).expect("read plain.bin");
    assert!(
        same(&got, &data),
        "the spliced copy differs from the source"
    );
    let f = fs::File::open(m.path().join("plain.bin")).expect("open");
    for off in [0, 5 * MIB + 17, 3 * MIB, 20 * MIB - 1, 24 * MIB - 4096] {
        let mut buf = vec![0u8; 300_000.min(data.len() - off)];
        f.read_exact_at(&mut buf, off as u64).expect("pread");
        assert!(buf[..] == data[off..off + buf.len()], "pread at {off}");
    }
    drop(f);
    // TLS bytes must be decrypted here: the ordinary path, just as exact.
    let got = fs::read(m.path().join("tls.bin")).expect("read tls.bin");
    assert!(same(&got, &data), "the TLS copy differs from the source");
    // Closing is asynchronous in the kernel (release): wait for the lines, bounded.
    let mut log = m.log();
    for _ in 0..50 {
        if zero_copy_bytes(&log, "plain.bin").is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        log = m.log();
    }
    let spliced = zero_copy_bytes(&log, "plain.bin").unwrap_or_else(|| panic!("{log}"));
    assert!(
        spliced >= data.len() as u64 / 2,
        "only {spliced} of {} bytes spliced:\n{log}",
        data.len()
    );
    assert_eq!(
        zero_copy_bytes(&log, "tls.bin"),
        None,
        "TLS bytes spliced?\n{log}"
    );
    plain.assert_no_write_commands("plain");
}

/// The bytes the daemon's release line says it stored in the page cache for the file read
/// with direct I/O (None before that line).
fn stored_bytes(log: &str) -> Option<u64> {
    log.lines()
        .filter(|l| l.contains("read with direct I/O, "))
        .find_map(|l| {
            let at = l.find("direct I/O, ")? + "direct I/O, ".len();
            l[at..].split_whitespace().next()?.parse().ok()
        })
}

/// Is the running kernel at least `major.minor`?
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (a, b) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[test]
fn a_big_file_read_once_is_read_again_from_memory_and_maps_right() {
    let dir = TempDir::new("direct");
    let root = dir.subdir("root");
    let data = pseudo_random_bytes(33, 12 * MIB + 4321);
    write_file(&root.join("once.bin"), &data);
    write_file(&root.join("mapped.bin"), &data[..9 * MIB]);
    let server = FtpServer::vsftpd(&root);
    let m = Mount::start(&(server.line() + "\n"), &MountOptions::default().arg("-v"));
    // The first open of a big file reads with direct I/O; every reply is also stored in the
    // page cache.
    let got = fs::read(m.path().join("once.bin")).expect("read once.bin");
    assert!(same(&got, &data), "the first read differs from the source");
    let mut log = m.log();
    for _ in 0..50 {
        if stored_bytes(&log).is_some() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
        log = m.log();
    }
    // Direct I/O needs FUSE_DIRECT_IO_ALLOW_MMAP (Linux 6.6); an older kernel reads through
    // the page cache as before, and the rest must hold all the same.
    let stored = stored_bytes(&log);
    if stored.is_none() {
        assert!(!kernel_at_least(6, 6), "no direct read:\n{log}");
    }
    if let Some(stored) = stored {
        assert!(stored > 0, "nothing stored in the page cache:\n{log}");
        assert!(
            stored <= data.len() as u64,
            "stored {stored} bytes of {}",
            data.len()
        );
    }
    // Stores still queued at release land within a moment.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let retrs = server.count_verb("RETR");
    let again = fs::read(m.path().join("once.bin")).expect("read once.bin again");
    assert!(
        same(&again, &data),
        "the second read differs from the source"
    );
    if stored == Some(data.len() as u64) {
        assert_eq!(
            server.count_verb("RETR"),
            retrs,
            "all bytes were stored, yet the second read fetched again:\n{}\n{}",
            server.commands_log(),
            m.log()
        );
    }
    // A big file mapped on its first open (direct I/O is opened, mmap must still work).
    let f = fs::File::open(m.path().join("mapped.bin")).expect("open mapped.bin");
    let len = 9 * MIB;
    // SAFETY: a fresh read-only shared mapping of an open file, unmapped below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&f),
            0,
        )
    };
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: the mapping is `len` readable bytes until munmap.
    let mapped = unsafe { std::slice::from_raw_parts(p.cast::<u8>(), len) }.to_vec();
    // SAFETY: unmapping what was mapped above.
    unsafe { libc::munmap(p, len) };
    assert!(mapped == data[..len], "the mapping differs from the source");
    server.assert_no_write_commands("direct");
}
