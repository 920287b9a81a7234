//! Problems first seen under scripts/soak.sh, reproduced here deterministically
//! on a real mount against a real server.

mod common;

use common::{FtpServer, Mount, MountOptions, TempDir, TestCert, pseudo_random_bytes, write_file};
use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

/// Closing a file whose transfer is still "in progress" for the client makes
/// the daemon send ABOR. When the server had already sent the whole (small)
/// file, vsftpd answers the RETR with "226 Transfer complete" and the ABOR
/// with "225 No transfer to ABOR". Both replies must be consumed: a
/// connection that goes back to the pool with the 225 still unread answers
/// its next command with it ("RETR ...: server replied 225 No transfer to
/// ABOR"), so reads fail and connections are thrown away. Under load, with
/// every mirror hit the same way, readers see EIO and listings of a healthy
/// server fail (which then hides its directories).
#[test]
fn aborted_transfer_leaves_the_connection_in_step() {
    let dir = TempDir::new("abor");
    let root = dir.join("root");
    let a = pseudo_random_bytes(11, 300_000);
    let b = pseudo_random_bytes(12, 300_000);
    write_file(&root.join("pub/a.bin"), &a);
    write_file(&root.join("pub/b.bin"), &b);
    let server = FtpServer::vsftpd(&root);
    // One connection: every transfer reuses the one the previous left behind.
    let m = Mount::start(
        &format!("{}\n", server.line()),
        &MountOptions::default().arg("--max-connections").arg("1"),
    );
    for i in 0..4u64 {
        for (name, data) in [("a.bin", &a), ("b.bin", &b)] {
            let f = fs::File::open(m.join(format!("pub/{name}"))).expect("open");
            // Drop cached pages so the read reaches the daemon.
            // SAFETY: the fd is open for the lifetime of `f`.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            let off = i * 65_536;
            let mut buf = vec![0u8; 4096];
            f.read_exact_at(&mut buf, off)
                .unwrap_or_else(|e| panic!("read {name} at {off}: {e}"));
            assert!(
                buf == data[off as usize..off as usize + 4096],
                "{name} at {off}"
            );
            // Closing it aborts the transfer the read started.
            drop(f);
        }
    }
    let log = m.log();
    drop(m);
    let stale: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("No transfer to ABOR"))
        .collect();
    assert!(
        stale.is_empty(),
        "a reply to ABOR was read as the reply to a later command:\n{}",
        stale.join("\n")
    );
    let logins = server
        .exchanges()
        .iter()
        .filter(|e| e.verb() == "USER")
        .count();
    assert_eq!(
        logins,
        1,
        "connections were dropped and re-opened ({logins} logins) for 8 sequential reads \
         over one pooled connection:\n{}",
        server.commands_log()
    );
}

/// Jumping around a big file stops its transfer in the middle, while vsftpd is still
/// sending. With ABOR, vsftpd answered "426 Failure writing network stream" and "225 No
/// transfer to ABOR" where suppaftp waits for a 226: the 225 was taken for an error and the
/// connection dropped, so every jump (and every piece of a segmented read) cost a new login.
/// The connection must be kept and stay in step.
#[test]
fn a_transfer_stopped_midway_keeps_its_connection() {
    let dir = TempDir::new("abor-mid");
    let root = dir.join("root");
    let size = 64 << 20;
    let data = pseudo_random_bytes(13, size);
    write_file(&root.join("pub/big.bin"), &data);
    let server = FtpServer::vsftpd(&root);
    let m = Mount::start(
        &format!("{}\n", server.line()),
        &MountOptions::default()
            .arg("--max-connections")
            .arg("1")
            .arg("--no-segmented-reads"),
    );
    let f = fs::File::open(m.join("pub/big.bin")).expect("open");
    // Each offset is far (more than 4 MiB) from where the transfer stands: a new one starts
    // there (ABOR, REST, RETR) while the server still has tens of MiB to send (a transfer
    // near the end may be complete by then: its ABOR is the other case, see above).
    for off in [0usize, 20 << 20, 1 << 20, 40 << 20, 8 << 20] {
        let mut buf = vec![0u8; 4096];
        f.read_exact_at(&mut buf, off as u64)
            .unwrap_or_else(|e| panic!("read at {off}: {e}"));
        assert!(buf == data[off..off + 4096], "bytes at {off}");
    }
    drop(f);
    let log = m.log();
    drop(m);
    let ex = server.exchanges();
    let count = |verb: &str| ex.iter().filter(|e| e.verb() == verb).count();
    assert!(
        count("RETR") >= 5,
        "every jump starts a new transfer ({} RETR):\n{}",
        count("RETR"),
        server.commands_log()
    );
    assert_eq!(
        count("USER"),
        1,
        "the connection was dropped after a stopped transfer:\n{}\n{log}",
        server.commands_log()
    );
}

/// A file of a few MB read in part and closed: vsftpd had written the whole file into the
/// sockets' buffers and waits in a lingering close, so it answers the end of the transfer with
/// "226 Transfer complete" and an ABOR read after that with "225 No transfer to ABOR". That
/// second reply put the connection out of step: every such file cost a new login. Stopping a
/// transfer by closing its data connection and reading its one reply keeps it.
#[test]
fn files_read_in_part_keep_the_connection() {
    let dir = TempDir::new("abor-part");
    let root = dir.join("root");
    let files = mid_sized_files(&root);
    let server = FtpServer::vsftpd(&root);
    read_in_part_over_one_login(&server, MountOptions::default(), &files);
}

/// The same over explicit FTPS: the data connection closed under its TLS session.
#[test]
fn files_read_in_part_keep_the_connection_over_ftps() {
    let dir = TempDir::new("abor-part-tls");
    let root = dir.join("root");
    let files = mid_sized_files(&root);
    let cert = TestCert::generate(&dir.join("cert"));
    let server = FtpServer::vsftpd_tls(&root, &cert);
    read_in_part_over_one_login(&server, MountOptions::ca(&cert.ca), &files);
}

/// Files of 1.2 to 3 MB under `root/pub`: more than one read request, little enough for the
/// sockets' buffers to take the rest.
fn mid_sized_files(root: &std::path::Path) -> Vec<Vec<u8>> {
    let sizes = [1_200_000usize, 1_600_000, 2_000_000, 3_000_000];
    let files: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(i, &n)| pseudo_random_bytes(30 + i as u64, n))
        .collect();
    for (i, d) in files.iter().enumerate() {
        write_file(&root.join(format!("pub/f{i}.bin")), d);
    }
    files
}

/// Read the first 4 KiB of every file twice over, closing each, through one connection.
fn read_in_part_over_one_login(server: &FtpServer, opts: MountOptions, files: &[Vec<u8>]) {
    let m = Mount::start(
        &format!("{}\n", server.line()),
        &opts.arg("--max-connections").arg("1"),
    );
    for _round in 0..2 {
        for (i, d) in files.iter().enumerate() {
            let f = fs::File::open(m.join(format!("pub/f{i}.bin"))).expect("open");
            // Drop cached pages so the read reaches the daemon.
            // SAFETY: the fd is open for the lifetime of `f`.
            unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            let mut buf = vec![0u8; 4096];
            f.read_exact_at(&mut buf, 0)
                .unwrap_or_else(|e| panic!("read f{i}.bin: {e}"));
            assert!(buf == d[..4096], "bytes of f{i}.bin");
            // Time for the server to write the rest into the buffers.
            std::thread::sleep(std::time::Duration::from_millis(50));
            drop(f);
        }
    }
    let log = m.log();
    drop(m);
    let ex = server.exchanges();
    let count = |verb: &str| ex.iter().filter(|e| e.verb() == verb).count();
    assert_eq!(count("RETR"), 2 * files.len(), "{}", server.commands_log());
    assert_eq!(
        count("USER"),
        1,
        "a file read in part cost its connection:\n{}\n{log}",
        server.commands_log()
    );
}
