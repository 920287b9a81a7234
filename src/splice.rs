//! Moving bytes from a data socket to /dev/fuse without copying them through user space.
//!
//! Owns: one pipe (kernel buffer) and the three moves a zero-copy read reply is made of:
//! a few bytes written into the pipe (the reply header, the last bytes of the reply),
//! bytes spliced from a socket into it, and the whole pipe spliced to a file in one call.
//!
//! Why: a read served by the ordinary path copies every byte twice in the daemon, socket to
//! user memory (`recv`) and user memory to the kernel's page (`writev` on /dev/fuse). On a
//! 2-core machine those copies, not the network, bound a cold `cp`: the receiving thread is
//! busy the whole transfer. `splice(2)` from the socket hands the kernel's received pages to
//! the pipe by reference, and /dev/fuse copies them straight into the page cache: one copy
//! instead of two (measured: a 256 MiB RETR drained through a pipe in 0.075 s against
//! 0.18-0.25 s received into a buffer, same server, same machine).
//!
//! Invariants:
//! - the pipe never blocks: both ends are non-blocking, so a full pipe gives `WouldBlock`
//!   (the caller takes the bytes back with [`Pipe::take_back`] and goes on the ordinary way);
//! - a wait for the socket is bounded by the socket's read timeout, never by the pipe;
//! - after [`Pipe::send_to`] or [`Pipe::take_back`] the pipe is empty again.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Pipe sizes asked for, largest first: 4 MiB holds a 1 MiB reply even when the network
/// delivered it in 1,448-byte segments (one pipe slot each, 724 of the 1,024 slots); without
/// CAP_SYS_RESOURCE a pipe may not exceed `/proc/sys/fs/pipe-max-size` (1 MiB by default,
/// enough for the kernel's usual 128-256 KiB read requests).
const PIPE_BYTES: [usize; 3] = [4 << 20, 1 << 20, 256 << 10];

pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Its size in bytes (what F_GETPIPE_SZ says).
    capacity: usize,
    /// The largest reply it takes ([`Pipe::max_reply`]): half its size at first, a quarter
    /// once the pipe ran full (the network delivers small segments, one slot each).
    max_reply: AtomicUsize,
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

impl Pipe {
    /// A non-blocking pipe as large as the system allows, up to 4 MiB ([`PIPE_BYTES`]).
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: fds is a valid array of two ints for pipe2 to fill.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(last_err());
        }
        // SAFETY: pipe2 succeeded: both fds are open and owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        for size in PIPE_BYTES {
            // SAFETY: fcntl on an fd we own; F_SETPIPE_SZ fails harmlessly when not allowed.
            if unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size as libc::c_int) }
                > 0
            {
                break;
            }
        }
        // SAFETY: as above; F_GETPIPE_SZ only reads.
        let capacity = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        if capacity <= 0 {
            return Err(last_err());
        }
        let capacity = capacity as usize;
        Ok(Pipe {
            read,
            write,
            capacity,
            max_reply: AtomicUsize::new(capacity / 2),
        })
    }

    /// Its size in bytes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The largest reply this pipe takes with room to spare: a pipe counts slots, not bytes,
    /// and a slot holds one received fragment: up to 32 KiB on loopback, one 1,448-byte
    /// segment on an Ethernet path without receive offload. Half the pipe's size until it
    /// once ran full, a quarter after.
    pub fn max_reply(&self) -> usize {
        self.max_reply.load(Ordering::Relaxed)
    }

    /// Write all of `bytes` (a few KiB at most; the pipe has room for them or says
    /// `WouldBlock`).
    pub fn put(&self, mut bytes: &[u8]) -> io::Result<()> {
        // Bounded: every turn writes at least one byte or returns.
        while !bytes.is_empty() {
            // SAFETY: bytes is a valid readable buffer of the length given.
            let n =
                unsafe { libc::write(self.write.as_raw_fd(), bytes.as_ptr().cast(), bytes.len()) };
            if n < 0 {
                let e = last_err();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            bytes = &bytes[n as usize..];
        }
        Ok(())
    }

    /// Move up to `len` bytes from `socket` into the pipe, waiting for the first of them as
    /// long as the socket's read timeout says (every data connection has one). `Ok(0)`: the
    /// peer closed the connection; `WouldBlock`: the pipe is full; `TimedOut`: nothing
    /// arrived in time.
    pub fn fill_from(&self, socket: BorrowedFd, len: usize) -> io::Result<usize> {
        // Bounded: only an interrupted call is repeated.
        loop {
            let n = splice(socket, self.write.as_fd(), len, libc::SPLICE_F_NONBLOCK);
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = last_err();
            return match e.kind() {
                io::ErrorKind::Interrupted => continue,
                // The socket's timeout ran out, or the pipe is full (nothing else empties it).
                io::ErrorKind::WouldBlock if self.has_room()? => {
                    Err(io::Error::new(io::ErrorKind::TimedOut, "no data in time"))
                }
                io::ErrorKind::WouldBlock => {
                    self.max_reply.store(self.capacity / 4, Ordering::Relaxed);
                    Err(e)
                }
                _ => Err(e),
            };
        }
    }

    /// Is there room for one more segment in the pipe?
    fn has_room(&self) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.write.as_raw_fd(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd; timeout 0 never blocks.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n < 0 {
            return Err(last_err());
        }
        Ok(n > 0 && pfd.revents & libc::POLLOUT != 0)
    }

    /// Splice exactly `len` bytes (everything in the pipe) to `out` in one call: /dev/fuse
    /// takes a reply only whole.
    pub fn send_to(&self, out: BorrowedFd, len: usize) -> io::Result<()> {
        // Bounded: an interrupted splice moved nothing and is tried again, at most a few times.
        for _ in 0..8 {
            let n = splice(self.read.as_fd(), out, len, 0);
            if n >= 0 {
                if n as usize == len {
                    return Ok(());
                }
                self.clear();
                return Err(io::Error::other(format!("spliced {n} of {len} bytes")));
            }
            let e = last_err();
            if e.kind() != io::ErrorKind::Interrupted {
                self.clear();
                return Err(e);
            }
        }
        self.clear();
        Err(io::ErrorKind::Interrupted.into())
    }

    /// Read back everything in the pipe (bytes put or spliced that will not be sent).
    pub fn take_back(&self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 256 << 10];
        // Bounded: the pipe holds at most `capacity` bytes and nothing refills it meanwhile.
        loop {
            // SAFETY: buf is a valid writable buffer of the length given.
            let n =
                unsafe { libc::read(self.read.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                out.extend_from_slice(&buf[..n as usize]);
                continue;
            }
            if n == 0 {
                return Ok(out);
            }
            let e = last_err();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(out),
                _ => return Err(e),
            }
        }
    }

    /// Duplicate the `len` bytes this pipe holds at the end of `to`, without copying them
    /// (`tee(2)`); this pipe keeps them. All or an error.
    pub fn tee_to(&self, to: &Pipe, len: usize) -> io::Result<()> {
        // SAFETY: both fds are open pipe ends for the call.
        let n = unsafe {
            libc::tee(
                self.read.as_raw_fd(),
                to.write.as_raw_fd(),
                len,
                libc::SPLICE_F_NONBLOCK,
            )
        };
        whole(n, len, "duplicated")
    }

    /// Move the `len` bytes this pipe holds to the end of `to`, without copying them. All or
    /// an error.
    pub fn move_to(&self, to: &Pipe, len: usize) -> io::Result<()> {
        let n = splice(
            self.read.as_fd(),
            to.write.as_fd(),
            len,
            libc::SPLICE_F_NONBLOCK,
        );
        whole(n, len, "moved")
    }

    /// The first `n` bytes the pipe holds (it holds at least that many), read out.
    pub fn take(&self, n: usize) -> io::Result<Vec<u8>> {
        let mut out = vec![0u8; n];
        let mut got = 0;
        // Bounded: each turn reads at least one byte or returns.
        while got < n {
            // SAFETY: the buffer has `n - got` writable bytes from `got`.
            let r = unsafe {
                libc::read(
                    self.read.as_raw_fd(),
                    out[got..].as_mut_ptr().cast(),
                    n - got,
                )
            };
            if r > 0 {
                got += r as usize;
                continue;
            }
            let e = if r == 0 {
                io::Error::other(format!("the pipe held {got} of {n} bytes"))
            } else {
                last_err()
            };
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
        Ok(out)
    }

    /// Drop the first `n` bytes the pipe holds (spliced to /dev/null, not copied).
    pub fn discard(&self, n: usize) -> io::Result<()> {
        let left = n - self.drop_upto(n);
        if left > 0 {
            self.take(left)?;
        }
        Ok(())
    }

    /// Empty the pipe, dropping what it held (after a failed send).
    pub fn clear(&self) {
        self.drop_upto(usize::MAX);
        let _ = self.take_back();
    }

    /// Splice up to `n` of the bytes the pipe holds to /dev/null, which takes the pages
    /// without copying them; how many went (0 if /dev/null cannot be opened).
    fn drop_upto(&self, n: usize) -> usize {
        let Some(null) = dev_null() else {
            return 0;
        };
        let mut gone = 0;
        // Bounded: each turn drops at least one byte or ends the loop.
        while gone < n {
            let r = splice(
                self.read.as_fd(),
                null.as_fd(),
                (n - gone).min(self.capacity),
                libc::SPLICE_F_NONBLOCK,
            );
            if r <= 0 {
                break;
            }
            gone += r as usize;
        }
        gone
    }
}

/// `splice(2)` between two descriptors without offsets (pipes, sockets, devices).
fn splice(from: BorrowedFd, to: BorrowedFd, len: usize, flags: libc::c_uint) -> isize {
    // SAFETY: both fds are open for the call (borrowed); null offsets, as none is seekable.
    unsafe {
        libc::splice(
            from.as_raw_fd(),
            std::ptr::null_mut(),
            to.as_raw_fd(),
            std::ptr::null_mut(),
            len,
            flags,
        )
    }
}

/// /dev/null, open for writing (None if it cannot be opened): it takes spliced pages
/// without copying them.
fn dev_null() -> Option<&'static std::fs::File> {
    static NULL: OnceLock<Option<std::fs::File>> = OnceLock::new();
    NULL.get_or_init(|| std::fs::File::options().write(true).open("/dev/null").ok())
        .as_ref()
}

/// The result of a pipe-to-pipe call that must move all `len` bytes at once (the target has
/// room for them: it is as large as the source and holds at most a header).
fn whole(n: isize, len: usize, what: &str) -> io::Result<()> {
    if n < 0 {
        return Err(last_err());
    }
    if n as usize != len {
        return Err(io::Error::other(format!("{what} {n} of {len} bytes")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;
    use std::time::Duration;

    /// A connected pair; the receiving side waits at most `wait` for data.
    fn pair(wait: Duration) -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_read_timeout(Some(wait)).unwrap();
        (a, b)
    }

    #[test]
    fn bytes_go_socket_to_pipe_to_file_in_order() {
        let (mut tx, rx) = pair(Duration::from_secs(5));
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sent = data.clone();
        let t = std::thread::spawn(move || tx.write_all(&sent).unwrap());
        let pipe = Pipe::new().unwrap();
        pipe.put(b"HEAD").unwrap();
        let mut moved = 0;
        while moved < data.len() {
            let n = pipe.fill_from(rx.as_fd(), data.len() - moved).unwrap();
            assert!(n > 0);
            moved += n;
        }
        t.join().unwrap();
        let mut file = tempfile();
        pipe.send_to(file.as_fd(), 4 + data.len()).unwrap();
        let mut got = Vec::new();
        use std::io::Seek;
        file.seek(std::io::SeekFrom::Start(0)).unwrap();
        file.read_to_end(&mut got).unwrap();
        assert_eq!(&got[..4], b"HEAD");
        assert_eq!(&got[4..], &data[..]);
        assert!(pipe.take_back().unwrap().is_empty());
    }

    #[test]
    fn a_silent_socket_times_out_and_a_closed_one_ends() {
        let (tx, rx) = pair(Duration::from_millis(50));
        let pipe = Pipe::new().unwrap();
        let e = pipe.fill_from(rx.as_fd(), 10).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(tx);
        assert_eq!(pipe.fill_from(rx.as_fd(), 10).unwrap(), 0);
    }

    #[test]
    fn bytes_not_sent_are_taken_back() {
        let (mut tx, rx) = pair(Duration::from_secs(5));
        tx.write_all(b"0123456789").unwrap();
        let pipe = Pipe::new().unwrap();
        pipe.put(b"hdr").unwrap();
        let mut moved = 0;
        while moved < 10 {
            moved += pipe.fill_from(rx.as_fd(), 10 - moved).unwrap();
        }
        assert_eq!(pipe.take_back().unwrap(), b"hdr0123456789");
        assert!(pipe.take_back().unwrap().is_empty());
    }

    #[test]
    fn a_full_pipe_says_would_block_instead_of_waiting() {
        let (mut tx, rx) = pair(Duration::from_secs(5));
        let pipe = Pipe::new().unwrap();
        // A pipe counts slots, not bytes: a slot may hold a whole received fragment (up to
        // 32 KiB on loopback), so send far more than its size in bytes.
        let big = vec![1u8; 64 << 20];
        let t = std::thread::spawn(move || {
            let _ = tx.write_all(&big);
        });
        let mut moved = 0;
        let mut full = false;
        // Bounded: the pipe fills after at most `capacity` bytes.
        for _ in 0..100_000 {
            match pipe.fill_from(rx.as_fd(), 1 << 20) {
                Ok(n) => moved += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    full = true;
                    break;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert!(full, "moved {moved} bytes without the pipe filling");
        assert!(moved >= pipe.capacity / 16, "full after only {moved} bytes");
        assert_eq!(pipe.take_back().unwrap().len(), moved);
        drop(rx);
        let _ = t.join();
    }

    #[test]
    fn tee_duplicates_move_moves_and_clear_empties() {
        let a = Pipe::new().unwrap();
        let b = Pipe::new().unwrap();
        let c = Pipe::new().unwrap();
        a.put(b"0123456789").unwrap();
        b.put(b"hdr:").unwrap();
        a.tee_to(&b, 10).unwrap();
        c.put(b"store:").unwrap();
        a.move_to(&c, 10).unwrap();
        assert!(a.take_back().unwrap().is_empty(), "move left bytes behind");
        assert_eq!(b.take_back().unwrap(), b"hdr:0123456789");
        assert_eq!(c.take_back().unwrap(), b"store:0123456789");
        // Asking for more than the pipe holds is an error, not a short count taken as whole.
        a.put(b"abc").unwrap();
        assert!(a.move_to(&b, 4).is_err());
        a.put(b"0123456789").unwrap();
        assert_eq!(a.take(3).unwrap(), b"012");
        a.discard(4).unwrap();
        assert_eq!(a.take(3).unwrap(), b"789");
        assert!(a.take(1).is_err(), "took a byte from an empty pipe");
        a.put(b"def").unwrap();
        a.clear();
        assert!(a.take_back().unwrap().is_empty());
        assert!(a.max_reply() >= a.capacity() / 4 && a.max_reply() <= a.capacity() / 2);
    }

    fn tempfile() -> std::fs::File {
        let path = std::env::temp_dir().join(format!("ftpc-splice-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        f
    }
}
