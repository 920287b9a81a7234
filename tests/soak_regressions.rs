//! Problems first seen under scripts/soak.sh, reproduced here deterministically
//! on a real mount against a real server.

mod common;

use common::{FtpServer, Mount, MountOptions, TempDir, pseudo_random_bytes, write_file};
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
